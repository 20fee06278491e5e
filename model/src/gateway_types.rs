//! Model types of the Gateway API: GatewayClasses, Gateways and HTTPRoutes,
//! validated and defaulted by [`crate::translate`]. Which route attaches to
//! which listener is decided where the routes are compiled (the ingress
//! router), from these.

use crate::types::ObjectKey;

/// The controller name fairlead answers to by default
/// (`GatewayClass.spec.controllerName`).
pub const DEFAULT_GATEWAY_CONTROLLER: &str = "fairlead.dev/gateway-controller";

/// A GatewayClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayClass {
    /// Its name.
    pub name: String,
    /// `spec.controllerName`.
    pub controller: String,
}

/// A hostname of a listener or a route. Unlike an Ingress wildcard, a
/// Gateway API wildcard matches one or more labels in front of its suffix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hostname {
    /// Exactly this name (lower-cased).
    Exact(String),
    /// `*.suffix` (lower-cased, without the leading `*.`).
    Wildcard(String),
}

impl Hostname {
    /// Whether a (lower-cased) request host matches.
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Hostname::Exact(h) => h == host,
            Hostname::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
        }
    }

    /// The hostnames both `self` (a listener's) and `other` (a route's)
    /// match: the more specific of the two when one includes the other.
    #[must_use]
    pub fn intersect(&self, other: &Hostname) -> Option<Hostname> {
        match (self, other) {
            (Hostname::Exact(a), Hostname::Exact(b)) => (a == b).then(|| self.clone()),
            (Hostname::Wildcard(_), Hostname::Exact(h)) => self.matches(h).then(|| other.clone()),
            (Hostname::Exact(h), Hostname::Wildcard(_)) => other.matches(h).then(|| self.clone()),
            (Hostname::Wildcard(a), Hostname::Wildcard(b)) => {
                if a == b || Hostname::Wildcard(b.clone()).matches(a) {
                    Some(self.clone())
                } else if self.matches(b) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl std::fmt::Display for Hostname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hostname::Exact(h) => f.write_str(h),
            Hostname::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A listener's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// `HTTP`
    Http,
    /// `HTTPS` (TLS terminated by the gateway).
    Https,
    /// Anything else (`TLS`, `TCP`, `UDP`, an implementation-specific name):
    /// not served, reported.
    Other(String),
}

/// Which namespaces' routes a listener accepts (`allowedRoutes.namespaces.from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedNamespaces {
    /// The Gateway's own namespace (the default).
    Same,
    /// Every namespace.
    All,
    /// Namespaces whose labels match a selector.
    Selector(NamespaceSelector),
}

/// A label selector on Namespaces (`allowedRoutes.namespaces.selector`):
/// every `matchLabels` pair and every `matchExpressions` entry must hold. An
/// empty selector matches every namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSelector {
    /// `matchLabels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `matchExpressions`.
    pub expressions: Vec<LabelExpression>,
}

/// A `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelExpression {
    /// `In`: the label is one of the values.
    In(String, Vec<String>),
    /// `NotIn`: the label is absent or none of the values.
    NotIn(String, Vec<String>),
    /// `Exists`.
    Exists(String),
    /// `DoesNotExist`.
    DoesNotExist(String),
}

impl NamespaceSelector {
    /// Whether a namespace with `labels` matches.
    #[must_use]
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                LabelExpression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                LabelExpression::NotIn(k, values) => {
                    labels.get(k).is_none_or(|v| !values.contains(v))
                }
                LabelExpression::Exists(k) => labels.contains_key(k),
                LabelExpression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// A listener of a Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `name`, unique in its Gateway (what `sectionName` names).
    pub name: String,
    /// `hostname`; `None` matches every host.
    pub hostname: Option<Hostname>,
    /// `port`.
    pub port: u16,
    /// `protocol`.
    pub protocol: ListenerProtocol,
    /// `allowedRoutes.namespaces.from`.
    pub allowed_namespaces: AllowedNamespaces,
    /// `allowedRoutes.kinds[].kind` (group `gateway.networking.k8s.io`);
    /// empty means the protocol's default (`HTTPRoute` for HTTP and HTTPS).
    pub allowed_kinds: Vec<String>,
    /// `tls` (HTTPS listeners).
    pub tls: Option<ListenerTls>,
}

