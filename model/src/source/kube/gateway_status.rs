//! Gateway API status written back: the conditions
//! [`crate::gateway_status::compute`] derives from the model, as JSON merge
//! patches on the status subresources of the GatewayClasses of our
//! controller, their Gateways, and the routes naming them, with
//! `observedGeneration` from the object and `lastTransitionTime` kept while
//! a condition's status stays the same. A route's entries for other
//! controllers are kept. Only differences are written.
//!
//! Runs beside the Ingress status writer ([`super::status`]) and like it:
//! only on a synced model, on every change of a Gateway API kind, a Service
//! or a Secret, and every resync.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::reflector::Store;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Client;
use super::status::{FIELD_MANAGER, RETRY};
use crate::error::Error;
use crate::gateway_api as wire;
use crate::gateway_status::{GatewayApiStatus, RouteParentStatus, Serving, StatusCondition};
use crate::snapshot::Snapshot;
use crate::types::{Kind, ObjectKey};

/// The status subresources the writer patches (see [`super::API_ACCESS`]).
pub const GATEWAY_API_STATUS: [&str; 4] = [
    "gatewayclasses/status",
    "gateways/status",
    "httproutes/status",
    "grpcroutes/status",
];

/// Read handles of the Gateway API stores of the apiserver source.
#[derive(Clone)]
pub struct GatewayApiStores {
    pub(super) classes: Store<wire::GatewayClass>,
    pub(super) gateways: Store<wire::Gateway>,
    pub(super) http_routes: Store<wire::HTTPRoute>,
    pub(super) grpc_routes: Store<wire::GRPCRoute>,
}

impl fmt::Debug for GatewayApiStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayApiStores").finish_non_exhaustive()
    }
}

/// One status write.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayStatusPatch {
    /// GatewayClass, Gateway, HTTPRoute or GRPCRoute.
    pub kind: Kind,
    /// Namespace (empty for a GatewayClass) and name.
    pub key: ObjectKey,
    /// The JSON merge patch of the status subresource.
    pub body: Value,
}

