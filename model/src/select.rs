//! Which endpoints of a Service serve: the one rule every data plane asks
//! ([`Service::select`] for a Service port, [`Service::select_endpoints`] for
//! the Service as a whole). No data plane filters endpoint conditions itself.
//!
//! The rule is kube-proxy's (`pkg/proxy/topology.go`), applied per purpose:
//!
//! | [`Purpose`] | asked by | candidates | chosen | topology |
//! | --- | --- | --- | --- | --- |
//! | `ClusterIp` | proxy: ClusterIP frontends (socket hooks); ingress: upstream endpoint sets (the gateway is a client on this node) | this node's with `internalTrafficPolicy: Local`, else all | ready; none ready: serving-and-terminating | with `Cluster` policy |
//! | `External` | proxy: NodePort, LoadBalancer IP and external IP frontends, packets from outside the node | this node's with `externalTrafficPolicy: Local`, else all | ready; none ready: serving-and-terminating | with `Cluster` policy |
//! | `ExternalFromNode` | proxy: the same frontends reached by the node's own sockets (kube-proxy short-circuits them to the cluster-wide set whatever the policy) | all | ready; none ready: serving-and-terminating | yes |
//! | `Dns` | DNS: headless address, SRV and endpoint records (the DNS specification publishes ready endpoints) | all | ready and not terminating | no |
//! | `HealthCheck` | proxy: the `healthCheckNodePort` count (kube-proxy counts local ready endpoints) | this node's | ready | no |
//!
//! - **Ready** means the endpoint's `ready` condition, or — with
//!   `publishNotReadyAddresses` — any endpoint that is not terminating (the
//!   EndpointSlice controller marks those ready; manifests may not).
//! - **Serving-and-terminating** endpoints (KEP-1669) are used only when no
//!   candidate is ready; the [`Selection::tier`] says which set was chosen.
//!   They are chosen cluster-wide, without topology (there is no ready endpoint
//!   anywhere, so topology was already given up).
//! - **Topology** (KEP-2433, KEP-3015), over the ready candidates: when every
//!   ready endpoint has a node hint and one is hinted for this node, only those
//!   (`PreferSameNode`); otherwise when every ready endpoint has a zone hint and
//!   one is hinted for this node's zone (the `topology.kubernetes.io/zone` label
//!   of its Node object), only those; otherwise all (a missing hint, no hint for
//!   this zone, no zone label, no ready endpoint: every fallback of kube-proxy).
//! - **Hints** are the EndpointSlices' (`hints.forZones`, `hints.forNodes`). When
//!   no endpoint of the Service carries any hint and the Service asks for
//!   `trafficDistribution: PreferClose`, `PreferSameZone` or `PreferSameNode`
//!   (manifests, where no EndpointSlice controller writes hints), the hints are
//!   those the controller would write: each ready endpoint hinted for its own
//!   zone, and for `PreferSameNode` for its own node.
//! - A Service port only selects among endpoints that resolve the port
//!   ([`Service::backends`]), of the asked family when one is given: kube-proxy
//!   decides per port and per family.

use std::net::IpAddr;

use crate::types::{Backend, Endpoint, IpFamily, Service, ServicePort, TrafficPolicy};

/// Where the asking data plane runs: this node's name, and its zone (the
/// `topology.kubernetes.io/zone` label of its Node object). See
/// [`crate::Snapshot::locality`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    /// The node's name; without it nothing is local.
    pub node: Option<&'a str>,
    /// The node's zone; without it zone hints are not followed.
    pub zone: Option<&'a str>,
}

impl Locality<'_> {
    /// Whether `endpoint` runs on this node.
    #[must_use]
    pub fn hosts(&self, endpoint: &Endpoint) -> bool {
        matches!((endpoint.node_name.as_deref(), self.node), (Some(a), Some(b)) if a == b)
    }
}

/// What the endpoints are selected for: the rows of the table in the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Connections to a ClusterIP from this node (and the ingress's upstream
    /// connections): `internalTrafficPolicy`, topology, terminating fallback.
    ClusterIp,
    /// Packets from outside the node to a NodePort, LoadBalancer IP or external
    /// IP: `externalTrafficPolicy`, topology, terminating fallback.
    External,
    /// The node's own connections to a NodePort, LoadBalancer IP or external IP:
    /// the cluster-wide set, topology, terminating fallback.
    ExternalFromNode,
    /// DNS records: ready endpoints that are not terminating, anywhere.
    Dns,
    /// The `healthCheckNodePort` count: this node's ready endpoints.
    HealthCheck,
}

/// Which condition the chosen endpoints met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Ready (or nothing was chosen).
    Ready,
    /// No candidate was ready: these are serving and terminating.
    Terminating,
}

