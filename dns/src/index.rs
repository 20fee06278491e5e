//! The record index: every name of the cluster zone and of the reverse zones,
//! computed from a model [`Snapshot`] by pure functions, and looked up without
//! locks. The server holds the current index behind an `ArcSwap` and replaces
//! it whole on every snapshot; an update rebuilds only the Services that
//! changed (the maps are persistent, so the untouched rest is shared).
//!
//! The rules are the Kubernetes DNS-Based Service Discovery specification
//! (schema 1.1.0) plus what clients rely on from CoreDNS's kubernetes plugin:
//!
//! | name | records |
//! | --- | --- |
//! | `<zone>` | SOA, NS |
//! | `dns-version.<zone>` | TXT `1.1.0` |
//! | `ns.dns.<zone>` | A/AAAA of `kube-system/kube-dns` when it exists |
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA of every ClusterIP; for headless Services of every served endpoint; SRV for every port; CNAME for ExternalName |
//! | `<ep>.<svc>.<ns>.svc.<zone>` | A/AAAA of a served endpoint, `<ep>` its hostname or dashed address |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV for a named port (headless: one per served endpoint, address records as additionals) |
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A/AAAA, with `--pods insecure` (`<ns>` exists) or `verified` (a Pod of `<ns>` has that address) |
//! | `<reverse>.in-addr.arpa`, `ip6.arpa` | PTR of ClusterIPs and served endpoints |
//!
//! A served endpoint is one the model selects for DNS
//! ([`fairlead_model::Purpose::Dns`]): ready (or its Service publishes
//! not-ready addresses) and not terminating. A headless Service without a
//! served endpoint has no name at all (NXDOMAIN, as in CoreDNS and the
//! specification's 2.4.1). Names that exist without the asked
//! type answer NODATA, names that do not exist NXDOMAIN; both carry the SOA,
//! whose serial is the model generation.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use fairlead_model::{
    ChangeLog, Changes, Endpoint, Locality, Purpose, Service, ServiceKey, ServiceType, Snapshot,
};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tracing::warn;

use crate::fast::{Dep, service_hash};
use crate::names::{DASHED_IP_MAX, dashed_ip, parse_dashed_ip, parse_reverse};

/// The specification version `dns-version.<zone>` announces.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Deepest name below the zone that can exist (`_port._proto.svc.ns.svc`).
const MAX_DEPTH: usize = 5;

/// Whether and how `<a-b-c-d>.<ns>.pod.<zone>` names are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PodsMode {
    /// No pod records (`pod.<zone>` does not exist).
    #[default]
    Disabled,
    /// Any well-formed dashed address in a namespace that exists answers
    /// with that address (CoreDNS `pods insecure`, kube-dns compatible); a
    /// namespace that does not exist has no pod names (NXDOMAIN).
    Insecure,
    /// Only addresses of endpoints that point at a Pod of that namespace.
    Verified,
}

/// What the index is built for.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster zone, lower-case and fully qualified (`cluster.local.`).
    pub zone: Name,
    /// TTL of every record, and the negative TTL.
    pub ttl: u32,
    /// Pod records.
    pub pods: PodsMode,
    /// Search-path completion (`--dns-autopath`): the index keeps every
    /// Pod endpoint's namespace so the handler can tell a pod's questions.
    pub autopath: bool,
}

impl ZoneConfig {
    /// A configuration for `zone` (with or without the trailing dot).
    pub fn new(zone: &str, ttl: u32, pods: PodsMode) -> Result<Self, crate::Error> {
        let mut name = Name::from_ascii(zone).map_err(|e| crate::Error::Zone {
            zone: zone.to_owned(),
            reason: e.to_string(),
        })?;
        if name.is_root() {
            return Err(crate::Error::Zone {
                zone: zone.to_owned(),
                reason: "the cluster zone cannot be the root".to_owned(),
            });
        }
        name.set_fqdn(true);
        Ok(Self {
            zone: name.to_lowercase(),
            ttl,
            pods,
            autopath: false,
        })
    }

    /// The same configuration with search-path completion on or off.
    #[must_use]
    pub fn with_autopath(mut self, autopath: bool) -> Self {
        self.autopath = autopath;
        self
    }
}

/// A question autopath may complete: `<base>.<namespace>.svc.<zone>`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AutopathQuestion {
    /// The name the pod looked up (`example.org` of
    /// `example.org.shop.svc.cluster.local`), not fully qualified.
    pub base: Name,
    /// The namespace of the search domain the resolver appended.
    pub namespace: String,
}

/// A persistent hash map with foldhash (SipHash was a tenth of the index
/// build at 10k Services).
type FastMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// Namespace and name of a Service.
type ServiceId = (Arc<str>, Arc<str>);

/// An entry of a map shared by several Services, tagged with its Service's
/// records (one pointer: the records, and the id that orders entries), so
/// that an update can remove exactly that Service's entries.
#[derive(Clone, Debug)]
struct Tagged<T> {
    zone: Arc<ServiceZone>,
    value: T,
}

/// The entries of one address, ordered by Service: nearly every address
/// has one, kept inline.
#[derive(Clone, Debug)]
enum Tags<T> {
    One(Tagged<T>),
    Many(Arc<[Tagged<T>]>),
}

impl<T> Tags<T> {
    fn as_slice(&self) -> &[Tagged<T>] {
        match self {
            Self::One(tag) => std::slice::from_ref(tag),
            Self::Many(tags) => tags,
        }
    }
}

