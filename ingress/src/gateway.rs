//! The reconciler and the run loop: snapshots in, route table, upstream
//! endpoint sets and certificates out, each swapped atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fairlead_model::gateway_status::{ListenFailures, ListenerSocket, listener_sockets};
use fairlead_model::{
    Kind, Locality, Protocol, Purpose, Ready, ServiceChange, ServiceKey, ServicePort, Snapshot,
};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::{info, warn};

use crate::Args;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::proxy::{Routing, Shared};
use crate::router::{BackendSpec, ClassSelection, RouteTable, UpstreamProtocol};
use crate::server::Server;
use crate::tls::{CertCache, CertStore, Resolver};
use crate::upstream::{PoolConfig, Upstream};

/// Kinds whose changes call for a new route table. Secrets: whether an
/// HTTPS listener is served depends on its certificates.
const ROUTE_KINDS: &[Kind] = &[
    Kind::Ingress,
    Kind::IngressClass,
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::ReferenceGrant,
    Kind::Secret,
    // Namespace labels: allowedRoutes selectors.
    Kind::Namespace,
];

/// Kinds whose changes call for a new certificate store.
const CERTIFICATE_KINDS: &[Kind] = &[
    Kind::Ingress,
    Kind::IngressClass,
    Kind::Secret,
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::ReferenceGrant,
];

/// Identity of an upstream: a Service port and how it is spoken to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UpstreamKey {
    pub(crate) service: ServiceKey,
    pub(crate) port_name: String,
    pub(crate) port: u16,
    pub(crate) protocol: UpstreamProtocol,
}

/// Turns snapshots into the state the request path reads, following the
/// model's change cursor: routes are compiled again only when Ingresses,
/// IngressClasses or the spec of a Service they use changed; when only a
/// Service's endpoints did, the upstreams of that Service get their new
/// endpoint set in place (the routes stay); certificates are rebuilt when
/// Ingresses or Secrets changed.
#[derive(Debug)]
pub struct Reconciler {
    selection: ClassSelection,
    pool: Arc<PoolConfig>,
    metrics: Arc<Metrics>,
    node_name: Option<String>,
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    referenced: HashSet<ServiceKey>,
    generation: Option<u64>,
    default_cert: Arc<CertifiedKey>,
    certs: CertCache,
}

/// What one reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// A new route table was published.
    pub routes: bool,
    /// Upstreams whose endpoint set changed.
    pub endpoints: usize,
    /// A new certificate store was published.
    pub certificates: bool,
}

impl Reconciler {
    /// A reconciler for `selection`, on the node `node_name`.
    #[must_use]
    pub fn new(
        selection: ClassSelection,
        pool: Arc<PoolConfig>,
        metrics: Arc<Metrics>,
        default_cert: Arc<CertifiedKey>,
        node_name: Option<String>,
    ) -> Self {
        Reconciler {
            selection,
            pool,
            metrics,
            node_name,
            upstreams: HashMap::new(),
            referenced: HashSet::new(),
            generation: None,
            default_cert,
            certs: CertCache::default(),
        }
    }

