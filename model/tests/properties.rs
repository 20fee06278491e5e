//! Property tests of translation and merging invariants.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fairlead_model::{
    Change, IpFamily, Kind, KubeObject, ModelWriter, ObjectId, ServiceChange, Snapshot, TargetPort,
    decode, dump,
};
use proptest::prelude::*;
use serde_json::json;

fn object(value: serde_json::Value) -> KubeObject {
    decode(value).expect("test objects decode")
}

fn service(ns: &str, name: &str, target: &str) -> KubeObject {
    object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80, "targetPort": target}]},
    }))
}

/// A slice: (namespace index, service index, port for "http", addresses' last octets).
type SliceSpec = (usize, usize, u16, Vec<u8>);

fn slice(i: usize, (ns, svc, port, hosts): &SliceSpec) -> KubeObject {
    let endpoints: Vec<_> = hosts
        .iter()
        .map(|h| json!({"addresses": [format!("10.{ns}.{svc}.{h}")]}))
        .collect();
    object(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("slice-{i}"), "namespace": format!("ns{ns}"),
                     "labels": {"kubernetes.io/service-name": format!("svc{svc}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": endpoints,
    }))
}

fn upsert(object: KubeObject) -> Change {
    Change::Upsert {
        object,
        origin: None,
    }
}

fn slices_strategy() -> impl Strategy<Value = Vec<SliceSpec>> {
    prop::collection::vec(
        (
            0..2usize,
            0..3usize,
            1..65535u16,
            prop::collection::vec(1..20u8, 0..5),
        ),
        0..12,
    )
}

/// One step of a random history: (kind, index, variant, delete).
type Step = (u8, usize, u8, bool);

fn steps_strategy() -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(
        prop::collection::vec((0..5u8, 0..3usize, 0..3u8, any::<bool>()), 1..4),
        1..25,
    )
}

/// The change of one step: a Service (port variant), a slice of it, an
/// Ingress, the Node or a Namespace; or its deletion.
fn step_change(&(kind, i, variant, delete): &Step) -> Change {
    let object = match kind {
        0 => object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc{i}"), "namespace": "ns"},
            "spec": {"clusterIP": format!("10.96.0.{}", i + 1),
                     "ports": [{"name": "http", "port": 80 + u16::from(variant), "targetPort": "http"}]},
        })),
        // A slice of Service `svc{i}` in the Services' namespace.
        1 => object(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc{i}-1"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": (0..=variant).map(|h| json!({"addresses": [format!("10.1.{i}.{}", h + 1)]})).collect::<Vec<_>>(),
        })),
        2 => object(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": format!("ing{i}"), "namespace": "ns"},
            "spec": {"rules": [{"host": format!("h{variant}.example"), "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": format!("svc{i}"), "port": {"number": 80}}}}]}}]},
        })),
        3 => object(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node{i}"), "labels": {"topology.kubernetes.io/zone": format!("zone-{variant}")}},
        })),
        _ => object(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{i}")}}),
        ),
    };
    if delete {
        Change::Delete(object.id())
    } else {
        upsert(object)
    }
}

