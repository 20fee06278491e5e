//! Kubernetes Events for the problems the model reports (apiserver mode): a
//! `Warning` Event on the object of each problem (an Ingress naming a missing
//! Secret, an object rejected for an invalid field, ...), so that `kubectl
//! describe` and `kubectl get events` show what fairlead's log says.
//!
//! Deduplicated and rate-limited the way client-go's recorder does it:
//!
//! - **Aggregation.** One Event per (object, reason, message). A problem that
//!   is seen again — its object re-read from the apiserver, or the whole kind
//!   relisted, while the problem stays — updates that Event (a patch of its
//!   `series.count` and `lastObservedTime`, by kube-rs's
//!   [`Recorder`], one per key) instead of creating another. A problem that
//!   is still there but whose object did not change publishes nothing.
//! - **Spam filter.** A token bucket per object (burst [`BURST`], one token
//!   back every [`REFILL`], as client-go's `EventSourceObjectSpamFilter`):
//!   an object that keeps changing cannot flood the apiserver.
//! - A problem that is gone drops its key, so it stops producing Events; if
//!   it comes back later, a new Event is created.
//!
//! Events are written through `events.k8s.io/v1` ([`EVENTS_ACCESS`]: create
//! and patch). Problems without an object (a file that does not parse) have
//! nothing to attach an Event to and stay in the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info_span, warn};

use super::leader::StatusLeader;
use super::{ApiAccess, Client};
use crate::error::{Error, Problem, Severity};
use crate::snapshot::Snapshot;
use crate::types::{Kind, ObjectId};

/// What the Event publisher uses on the apiserver.
pub const EVENTS_ACCESS: ApiAccess = ApiAccess {
    group: "events.k8s.io",
    resource: "events",
    verbs: &["create", "patch"],
};

/// The spam filter's burst: Events one object may get at once.
pub const BURST: u32 = 25;

/// The spam filter's refill: one more Event per object every this long.
pub const REFILL: Duration = Duration::from_secs(300);

/// The `reportingController` of fairlead's Events.
pub const CONTROLLER: &str = "fairlead.dev/fairlead";

/// One Event to publish: the object, a PascalCase reason, the message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// The object the problem is about.
    pub object: ObjectId,
    /// Why, in one word (`TLSSecretNotFound`, `InvalidSpec`, ...).
    pub reason: &'static str,
    /// The problem: field and what is wrong.
    pub message: String,
}

/// The reason of the Event for `problem`.
#[must_use]
pub fn reason(problem: &Problem) -> &'static str {
    let field = problem.error.field.as_str();
    if field.ends_with("secretName") {
        if problem.error.message.contains("does not exist") {
            "TLSSecretNotFound"
        } else {
            "TLSSecretInvalid"
        }
    } else if problem.error.message.contains("no such Service")
        || problem.error.message.contains("Service")
            && problem.error.message.contains("does not exist")
    {
        "ServiceNotFound"
    } else if problem.error.message.starts_with("map ")
        && problem.error.message.contains(" is full")
    {
        "MapFull"
    } else if problem.error.message.contains("has no TCP port") {
        "ServicePortNotFound"
    } else if problem.error.message.contains("ExternalName") {
        "UnsupportedBackend"
    } else if problem.severity == Severity::Error {
        "InvalidSpec"
    } else {
        "Warning"
    }
}

