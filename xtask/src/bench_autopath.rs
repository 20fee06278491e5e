//! The autopath row of `cargo xtask bench dns`: what `--dns-autopath` saves
//! a pod. A network namespace plays the pod: its address is an endpoint of
//! the generated cluster (so fairlead knows its namespace), its resolv.conf
//! is the kubelet's (`ndots:5`, three search domains) and its resolver is
//! glibc's (`getent ahostsv4`). Another fairlead, authoritative for
//! `example.org` from the same manifests, is the upstream of the external
//! names. Both servers are measured only once `/ready` says they answer
//! from a synced model (before that, cluster names get SERVFAIL, which glibc
//! asks twice per search domain: the row once showed 4.4 and 4.9 queries per
//! lookup at 10k Services, where the manifests take seconds to load). Each
//! lookup is checked for the right address, and the autopath counter must
//! say that every lookup was completed (with autopath) or none (without);
//! the row reports the queries fairlead received per lookup and the time
//! per lookup, with and without autopath.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

const NETNS: &str = "fl-bench-autopath";
/// The cluster DNS address inside the pod.
const DNS: &str = "10.96.0.10";
const TELEMETRY: &str = "127.0.0.1:19402";
/// Telemetry of the upstream.
const UPSTREAM_TELEMETRY: &str = "127.0.0.1:19403";

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookups {
    /// Lookups made (each answered with the right address).
    pub(crate) count: usize,
    /// DNS queries fairlead answered per lookup.
    pub(crate) queries_per_lookup: f64,
    /// Mean wall time of one `getent` lookup, in milliseconds.
    pub(crate) ms_per_lookup: f64,
}

/// The pod namespace, removed on drop.
struct Pod;

impl Pod {
    fn create(pod_address: &str, namespace: &str, zone: &str) -> Result<Self> {
        // A namespace left by an interrupted run.
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        let etc = Path::new("/etc/netns").join(NETNS);
        std::fs::create_dir_all(&etc)?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {DNS}\nsearch {namespace}.svc.{zone} svc.{zone} {zone}\n\
                 options ndots:5 timeout:1 attempts:2\n"
            ),
        )?;
        ip(&["netns", "add", NETNS])?;
        let pod = Self;
        ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
        for address in [pod_address, DNS] {
            ip(&[
                "-n",
                NETNS,
                "addr",
                "add",
                &format!("{address}/32"),
                "dev",
                "lo",
            ])?;
        }
        // Queries to the DNS address leave from the pod's address.
        ip(&[
            "-n",
            NETNS,
            "route",
            "replace",
            "table",
            "local",
            "local",
            DNS,
            "dev",
            "lo",
            "proto",
            "kernel",
            "scope",
            "host",
            "src",
            pod_address,
        ])?;
        Ok(pod)
    }

    fn exec(program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", NETNS, program]);
        command
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(NETNS));
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip").args(args).status()?;
    ensure!(status.success(), "ip {} failed", args.join(" "));
    Ok(())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(fairlead: &Path, manifests: &Path, args: &[&str]) -> Result<Server> {
    let child = Pod::exec(&fairlead.display().to_string())
        .args(["dns", "--manifests"])
        .arg(manifests)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting fairlead dns in the pod namespace")?;
    Ok(Server(child))
}

/// The sum of the samples of metric `name` of the server on [`TELEMETRY`].
fn metric(name: &str) -> Result<f64> {
    let out = Pod::exec("curl")
        .args(["-sf", &format!("http://{TELEMETRY}/metrics")])
        .output()?;
    ensure!(out.status.success(), "scraping {TELEMETRY} failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn requests() -> Result<f64> {
    metric("fairlead_dns_requests_total")
}

fn completed() -> Result<f64> {
    metric("fairlead_dns_autopath_total{result=\"completed\"}")
}

/// Waits until the fairlead with telemetry on `telemetry` answers from a
/// synced model (`/ready`).
fn wait_ready(telemetry: &str, server: &mut Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = server.0.try_wait()? {
            bail!("fairlead dns (telemetry {telemetry}) exited: {status}");
        }
        let ready = Pod::exec("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                &format!("http://{telemetry}/ready"),
            ])
            .status()?;
        if ready.success() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "fairlead dns (telemetry {telemetry}) not ready within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `getent ahostsv4 name` in the pod: the addresses it printed.
fn getent(name: &str) -> Result<String> {
    let out = Pod::exec("getent").args(["ahostsv4", name]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Looks up every `(name, address)` from the pod through a cluster DNS
/// started with `autopath` on or off.
fn lookups(
    fairlead: &Path,
    manifests: &Path,
    names: &[(String, String)],
    autopath: bool,
) -> Result<Lookups> {
    let host_conf = tempfile::NamedTempFile::new()?;
    std::fs::write(host_conf.path(), "nameserver 127.0.0.1\n")?;
    let mut args = vec![
        "--listen",
        "10.96.0.10:53",
        "--upstream",
        "127.0.0.1:5300",
        "--telemetry-addr",
        TELEMETRY,
        "--dns-resolv-conf",
    ];
    let conf = host_conf.path().display().to_string();
    args.push(&conf);
    if autopath {
        args.push("--dns-autopath");
    }
    let mut dns = start(fairlead, manifests, &args)?;
    // Measured from a synced model only: an external name resolves before
    // (cluster names get SERVFAIL and the resolver moves on), at a higher
    // cost in queries.
    wait_ready(TELEMETRY, &mut dns)?;
    let before = requests()?;
    let completed_before = completed()?;
    let started = Instant::now();
    for (name, address) in names {
        let text = getent(name)?;
        ensure!(
            text.contains(address.as_str()),
            "{name}: expected {address}, the pod's resolver got {text:?}"
        );
    }
    let elapsed = started.elapsed();
    let queries = requests()? - before;
    let completions = completed()? - completed_before;
    #[expect(clippy::cast_precision_loss, reason = "a few hundred lookups")]
    let n = names.len() as f64;
    let expected = if autopath { n } else { 0.0 };
    ensure!(
        (completions - expected).abs() < 0.5,
        "{completions} of {} lookups completed by autopath (expected {expected}): \
         the figures would not measure what they say",
        names.len()
    );
    Ok(Lookups {
        count: names.len(),
        queries_per_lookup: queries / n,
        ms_per_lookup: elapsed.as_secs_f64() * 1000.0 / n,
    })
}

/// Runs the row: `names` are (external name, its address) pairs, the pod is
/// `pod_address` in `namespace` of the cluster zone `zone`. Returns the
/// figures without and with autopath.
pub(crate) fn run(
    fairlead: &Path,
    manifests: &Path,
    pod_address: &str,
    namespace: &str,
    zone: &str,
    names: &[(String, String)],
) -> Result<(Lookups, Lookups)> {
    let _pod = Pod::create(pod_address, namespace, zone)?;
    // The upstream: the same manifests served as `example.org`.
    let mut upstream = start(
        fairlead,
        manifests,
        &[
            "--zone",
            "example.org",
            "--listen",
            "127.0.0.1:5300",
            "--upstream",
            "127.0.0.1:9",
            "--telemetry-addr",
            UPSTREAM_TELEMETRY,
        ],
    )?;
    wait_ready(UPSTREAM_TELEMETRY, &mut upstream)?;
    let without = lookups(fairlead, manifests, names, false)?;
    let with = lookups(fairlead, manifests, names, true)?;
    Ok((without, with))
}
