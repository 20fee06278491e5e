//! The request path: route, redirect, rewrite headers, forward with retries,
//! pass upgrades through, answer gateway errors, count and log.
//!
//! Gateway answers: 400 for a request that cannot be routed (no or several
//! `Host` headers, a bad authority, a path that is not absolute), 404 when no
//! route matches, 405 for CONNECT, 414 for a URI over the limit, 308 to HTTPS
//! for hosts with TLS, 502 when no endpoint could be reached or the upstream
//! broke the exchange, 503 when the backend has no ready endpoint (or does
//! not resolve), 504 when the response headers did not come in time (the
//! gateway's `--ingress-response-timeout` per attempt, or a Gateway API
//! route's `timeouts`).
//!
//! Gateway API filters ([`crate::filters`]) of the matched route, when it
//! has any: a redirect answers at once; otherwise the path and host are
//! rewritten, request headers modified, requests copied to the mirrors
//! ([`crate::mirror`]: spawned, never awaited, bodies teed), and the
//! response headers modified. A route's request timeout covers the whole
//! exchange: 504 when the response headers are late, and a response body
//! still streaming at the deadline is cut off.
//!
//! Retries go to another endpoint: always when the request was not sent (the
//! connect failed, or a pooled connection turned out closed), and for
//! idempotent requests without a body when the exchange failed after sending.
//! A response timeout is never retried.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing::{debug, info};

use crate::framing::Answers;
use crate::metrics::{Metrics, RequestLabels, UpstreamLabels};
use crate::router::{
    BackendSpec, RouteTable, UpstreamProtocol, normalize_host, remove_dot_segments,
};
use crate::upstream::{BodyError, Connection, RequestBody, Upstream, UpstreamBody};

/// Settings of the request path.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Redirect plain-HTTP requests for hosts with TLS to HTTPS (308).
    pub ssl_redirect: bool,
    /// The port in redirect locations (omitted when 443).
    pub https_port: u16,
    /// Peers whose X-Forwarded-* and X-Request-Id headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest request target (path and query) accepted.
    pub max_uri_len: usize,
    /// Time allowed from sending a request upstream to its response headers.
    pub response_timeout: Duration,
    /// Retries on another endpoint.
    pub retries: u32,
    /// Log every request (target `fairlead_ingress::access`).
    pub access_log: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            ssl_redirect: true,
            https_port: 443,
            trusted_proxies: Vec::new(),
            max_uri_len: 8192,
            response_timeout: Duration::from_secs(60),
            retries: 2,
            access_log: true,
        }
    }
}

impl ProxyConfig {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The route table with the upstream of each of its backends, swapped as one.
#[derive(Debug, Default)]
pub struct Routing {
    /// The routes.
    pub table: RouteTable,
    /// The upstream of each backend of `table` (`None`: unresolved).
    pub upstreams: Vec<Option<Arc<Upstream>>>,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The current routes.
    pub routing: ArcSwap<Routing>,
    /// Settings.
    pub config: ProxyConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Upgraded (tunnelled) connections, waited for when draining.
    pub tunnels: TaskTracker,
    /// Cancelled when draining is over: tunnels still open are closed.
    pub hard_stop: CancellationToken,
}

impl Shared {
    /// Shared state with an empty route table.
    #[must_use]
    pub fn new(config: ProxyConfig, metrics: Arc<Metrics>) -> Self {
        Shared {
            routing: ArcSwap::from_pointee(Routing::default()),
            config,
            metrics,
            tunnels: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
        }
    }
}

/// What the gateway knows about a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client (or the proxy in front).
    pub peer: SocketAddr,
    /// The local address it connected to.
    pub local: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The port of the Gateway listener socket it came in on (`None`: the
    /// node's `--http` or `--https` listener, shared with the Ingresses).
    pub gateway_port: Option<u16>,
    /// The peer's address as a header value, made once per connection.
    pub peer_header: HeaderValue,
    /// The local port as a header value (`X-Forwarded-Port`), made once per
    /// connection.
    pub port_header: HeaderValue,
    /// How its requests were answered (for the HTTP/1.1 framing guard).
    pub answers: Arc<Answers>,
    /// The request counter its last request went to: the next one, on the
    /// same route with the same status, counts there without looking the
    /// series up.
    last_counter: Mutex<Option<CounterCache>>,
}

/// A series of the request counter, by its labels' pointers.
#[derive(Debug)]
struct CounterCache {
    ingress: Option<Arc<str>>,
    host: Option<Arc<str>>,
    status: u16,
    counter: Counter,
}

fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl ConnInfo {
    /// What the gateway knows about a new connection.
    #[must_use]
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        let peer_header = HeaderValue::try_from(peer.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            local,
            tls,
            gateway_port: None,
            peer_header,
            port_header: HeaderValue::from(local.port()),
            answers: Arc::default(),
            last_counter: Mutex::new(None),
        }
    }

