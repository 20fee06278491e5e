//! `cargo xtask bench node`: the shared-model advantage, measured. One
//! `fairlead node` against `fairlead proxy` + `fairlead dns` +
//! `fairlead ingress` run as three processes, on the same manifests (N
//! Services × E endpoints, an Ingress for every k-th Service): resident
//! memory and CPU time once everything serves the synced model, and the time
//! from a manifest change to every component serving it.
//!
//! Everything runs in a throw-away network namespace (the benchmark process
//! moves into it first, so its children and its `/status` polls are there
//! too); the proxy attaches to an empty throw-away cgroup.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fairlead_model::ModelWriter;
use fairlead_model::source::ManifestDir;
use serde_json::{Value, json};

/// Options of `cargo xtask bench node`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Number of Services.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// One Ingress host for every this many Services.
    #[arg(long, default_value_t = 10)]
    ingress_every: usize,
    /// Manifest changes timed per setup.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// The fairlead binary (default: build and use target/release/fairlead).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Name of the throw-away netns and cgroup (pins go to
    /// /sys/fs/bpf/NAME and NAME-proxy), so that parallel runs do not collide.
    #[arg(long, default_value = "flbench-node")]
    netns: String,
}

/// Services per manifest file (a change rewrites one file).
const PER_FILE: usize = 10;
/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

fn vip(i: usize) -> String {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + n).to_string()
}

fn endpoint(i: usize, j: usize, endpoints: usize, version: usize) -> String {
    let n = u32::try_from((i * endpoints + j + 1) % (1 << 22)).unwrap_or(0);
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + n;
    // Version 0 is the original; every other version moves the address (1..=3 blocks up).
    let block = if version == 0 {
        0
    } else {
        1 + (version - 1) % 3
    };
    let shifted = base + u32::try_from(block).unwrap_or(0) * (1 << 22);
    std::net::Ipv4Addr::from(shifted).to_string()
}

/// The objects of file `f` (Services `f * PER_FILE ..`); `version` moves the
/// first endpoint of the file's first Service.
fn file_objects(f: usize, options: &Options, version: usize) -> Value {
    let mut items = Vec::new();
    for i in f * PER_FILE..((f + 1) * PER_FILE).min(options.services) {
        let name = format!("svc-{i}");
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": vip(i), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        let addresses: Vec<Value> = (0..options.endpoints)
            .map(|j| {
                let v = if i == f * PER_FILE && j == 0 { version } else { 0 };
                json!({"addresses": [endpoint(i, j, options.endpoints, v)], "conditions": {"ready": true}})
            })
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": addresses
        }));
        if options.ingress_every > 0 && i % options.ingress_every == 0 {
            items.push(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"ingressClassName": "fairlead", "rules": [{
                    "host": format!("{name}.bench.example"),
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"number": 80}}}}]}
                }]}
            }));
        }
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn write_manifests(dir: &Path, options: &Options) -> Result<usize> {
    fs::create_dir_all(dir)?;
    let common = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": "fairlead"}, "spec": {"controller": "fairlead.dev/ingress"}}
    ]});
    fs::write(dir.join("common.json"), serde_json::to_vec(&common)?)?;
    let files = options.services.div_ceil(PER_FILE);
    for f in 0..files {
        fs::write(
            dir.join(format!("svc-{f:05}.json")),
            serde_json::to_vec(&file_objects(f, options, 0))?,
        )?;
    }
    Ok(files)
}

