//! The apiserver source: kube-rs watchers for every kind the model reads,
//! merged into one stream of batches that become [`Change`]s for the one
//! [`ModelWriter`]. The model is the store: no reflector store keeps a second
//! copy of the objects, except for the kinds whose status fairlead writes
//! (Ingress, GatewayClass, Gateway, HTTPRoute, GRPCRoute), whose status
//! writers need the objects as the apiserver holds them.
//!
//! - Nothing is published before every watcher has completed its first list
//!   (`InitDone`): until then each object is staged in the writer as it
//!   arrives, and the first snapshot is published once, synced.
//! - Afterwards applied and deleted objects become upserts and deletes; the
//!   events that are ready together (a burst) become one snapshot.
//! - A relist of one kind (`Init` … `InitDone`, e.g. after `410 Gone`) keeps
//!   the old state of that kind in force until the list is complete, then
//!   swaps in the kind's whole new state in one snapshot
//!   ([`ModelWriter::replace_kinds`]): objects not seen again are deleted,
//!   and the model never shows a half-empty world. Only while a relist is
//!   under way are that kind's listed objects held here.
//!
//! - The Gateway API kinds are CRDs: while the apiserver does not serve one
//!   (`404`: the CRDs are not installed yet), that kind counts as listed and
//!   empty, the other kinds are served as usual, the watcher keeps retrying
//!   with its backoff, and this is logged once. When the CRD appears, its
//!   first list swaps in like a relist.
//!
//! Translation happens in the writer, exactly as for the manifest source; this
//! module only moves objects. [`status`] publishes `status.loadBalancer` on
//! the Ingresses a gateway serves.

pub mod events;
pub mod gateway_status;
pub mod leader;
mod metrics;
pub mod status;

use foldhash::{HashSet, HashSetExt};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ::kube::api::Api;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::reflector::{self, Store, store::Writer};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::{WatchStreamExt, watcher as watch_stream};
use ::kube::{Config, Resource};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

pub use ::kube::Client;

/// The store of Ingresses the source keeps (status included), for
/// [`status::IngressStatusWriter`].
pub type IngressStore = Store<Ingress>;

use crate::error::Error;
use crate::gateway_api;
use crate::object::KubeObject;
use crate::snapshot::Snapshot;
use crate::types::{Kind, ObjectId};
use crate::writer::{Change, ModelWriter};
use metrics::Metrics;

/// Most events merged into one snapshot. A burst larger than this becomes
/// several snapshots, each consistent.
pub const MAX_BATCH: usize = 1024;

/// The field selector of the Secret watcher: only TLS Secrets are read, so the
/// source never holds other Secrets (tokens, passwords) in memory.
pub const TLS_SECRETS: &str = "type=kubernetes.io/tls";

/// The annotation `kubectl apply` writes: a second copy of the whole object
/// (for Secrets, of their keys). Dropped on arrival.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One resource of the apiserver and the verbs fairlead uses on it: what the
/// RBAC rules in `deploy/` must grant, no more and no less.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiAccess {
    /// API group (`""` is the core group).
    pub group: &'static str,
    /// Resource (plural), with `/status` for the status subresource.
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// The verbs a kube-rs watcher uses: a list, then a watch from its
/// resourceVersion (no `get`).
pub const WATCH_VERBS: &[&str] = &["list", "watch"];

/// The verbs the Ingress status writer uses on `ingresses/status` (a JSON
/// merge patch).
pub const STATUS_VERBS: &[&str] = &["patch"];

const fn watched<K: k8s_openapi::Resource>() -> ApiAccess {
    ApiAccess {
        group: K::GROUP,
        resource: K::URL_PATH_SEGMENT,
        verbs: WATCH_VERBS,
    }
}

/// What the watcher of `kind` uses.
#[must_use]
pub const fn watch_access(kind: Kind) -> ApiAccess {
    match kind {
        Kind::Service => watched::<Service>(),
        Kind::EndpointSlice => watched::<EndpointSlice>(),
        Kind::Ingress => watched::<Ingress>(),
        Kind::IngressClass => watched::<IngressClass>(),
        Kind::Secret => watched::<Secret>(),
        Kind::Node => watched::<Node>(),
        Kind::Namespace => watched::<Namespace>(),
        Kind::GatewayClass => watched::<gateway_api::GatewayClass>(),
        Kind::Gateway => watched::<gateway_api::Gateway>(),
        Kind::HttpRoute => watched::<gateway_api::HTTPRoute>(),
        Kind::GrpcRoute => watched::<gateway_api::GRPCRoute>(),
        Kind::ReferenceGrant => watched::<gateway_api::ReferenceGrant>(),
    }
}

