//! What the route table does, for people (`fairlead explain`): every route
//! as a flat [`RouteEntry`], the routes that reach one Service, and what the
//! table does with one request — which route takes it and why each other
//! route does not.
//!
//! The verdicts follow the lookup of [`RouteTable::route_request`] step by
//! step (Gateway API host group, then Ingress host group, then path, then
//! the default backends); the route taken is the one that function returns.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use fairlead_model::{PathMatch, PathType, ServiceKey};
use http::{HeaderMap, Method};

use crate::gateway_api::Rule;
use crate::proxy::{Routing, Shared};
use crate::router::{BackendId, BackendSpec, HostRoutes, Route, RouteTable};

/// Where a route comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteSource {
    /// An HTTPRoute rule (searched first).
    HttpRoute,
    /// A path of an Ingress rule.
    Ingress,
    /// The `defaultBackend` of an Ingress, for one host group.
    IngressDefault,
    /// The table's default route (`--ingress-default-backend`, or the
    /// `defaultBackend` of a rule-less Ingress).
    Default,
}

impl RouteSource {
    /// `httproute`, `ingress`, `ingress-default`, `default`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::HttpRoute => "httproute",
            RouteSource::Ingress => "ingress",
            RouteSource::IngressDefault => "ingress-default",
            RouteSource::Default => "default",
        }
    }
}

/// One route of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Where it comes from.
    pub source: RouteSource,
    /// The Ingress or HTTPRoute (`namespace/name`), or `--ingress-default-backend`.
    pub object: String,
    /// The host group as written (`*.example.com`); empty: any host.
    pub host: String,
    /// How the path matches, e.g. `Prefix /api`, `Exact /`, or `any path`;
    /// HTTPRoute rules add their method and header matches.
    pub matches: String,
    /// The backends with their weights (Ingress routes: one, weight `None`).
    pub backends: Vec<(BackendId, Option<u32>)>,
}

/// A route and what it does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The route.
    pub route: RouteEntry,
    /// This route takes the request.
    pub taken: bool,
    /// Why (or why not).
    pub reason: String,
}

fn host_label(host: &str) -> &str {
    if host.is_empty() { "*" } else { host }
}

fn ingress_entry(source: RouteSource, route: &Route) -> RouteEntry {
    let matches = match route.path_type {
        Some(PathType::Exact) => format!("Exact {}", route.path),
        Some(PathType::Prefix) => format!("Prefix {}", route.path),
        Some(PathType::ImplementationSpecific) => {
            format!("ImplementationSpecific {}", route.path)
        }
        None => "any path".to_owned(),
    };
    RouteEntry {
        source,
        object: route.ingress.to_string(),
        host: route.host.to_string(),
        matches,
        backends: vec![(route.backend, None)],
    }
}

fn rule_entry(host: &str, rule: &Rule) -> RouteEntry {
    let mut matches = match &rule.path {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("Prefix {p}"),
        PathMatch::Regex(p) => format!("RegularExpression {}", p.as_str()),
    };
    if let Some(method) = &rule.method {
        let _ = write!(matches, " method {method}");
    }
    for header in &rule.headers {
        let _ = match &header.value {
            fairlead_model::StringMatch::Exact(v) => write!(matches, " header {}={v}", header.name),
            regex @ fairlead_model::StringMatch::Regex(_) => {
                write!(matches, " header {}={regex}", header.name)
            }
        };
    }
    for q in &rule.query {
        let _ = write!(matches, " query {}={}", q.name, q.value);
    }
    // What the rule does besides forwarding (the same for each backend
    // but for backendRef header modifiers).
    let filters = rule
        .backends
        .first()
        .map_or(&rule.none, |(route, _)| route)
        .filters
        .as_deref();
    if let Some(f) = filters {
        let mut names = Vec::new();
        if f.redirect.is_some() {
            names.push("RequestRedirect");
        }
        if f.rewrite.is_some() {
            names.push("URLRewrite");
        }
        if !f.request_headers.is_empty() {
            names.push("RequestHeaderModifier");
        }
        if !f.response_headers.is_empty() {
            names.push("ResponseHeaderModifier");
        }
        if !f.mirrors.is_empty() {
            names.push("RequestMirror");
        }
        if !names.is_empty() {
            let _ = write!(matches, " filters {}", names.join(","));
        }
        if let Some(t) = f.timeouts.request {
            let _ = write!(matches, " timeout {t:?}");
        }
    }
    let mut backends: Vec<(BackendId, Option<u32>)> = rule
        .backends
        .iter()
        .map(|(route, weight)| (route.backend, Some(*weight)))
        .collect();
    if backends.is_empty() {
        backends.push((rule.none.backend, Some(0)));
    }
    let object = rule
        .backends
        .first()
        .map_or(&rule.none.ingress, |(route, _)| &route.ingress);
    RouteEntry {
        source: RouteSource::HttpRoute,
        object: object
            .strip_prefix("HTTPRoute ")
            .unwrap_or(object)
            .to_owned(),
        host: host.to_owned(),
        matches,
        backends,
    }
}

