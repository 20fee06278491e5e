//! Gateway API objects → model: GatewayClass, Gateway, HTTPRoute. Field
//! errors name the field path; a route rule that asks for something fairlead
//! does not do yet (a regular expression, a filter) is an error on that
//! field, so the last good version stays in force and `fairlead check` says
//! why.

use crate::error::FieldError;
use crate::gateway_api as wire;
use crate::gateway_types::{
    AllowedNamespaces, CertificateRef, Gateway, GatewayClass, GrantFrom, GrantTo, GrpcMethodMatch,
    GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HeaderMatch, Hostname, HttpRoute, HttpRouteRule,
    LabelExpression, Listener, ListenerProtocol, ListenerTls, NamespaceSelector, ParentRef,
    PathMatch, Pattern, QueryMatch, ReferenceGrant, RouteBackend, RouteBackendTarget, RouteMatch,
    StringMatch,
};
use crate::gateway_types::{
    HeaderModifier, PathModifier, Redirect, Rewrite, RouteFilter, RouteTimeouts,
};

use super::{Errors, is_dns_label, is_dns_subdomain, object_key};

/// Largest `backendRefs[].weight` the spec allows.
const MAX_WEIGHT: i32 = 1_000_000;

/// Methods `matches[].method` may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Translates a GatewayClass.
pub fn gateway_class(object: &wire::GatewayClass) -> Result<GatewayClass, Vec<FieldError>> {
    let mut errors = Errors::default();
    if object.spec.controller_name.is_empty() {
        errors.push("spec.controllerName", "missing");
    }
    errors.finish(GatewayClass {
        name: object.metadata.name.clone().unwrap_or_default(),
        controller: object.spec.controller_name.clone(),
    })
}

/// A listener or route hostname: a DNS subdomain, or `*.` and one.
fn hostname(errors: &mut Errors, field: String, text: &str) -> Option<Hostname> {
    let lower = text.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if !is_dns_subdomain(name) || name.parse::<std::net::IpAddr>().is_ok() {
        errors.push(
            field,
            format!("{text:?} is not a hostname (a DNS name, optionally starting with \"*.\"; no IP addresses)"),
        );
        return None;
    }
    Some(if wild {
        Hostname::Wildcard(name.to_owned())
    } else {
        Hostname::Exact(name.to_owned())
    })
}

/// Translates a Gateway: its listeners and addresses.
#[expect(
    clippy::too_many_lines,
    reason = "each listener field in spec order, validated where it is read"
)]
pub fn gateway(object: &wire::Gateway) -> Result<Gateway, Vec<FieldError>> {
    let mut errors = Errors::default();
    let spec = &object.spec;
    if spec.gateway_class_name.is_empty() {
        errors.push("spec.gatewayClassName", "missing");
    }
    if spec.listeners.is_empty() {
        errors.push("spec.listeners", "a Gateway needs at least one listener");
    }
    let mut listeners = Vec::with_capacity(spec.listeners.len());
    for (i, l) in spec.listeners.iter().enumerate() {
        let field = |name: &str| format!("spec.listeners[{i}].{name}");
        if !is_dns_label(&l.name) {
            errors.push(field("name"), format!("{:?} is not a DNS label", l.name));
        }
        if spec.listeners[..i].iter().any(|o| o.name == l.name) {
            errors.push(
                field("name"),
                format!("{:?} is used by an earlier listener", l.name),
            );
        }
        let host = l
            .hostname
            .as_deref()
            .and_then(|h| hostname(&mut errors, field("hostname"), h));
        let port = errors.port(field("port"), l.port);
        let protocol = match l.protocol.as_str() {
            "HTTP" => ListenerProtocol::Http,
            "HTTPS" => ListenerProtocol::Https,
            "" => {
                errors.push(field("protocol"), "missing");
                ListenerProtocol::Http
            }
            other => ListenerProtocol::Other(other.to_owned()),
        };
        let allowed = l.allowed_routes.as_ref();
        let from = allowed
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref());
        let allowed_namespaces = match from {
            None | Some("Same") => AllowedNamespaces::Same,
            Some("All") => AllowedNamespaces::All,
            Some("Selector") => AllowedNamespaces::Selector(namespace_selector(
                &mut errors,
                &field("allowedRoutes.namespaces.selector"),
                allowed
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.selector.as_ref()),
            )),
            Some(other) => {
                errors.push(
                    field("allowedRoutes.namespaces.from"),
                    format!("must be All, Selector or Same, got {other:?}"),
                );
                AllowedNamespaces::Same
            }
        };
        let mut allowed_kinds = Vec::new();
        for (k, kind) in allowed
            .map(|a| a.kinds.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match kind.group.as_deref() {
                None | Some(wire::GROUP) => allowed_kinds.push(kind.kind.clone()),
                Some(group) => errors.push(
                    field(&format!("allowedRoutes.kinds[{k}].group")),
                    format!("InvalidRouteKinds: group {group:?} has no route kinds"),
                ),
            }
        }
        let tls = l.tls.as_ref().map(|tls| ListenerTls {
            mode: tls.mode.clone().unwrap_or_else(|| "Terminate".to_owned()),
            certificates: tls
                .certificate_refs
                .iter()
                .map(|c| CertificateRef {
                    group: c.group.clone().unwrap_or_default(),
                    kind: c.kind.clone().unwrap_or_else(|| "Secret".to_owned()),
                    secret: crate::types::ObjectKey::new(
                        c.namespace
                            .clone()
                            .or_else(|| object.metadata.namespace.clone())
                            .unwrap_or_else(|| "default".to_owned()),
                        c.name.clone(),
                    ),
                })
                .collect(),
        });
        listeners.push(Listener {
            name: l.name.clone(),
            hostname: host,
            port: port.unwrap_or(0),
            protocol,
            allowed_namespaces,
            allowed_kinds,
            tls,
        });
    }
    let (addresses, unsupported) = gateway_addresses(&spec.addresses);
    let key = object_key(&object.metadata);
    let class = spec.gateway_class_name.clone();
    errors.finish(Gateway {
        key,
        class,
        listeners,
        addresses,
        unsupported_addresses: unsupported,
    })
}