/// A running fairlead process, killed on drop.
struct Process {
    child: Child,
    telemetry: SocketAddr,
    what: &'static str,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(bin: &Path, what: &'static str, args: &[String], port: u16) -> Result<Self> {
        let telemetry: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = fs::File::create(std::env::temp_dir().join(format!("flbench-{what}.log")))?;
        let child = Command::new(bin)
            .args(args)
            .args([
                "--telemetry-addr",
                &telemetry.to_string(),
                "--lameduck",
                "0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            telemetry,
            what,
        })
    }

    fn status(&self) -> Option<Value> {
        let mut stream =
            TcpStream::connect_timeout(&self.telemetry, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /status HTTP/1.0\r\nHost: bench\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    }

    /// The model generation when every component is ready and serves it.
    fn serving(&self) -> Option<u64> {
        let status = self.status()?;
        let generation = status["model_generation"].as_u64()?;
        let components = status["components"].as_array()?;
        components
            .iter()
            .all(|c| c["ready"] == true && c["generation"].as_u64() == Some(generation))
            .then_some(generation)
    }

    fn wait_serving(&mut self, above: Option<u64>, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(g) = self.serving()
                && above.is_none_or(|a| g > a)
            {
                return Ok(g);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}); see its log in /tmp", self.what);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve a generation above {above:?} within {timeout:?}; /status: {}",
                    self.what,
                    self.status()
                        .map_or_else(|| "unreachable".to_owned(), |s| s.to_string())
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// (resident KiB, CPU seconds) of the process.
    fn usage(&self) -> Result<(u64, f64)> {
        let pid = self.child.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at 3.
        let rest = stat.rsplit_once(')').context("stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        #[allow(
            clippy::cast_precision_loss,
            reason = "clock ticks of a benchmark run fit an f64"
        )]
        Ok((rss, ticks as f64 / USER_HZ))
    }
}

struct Outcome {
    ready: Duration,
    rss_kib: u64,
    cpu_to_ready: f64,
    cpu_changes: f64,
    change_to_serving: Vec<Duration>,
}

