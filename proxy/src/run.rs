//! `fairlead proxy`: the reconciler wired to the model's snapshots, the kernel, metrics and
//! readiness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlead_abi::maps;
use fairlead_model::{Problem, Ready, Snapshot};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::conntrack::{Timeouts, next_interval};
use crate::datapath::{Datapath, LoadOptions};
use crate::external::XdpMode;
use crate::health::HealthServers;
use crate::links::{PinnedLinks, links_dir};
use crate::metrics::Metrics;
use crate::nodeaddr::{NodeAddress, NodeEvents, default_interfaces, node_addresses};
use crate::reconcile::Reconciler;
use crate::tables::{LbMaps, Table};

/// Where maps are pinned unless `--bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/fairlead";

/// How often the datapath counters are read into metrics (and the node's addresses
/// refreshed).
const COUNTER_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds of the adaptive conntrack GC interval.
const GC_BOUNDS: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// The first conntrack GC interval.
const GC_FIRST: Duration = Duration::from_secs(30);

/// Which interfaces carry the NodePort/LoadBalancer programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Those carrying a global IPv4 address (rtnetlink), at start.
    Auto,
    /// None: no per-packet path (NodePorts still work from the node's own sockets).
    None,
    /// These.
    Named(Vec<String>),
}

impl std::str::FromStr for Interfaces {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() {
                    return Err("expected `auto`, `none` or a comma-separated list".to_owned());
                }
                if let Some(bad) = names
                    .iter()
                    .find(|n| n.len() > 15 || !n.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
                {
                    return Err(format!("{bad:?} is not an interface name"));
                }
                Ok(Self::Named(names))
            }
        }
    }
}

/// The proxy's flags.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "proxy-args")]
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
    /// No effect, accepted so that older command lines still start: the reverse socket NAT
    /// entries now live in their sockets (socket-local storage) and need no size.
    #[arg(long, value_name = "ENTRIES", hide = true)]
    pub map_sock_rev_nat: Option<u32>,
    /// Size of the session-affinity map (LRU; one entry per client and affine frontend).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::AFFINITY_MAX_ENTRIES)]
    pub map_affinity: u32,
    /// The node's interfaces that carry NodePort, LoadBalancer and external IP traffic
    /// (TC programs): `auto` (those with a global IPv4 address), `none`, or a
    /// comma-separated list.
    #[arg(long, value_name = "auto|none|IF,...", default_value = "auto")]
    pub interfaces: Interfaces,
    /// Run the per-packet load balancer at XDP on --interfaces, in front of the TC
    /// programs: `native` (in the driver; fails if the driver has no XDP), `generic` (any
    /// interface, slower), or `off`.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = XdpMode::Off)]
    pub xdp: XdpMode,
    /// Slots of each Maglev table (a prime: 251, 509, 1021, 2039, 4093, 8191, 16381); more
    /// slots spread flows more evenly and move fewer when backends change.
    #[arg(long, value_name = "SLOTS", default_value_t = fairlead_abi::nodeport::MAGLEV_DEFAULT_SIZE)]
    pub maglev_table_size: u32,
    /// Size of the Maglev map (one 64 KiB entry per external frontend).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::MAGLEV_MAX_ENTRIES)]
    pub map_maglev: u32,
    /// Size of each conntrack map (LRU; IPv4 and IPv6, TCP and the rest apart; two entries
    /// per flow).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::CT_MAX_ENTRIES)]
    pub map_ct: u32,
    /// Size of each loadBalancerSourceRanges trie (IPv4 and IPv6; one entry per range and
    /// frontend).
    #[arg(long, value_name = "ENTRIES", default_value_t = maps::SOURCE_RANGE_MAX_ENTRIES)]
    pub map_source_ranges: u32,
    /// Source address for external flows sent to backends on other nodes (default: this
    /// node's InternalIP when it is a local address, else the first address of the first
    /// interface).
    #[arg(long, value_name = "IPV4")]
    pub snat_address: Option<Ipv4Addr>,
    /// `--snat-address` for IPv6 flows.
    #[arg(long, value_name = "IPV6")]
    pub snat_address6: Option<Ipv6Addr>,
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
            map_sock_rev_nat: None,
            map_affinity: maps::AFFINITY_MAX_ENTRIES,
            interfaces: Interfaces::Auto,
            xdp: XdpMode::Off,
            maglev_table_size: fairlead_abi::nodeport::MAGLEV_DEFAULT_SIZE,
            map_maglev: maps::MAGLEV_MAX_ENTRIES,
            map_ct: maps::CT_MAX_ENTRIES,
            map_source_ranges: maps::SOURCE_RANGE_MAX_ENTRIES,
            snat_address: None,
            snat_address6: None,
        }
    }

    /// The size the flags give the maps of `sizing` (`None`: fixed by the contract).
    #[must_use]
    pub fn map_size(&self, sizing: maps::Sizing) -> Option<u32> {
        use maps::Sizing;
        match sizing {
            Sizing::Fixed => None,
            Sizing::Services => Some(self.map_services),
            Sizing::Backends => Some(self.map_backends),
            Sizing::RevNat => Some(self.map_rev_nat),
            Sizing::Affinity => Some(self.map_affinity),
            Sizing::Maglev => Some(self.map_maglev),
            Sizing::Conntrack => Some(self.map_ct),
            Sizing::SourceRanges => Some(self.map_source_ranges),
        }
    }

    /// The load options these flags ask for: every map of the object sized by its flag
    /// ([`maps::MapSpec::sizing`]), IPv4 and IPv6 alike.
    #[must_use]
    pub fn load_options(&self) -> LoadOptions {
        maps::ALL.iter().fold(
            LoadOptions::new().pin_maps_under(&self.bpffs),
            |options, spec| match self.map_size(spec.sizing) {
                Some(entries) => options.map_size(spec.name, entries),
                None => options,
            },
        )
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
    node_name: Option<String>,
    snat_address: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    interfaces: Vec<String>,
    interface_mode: Interfaces,
    xdp: XdpMode,
    links: PinnedLinks,
    datapath: Datapath,
    reconciler: Reconciler,
    metrics: Metrics,
    health: HealthServers,
    model: watch::Receiver<Arc<Snapshot>>,
    ready: Ready,
    cancel: CancellationToken,
    problems: watch::Sender<Arc<[Problem]>>,
}