/// `listeners[].tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// `mode`: `Terminate` (the default) is served; `Passthrough` is not.
    pub mode: String,
    /// `certificateRefs`, in order.
    pub certificates: Vec<CertificateRef>,
}

/// A `certificateRefs[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRef {
    /// `group` (`""`: core).
    pub group: String,
    /// `kind` (`Secret` by default).
    pub kind: String,
    /// The referent (namespace defaults to the Gateway's).
    pub secret: ObjectKey,
}

impl CertificateRef {
    /// Whether this names a Secret (the only kind fairlead reads).
    #[must_use]
    pub fn is_secret(&self) -> bool {
        self.group.is_empty() && self.kind == "Secret"
    }
}

impl Listener {
    /// Whether routes of `kind` from `route_namespace` (whose labels are
    /// `route_namespace_labels`) may attach to this listener of a Gateway in
    /// `gateway_namespace`.
    #[must_use]
    pub fn allows(
        &self,
        kind: &str,
        (route_namespace, route_namespace_labels): (
            &str,
            Option<&std::collections::BTreeMap<String, String>>,
        ),
        gateway_namespace: &str,
    ) -> bool {
        let kind_ok = if self.allowed_kinds.is_empty() {
            matches!(
                self.protocol,
                ListenerProtocol::Http | ListenerProtocol::Https
            ) && (kind == "HTTPRoute" || kind == "GRPCRoute")
        } else {
            self.allowed_kinds.iter().any(|k| k == kind)
        };
        let namespace_ok = match &self.allowed_namespaces {
            AllowedNamespaces::Same => route_namespace == gateway_namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(selector) => selector
                .matches(route_namespace_labels.unwrap_or(&std::collections::BTreeMap::new())),
        };
        kind_ok && namespace_ok
    }
}

/// A Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.gatewayClassName`.
    pub class: String,
    /// `spec.listeners`, in manifest order.
    pub listeners: Vec<Listener>,
    /// `spec.addresses` of type `IPAddress` (the default type): the
    /// listeners are served on these addresses; on the node's when empty.
    pub addresses: Vec<std::net::IpAddr>,
    /// `spec.addresses` fairlead cannot use (another type, or not an IP
    /// address), as written: the Gateway is not accepted
    /// (`UnsupportedAddress`).
    pub unsupported_addresses: Vec<String>,
}

/// A route's `parentRefs[]` entry naming a Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// The Gateway (namespace defaults to the route's).
    pub gateway: ObjectKey,
    /// `sectionName`: one listener by name.
    pub section_name: Option<String>,
    /// `port`: listeners on this port.
    pub port: Option<u16>,
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(String),
    /// Element-wise prefix on `/` (trailing slash of the value ignored).
    Prefix(String),
}

impl PathMatch {
    /// The path value as written.
    #[must_use]
    pub fn value(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    /// Whether a request path matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

/// A header a request must carry (`Exact` match; the name is compared
/// case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Header name, lower-cased.
    pub name: String,
    /// The exact value.
    pub value: String,
}

/// A query parameter a request must carry (`Exact` match; the name is
/// compared case-sensitively, the first occurrence in the query counts).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// The exact value.
    pub value: String,
}

impl QueryMatch {
    /// Whether `query` (the part after `?`, undecoded) carries the
    /// parameter with this value.
    #[must_use]
    pub fn matches(&self, query: Option<&str>) -> bool {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| *name == self.name)
            .is_some_and(|(_, value)| value == self.value)
    }
}

