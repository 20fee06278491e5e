//! Immutable, versioned snapshots of the model, shared by every data plane.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use crate::error::{Problem, Severity};
use crate::select::Locality;
use crate::types::{Ingress, IngressClass, Node, ObjectKey, Service, ServiceKey, TlsCertificate};

/// How many generations of Service changes a snapshot remembers, so that a
/// consumer that fell behind can still update only what changed.
pub const CHANGE_LOG_LEN: usize = 1024;

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
    /// Nodes by name.
    pub nodes: OrdMap<String, Arc<Node>>,
    /// Namespaces known to exist.
    pub namespaces: OrdSet<String>,
    /// Every current problem: bad files, bad objects (whose last good version
    /// is still in force), unresolved references.
    pub problems: Arc<[Problem]>,
    /// Generation at which ingresses, classes or certificates last changed.
    pub ingress_generation: u64,
    /// Which Services changed at each recent generation, oldest first.
    pub(crate) changes: Vector<(u64, Arc<[ServiceKey]>)>,
}

impl Snapshot {
    /// The Services whose content (spec or endpoints) changed after
    /// `generation`, up to this snapshot. `None` when `generation` is older
    /// than the change log: the consumer must then compare everything.
    #[must_use]
    pub fn changed_services_since(&self, generation: u64) -> Option<BTreeSet<ServiceKey>> {
        if generation >= self.generation {
            return Some(BTreeSet::new());
        }
        let oldest_covered = self.changes.front().map_or(self.generation, |(g, _)| *g);
        // Generations in (generation, self.generation] must all be covered.
        if generation + 1 < oldest_covered {
            return None;
        }
        Some(
            self.changes
                .iter()
                .filter(|(g, _)| *g > generation)
                .flat_map(|(_, keys)| keys.iter().cloned())
                .collect(),
        )
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
