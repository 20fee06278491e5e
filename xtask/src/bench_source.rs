//! `cargo xtask bench source`: `fairlead dns --kubeconfig` fed by the fake
//! apiserver of `model/tests` (in this process) with N Services × E
//! endpoints: time from start to answering the last Service (and the CPU
//! fairlead used until then), resident memory once synced, one EndpointSlice
//! update → answered; and the fake's own start-up time and memory (this
//! process's growth while it loads).
//!
//! The fake renders every list fairlead asks for before fairlead starts, as
//! a real apiserver serves lists from its watch cache, and the answers are
//! polled with one UDP query from this process (no `dig` process per poll):
//! the figures measure fairlead, not the bench. The fake runs in this
//! process: build the bench in release (`cargo run --release -p xtask --
//! bench source`), or the fake's debug build competes with fairlead.

#[path = "../../model/tests/fake_apiserver/mod.rs"]
pub(crate) mod fake_apiserver;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fake_apiserver::FakeApiserver;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};

/// Options of `cargo xtask bench source`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Number of Services.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// EndpointSlice updates timed.
    #[arg(long, default_value_t = 10)]
    updates: usize,
    /// The fairlead binary (default: build and use target/release/fairlead).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Run fairlead under `perf record --call-graph dwarf` writing this file (the memory
    /// and CPU figures are then perf's, not fairlead's).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// fairlead's log filter (`RUST_LOG`); its log is shown when given.
    #[arg(long)]
    log: Option<String>,
}

const NS: &str = "bench";
const TIMEOUT: Duration = Duration::from_secs(120);

fn address(n: usize) -> String {
    let n = u32::try_from(n).unwrap_or(0) % (1 << 22);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n).to_string()
}

fn vip(i: usize) -> String {
    let n = u32::try_from(i + 1).unwrap_or(0);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n).to_string()
}

/// Service 0 is headless (its endpoints are answered, so a slice update
/// shows in DNS); the others have a ClusterIP.
fn objects(options: &Options) -> Vec<Value> {
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})];
    for i in 0..options.services {
        let name = format!("svc-{i}");
        let ip = if i == 0 { "None".to_owned() } else { vip(i) };
        objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        objects.push(slice(i, options.endpoints, 0));
    }
    objects
}

fn slice(i: usize, endpoints: usize, version: usize) -> Value {
    let addresses: Vec<Value> = (0..endpoints)
        .map(|j| {
            let n = if version > 0 && j == 0 {
                (1 << 21) + version
            } else {
                i * endpoints + j + 1
            };
            json!({"addresses": [address(n)], "conditions": {"ready": true}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-1"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses
    })
}

fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::cast_precision_loss, reason = "KiB of a process fit an f64")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The A records of `name` from 127.0.0.1:`port` (one UDP exchange).
///
/// The socket is connected, so a query sent before fairlead has bound its
/// port fails at once (the ICMP port-unreachable becomes ECONNREFUSED); an
/// unconnected socket waited out its whole read timeout instead, which put
/// a 500 ms floor under every start-up figure before 2026-12-05. The read
/// timeout is short for the same reason: a lost answer costs one poll, not
/// the figure.
fn ask(port: u16, name: &str) -> Vec<String> {
    let exchange = || -> Option<Vec<String>> {
        let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .ok()?;
        let mut message = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
        socket.send(&message.to_vec().ok()?).ok()?;
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).ok()?;
        let answer = Message::from_vec(&buf[..n]).ok()?;
        Some(
            answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
        )
    };
    exchange().unwrap_or_default()
}