/// What the Ingress status writer ([`status`]) uses.
pub const STATUS_ACCESS: ApiAccess = ApiAccess {
    group: <Ingress as k8s_openapi::Resource>::GROUP,
    resource: status::INGRESS_STATUS,
    verbs: STATUS_VERBS,
};

/// What the Gateway API status writer ([`gateway_status`]) uses.
pub const GATEWAY_API_STATUS_ACCESS: [ApiAccess; 4] = [
    gateway_api_status(gateway_status::GATEWAY_API_STATUS[0]),
    gateway_api_status(gateway_status::GATEWAY_API_STATUS[1]),
    gateway_api_status(gateway_status::GATEWAY_API_STATUS[2]),
    gateway_api_status(gateway_status::GATEWAY_API_STATUS[3]),
];

const fn gateway_api_status(resource: &'static str) -> ApiAccess {
    ApiAccess {
        group: gateway_api::GROUP,
        resource,
        verbs: STATUS_VERBS,
    }
}

/// Everything fairlead does on the apiserver: the watchers of this module
/// (one per [`Kind`]), the Ingress status writer, the Events of
/// [`events`] and the status leader election of [`leader`]. The RBAC rules in
/// `deploy/` are checked against this list by a test.
pub const API_ACCESS: &[ApiAccess] = &[
    watch_access(Kind::Service),
    watch_access(Kind::EndpointSlice),
    watch_access(Kind::Ingress),
    watch_access(Kind::IngressClass),
    watch_access(Kind::Namespace),
    watch_access(Kind::Secret),
    watch_access(Kind::Node),
    watch_access(Kind::GatewayClass),
    watch_access(Kind::Gateway),
    watch_access(Kind::HttpRoute),
    watch_access(Kind::GrpcRoute),
    watch_access(Kind::ReferenceGrant),
    STATUS_ACCESS,
    events::EVENTS_ACCESS,
    leader::LEASE_ACCESS,
    GATEWAY_API_STATUS_ACCESS[0],
    GATEWAY_API_STATUS_ACCESS[1],
    GATEWAY_API_STATUS_ACCESS[2],
    GATEWAY_API_STATUS_ACCESS[3],
];

/// What the apiserver source reads.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// This node's name. Its Node object (addresses, zone) is watched; without
    /// a name no Node is read.
    pub node_name: Option<String>,
    /// Read Services, EndpointSlices, Ingresses and Secrets of this namespace
    /// only (and only this Namespace object). Cluster-scoped kinds
    /// (IngressClass, Node) are read as usual.
    pub namespace: Option<String>,
}

impl KubeOptions {
    /// Checks the names that end up in field selectors.
    fn validate(&self) -> Result<(), Error> {
        let check = |setting: &'static str, value: &Option<String>| match value {
            Some(v) if !is_dns_subdomain(v) => Err(Error::InvalidSetting {
                setting,
                message: format!("{v:?} is not a valid object name (a DNS subdomain)"),
            }),
            _ => Ok(()),
        };
        check("--node-name", &self.node_name)?;
        check("--namespace", &self.namespace)
    }

    /// The kinds watched with these options.
    #[must_use]
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Node || self.node_name.is_some())
            .collect()
    }
}

/// Lower-case alphanumerics, `-` and `.`, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// An apiserver client: from `kubeconfig` when given, otherwise inferred
/// (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    // kube-rs builds its TLS config from the process-wide rustls provider;
    // ring is the only one compiled in. Installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fail = |error: &dyn std::error::Error| Error::KubeConfig {
        kubeconfig: kubeconfig.map(Path::to_path_buf),
        message: error.to_string(),
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| fail(&e))?
        }
        None => Config::infer().await.map_err(|e| fail(&e))?,
    };
    info!(apiserver = %config.cluster_url, "apiserver client configured");
    Client::try_from(config).map_err(|e| fail(&e))
}

/// A kind the source watches.
trait Watched:
    Resource<DynamicType = ()>
    + k8s_openapi::Resource
    + Clone
    + DeserializeOwned
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    const MODEL_KIND: Kind;

    /// The object as the model receives it.
    fn into_object(self) -> KubeObject;
}

macro_rules! watched {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Watched for $ty {
            const MODEL_KIND: Kind = Kind::$variant;
            fn into_object(self) -> KubeObject {
                KubeObject::$variant(Box::new(self))
            }
        }
    )*};
}

