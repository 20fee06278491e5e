//! The kernel tables built incrementally equal the tables built from scratch.
//!
//! For random sequences of model changes (Services created, changed and
//! deleted; EndpointSlices with endpoints coming, going and changing
//! conditions and nodes), a reconciler that synced after every change holds
//! what a new reconciler writes from the final snapshot alone: the same
//! frontends, with the same backends in the same states and flags, the same
//! Maglev shares and source ranges, and no inconsistency. Ids (backend,
//! rev-NAT) and slot order may differ: they are the reconciler's to choose.

use std::fmt::Write as _;

use fairlead_model::{Change, Kind, ModelWriter, ObjectId, decode};
use fairlead_proxy::Reconciler;
use fairlead_proxy::status::frontends;
use fairlead_proxy::tables::{LbMaps, MemoryMaps};
use proptest::prelude::*;

const NODE: &str = "node-a";
const SERVICES: u8 = 4;

/// One change of the model.
#[derive(Clone, Debug)]
enum Step {
    /// Service `s<n>` created or changed.
    Service {
        n: u8,
        /// 0 ClusterIP, 1 NodePort, 2 LoadBalancer (with an ingress IP and
        /// source ranges).
        kind: u8,
        port: u16,
        local: bool,
        affinity: bool,
    },
    /// The EndpointSlice of `s<n>`: (endpoint, condition, on this node).
    Slice {
        n: u8,
        endpoints: Vec<(u8, u8, bool)>,
    },
    /// Service `s<n>` deleted.
    DeleteService(u8),
    /// The EndpointSlice of `s<n>` deleted.
    DeleteSlice(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..SERVICES, 0..3u8, prop::sample::select(vec![80u16, 8080]), any::<bool>(), any::<bool>())
            .prop_map(|(n, kind, port, local, affinity)| Step::Service { n, kind, port, local, affinity }),
        4 => (0..SERVICES, prop::collection::vec((0..6u8, 0..4u8, any::<bool>()), 0..5))
            .prop_map(|(n, endpoints)| Step::Slice { n, endpoints }),
        1 => (0..SERVICES).prop_map(Step::DeleteService),
        1 => (0..SERVICES).prop_map(Step::DeleteSlice),
    ]
}

