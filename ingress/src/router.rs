//! The route table: typed data compiled from the model's Ingresses, never
//! configuration text. One table answers "which backend serves this host and
//! path", with the Ingress v1 semantics:
//!
//! - **Hosts.** A request's host (from `Host` or `:authority`, port and
//!   trailing dot removed, lower-cased) selects one *host group*: the rules
//!   written for exactly that host; else the rules of the wildcard
//!   `*.suffix` whose suffix is the host minus its first label (a wildcard
//!   matches exactly one label); else the rules that name no host. Paths of
//!   every Ingress (of the served class) that contribute to a host group are
//!   merged. A request never falls through from one group to a less specific
//!   one: like a server block of ingress-nginx, a host group answers every
//!   request for its host.
//! - **Paths.** `Exact` matches the whole path, case-sensitively. `Prefix`
//!   matches element-wise on `/`: `/foo` matches `/foo`, `/foo/` and
//!   `/foo/bar` but not `/foobar`, and a trailing slash on either side is
//!   ignored. `ImplementationSpecific` is treated as `Prefix` here. An `Exact`
//!   match wins over any `Prefix`; among prefixes the longest wins. When two
//!   Ingresses declare the same path and type for a host, the Ingress whose
//!   namespace/name sorts first wins (then rule and path order), and the
//!   conflict is reported.
//! - **Defaults.** A request whose host group has no matching path goes to the
//!   `defaultBackend` of the first Ingress (by namespace/name) contributing to
//!   that group that has one; otherwise, and for hosts that match no group, to
//!   the global default backend: `--ingress-default-backend`, else the
//!   `defaultBackend` of the first Ingress that has no rules. Nothing left
//!   means 404.
//! - **Backends.** A Service port is referenced by number (the Service's
//!   `port`, not the target port) or by name. A reference that does not
//!   resolve (no such Service or port, an ExternalName Service, a `resource`
//!   backend) stays in the table as an unresolved backend that answers 503,
//!   so a broken Ingress does not make other paths 404.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use fairlead_model::{
    Host, Ingress, IngressBackend, ObjectKey, PathType, PortRef, ServiceKey, ServicePort,
    ServiceType, Snapshot,
};
use tracing::warn;

/// Index of a backend in [`RouteTable::backends`].
pub type BackendId = usize;

/// How the gateway talks to a backend's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (appProtocol `kubernetes.io/h2c`,
    /// `h2c`, `http2` or `grpc`).
    H2c,
}

impl UpstreamProtocol {
    /// The protocol an `appProtocol` value asks for.
    #[must_use]
    pub fn from_app_protocol(app_protocol: Option<&str>) -> Self {
        match app_protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("kubernetes.io/h2c" | "h2c" | "http2" | "grpc") => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http1,
        }
    }
}

/// A backend a route sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// A port of a Service, resolved against the Service's spec.
    Service {
        /// The Service.
        service: ServiceKey,
        /// The Service port (name and number identify it).
        port: ServicePort,
        /// How to talk to the endpoints.
        protocol: UpstreamProtocol,
    },
    /// A reference that does not resolve; requests get `status` (503 for
    /// an Ingress, 500 for an invalid Gateway API backendRef as the spec
    /// says).
    Unresolved {
        /// What the Ingress asked for (for logs).
        wanted: String,
        /// Why it does not resolve.
        reason: String,
        /// The response status.
        status: u16,
    },
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Service { service, port, .. } => write!(f, "{service}:{}", port.port),
            BackendSpec::Unresolved { wanted, .. } => write!(f, "{wanted} (unresolved)"),
        }
    }
}

/// What a request matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The backend.
    pub backend: BackendId,
    /// The Ingress the route comes from (`namespace/name`).
    pub ingress: Arc<str>,
    /// The host group as written (`shop.example.com`, `*.example.com`, or
    /// empty for rules without a host). Bounded by the configuration, so it
    /// is safe as a metric label.
    pub host: Arc<str>,
    /// The path as written in the Ingress (empty for a default backend).
    pub path: Arc<str>,
    /// How it matched; `None` for a default backend.
    pub path_type: Option<PathType>,
    /// Gateway API filters and timeouts; `None` for a route without any
    /// (every Ingress route).
    pub filters: Option<Arc<crate::filters::RouteFilters>>,
}

/// The routes of one host group.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostRoutes {
    /// `Exact` paths.
    pub(crate) exact: HashMap<String, Route>,
    /// `Prefix` (and `ImplementationSpecific`) paths, keyed by the path with
    /// trailing slashes removed (`/` becomes the empty string).
    pub(crate) prefix: HashMap<String, Route>,
    /// The `defaultBackend` of the first contributing Ingress that has one.
    pub(crate) fallback: Option<Route>,
}

