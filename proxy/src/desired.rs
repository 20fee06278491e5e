//! What a Service should look like in the tables: a pure function of the model
//! ([`desired_frontends`]). Which endpoints serve is the model's answer
//! ([`fairlead_model::select`]); this module only lays it out as frontends.
//!
//! - Only Services with a virtual IP are programmed: ExternalName and headless Services are
//!   not (DNS serves them).
//! - Every ClusterIP (both families of a dual-stack Service) × every port is one frontend;
//!   its backends are the endpoints the model selects for [`Purpose::ClusterIp`] of the same
//!   family, with the port resolved per endpoint (named `targetPort`s may differ between
//!   endpoints). A terminating fallback is flagged, `internalTrafficPolicy: Local` too.
//! - `sessionAffinity: ClientIP` sets the affinity flag and timeout.
//!
//! External frontends (balanced per packet on the node's interfaces):
//!
//! - a NodePort (`NodePort` and `LoadBalancer` Services) is one frontend with the unspecified
//!   address (`0.0.0.0:nodePort`), serving every node address;
//! - every LoadBalancer ingress IP and every `externalIPs` address × port is a frontend;
//! - their [`ExternalView`] lists the endpoints new external flows may use (Maglev): the
//!   model's [`Purpose::External`] selection; `loadBalancerSourceRanges` apply to
//!   LoadBalancer IPs;
//! - their slots (what the node's own sockets use) list the [`Purpose::ExternalFromNode`]
//!   selection.
//!
//! Both families: a dual-stack Service has a NodePort `0.0.0.0:nodePort` and `[::]:nodePort`.

use std::collections::BTreeSet;

use fairlead_abi::{BackendState, ServiceValue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fairlead_model::{
    IpFamily, Locality, Purpose, Service, ServicePort, ServiceType, SessionAffinity, Tier,
    TrafficPolicy,
};
use ipnet::IpNet;

use crate::tables::Frontend;

/// The most backends one frontend can have (slots are `u16`, slot 0 is the service).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// One frontend as it should be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// The frontend.
    pub frontend: Frontend,
    /// The Service port's name (for logs).
    pub port_name: String,
    /// `ServiceValue::FLAG_*` bits of slot 0.
    pub flags: u8,
    /// Session-affinity timeout (seconds), 0 without affinity.
    pub affinity_timeout_secs: u32,
    /// The backends new connections may use, sorted, without duplicates.
    pub backends: Vec<DesiredBackend>,
    /// For external frontends (NodePort, LoadBalancer IP, external IP): what the per-packet
    /// path uses.
    pub external: Option<ExternalView>,
}

/// What the per-packet load balancer uses for an external frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalView {
    /// The backends new external flows may use (Maglev), sorted.
    pub backends: Vec<DesiredBackend>,
    /// `loadBalancerSourceRanges` (LoadBalancer IPs only; empty: everyone).
    pub source_ranges: Vec<IpNet>,
}

/// A backend of a [`DesiredFrontend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredBackend {
    /// The endpoint address.
    pub address: std::net::IpAddr,
    /// The port resolved for this endpoint.
    pub port: u16,
    /// Active, or terminating (fallback).
    pub state: u8,
    /// The endpoint runs on this node (external traffic reaches it without source NAT).
    pub local: bool,
}

/// The frontends of `service` on the node `here`, in a stable order.
#[must_use]
pub fn desired_frontends(service: &Service, here: Locality<'_>) -> Vec<DesiredFrontend> {
    if matches!(
        service.service_type,
        ServiceType::Headless | ServiceType::ExternalName
    ) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let base_flags = affinity_flags(service);
    for address in &service.cluster_ips {
        let family = IpFamily::of(address);
        for port in &service.ports {
            let frontend = Frontend {
                address: *address,
                port: port.port,
                protocol: port.protocol.number(),
            };
            // The apiserver forbids duplicate (port, protocol) pairs; manifests may not.
            if !seen.insert(frontend) {
                continue;
            }
            let local_only = service.internal_traffic_policy == TrafficPolicy::Local;
            let (backends, mut flags) = usable(service, port, family, Purpose::ClusterIp, here);
            if local_only {
                flags |= ServiceValue::FLAG_LOCAL_ONLY;
            }
            out.push(DesiredFrontend {
                frontend,
                port_name: port.name.clone(),
                flags: flags | base_flags.0,
                affinity_timeout_secs: base_flags.1,
                backends,
                external: None,
            });
        }
    }
    out.extend(external_frontends(service, here, &mut seen));
    out
}