/// `allowedRoutes.namespaces.selector` (required with `from: Selector`).
fn namespace_selector(
    errors: &mut Errors,
    field: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> NamespaceSelector {
    let Some(selector) = selector else {
        errors.push(field.to_owned(), "missing (from: Selector needs one)");
        return NamespaceSelector::default();
    };
    let mut expressions = Vec::new();
    for (i, e) in selector
        .match_expressions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let values = e.values.clone().unwrap_or_default();
        let key = e.key.clone();
        expressions.push(match e.operator.as_str() {
            "In" => LabelExpression::In(key, values),
            "NotIn" => LabelExpression::NotIn(key, values),
            "Exists" => LabelExpression::Exists(key),
            "DoesNotExist" => LabelExpression::DoesNotExist(key),
            other => {
                errors.push(
                    format!("{field}.matchExpressions[{i}].operator"),
                    format!("must be In, NotIn, Exists or DoesNotExist, got {other:?}"),
                );
                continue;
            }
        });
    }
    NamespaceSelector {
        labels: selector.match_labels.clone().unwrap_or_default(),
        expressions,
    }
}

/// `spec.addresses`: the IP addresses, and what is not one (reported).
fn gateway_addresses(list: &[wire::GatewayAddress]) -> (Vec<std::net::IpAddr>, Vec<String>) {
    let mut addresses = Vec::new();
    let mut unsupported = Vec::new();
    for a in list {
        match (a.type_.as_deref(), a.value.parse::<std::net::IpAddr>()) {
            (None | Some("IPAddress"), Ok(ip)) => addresses.push(ip),
            (kind, _) => {
                unsupported.push(format!("{} {}", kind.unwrap_or("IPAddress"), a.value));
            }
        }
    }
    (addresses, unsupported)
}

/// Translates an HTTPRoute.
pub fn http_route(object: &wire::HTTPRoute) -> Result<HttpRoute, Vec<FieldError>> {
    let mut errors = Errors::default();
    let key = object_key(&object.metadata);
    let spec = &object.spec;

    let parents = parent_refs(&mut errors, &key, &spec.parent_refs);
    let hostnames = route_hostnames(&mut errors, &spec.hostnames);

    let mut rules = Vec::with_capacity(spec.rules.len());
    for (r, rule) in spec.rules.iter().enumerate() {
        let field = |name: &str| format!("spec.rules[{r}].{name}");
        let mut dropped = Vec::new();
        let prefix_matches = rule
            .matches
            .iter()
            .filter(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.type_.as_deref().is_none_or(|t| t == "PathPrefix"))
            })
            .count();
        let single_prefix = rule.matches.len() <= 1 && prefix_matches == rule.matches.len();
        let filters = route_filters(
            &mut errors,
            &mut dropped,
            &|name| field(&format!("filters{name}")),
            &rule.filters,
            &key.namespace,
            single_prefix,
            true,
        );
        if filters
            .iter()
            .any(|f| matches!(f, RouteFilter::Redirect(_)))
            && !rule.backend_refs.is_empty()
        {
            errors.push(
                field("backendRefs"),
                "a rule with a RequestRedirect filter has no backendRefs",
            );
        }
        let timeouts = route_timeouts(&mut errors, &field, rule.timeouts.as_ref());
        let mut matches = Vec::with_capacity(rule.matches.len().max(1));
        for (m, wire_match) in rule.matches.iter().enumerate() {
            let field = |name: &str| format!("spec.rules[{r}].matches[{m}].{name}");
            matches.push(route_match(&mut errors, &mut dropped, &field, wire_match));
        }
        if matches.is_empty() {
            matches.push(RouteMatch {
                path: PathMatch::Prefix("/".to_owned()),
                headers: Vec::new(),
                method: None,
                query: Vec::new(),
            });
        }
        let mut backends = Vec::with_capacity(rule.backend_refs.len());
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let field = |name: &str| format!("spec.rules[{r}].backendRefs[{b}].{name}");
            if let Some(backend) =
                route_backend(&mut errors, &mut dropped, &field, &key.namespace, backend)
            {
                backends.push(backend);
            }
        }
        rules.push(HttpRouteRule {
            matches,
            backends,
            filters,
            timeouts,
            invalid: dropped_rule(&dropped),
        });
    }

    errors.finish(HttpRoute {
        created: created(&object.metadata),
        key,
        parents,
        hostnames,
        rules,
    })
}

/// A route's `spec.parentRefs` naming Gateways (others are field errors).
fn parent_refs(
    errors: &mut Errors,
    key: &crate::types::ObjectKey,
    refs: &[wire::ParentReference],
) -> Vec<ParentRef> {
    let mut parents = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        let field = |name: &str| format!("spec.parentRefs[{i}].{name}");
        let group = p.group.as_deref().unwrap_or(wire::GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if group != wire::GROUP || kind != "Gateway" {
            errors.push(
                field("kind"),
                format!(
                    "only Gateways ({}) are parents fairlead serves, got {kind} ({group:?})",
                    wire::GROUP
                ),
            );
            continue;
        }
        let port = p.port.and_then(|port| errors.port(field("port"), port));
        parents.push(ParentRef {
            gateway: crate::types::ObjectKey::new(
                p.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                p.name.clone(),
            ),
            section_name: p.section_name.clone(),
            port,
        });
    }
    parents
}

