//! The one writer of the model: takes objects from a source, translates them,
//! keeps the last good version of each, and publishes snapshots.

use std::collections::{BTreeMap, BTreeSet};

// foldhash, not std's SipHash: these maps take every object at start-up.
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{FieldError, Origin, Problem, Severity};
use crate::object::KubeObject;
use crate::snapshot::{CHANGE_LOG_LEN, Logged, ServiceChange, Snapshot};
use crate::translate::{self, Slice};
use crate::types::{
    IngressBackend, Kind, ObjectId, ObjectKey, PortRef, Service, ServiceKey, ServiceType,
    TlsCertificate,
};

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
    /// An upsert already translated by [`Change::prepare`], on the source's
    /// thread: the writer applies it as it would apply the upsert.
    Translated {
        /// Which object.
        id: ObjectId,
        /// Where it came from.
        origin: Option<Origin>,
        /// Its translation (or why it does not translate).
        translation: Translation,
    },
}

/// The translation of an object of a kind that comes by the thousand
/// (Services, EndpointSlices), made away from the writer.
#[derive(Clone, Debug)]
pub struct Translation(Translated);

#[derive(Clone, Debug)]
enum Translated {
    Service(Result<Service, Vec<FieldError>>),
    Slice(Result<Slice, Vec<FieldError>>),
}

impl Change {
    /// The object this change is about.
    #[must_use]
    pub fn id(&self) -> ObjectId {
        match self {
            Change::Upsert { object, .. } => object.id(),
            Change::Invalid { id, .. } | Change::Delete(id) | Change::Translated { id, .. } => {
                id.clone()
            }
        }
    }

    /// Translates an upsert of a Service or an EndpointSlice now, on this
    /// thread, and drops the object: the writer then only compares and
    /// stores. Sources that decode on several threads call this there, so
    /// that the one writer thread does less. Every other change is returned
    /// as it is. The writer's outcome is the same either way.
    #[must_use]
    pub fn prepare(self) -> Change {
        let Change::Upsert { object, origin } = self else {
            return self;
        };
        let translation = match &object {
            KubeObject::Service(o) => Translated::Service(translate::service(o)),
            KubeObject::EndpointSlice(o) => Translated::Slice(translate::endpoint_slice(o)),
            _ => return Change::Upsert { object, origin },
        };
        Change::Translated {
            id: object.id(),
            origin,
            translation: Translation(translation),
        }
    }
}

/// What the writer remembers of each object besides its translation: where
/// it came from and what is wrong with it. The object itself is not kept:
/// an upsert is translated and compared with the last good translation.
#[derive(Debug, Default)]
struct Entry {
    origin: Option<Origin>,
    /// The last content did not decode (`Change::Invalid`).
    invalid: bool,
    errors: Vec<Problem>,
}

/// The TLS material of a Secret, kept whether or not an Ingress references
/// it (its problems are reported only when one does).
#[derive(Debug, Default)]
struct SecretState {
    /// Of type `kubernetes.io/tls`.
    is_tls: bool,
    /// The last good material.
    good: Option<Arc<TlsCertificate>>,
    /// Why the last content was rejected.
    errors: Vec<FieldError>,
}

/// What one batch touched.
#[derive(Debug, Default)]
struct Dirty {
    services: BTreeSet<ServiceKey>,
    /// Objects of other kinds whose model value changed.
    objects: BTreeSet<ObjectId>,
    /// Ingress references must be resolved again.
    ingress: bool,
    /// Everything may have changed (the model became synced).
    everything: bool,
    problems: bool,
}

