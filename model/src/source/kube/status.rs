//! Ingress status, as ingress-nginx publishes it: the gateway writes its
//! addresses into `status.loadBalancer.ingress` of every Ingress it serves
//! and clears them from the Ingresses it stops serving.
//!
//! A reconciler over the model (which Ingresses are served: class selection
//! by [`Snapshot::ingresses_for_class`]) and the Ingress store of the
//! apiserver source (what the status is now). It writes a JSON merge patch
//! on the status subresource, only when the status differs, and never
//! touches an Ingress it neither serves nor wrote before (another
//! controller's).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::reflector::Store;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Client;
use crate::error::Error;
use crate::snapshot::Snapshot;
use crate::types::{Kind, ObjectKey};

/// The subresource the status writer patches (see [`super::API_ACCESS`]).
pub const INGRESS_STATUS: &str = "ingresses/status";

/// The field manager named in every patch.
pub const FIELD_MANAGER: &str = "fairlead";

/// How often the status of every served Ingress is compared again, so that a
/// status overwritten by someone else is restored.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// Retry delay after a failed patch.
pub const RETRY: Duration = Duration::from_secs(5);

/// One address published in an Ingress status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusAddress {
    /// An IP address (`ip:`).
    Ip(IpAddr),
    /// A DNS name (`hostname:`), e.g. of a cloud load balancer.
    Hostname(String),
}

impl fmt::Display for StatusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusAddress::Ip(ip) => ip.fmt(f),
            StatusAddress::Hostname(name) => f.write_str(name),
        }
    }
}

impl FromStr for StatusAddress {
    type Err = String;

    /// An IP address, or a lower-case DNS name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse() {
            return Ok(StatusAddress::Ip(ip));
        }
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if valid {
            Ok(StatusAddress::Hostname(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is neither an IP address nor a lower-case DNS name"
            ))
        }
    }
}

impl StatusAddress {
    fn to_status(&self) -> IngressLoadBalancerIngress {
        match self {
            StatusAddress::Ip(ip) => IngressLoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..IngressLoadBalancerIngress::default()
            },
            StatusAddress::Hostname(name) => IngressLoadBalancerIngress {
                hostname: Some(name.clone()),
                ..IngressLoadBalancerIngress::default()
            },
        }
    }
}

/// Which addresses the gateway publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusAddresses {
    /// These addresses, as configured.
    Fixed(Vec<StatusAddress>),
    /// The addresses of the gateway's Service: its load-balancer IPs, else
    /// its external IPs (ingress-nginx's `--publish-service`).
    Service(ObjectKey),
    /// A node's ExternalIPs, else its InternalIPs. Only for a single gateway
    /// instance: several instances on different nodes would overwrite each
    /// other's status.
    Node(String),
}

impl StatusAddresses {
    /// The addresses to publish now, sorted. Empty when the Service or Node
    /// is unknown or has no address yet: then nothing is written.
    #[must_use]
    pub fn resolve(&self, snapshot: &Snapshot) -> Vec<StatusAddress> {
        let mut addresses: Vec<StatusAddress> = match self {
            StatusAddresses::Fixed(list) => list.clone(),
            StatusAddresses::Service(key) => snapshot
                .services
                .get(key)
                .map(|s| {
                    if s.load_balancer_ips.is_empty() {
                        s.external_ips.clone()
                    } else {
                        s.load_balancer_ips.clone()
                    }
                })
                .unwrap_or_default()
                .into_iter()
                .map(StatusAddress::Ip)
                .collect(),
            StatusAddresses::Node(name) => snapshot
                .nodes
                .get(name)
                .map(|n| {
                    if n.external_ips.is_empty() {
                        n.internal_ips.clone()
                    } else {
                        n.external_ips.clone()
                    }
                })
                .unwrap_or_default()
                .into_iter()
                .map(StatusAddress::Ip)
                .collect(),
        };
        addresses.sort();
        addresses.dedup();
        addresses
    }
}

/// What the status writer does.
#[derive(Clone, Debug)]
pub struct IngressStatusConfig {
    /// The IngressClass the gateway serves.
    pub class: String,
    /// The addresses it publishes.
    pub addresses: StatusAddresses,
    /// How often every status is compared again ([`DEFAULT_RESYNC`]).
    pub resync: Duration,
}