watched! {
    Service => Service,
    EndpointSlice => EndpointSlice,
    Ingress => Ingress,
    IngressClass => IngressClass,
    Secret => Secret,
    Node => Node,
    Namespace => Namespace,
    gateway_api::GatewayClass => GatewayClass,
    gateway_api::Gateway => Gateway,
    gateway_api::HTTPRoute => HttpRoute,
    gateway_api::GRPCRoute => GrpcRoute,
    gateway_api::ReferenceGrant => ReferenceGrant,
}

/// Drops what only costs memory: managed fields and the copy of the object
/// `kubectl apply` keeps in an annotation. Applied before the store.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The object as the model receives it: without what changes on every write
/// but means nothing to the model (the resourceVersion, an Ingress's status,
/// a Node's heartbeats and image list), so that such writes publish nothing.
fn for_model(object: KubeObject) -> KubeObject {
    let mut object = object;
    match &mut object {
        KubeObject::Service(o) => o.metadata.resource_version = None,
        KubeObject::EndpointSlice(o) => o.metadata.resource_version = None,
        KubeObject::Ingress(o) => {
            o.metadata.resource_version = None;
            // Written by the status writer (ours or another controller's).
            o.status = None;
        }
        KubeObject::IngressClass(o) => o.metadata.resource_version = None,
        KubeObject::Secret(o) => o.metadata.resource_version = None,
        KubeObject::Node(o) => {
            o.metadata.resource_version = None;
            if let Some(status) = &mut o.status {
                status.images = None;
                for condition in status.conditions.iter_mut().flatten() {
                    condition.last_heartbeat_time = None;
                }
            }
        }
        KubeObject::Namespace(o) => o.metadata.resource_version = None,
        // Status is written by controllers (ours or another's).
        KubeObject::GatewayClass(o) => {
            o.metadata.resource_version = None;
            o.status = None;
        }
        KubeObject::Gateway(o) => {
            o.metadata.resource_version = None;
            o.status = None;
        }
        KubeObject::HttpRoute(o) => {
            o.metadata.resource_version = None;
            o.status = None;
        }
        KubeObject::GrpcRoute(o) => {
            o.metadata.resource_version = None;
            o.status = None;
        }
        KubeObject::ReferenceGrant(o) => o.metadata.resource_version = None,
    }
    object
}

/// What one watcher said.
#[derive(Debug)]
enum Seen {
    /// A list starts (first list, or relist).
    Init,
    /// An object of the list.
    InitApply(KubeObject),
    /// The list is complete: every object of the kind not in it is gone.
    InitDone,
    /// An object was added or modified.
    Apply(KubeObject),
    /// An object was deleted.
    Delete(ObjectId),
    /// The watch failed; kube-rs retries after a backoff.
    Error(watcher::Error),
}

/// A watcher's item as the merge sees it.
fn seen<K: Watched>(item: Result<Event<K>, watcher::Error>) -> Seen {
    match item {
        Ok(Event::Init) => Seen::Init,
        Ok(Event::InitApply(object)) => Seen::InitApply(for_model(object.into_object())),
        Ok(Event::InitDone) => Seen::InitDone,
        Ok(Event::Apply(object)) => Seen::Apply(for_model(object.into_object())),
        Ok(Event::Delete(object)) => Seen::Delete(object.into_object().id()),
        Err(error) => Seen::Error(error),
    }
}

/// One item of the merged stream.
#[derive(Debug)]
struct Update {
    kind: Kind,
    seen: Seen,
}

/// The watch of one kind: watcher with backoff, slimmed objects, reflected
/// into `store` when one is given (the kinds whose status fairlead writes),
/// then tagged with the kind. The other kinds are kept by the model only.
fn watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    store: Option<Writer<K>>,
) -> BoxStream<'static, Update> {
    let events = watch_stream(api, config)
        .default_backoff()
        .map_ok(|event| event.modify(slim));
    let events = match store {
        Some(store) => events.reflect(store).boxed(),
        None => events.boxed(),
    };
    events
        .map(|item| Update {
            kind: K::MODEL_KIND,
            seen: seen(item),
        })
        .boxed()
}

fn namespaced<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Read handles of the reflector stores: only the kinds whose status
/// fairlead writes keep one (the status writers need the objects as the
/// apiserver holds them, status included). Every other kind lives in the
/// model alone.
#[derive(Clone)]
struct Stores {
    ingresses: Store<Ingress>,
    gateway_classes: Store<gateway_api::GatewayClass>,
    gateways: Store<gateway_api::Gateway>,
    http_routes: Store<gateway_api::HTTPRoute>,
    grpc_routes: Store<gateway_api::GRPCRoute>,
}

