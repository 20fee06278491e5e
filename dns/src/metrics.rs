//! Prometheus metrics of the DNS server, registered under `fairlead_dns_`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Where an answer came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// The cluster index (authoritative).
    Cluster,
    /// The forwarder's cache, fresh.
    Cache,
    /// An upstream, just now.
    Upstream,
    /// The forwarder's cache, expired, because every upstream failed.
    Stale,
    /// Nothing could be answered (malformed, refused, failed upstreams).
    Error,
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Source::Cluster => "cluster",
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Stale => "stale",
            Source::Error => "error",
        })
    }
}

/// A query type as a label: the common ones by name, the rest as `other`
/// (bounded cardinality whatever clients send).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct QType(RecordType);

impl QType {
    /// The label for `qtype`: every uncommon type is the same `other`
    /// series (one series, not one per type a client makes up).
    #[must_use]
    pub fn of(qtype: Option<RecordType>) -> Self {
        match qtype {
            Some(
                t @ (RecordType::A
                | RecordType::AAAA
                | RecordType::SRV
                | RecordType::PTR
                | RecordType::TXT
                | RecordType::CNAME
                | RecordType::SOA
                | RecordType::NS
                | RecordType::MX
                | RecordType::ANY
                | RecordType::HTTPS
                | RecordType::SVCB
                | RecordType::AXFR
                | RecordType::IXFR),
            ) => Self(t),
            _ => Self(RecordType::Unknown(0)),
        }
    }
}

impl EncodeLabelValue for QType {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self.0 {
            RecordType::Unknown(0) => encoder.write_str("other"),
            other => write!(encoder, "{other}"),
        }
    }
}

/// A response code as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Rcode(ResponseCode);

impl EncodeLabelValue for Rcode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self.0 {
            ResponseCode::NoError => "NOERROR",
            ResponseCode::FormErr => "FORMERR",
            ResponseCode::ServFail => "SERVFAIL",
            ResponseCode::NXDomain => "NXDOMAIN",
            ResponseCode::NotImp => "NOTIMP",
            ResponseCode::Refused => "REFUSED",
            ResponseCode::BADVERS => "BADVERS",
            _ => "other",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    r#type: QType,
    rcode: Rcode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: Source,
}

/// Why an upstream exchange failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamError {
    /// No answer in time.
    Timeout,
    /// A socket error.
    Network,
    /// An answer that does not parse or does not match the question.
    Malformed,
    /// SERVFAIL, REFUSED or another error rcode.
    Rcode,
    /// The upstream sends our own queries back to us.
    Loop,
}

impl EncodeLabelValue for UpstreamError {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            UpstreamError::Timeout => "timeout",
            UpstreamError::Network => "network",
            UpstreamError::Malformed => "malformed",
            UpstreamError::Rcode => "rcode",
            UpstreamError::Loop => "loop",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    reason: UpstreamError,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    kind: UpdateKindLabel,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum UpdateKindLabel {
    Full,
    Incremental,
}

impl EncodeLabelValue for UpdateKindLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            UpdateKindLabel::Full => "full",
            UpdateKindLabel::Incremental => "incremental",
        })
    }
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// One UDP loop's handles on the series the fast path counts in.
#[derive(Debug, Default)]
pub(crate) struct LoopMetrics {
    requests: HashMap<(QType, Rcode), Counter>,
    cluster: Option<Histogram>,
}

/// Counts one open TCP connection while it lives.
#[derive(Debug)]
pub(crate) struct TcpConnectionGuard(Gauge);

impl Drop for TcpConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of the DNS server. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<SourceLabels, Histogram, fn() -> Histogram>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_stale: Counter,
    cache_entries: Gauge,
    upstream_errors: Family<UpstreamLabels, Counter>,
    overloaded: Counter,
    loops: Counter,
    model_to_serving: Histogram,
    index_updates: Family<UpdateLabels, Counter>,
    index_generation: Gauge,
    index_services: Gauge,
    tcp_connections: Gauge,
    tcp_refused: Counter,
    autopath: Family<AutopathLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AutopathLabels {
    /// `completed` (answered with a CNAME to a later search name) or
    /// `nxdomain` (no search name exists, or one failed: answered plainly).
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_stale: Counter::default(),
            cache_entries: Gauge::default(),
            upstream_errors: Family::default(),
            overloaded: Counter::default(),
            loops: Counter::default(),
            model_to_serving: latency_histogram(),
            index_updates: Family::default(),
            index_generation: Gauge::default(),
            index_services: Gauge::default(),
            tcp_connections: Gauge::default(),
            tcp_refused: Counter::default(),
            autopath: Family::default(),
        }
    }
}

