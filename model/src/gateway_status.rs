//! The Gateway API status fairlead owes, computed from a snapshot: the
//! GatewayClasses of its controller (`Accepted`), their Gateways
//! (`Accepted`, `Programmed`, and per listener `Accepted`, `ResolvedRefs`,
//! `Programmed`, `Conflicted` and `attachedRoutes`), and every route's
//! entry for each parent Gateway of those classes (`Accepted`,
//! `ResolvedRefs`), with the spec's reasons. A pure function: the apiserver
//! source writes it back ([`crate::source::kube::gateway_status`]), `fairlead
//! check` can show it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::gateway_types::{
    CrossReference, Gateway, Hostname, Listener, ListenerProtocol, ParentRef, RouteBackend,
    RouteBackendTarget,
};
use crate::snapshot::Snapshot;
use crate::types::ObjectKey;

/// One condition (`lastTransitionTime` and `observedGeneration` are added
/// when it is written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCondition {
    /// `type`.
    pub type_: &'static str,
    /// `status`: `True` or `False`.
    pub status: bool,
    /// `reason`, one of the spec's.
    pub reason: String,
    /// `message`.
    pub message: String,
}

fn condition(type_: &'static str, ok: Result<&str, (&str, String)>) -> StatusCondition {
    match ok {
        Ok(reason) => StatusCondition {
            type_,
            status: true,
            reason: reason.to_owned(),
            message: String::new(),
        },
        Err((reason, message)) => StatusCondition {
            type_,
            status: false,
            reason: reason.to_owned(),
            message,
        },
    }
}

/// The status of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// `supportedKinds` (group `gateway.networking.k8s.io`).
    pub supported_kinds: Vec<&'static str>,
    /// Routes attached to it.
    pub attached_routes: i32,
    /// Accepted, ResolvedRefs, Programmed, Conflicted.
    pub conditions: Vec<StatusCondition>,
}

/// The status of one Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayStatus {
    /// Accepted, Programmed.
    pub conditions: Vec<StatusCondition>,
    /// One per listener, in spec order.
    pub listeners: Vec<ListenerStatus>,
}

/// A route's status for one parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteParentStatus {
    /// The parent as the route names it.
    pub parent: ParentRef,
    /// Accepted, ResolvedRefs.
    pub conditions: Vec<StatusCondition>,
}

/// Everything fairlead's controller reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayApiStatus {
    /// GatewayClasses of the controller, by name.
    pub classes: BTreeMap<String, Vec<StatusCondition>>,
    /// Gateways of those classes.
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    /// HTTPRoutes with at least one parent of those Gateways.
    pub http_routes: BTreeMap<ObjectKey, Vec<RouteParentStatus>>,
    /// GRPCRoutes likewise.
    pub grpc_routes: BTreeMap<ObjectKey, Vec<RouteParentStatus>>,
}

/// Which listeners this data plane serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// `controllerName` of the GatewayClasses served.
    pub controller: String,
    /// The port of the node's plain-HTTP listener (`--http`): HTTP
    /// listeners on it are served there, next to the Ingresses.
    pub http_port: u16,
    /// The port of the node's TLS listener (`--https`): HTTPS listeners on
    /// it are served there. Listeners on other ports get their own sockets
    /// ([`listener_sockets`]).
    pub https_port: u16,
    /// The sockets the gateway could not open, as it reports them.
    pub listen_failures: ListenFailures,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            controller: crate::DEFAULT_GATEWAY_CONTROLLER.to_owned(),
            http_port: 80,
            https_port: 443,
            listen_failures: ListenFailures::default(),
        }
    }
}

/// A listening socket the Gateway listeners need, besides the node's
/// `--http` and `--https` ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerSocket {
    /// The Gateway's `spec.addresses` entry; `None`: the node's address
    /// (that of `--http`).
    pub address: Option<std::net::IpAddr>,
    /// The listener port.
    pub port: u16,
    /// Whether it terminates TLS (HTTPS listeners).
    pub tls: bool,
}

/// The sockets the gateway failed to open (with the error), shared by the
/// gateway, which sets them after each pass of its socket reconciler, and
/// the status, which reports them (`PortUnavailable`, `AddressNotUsable`);
/// subscribers hear of each change.
#[derive(Clone, Debug)]
pub struct ListenFailures(Arc<tokio::sync::watch::Sender<BTreeMap<ListenerSocket, String>>>);