fn wire_conditions(
    desired: &[StatusCondition],
    current: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == status)
                .map_or_else(|| now.clone(), |old| old.last_transition_time.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

fn route_parents(
    desired: &[RouteParentStatus],
    current: &[wire::RouteParentStatus],
    controller: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<wire::RouteParentStatus> {
    let mut parents: Vec<wire::RouteParentStatus> = current
        .iter()
        .filter(|p| p.controller_name != controller)
        .cloned()
        .collect();
    for p in desired {
        let parent_ref = wire::ParentReference {
            group: Some(wire::GROUP.to_owned()),
            kind: Some("Gateway".to_owned()),
            namespace: Some(p.parent.gateway.namespace.clone()),
            name: p.parent.gateway.name.clone(),
            section_name: p.parent.section_name.clone(),
            port: p.parent.port.map(i32::from),
        };
        let old = current
            .iter()
            .find(|c| c.controller_name == controller && c.parent_ref == parent_ref)
            .map(|c| c.conditions.as_slice())
            .unwrap_or_default();
        parents.push(wire::RouteParentStatus {
            conditions: wire_conditions(&p.conditions, old, generation, now),
            parent_ref,
            controller_name: controller.to_owned(),
        });
    }
    parents
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn plan_gateways(
    status: &GatewayApiStatus,
    stores: &GatewayApiStores,
    now: &Time,
    patches: &mut Vec<GatewayStatusPatch>,
) {
    for gateway in stores.gateways.state() {
        let key = key_of(&gateway.metadata);
        let Some(desired) = status.gateways.get(&key) else {
            continue;
        };
        let current = gateway.status.clone().unwrap_or_default();
        let generation = gateway.metadata.generation;
        let listeners: Vec<wire::ListenerStatus> = desired
            .listeners
            .iter()
            .map(|l| {
                let old = current
                    .listeners
                    .iter()
                    .find(|o| o.name == l.name)
                    .map(|o| o.conditions.as_slice())
                    .unwrap_or_default();
                wire::ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l
                        .supported_kinds
                        .iter()
                        .map(|k| wire::RouteGroupKind {
                            group: Some(wire::GROUP.to_owned()),
                            kind: (*k).to_owned(),
                        })
                        .collect(),
                    attached_routes: l.attached_routes,
                    conditions: wire_conditions(&l.conditions, old, generation, now),
                }
            })
            .collect();
        let next = wire::GatewayStatus {
            conditions: wire_conditions(&desired.conditions, &current.conditions, generation, now),
            listeners,
        };
        if next != current {
            patches.push(GatewayStatusPatch {
                kind: Kind::Gateway,
                key,
                body: json!({"status": {"conditions": next.conditions, "listeners": next.listeners}}),
            });
        }
    }
}

/// The writes that bring the objects in `stores` to `status` (for
/// `controller`), at time `now`.
#[must_use]
pub fn plan(
    status: &GatewayApiStatus,
    stores: &GatewayApiStores,
    controller: &str,
    now: &Time,
) -> Vec<GatewayStatusPatch> {
    let mut patches = Vec::new();
    for class in stores.classes.state() {
        let Some(desired) = class
            .metadata
            .name
            .as_ref()
            .and_then(|n| status.classes.get(n))
        else {
            continue;
        };
        let current = class.status.as_ref().map(|s| s.conditions.as_slice());
        let conditions = wire_conditions(
            desired,
            current.unwrap_or_default(),
            class.metadata.generation,
            now,
        );
        if current != Some(conditions.as_slice()) {
            patches.push(GatewayStatusPatch {
                kind: Kind::GatewayClass,
                key: ObjectKey::new("", class.metadata.name.clone().unwrap_or_default()),
                body: json!({"status": {"conditions": conditions}}),
            });
        }
    }
    plan_gateways(status, stores, now, &mut patches);
    let routes = stores
        .http_routes
        .state()
        .into_iter()
        .map(|r| (Kind::HttpRoute, r.metadata.clone(), r.status.clone()))
        .chain(
            stores
                .grpc_routes
                .state()
                .into_iter()
                .map(|r| (Kind::GrpcRoute, r.metadata.clone(), r.status.clone())),
        );
    for (kind, meta, current) in routes {
        let key = key_of(&meta);
        let map = if kind == Kind::HttpRoute {
            &status.http_routes
        } else {
            &status.grpc_routes
        };
        let current = current.unwrap_or_default();
        let desired = map.get(&key).map(Vec::as_slice).unwrap_or_default();
        let ours = current
            .parents
            .iter()
            .any(|p| p.controller_name == controller);
        if desired.is_empty() && !ours {
            continue;
        }
        let parents = route_parents(desired, &current.parents, controller, meta.generation, now);
        if parents != current.parents {
            patches.push(GatewayStatusPatch {
                kind,
                key,
                body: json!({"status": {"parents": parents}}),
            });
        }
    }
    patches
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PatchLabels {
    kind: &'static str,
    result: &'static str,
}

/// Writes the Gateway API status; see the module documentation.
pub struct GatewayStatusWriter {
    stores: GatewayApiStores,
    serving: Serving,
    resync: Duration,
    /// Objects patched, with the resourceVersion the store held then.
    pending: BTreeMap<(Kind, ObjectKey), Option<String>>,
    patches: Family<PatchLabels, Counter>,
    /// Whether this replica writes (the status Lease).
    leader: super::leader::StatusLeader,
}

impl fmt::Debug for GatewayStatusWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayStatusWriter")
            .field("serving", &self.serving)
            .finish_non_exhaustive()
    }
}

impl GatewayStatusWriter {
    /// A writer over the source's Gateway API stores; its metric
    /// (`gateway_api_status_patches`) goes into `registry`.
    pub fn new(
        stores: GatewayApiStores,
        serving: Serving,
        resync: Duration,
        registry: &mut Registry,
    ) -> Self {
        let patches = Family::<PatchLabels, Counter>::default();
        registry.register(
            "gateway_api_status_patches",
            "Gateway API status writes, by kind and result (ok, error)",
            patches.clone(),
        );
        Self {
            stores,
            serving,
            resync,
            pending: BTreeMap::new(),
            patches,
            leader: super::leader::StatusLeader::always(),
        }
    }

    /// Writes only while `leader` says this replica leads (see
    /// [`super::leader`]); without it, always.
    #[must_use]
    pub fn with_leader(mut self, leader: super::leader::StatusLeader) -> Self {
        self.leader = leader;
        self
    }

    /// Reconciles on every synced model change of a kind the status
    /// depends on, and every resync, until the model's sender is dropped.
    pub async fn run(
        mut self,
        client: Client,
        mut model: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<(), Error> {
        let span = info_span!("gateway_api_status", controller = %self.serving.controller);
        async move {
            info!("writing Gateway API status");
            let mut served = None;
            let mut deadline = tokio::time::Instant::now();
            // The gateway's listening sockets: a change is due at once.
            let mut sockets = self.serving.listen_failures.subscribe();
            loop {
                let snapshot = model.borrow_and_update().clone();
                if !snapshot.synced {
                    if model.changed().await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                if !self.leader.is_leader() {
                    // Another replica writes; once this one leads, it
                    // reconciles everything.
                    served = None;
                    tokio::select! {
                        changed = model.changed() => if changed.is_err() { return Ok(()) },
                        () = self.leader.until_leader() => {}
                    }
                    continue;
                }
                let due = snapshot.changes_since(served).touches(&[
                    Kind::GatewayClass,
                    Kind::Gateway,
                    Kind::HttpRoute,
                    Kind::GrpcRoute,
                    Kind::ReferenceGrant,
                    Kind::Secret,
                    Kind::Service,
                    Kind::Namespace,
                ]) || tokio::time::Instant::now() >= deadline;
                if due {
                    served = Some(snapshot.generation);
                    let failures = self.reconcile(&client, &snapshot).await;
                    deadline = tokio::time::Instant::now()
                        + if failures > 0 { RETRY } else { self.resync };
                }
                tokio::select! {
                    changed = model.changed() => if changed.is_err() { return Ok(()) },
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.leader.changed() => {}
                    Ok(()) = sockets.changed() => deadline = tokio::time::Instant::now(),
                }
            }
        }
        .instrument(span)
        .await
    }

    fn version(&self, kind: Kind, key: &ObjectKey) -> Option<String> {
        let find = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            key_of(meta) == *key
        };
        match kind {
            Kind::GatewayClass => self
                .stores
                .classes
                .state()
                .into_iter()
                .find(|o| o.metadata.name.as_deref() == Some(key.name.as_str()))
                .and_then(|o| o.metadata.resource_version.clone()),
            Kind::Gateway => self
                .stores
                .gateways
                .state()
                .into_iter()
                .find(|o| find(&o.metadata))
                .and_then(|o| o.metadata.resource_version.clone()),
            Kind::HttpRoute => self
                .stores
                .http_routes
                .state()
                .into_iter()
                .find(|o| find(&o.metadata))
                .and_then(|o| o.metadata.resource_version.clone()),
            _ => self
                .stores
                .grpc_routes
                .state()
                .into_iter()
                .find(|o| find(&o.metadata))
                .and_then(|o| o.metadata.resource_version.clone()),
        }
    }

    /// One pass: computes, plans against the stores and writes. Returns
    /// the number of failed writes.
    pub async fn reconcile(&mut self, client: &Client, snapshot: &Snapshot) -> usize {
        let status = crate::gateway_status::compute(snapshot, &self.serving);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let pending: Vec<(Kind, ObjectKey)> = self.pending.keys().cloned().collect();
        for (kind, key) in pending {
            if self.version(kind, &key) != self.pending[&(kind, key.clone())] {
                self.pending.remove(&(kind, key));
            }
        }
        let patches = plan(&status, &self.stores, &self.serving.controller, &now);
        let mut failures = 0;
        for patch in patches {
            if self.pending.contains_key(&(patch.kind, patch.key.clone())) {
                debug!(kind = %patch.kind, object = %patch.key, "the store has not seen the last write yet");
                continue;
            }
            let version = self.version(patch.kind, &patch.key);
            match self.write(client, &patch).await {
                Ok(()) => {
                    self.pending.insert((patch.kind, patch.key), version);
                }
                Err(error) => {
                    failures += 1;
                    warn!(kind = %patch.kind, object = %patch.key, %error, "writing the Gateway API status failed; retrying in {RETRY:?}");
                }
            }
        }
        failures
    }

    async fn write(&self, client: &Client, patch: &GatewayStatusPatch) -> Result<(), Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let body = Patch::Merge(&patch.body);
        let name = &patch.key.name;
        let ns = &patch.key.namespace;
        let result = match patch.kind {
            Kind::GatewayClass => Api::<wire::GatewayClass>::all(client.clone())
                .patch_status(name, &params, &body)
                .await
                .map(drop),
            Kind::Gateway => Api::<wire::Gateway>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &body)
                .await
                .map(drop),
            Kind::HttpRoute => Api::<wire::HTTPRoute>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &body)
                .await
                .map(drop),
            _ => Api::<wire::GRPCRoute>::namespaced(client.clone(), ns)
                .patch_status(name, &params, &body)
                .await
                .map(drop),
        };
        self.patches
            .get_or_create(&PatchLabels {
                kind: patch.kind.as_str(),
                result: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        result?;
        info!(kind = %patch.kind, object = %patch.key, "Gateway API status written");
        Ok(())
    }
}
