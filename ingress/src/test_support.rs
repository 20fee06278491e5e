//! Builders of small models for unit tests: manifests as JSON, run through
//! the real translation of `fairlead-model`.

use std::net::SocketAddr;
use std::sync::Arc;

use fairlead_model::{Change, ModelWriter, Snapshot, decode};
use serde_json::{Value, json};

/// A synced snapshot holding `objects`.
pub(crate) fn model(objects: Vec<Value>) -> Arc<Snapshot> {
    let (mut writer, _rx) = ModelWriter::new();
    let changes = objects
        .into_iter()
        .map(|o| Change::Upsert {
            object: decode(o).expect("test object decodes"),
            origin: None,
        })
        .collect();
    writer.replace_all(changes, Vec::new(), true);
    let snapshot = writer.snapshot();
    assert!(
        !snapshot.has_errors(),
        "test model has errors: {:?}",
        snapshot.problems
    );
    snapshot
}

/// A ClusterIP Service with TCP ports (name, port), target port = port.
pub(crate) fn service(namespace: &str, name: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "targetPort": p}))
        .collect();
    // Deterministic, so that the same Service built twice is equal.
    let n = format!("{namespace}/{name}")
        .bytes()
        .fold(2_166_136_261_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16_777_619)
        })
        % 62_500;
    let cluster_ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": ports, "clusterIP": cluster_ip},
    })
}

/// An EndpointSlice for `service` with one port (that of the first address)
/// and ready endpoints.
pub(crate) fn endpoints(
    namespace: &str,
    service: &str,
    port_name: &str,
    addrs: &[SocketAddr],
) -> Value {
    let port = addrs.first().map_or(80, SocketAddr::port);
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": endpoints,
    })
}

/// An Ingress with this spec.
pub(crate) fn ingress(namespace: &str, name: &str, spec: &Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// An IngressClass of fairlead's controller.
pub(crate) fn ingress_class(name: &str, is_default: bool) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name, "annotations": {
            "ingressclass.kubernetes.io/is-default-class": if is_default { "true" } else { "false" }}},
        "spec": {"controller": "fairlead.dev/ingress"},
    })
}
