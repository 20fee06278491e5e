//! Service → [`Service`] (without endpoints; see [`super::merge_endpoints`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Errors, is_dns_label, is_dns_subdomain, is_port_name};
use crate::error::FieldError;
use crate::types::{
    IpFamily, Service, ServicePort, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest allowed affinity timeout (1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Translates a Service. The result has no endpoints yet.
#[allow(
    clippy::too_many_lines,
    reason = "reads the object's fields top to bottom, in API order; splitting it would scatter the field paths"
)]
pub fn service(object: &core::Service) -> Result<Service, Vec<FieldError>> {
    let mut errors = Errors::default();
    let key = super::object_key(&object.metadata);
    let default_spec = core::ServiceSpec::default();
    let spec = object.spec.as_ref().unwrap_or(&default_spec);

    let headless = spec.cluster_ip.as_deref() == Some("None");
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") if headless => ServiceType::Headless,
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            errors.push(
                "spec.type",
                format!("must be ClusterIP, NodePort, LoadBalancer or ExternalName, got {other:?}"),
            );
            ServiceType::ClusterIp
        }
    };
    if headless
        && matches!(
            service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    {
        errors.push(
            "spec.clusterIP",
            format!("None (headless) is not allowed for type {service_type}"),
        );
    }

    let cluster_ips = match service_type {
        ServiceType::Headless | ServiceType::ExternalName => Vec::new(),
        _ => cluster_ips(spec, &mut errors),
    };

    let external_name = if service_type == ServiceType::ExternalName {
        match spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        {
            Some(name) if is_dns_subdomain(&name) => Some(name),
            Some(name) => {
                errors.push("spec.externalName", format!("{name:?} is not a DNS name"));
                None
            }
            None => {
                errors.push("spec.externalName", "required for type ExternalName");
                None
            }
        }
    } else {
        None
    };

    let ports = ports(spec, service_type, &mut errors);

    let external_ips = ip_list(
        spec.external_ips.as_deref(),
        "spec.externalIPs",
        &mut errors,
    );
    let load_balancer_ips = object
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, ingress)| {
            ingress
                .ip
                .as_deref()
                .and_then(|ip| errors.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip))
        })
        .collect();

    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, range)| {
            if let Ok(net) = range.trim().parse() {
                Some(net)
            } else {
                errors.push(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{range:?} is not a CIDR"),
                );
                None
            }
        })
        .collect();

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => SessionAffinity::None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => t,
                    _ => {
                        errors.push(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("must be in 1..{MAX_AFFINITY_TIMEOUT}, got {t}"),
                        );
                        DEFAULT_AFFINITY_TIMEOUT
                    }
                },
            };
            SessionAffinity::ClientIp { timeout_seconds }
        }
        Some(other) => {
            errors.push(
                "spec.sessionAffinity",
                format!("must be None or ClientIP, got {other:?}"),
            );
            SessionAffinity::None
        }
    };

    let external_traffic_policy = policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        &mut errors,
    );
    let internal_traffic_policy = policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        &mut errors,
    );
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| errors.port("spec.healthCheckNodePort", p));

    errors.finish(Service {
        key,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        external_name,
        traffic_distribution: spec.traffic_distribution.clone(),
        endpoints: Arc::from([]),
    })
}

fn policy(value: Option<&str>, field: &str, errors: &mut Errors) -> TrafficPolicy {
    match value {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            errors.push(field, format!("must be Cluster or Local, got {other:?}"));
            TrafficPolicy::Cluster
        }
    }
}

fn ip_list(list: Option<&[String]>, field: &str, errors: &mut Errors) -> Vec<IpAddr> {
    list.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| errors.ip(format!("{field}[{i}]"), ip))
        .collect()
}

/// `spec.clusterIPs` (or `spec.clusterIP`), validated and ordered by
/// `spec.ipFamilies` when given.
fn cluster_ips(spec: &core::ServiceSpec, errors: &mut Errors) -> Vec<IpAddr> {
    let (field, texts): (&str, Vec<&str>) = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(list), _) if !list.is_empty() => {
            ("spec.clusterIPs", list.iter().map(String::as_str).collect())
        }
        (_, Some(ip)) if !ip.is_empty() => ("spec.clusterIP", vec![ip.as_str()]),
        _ => {
            errors.push(
                "spec.clusterIP",
                "missing: a manifest must set the cluster IP (there is no apiserver here to allocate one)",
            );
            return Vec::new();
        }
    };
    if let (Some(primary), Some(list)) = (&spec.cluster_ip, &spec.cluster_ips)
        && !primary.is_empty()
        && list.first().is_some_and(|first| first != primary)
    {
        errors.push(
            "spec.clusterIPs[0]",
            format!("must equal spec.clusterIP ({primary})"),
        );
    }
    let mut ips: Vec<IpAddr> = texts
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let at = if field == "spec.clusterIP" {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            };
            errors.ip(at, t)
        })
        .collect();
    if ips.len() > 2 || (ips.len() == 2 && IpFamily::of(&ips[0]) == IpFamily::of(&ips[1])) {
        errors.push(field, "at most one address of each family (dual-stack)");
    }
    if let Some(families) = spec.ip_families.as_deref().filter(|f| !f.is_empty()) {
        let mut order = Vec::new();
        for (i, family) in families.iter().enumerate() {
            match family.as_str() {
                "IPv4" => order.push(IpFamily::V4),
                "IPv6" => order.push(IpFamily::V6),
                other => errors.push(
                    format!("spec.ipFamilies[{i}]"),
                    format!("must be IPv4 or IPv6, got {other:?}"),
                ),
            }
        }
        for ip in &ips {
            if !order.contains(&IpFamily::of(ip)) {
                errors.push(
                    "spec.ipFamilies",
                    format!(
                        "{ip} is {} but ipFamilies does not list it",
                        IpFamily::of(ip)
                    ),
                );
            }
        }
        ips.sort_by_key(|ip| order.iter().position(|f| *f == IpFamily::of(ip)));
    }
    ips
}

