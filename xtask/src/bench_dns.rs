//! `cargo xtask bench dns`: fairlead's DNS against Knot DNS and NSD serving
//! the same records (a zone file generated from the same manifests), each
//! server pinned to one core, dnsperf pinned to the other. Prints QPS,
//! latency percentiles, memory and ratios; and, for fairlead alone, the
//! index build and update times and the time from a model change (and from
//! a manifest edit) to the changed answer; and what `--dns-autopath` saves a
//! pod's resolver (`bench_autopath`).

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use fairlead_dns::{Index, PodsMode, ZoneConfig};
use fairlead_model::{Change, ModelWriter, decode};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{Value, json};

use crate::need;

/// What the bench runs.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Services to generate (a mix of ClusterIP, headless with endpoints, multi-port).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Seconds of each dnsperf throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Queries per second of the latency runs; 0: 80% of fairlead's own
    /// peak on the mixed queries, measured first.
    #[arg(long, default_value_t = 0)]
    latency_qps: u64,
    /// Only fairlead (no Knot, no NSD).
    #[arg(long)]
    fairlead_only: bool,
    /// Only the autopath row.
    #[arg(long)]
    autopath_only: bool,
}

const ZONE: &str = "cluster.local";

/// The generated cluster: objects (as JSON) and the query mix.
struct Cluster {
    objects: Vec<Value>,
    /// (name, type) questions, in dnsperf order.
    queries: Vec<(String, &'static str)>,
    /// A headless Service whose endpoint the change tests move.
    probe: (String, String),
}

fn generate(services: usize) -> Cluster {
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
    })];
    let mut queries = Vec::new();
    let mut next_ep = 0u32;
    let mut probe = None;
    for i in 0..services {
        let ns = format!("ns{}", i % 100);
        let name = format!("svc{i}");
        let fqdn = format!("{name}.{ns}.svc.{ZONE}");
        let ip = |n: usize| format!("10.{}.{}.{}", 96 + n / 65536, (n / 256) % 256, n % 256);
        let kind = i % 10;
        let (spec, endpoints, ports) = match kind {
            0..=5 => (
                json!({"clusterIP": ip(i + 1), "ports": [{"name": "http", "port": 80}]}),
                2,
                vec!["http"],
            ),
            6..=8 => (
                json!({"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]}),
                3,
                vec!["http"],
            ),
            _ => (
                json!({"clusterIP": ip(i + 1), "ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}]}),
                2,
                vec!["http", "grpc"],
            ),
        };
        objects.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}));
        let mut eps = Vec::new();
        let mut first_ep = None;
        for k in 0..endpoints {
            next_ep += 1;
            let [_, a, b, c] = next_ep.to_be_bytes();
            let addr = format!("10.{}.{b}.{c}", 128 + a);
            first_ep.get_or_insert_with(|| addr.clone());
            // As the EndpointSlice controller writes them: the Pod behind
            // each address (what `--dns-autopath` recognises a pod by).
            eps.push(json!({
                "addresses": [addr],
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-{k}")},
            }));
        }
        let slice_ports: Vec<Value> = ports
            .iter()
            .map(|p| json!({"name": p, "port": if *p == "grpc" { 9090 } else { 8080 }}))
            .collect();
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": eps,
        }));
        if kind == 6 && probe.is_none() {
            probe = Some((ns.clone(), name.clone()));
        }
        // The query mix.
        let first_ep = first_ep.unwrap_or_default().replace('.', "-");
        match i % 20 {
            8..=11 => queries.push((format!("_{}._tcp.{fqdn}", ports[0]), "SRV")),
            12..=13 => queries.push((format!("{first_ep}.{fqdn}"), "A")),
            14..=15 => queries.push((format!("nosuch{i}.{ns}.svc.{ZONE}"), "A")),
            16 => queries.push((fqdn, "AAAA")),
            _ => queries.push((fqdn, "A")),
        }
    }
    fastrand::seed(7);
    fastrand::shuffle(&mut queries);
    Cluster {
        objects,
        queries,
        probe: probe.expect("at least 7 services"),
    }
}