/// What topology narrowed the choice to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// No narrowing: every chosen endpoint, wherever it runs.
    Any,
    /// Endpoints hinted for this node's zone.
    SameZone,
    /// Endpoints hinted for this node.
    SameNode,
}

/// The endpoints chosen for one purpose, in the order of the Service's
/// endpoints (by address).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection<T> {
    /// The chosen endpoints (empty: nothing serves).
    pub endpoints: Vec<T>,
    /// Ready ones, or the serving-and-terminating fallback.
    pub tier: Tier,
    /// What topology narrowed them to.
    pub topology: Topology,
}

/// The `trafficDistribution` values the EndpointSlice controller writes hints for.
const PREFER_CLOSE: [&str; 3] = ["PreferClose", "PreferSameZone", "PreferSameNode"];

/// Where hints come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hints {
    /// The EndpointSlices'.
    Slices,
    /// As the EndpointSlice controller would write them for
    /// `trafficDistribution` (node hints for `PreferSameNode` only).
    Derived { nodes: bool },
}

impl Hints {
    fn of(service: &Service) -> Self {
        let written = service
            .endpoints
            .iter()
            .any(|e| !e.hint_zones.is_empty() || !e.hint_nodes.is_empty());
        match service.traffic_distribution.as_deref() {
            Some(t) if !written && PREFER_CLOSE.contains(&t) => Hints::Derived {
                nodes: t == "PreferSameNode",
            },
            _ => Hints::Slices,
        }
    }

    /// `None` when the endpoint has no zone hint; else whether one names `zone`.
    fn zone(self, e: &Endpoint, zone: Option<&str>) -> Option<bool> {
        match self {
            Hints::Slices if e.hint_zones.is_empty() => None,
            Hints::Slices => Some(zone.is_some_and(|z| e.hint_zones.iter().any(|h| h == z))),
            Hints::Derived { .. } => e.zone.as_deref().map(|own| Some(own) == zone),
        }
    }

    /// `None` when the endpoint has no node hint; else whether one names `node`.
    fn node(self, e: &Endpoint, node: Option<&str>) -> Option<bool> {
        match self {
            Hints::Slices if e.hint_nodes.is_empty() => None,
            Hints::Slices => Some(node.is_some_and(|n| e.hint_nodes.iter().any(|h| h == n))),
            Hints::Derived { nodes: true } => e.node_name.as_deref().map(|own| Some(own) == node),
            Hints::Derived { nodes: false } => None,
        }
    }
}

impl Service {
    /// Whether `endpoint` counts as ready for this Service (see the module
    /// documentation: `publishNotReadyAddresses` included).
    #[must_use]
    pub fn is_ready(&self, endpoint: &Endpoint) -> bool {
        endpoint.conditions.ready
            || (self.publish_not_ready_addresses && !endpoint.conditions.terminating)
    }

