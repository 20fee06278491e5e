//! `cargo xtask bench proxy`: fairlead's socket load balancer side by side with
//! kube-proxy-style iptables and nftables rule sets, in one run on this machine.
//!
//! For each N (Services × E endpoints):
//! - sync time: programming all N into the BPF maps (the reconciler, from a model snapshot),
//!   against loading the equivalent kube-proxy-style rules with `iptables-legacy-restore`,
//!   `iptables-nft-restore` and `nft -f`, each in a scratch network namespace;
//! - one change: one EndpointSlice changed (one endpoint replaced), as an incremental sync,
//!   against restoring just that Service's chains (kube-proxy's partial sync);
//! - connects: latency (p50/p99) and rate of `connect()` + `close()` to a ClusterIP with N
//!   Services present, against connecting straight to the backend and through the iptables
//!   (nft backend) DNAT rules.
//!
//! Needs root (BPF, netns, cgroup). Prints figures and ratios; asserts nothing.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
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

/// Times `program < input` inside `netns`.
fn timed_stdin(netns: &str, program: &[&str], input: &Path) -> Result<Duration> {
    let started = Instant::now();
    run(Command::new("ip")
        .args(["netns", "exec", netns])
        .args(program)
        .stdin(File::open(input)?)
        .stdout(Stdio::null()))?;
    Ok(started.elapsed())
}

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Result<Self> {
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
fn nft_rules(n: usize, endpoints: usize) -> String {
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
    out.push_str("}\n");
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

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Enters a network namespace on this thread.
fn enter(netns: &str) -> Result<()> {
    let file = File::open(format!("/var/run/netns/{netns}")).context("open netns")?;
    rustix::thread::move_into_link_name_space(
        rustix::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("setns")?;
    Ok(())
}

/// A TCP server on 127.0.0.1:8080 in `netns` that accepts and closes, until stopped.
fn backend(netns: &str) -> Result<(Arc<AtomicBool>, thread::JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let name = netns.to_owned();
    let flag = Arc::clone(&stop);
    let handle = thread::spawn(move || {
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
        let _ = listener.set_nonblocking(true);
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => drop(stream),
                Err(_) => thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    rx.recv().context("backend thread")??;
    Ok((stop, handle))
}

/// `count` connect+close to `to` from a thread in `netns`: (p50, p99, connects/s).
fn connects(netns: &str, to: SocketAddr, count: usize) -> Result<(Duration, Duration, f64)> {
    let name = netns.to_owned();
    thread::spawn(move || -> Result<(Duration, Duration, f64)> {
        enter(&name)?;
        let mut lat = Vec::with_capacity(count);
        let started = Instant::now();
        for _ in 0..count {
            let t = Instant::now();
            let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connect {to}"))?;
            lat.push(t.elapsed());
            drop(stream);
        }
        #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
        let rate = count as f64 / started.elapsed().as_secs_f64();
        lat.sort();
        Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100], rate))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
}

fn cgroup_root() -> Result<PathBuf> {
    fairlead_proxy::cgroup2_root().context("no cgroup v2 hierarchy")
}

/// The benchmark.
#[expect(
    clippy::too_many_lines,
    reason = "one measurement after another, in the order they are printed"
)]
pub(crate) fn bench(
    sizes: &[usize],
    endpoints: usize,
    connect_count: usize,
    peers_too: bool,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fairlead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "proxy benchmark: Services × {endpoints} endpoints; {connect_count} connects per measurement"
    );
    println!("(absolute times are noise on a shared machine; compare the ratios)\n");
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
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        std::fs::write(manifests.join("all.json"), serde_json::to_vec(&list)?)?;
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
        // One changed EndpointSlice, 20 times.
        let mut changes = Vec::new();
        for g in 0..20 {
            let mut addresses = endpoints_of(0, endpoints);
            addresses[0] = format!("10.200.0.{}", g % 250 + 1);
            let object = decode(slice_json("svc-0-1", "svc-0", &addresses))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            writer.apply([Change::Upsert {
                object,
                origin: None,
            }]);
            let snapshot = writer.snapshot();
            let started = Instant::now();
            let report = reconciler.sync(&snapshot, &mut datapath);
            changes.push(started.elapsed());
            assert!(report.services_compared == 1 && !report.full);
        }
        let fairlead_one = median(changes);

        // iptables-legacy, iptables-nft, nft: full load and one change, each in a fresh netns.
        let ipt = dir.join(format!("iptables-{n}.rules"));
        std::fs::write(&ipt, iptables_rules(n, endpoints, true))?;
        let nft = dir.join(format!("nft-{n}.rules"));
        std::fs::write(&nft, nft_rules(n, endpoints))?;
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
            let ns = Netns::new("fl-bench-rules")?;
            let full = timed_stdin(&ns.0, &program, file)?;
            let mut one = Vec::new();
            for g in 0..5 {
                let change = dir.join("change.rules");
                let text = if label.starts_with("nft") {
                    nft_one_change(0, endpoints, g)
                } else {
                    iptables_one_change(0, endpoints, g)
                };
                std::fs::write(&change, text)?;
                one.push(timed_stdin(&ns.0, &program, &change)?);
            }
            peers.push((label, full, median(one)));
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
                "    {label:<26} {:>12}   fairlead is {:.1}x faster",
                ms(*full),
                full.as_secs_f64() / fairlead_full.as_secs_f64()
            );
        }
        println!("  one changed EndpointSlice (median):");
        println!("    fairlead                   {:>12}", ms(fairlead_one));
        for (label, _, one) in &peers {
            println!(
                "    {label:<26} {:>12}   fairlead is {:.1}x faster",
                ms(*one),
                one.as_secs_f64() / fairlead_one.as_secs_f64()
            );
        }

        // Connects.
        if connect_count > 0 {
            let ns = Netns::new("fl-bench-conn")?;
            let (stop, server) = backend(&ns.0)?;
            let direct = connects(
                &ns.0,
                SocketAddr::from((Ipv4Addr::LOCALHOST, BACKEND_PORT)),
                connect_count,
            )?;
            // Socket LB: this process joins a cgroup the programs are attached to.
            let cgroup = cgroup_root()?.join(format!("fairlead-bench-{}", std::process::id()));
            std::fs::create_dir_all(&cgroup)?;
            let own = std::fs::read_to_string("/proc/self/cgroup")?;
            let own = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .to_owned();
            datapath.attach(&cgroup)?;
            std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())?;
            let via_bpf = connects(&ns.0, SocketAddr::from((TARGET_VIP, 80)), connect_count);
            let direct_attached = connects(
                &ns.0,
                SocketAddr::from((Ipv4Addr::LOCALHOST, BACKEND_PORT)),
                connect_count,
            );
            std::fs::write(
                cgroup_root()?
                    .join(own.trim_start_matches('/'))
                    .join("cgroup.procs"),
                std::process::id().to_string(),
            )?;
            drop(datapath);
            let _ = std::fs::remove_dir(&cgroup);
            let via_bpf = via_bpf?;
            let direct_attached = direct_attached?;
            stop.store(true, Ordering::Relaxed);
            let _ = server.join();
            drop(ns);

            // iptables (nft backend) DNAT with N Services present.
            let via_ipt = if peers_too {
                let ns = Netns::new("fl-bench-ipt")?;
                run(Command::new("ip").args([
                    "-n",
                    &ns.0,
                    "addr",
                    "add",
                    &format!("{TARGET_VIP}/32"),
                    "dev",
                    "lo",
                ]))?;
                timed_stdin(&ns.0, &["iptables-nft-restore", "--noflush"], &ipt)?;
                let (stop, server) = backend(&ns.0)?;
                let via = connects(&ns.0, SocketAddr::from((TARGET_VIP, 80)), connect_count)?;
                stop.store(true, Ordering::Relaxed);
                let _ = server.join();
                Some(via)
            } else {
                None
            };

            println!(
                "  connect()+close() to a ClusterIP ({connect_count} connects): p50 / p99 / rate"
            );
            let line = |label: &str, (p50, p99, rate): (Duration, Duration, f64)| {
                println!(
                    "    {label:<30} {:>9.1} µs {:>9.1} µs {:>9.0}/s",
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6,
                    rate
                );
            };
            line("direct to the backend", direct);
            line("direct, programs attached", direct_attached);
            line("fairlead ClusterIP", via_bpf);
            println!(
                "    fairlead p50 is {:+.1}% vs direct",
                (via_bpf.0.as_secs_f64() / direct.0.as_secs_f64() - 1.0) * 100.0
            );
            if let Some(via_ipt) = via_ipt {
                line("iptables-nft ClusterIP", via_ipt);
                println!(
                    "    iptables p50 is {:+.1}% vs direct; fairlead rate is {:.2}x iptables",
                    (via_ipt.0.as_secs_f64() / direct.0.as_secs_f64() - 1.0) * 100.0,
                    via_bpf.2 / via_ipt.2
                );
            }
        }
        match process_start(&manifests, n, endpoints) {
            Ok(Some(start)) => start.print(),
            Ok(None) => println!(
                "  process start: skipped (no `fairlead` binary next to this one: cargo build --release --bin fairlead)"
            ),
            Err(e) => println!("  process start: failed: {e:#}"),
        }
        let _ = std::fs::remove_dir_all(&manifests);
        println!();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// `fairlead proxy --manifests` from process start to its first full sync, and its memory.
struct ProcessStart {
    /// Spawn to the `proxy started` line (maps created, programs loaded and attached).
    started: Duration,
    /// Spawn to the `maps synced` line.
    synced: Duration,
    /// What the process logged for the sync itself.
    sync_line: String,
    /// Resident memory after the sync (kB).
    rss_kb: u64,
    /// Memory of the proxy's maps as bpftool reports them (`bytes_memlock`).
    map_bytes: u64,
}

impl ProcessStart {
    fn print(&self) {
        println!(
            "  process start -> first full sync (fairlead proxy --manifests): {}   (maps and programs ready at {}; load average {})",
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

/// Runs the `fairlead` binary next to this one (`None` without one) as `fairlead proxy` on
/// `manifests`, maps pinned in a scratch bpffs directory, sockets of a scratch cgroup, no
/// interfaces; stops it at its first full sync and removes what it pinned.
fn process_start(manifests: &Path, n: usize, endpoints: usize) -> Result<Option<ProcessStart>> {
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
        .arg("--manifests")
        .arg(manifests)
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