impl Proxy {
    /// Loads the maps (adopting those pinned under `--bpffs`), takes over their ids, and
    /// attaches the socket programs to `--cgroup`. From here on, what the pinned maps held
    /// is served; [`Proxy::run`] brings it up to date with the model.
    pub fn start(args: &Args, ctx: Context<'_>) -> Result<Self, Error> {
        if !fairlead_abi::nodeport::MAGLEV_SIZES.contains(&args.maglev_table_size) {
            return Err(Error::InvalidArgument {
                flag: "maglev-table-size",
                reason: format!(
                    "{} is not one of {:?}",
                    args.maglev_table_size,
                    fairlead_abi::nodeport::MAGLEV_SIZES
                ),
            });
        }
        if args.map_sock_rev_nat.is_some() {
            warn!(
                "--map-sock-rev-nat has no effect: reverse socket NAT entries live in their \
                 sockets now"
            );
        }
        let started = Instant::now();
        let mut datapath = Datapath::load(&args.load_options())?;
        if let Err(e) = datapath.migrate_conntrack() {
            warn!(error = %e, "rewriting adopted conntrack entries failed");
        }
        let loaded = started.elapsed();
        let reconciler = Reconciler::adopt(ctx.node_name.clone(), &datapath)?
            .with_maglev_size(args.maglev_table_size);
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
        // programs take the pinned hooks over in place: the socket programs and the bind
        // guard on the cgroup, the TC programs on each interface. Pins of hooks this run
        // does not install (an interface no longer served) go last.
        let mut links = PinnedLinks::open(links_dir(&args.bpffs))?;
        datapath.install_pinned(&cgroup, &mut links)?;
        let addresses = node_addresses().map_err(Error::NodeAddresses)?;
        let interfaces = match &args.interfaces {
            Interfaces::Auto => default_interfaces(&addresses),
            Interfaces::None => Vec::new(),
            Interfaces::Named(names) => names.clone(),
        };
        let snat = snat_addresses(
            (args.snat_address, args.snat_address6),
            &addresses,
            &interfaces,
            &ctx.model.borrow(),
            ctx.node_name.as_deref(),
        );
        datapath.set_node_addresses(&addresses, snat.0, snat.1)?;
        for interface in &interfaces {
            datapath.attach_interface(interface, Some(&mut links))?;
            datapath.attach_xdp(interface, args.xdp, Some(&mut links))?;
        }
        let pruned = links.prune()?;
        let attached = started.elapsed().saturating_sub(loaded);
        let metrics = Metrics::register(ctx.registry);
        let health = HealthServers::new(
            ctx.node_name.clone(),
            args.health_check_addresses.clone(),
            ctx.ready.clone(),
            ctx.registry,
        );
        info!(cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), node = ?ctx.node_name, interfaces = ?interfaces, ?snat, pruned_links = pruned.len(), ?loaded, ?attached, "proxy started");
        Ok(Self {
            cgroup,
            node_name: ctx.node_name,
            snat_address: (args.snat_address, args.snat_address6),
            interfaces,
            interface_mode: args.interfaces.clone(),
            xdp: args.xdp,
            links,
            datapath,
            reconciler,
            metrics,
            health,
            model: ctx.model,
            ready: ctx.ready,
            cancel: ctx.cancel,
            problems: watch::Sender::new(Arc::from([])),
        })
    }

    /// The problems of this node the last sync found (a full map, ...), as
    /// Warning Events on its Node report them ([`SyncReport::node_problems`]):
    /// sent when they change. Empty without a node name.
    ///
    /// [`SyncReport::node_problems`]: crate::reconcile::SyncReport::node_problems
    #[must_use]
    pub fn problems(&self) -> watch::Receiver<Arc<[Problem]>> {
        self.problems.subscribe()
    }

    /// Reconciles every model snapshot into the maps until cancelled. Maps and program
    /// links stay pinned when it returns: the data path keeps serving what it was last
    /// given until a new proxy takes over (or `--cleanup` removes it).
    ///
    /// # Panics
    ///
    /// Never: the maps are handed to a blocking task for each sync and always handed back.
    #[expect(
        clippy::too_many_lines,
        reason = "one select loop over the model, the counters and conntrack GC"
    )]
    pub async fn run(self) -> Result<(), Error> {
        let Self {
            cgroup,
            node_name,
            snat_address: snat_flag,
            mut interfaces,
            interface_mode,
            xdp,
            mut links,
            datapath,
            reconciler,
            mut metrics,
            mut health,
            mut model,
            ready,
            cancel,
            problems,
        } = self;
        let mut state = Some((datapath, reconciler));
        let mut ticker = tokio::time::interval(COUNTER_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Interfaces and addresses follow rtnetlink's announcements; the addresses are read
        // again when the Node (its InternalIP) changes, too.
        let mut node_events = if interface_mode == Interfaces::None {
            None
        } else {
            match NodeEvents::subscribe() {
                Ok(events) => Some(events),
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to rtnetlink link and address events; reading addresses every {COUNTER_INTERVAL:?}");
                    None
                }
            }
        };
        let mut node_changed = false;
        let settle = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(settle);
        let mut pending = true;
        let timeouts = Timeouts::default();
        let mut gc_interval = GC_FIRST;
        let gc_timer = tokio::time::sleep(gc_interval);
        tokio::pin!(gc_timer);
        loop {
            if pending {
                pending = false;
                let snapshot = model.borrow_and_update().clone();
                if snapshot.synced {
                    let (mut datapath, mut reconciler) = state.take().expect("state is put back");
                    let for_health = snapshot.clone();
                    let result = spawn_blocking_in_span(move || {
                        let started = Instant::now();
                        let report = reconciler.sync(&snapshot, &mut datapath);
                        let elapsed = started.elapsed();
                        if !report.removed_external_backends.is_empty()
                            && let Err(e) =
                                datapath.forget_backends(&report.removed_external_backends)
                        {
                            warn!(error = %e, "deleting the flows of removed backends failed");
                        }
                        (datapath, reconciler, report, elapsed, snapshot.generation)
                    })
                    .await;
                    let Ok((datapath, reconciler, report, elapsed, generation)) = result else {
                        return Err(Error::Internal("the sync task panicked"));
                    };
                    let capacity = Table::ALL.map(|t| datapath.capacity(t));
                    metrics.observe_sync(elapsed, &report, &reconciler.stats(), &capacity);
                    log_sync(&report, elapsed, generation, reconciler.stats());
                    if report.full {
                        // A full sync (and the model's first load before it) freed far more
                        // than the process keeps. Returned after the sync is reported, not
                        // before: it takes a while and nothing waits for it.
                        drop(spawn_blocking_in_span(crate::sys::release_freed_memory));
                    }
                    if let Some(node) = &node_name {
                        let found = report.node_problems(node);
                        problems.send_if_modified(|held| {
                            let changed = **held != *found;
                            if changed {
                                *held = found.into();
                            }
                            changed
                        });
                    }
                    if !report.removed_udp_backends.is_empty() {
                        let cgroup = cgroup.clone();
                        let removed = report.removed_udp_backends;
                        let destroyed = spawn_blocking_in_span(move || {
                            crate::stale::destroy_udp_sockets(&cgroup, &removed)
                        })
                        .await
                        .unwrap_or(0);
                        metrics.stale_sockets_destroyed(destroyed as u64);
                    }
                    state = Some((datapath, reconciler));
                    if report.full {
                        // This node's Node changed (or the first sync): its InternalIP picks
                        // the SNAT address.
                        node_changed = true;
                    }
                    ready.serving(generation);
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
                        // On shutdown the source stops once cancelled, and
                        // select! may see that first: only an early stop warns.
                        if !cancel.is_cancelled() {
                            warn!("the model source is gone; stopping");
                        }
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
                    if let Some((datapath, _)) = &mut state {
                        match datapath.counters() {
                            Ok(c) => metrics.observe_counters(&c),
                            Err(e) => warn!(error = %e, "reading the datapath counters failed"),
                        }
                        if node_events.is_none() && !interfaces.is_empty() {
                            refresh_addresses(datapath, snat_flag, &interfaces, &model.borrow(), node_name.as_deref());
                        }
                    }
                }
                changed = async {
                    match node_events.as_mut() {
                        Some(events) => events.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_none() {
                        warn!("the rtnetlink subscription ended; reading addresses every {COUNTER_INTERVAL:?}");
                        node_events = None;
                    } else if !node_changed {
                        // Changes come in bursts (a link, then its addresses): settle briefly.
                        node_changed = true;
                        settle.as_mut().reset(tokio::time::Instant::now() + NODE_SETTLE);
                    }
                }
                () = &mut settle, if node_changed => {
                    node_changed = false;
                    if let Some((datapath, _)) = &mut state {
                        reconcile_node(
                            datapath,
                            &mut links,
                            (&interface_mode, xdp),
                            &mut interfaces,
                            snat_flag,
                            &model.borrow(),
                            node_name.as_deref(),
                        );
                    }
                }
                () = &mut gc_timer, if !interfaces.is_empty() => {
                    if let Some((datapath, reconciler)) = state.take() {
                        let result = spawn_blocking_in_span(move || {
                            let mut datapath = datapath;
                            let report = datapath.collect_conntrack(&timeouts);
                            (datapath, report)
                        })
                        .await;
                        let Ok((datapath, report)) = result else {
                            return Err(Error::Internal("the conntrack GC task panicked"));
                        };
                        match report {
                            Ok(report) => {
                                gc_interval = next_interval(gc_interval, report.scanned, report.deleted, report.capacity, GC_BOUNDS);
                                debug!(scanned = report.scanned, deleted = report.deleted, next = ?gc_interval, "conntrack GC");
                            }
                            Err(e) => warn!(error = %e, "conntrack GC failed"),
                        }
                        state = Some((datapath, reconciler));
                    }
                    gc_timer.as_mut().reset(tokio::time::Instant::now() + gc_interval);
                }
            }
        }
        ready.set(false);
        health.shutdown();
        info!("proxy stopped; maps and program links stay pinned and keep serving");
        Ok(())
    }
}

