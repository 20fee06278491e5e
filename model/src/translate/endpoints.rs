//! EndpointSlice → [`Slice`], and merging the slices of a Service.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1 as discovery;

use super::{Errors, SERVICE_NAME_LABEL, is_dns_label};
use crate::error::FieldError;
use crate::types::{Endpoint, EndpointConditions, EndpointPort, IpFamily, ServiceKey, TargetRef};

/// A translated EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The Service it belongs to (namespace + `kubernetes.io/service-name`).
    pub service: ServiceKey,
    /// Its `addressType`; `None` for FQDN slices, which carry no usable endpoints.
    pub family: Option<IpFamily>,
    /// Its endpoints, deduplicated by address and sorted by address as
    /// [`merge_endpoints`] leaves them, so that a Service with one slice
    /// shares them.
    pub endpoints: Arc<[Endpoint]>,
}

/// Translates an EndpointSlice.
#[allow(
    clippy::too_many_lines,
    reason = "reads the object's fields top to bottom, in API order; splitting it would scatter the field paths"
)]
pub fn endpoint_slice(object: &discovery::EndpointSlice) -> Result<Slice, Vec<FieldError>> {
    let mut errors = Errors::default();
    let namespace = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let slice_name: Arc<str> = Arc::from(object.metadata.name.as_deref().unwrap_or_default());
    let service_name = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .unwrap_or_default();
    if service_name.is_empty() {
        errors.push(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the label names the Service this slice belongs to",
        );
    }
    let family = match object.address_type.as_str() {
        "IPv4" => Some(IpFamily::V4),
        "IPv6" => Some(IpFamily::V6),
        "FQDN" => None,
        other => {
            errors.push(
                "addressType",
                format!("must be IPv4, IPv6 or FQDN, got {other:?}"),
            );
            None
        }
    };

    let mut ports = Vec::new();
    for (i, p) in object
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let protocol = errors.protocol(format!("ports[{i}].protocol"), p.protocol.as_deref());
        let port = p
            .port
            .and_then(|n| errors.port(format!("ports[{i}].port"), n));
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() && !is_dns_label(&name) {
            errors.push(
                format!("ports[{i}].name"),
                format!("{name:?} is not a DNS label"),
            );
        }
        ports.push(EndpointPort {
            name,
            port,
            protocol,
            app_protocol: p.app_protocol.clone(),
        });
    }
    let ports: Arc<[EndpointPort]> = ports.into();

    let mut endpoints = Vec::with_capacity(object.endpoints.len());
    if let Some(family) = family {
        for (i, e) in object.endpoints.iter().enumerate() {
            let Some(first) = e.addresses.first() else {
                errors.push(
                    format!("endpoints[{i}].addresses"),
                    "must hold at least one address",
                );
                continue;
            };
            // Parsed here, not with `Errors::ip`: its field path would be
            // formatted for every endpoint, error or not.
            let Ok(address) = first.trim().parse::<IpAddr>() else {
                errors.push(
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{first:?} is not an IP address"),
                );
                continue;
            };
            if IpFamily::of(&address) != family {
                errors.push(
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{address} is not {family} (the slice's addressType)"),
                );
                continue;
            }
            if let Some(hostname) = &e.hostname
                && !is_dns_label(hostname)
            {
                errors.push(
                    format!("endpoints[{i}].hostname"),
                    format!("{hostname:?} is not a DNS label"),
                );
            }
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let conditions = EndpointConditions {
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            };
            let hints = e.hints.as_ref();
            endpoints.push(Endpoint {
                address,
                conditions,
                node_name: e.node_name.clone(),
                zone: e.zone.clone(),
                hostname: e.hostname.clone(),
                target_ref: e.target_ref.as_ref().map(|r| TargetRef {
                    kind: r.kind.clone().unwrap_or_default(),
                    namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                    name: r.name.clone().unwrap_or_default(),
                }),
                hint_zones: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default(),
                hint_nodes: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default(),
                ports: Arc::clone(&ports),
                slice: Arc::clone(&slice_name),
            });
        }
    }
    errors.finish(Slice {
        service: ServiceKey::new(namespace, service_name),
        family,
        endpoints: dedup_by_address(endpoints),
    })
}