/// Every id of the kinds the cursor tracks besides Services, with its value
/// in `snapshot` (rendered).
fn object_values(snapshot: &Snapshot) -> BTreeMap<ObjectId, String> {
    let id = |kind, namespace: &str, name: &str| ObjectId {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut out = BTreeMap::new();
    for (k, v) in &snapshot.ingresses {
        out.insert(id(Kind::Ingress, &k.namespace, &k.name), format!("{v:?}"));
    }
    for (k, v) in &snapshot.nodes {
        out.insert(id(Kind::Node, "", k), format!("{v:?}"));
    }
    for k in &snapshot.namespaces {
        out.insert(id(Kind::Namespace, "", k), String::new());
    }
    out
}

proptest! {
    /// The change cursor: between any two generations, every Service and
    /// object whose value differs is reported, a Service as `Endpoints` only
    /// when its spec is the same; and from one generation to the next
    /// (made by a batch that touched each object once), nothing else is.
    #[test]
    fn the_change_cursor_names_what_differs(batches in steps_strategy()) {
        let (mut writer, _rx) = ModelWriter::new();
        writer.set_synced();
        let mut history = vec![writer.snapshot()];
        let mut exact = false;
        for batch in &batches {
            writer.apply(batch.iter().map(step_change));
            let snapshot = writer.snapshot();
            if snapshot.generation != history.last().unwrap().generation {
                history.push(snapshot);
                let ids: std::collections::BTreeSet<_> =
                    batch.iter().map(|s| step_change(s).id()).collect();
                exact = ids.len() == batch.len();
            }
        }
        let last = history.last().unwrap().clone();
        for (i, old) in history.iter().enumerate() {
            let changes = last.changes_since(Some(old.generation));
            prop_assert!(!changes.everything());
            let keys: std::collections::BTreeSet<_> =
                old.services.keys().chain(last.services.keys()).cloned().collect();
            for key in keys {
                let (a, b) = (old.services.get(&key), last.services.get(&key));
                let reported = changes.service(&key);
                let next_step = exact && i + 2 == history.len();
                match (a, b) {
                    (Some(a), Some(b)) if a == b => {
                        prop_assert!(!next_step || reported.is_none(), "{key} reported unchanged");
                    }
                    (Some(a), Some(b)) => {
                        prop_assert!(reported.is_some(), "{key} changed, not reported");
                        if reported == Some(ServiceChange::Endpoints) {
                            prop_assert!(a.same_spec(b), "{key}: the spec changed");
                        }
                        if next_step && !a.same_spec(b) {
                            prop_assert_eq!(reported, Some(ServiceChange::Spec));
                        }
                    }
                    _ => prop_assert_eq!(reported, Some(ServiceChange::Spec), "{} came or went", key),
                }
            }
            let (a, b) = (object_values(old), object_values(&last));
            let ids: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).cloned().collect();
            for id in ids {
                let differs = a.get(&id) != b.get(&id);
                let reported = changes.touches_object(&id);
                prop_assert!(!differs || reported, "{id} changed, not reported");
                if exact && i + 2 == history.len() {
                    prop_assert_eq!(differs, reported, "{}", id);
                }
            }
        }
        prop_assert!(last.changes_since(None).everything());
        prop_assert!(last.changes_since(Some(last.generation + 1)).everything());
        prop_assert!(last.changes_since(Some(last.generation)).is_empty());
    }


    /// A source may translate Services and EndpointSlices ahead, on its own
    /// threads (`Change::prepare`): the writer then makes the same model,
    /// batch after batch, rejected objects and their problems included.
    #[test]
    fn prepared_changes_make_the_same_model(batches in steps_strategy()) {
        let (mut plain, _rx) = ModelWriter::new();
        let (mut prepared, _ry) = ModelWriter::new();
        plain.set_synced();
        prepared.set_synced();
        // Variant 2 of a Service does not translate: its last good version stays.
        let change = |step: &Step| match step {
            &(0, i, 2, false) => upsert(object(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc{i}"), "namespace": "ns"},
                "spec": {"clusterIP": "not-an-address", "ports": [{"port": 80}]},
            }))),
            step => step_change(step),
        };
        let mut translated = 0;
        for batch in &batches {
            plain.apply(batch.iter().map(change));
            prepared.apply(batch.iter().map(|step| {
                let c = change(step).prepare();
                translated += usize::from(matches!(c, Change::Translated { .. }));
                c
            }));
            let (a, b) = (plain.snapshot(), prepared.snapshot());
            prop_assert_eq!(a.generation, b.generation);
            prop_assert_eq!(&a.services, &b.services);
            prop_assert_eq!(&a.problems, &b.problems);
            prop_assert_eq!(object_values(&a), object_values(&b));
        }
        let kinds = batches.iter().flatten().filter(|s| s.0 <= 1 && !s.3).count();
        prop_assert_eq!(translated, kinds, "every Service and slice upsert comes translated");
    }

    /// Every endpoint of a Service comes from a slice labelled with that
    /// Service's name in its namespace, and the named target port resolves to
    /// that slice's port.
    #[test]
    fn endpoints_belong_to_their_service(slices in slices_strategy()) {
        let (mut writer, _rx) = ModelWriter::new();
        let mut changes: Vec<Change> = (0..2)
            .flat_map(|ns| (0..3).map(move |svc| upsert(service(&format!("ns{ns}"), &format!("svc{svc}"), "web"))))
            .collect();
        changes.extend(slices.iter().enumerate().map(|(i, s)| upsert(slice(i, s))));
        writer.apply(changes);
        let snapshot = writer.snapshot();
        let by_name: BTreeMap<String, &SliceSpec> =
            slices.iter().enumerate().map(|(i, s)| (format!("slice-{i}"), s)).collect();
        for service in snapshot.services.values() {
            let port = &service.ports[0];
            prop_assert_eq!(&port.target_port, &TargetPort::Name("web".into()));
            for backend in service.backends(port) {
                let spec = by_name[&*backend.endpoint.slice];
                prop_assert_eq!(format!("ns{}", spec.0), service.key.namespace.clone());
                prop_assert_eq!(format!("svc{}", spec.1), service.key.name.clone());
                // Port named "http" in the slice: the slice's number, per endpoint.
                prop_assert_eq!(backend.port, spec.2);
                prop_assert!(matches!(backend.address, IpAddr::V4(a) if a.octets()[1] as usize == spec.0 && a.octets()[2] as usize == spec.1));
            }
            // No address twice.
            let mut addresses: Vec<_> = service.endpoints.iter().map(|e| e.address).collect();
            addresses.dedup();
            prop_assert_eq!(addresses.len(), service.endpoints.len());
        }
    }

    /// The model does not depend on the order objects arrive in, and applying
    /// the same objects again publishes nothing new.
    #[test]
    fn order_independent_and_idempotent(slices in slices_strategy(), seed in any::<u64>()) {
        let objects: Vec<KubeObject> = (0..3)
            .map(|svc| service("ns0", &format!("svc{svc}"), "web"))
            .chain(slices.iter().enumerate().map(|(i, s)| slice(i, s)))
            .collect();
        let (mut forward, _rx1) = ModelWriter::new();
        forward.apply(objects.iter().cloned().map(upsert));
        // A deterministic shuffle: sort by a seeded hash of each object's id.
        let mut shuffled = objects.clone();
        shuffled.sort_by_key(|o| {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(seed, o.id()), &mut h);
            std::hash::Hasher::finish(&h)
        });
        let (mut other, _rx2) = ModelWriter::new();
        for o in shuffled {
            other.apply([upsert(o)]);
        }
        prop_assert_eq!(dump::render(&forward.snapshot()), dump::render(&other.snapshot()));
        let generation = forward.snapshot().generation;
        prop_assert_eq!(forward.apply(objects.into_iter().map(upsert)), generation);
    }

    /// Dual-stack cluster IPs come out in `ipFamilies` order, whatever order
    /// `clusterIPs` lists them in.
    #[test]
    fn dual_stack_follows_ip_families(v4 in any::<u32>(), v6 in any::<u128>(), v6_first in any::<bool>(), listed_v6_first in any::<bool>()) {
        let v4 = IpAddr::V4(Ipv4Addr::from(v4));
        let v6 = IpAddr::V6(Ipv6Addr::from(v6));
        let ips = if listed_v6_first { [v6, v4] } else { [v4, v6] };
        let families = if v6_first { ["IPv6", "IPv4"] } else { ["IPv4", "IPv6"] };
        let KubeObject::Service(svc) = object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "n"},
            "spec": {"clusterIPs": [ips[0].to_string(), ips[1].to_string()], "ipFamilies": families,
                     "ports": [{"port": 80}]},
        })) else { unreachable!() };
        let model = fairlead_model::translate::service(&svc).unwrap();
        let expected = if v6_first { IpFamily::V6 } else { IpFamily::V4 };
        prop_assert_eq!(IpFamily::of(&model.cluster_ips[0]), expected);
        prop_assert_eq!(model.cluster_ips.len(), 2);
    }

    /// Arbitrary JSON never panics the decoder or the translation.
    #[test]
    fn arbitrary_services_never_panic(port in any::<i64>(), target in ".{0,20}", ip in ".{0,40}", ty in ".{0,12}") {
        let value = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s"},
            "spec": {"type": ty, "clusterIP": ip, "ports": [{"port": port, "targetPort": target}]},
        });
        if let Ok(object) = decode(value) {
            let (mut writer, _rx) = ModelWriter::new();
            writer.apply([upsert(object)]);
        }
    }
}