fn wait_answer(port: u16, name: &str, want: &str) -> Result<Duration> {
    let at = Instant::now();
    while at.elapsed() < TIMEOUT {
        if ask(port, name).iter().any(|a| a == want) {
            return Ok(at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!("{name} did not answer {want} within {TIMEOUT:?}")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGINT to fairlead (under perf: perf's child); perf then writes
        // its data and exits. SIGKILL if that takes too long.
        let pid = self.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let target = children
            .split_whitespace()
            .next()
            .map_or_else(|| pid.to_string(), str::to_owned);
        let _ = Command::new("kill").args(["-INT", &target]).status();
        let at = Instant::now();
        while at.elapsed() < Duration::from_secs(10) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in
    // clock ticks; Linux reports them in USER_HZ = 100.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn binary(options: &Options) -> Result<PathBuf> {
    if let Some(b) = &options.binary {
        return Ok(b.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "fairlead"])
        .current_dir(root)
        .status()?;
    ensure!(status.success(), "cargo build --release failed");
    Ok(root.join("target/release/fairlead"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The benchmark.
/// The fake apiserver serving `objects`, on a runtime of its own, with a
/// kubeconfig naming it (in the directory returned). Every list a fairlead
/// component makes is rendered before this returns, as a watch cache has
/// them. Keep all four alive while it is used.
pub(crate) fn serve(
    objects: Vec<Value>,
) -> Result<(
    tokio::runtime::Runtime,
    FakeApiserver,
    tempfile::TempDir,
    PathBuf,
)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fake = runtime.block_on(FakeApiserver::start(objects));
    // Every list `fairlead dns` makes (no --node-name: no Node watch).
    for kind in [
        "Service",
        "EndpointSlice",
        "Ingress",
        "IngressClass",
        "Namespace",
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "ReferenceGrant",
    ] {
        fake.prerender(kind, None, "");
    }
    fake.prerender("Secret", None, fairlead_model::source::kube::TLS_SECRETS);
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            fake.url()
        ),
    )?;
    Ok((runtime, fake, dir, kubeconfig))
}

#[allow(clippy::too_many_lines, reason = "the bench script, step by step")]
pub(crate) fn run(options: &Options) -> Result<()> {
    let bin = binary(options)?;
    let before = status_kib("self", "VmRSS:");
    let objects = objects(options);
    let at = Instant::now();
    let (_runtime, fake, _dir, kubeconfig) = serve(objects)?;
    let fake_start = at.elapsed();
    let fake_kib = status_kib("self", "VmRSS:").saturating_sub(before);
    let port = 15_453;
    let load_before = load_average();
    let stamp = |what: &str| {
        if options.log.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            println!("bench: {what} at {:.6} (Unix time)", now.as_secs_f64());
        }
    };
    stamp("fairlead started");
    let at = Instant::now();
    let mut command = match &options.perf {
        Some(data) => {
            let mut perf = Command::new("perf");
            perf.args(["record", "--call-graph", "dwarf,32768", "-F", "2000", "-o"])
                .arg(data)
                .arg("--")
                .arg(&bin);
            perf
        }
        None => Command::new(&bin),
    };
    let child = Killed(
        command
            .args(["dns", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--telemetry-addr",
                "127.0.0.1:0",
            ])
            .args(["--upstream", "127.0.0.1:9", "--lameduck", "0"])
            .env("RUST_LOG", options.log.as_deref().unwrap_or("warn"))
            .stdout(if options.log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()?,
    );
    let last = options.services - 1;
    let last_name = format!("svc-{last}.{NS}.svc.cluster.local");
    wait_answer(port, &last_name, &vip(last))?;
    let to_answer = at.elapsed();
    stamp("last Service answered");
    let pid = child.0.id().to_string();
    let cpu_to_answer = cpu_time(&pid);
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = (status_kib(&pid, "VmRSS:"), status_kib(&pid, "VmHWM:"));
    let (anon, file) = (status_kib(&pid, "RssAnon:"), status_kib(&pid, "RssFile:"));
    let mut updates = Vec::new();
    for version in 1..=options.updates {
        let at = Instant::now();
        fake.apply(slice(0, options.endpoints, version));
        wait_answer(
            port,
            &format!("svc-0.{NS}.svc.cluster.local"),
            &address((1 << 21) + version),
        )?;
        updates.push(at.elapsed());
    }
    let rss_after = status_kib(&pid, "VmRSS:");
    drop(child);
    println!(
        "source benchmark: fairlead dns --kubeconfig, fake apiserver, {} Services × {} endpoints",
        options.services, options.endpoints
    );
    println!(
        "fake apiserver start-up (objects stored, lists rendered) {:>6.2} s",
        fake_start.as_secs_f64()
    );
    println!(
        "fake apiserver memory (this process grew)  {:>10.1} MiB",
        mib(fake_kib)
    );
    println!(
        "start → last Service answered             {:>10.2} s   (goal ≤ 0.5 s)",
        to_answer.as_secs_f64()
    );
    println!(
        "fairlead CPU (user+system) until then     {:>10.2} s",
        cpu_to_answer.as_secs_f64()
    );
    println!(
        "resident memory once synced (peak)         {:>10.1} MiB ({:.1})   (goal ≤ 128 MiB)",
        mib(rss),
        mib(hwm)
    );
    println!(
        "  of which anonymous (heap, stacks) / file  {:>9.1} MiB / {:.1} MiB",
        mib(anon),
        mib(file)
    );
    println!(
        "EndpointSlice update → answered, median    {:>10.1} ms (max {:.1}, {} updates)",
        median(updates.clone()).as_secs_f64() * 1e3,
        updates
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
        updates.len()
    );
    println!(
        "resident memory after the updates          {:>10.1} MiB",
        mib(rss_after)
    );
    println!(
        "(polled every 5 ms over UDP; load average {load_before} at start, {} at the end)",
        load_average()
    );
    Ok(())
}
