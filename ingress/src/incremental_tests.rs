//! The gateway's state built incrementally equals the state built from
//! scratch: for random sequences of model changes (Services, their
//! EndpointSlices with endpoints changing conditions and nodes, Ingresses
//! naming them), a reconciler that applied every snapshot answers every
//! request of a fixed set with the same route, backend and endpoint set as a
//! new reconciler given only the final snapshot, and holds the same
//! upstreams. (The incremental one swaps endpoint sets in place when only
//! endpoints changed; this is what proves the shortcut right.)

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fairlead_model::{Change, Kind, ModelWriter, ObjectId, decode};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::gateway::Reconciler;
use crate::metrics::Metrics;
use crate::proxy::{ProxyConfig, Shared};
use crate::router::{ClassSelection, normalize_host};
use crate::tls::CertStore;
use crate::upstream::PoolConfig;

const NODE: &str = "node-a";
const SERVICES: u8 = 3;
const INGRESSES: u8 = 2;

#[derive(Clone, Debug)]
enum Step {
    /// Service `s<n>`: one TCP port, named `http` or `web`, 80 or 8080.
    Service {
        n: u8,
        named_http: bool,
        port80: bool,
    },
    /// Its slice: (endpoint, condition, on this node).
    Slice {
        n: u8,
        endpoints: Vec<(u8, u8, bool)>,
    },
    /// Ingress `i<n>`: paths (path index, service, by port name or number).
    Ingress {
        n: u8,
        paths: Vec<(u8, u8, bool)>,
    },
    Delete(Kind, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..SERVICES, any::<bool>(), any::<bool>())
            .prop_map(|(n, named_http, port80)| Step::Service { n, named_http, port80 }),
        4 => (0..SERVICES, prop::collection::vec((0..5u8, 0..4u8, any::<bool>()), 0..4))
            .prop_map(|(n, endpoints)| Step::Slice { n, endpoints }),
        2 => (0..INGRESSES, prop::collection::vec((0..3u8, 0..SERVICES, any::<bool>()), 1..4))
            .prop_map(|(n, paths)| Step::Ingress { n, paths }),
        1 => (0..SERVICES).prop_map(|n| Step::Delete(Kind::Service, n)),
        1 => (0..SERVICES).prop_map(|n| Step::Delete(Kind::EndpointSlice, n)),
        1 => (0..INGRESSES).prop_map(|n| Step::Delete(Kind::Ingress, n)),
    ]
}

const PATHS: [&str; 3] = ["/", "/a", "/a/b"];

fn object(step: &Step) -> Value {
    match step {
        Step::Service {
            n,
            named_http,
            port80,
        } => json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{n}"), "namespace": "t"},
            "spec": {"clusterIP": format!("10.96.0.{}", n + 1), "ports": [{
                "name": if *named_http { "http" } else { "web" },
                "port": if *port80 { 80 } else { 8080 },
                "targetPort": 9000,
            }]},
        }),
        Step::Slice { n, endpoints } => {
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|(e, condition, here)| {
                    let (ready, serving, terminating) = match condition {
                        0 => (true, true, false),
                        1 => (false, false, false),
                        2 => (false, true, true),
                        _ => (false, false, true),
                    };
                    json!({
                        "addresses": [format!("10.0.0.{}", e + 1)],
                        "nodeName": if *here { NODE } else { "node-b" },
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    })
                })
                .collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("s{n}-1"), "namespace": "t",
                             "labels": {"kubernetes.io/service-name": format!("s{n}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9000}, {"name": "web", "port": 9000}],
                "endpoints": endpoints,
            })
        }
        Step::Ingress { n, paths } => {
            let paths: Vec<Value> = paths
                .iter()
                .map(|(p, s, by_name)| {
                    let port = if *by_name {
                        json!({"name": "http"})
                    } else {
                        json!({"number": 80})
                    };
                    json!({"path": PATHS[usize::from(*p)], "pathType": "Prefix",
                           "backend": {"service": {"name": format!("s{s}"), "port": port}}})
                })
                .collect();
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": format!("i{n}"), "namespace": "t"},
                "spec": {"ingressClassName": "fairlead",
                         "rules": [{"host": format!("h{n}.example"), "http": {"paths": paths}}]},
            })
        }
        Step::Delete(..) => unreachable!("deletes have no object"),
    }
}