/// One `matches[]` entry: every condition must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    /// Path condition (defaults to prefix `/`).
    pub path: PathMatch,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Method condition (`GET`, ...).
    pub method: Option<String>,
    /// Query parameter conditions.
    pub query: Vec<QueryMatch>,
}

/// Where a rule sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteBackendTarget {
    /// A port of a Service.
    Service {
        /// The Service.
        service: ObjectKey,
        /// The Service port.
        port: u16,
    },
    /// A reference fairlead cannot follow; requests it would get are
    /// answered with an error status.
    Invalid {
        /// What the route asked for.
        wanted: String,
        /// Why it does not resolve (with the spec's reason first).
        reason: String,
    },
}

/// A `backendRefs[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteBackend {
    /// Where.
    pub target: RouteBackendTarget,
    /// Relative weight (0 takes no traffic).
    pub weight: u32,
}

/// A rule of an HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRouteRule {
    /// `matches` (one prefix `/` match when empty).
    pub matches: Vec<RouteMatch>,
    /// `backendRefs`.
    pub backends: Vec<RouteBackend>,
}

/// An HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.creationTimestamp` as seconds since the epoch (the spec's
    /// tie-break: the oldest route wins); 0 when unset.
    pub created: i64,
    /// `spec.parentRefs` naming Gateways.
    pub parents: Vec<ParentRef>,
    /// `spec.hostnames`; empty means every hostname of the listener.
    pub hostnames: Vec<Hostname>,
    /// `spec.rules`.
    pub rules: Vec<HttpRouteRule>,
}

/// Renders the Gateway API objects of a snapshot for [`crate::dump`]
/// (nothing when there are none).
pub(crate) fn dump(out: &mut String, s: &crate::Snapshot) -> std::fmt::Result {
    use std::fmt::Write as _;
    if !s.gateway_classes.is_empty() {
        writeln!(out, "gateway classes:")?;
        for class in s.gateway_classes.values() {
            writeln!(out, "  {} controller={}", class.name, class.controller)?;
        }
    }
    for gateway in s.gateways.values() {
        writeln!(out, "gateway {} class={}", gateway.key, gateway.class)?;
        for l in &gateway.listeners {
            let protocol = match &l.protocol {
                ListenerProtocol::Http => "HTTP",
                ListenerProtocol::Https => "HTTPS",
                ListenerProtocol::Other(p) => p,
            };
            writeln!(
                out,
                "  listener {} {protocol}:{} host={} routes from {:?}{}",
                l.name,
                l.port,
                l.hostname
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), ToString::to_string),
                l.allowed_namespaces,
                if l.allowed_kinds.is_empty() {
                    String::new()
                } else {
                    format!(" kinds [{}]", l.allowed_kinds.join(", "))
                }
            )?;
        }
    }
    for route in s.http_routes.values() {
        let hosts: Vec<String> = route.hostnames.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "httproute {} hostnames=[{}]",
            route.key,
            hosts.join(", ")
        )?;
        dump_parents(out, &route.parents)?;
        for (i, rule) in route.rules.iter().enumerate() {
            for m in &rule.matches {
                let (kind, value) = match &m.path {
                    PathMatch::Exact(p) => ("Exact", p),
                    PathMatch::Prefix(p) => ("PathPrefix", p),
                };
                write!(out, "  rule {i} match {kind} {value}")?;
                for h in &m.headers {
                    write!(out, " header {}={:?}", h.name, h.value)?;
                }
                if let Some(method) = &m.method {
                    write!(out, " method {method}")?;
                }
                for q in &m.query {
                    write!(out, " query {}={:?}", q.name, q.value)?;
                }
                writeln!(out)?;
            }
            dump_backends(
                out,
                s,
                ("HTTPRoute", &route.key.namespace),
                i,
                &rule.backends,
            )?;
        }
    }
    dump_grpc(out, s)
}