/// The writing ends of the stores, consumed by the watchers.
struct Writers {
    ingresses: Writer<Ingress>,
    gateway_classes: Writer<gateway_api::GatewayClass>,
    gateways: Writer<gateway_api::Gateway>,
    http_routes: Writer<gateway_api::HTTPRoute>,
    grpc_routes: Writer<gateway_api::GRPCRoute>,
}

fn stores() -> (Stores, Writers) {
    let (ingresses, ingresses_w) = reflector::store();
    let (gateway_classes, gateway_classes_w) = reflector::store();
    let (gateways, gateways_w) = reflector::store();
    let (http_routes, http_routes_w) = reflector::store();
    let (grpc_routes, grpc_routes_w) = reflector::store();
    (
        Stores {
            ingresses,
            gateway_classes,
            gateways,
            http_routes,
            grpc_routes,
        },
        Writers {
            ingresses: ingresses_w,
            gateway_classes: gateway_classes_w,
            gateways: gateways_w,
            http_routes: http_routes_w,
            grpc_routes: grpc_routes_w,
        },
    )
}

/// Where one watcher stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// First list under way: nothing of this kind is known yet.
    Listing,
    /// Listed; events flow.
    Watching,
    /// Listing again; the previous state stays in force until it completes.
    Relisting,
    /// The apiserver does not serve the kind (a CRD not installed): counted
    /// as listed and empty; the watcher keeps retrying.
    Absent,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Listing => "listing",
            Phase::Watching => "watching",
            Phase::Relisting => "relisting",
            Phase::Absent => "absent",
        }
    }
}

/// A list in progress.
#[derive(Debug)]
enum List {
    /// Before the model is first published: each object goes straight to
    /// the writer (staged; nothing is published before every kind is
    /// listed). The ids seen, to delete the others at `InitDone` (a list
    /// that restarted after an error).
    Staged(HashSet<ObjectId>),
    /// After: the objects wait here until `InitDone`, then replace the
    /// kind in one snapshot. The only time a kind's objects exist twice.
    Buffered(Vec<KubeObject>),
}

#[derive(Debug)]
struct KindState {
    phase: Phase,
    /// The last item was an error (kube-rs is backing off).
    failing: bool,
    /// The list under way, if any.
    list: Option<List>,
}

/// Turns batches of watcher updates into writer calls. Holds no objects
/// except those of a relist under way: the model is the store.
struct Merge {
    kinds: Vec<(Kind, KindState)>,
    /// Whether the model was published synced.
    synced: bool,
}

impl Merge {
    fn new(kinds: &[Kind]) -> Self {
        Self {
            kinds: kinds
                .iter()
                .map(|k| {
                    (
                        *k,
                        KindState {
                            phase: Phase::Listing,
                            failing: false,
                            list: None,
                        },
                    )
                })
                .collect(),
            synced: false,
        }
    }

    fn state(&mut self, kind: Kind) -> &mut KindState {
        &mut self
            .kinds
            .iter_mut()
            .find(|(k, _)| *k == kind)
            .expect("updates come only from watched kinds")
            .1
    }

