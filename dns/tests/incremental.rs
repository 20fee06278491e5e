//! The DNS index updated change by change answers exactly like an index
//! built from scratch from the final snapshot, for random sequences of
//! changes (Services of every type, slices with hostnames and conditions,
//! deletes).

mod support;

use std::collections::BTreeSet;

use fairlead_dns::{Index, PodsMode};
use fairlead_model::{Change, Kind, ObjectId, decode};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;
use serde_json::json;
use support::{ask, config, handler, model, render};

/// (what: 0 Service, 1 slice, 2 delete Service, 3 delete slice; which
/// Service; variant).
type Step = (u8, u8, u8);

fn service(i: u8, variant: u8) -> serde_json::Value {
    let spec = match variant % 4 {
        0 => json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
        1 => {
            json!({"clusterIP": format!("10.96.30.{}", i + 1), "ports": [{"name": "http", "port": 80}]})
        }
        2 => {
            json!({"clusterIP": format!("10.96.30.{}", i + 11), "ports": [{"name": "grpc", "port": 90, "protocol": "UDP"}]})
        }
        _ => json!({"type": "ExternalName", "externalName": format!("x{variant}.example.org")}),
    };
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s{i}"), "namespace": format!("p{}", i % 2)},
           "spec": spec})
}

fn slice(i: u8, variant: u8) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = (0..variant % 4)
        .map(|k| {
            let address = format!("10.244.9.{}", (variant / 4 + k) % 6 + 1);
            let mut e =
                json!({"addresses": [address], "conditions": {"ready": !(variant + k).is_multiple_of(3)}});
            if (variant + k).is_multiple_of(2) {
                e["hostname"] = json!(format!("h{k}"));
            }
            e
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("s{i}-1"), "namespace": format!("p{}", i % 2),
                        "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090, "protocol": "UDP"}],
           "endpoints": endpoints})
}

fn change((what, i, variant): Step) -> Change {
    let upsert = |value| Change::Upsert {
        object: decode(value).expect("valid object"),
        origin: None,
    };
    let id = |kind, name: String| ObjectId {
        kind,
        namespace: format!("p{}", i % 2),
        name,
    };
    match what {
        0 => upsert(service(i, variant)),
        1 => upsert(slice(i, variant)),
        2 => Change::Delete(id(Kind::Service, format!("s{i}"))),
        _ => Change::Delete(id(Kind::EndpointSlice, format!("s{i}-1"))),
    }
}

/// Every owner name of the zone, the names of the changed Services and
/// their endpoints, and their reverse names.
fn names(index: &Index) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = index
        .zone_records()
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    for i in 0..6 {
        let service = format!("s{i}.p{}.svc.cluster.local.", i % 2);
        names.insert(format!("_http._tcp.{service}"));
        names.insert(format!("_grpc._udp.{service}"));
        for k in 0..3 {
            names.insert(format!("h{k}.{service}"));
        }
        names.insert(format!("10-244-9-{}.{service}", i + 1));
        names.insert(format!("{}.9.244.10.in-addr.arpa.", i + 1));
        names.insert(format!("{}.30.96.10.in-addr.arpa.", i + 1));
        names.insert(format!("{}.30.96.10.in-addr.arpa.", i + 11));
        names.insert(service);
    }
    names
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn incremental_index_answers_like_one_built_from_the_final_snapshot(
        steps in prop::collection::vec((0u8..4, 0u8..6, 0u8..16), 1..16),
    ) {
        let (mut writer, snapshot) = model();
        let cfg = config(PodsMode::Verified);
        let mut index = Index::build(cfg.clone(), &snapshot);
        for step in &steps {
            writer.apply([change(*step)]);
            index = index.update(&writer.snapshot()).0;
        }
        let full = Index::build(cfg, &writer.snapshot());
        let records = |i: &Index| {
            let mut r: Vec<String> = i.zone_records().iter().map(ToString::to_string).collect();
            r.sort();
            r
        };
        prop_assert_eq!(records(&index), records(&full));
        let names = names(&full).union(&names(&index)).cloned().collect::<Vec<_>>();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (incremental, rebuilt) = (handler(index), handler(full));
        for name in names {
            for qtype in [RecordType::A, RecordType::SRV, RecordType::PTR, RecordType::CNAME, RecordType::ANY] {
                let (a, b) = runtime.block_on(async {
                    (render(&ask(&incremental, &name, qtype).await), render(&ask(&rebuilt, &name, qtype).await))
                });
                prop_assert_eq!(a, b, "{} {}", name, qtype);
            }
        }
    }
}