/// A token bucket (client-go's spam filter, per object).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refilled =
            now.saturating_duration_since(self.last).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(f64::from(BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Decides which problems get an Event; [`ProblemEvents::run`] publishes
/// them.
#[derive(Debug, Default)]
pub struct ProblemEvents {
    /// The generation last planned from.
    served: Option<u64>,
    /// The problems of that generation.
    active: HashSet<EventKey>,
    /// Spam filter, per object.
    buckets: HashMap<ObjectId, Bucket>,
    /// Events held back by the spam filter.
    pub suppressed: u64,
    /// The source's Ingresses, for their uids.
    ingresses: Option<super::IngressStore>,
    /// The IngressClass whose Ingresses get Events (`None`: all).
    class: Option<String>,
}

impl ProblemEvents {
    /// Nothing planned yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The Events `snapshot` calls for: each problem that is new, or whose
    /// object changed since the last snapshot planned from, within the spam
    /// filter. Nothing before the model is synced.
    pub fn plan(&mut self, snapshot: &Snapshot, now: Instant) -> Vec<EventKey> {
        if !snapshot.synced || self.served == Some(snapshot.generation) {
            return Vec::new();
        }
        let changes = snapshot.changes_since(self.served);
        self.served = Some(snapshot.generation);
        let class = self.class.clone();
        let served_here = |object: &ObjectId| match (class.as_deref(), object.kind) {
            (Some(class), Kind::Ingress) => snapshot
                .ingresses_for_class(class)
                .any(|i| i.key.namespace == object.namespace && i.key.name == object.name),
            _ => true,
        };
        let problems = snapshot
            .problems
            .iter()
            .filter(|p| p.object.as_ref().is_some_and(served_here));
        self.plan_problems(
            problems,
            |object| changes.everything() || changes.touches_object(object),
            now,
        )
    }

    /// The Events `problems` call for: each problem that is new, or whose
    /// object `seen_again` says was re-read, within the spam filter.
    /// Problems without an object have nothing to attach an Event to.
    pub fn plan_problems<'a>(
        &mut self,
        problems: impl IntoIterator<Item = &'a Problem>,
        seen_again: impl Fn(&ObjectId) -> bool,
        now: Instant,
    ) -> Vec<EventKey> {
        let mut current = HashSet::new();
        let mut out = Vec::new();
        for problem in problems {
            let Some(object) = &problem.object else {
                continue;
            };
            let key = EventKey {
                object: object.clone(),
                reason: reason(problem),
                message: problem.error.to_string(),
            };
            if !current.insert(key.clone()) {
                continue;
            }
            if self.active.contains(&key) && !seen_again(object) {
                continue;
            }
            let bucket = self
                .buckets
                .entry(object.clone())
                .or_insert_with(|| Bucket::full(now));
            if bucket.take(now) {
                out.push(key);
            } else {
                self.suppressed += 1;
                debug!(object = %object, reason = key.reason, "Event held back by the spam filter");
            }
        }
        self.active = current;
        let objects: HashSet<&ObjectId> = self.active.iter().map(|k| &k.object).collect();
        // Buckets of objects without problems are full again after BURST * REFILL.
        self.buckets.retain(|object, bucket| {
            objects.contains(object) || now.saturating_duration_since(bucket.last) < REFILL * BURST
        });
        out.sort();
        out
    }

    /// Only the Ingresses of `class` (those a gateway serving it handles)
    /// get Events: problems of other controllers' Ingresses are theirs.
    #[must_use]
    pub fn for_ingress_class(mut self, class: impl Into<String>) -> Self {
        self.class = Some(class.into());
        self
    }

    /// Fills the `regarding.uid` of Events on Ingresses from `ingresses`
    /// (the source's store): `kubectl describe ingress` selects Events by
    /// uid. Other kinds have no store here, and go without.
    #[must_use]
    pub fn with_ingresses(mut self, ingresses: super::IngressStore) -> Self {
        self.ingresses = Some(ingresses);
        self
    }

    /// The reference of an Event to `object`.
    fn reference(&self, object: &ObjectId) -> ObjectReference {
        let uid = match (&self.ingresses, object.kind) {
            (Some(store), Kind::Ingress) => store
                .get(
                    &::kube::runtime::reflector::ObjectRef::new(&object.name)
                        .within(&object.namespace),
                )
                .and_then(|ingress| ingress.metadata.uid.clone()),
            _ => None,
        };
        ObjectReference {
            uid,
            ..reference(object)
        }
    }

    /// Whether `key` is a current problem.
    #[must_use]
    pub fn is_active(&self, key: &EventKey) -> bool {
        self.active.contains(key)
    }

    /// Publishes Events for the problems of every snapshot of `model` until
    /// the channel closes. `instance` is the `reportingInstance` (the pod or
    /// node name). Failed writes are logged, not retried (the next change of
    /// the object tries again), as client-go does.
    ///
    /// Only while `leader` says this replica leads (see [`super::leader`]):
    /// one replica reports. A new leader reports every current problem once.
    pub async fn run(
        mut self,
        client: Client,
        instance: Option<String>,
        mut model: watch::Receiver<Arc<Snapshot>>,
        mut leader: StatusLeader,
    ) -> Result<(), Error> {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance,
        };
        let mut recorders: HashMap<EventKey, Recorder> = HashMap::new();
        async move {
            loop {
                if !leader.is_leader() {
                    self.served = None;
                    self.active.clear();
                    recorders.clear();
                    tokio::select! {
                        changed = model.changed() => if changed.is_err() { return Ok(()) },
                        () = leader.until_leader() => {}
                    }
                    continue;
                }
                let snapshot = model.borrow_and_update().clone();
                let keys = self.plan(&snapshot, Instant::now());
                self.publish(&client, &reporter, &mut recorders, keys).await;
                tokio::select! {
                    changed = model.changed() => if changed.is_err() { return Ok(()) },
                    () = leader.changed() => {}
                }
            }
        }
        .instrument(info_span!("events"))
        .await
    }
}

