//! `cargo xtask bench proxy --nodeport-seconds S`: traffic through a NodePort to a backend on
//! another node (DNAT + SNAT), for fairlead's TC path against the equivalent kube-proxy rule
//! sets (nftables mode and iptables mode), with plain routing (no NAT) as the floor, in one
//! topology of network namespaces:
//!
//! ```text
//!  ext 192.168.77.2 ── node 192.168.77.1 | 172.19.0.1 ── remote 172.19.0.2
//!  (wrk, iperf3 -c)                                      (nginx :8080, iperf3 -s :5201)
//! ```
//!
//! The Service has three NodePorts: 30080/TCP → 8080 (HTTP), 30201/TCP and 30201/UDP → 5201
//! (iperf3). `remote` has no route to `ext`: answers come back only through the node's source
//! NAT (the routing-only reference adds that route and addresses the backend directly).
//!
//! Measurements, each for S seconds, for every peer:
//! - wrk -t1 -c32 with keep-alive (requests/s) and with `Connection: close` (each request a
//!   new connection: connections/s);
//! - iperf3 TCP, one stream and `--nodeport-streams` parallel streams, client → backend and
//!   backend → client (`-R`), Gbit/s; one stream paced at `--nodeport-tcp-rate` (a fixed
//!   load, where CPU per GB is not tied to the throughput);
//! - iperf3 UDP at `--nodeport-udp-rate` with 1400-byte datagrams (no IP fragments), both
//!   directions: Gbit/s received and loss.
//!
//! **CPU** is what the benchmark's own processes and their network stack spend while a
//! measurement runs, divided by the work done (requests, connections or gigabytes): the
//! benchmark moves itself into a cgroup of its own, so every client and server it starts is
//! counted in that cgroup's `cpu.stat` (`usage_usec`, exact scheduler time), plus the time of
//! the `ksoftirqd` threads. The node's data path runs in softirq: veth hands a packet to the
//! next namespace in the sender's softirq, which runs in the sender's context (when the
//! kernel defers it, in ksoftirqd), and this kernel (no `IRQ_TIME_ACCOUNTING`) charges that
//! time to the task it interrupted. So the figure holds the client, the server, and every
//! namespace's network stack including the node's forwarding and NAT; the "kernel" column is
//! its system part (system time + ksoftirqd), where the peers differ. Other users of this
//! shared machine are left out (except softirq work that lands in ksoftirqd, and cache
//! pressure). The same method applies to every peer in the same run. Machine-wide
//! `/proc/stat` deltas were tried first: on a shared machine they mostly measure the other
//! users.
//!
//! **Fairness**: each peer is measured in a fresh topology (new namespaces: no conntrack
//! table or netfilter hooks left behind by the previous peer; kube-proxy's rule sets do turn
//! conntrack on, fairlead's path does not need it), after a one-second wrk warm-up; the
//! rounds (`--nodeport-repeats`) interleave the peers, rotating their order, and the median
//! of the rounds is printed with the range. Clients run on CPU 0, servers on CPU 1
//! (`taskset`; `--nodeport-no-pin` turns it off). The load average is printed before, after
//! each round and at the end.
//!
//! **`--nodeport-steer`** separates the node's CPU from the ends': GRO on every veth makes
//! its receive side NAPI (TSO off, so senders segment in software as a NIC would on the
//! wire, and GRO merges again on receipt), and threaded NAPI runs each device's receive
//! processing in a kernel thread of its own (`napi/<dev>-<id>`), which carries the packet
//! on until the next device's queue. The node's two threads (its TC programs or netfilter
//! hooks, conntrack, NAT, forwarding, its egress) are pinned to `--nodeport-node-cpu`
//! (default 0: on a machine shared with other work, the CPU this benchmark keeps for itself
//! was the steadier one; 1 gives the node a CPU of its own on a quiet machine), the ends'
//! two threads and every client and server to CPU 0. The node's threads' scheduler time per
//! unit of work is then the node's own CPU, the figure a node operator pays (exact, though
//! other work on the same CPU still costs it cache). Rates are bounded by CPU 0, so compare
//! the node column more than the rates. GRO is on for every peer alike.
//!
//! `--nodeport-perf DIR` records profiles (`perf record -a -g -G <the bench cgroup>`) of each
//! peer's connections/s run and single-stream TCP run after the measured rounds, each with a
//! flat report of the hottest symbols next to it. Prints figures and ratios; asserts nothing.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fairlead_model::{Change, ModelWriter, decode};
use fairlead_proxy::abi::maps;
use fairlead_proxy::nodeaddr::node_addresses;
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

use crate::need;

const EXT: &str = "flbench-ext";
const NODE: &str = "flbench-node";
const REMOTE: &str = "flbench-remote";
const NODE_ADDRESS: &str = "192.168.77.1";
const BACKEND: &str = "172.19.0.2";
const HTTP_PORT: u16 = 8080;
const HTTP_NODEPORT: u16 = 30080;
const IPERF_PORT: u16 = 5201;
const IPERF_NODEPORT: u16 = 30201;
/// CPUs the client and the servers are pinned to.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// Name prefixes of the threaded-NAPI threads of the node's interfaces and of the ends'.
const NODE_NAPI: &[&str] = &["napi/flb-n-"];
const ENDS_NAPI: &[&str] = &["napi/flb-e-", "napi/flb-r-"];