    /// Brings `routing` and `certs` up to `snapshot`, publishing only what
    /// changed.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        routing: &ArcSwap<Routing>,
        certs: &ArcSwap<CertStore>,
    ) -> Applied {
        let mut applied = Applied::default();
        if self.generation == Some(snapshot.generation) {
            return applied;
        }
        let changes = snapshot.changes_since(self.generation);
        let here = snapshot.locality(self.node_name.as_deref());
        let ingress_changed = changes.touches(ROUTE_KINDS);
        let routes_changed = ingress_changed
            || changes
                .services()
                .any(|(k, c)| c == ServiceChange::Spec && self.referenced.contains(k));
        let certificates_changed = changes.touches(CERTIFICATE_KINDS);
        self.generation = Some(snapshot.generation);

        if routes_changed {
            let table = RouteTable::compile(snapshot, &self.selection);
            for problem in &table.problems {
                warn!(ingress = %problem.ingress, message = %problem.message, "route problem");
            }
            let mut used = HashSet::new();
            let mut upstreams = Vec::with_capacity(table.backends.len());
            for backend in &table.backends {
                let BackendSpec::Service {
                    service,
                    port,
                    protocol,
                } = backend
                else {
                    upstreams.push(None);
                    continue;
                };
                let key = UpstreamKey {
                    service: service.clone(),
                    port_name: port.name.clone(),
                    port: port.port,
                    protocol: *protocol,
                };
                let upstream = self
                    .upstreams
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(Upstream::new(
                            Arc::from(format!("{service}:{}", port.port)),
                            *protocol,
                            self.pool.clone(),
                            self.metrics.clone(),
                        ))
                    })
                    .clone();
                if upstream.set_endpoints(endpoints(snapshot, &key, here)) {
                    applied.endpoints += 1;
                }
                used.insert(key);
                upstreams.push(Some(upstream));
            }
            self.upstreams.retain(|k, _| used.contains(k));
            self.referenced.clone_from(&table.referenced_services);
            self.metrics
                .routes
                .set(i64::try_from(table.route_count).unwrap_or(i64::MAX));
            self.metrics.reloads.inc();
            routing.store(Arc::new(Routing { table, upstreams }));
            applied.routes = true;
        } else {
            // Only endpoints changed (or this node's zone): new endpoint sets for
            // the upstreams of those Services, in place.
            let relocated = changes.locality(here.node);
            for (key, upstream) in &self.upstreams {
                if (relocated || changes.service(&key.service).is_some())
                    && upstream.set_endpoints(endpoints(snapshot, key, here))
                {
                    applied.endpoints += 1;
                }
            }
        }
        if certificates_changed {
            let mut store = CertStore::build(
                snapshot,
                &self.selection.class,
                self.default_cert.clone(),
                &mut self.certs,
            );
            store.add_gateway_listeners(snapshot, &self.selection.gateway_api, &mut self.certs);
            self.metrics
                .certificates
                .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
            certs.store(Arc::new(store));
            applied.certificates = true;
        }
        applied
    }

    /// Every upstream in use.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }
}

/// The endpoints of an upstream's Service port the model selects for the
/// ingress (a client on this node: [`Purpose::ClusterIp`]).
pub(crate) fn endpoints(
    snapshot: &Snapshot,
    key: &UpstreamKey,
    here: Locality<'_>,
) -> Vec<SocketAddr> {
    let Some(service) = snapshot.services.get(&key.service) else {
        return Vec::new();
    };
    let port: Option<&ServicePort> = service
        .ports
        .iter()
        .find(|p| p.protocol == Protocol::Tcp && p.name == key.port_name && p.port == key.port);
    port.map(|port| {
        service
            .select(port, None, Purpose::ClusterIp, here)
            .endpoints
            .iter()
            .map(|b| SocketAddr::new(b.address, b.port))
            .collect()
    })
    .unwrap_or_default()
}

/// The Gateway listener sockets on ports of their own, reconciled: the
/// desired set ([`listener_sockets`], from the model) against the open
/// ones; new sockets are bound, sockets no listener wants any more are
/// closed (connections already accepted go on), sockets that cannot be
/// bound are reported ([`ListenFailures`], read by the status) and tried
/// again on the next pass.
#[derive(Debug)]
struct GatewaySockets {
    /// The address of sockets of Gateways without `spec.addresses`: that
    /// of `--http`.
    node: IpAddr,
    open: HashMap<ListenerSocket, (CancellationToken, tokio::task::JoinHandle<()>)>,
    failures: ListenFailures,
}