fn service_yaml(n: u8, kind: u8, port: u16, local: bool, affinity: bool) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{n}, namespace: ns}}\nspec:\n  \
         clusterIP: 10.96.0.{}\n  ports: [{{name: http, port: {port}, targetPort: 8080",
        n + 1
    );
    if kind == 0 {
        yaml.push_str("}]\n  type: ClusterIP\n");
    } else {
        let _ = writeln!(yaml, ", nodePort: {}}}]", 30000 + u16::from(n));
        yaml.push_str(if kind == 1 {
            "  type: NodePort\n"
        } else {
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [192.0.2.0/24]\n"
        });
        let policy = if local { "Local" } else { "Cluster" };
        let _ = writeln!(yaml, "  externalTrafficPolicy: {policy}");
    }
    if affinity {
        yaml.push_str("  sessionAffinity: ClientIP\n");
    }
    if kind == 2 {
        let _ = writeln!(
            yaml,
            "status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.{}}}]}}}}",
            n + 1
        );
    }
    yaml
}

fn slice_yaml(n: u8, endpoints: &[(u8, u8, bool)]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{n}-1, \
         namespace: ns, labels: {{kubernetes.io/service-name: s{n}}}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    if endpoints.is_empty() {
        yaml = yaml.replace("endpoints:\n", "endpoints: []\n");
    }
    for (e, condition, here) in endpoints {
        let (ready, serving, terminating) = match condition {
            0 => (true, true, false),
            1 => (false, false, false),
            2 => (false, true, true),
            _ => (false, false, true),
        };
        let node = if *here { NODE } else { "node-b" };
        let _ = writeln!(
            yaml,
            "  - addresses: [10.0.0.{}]\n    nodeName: {node}\n    conditions: {{ready: {ready}, \
             serving: {serving}, terminating: {terminating}}}",
            e + 1
        );
    }
    yaml
}

fn change(yaml: &str) -> Change {
    let value: serde_json::Value = serde_norway::from_str(yaml).expect("yaml");
    Change::Upsert {
        object: decode(value).expect("object"),
        origin: None,
    }
}

fn delete(kind: Kind, name: String) -> Change {
    Change::Delete(ObjectId {
        kind,
        namespace: "ns".to_owned(),
        name,
    })
}

fn to_change(step: &Step) -> Change {
    match step {
        Step::Service {
            n,
            kind,
            port,
            local,
            affinity,
        } => change(&service_yaml(*n, *kind, *port, *local, *affinity)),
        Step::Slice { n, endpoints } => change(&slice_yaml(*n, endpoints)),
        Step::DeleteService(n) => delete(Kind::Service, format!("s{n}")),
        Step::DeleteSlice(n) => delete(Kind::EndpointSlice, format!("s{n}-1")),
    }
}

/// What the tables serve, without the ids and slot order the reconciler
/// chooses.
fn served(maps: &MemoryMaps) -> String {
    let mut out = String::new();
    for fe in frontends(&maps.contents().expect("contents")) {
        let _ = writeln!(
            out,
            "{} count {} flags {:?} affinity {}s ranges {:?}",
            fe.frontend, fe.count, fe.flags, fe.affinity_timeout_secs, fe.source_ranges
        );
        let mut backends: Vec<String> = fe
            .backends
            .iter()
            .map(|b| {
                format!(
                    "{} {}{}",
                    b.backend,
                    b.state,
                    if b.local { " local" } else { "" }
                )
            })
            .collect();
        backends.sort();
        for b in backends {
            let _ = writeln!(out, "  {b}");
        }
        if let Some(maglev) = &fe.maglev {
            let mut shares: Vec<(&String, usize)> =
                maglev.shares.iter().map(|(_, b, n)| (b, *n)).collect();
            shares.sort();
            let _ = writeln!(out, "  maglev {} {shares:?}", maglev.size);
        }
        for p in &fe.problems {
            let _ = writeln!(out, "  ! {p}");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_syncs_equal_a_sync_from_scratch(steps in prop::collection::vec(step(), 1..16)) {
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(Vec::new(), Vec::new(), true);
        let mut maps = MemoryMaps::new();
        let mut reconciler = Reconciler::new(Some(NODE.to_owned()));
        reconciler.sync(&writer.snapshot(), &mut maps);
        for step in &steps {
            writer.apply([to_change(step)]);
            let report = reconciler.sync(&writer.snapshot(), &mut maps);
            prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        let mut scratch_maps = MemoryMaps::new();
        let mut scratch = Reconciler::new(Some(NODE.to_owned()));
        let report = scratch.sync(&writer.snapshot(), &mut scratch_maps);
        prop_assert!(report.full && report.errors.is_empty(), "{report:?}");
        let (incremental, from_scratch) = (served(&maps), served(&scratch_maps));
        prop_assert!(!incremental.contains("  ! "), "inconsistent tables:\n{incremental}");
        prop_assert_eq!(incremental, from_scratch);
        // Nothing stale left behind: as many entries as from scratch.
        let (a, b) = (maps.contents().unwrap(), scratch_maps.contents().unwrap());
        prop_assert_eq!(a.services.len(), b.services.len(), "service slots");
        prop_assert_eq!(a.backends.len(), b.backends.len(), "backends");
        prop_assert_eq!(a.rev_nats.len(), b.rev_nats.len(), "rev-NAT entries");
        prop_assert_eq!(a.maglev.len(), b.maglev.len(), "Maglev tables");
        prop_assert_eq!(a.source_ranges.len(), b.source_ranges.len(), "source ranges");
    }
}
