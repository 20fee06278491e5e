//! Immutable, versioned snapshots of the model, shared by every data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use crate::error::{Problem, Severity};
use crate::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};
use crate::select::Locality;
use crate::types::{
    Ingress, IngressClass, Kind, Node, ObjectId, ObjectKey, Service, ServiceKey, TlsCertificate,
};

/// How many generations of changes a snapshot remembers, so that a consumer
/// that fell behind can still update only what changed.
pub const CHANGE_LOG_LEN: usize = 1024;

/// What happened to a Service between two generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceChange {
    /// Only its endpoints changed (what [`Service::select`] chooses from):
    /// the Service's frontends, names and routes stay as they are.
    Endpoints,
    /// Anything else: its spec (ports, addresses, policies, the resolved
    /// `appProtocol`, …) changed, or it came or went.
    Spec,
}

/// The changes one generation made, as the snapshot logs them.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    pub(crate) generation: u64,
    /// Everything may have changed (the model became synced).
    pub(crate) everything: bool,
    pub(crate) services: Vec<(ServiceKey, ServiceChange)>,
    /// Objects of the other kinds whose model value changed (came, went or
    /// differs): Ingresses, IngressClasses, Secrets (their certificates),
    /// Nodes, Namespaces.
    pub(crate) objects: Vec<ObjectId>,
}

/// What changed between a generation a reader served and a snapshot: the
/// one change cursor every data plane follows ([`Snapshot::changes_since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    everything: bool,
    services: BTreeMap<ServiceKey, ServiceChange>,
    objects: BTreeSet<ObjectId>,
}

impl Changes {
    /// Everything must be compared: the reader served nothing yet, fell
    /// behind the change log, served another model, or the model became
    /// synced since.
    #[must_use]
    pub fn everything(&self) -> bool {
        self.everything
    }

    /// Nothing changed (and not everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty() && self.objects.is_empty()
    }

    /// The Services that changed, each with what changed (meaningless when
    /// [`Changes::everything`]).
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, ServiceChange)> + '_ {
        self.services.iter().map(|(k, c)| (k, *c))
    }

    /// What changed about one Service: `None` when nothing did (and not
    /// everything), [`ServiceChange::Spec`] when everything may have.
    #[must_use]
    pub fn service(&self, key: &ServiceKey) -> Option<ServiceChange> {
        if self.everything {
            return Some(ServiceChange::Spec);
        }
        self.services.get(key).copied()
    }

    /// The objects of `kind` that changed (not Services: see
    /// [`Changes::services`]; meaningless when [`Changes::everything`]).
    pub fn objects(&self, kind: Kind) -> impl Iterator<Item = &ObjectId> + '_ {
        self.objects.iter().filter(move |id| id.kind == kind)
    }

    /// Whether any object of one of `kinds` changed, or everything may have.
    #[must_use]
    pub fn touches(&self, kinds: &[Kind]) -> bool {
        self.everything
            || kinds.iter().any(|kind| match kind {
                Kind::Service | Kind::EndpointSlice => !self.services.is_empty(),
                kind => self.objects.iter().any(|id| id.kind == *kind),
            })
    }

    /// Whether what [`Snapshot::locality`] says of the node `node` may have
    /// changed (its Node object, or everything): then every selection that
    /// follows topology must be made again.
    #[must_use]
    pub fn locality(&self, node: Option<&str>) -> bool {
        self.everything
            || node.is_some_and(|node| {
                self.objects
                    .iter()
                    .any(|id| id.kind == Kind::Node && id.name == node)
            })
    }

    /// Whether this object changed, or everything may have.
    #[must_use]
    pub fn touches_object(&self, id: &ObjectId) -> bool {
        self.everything || self.objects.contains(id)
    }

    fn all() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }
}

/// A snapshot's change log without the snapshot ([`Snapshot::change_log`]).
#[derive(Clone, Debug, Default)]
pub struct ChangeLog {
    generation: u64,
    log: Vector<Arc<Logged>>,
}

