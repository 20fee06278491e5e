//! Listeners and client connections: plain HTTP/1.1, and TLS with ALPN
//! choosing HTTP/2 or HTTP/1.1; a connection cap with 503 shedding; header,
//! handshake and idle timeouts; graceful shutdown.
//!
//! Limits on HTTP/1.1 requests are enforced by hyper's parser: more than
//! `max_headers` headers or more than `max_header_bytes` of request head get
//! 431, a head not complete within `header_timeout` (slowloris, or an idle
//! keep-alive connection) closes the connection, a malformed request gets
//! 400. A request carrying both `Transfer-Encoding` and `Content-Length` is
//! framed by `Transfer-Encoding` only, the `Content-Length` is dropped and
//! the connection is closed after the response (RFC 9112 §6.3), so nothing
//! smuggled in the body can become a second request; a `Transfer-Encoding`
//! other than chunked, or conflicting `Content-Length`s, get 400.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::{HandshakeLabels, ListenerLabels};
use crate::proxy::{ConnInfo, ProxyBody, Shared, local_response};

/// Settings of client connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Time allowed for a request head (and for an idle keep-alive gap).
    pub header_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
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
            max_headers: 100,
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
            .max_headers(config.max_headers)
            .max_header_size(config.max_header_bytes);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
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
        let gauge = self
            .shared
            .metrics
            .active_connections
            .get_or_create(&ListenerLabels { listener: name })
            .clone();
        loop {
            let accepted = tokio::select! {
                () = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    let tls = tls.clone();
                    let gauge = gauge.clone();
                    self.connections.spawn(async move {
                        server.serve_connection(stream, peer, tls, gauge).await;
                    });
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
        tls: Option<TlsAcceptor>,
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
        let info = Arc::new(ConnInfo {
            peer,
            local,
            tls: tls.is_some(),
        });
        match tls {
            None => self.serve_http(stream, false, info, shed).await,
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
        let io = TokioIo::new(io);
        if shed {
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
        let shared = self.shared.clone();
        let service =
            service_fn(move |request| crate::proxy::handle(shared.clone(), info.clone(), request));
        let cancel = &self.cancel;
        async move {
            if h2 {
                let conn = self.h2.serve_connection(io, service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection error");
                }
            } else {
                let conn = self.h1.serve_connection(io, service).with_upgrades();
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection error");
                }
            }
        }
        .instrument(span)
        .await;
    }
}
