//! `fairlead proxy`: the reconciler wired to the model's snapshots, the kernel, metrics and
//! readiness.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlead_abi::maps;
use fairlead_model::{Ready, Snapshot};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::datapath::{Datapath, LoadOptions};
use crate::health::HealthServers;
use crate::links::{PinnedLinks, links_dir};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::tables::{LbMaps, Table};

/// Where maps are pinned unless `--bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/fairlead";

/// How often the datapath counters are read into metrics.
const COUNTER_INTERVAL: Duration = Duration::from_secs(5);

/// The proxy's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// cgroup v2 directory whose sockets are balanced, with its descendants (default: the
    /// root of the cgroup v2 hierarchy, i.e. every process of the node).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory where the maps are pinned, and the program links under `links/`;
    /// they outlive the process (SIGTERM or a crash), so services keep working while the
    /// proxy restarts or upgrades, and a restarted proxy adopts them.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Remove everything the proxy pinned under --bpffs (the programs detach from the
    /// cgroup, the maps are freed) and exit, like `kube-proxy --cleanup`.
    #[arg(long)]
    pub cleanup: bool,
    /// Address the healthCheckNodePort servers listen on (Services with
    /// externalTrafficPolicy Local); repeat for several. The default `::` is every address of
    /// the node, IPv4 included (0.0.0.0 where IPv6 is off).
    #[arg(long = "health-check-address", value_name = "IP", default_values_t = [IpAddr::V6(Ipv6Addr::UNSPECIFIED)])]
    pub health_check_addresses: Vec<IpAddr>,
    /// Size of each service map (one entry per frontend plus one per backend slot).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::SERVICE_MAX_ENTRIES)]
    pub map_services: u32,
    /// Size of each backend map (one entry per frontend and endpoint).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::BACKEND_MAX_ENTRIES)]
    pub map_backends: u32,
    /// Size of each rev-NAT map (one entry per frontend; at most 65535).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::REV_NAT_MAX_ENTRIES)]
    pub map_rev_nat: u32,
    /// Size of each reverse socket NAT map (LRU; one entry per balanced socket).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::SOCK_REV_NAT_MAX_ENTRIES)]
    pub map_sock_rev_nat: u32,
    /// Size of the session-affinity map (LRU; one entry per client and affine frontend).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::AFFINITY_MAX_ENTRIES)]
    pub map_affinity: u32,
}

impl Args {
    /// Flags with every default, balancing the sockets of `cgroup`, maps pinned under
    /// `bpffs`.
    #[must_use]
    pub fn new(cgroup: Option<PathBuf>, bpffs: PathBuf) -> Self {
        Self {
            cgroup,
            bpffs,
            cleanup: false,
            health_check_addresses: vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            map_services: maps::SERVICE_MAX_ENTRIES,
            map_backends: maps::BACKEND_MAX_ENTRIES,
            map_rev_nat: maps::REV_NAT_MAX_ENTRIES,
            map_sock_rev_nat: maps::SOCK_REV_NAT_MAX_ENTRIES,
            map_affinity: maps::AFFINITY_MAX_ENTRIES,
        }
    }

    /// The load options these flags ask for.
    #[must_use]
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions::new()
            .pin_maps_under(&self.bpffs)
            .map_size(maps::SERVICES4, self.map_services)
            .map_size(maps::SERVICES6, self.map_services)
            .map_size(maps::BACKENDS4, self.map_backends)
            .map_size(maps::BACKENDS6, self.map_backends)
            .map_size(maps::REV_NAT4, self.map_rev_nat)
            .map_size(maps::REV_NAT6, self.map_rev_nat)
            .map_size(maps::SOCK_REV_NAT4, self.map_sock_rev_nat)
            .map_size(maps::SOCK_REV_NAT6, self.map_sock_rev_nat)
            .map_size(maps::AFFINITY, self.map_affinity)
    }
}

/// What the binary hands the proxy.
#[derive(Debug)]
pub struct Context<'a> {
    /// Snapshots of the model.
    pub model: watch::Receiver<Arc<Snapshot>>,
    /// Where the proxy registers its metrics (`fairlead_proxy_*` under a `fairlead` prefix).
    pub registry: &'a mut Registry,
    /// Set once the maps serve the synced model.
    pub ready: Ready,
    /// Cancelled at shutdown.
    pub cancel: CancellationToken,
    /// This node's name (`internalTrafficPolicy: Local`).
    pub node_name: Option<String>,
}

/// A started proxy: maps loaded (or adopted), programs attached, metrics registered.
#[derive(Debug)]
pub struct Proxy {
    cgroup: PathBuf,
    datapath: Datapath,
    reconciler: Reconciler,
    metrics: Metrics,
    health: HealthServers,
    model: watch::Receiver<Arc<Snapshot>>,
    ready: Ready,
    cancel: CancellationToken,
}