/// One status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPatch {
    /// The Ingress.
    pub ingress: ObjectKey,
    /// The addresses to publish; empty clears the status.
    pub addresses: Vec<StatusAddress>,
}

impl StatusPatch {
    /// The JSON merge patch of the status subresource.
    #[must_use]
    pub fn body(&self) -> serde_json::Value {
        if self.addresses.is_empty() {
            json!({"status": {"loadBalancer": {"ingress": null}}})
        } else {
            let list: Vec<IngressLoadBalancerIngress> = self
                .addresses
                .iter()
                .map(StatusAddress::to_status)
                .collect();
            json!({"status": {"loadBalancer": {"ingress": list}}})
        }
    }
}

/// The status an Ingress holds now.
fn current_status(ingress: &Ingress) -> &[IngressLoadBalancerIngress] {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

fn key_of(ingress: &Ingress) -> ObjectKey {
    ObjectKey::new(
        ingress.metadata.namespace.clone().unwrap_or_default(),
        ingress.metadata.name.clone().unwrap_or_default(),
    )
}

/// The writes that bring the Ingresses in `current` to the desired status:
/// `addresses` on those `snapshot` says the gateway of `class` serves, and
/// nothing on those in `published` (whose status the gateway wrote) that it
/// no longer serves, unless someone else has written another status since.
/// With no addresses, served Ingresses are left as they are.
#[must_use]
pub fn plan<'a>(
    snapshot: &Snapshot,
    class: &str,
    addresses: &[StatusAddress],
    current: impl IntoIterator<Item = &'a Ingress>,
    published: &BTreeSet<ObjectKey>,
) -> Vec<StatusPatch> {
    let served: BTreeSet<&ObjectKey> = snapshot
        .ingresses_for_class(class)
        .map(|i| &i.key)
        .collect();
    let desired: Vec<IngressLoadBalancerIngress> =
        addresses.iter().map(StatusAddress::to_status).collect();
    let mut patches = Vec::new();
    for ingress in current {
        let key = key_of(ingress);
        let now = current_status(ingress);
        if served.contains(&key) {
            if !addresses.is_empty() && now != desired.as_slice() {
                patches.push(StatusPatch {
                    ingress: key,
                    addresses: addresses.to_vec(),
                });
            }
        } else if published.contains(&key) && !now.is_empty() && now == desired.as_slice() {
            patches.push(StatusPatch {
                ingress: key,
                addresses: Vec::new(),
            });
        }
    }
    patches.sort_by(|a, b| a.ingress.cmp(&b.ingress));
    patches
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PatchLabels {
    op: &'static str,
    result: &'static str,
}

/// Publishes the gateway's addresses on the Ingresses it serves; see the
/// module documentation. Create it with the Ingress store of the
/// [`super::KubeSource`] feeding the model, then [`IngressStatusWriter::run`]
/// it.
pub struct IngressStatusWriter {
    ingresses: Store<Ingress>,
    config: IngressStatusConfig,
    /// Ingresses whose status the writer set (or found set) to its
    /// addresses while serving them.
    published: BTreeSet<ObjectKey>,
    /// Ingresses patched, with the resourceVersion the store held then: the
    /// store has not seen the write while it still holds that version.
    pending: BTreeMap<ObjectKey, Option<String>>,
    last_addresses: Vec<StatusAddress>,
    patches: Family<PatchLabels, Counter>,
    leader: super::leader::StatusLeader,
}

impl fmt::Debug for IngressStatusWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressStatusWriter")
            .field("config", &self.config)
            .field("published", &self.published.len())
            .finish_non_exhaustive()
    }
}