/// A route's `spec.hostnames`.
fn route_hostnames(errors: &mut Errors, hostnames: &[String]) -> Vec<Hostname> {
    hostnames
        .iter()
        .enumerate()
        .filter_map(|(i, h)| hostname(errors, format!("spec.hostnames[{i}]"), h))
        .collect()
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

/// Translates a GRPCRoute.
pub fn grpc_route(object: &wire::GRPCRoute) -> Result<GrpcRoute, Vec<FieldError>> {
    let mut errors = Errors::default();
    let key = object_key(&object.metadata);
    let spec = &object.spec;
    let parents = parent_refs(&mut errors, &key, &spec.parent_refs);
    let hostnames = route_hostnames(&mut errors, &spec.hostnames);
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (r, rule) in spec.rules.iter().enumerate() {
        let field = |name: &str| format!("spec.rules[{r}].{name}");
        let mut dropped = Vec::new();
        let filters = route_filters(
            &mut errors,
            &mut dropped,
            &|name| field(&format!("filters{name}")),
            &rule.filters,
            &key.namespace,
            false,
            false,
        );
        let mut matches = Vec::with_capacity(rule.matches.len().max(1));
        for (m, wire_match) in rule.matches.iter().enumerate() {
            let field = |name: &str| format!("spec.rules[{r}].matches[{m}].{name}");
            let method = wire_match.method.as_ref().map(|method| {
                let regex = match method.type_.as_deref() {
                    None | Some("Exact") => false,
                    Some("RegularExpression") => true,
                    Some(other) => {
                        errors.push(
                            field("method.type"),
                            format!("must be Exact or RegularExpression, got {other:?}"),
                        );
                        false
                    }
                };
                if method.service.is_none() && method.method.is_none() {
                    errors.push(field("method"), "one of service and method is required");
                }
                let mut part = |name: &str, value: &Option<String>| {
                    value.as_deref().map(|v| {
                        if regex {
                            string_match(&mut dropped, &field(&format!("method.{name}")), v, true)
                        } else {
                            StringMatch::Exact(v.to_owned())
                        }
                    })
                };
                GrpcMethodMatch {
                    service: part("service", &method.service),
                    method: part("method", &method.method),
                }
            });
            let headers = header_matches(&mut errors, &mut dropped, &field, &wire_match.headers);
            matches.push(GrpcRouteMatch { method, headers });
        }
        if matches.is_empty() {
            matches.push(GrpcRouteMatch {
                method: None,
                headers: Vec::new(),
            });
        }
        let mut backends = Vec::with_capacity(rule.backend_refs.len());
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let field = |name: &str| format!("spec.rules[{r}].backendRefs[{b}].{name}");
            if let Some(backend) =
                route_backend(&mut errors, &mut dropped, &field, &key.namespace, backend)
            {
                backends.push(backend);
            }
        }
        rules.push(GrpcRouteRule {
            matches,
            backends,
            filters,
            invalid: dropped_rule(&dropped),
        });
    }
    errors.finish(GrpcRoute {
        created: created(&object.metadata),
        key,
        parents,
        hostnames,
        rules,
    })
}

/// Translates a ReferenceGrant.
pub fn reference_grant(object: &wire::ReferenceGrant) -> Result<ReferenceGrant, Vec<FieldError>> {
    let mut errors = Errors::default();
    let spec = &object.spec;
    if spec.from.is_empty() {
        errors.push("spec.from", "at least one entry is required");
    }
    if spec.to.is_empty() {
        errors.push("spec.to", "at least one entry is required");
    }
    for (i, f) in spec.from.iter().enumerate() {
        if !is_dns_label(&f.namespace) {
            errors.push(
                format!("spec.from[{i}].namespace"),
                format!("{:?} is not a namespace name", f.namespace),
            );
        }
    }
    errors.finish(ReferenceGrant {
        key: object_key(&object.metadata),
        from: spec
            .from
            .iter()
            .map(|f| GrantFrom {
                group: f.group.clone(),
                kind: f.kind.clone(),
                namespace: f.namespace.clone(),
            })
            .collect(),
        to: spec
            .to
            .iter()
            .map(|t| GrantTo {
                group: t.group.clone(),
                kind: t.kind.clone(),
                name: t.name.clone(),
            })
            .collect(),
    })
}

/// Why a rule is dropped, from the problems of its values (`None`: none).
fn dropped_rule(problems: &[String]) -> Option<String> {
    (!problems.is_empty()).then(|| format!("UnsupportedValue: {}", problems.join("; ")))
}

/// A value match: exact, or a regular expression that compiles (else the
/// rule is dropped: `dropped` says why, naming the field).
fn string_match(dropped: &mut Vec<String>, field: &str, value: &str, regex: bool) -> StringMatch {
    if !regex {
        return StringMatch::Exact(value.to_owned());
    }
    match Pattern::new(value) {
        Ok(p) => StringMatch::Regex(p),
        Err(why) => {
            dropped.push(format!("{field}: {why}"));
            StringMatch::Exact(value.to_owned())
        }
    }
}

