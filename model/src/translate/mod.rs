//! Translation from Kubernetes objects to model types: pure functions, one
//! layer, used by every source. Each returns the model value or every field
//! error it found, with the field path.

mod endpoints;
mod gateway_api;
mod ingress;
mod secret;
mod service;

pub use endpoints::{Slice, endpoint_slice, merge_endpoints};
pub use gateway_api::{gateway, gateway_class, grpc_route, http_route, reference_grant};
pub use ingress::{DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION, ingress, ingress_class};
pub use secret::{TLS_SECRET_TYPE, is_tls_secret, tls_secret};
pub use service::{DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT, service};

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::FieldError;
use crate::types::{Node, ObjectKey, Protocol};

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label on a Node naming its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Namespace (`default` when unset, as `kubectl apply` does) and name.
fn object_key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Collects the field errors of one object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// Parses an IP address, recording an error on failure.
    fn ip(&mut self, field: impl Into<String>, text: &str) -> Option<IpAddr> {
        if let Ok(ip) = text.trim().parse() {
            Some(ip)
        } else {
            self.push(field, format!("{text:?} is not an IP address"));
            None
        }
    }

    /// A port number in 1..=65535.
    fn port(&mut self, field: impl Into<String>, value: i32) -> Option<u16> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.push(
                    field,
                    format!("must be a port number in 1..65535, got {value}"),
                );
                None
            }
        }
    }

    fn protocol(&mut self, field: impl Into<String>, value: Option<&str>) -> Protocol {
        match value {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                self.push(field, format!("must be TCP, UDP or SCTP, got {other:?}"));
                Protocol::Tcp
            }
        }
    }
}

/// A DNS-1123 label: 1–63 lower-case alphanumerics or '-', alphanumeric at
/// both ends.
#[must_use]
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
#[must_use]
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// An IANA service name (a named port): 1–15 characters, lower-case
/// alphanumerics and '-', at least one letter, no '-' at the ends or twice in
/// a row.
#[must_use]
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Translates a Node: its addresses and zone.
pub fn node(object: &core::Node) -> Result<Node, Vec<FieldError>> {
    let mut errors = Errors::default();
    let mut internal_ips = Vec::new();
    let mut external_ips = Vec::new();
    let addresses = object
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for (i, address) in addresses.iter().enumerate() {
        let list = match address.type_.as_str() {
            "InternalIP" => &mut internal_ips,
            "ExternalIP" => &mut external_ips,
            _ => continue,
        };
        if let Some(ip) = errors.ip(format!("status.addresses[{i}].address"), &address.address) {
            list.push(ip);
        }
    }
    let zone = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    errors.finish(Node {
        name: object.metadata.name.clone().unwrap_or_default(),
        internal_ips,
        external_ips,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("example.com"));
        assert!(!is_dns_subdomain("example..com"));
        assert!(is_port_name("http"));
        assert!(is_port_name("h2c-1"));
        assert!(!is_port_name("8080"));
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("much-too-long-name"));
    }
}