/// CPU time this thread has used, from the scheduler's statistics
/// (nanoseconds, unlike the clock ticks of `/proc/<pid>/stat`).
fn thread_cpu() -> Duration {
    let text = fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The manifest source and model writer in this process, on the bench's
/// manifests: CPU for the first full load, and the median CPU of re-reading
/// one edited file and applying the difference (what every edit costs the
/// source, in each process that watches the directory).
struct SourceCost {
    full_load: Duration,
    per_edit: Duration,
    objects: usize,
}

fn source_cost(dir: &Path, options: &Options, files: usize) -> Result<SourceCost> {
    let (mut writer, _rx) = ModelWriter::new();
    let mut source = ManifestDir::new(dir);
    let at = thread_cpu();
    source.sync(&mut writer)?;
    let full_load = thread_cpu().saturating_sub(at);
    let objects = writer.snapshot().services.len();
    let mut samples = Vec::new();
    for c in 0..options.changes.max(20) {
        let f = (c * 7919) % files;
        let name = PathBuf::from(format!("svc-{f:05}.json"));
        let generation = writer.snapshot().generation;
        fs::write(
            dir.join(&name),
            serde_json::to_vec(&file_objects(f, options, c + 1))?,
        )?;
        let at = thread_cpu();
        source.refresh([name.clone()], &mut writer)?;
        samples.push(thread_cpu().saturating_sub(at));
        anyhow::ensure!(
            writer
                .snapshot()
                .changes_since(Some(generation))
                .services()
                .count()
                == 1,
            "one edit changes one Service"
        );
        fs::write(
            dir.join(&name),
            serde_json::to_vec(&file_objects(f, options, 0))?,
        )?;
        source.refresh([name], &mut writer)?;
    }
    Ok(SourceCost {
        full_load,
        per_edit: median(&samples),
        objects,
    })
}

/// Runs `processes` (already started), waits for all, measures, applies
/// `changes` manifest changes and times each until every process serves it.
fn measure(
    mut processes: Vec<Process>,
    started: Instant,
    dir: &Path,
    options: &Options,
    files: usize,
) -> Result<Outcome> {
    let mut generations = Vec::new();
    for p in &mut processes {
        generations.push(p.wait_serving(None, READY_TIMEOUT)?);
    }
    let ready = started.elapsed();
    thread::sleep(Duration::from_secs(2));
    let mut rss_kib = 0;
    let mut cpu_to_ready = 0.0;
    for p in &processes {
        let (rss, cpu) = p.usage()?;
        rss_kib += rss;
        cpu_to_ready += cpu;
    }
    let mut change_to_serving = Vec::new();
    for c in 0..options.changes {
        let f = (c * 7919) % files;
        let path = dir.join(format!("svc-{f:05}.json"));
        let changed = serde_json::to_vec(&file_objects(f, options, c + 1))?;
        let at = Instant::now();
        fs::write(&path, changed)?;
        for (p, g) in processes.iter_mut().zip(generations.iter_mut()) {
            *g = p.wait_serving(Some(*g), CHANGE_TIMEOUT)?;
        }
        change_to_serving.push(at.elapsed());
        // Put it back, and let every process settle on that too.
        fs::write(&path, serde_json::to_vec(&file_objects(f, options, 0))?)?;
        for (p, g) in processes.iter_mut().zip(generations.iter_mut()) {
            *g = p.wait_serving(Some(*g), CHANGE_TIMEOUT)?;
        }
    }
    let mut cpu_after = 0.0;
    for p in &processes {
        cpu_after += p.usage()?.1;
    }
    Ok(Outcome {
        ready,
        rss_kib,
        cpu_to_ready,
        cpu_changes: cpu_after - cpu_to_ready,
        change_to_serving,
    })
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn binary(options: &Options) -> Result<PathBuf> {
    if let Some(bin) = &options.binary {
        return Ok(bin.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("building target/release/fairlead …");
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "fairlead"])
        .current_dir(&root))?;
    Ok(root.join("target/release/fairlead"))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn cleanup(netns: &str, cgroup: &Path, pins: &[PathBuf]) {
    let _ = Command::new("ip").args(["netns", "del", netns]).output();
    let _ = fs::remove_dir(cgroup);
    for pin in pins {
        let _ = fs::remove_dir_all(pin);
    }
}

/// The benchmark.
pub(crate) fn run_bench(options: &Options) -> Result<()> {
    let bin = binary(options)?;
    let cgroup_root = fairlead_proxy::cgroup2_root().context("no cgroup v2 hierarchy")?;
    let name = options.netns.as_str();
    let cgroup = cgroup_root.join(name);
    let pins = [
        PathBuf::from(format!("/sys/fs/bpf/{name}")),
        PathBuf::from(format!("/sys/fs/bpf/{name}-proxy")),
    ];
    cleanup(name, &cgroup, &pins);
    fs::create_dir_all(&cgroup)?;
    run(Command::new("ip").args(["netns", "add", name]))?;
    run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
    let result = (|| {
        let netns = fs::File::open(format!("/var/run/netns/{name}"))?;
        rustix::thread::move_into_link_name_space(
            rustix::fd::AsFd::as_fd(&netns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .context("entering the benchmark netns")?;
        bench_in_netns(options, &bin, &cgroup, &pins)
    })();
    cleanup(name, &cgroup, &pins);
    result
}

fn bench_in_netns(options: &Options, bin: &Path, cgroup: &Path, pins: &[PathBuf]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    let files = write_manifests(&manifests, options)?;
    let m = manifests.display().to_string();
    let cg = cgroup.display().to_string();
    println!(
        "node benchmark: {} Services × {} endpoints, {} Ingress hosts, {} files; {} changes each",
        options.services,
        options.endpoints,
        if options.ingress_every == 0 {
            0
        } else {
            options.services.div_ceil(options.ingress_every)
        },
        files,
        options.changes
    );
    println!("binary: {}", bin.display());
    let cost = source_cost(&manifests, options, files)?;
    println!(
        "manifest source + model writer, in process{} ({} Services): full load {:.1} ms CPU; \
         one-file edit {:.2} ms CPU (median of {}); load average {}",
        if cfg!(debug_assertions) {
            " (unoptimised: run `cargo run --release -p xtask -- bench node`)"
        } else {
            ""
        },
        cost.objects,
        cost.full_load.as_secs_f64() * 1e3,
        cost.per_edit.as_secs_f64() * 1e3,
        options.changes.max(20),
        load_average()
    );
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();

    let started = Instant::now();
    let node = Process::start(
        bin,
        "node",
        &s(&[
            "node",
            "--manifests",
            &m,
            "--cgroup",
            &cg,
            "--bpffs",
            &pins[0].display().to_string(),
            "--listen",
            "127.0.0.1:5353",
            "--http",
            "127.0.0.1:8080",
            "--https",
            "127.0.0.1:8443",
        ]),
        9402,
    )?;
    let one = measure(vec![node], started, &manifests, options, files)?;

    let started = Instant::now();
    let three = vec![
        Process::start(
            bin,
            "proxy",
            &s(&[
                "proxy",
                "--manifests",
                &m,
                "--cgroup",
                &cg,
                "--bpffs",
                &pins[1].display().to_string(),
            ]),
            9412,
        )?,
        Process::start(
            bin,
            "dns",
            &s(&["dns", "--manifests", &m, "--listen", "127.0.0.1:5354"]),
            9413,
        )?,
        Process::start(
            bin,
            "ingress",
            &s(&[
                "ingress",
                "--manifests",
                &m,
                "--http",
                "127.0.0.1:8081",
                "--https",
                "127.0.0.1:8444",
            ]),
            9414,
        )?,
    ];
    let apart = measure(three, started, &manifests, options, files)?;
    print_comparison(&one, &apart, options);
    Ok(())
}

fn print_comparison(one: &Outcome, apart: &Outcome, options: &Options) {
    #[allow(
        clippy::cast_precision_loss,
        reason = "KiB of a process fit an f64 for printing"
    )]
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!();
    println!(
        "{:<44} {:>14} {:>22} {:>8}",
        "", "fairlead node", "proxy + dns + ingress", "ratio"
    );
    println!(
        "{:<44} {:>12.1} s {:>20.1} s {:>8.2}",
        "start to serving the synced model",
        one.ready.as_secs_f64(),
        apart.ready.as_secs_f64(),
        ratio(one.ready.as_secs_f64(), apart.ready.as_secs_f64())
    );
    println!(
        "{:<44} {:>10.1} MiB {:>18.1} MiB {:>8.2}",
        "resident memory (sum)",
        mib(one.rss_kib),
        mib(apart.rss_kib),
        ratio(mib(one.rss_kib), mib(apart.rss_kib))
    );
    println!(
        "{:<44} {:>12.2} s {:>20.2} s {:>8.2}",
        "CPU time to serving (sum)",
        one.cpu_to_ready,
        apart.cpu_to_ready,
        ratio(one.cpu_to_ready, apart.cpu_to_ready)
    );
    println!(
        "{:<44} {:>12.2} s {:>20.2} s {:>8.2}",
        format!(
            "CPU time for {} changes (×2: change, revert)",
            options.changes
        ),
        one.cpu_changes,
        apart.cpu_changes,
        ratio(one.cpu_changes, apart.cpu_changes)
    );
    let (m1, m3) = (
        median(&one.change_to_serving),
        median(&apart.change_to_serving),
    );
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "{:<44} {:>11.1} ms {:>19.1} ms {:>8.2}",
        "manifest change → all serving, median",
        m1.as_secs_f64() * 1e3,
        m3.as_secs_f64() * 1e3,
        ratio(m1.as_secs_f64(), m3.as_secs_f64())
    );
    println!(
        "{:<44} {:>11.1} ms {:>19.1} ms",
        "manifest change → all serving, max",
        max(&one.change_to_serving).as_secs_f64() * 1e3,
        max(&apart.change_to_serving).as_secs_f64() * 1e3,
    );
    println!(
        "\n(change times include the manifest watcher's debounce; load average now: {})",
        load_average()
    );
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
