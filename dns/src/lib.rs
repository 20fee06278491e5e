//! Cluster DNS for fairlead (the CoreDNS job): the Kubernetes DNS-Based Service
//! Discovery specification served from the shared model on hickory-server, and
//! a caching forwarder for every other name.
//!
//! The pieces, in the order a request meets them:
//! - transport: our own UDP loops (SO_REUSEPORT sockets; on a wildcard
//!   address each answer leaves from the address its query was sent to)
//!   and TCP connections (pipelined, answered out of order; [`tcp`]), on
//!   `--listen`;
//! - the UDP fast path: plain questions about cluster names answered from a
//!   per-loop cache of pre-serialised responses (`fast`);
//! - [`Handler`]: everything else, on hickory: EDNS0, the asker's case kept,
//!   shuffling, truncation;
//! - [`Index`]: every cluster name, rebuilt per model snapshot (only the
//!   Services that changed) and swapped atomically;
//! - [`forward::Forwarder`]: cache, upstreams, serve-stale, loop detection.
//!
//! The binary calls [`Dns::bind`] (sockets and metrics), then [`Dns::run`]
//! with the model receiver, a [`Ready`] flag and a cancellation token.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod fast;
pub mod forward;
mod handler;
pub mod index;
pub mod metrics;
pub mod names;
mod pktinfo;
pub mod tcp;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fairlead_model::{Ready, Snapshot};
use hickory_proto::rr::Name;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

pub use error::Error;
pub use forward::{ForwardConfig, Forwarder};
pub use handler::Handler;
pub use hickory_server::net::xfer::Protocol;
pub use index::{Answer, Index, Lookup, PodsMode, UpdateKind, ZoneConfig};
pub use metrics::Metrics;

/// Flags of `fairlead dns` (and of the DNS part of `fairlead node`).
#[derive(clap::Args, Debug, Clone)]
#[group(id = "dns-args")]
pub struct Args {
    /// Where to serve DNS, over UDP and TCP (repeatable): IP:PORT, [IPv6]:PORT, or :PORT for every IPv4 address. On a wildcard address ([::] takes IPv4 too), each UDP answer leaves from the address its query was sent to.
    #[arg(long = "listen", value_name = "ADDR", default_value = ":53", value_parser = names::parse_listen)]
    pub listen: Vec<SocketAddr>,
    /// The cluster domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub zone: String,
    /// TTL of cluster records and of negative answers, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub ttl: u32,
    /// Upstream servers for names outside the cluster, IP or IP:PORT (repeatable or comma-separated). Default: the nameservers of --dns-resolv-conf.
    #[arg(long = "upstream", value_name = "ADDR", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: disabled, insecure (any address, in a namespace that exists) or verified (addresses of endpoints that are Pods of that namespace).
    #[arg(long, value_enum, default_value_t = PodsMode::Disabled)]
    pub pods: PodsMode,
    /// Where the default upstreams are read from.
    #[arg(
        long = "dns-resolv-conf",
        value_name = "FILE",
        default_value = "/etc/resolv.conf"
    )]
    pub resolv_conf: PathBuf,
    /// Time to wait for one upstream (e.g. 2s, 500ms).
    #[arg(long = "dns-upstream-timeout", value_name = "DURATION", default_value = "2s", value_parser = names::parse_duration)]
    pub upstream_timeout: Duration,
    /// Most upstream queries in flight; further forwarded questions are REFUSED (or served stale).
    #[arg(long = "dns-max-concurrent", value_name = "N", default_value_t = 1000)]
    pub max_concurrent: usize,
    /// Most entries in the forwarder's cache (0 disables the cache).
    #[arg(long = "dns-cache-size", value_name = "N", default_value_t = 10_000)]
    pub cache_size: usize,
    /// Cap on the TTL of cached answers, in seconds.
    #[arg(
        long = "dns-cache-max-ttl",
        value_name = "SECONDS",
        default_value_t = 3600
    )]
    pub cache_max_ttl: u32,
    /// Cap on the TTL of cached negative answers (NXDOMAIN, NODATA), in seconds.
    #[arg(
        long = "dns-cache-max-negative-ttl",
        value_name = "SECONDS",
        default_value_t = 1800
    )]
    pub cache_max_negative_ttl: u32,
    /// How long after expiry a cached answer may be served when every upstream fails (0 disables).
    #[arg(long = "dns-serve-stale", value_name = "DURATION", default_value = "1h", value_parser = names::parse_duration)]
    pub serve_stale: Duration,
    /// How long a client waits for the upstreams before an expired answer is served instead.
    #[arg(long = "dns-stale-answer-timeout", value_name = "DURATION", default_value = "1800ms", value_parser = names::parse_duration)]
    pub stale_answer_timeout: Duration,
    /// Largest UDP response sent, whatever buffer size a client advertises (EDNS0).
    #[arg(
        long = "dns-max-udp-payload",
        value_name = "BYTES",
        default_value_t = 1232
    )]
    pub max_udp_payload: u16,
    /// UDP sockets per listen address (SO_REUSEPORT), each served by its own loop; 0 means one per CPU.
    #[arg(long = "dns-udp-sockets", value_name = "N", default_value_t = 0)]
    pub udp_sockets: usize,
    /// TCP connections idle this long are closed.
    #[arg(long = "dns-tcp-idle-timeout", value_name = "DURATION", default_value = "10s", value_parser = names::parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// TCP connections served at once per listen address; further ones are closed at once.
    #[arg(
        long = "dns-tcp-max-connections",
        value_name = "N",
        default_value_t = 1024
    )]
    pub tcp_max_connections: usize,
    /// Search-path completion, as CoreDNS's autopath: when a pod asks `NAME.<its namespace>.svc.<zone>` and that does not exist, answer with a CNAME to the first later search name that exists (`NAME.svc.<zone>`, `NAME.<zone>`, NAME with each search domain of --dns-resolv-conf, then NAME itself through the upstreams), so its resolver stops after one query instead of five. Pods are known by their endpoint addresses: a client that is not an endpoint of some Service, or whose resolv.conf search path differs from the cluster default, gets plain answers.
    #[arg(long = "dns-autopath")]
    pub autopath: bool,
}

