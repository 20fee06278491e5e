//! The reconciler and the run loop: snapshots in, route table, upstream
//! endpoint sets and certificates out, each swapped atomically.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fairlead_model::{Ready, ServiceKey, Snapshot};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Args;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::proxy::{Routing, Shared};
use crate::router::{BackendSpec, ClassSelection, RouteTable, UpstreamProtocol};
use crate::server::Server;
use crate::tls::{CertCache, CertStore, Resolver};
use crate::upstream::{PoolConfig, Upstream};

/// Identity of an upstream: a Service port and how it is spoken to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UpstreamKey {
    service: ServiceKey,
    port_name: String,
    port: u16,
    protocol: UpstreamProtocol,
}

/// Turns snapshots into the state the request path reads.
#[derive(Debug)]
pub struct Reconciler {
    selection: ClassSelection,
    pool: Arc<PoolConfig>,
    metrics: Arc<Metrics>,
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    referenced: HashSet<ServiceKey>,
    generation: Option<u64>,
    ingress_generation: u64,
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
    /// A reconciler for `selection`.
    #[must_use]
    pub fn new(
        selection: ClassSelection,
        pool: Arc<PoolConfig>,
        metrics: Arc<Metrics>,
        default_cert: Arc<CertifiedKey>,
    ) -> Self {
        Reconciler {
            selection,
            pool,
            metrics,
            upstreams: HashMap::new(),
            referenced: HashSet::new(),
            generation: None,
            ingress_generation: 0,
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
        let first = self.generation.is_none();
        if self.generation == Some(snapshot.generation) {
            return applied;
        }
        let ingress_changed = first || snapshot.ingress_generation != self.ingress_generation;
        let changed_services = self
            .generation
            .and_then(|g| snapshot.changed_services_since(g));
        let services_changed = match &changed_services {
            None => true,
            Some(keys) => keys.iter().any(|k| self.referenced.contains(k)),
        };
        self.generation = Some(snapshot.generation);
        self.ingress_generation = snapshot.ingress_generation;

        if ingress_changed || services_changed {
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
                let addrs: Vec<SocketAddr> = snapshot
                    .services
                    .get(service)
                    .map(|svc| {
                        svc.backends(port)
                            .filter(|b| b.endpoint.conditions.ready)
                            .map(|b| SocketAddr::new(b.address, b.port))
                            .collect()
                    })
                    .unwrap_or_default();
                if upstream.set_endpoints(addrs) {
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
        }
        if ingress_changed {
            let store = CertStore::build(
                snapshot,
                &self.selection.class,
                self.default_cert.clone(),
                &mut self.certs,
            );
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
pub(crate) async fn run(
    args: Args,
    metrics: Arc<Metrics>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: Ready,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let default_cert = crate::tls::default_certificate(args.default_cert.as_deref())?;
    let certs = Arc::new(ArcSwap::from_pointee(CertStore::with_default(
        default_cert.clone(),
    )));
    let tls_config = crate::tls::server_config(Arc::new(Resolver(certs.clone())))?;
    let shared = Arc::new(Shared::new(args.proxy_config(), metrics.clone()));
    let mut reconciler = Reconciler::new(
        args.class_selection(),
        Arc::new(args.pool_config()),
        metrics,
        default_cert,
    );

    // Serve nothing until the model is complete.
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.synced {
            let applied = reconciler.apply(&snapshot, &shared.routing, &certs);
            info!(generation = snapshot.generation, ?applied, "model synced");
            break;
        }
        tokio::select! {
            changed = snapshots.changed() => changed.map_err(|_| Error::ModelClosed)?,
            () = cancel.cancelled() => return Ok(()),
        }
    }

    let http = bind(args.http)?;
    let https = bind(args.https)?;
    info!(http = %args.http, https = %args.https, class = %args.ingress_class, "ingress gateway listening");
    let server = Arc::new(Server::new(
        shared.clone(),
        args.server_config(),
        cancel.clone(),
    ));
    let acceptor = TlsAcceptor::from(tls_config);
    let accept_http = tokio::spawn(server.clone().accept_loop(http, None, "http"));
    let accept_https = tokio::spawn(server.clone().accept_loop(https, Some(acceptor), "https"));
    ready.set(true);

    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break Err(Error::ModelClosed);
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let applied = reconciler.apply(&snapshot, &shared.routing, &certs);
                if applied != Applied::default() {
                    info!(generation = snapshot.generation, ?applied, "model applied");
                }
            }
            _ = sweep.tick() => {
                for upstream in reconciler.upstreams() {
                    upstream.sweep();
                }
            }
            () = cancel.cancelled() => break Ok(()),
        }
    };

    // Drain: stop accepting, let connections finish their requests.
    ready.set(false);
    cancel.cancel();
    let _ = accept_http.await;
    let _ = accept_https.await;
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