    /// Counts a request in `requests{ingress, host, status}`.
    fn count_request(&self, metrics: &Metrics, outcome: &Outcome, status: u16) {
        let mut last = self
            .last_counter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = last.as_ref()
            && cache.status == status
            && same(cache.ingress.as_ref(), outcome.ingress.as_ref())
            && same(cache.host.as_ref(), outcome.host.as_ref())
        {
            cache.counter.inc();
            return;
        }
        let empty = || Arc::from("");
        let counter = metrics
            .requests
            .get_or_create(&RequestLabels {
                ingress: outcome.ingress.clone().unwrap_or_else(empty),
                host: outcome.host.clone().unwrap_or_else(empty),
                status,
            })
            .clone();
        counter.inc();
        *last = Some(CounterCache {
            ingress: outcome.ingress.clone(),
            host: outcome.host.clone(),
            status,
            counter,
        });
    }
}

/// The body of a response to a client.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
    /// Streamed from an upstream until a deadline (a Gateway API route's
    /// request timeout), then cut off.
    Deadline(UpstreamBody, Pin<Box<tokio::time::Sleep>>),
    /// Generated here.
    Local(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let upstream = |poll: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| {
            poll.map(|frame| frame.map(|r| r.map_err(BodyError::from)))
        };
        match self.get_mut() {
            ProxyBody::Upstream(body) => upstream(Pin::new(body).poll_frame(cx)),
            ProxyBody::Deadline(body, deadline) => {
                if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
                    return upstream(Poll::Ready(frame));
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    debug!("response body cut off at the route's request timeout");
                    return Poll::Ready(Some(Err(crate::Error::BodyCut(
                        "the route's request timeout passed while the response streamed",
                    )
                    .into())));
                }
                Poll::Pending
            }
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) | ProxyBody::Deadline(body, _) => body.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) | ProxyBody::Deadline(body, _) => body.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A small plain-text response made by the gateway.
#[must_use]
pub fn local_response(status: StatusCode) -> Response<ProxyBody> {
    let body: &'static str = match status.as_u16() {
        400 => "400 Bad Request\n",
        404 => "404 Not Found\n",
        405 => "405 Method Not Allowed\n",
        500 => "500 Internal Server Error\n",
        414 => "414 URI Too Long\n",
        502 => "502 Bad Gateway\n",
        503 => "503 Service Unavailable\n",
        504 => "504 Gateway Timeout\n",
        _ => "error\n",
    };
    let mut response = Response::new(ProxyBody::Local(Some(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What happened to a request, for the metrics and the access log.
#[derive(Debug, Default)]
struct Outcome {
    ingress: Option<Arc<str>>,
    host: Option<Arc<str>>,
    route_path: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
    attempts: usize,
    upstream_time: Option<Duration>,
    request_id: Option<HeaderValue>,
    error: Option<String>,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let mut outcome = Outcome::default();
    let log = shared.config.access_log.then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            request.headers().get(header::HOST).cloned(),
            request.version(),
        )
    });
    let grpc = is_grpc(request.headers());
    let response = proxy(&shared, &conn, request, &mut outcome).await;
    let status = response.status();
    conn.answers
        .answered(status == StatusCode::SWITCHING_PROTOCOLS);
    conn.count_request(&shared.metrics, &outcome, status.as_u16());
    if let Some((method, uri, host, version)) = log {
        let host = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(Authority::as_str))
            .unwrap_or("");
        info!(
            target: "fairlead_ingress::access",
            client = %conn.peer,
            method = %method,
            host,
            path = uri.path(),
            proto = ?version,
            tls = conn.tls,
            status = status.as_u16(),
            ingress = outcome.ingress.as_deref().unwrap_or(""),
            route_host = outcome.host.as_deref().unwrap_or(""),
            route_path = outcome.route_path.as_deref().unwrap_or(""),
            upstream = outcome.upstream.as_deref().unwrap_or(""),
            endpoint = outcome.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            attempts = outcome.attempts,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            upstream_ms = outcome.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
            request_id = outcome.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            error = outcome.error.as_deref().unwrap_or(""),
            "request"
        );
    }
    if grpc && status != StatusCode::OK && matches!(response.body(), ProxyBody::Local(_)) {
        return Ok(grpc_error(status));
    }
    Ok(response)
}