impl Args {
    /// The flags' defaults with `listen` as the only address.
    #[must_use]
    pub fn with_listen(listen: SocketAddr) -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: Args,
        }
        let mut args = Wrapper::parse_from(["fairlead-dns"]).args;
        args.listen = vec![listen];
        args
    }

    /// The host search domains autopath completes with (from
    /// --dns-resolv-conf; none when it cannot be read).
    fn search_domains(&self) -> Vec<Name> {
        match std::fs::read_to_string(&self.resolv_conf) {
            Ok(text) => names::resolv_conf_search(&text),
            Err(error) => {
                warn!(path = %self.resolv_conf.display(), %error,
                    "cannot read the host search domains for --dns-autopath; completing with the cluster's only");
                Vec::new()
            }
        }
    }

    fn upstreams(&self) -> Result<Vec<SocketAddr>, Error> {
        if !self.upstream.is_empty() {
            return self
                .upstream
                .iter()
                .map(|u| {
                    names::parse_upstream(u).ok_or_else(|| Error::Upstream { value: u.clone() })
                })
                .collect();
        }
        let text =
            std::fs::read_to_string(&self.resolv_conf).map_err(|source| Error::ResolvConf {
                path: self.resolv_conf.clone(),
                source,
            })?;
        Ok(names::resolv_conf_nameservers(&text))
    }
}

/// What the binary hands the DNS server to run with.
#[derive(Debug)]
pub struct Context {
    /// The model.
    pub model: watch::Receiver<Arc<Snapshot>>,
    /// Set once the server answers from a synced model.
    pub ready: Ready,
    /// Cancelled for shutdown; [`Dns::run`] then stops and returns.
    pub cancel: CancellationToken,
}

/// A DNS server with its sockets bound, ready to run.
#[derive(Debug)]
pub struct Dns {
    args: Args,
    handler: Handler,
    index: Arc<ArcSwap<Index>>,
    metrics: Metrics,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    local_addrs: Vec<SocketAddr>,
}