impl ProblemEvents {
    /// Publishes an Event for each of `keys`, through one [`Recorder`] per
    /// key (so a repeat updates its series), and forgets the recorders of
    /// problems that are gone (a problem that returns starts a new Event).
    /// Failed writes are logged, not retried.
    async fn publish(
        &self,
        client: &Client,
        reporter: &Reporter,
        recorders: &mut HashMap<EventKey, Recorder>,
        keys: Vec<EventKey>,
    ) {
        for key in keys {
            let recorder = recorders
                .entry(key.clone())
                .or_insert_with(|| Recorder::new(client.clone(), reporter.clone()));
            let event = Event {
                type_: EventType::Warning,
                reason: key.reason.to_owned(),
                note: Some(truncate(&key.message, 1024)),
                action: "Translate".to_owned(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &self.reference(&key.object)).await {
                warn!(object = %key.object, reason = key.reason, error = %e, "publishing an Event failed");
            }
        }
        recorders.retain(|key, _| self.is_active(key));
    }

    /// Publishes Events for the problems `problems` reports about this node
    /// (a full kernel map, ...), from every replica: each node reports its
    /// own. A problem is published when it appears; while it stays, nothing
    /// more (the sender re-sends only on change).
    pub async fn run_node(
        mut self,
        client: Client,
        instance: Option<String>,
        mut problems: watch::Receiver<Arc<[Problem]>>,
    ) -> Result<(), Error> {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance,
        };
        let mut recorders: HashMap<EventKey, Recorder> = HashMap::new();
        async move {
            loop {
                let current = problems.borrow_and_update().clone();
                let keys = self.plan_problems(current.iter(), |_| false, Instant::now());
                self.publish(&client, &reporter, &mut recorders, keys).await;
                if problems.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
        .instrument(info_span!("node_events"))
        .await
    }
}

/// The reference of an Event to `object`.
fn reference(object: &ObjectId) -> ObjectReference {
    ObjectReference {
        api_version: Some(object.kind.api_version().to_owned()),
        kind: Some(object.kind.as_str().to_owned()),
        namespace: (!object.namespace.is_empty()).then(|| object.namespace.clone()),
        name: Some(object.name.clone()),
        ..ObjectReference::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;
    use crate::types::Kind;

    fn problem(name: &str) -> Problem {
        Problem {
            severity: Severity::Warning,
            origin: None,
            object: Some(ObjectId {
                kind: Kind::Ingress,
                namespace: "shop".to_owned(),
                name: name.to_owned(),
            }),
            error: FieldError::new(
                "spec.tls[0].secretName",
                "Secret shop/x does not exist; the default certificate is served instead",
            ),
        }
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(&problem("a")), "TLSSecretNotFound");
        let mut p = problem("a");
        p.error = FieldError::new("spec.ports[0].port", "must be a port number");
        p.severity = Severity::Error;
        assert_eq!(reason(&p), "InvalidSpec");
    }

    #[test]
    fn the_spam_filter_is_a_token_bucket_per_object() {
        let start = Instant::now();
        let mut bucket = Bucket::full(start);
        for _ in 0..BURST {
            assert!(bucket.take(start));
        }
        assert!(!bucket.take(start), "the burst is spent");
        assert!(!bucket.take(start + REFILL / 2));
        assert!(bucket.take(start + REFILL), "one token back per REFILL");
        assert!(!bucket.take(start + REFILL));
    }
}
