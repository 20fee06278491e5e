//! Leader election for status writes: with several replicas of the ingress
//! gateway, one writes status (the Ingress status writer of [`super::status`],
//! and any other status writer that checks the same [`StatusLeader`]).
//!
//! A `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` uses
//! it, on plain GET / create / replace with the resourceVersion (the
//! apiserver refuses a replace of a version someone else replaced: the one
//! optimistic lock everybody shares):
//!
//! - **Acquire.** A candidate takes the Lease when nobody holds it, or when
//!   the holder has not renewed it for the lease duration *as the candidate
//!   observed it* (the time since the candidate last saw the Lease change, on
//!   its own monotonic clock — no trust in the holder's clock).
//! - **Renew.** The holder renews every retry period. A conflict (someone
//!   else replaced the Lease) ends its leadership at once; failing to renew
//!   for the renew deadline (shorter than the lease duration) ends it too,
//!   before any other candidate may take over: never two leaders, as long as
//!   clocks advance at about the same rate.
//! - A stopped leader is replaced within the lease duration (plus a retry
//!   period) of its last renewal.
//!
//! No crate fit: kube-lease-manager (kube 5) relies on server-side apply
//! ownership conflicts, kube-leader-election is still on kube 4.

use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, PostParams};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument as _, info, info_span, warn};

use super::{ApiAccess, Client};
use crate::error::Error;

/// What the elector uses on the apiserver.
pub const LEASE_ACCESS: ApiAccess = ApiAccess {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["create", "get", "update"],
};

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a Lease not renewed stays held (client-go: 15 s).
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; shorter than
    /// `lease_duration` (client-go: 10 s).
    pub renew_deadline: Duration,
    /// How often candidates try, and the leader renews (client-go: 2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this process may write status. Cheap to clone; every status
/// writer checks it before writing and waits for it to become leader.
#[derive(Clone, Debug)]
pub struct StatusLeader(Option<watch::Receiver<bool>>);

impl StatusLeader {
    /// Always leader: no election (a single replica).
    #[must_use]
    pub fn always() -> Self {
        Self(None)
    }

    /// Whether this process leads now (never after its elector stopped).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        match &self.0 {
            None => true,
            Some(rx) => *rx.borrow() && rx.has_changed().is_ok(),
        }
    }

    /// Returns once this process leads (never, once its elector stopped).
    pub async fn until_leader(&mut self) {
        let stopped = match &mut self.0 {
            None => false,
            Some(rx) => rx.wait_for(|leader| *leader).await.is_err(),
        };
        if stopped {
            std::future::pending::<()>().await;
        }
    }

    /// Returns once leadership changes (never without an election).
    pub async fn changed(&mut self) {
        let changed = match &mut self.0 {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the election for one candidate.
#[derive(Debug)]
pub struct LeaderElector {
    config: LeaseConfig,
    leader: Arc<watch::Sender<bool>>,
    /// The Lease's resourceVersion last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
    /// The last successful acquire or renewal.
    renewed: Option<Instant>,
}

impl LeaderElector {
    /// A candidate, and the handle its status writers check.
    #[must_use]
    pub fn new(config: LeaseConfig) -> (Self, StatusLeader) {
        let (tx, rx) = watch::channel(false);
        (
            Self {
                config,
                leader: Arc::new(tx),
                observed: None,
                renewed: None,
            },
            StatusLeader(Some(rx)),
        )
    }

    fn set(&self, leader: bool) {
        self.leader.send_if_modified(|current| {
            if *current == leader {
                return false;
            }
            *current = leader;
            true
        });
    }

    /// Tries to acquire or renew every retry period, forever (the caller
    /// stops it by dropping the future; leadership then ends).
    pub async fn run(mut self, client: Client) -> Result<(), Error> {
        let api: Api<Lease> = Api::namespaced(client, &self.config.namespace);
        let span = info_span!("lease", lease = %format!("{}/{}", self.config.namespace, self.config.name), identity = %self.config.identity);
        async move {
            loop {
                let now = Instant::now();
                let was = *self.leader.borrow();
                match self.try_acquire_or_renew(&api, now).await {
                    Ok(true) => {
                        self.renewed = Some(now);
                        if !was {
                            info!("leading: this replica writes status");
                        }
                        self.set(true);
                    }
                    Ok(false) => {
                        if was {
                            warn!("lost the lease: another replica writes status");
                        }
                        self.set(false);
                    }
                    Err(e) => {
                        warn!(error = %e, "lease request failed");
                        if was
                            && self.renewed.is_none_or(|r| {
                                now.saturating_duration_since(r) >= self.config.renew_deadline
                            })
                        {
                            warn!(
                                "could not renew the lease within the renew deadline: stepping down"
                            );
                            self.set(false);
                        }
                    }
                }
                tokio::time::sleep(self.config.retry_period).await;
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt: `Ok(true)` when this candidate holds the Lease now.
    async fn try_acquire_or_renew(
        &mut self,
        api: &Api<Lease>,
        now: Instant,
    ) -> Result<bool, Error> {
        let micro_now = MicroTime(Timestamp::now());
        let duration_secs =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(micro_now.clone()),
                    renew_time: Some(micro_now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(::kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, now));
        }
        let observed_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        if !holder.is_empty() && !mine && now.saturating_duration_since(observed_at) < held_for {
            return Ok(false);
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(micro_now.clone())
            },
            renew_time: Some(micro_now),
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0) + i32::from(!mine && !holder.is_empty()),
            ),
            ..spec
        });
        match api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                // Our own write: observed now.
                self.observed = replaced.metadata.resource_version.map(|v| (v, now));
                Ok(true)
            }
            Err(::kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
