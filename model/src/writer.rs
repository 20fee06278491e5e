//! The one writer of the model: takes objects from a source, translates them,
//! keeps the last good version of each, and publishes snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{FieldError, Origin, Problem, Severity};
use crate::object::KubeObject;
use crate::snapshot::{CHANGE_LOG_LEN, Snapshot};
use crate::translate::{self, Slice};
use crate::types::{Kind, ObjectId, ObjectKey, Service, ServiceKey, TlsCertificate};

/// What a source says about one object.
#[derive(Clone, Debug)]
pub enum Change {
    /// The object exists with this content.
    Upsert {
        /// The object.
        object: KubeObject,
        /// Where it came from, for error messages.
        origin: Option<Origin>,
    },
    /// The object exists, but its content could not be decoded. Its last good
    /// version stays in force.
    Invalid {
        /// Which object.
        id: ObjectId,
        /// Where it came from.
        origin: Option<Origin>,
        /// What is wrong.
        error: FieldError,
    },
    /// The object is gone.
    Delete(ObjectId),
}

impl Change {
    fn id(&self) -> ObjectId {
        match self {
            Change::Upsert { object, .. } => object.id(),
            Change::Invalid { id, .. } | Change::Delete(id) => id.clone(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The content last translated; `None` after an `Invalid`, so that any
    /// later content is translated again.
    raw: Option<KubeObject>,
    origin: Option<Origin>,
    errors: Vec<Problem>,
}

/// What one batch touched.
#[derive(Default)]
struct Dirty {
    services: BTreeSet<ServiceKey>,
    ingress: bool,
    secrets: BTreeSet<ObjectKey>,
    other: bool,
    problems: bool,
}

/// The single writer of the model. Owns the translated state and the sending
/// side of the snapshot channel; see [`ModelWriter::new`].
#[derive(Debug)]
pub struct ModelWriter {
    tx: watch::Sender<Arc<Snapshot>>,
    next: Snapshot,
    entries: HashMap<ObjectId, Entry>,
    /// Last good translation of each Service, without endpoints.
    services: HashMap<ServiceKey, Service>,
    /// Last good translation of each EndpointSlice, by slice key.
    slices: HashMap<ObjectKey, Slice>,
    /// Slice names per Service.
    slices_by_service: HashMap<ServiceKey, BTreeSet<String>>,
    /// Last good TLS material of referenced Secrets.
    secrets: HashMap<ObjectKey, Arc<TlsCertificate>>,
    source_problems: Vec<Problem>,
    reference_problems: Vec<Problem>,
}

impl ModelWriter {
    /// A writer with an empty, unsynced model, and the receiving side of its
    /// snapshots. Clone the receiver for every consumer.
    #[must_use]
    pub fn new() -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let writer = Self {
            tx,
            next: Snapshot::default(),
            entries: HashMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            secrets: HashMap::new(),
            source_problems: Vec::new(),
            reference_problems: Vec::new(),
        };
        (writer, rx)
    }

    /// A new receiver of snapshots.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Whether any receiver of snapshots is still alive.
    #[must_use]
    pub fn has_consumers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// The last published snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies a batch of changes and publishes one snapshot if anything
    /// changed. Returns the generation now published.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut dirty = Dirty::default();
        for change in changes {
            self.apply_one(change, &mut dirty);
        }
        self.publish(&dirty)
    }

    /// Replaces the whole state with `changes` (which hold no deletes): every
    /// object not named is deleted, in the same snapshot. `problems` replaces
    /// the problems the source found outside any object (files that do not
    /// parse, unsupported kinds). `synced` marks the model complete.
    pub fn replace_all(
        &mut self,
        changes: Vec<Change>,
        problems: Vec<Problem>,
        synced: bool,
    ) -> u64 {
        let present: BTreeSet<ObjectId> = changes.iter().map(Change::id).collect();
        let gone: Vec<ObjectId> = self
            .entries
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        let mut dirty = Dirty::default();
        for id in gone {
            self.apply_one(Change::Delete(id), &mut dirty);
        }
        for change in changes {
            self.apply_one(change, &mut dirty);
        }
        if problems != self.source_problems {
            self.source_problems = problems;
            dirty.problems = true;
        }
        if synced && !self.next.synced {
            self.next.synced = true;
            dirty.other = true;
        }
        self.publish(&dirty)
    }

    /// Replaces every object of `kinds` with the upserts of those kinds in
    /// `changes`, and applies the rest of `changes` (any kind, deletes
    /// included) as [`ModelWriter::apply`] would, all in one snapshot. Objects
    /// of `kinds` not upserted in `changes` are deleted; objects of other kinds
    /// are left alone. This is a relist of some kinds: the old and the new
    /// state of those kinds never show half-merged.
    pub fn replace_kinds(&mut self, kinds: &[Kind], changes: Vec<Change>) -> u64 {
        let present: BTreeSet<ObjectId> = changes
            .iter()
            .filter(|c| !matches!(c, Change::Delete(_)))
            .map(Change::id)
            .collect();
        let gone: Vec<ObjectId> = self
            .entries
            .keys()
            .filter(|id| kinds.contains(&id.kind) && !present.contains(*id))
            .cloned()
            .collect();
        let mut dirty = Dirty::default();
        for id in gone {
            self.apply_one(Change::Delete(id), &mut dirty);
        }
        for change in changes {
            self.apply_one(change, &mut dirty);
        }
        self.publish(&dirty)
    }

    /// Marks the model as holding the source's complete state.
    pub fn set_synced(&mut self) -> u64 {
        let mut dirty = Dirty::default();
        if !self.next.synced {
            self.next.synced = true;
            dirty.other = true;
        }
        self.publish(&dirty)
    }

    fn apply_one(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Upsert { object, origin } => {
                let id = object.id();
                let entry = self.entries.entry(id.clone()).or_insert(Entry {
                    raw: None,
                    origin: None,
                    errors: Vec::new(),
                });
                if entry.raw.as_ref() == Some(&object) {
                    if entry.origin != origin {
                        entry.origin = origin;
                        for e in &mut entry.errors {
                            e.origin.clone_from(&entry.origin);
                        }
                        dirty.problems |= !entry.errors.is_empty();
                    }
                    return;
                }
                entry.origin = origin;
                let result = self.translate(&id, &object, dirty);
                let entry = self.entries.get_mut(&id).expect("inserted above");
                entry.raw = Some(object);
                let errors = problems(result.err().unwrap_or_default(), entry.origin.as_ref(), &id);
                if !errors.is_empty() {
                    warn!(object = %id, errors = errors.len(), "object rejected; its last good version stays in force");
                }
                if errors != entry.errors {
                    entry.errors = errors;
                    dirty.problems = true;
                }
            }
            Change::Invalid { id, origin, error } => {
                warn!(object = %id, %error, "object does not decode; its last good version stays in force");
                let entry = self.entries.entry(id.clone()).or_insert(Entry {
                    raw: None,
                    origin: None,
                    errors: Vec::new(),
                });
                entry.raw = None;
                entry.origin.clone_from(&origin);
                entry.errors = vec![Problem {
                    severity: Severity::Error,
                    origin,
                    object: Some(id),
                    error,
                }];
                dirty.problems = true;
            }
            Change::Delete(id) => {
                if let Some(entry) = self.entries.remove(&id) {
                    dirty.problems |= !entry.errors.is_empty();
                }
                self.forget(&id, dirty);
            }
        }
    }