async fn bind_pair(
    addr: SocketAddr,
    udp_sockets: usize,
) -> Result<(Vec<UdpSocket>, TcpListener), Error> {
    // With port 0, TCP takes the port the kernel gave UDP; retry if taken.
    for _ in 0..16 {
        let udp = udp::bind(addr, udp_sockets)?;
        let bound = udp[0].local_addr().map_err(|source| Error::Bind {
            protocol: "udp",
            addr,
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if addr.port() == 0 => {}
            Err(source) => {
                return Err(Error::Bind {
                    protocol: "tcp",
                    addr,
                    source,
                });
            }
        }
    }
    Err(Error::Bind {
        protocol: "tcp",
        addr,
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

impl Dns {
    /// Binds the sockets, reads the upstreams and registers the metrics
    /// (prefix `fairlead_dns`). Nothing is answered until [`Dns::run`].
    pub async fn bind(args: Args, registry: &mut Registry) -> Result<Self, Error> {
        let config = Arc::new(
            ZoneConfig::new(&args.zone, args.ttl, args.pods)?.with_autopath(args.autopath),
        );
        let upstreams = args.upstreams()?;
        let metrics = Metrics::register(registry);
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut local_addrs = Vec::new();
        let udp_sockets = match args.udp_sockets {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        for addr in &args.listen {
            let (u, t) = bind_pair(*addr, udp_sockets).await?;
            local_addrs.push(u[0].local_addr().map_err(|source| Error::Bind {
                protocol: "udp",
                addr: *addr,
                source,
            })?);
            udp.extend(u);
            tcp.push(t);
        }
        let forwarder = Forwarder::new(
            ForwardConfig {
                upstreams,
                timeout: args.upstream_timeout,
                max_concurrent: args.max_concurrent,
                cache_size: args.cache_size,
                max_ttl: args.cache_max_ttl,
                max_negative_ttl: args.cache_max_negative_ttl,
                stale_window: args.serve_stale,
                stale_answer_timeout: args.stale_answer_timeout,
            },
            metrics.clone(),
        );
        forwarder.detect_static_loops(&local_addrs);
        let index = Arc::new(ArcSwap::from_pointee(Index::new(config)));
        let mut handler = Handler::new(
            index.clone(),
            forwarder,
            metrics.clone(),
            args.max_udp_payload,
        );
        if args.autopath {
            handler = handler.with_autopath(args.search_domains());
        }
        Ok(Self {
            args,
            handler,
            index,
            metrics,
            udp,
            tcp,
            local_addrs,
        })
    }

    /// The index the server answers from (swapped on every model change):
    /// for `fairlead explain`.
    #[must_use]
    pub fn index(&self) -> Arc<ArcSwap<Index>> {
        self.index.clone()
    }

    /// The addresses served (UDP and TCP on each), with the actual ports.
    #[must_use]
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until `ctx.cancel` is cancelled: follows the model into the
    /// index, answers on every socket, probes the upstreams for loops.
    pub async fn run(self, ctx: Context) -> Result<(), Error> {
        let span = info_span!("dns", listen = ?self.local_addrs, zone = %self.args.zone);
        self.serve(ctx).instrument(span).await
    }

    async fn serve(self, ctx: Context) -> Result<(), Error> {
        forward::log_setup(self.handler.forwarder());
        // Stops everything here: on shutdown, or when a transport fails.
        let stop = ctx.cancel.child_token();
        let mut udp_loops = tokio::task::JoinSet::new();
        for socket in self.udp {
            udp_loops
                .spawn(udp::serve(socket, self.handler.clone(), stop.clone()).in_current_span());
        }
        let limits = tcp::TcpLimits {
            idle_timeout: self.args.tcp_idle_timeout,
            max_connections: self.args.tcp_max_connections.max(1),
        };
        let mut tcp_loops = tokio::task::JoinSet::new();
        for listener in self.tcp {
            tcp_loops.spawn(
                tcp::serve(listener, self.handler.clone(), limits, stop.clone()).in_current_span(),
            );
        }
        let addrs: Vec<String> = self.local_addrs.iter().map(ToString::to_string).collect();
        info!(addrs = %addrs.join(","), "serving DNS");
        let follower = tokio::spawn(
            follow(
                ctx.model,
                self.index.clone(),
                ctx.ready.clone(),
                self.metrics.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let forwarder = self.handler.forwarder().clone();
        let prober = tokio::spawn(async move { forwarder.probe_loops().await }.in_current_span());

        let result = tokio::select! {
            Some(tcp) = tcp_loops.join_next() => match tcp {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("TCP listener failed: {e}")),
                Err(e) => Err(e.to_string()),
            },
            Some(udp) = udp_loops.join_next() => match udp {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        let shutdown = ctx.cancel.is_cancelled();
        stop.cancel();
        while udp_loops.join_next().await.is_some() {}
        while tcp_loops.join_next().await.is_some() {}
        ctx.ready.set(false);
        prober.abort();
        let _ = follower.await;
        if shutdown {
            info!("DNS stopped");
            Ok(())
        } else {
            Err(Error::Server(match result {
                Ok(()) => "every socket closed".to_owned(),
                Err(e) => e,
            }))
        }
    }
}

/// Follows the model: every new snapshot becomes the served index (only the
/// changed Services rebuilt), and `ready` turns true once it is synced.
async fn follow(
    mut model: watch::Receiver<Arc<Snapshot>>,
    index: Arc<ArcSwap<Index>>,
    ready: Ready,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        let snapshot = model.borrow_and_update().clone();
        let started = Instant::now();
        let current = index.load_full();
        if snapshot.generation != current.generation() || snapshot.synced != current.synced() {
            let generation = snapshot.generation;
            let updated = tokio::task::spawn_blocking(move || current.update(&snapshot)).await;
            match updated {
                Ok((next, kind)) => {
                    let services = next.service_count();
                    index.store(Arc::new(next));
                    metrics.index_updated(kind, generation, services, started.elapsed());
                    debug!(generation, ?kind, services, elapsed = ?started.elapsed(), "serving a new model generation");
                }
                Err(error) => warn!(%error, "building the record index failed"),
            }
        }
        ready.serving(index.load().generation());
        if index.load().synced() && !ready.get() {
            // Ready first: whoever reads this line may ask /ready at once.
            ready.set(true);
            info!(
                generation = index.load().generation(),
                "model synced; answering cluster names"
            );
        }
        tokio::select! {
            changed = model.changed() => if changed.is_err() {
                // The model source is gone: keep serving what we have.
                cancel.cancelled().await;
                return;
            },
            () = cancel.cancelled() => return,
        }
    }
}
