//! `cargo xtask bench proxy`: fairlead's socket load balancer side by side with
//! kube-proxy-style iptables and nftables rule sets, in one run on this machine.
//!
//! For each N (Services × E endpoints):
//! - sync time: programming all N into the BPF maps (the reconciler, from a model snapshot),
//!   against loading the equivalent kube-proxy-style rules with `iptables-legacy-restore`,
//!   `iptables-nft-restore` and `nft -f`, each in a scratch network namespace;
//! - one change: one EndpointSlice changed (one endpoint replaced), as an incremental sync
//!   (p50 and p99 of [`CHANGES`]), against restoring just that Service's chains (kube-proxy's
//!   partial sync);
//! - connect + first byte: latency (p50/p99) and rate of `connect()`, reading the one byte
//!   the backend writes on accept, and `close()`, to a ClusterIP with N Services present:
//!   fairlead's socket path against the same through nftables, iptables-nft and
//!   iptables-legacy DNAT rules (each in a network namespace of its own with the N Services'
//!   rules), and connecting straight to the pod as the floor. The variants run in blocks,
//!   interleaved round by round, so that a busy moment of the shared machine falls on all of
//!   them alike.
//!
//! After the sweep, a table per size, and (with the NodePort rows from `bench_nodeport`) the
//! issue's goals, each met or missed by how much.
//!
//! Needs root (BPF, netns, cgroup). Prints figures and ratios; asserts nothing.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fairlead_model::source::ManifestDir;
use fairlead_model::{Change, ModelWriter, decode};
use fairlead_proxy::abi::maps;
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

/// The Service that connect benchmarks use: one endpoint, the local backend.
const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 255, 1);
const BACKEND_PORT: u16 = 8080;

fn vip(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n)
}

fn endpoint(i: usize, j: usize, endpoints: usize) -> Ipv4Addr {
    let n = u32::try_from(i * endpoints + j + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n)
}

fn service_json(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": vip(i).to_string(), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

fn slice_json(name: &str, service: &str, addresses: &[String]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "bench", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()
    })
}

fn endpoints_of(i: usize, endpoints: usize) -> Vec<String> {
    (0..endpoints)
        .map(|j| endpoint(i, j, endpoints).to_string())
        .collect()
}

/// Runs a command, failing with its stderr.
fn run(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Times `program < input` inside `netns`; `None` when it had not finished after `cap` (it
/// is killed then: a rule set that takes longer is reported as "> cap").
fn timed_stdin(
    netns: &str,
    program: &[&str],
    input: &Path,
    cap: Duration,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    // `ip netns exec` execs the program in place: the child is the program itself.
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(program)
        .stdin(File::open(input)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program:?}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = started.elapsed();
            if !status.success() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                bail!("{program:?}: {status}: {}", stderr.trim());
            }
            return Ok(Some(elapsed));
        }
        if started.elapsed() >= cap {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(
            if started.elapsed() < Duration::from_secs(1) {
                1
            } else {
                50
            },
        ));
    }
}

/// A rule-set time, or "> cap" when it was stopped there.
fn capped(time: Option<Duration>, cap: Duration) -> String {
    time.map_or_else(|| format!("> {:.0} s", cap.as_secs_f64()), ms)
}

/// `peer / fairlead`, or "> (cap / fairlead)" when the peer was stopped at the cap.
fn capped_ratio(
    time: Option<Duration>,
    cap: Duration,
    fairlead: Duration,
    digits: usize,
) -> String {
    let ratio = |d: Duration| d.as_secs_f64() / fairlead.as_secs_f64().max(1e-12);
    match time {
        Some(d) => format!("{:.digits$}x", ratio(d)),
        None => format!(">{:.digits$}x", ratio(cap)),
    }
}

pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(Self(name.to_owned()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// kube-proxy's iptables mode, in iptables-restore format (nat table only).
fn iptables_rules(n: usize, endpoints: usize, with_target: bool) -> String {
    let mut out = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::new();
    let mut chains = String::new();
    let mut add_service = |i: usize, vip: Ipv4Addr, eps: &[(Ipv4Addr, u16)]| {
        let svc = format!("KUBE-SVC-{i:012}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}"
        );
        let count = eps.len();
        for (j, (address, port)) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:08}{j:04}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if j + 1 < count {
                #[expect(clippy::cast_precision_loss, reason = "a probability")]
                let p = 1.0 / (count - j) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {address}:{port}\" -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http -> {address}:{port}\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {address}/32 -m comment --comment \"bench/svc-{i}:http\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment \"bench/svc-{i}:http\" -m tcp -j DNAT --to-destination {address}:{port}"
            );
        }
    };
    for i in 0..n {
        let eps: Vec<(Ipv4Addr, u16)> = (0..endpoints)
            .map(|j| (endpoint(i, j, endpoints), 8080))
            .collect();
        add_service(i, vip(i), &eps);
    }
    if with_target {
        add_service(n, TARGET_VIP, &[(Ipv4Addr::LOCALHOST, BACKEND_PORT)]);
    }
    out.push_str(&chains);
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's partial sync of one changed Service: its chains, flushed and rewritten.
fn iptables_one_change(i: usize, endpoints: usize, generation: usize) -> String {
    let mut out = String::from("*nat\n");
    let svc = format!("KUBE-SVC-{i:012}");
    let _ = writeln!(out, ":{svc} - [0:0]");
    let mut rules = String::new();
    for j in 0..endpoints {
        let sep = format!("KUBE-SEP-{i:08}{j:04}");
        let _ = writeln!(out, ":{sep} - [0:0]");
        let address = if j == 0 {
            Ipv4Addr::new(10, 200, 0, u8::try_from(generation % 250 + 1).unwrap_or(1))
        } else {
            endpoint(i, j, endpoints)
        };
        if j + 1 < endpoints {
            #[expect(clippy::cast_precision_loss, reason = "a probability")]
            let p = 1.0 / (endpoints - j) as f64;
            let _ = writeln!(
                rules,
                "-A {svc} -m statistic --mode random --probability {p:.11} -j {sep}"
            );
        } else {
            let _ = writeln!(rules, "-A {svc} -j {sep}");
        }
        let _ = writeln!(rules, "-A {sep} -s {address}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m tcp -j DNAT --to-destination {address}:8080"
        );
    }
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's nftables mode (simplified): a verdict map from (VIP, protocol, port) to a
/// per-Service chain that picks an endpoint chain with `numgen random`.
fn nft_rules(n: usize, endpoints: usize, with_target: bool) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    out.push_str(
        "  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n  }\n",
    );
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    out.push_str(
        "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n",
    );
    for i in 0..n {
        let targets: Vec<String> = (0..endpoints)
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        let _ = writeln!(
            out,
            "  chain service-{i} {{\n    numgen random mod {endpoints} vmap {{ {} }}\n  }}",
            targets.join(", ")
        );
        for j in 0..endpoints {
            let address = endpoint(i, j, endpoints);
            let _ = writeln!(
                out,
                "  chain endpoint-{i}-{j} {{\n    ip saddr {address} meta mark set meta mark | 0x4000\n    meta l4proto tcp dnat to {address}:8080\n  }}"
            );
        }
    }
    if with_target {
        out.push_str(
            "  chain service-target {\n    meta l4proto tcp dnat to 127.0.0.1:8080\n  }\n",
        );
    }
    out.push_str("}\n");
    if with_target {
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {TARGET_VIP} . tcp . 80 : goto service-target }}"
        );
    }
    // Elements in chunks, as kube-proxy adds them.
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let items: Vec<String> = chunk
            .iter()
            .map(|i| format!("{} . tcp . 80 : goto service-{i}", vip(*i)))
            .collect();
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} }}",
            items.join(", ")
        );
    }
    out
}

fn nft_one_change(i: usize, endpoints: usize, generation: usize) -> String {
    let mut out = format!("flush chain ip kube-proxy endpoint-{i}-0\n");
    let address = Ipv4Addr::new(10, 200, 0, u8::try_from(generation % 250 + 1).unwrap_or(1));
    let _ = writeln!(
        out,
        "add rule ip kube-proxy endpoint-{i}-0 ip saddr {address} meta mark set meta mark | 0x4000"
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy endpoint-{i}-0 meta l4proto tcp dnat to {address}:8080"
    );
    let _ = endpoints;
    out
}