/// The endpoints of one slice as [`merge_endpoints_of`] leaves them (sorted
/// by address, each address once: the ready copy wins, then the serving
/// one, then the first), without copying them.
fn dedup_by_address(mut endpoints: Vec<Endpoint>) -> Arc<[Endpoint]> {
    let rank = |e: &Endpoint| (e.conditions.ready, e.conditions.serving);
    // Stable: the endpoints of one address stay in the slice's order.
    endpoints.sort_by_key(|e| e.address);
    endpoints.dedup_by(|later, kept| {
        if later.address != kept.address {
            return false;
        }
        if rank(later) > rank(kept) {
            std::mem::swap(later, kept);
        }
        true
    });
    endpoints.into()
}

/// Merges the endpoints of a Service's slices, given in slice-name order.
/// An address listed by more than one slice (it happens while a Pod moves
/// between slices) appears once: the ready copy wins, then the serving one,
/// then the first. The result is sorted by address.
pub fn merge_endpoints<'a>(slices: impl IntoIterator<Item = &'a Slice>) -> Arc<[Endpoint]> {
    let slices: Vec<&Slice> = slices
        .into_iter()
        .filter(|s| !s.endpoints.is_empty())
        .collect();
    match slices[..] {
        [] => Arc::from([]),
        // A slice's endpoints are merged already: the Service shares them.
        [only] => Arc::clone(&only.endpoints),
        _ => merge_endpoints_of(slices.iter().map(|s| s.endpoints.iter())),
    }
}

/// The endpoints of several lists, deduplicated by address (see
/// [`merge_endpoints`]) and sorted by address.
fn merge_endpoints_of<'a, I>(lists: impl IntoIterator<Item = I>) -> Arc<[Endpoint]>
where
    I: Iterator<Item = &'a Endpoint>,
{
    let mut by_address: BTreeMap<IpAddr, &Endpoint> = BTreeMap::new();
    for list in lists {
        for endpoint in list {
            by_address
                .entry(endpoint.address)
                .and_modify(|kept| {
                    let rank = |e: &Endpoint| (e.conditions.ready, e.conditions.serving);
                    if rank(endpoint) > rank(kept) {
                        *kept = endpoint;
                    }
                })
                .or_insert(endpoint);
        }
    }
    by_address.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(value: serde_json::Value) -> Result<Slice, Vec<FieldError>> {
        endpoint_slice(&serde_json::from_value(value).unwrap())
    }

    #[test]
    fn conditions_default_to_ready() {
        let s = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ],
        }))
        .unwrap();
        assert_eq!(s.service, ServiceKey::new("shop", "web"));
        assert_eq!(
            s.endpoints[0].conditions,
            EndpointConditions {
                ready: true,
                serving: true,
                terminating: false
            }
        );
        assert_eq!(
            s.endpoints[1].conditions,
            EndpointConditions {
                ready: false,
                serving: true,
                terminating: true
            }
        );
    }

    #[test]
    fn one_slice_is_deduplicated_as_slices_are_merged() {
        let s = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.3"], "hostname": "a", "conditions": {"ready": false, "serving": false}},
                {"addresses": ["10.0.0.1"], "hostname": "b"},
                {"addresses": ["10.0.0.3"], "hostname": "c", "conditions": {"ready": false, "serving": true}},
                {"addresses": ["10.0.0.3"], "hostname": "d", "conditions": {"ready": false, "serving": true}},
                {"addresses": ["10.0.0.2"], "hostname": "e", "conditions": {"ready": false}},
                {"addresses": ["10.0.0.2"], "hostname": "f"},
            ],
        }))
        .unwrap();
        let hostnames: Vec<&str> = s
            .endpoints
            .iter()
            .map(|e| e.hostname.as_deref().unwrap())
            .collect();
        assert_eq!(hostnames, ["b", "f", "c"]);
        // Against the merge of several slices, on a list with duplicates of
        // every rank in both orders.
        let mut raw: Vec<Endpoint> = Vec::new();
        for (n, e) in s
            .endpoints
            .iter()
            .chain(s.endpoints.iter().rev())
            .enumerate()
        {
            let mut e = e.clone();
            e.hostname = Some(format!("h{n}"));
            e.conditions.ready = n % 3 == 0;
            e.conditions.serving = n % 2 == 0;
            raw.push(e);
        }
        assert_eq!(
            *dedup_by_address(raw.clone()),
            *merge_endpoints_of([raw.iter()])
        );
    }

    #[test]
    fn family_mismatch_and_missing_label() {
        let e = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1"},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["10.0.0.1"]}],
        }))
        .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].field, "metadata.labels[kubernetes.io/service-name]");
        assert_eq!(e[1].field, "endpoints[0].addresses[0]");
    }
}