impl IngressStatusWriter {
    /// A writer reading current statuses from `ingresses`; its metric
    /// (`ingress_status_patches`) goes into `registry`.
    pub fn new(
        ingresses: Store<Ingress>,
        config: IngressStatusConfig,
        registry: &mut Registry,
    ) -> Self {
        let patches = Family::<PatchLabels, Counter>::default();
        registry.register(
            "ingress_status_patches",
            "Ingress status writes, by operation (set, clear) and result (ok, error)",
            patches.clone(),
        );
        Self {
            ingresses,
            config,
            published: BTreeSet::new(),
            pending: BTreeMap::new(),
            last_addresses: Vec::new(),
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

    /// Reconciles on every synced model change that concerns Ingresses or the
    /// published addresses, and every `resync`, writing through `client`,
    /// until the model's sender is dropped. Failed writes are retried after
    /// [`RETRY`].
    pub async fn run(
        mut self,
        client: Client,
        mut model: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<(), Error> {
        let span = info_span!("ingress_status", class = %self.config.class);
        async move {
            info!(addresses = ?self.config.addresses, "publishing Ingress status");
            let mut served = None;
            let mut deadline = tokio::time::Instant::now();
            loop {
                let snapshot = model.borrow_and_update().clone();
                if !snapshot.synced {
                    // Never act on a partial model.
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
                let addresses = self.config.addresses.resolve(&snapshot);
                let due = snapshot
                    .changes_since(served)
                    .touches(&[Kind::Ingress, Kind::IngressClass])
                    || addresses != self.last_addresses
                    || tokio::time::Instant::now() >= deadline;
                if due {
                    served = Some(snapshot.generation);
                    let failures = self.reconcile(&client, &snapshot, addresses).await;
                    let wait = if failures > 0 {
                        RETRY
                    } else {
                        self.config.resync
                    };
                    deadline = tokio::time::Instant::now() + wait;
                }
                tokio::select! {
                    changed = model.changed() => if changed.is_err() { return Ok(()) },
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.leader.changed() => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One pass: plans against the store and writes. Returns the number of
    /// failed writes.
    pub async fn reconcile(
        &mut self,
        client: &Client,
        snapshot: &Snapshot,
        addresses: Vec<StatusAddress>,
    ) -> usize {
        if addresses.is_empty() && self.last_addresses.is_empty() {
            debug!(source = ?self.config.addresses, "no address to publish yet");
        } else if addresses.is_empty() {
            warn!(source = ?self.config.addresses, "no address to publish any more; Ingress statuses are left as they are");
        }
        self.last_addresses.clone_from(&addresses);
        let current = self.ingresses.state();
        let by_key: BTreeMap<ObjectKey, &Arc<Ingress>> =
            current.iter().map(|i| (key_of(i), i)).collect();
        // Forget what is gone, and writes the store has seen.
        self.published.retain(|k| by_key.contains_key(k));
        self.pending.retain(|k, version| {
            by_key
                .get(k)
                .is_some_and(|i| i.metadata.resource_version == *version)
        });
        let served: BTreeSet<ObjectKey> = snapshot
            .ingresses_for_class(&self.config.class)
            .map(|i| i.key.clone())
            .collect();
        if !addresses.is_empty() {
            let desired: Vec<IngressLoadBalancerIngress> =
                addresses.iter().map(StatusAddress::to_status).collect();
            for (key, ingress) in &by_key {
                if served.contains(key) && current_status(ingress) == desired.as_slice() {
                    self.published.insert(key.clone());
                }
            }
        }
        let patches = plan(
            snapshot,
            &self.config.class,
            &addresses,
            current
                .iter()
                .filter(|i| !self.pending.contains_key(&key_of(i)))
                .map(AsRef::as_ref),
            &self.published,
        );
        let mut failures = 0;
        for patch in patches {
            let version = by_key
                .get(&patch.ingress)
                .and_then(|i| i.metadata.resource_version.clone());
            match self.write(client, &patch).await {
                Ok(()) => {
                    self.pending.insert(patch.ingress.clone(), version);
                    if patch.addresses.is_empty() {
                        self.published.remove(&patch.ingress);
                    } else {
                        self.published.insert(patch.ingress);
                    }
                }
                Err(error) => {
                    failures += 1;
                    warn!(ingress = %patch.ingress, %error, "writing the Ingress status failed; retrying in {RETRY:?}");
                }
            }
        }
        failures
    }

    async fn write(&self, client: &Client, patch: &StatusPatch) -> Result<(), Error> {
        let op = if patch.addresses.is_empty() {
            "clear"
        } else {
            "set"
        };
        let api: Api<Ingress> = Api::namespaced(client.clone(), &patch.ingress.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let result = api
            .patch_status(&patch.ingress.name, &params, &Patch::Merge(patch.body()))
            .await;
        self.patches
            .get_or_create(&PatchLabels {
                op,
                result: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        result?;
        let addresses: Vec<String> = patch.addresses.iter().map(ToString::to_string).collect();
        info!(ingress = %patch.ingress, op, addresses = ?addresses, "Ingress status written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelWriter;
    use crate::object::decode;
    use crate::writer::Change;

    fn ingress(name: &str, class: Option<&str>, status: &[&str]) -> Ingress {
        let list: Vec<serde_json::Value> = status.iter().map(|ip| json!({"ip": ip})).collect();
        let mut value = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
            "status": {"loadBalancer": {"ingress": list}},
        });
        if let Some(class) = class {
            value["spec"]["ingressClassName"] = json!(class);
        }
        serde_json::from_value(value).unwrap()
    }

    fn snapshot(ingresses: &[&Ingress]) -> Arc<Snapshot> {
        let (mut writer, _rx) = ModelWriter::new();
        let class = decode(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "fairlead", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "fairlead.dev/ingress"},
        }))
        .unwrap();
        let mut changes = vec![Change::Upsert {
            object: class,
            origin: None,
        }];
        for i in ingresses {
            changes.push(Change::Upsert {
                object: decode(serde_json::to_value(i).unwrap()).unwrap(),
                origin: None,
            });
        }
        writer.replace_all(changes, Vec::new(), true);
        writer.snapshot()
    }

    fn ip(s: &str) -> StatusAddress {
        s.parse().unwrap()
    }

    #[test]
    fn served_ingresses_get_the_addresses_others_are_left_alone() {
        let ours = ingress("ours", Some("fairlead"), &[]);
        let default = ingress("default", None, &[]);
        let done = ingress("done", Some("fairlead"), &["192.0.2.1"]);
        let theirs = ingress("theirs", Some("nginx"), &["198.51.100.7"]);
        let all = [&ours, &default, &done, &theirs];
        let s = snapshot(&all);
        let patches = plan(&s, "fairlead", &[ip("192.0.2.1")], all, &BTreeSet::new());
        let keys: Vec<&str> = patches.iter().map(|p| p.ingress.name.as_str()).collect();
        assert_eq!(keys, ["default", "ours"]);
        assert_eq!(
            patches[0].body(),
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})
        );
    }

    #[test]
    fn ingresses_no_longer_served_are_cleared_only_if_the_gateway_wrote_them() {
        let moved = ingress("moved", Some("nginx"), &["192.0.2.1"]);
        let taken = ingress("taken", Some("nginx"), &["198.51.100.7"]);
        let never = ingress("never", Some("nginx"), &["192.0.2.1"]);
        let all = [&moved, &taken, &never];
        let s = snapshot(&all);
        let published: BTreeSet<ObjectKey> = [
            ObjectKey::new("shop", "moved"),
            ObjectKey::new("shop", "taken"),
        ]
        .into();
        let patches = plan(&s, "fairlead", &[ip("192.0.2.1")], all, &published);
        assert_eq!(
            patches,
            [StatusPatch {
                ingress: ObjectKey::new("shop", "moved"),
                addresses: Vec::new(),
            }]
        );
        assert_eq!(
            patches[0].body(),
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }

    #[test]
    fn without_addresses_nothing_is_written() {
        let ours = ingress("ours", Some("fairlead"), &["192.0.2.1"]);
        let s = snapshot(&[&ours]);
        let published: BTreeSet<ObjectKey> = [ObjectKey::new("shop", "ours")].into();
        assert!(plan(&s, "fairlead", &[], [&ours], &published).is_empty());
    }

    #[test]
    fn addresses_parse_as_ip_or_hostname() {
        assert_eq!(
            ip("2001:db8::1"),
            StatusAddress::Ip("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            "lb.example.com".parse::<StatusAddress>(),
            Ok(StatusAddress::Hostname("lb.example.com".to_owned()))
        );
        for bad in ["", "LB.example.com", "a..b", "-a.b", "a b", "{{x}}"] {
            assert!(bad.parse::<StatusAddress>().is_err(), "{bad:?}");
        }
    }
}