fn route_match(
    errors: &mut Errors,
    dropped: &mut Vec<String>,
    field: &dyn Fn(&str) -> String,
    m: &wire::HTTPRouteMatch,
) -> RouteMatch {
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".to_owned());
    let path_type = m.path.as_ref().and_then(|p| p.type_.as_deref());
    if !value.starts_with('/') && path_type != Some("RegularExpression") {
        errors.push(
            field("path.value"),
            format!("{value:?} must start with '/'"),
        );
    }
    let path = match path_type {
        None | Some("PathPrefix") => PathMatch::Prefix(value),
        Some("Exact") => PathMatch::Exact(value),
        Some("RegularExpression") => match Pattern::new(&value) {
            Ok(p) => PathMatch::Regex(p),
            Err(why) => {
                dropped.push(format!("{}: {why}", field("path.value")));
                PathMatch::Exact(value)
            }
        },
        Some(other) => {
            errors.push(
                field("path.type"),
                format!("must be Exact, PathPrefix or RegularExpression, got {other:?}"),
            );
            PathMatch::Exact(value)
        }
    };
    let headers = header_matches(errors, dropped, field, &m.headers);
    let mut query: Vec<QueryMatch> = Vec::with_capacity(m.query_params.len());
    for (q, param) in m.query_params.iter().enumerate() {
        let regex = match param.type_.as_deref() {
            None | Some("Exact") => false,
            Some("RegularExpression") => true,
            Some(other) => {
                errors.push(
                    field(&format!("queryParams[{q}].type")),
                    format!("must be Exact or RegularExpression, got {other:?}"),
                );
                false
            }
        };
        if param.name.is_empty() {
            errors.push(field(&format!("queryParams[{q}].name")), "missing");
        }
        // The spec: only the first match of a name counts.
        if !query.iter().any(|o| o.name == param.name) {
            query.push(QueryMatch {
                name: param.name.clone(),
                value: string_match(
                    dropped,
                    &field(&format!("queryParams[{q}].value")),
                    &param.value,
                    regex,
                ),
            });
        }
    }
    let method = m.method.as_ref().map(|method| {
        if !METHODS.contains(&method.as_str()) {
            errors.push(
                field("method"),
                format!("must be one of {}, got {method:?}", METHODS.join(", ")),
            );
        }
        method.clone()
    });
    RouteMatch {
        path,
        headers,
        method,
        query,
    }
}

fn header_matches(
    errors: &mut Errors,
    dropped: &mut Vec<String>,
    field: &dyn Fn(&str) -> String,
    wire_headers: &[wire::HTTPHeaderMatch],
) -> Vec<HeaderMatch> {
    let mut headers = Vec::with_capacity(wire_headers.len());
    for (h, header) in wire_headers.iter().enumerate() {
        let regex = match header.type_.as_deref() {
            None | Some("Exact") => false,
            Some("RegularExpression") => true,
            Some(other) => {
                errors.push(
                    field(&format!("headers[{h}].type")),
                    format!("must be Exact or RegularExpression, got {other:?}"),
                );
                false
            }
        };
        if !is_header_name(&header.name) {
            errors.push(
                field(&format!("headers[{h}].name")),
                format!("{:?} is not a header name", header.name),
            );
        }
        let name = header.name.to_ascii_lowercase();
        if headers.iter().any(|o: &HeaderMatch| o.name == name) {
            // The spec: only the first match of a name counts.
            continue;
        }
        headers.push(HeaderMatch {
            name,
            value: string_match(
                dropped,
                &field(&format!("headers[{h}].value")),
                &header.value,
                regex,
            ),
        });
    }
    headers
}

fn route_backend(
    errors: &mut Errors,
    dropped: &mut Vec<String>,
    field: &dyn Fn(&str) -> String,
    route_namespace: &str,
    b: &wire::HTTPBackendRef,
) -> Option<RouteBackend> {
    let filters = route_filters(
        errors,
        dropped,
        &|name| field(&format!("filters{name}")),
        &b.filters,
        route_namespace,
        false,
        false,
    );
    if let Some(f) = filters.iter().find(|f| {
        !matches!(
            f,
            RouteFilter::RequestHeaders(_) | RouteFilter::ResponseHeaders(_)
        )
    }) {
        dropped.push(format!(
            "{}: {} on a backendRef is not supported (header modifiers are)",
            field("filters"),
            filter_name(f)
        ));
    }
    let weight = match b.weight {
        None => 1,
        Some(w) if (0..=MAX_WEIGHT).contains(&w) => w.unsigned_abs(),
        Some(w) => {
            errors.push(
                field("weight"),
                format!("must be in 0..{MAX_WEIGHT}, got {w}"),
            );
            return None;
        }
    };
    let group = b.group.as_deref().unwrap_or_default();
    let kind = b.kind.as_deref().unwrap_or("Service");
    let namespace = b.namespace.as_deref().unwrap_or(route_namespace);
    let wanted = format!("{kind} {namespace}/{}", b.name);
    let target = if !group.is_empty() || kind != "Service" {
        RouteBackendTarget::Invalid {
            wanted,
            reason: format!("InvalidKind: {kind} ({group:?}) is not a backend fairlead serves"),
        }
    } else {
        // Cross-namespace: allowed only by a ReferenceGrant, checked where
        // routes are compiled (grants change on their own).
        let Some(port) = b.port else {
            errors.push(field("port"), "required for a Service backend");
            return None;
        };
        let port = errors.port(field("port"), port)?;
        RouteBackendTarget::Service {
            service: crate::types::ObjectKey::new(namespace, b.name.clone()),
            port,
        }
    };
    Some(RouteBackend {
        target,
        weight,
        filters,
    })
}

/// A backend reference of a mirror filter: a Service port (others are
/// invalid, answered by no mirror and reported).
fn backend_target(
    errors: &mut Errors,
    field: &dyn Fn(&str) -> String,
    route_namespace: &str,
    b: &wire::BackendObjectReference,
) -> Option<RouteBackendTarget> {
    let group = b.group.as_deref().unwrap_or_default();
    let kind = b.kind.as_deref().unwrap_or("Service");
    let namespace = b.namespace.as_deref().unwrap_or(route_namespace);
    if !group.is_empty() || kind != "Service" {
        return Some(RouteBackendTarget::Invalid {
            wanted: format!("{kind} {namespace}/{}", b.name),
            reason: format!("InvalidKind: {kind} ({group:?}) is not a backend fairlead serves"),
        });
    }
    let Some(port) = b.port else {
        errors.push(field("port"), "required for a Service backend");
        return None;
    };
    let port = errors.port(field("port"), port)?;
    Some(RouteBackendTarget::Service {
        service: crate::types::ObjectKey::new(namespace, b.name.clone()),
        port,
    })
}