impl ChangeLog {
    /// [`Snapshot::changes_since`] of the snapshot this log is of.
    #[must_use]
    pub fn changes_since(&self, served: Option<u64>) -> Changes {
        changes_since(self.generation, &self.log, served)
    }
}

fn changes_since(generation: u64, log: &Vector<Arc<Logged>>, served: Option<u64>) -> Changes {
    let Some(served) = served else {
        return Changes::all();
    };
    if served == generation {
        return Changes::default();
    }
    // Generations (served, generation] must all be logged.
    let covered = log
        .front()
        .is_some_and(|oldest| oldest.generation <= served + 1);
    if served > generation || !covered {
        return Changes::all();
    }
    let mut changes = Changes::default();
    for logged in log.iter().filter(|l| l.generation > served) {
        if logged.everything {
            return Changes::all();
        }
        for (key, change) in &logged.services {
            let merged = changes.services.entry(key.clone()).or_insert(*change);
            *merged = (*merged).max(*change);
        }
        changes.objects.extend(logged.objects.iter().cloned());
    }
    changes
}

/// The whole model at one generation. Cheap to clone (persistent maps of
/// `Arc`s); consumers receive it as `Arc<Snapshot>` and never lock anything.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every published change.
    pub generation: u64,
    /// False until the source has delivered its complete initial state.
    /// Consumers must not act on (or answer from) an unsynced model as if it
    /// were the world: DNS answers SERVFAIL, the proxy programs nothing.
    pub synced: bool,
    /// Services with their merged endpoints.
    pub services: OrdMap<ServiceKey, Arc<Service>>,
    /// Ingresses (every class; see [`Snapshot::ingresses_for_class`]).
    pub ingresses: OrdMap<ObjectKey, Arc<Ingress>>,
    /// IngressClasses by name.
    pub ingress_classes: OrdMap<String, Arc<IngressClass>>,
    /// TLS material of the Secrets that some Ingress references in its own
    /// namespace (and only those).
    pub certificates: OrdMap<ObjectKey, Arc<TlsCertificate>>,
    /// GatewayClasses by name (every controller's).
    pub gateway_classes: OrdMap<String, Arc<GatewayClass>>,
    /// Gateways (every class's).
    pub gateways: OrdMap<ObjectKey, Arc<Gateway>>,
    /// HTTPRoutes (attached or not).
    pub http_routes: OrdMap<ObjectKey, Arc<HttpRoute>>,
    /// GRPCRoutes (attached or not).
    pub grpc_routes: OrdMap<ObjectKey, Arc<GrpcRoute>>,
    /// ReferenceGrants.
    pub reference_grants: OrdMap<ObjectKey, Arc<ReferenceGrant>>,
    /// Nodes by name.
    pub nodes: OrdMap<String, Arc<Node>>,
    /// Namespaces known to exist.
    pub namespaces: OrdSet<String>,
    /// The labels of the Namespaces that have any (what a Gateway
    /// listener's `allowedRoutes.namespaces.selector` matches); nothing
    /// else of a Namespace is kept.
    pub namespace_labels: OrdMap<String, Arc<std::collections::BTreeMap<String, String>>>,
    /// Every current problem: bad files, bad objects (whose last good version
    /// is still in force), unresolved references.
    pub problems: Arc<[Problem]>,
    /// What each recent generation changed, oldest first.
    pub(crate) log: Vector<Arc<Logged>>,
}

impl Snapshot {
    /// What changed after generation `served` (the last one a reader
    /// applied; `None` when it applied none) up to this snapshot: the one
    /// change cursor. Everything, when `served` is `None`, older than the
    /// change log, or newer than this snapshot (another model).
    #[must_use]
    pub fn changes_since(&self, served: Option<u64>) -> Changes {
        changes_since(self.generation, &self.log, served)
    }

    /// This snapshot's change log, for a reader that keeps answering from
    /// what it built after the snapshot is gone (cheap: shared).
    #[must_use]
    pub fn change_log(&self) -> ChangeLog {
        ChangeLog {
            generation: self.generation,
            log: self.log.clone(),
        }
    }