/// A persistent map keyed by address, IPv4 addresses as `u32` and IPv6 as
/// `u128` (an `IpAddr` key takes 17 bytes and its padding in every slot).
/// A B-tree, not a hash trie: its nodes are full where a trie's leaves
/// are mostly empty slots (at 10k Services x 10 endpoints the reverse map
/// took about half the index as a trie).
#[derive(Clone, Debug)]
struct AddrMap<V> {
    v4: imbl::OrdMap<u32, V>,
    v6: imbl::OrdMap<u128, V>,
}

impl<V: Clone> AddrMap<V> {
    fn new() -> Self {
        Self {
            v4: imbl::OrdMap::new(),
            v6: imbl::OrdMap::new(),
        }
    }

    fn get(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(v4) => self.v4.get(&u32::from(v4)),
            IpAddr::V6(v6) => self.v6.get(&u128::from(v6)),
        }
    }

    fn insert(&mut self, ip: IpAddr, value: V) {
        match ip {
            IpAddr::V4(v4) => {
                self.v4.insert(u32::from(v4), value);
            }
            IpAddr::V6(v6) => {
                self.v6.insert(u128::from(v6), value);
            }
        }
    }

    fn remove(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.v4.remove(&u32::from(v4));
            }
            IpAddr::V6(v6) => {
                self.v6.remove(&u128::from(v6));
            }
        }
    }
}

/// The result of looking a question up in the index.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The index is authoritative for the name: this is the answer.
    Answer(Answer<'a>),
    /// The name is in the cluster zone, but the model has not synced yet:
    /// the server must answer SERVFAIL, not a false NXDOMAIN.
    NotSynced,
    /// Not a name of the cluster: forward it.
    Forward,
}

/// An authoritative answer.
#[derive(Debug, Default)]
pub struct Answer<'a> {
    /// NOERROR (with data or NODATA) or NXDOMAIN.
    pub rcode: ResponseCode,
    /// Answer section, in index order (the server shuffles address sets).
    pub answers: Vec<Cow<'a, Record>>,
    /// Authority section: the SOA on negative answers.
    pub authorities: Vec<Cow<'a, Record>>,
    /// Additional section (addresses of SRV targets and of the NS).
    pub additionals: Vec<Cow<'a, Record>>,
    /// The target of a CNAME in the answer that still has to be resolved
    /// (ExternalName Services), unless the question asked for the CNAME.
    pub chase: Option<&'a Name>,
}

/// Records of one Service. ExternalName Services only have their CNAME.
#[derive(Debug)]
struct ServiceZone {
    id: ServiceId,
    body: Body,
    /// Pod addresses this Service vouches for (`--pods verified`), with the
    /// Pod's namespace (the Service's own `Arc` when it is the same).
    pod_ips: Box<[(IpAddr, Arc<str>)]>,
}

impl ServiceZone {
    /// The addresses whose PTR records (kept in the index's reverse map
    /// only) this Service contributes, with their targets.
    fn reverse(&self) -> Vec<(IpAddr, PtrTarget)> {
        match &self.body {
            Body::Addresses(body) => reverse_targets(body),
            Body::Alias(_) | Body::Vacant => Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Body {
    Alias(Box<Record>),
    Addresses(ServiceNames),
    /// A headless Service without a served endpoint: like CoreDNS, and as
    /// the specification says (2.4.1), its name does not exist (NXDOMAIN),
    /// whatever the type asked.
    Vacant,
}

/// The names and addresses of a Service with addresses, kept compact: the
/// records are made when a question asks for them (the UDP fast path keeps
/// the wire form of every answer, so that is once per question and index
/// change, not once per query).
#[derive(Debug)]
struct ServiceNames {
    /// `<svc>.<ns>.svc.<zone>`: the owner of the address and SRV records.
    fqdn: Name,
    headless: bool,
    /// The ClusterIPs, or the served endpoints' addresses when headless.
    addresses: Box<[IpAddr]>,
    /// SRV on the bare Service name: every port.
    srv: Box<[SrvTarget]>,
    /// `_tcp`, `_udp`, `_sctp` labels under which named ports exist.
    protocols: Box<[&'static str]>,
    /// Named ports, by (port label, protocol label).
    ports: Box<[PortSrv]>,
    /// Served endpoints by label, sorted by label.
    endpoints: Box<[EndpointNode]>,
}

#[derive(Debug)]
struct PortSrv {
    port_label: Box<str>,
    protocol_label: &'static str,
    srv: Box<[SrvTarget]>,
}

/// The data of one SRV record: a port on the Service name (`node` none) or
/// on one of its endpoint names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SrvTarget {
    weight: u16,
    port: u16,
    node: Option<u32>,
}

/// A name below a Service for its served endpoints. Most are named by
/// their one address (`10-1-2-3`): that label is made when asked for, not
/// kept.
#[derive(Debug)]
enum EndpointNode {
    /// The dashed form of this address, which is the node's only one.
    Dashed(IpAddr),
    /// A hostname (lower-case), with its addresses in the order the
    /// endpoints list them.
    Named { label: Box<str>, ips: Box<[IpAddr]> },
}

impl EndpointNode {
    fn label(&self) -> Cow<'_, str> {
        match self {
            Self::Dashed(ip) => Cow::Owned(dashed_ip(*ip)),
            Self::Named { label, .. } => Cow::Borrowed(label),
        }
    }

    fn ips(&self) -> &[IpAddr] {
        match self {
            Self::Dashed(ip) => std::slice::from_ref(ip),
            Self::Named { ips, .. } => ips,
        }
    }
}

/// The node labelled `label` among `nodes` (sorted by label).
fn find_node(nodes: &[EndpointNode], label: &str) -> Option<usize> {
    nodes.binary_search_by(|n| (*n.label()).cmp(label)).ok()
}

/// Address records of `ips` owned by `name`: IPv4 first, then IPv6, each in
/// order, keeping the families asked for.
fn address_records(name: &Name, ttl: u32, ips: &[IpAddr], v4: bool, v6: bool) -> Vec<Record> {
    let v4s = ips.iter().filter(|ip| v4 && ip.is_ipv4());
    let v6s = ips.iter().filter(|ip| v6 && ip.is_ipv6());
    v4s.chain(v6s)
        .map(|ip| address_record(name.clone(), ttl, *ip))
        .collect()
}

impl ServiceNames {
    fn node_name(&self, node: u32) -> Option<Name> {
        let node = self.endpoints.get(usize::try_from(node).ok()?)?;
        name_below(&[&node.label()], &self.fqdn)
    }

    fn srv_records(&self, owner: &Name, targets: &[SrvTarget], ttl: u32) -> Vec<Record> {
        targets
            .iter()
            .filter_map(|t| {
                let target = match t.node {
                    None => self.fqdn.clone(),
                    Some(node) => self.node_name(node)?,
                };
                Some(record(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, t.weight, t.port, target)),
                ))
            })
            .collect()
    }