impl Default for ListenFailures {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(BTreeMap::new()).0))
    }
}

impl PartialEq for ListenFailures {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ListenFailures {}

impl ListenFailures {
    /// Replaces the failures (subscribers hear of it only if they changed).
    pub fn set(&self, failures: BTreeMap<ListenerSocket, String>) {
        self.0.send_if_modified(|current| {
            let changed = *current != failures;
            *current = failures;
            changed
        });
    }

    /// The failures now.
    #[must_use]
    pub fn get(&self) -> BTreeMap<ListenerSocket, String> {
        self.0.borrow().clone()
    }

    /// A receiver told of each change.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<BTreeMap<ListenerSocket, String>> {
        self.0.subscribe()
    }
}

/// The certificates of an HTTPS listener's `certificateRefs`, or why they do
/// not resolve: `(reason, message)`.
pub fn listener_certificates<'a>(
    snapshot: &'a Snapshot,
    gateway: &Gateway,
    listener: &Listener,
) -> Result<Vec<&'a Arc<crate::types::TlsCertificate>>, (&'static str, String)> {
    let Some(tls) = &listener.tls else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".to_owned(),
        ));
    };
    if tls.mode != "Terminate" {
        return Err((
            "UnsupportedValue",
            format!(
                "tls.mode {} is not served (HTTPS listeners terminate TLS)",
                tls.mode
            ),
        ));
    }
    if tls.certificates.is_empty() {
        return Err((
            "InvalidCertificateRef",
            "tls.certificateRefs is empty".to_owned(),
        ));
    }
    let mut certificates = Vec::with_capacity(tls.certificates.len());
    for cert in &tls.certificates {
        if !cert.is_secret() {
            return Err((
                "InvalidCertificateRef",
                format!(
                    "{} ({:?}) {} is not a Secret",
                    cert.kind, cert.group, cert.secret
                ),
            ));
        }
        if !snapshot.certificate_permitted(&gateway.key, cert) {
            return Err((
                "RefNotPermitted",
                format!(
                    "Secret {} is in another namespace and no ReferenceGrant allows it",
                    cert.secret
                ),
            ));
        }
        let Some(material) = snapshot.certificates.get(&cert.secret) else {
            return Err((
                "InvalidCertificateRef",
                format!(
                    "Secret {} does not exist or is not a valid kubernetes.io/tls Secret",
                    cert.secret
                ),
            ));
        };
        certificates.push(material);
    }
    Ok(certificates)
}

/// Whether `listener` conflicts with another listener of its Gateway
/// (`Conflicted=True` with the spec's reason): the same port with another
/// protocol (`ProtocolConflict`), or the same port, protocol and hostname
/// (`HostnameConflict`). A conflicted listener is reported, never served.
#[must_use]
pub fn listener_conflict(gateway: &Gateway, listener: &Listener) -> Option<(&'static str, String)> {
    let same_port = || {
        gateway
            .listeners
            .iter()
            .filter(|other| other.name != listener.name && other.port == listener.port)
    };
    if same_port().any(|other| other.protocol != listener.protocol) {
        return Some((
            "ProtocolConflict",
            "another listener has the same port and another protocol".to_owned(),
        ));
    }
    same_port()
        .any(|other| other.hostname == listener.hostname)
        .then(|| {
            (
                "HostnameConflict",
                "another listener has the same port and hostname".to_owned(),
            )
        })
}