/// NodePort, LoadBalancer IP and external IP frontends.
fn external_frontends(
    service: &Service,
    here: Locality<'_>,
    seen: &mut BTreeSet<Frontend>,
) -> Vec<DesiredFrontend> {
    let mut out = Vec::new();
    let (affinity, timeout) = affinity_flags(service);
    let local = service.external_traffic_policy == TrafficPolicy::Local;
    let node_ports = matches!(
        service.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut addresses: Vec<(IpAddr, bool)> = Vec::new();
    if service.service_type == ServiceType::LoadBalancer {
        addresses.extend(service.load_balancer_ips.iter().map(|a| (*a, true)));
    }
    addresses.extend(service.external_ips.iter().map(|a| (*a, false)));
    for port in &service.ports {
        let mut targets: Vec<(IpAddr, u16, bool, bool)> = Vec::new();
        if node_ports && let Some(node_port) = port.node_port {
            // One NodePort per family of the Service.
            for (family, unspecified) in [
                (IpFamily::V4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                (IpFamily::V6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ] {
                if service
                    .cluster_ips
                    .iter()
                    .any(|a| IpFamily::of(a) == family)
                {
                    targets.push((unspecified, node_port, false, true));
                }
            }
        }
        for (address, is_lb) in &addresses {
            targets.push((*address, port.port, *is_lb, false));
        }
        for (address, port_number, is_lb, node_port) in targets {
            let family = IpFamily::of(&address);
            let frontend = Frontend {
                address,
                port: port_number,
                protocol: port.protocol.number(),
            };
            if !seen.insert(frontend) {
                continue;
            }
            // The node's own sockets (and pods) use the cluster-wide view; external flows
            // the external one.
            let (backends, mut flags) =
                usable(service, port, family, Purpose::ExternalFromNode, here);
            flags |= affinity;
            let external = {
                let (external, _) = usable(service, port, family, Purpose::External, here);
                flags |= ServiceValue::FLAG_EXTERNAL;
                if node_port {
                    flags |= ServiceValue::FLAG_NODEPORT;
                }
                // Local without a local endpoint drops; but a Service without any endpoint
                // rejects whatever its policy (kube-proxy alike), so it is not marked.
                if local && !backends.is_empty() {
                    flags |= ServiceValue::FLAG_EXTERNAL_LOCAL;
                }
                // Ranges of the frontend's family (a range of the other family admits no one
                // of this one).
                let source_ranges: Vec<IpNet> = if is_lb {
                    service
                        .load_balancer_source_ranges
                        .iter()
                        .filter(|r| {
                            matches!(
                                (r, &address),
                                (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
                            )
                        })
                        .copied()
                        .collect()
                } else {
                    Vec::new()
                };
                let has_ranges = is_lb && !service.load_balancer_source_ranges.is_empty();
                if has_ranges {
                    flags |= ServiceValue::FLAG_SOURCE_RANGES;
                }
                Some(ExternalView {
                    backends: external,
                    source_ranges,
                })
            };
            out.push(DesiredFrontend {
                frontend,
                port_name: port.name.clone(),
                flags,
                affinity_timeout_secs: timeout,
                backends,
                external,
            });
        }
    }
    out
}

/// The session-affinity flag and timeout of a Service.
fn affinity_flags(service: &Service) -> (u8, u32) {
    match service.session_affinity {
        SessionAffinity::None => (0, 0),
        SessionAffinity::ClientIp { timeout_seconds } => {
            (ServiceValue::FLAG_SESSION_AFFINITY, timeout_seconds)
        }
    }
}

/// The endpoints of `port` of the family the model selects for `purpose`, as backends: active,
/// or terminating with `FLAG_TERMINATING_FALLBACK` when the model fell back to them.
fn usable(
    service: &Service,
    port: &ServicePort,
    family: IpFamily,
    purpose: Purpose,
    here: Locality<'_>,
) -> (Vec<DesiredBackend>, u8) {
    let selection = service.select(port, Some(family), purpose, here);
    let (state, flags) = match selection.tier {
        Tier::Ready => (BackendState::Active, 0),
        Tier::Terminating => (
            BackendState::Terminating,
            ServiceValue::FLAG_TERMINATING_FALLBACK,
        ),
    };
    let backends: BTreeSet<DesiredBackend> = selection
        .endpoints
        .iter()
        .map(|b| DesiredBackend {
            address: b.address,
            port: b.port,
            state: state as u8,
            local: here.hosts(b.endpoint),
        })
        .collect();
    (backends.into_iter().collect(), flags)
}
