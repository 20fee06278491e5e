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
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A/AAAA, with `--pods insecure` or `verified` |
//! | `<reverse>.in-addr.arpa`, `ip6.arpa` | PTR of ClusterIPs and served endpoints |
//!
//! A served endpoint is one that is not terminating and is ready (or its
//! Service publishes not-ready addresses). A headless Service without a
//! served endpoint has no name at all (NXDOMAIN, as in CoreDNS and the
//! specification's 2.4.1). Names that exist without the asked
//! type answer NODATA, names that do not exist NXDOMAIN; both carry the SOA,
//! whose serial is the model generation.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use fairlead_model::{Endpoint, Service, ServiceKey, ServiceType, Snapshot};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tracing::warn;

use crate::fast::{Dep, service_hash};
use crate::names::{dashed_ip, parse_dashed_ip, parse_reverse};

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
    /// Any well-formed dashed address in any namespace answers with that
    /// address (CoreDNS `pods insecure`, kube-dns compatible).
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
        })
    }
}

/// Namespace and name of the Service that put an entry in a shared map.
type ServiceId = (Arc<str>, Arc<str>);

/// An entry of a map shared by several Services, tagged with its Service so
/// that an update can remove exactly that Service's entries.
#[derive(Clone, Debug)]
struct Tagged<T> {
    service: ServiceId,
    value: T,
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
    /// Addresses whose PTR records (kept in the index's reverse map only)
    /// this Service contributes.
    reverse: Vec<IpAddr>,
    /// Pod addresses this Service vouches for (`--pods verified`), with the
    /// Pod's namespace.
    pod_ips: Vec<(IpAddr, Arc<str>)>,
}

#[derive(Debug)]
enum Body {
    Alias(Box<Record>),
    Addresses(Addresses),
    /// A headless Service without a served endpoint: like CoreDNS, and as
    /// the specification says (2.4.1), its name does not exist (NXDOMAIN),
    /// whatever the type asked.
    Vacant,
}

#[derive(Debug, Default)]
struct Addresses {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    /// SRV on the bare Service name: every port.
    srv: Vec<Record>,
    srv_additionals: Vec<Record>,
    /// `_tcp`, `_udp`, `_sctp` labels under which named ports exist.
    protocols: Vec<&'static str>,
    /// Named ports, by (port label, protocol label).
    ports: Vec<PortSrv>,
    /// Served endpoints by label, sorted by label.
    endpoints: Vec<EndpointNode>,
}

#[derive(Debug)]
struct PortSrv {
    port_label: Box<str>,
    protocol_label: &'static str,
    srv: Vec<Record>,
    additionals: Vec<Record>,
}

#[derive(Debug)]
struct EndpointNode {
    label: Box<str>,
    a: Vec<Record>,
    aaaa: Vec<Record>,
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
    services: imbl::HashMap<Arc<str>, imbl::HashMap<Arc<str>, Arc<ServiceZone>>>,
    reverse: imbl::HashMap<IpAddr, Arc<[Tagged<Record>]>>,
    pods: imbl::HashMap<IpAddr, Arc<[Tagged<Arc<str>>]>>,
    /// The last incremental updates that led to this index, oldest first:
    /// what answer caches drop to catch up.
    log: Arc<Vec<Delta>>,
}

/// One incremental update: the Services it rebuilt, by [`service_hash`].
#[derive(Debug)]
struct Delta {
    from: u64,
    to: u64,
    services: Vec<u64>,
}

/// Updates remembered in [`Index::changed_since`].
const LOG_LEN: usize = 64;

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

fn is_served(service: &Service, endpoint: &Endpoint) -> bool {
    !endpoint.conditions.terminating
        && (endpoint.conditions.ready || service.publish_not_ready_addresses)
}

fn protocol_label(protocol: fairlead_model::Protocol) -> &'static str {
    match protocol {
        fairlead_model::Protocol::Tcp => "_tcp",
        fairlead_model::Protocol::Udp => "_udp",
        fairlead_model::Protocol::Sctp => "_sctp",
    }
}