/// The single writer of the model. Owns the translated state and the sending
/// side of the snapshot channel; see [`ModelWriter::new`].
#[derive(Debug)]
pub struct ModelWriter {
    tx: watch::Sender<Arc<Snapshot>>,
    next: Snapshot,
    entries: HashMap<ObjectId, Entry>,
    /// Entries per kind.
    counts: HashMap<Kind, usize>,
    /// Services whose spec changed since the last snapshot: the new last
    /// good translation (without endpoints), or `None` when deleted. The
    /// published Services hold every other spec; the writer keeps no copy.
    specs: HashMap<ServiceKey, Option<Service>>,
    /// Last good translation of each EndpointSlice, by slice key.
    slices: HashMap<ObjectKey, Slice>,
    /// Slice names per Service, sorted (a Vec: nearly every Service has
    /// one slice, and a set's node is ten times the size of one name).
    slices_by_service: HashMap<ServiceKey, Vec<String>>,
    /// TLS material of every Secret.
    secrets: HashMap<ObjectKey, SecretState>,
    source_problems: Vec<Problem>,
    reference_problems: Vec<Problem>,
    /// Ingress backends naming a Service (or a port of it) that does not
    /// exist.
    backend_problems: Vec<Problem>,
    /// What changes staged since the last snapshot touched.
    staged: Dirty,
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
            counts: HashMap::new(),
            specs: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            secrets: HashMap::new(),
            source_problems: Vec::new(),
            reference_problems: Vec::new(),
            backend_problems: Vec::new(),
            staged: Dirty::default(),
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

    /// How many objects of `kind` the writer holds (valid or not; staged
    /// changes included).
    #[must_use]
    pub fn objects(&self, kind: Kind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The entry of `id`, created (and counted) if new.
    fn entry(&mut self, id: &ObjectId) -> &mut Entry {
        if !self.entries.contains_key(id) {
            *self.counts.entry(id.kind).or_default() += 1;
        }
        self.entries.entry(id.clone()).or_default()
    }

    /// The last published snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies a batch of changes and publishes one snapshot if anything
    /// changed. Returns the generation now published.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut dirty = std::mem::take(&mut self.staged);
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
        self.stage_retain(|id| present.contains(id));
        self.apply_source(changes, problems, synced)
    }

    /// Applies one change without publishing it: the next call that
    /// publishes ([`ModelWriter::apply_source`], [`ModelWriter::apply`], …)
    /// publishes it with its own changes, in one snapshot. A source hands
    /// over a large batch this way without holding all of it.
    pub fn stage(&mut self, change: Change) {
        let mut dirty = std::mem::take(&mut self.staged);
        self.apply_one(change, &mut dirty);
        self.staged = dirty;
    }

    /// Stages the deletion of every object `keep` rejects.
    pub fn stage_retain(&mut self, keep: impl Fn(&ObjectId) -> bool) {
        let gone: Vec<ObjectId> = self
            .entries
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        for id in gone {
            self.stage(Change::Delete(id));
        }
    }

