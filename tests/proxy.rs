//! End-to-end tests of `fairlead proxy` with real sockets (privileged): client processes run
//! in a test cgroup inside a client network namespace; backends are servers in pod network
//! namespaces joined to the client's by veth pairs; the proxy binary reads a manifest
//! directory the tests edit, and pins its maps in a test bpffs directory.
//!
//! ```text
//!  client netns (test cgroup) ──veth── pod-0 (10.244.1.2, fd00:1::2)
//!                             ──veth── pod-1 (10.244.2.2, fd00:2::2)
//!                             ──veth── pod-2 (10.244.3.2, fd00:3::2)
//! ```
//!
//! Servers (tests/support/server.py) answer "<pod>:<port>"; clients (tests/support/client.py)
//! report what answered and what `getpeername`/`recvfrom` said the peer was.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fairlead_proxy::PinnedMaps;
use fairlead_proxy::abi::{AffinityKey, AffinityValue, maps};
use fairlead_proxy::status::render_contents;
use fairlead_proxy::tables::LbMaps as _;
use fairlead_proxy::testing::{KillOnDrop, TestCgroup, TestNetns, TestPinDir, privileged};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

struct Pod {
    _server: KillOnDrop,
    ns: TestNetns,
}

struct Cluster {
    manifests: tempfile::TempDir,
    cgroup: TestCgroup,
    pins: TestPinDir,
    client: TestNetns,
    pods: Vec<Pod>,
    proxy: Option<KillOnDrop>,
    proxy_args: Vec<String>,
    log: PathBuf,
}

impl Cluster {
    /// `pods` backends, each serving `ports` ("tcp:8080", "udp:5353").
    fn new(label: &str, pods: usize, ports: &[&str]) -> Self {
        let client = TestNetns::new("cl").expect("client netns");
        let mut out = Vec::new();
        for i in 0..pods {
            let ns = TestNetns::new("pod").expect("pod netns");
            let n = i + 1;
            client
                .link(
                    &[&format!("10.244.{n}.1/24"), &format!("fd00:{n}::1/64")],
                    &ns,
                    &[&format!("10.244.{n}.2/24"), &format!("fd00:{n}::2/64")],
                )
                .expect("veth");
            let mut child = ns
                .command("python3")
                .arg(support("server.py"))
                .arg(format!("pod-{i}"))
                .args(ports)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a backend");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("backend output");
            assert_eq!(line.trim(), "ready", "backend pod-{i} did not start");
            out.push(Pod {
                _server: KillOnDrop(child),
                ns,
            });
        }
        let manifests = tempfile::tempdir().expect("manifest dir");
        let log = manifests.path().join(".proxy.log");
        Self {
            manifests,
            cgroup: TestCgroup::new(label).expect("test cgroup"),
            pins: TestPinDir::new(label).expect("pin dir"),
            client,
            pods: out,
            proxy: None,
            proxy_args: Vec::new(),
            log,
        }
    }

    fn bpffs(&self) -> PathBuf {
        self.pins.path().join("maps")
    }

    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.path().join(file)).expect("rename manifest");
    }

    fn start_proxy(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fairlead"))
            .arg("proxy")
            .arg("--manifests")
            .arg(self.manifests.path())
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg("--bpffs")
            .arg(self.bpffs())
            .args([
                "--telemetry-addr",
                "127.0.0.1:0",
                "--lameduck",
                "0",
                "--node-name",
                "node-a",
            ])
            .args(&self.proxy_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fairlead proxy");
        self.proxy = Some(KillOnDrop(child));
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop_proxy(&mut self) {
        let mut proxy = self.proxy.take().expect("a running proxy");
        let pid = proxy.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = proxy.0.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "proxy exited with {status}: {}",
                    self.log_text()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not stop: {}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn rendered(&self) -> String {
        PinnedMaps::open(&self.bpffs())
            .ok()
            .and_then(|m| m.contents().ok())
            .map(|c| render_contents(&c))
            .unwrap_or_default()
    }

    /// Waits until `frontend` (e.g. `10.96.0.10:80/tcp`) is programmed with exactly these
    /// backends (`address:port`, any order).
    fn wait_backends(&self, frontend: &str, expected: &[String]) {
        let mut want: Vec<String> = expected.to_vec();
        want.sort();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.rendered();
            if backends_of(&text, frontend).as_deref() == Some(&want[..]) {
                return;
            }
            if let Some(proxy) = &self.proxy {
                let _ = proxy;
            }
            assert!(
                Instant::now() < deadline,
                "{frontend} never had backends {want:?}; maps:\n{text}\nproxy log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn client_command(&self, args: &[&str]) -> Command {
        let script = r#"echo $$ > "$1" && shift && exec ip netns exec "$@""#;
        let mut command = Command::new("sh");
        command
            .args(["-c", script, "client"])
            .arg(self.cgroup.procs_file())
            .arg(self.client.name())
            .arg("python3")
            .arg(support("client.py"))
            .args(args);
        command
    }

    /// Runs the client and returns its results.
    fn run(&self, mode: &str, host: &str, port: u16, n: usize) -> Vec<Value> {
        let out = run_with_timeout(
            self.client_command(&[mode, host, &port.to_string(), &n.to_string()]),
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "client output {stdout:?} ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        parsed.as_array().expect("a list").clone()
    }
}

fn run_with_timeout(mut command: Command, timeout: Duration) -> std::process::Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("collect output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("client hung for {timeout:?}");
        }
    }
}

/// Backends of `frontend` in `render_contents` output, sorted.
fn backends_of(text: &str, frontend: &str) -> Option<Vec<String>> {
    let mut lines = text.lines();
    lines.find(|l| l.starts_with(&format!("  {frontend}  ")))?;
    let mut out: Vec<String> = lines
        .take_while(|l| l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    out.sort();
    Some(out)
}

/// How many answers came from each backend ("pod-0:8080" → n); panics on errors.
fn tally(results: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in results {
        let backend = r["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("a failed attempt: {r}; all: {results:?}"));
        *out.entry(backend.to_owned()).or_default() += 1;
    }
    out
}

fn peers(results: &[Value]) -> Vec<String> {
    let mut p: Vec<String> = results
        .iter()
        .map(|r| r["peer"].as_str().unwrap_or("?").to_owned())
        .collect();
    p.dedup();
    p
}

fn pod_ip(i: usize) -> String {
    format!("10.244.{}.2", i + 1)
}

fn pod_ip6(i: usize) -> String {
    format!("fd00:{}::2", i + 1)
}

/// A Service manifest.
fn service(name: &str, vips: &[&str], ports: &str, extra: &str) -> String {
    let families: Vec<&str> = vips
        .iter()
        .map(|v| if v.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  clusterIP: \"{}\"\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {}\n  ports: {ports}\n{extra}",
        vips[0],
        vips.iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", "),
        families.join(", "),
        if vips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        },
    )
}

/// An EndpointSlice manifest; `endpoints` are YAML flow mappings.
fn slice(name: &str, service: &str, family: &str, ports: &str, endpoints: &[String]) -> String {
    let mut eps = String::new();
    for e in endpoints {
        let _ = writeln!(eps, "  - {e}");
    }
    if endpoints.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: t, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: {ports}\nendpoints:\n{eps}"
    )
}

fn ready(ip: &str) -> String {
    format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node-a}}")
}

