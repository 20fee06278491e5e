//! Metrics of the apiserver watchers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use super::{Phase, Seen};
use crate::types::Kind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: &'static str,
    r#type: &'static str,
}

/// The watch states, as the `state` label of `watch_state`.
const STATES: [&str; 5] = ["listing", "watching", "relisting", "absent", "failing"];

/// When each kind last saw an event; reported as an age at scrape time.
#[derive(Debug, Default)]
struct LastEvent(Mutex<BTreeMap<Kind, Instant>>);

#[derive(Debug)]
struct LastEventAge(Arc<LastEvent>);

impl prometheus_client::collector::Collector for LastEventAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let last = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "watch_last_event_age",
            "Time since the watcher of this kind last delivered an event (list items included; bookmarks are not events)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (kind, at) in last.iter() {
            let labels = KindLabels {
                kind: kind.as_str(),
            };
            ConstGauge::new(at.elapsed().as_secs_f64()).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The watchers' metrics, registered once.
#[derive(Debug, Clone)]
pub(super) struct Metrics {
    state: Family<StateLabels, Gauge>,
    events: Family<EventLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    relists: Family<KindLabels, Counter>,
    objects: Family<KindLabels, Gauge>,
    last_event: Arc<LastEvent>,
}

impl Metrics {
    pub(super) fn register(registry: &mut Registry, kinds: &[Kind]) -> Self {
        let metrics = Self {
            state: Family::default(),
            events: Family::default(),
            errors: Family::default(),
            relists: Family::default(),
            objects: Family::default(),
            last_event: Arc::default(),
        };
        registry.register(
            "watch_state",
            "State of the watcher of each kind: 1 for the current state (listing, watching, relisting, absent: a CRD not installed, failing), 0 for the others",
            metrics.state.clone(),
        );
        registry.register(
            "watch_events",
            "Events delivered by the watchers, by kind and type (init, init_apply, init_done, apply, delete)",
            metrics.events.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors (failed lists or watches, 410 Gone); each is retried with backoff",
            metrics.errors.clone(),
        );
        registry.register(
            "watch_relists",
            "Relists after the initial list (an expired or restarted watch)",
            metrics.relists.clone(),
        );
        registry.register(
            "objects",
            "Objects of each kind held by the model",
            metrics.objects.clone(),
        );
        registry.register_collector(Box::new(LastEventAge(Arc::clone(&metrics.last_event))));
        for kind in kinds {
            metrics.set_state(*kind, Phase::Listing, false);
            let labels = KindLabels {
                kind: kind.as_str(),
            };
            // Present (at 0) before the first error or relist.
            let _ = metrics.errors.get_or_create(&labels);
            let _ = metrics.relists.get_or_create(&labels);
        }
        metrics
    }

    pub(super) fn event(&self, kind: Kind, seen: &Seen) {
        let kind_str = kind.as_str();
        let r#type = match seen {
            Seen::Init => "init",
            Seen::InitApply(_) => "init_apply",
            Seen::InitDone => "init_done",
            Seen::Apply(_) => "apply",
            Seen::Delete(_) => "delete",
            Seen::Error(_) => {
                self.errors
                    .get_or_create(&KindLabels { kind: kind_str })
                    .inc();
                return;
            }
        };
        self.events
            .get_or_create(&EventLabels {
                kind: kind_str,
                r#type,
            })
            .inc();
        self.last_event
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind, Instant::now());
    }

    pub(super) fn relist(&self, kind: Kind) {
        self.relists
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub(super) fn set_state(&self, kind: Kind, phase: Phase, failing: bool) {
        let current = if failing { "failing" } else { phase.as_str() };
        for state in STATES {
            self.state
                .get_or_create(&StateLabels {
                    kind: kind.as_str(),
                    state,
                })
                .set(i64::from(state == current));
        }
    }

    pub(super) fn set_objects(&self, kind: Kind, objects: usize) {
        self.objects
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }
}