fn write_manifests(cluster: &Cluster, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut by_ns: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for object in &cluster.objects {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let text = by_ns.entry(ns).or_default();
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(object)?);
    }
    for (ns, text) in by_ns {
        std::fs::write(dir.join(format!("{ns}.yaml")), text)?;
    }
    Ok(())
}

fn model(cluster: &Cluster) -> Result<ModelWriter> {
    let (mut writer, _rx) = ModelWriter::new();
    let changes = cluster
        .objects
        .iter()
        .map(|o| {
            Ok(Change::Upsert {
                object: decode(o.clone()).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                origin: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    writer.replace_all(changes, Vec::new(), true);
    Ok(writer)
}

fn moved_slice(cluster: &Cluster, address: &str) -> Value {
    let (ns, name) = &cluster.probe;
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [address]}],
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Index build (full) and update (one Service) times.
fn index_times(cluster: &Cluster) -> Result<(Duration, Duration, usize, u64)> {
    let mut writer = model(cluster)?;
    let config = Arc::new(ZoneConfig::new(ZONE, 5, PodsMode::Disabled)?);
    let snapshot = writer.snapshot();
    let mut full = Vec::new();
    let before = own_rss_kib();
    let mut index = Index::build(config.clone(), &snapshot);
    let index_kib = own_rss_kib().saturating_sub(before);
    for _ in 0..5 {
        let started = Instant::now();
        index = Index::build(config.clone(), &snapshot);
        full.push(started.elapsed());
    }
    let mut incremental = Vec::new();
    for round in 0..21u8 {
        let slice = moved_slice(cluster, &format!("10.200.0.{round}"));
        writer.apply([Change::Upsert {
            object: decode(slice).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            origin: None,
        }]);
        let snapshot = writer.snapshot();
        let started = Instant::now();
        let (next, kind) = index.update(&snapshot);
        incremental.push(started.elapsed());
        ensure!(kind == fairlead_dns::UpdateKind::Incremental(1), "{kind:?}");
        index = next;
    }
    Ok((
        median(full),
        median(incremental),
        index.zone_records().len(),
        index_kib,
    ))
}

/// The machine's load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn zone_file(cluster: &Cluster) -> Result<String> {
    let writer = model(cluster)?;
    let config = Arc::new(ZoneConfig::new(ZONE, 5, PodsMode::Disabled)?);
    let index = Index::build(config, &writer.snapshot());
    let mut text = String::new();
    for record in index.zone_records() {
        writeln!(text, "{record}")?;
    }
    Ok(text)
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        qtype,
    ));
    message.to_vec().expect("encodes")
}

/// One UDP exchange; the answer's (rcode, sorted answer rdata).
fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<(String, Vec<String>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    socket.send_to(&query(name, qtype), server).ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    let message = Message::from_vec(&buf[..n]).ok()?;
    let mut data: Vec<String> = message.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    Some((message.metadata.response_code.to_string(), data))
}

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(
        name: &'static str,
        mut command: Command,
        addr: SocketAddr,
        probe: &str,
    ) -> Result<Self> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Self { name, child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited: {status}");
            }
            if ask(addr, probe, RecordType::A).is_some_and(|(rcode, _)| rcode == "No Error") {
                return Ok(server);
            }
            ensure!(
                Instant::now() < deadline,
                "{name} did not answer within 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resident memory of the server and its children, in MiB.
    fn rss_mib(&self) -> f64 {
        let mut pids = vec![self.child.id()];
        if let Ok(out) = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
        {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok()),
            );
        }
        let kib: u64 = pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .sum();
        #[allow(clippy::cast_precision_loss, reason = "memory in MiB for display")]
        let mib = kib as f64 / 1024.0;
        mib
    }
}

/// A loopback port free for both UDP and TCP (right now).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let port = socket.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free UDP+TCP port")
}

/// Wraps `program` to run pinned on CPU `cpu`.
fn pinned(cpu: usize, program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string(), program]);
    command
}

/// A query file of one kind of question.
struct Mix {
    name: &'static str,
    file: PathBuf,
}