fn docs(parts: &[String]) -> String {
    parts.join("\n---\n")
}

#[test]
fn tcp_udp_and_ipv6_reach_backends_and_show_the_vip() {
    if !privileged("proxy::tcp_udp_and_ipv6_reach_backends_and_show_the_vip") {
        return;
    }
    let mut c = Cluster::new("basic", 3, &["tcp:8080", "udp:5353"]);
    let v4: Vec<String> = (0..3).map(|i| ready(&pod_ip(i))).collect();
    let v6: Vec<String> = (0..3).map(|i| ready(&pod_ip6(i))).collect();
    c.write(
        "web.yaml",
        &docs(&[
            service(
                "web",
                &["10.96.0.10", "fd00:96::10"],
                "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]",
                "",
            ),
            slice("web-v4", "web", "IPv4", "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]", &v4),
            slice("web-v6", "web", "IPv6", "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]", &v6),
        ]),
    );
    c.start_proxy();
    let all = |port: u16, six: bool| -> Vec<String> {
        (0..3)
            .map(|i| {
                if six {
                    format!("[{}]:{port}", pod_ip6(i))
                } else {
                    format!("{}:{port}", pod_ip(i))
                }
            })
            .collect()
    };
    c.wait_backends("10.96.0.10:80/tcp", &all(8080, false));
    c.wait_backends("10.96.0.10:53/udp", &all(5353, false));
    c.wait_backends("[fd00:96::10]:80/tcp", &all(8080, true));
    c.wait_backends("[fd00:96::10]:53/udp", &all(5353, true));

    // 300 TCP connections: every backend gets at least 60 (expected 100 each; a binomial
    // (300, 1/3) count falls below 60 with probability < 1e-6), and every connection's
    // getpeername() is the VIP, not the backend.
    let results = c.run("tcp", "10.96.0.10", 80, 300);
    let counts = tally(&results);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (backend, n) in &counts {
        assert!(*n >= 60, "{backend} got {n} of 300: {counts:?}");
    }
    assert_eq!(peers(&results), ["10.96.0.10:80"]);

    // Unconnected UDP: replies come from the VIP (recvmsg), from real backends.
    let results = c.run("udp", "10.96.0.10", 53, 20);
    assert!(
        tally(&results)
            .keys()
            .all(|b| b.starts_with("pod-") && b.ends_with(":5353"))
    );
    assert_eq!(peers(&results), ["10.96.0.10:53"]);
    // Connected UDP: the peer is the VIP too.
    let results = c.run("cudp", "10.96.0.10", 53, 10);
    assert_eq!(tally(&results).values().sum::<usize>(), 10);
    assert_eq!(peers(&results), ["10.96.0.10:53"]);

    // IPv6 ClusterIP, TCP and UDP.
    let results = c.run("tcp", "fd00:96::10", 80, 30);
    assert!(tally(&results).len() >= 2, "{results:?}");
    assert_eq!(peers(&results), ["fd00:96::10:80"]);
    let results = c.run("udp", "fd00:96::10", 53, 10);
    assert_eq!(tally(&results).values().sum::<usize>(), 10);
    assert_eq!(peers(&results), ["fd00:96::10:53"]);

    // The status command reads the same maps.
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["status", "--json", "--bpffs"])
        .arg(c.bpffs())
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let hits = status["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .find(|c| c["reason"] == "service_hit")
        .and_then(|c| c["count"].as_u64())
        .expect("service_hit");
    assert!(hits >= 370, "service_hit {hits}");
    assert_eq!(status["services"].as_array().map(Vec::len), Some(4));
}