    /// The addresses of the SRV targets, each once, in order.
    fn srv_additionals(&self, targets: &[SrvTarget], ttl: u32) -> Vec<Record> {
        if !self.headless {
            if targets.is_empty() {
                return Vec::new();
            }
            return address_records(&self.fqdn, ttl, &self.addresses, true, true);
        }
        let mut seen: Vec<u32> = Vec::new();
        let mut out = Vec::new();
        for node in targets.iter().filter_map(|t| t.node) {
            if seen.contains(&node) {
                continue;
            }
            seen.push(node);
            if let (Some(name), Some(n)) = (
                self.node_name(node),
                usize::try_from(node)
                    .ok()
                    .and_then(|i| self.endpoints.get(i)),
            ) {
                out.extend(address_records(&name, ttl, n.ips(), true, true));
            }
        }
        out
    }

    /// Every record under this Service's name (zone files for benchmarks).
    fn all_records(&self, ttl: u32) -> Vec<Record> {
        let mut out = address_records(&self.fqdn, ttl, &self.addresses, true, true);
        out.extend(self.srv_records(&self.fqdn, &self.srv, ttl));
        for port in &self.ports {
            if let Some(owner) = name_below(&[&port.port_label, port.protocol_label], &self.fqdn) {
                out.extend(self.srv_records(&owner, &port.srv, ttl));
            }
        }
        for (i, node) in self.endpoints.iter().enumerate() {
            if let Some(name) = u32::try_from(i).ok().and_then(|i| self.node_name(i)) {
                out.extend(address_records(&name, ttl, node.ips(), true, true));
            }
        }
        out
    }
}

/// How an index was produced from its predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// Every Service was rebuilt.
    Full,
    /// Only this many Services were rebuilt.
    Incremental(usize),
}

/// Every record the server answers authoritatively, at one model generation.
/// Cheap to clone (persistent maps of `Arc`s).
#[derive(Clone, Debug)]
pub struct Index {
    config: Arc<ZoneConfig>,
    zone: LowerName,
    zone_labels: usize,
    generation: u64,
    synced: bool,
    soa: Record,
    apex_ns: Record,
    version_txt: Record,
    ns_addresses: Vec<Record>,
    declared_namespaces: imbl::OrdSet<String>,
    /// Namespace → Service name → records. A namespace key exists only while
    /// it holds a Service.
    services: FastMap<Arc<str>, FastMap<Arc<str>, Arc<ServiceZone>>>,
    /// PTR targets by address: the tagged Service's name, or one of its
    /// endpoint names (made when asked: a name per endpoint address would
    /// be most of the index).
    reverse: AddrMap<Tags<PtrTarget>>,
    /// Pod addresses with the namespace of their Pod, by the Services whose
    /// endpoints name them (`--pods verified`, `--dns-autopath`).
    pods: AddrMap<Tags<Arc<str>>>,
    /// The change log of the snapshot this index answers for: the model's
    /// cursor tells answer caches what to drop ([`Index::changed_since`]).
    changes: ChangeLog,
}

fn record(name: Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name, ttl, data)
}

/// `labels` (most specific first) below `zone`; `None` (logged) when a label
/// is not a valid DNS label.
fn name_below(labels: &[&str], zone: &Name) -> Option<Name> {
    let relative = Name::from_labels(labels.iter().map(|l| l.as_bytes()));
    match relative.and_then(|n| n.append_domain(zone)) {
        Ok(name) => Some(name.to_lowercase()),
        Err(error) => {
            warn!(?labels, %error, "name cannot be served in DNS");
            None
        }
    }
}

fn address_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => record(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => record(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn protocol_label(protocol: fairlead_model::Protocol) -> &'static str {
    match protocol {
        fairlead_model::Protocol::Tcp => "_tcp",
        fairlead_model::Protocol::Udp => "_udp",
        fairlead_model::Protocol::Sctp => "_sctp",
    }
}

/// SRV data to `(node, port)` targets, deduplicated, weights sharing 100.
fn srv_targets(targets: &[(Option<u32>, u16)]) -> Box<[SrvTarget]> {
    let mut unique: Vec<(Option<u32>, u16)> = Vec::with_capacity(targets.len());
    for target in targets {
        if !unique.contains(target) {
            unique.push(*target);
        }
    }
    let weight = u16::try_from(100 / unique.len().max(1)).unwrap_or(1).max(1);
    unique
        .into_iter()
        .map(|(node, port)| SrvTarget { weight, port, node })
        .collect()
}

/// Pod addresses a Service vouches for (`--pods verified`, `--dns-autopath`):
/// its endpoints that point at a Pod, with the Pod's namespace.
fn verified_pod_ips(
    config: &ZoneConfig,
    service: &Service,
    own_namespace: &Arc<str>,
) -> Box<[(IpAddr, Arc<str>)]> {
    if config.pods != PodsMode::Verified && !config.autopath {
        return Box::default();
    }
    service
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let target = endpoint.target_ref.as_ref().filter(|t| t.kind == "Pod")?;
            let pod_ns = if target.namespace.is_empty() || target.namespace == **own_namespace {
                own_namespace.clone()
            } else {
                Arc::from(target.namespace.as_str())
            };
            Some((endpoint.address, pod_ns))
        })
        .collect()
}

