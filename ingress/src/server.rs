//! Listeners and client connections: plain HTTP/1.1 or HTTP/2 with prior
//! knowledge (h2c, told apart by the connection preface: [`crate::h2c`]),
//! and TLS with ALPN choosing HTTP/2 or HTTP/1.1; a connection cap with 503
//! shedding; header, handshake and idle timeouts; graceful shutdown.
//!
//! HTTP/1.1: limits are enforced by hyper's parser: more than `max_headers`
//! headers or more than `max_header_bytes` of request head get 431, a head
//! not complete within `header_timeout` (slowloris, or an idle keep-alive
//! connection) closes the connection, a malformed request gets 400. In front
//! of the parser, the [`FramingGuard`] refuses ambiguous framing (request
//! smuggling) with 400 and closes the connection; see [`crate::framing`].
//!
//! HTTP/2, over TLS and h2c alike: at most `h2_max_streams` concurrent streams and `max_header_bytes`
//! of header list per request (advertised in SETTINGS); a connection must
//! bring its first request within `header_timeout` and is closed (GOAWAY,
//! then the socket after a grace period) once it has had no open stream for
//! `idle_timeout`, so a client sending nothing, half a HEADERS block, or only
//! PINGs cannot hold a connection. Rapid reset (CVE-2023-44487): streams
//! reset before the gateway accepted them are limited by h2 (20, then
//! GOAWAY), and a connection whose client cancelled at least 100 streams
//! before their response, more than half of all its streams, is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use http::{Response, StatusCode, header};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::framing::{FramingGuard, Refusal};
use crate::h2c::Sniffed;
use crate::metrics::{
    H2CloseLabels, HandshakeLabels, ListenerLabels, RefusalLabels, TlsVersionLabels,
};
use crate::proxy::{ConnInfo, ProxyBody, Shared, local_response};

/// hyper's default limit of headers in an HTTP/1.1 request.
const HYPER_MAX_HEADERS: usize = 100;

/// Settings of client connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Time allowed for a request head (and for an idle keep-alive gap).
    pub header_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long an HTTP/2 connection may stay without an open stream.
    pub idle_timeout: Duration,
    /// Most headers in an HTTP/1.1 request.
    pub max_headers: usize,
    /// Largest request head (start line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Open client connections served normally; more get 503 and are closed.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_headers: HYPER_MAX_HEADERS,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            h2_max_streams: 128,
        }
    }
}

/// Serves client connections.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    config: ServerConfig,
    active: AtomicUsize,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    cancel: CancellationToken,
    connections: TaskTracker,
}