    /// Applies one batch. Returns the generation published, if the writer
    /// was called to publish.
    #[allow(
        clippy::too_many_lines,
        reason = "one match over the watcher's events, each arm a few lines"
    )]
    fn handle(
        &mut self,
        batch: Vec<Update>,
        writer: &mut ModelWriter,
        metrics: &Metrics,
    ) -> Option<u64> {
        let mut changes = Vec::new();
        let mut relisted: Vec<Kind> = Vec::new();
        let synced = self.synced;
        for Update { kind, seen } in batch {
            metrics.event(kind, &seen);
            let state = self.state(kind);
            if state.failing && !matches!(seen, Seen::Error(_)) {
                state.failing = false;
                if state.phase != Phase::Absent {
                    info!(%kind, phase = state.phase.as_str(), "watch recovered");
                }
            }
            match seen {
                Seen::Init => {
                    if synced {
                        if state.phase == Phase::Watching {
                            state.phase = Phase::Relisting;
                            metrics.relist(kind);
                            warn!(%kind, "relisting (the watch expired or restarted); the current objects stay in force until the list completes");
                        }
                        state.list = Some(List::Buffered(Vec::new()));
                    } else {
                        // Nothing is published yet: wait for this list too.
                        if state.phase == Phase::Watching {
                            state.phase = Phase::Listing;
                        }
                        state.list = Some(List::Staged(HashSet::new()));
                    }
                }
                Seen::InitApply(object) => match &mut state.list {
                    Some(List::Staged(seen)) => {
                        seen.insert(object.id());
                        writer.stage(Change::Upsert {
                            object,
                            origin: None,
                        });
                    }
                    Some(List::Buffered(objects)) => objects.push(object),
                    None => changes.push(Change::Upsert {
                        object,
                        origin: None,
                    }),
                },
                Seen::InitDone => {
                    match state.list.take() {
                        Some(List::Staged(seen)) => {
                            writer.stage_retain(|id| id.kind != kind || seen.contains(id));
                        }
                        Some(List::Buffered(objects)) => {
                            changes.extend(objects.into_iter().map(|object| Change::Upsert {
                                object,
                                origin: None,
                            }));
                            if !relisted.contains(&kind) {
                                relisted.push(kind);
                            }
                        }
                        None => {}
                    }
                    let objects = writer.objects(kind);
                    match state.phase {
                        Phase::Listing => info!(%kind, objects, "initial list complete; watching"),
                        Phase::Relisting => {
                            info!(%kind, "relist complete; swapping in the new state");
                        }
                        Phase::Absent => {
                            info!(%kind, "the apiserver serves this kind now (CRD installed); watching");
                        }
                        Phase::Watching => {}
                    }
                    state.phase = Phase::Watching;
                }
                Seen::Apply(object) => {
                    let change = Change::Upsert {
                        object,
                        origin: None,
                    };
                    if synced {
                        changes.push(change);
                    } else {
                        writer.stage(change);
                    }
                }
                Seen::Delete(id) => {
                    if synced {
                        changes.push(Change::Delete(id));
                    } else {
                        writer.stage(Change::Delete(id));
                    }
                }
                Seen::Error(error) => watch_error(kind, state, &error),
            }
        }
        for (kind, state) in &self.kinds {
            metrics.set_state(*kind, state.phase, state.failing);
            metrics.set_objects(*kind, writer.objects(*kind));
        }

        if !synced {
            if self.kinds.iter().any(|(_, s)| s.phase == Phase::Listing) {
                return None;
            }
            if self.kinds.iter().any(|(k, _)| *k == Kind::Node) && writer.objects(Kind::Node) == 0 {
                warn!(
                    "this node's Node object does not exist (check --node-name): node addresses and zone stay unknown until it appears"
                );
            }
            let generation = writer.set_synced();
            self.synced = true;
            let objects: usize = self.kinds.iter().map(|(k, _)| writer.objects(*k)).sum();
            info!(objects, generation, "model synced from the apiserver");
            return Some(generation);
        }
        if relisted.is_empty() {
            if changes.is_empty() {
                return None;
            }
            debug!(changes = changes.len(), "applying watch events");
            return Some(writer.apply(changes));
        }
        // The relisted kinds' objects are upserted in `changes`, before any
        // event of theirs that came after the list in this batch.
        Some(writer.replace_kinds(&relisted, changes))
    }
}

/// Records a watch error of `kind`; kube-rs retries it with backoff.
fn watch_error(kind: Kind, state: &mut KindState, error: &watcher::Error) {
    if kind.gateway_api()
        && is_not_found(error)
        && matches!(state.phase, Phase::Listing | Phase::Absent)
    {
        if state.phase == Phase::Listing {
            warn!(%kind, %error, "the apiserver does not serve this kind: the Gateway API CRDs (standard channel, v1) are not installed; serving without it and retrying with backoff");
            state.phase = Phase::Absent;
        } else {
            debug!(%kind, %error, "still not served; retrying");
        }
        // Absent is a state, not a failure.
        state.failing = false;
        return;
    }
    state.failing = true;
    let hint = if is_forbidden(error) {
        " (forbidden: check the RBAC rules of fairlead's service account)"
    } else {
        ""
    };
    warn!(%kind, %error, "watch failed{hint}; retrying with backoff");
}

fn is_forbidden(error: &watcher::Error) -> bool {
    error_code(error) == Some(403)
}

/// A `404` on the list or watch: the resource is not served (CRD missing).
fn is_not_found(error: &watcher::Error) -> bool {
    error_code(error) == Some(404)
}

fn error_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            ::kube::Error::Api(status) => Some(status.code),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::NoResourceVersion => None,
    }
}

/// Called with every snapshot the source publishes.
type Observer = Box<dyn FnMut(&Arc<Snapshot>) + Send>;

