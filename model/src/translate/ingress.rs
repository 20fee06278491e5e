//! Ingress → [`Ingress`], IngressClass → [`IngressClass`].

use std::net::IpAddr;

use k8s_openapi::api::networking::v1 as networking;

use super::{Errors, is_dns_subdomain, is_port_name};
use crate::error::FieldError;
use crate::types::{
    Host, Ingress, IngressBackend, IngressClass, IngressPath, IngressRule, IngressTls, PathType,
    PortRef,
};

/// Annotation that names an Ingress's class (before `spec.ingressClassName`).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Annotation that marks the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Translates an Ingress.
#[allow(
    clippy::too_many_lines,
    reason = "reads the object's fields top to bottom, in API order; splitting it would scatter the field paths"
)]
pub fn ingress(object: &networking::Ingress) -> Result<Ingress, Vec<FieldError>> {
    let mut errors = Errors::default();
    let key = super::object_key(&object.metadata);
    let default_spec = networking::IngressSpec::default();
    let spec = object.spec.as_ref().unwrap_or(&default_spec);
    let class = spec.ingress_class_name.clone().or_else(|| {
        object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .cloned()
    });
    let default_backend = spec
        .default_backend
        .as_ref()
        .and_then(|b| backend(b, "spec.defaultBackend", &mut errors));

    let mut rules = Vec::new();
    for (i, rule) in spec.rules.as_deref().unwrap_or_default().iter().enumerate() {
        let host = rule
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .and_then(|h| host(h, &format!("spec.rules[{i}].host"), &mut errors));
        let mut paths = Vec::new();
        let http_paths = rule
            .http
            .as_ref()
            .map(|h| h.paths.as_slice())
            .unwrap_or_default();
        for (j, p) in http_paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let path_type = match p.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                "ImplementationSpecific" => PathType::ImplementationSpecific,
                other => {
                    errors.push(
                        format!("{field}.pathType"),
                        format!("must be Exact, Prefix or ImplementationSpecific, got {other:?}"),
                    );
                    continue;
                }
            };
            let path = match p.path.as_deref() {
                None | Some("") if path_type == PathType::ImplementationSpecific => "/".to_owned(),
                None | Some("") => {
                    errors.push(
                        format!("{field}.path"),
                        format!("required for pathType {path_type}"),
                    );
                    continue;
                }
                Some(path) => path.to_owned(),
            };
            if !path.starts_with('/') {
                errors.push(
                    format!("{field}.path"),
                    format!("{path:?} must start with '/'"),
                );
                continue;
            }
            if let Some(bad) = path
                .chars()
                .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#'))
            {
                errors.push(
                    format!("{field}.path"),
                    format!("{path:?} contains {bad:?}, which cannot be in a URL path"),
                );
                continue;
            }
            let Some(backend) = backend(&p.backend, &format!("{field}.backend"), &mut errors)
            else {
                continue;
            };
            paths.push(IngressPath {
                path,
                path_type,
                backend,
            });
        }
        rules.push(IngressRule { host, paths });
    }

    let mut tls = Vec::new();
    for (i, t) in spec.tls.as_deref().unwrap_or_default().iter().enumerate() {
        let hosts = t
            .hosts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(j, h)| host(h, &format!("spec.tls[{i}].hosts[{j}]"), &mut errors))
            .collect();
        tls.push(IngressTls {
            hosts,
            secret_name: t.secret_name.clone().filter(|s| !s.is_empty()),
        });
    }
    if default_backend.is_none() && rules.is_empty() {
        errors.push("spec", "an Ingress needs rules or a defaultBackend");
    }
    errors.finish(Ingress {
        key,
        class,
        default_backend,
        rules,
        tls,
    })
}

fn host(text: &str, field: &str, errors: &mut Errors) -> Option<Host> {
    let lower = text.to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_ok() {
        errors.push(
            field,
            format!("{text:?} is an IP address; hosts must be DNS names"),
        );
        return None;
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if is_dns_subdomain(suffix) {
            return Some(Host::Wildcard(suffix.to_owned()));
        }
    } else if is_dns_subdomain(&lower) {
        return Some(Host::Exact(lower));
    }
    errors.push(
        field,
        format!("{text:?} is not a DNS name (a wildcard may only be a whole first label, as in *.example.com)"),
    );
    None
}

fn backend(
    b: &networking::IngressBackend,
    field: &str,
    errors: &mut Errors,
) -> Option<IngressBackend> {
    match (&b.service, &b.resource) {
        (Some(service), None) => {
            let port = service.port.as_ref();
            let port = match (
                port.and_then(|p| p.number),
                port.and_then(|p| p.name.as_deref()),
            ) {
                (Some(n), None) => {
                    PortRef::Number(errors.port(format!("{field}.service.port.number"), n)?)
                }
                (None, Some(name)) if is_port_name(name) || super::is_dns_label(name) => {
                    PortRef::Name(name.to_owned())
                }
                (None, Some(name)) => {
                    errors.push(
                        format!("{field}.service.port.name"),
                        format!("{name:?} is not a port name"),
                    );
                    return None;
                }
                _ => {
                    errors.push(
                        format!("{field}.service.port"),
                        "exactly one of number or name is required",
                    );
                    return None;
                }
            };
            if !super::is_dns_label(&service.name) {
                errors.push(
                    format!("{field}.service.name"),
                    format!("{:?} is not a Service name", service.name),
                );
                return None;
            }
            Some(IngressBackend::Service {
                name: service.name.clone(),
                port,
            })
        }
        (None, Some(resource)) => Some(IngressBackend::Resource {
            api_group: resource.api_group.clone(),
            kind: resource.kind.clone(),
            name: resource.name.clone(),
        }),
        _ => {
            errors.push(field, "exactly one of service or resource is required");
            None
        }
    }
}

/// Translates an IngressClass.
pub fn ingress_class(object: &networking::IngressClass) -> Result<IngressClass, Vec<FieldError>> {
    let mut errors = Errors::default();
    let controller = object
        .spec
        .as_ref()
        .and_then(|s| s.controller.clone())
        .unwrap_or_default();
    if controller.is_empty() {
        errors.push("spec.controller", "required");
    }
    let is_default = object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true");
    errors.finish(IngressClass {
        name: object.metadata.name.clone().unwrap_or_default(),
        controller,
        is_default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ing(spec: &serde_json::Value) -> Result<Ingress, Vec<FieldError>> {
        ingress(
            &serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "shop", "namespace": "shop"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn hosts_paths_backends() {
        let i = ing(&json!({
            "ingressClassName": "fairlead",
            "rules": [{"host": "*.Example.com", "http": {"paths": [
                {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
                {"pathType": "ImplementationSpecific", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            ]}}],
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
        }))
        .unwrap();
        assert_eq!(i.class.as_deref(), Some("fairlead"));
        assert_eq!(i.rules[0].host, Some(Host::Wildcard("example.com".into())));
        assert_eq!(i.rules[0].paths[1].path, "/");
        assert_eq!(i.tls[0].secret_name.as_deref(), Some("shop-tls"));
    }

    #[test]
    fn rejects_bad_hosts_and_paths() {
        let e = ing(&json!({"rules": [
            {"host": "a.*.com", "http": {"paths": [
                {"path": "api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                {"path": "/a b", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                {"path": "/ok", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {}}}},
            ]}},
            {"host": "10.0.0.1"},
        ]}))
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].host",
                "spec.rules[0].http.paths[0].path",
                "spec.rules[0].http.paths[1].path",
                "spec.rules[0].http.paths[2].backend.service.port",
                "spec.rules[1].host",
            ]
        );
    }
}