/// The Ingress host groups: (label, routes), exact hosts, wildcards, any host.
fn ingress_groups(table: &RouteTable) -> Vec<(String, &HostRoutes)> {
    let mut groups: Vec<(String, &HostRoutes)> = table
        .exact_hosts
        .iter()
        .map(|(h, g)| (h.clone(), g))
        .chain(
            table
                .wildcard_hosts
                .iter()
                .map(|(s, g)| (format!("*.{s}"), g)),
        )
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(any) = &table.any_host {
        groups.push((String::new(), any));
    }
    groups
}

/// The HTTPRoute host groups: (label, rules).
/// A request as `explain request` asks about it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The host, normalised (see [`crate::router::normalize_host`]).
    pub host: &'a str,
    /// The URI path, without the query.
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Whether it came in on the TLS listener (the HTTPS listeners' routes).
    pub tls: bool,
}

fn rule_groups(table: &RouteTable, tls: bool) -> Vec<(String, &Vec<Rule>)> {
    let routes = if tls {
        &table.https_routes
    } else {
        &table.http_routes
    };
    let mut groups: Vec<(String, &Vec<Rule>)> = routes
        .exact
        .iter()
        .map(|(h, g)| (h.clone(), g))
        .chain(routes.wildcard.iter().map(|(s, g)| (format!("*.{s}"), g)))
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    if !routes.any.is_empty() {
        groups.push((String::new(), &routes.any));
    }
    groups
}

fn sorted_paths(group: &HostRoutes) -> Vec<&Route> {
    let mut routes: Vec<&Route> = group.exact.values().chain(group.prefix.values()).collect();
    routes.sort_by(|a, b| {
        (a.path_type != Some(PathType::Exact), &a.path, &a.ingress).cmp(&(
            b.path_type != Some(PathType::Exact),
            &b.path,
            &b.ingress,
        ))
    });
    routes
}

impl RouteTable {
    /// Every route, in search order: HTTPRoute rules by host group, then
    /// Ingress paths and default backends by host group, then the default
    /// route.
    #[must_use]
    pub fn entries(&self) -> Vec<RouteEntry> {
        self.verdicts(&Request {
            host: "",
            path: "",
            query: None,
            method: &Method::GET,
            headers: &HeaderMap::new(),
            tls: false,
        })
        .into_iter()
        .map(|v| v.route)
        .collect()
    }

    /// The routes with a backend that is a port of `service`.
    #[must_use]
    pub fn entries_for(&self, service: &ServiceKey) -> Vec<RouteEntry> {
        self.entries()
            .into_iter()
            .filter(|e| {
                e.backends.iter().any(|(id, _)| {
                    matches!(self.backend(*id), BackendSpec::Service { service: s, .. } if s == service)
                })
            })
            .collect()
    }

    /// The HTTPRoute rules' verdicts, and whether one takes the request.
    fn rule_verdicts(&self, request: &Request<'_>) -> (Vec<Verdict>, Option<&Rule>) {
        let Request {
            host,
            path,
            query,
            method,
            headers,
            tls,
        } = *request;
        let mut out = Vec::new();
        let routes = if tls {
            &self.https_routes
        } else {
            &self.http_routes
        };
        let rule_group = routes.group(host);
        let taken_rule = rule_group.and_then(|rules| {
            rules
                .iter()
                .position(|r| r.matches(path, query, method, headers))
                .map(|i| &rules[i])
        });
        // The routes of the request's listener side, then those of the
        // other side (attached to HTTP listeners only, or HTTPS only).
        let sides = [
            (tls, rule_groups(self, tls)),
            (!tls, rule_groups(self, !tls)),
        ];
        for (side, groups) in sides {
            for (label, rules) in groups {
                let selected = side == tls && rule_group.is_some_and(|g| std::ptr::eq(g, rules));
                for rule in rules {
                    let taken = side == tls && taken_rule.is_some_and(|t| std::ptr::eq(t, rule));
                    let reason = if side != tls {
                        if tls {
                            "served on the HTTP listeners; the request came over TLS".to_owned()
                        } else {
                            "served on the HTTPS listeners; the request is plain HTTP".to_owned()
                        }
                    } else if !selected {
                        format!("host {host:?} is not in host group {}", host_label(&label))
                    } else if taken {
                        "taken: the first rule of the host group that matches".to_owned()
                    } else if !rule.path.matches(path) {
                        format!("path {path:?} does not match")
                    } else if rule.method.as_ref().is_some_and(|m| m != method) {
                        format!("method {method} does not match")
                    } else if !rule.matches(path, query, method, headers) {
                        "a header, query parameter or gRPC method does not match".to_owned()
                    } else {
                        "an earlier rule of the host group (by precedence) takes it".to_owned()
                    };
                    out.push(Verdict {
                        route: rule_entry(&label, rule),
                        taken,
                        reason,
                    });
                }
            }
        }
        (out, taken_rule)
    }