/// The NodePort benchmark's flags (part of `cargo xtask bench proxy`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Options {
    /// Seconds of each NodePort measurement (wrk, iperf3), per peer and round (0 skips the
    /// NodePort benchmark).
    #[arg(long = "nodeport-seconds", default_value_t = 5)]
    seconds: u64,
    /// Rounds of NodePort measurements; the median is reported (0: none, only the
    /// --nodeport-perf profiles).
    #[arg(long = "nodeport-repeats", default_value_t = 3)]
    repeats: usize,
    /// Parallel streams of the multi-stream iperf3 runs.
    #[arg(long = "nodeport-streams", default_value_t = 4)]
    streams: u32,
    /// Rate of the paced iperf3 TCP run (iperf3 -b; "0" skips it).
    #[arg(long = "nodeport-tcp-rate", default_value = "2G")]
    tcp_rate: String,
    /// Target rate of the iperf3 UDP runs (iperf3 -b; "0" skips them).
    #[arg(long = "nodeport-udp-rate", default_value = "300M")]
    udp_rate: String,
    /// Entries of fairlead's IPv4 conntrack maps (TCP and other), as `--map-ct` sets them;
    /// fairlead's default when not given.
    #[arg(long = "nodeport-ct-entries")]
    ct_entries: Option<u32>,
    /// Run the node namespace's packet processing in threads of its own (GRO and
    /// threaded NAPI on every veth) and everything else (clients, servers, their network
    /// stacks) on CPU 0, and report the node's own CPU per unit of work (its NAPI threads'
    /// time; --nodeport-node-cpu places them).
    #[arg(long = "nodeport-steer")]
    steer: bool,
    /// With --nodeport-steer, the CPU the node's NAPI threads run on. 0 shares the ends'
    /// CPU: on a machine shared with other work, CPU 0 (where this benchmark pins its own
    /// processes) is the quieter one; give 1 on a quiet machine to give the node a CPU of
    /// its own. The node's time is its threads' own either way.
    #[arg(long = "nodeport-node-cpu", default_value_t = 0)]
    node_cpu: usize,
    /// Do not pin clients to CPU 0 and servers to CPU 1.
    #[arg(long = "nodeport-no-pin")]
    no_pin: bool,
    /// After the measured rounds, record `perf record -a -g -G <bench cgroup>` of each peer's
    /// connections/s and single-stream TCP runs into this directory (`<peer>-close.data`,
    /// `<peer>-tcp.data`, and flat `.txt` reports of the hottest symbols).
    #[arg(long = "nodeport-perf")]
    perf: Option<PathBuf>,
    /// Measure fairlead with its XDP program in the driver (`--xdp native`) on the node's
    /// interfaces too, a peer of its own next to the TC-only one.
    #[arg(long = "nodeport-xdp")]
    xdp: bool,
}

impl Options {
    /// Whether the NodePort benchmark runs at all.
    pub(crate) fn enabled(&self) -> bool {
        self.seconds > 0
    }
}

/// `ip …` on the host, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `program args…` inside `ns`, optionally pinned to one CPU.
fn ns_command(ns: &str, cpu: Option<usize>, program: &str, args: &[&str]) -> Command {
    let mut command = if let Some(cpu) = cpu {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpu.to_string(), "ip"]);
        c
    } else {
        Command::new("ip")
    };
    command.args(["netns", "exec", ns, program]).args(args);
    command
}

/// Runs a command to its end, at most `limit`; its stdout, or its stderr as the error.
/// Its stdin is what the caller set (inherited if nothing).
fn run_bounded(mut command: Command, limit: Duration) -> Result<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} still running after {limit:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("{command:?}: {status}: {} {}", stderr.trim(), stdout.trim());
    }
    Ok(stdout)
}

/// `program args…` in `ns`, unpinned, bounded to 30 s.
fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut command = ns_command(ns, None, program, args);
    command.stdin(Stdio::null());
    run_bounded(command, Duration::from_secs(30))
}

/// The three namespaces and their links, removed when dropped.
struct Topology;

