//! Upstreams: the ready endpoints of one Service port, with keep-alive
//! connection pools, power-of-two-choices least-request balancing and passive
//! outlier ejection.
//!
//! - **Balancing.** Two distinct endpoints are drawn at random and the one
//!   with fewer requests in flight wins (a request is in flight until its
//!   response body ends). Ejected endpoints and endpoints this request already
//!   tried are skipped; when every untried endpoint is ejected they are used
//!   anyway (Envoy's "panic mode"), since a possibly-bad endpoint beats a
//!   certain 503.
//! - **Outlier ejection.** Consecutive transport failures (connect refused or
//!   timed out, connection reset before a response, response timeout) eject an
//!   endpoint for `eject_time × 2^(ejections-1)`, capped at ten times
//!   `eject_time`. When the time is up the endpoint is back, one failure
//!   short of ejection, so a still-broken endpoint is ejected again at once
//!   and a healthy one is back for good after its first success.
//! - **Pools.** HTTP/1.1 connections are kept per endpoint (most recently
//!   used first) and reused once the previous response body has ended; h2c
//!   endpoints share one multiplexed connection. Endpoint objects survive
//!   endpoint-set updates, so their pools, counters and ejection state do too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpStream;
use tracing::Instrument as _;
use tracing::{debug, warn};

use crate::metrics::{Metrics, UpstreamLabels};
use crate::router::UpstreamProtocol;

/// Settings of every upstream.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an unused keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// At most this many idle connections per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Consecutive failures that eject an endpoint (0: never eject).
    pub eject_after: u32,
    /// Base ejection time.
    pub eject_time: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 1024,
            eject_after: 3,
            eject_time: Duration::from_secs(30),
        }
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Two distinct random indices below `count` (at least 2).
fn two_choices(count: usize) -> (usize, usize) {
    let first = fastrand::usize(..count);
    let mut second = fastrand::usize(..count - 1);
    if second >= first {
        second += 1;
    }
    (first, second)
}

/// The endpoint with fewer requests in flight (the first on a tie).
fn less_loaded(a: &Arc<Endpoint>, b: &Arc<Endpoint>) -> Arc<Endpoint> {
    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
        b.clone()
    } else {
        a.clone()
    }
}