fn dump_parents(out: &mut String, parents: &[ParentRef]) -> std::fmt::Result {
    use std::fmt::Write as _;
    for p in parents {
        write!(out, "  parent gateway {}", p.gateway)?;
        if let Some(section) = &p.section_name {
            write!(out, " section={section}")?;
        }
        if let Some(port) = p.port {
            write!(out, " port={port}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn dump_grpc(out: &mut String, s: &crate::Snapshot) -> std::fmt::Result {
    use std::fmt::Write as _;
    for route in s.grpc_routes.values() {
        let hosts: Vec<String> = route.hostnames.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "grpcroute {} hostnames=[{}]",
            route.key,
            hosts.join(", ")
        )?;
        dump_parents(out, &route.parents)?;
        for (i, rule) in route.rules.iter().enumerate() {
            for m in &rule.matches {
                write!(out, "  rule {i} match")?;
                match &m.method {
                    Some(method) => write!(
                        out,
                        " method /{}/{}",
                        method.service.as_deref().unwrap_or("*"),
                        method.method.as_deref().unwrap_or("*")
                    )?,
                    None => write!(out, " any method")?,
                }
                for h in &m.headers {
                    write!(out, " header {}={:?}", h.name, h.value)?;
                }
                writeln!(out)?;
            }
            dump_backends(
                out,
                s,
                ("GRPCRoute", &route.key.namespace),
                i,
                &rule.backends,
            )?;
        }
    }
    for grant in s.reference_grants.values() {
        writeln!(out, "referencegrant {}", grant.key)?;
        for f in &grant.from {
            writeln!(out, "  from {} {:?} in {}", f.kind, f.group, f.namespace)?;
        }
        for t in &grant.to {
            writeln!(
                out,
                "  to {} {:?} {}",
                t.kind,
                t.group,
                t.name.as_deref().unwrap_or("*")
            )?;
        }
    }
    Ok(())
}

fn dump_backends(
    out: &mut String,
    s: &crate::Snapshot,
    (route_kind, route_namespace): (&str, &str),
    i: usize,
    backends: &[RouteBackend],
) -> std::fmt::Result {
    use std::fmt::Write as _;
    for b in backends {
        match &b.target {
            RouteBackendTarget::Service { service, port } => {
                let permitted = s.reference_permitted(&CrossReference {
                    from_group: crate::gateway_api::GROUP,
                    from_kind: route_kind,
                    from_namespace: route_namespace,
                    to_group: "",
                    to_kind: "Service",
                    to_namespace: &service.namespace,
                    to_name: &service.name,
                });
                writeln!(
                    out,
                    "  rule {i} -> service {service}:{port} weight {}{}",
                    b.weight,
                    if permitted {
                        ""
                    } else {
                        " INVALID: RefNotPermitted: no ReferenceGrant allows this cross-namespace reference"
                    }
                )?;
            }
            RouteBackendTarget::Invalid { wanted, reason } => {
                writeln!(
                    out,
                    "  rule {i} -> {wanted} weight {} INVALID: {reason}",
                    b.weight
                )?;
            }
        }
    }
    Ok(())
}

/// How a GRPCRoute matches the gRPC method (`/service/method`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrpcMethodMatch {
    /// The fully qualified service (`pkg.Service`); `None` matches any.
    pub service: Option<String>,
    /// The method; `None` matches any.
    pub method: Option<String>,
}

impl GrpcMethodMatch {
    /// Whether a request path `/service/method` matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let Some((service, method)) = path.strip_prefix('/').and_then(|rest| rest.split_once('/'))
        else {
            return false;
        };
        self.service.as_deref().is_none_or(|s| s == service)
            && self.method.as_deref().is_none_or(|m| m == method)
    }
}

/// One `matches[]` entry of a GRPCRoute rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrpcRouteMatch {
    /// Method condition (any method when `None`).
    pub method: Option<GrpcMethodMatch>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