impl Topology {
    /// A fresh topology; `routed` gives `remote` a route back to `ext` (the no-NAT reference).
    /// With `steer`, the node's NAPI threads run on CPU `steer`.
    fn new(routed: bool, steer: Option<usize>) -> Result<Self> {
        Self::remove();
        for ns in [EXT, NODE, REMOTE] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "flb-n-e", "type", "veth", "peer", "name", "flb-e",
        ])?;
        ip(&[
            "link", "add", "flb-n-r", "type", "veth", "peer", "name", "flb-r",
        ])?;
        for (dev, ns, addr) in [
            ("flb-n-e", NODE, "192.168.77.1/24"),
            ("flb-e", EXT, "192.168.77.2/24"),
            ("flb-n-r", NODE, "172.19.0.1/24"),
            ("flb-r", REMOTE, "172.19.0.2/24"),
        ] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", EXT, "route", "add", "default", "via", NODE_ADDRESS])?;
        if routed {
            ip(&[
                "-n",
                REMOTE,
                "route",
                "add",
                "192.168.77.0/24",
                "via",
                "172.19.0.1",
            ])?;
        }
        in_ns(NODE, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        if let Some(node_cpu) = steer {
            // GRO turns veth's receive side into NAPI (for packets from a sender without TSO:
            // segmented in software, as a NIC would on the wire); threaded NAPI runs each
            // device's receive processing (and what it forwards, up to the next device) in a
            // kernel thread of its own, `napi/<dev>-<id>`: the node's two, the ends' two.
            for (ns, dev) in [
                (NODE, "flb-n-e"),
                (NODE, "flb-n-r"),
                (EXT, "flb-e"),
                (REMOTE, "flb-r"),
            ] {
                in_ns(ns, "ethtool", &["-K", dev, "gro", "on", "tso", "off"])?;
                in_ns(
                    ns,
                    "sh",
                    &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
                )?;
            }
            for (prefix, cpu) in [(NODE_NAPI, node_cpu), (ENDS_NAPI, CLIENT_CPU)] {
                let threads = napi_threads(prefix);
                ensure!(!threads.is_empty(), "no {prefix:?} threads");
                // A thread of a namespace deleted a moment ago may be gone already.
                for (pid, _) in threads {
                    let _ = run_bounded(
                        {
                            let mut c = Command::new("taskset");
                            c.stdin(Stdio::null()).args([
                                "-p",
                                "-c",
                                &cpu.to_string(),
                                &pid.to_string(),
                            ]);
                            c
                        },
                        Duration::from_secs(5),
                    );
                }
            }
        }
        Ok(Self)
    }

    fn remove() {
        for ns in [EXT, NODE, REMOTE] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // Links a run stopped half-way left in this namespace.
        for link in ["flb-n-e", "flb-n-r"] {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// nginx (200 on :8080) and `iperf3 -s` (:5201) in `remote`, until dropped.
struct Servers {
    nginx: std::process::Child,
    iperf: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Servers {
    fn start(cpu: Option<usize>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nginx.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{ listen {HTTP_PORT} backlog=4096; keepalive_requests 100000; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )?;
        let conf = conf.display().to_string();
        let nginx = ns_command(REMOTE, cpu, "nginx", &["-c", &conf])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nginx")?;
        let iperf = ns_command(
            REMOTE,
            cpu,
            "iperf3",
            &["-s", "-p", &IPERF_PORT.to_string()],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 -s")?;
        let servers = Self {
            nginx,
            iperf,
            _dir: dir,
        };
        // Both listening, within 5 s.
        for _ in 0..100 {
            let listening = in_ns(REMOTE, "ss", &["-Hltn"])?;
            if [HTTP_PORT, IPERF_PORT]
                .iter()
                .all(|port| listening.contains(&format!(":{port} ")))
            {
                return Ok(servers);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx or iperf3 not listening in {REMOTE} after 5 s")
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in [&mut self.nginx, &mut self.iperf] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cgroup (v2) this process, and so every client and server it starts, runs in while the
/// benchmark runs: their CPU time is counted apart from the rest of the machine's. Moves the
/// process back and removes the cgroup when dropped.
struct BenchCgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl BenchCgroup {
    fn enter() -> Result<Self> {
        let root = fairlead_proxy::cgroup2_root().context("no cgroup v2 hierarchy")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_owned();
        let dir = root.join(format!("fairlead-bench-nodeport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", dir.display()))?;
        Ok(Self {
            dir,
            home: root.join(own),
        })
    }

    /// The cgroup's path below the hierarchy's root (for `perf record -G`).
    fn name(&self) -> &std::ffi::OsStr {
        self.dir.file_name().unwrap_or_default()
    }

    /// (CPU time, of it system time) of everything in the cgroup so far, microseconds.
    fn usage(&self) -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .with_context(|| format!("no {name} in cpu.stat"))
        };
        Ok((field("usage_usec")?, field("system_usec")?))
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CPU time of the `ksoftirqd` threads so far (nanoseconds): softirq work the kernel deferred
/// out of the context that raised it.
fn ksoftirqd_ns() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .filter_map(|e| {
            std::fs::read_to_string(e.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Kernel threads whose name starts with one of `prefixes`, with their CPU time so far (ns).
fn napi_threads(prefixes: &[&str]) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if !prefixes.iter().any(|p| comm.starts_with(p)) {
                return None;
            }
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((pid, ns))
        })
        .collect()
}

fn sum_ns(threads: &[(u32, u64)]) -> u64 {
    threads.iter().map(|(_, ns)| ns).sum()
}

/// The CPU counters a measurement is the difference of.
#[derive(Clone, Copy)]
struct CpuCounters {
    usage_us: u64,
    system_us: u64,
    ksoftirqd_ns: u64,
    /// The node's NAPI threads (`--nodeport-steer`).
    node_ns: u64,
    /// The ends' NAPI threads (`--nodeport-steer`).
    ends_ns: u64,
}

impl CpuCounters {
    fn now(cgroup: &BenchCgroup) -> Result<Self> {
        let (usage_us, system_us) = cgroup.usage()?;
        let node_ns = sum_ns(&napi_threads(NODE_NAPI));
        Ok(Self {
            usage_us,
            system_us,
            ksoftirqd_ns: ksoftirqd_ns(),
            node_ns,
            ends_ns: sum_ns(&napi_threads(ENDS_NAPI)),
        })
    }

    /// CPU seconds (all, kernel, node) since `before`: the cgroup's time plus ksoftirqd's and
    /// the ends' NAPI threads', its system part plus the same kernel threads', and the node's
    /// NAPI threads'.
    #[expect(clippy::cast_precision_loss, reason = "CPU times for people")]
    fn since(self, before: Self) -> (f64, f64, f64) {
        let kthreads = (self.ksoftirqd_ns.saturating_sub(before.ksoftirqd_ns)
            + self.ends_ns.saturating_sub(before.ends_ns)) as f64
            / 1e9;
        (
            self.usage_us.saturating_sub(before.usage_us) as f64 / 1e6 + kthreads,
            self.system_us.saturating_sub(before.system_us) as f64 / 1e6 + kthreads,
            self.node_ns.saturating_sub(before.node_ns) as f64 / 1e9,
        )
    }
}

/// One measurement of one peer.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Requests/s, or Gbit/s received.
    rate: f64,
    /// Requests done, or bytes received.
    work: f64,
    /// CPU seconds of the clients, servers and network stack while it ran.
    busy: f64,
    /// Of which in the kernel (system time and ksoftirqd).
    kernel: f64,
    /// CPU seconds of the node's NAPI threads (the node's own, with `--nodeport-steer`).
    node: f64,
    /// UDP loss, percent.
    loss: f64,
    /// wrk socket errors and non-2xx answers.
    errors: u64,
}

/// A measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    KeepAlive,
    Close,
    Tcp {
        streams: u32,
        reverse: bool,
        paced: bool,
    },
    Udp {
        reverse: bool,
    },
}

impl Test {
    fn title(self, o: &Options) -> String {
        let direction = |reverse: bool| {
            if reverse {
                "backend → client (-R)"
            } else {
                "client → backend"
            }
        };
        match self {
            Self::KeepAlive => "HTTP keep-alive, wrk -t1 -c32: requests/s".to_owned(),
            Self::Close => {
                "HTTP Connection: close, wrk -t1 -c32: connections/s (one request each)".to_owned()
            }
            Self::Tcp {
                streams,
                reverse,
                paced,
            } => {
                let pace = if paced {
                    format!(", paced at {}bit/s", o.tcp_rate)
                } else {
                    String::new()
                };
                format!(
                    "iperf3 TCP, {streams} stream{}, {}{pace}: Gbit/s",
                    if streams == 1 { "" } else { "s" },
                    direction(reverse)
                )
            }
            Self::Udp { reverse } => format!(
                "iperf3 UDP at {}bit/s, 1400-byte datagrams, {}: Gbit/s received",
                o.udp_rate,
                direction(reverse)
            ),
        }
    }

    fn is_http(self) -> bool {
        matches!(self, Self::KeepAlive | Self::Close)
    }

    /// The unit CPU is divided by.
    fn per(self) -> &'static str {
        match self {
            Self::KeepAlive => "µs CPU/request",
            Self::Close => "µs CPU/connection",
            _ => "CPU s/GB",
        }
    }

    /// A CPU per unit figure, with the decimals its unit needs.
    fn cpu_figure(self, value: f64) -> String {
        if self.is_http() {
            format!("{value:.1}")
        } else {
            format!("{value:.3}")
        }
    }

    /// CPU seconds per unit of work, in the unit of [`Self::per`].
    fn per_unit(self, cpu_seconds: f64, work: f64) -> f64 {
        if work <= 0.0 {
            return f64::NAN;
        }
        if self.is_http() {
            cpu_seconds * 1e6 / work
        } else {
            cpu_seconds / (work / 1e9)
        }
    }
}

/// The list of measurements the options ask for.
fn tests(o: &Options) -> Vec<Test> {
    let mut tests = vec![Test::KeepAlive, Test::Close];
    let mut streams = vec![1];
    if o.streams > 1 {
        streams.push(o.streams);
    }
    for reverse in [false, true] {
        for &s in &streams {
            tests.push(Test::Tcp {
                streams: s,
                reverse,
                paced: false,
            });
        }
    }
    if o.tcp_rate != "0" {
        tests.push(Test::Tcp {
            streams: 1,
            reverse: false,
            paced: true,
        });
    }
    if o.udp_rate != "0" {
        for reverse in [false, true] {
            tests.push(Test::Udp { reverse });
        }
    }
    tests
}

/// Where the client sends its traffic: the NodePorts, or the backend itself.
#[derive(Clone, Copy)]
struct Target {
    address: &'static str,
    http: u16,
    iperf: u16,
}

/// What is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Fairlead,
    /// fairlead with XDP (native, veth's driver mode) in front of its TC programs.
    FairleadXdp,
    Nftables,
    Iptables,
    /// No Service at all: the client talks to the backend's address, the node only routes.
    Routed,
}

impl Peer {
    const ALL: [Self; 4] = [Self::Fairlead, Self::Nftables, Self::Iptables, Self::Routed];

    /// The peers the options ask for, fairlead (TC) first.
    fn measured(o: &Options) -> Vec<Self> {
        let mut peers = Self::ALL.to_vec();
        if o.xdp {
            peers.insert(1, Self::FairleadXdp);
        }
        peers
    }

    fn label(self, iptables: &str) -> String {
        match self {
            Self::Fairlead => "fairlead (TC)".to_owned(),
            Self::FairleadXdp => "fairlead (XDP + TC)".to_owned(),
            Self::Nftables => "nftables".to_owned(),
            Self::Iptables => iptables.to_owned(),
            Self::Routed => "routing only, no NAT".to_owned(),
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Self::Fairlead => "fairlead",
            Self::FairleadXdp => "fairlead-xdp",
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
            Self::Routed => "routed",
        }
    }

    fn target(self) -> Target {
        match self {
            Self::Routed => Target {
                address: BACKEND,
                http: HTTP_PORT,
                iperf: IPERF_PORT,
            },
            _ => Target {
                address: NODE_ADDRESS,
                http: HTTP_NODEPORT,
                iperf: IPERF_NODEPORT,
            },
        }
    }
}

/// A peer installed in the node namespace; uninstalled with the topology (or, for fairlead,
/// when dropped).
struct Installed {
    _datapath: Option<Datapath>,
}

fn install(peer: Peer, iptables: &str, ct_entries: Option<u32>) -> Result<Installed> {
    let datapath = match peer {
        Peer::Fairlead => Some(fairlead(ct_entries, false)?),
        Peer::FairleadXdp => Some(fairlead(ct_entries, true)?),
        Peer::Nftables => {
            let rules =
                std::env::temp_dir().join(format!("fairlead-bench-nft-{}", std::process::id()));
            std::fs::write(&rules, NFT_RULES)?;
            let loaded = in_ns(NODE, "nft", &["-f", &rules.display().to_string()]);
            let _ = std::fs::remove_file(&rules);
            loaded?;
            None
        }
        Peer::Iptables => {
            let rules =
                std::env::temp_dir().join(format!("fairlead-bench-ipt-{}", std::process::id()));
            std::fs::write(&rules, IPTABLES_RULES)?;
            let restore = format!("{iptables}-restore");
            let loaded = run_bounded(
                {
                    let mut c = ns_command(NODE, None, &restore, &[]);
                    c.stdin(std::fs::File::open(&rules)?);
                    c
                },
                Duration::from_secs(30),
            );
            let _ = std::fs::remove_file(&rules);
            loaded?;
            None
        }
        Peer::Routed => None,
    };
    Ok(Installed {
        _datapath: datapath,
    })
}

const SERVICE_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: b}
spec:
  type: NodePort
  clusterIP: 10.96.77.1
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: iperf, port: 5201, targetPort: 5201, nodePort: 30201}
  - {name: iperf-udp, protocol: UDP, port: 5201, targetPort: 5201, nodePort: 30201}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: iperf, port: 5201}
- {name: iperf-udp, protocol: UDP, port: 5201}
endpoints:
- {addresses: [\"172.19.0.2\"], conditions: {ready: true}, nodeName: node-2}
";

/// fairlead's datapath programmed for the NodePort Service, attached to the node's two
/// interfaces (from a thread inside the node namespace); detached when dropped.
fn fairlead(ct_entries: Option<u32>, xdp: bool) -> Result<Datapath> {
    thread::spawn(move || -> Result<Datapath> {
        let file = std::fs::File::open(format!("/var/run/netns/{NODE}"))?;
        rustix::thread::move_into_link_name_space(
            rustix::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let mut options = LoadOptions::new();
        if let Some(entries) = ct_entries {
            options = options
                .map_size(maps::CT4_TCP, entries)
                .map_size(maps::CT4_ANY, entries);
        }
        let mut datapath = Datapath::load(&options)?;
        let changes: Vec<Change> = SERVICE_YAML
            .split("---\n")
            .map(|doc| -> Result<Change> {
                let value: serde_json::Value = serde_norway::from_str(doc)?;
                Ok(Change::Upsert {
                    object: decode(value).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                    origin: None,
                })
            })
            .collect::<Result<_>>()?;
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(changes, Vec::new(), true);
        let snapshot: Arc<_> = writer.snapshot();
        let report = Reconciler::new(Some("node-1".to_owned())).sync(&snapshot, &mut datapath);
        if !report.errors.is_empty() {
            bail!("sync: {:?}", report.errors);
        }
        let addresses = node_addresses()?;
        datapath.set_node_addresses(&addresses, Some(Ipv4Addr::new(172, 19, 0, 1)), None)?;
        for interface in ["flb-n-e", "flb-n-r"] {
            datapath.attach_interface(interface, None)?;
            if xdp {
                datapath.attach_xdp(interface, fairlead_proxy::XdpMode::Native, None)?;
            }
        }
        Ok(datapath)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
}

/// kube-proxy's nftables mode for this one NodePort Service, reduced to what the packets of
/// this benchmark go through: NodePorts on local addresses (`fib daddr type local`), the
/// external chain marking for masquerade, the service chain's `numgen` pick, the endpoint's
/// DNAT, the new-connection filter checks, and masquerading (fully random) at postrouting.
const NFT_RULES: &str = "table ip kube-proxy {
  map no-endpoint-services {
    type ipv4_addr . inet_proto . inet_service : verdict
  }
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
  }
  map service-nodeports {
    type inet_proto . inet_service : verdict
    elements = { tcp . 30080 : goto external-web-http,
                 tcp . 30201 : goto external-web-iperf,
                 udp . 30201 : goto external-web-iperf-udp }
  }
  chain mark-for-masquerade {
    meta mark set meta mark | 0x4000
  }
  chain masquerading {
    meta mark & 0x4000 == 0 return
    meta mark set meta mark ^ 0x4000
    masquerade fully-random
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
  }
  chain service-endpoints-check {
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
  }
  chain nat-prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }
  chain nat-postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump masquerading
  }
  chain external-web-http {
    jump mark-for-masquerade
    goto service-web-http
  }
  chain service-web-http {
    numgen random mod 1 vmap { 0 : goto endpoint-web-http }
  }
  chain endpoint-web-http {
    ip saddr 172.19.0.2 jump mark-for-masquerade
    meta l4proto tcp dnat to 172.19.0.2:8080
  }
  chain external-web-iperf {
    jump mark-for-masquerade
    goto service-web-iperf
  }
  chain service-web-iperf {
    numgen random mod 1 vmap { 0 : goto endpoint-web-iperf }
  }
  chain endpoint-web-iperf {
    ip saddr 172.19.0.2 jump mark-for-masquerade
    meta l4proto tcp dnat to 172.19.0.2:5201
  }
  chain external-web-iperf-udp {
    jump mark-for-masquerade
    goto service-web-iperf-udp
  }
  chain service-web-iperf-udp {
    numgen random mod 1 vmap { 0 : goto endpoint-web-iperf-udp }
  }
  chain endpoint-web-iperf-udp {
    ip saddr 172.19.0.2 jump mark-for-masquerade
    meta l4proto udp dnat to 172.19.0.2:5201
  }
}
";

/// kube-proxy's iptables mode for this one NodePort Service (iptables-restore format), reduced
/// the same way: KUBE-SERVICES → KUBE-NODEPORTS for local destinations → KUBE-EXT (mark for
/// masquerade) → KUBE-SVC → KUBE-SEP (DNAT); KUBE-POSTROUTING masquerades marked packets
/// (`--random-fully`); new forwarded connections pass KUBE-EXTERNAL-SERVICES in the filter
/// table.
const IPTABLES_RULES: &str = "*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-EXT-HTTP - [0:0]
:KUBE-SVC-HTTP - [0:0]
:KUBE-SEP-HTTP - [0:0]
:KUBE-EXT-IPERF - [0:0]
:KUBE-SVC-IPERF - [0:0]
:KUBE-SEP-IPERF - [0:0]
:KUBE-EXT-IPERFU - [0:0]
:KUBE-SVC-IPERFU - [0:0]
:KUBE-SEP-IPERFU - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-NODEPORTS -p tcp -m comment --comment \"b/web:http\" -m tcp --dport 30080 -j KUBE-EXT-HTTP
-A KUBE-NODEPORTS -p tcp -m comment --comment \"b/web:iperf\" -m tcp --dport 30201 -j KUBE-EXT-IPERF
-A KUBE-NODEPORTS -p udp -m comment --comment \"b/web:iperf-udp\" -m udp --dport 30201 -j KUBE-EXT-IPERFU
-A KUBE-EXT-HTTP -j KUBE-MARK-MASQ
-A KUBE-EXT-HTTP -j KUBE-SVC-HTTP
-A KUBE-SVC-HTTP -j KUBE-SEP-HTTP
-A KUBE-SEP-HTTP -s 172.19.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-HTTP -p tcp -m tcp -j DNAT --to-destination 172.19.0.2:8080
-A KUBE-EXT-IPERF -j KUBE-MARK-MASQ
-A KUBE-EXT-IPERF -j KUBE-SVC-IPERF
-A KUBE-SVC-IPERF -j KUBE-SEP-IPERF
-A KUBE-SEP-IPERF -s 172.19.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-IPERF -p tcp -m tcp -j DNAT --to-destination 172.19.0.2:5201
-A KUBE-EXT-IPERFU -j KUBE-MARK-MASQ
-A KUBE-EXT-IPERFU -j KUBE-SVC-IPERFU
-A KUBE-SVC-IPERFU -j KUBE-SEP-IPERFU
-A KUBE-SEP-IPERFU -s 172.19.0.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-IPERFU -p udp -m udp -j DNAT --to-destination 172.19.0.2:5201
COMMIT
";

/// wrk from `ext`: (requests/s, requests done, socket errors + non-2xx answers).
fn wrk(seconds: u64, target: Target, close: bool, cpu: Option<usize>) -> Result<(f64, f64, u64)> {
    let url = format!("http://{}:{}/", target.address, target.http);
    let duration = format!("{seconds}s");
    let mut args = vec!["-t1", "-c32", "-d", &duration];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let mut command = ns_command(EXT, cpu, "wrk", &args);
    command.stdin(Stdio::null());
    let out = run_bounded(command, Duration::from_secs(seconds + 30))?;
    let rate = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {out}"))?;
    let done: f64 = out
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output: {out}"))?;
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok((rate, done, errors))
}

/// iperf3 from `ext` to the iperf3 server behind `target`: (Gbit/s received, bytes received,
/// loss percent).
fn iperf(o: &Options, test: Test, target: Target, cpu: Option<usize>) -> Result<(f64, f64, f64)> {
    let port = target.iperf.to_string();
    let seconds = o.seconds.to_string();
    let streams;
    let mut args = vec![
        "-c",
        target.address,
        "-p",
        &port,
        "-t",
        &seconds,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    match test {
        Test::Tcp {
            streams: s,
            reverse,
            paced,
        } => {
            streams = s.to_string();
            args.extend(["-P", &streams]);
            if reverse {
                args.push("-R");
            }
            if paced {
                args.extend(["-b", &o.tcp_rate]);
            }
        }
        Test::Udp { reverse } => {
            args.extend(["-u", "-b", &o.udp_rate, "-l", "1400"]);
            if reverse {
                args.push("-R");
            }
        }
        Test::KeepAlive | Test::Close => bail!("not an iperf3 test"),
    }
    let mut command = ns_command(EXT, cpu, "iperf3", &args);
    command.stdin(Stdio::null());
    let out = run_bounded(command, Duration::from_secs(o.seconds + 30))?;
    let json: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 output: {out}"))?;
    if let Some(error) = json.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {error}");
    }
    let received = &json["end"]["sum_received"];
    let bits = received["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in iperf3 output: {out}"))?;
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    let loss = received["lost_percent"].as_f64().unwrap_or(0.0);
    Ok((bits / 1e9, bytes, loss))
}

/// Runs one measurement with the machine's CPU around it.
fn measure(
    o: &Options,
    cgroup: &BenchCgroup,
    test: Test,
    target: Target,
    cpu: Option<usize>,
) -> Result<Sample> {
    let before = CpuCounters::now(cgroup)?;
    let mut sample = Sample::default();
    match test {
        Test::KeepAlive | Test::Close => {
            let (rate, done, errors) = wrk(o.seconds, target, test == Test::Close, cpu)?;
            sample.rate = rate;
            sample.work = done;
            sample.errors = errors;
        }
        _ => {
            let (gbits, bytes, loss) = iperf(o, test, target, cpu)?;
            sample.rate = gbits;
            sample.work = bytes;
            sample.loss = loss;
        }
    }
    (sample.busy, sample.kernel, sample.node) = CpuCounters::now(cgroup)?.since(before);
    Ok(sample)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median of some figures (NaN for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Median figures of one peer in one test.
#[derive(Clone, Copy)]
struct Summary {
    rate: f64,
    min: f64,
    max: f64,
    cpu: f64,
    kernel: f64,
    node: f64,
    loss: f64,
    errors: u64,
}

fn summarize(test: Test, samples: &[Sample]) -> Summary {
    Summary {
        rate: median(samples.iter().map(|s| s.rate)),
        min: samples.iter().map(|s| s.rate).fold(f64::INFINITY, f64::min),
        max: samples
            .iter()
            .map(|s| s.rate)
            .fold(f64::NEG_INFINITY, f64::max),
        cpu: median(samples.iter().map(|s| test.per_unit(s.busy, s.work))),
        kernel: median(samples.iter().map(|s| test.per_unit(s.kernel, s.work))),
        node: median(samples.iter().map(|s| test.per_unit(s.node, s.work))),
        loss: median(samples.iter().map(|s| s.loss)),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

/// The CPUs to pin (client, server) to, if pinning.
fn pinning(o: &Options) -> (Option<usize>, Option<usize>) {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if o.no_pin || cpus < 2 {
        (None, None)
    } else if o.steer {
        (Some(CLIENT_CPU), Some(CLIENT_CPU))
    } else {
        (Some(CLIENT_CPU), Some(SERVER_CPU))
    }
}

/// Whether the node's packet processing is steered to its own CPU.
fn steered(o: &Options) -> bool {
    pinning(o).0.is_some() && o.steer
}

/// Records profiles of `peer`'s connections/s run and of its single-stream TCP run into
/// `dir`: every CPU, but only the benchmark's cgroup (its clients and servers, and the
/// softirq work in their context; ksoftirqd and the machine's other users are left out);
/// with `--nodeport-steer`, the node's CPU (its NAPI threads, and whatever else ran there), by
/// thread and symbol.
#[expect(
    clippy::too_many_lines,
    reason = "one profile after another, with the program counters around each"
)]
fn profile(
    o: &Options,
    cgroup: &BenchCgroup,
    peer: Peer,
    iptables: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let (client_cpu, server_cpu) = pinning(o);
    let _topology = Topology::new(peer == Peer::Routed, steered(o).then_some(o.node_cpu))?;
    let _servers = Servers::start(server_cpu)?;
    let _installed = install(peer, iptables, o.ct_entries)?;
    let target = peer.target();
    wrk(1, target, false, client_cpu)?;
    let mut reports = Vec::new();
    let stream = Test::Tcp {
        streams: 1,
        reverse: false,
        paced: false,
    };
    for (name, test) in [("close", Test::Close), ("tcp", stream)] {
        let data = dir.join(format!("{}-{name}.data", peer.file_name()));
        let sleep = (o.seconds + 1).to_string();
        let data_arg = data.display().to_string();
        let mut perf = Command::new("perf");
        if steered(o) {
            // The node's NAPI threads are not in the cgroup: its CPU, sorted by thread.
            perf.args([
                "record",
                "-C",
                &o.node_cpu.to_string(),
                "-g",
                "-e",
                "cpu-clock",
            ]);
        } else {
            perf.args(["record", "-a", "-g", "-e", "cpu-clock", "-G"])
                .arg(cgroup.name());
        }
        let mut perf = perf
            .args(["-q", "-o", &data_arg, "--", "sleep", &sleep])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record")?;
        thread::sleep(Duration::from_millis(500));
        let programs = if matches!(peer, Peer::Fairlead | Peer::FairleadXdp) {
            node_programs()
        } else {
            Vec::new()
        };
        if programs.is_empty() && matches!(peer, Peer::Fairlead | Peer::FairleadXdp) {
            println!(
                "    {}: `bpftool net show` in {NODE} listed no program: no bpf_stats for the {name} run",
                peer.label(iptables)
            );
        }
        let counting = (!programs.is_empty()).then(BpfStats::enable);
        let before = program_stats(&programs);
        let load = if test == Test::Close {
            wrk(o.seconds, target, true, client_cpu).map(|(_, done, _)| done)
        } else {
            iperf(o, test, target, client_cpu).map(|(_, bytes, _)| bytes)
        };
        let after = program_stats(&programs);
        drop(counting);
        let status = perf.wait()?;
        let work = load?;
        if !programs.is_empty() {
            #[expect(clippy::cast_precision_loss, reason = "figures for people")]
            let (ns, runs) = (
                after.0.saturating_sub(before.0) as f64,
                after.1.saturating_sub(before.1) as f64,
            );
            let figure = if test == Test::Close {
                format!(
                    "{:.1} runs and {:.2} µs per connection",
                    runs / work.max(1.0),
                    ns / 1e3 / work.max(1.0)
                )
            } else {
                format!("{:.3} CPU s per GB", ns / work.max(1.0))
            };
            println!(
                "    fairlead's TC programs (ids {programs:?}, bpf_stats) in the {name} run: {runs:.0} runs, {:.0} ns each; {figure}",
                ns / runs.max(1.0),
            );
        }
        ensure!(status.success(), "perf record: {status}");
        let mut command = Command::new("perf");
        command.stdin(Stdio::null()).args([
            "report",
            "-i",
            &data_arg,
            "--no-children",
            "--sort",
            if steered(o) { "comm,sym" } else { "sym" },
            "--stdio",
            "-g",
            "none",
            "--percent-limit",
            "0.3",
        ]);
        let report = run_bounded(command, Duration::from_secs(300))?;
        let text = dir.join(format!("{}-{name}.txt", peer.file_name()));
        std::fs::write(&text, report)?;
        reports.push(text);
    }
    Ok(reports)
}

/// fairlead against nftables on the NodePort goals (ratios of medians).
#[derive(Clone, Copy)]
pub(crate) struct Ratios {
    /// New connections/s (wrk `Connection: close`).
    pub(crate) connections: f64,
    /// CPU per connection (the node's, when steered).
    pub(crate) cpu_per_connection: f64,
    /// CPU per keep-alive request, an established flow (the node's, when steered).
    pub(crate) cpu_per_request: f64,
    /// Whether the CPU figures are the node's own (`--nodeport-steer`).
    pub(crate) node_only: bool,
}

/// Ids of the BPF programs attached in the node namespace (`bpftool net show`: tcx and XDP).
fn node_programs() -> Vec<u64> {
    fn ids(value: &serde_json::Value, out: &mut Vec<u64>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "prog_id" || key == "id" {
                        out.extend(v.as_u64());
                    } else {
                        ids(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| ids(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(text) = in_ns(NODE, "bpftool", &["-j", "net", "show"])
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
    {
        ids(&value, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// (run time ns, runs) of the programs `ids` so far (`bpftool prog show`; counted only while
/// `kernel.bpf_stats_enabled` is 1).
fn program_stats(ids: &[u64]) -> (u64, u64) {
    let Ok(text) = in_ns(NODE, "bpftool", &["-j", "prog", "show"]) else {
        return (0, 0);
    };
    let Ok(serde_json::Value::Array(programs)) = serde_json::from_str(&text) else {
        return (0, 0);
    };
    programs
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .fold((0, 0), |(ns, runs), p| {
            (
                ns + p["run_time_ns"].as_u64().unwrap_or(0),
                runs + p["run_cnt"].as_u64().unwrap_or(0),
            )
        })
}

/// `kernel.bpf_stats_enabled` set to 1 while this lives, put back when dropped. Only during
/// the profiling runs: the counting costs every program run two clock reads, and the
/// measured rounds compare fairlead without it.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Self {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_else(|_| "0".to_owned());
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        Self(before.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// The result tables: per measurement, each peer's median figures and ratios to nftables.
fn results(
    o: &Options,
    tests: &[Test],
    samples: &[Vec<Vec<Sample>>],
    iptables: &str,
) -> (String, Option<Ratios>) {
    let peers = Peer::measured(o);
    let nft_index = peers.iter().position(|&p| p == Peer::Nftables).unwrap_or(0);
    let mut out = String::new();
    let mut goal = None;
    let mut request_cpu = None;
    for (t, &test) in tests.iter().enumerate() {
        let summaries: Vec<Summary> = samples[t].iter().map(|s| summarize(test, s)).collect();
        let nft = summaries[nft_index];
        let _ = writeln!(out, "\n  {}", test.title(o));
        let steer = steered(o);
        let _ = writeln!(
            out,
            "    {:<22} {:>24} {:>18} {:>12}{} {:>24}",
            "",
            "median (min–max)",
            test.per(),
            "of it kernel",
            if steer {
                format!(" {:>14}", "node CPU")
            } else {
                String::new()
            },
            if steer {
                "vs nftables: rate, CPU, node"
            } else {
                "vs nftables: rate, CPU"
            }
        );
        for (p, s) in summaries.iter().enumerate() {
            let peer = peers[p];
            let rate = if test.is_http() {
                format!("{:.0} ({:.0}–{:.0})", s.rate, s.min, s.max)
            } else {
                format!("{:.2} ({:.2}–{:.2})", s.rate, s.min, s.max)
            };
            let (cpu, kernel) = (test.cpu_figure(s.cpu), test.cpu_figure(s.kernel));
            let mut line = format!(
                "    {:<22} {rate:>24} {cpu:>18} {kernel:>12}",
                peer.label(iptables)
            );
            if steer {
                let _ = write!(line, " {:>14}", test.cpu_figure(s.node));
            }
            if p != nft_index {
                let _ = write!(
                    line,
                    " {:>11.2}x {:>10.2}x",
                    s.rate / nft.rate,
                    s.cpu / nft.cpu
                );
                if steer {
                    let _ = write!(line, " {:>6.2}x", s.node / nft.node);
                }
            }
            if matches!(test, Test::Udp { .. }) {
                let _ = write!(line, "   loss {:.2}%", s.loss);
            }
            if s.errors > 0 {
                let _ = write!(line, "   ({} wrk errors)", s.errors);
            }
            let _ = writeln!(out, "{line}");
        }
        let fairlead = summaries[0];
        // With the node on its own CPU, "CPU per request" is the node's.
        let cpu_ratio = if steer {
            fairlead.node / nft.node
        } else {
            fairlead.cpu / nft.cpu
        };
        if test == Test::Close {
            goal = Some((fairlead.rate / nft.rate, cpu_ratio));
        }
        if test == Test::KeepAlive {
            request_cpu = Some(cpu_ratio);
        }
    }
    if let Some((rate, cpu)) = goal {
        let _ = writeln!(
            out,
            "\n  goal ≥ 2x nftables connections/s: fairlead {rate:.2}x ({}); goal ≤ 0.6x CPU per connection: {cpu:.2}x ({})",
            if rate >= 2.0 { "met" } else { "missed" },
            if cpu <= 0.6 { "met" } else { "missed" }
        );
    }
    if let Some(cpu) = request_cpu {
        let _ = writeln!(
            out,
            "  goal ≤ 0.8x CPU per keep-alive request: fairlead {cpu:.2}x nftables' ({})",
            if cpu <= 0.8 { "met" } else { "missed" }
        );
    }
    let ratios = goal
        .zip(request_cpu)
        .map(|((connections, cpu), request)| Ratios {
            connections,
            cpu_per_connection: cpu,
            cpu_per_request: request,
            node_only: steered(o),
        });
    (out, ratios)
}

/// Fails, naming the package, when a tool the NodePort benchmark runs is missing (nothing
/// when it is off).
pub(crate) fn check_tools(o: &Options) -> Result<()> {
    if !o.enabled() {
        return Ok(());
    }
    for (tool, package) in [
        ("wrk", "wrk"),
        ("nginx", "nginx"),
        ("iperf3", "iperf3"),
        ("nft", "nftables"),
        ("taskset", "util-linux"),
        ("ss", "iproute2"),
    ] {
        need(tool, package)?;
    }
    if o.perf.is_some() {
        need("perf", "linux-perf")?;
    }
    if o.steer {
        need("ethtool", "ethtool")?;
    }
    Ok(())
}

/// The NodePort benchmark; fairlead's ratios to nftables, when measured.
pub(crate) fn run(o: &Options) -> Result<Option<Ratios>> {
    if !o.enabled() {
        return Ok(None);
    }
    check_tools(o)?;
    let iptables = if Path::new("/usr/sbin/iptables-legacy").exists() {
        "iptables-legacy"
    } else {
        "iptables"
    };
    let tests = tests(o);
    let (client_cpu, server_cpu) = pinning(o);
    let repeats = o.repeats;
    println!(
        "\nNodePort to a backend on another node (DNAT + SNAT): {} peers × {} measurements × {repeats} rounds, {} s each",
        Peer::measured(o).len(),
        tests.len(),
        o.seconds
    );
    match (client_cpu, server_cpu) {
        (Some(c), Some(s)) => println!(
            "  clients (wrk, iperf3 -c) pinned to CPU {c}, servers (nginx, iperf3 -s) to CPU {s}"
        ),
        _ => println!("  not pinned"),
    }
    println!(
        "  CPU = time of the clients, servers and their network stack (a cgroup's cpu.stat, softirq in their context included, + ksoftirqd) during each measurement, per unit of work; kernel = its system part"
    );
    let cgroup = BenchCgroup::enter()?;
    println!(
        "  fairlead's IPv4 conntrack maps: {} entries each",
        o.ct_entries.unwrap_or(maps::CT_MAX_ENTRIES)
    );
    if steered(o) {
        println!(
            "  GRO + threaded NAPI on every veth; the node's NAPI threads on CPU {}, the ends' with the clients and servers on CPU {CLIENT_CPU}; node CPU = the node's NAPI threads' time per unit of work",
            o.node_cpu
        );
    }
    println!("  load average before: {}", loadavg());

    // samples[test][peer]
    let peers = Peer::measured(o);
    let mut samples = vec![vec![Vec::<Sample>::new(); peers.len()]; tests.len()];
    for round in 0..repeats {
        for k in 0..peers.len() {
            let p = (k + round) % peers.len();
            let peer = peers[p];
            let _topology = Topology::new(peer == Peer::Routed, steered(o).then_some(o.node_cpu))?;
            let _servers = Servers::start(server_cpu)?;
            let _installed = install(peer, iptables, o.ct_entries)
                .with_context(|| format!("installing {}", peer.label(iptables)))?;
            let target = peer.target();
            // Warm-up: neighbours resolved, code and caches hot, not measured.
            wrk(1, target, false, client_cpu)?;
            for (t, &test) in tests.iter().enumerate() {
                let sample = measure(o, &cgroup, test, target, client_cpu).with_context(|| {
                    format!("{} through {}", test.title(o), peer.label(iptables))
                })?;
                samples[t][p].push(sample);
            }
        }
        println!(
            "  round {}/{repeats} done, load average {}",
            round + 1,
            loadavg()
        );
    }

    let mut ratios = None;
    if repeats > 0 {
        let (text, r) = results(o, &tests, &samples, iptables);
        print!("{text}");
        ratios = r;
    }
    println!("  load average after: {}", loadavg());

    if let Some(dir) = &o.perf {
        std::fs::create_dir_all(dir)?;
        println!(
            "\n  perf record -a -g -G <bench cgroup> of each peer's connections/s and TCP stream runs ({} s, not part of the figures above):",
            o.seconds
        );
        for peer in peers {
            let reports = profile(o, &cgroup, peer, iptables, dir)
                .with_context(|| format!("profiling {}", peer.label(iptables)))?;
            for report in reports {
                println!("    {:<22} {}", peer.label(iptables), report.display());
            }
        }
    }
    Ok(ratios)
}