/// What fairlead makes of one listener: the one answer to "is it served",
/// read by the status ([`compute`]) and by the router alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerState {
    /// `Accepted`, or why not.
    pub accepted: Result<(), (&'static str, String)>,
    /// `ResolvedRefs`, or why not.
    pub resolved: Result<(), (&'static str, String)>,
    /// `Conflicted=True` and why.
    pub conflicted: Option<(&'static str, String)>,
}

impl ListenerState {
    /// `Programmed`: accepted, resolved and not conflicted. Only such
    /// listeners are served.
    #[must_use]
    pub fn programmed(&self) -> bool {
        self.accepted.is_ok() && self.resolved.is_ok() && self.conflicted.is_none()
    }

    fn conditions(&self) -> Vec<StatusCondition> {
        vec![
            condition("Accepted", self.accepted.clone().map(|()| "Accepted")),
            condition(
                "ResolvedRefs",
                self.resolved.clone().map(|()| "ResolvedRefs"),
            ),
            condition(
                "Programmed",
                if self.programmed() {
                    Ok("Programmed")
                } else {
                    Err(("Invalid", "the listener is not served".to_owned()))
                },
            ),
            match &self.conflicted {
                Some((reason, message)) => StatusCondition {
                    type_: "Conflicted",
                    status: true,
                    reason: (*reason).to_owned(),
                    message: message.clone(),
                },
                None => StatusCondition {
                    type_: "Conflicted",
                    status: false,
                    reason: "NoConflicts".to_owned(),
                    message: String::new(),
                },
            },
        ]
    }
}

/// The state of `listener` of `gateway` as `serving` serves it.
#[must_use]
pub fn listener_state(
    snapshot: &Snapshot,
    gateway: &Gateway,
    listener: &Listener,
    serving: &Serving,
) -> ListenerState {
    listener_state_with(snapshot, gateway, listener, serving, true)
}

/// The state of `listener` from the model alone, without the outcome of
/// its sockets (which [`listener_state`] adds): what the router compiles and
/// the gateway binds, so a socket that opens later serves at once.
#[must_use]
pub fn listener_model_state(
    snapshot: &Snapshot,
    gateway: &Gateway,
    listener: &Listener,
    serving: &Serving,
) -> ListenerState {
    listener_state_with(snapshot, gateway, listener, serving, false)
}

fn listener_state_with(
    snapshot: &Snapshot,
    gateway: &Gateway,
    listener: &Listener,
    serving: &Serving,
    with_failures: bool,
) -> ListenerState {
    let (accepted, resolved) = match &listener.protocol {
        ListenerProtocol::Http if listener.port == serving.https_port => (
            Err((
                "PortUnavailable",
                format!(
                    "port {} is the node's HTTPS port: HTTP listeners cannot use it",
                    listener.port
                ),
            )),
            Ok(()),
        ),
        ListenerProtocol::Https if listener.port == serving.http_port => (
            Err((
                "PortUnavailable",
                format!(
                    "port {} is the node's HTTP port: HTTPS listeners cannot use it",
                    listener.port
                ),
            )),
            Ok(()),
        ),
        ListenerProtocol::Http | ListenerProtocol::Https => {
            let resolved = if listener.protocol == ListenerProtocol::Https {
                listener_certificates(snapshot, gateway, listener).map(|_| ())
            } else {
                Ok(())
            };
            let accepted = match port_owner(snapshot, serving, gateway, listener) {
                Some(why) => Err(("PortUnavailable", why)),
                None if with_failures => socket_failure(serving, gateway, listener),
                None => Ok(()),
            };
            (accepted, resolved)
        }
        ListenerProtocol::Other(p) => (
            Err((
                "UnsupportedProtocol",
                format!("{p} listeners are not served"),
            )),
            Ok(()),
        ),
    };
    let invalid_kinds: Vec<&String> = listener
        .allowed_kinds
        .iter()
        .filter(|k| *k != "HTTPRoute" && *k != "GRPCRoute")
        .collect();
    let resolved = match resolved {
        Ok(()) if !invalid_kinds.is_empty() => Err((
            "InvalidRouteKinds",
            format!("route kinds {invalid_kinds:?} are not supported"),
        )),
        other => other,
    };
    let accepted = match accepted {
        Ok(()) if !gateway.unsupported_addresses.is_empty() => Err((
            "UnsupportedAddress",
            format!(
                "the Gateway's addresses {:?} are not IP addresses",
                gateway.unsupported_addresses
            ),
        )),
        other => other,
    };
    ListenerState {
        accepted,
        resolved,
        conflicted: listener_conflict(gateway, listener),
    }
}

/// On a port of its own (not `--http`'s or `--https`'s), why `listener`
/// cannot have it: an HTTP and an HTTPS listener of different Gateways
/// cannot share a socket; the first listener on the port (Gateways by
/// namespace/name, listeners in order) decides its protocol.
fn port_owner(
    snapshot: &Snapshot,
    serving: &Serving,
    gateway: &Gateway,
    listener: &Listener,
) -> Option<String> {
    if listener.port == serving.http_port || listener.port == serving.https_port {
        return None;
    }
    let (owner, first) = served_gateways(snapshot, serving)
        .filter(|g| g.key != gateway.key)
        .flat_map(|g| g.listeners.iter().map(move |l| (g, l)))
        .find(|(_, l)| {
            l.port == listener.port
                && matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https)
        })?;
    (owner.key < gateway.key && first.protocol != listener.protocol).then(|| {
        format!(
            "port {} is used by listener {} of Gateway {} with another protocol",
            listener.port, first.name, owner.key
        )
    })
}

/// The sockets a listener is served on (none for the node's own ports:
/// those of `--http` and `--https`).
fn sockets_of(gateway: &Gateway, listener: &Listener, serving: &Serving) -> Vec<ListenerSocket> {
    if listener.port == serving.http_port || listener.port == serving.https_port {
        return Vec::new();
    }
    let tls = listener.protocol == ListenerProtocol::Https;
    if gateway.addresses.is_empty() {
        vec![ListenerSocket {
            address: None,
            port: listener.port,
            tls,
        }]
    } else {
        gateway
            .addresses
            .iter()
            .map(|a| ListenerSocket {
                address: Some(*a),
                port: listener.port,
                tls,
            })
            .collect()
    }
}

fn socket_failure(
    serving: &Serving,
    gateway: &Gateway,
    listener: &Listener,
) -> Result<(), (&'static str, String)> {
    let failures = serving.listen_failures.0.borrow();
    if failures.is_empty() {
        return Ok(());
    }
    for socket in sockets_of(gateway, listener, serving) {
        if let Some(error) = failures.get(&socket) {
            return Err((
                "PortUnavailable",
                format!(
                    "cannot listen on {}:{}: {error}",
                    socket
                        .address
                        .map_or_else(|| "the node's address".to_owned(), |a| a.to_string()),
                    socket.port
                ),
            ));
        }
    }
    Ok(())
}

/// The listening sockets the served listeners need besides the node's
/// `--http` and `--https` (each accepted, resolved, not conflicted listener
/// on another port: on the Gateway's addresses, or the node's). What the
/// gateway's socket reconciler binds; a socket it cannot open is reported
/// in the status through [`Serving::listen_failures`] (and kept wanted,
/// so it is tried again).
#[must_use]
pub fn listener_sockets(
    snapshot: &Snapshot,
    serving: &Serving,
) -> std::collections::BTreeSet<ListenerSocket> {
    let mut sockets = std::collections::BTreeSet::new();
    for gateway in served_gateways(snapshot, serving) {
        for listener in &gateway.listeners {
            if listener_state_with(snapshot, gateway, listener, serving, false).programmed() {
                sockets.extend(sockets_of(gateway, listener, serving));
            }
        }
    }
    sockets
}

/// The Gateways `serving` serves: those whose GatewayClass names its
/// controller.
pub fn served_gateways<'a>(
    snapshot: &'a Snapshot,
    serving: &Serving,
) -> impl Iterator<Item = &'a Arc<Gateway>> {
    let controller = serving.controller.clone();
    snapshot.gateways.values().filter(move |g| {
        snapshot
            .gateway_classes
            .get(&g.class)
            .is_some_and(|c| c.controller == controller)
    })
}