    /// Translates one object into the last-good state. On error nothing of
    /// the last good version is touched.
    fn translate(
        &mut self,
        id: &ObjectId,
        object: &KubeObject,
        dirty: &mut Dirty,
    ) -> Result<(), Vec<FieldError>> {
        let key = id.key();
        match object {
            KubeObject::Service(o) => {
                let service = translate::service(o)?;
                self.services.insert(key.clone(), service);
                dirty.services.insert(key);
            }
            KubeObject::EndpointSlice(o) => {
                let slice = translate::endpoint_slice(o)?;
                self.unlink_slice(&key, dirty);
                self.slices_by_service
                    .entry(slice.service.clone())
                    .or_default()
                    .insert(key.name.clone());
                dirty.services.insert(slice.service.clone());
                self.slices.insert(key, slice);
            }
            KubeObject::Ingress(o) => {
                let ingress = translate::ingress(o)?;
                self.next.ingresses.insert(key, Arc::new(ingress));
                dirty.ingress = true;
            }
            KubeObject::IngressClass(o) => {
                let class = translate::ingress_class(o)?;
                self.next
                    .ingress_classes
                    .insert(id.name.clone(), Arc::new(class));
                dirty.ingress = true;
            }
            KubeObject::Secret(_) => {
                // Translated only if an Ingress references it (see `resolve_ingress`).
                dirty.secrets.insert(key);
            }
            KubeObject::Node(o) => {
                let node = translate::node(o)?;
                self.next.nodes.insert(id.name.clone(), Arc::new(node));
                dirty.other = true;
            }
            KubeObject::Namespace(_) => {
                self.next.namespaces.insert(id.name.clone());
                dirty.other = true;
            }
            KubeObject::GatewayClass(o) => {
                let class = translate::gateway_class(o)?;
                self.next
                    .gateway_classes
                    .insert(id.name.clone(), Arc::new(class));
                dirty.ingress = true;
            }
            KubeObject::Gateway(o) => {
                let gateway = translate::gateway(o)?;
                self.next.gateways.insert(key, Arc::new(gateway));
                dirty.ingress = true;
            }
            KubeObject::HttpRoute(o) => {
                let route = translate::http_route(o)?;
                self.next.http_routes.insert(key, Arc::new(route));
                dirty.ingress = true;
            }
        }
        Ok(())
    }