/// Endpoint names (hostname, else the dashed address) of the served
/// endpoints, sorted by label; and each served endpoint's node.
///
/// Every label kept makes a valid name below the Service (the index relies
/// on that: [`ServiceNames::node_name`] is `Some` for every node). A
/// dashed address is checked once per Service, with the longest one: if it
/// fits, every dashed label does (digits, hex digits and `-` only).
fn endpoint_nodes(
    config: &ZoneConfig,
    service: &Service,
    served: &[&Endpoint],
) -> (Box<[EndpointNode]>, Vec<Option<u32>>) {
    let ns = service.key.namespace.as_str();
    let name = service.key.name.as_str();
    let mut dashed_fit: Option<bool> = None;
    let mut valid = |label: &str, dashed: bool| {
        if dashed {
            let fit = *dashed_fit.get_or_insert_with(|| {
                let longest = "0".repeat(DASHED_IP_MAX);
                name_below(&[&longest, name, ns, "svc"], &config.zone).is_some()
            });
            if fit {
                return true;
            }
        }
        // A label that cannot be a DNS name is left out (and logged).
        name_below(&[label, name, ns, "svc"], &config.zone).is_some()
    };
    // (label, whether it is the dashed address, position in `served`), for
    // the endpoints whose label makes a valid name.
    let mut labelled: Vec<(String, bool, usize)> = Vec::with_capacity(served.len());
    for (i, endpoint) in served.iter().enumerate() {
        let (label, dashed) = match endpoint.hostname.as_deref() {
            Some(hostname) => (hostname.to_ascii_lowercase(), false),
            None => (dashed_ip(endpoint.address), true),
        };
        if valid(&label, dashed) {
            labelled.push((label, dashed, i));
        }
    }
    // By label, then in the order the endpoints list them.
    labelled.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut node_of: Vec<Option<u32>> = vec![None; served.len()];
    let mut endpoints: Vec<EndpointNode> = Vec::with_capacity(labelled.len());
    for group in labelled.chunk_by(|a, b| a.0 == b.0) {
        let Ok(node) = u32::try_from(endpoints.len()) else {
            break;
        };
        let mut ips: Vec<IpAddr> = Vec::with_capacity(group.len());
        for (_, _, i) in group {
            let address = served[*i].address;
            if !ips.contains(&address) {
                ips.push(address);
            }
            node_of[*i] = Some(node);
        }
        let (label, dashed, _) = &group[0];
        endpoints.push(match ips.as_slice() {
            // Every member of a dashed group has the address its label
            // spells (an endpoint named by a hostname that happens to
            // spell its address is the same node).
            [ip] if *dashed || *label == dashed_ip(*ip) => EndpointNode::Dashed(*ip),
            _ => EndpointNode::Named {
                label: label.clone().into_boxed_str(),
                ips: ips.into_boxed_slice(),
            },
        });
    }
    (endpoints.into_boxed_slice(), node_of)
}

/// The CNAME of an ExternalName Service.
fn alias_record(service: &Service, fqdn: Name, ttl: u32) -> Option<Record> {
    let target = service.external_name.as_deref()?;
    let mut target = match Name::from_ascii(target) {
        Ok(t) => t,
        Err(error) => {
            warn!(service = %service.key, %error, "externalName is not a DNS name");
            return None;
        }
    };
    target.set_fqdn(true);
    Some(record(fqdn, ttl, RData::CNAME(CNAME(target))))
}

/// The target of a PTR record of a Service: its own name (`None`) or the
/// name of its endpoint node with this index.
type PtrTarget = Option<u32>;

/// PTR targets: each ClusterIP to the Service name, each endpoint address
/// to its endpoint name.
fn reverse_targets(body: &ServiceNames) -> Vec<(IpAddr, PtrTarget)> {
    let mut reverse: Vec<(IpAddr, PtrTarget)> = if body.headless {
        Vec::new()
    } else {
        body.addresses.iter().map(|ip| (*ip, None)).collect()
    };
    // Every node has a valid name ([`endpoint_nodes`] keeps no other).
    for (i, node) in body.endpoints.iter().enumerate() {
        if let Ok(i) = u32::try_from(i) {
            let v4s = node.ips().iter().filter(|ip| ip.is_ipv4());
            let v6s = node.ips().iter().filter(|ip| ip.is_ipv6());
            reverse.extend(v4s.chain(v6s).map(|ip| (*ip, Some(i))));
        }
    }
    reverse
}