/// SRV records to `(target, port)`, deduplicated, weights sharing 100.
fn srv_records(owner: &Name, ttl: u32, targets: &[(Name, u16)]) -> Vec<Record> {
    let mut unique: Vec<&(Name, u16)> = Vec::with_capacity(targets.len());
    for target in targets {
        if !unique.contains(&target) {
            unique.push(target);
        }
    }
    let weight = u16::try_from(100 / unique.len().max(1)).unwrap_or(1).max(1);
    unique
        .into_iter()
        .map(|(target, port)| {
            record(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(0, weight, *port, target.clone())),
            )
        })
        .collect()
}

/// Pod addresses a Service vouches for (`--pods verified`): its endpoints
/// that point at a Pod, with the Pod's namespace.
fn verified_pod_ips(config: &ZoneConfig, service: &Service) -> Vec<(IpAddr, Arc<str>)> {
    if config.pods != PodsMode::Verified {
        return Vec::new();
    }
    service
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let target = endpoint.target_ref.as_ref().filter(|t| t.kind == "Pod")?;
            let pod_ns = if target.namespace.is_empty() {
                service.key.namespace.as_str()
            } else {
                target.namespace.as_str()
            };
            Some((endpoint.address, Arc::from(pod_ns)))
        })
        .collect()
}

/// Endpoint names (hostname, else the dashed address) of the served
/// endpoints, sorted by label; and each served endpoint's name.
fn endpoint_nodes(
    config: &ZoneConfig,
    service: &Service,
    served: &[&Endpoint],
) -> (Vec<EndpointNode>, Vec<Option<Name>>) {
    let ns = service.key.namespace.as_str();
    let name = service.key.name.as_str();
    let ttl = config.ttl;
    let mut nodes: BTreeMap<String, (Name, Vec<IpAddr>)> = BTreeMap::new();
    let mut endpoint_names: Vec<Option<Name>> = Vec::with_capacity(served.len());
    for endpoint in served {
        let label = endpoint
            .hostname
            .as_deref()
            .map_or_else(|| dashed_ip(endpoint.address), str::to_ascii_lowercase);
        let node = match nodes.get_mut(&label) {
            Some(node) => Some(node),
            None => name_below(&[&label, name, ns, "svc"], &config.zone).map(|n| {
                nodes
                    .entry(label.clone())
                    .or_insert_with(|| (n, Vec::new()))
            }),
        };
        endpoint_names.push(node.map(|(n, ips)| {
            if !ips.contains(&endpoint.address) {
                ips.push(endpoint.address);
            }
            n.clone()
        }));
    }
    let endpoints = nodes
        .into_iter()
        .map(|(label, (node_name, ips))| {
            let mut node = EndpointNode {
                label: label.into_boxed_str(),
                a: Vec::new(),
                aaaa: Vec::new(),
            };
            for ip in ips {
                let r = address_record(node_name.clone(), ttl, ip);
                if ip.is_ipv4() {
                    node.a.push(r);
                } else {
                    node.aaaa.push(r);
                }
            }
            node
        })
        .collect();
    (endpoints, endpoint_names)
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

/// PTR records: each of `cluster_ips` to the Service name, each endpoint
/// address to its endpoint name.
fn reverse_records(
    cluster_ips: &[IpAddr],
    fqdn: &Name,
    endpoints: &[EndpointNode],
    ttl: u32,
) -> Vec<(IpAddr, Record)> {
    let ptr = |ip: IpAddr, target: &Name| {
        (
            ip,
            record(Name::from(ip), ttl, RData::PTR(PTR(target.clone()))),
        )
    };
    let mut reverse: Vec<(IpAddr, Record)> = cluster_ips.iter().map(|ip| ptr(*ip, fqdn)).collect();
    for node in endpoints {
        for r in node.a.iter().chain(&node.aaaa) {
            match &r.data {
                RData::A(a) => reverse.push(ptr(IpAddr::V4(a.0), &r.name)),
                RData::AAAA(a) => reverse.push(ptr(IpAddr::V6(a.0), &r.name)),
                _ => {}
            }
        }
    }
    reverse
}

/// What SRV records are computed from.
struct Parts<'a> {
    config: &'a ZoneConfig,
    service: &'a Service,
    fqdn: &'a Name,
    headless: bool,
    served: &'a [&'a Endpoint],
    endpoint_names: &'a [Option<Name>],
    endpoints: &'a [EndpointNode],
    /// The Service's own address records.
    addresses: &'a [Record],
}