/// The apiserver source. Create it with [`KubeSource::new`] (which registers
/// its metrics), hand [`KubeSource::ingresses`] to the Ingress status writer
/// if one runs, then [`KubeSource::run`] it.
pub struct KubeSource {
    options: KubeOptions,
    kinds: Vec<Kind>,
    stores: Stores,
    writers: Writers,
    metrics: Metrics,
    observer: Option<Observer>,
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// A source with these options; its metrics (`watch_*`, `objects`) go
    /// into `registry` (the caller picks the prefix, e.g. `fairlead_kube`).
    pub fn new(options: KubeOptions, registry: &mut Registry) -> Result<Self, Error> {
        options.validate()?;
        let kinds = options.kinds();
        let (stores, writers) = stores();
        Ok(Self {
            metrics: Metrics::register(registry, &kinds),
            options,
            kinds,
            stores,
            writers,
            observer: None,
        })
    }

    /// The kinds this source watches.
    #[must_use]
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// A read handle of the Ingress store, for the status writer: the full
    /// objects, status included, as last seen by the watch.
    #[must_use]
    pub fn ingresses(&self) -> IngressStore {
        self.stores.ingresses.clone()
    }

    /// Read handles of the Gateway API stores, for the Gateway API status
    /// writer ([`gateway_status::GatewayStatusWriter`]).
    #[must_use]
    pub fn gateway_api(&self) -> gateway_status::GatewayApiStores {
        gateway_status::GatewayApiStores {
            classes: self.stores.gateway_classes.clone(),
            gateways: self.stores.gateways.clone(),
            http_routes: self.stores.http_routes.clone(),
            grpc_routes: self.stores.grpc_routes.clone(),
        }
    }