/// SRV data of a Service: on the bare name (every port) and per named
/// port; and the protocol labels of the named ports.
fn srv_sets(
    config: &ZoneConfig,
    service: &Service,
    headless: bool,
    served: &[&Endpoint],
    node_of: &[Option<u32>],
) -> (Box<[SrvTarget]>, Vec<&'static str>, Vec<PortSrv>) {
    let ns = service.key.namespace.as_str();
    let name = service.key.name.as_str();
    let targets_of = |port: &fairlead_model::ServicePort| -> Vec<(Option<u32>, u16)> {
        if headless {
            served
                .iter()
                .zip(node_of)
                .filter_map(|(e, n)| Some((Some((*n)?), e.resolve_port(port)?)))
                .collect()
        } else {
            vec![(None, port.port)]
        }
    };
    let mut all_targets = Vec::new();
    let mut ports = Vec::new();
    let mut protocols = Vec::new();
    for port in &service.ports {
        let targets = targets_of(port);
        if !port.name.is_empty() {
            let protocol = protocol_label(port.protocol);
            let port_label = format!("_{}", port.name.to_ascii_lowercase());
            if name_below(&[&port_label, protocol, name, ns, "svc"], &config.zone).is_some() {
                ports.push(PortSrv {
                    port_label: port_label.into_boxed_str(),
                    protocol_label: protocol,
                    srv: srv_targets(&targets),
                });
                if !protocols.contains(&protocol) {
                    protocols.push(protocol);
                }
            }
        }
        all_targets.extend(targets);
    }
    (srv_targets(&all_targets), protocols, ports)
}

/// The records of `service`.
fn build_service(config: &ZoneConfig, service: &Service) -> Option<ServiceZone> {
    let ns = service.key.namespace.as_str();
    let name = service.key.name.as_str();
    let fqdn = name_below(&[name, ns, "svc"], &config.zone)?;
    let ttl = config.ttl;
    let id: ServiceId = (Arc::from(ns), Arc::from(name));

    let pod_ips = verified_pod_ips(config, service, &id.0);

    if service.service_type == ServiceType::ExternalName {
        let cname = alias_record(service, fqdn, ttl)?;
        return Some(ServiceZone {
            id,
            body: Body::Alias(Box::new(cname)),
            pod_ips,
        });
    }

    let served: Vec<&Endpoint> = service
        .select_endpoints(None, Purpose::Dns, Locality::default())
        .endpoints;

    let headless = service.service_type == ServiceType::Headless;
    if headless && served.is_empty() {
        return Some(ServiceZone {
            id,
            body: Body::Vacant,
            pod_ips,
        });
    }
    let (endpoints, node_of) = endpoint_nodes(config, service, &served);
    let mut addresses: Vec<IpAddr> = if headless {
        served.iter().map(|e| e.address).collect()
    } else {
        service.cluster_ips.clone()
    };
    let mut seen = Vec::with_capacity(addresses.len());
    addresses.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    let (srv, protocols, ports) = srv_sets(config, service, headless, &served, &node_of);
    let body = ServiceNames {
        fqdn,
        headless,
        addresses: addresses.into_boxed_slice(),
        srv,
        protocols: protocols.into_boxed_slice(),
        ports: ports.into_boxed_slice(),
        endpoints,
    };
    Some(ServiceZone {
        id,
        body: Body::Addresses(body),
        pod_ips,
    })
}