fn filter_name(f: &RouteFilter) -> &'static str {
    match f {
        RouteFilter::RequestHeaders(_) => "RequestHeaderModifier",
        RouteFilter::ResponseHeaders(_) => "ResponseHeaderModifier",
        RouteFilter::Redirect(_) => "RequestRedirect",
        RouteFilter::Rewrite(_) => "URLRewrite",
        RouteFilter::Mirror(_) => "RequestMirror",
    }
}

/// `filters` of a rule (`http`: an HTTPRoute rule, where redirects and
/// rewrites are allowed) or of a backendRef. `field` is given the suffix
/// after `filters` (`[0].type`). A filter type fairlead does not apply
/// drops the rule; a malformed filter is a field error.
fn route_filters(
    errors: &mut Errors,
    dropped: &mut Vec<String>,
    field: &dyn Fn(&str) -> String,
    wire_filters: &[wire::HTTPRouteFilter],
    route_namespace: &str,
    single_prefix: bool,
    http: bool,
) -> Vec<RouteFilter> {
    let mut filters = Vec::with_capacity(wire_filters.len());
    for (f, filter) in wire_filters.iter().enumerate() {
        let at = |name: &str| field(&format!("[{f}].{name}"));
        // The filter's own field, required for its type.
        let required = |errors: &mut Errors, present: bool, name: &str| {
            if !present {
                errors.push(at(name), format!("required for a {} filter", filter.type_));
            }
        };
        let parsed = match filter.type_.as_str() {
            "RequestHeaderModifier" => filter.request_header_modifier.as_ref().map(|m| {
                RouteFilter::RequestHeaders(header_modifier(
                    errors,
                    &|name| at(&format!("requestHeaderModifier.{name}")),
                    m,
                ))
            }),
            "ResponseHeaderModifier" => filter.response_header_modifier.as_ref().map(|m| {
                RouteFilter::ResponseHeaders(header_modifier(
                    errors,
                    &|name| at(&format!("responseHeaderModifier.{name}")),
                    m,
                ))
            }),
            "RequestRedirect" if http => filter
                .request_redirect
                .as_ref()
                .map(|r| RouteFilter::Redirect(redirect(errors, &at, r, single_prefix))),
            "URLRewrite" if http => filter.url_rewrite.as_ref().map(|r| {
                let hostname = r
                    .hostname
                    .as_ref()
                    .and_then(|h| exact_hostname(errors, at("urlRewrite.hostname"), h));
                let path = r.path.as_ref().and_then(|p| {
                    path_modifier(
                        errors,
                        &|n| at(&format!("urlRewrite.path.{n}")),
                        p,
                        single_prefix,
                    )
                });
                RouteFilter::Rewrite(Rewrite { hostname, path })
            }),
            "RequestMirror" => filter.request_mirror.as_ref().and_then(|m| {
                backend_target(
                    errors,
                    &|name| at(&format!("requestMirror.backendRef.{name}")),
                    route_namespace,
                    &m.backend_ref,
                )
                .map(RouteFilter::Mirror)
            }),
            other => {
                dropped.push(format!("{}: filter {other} is not supported", at("type")));
                None
            }
        };
        let own_field = match filter.type_.as_str() {
            "RequestHeaderModifier" => Some((
                "requestHeaderModifier",
                filter.request_header_modifier.is_some(),
            )),
            "ResponseHeaderModifier" => Some((
                "responseHeaderModifier",
                filter.response_header_modifier.is_some(),
            )),
            "RequestRedirect" if http => {
                Some(("requestRedirect", filter.request_redirect.is_some()))
            }
            "URLRewrite" if http => Some(("urlRewrite", filter.url_rewrite.is_some())),
            "RequestMirror" => Some(("requestMirror", filter.request_mirror.is_some())),
            _ => None,
        };
        if let Some((name, present)) = own_field {
            required(errors, present, name);
        }
        let Some(parsed) = parsed else { continue };
        // Each filter type but RequestMirror at most once.
        if !matches!(parsed, RouteFilter::Mirror(_))
            && filters
                .iter()
                .any(|o| std::mem::discriminant(o) == std::mem::discriminant(&parsed))
        {
            errors.push(
                at("type"),
                format!("{} is given more than once", filter.type_),
            );
        }
        filters.push(parsed);
    }
    if filters
        .iter()
        .any(|f| matches!(f, RouteFilter::Redirect(_)))
        && filters.iter().any(|f| matches!(f, RouteFilter::Rewrite(_)))
    {
        errors.push(
            field(""),
            "RequestRedirect and URLRewrite cannot be used together",
        );
    }
    filters
}

/// A hostname without a wildcard (of a redirect or rewrite).
fn exact_hostname(errors: &mut Errors, field: String, text: &str) -> Option<String> {
    match hostname(errors, field.clone(), text) {
        Some(Hostname::Exact(h)) => Some(h),
        Some(Hostname::Wildcard(_)) => {
            errors.push(field, format!("{text:?}: a wildcard is not allowed here"));
            None
        }
        None => None,
    }
}

