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

/// Longest regular expression accepted (the spec's limit on a path value).
pub const MAX_PATTERN_LEN: usize = 1024;

/// Largest compiled program of a regular expression (bytes): a pattern over
/// it is refused, so a route cannot make matching slow or big.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A `RegularExpression` value of a route match: the `regex` crate's syntax
/// (RE2's: linear-time matching, no look-around or back-references),
/// matched against the whole value (anchored, as Envoy's `safe_regex`).
/// Compiled once, when the route is translated; compared by its text.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: std::sync::Arc<str>,
    regex: std::sync::Arc<regex::bytes::Regex>,
}

impl Pattern {
    /// Compiles `text`, or says why it is not a usable pattern.
    ///
    /// # Errors
    /// The syntax error, or the limit the pattern exceeds.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "the regular expression is longer than {MAX_PATTERN_LEN} bytes"
            ));
        }
        let regex = regex::bytes::RegexBuilder::new(&format!("^(?:{text})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(4 * REGEX_SIZE_LIMIT)
            .nest_limit(64)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => {
                    format!("the regular expression compiles to more than {limit} bytes")
                }
                // The parser's message spans lines (the pattern, a caret,
                // the error): keep its last line.
                other => {
                    let text_of = other.to_string();
                    let last = text_of.lines().last().unwrap_or_default().trim();
                    format!(
                        "invalid regular expression {text:?}: {}",
                        last.strip_prefix("error: ").unwrap_or(last)
                    )
                }
            })?;
        Ok(Pattern {
            text: std::sync::Arc::from(text),
            regex: std::sync::Arc::new(regex),
        })
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `value` matches.
    #[must_use]
    pub fn is_match(&self, value: &[u8]) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(String),
    /// Element-wise prefix on `/` (trailing slash of the value ignored).
    Prefix(String),
    /// A regular expression the whole path matches.
    Regex(Pattern),
}

impl PathMatch {
    /// The path value as written.
    #[must_use]
    pub fn value(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
            PathMatch::Regex(p) => p.as_str(),
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
            PathMatch::Regex(p) => p.is_match(path.as_bytes()),
        }
    }

    /// The spec's name of the match type.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "Exact",
            PathMatch::Prefix(_) => "PathPrefix",
            PathMatch::Regex(_) => "RegularExpression",
        }
    }
}

/// How a header or query parameter value (or a gRPC service or method
/// name) matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Exactly this value.
    Exact(String),
    /// A regular expression the whole value matches.
    Regex(Pattern),
}

impl StringMatch {
    /// Whether `value` matches.
    #[must_use]
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(v) => v.as_bytes() == value,
            StringMatch::Regex(p) => p.is_match(value),
        }
    }

    /// Whether this is a regular expression.
    #[must_use]
    pub fn is_regex(&self) -> bool {
        matches!(self, StringMatch::Regex(_))
    }
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StringMatch::Exact(v) => write!(f, "{v:?}"),
            StringMatch::Regex(p) => write!(f, "~{:?}", p.as_str()),
        }
    }
}

/// A header a request must carry (the name is compared
/// case-insensitively; any of the header's values may match).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Header name, lower-cased.
    pub name: String,
    /// The value.
    pub value: StringMatch,
}

/// A query parameter a request must carry (the name is compared
/// case-sensitively, the first occurrence in the query counts).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// The value (undecoded).
    pub value: StringMatch,
}

impl QueryMatch {
    /// Whether `query` (the part after `?`, undecoded) carries the
    /// parameter with a matching value.
    #[must_use]
    pub fn matches(&self, query: Option<&str>) -> bool {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| *name == self.name)
            .is_some_and(|(_, value)| self.value.matches(value.as_bytes()))
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
    /// `filters` applied to requests sent to this backend only, after the
    /// rule's (header modifiers).
    pub filters: Vec<RouteFilter>,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: names lower-cased and
/// checked, values checked (visible ASCII, tabs and spaces); applied as
/// remove, then set, then add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderModifier {
    /// Replace the header's values with this one (or add it).
    pub set: Vec<(String, String)>,
    /// Append a value.
    pub add: Vec<(String, String)>,
    /// Remove the header.
    pub remove: Vec<String>,
}

/// The `path` of a redirect or rewrite.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathModifier {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The prefix the rule matched is replaced with this (the rule has one
    /// `PathPrefix` match).
    ReplacePrefixMatch(String),
}

/// `RequestRedirect`: the gateway answers with a redirect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Redirect {
    /// `http` or `https`; the request's when `None`.
    pub scheme: Option<String>,
    /// The request's host when `None`.
    pub hostname: Option<String>,
    /// The port; when `None`, the scheme's well-known port if a scheme is
    /// given, else the listener's port.
    pub port: Option<u16>,
    /// The request's path when `None`.
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status: u16,
}

/// `URLRewrite`: the request sent upstream is changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    /// The `Host` (or `:authority`) sent upstream.
    pub hostname: Option<String>,
    /// The path sent upstream (the query is kept).
    pub path: Option<PathModifier>,
}