impl Metrics {
    /// Metrics registered in `registry` under the prefix `fairlead_dns`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("fairlead_dns");
        r.register(
            "requests",
            "DNS requests answered, by query type and response code",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a parsed request to its response, by where the answer came from",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        r.register(
            "cache_hits",
            "Forwarded questions answered from the cache",
            metrics.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Forwarded questions not (freshly) in the cache",
            metrics.cache_misses.clone(),
        );
        r.register(
            "cache_stale_answers",
            "Expired cache entries served because every upstream failed",
            metrics.cache_stale.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the forwarder's cache",
            metrics.cache_entries.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed exchanges with upstream servers, by upstream and reason",
            metrics.upstream_errors.clone(),
        );
        r.register(
            "forward_overloaded",
            "Forwarded questions refused because the concurrent upstream query limit was reached",
            metrics.overloaded.clone(),
        );
        r.register(
            "forwarding_loops",
            "Forwarding loops detected (an upstream sent our own probe back to us)",
            metrics.loops.clone(),
        );
        r.register_with_unit(
            "model_to_serving",
            "Time from receiving a model snapshot to serving its records",
            Unit::Seconds,
            metrics.model_to_serving.clone(),
        );
        r.register(
            "index_updates",
            "Record index updates, full rebuilds or incremental",
            metrics.index_updates.clone(),
        );
        r.register(
            "index_generation",
            "Model generation being served (the SOA serial)",
            metrics.index_generation.clone(),
        );
        r.register(
            "index_services",
            "Services in the record index",
            metrics.index_services.clone(),
        );
        r.register(
            "tcp_connections",
            "Open DNS-over-TCP connections",
            metrics.tcp_connections.clone(),
        );
        r.register(
            "tcp_connections_refused",
            "DNS-over-TCP connections closed at once because --dns-tcp-max-connections were open",
            metrics.tcp_refused.clone(),
        );
        r.register(
            "autopath",
            "Questions of pods searched through on their behalf (--dns-autopath), by result",
            metrics.autopath.clone(),
        );
        metrics
    }

    /// A search-path completion tried: `completed` when a later search
    /// name existed and was answered.
    pub(crate) fn autopath(&self, completed: bool) {
        self.autopath
            .get_or_create(&AutopathLabels {
                result: if completed { "completed" } else { "nxdomain" },
            })
            .inc();
    }

    /// A TCP connection opened; it counts as open until the guard drops.
    pub(crate) fn tcp_connection(&self) -> TcpConnectionGuard {
        self.tcp_connections.inc();
        TcpConnectionGuard(self.tcp_connections.clone())
    }

    pub(crate) fn tcp_refused(&self) {
        self.tcp_refused.inc();
    }

    pub(crate) fn request(
        &self,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        source: Source,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                r#type: QType::of(qtype),
                rcode: Rcode(rcode),
            })
            .inc();
        self.duration
            .get_or_create(&SourceLabels { source })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request the UDP fast path answered, through `local`'s
    /// handles (one label lookup per series and loop, not per request).
    pub(crate) fn cluster_request(
        &self,
        local: &mut LoopMetrics,
        qtype: RecordType,
        rcode: ResponseCode,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            r#type: QType::of(Some(qtype)),
            rcode: Rcode(rcode),
        };
        local
            .requests
            .entry((labels.r#type, labels.rcode))
            .or_insert_with(|| self.requests.get_or_create(&labels).clone())
            .inc();
        local
            .cluster
            .get_or_insert_with(|| {
                self.duration
                    .get_or_create(&SourceLabels {
                        source: Source::Cluster,
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub(crate) fn cache_stale(&self) {
        self.cache_stale.inc();
    }

    pub(crate) fn cache_entries(&self, entries: usize) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub(crate) fn upstream_error(&self, upstream: &str, reason: UpstreamError) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    pub(crate) fn overloaded(&self) {
        self.overloaded.inc();
    }

    pub(crate) fn forwarding_loop(&self) {
        self.loops.inc();
    }

    pub(crate) fn index_updated(
        &self,
        kind: crate::UpdateKind,
        generation: u64,
        services: usize,
        elapsed: Duration,
    ) {
        self.model_to_serving.observe(elapsed.as_secs_f64());
        let kind = match kind {
            crate::UpdateKind::Full => UpdateKindLabel::Full,
            crate::UpdateKind::Incremental(_) => UpdateKindLabel::Incremental,
        };
        self.index_updates
            .get_or_create(&UpdateLabels { kind })
            .inc();
        self.index_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.index_services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommon_query_types_share_one_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        for qtype in [99, 100, 4242, 65280] {
            metrics.request(
                Some(RecordType::from(qtype)),
                ResponseCode::NoError,
                Source::Cluster,
                Duration::from_micros(5),
            );
        }
        metrics.request(
            Some(RecordType::A),
            ResponseCode::NoError,
            Source::Cluster,
            Duration::from_micros(5),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fairlead_dns_requests_total{"))
            .collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                "fairlead_dns_requests_total{type=\"A\",rcode=\"NOERROR\"} 1",
                "fairlead_dns_requests_total{type=\"other\",rcode=\"NOERROR\"} 4",
            ],
            "{text}"
        );
    }
}