fn ports(
    spec: &core::ServiceSpec,
    service_type: ServiceType,
    errors: &mut Errors,
) -> Vec<ServicePort> {
    let list = spec.ports.as_deref().unwrap_or_default();
    let needs_node_port = service_type == ServiceType::NodePort
        || (service_type == ServiceType::LoadBalancer
            && spec.allocate_load_balancer_node_ports != Some(false));
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut ports = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if list.len() > 1 {
                errors.push(
                    field("name"),
                    "required when a Service has more than one port",
                );
            }
        } else if !is_dns_label(&name) {
            errors.push(field("name"), format!("{name:?} is not a DNS label"));
        }
        if !names.insert(name.clone()) && !name.is_empty() {
            errors.push(field("name"), format!("duplicate port name {name:?}"));
        }
        let protocol = errors.protocol(field("protocol"), p.protocol.as_deref());
        let Some(port) = errors.port(field("port"), p.port) else {
            continue;
        };
        if !numbers.insert((port, protocol)) {
            errors.push(field("port"), format!("duplicate port {port}/{protocol}"));
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match errors.port(field("targetPort"), *n) {
                Some(n) => TargetPort::Number(n),
                None => continue,
            },
            Some(IntOrString::String(s)) => {
                if let Ok(n) = s.parse::<i32>() {
                    // The API takes a string target port as a port *name*; a
                    // quoted number is a common slip, so say so.
                    errors.push(
                        field("targetPort"),
                        format!("{s:?} is a string, so it names a port; write {n} without quotes for a number"),
                    );
                    continue;
                }
                if !is_port_name(s) {
                    errors.push(
                        field("targetPort"),
                        format!("{s:?} is not a valid port name (IANA_SVC_NAME)"),
                    );
                    continue;
                }
                TargetPort::Name(s.clone())
            }
        };
        let node_port = match p.node_port {
            Some(n)
                if matches!(
                    service_type,
                    ServiceType::NodePort | ServiceType::LoadBalancer
                ) =>
            {
                errors.port(field("nodePort"), n)
            }
            Some(_) | None => {
                if needs_node_port {
                    errors.push(
                        field("nodePort"),
                        format!("missing: a {service_type} manifest must set it (there is no apiserver here to allocate one)"),
                    );
                }
                None
            }
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
            target_port,
            node_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: &serde_json::Value) -> Result<Service, Vec<FieldError>> {
        let object: core::Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap();
        service(&object)
    }

    #[test]
    fn clusterip_defaults() {
        let s = svc(&json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})).unwrap();
        assert_eq!(s.service_type, ServiceType::ClusterIp);
        assert_eq!(s.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.ports[0].protocol, crate::types::Protocol::Tcp);
        assert_eq!(s.session_affinity, SessionAffinity::None);
    }

    #[test]
    fn dual_stack_ordered_by_families() {
        let s = svc(&json!({
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ipFamilies": ["IPv6", "IPv4"],
            "ports": [{"port": 80}],
        }))
        .unwrap();
        assert_eq!(s.cluster_ips[0], "fd00::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_fields() {
        let e = svc(&json!({
            "clusterIP": "10.96.0.300",
            "ports": [{"name": "a", "port": 70000}, {"port": 80, "targetPort": "8080"}],
            "sessionAffinity": "Sticky",
        }))
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.clusterIP",
                "spec.ports[0].port",
                "spec.ports[1].name",
                "spec.ports[1].targetPort",
                "spec.sessionAffinity"
            ]
        );
    }

    #[test]
    fn affinity_timeout() {
        let s = svc(
            &json!({"clusterIP": "10.0.0.1", "ports": [{"port": 1}], "sessionAffinity": "ClientIP"}),
        )
        .unwrap();
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: DEFAULT_AFFINITY_TIMEOUT
            }
        );
        assert!(svc(&json!({"clusterIP": "10.0.0.1", "ports": [{"port": 1}], "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}))
        .is_err());
    }

    #[test]
    fn headless_and_external_name() {
        let s = svc(&json!({"clusterIP": "None"})).unwrap();
        assert_eq!(s.service_type, ServiceType::Headless);
        assert!(s.cluster_ips.is_empty());
        let s = svc(&json!({"type": "ExternalName", "externalName": "DB.Example.com."})).unwrap();
        assert_eq!(s.external_name.as_deref(), Some("db.example.com"));
        assert!(svc(&json!({"type": "ExternalName"})).is_err());
    }

    #[test]
    fn node_port_required_without_allocator() {
        let e = svc(&json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}))
            .unwrap_err();
        assert_eq!(e[0].field, "spec.ports[0].nodePort");
        let s = svc(&json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80}]}))
        .unwrap();
        assert_eq!(s.ports[0].node_port, None);
    }
}