/// Whether a request is gRPC (`content-type: application/grpc…`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC answer to a request the gateway answers itself: trailers-only
/// (HTTP 200, `grpc-status` in the headers). No route is UNIMPLEMENTED (12);
/// a backend that is invalid, has no endpoint or failed is UNAVAILABLE (14);
/// anything else INTERNAL (13).
fn grpc_error(status: StatusCode) -> Response<ProxyBody> {
    let (code, message) = match status.as_u16() {
        404 => ("12", "no route for this method"),
        500 | 502 | 503 | 504 => ("14", "the backend is unavailable"),
        _ => ("13", "the gateway refused the request"),
    };
    let mut response = Response::new(ProxyBody::Local(None));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

#[allow(
    clippy::too_many_lines,
    reason = "the request path read top to bottom: validate, route, rewrite, forward"
)]
async fn proxy(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    request: Request<Incoming>,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let config = &shared.config;
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    if parts.method == Method::CONNECT {
        return local_response(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(path_and_query) = parts.uri.path_and_query().cloned() else {
        return local_response(StatusCode::BAD_REQUEST);
    };
    if !path_and_query.path().starts_with('/') {
        return local_response(StatusCode::BAD_REQUEST);
    }
    if path_and_query.as_str().len() > config.max_uri_len {
        return local_response(StatusCode::URI_TOO_LONG);
    }
    // The authority: absolute-form target (and HTTP/2 :authority) first,
    // else the one Host header.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        outcome.error = Some("several Host headers".to_owned());
        return local_response(StatusCode::BAD_REQUEST);
    }
    let authority = match (parts.uri.authority(), host_header) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(h)) => match Authority::try_from(h.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => Some(a),
            _ => {
                outcome.error = Some("bad Host header".to_owned());
                return local_response(StatusCode::BAD_REQUEST);
            }
        },
        (None, None) => None,
    };
    if authority.is_none() && parts.version == Version::HTTP_11 {
        outcome.error = Some("no Host header".to_owned());
        return local_response(StatusCode::BAD_REQUEST);
    }
    let host = normalize_host(authority.as_ref().map_or("", Authority::as_str));
    let normalized = remove_dot_segments(path_and_query.path());
    let path = normalized.as_deref().unwrap_or(path_and_query.path());
    let routing = shared.routing.load_full();

    let route = match conn.gateway_port {
        None => routing.table.route_request(
            &host,
            path,
            path_and_query.query(),
            &parts.method,
            &parts.headers,
            conn.tls,
        ),
        Some(port) => routing.table.route_gateway_port(
            port,
            &host,
            path,
            path_and_query.query(),
            &parts.method,
            &parts.headers,
        ),
    };
    if let Some(route) = route {
        outcome.ingress = Some(route.ingress.clone());
        outcome.host = Some(route.host.clone());
        outcome.route_path = Some(route.path.clone());
    }
    if !conn.tls
        && conn.gateway_port.is_none()
        && config.ssl_redirect
        && routing.table.tls_hosts.contains(&host)
        && !path.starts_with("/.well-known/acme-challenge/")
    {
        return redirect(&host, path, path_and_query.query(), config.https_port);
    }
    let Some(route) = route else {
        return local_response(StatusCode::NOT_FOUND);
    };
    // Gateway API filters: `None` for every route without any.
    let filters = route.filters.clone();
    if let Some(f) = &filters
        && let Some(r) = &f.redirect
    {
        let location = f.location(
            r,
            (conn.tls, conn.local.port()),
            &host,
            path,
            path_and_query.query(),
        );
        return filter_redirect(r.status, location);
    }
    let Some(upstream) = routing.upstreams.get(route.backend).cloned().flatten() else {
        let spec = routing.table.backend(route.backend);
        outcome.error = Some(format!("backend {spec}"));
        let status = match spec {
            BackendSpec::Unresolved { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            BackendSpec::Service { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        return local_response(status);
    };
    outcome.upstream = Some(upstream.name.clone());

    let upgrade = parts.version == Version::HTTP_11 && wants_upgrade(&parts.headers);
    if upgrade && upstream.protocol == UpstreamProtocol::H2c {
        outcome.error = Some("upgrade to an h2c upstream".to_owned());
        return local_response(StatusCode::BAD_GATEWAY);
    }
    let on_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let rewrite = filters.as_ref().and_then(|f| f.rewrite.as_ref());
    let rewritten = filters.as_ref().and_then(|f| {
        f.rewrite
            .as_ref()?
            .path
            .as_ref()
            .map(|m| f.modify_path(m, path))
    });
    let target = match rewritten.or_else(|| normalized.clone()) {
        Some(p) => {
            let mut s = p;
            if let Some(q) = path_and_query.query() {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::try_from(s).unwrap_or(path_and_query)
        }
        None => path_and_query,
    };
    outcome.request_id = Some(forwarded_headers(
        &mut parts.headers,
        conn,
        config,
        authority.as_ref(),
        upgrade,
        upstream.protocol,
    ));
    if let Some(f) = &filters {
        for ops in &f.request_headers {
            ops.apply(&mut parts.headers);
        }
    }
    let rewrite_host = rewrite
        .and_then(|r| r.hostname.as_deref())
        .and_then(|h| Authority::try_from(h).ok());
    address_upstream(
        &mut parts,
        upstream.protocol,
        target,
        authority,
        rewrite_host,
    );
    parts.extensions = http::Extensions::new();
    let Some(f) = filters else {
        let timeout = config.response_timeout;
        let body = RequestBody::Client(body);
        return forward(shared, &upstream, parts, body, on_upgrade, timeout, outcome).await;
    };
    let body = if f.mirrors.is_empty() || on_upgrade.is_some() {
        RequestBody::Client(body)
    } else {
        let mirrors = f
            .mirrors
            .iter()
            .filter_map(|id| routing.upstreams.get(*id).cloned().flatten())
            .collect();
        crate::mirror::mirror(
            mirrors,
            &parts,
            body,
            config.response_timeout,
            &shared.metrics,
        )
    };
    let attempt = f.attempt_timeout(config.response_timeout);
    let exchange = forward(shared, &upstream, parts, body, on_upgrade, attempt, outcome);
    let mut response = match f.timeouts.request {
        Some(limit) => {
            let deadline = started + limit;
            let Ok(response) = tokio::time::timeout_at(deadline.into(), exchange).await else {
                outcome.error = Some("route request timeout".to_owned());
                return local_response(StatusCode::GATEWAY_TIMEOUT);
            };
            // The timeout covers the response body too: one still
            // streaming at the deadline is cut off.
            response.map(|body| match body {
                ProxyBody::Upstream(body) => {
                    ProxyBody::Deadline(body, Box::pin(tokio::time::sleep_until(deadline.into())))
                }
                other => other,
            })
        }
        None => exchange.await,
    };
    for ops in &f.response_headers {
        ops.apply(response.headers_mut());
    }
    response
}

/// Addresses a request head to an upstream speaking `protocol`: the
/// target `target`, and the authority — `rewrite_host` (a URLRewrite
/// filter's) when given, else the client's `authority` — as the Host header
/// (HTTP/1.1, where a client's own Host header is kept unless rewritten) or
/// the URI's authority (h2c). Used for the route's backend and its mirrors.
pub(crate) fn address_upstream(
    parts: &mut http::request::Parts,
    protocol: UpstreamProtocol,
    target: PathAndQuery,
    authority: Option<Authority>,
    rewrite_host: Option<Authority>,
) {
    match protocol {
        UpstreamProtocol::Http1 => {
            parts.uri = Uri::from(target);
            parts.version = Version::HTTP_11;
            if let Some(h) = &rewrite_host
                && let Ok(v) = HeaderValue::from_str(h.as_str())
            {
                parts.headers.insert(header::HOST, v);
            } else if let Some(a) = &authority
                && !parts.headers.contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
        }
        UpstreamProtocol::H2c => {
            let authority = rewrite_host
                .or(authority)
                .unwrap_or_else(|| Authority::from_static("localhost"));
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(target)
                .build()
                .unwrap_or_default();
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
}

/// The answer of a `RequestRedirect` filter.
fn filter_redirect(status: u16, location: String) -> Response<ProxyBody> {
    let Ok(value) = HeaderValue::try_from(location) else {
        return local_response(StatusCode::BAD_REQUEST);
    };
    let mut response = Response::new(ProxyBody::Local(None));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    response.headers_mut().insert(header::LOCATION, value);
    response
}

fn redirect(host: &str, path: &str, query: Option<&str>, port: u16) -> Response<ProxyBody> {
    let mut location = String::with_capacity(host.len() + path.len() + 16);
    location.push_str("https://");
    location.push_str(host);
    if port != 443 {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let Ok(value) = HeaderValue::try_from(location) else {
        return local_response(StatusCode::BAD_REQUEST);
    };
    let mut response = Response::new(ProxyBody::Local(Some(Bytes::from_static(
        b"308 Permanent Redirect\n",
    ))));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, value);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

const MAX_ATTEMPTS: usize = 8;

#[allow(
    clippy::too_many_lines,
    reason = "one attempt loop: pick, connect, send, classify; splitting it would hide the retry rules"
)]
async fn forward(
    shared: &Arc<Shared>,
    upstream: &Arc<Upstream>,
    parts: http::request::Parts,
    body: RequestBody,
    mut on_upgrade: Option<OnUpgrade>,
    attempt_timeout: Duration,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let config = &shared.config;
    let metrics = &shared.metrics;
    let max_attempts = (config.retries as usize + 1).min(MAX_ATTEMPTS);
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut request = Some(Request::from_parts(parts, body));
    let mut spare: Option<(Method, Uri, Version, HeaderMap)> = None;
    loop {
        let Some(in_flight) = upstream.pick(&tried[..attempts]) else {
            if attempts == 0 {
                outcome.error = Some("no ready endpoints".to_owned());
                return local_response(StatusCode::SERVICE_UNAVAILABLE);
            }
            return local_response(StatusCode::BAD_GATEWAY);
        };
        let endpoint = in_flight.endpoint().clone();
        tried[attempts] = endpoint.addr;
        attempts += 1;
        outcome.endpoint = Some(endpoint.addr);
        outcome.attempts = attempts;
        let can_retry = attempts < max_attempts;
        let mut connection = match upstream.connect(&endpoint).await {
            Ok((connection, _reused)) => connection,
            Err(e) => {
                debug!(upstream = %upstream.name, endpoint = %endpoint.addr, error = %e, "connect failed");
                upstream.record_failure(&endpoint);
                metrics.upstream_error(&upstream.name, "connect");
                outcome.error = Some(e.to_string());
                if can_retry {
                    count_retry(metrics, upstream);
                    continue;
                }
                return local_response(StatusCode::BAD_GATEWAY);
            }
        };
        let Some(req) = request.take() else {
            return local_response(StatusCode::BAD_GATEWAY);
        };
        // A copy of the head for a retry after sending, kept only when
        // another endpoint is left to retry on.
        if replayable && can_retry && spare.is_none() && upstream.endpoint_count() > attempts {
            spare = Some((
                req.method().clone(),
                req.uri().clone(),
                req.version(),
                req.headers().clone(),
            ));
        }
        let sent = Instant::now();
        let result = tokio::time::timeout(attempt_timeout, connection.send(req)).await;
        match result {
            Err(_) => {
                upstream.record_failure(&endpoint);
                metrics.upstream_error(&upstream.name, "timeout");
                outcome.error = Some("response timeout".to_owned());
                return local_response(StatusCode::GATEWAY_TIMEOUT);
            }
            Ok(Err(mut e)) if e.error().is_user() => {
                // The client's side failed (its request body broke off):
                // not the endpoint's fault, and nothing to retry.
                outcome.error = Some(format!("client request: {}", e.error()));
                drop(e.take_message());
                return local_response(StatusCode::BAD_REQUEST);
            }
            Ok(Err(mut e)) => {
                upstream.record_failure(&endpoint);
                metrics.upstream_error(&upstream.name, "send");
                outcome.error = Some(e.error().to_string());
                debug!(upstream = %upstream.name, endpoint = %endpoint.addr, error = %e.error(), "request failed");
                if let Some(req) = e.take_message() {
                    request = Some(req);
                } else if let Some((method, uri, version, headers)) = spare.take() {
                    let mut req = Request::new(RequestBody::Empty);
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.version_mut() = version;
                    *req.headers_mut() = headers;
                    request = Some(req);
                }
                if request.is_some() && can_retry {
                    count_retry(metrics, upstream);
                    continue;
                }
                return local_response(StatusCode::BAD_GATEWAY);
            }
            Ok(Ok(mut response)) => {
                upstream.record_success(&endpoint);
                let elapsed = sent.elapsed();
                outcome.upstream_time = Some(elapsed);
                outcome.error = None;
                upstream.observe_latency(elapsed);
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client) = on_upgrade.take() else {
                        outcome.error =
                            Some("101 for a request that did not ask to upgrade".to_owned());
                        return local_response(StatusCode::BAD_GATEWAY);
                    };
                    let upstream_io = hyper::upgrade::on(&mut response);
                    strip_hop_by_hop(response.headers_mut(), true);
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    spawn_tunnel(shared, client, upstream_io, in_flight);
                    return response.map(|_| ProxyBody::Local(None));
                }
                strip_hop_by_hop(response.headers_mut(), false);
                let pooled = match connection {
                    Connection::Http1(sender) => Some(sender),
                    Connection::Http2(_) => None,
                };
                return response.map(|body| {
                    ProxyBody::Upstream(UpstreamBody::new(
                        body,
                        in_flight,
                        upstream.clone(),
                        pooled,
                    ))
                });
            }
        }
    }
}

fn count_retry(metrics: &Metrics, upstream: &Upstream) {
    metrics
        .retries
        .get_or_create(&UpstreamLabels {
            upstream: upstream.name.clone(),
        })
        .inc();
}

/// Copies bytes both ways between an upgraded client connection and the
/// upgraded upstream connection until either side closes, or draining ends.
fn spawn_tunnel(
    shared: &Arc<Shared>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: crate::upstream::InFlight,
) {
    let gauge = shared.metrics.upgraded_connections.clone();
    let stop = shared.hard_stop.clone();
    shared.tunnels.spawn(
        async move {
            let _in_flight = in_flight;
            let (client, upstream) = tokio::join!(client, upstream);
            let (client, upstream) = match (client, upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) | (_, Err(e)) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            gauge.inc();
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = result {
                        debug!(error = %e, "tunnel ended with an error");
                    }
                }
                () = stop.cancelled() => debug!("tunnel closed at the end of draining"),
            }
            gauge.dec();
        }
        .in_current_span(),
    );
}

