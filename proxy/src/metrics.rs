//! Prometheus metrics of the proxy (registered under `fairlead_proxy_*`).

use std::time::Duration;

use fairlead_abi::Reason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::datapath::Counters;
use crate::reconcile::{Stats, SyncReport};
use crate::tables::Table;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The proxy's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    sync_duration: Histogram,
    sync_errors: Family<KindLabels, Counter>,
    services: Gauge,
    frontends: Gauge,
    backends: Gauge,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    datapath: Family<ReasonLabels, Counter>,
    stale_sockets: Counter,
    last_counters: Option<Counters>,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            sync_duration: Histogram::new(exponential_buckets(0.000_05, 4.0, 12)),
            sync_errors: Family::default(),
            services: Gauge::default(),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            datapath: Family::default(),
            stale_sockets: Counter::default(),
            last_counters: None,
        };
        for kind in crate::reconcile::SyncError::KINDS {
            drop(this.sync_errors.get_or_create(&KindLabels { kind }));
        }
        let r = registry.sub_registry_with_prefix("proxy");
        r.register(
            "sync_duration_seconds",
            "Time to bring the BPF maps to a model snapshot",
            this.sync_duration.clone(),
        );
        r.register(
            "sync_errors",
            "Frontends that could not be programmed, by kind (map_full, kernel, conflict, too_many_backends, no_rev_nat_id)",
            this.sync_errors.clone(),
        );
        r.register(
            "services_programmed",
            "Services with a frontend in the maps",
            this.services.clone(),
        );
        r.register(
            "frontends_programmed",
            "Service frontends (address, port, protocol) in the maps",
            this.frontends.clone(),
        );
        r.register(
            "backends_programmed",
            "Backend entries in the maps",
            this.backends.clone(),
        );
        r.register(
            "map_entries",
            "Entries in a load-balancer map",
            this.map_entries.clone(),
        );
        r.register(
            "map_max_entries",
            "Size of a load-balancer map",
            this.map_capacity.clone(),
        );
        r.register(
            "datapath_events",
            "Socket load-balancer events by reason (drops and fallbacks included), from the per-CPU counters",
            this.datapath.clone(),
        );
        r.register(
            "stale_udp_sockets_destroyed",
            "Connected UDP sockets to a removed backend that were destroyed",
            this.stale_sockets.clone(),
        );
        this
    }

    pub(crate) fn observe_sync(
        &self,
        elapsed: Duration,
        report: &SyncReport,
        stats: &Stats,
        capacity: &[u32; crate::tables::Table::COUNT],
    ) {
        self.sync_duration.observe(elapsed.as_secs_f64());
        for e in &report.errors {
            self.sync_errors
                .get_or_create(&KindLabels { kind: e.kind() })
                .inc();
        }
        self.services
            .set(i64::try_from(stats.services).unwrap_or(i64::MAX));
        self.frontends
            .set(i64::try_from(stats.frontends).unwrap_or(i64::MAX));
        self.backends
            .set(i64::try_from(stats.backends).unwrap_or(i64::MAX));
        for (i, table) in Table::ALL.iter().enumerate() {
            let labels = MapLabels {
                map: table.map_name(),
            };
            self.map_entries
                .get_or_create(&labels)
                .set(i64::try_from(stats.entries[i]).unwrap_or(i64::MAX));
            self.map_capacity
                .get_or_create(&labels)
                .set(i64::from(capacity[i]));
        }
    }

    pub(crate) fn observe_counters(&mut self, counters: &Counters) {
        for reason in Reason::ALL {
            let now = counters.get(reason);
            let before = self.last_counters.map_or(0, |c| c.get(reason));
            // Pinned maps outlive the process: the first reading counts everything so far.
            let delta = now.saturating_sub(before);
            self.datapath
                .get_or_create(&ReasonLabels {
                    reason: reason.name(),
                    kind: reason.kind().name(),
                })
                .inc_by(delta);
        }
        self.last_counters = Some(*counters);
    }

    pub(crate) fn stale_sockets_destroyed(&self, n: u64) {
        self.stale_sockets.inc_by(n);
    }
}