/// SRV records of a Service: on the bare name (every port) and per named
/// port, with the targets' addresses as additionals.
struct SrvSets {
    srv: Vec<Record>,
    srv_additionals: Vec<Record>,
    protocols: Vec<&'static str>,
    ports: Vec<PortSrv>,
}

impl SrvSets {
    fn build(p: &Parts<'_>) -> Self {
        let ns = p.service.key.namespace.as_str();
        let name = p.service.key.name.as_str();
        let ttl = p.config.ttl;
        let targets_of = |port: &fairlead_model::ServicePort| -> Vec<(Name, u16)> {
            if p.headless {
                p.served
                    .iter()
                    .zip(p.endpoint_names)
                    .filter_map(|(e, n)| Some((n.clone()?, e.resolve_port(port)?)))
                    .collect()
            } else {
                vec![(p.fqdn.clone(), port.port)]
            }
        };
        let node_records = |target: &Name| -> Vec<Record> {
            p.endpoints
                .iter()
                .filter(|n| {
                    n.a.first()
                        .or(n.aaaa.first())
                        .is_some_and(|r| &r.name == target)
                })
                .flat_map(|n| n.a.iter().chain(&n.aaaa).cloned())
                .collect()
        };
        let additionals_of = |targets: &[(Name, u16)]| -> Vec<Record> {
            if p.headless {
                let mut names: Vec<&Name> = targets.iter().map(|(n, _)| n).collect();
                names.dedup();
                let mut out = Vec::new();
                for n in names {
                    for r in node_records(n) {
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                }
                out
            } else if targets.is_empty() {
                Vec::new()
            } else {
                p.addresses.to_vec()
            }
        };
        let mut all_targets = Vec::new();
        let mut ports = Vec::new();
        let mut protocols = Vec::new();
        for port in &p.service.ports {
            let targets = targets_of(port);
            if !port.name.is_empty() {
                let protocol = protocol_label(port.protocol);
                let port_label = format!("_{}", port.name.to_ascii_lowercase());
                if let Some(owner) =
                    name_below(&[&port_label, protocol, name, ns, "svc"], &p.config.zone)
                {
                    ports.push(PortSrv {
                        port_label: port_label.into_boxed_str(),
                        protocol_label: protocol,
                        srv: srv_records(&owner, ttl, &targets),
                        additionals: additionals_of(&targets),
                    });
                    if !protocols.contains(&protocol) {
                        protocols.push(protocol);
                    }
                }
            }
            all_targets.extend(targets);
        }
        Self {
            srv: srv_records(p.fqdn, ttl, &all_targets),
            srv_additionals: additionals_of(&all_targets),
            protocols,
            ports,
        }
    }
}

/// The records of `service`, and the PTR records it contributes.
fn build_service(
    config: &ZoneConfig,
    service: &Service,
) -> Option<(ServiceZone, Vec<(IpAddr, Record)>)> {
    let ns = service.key.namespace.as_str();
    let name = service.key.name.as_str();
    let fqdn = name_below(&[name, ns, "svc"], &config.zone)?;
    let ttl = config.ttl;
    let id: ServiceId = (Arc::from(ns), Arc::from(name));

    let pod_ips = verified_pod_ips(config, service);

    if service.service_type == ServiceType::ExternalName {
        let cname = alias_record(service, fqdn, ttl)?;
        let zone = ServiceZone {
            id,
            body: Body::Alias(Box::new(cname)),
            reverse: Vec::new(),
            pod_ips,
        };
        return Some((zone, Vec::new()));
    }

    let served: Vec<&Endpoint> = service
        .endpoints
        .iter()
        .filter(|e| is_served(service, e))
        .collect();

    let headless = service.service_type == ServiceType::Headless;
    if headless && served.is_empty() {
        let zone = ServiceZone {
            id,
            body: Body::Vacant,
            reverse: Vec::new(),
            pod_ips,
        };
        return Some((zone, Vec::new()));
    }
    let (endpoints, endpoint_names) = endpoint_nodes(config, service, &served);
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
    let (mut a, mut aaaa) = (Vec::new(), Vec::new());
    for ip in &addresses {
        let r = address_record(fqdn.clone(), ttl, *ip);
        if ip.is_ipv4() {
            a.push(r);
        } else {
            aaaa.push(r);
        }
    }

    let addresses_records: Vec<Record> = a.iter().chain(&aaaa).cloned().collect();
    let srv = SrvSets::build(&Parts {
        config,
        service,
        fqdn: &fqdn,
        headless,
        served: &served,
        endpoint_names: &endpoint_names,
        endpoints: &endpoints,
        addresses: &addresses_records,
    });
    let body = Addresses {
        a,
        aaaa,
        srv: srv.srv,
        srv_additionals: srv.srv_additionals,
        protocols: srv.protocols,
        ports: srv.ports,
        endpoints,
    };

    let reverse = reverse_records(
        if headless { &[] } else { &addresses },
        &fqdn,
        &body.endpoints,
        ttl,
    );

    let zone = ServiceZone {
        id,
        body: Body::Addresses(body),
        reverse: reverse.iter().map(|(ip, _)| *ip).collect(),
        pod_ips,
    };
    Some((zone, reverse))
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
            services: imbl::HashMap::new(),
            reverse: imbl::HashMap::new(),
            pods: imbl::HashMap::new(),
            log: Arc::new(Vec::new()),
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
    /// since this index's generation (everything when the snapshot's change
    /// log does not reach back that far).
    #[must_use]
    pub fn update(&self, snapshot: &Snapshot) -> (Self, UpdateKind) {
        let changed = if self.generation == 0 || snapshot.generation < self.generation {
            None
        } else {
            snapshot.changed_services_since(self.generation)
        };
        let Some(changed) = changed else {
            return (Self::build(self.config.clone(), snapshot), UpdateKind::Full);
        };
        let mut next = self.clone();
        let mut log: Vec<Delta> = Vec::with_capacity(LOG_LEN);
        for delta in self
            .log
            .iter()
            .skip((self.log.len() + 1).saturating_sub(LOG_LEN))
        {
            log.push(Delta {
                from: delta.from,
                to: delta.to,
                services: delta.services.clone(),
            });
        }
        log.push(Delta {
            from: self.generation,
            to: snapshot.generation,
            services: changed
                .iter()
                .map(|k| service_hash(k.namespace.as_bytes(), k.name.as_bytes()))
                .collect(),
        });
        next.log = Arc::new(log);
        for key in &changed {
            next.remove_service(key);
            if let Some(service) = snapshot.services.get(key) {
                next.insert_service(service);
            }
        }
        next.finish(snapshot);
        (next, UpdateKind::Incremental(changed.len()))
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

    /// The Services (by [`service_hash`]) rebuilt between `generation` and
    /// this index; `None` when the log does not reach back that far (or a
    /// full rebuild happened since).
    pub(crate) fn changed_since(&self, generation: u64) -> Option<HashSet<u64>> {
        let mut changed = HashSet::new();
        let mut at = self.generation;
        for delta in self.log.iter().rev() {
            if at == generation {
                break;
            }
            if delta.to != at {
                return None;
            }
            changed.extend(&delta.services);
            at = delta.from;
        }
        (at == generation).then_some(changed)
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
            [b"pod", ..] if self.config.pods == PodsMode::Verified => Dep::Any,
            // Pod records in insecure mode (or none), and every other
            // name this deep, are the same whatever the model holds.
            [_, _, _, ..] => Dep::Static,
            _ => Dep::Any,
        }
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
        self.services.values().map(imbl::HashMap::len).sum()
    }

    fn finish(&mut self, snapshot: &Snapshot) {
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
        for ip in &old.reverse {
            untag(&mut self.reverse, ip, &old.id);
        }
        for (ip, _) in &old.pod_ips {
            untag(&mut self.pods, ip, &old.id);
        }
    }

    fn insert_service(&mut self, service: &Service) {
        let Some((zone, reverse)) = build_service(&self.config, service) else {
            return;
        };
        for (ip, ptr) in reverse {
            tag(&mut self.reverse, ip, &zone.id, ptr);
        }
        for (ip, ns) in &zone.pod_ips {
            tag(&mut self.pods, *ip, &zone.id, ns.clone());
        }
        let (ns, name) = zone.id.clone();
        self.services
            .entry(ns)
            .or_default()
            .insert(name, Arc::new(zone));
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.services.contains_key(ns) || self.declared_namespaces.contains(ns)
    }

    fn service(&self, ns: &str, name: &str) -> Option<&ServiceZone> {
        self.services.get(ns)?.get(name).map(AsRef::as_ref)
    }

    /// Every record of the cluster zone (not the reverse zones, not pod
    /// records, which are computed per question), apex first: what a zone
    /// file for another server must hold to answer the same (benchmarks).
    #[must_use]
    pub fn zone_records(&self) -> Vec<&Record> {
        let mut out = vec![&self.soa, &self.apex_ns, &self.version_txt];
        out.extend(&self.ns_addresses);
        for services in self.services.values() {
            for zone in services.values() {
                match &zone.body {
                    Body::Vacant => {}
                    Body::Alias(cname) => out.push(cname),
                    Body::Addresses(body) => {
                        out.extend(body.a.iter().chain(&body.aaaa).chain(&body.srv));
                        for port in &body.ports {
                            out.extend(&port.srv);
                        }
                        for node in &body.endpoints {
                            out.extend(node.a.iter().chain(&node.aaaa));
                        }
                    }
                }
            }
        }
        out
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
            && let Some(ptrs) = self.reverse.get(&ip)
        {
            return Lookup::Answer(Answer {
                answers: ptrs.iter().map(|t| Cow::Borrowed(&t.value)).collect(),
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

    fn addresses<'a>(
        &'a self,
        a: &'a [Record],
        aaaa: &'a [Record],
        qtype: RecordType,
    ) -> Answer<'a> {
        match qtype {
            RecordType::A => self.records(a, &[]),
            RecordType::AAAA => self.records(aaaa, &[]),
            RecordType::ANY => self.records(a.iter().chain(aaaa), &[]),
            _ => self.nodata(),
        }
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

    fn pod_namespace(&self, ns: &str) -> bool {
        match self.config.pods {
            PodsMode::Disabled => false,
            PodsMode::Insecure => true,
            PodsMode::Verified => self.namespace_exists(ns),
        }
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
        let known = match self.config.pods {
            PodsMode::Disabled => false,
            PodsMode::Insecure => true,
            PodsMode::Verified => self
                .pods
                .get(&ip)
                .is_some_and(|tags| tags.iter().any(|t| &*t.value == ns)),
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
        match rest {
            [] => match qtype {
                RecordType::SRV => self.records(&body.srv, &body.srv_additionals),
                RecordType::ANY => {
                    self.records(body.a.iter().chain(&body.aaaa).chain(&body.srv), &[])
                }
                _ => self.addresses(&body.a, &body.aaaa, qtype),
            },
            [label] if label.starts_with('_') => {
                if body.protocols.contains(label) {
                    self.nodata()
                } else {
                    self.nxdomain()
                }
            }
            [label] => match body.endpoints.binary_search_by(|n| (*n.label).cmp(label)) {
                Ok(i) => self.addresses(&body.endpoints[i].a, &body.endpoints[i].aaaa, qtype),
                Err(_) => self.nxdomain(),
            },
            [protocol, port] => match body
                .ports
                .iter()
                .find(|p| p.protocol_label == *protocol && &*p.port_label == *port)
            {
                Some(p) => match qtype {
                    RecordType::SRV | RecordType::ANY => self.records(&p.srv, &p.additionals),
                    _ => self.nodata(),
                },
                None => self.nxdomain(),
            },
            _ => self.nxdomain(),
        }
    }
}

fn tag<T: Clone>(
    map: &mut imbl::HashMap<IpAddr, Arc<[Tagged<T>]>>,
    ip: IpAddr,
    service: &ServiceId,
    value: T,
) {
    let entry = Tagged {
        service: service.clone(),
        value,
    };
    let mut next: Vec<Tagged<T>> = map
        .get(&ip)
        .map(|existing| existing.to_vec())
        .unwrap_or_default();
    // Ordered by Service, so that an incremental update and a full build
    // answer in the same order.
    let at = next.partition_point(|t| t.service <= entry.service);
    next.insert(at, entry);
    map.insert(ip, Arc::from(next));
}

fn untag<T: Clone>(
    map: &mut imbl::HashMap<IpAddr, Arc<[Tagged<T>]>>,
    ip: &IpAddr,
    service: &ServiceId,
) {
    let Some(existing) = map.get(ip) else {
        return;
    };
    let rest: Vec<Tagged<T>> = existing
        .iter()
        .filter(|t| &t.service != service)
        .cloned()
        .collect();
    if rest.is_empty() {
        map.remove(ip);
    } else {
        map.insert(*ip, Arc::from(rest));
    }
}