fn path_modifier(
    errors: &mut Errors,
    field: &dyn Fn(&str) -> String,
    p: &wire::HTTPPathModifier,
    single_prefix: bool,
) -> Option<PathModifier> {
    let check = |errors: &mut Errors, name: &str, value: &str| {
        if !value.starts_with('/') {
            errors.push(field(name), format!("{value:?} must start with '/'"));
        }
    };
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            let Some(value) = &p.replace_full_path else {
                errors.push(field("replaceFullPath"), "required for ReplaceFullPath");
                return None;
            };
            check(errors, "replaceFullPath", value);
            Some(PathModifier::ReplaceFullPath(value.clone()))
        }
        "ReplacePrefixMatch" => {
            let Some(value) = &p.replace_prefix_match else {
                errors.push(
                    field("replacePrefixMatch"),
                    "required for ReplacePrefixMatch",
                );
                return None;
            };
            check(errors, "replacePrefixMatch", value);
            if !single_prefix {
                errors.push(
                    field("type"),
                    "ReplacePrefixMatch needs exactly one PathPrefix match in the rule",
                );
            }
            Some(PathModifier::ReplacePrefixMatch(value.clone()))
        }
        other => {
            errors.push(
                field("type"),
                format!("must be ReplaceFullPath or ReplacePrefixMatch, got {other:?}"),
            );
            None
        }
    }
}

fn redirect(
    errors: &mut Errors,
    at: &dyn Fn(&str) -> String,
    r: &wire::HTTPRequestRedirectFilter,
    single_prefix: bool,
) -> Redirect {
    let scheme = r.scheme.as_deref().map(|s| {
        if s != "http" && s != "https" {
            errors.push(
                at("requestRedirect.scheme"),
                format!("must be http or https, got {s:?}"),
            );
        }
        s.to_owned()
    });
    let hostname = r
        .hostname
        .as_ref()
        .and_then(|h| exact_hostname(errors, at("requestRedirect.hostname"), h));
    let port = r
        .port
        .and_then(|p| errors.port(at("requestRedirect.port"), p));
    let path = r.path.as_ref().and_then(|p| {
        path_modifier(
            errors,
            &|n| at(&format!("requestRedirect.path.{n}")),
            p,
            single_prefix,
        )
    });
    let status = match r.status_code {
        None => 302,
        Some(code @ (301 | 302 | 303 | 307 | 308)) => u16::try_from(code).unwrap_or(302),
        Some(code) => {
            errors.push(
                at("requestRedirect.statusCode"),
                format!("must be 301, 302, 303, 307 or 308, got {code}"),
            );
            302
        }
    };
    Redirect {
        scheme,
        hostname,
        port,
        path,
        status,
    }
}

/// A header modifier: names checked and lower-cased, values checked (no
/// control characters: they could split a header), each name once.
fn header_modifier(
    errors: &mut Errors,
    field: &dyn Fn(&str) -> String,
    m: &wire::HTTPHeaderFilter,
) -> HeaderModifier {
    let mut seen: Vec<String> = Vec::new();
    let mut pairs = |errors: &mut Errors, list: &str, headers: &[wire::HTTPHeader]| {
        let mut out = Vec::with_capacity(headers.len());
        for (i, h) in headers.iter().enumerate() {
            let name = h.name.to_ascii_lowercase();
            if !is_header_name(&h.name) {
                errors.push(
                    field(&format!("{list}[{i}].name")),
                    format!("{:?} is not a header name", h.name),
                );
                continue;
            }
            if !is_header_value(&h.value) {
                errors.push(
                    field(&format!("{list}[{i}].value")),
                    "a header value has no control characters",
                );
                continue;
            }
            if seen.iter().any(|s| *s == format!("{list} {name}")) {
                errors.push(
                    field(&format!("{list}[{i}].name")),
                    format!("{name:?} is given twice"),
                );
                continue;
            }
            seen.push(format!("{list} {name}"));
            out.push((name, h.value.clone()));
        }
        out
    };
    let set = pairs(errors, "set", &m.set);
    let add = pairs(errors, "add", &m.add);
    let mut remove = Vec::with_capacity(m.remove.len());
    for (i, name) in m.remove.iter().enumerate() {
        if is_header_name(name) {
            remove.push(name.to_ascii_lowercase());
        } else {
            errors.push(
                field(&format!("remove[{i}]")),
                format!("{name:?} is not a header name"),
            );
        }
    }
    HeaderModifier { set, add, remove }
}

/// A field value: visible ASCII, spaces and tabs (RFC 9110 §5.5, without
/// obsolete text).
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// `rules[].timeouts`: Gateway API durations; `0s` is no timeout; the
/// backend request's may not exceed the request's.
fn route_timeouts(
    errors: &mut Errors,
    field: &dyn Fn(&str) -> String,
    timeouts: Option<&wire::HTTPRouteTimeouts>,
) -> RouteTimeouts {
    let Some(t) = timeouts else {
        return RouteTimeouts::default();
    };
    let mut parse = |name: &str, value: Option<&String>| {
        value.and_then(|v| match crate::units::parse_gateway_duration(v) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(why) => {
                errors.push(field(&format!("timeouts.{name}")), why);
                None
            }
        })
    };
    let request = parse("request", t.request.as_ref());
    let backend_request = parse("backendRequest", t.backend_request.as_ref());
    if let (Some(r), Some(b)) = (request, backend_request)
        && b > r
    {
        errors.push(
            field("timeouts.backendRequest"),
            "may not be longer than timeouts.request",
        );
    }
    RouteTimeouts {
        request,
        backend_request,
    }
}

/// An HTTP field name: one or more `tchar`s (RFC 9110 §5.1).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{KubeObject, decode};
    use crate::types::ObjectKey;

    fn object(yaml: &str) -> KubeObject {
        decode(serde_norway::from_str(yaml).unwrap()).unwrap()
    }

    fn route(yaml: &str) -> Result<HttpRoute, Vec<FieldError>> {
        let KubeObject::HttpRoute(o) = object(yaml) else {
            panic!("not an HTTPRoute")
        };
        http_route(&o)
    }

    fn fields(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn gateway_class_and_gateway_decode_and_translate() {
        let KubeObject::GatewayClass(class) = object(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: fl}\n\
             spec: {controllerName: fairlead.dev/gateway-controller}\n",
        ) else {
            panic!()
        };
        assert_eq!(
            gateway_class(&class).unwrap(),
            GatewayClass {
                name: "fl".into(),
                controller: "fairlead.dev/gateway-controller".into()
            }
        );
        let KubeObject::Gateway(gw) = object(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: infra}
spec:
  gatewayClassName: fl
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.Example.com",
     allowedRoutes: {namespaces: {from: All}}}
  - {name: plain, port: 8080, protocol: HTTP}
  - {name: tls, port: 443, protocol: TLS}
