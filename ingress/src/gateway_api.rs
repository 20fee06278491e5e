//! Gateway API routing: the HTTPRoutes attached to the accepted Gateways,
//! compiled into the same route table as the Ingresses (typed data, never
//! configuration text), with the Gateway API semantics:
//!
//! - **Accepted Gateways.** A Gateway whose GatewayClass names our
//!   controller (`--gateway-controller`). Its `HTTP` listeners on the port of
//!   `--http` are served; other listeners are reported (HTTPS listeners and
//!   other ports: not yet).
//! - **Attachment.** A route's `parentRefs` entry names a Gateway and
//!   optionally a listener (`sectionName`) and a `port`; the route attaches to
//!   each such listener that allows it (`allowedRoutes`: namespaces Same or
//!   All, kind HTTPRoute) and whose hostname intersects the route's
//!   hostnames. Otherwise the route is reported with the spec's reason
//!   (`NotAllowedByListeners`, `NoMatchingListenerHostname`, `NoMatchingParent`).
//! - **Hosts.** The intersected hostnames select the route's host groups: a
//!   request goes to the group of its exact host, else of the longest wildcard
//!   suffix it ends with (`*.example.com` matches one or more labels), else
//!   the group without a hostname. Only that group is searched.
//! - **Precedence** inside a group, as the spec orders it: an `Exact` path
//!   before any prefix, then the longest path, then a method match, then the
//!   most header matches, then the oldest route, then namespace/name, then
//!   rule and match order. The first match wins. The spec leaves
//!   `RegularExpression` paths to the implementation: here they rank with
//!   the prefixes by their number of characters, a prefix first at equal
//!   length (Contour's order), so a catch-all `PathPrefix /` does not hide
//!   them while a longer prefix still wins.
//! - **Regular expressions** (paths, header and query values, gRPC service
//!   and method) match the whole value (anchored, as Envoy's `safe_regex`),
//!   compiled once when the route is translated. A rule whose expression
//!   does not compile is dropped (reported; the route's status says
//!   `PartiallyInvalid`); the route's other rules are served.
//! - **Backends.** Weighted: each request picks one backendRef with
//!   probability weight/total; a weight of 0 takes no traffic. A rule with no
//!   weight at all, and a reference that does not resolve, answer 503.
//! - A request no Gateway API group takes is routed by the Ingresses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fairlead_model::gateway_status::{Attachment, attach, listener_model_state, served_gateways};
use fairlead_model::{
    CrossReference, Gateway, GrpcMethodMatch, GrpcRoute, HeaderMatch, Hostname, HttpRoute,
    Listener, ObjectKey, PathMatch, PathType, PortRef, QueryMatch, RouteBackendTarget, RouteFilter,
    Snapshot, StringMatch, TlsCertificate,
};
use http::{HeaderMap, Method};

use crate::filters::{HeaderOps, RouteFilters};
use crate::router::{BackendId, Compiler, Route, RouteProblem, RouteTable};

/// Which Gateways this gateway serves: the model's [`Serving`], so the
/// status and the router read the same answer.
pub use fairlead_model::gateway_status::Serving as Selection;

/// The certificates an HTTPS listener serves, or why it cannot be served
/// (the spec's reason first).
pub fn listener_certificates<'a>(
    snapshot: &'a Snapshot,
    gateway: &Gateway,
    listener: &Listener,
) -> Result<Vec<&'a Arc<TlsCertificate>>, String> {
    fairlead_model::gateway_status::listener_certificates(snapshot, gateway, listener)
        .map_err(|(reason, message)| format!("{reason}: {message}"))
}

/// The spec's order of matches inside a host group (lower first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// False for an `Exact` path.
    not_exact: bool,
    /// Longer paths first.
    path_len: std::cmp::Reverse<usize>,
    /// A prefix before a regular expression of the same length.
    regex: bool,
    /// False when a method is matched.
    no_method: bool,
    /// More header matches first.
    headers: std::cmp::Reverse<usize>,
    /// Then more query parameter matches.
    queries: std::cmp::Reverse<usize>,
    /// Older routes first.
    created: i64,
    /// Then by namespace/name.
    route: Arc<str>,
    /// Then rule and match order.
    rule: usize,
    matched: usize,
}

/// One compiled match of a route rule.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) path: PathMatch,
    pub(crate) headers: Vec<HeaderMatch>,
    pub(crate) method: Option<Method>,
    /// A GRPCRoute's service/method match (on the path `/service/method`).
    pub(crate) grpc: Option<GrpcMethodMatch>,
    /// Query parameter matches.
    pub(crate) query: Vec<QueryMatch>,
    /// The rule's backends with their weights (weight 0 left out).
    pub(crate) backends: Vec<(Route, u32)>,
    total: u32,
    /// Taken when `total` is 0: an unresolved backend (503).
    pub(crate) none: Route,
    /// Sort key: lower sorts first (see the module docs).
    order: Precedence,
}

impl Rule {
    pub(crate) fn matches(
        &self,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> bool {
        self.path.matches(path)
            && self.query.iter().all(|q| q.matches(query))
            && self.grpc.as_ref().is_none_or(|g| g.matches(path))
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(|h| {
                headers
                    .get_all(h.name.as_str())
                    .iter()
                    .any(|v| h.value.matches(v.as_bytes()))
            })
    }

    fn pick(&self) -> &Route {
        if self.backends.len() == 1 {
            return &self.backends[0].0;
        }
        if self.total == 0 {
            return &self.none;
        }
        let mut ticket = fastrand::u32(0..self.total);
        for (route, weight) in &self.backends {
            if ticket < *weight {
                return route;
            }
            ticket -= weight;
        }
        &self.backends[self.backends.len() - 1].0
    }
}

/// The HTTPRoutes attached to the served Gateways, by host group.
#[derive(Clone, Debug, Default)]
pub struct HttpRouteTable {
    pub(crate) exact: HashMap<String, Vec<Rule>>,
    pub(crate) wildcard: HashMap<String, Vec<Rule>>,
    pub(crate) any: Vec<Rule>,
    /// HTTPRoutes attached to at least one listener (`namespace/name`).
    pub attached: Vec<String>,
}

impl HttpRouteTable {
    pub(crate) fn group(&self, host: &str) -> Option<&Vec<Rule>> {
        if let Some(rules) = self.exact.get(host) {
            return Some(rules);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(rules) = self.wildcard.get(suffix) {
                    return Some(rules);
                }
                rest = suffix;
            }
        }
        (!self.any.is_empty()).then_some(&self.any)
    }