impl HostRoutes {
    pub(crate) fn lookup(&self, path: &str) -> Option<&Route> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Longest prefix first: the whole path, then each ancestor.
        let mut p = path;
        loop {
            let key = p.trim_end_matches('/');
            if let Some(route) = self.prefix.get(key) {
                return Some(route);
            }
            if key.is_empty() {
                return None;
            }
            p = &key[..key.rfind('/').unwrap_or(0)];
        }
    }
}

/// Which Ingresses this gateway serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSelection {
    /// The IngressClass name served (`--ingress-class`). Ingresses naming it
    /// are served; Ingresses naming no class are served when this class is
    /// the cluster's default (the IngressClass annotation).
    pub class: String,
    /// `--ingress-default-backend`: the global default backend, overriding the
    /// `defaultBackend` of rule-less Ingresses.
    pub default_backend: Option<DefaultBackend>,
    /// The Gateway API routes served.
    pub gateway_api: crate::gateway_api::Selection,
}

/// A Service port named on the command line as the global default backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultBackend {
    /// The Service.
    pub service: ServiceKey,
    /// Its port.
    pub port: PortRef,
}

impl std::str::FromStr for DefaultBackend {
    type Err = String;

    /// Parses `NAMESPACE/SERVICE:PORT` (PORT is a number or a port name).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected NAMESPACE/SERVICE:PORT"))?;
        let (namespace, name) = service
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected NAMESPACE/SERVICE:PORT"))?;
        if namespace.is_empty() || name.is_empty() || port.is_empty() {
            return Err(format!("{s:?}: expected NAMESPACE/SERVICE:PORT"));
        }
        let port = port
            .parse::<u16>()
            .map_or_else(|_| PortRef::Name(port.to_owned()), PortRef::Number);
        Ok(DefaultBackend {
            service: ObjectKey::new(namespace, name),
            port,
        })
    }
}

/// A set of hosts (exact and one-label wildcards), e.g. the hosts with TLS.
#[derive(Clone, Debug, Default)]
pub struct HostSet {
    exact: std::collections::HashSet<String>,
    wildcard: std::collections::HashSet<String>,
}

impl HostSet {
    /// Adds a host.
    pub fn insert(&mut self, host: &Host) {
        match host {
            Host::Exact(h) => self.exact.insert(h.clone()),
            Host::Wildcard(s) => self.wildcard.insert(s.clone()),
        };
    }

    /// Whether a (normalised) request host is in the set.
    #[must_use]
    pub fn contains(&self, host: &str) -> bool {
        self.exact.contains(host)
            || host
                .split_once('.')
                .is_some_and(|(_, suffix)| self.wildcard.contains(suffix))
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// A conflict or a reference that does not resolve, found while compiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteProblem {
    /// The Ingress concerned.
    pub ingress: ObjectKey,
    /// What is wrong.
    pub message: String,
}

/// The compiled routes of every Ingress of one class.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    pub(crate) exact_hosts: HashMap<String, HostRoutes>,
    pub(crate) wildcard_hosts: HashMap<String, HostRoutes>,
    pub(crate) any_host: Option<HostRoutes>,
    pub(crate) default_route: Option<Route>,
    /// Every backend a route refers to, deduplicated.
    pub backends: Vec<BackendSpec>,
    /// Hosts named in the `tls` section of a served Ingress (they get the
    /// HTTP→HTTPS redirect).
    pub tls_hosts: HostSet,
    /// Conflicts and unresolved references.
    pub problems: Vec<RouteProblem>,
    /// How many routes (paths and default backends) the table holds.
    pub route_count: usize,
    /// Every Service a backend names, resolved or not: a change to one of
    /// them calls for a new table.
    pub referenced_services: std::collections::HashSet<ServiceKey>,
    /// The HTTPRoutes of the served Gateways' HTTP listeners (see
    /// [`crate::gateway_api`]).
    pub http_routes: crate::gateway_api::HttpRouteTable,
    /// The HTTPRoutes of the served Gateways' HTTPS listeners.
    pub https_routes: crate::gateway_api::HttpRouteTable,
    /// The routes of the Gateway listeners on other ports, by port (each
    /// served on its own sockets, without the Ingresses).
    pub port_routes: HashMap<u16, crate::gateway_api::HttpRouteTable>,
}