"#,
        ) else {
            panic!()
        };
        let gw = gateway(&gw).unwrap();
        assert_eq!(gw.key, ObjectKey::new("infra", "web"));
        assert_eq!(gw.class, "fl");
        assert_eq!(
            gw.listeners[0],
            Listener {
                name: "http".into(),
                hostname: Some(Hostname::Wildcard("example.com".into())),
                port: 80,
                protocol: ListenerProtocol::Http,
                allowed_namespaces: AllowedNamespaces::All,
                allowed_kinds: vec![],
                tls: None,
            }
        );
        assert_eq!(gw.listeners[1].allowed_namespaces, AllowedNamespaces::Same);
        assert_eq!(gw.listeners[1].hostname, None);
        assert_eq!(
            gw.listeners[2].protocol,
            ListenerProtocol::Other("TLS".into())
        );
        assert!(gw.listeners[0].allows("HTTPRoute", ("shop", None), "infra"));
        assert!(!gw.listeners[1].allows("HTTPRoute", ("shop", None), "infra"));
        assert!(gw.listeners[1].allows("HTTPRoute", ("infra", None), "infra"));
        // HTTP listeners take HTTPRoutes and GRPCRoutes by default.
        assert!(gw.listeners[1].allows("GRPCRoute", ("infra", None), "infra"));
        assert!(!gw.listeners[1].allows("TLSRoute", ("infra", None), "infra"));
    }

    #[test]
    fn http_route_defaults_and_fields() {
        let r = route(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: web, namespace: infra, sectionName: http}, {name: other, port: 8080}]
  hostnames: [shop.example.com, "*.shop.example.com"]
  rules:
  - matches:
    - path: {type: Exact, value: /cart}
      headers: [{name: X-Canary, value: "yes"}, {name: x-canary, value: "no"}]
      method: POST
    backendRefs: [{name: cart, port: 8080, weight: 3}, {name: cart-v2, port: 8080, weight: 0}]
  - backendRefs:
    - {name: web, port: 80}
    - {name: web, namespace: elsewhere, port: 80}
    - {group: example.com, kind: Bucket, name: b}