/// Decrements the connection counts when a connection ends.
struct ConnGuard<'a> {
    active: &'a AtomicUsize,
    gauge: Gauge,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Server {
    /// A server; connections stop (gracefully) when `cancel` fires.
    #[must_use]
    pub fn new(shared: Arc<Shared>, config: ServerConfig, cancel: CancellationToken) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_header_size(config.max_header_bytes);
        // hyper's own limit is 100 headers, parsed into an inline array; a
        // limit set explicitly is a buffer built per request (0.8% of the
        // CPU of a proxied request in a profile), so only another limit
        // is set.
        if config.max_headers != HYPER_MAX_HEADERS {
            h1.max_headers(config.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            // CVE-2023-44487: a client resetting streams faster than they
            // are accepted gets GOAWAY (ENHANCE_YOUR_CALM) from h2; streams
            // reset after they reached the gateway are counted in
            // `serve_h2`.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20));
        Server {
            shared,
            config,
            active: AtomicUsize::new(0),
            h1,
            h2,
            cancel,
            connections: TaskTracker::new(),
        }
    }

    /// Connections being served, waited for when draining.
    #[must_use]
    pub fn connections(&self) -> &TaskTracker {
        &self.connections
    }

    /// Accepts connections until cancelled.
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        name: &'static str,
    ) {
        let cancel = self.cancel.clone();
        self.accept_until(listener, tls, name, None, cancel).await;
    }

    /// Accepts connections on a Gateway listener socket of port
    /// `gateway_port` until `stop` or the server's cancellation; the socket
    /// closes then, connections already accepted go on.
    pub async fn accept_gateway_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        gateway_port: u16,
        stop: CancellationToken,
    ) {
        let name = if tls.is_some() {
            "gateway-https"
        } else {
            "gateway-http"
        };
        self.accept_until(listener, tls, name, Some(gateway_port), stop)
            .await;
    }

    async fn accept_until(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        name: &'static str,
        gateway_port: Option<u16>,
        stop: CancellationToken,
    ) {
        let gauge = self
            .shared
            .metrics
            .active_connections
            .get_or_create(&ListenerLabels { listener: name })
            .clone();
        loop {
            let accepted = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    let tls = tls.clone();
                    let gauge = gauge.clone();
                    self.connections.spawn(
                        async move {
                            server
                                .serve_connection(stream, peer, (tls, gateway_port), gauge)
                                .await;
                        }
                        .in_current_span(),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        (tls, gateway_port): (Option<TlsAcceptor>, Option<u16>),
        gauge: Gauge,
    ) {
        let count = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        gauge.inc();
        let _guard = ConnGuard {
            active: &self.active,
            gauge,
        };
        let shed = count > self.config.max_connections;
        if shed {
            self.shared.metrics.shed_connections.inc();
            // Far over the cap: not even a 503.
            if count > self.config.max_connections + self.config.max_connections / 8 + 16 {
                return;
            }
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let mut info = ConnInfo::new(peer, local, tls.is_some());
        info.gateway_port = gateway_port;
        let info = Arc::new(info);
        match tls {
            None => {
                // A connection that has not said what it speaks yet is idle:
                // a shutdown closes it, as hyper closes an idle HTTP/1.1 one.
                let sniffed = tokio::select! {
                    sniffed = crate::h2c::sniff(stream, self.config.header_timeout) => sniffed,
                    () = self.cancel.cancelled() => return,
                };
                match sniffed {
                    Ok(Sniffed::Http1(stream)) => self.serve_http(stream, false, info, shed).await,
                    Ok(Sniffed::H2c(stream)) => self.serve_http(stream, true, info, shed).await,
                    Ok(Sniffed::Nothing) => {}
                    Err(e) => debug!(%peer, error = %e, "reading the first bytes failed"),
                }
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(
                    self.config.tls_handshake_timeout,
                    acceptor.accept(stream),
                )
                .await;
                let handshakes = &self.shared.metrics.tls_handshakes;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        handshakes
                            .get_or_create(&HandshakeLabels {
                                result: "error",
                                version: "",
                            })
                            .inc();
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        handshakes
                            .get_or_create(&HandshakeLabels {
                                result: "timeout",
                                version: "",
                            })
                            .inc();
                        return;
                    }
                };
                let session = stream.get_ref().1;
                let version = match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "other",
                };
                handshakes
                    .get_or_create(&HandshakeLabels {
                        result: "ok",
                        version,
                    })
                    .inc();
                if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    self.shared
                        .metrics
                        .tls_resumed
                        .get_or_create(&TlsVersionLabels { version })
                        .inc();
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                self.serve_http(stream, h2, info, shed).await;
            }
        }
    }

    async fn serve_http<I>(&self, io: I, h2: bool, info: Arc<ConnInfo>, shed: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let span = info_span!("conn", peer = %info.peer, tls = info.tls, h2);
        if shed {
            let io = TokioIo::new(io);
            let service = service_fn(|_request| async {
                let mut response = local_response(StatusCode::SERVICE_UNAVAILABLE);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                Ok::<Response<ProxyBody>, Infallible>(response)
            });
            let result = if h2 {
                tokio::time::timeout(
                    Duration::from_secs(2),
                    self.h2.serve_connection(io, service),
                )
                .await
            } else {
                let mut h1 = self.h1.clone();
                h1.keep_alive(false);
                tokio::time::timeout(Duration::from_secs(2), h1.serve_connection(io, service)).await
            };
            if let Ok(Err(e)) = result {
                debug!(parent: &span, error = %e, "shed connection error");
            }
            return;
        }
        if h2 {
            self.serve_h2(TokioIo::new(io), info).instrument(span).await;
        } else {
            self.serve_h1(io, info).instrument(span).await;
        }
    }

    async fn serve_h1<I>(&self, io: I, info: Arc<ConnInfo>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.shared.metrics.clone();
        let access_log = self.shared.config.access_log;
        let peer = info.peer;
        let io = FramingGuard::new(
            io,
            self.config.max_header_bytes,
            info.answers.clone(),
            move |reason: Refusal| {
                metrics
                    .refused_requests
                    .get_or_create(&RefusalLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
                if access_log {
                    info!(
                        target: "fairlead_ingress::access",
                        client = %peer,
                        status = 400,
                        error = reason.as_str(),
                        "request refused"
                    );
                }
            },
        );
        let shared = self.shared.clone();
        let service =
            service_fn(move |request| crate::proxy::handle(shared.clone(), info.clone(), request));
        let conn = self
            .h1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = self.cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection error");
        }
    }

    /// Serves an HTTP/2 connection, closing it when it has no open stream
    /// for too long (before its first request: the header timeout; after:
    /// the idle timeout), and when its client keeps cancelling streams
    /// before their response (rapid reset).
    async fn serve_h2<I>(&self, io: TokioIo<I>, info: Arc<ConnInfo>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(H2Activity::default());
        let shared = self.shared.clone();
        let streams = activity.clone();
        let service = service_fn(move |request| {
            let stream = StreamGuard::open(&streams);
            let shared = shared.clone();
            let info = info.clone();
            async move {
                let pending = PendingGuard(Some(&stream.0));
                let response = crate::proxy::handle(shared, info, request).await?;
                pending.answered();
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _stream: stream,
                }))
            }
        });
        let conn = self.h2.serve_connection(io, service);
        tokio::pin!(conn);
        let closed = &self.shared.metrics.h2_closed;
        let grace = self.config.header_timeout.min(Duration::from_secs(5));
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(Instant::now() + self.config.header_timeout);
        tokio::pin!(timer);
        let mut reason = "header-timeout";
        let mut closing = false;
        let mut draining = false;
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                () = activity.changed.notified() => {
                    if activity.rapid_reset() {
                        closed.get_or_create(&H2CloseLabels { reason: "rapid-reset" }).inc();
                        debug!("closing: streams cancelled before their response, again and again");
                        return;
                    }
                    if !closing {
                        let deadline = if activity.open.load(Ordering::Acquire) > 0 {
                            far()
                        } else if activity.started.load(Ordering::Acquire) == 0 {
                            Instant::now() + self.config.header_timeout
                        } else {
                            reason = "idle";
                            Instant::now() + self.config.idle_timeout
                        };
                        timer.as_mut().reset(deadline);
                    }
                }
                () = timer.as_mut() => {
                    if !closing {
                        closed.get_or_create(&H2CloseLabels { reason }).inc();
                        debug!(reason, "closing an HTTP/2 connection without streams");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(Instant::now() + grace);
                    } else if activity.open.load(Ordering::Acquire) == 0 {
                        // No answer to the GOAWAY's PING, or a half-sent head.
                        return;
                    } else {
                        // Streams opened before the GOAWAY finish on their own.
                        timer.as_mut().reset(far());
                    }
                }
                () = self.cancel.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection error");
        }
    }
}