impl GatewaySockets {
    fn reconcile(
        &mut self,
        desired: &BTreeSet<ListenerSocket>,
        server: &Arc<Server>,
        acceptor: &TlsAcceptor,
    ) {
        self.open.retain(|socket, (stop, _)| {
            let keep = desired.contains(socket);
            if !keep {
                stop.cancel();
                info!(port = socket.port, address = ?socket.address, "Gateway listener socket closed");
            }
            keep
        });
        let mut failed = BTreeMap::new();
        for socket in desired {
            if self.open.contains_key(socket) {
                continue;
            }
            let addr = SocketAddr::new(socket.address.unwrap_or(self.node), socket.port);
            match bind(addr) {
                Ok(listener) => {
                    info!(%addr, tls = socket.tls, "Gateway listener socket open");
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(
                        server
                            .clone()
                            .accept_gateway_loop(
                                listener,
                                socket.tls.then(|| acceptor.clone()),
                                socket.port,
                                stop.clone(),
                            )
                            .in_current_span(),
                    );
                    self.open.insert(*socket, (stop, task));
                }
                Err(Error::Listen { source, .. }) => {
                    warn!(%addr, error = %source, "cannot open a Gateway listener socket; retrying");
                    failed.insert(*socket, source.to_string());
                }
                Err(other) => {
                    failed.insert(*socket, other.to_string());
                }
            }
        }
        self.failures.set(failed);
    }

    /// Whether some socket could not be bound (the last pass).
    fn failing(&self) -> bool {
        !self.failures.get().is_empty()
    }

    /// Closes every socket and waits for the accept loops.
    async fn close(&mut self) {
        for (_, (stop, task)) in self.open.drain() {
            stop.cancel();
            let _ = task.await;
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| Error::Listen { addr, source })?;
    socket
        .set_reuseaddr(true)
        .map_err(|source| Error::Listen { addr, source })?;
    socket
        .bind(addr)
        .map_err(|source| Error::Listen { addr, source })?;
    socket
        .listen(4096)
        .map_err(|source| Error::Listen { addr, source })
}

/// Runs the gateway until cancelled (see [`crate::run`]).
#[expect(
    clippy::too_many_lines,
    reason = "start-up, the serving loop and the drain, in the order they happen"
)]
pub(crate) async fn run(
    args: Args,
    metrics: Arc<Metrics>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: Ready,
    cancel: CancellationToken,
    node_name: Option<String>,
    (view, listen_failures): (crate::explain::View, ListenFailures),
) -> Result<(), Error> {
    let default_cert = crate::tls::default_certificate(args.default_cert.as_deref())?;
    let certs = Arc::new(ArcSwap::from_pointee(CertStore::with_default(
        default_cert.clone(),
    )));
    let tls_config =
        crate::tls::server_config(Arc::new(Resolver(certs.clone())), args.tls_resumption())?;
    // Bind first, so a taken port fails at once; accept once synced.
    let http = bind(args.http)?;
    let https = bind(args.https)?;
    let local = |l: &TcpListener, configured: SocketAddr| l.local_addr().unwrap_or(configured);
    let (plain_addr, tls_addr) = (local(&http, args.http), local(&https, args.https));
    let mut proxy_config = args.proxy_config();
    if args.ingress_redirect_port.is_none() {
        proxy_config.https_port = tls_addr.port();
    }
    let shared = Arc::new(Shared::new(proxy_config, metrics.clone()));
    view.set(shared.clone());
    let mut selection = args.class_selection();
    selection.gateway_api.listen_failures = listen_failures.clone();
    let gateway_api = selection.gateway_api.clone();
    let mut sockets = GatewaySockets {
        node: args.http.ip(),
        open: HashMap::new(),
        failures: listen_failures,
    };
    let mut reconciler = Reconciler::new(
        selection,
        Arc::new(args.pool_config()),
        metrics,
        default_cert,
        node_name,
    );

    // Serve nothing until the model is complete.
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.synced {
            let applied = reconciler.apply(&snapshot, &shared.routing, &certs);
            info!(generation = snapshot.generation, ?applied, "model synced");
            ready.serving(snapshot.generation);
            break;
        }
        tokio::select! {
            changed = snapshots.changed() => {
                // On shutdown the source stops once cancelled: not a failure.
                if changed.is_err() && cancel.is_cancelled() {
                    return Ok(());
                }
                changed.map_err(|_| Error::ModelClosed)?;
            }
            () = cancel.cancelled() => return Ok(()),
        }
    }

    info!(http = %plain_addr, https = %tls_addr, class = %args.ingress_class, "ingress gateway listening");
    let server = Arc::new(Server::new(
        shared.clone(),
        args.server_config(),
        cancel.clone(),
    ));
    let acceptor = TlsAcceptor::from(tls_config);
    let accept = |listener, acceptor, name| {
        tokio::spawn(
            server
                .clone()
                .accept_loop(listener, acceptor, name)
                .in_current_span(),
        )
    };
    let accept_http = accept(http, None, "http");
    let accept_https = accept(https, Some(acceptor.clone()), "https");
    let mut snapshot = snapshots.borrow().clone();
    sockets.reconcile(
        &listener_sockets(&snapshot, &gateway_api),
        &server,
        &acceptor,
    );
    ready.set(true);

    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The source stops once cancelled, and select! may see
                    // that before the cancellation: only an early stop fails.
                    break if cancel.is_cancelled() { Ok(()) } else { Err(Error::ModelClosed) };
                }
                snapshot = snapshots.borrow_and_update().clone();
                let applied = reconciler.apply(&snapshot, &shared.routing, &certs);
                sockets.reconcile(&listener_sockets(&snapshot, &gateway_api), &server, &acceptor);
                ready.serving(snapshot.generation);
                if applied != Applied::default() {
                    info!(generation = snapshot.generation, ?applied, "model applied");
                }
            }
            _ = sweep.tick() => {
                for upstream in reconciler.upstreams() {
                    upstream.sweep();
                }

            }
            // Sockets that could not be bound are tried again each second.
            _ = retry.tick(), if sockets.failing() => {
                sockets.reconcile(&listener_sockets(&snapshot, &gateway_api), &server, &acceptor);
            }
            () = cancel.cancelled() => break Ok(()),
        }
    };

    // Drain: stop accepting, let connections finish their requests.
    ready.set(false);
    cancel.cancel();
    let _ = accept_http.await;
    let _ = accept_https.await;
    sockets.close().await;
    server.connections().close();
    shared.tunnels.close();
    let drain = args.ingress_drain_timeout;
    info!(
        connections = server.connections().len(),
        tunnels = shared.tunnels.len(),
        seconds = drain.as_secs_f64(),
        "draining"
    );
    let drained = tokio::time::timeout(drain, async {
        server.connections().wait().await;
        shared.tunnels.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = server.connections().len(),
            tunnels = shared.tunnels.len(),
            "drain timeout; closing what is left"
        );
    }
    shared.hard_stop.cancel();
    info!("ingress gateway stopped");
    result
}

