//! What a Service should look like in the tables, by kube-proxy's rules: a pure function of
//! the model ([`desired_frontends`]).
//!
//! - Only Services with a virtual IP are programmed: ExternalName and headless Services are
//!   not (DNS serves them).
//! - Every ClusterIP (both families of a dual-stack Service) × every port is one frontend;
//!   its backends are the endpoints of the same family, with the port resolved per endpoint
//!   (named `targetPort`s may differ between endpoints).
//! - `internalTrafficPolicy: Local` keeps only endpoints on this node.
//! - Of the remaining endpoints, the ready ones are used; only when none is ready, the
//!   terminating ones that still serve (KEP-1669); never the others.
//! - `sessionAffinity: ClientIP` sets the affinity flag and timeout.

use std::collections::BTreeSet;

use fairlead_abi::{BackendState, ServiceValue};
use fairlead_model::{IpFamily, Service, ServiceType, SessionAffinity, TrafficPolicy};

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
}

/// The frontends of `service` on the node `node_name`, in a stable order.
#[must_use]
pub fn desired_frontends(service: &Service, node_name: Option<&str>) -> Vec<DesiredFrontend> {
    if matches!(
        service.service_type,
        ServiceType::Headless | ServiceType::ExternalName
    ) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
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
            let candidates: Vec<_> = service
                .backends(port)
                .filter(|b| IpFamily::of(&b.address) == family)
                .filter(|b| !local_only || is_local(b.endpoint.node_name.as_deref(), node_name))
                .collect();
            let ready: BTreeSet<DesiredBackend> = candidates
                .iter()
                .filter(|b| b.endpoint.conditions.ready)
                .map(|b| DesiredBackend {
                    address: b.address,
                    port: b.port,
                    state: BackendState::Active as u8,
                })
                .collect();
            let mut flags = 0;
            let backends = if ready.is_empty() {
                let terminating: BTreeSet<DesiredBackend> = candidates
                    .iter()
                    .filter(|b| b.endpoint.conditions.serving && b.endpoint.conditions.terminating)
                    .map(|b| DesiredBackend {
                        address: b.address,
                        port: b.port,
                        state: BackendState::Terminating as u8,
                    })
                    .collect();
                if !terminating.is_empty() {
                    flags |= ServiceValue::FLAG_TERMINATING_FALLBACK;
                }
                terminating
            } else {
                ready
            };
            if local_only {
                flags |= ServiceValue::FLAG_LOCAL_ONLY;
            }
            let affinity_timeout_secs = match service.session_affinity {
                SessionAffinity::None => 0,
                SessionAffinity::ClientIp { timeout_seconds } => {
                    flags |= ServiceValue::FLAG_SESSION_AFFINITY;
                    timeout_seconds
                }
            };
            out.push(DesiredFrontend {
                frontend,
                port_name: port.name.clone(),
                flags,
                affinity_timeout_secs,
                backends: backends.into_iter().collect(),
            });
        }
    }
    out
}

fn is_local(endpoint_node: Option<&str>, this_node: Option<&str>) -> bool {
    matches!((endpoint_node, this_node), (Some(a), Some(b)) if a == b)
}