    /// The Service with this key.
    #[must_use]
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(&ObjectKey::new(namespace, name))
    }

    /// Where a data plane on the node `node` runs: the name and the zone of
    /// its Node object (no zone while that object is unknown).
    #[must_use]
    pub fn locality<'a>(&'a self, node: Option<&'a str>) -> Locality<'a> {
        Locality {
            node,
            zone: node
                .and_then(|n| self.nodes.get(n))
                .and_then(|n| n.zone.as_deref()),
        }
    }

    /// Whether any problem is an error (not just a warning).
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The name of the default IngressClass, if exactly one is marked default.
    #[must_use]
    pub fn default_ingress_class(&self) -> Option<&str> {
        let mut defaults = self.ingress_classes.values().filter(|c| c.is_default);
        match (defaults.next(), defaults.next()) {
            (Some(class), None) => Some(&class.name),
            _ => None,
        }
    }

    /// The Ingresses a gateway serving `class` handles: those naming the class,
    /// and those naming none when `class` is the default class.
    pub fn ingresses_for_class<'a>(
        &'a self,
        class: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Ingress>> + 'a {
        let is_default = self.default_ingress_class() == Some(class);
        self.ingresses.values().filter(move |i| match &i.class {
            Some(c) => c == class,
            None => is_default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{Change, ModelWriter};
    use crate::{KubeObject, decode};

    fn upsert(value: serde_json::Value) -> Change {
        Change::Upsert {
            object: decode(value).unwrap(),
            origin: None,
        }
    }

    fn service(port: u16) -> Change {
        upsert(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": port}]},
        }))
    }

    fn slice(host: u8, app_protocol: Option<&str>) -> Change {
        upsert(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "appProtocol": app_protocol}],
            "endpoints": [{"addresses": [format!("10.0.0.{host}")]}],
        }))
    }

    #[test]
    fn the_cursor_tells_endpoints_from_spec_and_everything() {
        let (mut writer, _rx) = ModelWriter::new();
        let key = ServiceKey::new("shop", "web");
        let g1 = writer.replace_all(vec![service(80), slice(1, None)], Vec::new(), true);
        let s = writer.snapshot();
        assert!(s.changes_since(None).everything());
        assert!(
            s.changes_since(Some(0)).everything(),
            "the model became synced"
        );
        let g2 = writer.apply([slice(2, None)]);
        let s = writer.snapshot();
        assert_eq!(
            s.changes_since(Some(g1)).service(&key),
            Some(ServiceChange::Endpoints)
        );
        // The resolved appProtocol comes from the slice, but it is spec.
        let g3 = writer.apply([slice(2, Some("kubernetes.io/h2c"))]);
        let s = writer.snapshot();
        assert_eq!(
            s.changes_since(Some(g2)).service(&key),
            Some(ServiceChange::Spec)
        );
        writer.apply([service(81)]);
        let s = writer.snapshot();
        let since = s.changes_since(Some(g1));
        assert_eq!(
            since.service(&key),
            Some(ServiceChange::Spec),
            "merged: the larger change"
        );
        assert_eq!(since.services().count(), 1);
        assert!(!since.touches(&[Kind::Ingress, Kind::Node]));
        assert!(s.changes_since(Some(g3)).touches(&[Kind::Service]));
        let _: Option<&KubeObject> = None;
    }

    #[test]
    fn a_reader_behind_the_log_compares_everything() {
        let (mut writer, _rx) = ModelWriter::new();
        let first = writer.replace_all(vec![service(1)], Vec::new(), true);
        for port in 2..=u16::try_from(CHANGE_LOG_LEN).unwrap() + 2 {
            writer.apply([service(port)]);
        }
        let s = writer.snapshot();
        assert!(s.changes_since(Some(first)).everything());
        assert!(!s.changes_since(Some(s.generation - 1)).everything());
    }
}