fn change(step: &Step) -> Change {
    match step {
        Step::Delete(kind, n) => Change::Delete(ObjectId {
            kind: *kind,
            namespace: "t".to_owned(),
            name: match kind {
                Kind::Ingress => format!("i{n}"),
                Kind::EndpointSlice => format!("s{n}-1"),
                _ => format!("s{n}"),
            },
        }),
        step => Change::Upsert {
            object: decode(object(step)).expect("test object decodes"),
            origin: None,
        },
    }
}

struct Gateway {
    reconciler: Reconciler,
    shared: Shared,
    certs: ArcSwap<CertStore>,
}

impl Gateway {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::default());
        let default = crate::tls::default_certificate(None).expect("default certificate");
        Gateway {
            reconciler: Reconciler::new(
                ClassSelection {
                    class: "fairlead".to_owned(),
                    default_backend: None,
                    gateway_api: crate::gateway_api::Selection::default(),
                },
                Arc::new(PoolConfig::default()),
                metrics.clone(),
                default.clone(),
                Some(NODE.to_owned()),
            ),
            shared: Shared::new(ProxyConfig::default(), metrics),
            certs: ArcSwap::from_pointee(CertStore::with_default(default)),
        }
    }

    /// Every request's answer, and every upstream with its endpoints.
    fn served(&self) -> (BTreeMap<String, String>, BTreeMap<String, Vec<String>>) {
        let routing = self.shared.routing.load();
        let mut answers = BTreeMap::new();
        for n in 0..INGRESSES {
            let host = format!("h{n}.example");
            let host = normalize_host(&host);
            for path in ["/", "/a", "/a/b", "/a/b/c", "/b"] {
                let answer = match routing.table.route(&host, path) {
                    None => "404".to_owned(),
                    Some(route) => {
                        let backend = routing.table.backend(route.backend);
                        let endpoints = routing.upstreams[route.backend]
                            .as_ref()
                            .map(|u| {
                                let mut e: Vec<String> =
                                    u.endpoints().iter().map(|e| e.addr.to_string()).collect();
                                e.sort();
                                e
                            })
                            .unwrap_or_default();
                        format!(
                            "{} {} -> {backend} {endpoints:?}",
                            route.ingress, route.path
                        )
                    }
                };
                answers.insert(format!("{host}{path}"), answer);
            }
        }
        let upstreams = self
            .reconciler
            .upstreams()
            .map(|u| {
                let mut e: Vec<String> = u.endpoints().iter().map(|e| e.addr.to_string()).collect();
                e.sort();
                (u.name.to_string(), e)
            })
            .collect();
        (answers, upstreams)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_reconciles_equal_a_reconcile_from_scratch(
        steps in prop::collection::vec(step(), 1..16),
    ) {
        let (mut writer, _rx) = ModelWriter::new();
        let class = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "fairlead"},
            "spec": {"controller": "fairlead.dev/ingress"},
        });
        writer.replace_all(
            vec![Change::Upsert { object: decode(class).unwrap(), origin: None }],
            Vec::new(),
            true,
        );
        let mut incremental = Gateway::new();
        let snapshot = writer.snapshot();
        incremental.reconciler.apply(&snapshot, &incremental.shared.routing, &incremental.certs);
        for step in &steps {
            writer.apply([change(step)]);
            let snapshot = writer.snapshot();
            incremental.reconciler.apply(&snapshot, &incremental.shared.routing, &incremental.certs);
        }
        let mut scratch = Gateway::new();
        let snapshot = writer.snapshot();
        scratch.reconciler.apply(&snapshot, &scratch.shared.routing, &scratch.certs);
        prop_assert_eq!(incremental.served(), scratch.served());
    }
}