    fn unlink_slice(&mut self, key: &ObjectKey, dirty: &mut Dirty) {
        if let Some(old) = self.slices.remove(key) {
            if let Some(names) = self.slices_by_service.get_mut(&old.service) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
            dirty.services.insert(old.service);
        }
    }

    /// Drops the last good version of a deleted object.
    fn forget(&mut self, id: &ObjectId, dirty: &mut Dirty) {
        let key = id.key();
        match id.kind {
            Kind::Service => {
                if self.services.remove(&key).is_some() {
                    dirty.services.insert(key);
                }
            }
            Kind::EndpointSlice => self.unlink_slice(&key, dirty),
            Kind::Ingress => dirty.ingress |= self.next.ingresses.remove(&key).is_some(),
            Kind::IngressClass => {
                dirty.ingress |= self.next.ingress_classes.remove(&id.name).is_some();
            }
            Kind::Secret => {
                dirty.secrets.insert(key);
            }
            Kind::Node => dirty.other |= self.next.nodes.remove(&id.name).is_some(),
            Kind::Namespace => dirty.other |= self.next.namespaces.remove(&id.name).is_some(),
            Kind::GatewayClass => {
                dirty.ingress |= self.next.gateway_classes.remove(&id.name).is_some();
            }
            Kind::Gateway => dirty.ingress |= self.next.gateways.remove(&key).is_some(),
            Kind::HttpRoute => dirty.ingress |= self.next.http_routes.remove(&key).is_some(),
        }
    }