impl Index {
    /// An empty index that has not synced: cluster names answer SERVFAIL.
    #[must_use]
    pub fn new(config: Arc<ZoneConfig>) -> Self {
        let zone = config.zone.clone();
        let ttl = config.ttl;
        let dns = |label: &str| name_below(&[label], &zone).unwrap_or_else(|| zone.clone());
        let ns_name = name_below(&["ns", "dns"], &zone).unwrap_or_else(|| zone.clone());
        let soa = record(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                dns("hostmaster"),
                0,
                7200,
                1800,
                86400,
                ttl,
            )),
        );
        Self {
            zone: LowerName::new(&zone),
            zone_labels: usize::from(zone.num_labels()),
            generation: 0,
            synced: false,
            apex_ns: record(zone.clone(), ttl, RData::NS(NS(ns_name))),
            version_txt: record(
                dns("dns-version"),
                ttl,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
            ),
            soa,
            ns_addresses: Vec::new(),
            declared_namespaces: imbl::OrdSet::new(),
            services: FastMap::default(),
            reverse: AddrMap::new(),
            pods: AddrMap::new(),
            changes: ChangeLog::default(),
            config,
        }
    }

    /// The index of `snapshot`, built from nothing.
    #[must_use]
    pub fn build(config: Arc<ZoneConfig>, snapshot: &Snapshot) -> Self {
        let mut index = Self::new(config);
        for service in snapshot.services.values() {
            index.insert_service(service);
        }
        index.finish(snapshot);
        index
    }

    /// The index of `snapshot`, rebuilding only the Services that changed
    /// since this index's generation (everything when the model's change
    /// cursor says so).
    #[must_use]
    pub fn update(&self, snapshot: &Snapshot) -> (Self, UpdateKind) {
        let changes = snapshot.changes_since(self.served());
        if changes.everything() {
            return (Self::build(self.config.clone(), snapshot), UpdateKind::Full);
        }
        let mut next = self.clone();
        let mut rebuilt = 0;
        for (key, _) in changes.services() {
            next.remove_service(key);
            if let Some(service) = snapshot.services.get(key) {
                next.insert_service(service);
            }
            rebuilt += 1;
        }
        next.finish(snapshot);
        (next, UpdateKind::Incremental(rebuilt))
    }

    /// The generation this index was built from, if any snapshot.
    fn served(&self) -> Option<u64> {
        (self.generation != 0 || self.synced).then_some(self.generation)
    }

    /// The model generation this index answers for (the SOA serial).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The SOA serial: the model generation, modulo 2^32.
    #[must_use]
    pub fn serial(&self) -> u32 {
        u32::try_from(self.generation & u64::from(u32::MAX)).unwrap_or(0)
    }

    /// The Services (by [`service_hash`]) that changed between `generation`
    /// and this index, from the model's change cursor; `None` when it says
    /// everything.
    pub(crate) fn changed_since(&self, generation: u64) -> Option<HashSet<u64>> {
        service_hashes(&self.changes.changes_since(Some(generation)))
    }

    /// What the answer to a question about `qname` depends on, for the
    /// answer caches of the fast path.
    pub(crate) fn dependency(&self, qname: &LowerName) -> Dep {
        if !self.zone.zone_of(qname) {
            return Dep::Any;
        }
        let depth = usize::from(qname.num_labels()).saturating_sub(self.zone_labels);
        if depth > MAX_DEPTH {
            return Dep::Static;
        }
        let mut rel: Vec<&[u8]> = qname.iter().take(depth).collect();
        rel.reverse();
        match rel.as_slice() {
            [b"svc", ns, name, ..] => Dep::Service(service_hash(ns, name)),
            // Pod records depend on the namespaces (and, verified, on the
            // endpoints).
            [b"pod", ..] if self.config.pods != PodsMode::Disabled => Dep::Any,
            // Every other name this deep is the same whatever the model holds.
            [_, _, _, ..] => Dep::Static,
            _ => Dep::Any,
        }
    }

    /// The parts of `qname` when autopath is on and it has the form a
    /// pod's first search domain gives (`<base>.<ns>.svc.<zone>`).
    pub(crate) fn autopath_question(&self, qname: &LowerName) -> Option<AutopathQuestion> {
        if !self.config.autopath || !self.zone.zone_of(qname) {
            return None;
        }
        let depth = usize::from(qname.num_labels()).checked_sub(self.zone_labels)?;
        if depth < 3 {
            return None;
        }
        let labels: Vec<&[u8]> = qname.iter().take(depth).collect();
        if !labels[depth - 1].eq_ignore_ascii_case(b"svc") {
            return None;
        }
        let namespace = std::str::from_utf8(labels[depth - 2])
            .ok()?
            .to_ascii_lowercase();
        let base = Name::from_labels(labels[..depth - 2].iter().copied()).ok()?;
        Some(AutopathQuestion { base, namespace })
    }

    /// Whether `ip` is the address of a Pod of `namespace` that some
    /// Service's endpoints name (kept with `--pods verified` or autopath).
    pub(crate) fn is_pod_of(&self, ip: IpAddr, namespace: &str) -> bool {
        self.pods
            .get(ip)
            .is_some_and(|tags| tags.as_slice().iter().any(|t| &*t.value == namespace))
    }

    /// Whether the model had synced (cluster names are answered).
    #[must_use]
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The configuration the index was built with.
    #[must_use]
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Number of Services indexed.
    #[must_use]
    pub fn service_count(&self) -> usize {
        self.services.values().map(FastMap::len).sum()
    }

    fn finish(&mut self, snapshot: &Snapshot) {
        self.changes = snapshot.change_log();
        self.generation = snapshot.generation;
        self.synced = snapshot.synced;
        let serial = self.serial();
        if let RData::SOA(soa) = &mut self.soa.data {
            soa.serial = serial;
        }
        self.declared_namespaces = snapshot.namespaces.clone();
        let ns_name = name_below(&["ns", "dns"], &self.config.zone);
        self.ns_addresses = match (snapshot.service("kube-system", "kube-dns"), ns_name) {
            (Some(kube_dns), Some(ns_name)) => kube_dns
                .cluster_ips
                .iter()
                .map(|ip| address_record(ns_name.clone(), self.config.ttl, *ip))
                .collect(),
            _ => Vec::new(),
        };
    }

    fn remove_service(&mut self, key: &ServiceKey) {
        let Some(in_ns) = self.services.get_mut(key.namespace.as_str()) else {
            return;
        };
        let Some(old) = in_ns.remove(key.name.as_str()) else {
            return;
        };
        if in_ns.is_empty() {
            self.services.remove(key.namespace.as_str());
        }
        for (ip, _) in old.reverse() {
            untag(&mut self.reverse, ip, &old);
        }
        for (ip, _) in &old.pod_ips {
            untag(&mut self.pods, *ip, &old);
        }
    }

    fn insert_service(&mut self, service: &Service) {
        let Some(zone) = build_service(&self.config, service) else {
            return;
        };
        let zone = Arc::new(zone);
        for (ip, ptr) in zone.reverse() {
            tag(&mut self.reverse, ip, &zone, ptr);
        }
        for (ip, ns) in &zone.pod_ips {
            tag(&mut self.pods, *ip, &zone, ns.clone());
        }
        let (ns, name) = zone.id.clone();
        self.services.entry(ns).or_default().insert(name, zone);
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.services.contains_key(ns) || self.declared_namespaces.contains(ns)
    }

    /// The name a PTR record points at.
    fn ptr_target(target: &Tagged<PtrTarget>) -> Option<Name> {
        let Body::Addresses(body) = &target.zone.body else {
            return None;
        };
        match target.value {
            None => Some(body.fqdn.clone()),
            Some(node) => body.node_name(node),
        }
    }

    fn service(&self, ns: &str, name: &str) -> Option<&ServiceZone> {
        self.services.get(ns)?.get(name).map(AsRef::as_ref)
    }

    /// Every record of the cluster zone (not the reverse zones, not pod
    /// records, which are computed per question), apex first: what a zone
    /// file for another server must hold to answer the same (benchmarks).
    #[must_use]
    pub fn zone_records(&self) -> Vec<Record> {
        let mut out = vec![
            self.soa.clone(),
            self.apex_ns.clone(),
            self.version_txt.clone(),
        ];
        out.extend(self.ns_addresses.iter().cloned());
        for services in self.services.values() {
            for zone in services.values() {
                match &zone.body {
                    Body::Vacant => {}
                    Body::Alias(cname) => out.push((**cname).clone()),
                    Body::Addresses(body) => out.extend(body.all_records(self.config.ttl)),
                }
            }
        }
        out
    }

    /// Every record the index answers for the Service `namespace/name`: its
    /// address, SRV and endpoint records (or its CNAME), then the PTR records
    /// of its addresses; `None` when the index has no such Service.
    /// What `fairlead explain` shows.
    #[must_use]
    pub fn service_records(&self, namespace: &str, name: &str) -> Option<Vec<Record>> {
        let zone = self.service(namespace, name)?;
        let mut out = match &zone.body {
            Body::Vacant => Vec::new(),
            Body::Alias(cname) => vec![(**cname).clone()],
            Body::Addresses(body) => body.all_records(self.config.ttl),
        };
        for (ip, _) in zone.reverse() {
            if let Lookup::Answer(answer) =
                self.lookup(&LowerName::new(&Name::from(ip)), RecordType::PTR)
            {
                out.extend(answer.answers.into_iter().map(Cow::into_owned));
            }
        }
        Some(out)
    }

    /// The SOA record of the zone.
    #[must_use]
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Looks a question up. `qname` is lower-case (as hickory hands it over);
    /// the server restores the asker's case in the answer.
    #[must_use]
    pub fn lookup<'a>(&'a self, qname: &LowerName, qtype: RecordType) -> Lookup<'a> {
        if self.zone.zone_of(qname) {
            if !self.synced {
                return Lookup::NotSynced;
            }
            return Lookup::Answer(self.lookup_zone(qname, qtype));
        }
        if matches!(qtype, RecordType::PTR | RecordType::ANY)
            && let Some(ip) = parse_reverse(qname)
            && let Some(ptrs) = self.reverse.get(ip)
        {
            let owner = Name::from(ip);
            return Lookup::Answer(Answer {
                answers: ptrs
                    .as_slice()
                    .iter()
                    .filter_map(|t| {
                        Some(Cow::Owned(record(
                            owner.clone(),
                            self.config.ttl,
                            RData::PTR(PTR(Self::ptr_target(t)?)),
                        )))
                    })
                    .collect(),
                ..Answer::default()
            });
        }
        Lookup::Forward
    }

    fn nxdomain(&self) -> Answer<'_> {
        Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![Cow::Borrowed(&self.soa)],
            ..Answer::default()
        }
    }

    fn nodata(&self) -> Answer<'_> {
        Answer {
            authorities: vec![Cow::Borrowed(&self.soa)],
            ..Answer::default()
        }
    }

    /// An answer from `records` (NODATA when empty).
    fn records<'a>(
        &'a self,
        records: impl IntoIterator<Item = &'a Record>,
        additionals: &'a [Record],
    ) -> Answer<'a> {
        let answers: Vec<Cow<'a, Record>> = records.into_iter().map(Cow::Borrowed).collect();
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            answers,
            additionals: additionals.iter().map(Cow::Borrowed).collect(),
            ..Answer::default()
        }
    }

    /// An answer made of new records (NODATA when there are none).
    fn owned(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer<'_> {
        if answers.is_empty() {
            return self.nodata();
        }
        Answer {
            answers: answers.into_iter().map(Cow::Owned).collect(),
            additionals: additionals.into_iter().map(Cow::Owned).collect(),
            ..Answer::default()
        }
    }

    /// The address records of `ips` under `name` that `qtype` asks for.
    fn addresses(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Answer<'_> {
        let (v4, v6) = match qtype {
            RecordType::A => (true, false),
            RecordType::AAAA => (false, true),
            RecordType::ANY => (true, true),
            _ => return self.nodata(),
        };
        self.owned(
            address_records(name, self.config.ttl, ips, v4, v6),
            Vec::new(),
        )
    }

    fn lookup_zone<'a>(&'a self, qname: &LowerName, qtype: RecordType) -> Answer<'a> {
        let depth = usize::from(qname.num_labels()).saturating_sub(self.zone_labels);
        if depth > MAX_DEPTH {
            return self.nxdomain();
        }
        // Labels from the zone outwards: rel[0] is the one next to the zone.
        let mut rel: [&[u8]; MAX_DEPTH] = [&[]; MAX_DEPTH];
        for (i, label) in qname.iter().take(depth).enumerate() {
            rel[depth - 1 - i] = label;
        }
        let Some(rel) = rel[..depth]
            .iter()
            .map(|l| std::str::from_utf8(l).ok())
            .collect::<Option<Vec<&str>>>()
        else {
            return self.nxdomain();
        };
        let pods = self.config.pods != PodsMode::Disabled;
        match rel.as_slice() {
            [] => match qtype {
                RecordType::SOA => self.records([&self.soa], &[]),
                RecordType::NS => self.records([&self.apex_ns], &self.ns_addresses),
                RecordType::ANY => self.records([&self.soa, &self.apex_ns], &[]),
                _ => self.nodata(),
            },
            ["dns-version"] => match qtype {
                RecordType::TXT | RecordType::ANY => self.records([&self.version_txt], &[]),
                _ => self.nodata(),
            },
            ["svc" | "dns"] => self.nodata(),
            ["pod"] if pods => self.nodata(),
            ["dns", "ns"] => {
                let (a, aaaa): (Vec<&Record>, Vec<&Record>) = self
                    .ns_addresses
                    .iter()
                    .partition(|r| r.record_type() == RecordType::A);
                match qtype {
                    RecordType::A => self.records(a, &[]),
                    RecordType::AAAA => self.records(aaaa, &[]),
                    RecordType::ANY => self.records(&self.ns_addresses, &[]),
                    _ => self.nodata(),
                }
            }
            ["svc", ns] if self.namespace_exists(ns) => self.nodata(),
            ["pod", ns] if pods && self.pod_namespace(ns) => self.nodata(),
            ["pod", ns, label] if pods => self.pod(qname, ns, label, qtype),
            ["svc", ns, name, rest @ ..] => match self.service(ns, name) {
                None => self.nxdomain(),
                Some(service) => self.lookup_service(service, rest, qtype),
            },
            _ => self.nxdomain(),
        }
    }

    /// Whether `<ns>.pod.<zone>` exists: pod records are on and the
    /// namespace exists, in both modes (as CoreDNS's `namespaceExposed`).
    fn pod_namespace(&self, ns: &str) -> bool {
        self.config.pods != PodsMode::Disabled && self.namespace_exists(ns)
    }

    fn pod<'a>(
        &'a self,
        qname: &LowerName,
        ns: &str,
        label: &str,
        qtype: RecordType,
    ) -> Answer<'a> {
        let Some(ip) = parse_dashed_ip(label.as_bytes()) else {
            return self.nxdomain();
        };
        if !self.pod_namespace(ns) {
            return self.nxdomain();
        }
        let known = match self.config.pods {
            PodsMode::Disabled => false,
            PodsMode::Insecure => true,
            PodsMode::Verified => self
                .pods
                .get(ip)
                .is_some_and(|tags| tags.as_slice().iter().any(|t| &*t.value == ns)),
        };
        if !known {
            return self.nxdomain();
        }
        let wanted = match ip {
            IpAddr::V4(_) => matches!(qtype, RecordType::A | RecordType::ANY),
            IpAddr::V6(_) => matches!(qtype, RecordType::AAAA | RecordType::ANY),
        };
        if !wanted {
            return self.nodata();
        }
        Answer {
            answers: vec![Cow::Owned(address_record(
                Name::from(qname),
                self.config.ttl,
                ip,
            ))],
            ..Answer::default()
        }
    }

    fn lookup_service<'a>(
        &'a self,
        service: &'a ServiceZone,
        rest: &[&str],
        qtype: RecordType,
    ) -> Answer<'a> {
        let body = match &service.body {
            Body::Alias(cname) => {
                // Nothing exists below an alias.
                if !rest.is_empty() {
                    return self.nxdomain();
                }
                let RData::CNAME(target) = &cname.data else {
                    return self.nxdomain();
                };
                return Answer {
                    answers: vec![Cow::Borrowed(cname)],
                    chase: (qtype != RecordType::CNAME).then_some(&target.0),
                    ..Answer::default()
                };
            }
            Body::Addresses(body) => body,
            Body::Vacant => return self.nxdomain(),
        };
        let ttl = self.config.ttl;
        match rest {
            [] => match qtype {
                RecordType::SRV => self.owned(
                    body.srv_records(&body.fqdn, &body.srv, ttl),
                    body.srv_additionals(&body.srv, ttl),
                ),
                RecordType::ANY => {
                    let mut all = address_records(&body.fqdn, ttl, &body.addresses, true, true);
                    all.extend(body.srv_records(&body.fqdn, &body.srv, ttl));
                    self.owned(all, Vec::new())
                }
                _ => self.addresses(&body.fqdn, &body.addresses, qtype),
            },
            [label] if label.starts_with('_') => {
                if body.protocols.contains(label) {
                    self.nodata()
                } else {
                    self.nxdomain()
                }
            }
            [label] => match find_node(&body.endpoints, label) {
                Some(i) => match u32::try_from(i).ok().and_then(|i| body.node_name(i)) {
                    Some(name) => self.addresses(&name, body.endpoints[i].ips(), qtype),
                    None => self.nxdomain(),
                },
                None => self.nxdomain(),
            },
            [protocol, port] => match body
                .ports
                .iter()
                .find(|p| p.protocol_label == *protocol && &*p.port_label == *port)
            {
                Some(p) => match qtype {
                    RecordType::SRV | RecordType::ANY => {
                        match name_below(&[&p.port_label, p.protocol_label], &body.fqdn) {
                            Some(owner) => self.owned(
                                body.srv_records(&owner, &p.srv, ttl),
                                body.srv_additionals(&p.srv, ttl),
                            ),
                            None => self.nxdomain(),
                        }
                    }
                    _ => self.nodata(),
                },
                None => self.nxdomain(),
            },
            _ => self.nxdomain(),
        }
    }
}