/// The host of a request, ready for [`RouteTable::route`]: the authority's
/// port and a trailing dot removed, lower-cased. IPv6 literals keep their
/// brackets.
#[must_use]
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl RouteTable {
    /// Compiles the routes of every Ingress `selection` serves.
    #[must_use]
    pub fn compile(snapshot: &Snapshot, selection: &ClassSelection) -> Self {
        let mut compiler = Compiler {
            snapshot,
            table: RouteTable::default(),
            backend_ids: HashMap::new(),
        };
        let ingresses: Vec<&Arc<Ingress>> =
            snapshot.ingresses_for_class(&selection.class).collect();
        for ingress in &ingresses {
            compiler.add_ingress(ingress);
        }
        crate::gateway_api::compile(&mut compiler, snapshot, &selection.gateway_api);
        // The global default backend.
        if let Some(default) = &selection.default_backend {
            let backend = compiler.service_backend(
                &default.service.namespace,
                &default.service.name,
                &default.port,
                None,
            );
            compiler.table.default_route = Some(Route {
                backend,
                ingress: Arc::from("--ingress-default-backend"),
                host: Arc::from(""),
                path: Arc::from(""),
                path_type: None,
                filters: None,
            });
        } else if let Some(ingress) = ingresses
            .iter()
            .find(|i| i.rules.is_empty() && i.default_backend.is_some())
        {
            compiler.table.default_route = compiler.default_route(ingress, "");
        }
        compiler.table.route_count += usize::from(compiler.table.default_route.is_some());
        compiler.table
    }

    /// The route for a request's normalised host (see [`normalize_host`]) and
    /// path (the URI path, without the query).
    #[must_use]
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let group = self
            .exact_hosts
            .get(host)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard_hosts.get(suffix))
            })
            .or(self.any_host.as_ref());
        match group {
            Some(group) => group
                .lookup(path)
                .or(group.fallback.as_ref())
                .or(self.default_route.as_ref()),
            None => self.default_route.as_ref(),
        }
    }

    /// The backend of a route.
    #[must_use]
    pub fn backend(&self, id: BackendId) -> &BackendSpec {
        &self.backends[id]
    }
}

pub(crate) struct Compiler<'a> {
    snapshot: &'a Snapshot,
    pub(crate) table: RouteTable,
    backend_ids: HashMap<BackendSpec, BackendId>,
}

impl std::hash::Hash for BackendSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            BackendSpec::Service {
                service,
                port,
                protocol,
            } => {
                service.hash(state);
                port.name.hash(state);
                port.port.hash(state);
                protocol.hash(state);
            }
            BackendSpec::Unresolved {
                wanted,
                reason,
                status,
            } => {
                wanted.hash(state);
                reason.hash(state);
                status.hash(state);
            }
        }
    }
}