    /// Whether no route is attached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

impl RouteTable {
    /// The route for a request: the Gateway API routes of the listener side
    /// it came in on (`tls`: the HTTPS listeners) first (see
    /// [`crate::gateway_api`]), then the Ingress routes ([`RouteTable::route`]).
    #[must_use]
    pub fn route_request(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
        tls: bool,
    ) -> Option<&Route> {
        let routes = if tls {
            &self.https_routes
        } else {
            &self.http_routes
        };
        let gateway_api = routes
            .group(host)
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r.matches(path, query, method, headers))
            })
            .map(Rule::pick);
        gateway_api.or_else(|| self.route(host, path))
    }

    /// The route for a request that came in on a Gateway listener socket
    /// of `port` (not the node's `--http`/`--https`): the routes of the
    /// listeners on that port only; no Ingress is served there.
    #[must_use]
    pub fn route_gateway_port(
        &self,
        port: u16,
        host: &str,
        path: &str,
        query: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.port_routes
            .get(&port)?
            .group(host)?
            .iter()
            .find(|r| r.matches(path, query, method, headers))
            .map(Rule::pick)
    }
}

/// Compiles the HTTPRoutes of the Gateways `selection` serves into the
/// table `compiler` builds.
pub(crate) fn compile(compiler: &mut Compiler<'_>, snapshot: &Snapshot, selection: &Selection) {
    let mut tables = [HttpRouteTable::default(), HttpRouteTable::default()];
    let gateways: Vec<&Arc<Gateway>> = served_gateways(snapshot, selection).collect();
    report_listeners(compiler, snapshot, &gateways, selection);
    let mut ports: HashMap<u16, HttpRouteTable> = HashMap::new();
    let mut seen: HashSet<(ObjectKey, Option<Hostname>, u16)> = HashSet::new();
    for route in snapshot.http_routes.values() {
        let attachments = route_attachments(
            compiler,
            snapshot,
            selection,
            &gateways,
            ("HTTPRoute", &route.key),
            (&route.parents, &route.hostnames),
        );
        if !attachments.is_empty() {
            tables[0].attached.push(route.key.to_string());
        }
        for (port, hostname) in attachments {
            if seen.insert((route.key.clone(), hostname.clone(), port)) {
                let table = table_of(&mut tables, &mut ports, selection, port);
                add_route(compiler, snapshot, table, route, hostname.as_ref());
            }
        }
    }
    compile_grpc(
        compiler,
        snapshot,
        selection,
        &gateways,
        (&mut tables, &mut ports),
    );
    for table in tables.iter_mut().chain(ports.values_mut()) {
        for rules in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any))
        {
            rules.sort_by(|a, b| a.order.cmp(&b.order));
        }
    }
    let [http, https] = tables;
    compiler.table.http_routes = http;
    compiler.table.https_routes = https;
    compiler.table.port_routes = ports;
}

/// The table of the listeners on `port`: the node's `--http` and
/// `--https` tables (shared with the Ingresses) or the port's own.
fn table_of<'t>(
    tables: &'t mut [HttpRouteTable; 2],
    ports: &'t mut HashMap<u16, HttpRouteTable>,
    selection: &Selection,
    port: u16,
) -> &'t mut HttpRouteTable {
    if port == selection.http_port {
        &mut tables[0]
    } else if port == selection.https_port {
        &mut tables[1]
    } else {
        ports.entry(port).or_default()
    }
}

/// Compiles the GRPCRoutes attached to the served listeners: a match is a
/// path `/service/method` (either part may be open) plus headers; backends
/// are spoken to with HTTP/2 (h2c).
fn compile_grpc(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    selection: &Selection,
    gateways: &[&Arc<Gateway>],
    (tables, ports): (&mut [HttpRouteTable; 2], &mut HashMap<u16, HttpRouteTable>),
) {
    let mut seen: HashSet<(ObjectKey, Option<Hostname>, u16)> = HashSet::new();
    for route in snapshot.grpc_routes.values() {
        let attachments = route_attachments(
            compiler,
            snapshot,
            selection,
            gateways,
            ("GRPCRoute", &route.key),
            (&route.parents, &route.hostnames),
        );
        for (port, hostname) in attachments {
            if seen.insert((route.key.clone(), hostname.clone(), port)) {
                let table = table_of(tables, ports, selection, port);
                add_grpc_route(compiler, snapshot, table, route, hostname.as_ref());
            }
        }
    }
}