#[cfg(test)]
mod tests {
    //! The request path against real sockets, in process: retries, timeouts,
    //! keep-alive reuse, and what a reconcile publishes.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::ProxyConfig;
    use crate::server::ServerConfig;
    use crate::test_support::{endpoints, ingress, ingress_class, model, service};

    /// An upstream that misbehaves in one way, counting connections.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answers 200 with its address, keep-alive.
        Good,
        /// Reads the request head, then closes without answering.
        Reset,
        /// Reads the request head and never answers.
        Silent,
    }

    /// Starts an upstream on `ip:port` (port 0: any).
    async fn upstream(
        ip: [u8; 4],
        port: u16,
        behaviour: Behaviour,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind(SocketAddr::from((ip, port)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(
            async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        loop {
                            let mut head = Vec::new();
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                match stream.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            match behaviour {
                                Behaviour::Good => {
                                    let body = addr.to_string();
                                    let response = format!(
                                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                        body.len()
                                    );
                                    if stream.write_all(response.as_bytes()).await.is_err() {
                                        return;
                                    }
                                }
                                Behaviour::Reset => return,
                                Behaviour::Silent => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                }
                            }
                        }
                    });
                }
            }
            .in_current_span(),
        );
        (addr, connections)
    }

    struct Harness {
        addr: SocketAddr,
        shared: Arc<Shared>,
        _cancel: tokio_util::sync::DropGuard,
    }

    async fn harness(backends: &[SocketAddr], proxy: ProxyConfig, pool: PoolConfig) -> Harness {
        let snapshot = model(vec![
            ingress_class("fairlead", true),
            service("t", "web", &[("http", 80)]),
            endpoints("t", "web", "http", backends),
            ingress(
                "t",
                "web",
                &serde_json::json!({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}),
            ),
        ]);
        harness_on(&snapshot, proxy, pool).await
    }

    async fn harness_on(snapshot: &Snapshot, proxy: ProxyConfig, pool: PoolConfig) -> Harness {
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared::new(proxy, metrics.clone()));
        let default = crate::tls::default_certificate(None).unwrap();
        let certs = ArcSwap::from_pointee(CertStore::with_default(default.clone()));
        let mut reconciler = Reconciler::new(
            ClassSelection {
                class: "fairlead".to_owned(),
                default_backend: None,
                gateway_api: crate::gateway_api::Selection::default(),
            },
            Arc::new(pool),
            metrics,
            default,
            None,
        );
        reconciler.apply(snapshot, &shared.routing, &certs);
        let cancel = CancellationToken::new();
        let server = Arc::new(Server::new(
            shared.clone(),
            ServerConfig::default(),
            cancel.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.accept_loop(listener, None, "http").in_current_span());
        Harness {
            addr,
            shared,
            _cancel: cancel.drop_guard(),
        }
    }

    /// Sends requests over one keep-alive connection; returns (status, body).
    async fn send(
        addr: SocketAddr,
        requests: Vec<(http::Method, &'static str)>,
    ) -> Vec<(u16, String)> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn.in_current_span());
        let mut out = Vec::new();
        for (method, body) in requests {
            sender.ready().await.unwrap();
            let request = http::Request::builder()
                .method(method)
                .uri("/")
                .header("host", "t.test")
                .body(if body.is_empty() {
                    Full::new(Bytes::new())
                } else {
                    Full::new(Bytes::from_static(body.as_bytes()))
                })
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            out.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        out
    }

    fn no_ejection() -> PoolConfig {
        PoolConfig {
            eject_after: 0,
            ..PoolConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_connections_are_reused() {
        let (good, connections) = upstream([127, 0, 20, 1], 0, Behaviour::Good).await;
        let h = harness(&[good], ProxyConfig::default(), no_ejection()).await;
        let responses = send(h.addr, vec![(http::Method::GET, ""); 20]).await;
        assert!(responses.iter().all(|(s, _)| *s == 200), "{responses:?}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one upstream connection for 20 requests"
        );
        // Two clients at once need two upstream connections, then share them.
        let (a, b) = tokio::join!(
            send(h.addr, vec![(http::Method::GET, ""); 20]),
            send(h.addr, vec![(http::Method::GET, ""); 20])
        );
        assert!(a.iter().chain(&b).all(|(s, _)| *s == 200));
        assert!(connections.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_requests_are_retried_after_a_reset_but_posts_are_not() {
        let (good, _) = upstream([127, 0, 21, 1], 0, Behaviour::Good).await;
        // Same port: one EndpointSlice port serves both.
        let (reset, reset_connections) =
            upstream([127, 0, 21, 2], good.port(), Behaviour::Reset).await;
        let h = harness(&[good, reset], ProxyConfig::default(), no_ejection()).await;
        // Fresh connections each time, so every request picks anew.
        let mut saw_reset = 0;
        for _ in 0..30 {
            let before = reset_connections.load(Ordering::SeqCst);
            let r = send(h.addr, vec![(http::Method::GET, "")]).await;
            assert_eq!(
                r[0],
                (200, good.to_string()),
                "GET retried on the good endpoint"
            );
            saw_reset += reset_connections.load(Ordering::SeqCst) - before;
        }
        assert!(saw_reset > 0, "the resetting endpoint was tried");
        let mut posts = Vec::new();
        for _ in 0..30 {
            posts.push(send(h.addr, vec![(http::Method::POST, "data")]).await[0].0);
        }
        assert!(
            posts.contains(&502),
            "a POST that reached the resetting endpoint is not retried: {posts:?}"
        );
        assert!(posts.contains(&200));
        assert!(posts.iter().all(|s| *s == 200 || *s == 502));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_upstream_times_out_with_504() {
        let (silent, _) = upstream([127, 0, 22, 1], 0, Behaviour::Silent).await;
        let proxy = ProxyConfig {
            response_timeout: Duration::from_millis(300),
            ..ProxyConfig::default()
        };
        let h = harness(&[silent], proxy, no_ejection()).await;
        let start = std::time::Instant::now();
        let r = send(h.addr, vec![(http::Method::GET, "")]).await;
        assert_eq!(r[0].0, 504);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_breaking_off_its_body_does_not_count_against_the_endpoint() {
        let (silent, _) = upstream([127, 0, 23, 1], 0, Behaviour::Silent).await;
        let pool = PoolConfig {
            eject_after: 1,
            ..PoolConfig::default()
        };
        let h = harness(&[silent], ProxyConfig::default(), pool).await;
        let mut client = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let upstream = h.shared.routing.load().upstreams[0].clone().unwrap();
        assert!(
            !upstream.endpoints()[0].ejected(),
            "one failure would have ejected it"
        );
        assert_eq!(upstream.endpoints()[0].in_flight(), 0);
    }

    #[test]
    fn reconcile_publishes_only_what_changed() {
        let web = |addrs: &[SocketAddr]| {
            vec![
                ingress_class("fairlead", true),
                service("t", "web", &[("http", 80)]),
                service("t", "other", &[("http", 80)]),
                endpoints("t", "web", "http", addrs),
                ingress(
                    "t",
                    "web",
                    &serde_json::json!({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}),
                ),
            ]
        };
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let (mut writer, _rx) = fairlead_model::ModelWriter::new();
        let load = |writer: &mut fairlead_model::ModelWriter, objects: Vec<serde_json::Value>| {
            let changes = objects
                .into_iter()
                .map(|o| fairlead_model::Change::Upsert {
                    object: fairlead_model::decode(o).unwrap(),
                    origin: None,
                })
                .collect();
            writer.replace_all(changes, Vec::new(), true);
            writer.snapshot()
        };
        let metrics = Arc::new(Metrics::default());
        let shared = Shared::new(ProxyConfig::default(), metrics.clone());
        let default = crate::tls::default_certificate(None).unwrap();
        let certs = ArcSwap::from_pointee(CertStore::with_default(default.clone()));
        let mut r = Reconciler::new(
            ClassSelection {
                class: "fairlead".to_owned(),
                default_backend: None,
                gateway_api: crate::gateway_api::Selection::default(),
            },
            Arc::new(PoolConfig::default()),
            metrics,
            default,
            None,
        );
        let s1 = load(&mut writer, web(&[a]));
        let applied = r.apply(&s1, &shared.routing, &certs);
        assert_eq!(
            applied,
            Applied {
                routes: true,
                endpoints: 1,
                certificates: true
            }
        );
        let upstream = shared.routing.load().upstreams[0].clone().unwrap();
        assert_eq!(r.apply(&s1, &shared.routing, &certs), Applied::default());
        // A change to a Service no route uses: nothing is published.
        let mut objects = web(&[a]);
        objects.push(endpoints("t", "other", "http", &[b]));
        let s2 = load(&mut writer, objects);
        assert_eq!(r.apply(&s2, &shared.routing, &certs), Applied::default());
        // Endpoints of the routed Service: the same upstream object gets them,
        // and the route table stays.
        let table = shared.routing.load_full();
        let s3 = load(&mut writer, web(&[a, b]));
        let applied = r.apply(&s3, &shared.routing, &certs);
        assert_eq!(applied.endpoints, 1);
        assert!(!applied.certificates);
        assert!(!applied.routes, "only endpoints changed: no recompile");
        assert!(Arc::ptr_eq(&table, &shared.routing.load_full()));
        let now = shared.routing.load().upstreams[0].clone().unwrap();
        assert!(Arc::ptr_eq(&upstream, &now), "pools survive");
        assert_eq!(now.endpoints().len(), 2);
    }
}