"#,
        )
        .unwrap();
        assert_eq!(r.key, ObjectKey::new("shop", "shop"));
        assert_eq!(r.created, 1_767_225_600);
        assert_eq!(
            r.parents,
            vec![
                ParentRef {
                    gateway: ObjectKey::new("infra", "web"),
                    section_name: Some("http".into()),
                    port: None
                },
                ParentRef {
                    gateway: ObjectKey::new("shop", "other"),
                    section_name: None,
                    port: Some(8080)
                },
            ]
        );
        assert_eq!(
            r.hostnames,
            vec![
                Hostname::Exact("shop.example.com".into()),
                Hostname::Wildcard("shop.example.com".into())
            ]
        );
        assert_eq!(
            r.rules[0].matches,
            vec![RouteMatch {
                path: PathMatch::Exact("/cart".into()),
                headers: vec![HeaderMatch {
                    name: "x-canary".into(),
                    value: StringMatch::Exact("yes".into())
                }],
                method: Some("POST".into()),
                query: vec![],
            }]
        );
        assert_eq!(r.rules[0].backends[0].weight, 3);
        assert_eq!(r.rules[0].backends[1].weight, 0);
        // No matches: one prefix `/` match; default weight 1.
        assert_eq!(r.rules[1].matches[0].path, PathMatch::Prefix("/".into()));
        assert_eq!(
            r.rules[1].backends[0],
            RouteBackend {
                target: RouteBackendTarget::Service {
                    service: ObjectKey::new("shop", "web"),
                    port: 80
                },
                weight: 1,
                filters: vec![],
            }
        );
        let reason = |b: &RouteBackend| match &b.target {
            RouteBackendTarget::Invalid { reason, .. } => reason.clone(),
            RouteBackendTarget::Service { .. } => String::new(),
        };
        // Cross-namespace: kept; the grant is checked where routes compile.
        assert_eq!(
            r.rules[1].backends[1].target,
            RouteBackendTarget::Service {
                service: ObjectKey::new("elsewhere", "web"),
                port: 80
            }
        );
        assert!(reason(&r.rules[1].backends[2]).starts_with("InvalidKind"));
    }

    #[test]
    fn bad_routes_name_each_field() {
        let errors = route(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad}
spec:
  parentRefs: [{name: web, kind: Service, group: ""}]
  hostnames: ["10.0.0.1", "a..b"]
  rules:
  - matches:
    - path: {type: RegularExpression, value: "/.*"}
      method: FETCH
    - path: {value: relative}
      headers: [{name: "bad header", value: x}]
    filters: [{type: RequestMirror}]
    backendRefs: [{name: web}, {name: web, port: 80, weight: 2000000}]
"#,
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            vec![
                "spec.parentRefs[0].kind: only Gateways (gateway.networking.k8s.io) are parents fairlead serves, got Service (\"\")".to_owned(),
                "spec.hostnames[0]: \"10.0.0.1\" is not a hostname (a DNS name, optionally starting with \"*.\"; no IP addresses)".to_owned(),
                "spec.hostnames[1]: \"a..b\" is not a hostname (a DNS name, optionally starting with \"*.\"; no IP addresses)".to_owned(),
                "spec.rules[0].filters[0].requestMirror: required for a RequestMirror filter".to_owned(),
                "spec.rules[0].matches[0].method: must be one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH, got \"FETCH\"".to_owned(),
                "spec.rules[0].matches[1].path.value: \"relative\" must start with '/'".to_owned(),
                "spec.rules[0].matches[1].headers[0].name: \"bad header\" is not a header name".to_owned(),
                "spec.rules[0].backendRefs[0].port: required for a Service backend".to_owned(),
                "spec.rules[0].backendRefs[1].weight: must be in 0..1000000, got 2000000".to_owned(),
            ]
        );
    }

    #[test]
    fn regular_expressions_compile_or_drop_their_rule() {
        let r = route(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: re}
spec:
  rules:
  - matches:
    - path: {type: RegularExpression, value: "/items/[0-9]+"}
      headers: [{type: RegularExpression, name: X-Version, value: "v[12]"}]
      queryParams: [{type: RegularExpression, name: q, value: "a.*"}]
    backendRefs: [{name: web, port: 80}]
  - matches:
    - path: {type: RegularExpression, value: "/(unclosed"}
    - headers: [{type: RegularExpression, name: x, value: "(a{1000}){1000}"}]
    backendRefs: [{name: web, port: 80}]
"#,
        )
        .unwrap();
        let m = &r.rules[0].matches[0];
        assert_eq!(r.rules[0].invalid, None);
        // Anchored: the whole value must match.
        assert!(m.path.matches("/items/42"));
        assert!(!m.path.matches("/items/42/x"));
        assert!(!m.path.matches("/x/items/42"));
        assert!(m.headers[0].value.matches(b"v2"));
        assert!(!m.headers[0].value.matches(b"v22"));
        assert!(m.query[0].matches(Some("q=abc")));
        assert!(!m.query[0].matches(Some("q=bc")));
        // A syntax error and a pattern over the size limit drop the rule,
        // not the route.
        let why = r.rules[1].invalid.as_deref().unwrap();
        assert!(
            why.starts_with(
                "UnsupportedValue: spec.rules[1].matches[0].path.value: invalid regular expression"
            ),
            "{why}"
        );
        assert!(
            why.contains("spec.rules[1].matches[1].headers[0].value: the regular expression compiles to more than"),
            "{why}"
        );
        // GRPCRoute service and method expressions.
        let KubeObject::GrpcRoute(g) = object(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  rules:
  - matches: [{method: {type: RegularExpression, service: "shop\\.(Cart|Basket)", method: "Get.*"}}]
  - matches: [{method: {type: RegularExpression, service: "("}}]
"#,
        ) else {
            panic!()
        };
        let g = grpc_route(&g).unwrap();
        let method = g.rules[0].matches[0].method.as_ref().unwrap();
        assert!(method.matches("/shop.Basket/GetAll"));
        assert!(!method.matches("/shop.Cart/Put"));
        assert!(!method.matches("/shopXCart/Get"));
        assert!(g.rules[1].invalid.is_some());
    }

    #[test]
    fn wire_errors_name_the_field() {
        let value = serde_norway::from_str(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
             spec: {gatewayClassName: fl, listeners: [{name: a, port: eighty, protocol: HTTP}]}\n",
        )
        .unwrap();
        let err = decode(value).unwrap_err();
        assert_eq!(err.error.field, "spec.listeners[0].port");
        let value = serde_norway::from_str(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r}\n",
        )
        .unwrap();
        let err = decode(value).unwrap_err();
        assert_eq!(err.error.field, "apiVersion");
    }

    #[test]
    fn bad_gateway() {
        let KubeObject::Gateway(gw) = object(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web}
spec:
  gatewayClassName: fl
  listeners:
  - {name: http, port: 0, protocol: HTTP, allowedRoutes: {namespaces: {from: Some}}}
  - {name: http, port: 80, protocol: HTTP, hostname: "*"}
"#,
        ) else {
            panic!()
        };
        assert_eq!(
            fields(&gateway(&gw).unwrap_err()),
            vec![
                "spec.listeners[0].port: must be a port number in 1..65535, got 0".to_owned(),
                "spec.listeners[0].allowedRoutes.namespaces.from: must be All, Selector or Same, got \"Some\"".to_owned(),
                "spec.listeners[1].name: \"http\" is used by an earlier listener".to_owned(),
                "spec.listeners[1].hostname: \"*\" is not a hostname (a DNS name, optionally starting with \"*.\"; no IP addresses)".to_owned(),
            ]
        );
    }

    #[test]
    fn hostname_matching_and_intersection() {
        let exact = |h: &str| Hostname::Exact(h.into());
        let wild = |h: &str| Hostname::Wildcard(h.into());
        assert!(wild("example.com").matches("a.example.com"));
        assert!(wild("example.com").matches("a.b.example.com"));
        assert!(!wild("example.com").matches("example.com"));
        assert!(!wild("example.com").matches("aexample.com"));
        assert_eq!(
            wild("example.com").intersect(&exact("a.example.com")),
            Some(exact("a.example.com"))
        );
        assert_eq!(
            exact("a.example.com").intersect(&wild("example.com")),
            Some(exact("a.example.com"))
        );
        assert_eq!(
            exact("a.example.com").intersect(&exact("b.example.com")),
            None
        );
        assert_eq!(
            wild("example.com").intersect(&wild("a.example.com")),
            Some(wild("a.example.com"))
        );
        assert_eq!(
            wild("a.example.com").intersect(&wild("example.com")),
            Some(wild("a.example.com"))
        );
        assert_eq!(wild("example.com").intersect(&wild("example.org")), None);
        assert!(PathMatch::Prefix("/shop/".into()).matches("/shop"));
        assert!(PathMatch::Prefix("/shop".into()).matches("/shop/cart"));
        assert!(!PathMatch::Prefix("/shop".into()).matches("/shopping"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }
}