/// A filter of a route rule (or of one backendRef).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteFilter {
    /// `RequestHeaderModifier`.
    RequestHeaders(HeaderModifier),
    /// `ResponseHeaderModifier`.
    ResponseHeaders(HeaderModifier),
    /// `RequestRedirect`.
    Redirect(Redirect),
    /// `URLRewrite`.
    Rewrite(Rewrite),
    /// `RequestMirror`: a copy of each request goes to this backend, its
    /// answer ignored.
    Mirror(RouteBackendTarget),
}

/// `rules[].timeouts` (`None`: no limit of the route's own; the gateway's
/// `--ingress-response-timeout` still applies per attempt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteTimeouts {
    /// `request`: from the request's arrival to the response headers,
    /// retries included (504 when exceeded).
    pub request: Option<std::time::Duration>,
    /// `backendRequest`: one attempt to a backend, sending to the response
    /// headers (504 when exceeded).
    pub backend_request: Option<std::time::Duration>,
}

/// A rule of an HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRouteRule {
    /// `matches` (one prefix `/` match when empty).
    pub matches: Vec<RouteMatch>,
    /// `backendRefs`.
    pub backends: Vec<RouteBackend>,
    /// `filters`, in order.
    pub filters: Vec<RouteFilter>,
    /// `timeouts`.
    pub timeouts: RouteTimeouts,
    /// Why the rule is not served (an invalid regular expression, an
    /// unsupported value): the spec's "dropped rule", reported in the
    /// route's status (`PartiallyInvalid`) while its other rules serve.
    pub invalid: Option<String>,
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
            if let Some(why) = &rule.invalid {
                writeln!(out, "  rule {i} DROPPED: {why}")?;
            }
            for m in &rule.matches {
                write!(
                    out,
                    "  rule {i} match {} {}",
                    m.path.type_name(),
                    m.path.value()
                )?;
                for h in &m.headers {
                    write!(out, " header {}={}", h.name, h.value)?;
                }
                if let Some(method) = &m.method {
                    write!(out, " method {method}")?;
                }
                for q in &m.query {
                    write!(out, " query {}={}", q.name, q.value)?;
                }
                writeln!(out)?;
            }
            dump_filters(out, i, &rule.filters)?;
            if let Some(t) = rule.timeouts.request {
                writeln!(out, "  rule {i} timeout request {t:?}")?;
            }
            if let Some(t) = rule.timeouts.backend_request {
                writeln!(out, "  rule {i} timeout backendRequest {t:?}")?;
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

fn dump_filters(out: &mut String, i: usize, filters: &[RouteFilter]) -> std::fmt::Result {
    use std::fmt::Write as _;
    for f in filters {
        write!(out, "  rule {i} filter ")?;
        match f {
            RouteFilter::RequestHeaders(m) | RouteFilter::ResponseHeaders(m) => {
                let side = if matches!(f, RouteFilter::RequestHeaders(_)) {
                    "RequestHeaderModifier"
                } else {
                    "ResponseHeaderModifier"
                };
                writeln!(
                    out,
                    "{side} set {:?} add {:?} remove {:?}",
                    m.set, m.add, m.remove
                )?;
            }
            RouteFilter::Redirect(r) => writeln!(out, "RequestRedirect {r:?}")?,
            RouteFilter::Rewrite(r) => writeln!(out, "URLRewrite {r:?}")?,
            RouteFilter::Mirror(t) => writeln!(out, "RequestMirror {t:?}")?,
        }
    }
    Ok(())
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
            if let Some(why) = &rule.invalid {
                writeln!(out, "  rule {i} DROPPED: {why}")?;
            }
            for m in &rule.matches {
                write!(out, "  rule {i} match")?;
                let part = |p: &Option<StringMatch>| match p {
                    None => "*".to_owned(),
                    Some(StringMatch::Exact(v)) => v.clone(),
                    Some(regex) => regex.to_string(),
                };
                match &m.method {
                    Some(method) => write!(
                        out,
                        " method /{}/{}",
                        part(&method.service),
                        part(&method.method)
                    )?,
                    None => write!(out, " any method")?,
                }
                for h in &m.headers {
                    write!(out, " header {}={}", h.name, h.value)?;
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
    pub service: Option<StringMatch>,
    /// The method; `None` matches any.
    pub method: Option<StringMatch>,
}

impl GrpcMethodMatch {
    /// Whether a request path `/service/method` matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let Some((service, method)) = path.strip_prefix('/').and_then(|rest| rest.split_once('/'))
        else {
            return false;
        };
        self.service
            .as_ref()
            .is_none_or(|s| s.matches(service.as_bytes()))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(method.as_bytes()))
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
    /// `filters` (header modifiers, mirrors), in order.
    pub filters: Vec<RouteFilter>,
    /// Why the rule is not served (see [`HttpRouteRule::invalid`]).
    pub invalid: Option<String>,
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