/// A rule of a GRPCRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRouteRule {
    /// `matches` (one match of everything when empty).
    pub matches: Vec<GrpcRouteMatch>,
    /// `backendRefs`.
    pub backends: Vec<RouteBackend>,
}

/// A GRPCRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRoute {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.creationTimestamp` as seconds since the epoch; 0 when unset.
    pub created: i64,
    /// `spec.parentRefs` naming Gateways.
    pub parents: Vec<ParentRef>,
    /// `spec.hostnames`; empty means every hostname of the listener.
    pub hostnames: Vec<Hostname>,
    /// `spec.rules`.
    pub rules: Vec<GrpcRouteRule>,
}

/// A `ReferenceGrant.spec.from[]` entry: objects of this kind in this
/// namespace may refer to the grant's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantFrom {
    /// API group (`gateway.networking.k8s.io` for routes and Gateways).
    pub group: String,
    /// Kind (`HTTPRoute`, `GRPCRoute`, `Gateway`).
    pub kind: String,
    /// The namespace the references come from.
    pub namespace: String,
}

/// A `ReferenceGrant.spec.to[]` entry: what may be referred to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantTo {
    /// API group (`""` for Services and Secrets).
    pub group: String,
    /// Kind (`Service`, `Secret`).
    pub kind: String,
    /// One object by name; every object of the kind when `None`.
    pub name: Option<String>,
}

/// A ReferenceGrant: cross-namespace references into its namespace that the
/// owners of that namespace allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceGrant {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.from`.
    pub from: Vec<GrantFrom>,
    /// `spec.to`.
    pub to: Vec<GrantTo>,
}

/// A reference from an object of one namespace to an object of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossReference<'a> {
    /// The referring object's group, kind and namespace.
    pub from_group: &'a str,
    /// The referring object's kind.
    pub from_kind: &'a str,
    /// The referring object's namespace.
    pub from_namespace: &'a str,
    /// The referent's group (`""` for core).
    pub to_group: &'a str,
    /// The referent's kind.
    pub to_kind: &'a str,
    /// The referent's namespace.
    pub to_namespace: &'a str,
    /// The referent's name.
    pub to_name: &'a str,
}

impl crate::Snapshot {
    /// Whether a ReferenceGrant in the referent's namespace allows
    /// `reference` (same-namespace references need none).
    #[must_use]
    pub fn reference_permitted(&self, reference: &CrossReference<'_>) -> bool {
        reference.from_namespace == reference.to_namespace
            || self
                .reference_grants
                .range(
                    ObjectKey::new(reference.to_namespace, String::new())
                        ..ObjectKey::new(format!("{}\0", reference.to_namespace), String::new()),
                )
                .any(|(_, grant)| grant.permits(reference))
    }

    /// Whether the listener `listener` of `gateway` may use the Secret
    /// `secret` (its own namespace, or granted).
    #[must_use]
    pub fn certificate_permitted(&self, gateway: &ObjectKey, certificate: &CertificateRef) -> bool {
        self.reference_permitted(&CrossReference {
            from_group: crate::gateway_api::GROUP,
            from_kind: "Gateway",
            from_namespace: &gateway.namespace,
            to_group: &certificate.group,
            to_kind: &certificate.kind,
            to_namespace: &certificate.secret.namespace,
            to_name: &certificate.secret.name,
        })
    }
}

impl ReferenceGrant {
    /// Whether this grant allows `reference`.
    #[must_use]
    pub fn permits(&self, reference: &CrossReference<'_>) -> bool {
        self.key.namespace == reference.to_namespace
            && self.from.iter().any(|f| {
                f.group == reference.from_group
                    && f.kind == reference.from_kind
                    && f.namespace == reference.from_namespace
            })
            && self.to.iter().any(|t| {
                t.group == reference.to_group
                    && t.kind == reference.to_kind
                    && t.name.as_deref().is_none_or(|n| n == reference.to_name)
            })
    }
}