/// Whether an HTTP/1.1 request asks to switch protocols.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers: those `Connection` names, and the standard
/// ones. `upgrade` keeps `Upgrade` (the caller sets `Connection: upgrade`).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| *n != header::HOST && !(upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Rewrites the request headers for the upstream; returns the request id.
fn forwarded_headers(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    config: &ProxyConfig,
    authority: Option<&Authority>,
    upgrade: bool,
    protocol: UpstreamProtocol,
) -> HeaderValue {
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| has_token(v, "trailers"));
    strip_hop_by_hop(headers, upgrade);
    headers.remove(header::TE);
    // Room for the headers added below, so the map grows (and rehashes)
    // at most once.
    headers.reserve(8);
    if te_trailers && protocol == UpstreamProtocol::H2c {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let peer = conn.peer.ip().to_canonical();
    let trusted = config.trusts(peer);

    // X-Forwarded-For: append the peer to a trusted proxy's list; otherwise
    // the peer alone. The client is the rightmost untrusted address.
    let mut client = peer;
    let incoming: Vec<&str> = if trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    for hop in incoming.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if config.trusts(ip) => client = ip,
            Ok(ip) => {
                client = ip;
                break;
            }
            Err(_) => break,
        }
    }
    let xff = if incoming.is_empty() {
        conn.peer_header.clone()
    } else {
        let mut xff = incoming.join(", ");
        xff.push_str(", ");
        xff.push_str(&peer.to_string());
        HeaderValue::try_from(xff).unwrap_or_else(|_| conn.peer_header.clone())
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    let keep = |headers: &HeaderMap, name: &HeaderName| trusted && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            Some(v) => headers.insert(&X_FORWARDED_HOST, v),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        headers.insert(&X_FORWARDED_PORT, conn.port_header.clone());
    }
    let real_ip = if client == peer {
        conn.peer_header.clone()
    } else {
        HeaderValue::try_from(client.to_string()).unwrap_or_else(|_| conn.peer_header.clone())
    };
    headers.insert(&X_REAL_IP, real_ip);
    if keep(headers, &X_REQUEST_ID)
        && let Some(id) = headers.get(&X_REQUEST_ID)
    {
        return id.clone();
    }
    let id = request_id();
    headers.insert(&X_REQUEST_ID, id.clone());
    id
}