/// The mixes dnsperf runs: the whole mix, then each kind of question alone.
fn mixes(cluster: &Cluster, dir: &Path) -> Result<Vec<Mix>> {
    type Pick = fn(&str, &str) -> bool;
    let kinds: [(&'static str, Pick); 5] = [
        ("mixed", |_, _| true),
        ("A ClusterIP", |n, t| t == "A" && n.starts_with("svc")),
        ("A endpoint", |n, t| {
            t == "A" && n.split('.').next().is_some_and(|l| l.contains('-'))
        }),
        ("SRV", |_, t| t == "SRV"),
        ("NXDOMAIN", |n, _| n.starts_with("nosuch")),
    ];
    let mut out = Vec::new();
    for (i, (name, pick)) in kinds.into_iter().enumerate() {
        let mut text = String::new();
        for (qname, qtype) in &cluster.queries {
            if pick(qname, qtype) {
                writeln!(text, "{qname} {qtype}")?;
            }
        }
        ensure!(!text.is_empty(), "no question of the {name} mix");
        let file = dir.join(format!("queries-{i}.txt"));
        std::fs::write(&file, text)?;
        out.push(Mix { name, file });
    }
    Ok(out)
}

/// Throughput: QPS and queries lost, over UDP (4 clients, 500 outstanding)
/// or TCP (one connection, 100 queries pipelined on it).
fn dnsperf(server: SocketAddr, queries: &Path, seconds: u64, tcp: bool) -> Result<(f64, f64)> {
    let mut command = pinned(0, "dnsperf");
    command.args(dnsperf_base(server, queries));
    command.args(["-l", &seconds.to_string()]);
    if tcp {
        command.args(["-m", "tcp", "-c", "1", "-q", "100"]);
    } else {
        command.args(["-q", "500", "-c", "4"]);
    }
    let out = command.output().context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let qps = field("Queries per second:").context("dnsperf printed no QPS")?;
    Ok((qps, field("Queries lost:").unwrap_or(0.0)))
}

fn dnsperf_base(server: SocketAddr, queries: &Path) -> Vec<String> {
    vec![
        "-s".into(),
        server.ip().to_string(),
        "-p".into(),
        server.port().to_string(),
        "-d".into(),
        queries.display().to_string(),
        "-t".into(),
        "2".into(),
    ]
}

/// Latency at a steady `qps`, every response timed: p50 and p99 in µs.
fn latency(server: SocketAddr, queries: &Path, qps: u64) -> Result<(f64, f64)> {
    let mut command = pinned(0, "dnsperf");
    command.args(dnsperf_base(server, queries));
    command.args(["-l", "5", "-Q", &qps.to_string(), "-c", "4", "-v"]);
    let out = command.output().context("running dnsperf -v")?;
    let mut samples: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    ensure!(!samples.is_empty(), "dnsperf -v printed no latencies");
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into the sorted samples"
        )]
        let i = ((samples.len() - 1) as f64 * q) as usize;
        samples[i] * 1e6
    };
    Ok((at(0.50), at(0.99)))
}

