//! Prometheus metrics of the gateway (registered under `fairlead_ingress_`).
//! Label values come from the configuration (Ingress names, hosts as written
//! in rules, Service ports), never from requests, so cardinality is bounded.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name` of the Ingress, or empty when nothing matched.
    pub ingress: Arc<str>,
    /// The rule's host as written, or empty.
    pub host: Arc<str>,
    /// The response status.
    pub status: u16,
}

/// Labels naming an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `namespace/service:port`.
    pub upstream: Arc<str>,
}

/// Labels of an upstream error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// `namespace/service:port`.
    pub upstream: Arc<str>,
    /// `connect`, `send`, `timeout`.
    pub kind: &'static str,
}

/// Labels of a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `http` or `https`.
    pub listener: &'static str,
}

/// Labels of a request refused before routing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why (see [`crate::framing::Refusal::as_str`]).
    pub reason: &'static str,
}

/// Labels of an HTTP/2 connection closed by the gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct H2CloseLabels {
    /// `idle`, `header-timeout` or `rapid-reset`.
    pub reason: &'static str,
}

/// Labels of a TLS handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok`, `error` or `timeout`.
    pub result: &'static str,
    /// `TLSv1.3`, `TLSv1.2`, or empty on failure.
    pub version: &'static str,
}

/// Labels naming a TLS protocol version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsVersionLabels {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
}

/// Histogram buckets for latencies: 0.5 ms to about 33 s.
#[derive(Clone, Debug)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 17))
    }
}

/// Every metric of the gateway.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Requests answered, by Ingress, host and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from sending a request upstream to its response headers.
    pub upstream_latency: Family<UpstreamLabels, Histogram, LatencyBuckets>,
    /// Upstream errors, by kind.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Retries to another endpoint.
    pub retries: Family<UpstreamLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    pub ejections: Family<UpstreamLabels, Counter>,
    /// Open client connections, by listener.
    pub active_connections: Family<ListenerLabels, Gauge>,
    /// Connections refused with 503 because of the connection cap.
    pub shed_connections: Counter,
    /// TLS handshakes, by result and version.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Successful TLS handshakes that resumed a session, by version.
    pub tls_resumed: Family<TlsVersionLabels, Counter>,
    /// HTTP/1.1 requests refused (400) by the framing guard, by reason.
    pub refused_requests: Family<RefusalLabels, Counter>,
    /// HTTP/2 connections closed by the gateway, by reason (`idle`,
    /// `header-timeout`, `rapid-reset`).
    pub h2_closed: Family<H2CloseLabels, Counter>,
    /// Upgraded connections (WebSocket) open now.
    pub upgraded_connections: Gauge,
    /// Route tables published.
    pub reloads: Counter,
    /// Routes in the current table.
    pub routes: Gauge,
    /// Server names with a certificate of their own.
    pub certificates: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(LatencyBuckets),
            upstream_errors: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            active_connections: Family::default(),
            shed_connections: Counter::default(),
            tls_handshakes: Family::default(),
            tls_resumed: Family::default(),
            refused_requests: Family::default(),
            h2_closed: Family::default(),
            upgraded_connections: Gauge::default(),
            reloads: Counter::default(),
            routes: Gauge::default(),
            certificates: Gauge::default(),
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry` (give it the component's
    /// sub-registry).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics::default();
        registry.register(
            "requests",
            "HTTP requests answered, by Ingress, rule host and status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request to an endpoint to its response headers",
            m.upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream transport errors, by kind (connect, send, timeout, mirror)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests retried on another endpoint",
            m.retries.clone(),
        );
        registry.register(
            "ejections",
            "Endpoints ejected by passive outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections, by listener",
            m.active_connections.clone(),
        );
        registry.register(
            "shed_connections",
            "Client connections answered 503 or closed because of the connection cap",
            m.shed_connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result and protocol version",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_resumed_handshakes",
            "Successful TLS handshakes that resumed a session (ticket or session id), by protocol version",
            m.tls_resumed.clone(),
        );
        registry.register(
            "refused_requests",
            "HTTP/1.1 requests refused with 400 before routing (request smuggling defence), by reason",
            m.refused_requests.clone(),
        );
        registry.register(
            "h2_closed_connections",
            "HTTP/2 connections closed by the gateway, by reason (idle, header-timeout, rapid-reset)",
            m.h2_closed.clone(),
        );
        registry.register(
            "upgraded_connections",
            "Upgraded (WebSocket) connections open now",
            m.upgraded_connections.clone(),
        );
        registry.register("reloads", "Route tables published", m.reloads.clone());
        registry.register("routes", "Routes in the current table", m.routes.clone());
        registry.register(
            "certificates",
            "Server names with a certificate of their own",
            m.certificates.clone(),
        );
        Arc::new(m)
    }

    /// Counts an ejection.
    pub fn ejection(&self, upstream: &Arc<str>) {
        self.ejections
            .get_or_create(&UpstreamLabels {
                upstream: upstream.clone(),
            })
            .inc();
    }

    /// Counts an upstream error.
    pub fn upstream_error(&self, upstream: &Arc<str>, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.clone(),
                kind,
            })
            .inc();
    }
}