    /// The endpoints of `port` that serve `purpose` on the node `here`, of
    /// `family` when given, with the port resolved per endpoint. The one rule;
    /// see the module documentation.
    #[must_use]
    pub fn select<'a>(
        &'a self,
        port: &'a ServicePort,
        family: Option<IpFamily>,
        purpose: Purpose,
        here: Locality<'_>,
    ) -> Selection<Backend<'a>> {
        let candidates: Vec<Backend<'a>> = self
            .backends(port)
            .filter(|b| of_family(b.address, family))
            .collect();
        let endpoints: Vec<&Endpoint> = candidates.iter().map(|b| b.endpoint).collect();
        self.choose(&endpoints, purpose, here)
            .pick(|i| candidates[i])
    }

    /// The endpoints of the Service (whatever their ports) that serve
    /// `purpose` on the node `here`, of `family` when given.
    #[must_use]
    pub fn select_endpoints(
        &self,
        family: Option<IpFamily>,
        purpose: Purpose,
        here: Locality<'_>,
    ) -> Selection<&Endpoint> {
        let candidates: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| of_family(e.address, family))
            .collect();
        self.choose(&candidates, purpose, here)
            .pick(|i| candidates[i])
    }

    /// `appProtocol` of `port`: the Service port's, else that of the
    /// EndpointSlice port of the same name and protocol (the first endpoint's
    /// that has one).
    #[must_use]
    pub fn app_protocol<'a>(&'a self, port: &'a ServicePort) -> Option<&'a str> {
        port.app_protocol.as_deref().or_else(|| {
            self.endpoints.iter().find_map(|e| {
                e.ports
                    .iter()
                    .find(|p| p.name == port.name && p.protocol == port.protocol)
                    .and_then(|p| p.app_protocol.as_deref())
            })
        })
    }

    /// Indices into `candidates` of the chosen endpoints.
    fn choose(
        &self,
        candidates: &[&Endpoint],
        purpose: Purpose,
        here: Locality<'_>,
    ) -> Selection<usize> {
        let local = |i: &usize| here.hosts(candidates[*i]);
        let ready = |i: &usize| self.is_ready(candidates[*i]);
        let all = 0..candidates.len();
        let (indices, tier, topology) = match purpose {
            Purpose::Dns => (
                all.filter(|i| ready(i) && !candidates[*i].conditions.terminating)
                    .collect(),
                Tier::Ready,
                Topology::Any,
            ),
            Purpose::HealthCheck => (
                all.filter(|i| local(i) && ready(i)).collect(),
                Tier::Ready,
                Topology::Any,
            ),
            Purpose::ClusterIp if self.internal_traffic_policy == TrafficPolicy::Local => {
                let (indices, tier) = self.ready_else_terminating(candidates, local);
                (indices, tier, Topology::Any)
            }
            Purpose::External if self.external_traffic_policy == TrafficPolicy::Local => {
                let (indices, tier) = self.ready_else_terminating(candidates, local);
                (indices, tier, Topology::Any)
            }
            Purpose::ClusterIp | Purpose::External | Purpose::ExternalFromNode => {
                self.cluster_wide(candidates, here)
            }
        };
        Selection {
            endpoints: indices,
            tier,
            topology,
        }
    }

    /// The ready candidates that pass `keep`; none: the serving-and-terminating
    /// ones that do.
    fn ready_else_terminating(
        &self,
        candidates: &[&Endpoint],
        keep: impl Fn(&usize) -> bool,
    ) -> (Vec<usize>, Tier) {
        let ready: Vec<usize> = (0..candidates.len())
            .filter(|i| keep(i) && self.is_ready(candidates[*i]))
            .collect();
        if !ready.is_empty() {
            return (ready, Tier::Ready);
        }
        let terminating: Vec<usize> = (0..candidates.len())
            .filter(|i| keep(i) && serving_terminating(candidates[*i]))
            .collect();
        let tier = if terminating.is_empty() {
            Tier::Ready
        } else {
            Tier::Terminating
        };
        (terminating, tier)
    }

    /// kube-proxy's cluster endpoints: ready ones narrowed by topology; none
    /// ready anywhere: serving-and-terminating ones, anywhere.
    fn cluster_wide(
        &self,
        candidates: &[&Endpoint],
        here: Locality<'_>,
    ) -> (Vec<usize>, Tier, Topology) {
        let hints = Hints::of(self);
        let topology = self.topology(candidates, hints, here);
        let available = |e: &Endpoint| match topology {
            Topology::Any => true,
            Topology::SameZone => hints.zone(e, here.zone) == Some(true),
            Topology::SameNode => hints.node(e, here.node) == Some(true),
        };
        // Topology narrows only when some ready endpoint is available for it, so
        // the terminating fallback (no ready endpoint anywhere) is never narrowed.
        let (indices, tier) =
            self.ready_else_terminating(candidates, |i| available(candidates[*i]));
        (indices, tier, topology)
    }

    /// kube-proxy's topology mode: node hints first, then zone hints, over the
    /// ready candidates.
    fn topology(&self, candidates: &[&Endpoint], hints: Hints, here: Locality<'_>) -> Topology {
        let ready: Vec<&Endpoint> = candidates
            .iter()
            .copied()
            .filter(|e| self.is_ready(e))
            .collect();
        if ready.is_empty() {
            return Topology::Any;
        }
        let mode = |hint: &dyn Fn(&Endpoint) -> Option<bool>| {
            let marks: Vec<Option<bool>> = ready.iter().map(|e| hint(e)).collect();
            marks.iter().all(Option::is_some) && marks.contains(&Some(true))
        };
        if mode(&|e| hints.node(e, here.node)) {
            Topology::SameNode
        } else if mode(&|e| hints.zone(e, here.zone)) {
            Topology::SameZone
        } else {
            Topology::Any
        }
    }
}

impl Selection<usize> {
    /// The same choice over the candidates the indices point at.
    fn pick<T>(self, candidate: impl Fn(usize) -> T) -> Selection<T> {
        Selection {
            endpoints: self.endpoints.into_iter().map(candidate).collect(),
            tier: self.tier,
            topology: self.topology,
        }
    }
}

fn of_family(address: IpAddr, family: Option<IpFamily>) -> bool {
    family.is_none_or(|f| IpFamily::of(&address) == f)
}

fn serving_terminating(e: &Endpoint) -> bool {
    e.conditions.serving && e.conditions.terminating
}

#[cfg(test)]
mod tests {
    //! The table: endpoint conditions, node, zone and hints × traffic policies ×
    //! `trafficDistribution` × purpose → the endpoints chosen. Every case of
    //! kube-proxy's `TestCategorizeEndpoints` has a row (cluster endpoints are
    //! `ClusterIp`/`ExternalFromNode`, local endpoints `External` or `ClusterIp`
    //! under a `Local` policy), written against the current rules: hints are
    //! followed whatever the `service.kubernetes.io/topology-mode` annotation (the
    //! EndpointSlice controller reads it, kube-proxy no longer does), node hints
    //! come before zone hints, and the terminating fallback ignores topology.
    //! The rows kube-proxy has for the `ProxyTerminatingEndpoints` gate turned off
    //! have no counterpart: the behaviour is always on.