/// Time from a model change to the changed answer, fairlead in-process.
fn change_to_answer_in_process(cluster: &Cluster) -> Result<Vec<Duration>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut writer = model(cluster)?;
    let model_rx = writer.subscribe();
    let mut args = fairlead_dns::Args::with_listen("127.0.0.1:0".parse()?);
    args.upstream = vec!["127.0.0.1:9".to_owned()];
    let mut registry = prometheus_client::registry::Registry::default();
    let dns = runtime.block_on(fairlead_dns::Dns::bind(args, &mut registry))?;
    let addr = dns.local_addrs()[0];
    let ready = fairlead_model::Ready::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = runtime.spawn(dns.run(fairlead_dns::Context {
        model: model_rx,
        ready: ready.clone(),
        cancel: cancel.clone(),
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.get() {
        ensure!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ns, name) = &cluster.probe;
    let fqdn = format!("{name}.{ns}.svc.{ZONE}");
    let mut samples = Vec::new();
    for round in 0..20u8 {
        let address = format!("10.201.0.{round}");
        let slice = moved_slice(cluster, &address);
        let object = decode(slice).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let started = Instant::now();
        writer.apply([Change::Upsert {
            object,
            origin: None,
        }]);
        loop {
            if ask(addr, &fqdn, RecordType::A).is_some_and(|(_, data)| data == [address.clone()]) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(5),
                "no new answer within 5 s"
            );
        }
        samples.push(started.elapsed());
    }
    cancel.cancel();
    runtime.block_on(task)??;
    Ok(samples)
}

/// Time from a manifest edit to the changed answer, the fairlead binary.
fn change_to_answer_file(cluster: &Cluster, dir: &Path, server: SocketAddr) -> Result<Duration> {
    let (ns, name) = &cluster.probe;
    let fqdn = format!("{name}.{ns}.svc.{ZONE}");
    let file = dir.join(format!("{ns}.yaml"));
    let text = std::fs::read_to_string(&file)?;
    let slice = serde_norway::to_string(&moved_slice(cluster, "10.202.0.1"))?;
    // Append the moved slice after the original (a later definition of the
    // same object would be an error): replace the whole file instead.
    let original_slice = serde_norway::to_string(
        cluster
            .objects
            .iter()
            .find(|o| {
                o["kind"] == "EndpointSlice"
                    && o["metadata"]["name"] == format!("{name}-1")
                    && o["metadata"]["namespace"] == ns.as_str()
            })
            .context("probe slice")?,
    )?;
    ensure!(
        text.contains(&original_slice),
        "probe slice in {}",
        file.display()
    );
    let started = Instant::now();
    std::fs::write(&file, text.replace(&original_slice, &slice))?;
    loop {
        if ask(server, &fqdn, RecordType::A).is_some_and(|(_, data)| data == ["10.202.0.1"]) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no new answer within 10 s"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[allow(clippy::too_many_lines, reason = "the bench script, step by step")]
pub(crate) fn run(options: &Options) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    if cfg!(debug_assertions) {
        // The in-process measurements (index, change to answer) need an
        // optimised build: run this bench again from a release xtask.
        eprintln!("bench dns: re-running from a release build of xtask");
        let status = Command::new(env!("CARGO"))
            .args([
                "run",
                "--quiet",
                "--release",
                "--package",
                "xtask",
                "--",
                "bench",
                "dns",
            ])
            .args(["--services", &options.services.to_string()])
            .args(["--seconds", &options.seconds.to_string()])
            .args(["--latency-qps", &options.latency_qps.to_string()])
            .args(options.fairlead_only.then_some("--fairlead-only"))
            .args(options.autopath_only.then_some("--autopath-only"))
            .current_dir(root)
            .status()?;
        ensure!(status.success(), "the release bench failed");
        return Ok(());
    }
    need("dnsperf", "dnsperf")?;
    need("taskset", "util-linux")?;
    let load_before = load_average();
    if !options.fairlead_only {
        need("knotd", "knot")?;
        need("nsd", "nsd")?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    eprintln!("bench dns: building fairlead (release)");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "fairlead"])
        .current_dir(root)
        .status()?;
    ensure!(status.success(), "cargo build --release failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let fairlead = target.join("release/fairlead");

    let work = tempfile::tempdir()?;
    let cluster = generate(options.services);
    let manifests = work.path().join("manifests");
    write_manifests(&cluster, &manifests)?;
    let queries = work.path().join("queries.txt");
    let mut text = String::new();
    for (name, qtype) in &cluster.queries {
        writeln!(text, "{name} {qtype}")?;
    }
    std::fs::write(&queries, text)?;
    if options.autopath_only {
        let (plain, autopath) = crate::bench_autopath::run(
            &fairlead,
            &manifests,
            POD.0,
            POD.1,
            ZONE,
            &external_names(options.services),
        )?;
        println!("load average (1, 5, 15 min): {}", load_average());
        print_autopath(plain, autopath);
        return Ok(());
    }

    eprintln!(
        "bench dns: index build and update ({} Services)",
        options.services
    );
    let (full, incremental, records, index_kib) = index_times(&cluster)?;
    eprintln!("bench dns: model change to answer, in process");
    let in_process = change_to_answer_in_process(&cluster)?;

    let probe = cluster
        .queries
        .iter()
        .find(|(_, t)| *t == "A")
        .map(|(n, _)| n.clone())
        .context("an A query")?;
    let mut servers = Vec::new();
    let port = free_port()?;
    let mut command = pinned(1, &fairlead.display().to_string());
    command
        .args(["dns", "--manifests"])
        .arg(&manifests)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--telemetry-addr",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ])
        .env("TOKIO_WORKER_THREADS", "1")
        .env("RUST_LOG", "warn");
    servers.push(Server::start(
        "fairlead",
        command,
        ([127, 0, 0, 1], port).into(),
        &probe,
    )?);

    if !options.fairlead_only {
        let zone = zone_file(&cluster)?;
        let knot_dir = work.path().join("knot");
        std::fs::create_dir_all(&knot_dir)?;
        std::fs::write(knot_dir.join("cluster.local.zone"), &zone)?;
        let port = free_port()?;
        let dir = knot_dir.display();
        std::fs::write(
            knot_dir.join("knot.conf"),
            format!(
                "server:\n  rundir: \"{dir}\"\n  listen: 127.0.0.1@{port}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
                 log:\n  - target: stderr\n    any: error\n\
                 database:\n  storage: \"{dir}\"\n\
                 template:\n  - id: default\n    storage: \"{dir}\"\n    journal-content: none\n    semantic-checks: off\n\
                 zone:\n  - domain: {ZONE}\n    file: \"cluster.local.zone\"\n"
            ),
        )?;
        let mut command = pinned(1, "knotd");
        command.arg("-c").arg(knot_dir.join("knot.conf"));
        servers.push(Server::start(
            "knot",
            command,
            ([127, 0, 0, 1], port).into(),
            &probe,
        )?);

        let nsd_dir = work.path().join("nsd");
        std::fs::create_dir_all(&nsd_dir)?;
        std::fs::write(nsd_dir.join("cluster.local.zone"), &zone)?;
        let port = free_port()?;
        let dir = nsd_dir.display();
        std::fs::write(
            nsd_dir.join("nsd.conf"),
            format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  server-count: 1\n  zonesdir: \"{dir}\"\n  database: \"\"\n  username: \"\"\n  chroot: \"\"\n\
                 \x20 pidfile: \"{dir}/nsd.pid\"\n  xfrdfile: \"{dir}/xfrd.state\"\n  zonelistfile: \"{dir}/zone.list\"\n  xfrdir: \"{dir}\"\n  verbosity: 0\n\
                 remote-control:\n  control-enable: no\n\
                 zone:\n  name: {ZONE}\n  zonefile: \"cluster.local.zone\"\n"
            ),
        )?;
        let mut command = pinned(1, "nsd");
        command.arg("-d").arg("-c").arg(nsd_dir.join("nsd.conf"));
        servers.push(Server::start(
            "nsd",
            command,
            ([127, 0, 0, 1], port).into(),
            &probe,
        )?);

        // The same answers from all three, on a sample of the mix.
        let mut mismatches = 0;
        for (name, qtype) in cluster.queries.iter().step_by(97) {
            let qtype: RecordType = qtype.parse()?;
            let answers: Vec<_> = servers.iter().map(|s| ask(s.addr, name, qtype)).collect();
            if answers.iter().any(|a| a != &answers[0]) {
                mismatches += 1;
                if mismatches <= 3 {
                    eprintln!("bench dns: different answers for {name} {qtype}: {answers:?}");
                }
            }
        }
        eprintln!(
            "bench dns: answers compared on {} questions: {mismatches} differ",
            cluster.queries.len().div_ceil(97)
        );
    }

    let mixes = mixes(&cluster, work.path())?;
    // Throughput of every mix over UDP, of the mixed one over TCP.
    let mut udp = vec![vec![0.0; servers.len()]; mixes.len()];
    let mut lost = vec![0.0; servers.len()];
    let mut tcp = vec![0.0; servers.len()];
    for (s, server) in servers.iter().enumerate() {
        for (m, mix) in mixes.iter().enumerate() {
            eprintln!("bench dns: dnsperf {} against {}", mix.name, server.name);
            let (qps, l) = dnsperf(server.addr, &mix.file, options.seconds, false)?;
            udp[m][s] = qps;
            if m == 0 {
                lost[s] = l;
            }
        }
        eprintln!("bench dns: dnsperf over TCP against {}", server.name);
        tcp[s] = dnsperf(server.addr, &mixes[0].file, options.seconds, true)?.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a query rate"
    )]
    let latency_qps = match options.latency_qps {
        0 => (udp[0][0] * 0.8) as u64,
        qps => qps,
    };
    let mut results = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        eprintln!(
            "bench dns: latency at {latency_qps} QPS against {}",
            server.name
        );
        let (p50, p99) = latency(server.addr, &mixes[0].file, latency_qps)?;
        results.push((server.name, p50, p99, lost[s], server.rss_mib()));
    }
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    let file_change = change_to_answer_file(&cluster, &manifests, servers[0].addr)?;
    drop(servers);
    eprintln!("bench dns: autopath, external names looked up from a pod (glibc)");
    let (plain, autopath) = crate::bench_autopath::run(
        &fairlead,
        &manifests,
        POD.0,
        POD.1,
        ZONE,
        &external_names(options.services),
    )?;

    println!(
        "\nDNS, {} Services ({records} records), {} queries in the mix, one core per server, dnsperf on the other",
        options.services,
        cluster.queries.len()
    );
    println!(
        "load average (1, 5, 15 min) at the start: {load_before}; at the end: {}",
        load_average()
    );
    let mut header = format!("{:<14}", "QPS (UDP)");
    for name in &names {
        write!(header, " {name:>10}")?;
    }
    for name in names.iter().skip(1) {
        write!(header, " {:>14}", format!("fairlead/{name}"))?;
    }
    println!("{header}");
    let row = |label: &str, qps: &[f64]| -> Result<String> {
        let mut line = format!("{label:<14}");
        for q in qps {
            write!(line, " {q:>10.0}")?;
        }
        for q in qps.iter().skip(1) {
            write!(line, " {:>14.2}", qps[0] / q)?;
        }
        Ok(line)
    };
    for (m, mix) in mixes.iter().enumerate() {
        println!("{}", row(mix.name, &udp[m])?);
    }
    println!("{}", row("TCP pipelined", &tcp)?);
    println!(
        "\nlatency at {latency_qps} QPS (80% of fairlead's mixed peak unless --latency-qps), mixed queries; memory after the runs"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>12} {:>9}",
        "server", "p50 µs", "p99 µs", "lost (peak)", "RSS MiB"
    );
    for (name, p50, p99, lost, rss) in &results {
        println!("{name:<10} {p50:>9.0} {p99:>9.0} {lost:>12.0} {rss:>9.1}");
    }
    println!(
        "index: full build {full:?}, one-Service update {incremental:?} (medians), {} MiB resident",
        index_kib / 1024
    );
    println!(
        "model change -> new answer (in process): median {:?}, max {:?}",
        median(in_process.clone()),
        in_process.iter().max().copied().unwrap_or_default()
    );
    println!(
        "manifest edit -> new answer (binary, includes the 100 ms file debounce): {file_change:?}"
    );
    print_autopath(plain, autopath);
    Ok(())
}