/// The error of a body the gateway streams: the client's or the
/// upstream's (`hyper::Error`), or the gateway's own cut ([`crate::Error::BodyCut`]).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed.
    Client(Incoming),
    /// The client's body, streamed and copied to mirrors.
    Teed(crate::mirror::Tee),
    /// A mirror's copy of a client's body.
    Mirror(crate::mirror::MirrorBody),
    /// No body (a retried request that had none).
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::from))),
            RequestBody::Teed(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Mirror(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Teed(body) => body.is_end_stream(),
            RequestBody::Mirror(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Teed(body) => body.size_hint(),
            RequestBody::Mirror(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// One endpoint of an upstream.
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    failures: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Requests in flight.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected now.
    #[must_use]
    pub fn ejected(&self) -> bool {
        self.is_ejected(now_ms())
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// Counts a request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }

    /// The endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("connect to {addr}: timed out")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

/// A connection ready to send one request.
#[derive(Debug)]
pub enum Connection {
    /// HTTP/1.1 (owned until the response ends).
    Http1(http1::SendRequest<RequestBody>),
    /// h2c (shared).
    Http2(http2::SendRequest<RequestBody>),
}

/// What a request sent on a [`Connection`] came to.
pub type SendResult =
    Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<RequestBody>>>;

impl Connection {
    /// Sends a request; on failure, the request comes back if it was not sent.
    pub async fn send(&mut self, request: http::Request<RequestBody>) -> SendResult {
        match self {
            Connection::Http1(sender) => sender.try_send_request(request).await,
            Connection::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// Endpoints of one Service port.
pub struct Upstream {
    /// `namespace/service:port`, for logs and metric labels.
    pub name: Arc<str>,
    /// How to talk to the endpoints.
    pub protocol: UpstreamProtocol,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    config: Arc<PoolConfig>,
    metrics: Arc<Metrics>,
    /// This upstream's series of `upstream_latency_seconds`, looked up at
    /// its first response.
    latency: OnceLock<Histogram>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("endpoints", &self.endpoints.load().len())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream with no endpoints.
    #[must_use]
    pub fn new(
        name: Arc<str>,
        protocol: UpstreamProtocol,
        config: Arc<PoolConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Upstream {
            name,
            protocol,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            config,
            metrics,
            latency: OnceLock::new(),
        }
    }

    /// Records the time from sending a request to its response headers.
    pub fn observe_latency(&self, elapsed: Duration) {
        self.latency
            .get_or_init(|| {
                self.metrics
                    .upstream_latency
                    .get_or_create(&UpstreamLabels {
                        upstream: self.name.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// How many endpoints there are.
    #[must_use]
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().len()
    }

    /// Replaces the endpoint set (a no-op when it is the same). Endpoints that
    /// stay keep their pools and state; requests in flight to removed ones
    /// finish normally.
    pub fn set_endpoints(&self, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.sort_unstable();
        addrs.dedup();
        let current = self.endpoints.load();
        if current.len() == addrs.len() && current.iter().zip(&addrs).all(|(e, a)| e.addr == *a) {
            return false;
        }
        let next: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|addr| {
                current
                    .binary_search_by(|e| e.addr.cmp(&addr))
                    .map_or_else(|_| Arc::new(Endpoint::new(addr)), |i| current[i].clone())
            })
            .collect();
        self.endpoints.store(Arc::new(next));
        true
    }

    /// The current endpoints.
    #[must_use]
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Picks an endpoint not in `tried`, by power of two choices on requests
    /// in flight; `None` when every endpoint was tried (or there are none).
    #[must_use]
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<InFlight> {
        let endpoints = self.endpoints.load();
        let now = now_ms();
        let usable = |e: &Endpoint| !e.is_ejected(now) && !tried.contains(&e.addr);
        let chosen = match endpoints.len() {
            0 => return None,
            1 => endpoints
                .first()
                .filter(|e| !tried.contains(&e.addr))
                .cloned(),
            count => {
                let (first, second) = two_choices(count);
                let (a, b) = (&endpoints[first], &endpoints[second]);
                match (usable(a), usable(b)) {
                    (true, true) => Some(less_loaded(a, b)),
                    (true, false) => Some(a.clone()),
                    (false, true) => Some(b.clone()),
                    (false, false) => {
                        let mut candidates: Vec<&Arc<Endpoint>> =
                            endpoints.iter().filter(|e| usable(e)).collect();
                        if candidates.is_empty() {
                            // Panic mode: every untried endpoint is ejected.
                            candidates = endpoints
                                .iter()
                                .filter(|e| !tried.contains(&e.addr))
                                .collect();
                        }
                        match candidates.len() {
                            0 => None,
                            1 => Some(candidates[0].clone()),
                            count => {
                                let (first, second) = two_choices(count);
                                Some(less_loaded(candidates[first], candidates[second]))
                            }
                        }
                    }
                }
            }
        };
        chosen.map(InFlight::new)
    }

    /// A connection to `endpoint`: an idle pooled one, or a new one (the
    /// boolean: reused).
    ///
    /// The common case, a pooled connection ready to take a request, is
    /// answered without awaiting anything; the rest (waiting for a pooled
    /// connection, connecting, the handshake) is a boxed future, so the
    /// request future that awaits this one stays small: it is moved into
    /// place once per request (and boxed per HTTP/2 stream).
    pub async fn connect(
        &self,
        endpoint: &Arc<Endpoint>,
    ) -> Result<(Connection, bool), ConnectError> {
        if let Some(ready) = self.ready_pooled(endpoint) {
            return Ok((ready, true));
        }
        Box::pin(self.connect_slow(endpoint)).await
    }

    /// A pooled connection ready for a request now, if there is one; idle
    /// HTTP/1.1 connections that closed or timed out are dropped on the way.
    fn ready_pooled(&self, endpoint: &Endpoint) -> Option<Connection> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let mut idle = endpoint.idle.lock().ok()?;
                while let Some(conn) = idle.last() {
                    if conn.sender.is_closed() || conn.since.elapsed() >= self.config.idle_timeout {
                        idle.pop();
                        continue;
                    }
                    if !conn.sender.is_ready() {
                        return None;
                    }
                    return idle.pop().map(|c| Connection::Http1(c.sender));
                }
                None
            }
            UpstreamProtocol::H2c => endpoint
                .h2
                .lock()
                .ok()?
                .as_ref()
                .filter(|s| !s.is_closed())
                .cloned()
                .map(Connection::Http2),
        }
    }

    async fn connect_slow(
        &self,
        endpoint: &Arc<Endpoint>,
    ) -> Result<(Connection, bool), ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                if let Some(sender) = self.checkout_idle(endpoint).await {
                    return Ok((Connection::Http1(sender), true));
                }
                let io = self.tcp(endpoint.addr).await?;
                let (sender, conn) =
                    http1::Builder::new()
                        .handshake(io)
                        .await
                        .map_err(|source| ConnectError::Handshake {
                            addr: endpoint.addr,
                            source,
                        })?;
                let addr = endpoint.addr;
                tokio::spawn(
                    async move {
                        if let Err(e) = conn.with_upgrades().await {
                            debug!(upstream = %addr, error = %e, "upstream connection ended");
                        }
                    }
                    .in_current_span(),
                );
                Ok((Connection::Http1(sender), false))
            }
            UpstreamProtocol::H2c => {
                if let Some(sender) = endpoint
                    .h2
                    .lock()
                    .ok()
                    .and_then(|h2| h2.as_ref().filter(|s| !s.is_closed()).cloned())
                {
                    return Ok((Connection::Http2(sender), true));
                }
                let io = self.tcp(endpoint.addr).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(io)
                    .await
                    .map_err(|source| ConnectError::Handshake {
                        addr: endpoint.addr,
                        source,
                    })?;
                let addr = endpoint.addr;
                tokio::spawn(
                    async move {
                        if let Err(e) = conn.await {
                            debug!(upstream = %addr, error = %e, "upstream h2c connection ended");
                        }
                    }
                    .in_current_span(),
                );
                if let Ok(mut h2) = endpoint.h2.lock() {
                    *h2 = Some(sender.clone());
                }
                Ok((Connection::Http2(sender), false))
            }
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ConnectError> {
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout { addr })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    /// The most recently used idle connection that is (or is about to be)
    /// ready. A connection is parked as soon as its response body has ended;
    /// its task may need a moment more to be ready for the next request.
    async fn checkout_idle(&self, endpoint: &Endpoint) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let mut conn = endpoint.idle.lock().ok()?.pop()?;
            if conn.sender.is_closed() || conn.since.elapsed() >= self.config.idle_timeout {
                continue;
            }
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
            let ready = tokio::time::timeout(Duration::from_millis(500), conn.sender.ready()).await;
            if let Ok(Ok(())) = ready {
                return Some(conn.sender);
            }
        }
    }

    /// Gives an HTTP/1.1 connection back once its response has ended.
    pub fn give_back(&self, endpoint: &Arc<Endpoint>, sender: http1::SendRequest<RequestBody>) {
        if !sender.is_closed() {
            Self::park(endpoint, sender, self.config.max_idle_per_endpoint);
        }
    }

    fn park(endpoint: &Endpoint, sender: http1::SendRequest<RequestBody>, max: usize) {
        if let Ok(mut idle) = endpoint.idle.lock()
            && idle.len() < max
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Records a success: the endpoint's failure count starts over.
    pub fn record_success(&self, endpoint: &Endpoint) {
        if endpoint.failures.load(Ordering::Relaxed) != 0 {
            endpoint.failures.store(0, Ordering::Relaxed);
        }
        if endpoint.ejections.load(Ordering::Relaxed) != 0 && !endpoint.is_ejected(now_ms()) {
            endpoint.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a transport failure; ejects the endpoint after enough of them.
    pub fn record_failure(&self, endpoint: &Endpoint) {
        let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.eject_after == 0 || failures < self.config.eject_after {
            return;
        }
        let now = now_ms();
        if endpoint.is_ejected(now) {
            return;
        }
        let ejections = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let factor = 1u32 << (ejections - 1).min(3);
        let time = (self.config.eject_time * factor.min(10)).min(self.config.eject_time * 10);
        let until = now + u64::try_from(time.as_millis()).unwrap_or(u64::MAX / 2);
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        // Back after the ejection time, one failure short of ejection.
        endpoint
            .failures
            .store(self.config.eject_after.saturating_sub(1), Ordering::Relaxed);
        // Its idle connections are suspect too.
        if let Ok(mut idle) = endpoint.idle.lock() {
            idle.clear();
        }
        self.metrics.ejection(&self.name);
        warn!(upstream = %self.name, endpoint = %endpoint.addr, failures, ejections,
            seconds = time.as_secs_f64(), "endpoint ejected after consecutive failures");
    }

    /// Drops idle connections that are closed or unused for too long.
    pub fn sweep(&self) {
        let timeout = self.config.idle_timeout;
        for endpoint in self.endpoints.load().iter() {
            if let Ok(mut idle) = endpoint.idle.lock() {
                idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
            }
        }
    }

    /// Idle pooled connections over every endpoint (for tests and status).
    #[must_use]
    pub fn idle_connections(&self) -> usize {
        self.endpoints.load().iter().map(|e| e.idle_count()).sum()
    }
}

/// The response body of an upstream: streams the upstream's body, then
/// gives the connection back to the pool and ends the in-flight count.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    finish: Option<Finish>,
}

#[derive(Debug)]
struct Finish {
    in_flight: InFlight,
    upstream: Arc<Upstream>,
    pooled: Option<http1::SendRequest<RequestBody>>,
}

impl Finish {
    fn done(self) {
        if let Some(sender) = self.pooled {
            self.upstream.give_back(self.in_flight.endpoint(), sender);
        }
    }
}

impl UpstreamBody {
    /// Wraps a response body; `pooled` is the HTTP/1.1 connection to give
    /// back when the body ends.
    #[must_use]
    pub fn new(
        inner: Incoming,
        in_flight: InFlight,
        upstream: Arc<Upstream>,
        pooled: Option<http1::SendRequest<RequestBody>>,
    ) -> Self {
        UpstreamBody {
            inner,
            finish: Some(Finish {
                in_flight,
                upstream,
                pooled,
            }),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_frame(cx);
        match &result {
            Poll::Ready(None) => {
                if let Some(finish) = this.finish.take() {
                    finish.done();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken body: the connection is not reused.
                this.finish = None;
            }
            _ => {}
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take()
            && self.inner.is_end_stream()
        {
            finish.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: u8) -> Upstream {
        let u = Upstream::new(
            Arc::from("test/svc:80"),
            UpstreamProtocol::Http1,
            Arc::new(PoolConfig {
                eject_after: 2,
                eject_time: Duration::from_millis(300),
                ..PoolConfig::default()
            }),
            Arc::new(Metrics::default()),
        );
        u.set_endpoints(
            (1..=n)
                .map(|i| SocketAddr::from(([127, 0, 0, i], 80)))
                .collect(),
        );
        u
    }

    #[test]
    fn endpoint_state_survives_updates() {
        let u = upstream(3);
        let before = u.endpoints();
        assert!(!u.set_endpoints(before.iter().rev().map(|e| e.addr).collect()));
        assert!(u.set_endpoints(vec![before[0].addr, SocketAddr::from(([127, 0, 0, 9], 80))]));
        let after = u.endpoints();
        assert!(Arc::ptr_eq(&before[0], &after[0]));
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn least_request_is_preferred() {
        let u = upstream(2);
        let eps = u.endpoints();
        let _busy: Vec<InFlight> = (0..5).map(|_| InFlight::new(eps[0].clone())).collect();
        for _ in 0..50 {
            let picked = u.pick(&[]).unwrap();
            assert_eq!(picked.endpoint().addr, eps[1].addr);
        }
    }

    #[test]
    fn spread_over_equal_endpoints() {
        let u = upstream(10);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..2000 {
            let picked = u.pick(&[]).unwrap();
            *counts.entry(picked.endpoint().addr).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 10);
        assert!(counts.values().all(|c| *c > 100), "{counts:?}");
    }

    #[test]
    fn tried_endpoints_are_skipped_and_exhaustion_is_none() {
        let u = upstream(3);
        let mut tried = Vec::new();
        for _ in 0..3 {
            let picked = u.pick(&tried).unwrap();
            assert!(!tried.contains(&picked.endpoint().addr));
            tried.push(picked.endpoint().addr);
        }
        assert!(u.pick(&tried).is_none());
        assert!(upstream(0).pick(&[]).is_none());
    }

    #[test]
    fn ejection_and_recovery() {
        let u = upstream(3);
        let eps = u.endpoints();
        let bad = &eps[0];
        u.record_failure(bad);
        assert!(!bad.ejected(), "one failure is not enough");
        u.record_failure(bad);
        assert!(bad.ejected());
        for _ in 0..200 {
            assert_ne!(u.pick(&[]).unwrap().endpoint().addr, bad.addr);
        }
        // Panic mode: the only untried endpoint is ejected, it is used anyway.
        let others = [eps[1].addr, eps[2].addr];
        assert_eq!(u.pick(&others).unwrap().endpoint().addr, bad.addr);
        // Recovery after the ejection time, one failure short of ejection.
        std::thread::sleep(Duration::from_millis(400));
        assert!(!bad.ejected());
        u.record_failure(bad);
        assert!(
            bad.ejected(),
            "a recovered endpoint that fails again is ejected at once"
        );
        // The second ejection lasts longer (doubled: 600 ms).
        std::thread::sleep(Duration::from_millis(150));
        assert!(bad.ejected());
        std::thread::sleep(Duration::from_millis(600));
        assert!(!bad.ejected());
        u.record_success(bad);
        u.record_failure(bad);
        assert!(!bad.ejected(), "after a success, failures count from zero");
    }
}