    use std::sync::Arc;

    use super::*;
    use crate::types::{
        EndpointConditions, EndpointPort, Protocol, ServiceKey, ServiceType, SessionAffinity,
        TargetPort,
    };

    const NODE: &str = "node-1";

    /// An endpoint `10.0.0.<n>`: ready, on node-2, no zone, no hints.
    #[derive(Clone, Copy)]
    struct E {
        n: u8,
        ready: bool,
        serving: bool,
        terminating: bool,
        node: &'static str,
        zone: Option<&'static str>,
        zones: &'static [&'static str],
        nodes: &'static [&'static str],
    }

    fn e(n: u8) -> E {
        E {
            n,
            ready: true,
            serving: true,
            terminating: false,
            node: "node-2",
            zone: None,
            zones: &[],
            nodes: &[],
        }
    }

    impl E {
        fn not_ready(self) -> Self {
            E {
                ready: false,
                serving: false,
                ..self
            }
        }
        /// Not ready, serving, terminating: a Pod in its grace period.
        fn terminating(self) -> Self {
            E {
                ready: false,
                serving: true,
                terminating: true,
                ..self
            }
        }
        fn gone(self) -> Self {
            E {
                ready: false,
                serving: false,
                terminating: true,
                ..self
            }
        }
        fn local(self) -> Self {
            E { node: NODE, ..self }
        }
        fn on(self, node: &'static str) -> Self {
            E { node, ..self }
        }
        fn zone(self, zone: &'static str) -> Self {
            E {
                zone: Some(zone),
                ..self
            }
        }
        fn hints(self, zones: &'static [&'static str]) -> Self {
            E { zones, ..self }
        }
        fn node_hints(self, nodes: &'static [&'static str]) -> Self {
            E { nodes, ..self }
        }
    }

    /// The Service of a row: a NodePort Service (so every purpose applies).
    #[derive(Clone, Copy, Default)]
    struct S {
        itp_local: bool,
        etp_local: bool,
        publish_not_ready: bool,
        distribution: Option<&'static str>,
    }

    struct Row {
        name: &'static str,
        zone: Option<&'static str>,
        service: S,
        endpoints: Vec<E>,
        /// Expected per purpose: last octets, `T:` first for the terminating
        /// fallback, `@zone` / `@node` last when topology narrowed.
        cluster_ip: &'static str,
        external: &'static str,
        from_node: &'static str,
        dns: &'static str,
        health: &'static str,
    }

    fn service(s: S, endpoints: &[E]) -> Service {
        let port = EndpointPort {
            name: "http".to_owned(),
            port: Some(8080),
            protocol: Protocol::Tcp,
            app_protocol: None,
        };
        let ports: Arc<[EndpointPort]> = Arc::from(vec![port]);
        let policy = |local| {
            if local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            }
        };
        Service {
            key: ServiceKey::new("ns", "svc"),
            service_type: ServiceType::NodePort,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".to_owned(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Name("http".to_owned()),
                node_port: Some(30080),
                app_protocol: None,
            }],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: SessionAffinity::None,
            external_traffic_policy: policy(s.etp_local),
            internal_traffic_policy: policy(s.itp_local),
            health_check_node_port: None,
            publish_not_ready_addresses: s.publish_not_ready,
            external_name: None,
            traffic_distribution: s.distribution.map(str::to_owned),
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    address: IpAddr::from([10, 0, 0, e.n]),
                    conditions: EndpointConditions {
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    },
                    node_name: Some(e.node.to_owned()),
                    zone: e.zone.map(str::to_owned),
                    hostname: None,
                    target_ref: None,
                    hint_zones: e.zones.iter().map(|z| (*z).to_owned()).collect(),
                    hint_nodes: e.nodes.iter().map(|n| (*n).to_owned()).collect(),
                    ports: Arc::clone(&ports),
                    slice: Arc::from("svc-1"),
                })
                .collect(),
        }
    }

    fn show<T>(selection: &Selection<T>, octet: impl Fn(&T) -> u8) -> String {
        let mut parts = Vec::new();
        if selection.tier == Tier::Terminating {
            parts.push("T:".to_owned());
        }
        parts.extend(selection.endpoints.iter().map(|e| octet(e).to_string()));
        match selection.topology {
            Topology::Any => {}
            Topology::SameZone => parts.push("@zone".to_owned()),
            Topology::SameNode => parts.push("@node".to_owned()),
        }
        parts.join(" ")
    }

    fn octet(address: IpAddr) -> u8 {
        match address {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(_) => unreachable!("the table is IPv4"),
        }
    }

    fn row(name: &'static str) -> Row {
        Row {
            name,
            zone: Some("zone-a"),
            service: S {
                itp_local: false,
                etp_local: false,
                publish_not_ready: false,
                distribution: None,
            },
            endpoints: Vec::new(),
            cluster_ip: "",
            external: "",
            from_node: "",
            dns: "",
            health: "",
        }
    }

    const ITP: S = S {
        itp_local: true,
        etp_local: false,
        publish_not_ready: false,
        distribution: None,
    };
    const ETP: S = S {
        itp_local: false,
        etp_local: true,
        publish_not_ready: false,
        distribution: None,
    };
    const BOTH: S = S {
        itp_local: true,
        etp_local: true,
        publish_not_ready: false,
        distribution: None,
    };
    const fn dist(d: &'static str) -> S {
        S {
            itp_local: false,
            etp_local: false,
            publish_not_ready: false,
            distribution: Some(d),
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "the table is the point: one row per rule, side by side"
    )]
    fn table() -> Vec<Row> {
        let zone_hinted = || {
            vec![
                e(3).hints(&["zone-a"]),
                e(4).hints(&["zone-b"]),
                e(5).hints(&["zone-c"]),
                e(6).hints(&["zone-a"]),
            ]
        };
        vec![
            // --- kube-proxy's zone-hint rows ---
            Row {
                endpoints: zone_hinted(),
                cluster_ip: "3 6 @zone",
                external: "3 6 @zone",
                from_node: "3 6 @zone",
                dns: "3 4 5 6",
                ..row(
                    "zone hints: only the endpoints hinted for this node's zone (any topology-mode annotation)",
                )
            },
            Row {
                service: ETP,
                endpoints: vec![
                    e(3).hints(&["zone-a"]).local(),
                    e(4).hints(&["zone-b"]).local(),
                    e(5).hints(&["zone-c"]),
                    e(6).hints(&["zone-a"]),
                ],
                cluster_ip: "3 6 @zone",
                external: "3 4",
                from_node: "3 6 @zone",
                dns: "3 4 5 6",
                health: "3 4",
                ..row("externalTrafficPolicy Local: topology ignored for local endpoints")
            },
            Row {
                service: ITP,
                endpoints: vec![
                    e(3).hints(&["zone-a"]).local(),
                    e(4).hints(&["zone-b"]).local(),
                    e(5).hints(&["zone-c"]),
                    e(6).hints(&["zone-a"]),
                ],
                cluster_ip: "3 4",
                external: "3 6 @zone",
                from_node: "3 6 @zone",
                dns: "3 4 5 6",
                health: "3 4",
                ..row("internalTrafficPolicy Local: topology ignored for local endpoints")
            },
            Row {
                zone: None,
                endpoints: vec![e(3).hints(&["zone-a"])],
                cluster_ip: "3",
                external: "3",
                from_node: "3",
                dns: "3",
                ..row("node without a zone label: hints not followed")
            },
            Row {
                zone: Some(""),
                endpoints: vec![e(3).hints(&["zone-a"])],
                cluster_ip: "3",
                external: "3",
                from_node: "3",
                dns: "3",
                ..row("empty zone label: hints not followed")
            },
            Row {
                zone: Some("zone-b"),
                endpoints: vec![e(3).hints(&["zone-a"])],
                cluster_ip: "3",
                external: "3",
                from_node: "3",
                dns: "3",
                ..row("no endpoint hinted for this node's zone: every endpoint")
            },
            Row {
                endpoints: vec![
                    e(3).hints(&["zone-a"]),
                    e(4).hints(&["zone-b"]),
                    e(5).hints(&["zone-c"]),
                    e(6).hints(&["zone-a"]).not_ready(),
                ],
                cluster_ip: "3 @zone",
                external: "3 @zone",
                from_node: "3 @zone",
                dns: "3 4 5",
                ..row("a not-ready endpoint is never chosen, hinted or not")
            },
            Row {
                endpoints: vec![
                    e(3).hints(&["zone-a"]).not_ready(),
                    e(4).hints(&["zone-b"]),
                    e(5).hints(&["zone-c"]),
                    e(6).hints(&["zone-a"]).not_ready(),
                ],
                cluster_ip: "4 5",
                external: "4 5",
                from_node: "4 5",
                dns: "4 5",
                ..row("only not-ready endpoints hinted for this zone: no narrowing")
            },
            Row {
                endpoints: vec![
                    e(3).hints(&["zone-a"]),
                    e(4).hints(&["zone-b"]),
                    e(5),
                    e(6).hints(&["zone-a"]),
                ],
                cluster_ip: "3 4 5 6",
                external: "3 4 5 6",
                from_node: "3 4 5 6",
                dns: "3 4 5 6",
                ..row("a ready endpoint without a zone hint: no narrowing")
            },
            Row {
                zone: Some("zone-c"),
                endpoints: vec![
                    e(3).hints(&["zone-a", "zone-b", "zone-c"]),
                    e(4).hints(&["zone-b", "zone-c"]),
                    e(5).hints(&["zone-b", "zone-d"]),
                    e(6).hints(&["zone-c"]),
                ],
                cluster_ip: "3 4 6 @zone",
                external: "3 4 6 @zone",
                from_node: "3 4 6 @zone",
                dns: "3 4 5 6",
                ..row("several zone hints per endpoint: any naming this zone")
            },
            Row {
                service: ETP,
                endpoints: vec![
                    e(10).hints(&["zone-a"]).local(),
                    e(11).hints(&["zone-b"]).local(),
                    e(12).hints(&["zone-a"]),
                    e(13).hints(&["zone-b"]),
                ],
                cluster_ip: "10 12 @zone",
                external: "10 11",
                from_node: "10 12 @zone",
                dns: "10 11 12 13",
                health: "10 11",
                ..row("topology and locality disagree: each purpose keeps its own rule")
            },
            // --- kube-proxy's traffic-policy and terminating rows ---
            Row {
                service: ITP,
                ..row("internalTrafficPolicy Local without endpoints")
            },
            Row {
                service: ITP,
                endpoints: vec![e(10), e(11)],
                external: "10 11",
                from_node: "10 11",
                dns: "10 11",
                ..row(
                    "internalTrafficPolicy Local, every endpoint remote: nothing for the ClusterIP",
                )
            },
            Row {
                service: ITP,
                endpoints: vec![e(10).local(), e(11).local()],
                cluster_ip: "10 11",
                external: "10 11",
                from_node: "10 11",
                dns: "10 11",
                health: "10 11",
                ..row("internalTrafficPolicy Local, every endpoint local")
            },
            Row {
                service: ITP,
                endpoints: vec![e(10).local(), e(11)],
                cluster_ip: "10",
                external: "10 11",
                from_node: "10 11",
                dns: "10 11",
                health: "10",
                ..row("internalTrafficPolicy Local, some endpoints local")
            },
            Row {
                endpoints: vec![e(10).not_ready(), e(11).not_ready()],
                ..row("Cluster policy, no endpoint ready or serving: nothing")
            },
            Row {
                endpoints: vec![e(10).not_ready(), e(11)],
                cluster_ip: "11",
                external: "11",
                from_node: "11",
                dns: "11",
                ..row("Cluster policy, some endpoints ready")
            },
            Row {
                endpoints: vec![e(10).terminating().local(), e(11).terminating()],
                cluster_ip: "T: 10 11",
                external: "T: 10 11",
                from_node: "T: 10 11",
                ..row(
                    "Cluster policy, every endpoint serving and terminating: the fallback, local and remote",
                )
            },
            Row {
                service: BOTH,
                endpoints: vec![e(10).local(), e(11)],
                cluster_ip: "10",
                external: "10",
                from_node: "10 11",
                dns: "10 11",
                health: "10",
                ..row(
                    "both policies Local, some endpoints local: the node's own sockets still reach every endpoint",
                )
            },
            Row {
                service: BOTH,
                endpoints: vec![e(10), e(11)],
                from_node: "10 11",
                dns: "10 11",
                ..row("both policies Local, every endpoint remote")
            },
            Row {
                service: BOTH,
                endpoints: vec![e(10).terminating(), e(11).terminating()],
                from_node: "T: 10 11",
                ..row("both policies Local, every endpoint remote, serving and terminating")
            },
            Row {
                service: ETP,
                endpoints: vec![
                    e(10),
                    e(11).not_ready().local(),
                    e(12).terminating().local(),
                    e(13).terminating(),
                ],
                cluster_ip: "10",
                external: "T: 12",
                from_node: "10",
                dns: "10",
                ..row(
                    "externalTrafficPolicy Local: the local fallback is independent of the cluster-wide set",
                )
            },
            // --- node hints and trafficDistribution (KEP-3015), kube-proxy's current rules ---
            Row {
                endpoints: vec![
                    e(1).local().hints(&["zone-a"]).node_hints(&["node-1"]),
                    e(2).hints(&["zone-a"]).node_hints(&["node-2"]),
                    e(3).on("node-3").hints(&["zone-b"]).node_hints(&["node-3"]),
                ],
                cluster_ip: "1 @node",
                external: "1 @node",
                from_node: "1 @node",
                dns: "1 2 3",
                health: "1",
                ..row("node hints on every ready endpoint, one for this node: only that one")
            },
            Row {
                endpoints: vec![
                    e(2).hints(&["zone-a"]).node_hints(&["node-2"]),
                    e(3).on("node-3").hints(&["zone-b"]).node_hints(&["node-3"]),
                ],
                cluster_ip: "2 @zone",
                external: "2 @zone",
                from_node: "2 @zone",
                dns: "2 3",
                ..row("node hints, none for this node: zone hints decide")
            },
            Row {
                endpoints: vec![
                    e(1).local().hints(&["zone-a"]).node_hints(&["node-1"]),
                    e(2).hints(&["zone-a"]),
                    e(3).on("node-3").hints(&["zone-b"]).node_hints(&["node-3"]),
                ],
                cluster_ip: "1 2 @zone",
                external: "1 2 @zone",
                from_node: "1 2 @zone",
                dns: "1 2 3",
                health: "1",
                ..row("a ready endpoint without a node hint: zone hints decide")
            },
            Row {
                zone: Some("zone-b"),
                endpoints: vec![
                    e(1).hints(&["zone-a"]).terminating(),
                    e(2).hints(&["zone-b"]).terminating(),
                    e(3).hints(&["zone-b"]).not_ready(),
                ],
                cluster_ip: "T: 1 2",
                external: "T: 1 2",
                from_node: "T: 1 2",
                ..row("no ready endpoint: the terminating fallback ignores hints")
            },
            Row {
                service: dist("PreferClose"),
                endpoints: vec![
                    e(1).zone("zone-a"),
                    e(2).zone("zone-b"),
                    e(3).zone("zone-a"),
                ],
                cluster_ip: "1 3 @zone",
                external: "1 3 @zone",
                from_node: "1 3 @zone",
                dns: "1 2 3",
                ..row(
                    "PreferClose, slices without hints: hinted as the controller would, for their zone",
                )
            },
            Row {
                service: dist("PreferSameZone"),
                endpoints: vec![e(1).zone("zone-a"), e(2).zone("zone-b")],
                cluster_ip: "1 @zone",
                external: "1 @zone",
                from_node: "1 @zone",
                dns: "1 2",
                ..row("PreferSameZone: the same as PreferClose")
            },
            Row {
                service: dist("PreferClose"),
                endpoints: vec![e(1).zone("zone-a"), e(2)],
                cluster_ip: "1 2",
                external: "1 2",
                from_node: "1 2",
                dns: "1 2",
                ..row("PreferClose, an endpoint without a zone: no narrowing")
            },
            Row {
                service: dist("PreferClose"),
                zone: Some("zone-c"),
                endpoints: vec![e(1).zone("zone-a"), e(2).zone("zone-b")],
                cluster_ip: "1 2",
                external: "1 2",
                from_node: "1 2",
                dns: "1 2",
                ..row("PreferClose, nothing in this zone: every endpoint")
            },
            Row {
                service: dist("PreferSameNode"),
                endpoints: vec![
                    e(1).local().zone("zone-a"),
                    e(2).zone("zone-a"),
                    e(3).on("node-3").zone("zone-b"),
                ],
                cluster_ip: "1 @node",
                external: "1 @node",
                from_node: "1 @node",
                dns: "1 2 3",
                health: "1",
                ..row("PreferSameNode: this node's endpoints")
            },
            Row {
                service: dist("PreferSameNode"),
                endpoints: vec![e(2).zone("zone-a"), e(3).on("node-3").zone("zone-b")],
                cluster_ip: "2 @zone",
                external: "2 @zone",
                from_node: "2 @zone",
                dns: "2 3",
                ..row("PreferSameNode, nothing on this node: this zone's")
            },
            Row {
                service: dist("PreferClose"),
                endpoints: vec![
                    e(1).zone("zone-a").hints(&["zone-b"]),
                    e(2).zone("zone-b").hints(&["zone-a"]),
                ],
                cluster_ip: "2 @zone",
                external: "2 @zone",
                from_node: "2 @zone",
                dns: "1 2",
                ..row("trafficDistribution with hints in the slices: the slices' hints win")
            },
            Row {
                service: dist("Unknown"),
                endpoints: vec![e(1).zone("zone-a"), e(2).zone("zone-b")],
                cluster_ip: "1 2",
                external: "1 2",
                from_node: "1 2",
                dns: "1 2",
                ..row("an unknown trafficDistribution: no narrowing")
            },
            // --- the named differences: DNS and the health check ---
            Row {
                service: S {
                    publish_not_ready: true,
                    etp_local: true,
                    ..S::default()
                },
                endpoints: vec![e(1).not_ready().local(), e(2).terminating().local(), e(3)],
                cluster_ip: "1 3",
                external: "1",
                from_node: "1 3",
                dns: "1 3",
                health: "1",
                ..row(
                    "publishNotReadyAddresses: not-ready endpoints count as ready, terminating ones do not",
                )
            },
            Row {
                endpoints: vec![
                    E {
                        terminating: true,
                        ..e(1)
                    },
                    e(2),
                ],
                cluster_ip: "1 2",
                external: "1 2",
                from_node: "1 2",
                dns: "2",
                ..row(
                    "ready and terminating: served by the proxy and the ingress, never published in DNS",
                )
            },
            Row {
                service: ETP,
                endpoints: vec![e(1).local(), e(2).terminating().local()],
                cluster_ip: "1",
                external: "1",
                from_node: "1",
                dns: "1",
                health: "1",
                ..row("mid-rollout, one ready pod: every path uses it")
            },
            Row {
                service: ETP,
                endpoints: vec![e(2).terminating().local(), e(3).gone()],
                cluster_ip: "T: 2",
                external: "T: 2",
                from_node: "T: 2",
                ..row(
                    "end of a rollout, only a serving-terminating pod: the paths fall back, DNS and the health check do not",
                )
            },
            Row {
                endpoints: vec![
                    e(1).gone(),
                    E {
                        serving: true,
                        ..e(2).not_ready()
                    },
                ],
                ..row("terminating without serving, or serving without ready: never chosen")
            },
        ]
    }

    #[test]
    fn the_table() {
        let mut failures = Vec::new();
        for row in table() {
            let svc = service(row.service, &row.endpoints);
            let here = Locality {
                node: Some(NODE),
                zone: row.zone,
            };
            let port = &svc.ports[0];
            for (purpose, expected) in [
                (Purpose::ClusterIp, row.cluster_ip),
                (Purpose::External, row.external),
                (Purpose::ExternalFromNode, row.from_node),
                (Purpose::Dns, row.dns),
                (Purpose::HealthCheck, row.health),
            ] {
                let whole = show(&svc.select_endpoints(None, purpose, here), |e| {
                    octet(e.address)
                });
                let by_port = show(&svc.select(port, None, purpose, here), |b| octet(b.address));
                if whole != expected || by_port != expected {
                    failures.push(format!(
                        "{}: {purpose:?}: expected {expected:?}, got {whole:?} (by port {by_port:?})",
                        row.name
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn each_port_and_family_decides_on_its_own_endpoints() {
        // Dual-stack: the IPv4 endpoint is ready, the IPv6 one only serving and
        // terminating; an `admin` port only the IPv6 slice lists.
        let mut svc = service(S::default(), &[e(1), e(2).terminating()]);
        let mut endpoints = svc.endpoints.to_vec();
        endpoints[1].address = "fd00::2".parse().unwrap();
        endpoints[1].ports = Arc::from(vec![
            endpoints[0].ports[0].clone(),
            EndpointPort {
                name: "admin".to_owned(),
                port: Some(9000),
                protocol: Protocol::Tcp,
                app_protocol: None,
            },
        ]);
        svc.endpoints = endpoints.into();
        let admin = ServicePort {
            name: "admin".to_owned(),
            port: 9000,
            target_port: TargetPort::Name("admin".to_owned()),
            node_port: None,
            ..svc.ports[0].clone()
        };
        let here = Locality {
            node: Some(NODE),
            zone: None,
        };
        let http = &svc.ports[0];
        let v4 = svc.select(http, Some(IpFamily::V4), Purpose::ClusterIp, here);
        let v6 = svc.select(http, Some(IpFamily::V6), Purpose::ClusterIp, here);
        assert_eq!((v4.endpoints.len(), v4.tier), (1, Tier::Ready));
        assert_eq!((v6.endpoints.len(), v6.tier), (1, Tier::Terminating));
        let any = svc.select(http, None, Purpose::ClusterIp, here);
        assert_eq!(any.endpoints.len(), 1, "the ready one wins across families");
        let admin_sel = svc.select(&admin, None, Purpose::ClusterIp, here);
        assert_eq!(
            (admin_sel.endpoints[0].port, admin_sel.tier),
            (9000, Tier::Terminating),
            "the admin port has no ready endpoint of its own"
        );
    }

    #[test]
    fn app_protocol_comes_from_the_service_port_else_the_slice_port() {
        let mut svc = service(S::default(), &[e(1)]);
        assert_eq!(svc.app_protocol(&svc.ports[0]), None);
        let mut ports = svc.endpoints[0].ports.to_vec();
        ports[0].app_protocol = Some("kubernetes.io/h2c".to_owned());
        let mut endpoints = svc.endpoints.to_vec();
        endpoints[0].ports = Arc::from(ports);
        svc.endpoints = endpoints.into();
        assert_eq!(svc.app_protocol(&svc.ports[0]), Some("kubernetes.io/h2c"));
        svc.ports[0].app_protocol = Some("http".to_owned());
        assert_eq!(svc.app_protocol(&svc.ports[0]), Some("http"));
    }
}