    /// The Service as consumers see it: spec plus merged endpoints.
    fn build_service(&self, key: &ServiceKey) -> Option<Service> {
        let mut service = self.services.get(key)?.clone();
        let slices = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                self.slices
                    .get(&ObjectKey::new(key.namespace.clone(), name.clone()))
            });
        service.endpoints = translate::merge_endpoints(slices);
        Some(service)
    }

    /// Secrets referenced by some Ingress's `tls` in its own namespace, each
    /// with the first Ingress and `tls` index that references it.
    fn referenced_secrets(&self) -> BTreeMap<ObjectKey, (ObjectKey, usize)> {
        let mut referenced = BTreeMap::new();
        for ingress in self.next.ingresses.values() {
            for (i, tls) in ingress.tls.iter().enumerate() {
                if let Some(secret) = &tls.secret_name {
                    referenced
                        .entry(ObjectKey::new(
                            ingress.key.namespace.clone(),
                            secret.clone(),
                        ))
                        .or_insert_with(|| (ingress.key.clone(), i));
                }
            }
        }
        referenced
    }

    /// Keeps a Secret's new TLS material, or records why it was rejected
    /// (keeping the last good material). Returns whether problems changed.
    fn record_secret(
        &mut self,
        id: &ObjectId,
        result: Result<TlsCertificate, Vec<FieldError>>,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        match result {
            Ok(cert) => {
                self.secrets.insert(id.key(), Arc::new(cert));
                let had_errors = !entry.errors.is_empty();
                entry.errors.clear();
                had_errors
            }
            Err(errors) => {
                warn!(object = %id, "TLS Secret rejected; its last good version stays in force");
                entry.errors = problems(errors, entry.origin.as_ref(), id);
                true
            }
        }
    }

    /// Re-translates the Secrets Ingresses reference, and collects the
    /// problems of references that do not resolve.
    fn resolve_ingress(&mut self, dirty_secrets: &BTreeSet<ObjectKey>) -> bool {
        let now = SystemTime::now();
        let referenced = self.referenced_secrets();
        let mut changed = false;
        self.secrets.retain(|key, _| referenced.contains_key(key));
        let mut reference_problems = Vec::new();
        for (secret_key, (ingress_key, tls_index)) in &referenced {
            let id = ObjectId {
                kind: Kind::Secret,
                namespace: secret_key.namespace.clone(),
                name: secret_key.name.clone(),
            };
            let raw = self.entries.get(&id).and_then(|e| e.raw.as_ref());
            let secret = match raw {
                Some(KubeObject::Secret(s)) if translate::is_tls_secret(s) => s,
                other => {
                    let why = if other.is_some() || self.entries.contains_key(&id) {
                        "is not a valid kubernetes.io/tls Secret"
                    } else {
                        "does not exist"
                    };
                    if !self.entries.contains_key(&id) {
                        self.secrets.remove(secret_key);
                    }
                    reference_problems.push(Problem {
                        severity: Severity::Warning,
                        origin: None,
                        object: Some(ObjectId {
                            kind: Kind::Ingress,
                            namespace: ingress_key.namespace.clone(),
                            name: ingress_key.name.clone(),
                        }),
                        error: FieldError::new(
                            format!("spec.tls[{tls_index}].secretName"),
                            format!("Secret {secret_key} {why}; the default certificate is served instead"),
                        ),
                    });
                    continue;
                }
            };
            if dirty_secrets.contains(secret_key) || !self.secrets.contains_key(secret_key) {
                let result = translate::tls_secret(secret);
                changed |= self.record_secret(&id, result);
            }
            if let Some(cert) = self.secrets.get(secret_key)
                && cert.expired_at(now)
            {
                reference_problems.push(Problem {
                    severity: Severity::Warning,
                    origin: self.entries.get(&id).and_then(|e| e.origin.clone()),
                    object: Some(id.clone()),
                    error: FieldError::new(
                        "data[tls.crt]",
                        "the certificate is expired or not yet valid",
                    ),
                });
            }
        }
        // Unreferenced Secrets are not evaluated, so they carry no errors.
        for (id, entry) in &mut self.entries {
            if id.kind == Kind::Secret
                && !referenced.contains_key(&id.key())
                && !entry.errors.is_empty()
                && entry.raw.is_some()
            {
                entry.errors.clear();
                changed = true;
            }
        }
        let certificates: imbl::OrdMap<_, _> = self
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        if certificates != self.next.certificates {
            self.next.certificates = certificates;
            changed = true;
        }
        if reference_problems != self.reference_problems {
            self.reference_problems = reference_problems;
            changed = true;
        }
        changed
    }

    fn publish(&mut self, dirty: &Dirty) -> u64 {
        let generation = self.next.generation + 1;
        let mut changed_services = Vec::new();
        for key in &dirty.services {
            let old = self.next.services.get(key);
            match self.build_service(key) {
                Some(service) if old.is_some_and(|o| **o == service) => {}
                Some(service) => {
                    self.next.services.insert(key.clone(), Arc::new(service));
                    changed_services.push(key.clone());
                }
                None => {
                    if self.next.services.remove(key).is_some() {
                        changed_services.push(key.clone());
                    }
                }
            }
        }
        let mut ingress_changed = dirty.ingress;
        let mut problems_changed = dirty.problems;
        if dirty.ingress || !dirty.secrets.is_empty() {
            let resolved = self.resolve_ingress(&dirty.secrets);
            ingress_changed |= resolved;
            problems_changed |= resolved;
        }
        if changed_services.is_empty() && !ingress_changed && !problems_changed && !dirty.other {
            return self.next.generation;
        }
        self.next.generation = generation;
        if ingress_changed {
            self.next.ingress_generation = generation;
        }
        if !changed_services.is_empty() {
            self.next
                .changes
                .push_back((generation, changed_services.into()));
            while self.next.changes.len() > CHANGE_LOG_LEN {
                self.next.changes.pop_front();
            }
        }
        if problems_changed {
            let mut problems: Vec<Problem> = self
                .source_problems
                .iter()
                .chain(self.entries.values().flat_map(|e| e.errors.iter()))
                .chain(self.reference_problems.iter())
                .cloned()
                .collect();
            problems.sort();
            self.next.problems = problems.into();
        }
        debug!(
            generation,
            services = self.next.services.len(),
            "publishing model snapshot"
        );
        if generation == 1 || problems_changed {
            info!(
                generation,
                services = self.next.services.len(),
                ingresses = self.next.ingresses.len(),
                problems = self.next.problems.len(),
                "model updated"
            );
        }
        self.tx.send_replace(Arc::new(self.next.clone()));
        generation
    }
}

/// Field errors of one object as problems.
fn problems(errors: Vec<FieldError>, origin: Option<&Origin>, id: &ObjectId) -> Vec<Problem> {
    errors
        .into_iter()
        .map(|error| Problem {
            severity: Severity::Error,
            origin: origin.cloned(),
            object: Some(id.clone()),
            error,
        })
        .collect()
}