/// The Services a change names, by [`service_hash`]; `None` for everything.
fn service_hashes(changes: &Changes) -> Option<HashSet<u64>> {
    (!changes.everything()).then(|| {
        changes
            .services()
            .map(|(k, _)| service_hash(k.namespace.as_bytes(), k.name.as_bytes()))
            .collect()
    })
}

fn tag<T: Clone>(map: &mut AddrMap<Tags<T>>, ip: IpAddr, zone: &Arc<ServiceZone>, value: T) {
    let entry = Tagged {
        zone: zone.clone(),
        value,
    };
    let tags = match map.get(ip) {
        None => Tags::One(entry),
        Some(existing) => {
            let mut next = existing.as_slice().to_vec();
            // Ordered by Service, so that an incremental update and a full
            // build answer in the same order.
            let at = next.partition_point(|t| t.zone.id <= entry.zone.id);
            next.insert(at, entry);
            Tags::Many(Arc::from(next))
        }
    };
    map.insert(ip, tags);
}

fn untag<T: Clone>(map: &mut AddrMap<Tags<T>>, ip: IpAddr, zone: &Arc<ServiceZone>) {
    let Some(existing) = map.get(ip) else {
        return;
    };
    let mut rest: Vec<Tagged<T>> = existing
        .as_slice()
        .iter()
        .filter(|t| !Arc::ptr_eq(&t.zone, zone))
        .cloned()
        .collect();
    match rest.len() {
        0 => map.remove(ip),
        1 => map.insert(ip, Tags::One(rest.remove(0))),
        _ => map.insert(ip, Tags::Many(Arc::from(rest))),
    }
}