impl Proxy {
    /// Loads the maps (adopting those pinned under `--bpffs`), takes over their ids, and
    /// attaches the socket programs to `--cgroup`. From here on, what the pinned maps held
    /// is served; [`Proxy::run`] brings it up to date with the model.
    pub fn start(args: &Args, ctx: Context<'_>) -> Result<Self, Error> {
        let mut datapath = Datapath::load(&args.load_options())?;
        let reconciler = Reconciler::adopt(ctx.node_name.clone(), &datapath)?;
        let cgroup = match &args.cgroup {
            Some(c) => c.clone(),
            None => crate::datapath::cgroup2_root().ok_or_else(|| Error::Cgroup {
                path: PathBuf::from("/sys/fs/cgroup"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no cgroup v2 hierarchy found; pass --cgroup",
                ),
            })?,
        };
        // Maps first (adopted above, so the running programs and these share them), then the
        // programs take the pinned hooks over in place.
        let mut links = PinnedLinks::open(links_dir(&args.bpffs))?;
        datapath.install_pinned(&cgroup, &mut links)?;
        let metrics = Metrics::register(ctx.registry);
        let health = HealthServers::new(
            ctx.node_name.clone(),
            args.health_check_addresses.clone(),
            ctx.ready.clone(),
            ctx.registry,
        );
        info!(cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), node = ?ctx.node_name, "proxy started");
        Ok(Self {
            cgroup,
            datapath,
            reconciler,
            metrics,
            health,
            model: ctx.model,
            ready: ctx.ready,
            cancel: ctx.cancel,
        })
    }

    /// Reconciles every model snapshot into the maps until cancelled. Maps and program
    /// links stay pinned when it returns: the data path keeps serving what it was last
    /// given until a new proxy takes over (or `--cleanup` removes it).
    ///
    /// # Panics
    ///
    /// Never: the maps are handed to a blocking task for each sync and always handed back.
    pub async fn run(self) -> Result<(), Error> {
        let Self {
            cgroup,
            datapath,
            reconciler,
            mut metrics,
            mut health,
            mut model,
            ready,
            cancel,
        } = self;
        let mut state = Some((datapath, reconciler));
        let mut ticker = tokio::time::interval(COUNTER_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = true;
        loop {
            if pending {
                pending = false;
                let snapshot = model.borrow_and_update().clone();
                if snapshot.synced {
                    let (mut datapath, mut reconciler) = state.take().expect("state is put back");
                    let for_health = snapshot.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        let report = reconciler.sync(&snapshot, &mut datapath);
                        let elapsed = started.elapsed();
                        (datapath, reconciler, report, elapsed, snapshot.generation)
                    })
                    .await;
                    let Ok((datapath, reconciler, report, elapsed, generation)) = result else {
                        return Err(Error::Internal("the sync task panicked"));
                    };
                    let capacity = Table::ALL.map(|t| datapath.capacity(t));
                    metrics.observe_sync(elapsed, &report, &reconciler.stats(), &capacity);
                    log_sync(&report, elapsed, generation, reconciler.stats());
                    if !report.removed_udp_backends.is_empty() {
                        let cgroup = cgroup.clone();
                        let removed = report.removed_udp_backends;
                        let destroyed = tokio::task::spawn_blocking(move || {
                            crate::stale::destroy_udp_sockets(&cgroup, &removed)
                        })
                        .await
                        .unwrap_or(0);
                        metrics.stale_sockets_destroyed(destroyed as u64);
                    }
                    state = Some((datapath, reconciler));
                    ready.set(true);
                    health.sync(&for_health);
                } else {
                    debug!("model not synced yet; programming nothing");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = model.changed() => {
                    if changed.is_err() {
                        warn!("the model source is gone; stopping");
                        break;
                    }
                    pending = true;
                }
                _ = ticker.tick() => {
                    // Retries health check ports that could not be bound.
                    if health.applied_generation().is_some() {
                        let snapshot = model.borrow().clone();
                        health.sync(&snapshot);
                    }
                    if let Some((datapath, _)) = &state {
                        match datapath.counters() {
                            Ok(c) => metrics.observe_counters(c),
                            Err(e) => warn!(error = %e, "reading the datapath counters failed"),
                        }
                    }
                }
            }
        }
        ready.set(false);
        health.shutdown();
        info!("proxy stopped; maps and program links stay pinned and keep serving");
        Ok(())
    }
}

fn log_sync(
    report: &crate::reconcile::SyncReport,
    elapsed: Duration,
    generation: u64,
    programmed: crate::reconcile::Stats,
) {
    if report.full || !report.errors.is_empty() {
        info!(
            generation,
            ?elapsed,
            full = report.full,
            compared = report.services_compared,
            writes = report.writes,
            errors = report.errors.len(),
            services = programmed.services,
            frontends = programmed.frontends,
            backends = programmed.backends,
            "maps synced"
        );
    } else {
        debug!(
            generation,
            ?elapsed,
            compared = report.services_compared,
            writes = report.writes,
            "maps synced"
        );
    }
}