/// A random request id: 32 lower-case hex digits.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo::new(peer.parse().unwrap(), "10.0.0.1:8443".parse().unwrap(), tls)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn untrusted_peers_cannot_forge_forwarded_headers() {
        let config = ProxyConfig {
            trusted_proxies: vec!["192.0.2.0/24".parse().unwrap()],
            ..ProxyConfig::default()
        };
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-request-id", "forged"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        let authority = Authority::from_static("shop.example.com");
        let id = forwarded_headers(
            &mut h,
            &conn("203.0.113.7:5555", false),
            &config,
            Some(&authority),
            false,
            UpstreamProtocol::Http1,
        );
        assert_eq!(get(&h, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get(&h, "x-real-ip"), Some("203.0.113.7"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("shop.example.com"));
        assert_eq!(get(&h, "x-forwarded-port"), Some("8443"));
        assert_ne!(get(&h, "x-request-id"), Some("forged"));
        assert_eq!(id.len(), 32);
        assert_eq!(h.get("x-request-id"), Some(&id));
    }

    #[test]
    fn trusted_proxies_chain_is_kept_and_client_found() {
        let config = ProxyConfig {
            trusted_proxies: vec![
                "192.0.2.0/24".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            ..ProxyConfig::default()
        };
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.9"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "abc"),
        ]);
        let id = forwarded_headers(
            &mut h,
            &conn("192.0.2.10:5555", false),
            &config,
            None,
            false,
            UpstreamProtocol::Http1,
        );
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("6.6.6.6, 198.51.100.9, 10.1.2.3, 192.0.2.10")
        );
        // The rightmost address that is not a trusted proxy.
        assert_eq!(get(&h, "x-real-ip"), Some("198.51.100.9"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(id, "abc");
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let config = ProxyConfig::default();
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret, host"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("te", "trailers, deflate"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
            ("host", "a"),
        ]);
        forwarded_headers(
            &mut h,
            &conn("10.0.0.2:1", true),
            &config,
            None,
            false,
            UpstreamProtocol::Http1,
        );
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "x-secret",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone} kept");
        }
        assert_eq!(get(&h, "x-kept"), Some("1"));
        assert_eq!(get(&h, "host"), Some("a"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert!(h.get("x-forwarded-host").is_none());

        // To an h2c upstream, `te: trailers` survives (gRPC needs it).
        let mut h = headers(&[("te", "trailers")]);
        forwarded_headers(
            &mut h,
            &conn("10.0.0.2:1", true),
            &config,
            None,
            false,
            UpstreamProtocol::H2c,
        );
        assert_eq!(get(&h, "te"), Some("trailers"));

        // An upgrade keeps Upgrade and says so in Connection.
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        forwarded_headers(
            &mut h,
            &conn("10.0.0.2:1", false),
            &config,
            None,
            true,
            UpstreamProtocol::Http1,
        );
        assert_eq!(get(&h, "upgrade"), Some("websocket"));
        assert_eq!(get(&h, "connection"), Some("upgrade"));
    }

    #[test]
    fn redirect_location() {
        let r = redirect("shop.example.com", "/a/b", Some("x=1"), 443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()["location"], "https://shop.example.com/a/b?x=1");
        let r = redirect("shop.example.com", "/", None, 8443);
        assert_eq!(r.headers()["location"], "https://shop.example.com:8443/");
    }

    #[test]
    fn request_ids_differ() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