    /// Applies a batch of changes from a source that reports problems
    /// outside any object (files that do not parse, unsupported kinds):
    /// `problems` replaces the ones it reported before. `synced` marks the
    /// model complete. One snapshot at most.
    pub fn apply_source(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        problems: Vec<Problem>,
        synced: bool,
    ) -> u64 {
        let mut dirty = std::mem::take(&mut self.staged);
        for change in changes {
            self.apply_one(change, &mut dirty);
        }
        if problems != self.source_problems {
            self.source_problems = problems;
            dirty.problems = true;
        }
        if synced && !self.next.synced {
            self.next.synced = true;
            dirty.everything = true;
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
        let mut dirty = std::mem::take(&mut self.staged);
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
        let mut dirty = std::mem::take(&mut self.staged);
        if !self.next.synced {
            self.next.synced = true;
            dirty.everything = true;
        }
        self.publish(&dirty)
    }

    fn apply_one(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Upsert { object, origin } => {
                let id = object.id();
                let result = self.translate(&id, &object, dirty);
                self.upserted(&id, origin, result, dirty);
            }
            Change::Translated {
                id,
                origin,
                translation,
            } => {
                let key = id.key();
                let result = match translation.0 {
                    Translated::Service(service) => {
                        service.map(|service| self.put_service(key, service, dirty))
                    }
                    Translated::Slice(slice) => {
                        slice.map(|slice| self.put_slice(key, slice, dirty))
                    }
                };
                self.upserted(&id, origin, result, dirty);
            }
            Change::Invalid { id, origin, error } => {
                warn!(object = %id, %error, "object does not decode; its last good version stays in force");
                // A referenced Secret that does not decode is reported as such.
                dirty.ingress |= id.kind == Kind::Secret;
                let entry = self.entry(&id);
                entry.invalid = true;
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
                    if let Some(n) = self.counts.get_mut(&id.kind) {
                        *n -= 1;
                    }
                    dirty.problems |= !entry.errors.is_empty();
                }
                self.forget(&id, dirty);
            }
        }
    }

    /// Records an upsert's outcome: where it came from and its errors.
    fn upserted(
        &mut self,
        id: &ObjectId,
        origin: Option<Origin>,
        result: Result<(), Vec<FieldError>>,
        dirty: &mut Dirty,
    ) {
        let entry = self.entry(id);
        entry.origin = origin;
        entry.invalid = false;
        let errors = problems(result.err().unwrap_or_default(), entry.origin.as_ref(), id);
        if !errors.is_empty() {
            warn!(object = %id, errors = errors.len(), "object rejected; its last good version stays in force");
        }
        // A Secret's errors are reported only while an Ingress references it.
        if id.kind != Kind::Secret && errors != entry.errors {
            entry.errors = errors;
            dirty.problems = true;
        }
    }

    /// A Service's new translation (without endpoints) into the last-good state.
    fn put_service(&mut self, key: ObjectKey, mut service: Service, dirty: &mut Dirty) {
        let same = self.spec(&key).is_some_and(|old| {
            // Compared without endpoints (shared, so compared by pointer).
            service.endpoints = Arc::clone(&old.endpoints);
            service == *old
        });
        if !same {
            service.endpoints = Arc::from([]);
            self.specs.insert(key.clone(), Some(service));
            dirty.services.insert(key);
        }
    }

    /// An EndpointSlice's new translation into the last-good state.
    fn put_slice(&mut self, key: ObjectKey, slice: Slice, dirty: &mut Dirty) {
        if self.slices.get(&key) == Some(&slice) {
            return;
        }
        self.unlink_slice(&key, dirty);
        let names = self
            .slices_by_service
            .entry(slice.service.clone())
            .or_default();
        if let Err(at) = names.binary_search(&key.name) {
            names.insert(at, key.name.clone());
        }
        dirty.services.insert(slice.service.clone());
        self.slices.insert(key, slice);
    }

    /// Translates one object into the last-good state, marking what changed.
    /// On error nothing of the last good version is touched.
    fn translate(
        &mut self,
        id: &ObjectId,
        object: &KubeObject,
        dirty: &mut Dirty,
    ) -> Result<(), Vec<FieldError>> {
        let key = id.key();
        match object {
            KubeObject::Service(o) => self.put_service(key, translate::service(o)?, dirty),
            KubeObject::EndpointSlice(o) => {
                self.put_slice(key, translate::endpoint_slice(o)?, dirty);
            }
            KubeObject::Ingress(o) => {
                let ingress = translate::ingress(o)?;
                if put(&mut self.next.ingresses, key, ingress) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::IngressClass(o) => {
                let class = translate::ingress_class(o)?;
                if put(&mut self.next.ingress_classes, id.name.clone(), class) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::Secret(o) => {
                let state = self.secrets.entry(key).or_default();
                state.is_tls = translate::is_tls_secret(o);
                if state.is_tls {
                    match translate::tls_secret(o) {
                        Ok(cert) => {
                            state.good = Some(Arc::new(cert));
                            state.errors.clear();
                        }
                        Err(errors) => state.errors = errors,
                    }
                }
                // Whether the certificate served changed is decided when
                // references are resolved.
                dirty.ingress = true;
            }
            KubeObject::Node(o) => {
                let node = translate::node(o)?;
                if put(&mut self.next.nodes, id.name.clone(), node) {
                    dirty.objects.insert(id.clone());
                }
            }
            KubeObject::Namespace(o) => {
                let mut changed = self.next.namespaces.insert(id.name.clone()).is_none();
                let labels = o.metadata.labels.clone().unwrap_or_default();
                if labels.is_empty() {
                    changed |= self.next.namespace_labels.remove(&id.name).is_some();
                } else {
                    changed |= put(&mut self.next.namespace_labels, id.name.clone(), labels);
                }
                if changed {
                    dirty.objects.insert(id.clone());
                }
            }
            KubeObject::GatewayClass(_)
            | KubeObject::Gateway(_)
            | KubeObject::HttpRoute(_)
            | KubeObject::GrpcRoute(_)
            | KubeObject::ReferenceGrant(_) => self.translate_gateway_api(id, object, dirty)?,
        }
        Ok(())
    }

    /// [`Self::translate`] for the Gateway API kinds.
    fn translate_gateway_api(
        &mut self,
        id: &ObjectId,
        object: &KubeObject,
        dirty: &mut Dirty,
    ) -> Result<(), Vec<FieldError>> {
        let key = id.key();
        match object {
            KubeObject::GatewayClass(o) => {
                let class = translate::gateway_class(o)?;
                if put(&mut self.next.gateway_classes, id.name.clone(), class) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::Gateway(o) => {
                let gateway = translate::gateway(o)?;
                if put(&mut self.next.gateways, key, gateway) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::HttpRoute(o) => {
                let route = translate::http_route(o)?;
                if put(&mut self.next.http_routes, key, route) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::GrpcRoute(o) => {
                let route = translate::grpc_route(o)?;
                if put(&mut self.next.grpc_routes, key, route) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            KubeObject::ReferenceGrant(o) => {
                let grant = translate::reference_grant(o)?;
                if put(&mut self.next.reference_grants, key, grant) {
                    dirty.objects.insert(id.clone());
                    dirty.ingress = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn unlink_slice(&mut self, key: &ObjectKey, dirty: &mut Dirty) {
        if let Some(old) = self.slices.remove(key) {
            if let Some(names) = self.slices_by_service.get_mut(&old.service) {
                if let Ok(at) = names.binary_search(&key.name) {
                    names.remove(at);
                }
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
        let gone = match id.kind {
            Kind::Service => {
                if self.spec(&key).is_some() {
                    self.specs.insert(key.clone(), None);
                    dirty.services.insert(key);
                }
                false
            }
            Kind::EndpointSlice => {
                self.unlink_slice(&key, dirty);
                false
            }
            Kind::Ingress => {
                dirty.ingress = true;
                self.next.ingresses.remove(&key).is_some()
            }
            Kind::IngressClass => {
                dirty.ingress = true;
                self.next.ingress_classes.remove(&id.name).is_some()
            }
            Kind::Secret => {
                self.secrets.remove(&key);
                dirty.ingress = true;
                false
            }
            Kind::Node => self.next.nodes.remove(&id.name).is_some(),
            Kind::Namespace => {
                self.next.namespace_labels.remove(&id.name);
                self.next.namespaces.remove(&id.name).is_some()
            }
            Kind::GatewayClass => {
                dirty.ingress = true;
                self.next.gateway_classes.remove(&id.name).is_some()
            }
            Kind::Gateway => {
                dirty.ingress = true;
                self.next.gateways.remove(&key).is_some()
            }
            Kind::HttpRoute => {
                dirty.ingress = true;
                self.next.http_routes.remove(&key).is_some()
            }
            Kind::GrpcRoute => {
                dirty.ingress = true;
                self.next.grpc_routes.remove(&key).is_some()
            }
            Kind::ReferenceGrant => {
                dirty.ingress = true;
                self.next.reference_grants.remove(&key).is_some()
            }
        };
        if gone {
            dirty.objects.insert(id.clone());
        }
    }

    /// The last good spec of a Service: changed since the last snapshot, or
    /// published.
    fn spec(&self, key: &ServiceKey) -> Option<&Service> {
        match self.specs.get(key) {
            Some(spec) => spec.as_ref(),
            None => self.next.services.get(key).map(|s| &**s),
        }
    }

    /// The Service as consumers see it: spec plus merged endpoints.
    fn build_service(&self, key: &ServiceKey) -> Option<Service> {
        let mut service = self.spec(key)?.clone();
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

    /// Secrets referenced by some Ingress's `tls` in its own namespace or by
    /// a Gateway listener's `tls.certificateRefs` (its own namespace, or
    /// another through a ReferenceGrant), each with the first referring
    /// object and field.
    fn referenced_secrets(&self) -> BTreeMap<ObjectKey, (ObjectId, String)> {
        let mut referenced = BTreeMap::new();
        for ingress in self.next.ingresses.values() {
            for (i, tls) in ingress.tls.iter().enumerate() {
                if let Some(secret) = &tls.secret_name {
                    referenced
                        .entry(ObjectKey::new(
                            ingress.key.namespace.clone(),
                            secret.clone(),
                        ))
                        .or_insert_with(|| {
                            (
                                ingress_id(&ingress.key),
                                format!("spec.tls[{i}].secretName"),
                            )
                        });
                }
            }
        }
        for gateway in self.next.gateways.values() {
            for (l, listener) in gateway.listeners.iter().enumerate() {
                let Some(tls) = &listener.tls else { continue };
                for (c, cert) in tls.certificates.iter().enumerate() {
                    if !cert.is_secret() || !self.next.certificate_permitted(&gateway.key, cert) {
                        continue;
                    }
                    referenced.entry(cert.secret.clone()).or_insert_with(|| {
                        (
                            ObjectId {
                                kind: Kind::Gateway,
                                namespace: gateway.key.namespace.clone(),
                                name: gateway.key.name.clone(),
                            },
                            format!("spec.listeners[{l}].tls.certificateRefs[{c}]"),
                        )
                    });
                }
            }
        }
        referenced
    }

    /// Publishes the certificates of the Secrets Ingresses reference, and
    /// collects the problems of references that do not resolve and of
    /// referenced Secrets that were rejected. Returns whether problems
    /// changed; marks the Secrets whose served certificate changed.
    fn resolve_ingress(&mut self, dirty: &mut Dirty) -> bool {
        let now = SystemTime::now();
        let referenced = self.referenced_secrets();
        let mut changed = false;
        let mut reference_problems = Vec::new();
        let mut certificates = imbl::OrdMap::new();
        for (secret_key, (referrer, field)) in &referenced {
            let id = ObjectId {
                kind: Kind::Secret,
                namespace: secret_key.namespace.clone(),
                name: secret_key.name.clone(),
            };
            let state = self.secrets.get(secret_key);
            let why = match (self.entries.get(&id), state) {
                (None, _) => Some("does not exist"),
                (Some(_), Some(state)) if state.is_tls => None,
                (Some(_), _) => Some("is not a valid kubernetes.io/tls Secret"),
            };
            if let Some(why) = why {
                reference_problems.push(Problem {
                    severity: Severity::Warning,
                    origin: None,
                    object: Some(referrer.clone()),
                    error: FieldError::new(
                        field.clone(),
                        format!(
                            "Secret {secret_key} {why}; the default certificate is served instead"
                        ),
                    ),
                });
            }
            let Some(state) = state else { continue };
            if let Some(entry) = self.entries.get_mut(&id)
                && !entry.invalid
            {
                let errors = problems(state.errors.clone(), entry.origin.as_ref(), &id);
                if !errors.is_empty() && errors != entry.errors {
                    warn!(object = %id, "TLS Secret rejected; its last good version stays in force");
                }
                if errors != entry.errors {
                    entry.errors = errors;
                    changed = true;
                }
            }
            // The last good material stays in force while the Secret exists.
            let Some(cert) = &state.good else { continue };
            certificates.insert(secret_key.clone(), Arc::clone(cert));
            if cert.expired_at(now) {
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
                && !entry.invalid
            {
                entry.errors.clear();
                changed = true;
            }
        }
        if certificates != self.next.certificates {
            for (key, cert) in &certificates {
                if self
                    .next
                    .certificates
                    .get(key)
                    .is_none_or(|old| !Arc::ptr_eq(old, cert))
                {
                    dirty.objects.insert(secret_id(key));
                }
            }
            for key in self.next.certificates.keys() {
                if !certificates.contains_key(key) {
                    dirty.objects.insert(secret_id(key));
                }
            }
            self.next.certificates = certificates;
        }
        if reference_problems != self.reference_problems {
            self.reference_problems = reference_problems;
            changed = true;
        }
        changed
    }

    /// Collects a problem for each Ingress backend that names a Service
    /// which does not exist, or a port the Service does not have (the
    /// gateway answers 503 for it). Returns whether they changed.
    fn resolve_ingress_backends(&mut self) -> bool {
        let mut found = Vec::new();
        for ingress in self.next.ingresses.values() {
            let default = ingress
                .default_backend
                .iter()
                .map(|b| (b, "spec.defaultBackend".to_owned()));
            let paths = ingress.rules.iter().enumerate().flat_map(|(r, rule)| {
                rule.paths.iter().enumerate().map(move |(p, path)| {
                    (
                        &path.backend,
                        format!("spec.rules[{r}].http.paths[{p}].backend"),
                    )
                })
            });
            for (backend, field) in default.chain(paths) {
                let IngressBackend::Service { name, port } = backend else {
                    continue;
                };
                let key = ObjectKey::new(ingress.key.namespace.clone(), name.clone());
                let (field, message) = match self.next.services.get(&key) {
                    None => (
                        format!("{field}.service.name"),
                        format!("Service {key} does not exist; its requests are answered 503"),
                    ),
                    Some(service) if service.service_type == ServiceType::ExternalName => (
                        format!("{field}.service.name"),
                        format!(
                            "Service {key} is of type ExternalName, which is not proxied; \
                             its requests are answered 503"
                        ),
                    ),
                    Some(service) if !service.ports.iter().any(|p| port.selects(p)) => (
                        match port {
                            PortRef::Number(_) => format!("{field}.service.port.number"),
                            PortRef::Name(_) => format!("{field}.service.port.name"),
                        },
                        format!(
                            "Service {key} has no TCP port {port}; its requests are answered 503"
                        ),
                    ),
                    Some(_) => continue,
                };
                found.push(Problem {
                    severity: Severity::Warning,
                    origin: self
                        .entries
                        .get(&ingress_id(&ingress.key))
                        .and_then(|e| e.origin.clone()),
                    object: Some(ingress_id(&ingress.key)),
                    error: FieldError::new(field, message),
                });
            }
        }
        if found == self.backend_problems {
            return false;
        }
        self.backend_problems = found;
        true
    }

    fn publish(&mut self, dirty: &Dirty) -> u64 {
        let mut dirty_objects = dirty.objects.clone();
        let mut problems_changed = dirty.problems;
        if dirty.ingress {
            let mut resolved = Dirty::default();
            problems_changed |= self.resolve_ingress(&mut resolved);
            dirty_objects.extend(resolved.objects);
        }
        // What changed, for the log (nothing is named when everything did).
        let mut services = Vec::new();
        let mut spec_changed = false;
        for key in &dirty.services {
            let old = self.next.services.get(key);
            match (old, self.build_service(key)) {
                (Some(old), Some(new)) if **old == new => {}
                (old, Some(new)) => {
                    let change = match old {
                        Some(old) if old.same_spec(&new) => ServiceChange::Endpoints,
                        _ => ServiceChange::Spec,
                    };
                    self.next.services.insert(key.clone(), Arc::new(new));
                    spec_changed |= change == ServiceChange::Spec;
                    if !dirty.everything {
                        services.push((key.clone(), change));
                    }
                }
                (Some(_), None) => {
                    self.next.services.remove(key);
                    spec_changed = true;
                    if !dirty.everything {
                        services.push((key.clone(), ServiceChange::Spec));
                    }
                }
                (None, None) => {}
            }
        }
        self.specs.clear();
        if dirty.ingress || spec_changed {
            problems_changed |= self.resolve_ingress_backends();
        }
        if !spec_changed
            && services.is_empty()
            && dirty_objects.is_empty()
            && !problems_changed
            && !dirty.everything
        {
            return self.next.generation;
        }
        let generation = self.next.generation + 1;
        self.next.generation = generation;
        // A generation that changed everything names nothing: a reader
        // compares everything anyway, and the first sync would otherwise
        // keep a key of every object in the log for a thousand generations.
        let (services, objects) = if dirty.everything {
            (Vec::new(), Vec::new())
        } else {
            (services, dirty_objects.into_iter().collect())
        };
        self.next.log.push_back(Arc::new(Logged {
            generation,
            everything: dirty.everything,
            services,
            objects,
        }));
        while self.next.log.len() > CHANGE_LOG_LEN {
            self.next.log.pop_front();
        }
        if problems_changed {
            let mut problems: Vec<Problem> = self
                .source_problems
                .iter()
                .chain(self.entries.values().flat_map(|e| e.errors.iter()))
                .chain(self.reference_problems.iter())
                .chain(self.backend_problems.iter())
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

/// Puts `value` under `key` unless an equal value is there; whether it did.
fn put<K: Ord + Clone, V: PartialEq>(map: &mut imbl::OrdMap<K, Arc<V>>, key: K, value: V) -> bool {
    if map.get(&key).is_some_and(|old| **old == value) {
        return false;
    }
    map.insert(key, Arc::new(value));
    true
}

fn ingress_id(key: &ObjectKey) -> ObjectId {
    ObjectId {
        kind: Kind::Ingress,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn secret_id(key: &ObjectKey) -> ObjectId {
    ObjectId {
        kind: Kind::Secret,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
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