/// The hostnames a route serves on a listener: the intersection of the
/// listener's hostname with the route's (`None`: every host). Empty when
/// they have none in common.
#[must_use]
pub fn intersect_hostnames(
    listener: Option<&Hostname>,
    route: &[Hostname],
) -> Vec<Option<Hostname>> {
    match (listener, route.is_empty()) {
        (None, true) => vec![None],
        (None, false) => route.iter().cloned().map(Some).collect(),
        (Some(l), true) => vec![Some(l.clone())],
        (Some(l), false) => route
            .iter()
            .filter_map(|r| l.intersect(r))
            .map(Some)
            .collect(),
    }
}

/// A listener a route attaches to.
#[derive(Clone, Debug)]
pub struct Attachment<'g> {
    /// The listener.
    pub listener: &'g Listener,
    /// The hostnames the route serves on it (see [`intersect_hostnames`];
    /// never empty).
    pub hostnames: Vec<Option<Hostname>>,
    /// Whether the listener is served (`Programmed`, see
    /// [`ListenerState::programmed`]): routes attached to a listener that is
    /// not (conflicted, refused, unresolved) count in its `attachedRoutes`
    /// but take no traffic.
    pub served: bool,
}

/// The one attachment rule, read by the status and by the router: which
/// listeners of `gateway` a route's `parent` entry attaches to (its
/// `sectionName` and `port`, the listener's `allowedRoutes` namespaces and
/// kinds, and the intersection of hostnames), or why none (`(reason,
/// message)`).
pub fn attach<'g>(
    snapshot: &Snapshot,
    serving: &Serving,
    gateway: &'g Gateway,
    parent: &ParentRef,
    (route_kind, route): (&str, &ObjectKey),
    hostnames: &[Hostname],
) -> Result<Vec<Attachment<'g>>, (&'static str, String)> {
    let named: Vec<&Listener> = gateway
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if named.is_empty() {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {} has no listener{}{}",
                gateway.key,
                parent
                    .section_name
                    .as_ref()
                    .map(|s| format!(" named {s}"))
                    .unwrap_or_default(),
                parent
                    .port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
            ),
        ));
    }
    let allowed: Vec<&Listener> = named
        .into_iter()
        .filter(|l| {
            let labels = snapshot.namespace_labels.get(&route.namespace);
            l.allows(
                route_kind,
                (&route.namespace, labels.map(AsRef::as_ref)),
                &gateway.key.namespace,
            )
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            format!("no listener of Gateway {} allows this route", gateway.key),
        ));
    }
    let matching: Vec<Attachment<'g>> = allowed
        .into_iter()
        .filter_map(|listener| {
            let hostnames = intersect_hostnames(listener.hostname.as_ref(), hostnames);
            (!hostnames.is_empty()).then(|| Attachment {
                listener,
                hostnames,
                served: listener_model_state(snapshot, gateway, listener, serving).programmed(),
            })
        })
        .collect();
    if matching.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route matches a listener of Gateway {}",
                gateway.key
            ),
        ));
    }
    Ok(matching)
}