/// Cancelled streams a client may cause before its connection is closed,
/// once they outnumber the answered ones (rapid-reset defence).
const RAPID_RESET_MIN: u64 = 100;

/// The streams of an HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Activity {
    /// Streams being served (request in the gateway, or response body
    /// still being sent).
    open: AtomicUsize,
    /// Streams started.
    started: AtomicU64,
    /// Streams the client cancelled (or lost) before their response.
    cancelled: AtomicU64,
    /// Signalled when `open` goes from or to zero, and on cancellations.
    changed: Notify,
}

impl H2Activity {
    fn rapid_reset(&self) -> bool {
        let cancelled = self.cancelled.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        cancelled >= RAPID_RESET_MIN && cancelled * 2 > started
    }
}

/// One open stream.
#[derive(Debug)]
struct StreamGuard(Arc<H2Activity>);

impl StreamGuard {
    fn open(activity: &Arc<H2Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        if activity.open.fetch_add(1, Ordering::AcqRel) == 0 {
            activity.changed.notify_one();
        }
        StreamGuard(activity.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// Counts a stream as cancelled if dropped before its response.
struct PendingGuard<'a>(Option<&'a H2Activity>);

impl PendingGuard<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(activity) = self.0 {
            activity.cancelled.fetch_add(1, Ordering::AcqRel);
            activity.changed.notify_one();
        }
    }
}

/// A response body that keeps its stream counted as open until it is sent.
#[derive(Debug)]
struct Tracked {
    body: ProxyBody,
    _stream: StreamGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::upstream::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::upstream::BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