impl Compiler<'_> {
    fn intern(&mut self, spec: BackendSpec) -> BackendId {
        if let Some(id) = self.backend_ids.get(&spec) {
            return *id;
        }
        let id = self.table.backends.len();
        self.table.backends.push(spec.clone());
        self.backend_ids.insert(spec, id);
        id
    }

    pub(crate) fn unresolved(
        &mut self,
        ingress: Option<&ObjectKey>,
        wanted: String,
        reason: String,
    ) -> usize {
        if let Some(ingress) = ingress {
            self.table.problems.push(RouteProblem {
                ingress: ingress.clone(),
                message: format!("backend {wanted}: {reason}; requests get 503"),
            });
        }
        self.intern(BackendSpec::Unresolved {
            wanted,
            reason,
            status: 503,
        })
    }

    /// An invalid Gateway API backend reference of `route`: reported, and
    /// answered with 500.
    pub(crate) fn invalid_reference(
        &mut self,
        route: &ObjectKey,
        wanted: String,
        reason: String,
    ) -> usize {
        self.table.problems.push(RouteProblem {
            ingress: route.clone(),
            message: format!("backend {wanted}: {reason}; requests get 500"),
        });
        self.intern(BackendSpec::Unresolved {
            wanted,
            reason,
            status: 500,
        })
    }

    /// The same backend spoken to with HTTP/2 in clear text (gRPC).
    pub(crate) fn h2c(&mut self, id: BackendId) -> BackendId {
        match self.table.backends[id].clone() {
            BackendSpec::Service {
                service,
                port,
                protocol: UpstreamProtocol::Http1,
            } => self.intern(BackendSpec::Service {
                service,
                port,
                protocol: UpstreamProtocol::H2c,
            }),
            _ => id,
        }
    }

    pub(crate) fn service_backend(
        &mut self,
        namespace: &str,
        name: &str,
        port: &PortRef,
        ingress: Option<&ObjectKey>,
    ) -> BackendId {
        let wanted = format!("{namespace}/{name}:{port}");
        self.table
            .referenced_services
            .insert(ObjectKey::new(namespace, name));
        let Some(service) = self.snapshot.service(namespace, name) else {
            return self.unresolved(ingress, wanted, "no such Service".to_owned());
        };
        if service.service_type == ServiceType::ExternalName {
            return self.unresolved(
                ingress,
                wanted,
                "ExternalName Services are not proxied".to_owned(),
            );
        }
        let found = service.ports.iter().find(|p| port.selects(p));
        let Some(found) = found else {
            return self.unresolved(
                ingress,
                wanted,
                "the Service has no such TCP port".to_owned(),
            );
        };
        // The model resolves appProtocol (the Service port's, else the EndpointSlice's).
        self.intern(BackendSpec::Service {
            service: service.key.clone(),
            port: found.clone(),
            protocol: UpstreamProtocol::from_app_protocol(service.app_protocol(found)),
        })
    }

    fn ingress_backend(&mut self, ingress: &Ingress, backend: &IngressBackend) -> BackendId {
        match backend {
            IngressBackend::Service { name, port } => {
                self.service_backend(&ingress.key.namespace, name, port, Some(&ingress.key))
            }
            IngressBackend::Resource { .. } => self.unresolved(
                Some(&ingress.key),
                backend.to_string(),
                "resource backends are not supported".to_owned(),
            ),
        }
    }

    fn default_route(&mut self, ingress: &Ingress, host: &str) -> Option<Route> {
        let backend = ingress.default_backend.as_ref()?;
        let backend = self.ingress_backend(ingress, backend);
        Some(Route {
            backend,
            ingress: Arc::from(ingress.key.to_string()),
            host: Arc::from(host),
            path: Arc::from(""),
            path_type: None,
            filters: None,
        })
    }

    fn add_ingress(&mut self, ingress: &Ingress) {
        let ingress_name: Arc<str> = Arc::from(ingress.key.to_string());
        for tls in &ingress.tls {
            for host in &tls.hosts {
                self.table.tls_hosts.insert(host);
            }
        }
        for rule in &ingress.rules {
            let host_label: Arc<str> = Arc::from(
                rule.host
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            );
            let mut routes = Vec::with_capacity(rule.paths.len());
            for path in &rule.paths {
                let backend = self.ingress_backend(ingress, &path.backend);
                routes.push((
                    path,
                    Route {
                        backend,
                        ingress: ingress_name.clone(),
                        host: host_label.clone(),
                        path: Arc::from(path.path.as_str()),
                        path_type: Some(path.path_type),
                        filters: None,
                    },
                ));
            }
            let fallback = if ingress.default_backend.is_some() {
                self.default_route(ingress, &host_label)
            } else {
                None
            };
            let group = match &rule.host {
                Some(Host::Exact(h)) => self.table.exact_hosts.entry(h.clone()).or_default(),
                Some(Host::Wildcard(s)) => self.table.wildcard_hosts.entry(s.clone()).or_default(),
                None => self.table.any_host.get_or_insert_with(HostRoutes::default),
            };
            if group.fallback.is_none() {
                group.fallback = fallback;
            }
            let mut conflicts = Vec::new();
            for (path, route) in routes {
                let (map, key) = match path.path_type {
                    PathType::Exact => (&mut group.exact, path.path.clone()),
                    PathType::Prefix | PathType::ImplementationSpecific => (
                        &mut group.prefix,
                        path.path.trim_end_matches('/').to_owned(),
                    ),
                };
                match map.entry(key) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(route);
                        self.table.route_count += 1;
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        if o.get().backend != route.backend || o.get().ingress != route.ingress {
                            conflicts.push(format!(
                                "host {:?} path {} {}: already routed by Ingress {}; this one is ignored",
                                &*host_label,
                                path.path_type,
                                path.path,
                                o.get().ingress
                            ));
                        }
                    }
                }
            }
            for message in conflicts {
                warn!(ingress = %ingress.key, %message, "route conflict");
                self.table.problems.push(RouteProblem {
                    ingress: ingress.key.clone(),
                    message,
                });
            }
        }
    }
}

/// Resolves `.` and `..` segments of a request path (RFC 3986 §5.2.4), so
/// that `/public/../admin` is routed (and forwarded) as `/admin`. Returns
/// `None` when the path has no such segments (the common case, no copy).
#[must_use]
pub fn remove_dot_segments(path: &str) -> Option<String> {
    let has_dots = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !has_dots {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for segment in &out {
        result.push('/');
        result.push_str(segment);
    }
    if result.is_empty() {
        result.push('/');
    }
    Some(result)
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