    /// What the table does with `request` (its host normalised, see
    /// [`crate::router::normalize_host`]): every route with whether it takes
    /// the request and why.
    #[must_use]
    pub fn verdicts(&self, request: &Request<'_>) -> Vec<Verdict> {
        let (mut out, taken_rule) = self.rule_verdicts(request);
        let taken_rule = taken_rule.is_some();
        let Request {
            host,
            path,
            query,
            method,
            headers,
            tls,
        } = *request;
        let taken = self.route_request(host, path, query, method, headers, tls);
        let is_taken = |route: &Route| taken.is_some_and(|t| std::ptr::eq(t, route));
        let ingress_group = self
            .exact_hosts
            .get(host)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard_hosts.get(suffix))
            })
            .or(self.any_host.as_ref());
        let path_taken = ingress_group.and_then(|g| g.lookup(path));
        for (label, group) in ingress_groups(self) {
            let selected = ingress_group.is_some_and(|g| std::ptr::eq(g, group));
            let not_selected = || {
                if label.is_empty() {
                    format!("host {host:?} has its own host group")
                } else {
                    format!("host {host:?} is not in host group {label}")
                }
            };
            for route in sorted_paths(group) {
                let reason = if is_taken(route) {
                    "taken: the most specific path of the host group that matches".to_owned()
                } else if taken_rule {
                    "an HTTPRoute takes the request first".to_owned()
                } else if !selected {
                    not_selected()
                } else if !path_matches(route, path) {
                    format!("path {path:?} does not match")
                } else {
                    let winner = path_taken.map_or_else(String::new, |w| {
                        format!(" ({})", ingress_entry(RouteSource::Ingress, w).matches)
                    });
                    format!("a more specific path of the host group takes it{winner}")
                };
                out.push(Verdict {
                    route: ingress_entry(RouteSource::Ingress, route),
                    taken: is_taken(route),
                    reason,
                });
            }
            if let Some(fallback) = &group.fallback {
                let reason = if is_taken(fallback) {
                    "taken: no path of the host group matches".to_owned()
                } else if taken_rule {
                    "an HTTPRoute takes the request first".to_owned()
                } else if !selected {
                    not_selected()
                } else {
                    "a path of the host group matches".to_owned()
                };
                out.push(Verdict {
                    route: ingress_entry(RouteSource::IngressDefault, fallback),
                    taken: is_taken(fallback),
                    reason,
                });
            }
        }
        if let Some(default) = &self.default_route {
            let reason = if is_taken(default) {
                "taken: no host group has a route for the request".to_owned()
            } else {
                "only for requests no other route takes".to_owned()
            };
            out.push(Verdict {
                route: ingress_entry(RouteSource::Default, default),
                taken: is_taken(default),
                reason,
            });
        }
        out
    }
}

fn path_matches(route: &Route, path: &str) -> bool {
    match route.path_type {
        Some(PathType::Exact) => *route.path == *path,
        Some(_) => PathMatch::Prefix(route.path.to_string()).matches(path),
        None => true,
    }
}

/// The endpoints the model selects for a backend (what the gateway's
/// upstream for it holds once it serves the model), for a gateway on the
/// node `node`; empty for an unresolved backend.
#[must_use]
pub fn model_endpoints(
    snapshot: &fairlead_model::Snapshot,
    backend: &BackendSpec,
    node: Option<&str>,
) -> Vec<std::net::SocketAddr> {
    let BackendSpec::Service {
        service,
        port,
        protocol,
    } = backend
    else {
        return Vec::new();
    };
    let key = crate::gateway::UpstreamKey {
        service: service.clone(),
        port_name: port.name.clone(),
        port: port.port,
        protocol: *protocol,
    };
    let mut out = crate::gateway::endpoints(snapshot, &key, snapshot.locality(node));
    out.sort_unstable();
    out.dedup();
    out
}

/// A handle on the routing state of a running gateway, for `fairlead
/// explain`: empty until the gateway has started.
#[derive(Clone, Debug, Default)]
pub struct View(Arc<OnceLock<Arc<Shared>>>);

impl View {
    /// The gateway's current routes and upstreams, once it has started.
    #[must_use]
    pub fn routing(&self) -> Option<Arc<Routing>> {
        self.0.get().map(|shared| shared.routing.load_full())
    }

    pub(crate) fn set(&self, shared: Arc<Shared>) {
        let _ = self.0.set(shared);
    }
}