    /// Calls `observer` with every snapshot this source publishes, right
    /// after publishing it (the watch channel only keeps the latest).
    #[must_use]
    pub fn on_publish(mut self, observer: impl FnMut(&Arc<Snapshot>) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Watches the apiserver and feeds `writer` until `writer` has no
    /// receivers left. Watch errors are retried with kube-rs's default
    /// backoff (0.8 s doubling to 30 s); they never end the source.
    pub async fn run(self, client: Client, mut writer: ModelWriter) -> Result<(), Error> {
        let Self {
            options,
            kinds,
            stores: _,
            writers,
            metrics,
            mut observer,
        } = self;
        let span = info_span!(
            "apiserver",
            namespace = options.namespace.as_deref().unwrap_or("*"),
            node = options.node_name.as_deref().unwrap_or("-")
        );
        async move {
            let streams = watchers(&client, &options, writers);
            info!(
                kinds = ?kinds,
                "watching the apiserver; nothing is published before every initial list completes"
            );
            let mut batches = futures::stream::select_all(streams).ready_chunks(MAX_BATCH);
            let mut merge = Merge::new(&kinds);
            while let Some(batch) = batches.next().await {
                let before = writer.snapshot().generation;
                if let Some(generation) = merge.handle(batch, &mut writer, &metrics)
                    && generation != before
                    && let Some(observer) = &mut observer
                {
                    observer(&writer.snapshot());
                }
                if !writer.has_consumers() {
                    info!("no consumer of the model is left; stopping");
                    return Ok(());
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// One watch per kind, over `client`.
fn watchers(
    client: &Client,
    options: &KubeOptions,
    writers: Writers,
) -> Vec<BoxStream<'static, Update>> {
    let ns = options.namespace.as_deref();
    let config = watcher::Config::default;
    let by_name = |name: &str| config().fields(&format!("metadata.name={name}"));
    let mut streams = vec![
        watch(namespaced::<Service>(client, ns), config(), None),
        watch(namespaced::<EndpointSlice>(client, ns), config(), None),
        watch(
            namespaced::<Ingress>(client, ns),
            config(),
            Some(writers.ingresses),
        ),
        watch(Api::<IngressClass>::all(client.clone()), config(), None),
        watch(
            namespaced::<Secret>(client, ns),
            config().fields(TLS_SECRETS),
            None,
        ),
        watch(
            Api::<Namespace>::all(client.clone()),
            ns.map_or_else(config, by_name),
            None,
        ),
    ];
    if let Some(node) = &options.node_name {
        streams.push(watch(Api::<Node>::all(client.clone()), by_name(node), None));
    }
    streams.extend([
        watch(
            Api::<gateway_api::GatewayClass>::all(client.clone()),
            config(),
            Some(writers.gateway_classes),
        ),
        watch(
            namespaced::<gateway_api::Gateway>(client, ns),
            config(),
            Some(writers.gateways),
        ),
        watch(
            namespaced::<gateway_api::HTTPRoute>(client, ns),
            config(),
            Some(writers.http_routes),
        ),
        watch(
            namespaced::<gateway_api::GRPCRoute>(client, ns),
            config(),
            Some(writers.grpc_routes),
        ),
        watch(
            namespaced::<gateway_api::ReferenceGrant>(client, ns),
            config(),
            None,
        ),
    ]);
    streams
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "demo", "resourceVersion": "7"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": port}]},
        }))
        .unwrap()
    }

    struct Harness {
        merge: Merge,
        writer: ModelWriter,
        metrics: Metrics,
        rx: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    }

    impl Harness {
        fn new(kinds: &[Kind]) -> Self {
            let (writer, rx) = ModelWriter::new();
            Self {
                merge: Merge::new(kinds),
                writer,
                metrics: Metrics::register(&mut Registry::default(), kinds),
                rx,
            }
        }

        /// Hands a batch of Service events to the merge.
        fn services(&mut self, events: Vec<Event<Service>>) -> Option<u64> {
            let batch = events
                .into_iter()
                .map(|event| Update {
                    kind: Kind::Service,
                    seen: seen(Ok(event)),
                })
                .collect();
            self.merge.handle(batch, &mut self.writer, &self.metrics)
        }

        fn names(&self) -> Vec<String> {
            self.rx
                .borrow()
                .services
                .keys()
                .map(|k| k.name.clone())
                .collect()
        }
    }

    #[test]
    fn nothing_is_published_before_every_kind_is_listed() {
        let mut h = Harness::new(&[Kind::Service, Kind::Namespace]);
        let published = h.services(vec![
            Event::Init,
            Event::InitApply(service("a", 80)),
            Event::InitDone,
            Event::Apply(service("b", 80)),
        ]);
        assert_eq!(published, None);
        assert_eq!(h.rx.borrow().generation, 0);
        let published = h.merge.handle(
            vec![
                Update {
                    kind: Kind::Namespace,
                    seen: Seen::Init,
                },
                Update {
                    kind: Kind::Namespace,
                    seen: Seen::InitDone,
                },
            ],
            &mut h.writer,
            &h.metrics,
        );
        assert_eq!(published, Some(1));
        assert!(h.rx.borrow().synced);
        assert_eq!(h.names(), ["a", "b"]);
    }

    #[test]
    fn a_relist_replaces_the_kind_in_one_snapshot_with_later_events_of_the_batch() {
        let mut h = Harness::new(&[Kind::Service]);
        h.services(vec![
            Event::Init,
            Event::InitApply(service("a", 80)),
            Event::InitApply(service("b", 80)),
            Event::InitDone,
        ]);
        assert_eq!(h.names(), ["a", "b"]);
        let generation = h.rx.borrow().generation;
        // The relist starts: nothing changes until it completes.
        assert_eq!(
            h.services(vec![Event::Init, Event::InitApply(service("a", 81))]),
            None
        );
        assert_eq!(h.names(), ["a", "b"]);
        // Completes (b gone, c new), and an event after it in the same batch.
        h.services(vec![
            Event::InitApply(service("c", 80)),
            Event::InitDone,
            Event::Apply(service("d", 80)),
        ]);
        let snapshot = h.rx.borrow().clone();
        assert_eq!(snapshot.generation, generation + 1, "one snapshot");
        assert_eq!(h.names(), ["a", "c", "d"]);
        assert_eq!(snapshot.service("demo", "a").unwrap().ports[0].port, 81);
    }

    #[test]
    fn a_list_restarted_before_the_first_sync_keeps_only_what_the_last_list_saw() {
        let mut h = Harness::new(&[Kind::Service]);
        assert_eq!(
            h.services(vec![
                Event::Init,
                Event::InitApply(service("a", 80)),
                Event::InitApply(service("x", 80)),
            ]),
            None
        );
        // The list fails half-way; the watcher lists again from scratch.
        let failed = h.merge.handle(
            vec![Update {
                kind: Kind::Service,
                seen: Seen::Error(watcher::Error::NoResourceVersion),
            }],
            &mut h.writer,
            &h.metrics,
        );
        assert_eq!(failed, None);
        assert_eq!(h.rx.borrow().generation, 0, "nothing published yet");
        let published = h.services(vec![
            Event::Init,
            Event::InitApply(service("a", 81)),
            Event::InitApply(service("b", 80)),
            Event::InitDone,
        ]);
        assert_eq!(published, Some(1), "one snapshot for the whole first list");
        assert_eq!(h.names(), ["a", "b"]);
        assert_eq!(h.writer.objects(Kind::Service), 2);
        assert_eq!(
            h.rx.borrow().service("demo", "a").unwrap().ports[0].port,
            81
        );
    }

    #[test]
    fn a_relist_prunes_what_it_did_not_see_again_and_counts_objects() {
        let mut h = Harness::new(&[Kind::Service]);
        h.services(vec![
            Event::Init,
            Event::InitApply(service("a", 80)),
            Event::InitApply(service("b", 80)),
            Event::InitApply(service("c", 80)),
            Event::InitDone,
        ]);
        assert_eq!(h.writer.objects(Kind::Service), 3);
        // A relist spread over batches, with an empty list in the end.
        assert_eq!(h.services(vec![Event::Init]), None);
        assert_eq!(h.services(vec![Event::InitApply(service("b", 80))]), None);
        assert_eq!(h.names(), ["a", "b", "c"]);
        h.services(vec![Event::InitDone]);
        assert_eq!(h.names(), ["b"]);
        assert_eq!(h.writer.objects(Kind::Service), 1);
        h.services(vec![Event::Init, Event::InitDone]);
        assert!(h.names().is_empty());
        assert_eq!(h.writer.objects(Kind::Service), 0);
    }

    #[test]
    fn events_after_sync_become_one_snapshot_per_batch() {
        let mut h = Harness::new(&[Kind::Service]);
        h.services(vec![
            Event::Init,
            Event::InitApply(service("a", 80)),
            Event::InitDone,
        ]);
        let generation = h.rx.borrow().generation;
        h.services(vec![
            Event::Apply(service("b", 80)),
            Event::Apply(service("a", 90)),
            Event::Delete(service("b", 80)),
        ]);
        assert_eq!(h.rx.borrow().generation, generation + 1);
        assert_eq!(h.names(), ["a"]);
        // The same content again (a new resourceVersion only) publishes nothing.
        let mut again = service("a", 90);
        again.metadata.resource_version = Some("99".to_owned());
        h.services(vec![Event::Apply(again)]);
        assert_eq!(h.rx.borrow().generation, generation + 1);
    }

    fn access<K: Watched>() -> (Kind, &'static str, &'static str) {
        (K::MODEL_KIND, K::GROUP, K::URL_PATH_SEGMENT)
    }

    #[test]
    fn api_access_names_every_watched_kind_and_only_them() {
        let watched: Vec<(Kind, &str, &str)> = vec![
            access::<Service>(),
            access::<EndpointSlice>(),
            access::<Ingress>(),
            access::<IngressClass>(),
            access::<Secret>(),
            access::<Node>(),
            access::<Namespace>(),
            access::<gateway_api::GatewayClass>(),
            access::<gateway_api::Gateway>(),
            access::<gateway_api::HTTPRoute>(),
            access::<gateway_api::GRPCRoute>(),
            access::<gateway_api::ReferenceGrant>(),
        ];
        let mut kinds: Vec<Kind> = watched.iter().map(|w| w.0).collect();
        kinds.sort();
        let mut all: Vec<Kind> = Kind::ALL.to_vec();
        all.sort();
        assert_eq!(kinds, all, "one watcher per kind of the model");
        for (kind, group, resource) in &watched {
            let access = watch_access(*kind);
            assert_eq!((access.group, access.resource), (*group, *resource));
        }
        let mut expected: Vec<(&str, &str, &[&str])> = watched
            .iter()
            .map(|(_, group, resource)| (*group, *resource, WATCH_VERBS))
            .collect();
        expected.push(("networking.k8s.io", "ingresses/status", STATUS_VERBS));
        expected.push(("events.k8s.io", "events", &["create", "patch"]));
        expected.push((
            "coordination.k8s.io",
            "leases",
            &["create", "get", "update"],
        ));
        for resource in gateway_status::GATEWAY_API_STATUS {
            expected.push((gateway_api::GROUP, resource, STATUS_VERBS));
        }
        expected.sort();
        let mut actual: Vec<(&str, &str, &[&str])> = API_ACCESS
            .iter()
            .map(|a| (a.group, a.resource, a.verbs))
            .collect();
        actual.sort();
        assert_eq!(actual, expected);
    }

    #[test]
    fn names_in_field_selectors_are_checked() {
        for bad in ["", "Node-A", "a,b", "a=b", "-a", "a b"] {
            let options = KubeOptions {
                node_name: Some(bad.to_owned()),
                namespace: None,
            };
            assert!(options.validate().is_err(), "{bad:?}");
        }
        let options = KubeOptions {
            node_name: Some("node-a.example".to_owned()),
            namespace: Some("shop".to_owned()),
        };
        assert!(options.validate().is_ok());
        assert_eq!(options.kinds().len(), Kind::ALL.len());
        assert!(!KubeOptions::default().kinds().contains(&Kind::Node));
    }
}