/// The source addresses (IPv4, IPv6) of external flows to other nodes' backends: the flags,
/// else this node's InternalIP of the family (from the model) when the node carries it, else
/// the first global address of the family on the first interface that has one.
fn snat_addresses(
    flags: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    addresses: &[NodeAddress],
    interfaces: &[String],
    snapshot: &Snapshot,
    node_name: Option<&str>,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let pick = |v4: bool| -> Option<IpAddr> {
        let local = |ip: &IpAddr| addresses.iter().any(|a| a.address == *ip);
        let internal = node_name
            .and_then(|name| snapshot.nodes.get(name))
            .and_then(|node| {
                node.internal_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == v4 && local(ip))
                    .copied()
            });
        internal.or_else(|| {
            interfaces.iter().find_map(|name| {
                let ifindex = addresses.iter().find(|a| &a.ifname == name)?.ifindex;
                addresses
                    .iter()
                    .find(|a| a.ifindex == ifindex && a.address.is_ipv4() == v4 && a.is_global())
                    .map(|a| a.address)
            })
        })
    };
    let v4 = flags.0.or_else(|| match pick(true) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let v6 = flags.1.or_else(|| match pick(false) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    (v4, v6)
}

/// How long a burst of link and address events may last before the node is read again.
const NODE_SETTLE: Duration = Duration::from_millis(50);

/// Brings the interfaces carrying the NodePort programs (with `--interfaces auto`: those with
/// a global IPv4 address now) and the node-address maps (NodePort destinations, SNAT) to what
/// the node has now: new interfaces are attached, gone ones detached and their pins removed.
fn reconcile_node(
    datapath: &mut Datapath,
    links: &mut PinnedLinks,
    (mode, xdp): (&Interfaces, XdpMode),
    interfaces: &mut Vec<String>,
    flag: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    snapshot: &Snapshot,
    node_name: Option<&str>,
) {
    let addresses = match node_addresses() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "reading the node's addresses failed");
            return;
        }
    };
    if *mode == Interfaces::Auto {
        let wanted = default_interfaces(&addresses);
        for gone in interfaces.iter().filter(|i| !wanted.contains(i)) {
            if let Err(e) = datapath.detach_interface(gone, links) {
                warn!(interface = %gone, error = %e, "detaching the NodePort programs failed");
            }
        }
        interfaces.retain(|i| wanted.contains(i));
        for new in wanted {
            if interfaces.contains(&new) {
                continue;
            }
            let attached = datapath
                .attach_interface(&new, Some(links))
                .and_then(|()| datapath.attach_xdp(&new, xdp, Some(links)));
            match attached {
                Ok(()) => interfaces.push(new),
                Err(e) => {
                    warn!(interface = %new, error = %e, "attaching the NodePort programs failed");
                }
            }
        }
        interfaces.sort();
    }
    let snat = snat_addresses(flag, &addresses, interfaces, snapshot, node_name);
    match datapath.set_node_addresses(&addresses, snat.0, snat.1) {
        Ok(()) => debug!(?snat, interfaces = ?interfaces, "node addresses updated"),
        Err(e) => warn!(error = %e, "writing the node's addresses failed"),
    }
}

/// Re-reads the node's addresses into the maps (addresses come and go; the InternalIP may
/// arrive with the Node object after the start).
fn refresh_addresses(
    datapath: &mut Datapath,
    flag: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    interfaces: &[String],
    snapshot: &Snapshot,
    node_name: Option<&str>,
) {
    let addresses = match node_addresses() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "reading the node's addresses failed");
            return;
        }
    };
    let snat = snat_addresses(flag, &addresses, interfaces, snapshot, node_name);
    if let Err(e) = datapath.set_node_addresses(&addresses, snat.0, snat.1) {
        warn!(error = %e, "writing the node's addresses failed");
    }
}

/// `spawn_blocking` in the current span (the component's), so that the logs of the blocking
/// work (the reconciler's, the conntrack collector's) carry it.
fn spawn_blocking_in_span<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
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
            planning_cpu = ?report.planning_cpu,
            writing_cpu = ?report.writing_cpu,
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