/// Prints the autopath row.
fn print_autopath(plain: crate::bench_autopath::Lookups, autopath: crate::bench_autopath::Lookups) {
    println!(
        "\nautopath: {} external names (`svcN.nsM.svc.example.org`, from an upstream) looked up by glibc in a pod of {} \
         (ndots:5, three search domains), each answer checked",
        plain.count, POD.1
    );
    for (label, run) in [
        ("without --dns-autopath", plain),
        ("with --dns-autopath", autopath),
    ] {
        println!(
            "{label:<23} {:>5.2} queries per lookup, {:>7.3} ms per lookup",
            run.queries_per_lookup, run.ms_per_lookup
        );
    }
}

/// The pod of the autopath row: the first endpoint the generator hands out
/// (`svc0`'s, in `ns0`).
const POD: (&str, &str) = ("10.128.0.1", "ns0");

/// External names of the autopath row with the address each must resolve
/// to: ClusterIP Services of the generated cluster, served by the upstream
/// as `example.org` (four dots: below `ndots:5`, so the search list comes
/// first).
fn external_names(services: usize) -> Vec<(String, String)> {
    (0..services)
        .filter(|i| i % 10 <= 5)
        .take(200)
        .map(|i| {
            let n = i + 1;
            (
                format!("svc{i}.ns{}.svc.example.org", i % 100),
                format!("10.{}.{}.{}", 96 + n / 65536, (n / 256) % 256, n % 256),
            )
        })
        .collect()
}