/// Whether every backend of a route resolves: `Err((reason, message))` for
/// the first that does not.
fn resolve_backends<'a>(
    snapshot: &Snapshot,
    route_kind: &str,
    route: &ObjectKey,
    backends: impl Iterator<Item = &'a RouteBackend>,
) -> Result<(), (&'static str, String)> {
    for backend in backends {
        match &backend.target {
            RouteBackendTarget::Invalid { reason, .. } => {
                let (code, message) = reason.split_once(": ").unwrap_or(("InvalidKind", reason));
                let code = match code {
                    "RefNotPermitted" => "RefNotPermitted",
                    "BackendNotFound" => "BackendNotFound",
                    _ => "InvalidKind",
                };
                return Err((code, message.to_owned()));
            }
            RouteBackendTarget::Service { service, .. } => {
                let permitted = snapshot.reference_permitted(&CrossReference {
                    from_group: crate::gateway_api::GROUP,
                    from_kind: route_kind,
                    from_namespace: &route.namespace,
                    to_group: "",
                    to_kind: "Service",
                    to_namespace: &service.namespace,
                    to_name: &service.name,
                });
                if !permitted {
                    return Err((
                        "RefNotPermitted",
                        format!(
                            "Service {service} is in another namespace and no ReferenceGrant allows it"
                        ),
                    ));
                }
                if !snapshot.services.contains_key(service) {
                    return Err((
                        "BackendNotFound",
                        format!("Service {service} does not exist"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The spec's "dropped rules": a rule with an unsupported value is not
/// served; the others are (PartiallyInvalid), and a route with none left
/// is not accepted. One line per dropped rule.
fn dropped_rules(invalid: &[Option<&str>]) -> Vec<String> {
    invalid
        .iter()
        .enumerate()
        .filter_map(|(i, why)| {
            why.map(|why| {
                let why = why.strip_prefix("UnsupportedValue: ").unwrap_or(why);
                format!("rule {i}: {why}")
            })
        })
        .collect()
}

/// The backends of a route's served rules, and why each rule is dropped.
type RuleParts<'a> = (Vec<&'a RouteBackend>, Vec<Option<&'a str>>);

fn rule_parts<'a>(
    rules: impl Iterator<Item = (&'a [RouteBackend], Option<&'a str>)>,
) -> RuleParts<'a> {
    let mut backends = Vec::new();
    let mut invalid = Vec::new();
    for (rule_backends, why) in rules {
        if why.is_none() {
            backends.extend(rule_backends);
        }
        invalid.push(why);
    }
    (backends, invalid)
}

/// A route parent's conditions: Accepted, ResolvedRefs, and
/// PartiallyInvalid when some (not all) rules are dropped.
fn parent_conditions(
    accepted: Result<&str, (&str, String)>,
    resolved: Result<(), (&str, String)>,
    dropped: &[String],
    all_dropped: bool,
) -> Vec<StatusCondition> {
    let mut conditions = vec![
        condition("Accepted", accepted),
        condition("ResolvedRefs", resolved.map(|()| "ResolvedRefs")),
    ];
    if !dropped.is_empty() && !all_dropped {
        conditions.push(StatusCondition {
            type_: "PartiallyInvalid",
            status: true,
            reason: "UnsupportedValue".to_owned(),
            message: format!("Dropped Rule(s): {}", dropped.join("; ")),
        });
    }
    conditions
}

/// A route as the status needs it.
struct RouteView<'a> {
    kind: &'static str,
    key: &'a ObjectKey,
    parents: &'a [ParentRef],
    hostnames: &'a [Hostname],
    backends: Vec<&'a RouteBackend>,
    /// Per rule: why it is dropped (`None`: served).
    invalid: Vec<Option<&'a str>>,
}

/// Computes the status fairlead owes for `snapshot`.
#[must_use]
pub fn compute(snapshot: &Snapshot, serving: &Serving) -> GatewayApiStatus {
    let mut status = GatewayApiStatus::default();
    for class in snapshot.gateway_classes.values() {
        if class.controller == serving.controller {
            status.classes.insert(
                class.name.clone(),
                vec![condition("Accepted", Ok("Accepted"))],
            );
        }
    }
    let gateways: Vec<&Arc<Gateway>> = served_gateways(snapshot, serving).collect();
    let mut attached: BTreeMap<(ObjectKey, String), i32> = BTreeMap::new();

    let routes = snapshot
        .http_routes
        .values()
        .map(|r| {
            let (backends, invalid) = rule_parts(
                r.rules
                    .iter()
                    .map(|rule| (&rule.backends[..], rule.invalid.as_deref())),
            );
            RouteView {
                kind: "HTTPRoute",
                key: &r.key,
                parents: &r.parents,
                hostnames: &r.hostnames,
                backends,
                invalid,
            }
        })
        .chain(snapshot.grpc_routes.values().map(|r| {
            let (backends, invalid) = rule_parts(
                r.rules
                    .iter()
                    .map(|rule| (&rule.backends[..], rule.invalid.as_deref())),
            );
            RouteView {
                kind: "GRPCRoute",
                key: &r.key,
                parents: &r.parents,
                hostnames: &r.hostnames,
                backends,
                invalid,
            }
        }));
    for route in routes {
        let resolved =
            resolve_backends(snapshot, route.kind, route.key, route.backends.into_iter());
        let dropped = dropped_rules(&route.invalid);
        let all_dropped = !dropped.is_empty() && dropped.len() == route.invalid.len();
        let mut parents = Vec::new();
        for parent in route.parents {
            let Some(gateway) = gateways.iter().find(|g| g.key == parent.gateway) else {
                continue;
            };
            let accepted = match attach(
                snapshot,
                serving,
                gateway,
                parent,
                (route.kind, route.key),
                route.hostnames,
            ) {
                Ok(_) if all_dropped => Err((
                    "UnsupportedValue",
                    format!("every rule is dropped: {}", dropped.join("; ")),
                )),
                Ok(attachments) => {
                    for a in attachments {
                        *attached
                            .entry((gateway.key.clone(), a.listener.name.clone()))
                            .or_default() += 1;
                    }
                    Ok("Accepted")
                }
                Err(e) => Err(e),
            };
            parents.push(RouteParentStatus {
                parent: parent.clone(),
                conditions: parent_conditions(accepted, resolved.clone(), &dropped, all_dropped),
            });
        }
        if !parents.is_empty() {
            let map = if route.kind == "HTTPRoute" {
                &mut status.http_routes
            } else {
                &mut status.grpc_routes
            };
            map.insert(route.key.clone(), parents);
        }
    }

    for gateway in gateways {
        let gateway_status = gateway_status(snapshot, gateway, serving, &attached);
        status.gateways.insert(gateway.key.clone(), gateway_status);
    }
    status
}

fn gateway_status(
    snapshot: &Snapshot,
    gateway: &Gateway,
    serving: &Serving,
    attached: &BTreeMap<(ObjectKey, String), i32>,
) -> GatewayStatus {
    let listeners: Vec<ListenerStatus> = gateway
        .listeners
        .iter()
        .map(|l| ListenerStatus {
            name: l.name.clone(),
            supported_kinds: vec!["HTTPRoute", "GRPCRoute"],
            attached_routes: attached
                .get(&(gateway.key.clone(), l.name.clone()))
                .copied()
                .unwrap_or(0),
            conditions: listener_state(snapshot, gateway, l, serving).conditions(),
        })
        .collect();
    let programmed = listeners.iter().any(|l| {
        l.conditions
            .iter()
            .any(|c| c.type_ == "Programmed" && c.status)
    });
    let all_valid = listeners.iter().all(|l| {
        l.conditions
            .iter()
            .all(|c| c.type_ == "Conflicted" || c.status)
    });
    GatewayStatus {
        conditions: vec![
            condition(
                "Accepted",
                if !gateway.unsupported_addresses.is_empty() {
                    Err((
                        "UnsupportedAddress",
                        format!(
                            "only IPAddress addresses are served, not {:?}",
                            gateway.unsupported_addresses
                        ),
                    ))
                } else if all_valid || programmed {
                    Ok(if all_valid {
                        "Accepted"
                    } else {
                        "ListenersNotValid"
                    })
                } else {
                    Err(("ListenersNotValid", "no listener is valid".to_owned()))
                },
            ),
            condition(
                "Programmed",
                if let Some(why) = unusable_address(gateway, serving) {
                    Err(("AddressNotUsable", why))
                } else if programmed {
                    Ok("Programmed")
                } else {
                    Err(("Invalid", "no listener is served".to_owned()))
                },
            ),
        ],
        listeners,
    }
}

/// Why one of the Gateway's `spec.addresses` cannot be used: the gateway
/// could not listen on it.
fn unusable_address(gateway: &Gateway, serving: &Serving) -> Option<String> {
    let failures = serving.listen_failures.0.borrow();
    failures.iter().find_map(|(socket, error)| {
        let address = socket.address?;
        gateway
            .addresses
            .contains(&address)
            .then(|| format!("cannot listen on {address}:{}: {error}", socket.port))
    })
}

/// Renders `status` as text (for golden tests and `fairlead check`).
#[must_use]
pub fn render(status: &GatewayApiStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let conditions = |out: &mut String, indent: &str, list: &[StatusCondition]| {
        for c in list {
            let _ = writeln!(
                out,
                "{indent}{} {} {}{}",
                c.type_,
                if c.status { "True" } else { "False" },
                c.reason,
                if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                }
            );
        }
    };
    for (name, list) in &status.classes {
        let _ = writeln!(out, "gatewayclass {name}");
        conditions(&mut out, "  ", list);
    }
    for (key, gateway) in &status.gateways {
        let _ = writeln!(out, "gateway {key}");
        conditions(&mut out, "  ", &gateway.conditions);
        for l in &gateway.listeners {
            let _ = writeln!(
                out,
                "  listener {} attachedRoutes={}",
                l.name, l.attached_routes
            );
            conditions(&mut out, "    ", &l.conditions);
        }
    }
    for (kind, routes) in [
        ("httproute", &status.http_routes),
        ("grpcroute", &status.grpc_routes),
    ] {
        for (key, parents) in routes {
            let _ = writeln!(out, "{kind} {key}");
            for p in parents {
                let _ = writeln!(
                    out,
                    "  parent {}{}",
                    p.parent.gateway,
                    p.parent
                        .section_name
                        .as_ref()
                        .map(|s| format!(" section={s}"))
                        .unwrap_or_default()
                );
                conditions(&mut out, "    ", &p.conditions);
            }
        }
    }
    out
}
