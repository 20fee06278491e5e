//! A stable, readable text rendering of a snapshot: what `fairlead check`
//! prints and what the golden tests compare.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::snapshot::Snapshot;
use crate::types::{Endpoint, IngressBackend, Service, SessionAffinity, TrafficPolicy};

/// Renders the model. Deterministic: sorted, no timestamps or generations
/// (certificate validity is shown as dates).
#[must_use]
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, snapshot);
    out
}

fn write_all(out: &mut String, s: &Snapshot) -> std::fmt::Result {
    if !s.namespaces.is_empty() {
        let names: Vec<&str> = s.namespaces.iter().map(String::as_str).collect();
        writeln!(out, "namespaces: {}", names.join(", "))?;
    }
    for (name, labels) in &s.namespace_labels {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "namespace {name} labels {}", labels.join(","))?;
    }
    for node in s.nodes.values() {
        let ips: Vec<String> = node.internal_ips.iter().map(ToString::to_string).collect();
        write!(out, "node {} internal=[{}]", node.name, ips.join(", "))?;
        if !node.external_ips.is_empty() {
            let ips: Vec<String> = node.external_ips.iter().map(ToString::to_string).collect();
            write!(out, " external=[{}]", ips.join(", "))?;
        }
        if let Some(zone) = &node.zone {
            write!(out, " zone={zone}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "services: {}", s.services.len())?;
    for service in s.services.values() {
        write_service(out, service)?;
    }
    if !s.ingress_classes.is_empty() {
        writeln!(out, "ingress classes:")?;
        for class in s.ingress_classes.values() {
            writeln!(
                out,
                "  {} controller={}{}",
                class.name,
                class.controller,
                if class.is_default { " (default)" } else { "" }
            )?;
        }
    }
    writeln!(out, "ingresses: {}", s.ingresses.len())?;
    for ingress in s.ingresses.values() {
        writeln!(
            out,
            "  ingress {} class={}",
            ingress.key,
            ingress.class.as_deref().unwrap_or("<default>")
        )?;
        if let Some(backend) = &ingress.default_backend {
            writeln!(out, "    default -> {}", backend_text(backend))?;
        }
        for rule in &ingress.rules {
            let host = rule
                .host
                .as_ref()
                .map_or_else(|| "*".to_owned(), ToString::to_string);
            if rule.paths.is_empty() {
                writeln!(out, "    {host} (no paths: default backend)")?;
            }
            for path in &rule.paths {
                writeln!(
                    out,
                    "    {host}{} {} -> {}",
                    path.path,
                    path.path_type,
                    backend_text(&path.backend)
                )?;
            }
        }
        for tls in &ingress.tls {
            let hosts: Vec<String> = tls.hosts.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "    tls [{}] secret={}",
                hosts.join(", "),
                tls.secret_name
                    .as_deref()
                    .unwrap_or("<default certificate>")
            )?;
        }
    }
    crate::gateway_types::dump(out, s)?;
    if !s.certificates.is_empty() {
        writeln!(out, "certificates:")?;
        for cert in s.certificates.values() {
            writeln!(
                out,
                "  secret {} names=[{}] chain={} valid {} .. {}",
                cert.key,
                cert.dns_names.join(", "),
                cert.chain.len(),
                date(cert.not_before),
                date(cert.not_after),
            )?;
        }
    }
    if !s.problems.is_empty() {
        writeln!(out, "problems: {}", s.problems.len())?;
        for problem in s.problems.iter() {
            writeln!(out, "  {problem}")?;
        }
    }
    Ok(())
}

fn write_service(out: &mut String, service: &Service) -> std::fmt::Result {
    write!(out, "  service {} {}", service.key, service.service_type)?;
    if !service.cluster_ips.is_empty() {
        let ips: Vec<String> = service
            .cluster_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        write!(out, " vip=[{}]", ips.join(", "))?;
    }
    if let Some(name) = &service.external_name {
        write!(out, " -> {name}")?;
    }
    let (ready, total) = service.ready_counts();
    writeln!(out, " endpoints {ready}/{total} ready")?;
    let mut flags = Vec::new();
    if let SessionAffinity::ClientIp { timeout_seconds } = service.session_affinity {
        flags.push(format!("affinity=ClientIP/{timeout_seconds}s"));
    }
    if service.external_traffic_policy == TrafficPolicy::Local {
        flags.push("externalTrafficPolicy=Local".to_owned());
    }
    if service.internal_traffic_policy == TrafficPolicy::Local {
        flags.push("internalTrafficPolicy=Local".to_owned());
    }
    if let Some(port) = service.health_check_node_port {
        flags.push(format!("healthCheckNodePort={port}"));
    }
    if service.publish_not_ready_addresses {
        flags.push("publishNotReadyAddresses".to_owned());
    }
    if let Some(td) = &service.traffic_distribution {
        flags.push(format!("trafficDistribution={td}"));
    }
    for (label, ips) in [
        ("externalIPs", &service.external_ips),
        ("loadBalancer", &service.load_balancer_ips),
    ] {
        if !ips.is_empty() {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            flags.push(format!("{label}=[{}]", ips.join(", ")));
        }
    }
    if !service.load_balancer_source_ranges.is_empty() {
        let ranges: Vec<String> = service
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        flags.push(format!("sourceRanges=[{}]", ranges.join(", ")));
    }
    if !flags.is_empty() {
        writeln!(out, "    {}", flags.join(" "))?;
    }
    for port in &service.ports {
        let name = if port.name.is_empty() {
            "<unnamed>"
        } else {
            &port.name
        };
        write!(
            out,
            "    port {name} {}/{} -> {}",
            port.port, port.protocol, port.target_port
        )?;
        if let Some(node_port) = port.node_port {
            write!(out, " nodePort={node_port}")?;
        }
        if let Some(app) = &port.app_protocol {
            write!(out, " appProtocol={app}")?;
        }
        let backends: Vec<String> = service
            .backends(port)
            .map(|b| {
                if b.address.is_ipv6() {
                    format!("[{}]:{}", b.address, b.port)
                } else {
                    format!("{}:{}", b.address, b.port)
                }
            })
            .collect();
        writeln!(out, " targets=[{}]", backends.join(", "))?;
    }
    for endpoint in service.endpoints.iter() {
        write_endpoint(out, endpoint)?;
    }
    Ok(())
}

fn write_endpoint(out: &mut String, e: &Endpoint) -> std::fmt::Result {
    let state = match (
        e.conditions.ready,
        e.conditions.serving,
        e.conditions.terminating,
    ) {
        (true, _, _) => "ready",
        (false, true, true) => "terminating-serving",
        (false, false, true) => "terminating",
        (false, true, false) => "serving-not-ready",
        (false, false, false) => "not-ready",
    };
    write!(out, "    endpoint {} {state}", e.address)?;
    for (label, value) in [
        ("node", &e.node_name),
        ("zone", &e.zone),
        ("hostname", &e.hostname),
    ] {
        if let Some(value) = value {
            write!(out, " {label}={value}")?;
        }
    }
    if let Some(target) = &e.target_ref {
        write!(out, " target={}/{}", target.kind, target.name)?;
    }
    if !e.hint_zones.is_empty() {
        write!(out, " hints=[{}]", e.hint_zones.join(", "))?;
    }
    writeln!(out, " slice={}", e.slice)
}

fn backend_text(backend: &IngressBackend) -> String {
    backend.to_string()
}

/// A UTC date (YYYY-MM-DD) for a time, without a calendar crate.
fn date(time: SystemTime) -> String {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), on unsigned arithmetic
    // since dates here are after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(
            date(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            "2100-01-01"
        );
    }
}