/// Where a route is served: `(listener port, hostname)` for each hostname of
/// each served listener it attaches to, by the model's one attachment rule
/// ([`attach`]: the status reads the same). Not attached at all: reported
/// with the spec's reasons. An empty answer for a route attached only to
/// listeners that are not served (they are reported with the listener).
fn route_attachments(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    selection: &Selection,
    gateways: &[&Arc<Gateway>],
    (kind, key): (&'static str, &ObjectKey),
    (parents, hostnames): (&[fairlead_model::ParentRef], &[Hostname]),
) -> Vec<(u16, Option<Hostname>)> {
    let mut reasons = Vec::new();
    let mut attached = false;
    let mut served = Vec::new();
    for parent in parents {
        let Some(gateway) = gateways.iter().find(|g| g.key == parent.gateway) else {
            continue;
        };
        match attach(snapshot, selection, gateway, parent, (kind, key), hostnames) {
            Err((reason, message)) => reasons.push(format!("{reason}: {message}")),
            Ok(attachments) => {
                attached = true;
                for Attachment {
                    listener,
                    hostnames,
                    served: programmed,
                } in attachments
                {
                    if programmed {
                        served.extend(hostnames.into_iter().map(|h| (listener.port, h)));
                    }
                }
            }
        }
    }
    if !attached && !reasons.is_empty() {
        compiler.table.problems.push(RouteProblem {
            ingress: key.clone(),
            message: format!("{kind} not attached: {}", reasons.join("; ")),
        });
    }
    served
}

/// The path a GRPCRoute method match stands for, and (for a regular
/// expression) the length it ranks with: exact parts make the path a table
/// key; a regular expression is left to the method matcher (path prefix
/// `/`), ranked by the length of its patterns.
fn grpc_path(method: Option<&GrpcMethodMatch>) -> (PathMatch, Option<usize>) {
    match method {
        Some(GrpcMethodMatch {
            service: Some(StringMatch::Exact(service)),
            method: Some(StringMatch::Exact(method)),
        }) => (PathMatch::Exact(format!("/{service}/{method}")), None),
        Some(GrpcMethodMatch {
            service: Some(StringMatch::Exact(service)),
            method: None,
        }) => (PathMatch::Prefix(format!("/{service}")), None),
        Some(GrpcMethodMatch { service, method })
            if service.as_ref().is_some_and(StringMatch::is_regex)
                || method.as_ref().is_some_and(StringMatch::is_regex) =>
        {
            let len = |p: &Option<StringMatch>| match p {
                Some(StringMatch::Regex(p)) => p.as_str().len(),
                Some(StringMatch::Exact(v)) => v.len(),
                None => 0,
            };
            (
                PathMatch::Prefix("/".to_owned()),
                Some(len(service) + len(method) + 1),
            )
        }
        _ => (PathMatch::Prefix("/".to_owned()), None),
    }
}

fn add_grpc_route(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    table: &mut HttpRouteTable,
    route: &GrpcRoute,
    hostname: Option<&Hostname>,
) {
    let name: Arc<str> = Arc::from(format!("GRPCRoute {}", route.key));
    let host: Arc<str> = Arc::from(hostname.map(ToString::to_string).unwrap_or_default());
    let key: Arc<str> = Arc::from(route.key.to_string());
    let group = match hostname {
        Some(Hostname::Exact(h)) => table.exact.entry(h.clone()).or_default(),
        Some(Hostname::Wildcard(s)) => table.wildcard.entry(s.clone()).or_default(),
        None => &mut table.any,
    };
    for (r, rule) in route.rules.iter().enumerate() {
        if let Some(why) = &rule.invalid {
            compiler.table.problems.push(RouteProblem {
                ingress: route.key.clone(),
                message: format!("GRPCRoute rule {r} dropped: {why}"),
            });
            continue;
        }
        let backend_ids: Vec<(usize, u32, &[RouteFilter])> = rule
            .backends
            .iter()
            .map(|b| {
                let id = route_backend(compiler, snapshot, "GRPCRoute", &route.key, &b.target);
                (compiler.h2c(id), b.weight, b.filters.as_slice())
            })
            .collect();
        let rule_filters = RuleFilters::new(
            compiler,
            snapshot,
            ("GRPCRoute", &route.key),
            &rule.filters,
            fairlead_model::RouteTimeouts::default(),
            true,
        );
        let none_id = compiler.unresolved(
            None,
            format!("GRPCRoute {} rule {r}", route.key),
            "no backendRef with a weight".to_owned(),
        );
        for (m, grpc_match) in rule.matches.iter().enumerate() {
            let (path, regex_len) = grpc_path(grpc_match.method.as_ref());
            let make = |backend, backend_filters: &[RouteFilter]| Route {
                backend,
                ingress: name.clone(),
                host: host.clone(),
                path: Arc::from(path.value()),
                path_type: Some(match path {
                    PathMatch::Exact(_) => PathType::Exact,
                    PathMatch::Prefix(_) => PathType::Prefix,
                    PathMatch::Regex(_) => PathType::ImplementationSpecific,
                }),
                filters: rule_filters.for_backend(backend_filters, ""),
            };
            let backends: Vec<(Route, u32)> = backend_ids
                .iter()
                .filter(|(_, w, _)| *w > 0)
                .map(|(id, w, f)| (make(*id, f), *w))
                .collect();
            let total = backends.iter().map(|(_, w)| *w).sum();
            group.push(Rule {
                order: Precedence {
                    not_exact: !matches!(path, PathMatch::Exact(_)),
                    path_len: std::cmp::Reverse(regex_len.unwrap_or(path.value().len())),
                    regex: regex_len.is_some(),
                    no_method: grpc_match.method.is_none(),
                    headers: std::cmp::Reverse(grpc_match.headers.len()),
                    queries: std::cmp::Reverse(0),
                    created: route.created,
                    route: key.clone(),
                    rule: r,
                    matched: m,
                },
                path: path.clone(),
                headers: grpc_match.headers.clone(),
                method: None,
                grpc: grpc_match.method.clone(),
                query: Vec::new(),
                backends,
                total,
                none: make(none_id, &[]),
            });
            compiler.table.route_count += 1;
        }
    }
}

/// Reports the listeners of accepted Gateways that are not served, with
/// the reasons of their status ([`listener_model_state`]).
fn report_listeners(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    gateways: &[&Arc<Gateway>],
    selection: &Selection,
) {
    for gateway in gateways {
        for listener in &gateway.listeners {
            let state = listener_model_state(snapshot, gateway, listener, selection);
            let Some(why) = state
                .accepted
                .as_ref()
                .err()
                .or(state.resolved.as_ref().err())
                .or(state.conflicted.as_ref())
            else {
                continue;
            };
            compiler.table.problems.push(RouteProblem {
                ingress: gateway.key.clone(),
                message: format!("listener {}: {}: {}", listener.name, why.0, why.1),
            });
        }
    }
}

/// The backend of a Service reference of a route: resolved, or (Gateway
/// API semantics) an invalid reference answered with 500.
fn route_backend(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    route_kind: &str,
    route_key: &ObjectKey,
    target: &RouteBackendTarget,
) -> usize {
    match target {
        RouteBackendTarget::Service { service, port } => {
            let permitted = snapshot.reference_permitted(&CrossReference {
                from_group: fairlead_model::gateway_api::GROUP,
                from_kind: route_kind,
                from_namespace: &route_key.namespace,
                to_group: "",
                to_kind: "Service",
                to_namespace: &service.namespace,
                to_name: &service.name,
            });
            let wanted = format!("Service {service}:{port}");
            if !permitted {
                return compiler.invalid_reference(
                    route_key,
                    wanted,
                    format!("RefNotPermitted: Service {service} is in another namespace and no ReferenceGrant allows it"),
                );
            }
            if !snapshot.services.contains_key(service) {
                return compiler.invalid_reference(
                    route_key,
                    wanted,
                    format!("BackendNotFound: Service {service} does not exist"),
                );
            }
            compiler.service_backend(
                &service.namespace,
                &service.name,
                &PortRef::Number(*port),
                Some(route_key),
            )
        }
        RouteBackendTarget::Invalid { wanted, reason } => {
            compiler.invalid_reference(route_key, wanted.clone(), reason.clone())
        }
    }
}

/// A rule's filters compiled once (mirror backends resolved), combined
/// with each backendRef's per route.
struct RuleFilters {
    request: Option<HeaderOps>,
    response: Option<HeaderOps>,
    redirect: Option<fairlead_model::Redirect>,
    rewrite: Option<fairlead_model::Rewrite>,
    mirrors: Vec<BackendId>,
    timeouts: fairlead_model::RouteTimeouts,
}

impl RuleFilters {
    fn new(
        compiler: &mut Compiler<'_>,
        snapshot: &Snapshot,
        (route_kind, route_key): (&str, &ObjectKey),
        filters: &[RouteFilter],
        timeouts: fairlead_model::RouteTimeouts,
        h2c: bool,
    ) -> Self {
        let mut out = RuleFilters {
            request: None,
            response: None,
            redirect: None,
            rewrite: None,
            mirrors: Vec::new(),
            timeouts,
        };
        for f in filters {
            match f {
                RouteFilter::RequestHeaders(m) => out.request = Some(HeaderOps::new(m)),
                RouteFilter::ResponseHeaders(m) => out.response = Some(HeaderOps::new(m)),
                RouteFilter::Redirect(r) => out.redirect = Some(r.clone()),
                RouteFilter::Rewrite(r) => out.rewrite = Some(r.clone()),
                RouteFilter::Mirror(target) => {
                    let id = route_backend(compiler, snapshot, route_kind, route_key, target);
                    out.mirrors.push(if h2c { compiler.h2c(id) } else { id });
                }
            }
        }
        out
    }

    /// The filters of a route to a backend with `backend_filters`, for a
    /// match written with the prefix `prefix`; `None` when there are none.
    fn for_backend(
        &self,
        backend_filters: &[RouteFilter],
        prefix: &str,
    ) -> Option<Arc<RouteFilters>> {
        if backend_filters.is_empty()
            && self.request.is_none()
            && self.response.is_none()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.mirrors.is_empty()
            && self.timeouts == fairlead_model::RouteTimeouts::default()
        {
            return None;
        }
        let mut filters = RouteFilters {
            request_headers: self.request.iter().cloned().collect(),
            response_headers: self.response.iter().cloned().collect(),
            redirect: self.redirect.clone(),
            rewrite: self.rewrite.clone(),
            prefix: prefix.to_owned(),
            mirrors: self.mirrors.clone(),
            timeouts: self.timeouts,
        };
        for f in backend_filters {
            match f {
                RouteFilter::RequestHeaders(m) => filters.request_headers.push(HeaderOps::new(m)),
                RouteFilter::ResponseHeaders(m) => {
                    filters.response_headers.push(HeaderOps::new(m));
                }
                // The model drops rules with other backendRef filters.
                _ => {}
            }
        }
        Some(Arc::new(filters))
    }
}

fn add_route(
    compiler: &mut Compiler<'_>,
    snapshot: &Snapshot,
    table: &mut HttpRouteTable,
    route: &HttpRoute,
    hostname: Option<&Hostname>,
) {
    let name: Arc<str> = Arc::from(format!("HTTPRoute {}", route.key));
    let host: Arc<str> = Arc::from(hostname.map(ToString::to_string).unwrap_or_default());
    let key: Arc<str> = Arc::from(route.key.to_string());
    let group = match hostname {
        Some(Hostname::Exact(h)) => table.exact.entry(h.clone()).or_default(),
        Some(Hostname::Wildcard(s)) => table.wildcard.entry(s.clone()).or_default(),
        None => &mut table.any,
    };
    for (r, rule) in route.rules.iter().enumerate() {
        if let Some(why) = &rule.invalid {
            compiler.table.problems.push(RouteProblem {
                ingress: route.key.clone(),
                message: format!("HTTPRoute rule {r} dropped: {why}"),
            });
            continue;
        }
        let mut backend_ids = Vec::with_capacity(rule.backends.len());
        for backend in &rule.backends {
            let id = route_backend(compiler, snapshot, "HTTPRoute", &route.key, &backend.target);
            backend_ids.push((id, backend.weight, backend.filters.as_slice()));
        }
        let rule_filters = RuleFilters::new(
            compiler,
            snapshot,
            ("HTTPRoute", &route.key),
            &rule.filters,
            rule.timeouts,
            false,
        );
        let none_id = compiler.unresolved(
            None,
            format!("HTTPRoute {} rule {r}", route.key),
            "no backendRef with a weight".to_owned(),
        );
        for (m, route_match) in rule.matches.iter().enumerate() {
            let prefix = match &route_match.path {
                PathMatch::Prefix(p) => p.as_str(),
                _ => "",
            };
            let make = |backend, backend_filters: &[RouteFilter]| Route {
                backend,
                ingress: name.clone(),
                host: host.clone(),
                path: Arc::from(route_match.path.value()),
                path_type: Some(match route_match.path {
                    PathMatch::Exact(_) => PathType::Exact,
                    PathMatch::Prefix(_) => PathType::Prefix,
                    PathMatch::Regex(_) => PathType::ImplementationSpecific,
                }),
                filters: rule_filters.for_backend(backend_filters, prefix),
            };
            let backends: Vec<(Route, u32)> = backend_ids
                .iter()
                .filter(|(_, w, _)| *w > 0)
                .map(|(id, w, f)| (make(*id, f), *w))
                .collect();
            let total = backends.iter().map(|(_, w)| *w).sum();
            group.push(Rule {
                path: route_match.path.clone(),
                headers: route_match.headers.clone(),
                method: route_match
                    .method
                    .as_deref()
                    .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
                backends,
                total,
                grpc: None,
                query: route_match.query.clone(),
                none: make(none_id, &[]),
                order: Precedence {
                    not_exact: !matches!(route_match.path, PathMatch::Exact(_)),
                    path_len: std::cmp::Reverse(match &route_match.path {
                        PathMatch::Prefix(p) => p.trim_end_matches('/').len(),
                        other => other.value().len(),
                    }),
                    regex: matches!(route_match.path, PathMatch::Regex(_)),
                    no_method: route_match.method.is_none(),
                    headers: std::cmp::Reverse(route_match.headers.len()),
                    queries: std::cmp::Reverse(route_match.query.len()),
                    created: route.created,
                    route: key.clone(),
                    rule: r,
                    matched: m,
                },
            });
            compiler.table.route_count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use fairlead_model::{DEFAULT_GATEWAY_CONTROLLER, Snapshot};
    use serde_json::{Value, json};

    use crate::router::{ClassSelection, RouteTable};
    use crate::test_support::{model, service};

    use super::*;

    fn class(name: &str, controller: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": name}, "spec": {"controllerName": controller}})
    }

    fn gateway(ns: &str, name: &str, class: &str, listeners: &Value) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"gatewayClassName": class, "listeners": listeners}})
    }

    fn http_route(ns: &str, name: &str, spec: &Value) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn compile(snapshot: &Snapshot) -> RouteTable {
        RouteTable::compile(
            snapshot,
            &ClassSelection {
                class: "fairlead".to_owned(),
                default_backend: None,
                gateway_api: Selection::default(),
            },
        )
    }

    /// `route name -> backend` of a request, or "404".
    fn get(
        table: &RouteTable,
        host: &str,
        path: &str,
        method: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        table
            .route_request(host, path, None, &method, &map, false)
            .map_or("404".to_owned(), |r| {
                format!("{} -> {}", r.ingress, table.backend(r.backend))
            })
    }

    fn world() -> Arc<Snapshot> {
        model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            class("theirs", "example.com/other"),
            service("shop", "cart", &[("http", 8080)]),
            service("shop", "cart-v2", &[("http", 8080)]),
            service("shop", "post", &[("http", 80)]),
            service("infra", "local", &[("http", 80)]),
            gateway(
                "infra",
                "web",
                "fl",
                &json!([
                    {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
                     "allowedRoutes": {"namespaces": {"from": "All"}}},
                    {"name": "same", "port": 80, "protocol": "HTTP"},
                    {"name": "alt", "port": 8080, "protocol": "HTTP"},
                ]),
            ),
            gateway(
                "infra",
                "theirs",
                "theirs",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            http_route(
                "shop",
                "shop",
                &json!({
                "parentRefs": [{"name": "web", "namespace": "infra", "sectionName": "http"}],
                "hostnames": ["shop.example.com"],
                "rules": [
                    {"matches": [{"path": {"type": "Exact", "value": "/cart"},
                                  "headers": [{"name": "X-Canary", "value": "yes"}]}],
                     "backendRefs": [{"name": "cart-v2", "port": 8080}]},
                    {"matches": [{"path": {"value": "/cart"}}],
                     "backendRefs": [{"name": "cart", "port": 8080}]},
                    {"matches": [{"method": "POST"}],
                     "backendRefs": [{"name": "post", "port": 80}]},
                ]}),
            ),
            http_route(
                "infra",
                "local",
                &json!({
                "parentRefs": [{"name": "web", "sectionName": "same"}],
                "rules": [{"backendRefs": [{"name": "local", "port": 80}]}]}),
            ),
            http_route(
                "shop",
                "denied",
                &json!({
                "parentRefs": [{"name": "web", "namespace": "infra", "sectionName": "same"}],
                "hostnames": ["denied.test"],
                "rules": [{"backendRefs": [{"name": "cart", "port": 8080}]}]}),
            ),
            http_route(
                "shop",
                "nosection",
                &json!({
                "parentRefs": [{"name": "web", "namespace": "infra", "sectionName": "nope"}],
                "hostnames": ["nosection.test"],
                "rules": [{"backendRefs": [{"name": "cart", "port": 8080}]}]}),
            ),
            http_route(
                "shop",
                "otherhost",
                &json!({
                "parentRefs": [{"name": "web", "namespace": "infra", "sectionName": "http"}],
                "hostnames": ["shop.example.org"],
                "rules": [{"backendRefs": [{"name": "cart", "port": 8080}]}]}),
            ),
            http_route(
                "infra",
                "theirs",
                &json!({
                "parentRefs": [{"name": "theirs"}],
                "hostnames": ["theirs.test"],
                "rules": [{"backendRefs": [{"name": "local", "port": 80}]}]}),
            ),
        ])
    }

    #[test]
    fn attached_routes_are_routed_by_host_path_header_and_method() {
        let table = compile(&world());
        let get =
            |host, path, method, headers: &[(&str, &str)]| get(&table, host, path, method, headers);
        assert_eq!(
            get("shop.example.com", "/cart", "GET", &[]),
            "HTTPRoute shop/shop -> shop/cart:8080"
        );
        assert_eq!(
            get("shop.example.com", "/cart/items", "GET", &[]),
            "HTTPRoute shop/shop -> shop/cart:8080"
        );
        assert_eq!(
            get("shop.example.com", "/cart", "GET", &[("x-canary", "yes")]),
            "HTTPRoute shop/shop -> shop/cart-v2:8080"
        );
        assert_eq!(
            get("shop.example.com", "/cart", "GET", &[("x-canary", "no")]),
            "HTTPRoute shop/shop -> shop/cart:8080"
        );
        assert_eq!(
            get("shop.example.com", "/cartoon", "POST", &[]),
            "HTTPRoute shop/shop -> shop/post:80"
        );
        // The shop.example.com group answers alone: no fall-through to the
        // catch-all listener's route.
        assert_eq!(get("shop.example.com", "/cartoon", "GET", &[]), "404");
        // The listener without a hostname takes every other host.
        assert_eq!(
            get("anything.test", "/x", "GET", &[]),
            "HTTPRoute infra/local -> infra/local:80"
        );
        // Not attached: another namespace on a Same listener, no such
        // section, no hostname in common, another controller's Gateway.
        for host in [
            "denied.test",
            "nosection.test",
            "shop.example.org",
            "theirs.test",
        ] {
            assert_eq!(
                get(host, "/", "GET", &[]),
                "HTTPRoute infra/local -> infra/local:80",
                "{host}"
            );
        }
        assert_eq!(table.http_routes.attached, vec!["infra/local", "shop/shop"]);
        let problems: Vec<String> = table
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.ingress, p.message))
            .collect();
        assert_eq!(
            problems,
            vec![
                "shop/denied: HTTPRoute not attached: NotAllowedByListeners: no listener of Gateway infra/web allows this route",
                "shop/nosection: HTTPRoute not attached: NoMatchingParent: Gateway infra/web has no listener named nope",
                "shop/otherhost: HTTPRoute not attached: NoMatchingListenerHostname: no hostname of the route matches a listener of Gateway infra/web",
            ]
        );
    }

    #[test]
    fn cross_namespace_backends_need_a_reference_grant_and_https_listeners_have_their_own_routes() {
        let grant = |to_name: &str| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                "metadata": {"name": format!("to-{to_name}"), "namespace": "backends"},
                "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                         "to": [{"group": "", "kind": "Service", "name": to_name}]}})
        };
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("backends", "granted", &[("http", 80)]),
            service("backends", "other", &[("http", 80)]),
            crate::tls::tests::secret("shop", "tls", &["secure.test"]),
            grant("granted"),
            gateway(
                "shop",
                "gw",
                "fl",
                &json!([
                    {"name": "http", "port": 80, "protocol": "HTTP"},
                    {"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"certificateRefs": [{"name": "tls"}]}},
                ]),
            ),
            http_route(
                "shop",
                "plain",
                &json!({
                "parentRefs": [{"name": "gw", "sectionName": "http"}],
                "rules": [
                    {"matches": [{"path": {"value": "/granted"}}],
                     "backendRefs": [{"name": "granted", "namespace": "backends", "port": 80}]},
                    {"matches": [{"path": {"value": "/other"}}],
                     "backendRefs": [{"name": "other", "namespace": "backends", "port": 80}]},
                    {"matches": [{"path": {"value": "/missing"}}],
                     "backendRefs": [{"name": "missing", "port": 80}]},
                ]}),
            ),
            http_route(
                "shop",
                "secure",
                &json!({
                "parentRefs": [{"name": "gw", "sectionName": "https"}],
                "hostnames": ["secure.test"],
                "rules": [{"backendRefs": [{"name": "granted", "namespace": "backends", "port": 80}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        let backend = |path: &str, tls: bool, host: &str| {
            table
                .route_request(host, path, None, &Method::GET, &HeaderMap::new(), tls)
                .map_or_else(
                    || "404".to_owned(),
                    |r| match table.backend(r.backend) {
                        crate::router::BackendSpec::Unresolved { status, reason, .. } => {
                            format!("{status} {reason}")
                        }
                        spec @ crate::router::BackendSpec::Service { .. } => spec.to_string(),
                    },
                )
        };
        assert_eq!(backend("/granted", false, "a.test"), "backends/granted:80");
        assert!(
            backend("/other", false, "a.test").starts_with("500 RefNotPermitted"),
            "{}",
            backend("/other", false, "a.test")
        );
        assert!(backend("/missing", false, "a.test").starts_with("500 BackendNotFound"));
        // The HTTPS listener's route is served on the TLS side only, and
        // the HTTP listener's on the plain side only.
        assert_eq!(backend("/", true, "secure.test"), "backends/granted:80");
        assert_eq!(backend("/", false, "secure.test"), "404");
        assert_eq!(backend("/granted", true, "a.test"), "404");
        let problems: Vec<String> = table.problems.iter().map(|p| p.message.clone()).collect();
        assert!(
            problems.iter().any(|p| p.contains("RefNotPermitted")),
            "{problems:?}"
        );
    }

    /// Status and serving read one rule: a listener the status reports as
    /// `Conflicted` is not served, nor is its HTTPS sibling's certificate;
    /// the routes attached to it count in `attachedRoutes` but get 404.
    #[test]
    fn conflicted_listeners_are_not_served_and_status_agrees() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([
                    {"name": "dup-a", "port": 80, "protocol": "HTTP", "hostname": "dup.test"},
                    {"name": "dup-b", "port": 80, "protocol": "HTTP", "hostname": "dup.test"},
                    {"name": "ok", "port": 80, "protocol": "HTTP", "hostname": "ok.test"},
                ]),
            ),
            http_route(
                "default",
                "dup",
                &json!({"parentRefs": [{"name": "gw", "sectionName": "dup-a"}],
                        "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}),
            ),
            http_route(
                "default",
                "ok",
                &json!({"parentRefs": [{"name": "gw"}],
                        "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        assert_eq!(get(&table, "dup.test", "/", "GET", &[]), "404");
        assert_eq!(
            get(&table, "ok.test", "/", "GET", &[]),
            "HTTPRoute default/ok -> default/a:80"
        );
        let problems: Vec<&str> = table.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            problems.contains(
                &"listener dup-a: HostnameConflict: another listener has the same port and hostname"
            ),
            "{problems:?}"
        );
        // The status of the same snapshot: what is Programmed is what is
        // served.
        let status = fairlead_model::gateway_status::compute(&snapshot, &Selection::default());
        let gw = &status.gateways[&ObjectKey::new("default", "gw")];
        let programmed: Vec<(&str, bool, i32)> = gw
            .listeners
            .iter()
            .map(|l| {
                let p = l
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status);
                (l.name.as_str(), p, l.attached_routes)
            })
            .collect();
        assert_eq!(
            programmed,
            vec![("dup-a", false, 2), ("dup-b", false, 1), ("ok", true, 1)]
        );
    }

    /// Listeners of one Gateway on one port with different protocols are
    /// both `Conflicted` (ProtocolConflict) and neither is served.
    #[test]
    fn protocol_conflicts_are_not_served() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            crate::tls::tests::secret("default", "tls", &["p.test"]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([
                    {"name": "plain", "port": 80, "protocol": "HTTP"},
                    {"name": "secure", "port": 80, "protocol": "HTTPS",
                     "tls": {"certificateRefs": [{"name": "tls"}]}},
                ]),
            ),
            http_route(
                "default",
                "r",
                &json!({"parentRefs": [{"name": "gw"}],
                        "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        assert_eq!(get(&table, "p.test", "/", "GET", &[]), "404");
        assert!(table.https_routes.is_empty());
        let status = fairlead_model::gateway_status::compute(&snapshot, &Selection::default());
        let conflicted: Vec<String> = status.gateways[&ObjectKey::new("default", "gw")]
            .listeners
            .iter()
            .flat_map(|l| &l.conditions)
            .filter(|c| c.type_ == "Conflicted")
            .map(|c| format!("{} {}", c.status, c.reason))
            .collect();
        assert_eq!(
            conflicted,
            vec!["true ProtocolConflict", "true ProtocolConflict"]
        );
    }

    /// Listeners on ports of their own: routed on that port only (not on
    /// `--http`, no Ingress there); the sockets wanted; the status of a
    /// socket that cannot be opened (`PortUnavailable`, and
    /// `AddressNotUsable` for a Gateway's own address); an HTTP and an HTTPS
    /// listener of two Gateways on one port (the first Gateway keeps it); an
    /// HTTP listener on the `--https` port.
    #[test]
    fn listeners_on_other_ports_sockets_and_their_status() {
        use fairlead_model::gateway_status::{ListenerSocket, compute, listener_sockets, render};
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            crate::tls::tests::secret("default", "tls", &["p.test"]),
            gateway(
                "default",
                "a",
                "fl",
                &json!([{"name": "alt", "port": 8080, "protocol": "HTTP"},
                        {"name": "wrong", "port": 443, "protocol": "HTTP"}]),
            ),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "b", "namespace": "default"},
                   "spec": {"gatewayClassName": "fl",
                            "addresses": [{"value": "127.0.0.9"}],
                            "listeners": [
                                {"name": "clash", "port": 8080, "protocol": "HTTPS",
                                 "tls": {"certificateRefs": [{"name": "tls"}]}},
                                {"name": "own", "port": 9090, "protocol": "HTTP"}]}}),
            http_route(
                "default",
                "r",
                &json!({"parentRefs": [{"name": "a"}, {"name": "b"}],
                        "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        let on = |port| {
            table
                .route_gateway_port(port, "x.test", "/", None, &Method::GET, &HeaderMap::new())
                .map_or("404".to_owned(), |r| r.ingress.to_string())
        };
        assert_eq!(on(8080), "HTTPRoute default/r");
        assert_eq!(on(9090), "HTTPRoute default/r");
        assert_eq!(on(7070), "404");
        assert_eq!(get(&table, "x.test", "/", "GET", &[]), "404");
        let selection = Selection::default();
        let ip = "127.0.0.9".parse().ok();
        assert_eq!(
            listener_sockets(&snapshot, &selection)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![
                ListenerSocket {
                    address: None,
                    port: 8080,
                    tls: false
                },
                ListenerSocket {
                    address: ip,
                    port: 9090,
                    tls: false
                },
            ]
        );
        selection.listen_failures.set(
            [(
                ListenerSocket {
                    address: ip,
                    port: 9090,
                    tls: false,
                },
                "Address in use".to_owned(),
            )]
            .into(),
        );
        let status = render(&compute(&snapshot, &selection));
        for expected in [
            "gateway default/b\n  Accepted False ListenersNotValid: no listener is valid\n  Programmed False AddressNotUsable: cannot listen on 127.0.0.9:9090: Address in use\n",
            "listener own attachedRoutes=1\n    Accepted False PortUnavailable: cannot listen on 127.0.0.9:9090: Address in use\n",
            "listener clash attachedRoutes=1\n    Accepted False PortUnavailable: port 8080 is used by listener alt of Gateway default/a with another protocol\n",
            "listener wrong attachedRoutes=1\n    Accepted False PortUnavailable: port 443 is the node's HTTPS port: HTTP listeners cannot use it\n",
            "listener alt attachedRoutes=1\n    Accepted True Accepted\n    ResolvedRefs True ResolvedRefs\n    Programmed True Programmed\n",
        ] {
            assert!(status.contains(expected), "{expected}\n---\n{status}");
        }
    }

    #[test]
    fn query_parameter_matches() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            service("default", "b", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            http_route(
                "default",
                "q",
                &json!({
                "parentRefs": [{"name": "gw"}],
                "rules": [
                    {"backendRefs": [{"name": "a", "port": 80}]},
                    {"matches": [{"queryParams": [{"name": "v", "value": "2"}, {"name": "v", "value": "3"}]}],
                     "backendRefs": [{"name": "b", "port": 80}]},
                ]}),
            ),
        ]);
        let table = compile(&snapshot);
        let get = |query: Option<&str>| {
            table
                .route_request(
                    "x.test",
                    "/p",
                    query,
                    &Method::GET,
                    &HeaderMap::new(),
                    false,
                )
                .map_or("404".to_owned(), |r| table.backend(r.backend).to_string())
        };
        // The query match is more specific than none: it wins when it holds.
        assert_eq!(get(Some("v=2")), "default/b:80");
        assert_eq!(get(Some("a=1&v=2")), "default/b:80");
        // Only the first v counts, in the match and in the request.
        assert_eq!(get(Some("v=3")), "default/a:80");
        assert_eq!(get(Some("v=1&v=2")), "default/a:80");
        assert_eq!(get(Some("vv=2")), "default/a:80");
        assert_eq!(get(None), "default/a:80");
    }

    #[test]
    fn precedence_across_routes() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            service("default", "b", &[("http", 80)]),
            service("default", "c", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            // Written first by name, but less specific.
            http_route(
                "default",
                "a",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["*.example.com"],
                "rules": [{"matches": [{"path": {"value": "/api"}}], "backendRefs": [{"name": "a", "port": 80}]}]}),
            ),
            http_route(
                "default",
                "b",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["*.example.com"],
                "rules": [
                    {"matches": [{"path": {"value": "/api/v2"}}], "backendRefs": [{"name": "b", "port": 80}]},
                    {"matches": [{"path": {"value": "/api"}, "headers": [{"name": "x-b", "value": "1"}]}],
                     "backendRefs": [{"name": "b", "port": 80}]},
                ]}),
            ),
            http_route(
                "default",
                "c",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["*.example.com"],
                "rules": [{"matches": [{"path": {"type": "Exact", "value": "/api/v2/x"}}],
                           "backendRefs": [{"name": "c", "port": 80}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        let get =
            |path, headers: &[(&str, &str)]| get(&table, "www.a.example.com", path, "GET", headers);
        assert_eq!(get("/api/x", &[]), "HTTPRoute default/a -> default/a:80");
        assert_eq!(
            get("/api/x", &[("x-b", "1")]),
            "HTTPRoute default/b -> default/b:80"
        );
        assert_eq!(get("/api/v2/y", &[]), "HTTPRoute default/b -> default/b:80");
        assert_eq!(get("/api/v2/x", &[]), "HTTPRoute default/c -> default/c:80");
        assert_eq!(get("/other", &[]), "404");
        // The wildcard needs a label in front of its suffix.
        assert_eq!(get_host(&table, "example.com"), "404");
    }

    #[test]
    fn regular_expressions_rank_with_prefixes_and_bad_ones_drop_their_rule() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            service("default", "b", &[("http", 80)]),
            service("default", "c", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            http_route(
                "default",
                "re",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["re.test"],
                "rules": [
                    {"backendRefs": [{"name": "a", "port": 80}]},
                    {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
                     "backendRefs": [{"name": "b", "port": 80}]},
                    {"matches": [{"path": {"value": "/items/special"}}],
                     "backendRefs": [{"name": "c", "port": 80}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/h"},
                                  "headers": [{"type": "RegularExpression", "name": "x-version", "value": "v[0-9]+"}]}],
                     "backendRefs": [{"name": "c", "port": 80}]},
                    {"matches": [{"path": {"type": "RegularExpression", "value": "/bad/(["}}],
                     "backendRefs": [{"name": "c", "port": 80}]},
                ]}),
            ),
        ]);
        let table = compile(&snapshot);
        let get = |path, headers: &[(&str, &str)]| {
            let r = get(&table, "re.test", path, "GET", headers);
            r.rsplit(" -> ").next().unwrap().to_owned()
        };
        // The expression beats the catch-all prefix; a longer prefix beats
        // the expression; the whole path must match.
        assert_eq!(get("/items/42", &[]), "default/b:80");
        assert_eq!(get("/items/special", &[]), "default/c:80");
        assert_eq!(get("/items/x", &[]), "default/a:80");
        assert_eq!(get("/items/42/more", &[]), "default/a:80");
        assert_eq!(get("/h", &[("x-version", "v12")]), "default/c:80");
        assert_eq!(get("/h", &[("x-version", "v12x")]), "default/a:80");
        // The invalid rule is dropped (its path goes to the catch-all),
        // reported; the rest of the route serves.
        assert_eq!(get("/bad/([", &[]), "default/a:80");
        let problems: Vec<&str> = table.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "HTTPRoute rule 4 dropped: UnsupportedValue: spec.rules[4].matches[0].path.value: invalid regular expression"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn filters_are_attached_only_to_routes_that_have_them_and_explained() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            http_route(
                "default",
                "f",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["f.test"],
                "rules": [
                    {"matches": [{"path": {"value": "/plain"}}], "backendRefs": [{"name": "a", "port": 80}]},
                    {"matches": [{"path": {"value": "/old"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
                    {"matches": [{"path": {"value": "/h"}}],
                     "timeouts": {"request": "2s"},
                     "backendRefs": [{"name": "a", "port": 80, "filters": [
                         {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-b", "value": "1"}]}}]}]},
                ]}),
            ),
        ]);
        let table = compile(&snapshot);
        let route = |path| {
            table
                .route_request("f.test", path, None, &Method::GET, &HeaderMap::new(), false)
                .unwrap()
                .clone()
        };
        // No filters: nothing allocated, nothing to apply.
        assert!(route("/plain").filters.is_none());
        let redirect = route("/old/x").filters.unwrap();
        assert_eq!(redirect.prefix, "/old");
        assert!(redirect.redirect.is_some());
        let h = route("/h").filters.unwrap();
        assert_eq!(h.response_headers.len(), 1);
        assert_eq!(h.timeouts.request, Some(std::time::Duration::from_secs(2)));
        let matches: Vec<String> = table.entries().into_iter().map(|e| e.matches).collect();
        assert!(
            matches.contains(&"Prefix /old filters RequestRedirect".to_owned()),
            "{matches:?}"
        );
        assert!(
            matches.contains(&"Prefix /h filters ResponseHeaderModifier timeout 2s".to_owned()),
            "{matches:?}"
        );
    }

    fn get_host(table: &RouteTable, host: &str) -> String {
        get(table, host, "/api", "GET", &[])
    }

    #[test]
    fn weighted_backends() {
        let snapshot = model(vec![
            class("fl", DEFAULT_GATEWAY_CONTROLLER),
            service("default", "a", &[("http", 80)]),
            service("default", "b", &[("http", 80)]),
            service("default", "z", &[("http", 80)]),
            gateway(
                "default",
                "gw",
                "fl",
                &json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ),
            http_route(
                "default",
                "w",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["w.test"],
                "rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 1},
                                           {"name": "b", "port": 80, "weight": 3},
                                           {"name": "z", "port": 80, "weight": 0}]}]}),
            ),
            http_route(
                "default",
                "zero",
                &json!({
                "parentRefs": [{"name": "gw"}], "hostnames": ["zero.test"],
                "rules": [{"backendRefs": [{"name": "z", "port": 80, "weight": 0}]}]}),
            ),
        ]);
        let table = compile(&snapshot);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..4000 {
            *counts
                .entry(get(&table, "w.test", "/", "GET", &[]))
                .or_default() += 1;
        }
        let a = counts["HTTPRoute default/w -> default/a:80"];
        let b = counts["HTTPRoute default/w -> default/b:80"];
        assert_eq!(a + b, 4000, "weight 0 takes nothing: {counts:?}");
        assert!((800..1200).contains(&a), "1:3 split: {counts:?}");
        assert_eq!(
            get(&table, "zero.test", "/", "GET", &[]),
            "HTTPRoute default/zero -> HTTPRoute default/zero rule 0 (unresolved)"
        );
    }
}