/// Time this thread has spent on a CPU (`/proc/thread-self/schedstat`, nanoseconds): on a
/// shared machine, the part of a wall-clock figure that is ours.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The 1-minute load average, as text.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The `pct` percentile of sorted `v` (nearest rank below).
fn percentile(v: &[Duration], pct: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[(v.len() * pct / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Enters a network namespace on this thread.
pub(crate) fn enter(netns: &str) -> Result<()> {
    let file = File::open(format!("/var/run/netns/{netns}")).context("open netns")?;
    rustix::thread::move_into_link_name_space(
        rustix::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("setns")?;
    Ok(())
}

/// The CPU of the connect measurements' clients, and of their backends: the same one.
/// Unpinned, each block's new client thread landed on the backend's CPU or on the other
/// one, and a variant's p50 was 36 or 70 µs by that alone (the 2026-12-05 runs: "direct"
/// once at 70 µs and fairlead at 39). On one CPU every connect costs the same, and it
/// is the strictest floor: the hooks' cost is the largest share of it (pinned to two
/// CPUs, fairlead's +2.4 µs was +3.4% of 70 µs; on one, +1.4 µs is +4.0% of 36).
const CLIENT_CPU: usize = 0;
const BACKEND_CPU: usize = 0;

/// Pins the calling thread to `cpu` (left unpinned on a machine without it).
fn pin_to_cpu(cpu: usize) {
    let cores = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpu < cores {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// A TCP server on 127.0.0.1:8080 in a network namespace: accepts, writes one byte (the
/// "first byte" the client waits for) and closes, until dropped. The accept blocks (a
/// polling accept would add its sleep to every connect).
struct Backend {
    netns: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(netns: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let name = netns.to_owned();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            pin_to_cpu(BACKEND_CPU);
            let listener = enter(&name).and_then(|()| {
                TcpListener::bind((Ipv4Addr::LOCALHOST, BACKEND_PORT)).context("bind backend")
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                if let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.write_all(b"x");
                }
            }
        });
        rx.recv().context("backend thread")??;
        Ok(Self {
            netns: netns.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept; if that fails (the namespace is gone), leave the thread.
        let woken = connects(
            &self.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, BACKEND_PORT)),
            1,
        );
        if let (Ok(_), Some(thread)) = (woken, self.thread.take()) {
            let _ = thread.join();
        }
    }
}

/// `count` times connect, read the first byte, close, to `to` from a thread in `netns`: the
/// latencies and the time it all took.
fn connects(netns: &str, to: SocketAddr, count: usize) -> Result<(Vec<Duration>, Duration)> {
    let name = netns.to_owned();
    thread::spawn(move || -> Result<(Vec<Duration>, Duration)> {
        pin_to_cpu(CLIENT_CPU);
        enter(&name)?;
        let mut lat = Vec::with_capacity(count);
        let started = Instant::now();
        let mut byte = [0_u8; 1];
        for _ in 0..count {
            let t = Instant::now();
            let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connect {to}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream
                .read_exact(&mut byte)
                .with_context(|| format!("first byte from {to}"))?;
            lat.push(t.elapsed());
            drop(stream);
        }
        Ok((lat, started.elapsed()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
}

fn cgroup_root() -> Result<PathBuf> {
    fairlead_proxy::cgroup2_root().context("no cgroup v2 hierarchy")
}

/// Connect + first byte latencies of one way to reach the backend.
#[derive(Clone, Copy, Default)]
pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// Connects per second within its blocks.
    pub(crate) rate: f64,
}

impl Latency {
    fn of(mut all: Vec<Duration>, busy: Duration) -> Self {
        all.sort();
        #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
        let rate = all.len() as f64 / busy.as_secs_f64().max(1e-9);
        Self {
            p50: percentile(&all, 50),
            p99: percentile(&all, 99),
            rate,
        }
    }
}

/// How a connect variant reaches the backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// To 127.0.0.1:8080 in the fairlead namespace, outside the balanced cgroup: the floor.
    Direct,
    /// To the ClusterIP, from inside the balanced cgroup.
    Fairlead,
    /// To 127.0.0.1:8080 from inside the balanced cgroup (the hooks run and find nothing).
    DirectAttached,
    /// To the ClusterIP through a rule set's DNAT in its own namespace.
    Rules(&'static str),
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct to the pod (floor)",
            Self::Fairlead => "fairlead ClusterIP",
            Self::DirectAttached => "direct, programs attached",
            Self::Rules(label) => label,
        }
    }

    fn in_cgroup(self) -> bool {
        matches!(self, Self::Fairlead | Self::DirectAttached)
    }
}

/// What one size of the sweep measured.
pub(crate) struct SizeFigures {
    pub(crate) services: usize,
    pub(crate) fairlead_sync: Duration,
    /// (peer, full load, median of its one-change loads); `None`: stopped at the cap (the
    /// one-change loads are then not measured).
    pub(crate) peers: Vec<(&'static str, Option<Duration>, Option<Duration>)>,
    /// The cap on each rule-set load.
    pub(crate) rules_cap: Duration,
    pub(crate) change_p50: Duration,
    pub(crate) change_p99: Duration,
    /// (label, latency), the floor first.
    pub(crate) connects: Vec<(&'static str, Latency)>,
    pub(crate) start: Option<ProcessStart>,
    /// The same, from an apiserver.
    pub(crate) start_apiserver: Option<ProcessStart>,
}

impl SizeFigures {
    pub(crate) fn connect(&self, label: &str) -> Option<Latency> {
        self.connects
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, lat)| *lat)
    }
}

/// Moves this process into the cgroup at `path` (below the hierarchy's root).
fn join_cgroup(root: &Path, path: &str) -> Result<()> {
    std::fs::write(
        root.join(path.trim_start_matches('/')).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("joining cgroup {path}"))
}

/// Connect + first byte for every variant, in `ROUNDS` interleaved blocks; `datapath` is
/// attached to a scratch cgroup for the fairlead variants and detached (dropped) at the end.
#[expect(
    clippy::too_many_lines,
    reason = "set-up, the interleaved rounds and the tear-down of one measurement"
)]
fn measure_connects(
    n: usize,
    endpoints: usize,
    count: usize,
    peers_too: bool,
    ipt: &Path,
    rules_cap: Duration,
    mut datapath: Datapath,
) -> Result<Vec<(&'static str, Latency)>> {
    const ROUNDS: usize = 10;
    let pid = std::process::id();
    let target = SocketAddr::from((TARGET_VIP, 80));
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, BACKEND_PORT));
    let fairlead_ns = Netns::new(&format!("fl-bench-conn-{pid}"))?;
    let _fairlead_backend = Backend::start(&fairlead_ns.0)?;
    // The rule sets, each in a namespace of its own with the VIP on lo.
    let mut rule_sets = Vec::new();
    if peers_too {
        let nft = std::env::temp_dir().join(format!("fairlead-bench-nft-conn-{pid}"));
        std::fs::write(&nft, nft_rules(n, endpoints, true))?;
        for (label, program, file, tag) in [
            (
                "nftables ClusterIP",
                &["nft", "-f", "-"][..],
                nft.as_path(),
                "nft",
            ),
            (
                "iptables-nft ClusterIP",
                &["iptables-nft-restore", "--noflush"][..],
                ipt,
                "ipt",
            ),
            (
                "iptables-legacy ClusterIP",
                &["iptables-legacy-restore", "--noflush"][..],
                ipt,
                "leg",
            ),
        ] {
            let ns = Netns::new(&format!("fl-bench-{tag}-{pid}"))?;
            run(Command::new("ip").args([
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{TARGET_VIP}/32"),
                "dev",
                "lo",
            ]))?;
            if timed_stdin(&ns.0, program, file, rules_cap)?.is_none() {
                println!(
                    "  connects: {label} left out (its rules were not loaded after {})",
                    capped(None, rules_cap)
                );
                continue;
            }
            let backend = Backend::start(&ns.0)?;
            // The backend first: it is dropped before its namespace.
            rule_sets.push((label, backend, ns));
        }
        let _ = std::fs::remove_file(&nft);
    }
    // Socket LB: this process joins a cgroup the programs are attached to, for its blocks.
    let root = cgroup_root()?;
    let cgroup_name = format!("fairlead-bench-{pid}");
    let cgroup = root.join(&cgroup_name);
    std::fs::create_dir_all(&cgroup)?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned();
    datapath.attach(&cgroup)?;

    let mut ways = vec![Way::Direct, Way::Fairlead, Way::DirectAttached];
    ways.extend(rule_sets.iter().map(|(label, _, _)| Way::Rules(label)));
    let mut samples: Vec<(Vec<Duration>, Duration)> =
        vec![(Vec::new(), Duration::ZERO); ways.len()];
    let block = count.div_ceil(ROUNDS).max(1);
    let result = (|| -> Result<()> {
        // Warm-up (not counted), then the rounds; the order rotates each round.
        for round in 0..=ROUNDS {
            let size = if round == 0 { block.min(200) } else { block };
            for k in 0..ways.len() {
                let w = (k + round) % ways.len();
                let way = ways[w];
                if way.in_cgroup() {
                    join_cgroup(&root, &cgroup_name)?;
                }
                let measured = match way {
                    Way::Direct | Way::DirectAttached => connects(&fairlead_ns.0, local, size),
                    Way::Fairlead => connects(&fairlead_ns.0, target, size),
                    Way::Rules(label) => {
                        let ns = rule_sets
                            .iter()
                            .find(|(l, _, _)| *l == label)
                            .map(|(_, _, ns)| ns.0.clone())
                            .unwrap_or_default();
                        connects(&ns, target, size)
                    }
                };
                if way.in_cgroup() {
                    join_cgroup(&root, &own)?;
                }
                let (lat, busy) = measured.with_context(|| way.label().to_owned())?;
                if round > 0 {
                    samples[w].0.extend(lat);
                    samples[w].1 += busy;
                }
            }
        }
        Ok(())
    })();
    let _ = join_cgroup(&root, &own);
    drop(datapath);
    let _ = std::fs::remove_dir(&cgroup);
    result?;
    Ok(ways
        .iter()
        .zip(samples)
        .map(|(way, (lat, busy))| (way.label(), Latency::of(lat, busy)))
        .collect())
}

/// Changes of one EndpointSlice per size (p50 and p99 of these).
const CHANGES: usize = 200;

/// The benchmark: the figures of every size, after printing them.
#[expect(
    clippy::too_many_lines,
    reason = "one measurement after another, in the order they are printed"
)]
pub(crate) fn bench(
    sizes: &[usize],
    endpoints: usize,
    connect_count: usize,
    peers_too: bool,
    rules_cap: Duration,
) -> Result<Vec<SizeFigures>> {
    let dir = std::env::temp_dir().join(format!("fairlead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "proxy benchmark: Services × {endpoints} endpoints; {connect_count} connects per variant and size; load average {}",
        load_average()
    );
    println!("(absolute times are noise on a shared machine; compare the ratios)\n");
    let mut figures = Vec::new();
    for &n in sizes {
        println!("== N = {n} Services ({} endpoints)", n * endpoints);
        // The model.
        let manifests = dir.join(format!("manifests-{n}"));
        std::fs::create_dir_all(&manifests)?;
        let mut items = Vec::with_capacity(2 * n + 2);
        for i in 0..n {
            items.push(service_json(i));
            items.push(slice_json(
                &format!("svc-{i}-1"),
                &format!("svc-{i}"),
                &endpoints_of(i, endpoints),
            ));
        }
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "target", "namespace": "bench"},
            "spec": {"clusterIP": TARGET_VIP.to_string(), "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT}]}
        }));
        items.push(slice_json("target-1", "target", &["127.0.0.1".to_owned()]));
        let mut list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        std::fs::write(manifests.join("all.json"), serde_json::to_vec(&list)?)?;
        let serde_json::Value::Array(items) = list["items"].take() else {
            unreachable!("made above")
        };
        let (mut writer, _rx) = ModelWriter::new();
        let started = Instant::now();
        ManifestDir::new(&manifests).sync(&mut writer)?;
        println!(
            "  model from manifests (not compared): {}",
            ms(started.elapsed())
        );
        let snapshot = writer.snapshot();

        // fairlead: program everything.
        let entries = u32::try_from(n * (endpoints + 1) + 64)
            .unwrap_or(u32::MAX)
            .max(maps::SERVICE_MAX_ENTRIES);
        let backends = u32::try_from(n * endpoints + 64)
            .unwrap_or(u32::MAX)
            .max(maps::BACKEND_MAX_ENTRIES);
        let options = LoadOptions::new()
            .map_size(maps::SERVICES4, entries)
            .map_size(maps::BACKENDS4, backends);
        let mut datapath = Datapath::load(&options).context("loading the eBPF object (root?)")?;
        let mut reconciler = Reconciler::new(None);
        let started = Instant::now();
        let cpu_before = thread_cpu();
        let report = reconciler.sync(&snapshot, &mut datapath);
        let fairlead_full = started.elapsed();
        let fairlead_cpu = thread_cpu().saturating_sub(cpu_before);
        if !report.errors.is_empty() {
            bail!("fairlead sync errors: {:?}", report.errors.first());
        }
        // One changed EndpointSlice, CHANGES times.
        let mut changes = Vec::with_capacity(CHANGES);
        let mut changes_cpu = Vec::with_capacity(CHANGES);
        for g in 0..CHANGES {
            let mut addresses = endpoints_of(0, endpoints);
            addresses[0] = format!("10.200.{}.{}", g / 250, g % 250 + 1);
            let object = decode(slice_json("svc-0-1", "svc-0", &addresses))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            writer.apply([Change::Upsert {
                object,
                origin: None,
            }]);
            let snapshot = writer.snapshot();
            let started = Instant::now();
            let cpu_before = thread_cpu();
            let report = reconciler.sync(&snapshot, &mut datapath);
            changes.push(started.elapsed());
            changes_cpu.push(thread_cpu().saturating_sub(cpu_before));
            assert!(report.services_compared == 1 && !report.full);
        }
        changes.sort();
        changes_cpu.sort();
        let (change_p50, change_p99) = (percentile(&changes, 50), percentile(&changes, 99));

        // iptables-legacy, iptables-nft, nft: full load and one change, each in a fresh netns.
        let ipt = dir.join(format!("iptables-{n}.rules"));
        std::fs::write(&ipt, iptables_rules(n, endpoints, true))?;
        let nft = dir.join(format!("nft-{n}.rules"));
        std::fs::write(&nft, nft_rules(n, endpoints, false))?;
        let mut peers = Vec::new();
        let all_peers = [
            (
                "iptables-legacy-restore",
                vec!["iptables-legacy-restore", "--noflush"],
                &ipt,
            ),
            (
                "iptables-nft-restore",
                vec!["iptables-nft-restore", "--noflush"],
                &ipt,
            ),
            ("nft -f", vec!["nft", "-f", "-"], &nft),
        ];
        for (label, program, file) in all_peers.into_iter().filter(|_| peers_too) {
            let ns = Netns::new(&format!("fl-bench-rules-{}", std::process::id()))?;
            let Some(full) = timed_stdin(&ns.0, &program, file, rules_cap)? else {
                peers.push((label, None, None));
                continue;
            };
            let mut one = Vec::new();
            for g in 0..5 {
                let change = dir.join("change.rules");
                let text = if label.starts_with("nft") {
                    nft_one_change(0, endpoints, g)
                } else {
                    iptables_one_change(0, endpoints, g)
                };
                std::fs::write(&change, text)?;
                let Some(time) = timed_stdin(&ns.0, &program, &change, rules_cap)? else {
                    bail!(
                        "{label}: one change took more than {}",
                        capped(None, rules_cap)
                    );
                };
                one.push(time);
            }
            peers.push((label, Some(full), Some(median(one))));
        }
        println!("  program all N:");
        println!(
            "    fairlead (BPF maps)        {:>12}   (on CPU {}: planning {}, writing {}; {} writes; load average {})",
            ms(fairlead_full),
            ms(fairlead_cpu),
            ms(report.planning_cpu),
            ms(report.writing_cpu),
            report.writes,
            load_average()
        );
        for (label, full, _) in &peers {
            println!(
                "    {label:<26} {:>12}   fairlead is {} faster{}",
                capped(*full, rules_cap),
                capped_ratio(*full, rules_cap, fairlead_full, 1),
                if full.is_none() {
                    " (stopped at the cap, --rules-timeout)"
                } else {
                    ""
                }
            );
        }
        println!("  one changed EndpointSlice:");
        println!(
            "    fairlead                   {:>12} p50 {:>12} p99 (of {CHANGES}; on CPU {} p50, {} p99: the rest is waiting for a CPU)",
            ms(change_p50),
            ms(change_p99),
            ms(percentile(&changes_cpu, 50)),
            ms(percentile(&changes_cpu, 99))
        );
        for (label, _, one) in &peers {
            match one {
                Some(one) => println!(
                    "    {label:<26} {:>12} median of 5   fairlead's p50 is {:.0}x faster",
                    ms(*one),
                    one.as_secs_f64() / change_p50.as_secs_f64()
                ),
                None => println!("    {label:<26} not measured (its full load was stopped)"),
            }
        }

        // Connect + first byte.
        let connects = if connect_count > 0 {
            let connects = measure_connects(
                n,
                endpoints,
                connect_count,
                peers_too,
                &ipt,
                rules_cap,
                datapath,
            )?;
            println!(
                "  connect + first byte + close to a ClusterIP, {connect_count} per variant in 10 interleaved blocks (load average {}):",
                load_average()
            );
            println!(
                "    {:<30} {:>9} {:>9} {:>10}   p50, p99 vs floor",
                "", "p50", "p99", "rate"
            );
            let floor = connects[0].1;
            for (label, lat) in &connects {
                println!(
                    "    {label:<30} {:>6.1} µs {:>6.1} µs {:>8.0}/s   {:+.1}%, {:+.1}%",
                    lat.p50.as_secs_f64() * 1e6,
                    lat.p99.as_secs_f64() * 1e6,
                    lat.rate,
                    (lat.p50.as_secs_f64() / floor.p50.as_secs_f64() - 1.0) * 100.0,
                    (lat.p99.as_secs_f64() / floor.p99.as_secs_f64() - 1.0) * 100.0,
                );
            }
            connects
        } else {
            drop(datapath);
            Vec::new()
        };
        let report = |start: Result<Option<ProcessStart>>| match start {
            Ok(Some(start)) => {
                start.print();
                Some(start)
            }
            Ok(None) => {
                println!(
                    "  process start: skipped (no `fairlead` binary next to this one: cargo build --release --bin fairlead)"
                );
                None
            }
            Err(e) => {
                println!("  process start: failed: {e:#}");
                None
            }
        };
        let start = report(process_start(
            &[OsStr::new("--manifests"), manifests.as_os_str()],
            n,
            endpoints,
        ));
        // The same objects from an apiserver (the fake one, its lists rendered as a
        // watch cache has them).
        let start_apiserver = report(crate::bench_source::serve(items).and_then(
            |(_runtime, _fake, _dir, kubeconfig)| {
                process_start(
                    &[OsStr::new("--kubeconfig"), kubeconfig.as_os_str()],
                    n,
                    endpoints,
                )
            },
        ));
        let _ = std::fs::remove_dir_all(&manifests);
        println!();
        figures.push(SizeFigures {
            services: n,
            fairlead_sync: fairlead_full,
            peers,
            rules_cap,
            change_p50,
            change_p99,
            connects,
            start,
            start_apiserver,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_sweep(&figures);
    let _ = std::io::stdout().flush();
    Ok(figures)
}

/// The sweep as one table per figure, a row per size.
fn print_sweep(figures: &[SizeFigures]) {
    if figures.len() < 2 {
        return;
    }
    println!("== sweep: how each figure grows with the number of Services");
    let peers: Vec<&str> = figures[0].peers.iter().map(|(l, _, _)| *l).collect();
    let mut header = format!("    {:>8} {:>12}", "Services", "fairlead");
    for label in &peers {
        let _ = write!(header, " {label:>24}");
    }
    println!("  full sync (peer: time, and its ratio to fairlead's):");
    println!("{header}");
    for f in figures {
        let mut line = format!("    {:>8} {:>12}", f.services, ms(f.fairlead_sync));
        for (_, full, _) in &f.peers {
            let _ = write!(
                line,
                " {:>13} {:>9}",
                capped(*full, f.rules_cap),
                capped_ratio(*full, f.rules_cap, f.fairlead_sync, 1)
            );
        }
        println!("{line}");
    }
    println!("  one change (fairlead p50 / p99; peers: median of 5):");
    println!("{header}");
    for f in figures {
        let mut line = format!(
            "    {:>8} {:>5.3}/{:.3} ms",
            f.services,
            f.change_p50.as_secs_f64() * 1e3,
            f.change_p99.as_secs_f64() * 1e3
        );
        for (_, _, one) in &f.peers {
            match one {
                Some(one) => {
                    let _ = write!(
                        line,
                        " {:>13} {:>8.0}x",
                        ms(*one),
                        one.as_secs_f64() / f.change_p50.as_secs_f64()
                    );
                }
                None => {
                    let _ = write!(line, " {:>13} {:>9}", "-", "-");
                }
            }
        }
        println!("{line}");
    }
    if figures[0].connects.is_empty() {
        return;
    }
    println!("  connect + first byte, p50 (p99) in µs, and p50 vs the floor:");
    let labels: Vec<&str> = figures[0].connects.iter().map(|(l, _)| *l).collect();
    let mut header = format!("    {:>8}", "Services");
    for label in &labels {
        let short = label.split_whitespace().next().unwrap_or(label);
        let _ = write!(header, " {short:>24}");
    }
    println!("{header}");
    for f in figures {
        let floor = f.connects.first().map(|(_, l)| l.p50).unwrap_or_default();
        let mut line = format!("    {:>8}", f.services);
        // By label: a rule set that was not loaded (the cap) has no column at that size.
        for label in &labels {
            let Some(lat) = f.connect(label) else {
                let _ = write!(line, " {:>24}", "not loaded");
                continue;
            };
            let _ = write!(
                line,
                " {:>7.1} ({:>6.1}) {:>+6.1}%",
                lat.p50.as_secs_f64() * 1e6,
                lat.p99.as_secs_f64() * 1e6,
                (lat.p50.as_secs_f64() / floor.as_secs_f64().max(1e-12) - 1.0) * 100.0
            );
        }
        println!("{line}");
    }
}

/// `fairlead proxy` from process start to its first full sync, and its memory.
pub(crate) struct ProcessStart {
    /// Where the objects came from (`--manifests`, `--kubeconfig`).
    from: String,
    /// Spawn to the `proxy started` line (maps created, programs loaded and attached).
    started: Duration,
    /// Spawn to the `maps synced` line.
    pub(crate) synced: Duration,
    /// What the process logged for the sync itself.
    sync_line: String,
    /// Resident memory after the sync (kB).
    pub(crate) rss_kb: u64,
    /// Memory of the proxy's maps as bpftool reports them (`bytes_memlock`).
    pub(crate) map_bytes: u64,
}

impl ProcessStart {
    fn print(&self) {
        println!(
            "  process start -> first full sync (fairlead proxy {}): {}   (maps and programs ready at {}; load average {})",
            self.from,
            ms(self.synced),
            ms(self.started),
            load_average()
        );
        println!("    logged: {}", self.sync_line);
        #[expect(clippy::cast_precision_loss, reason = "sizes for people")]
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        println!(
            "    memory: process RSS {:.1} MiB; its BPF maps {:.1} MiB (bpftool bytes_memlock)",
            mib(self.rss_kb * 1024),
            mib(self.map_bytes)
        );
    }
}

/// Runs the `fairlead` binary next to this one (`None` without one) as `fairlead proxy` with
/// `source` (`--manifests DIR` or `--kubeconfig FILE`), maps pinned in a scratch bpffs directory, sockets of a scratch cgroup, no
/// interfaces; stops it at its first full sync and removes what it pinned.
fn process_start(source: &[&OsStr], n: usize, endpoints: usize) -> Result<Option<ProcessStart>> {
    use std::io::BufRead as _;
    let binary = std::env::current_exe()?.with_file_name("fairlead");
    if !binary.is_file() {
        return Ok(None);
    }
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/fairlead-bench-{}", std::process::id()));
    let cgroup = cgroup_root()?.join(format!("fairlead-bench-start-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup)?;
    let entries = (n * (endpoints + 1) + 64).max(maps::SERVICE_MAX_ENTRIES as usize);
    let started_at = Instant::now();
    let mut child = Command::new(&binary)
        .args([
            "proxy",
            "--interfaces",
            "none",
            "--telemetry-addr",
            "127.0.0.1:0",
        ])
        .args(source)
        .arg("--bpffs")
        .arg(&bpffs)
        .arg("--cgroup")
        .arg(&cgroup)
        .args(["--map-services", &entries.to_string()])
        .args(["--map-backends", &entries.to_string()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut started = None;
    let mut result = None;
    let mut text = String::new();
    while let Some(Ok(line)) = lines.next() {
        let _ = writeln!(text, "{line}");
        if started.is_none() && line.contains("proxy started") {
            started = Some(started_at.elapsed());
        }
        if line.contains("maps synced") {
            let synced = started_at.elapsed();
            let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0);
            let map_bytes = maps::ALL
                .iter()
                .filter_map(|spec| {
                    let out = Command::new("bpftool")
                        .args(["-j", "map", "show", "pinned"])
                        .arg(bpffs.join(spec.name))
                        .output()
                        .ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                    v["bytes_memlock"].as_u64()
                })
                .sum();
            let sync_line = line
                .split_once("maps synced")
                .map_or(line.as_str(), |(_, rest)| rest)
                .trim()
                .to_owned();
            result = Some(ProcessStart {
                from: source
                    .first()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                started: started.unwrap_or_default(),
                synced,
                sync_line,
                rss_kb,
                map_bytes,
            });
            break;
        }
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = Command::new(&binary)
        .args(["proxy", "--cleanup", "--bpffs"])
        .arg(&bpffs)
        .output();
    let _ = std::fs::remove_dir(&cgroup);
    match result {
        Some(r) => Ok(Some(r)),
        None => bail!("no `maps synced` line; the proxy said:\n{text}"),
    }
}

/// A goal's verdict: "met", or "missed by X%" (how far the figure is past the bound).
fn verdict(value: f64, bound: f64, at_most: bool) -> String {
    let met = if at_most {
        value <= bound
    } else {
        value >= bound
    };
    if met {
        "met".to_owned()
    } else if at_most {
        format!("missed by {:.0}%", (value / bound - 1.0) * 100.0)
    } else {
        format!("missed by {:.0}%", (1.0 - value / bound) * 100.0)
    }
}

/// The table: each goal with this run's figure, met or missed by how much.
#[expect(
    clippy::too_many_lines,
    reason = "one row per goal, in the issue's order"
)]
pub(crate) fn print_goals(
    figures: &[SizeFigures],
    nodeport: Option<crate::bench_nodeport::Ratios>,
) {
    println!(
        "\n== goals (issue 15), this run, load average {}",
        load_average()
    );
    println!("  | figure | result | goal | verdict |");
    println!("  |---|---|---|---|");
    let row = |figure: &str, result: &str, goal: &str, verdict: &str| {
        println!("  | {figure} | {result} | {goal} | {verdict} |");
    };
    if let Some(f) = figures.iter().max_by_key(|f| f.services) {
        let n = f.services;
        let ms_of = |d: Duration| d.as_secs_f64() * 1e3;
        row(
            &format!("full sync, {n} Services, cold maps"),
            &format!("{:.0} ms", ms_of(f.fairlead_sync)),
            "< 250 ms",
            &verdict(ms_of(f.fairlead_sync), 250.0, true),
        );
        for (start, from) in [
            (&f.start, "manifests"),
            (&f.start_apiserver, "an apiserver (the fake one)"),
        ] {
            if let Some(start) = start {
                let seconds = start.synced.as_secs_f64();
                row(
                    &format!("process start -> first sync, {n} Services from {from}"),
                    &format!("{seconds:.2} s"),
                    "< 0.5 s",
                    &verdict(seconds, 0.5, true),
                );
            }
        }
        row(
            &format!("one EndpointSlice change, p50 / p99 (of {CHANGES}, {n} Services)"),
            &format!("{:.3} / {:.3} ms", ms_of(f.change_p50), ms_of(f.change_p99)),
            "< 1 ms / < 5 ms",
            &format!(
                "{} / {}",
                verdict(ms_of(f.change_p50), 1.0, true),
                verdict(ms_of(f.change_p99), 5.0, true)
            ),
        );
        if let Some(start) = &f.start {
            #[expect(clippy::cast_precision_loss, reason = "sizes for people")]
            let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
            row(
                &format!("memory of `fairlead proxy`, {n} Services"),
                &format!(
                    "RSS {:.1} MiB; BPF maps {:.1} MiB (bpftool memlock)",
                    mib(start.rss_kb * 1024),
                    mib(start.map_bytes)
                ),
                "reported next to the maps",
                "reported",
            );
        }
    }
    if let Some(r) = nodeport {
        let whose = if r.node_only { "node CPU" } else { "CPU" };
        row(
            "NodePort new connections/s vs nftables",
            &format!("{:.2}x", r.connections),
            "≥ 2x",
            &verdict(r.connections, 2.0, false),
        );
        row(
            &format!("{whose} per request on an established flow vs nftables"),
            &format!("{:.2}x", r.cpu_per_request),
            "≤ 0.8x",
            &verdict(r.cpu_per_request, 0.8, true),
        );
        row(
            &format!("{whose} per connection vs nftables"),
            &format!("{:.2}x", r.cpu_per_connection),
            "≤ 0.6x",
            &verdict(r.cpu_per_connection, 0.6, true),
        );
    }
    for f in figures {
        let (Some(floor), Some(via)) = (
            f.connect(Way::Direct.label()),
            f.connect(Way::Fairlead.label()),
        ) else {
            continue;
        };
        let p50 = (via.p50.as_secs_f64() / floor.p50.as_secs_f64() - 1.0) * 100.0;
        let p99 = (via.p99.as_secs_f64() / floor.p99.as_secs_f64() - 1.0) * 100.0;
        row(
            &format!(
                "ClusterIP connect+first byte vs the pod directly, {} Services (p50, p99)",
                f.services
            ),
            &format!(
                "{:.1} vs {:.1} µs: {p50:+.1}%; p99 {p99:+.1}%",
                via.p50.as_secs_f64() * 1e6,
                floor.p50.as_secs_f64() * 1e6
            ),
            "within 5%",
            &if p50.abs() <= 5.0 {
                "met".to_owned()
            } else {
                format!("missed by {:.1} points", p50.abs() - 5.0)
            },
        );
    }
}
