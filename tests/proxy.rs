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

#[path = "support/ports.rs"]
mod ports;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fairlead_proxy::PinnedMaps;
use fairlead_proxy::abi::{AffinityKey, AffinityValue, Reason, maps};
use fairlead_proxy::status::render_contents;
use fairlead_proxy::tables::LbMaps as _;
use fairlead_proxy::testing::{
    KillOnDrop, TestCgroup, TestNetns, TestPinDir, privileged, run_with_timeout,
};
use ports::free_port;
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
                // These tests run in the host's network namespace: no TC programs on its
                // interfaces (tests/nodeport.rs covers them in namespaces of its own).
                "--interfaces",
                "none",
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

    /// SIGKILL: no chance to clean anything up.
    fn kill_proxy(&mut self) {
        let mut proxy = self.proxy.take().expect("a running proxy");
        proxy.0.kill().expect("kill");
        proxy.0.wait().expect("wait");
    }

    /// Waits until the log says the programs were installed `n` times (once per start).
    fn wait_installed(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self
            .log_text()
            .matches("socket load balancer installed")
            .count()
            < n
            || self.log_text().matches("maps synced").count() < n
        {
            assert!(
                Instant::now() < deadline,
                "start {n} not done: {}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The programs attached to the test cgroup, as (attach type, program name), sorted.
    fn hooks(&self) -> Vec<(String, String)> {
        cgroup_hooks(self.cgroup.path())
    }

    /// The link pins under `<bpffs>/links`, sorted.
    fn link_pins(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.bpffs().join("links"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
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

/// The programs attached directly to `cgroup` (`bpftool cgroup show`), as (attach type,
/// program name), sorted.
fn cgroup_hooks(cgroup: &Path) -> Vec<(String, String)> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(text.trim()).expect("bpftool JSON");
    let mut hooks: Vec<(String, String)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or("?").to_owned(),
                p["name"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    hooks.sort();
    hooks
}

/// `text` without terminal escape sequences (the log colours field names).
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The ten cgroup hooks (eight socket hooks, two bind guards), each running its fairlead
/// program once.
fn one_program_per_hook(hooks: &[(String, String)]) {
    let mut names: Vec<&str> = hooks.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        fairlead_proxy::abi::programs::CGROUP,
        "hooks: {hooks:?}"
    );
    let mut types: Vec<&str> = hooks.iter().map(|(t, _)| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), 10, "a hook runs two programs: {hooks:?}");
}

/// A client process with a line-based stdin protocol, its stdout read line by line.
struct Background {
    child: KillOnDrop,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Background {
    fn start(mut command: Command) -> Self {
        let mut child = KillOnDrop(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("background client"),
        );
        let lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    fn next(&mut self) -> Value {
        let line = self.lines.next().expect("a line").expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Tells the client to stop and returns its final report.
    fn finish(mut self) -> Value {
        writeln!(self.child.0.stdin.as_mut().expect("stdin"), "stop").expect("stop");
        self.next()
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

#[test]
fn endpoint_changes_ports_and_named_target_ports() {
    if !privileged("proxy::endpoint_changes_ports_and_named_target_ports") {
        return;
    }
    let mut c = Cluster::new("changes", 3, &["tcp:8080", "tcp:9090"]);
    let web = |pods: &[usize], port: u16| {
        docs(&[
            service(
                "web",
                &["10.96.0.20"],
                "[{name: http, port: 80, targetPort: http}]",
                "",
            ),
            slice(
                "web-1",
                "web",
                "IPv4",
                &format!("[{{name: http, port: {port}}}]"),
                &pods.iter().map(|i| ready(&pod_ip(*i))).collect::<Vec<_>>(),
            ),
        ])
    };
    // Multi-port with a named targetPort that differs per endpoint: pod-0 names it 8080,
    // pod-1 (another slice) 9090.
    let named = docs(&[
        service(
            "multi",
            &["10.96.0.21"],
            "[{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: admin}]",
            "",
        ),
        slice(
            "multi-a",
            "multi",
            "IPv4",
            "[{name: http, port: 8080}, {name: admin, port: 9090}]",
            &[ready(&pod_ip(0))],
        ),
        slice(
            "multi-b",
            "multi",
            "IPv4",
            "[{name: http, port: 9090}, {name: admin, port: 8080}]",
            &[ready(&pod_ip(1))],
        ),
    ]);
    c.write("web.yaml", &web(&[0, 1, 2], 8080));
    c.write("multi.yaml", &named);
    c.start_proxy();
    let addrs = |pods: &[usize], port: u16| -> Vec<String> {
        pods.iter()
            .map(|i| format!("{}:{port}", pod_ip(*i)))
            .collect()
    };
    c.wait_backends("10.96.0.20:80/tcp", &addrs(&[0, 1, 2], 8080));
    c.wait_backends(
        "10.96.0.21:80/tcp",
        &[format!("{}:8080", pod_ip(0)), format!("{}:9090", pod_ip(1))],
    );
    c.wait_backends(
        "10.96.0.21:81/tcp",
        &[format!("{}:9090", pod_ip(0)), format!("{}:8080", pod_ip(1))],
    );

    let counts = tally(&c.run("tcp", "10.96.0.21", 80, 40));
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["pod-0:8080", "pod-1:9090"],
        "{counts:?}"
    );
    let counts = tally(&c.run("tcp", "10.96.0.21", 81, 40));
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["pod-0:9090", "pod-1:8080"],
        "{counts:?}"
    );

    // Endpoint removed: no new connection reaches it.
    c.write("web.yaml", &web(&[0, 1], 8080));
    c.wait_backends("10.96.0.20:80/tcp", &addrs(&[0, 1], 8080));
    let counts = tally(&c.run("tcp", "10.96.0.20", 80, 60));
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["pod-0:8080", "pod-1:8080"],
        "{counts:?}"
    );

    // Endpoint added: it starts receiving (60 tries miss it with probability (2/3)^60).
    c.write("web.yaml", &web(&[0, 1, 2], 8080));
    c.wait_backends("10.96.0.20:80/tcp", &addrs(&[0, 1, 2], 8080));
    let counts = tally(&c.run("tcp", "10.96.0.20", 80, 60));
    assert!(counts.contains_key("pod-2:8080"), "{counts:?}");

    // Port change: every connection goes to the new port.
    c.write("web.yaml", &web(&[0, 1, 2], 9090));
    c.wait_backends("10.96.0.20:80/tcp", &addrs(&[0, 1, 2], 9090));
    let counts = tally(&c.run("tcp", "10.96.0.20", 80, 30));
    assert!(counts.keys().all(|b| b.ends_with(":9090")), "{counts:?}");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario per Service, listed together"
)]
fn readiness_terminating_local_policy_and_refusals() {
    if !privileged("proxy::readiness_terminating_local_policy_and_refusals") {
        return;
    }
    let mut c = Cluster::new("ready", 2, &["tcp:8080"]);
    let port = "[{port: 80, targetPort: 8080}]";
    let sport = "[{port: 8080}]";
    let ep = |i: usize, conditions: &str, node: &str| {
        format!(
            "{{addresses: [\"{}\"], conditions: {conditions}, nodeName: {node}}}",
            pod_ip(i)
        )
    };
    c.write(
        "svc.yaml",
        &docs(&[
            // pod-1 is not ready: never used.
            service("mixed", &["10.96.0.30"], port, ""),
            slice(
                "mixed-1",
                "mixed",
                "IPv4",
                sport,
                &[
                    ep(0, "{ready: true}", "node-a"),
                    ep(1, "{ready: false, serving: false}", "node-a"),
                ],
            ),
            // No ready endpoint: the terminating one that serves is used, the one that does
            // not serve is not.
            service("draining", &["10.96.0.31"], port, ""),
            slice(
                "draining-1",
                "draining",
                "IPv4",
                sport,
                &[
                    ep(
                        0,
                        "{ready: false, serving: true, terminating: true}",
                        "node-a",
                    ),
                    ep(
                        1,
                        "{ready: false, serving: false, terminating: true}",
                        "node-a",
                    ),
                ],
            ),
            // internalTrafficPolicy Local: only this node's (node-a) endpoint.
            service(
                "local",
                &["10.96.0.32"],
                port,
                "  internalTrafficPolicy: Local\n",
            ),
            slice(
                "local-1",
                "local",
                "IPv4",
                sport,
                &[
                    ep(0, "{ready: true}", "node-b"),
                    ep(1, "{ready: true}", "node-a"),
                ],
            ),
            // Local without a local endpoint: refused.
            service(
                "remote",
                &["10.96.0.33"],
                port,
                "  internalTrafficPolicy: Local\n",
            ),
            slice(
                "remote-1",
                "remote",
                "IPv4",
                sport,
                &[ep(0, "{ready: true}", "node-b")],
            ),
            // No endpoint at all: refused.
            service("empty", &["10.96.0.34"], port, ""),
            // Only a not-ready endpoint: refused.
            service("unready", &["10.96.0.35"], port, ""),
            slice(
                "unready-1",
                "unready",
                "IPv4",
                sport,
                &[ep(0, "{ready: false, serving: false}", "node-a")],
            ),
        ]),
    );
    c.start_proxy();
    c.wait_backends("10.96.0.30:80/tcp", &[format!("{}:8080", pod_ip(0))]);
    c.wait_backends("10.96.0.31:80/tcp", &[format!("{}:8080", pod_ip(0))]);
    c.wait_backends("10.96.0.32:80/tcp", &[format!("{}:8080", pod_ip(1))]);
    c.wait_backends("10.96.0.33:80/tcp", &[]);
    c.wait_backends("10.96.0.34:80/tcp", &[]);
    c.wait_backends("10.96.0.35:80/tcp", &[]);

    assert_eq!(
        tally(&c.run("tcp", "10.96.0.30", 80, 20))
            .keys()
            .collect::<Vec<_>>(),
        ["pod-0:8080"]
    );
    assert_eq!(
        tally(&c.run("tcp", "10.96.0.31", 80, 20))
            .keys()
            .collect::<Vec<_>>(),
        ["pod-0:8080"]
    );
    assert_eq!(
        tally(&c.run("tcp", "10.96.0.32", 80, 20))
            .keys()
            .collect::<Vec<_>>(),
        ["pod-1:8080"]
    );

    // Refusals: ECONNREFUSED (111) at once, TCP and UDP alike.
    for vip in ["10.96.0.33", "10.96.0.34", "10.96.0.35"] {
        for r in c.run("tcp", vip, 80, 5) {
            assert_eq!(r["errno"], 111, "{vip}: {r}");
            let ms = r["ms"].as_f64().expect("ms");
            assert!(ms < 100.0, "{vip}: refused after {ms} ms");
        }
    }
    let pinned = PinnedMaps::open(&c.bpffs()).expect("pins");
    let counters = pinned.counters().expect("counters");
    assert_eq!(counters.get(Reason::NoLocalBackendReject), 5);
    assert_eq!(counters.get(Reason::NoBackendReject), 10);
}

#[test]
fn session_affinity_sticks_until_the_timeout() {
    if !privileged("proxy::session_affinity_sticks_until_the_timeout") {
        return;
    }
    let mut c = Cluster::new("affinity", 3, &["tcp:8080"]);
    c.write(
        "svc.yaml",
        &docs(&[
            service(
                "sticky",
                &["10.96.0.40"],
                "[{port: 80, targetPort: 8080}]",
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
            ),
            slice("sticky-1", "sticky", "IPv4", "[{port: 8080}]", &(0..3).map(|i| ready(&pod_ip(i))).collect::<Vec<_>>()),
        ]),
    );
    c.start_proxy();
    c.wait_backends(
        "10.96.0.40:80/tcp",
        &(0..3)
            .map(|i| format!("{}:8080", pod_ip(i)))
            .collect::<Vec<_>>(),
    );
    // All connections of one client (its network namespace) go to one backend.
    let counts = tally(&c.run("tcp", "10.96.0.40", 80, 40));
    assert_eq!(counts.len(), 1, "{counts:?}");

    // After the timeout the client is balanced again. Waiting 30 s thirty times is too long
    // for a test, so age the client's entry instead (last use at second 1 of the clock),
    // then connect; thirty such rounds spread over all three backends (a backend is missed
    // with probability 3 × (2/3)^30 < 2e-5). Without the timeout check they would all stick.
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        age_affinity_entries(&c.bpffs());
        for (backend, n) in tally(&c.run("tcp", "10.96.0.40", 80, 1)) {
            *seen.entry(backend).or_insert(0) += n;
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Sets every affinity entry's last use to second 1 of the monotonic clock.
fn age_affinity_entries(bpffs: &Path) {
    let data = aya::maps::MapData::from_pin(bpffs.join(maps::AFFINITY)).expect("affinity map");
    let mut map: aya::maps::HashMap<_, AffinityKey, AffinityValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("hash map");
    let entries: Vec<(AffinityKey, AffinityValue)> =
        map.iter().map(|e| e.expect("entry")).collect();
    assert!(!entries.is_empty(), "no affinity entry to age");
    for (key, value) in entries {
        map.insert(key, AffinityValue::new(value.backend_id, 1), 0)
            .expect("age entry");
    }
}

#[test]
fn restart_keeps_established_connections_and_keeps_balancing() {
    if !privileged("proxy::restart_keeps_established_connections_and_keeps_balancing") {
        return;
    }
    let mut c = Cluster::new("restart", 3, &["tcp:8080"]);
    let all: Vec<String> = (0..3).map(|i| format!("{}:8080", pod_ip(i))).collect();
    c.write(
        "svc.yaml",
        &docs(&[
            service("web", &["10.96.0.50"], "[{port: 80, targetPort: 8080}]", ""),
            slice(
                "web-1",
                "web",
                "IPv4",
                "[{port: 8080}]",
                &(0..3).map(|i| ready(&pod_ip(i))).collect::<Vec<_>>(),
            ),
        ]),
    );
    c.start_proxy();
    c.wait_backends("10.96.0.50:80/tcp", &all);
    let before = c.rendered();

    // One long-lived connection through the VIP.
    let mut hold = c.client_command(&["hold", "10.96.0.50", "80", "1"]);
    let mut hold = KillOnDrop(
        hold.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hold client"),
    );
    let mut lines = BufReader::new(hold.0.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("greeting").expect("read")).expect("json");
    let backend = first["backend"]
        .as_str()
        .expect("backend")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(first["peer"], "10.96.0.50:80");

    c.stop_proxy();
    c.start_proxy();
    // The restarted proxy adopted the pinned maps and rewrote nothing.
    let deadline = Instant::now() + TIMEOUT;
    while !c
        .log_text()
        .contains("adopted the pinned load-balancer tables")
        || c.log_text().matches("maps synced").nth(1).is_none()
    {
        assert!(Instant::now() < deadline, "{}", c.log_text());
        thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        c.rendered(),
        before,
        "ids or slots changed across the restart"
    );

    // The established connection still works, with the same backend.
    let stdin = hold.0.stdin.as_mut().expect("stdin");
    writeln!(stdin, "ping").expect("ping");
    let answer: Value =
        serde_json::from_str(&lines.next().expect("answer").expect("read")).expect("json");
    assert_eq!(answer["answer"], format!("pong:{backend}"));

    // New connections still balance over all three.
    let counts = tally(&c.run("tcp", "10.96.0.50", 80, 60));
    assert_eq!(counts.len(), 3, "{counts:?}");
}

#[test]
fn five_thousand_endpoints_and_a_full_map() {
    if !privileged("proxy::five_thousand_endpoints_and_a_full_map") {
        return;
    }
    let mut c = Cluster::new("big", 1, &["tcp:8080"]);
    // pod-0 answers on every address of 10.250.0.0/16 (a local route), so a Service can have
    // 5,000 distinct endpoints that all reach it.
    c.pods[0]
        .ns
        .ip(&["route", "add", "local", "10.250.0.0/16", "dev", "lo"])
        .expect("local route");
    c.client
        .ip(&["route", "add", "10.250.0.0/16", "via", &pod_ip(0)])
        .expect("route");
    let many = |n: usize, third: usize| -> Vec<String> {
        (0..n)
            .map(|i| ready(&format!("10.250.{}.{}", third + i / 250, i % 250 + 1)))
            .collect()
    };
    c.write(
        "big.yaml",
        &docs(&[
            service(
                "a-big",
                &["10.96.0.60"],
                "[{port: 80, targetPort: 8080}]",
                "",
            ),
            slice("a-big-1", "a-big", "IPv4", "[{port: 8080}]", &many(5000, 0)),
            // Does not fit in --map-backends 6000 next to a-big.
            service(
                "b-bigger",
                &["10.96.0.61"],
                "[{port: 80, targetPort: 8080}]",
                "",
            ),
            slice(
                "b-bigger-1",
                "b-bigger",
                "IPv4",
                "[{port: 8080}]",
                &many(5000, 100),
            ),
            service(
                "c-small",
                &["10.96.0.62"],
                "[{port: 80, targetPort: 8080}]",
                "",
            ),
            slice(
                "c-small-1",
                "c-small",
                "IPv4",
                "[{port: 8080}]",
                &[ready(&pod_ip(0))],
            ),
        ]),
    );
    c.proxy_args = vec!["--map-backends".into(), "6000".into()];
    c.start_proxy();
    c.wait_backends("10.96.0.62:80/tcp", &[format!("{}:8080", pod_ip(0))]);
    let text = c.rendered();
    assert!(
        text.contains("10.96.0.60:80/tcp  rev-nat 1  backends 5000"),
        "{text}"
    );
    assert!(!text.contains("10.96.0.61"), "{text}");
    let log = c.log_text();
    assert!(
        log.contains("t/b-bigger") && log.contains("fl_lb4_backends is full"),
        "no clear error for the service that does not fit:\n{log}"
    );
    // The 5,000-endpoint Service works; so does the small one; the proxy is still running.
    let counts = tally(&c.run("tcp", "10.96.0.60", 80, 20));
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["pod-0:8080"]);
    let counts = tally(&c.run("tcp", "10.96.0.62", 80, 5));
    assert_eq!(counts.values().sum::<usize>(), 5);
    assert!(
        c.proxy
            .as_mut()
            .expect("proxy")
            .0
            .try_wait()
            .expect("wait")
            .is_none(),
        "proxy died"
    );
}

/// Issue 21: the reverse NAT of a socket lives with the socket. A long-lived unconnected UDP
/// socket sends to a ClusterIP; then 200,000 other sockets connect to it (connected UDP,
/// and one TCP connection in a hundred) and close; the first socket still reads its answer
/// from the Service address. (With an LRU map of 65,536 entries keyed by socket cookie, the
/// closed sockets' entries filled it and evicted the first socket's.) Its table, read from
/// the pinned map with the socket as key, holds the one backend → Service slot; every
/// sampled churned socket had a table while open. There is no map left that grows with the
/// number of connections: socket-local storage has no size, and the kernel frees a
/// socket's table with the socket.
#[test]
fn reverse_nat_lives_and_dies_with_its_socket() {
    const CONNECTIONS: usize = 200_000;
    if !privileged("proxy::reverse_nat_lives_and_dies_with_its_socket") {
        return;
    }
    let mut c = Cluster::new("sknat", 1, &["udp:5353", "tcp:8080"]);
    c.write(
        "dns.yaml",
        &docs(&[
            service(
                "dns",
                &["10.96.0.80"],
                "[{name: dns, port: 53, protocol: UDP, targetPort: 5353}, {name: web, port: 80, targetPort: 8080}]",
                "",
            ),
            slice(
                "dns-1",
                "dns",
                "IPv4",
                "[{name: dns, port: 5353, protocol: UDP}, {name: web, port: 8080}]",
                &[ready(&pod_ip(0))],
            ),
        ]),
    );
    c.start_proxy();
    c.wait_backends("10.96.0.80:53/udp", &[format!("{}:5353", pod_ip(0))]);
    c.wait_backends("10.96.0.80:80/tcp", &[format!("{}:8080", pod_ip(0))]);
    // In the test cgroup, but not through `ip netns exec`: the client reads the pinned map,
    // then enters the client netns itself.
    let mut churn = Command::new("sh");
    churn
        .args([
            "-c",
            r#"echo $$ > "$1" && shift && exec python3 "$@""#,
            "client",
        ])
        .arg(c.cgroup.procs_file())
        .arg(support("client.py"))
        .args(["churn", "10.96.0.80", "53", &CONNECTIONS.to_string(), "80"])
        .arg(c.bpffs().join(maps::SOCK_REV_NAT4))
        .arg(c.client.path());
    let out = run_with_timeout(churn, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("churn: {result}");
    assert_eq!(result["backend"], "pod-0:5353", "{result}");
    assert_eq!(
        result["peer"], "10.96.0.80:53",
        "the long-lived socket lost its reverse NAT: {result}"
    );
    assert_eq!(
        result["held"],
        serde_json::json!([format!("{}:5353 -> 10.96.0.80:53", pod_ip(0))]),
        "{result}"
    );
    assert_eq!(result["sampled"], CONNECTIONS.div_ceil(1000), "{result}");
    // Nothing sized by connections: the per-socket maps are socket-local storage (no
    // entries to count, no size), and the LRU maps of older versions are not there.
    let pinned = PinnedMaps::open(&c.bpffs()).expect("pinned maps");
    for name in [maps::SOCK_REV_NAT4, maps::SOCK_REV_NAT6] {
        let info = pinned.map_info(name).expect("map info");
        assert_eq!(info.max_entries(), 0, "{name}");
        assert_eq!(
            info.map_type().map(|t| format!("{t:?}")).ok().as_deref(),
            Some("SkStorage"),
            "{name}"
        );
    }
    for retired in maps::RETIRED {
        assert!(!c.bpffs().join(retired).exists(), "{retired}");
    }
    let counters = pinned.counters().expect("counters");
    assert_eq!(counters.get(Reason::RevNatUpdateFailed), 0, "{counters:?}");
}

#[test]
fn connected_udp_socket_to_a_removed_backend_is_destroyed() {
    if !privileged("proxy::connected_udp_socket_to_a_removed_backend_is_destroyed") {
        return;
    }
    let mut c = Cluster::new("stale", 3, &["udp:5353"]);
    let dns = |pods: &[usize]| {
        docs(&[
            service(
                "dns",
                &["10.96.0.70"],
                "[{port: 53, protocol: UDP, targetPort: 5353}]",
                "",
            ),
            slice(
                "dns-1",
                "dns",
                "IPv4",
                "[{port: 5353, protocol: UDP}]",
                &pods.iter().map(|i| ready(&pod_ip(*i))).collect::<Vec<_>>(),
            ),
        ])
    };
    c.write("dns.yaml", &dns(&[0, 1, 2]));
    c.start_proxy();
    c.wait_backends(
        "10.96.0.70:53/udp",
        &(0..3)
            .map(|i| format!("{}:5353", pod_ip(i)))
            .collect::<Vec<_>>(),
    );
    let mut hold = KillOnDrop(
        c.client_command(&["cudp-hold", "10.96.0.70", "53", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("client"),
    );
    let mut lines = BufReader::new(hold.0.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json")
    };
    let first = next();
    assert_eq!(first["peer"], "10.96.0.70:53");
    let pod: usize = first["backend"].as_str().expect("backend")[4..5]
        .parse()
        .expect("pod index");

    // The backend leaves the Service (its pod still runs, so a socket left alone would
    // still get answers from it).
    let rest: Vec<usize> = (0..3).filter(|i| *i != pod).collect();
    c.write("dns.yaml", &dns(&rest));
    c.wait_backends(
        "10.96.0.70:53/udp",
        &rest
            .iter()
            .map(|i| format!("{}:5353", pod_ip(*i)))
            .collect::<Vec<_>>(),
    );
    // The socket is destroyed shortly after the sync: the kernel aborts it (the pending
    // error is ECONNABORTED, 103) and disconnects it, so its next send fails with
    // EDESTADDRREQ (89) or ECONNABORTED.
    let deadline = Instant::now() + TIMEOUT;
    let stdin = hold.0.stdin.as_mut().expect("stdin");
    loop {
        writeln!(stdin, "again").expect("write");
        let answer = next();
        if answer["errno"] == 103 || answer["errno"] == 89 {
            break;
        }
        assert_eq!(answer["backend"], format!("pod-{pod}:5353"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "the stale socket still talks to pod-{pod}: {}",
            c.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // A new socket goes to a remaining backend.
    let counts = tally(&c.run("cudp", "10.96.0.70", 53, 10));
    assert!(
        !counts.contains_key(&format!("pod-{pod}:5353")),
        "{counts:?}"
    );
}

/// The socket load balancer keeps translating while `fairlead proxy` is killed (SIGKILL),
/// stopped (SIGTERM) and restarted three times: not one connect of a client looping on a
/// ClusterIP fails or goes untranslated, a TCP stream through the ClusterIP loses no byte,
/// and each hook still runs exactly one program (restarts take the pinned links over in
/// place, nothing accumulates).
#[test]
fn restarts_keep_serving_without_gaps_or_duplicate_hooks() {
    if !privileged("proxy::restarts_keep_serving_without_gaps_or_duplicate_hooks") {
        return;
    }
    let mut c = Cluster::new("gapless", 2, &["tcp:8080", "echo:9000"]);
    let endpoints: Vec<String> = (0..2).map(|i| ready(&pod_ip(i))).collect();
    c.write(
        "svc.yaml",
        &docs(&[
            service(
                "web",
                &["10.96.0.60"],
                "[{name: http, port: 80, targetPort: 8080}, {name: echo, port: 90, targetPort: 9000}]",
                "",
            ),
            slice(
                "web-1",
                "web",
                "IPv4",
                "[{name: http, port: 8080}, {name: echo, port: 9000}]",
                &endpoints,
            ),
        ]),
    );
    c.start_proxy();
    c.wait_backends(
        "10.96.0.60:80/tcp",
        &(0..2)
            .map(|i| format!("{}:8080", pod_ip(i)))
            .collect::<Vec<_>>(),
    );
    c.wait_installed(1);
    one_program_per_hook(&c.hooks());
    let pins = c.link_pins();
    assert_eq!(
        pins.len(),
        fairlead_proxy::abi::programs::CGROUP.len(),
        "{pins:?}"
    );

    let mut stream = Background::start(c.client_command(&["stream", "10.96.0.60", "90", "120"]));
    assert_eq!(stream.next()["connected"], "10.96.0.60:90");
    let mut looping = Background::start(c.client_command(&["tcp-loop", "10.96.0.60", "80", "120"]));
    assert_eq!(looping.next()["started"], true);

    for (round, how) in ["kill", "term", "kill"].into_iter().enumerate() {
        match how {
            "kill" => c.kill_proxy(),
            _ => c.stop_proxy(),
        }
        // No agent: new connects are still balanced over both backends.
        let results = c.run("tcp", "10.96.0.60", 80, 20);
        let counts = tally(&results);
        assert_eq!(
            counts.values().sum::<usize>(),
            20,
            "after {how}: {counts:?}"
        );
        assert_eq!(peers(&results), ["10.96.0.60:80"], "after {how}");
        assert_eq!(
            c.hooks().len(),
            fairlead_proxy::abi::programs::CGROUP.len(),
            "after {how}: {:?}",
            c.hooks()
        );

        c.start_proxy();
        c.wait_installed(round + 2);
        // The restarted agent updated the eight pinned links in place.
        let log = c.log_text();
        let last = strip_ansi(
            log.lines()
                .rfind(|l| l.contains("socket load balancer installed"))
                .unwrap_or_default(),
        );
        assert!(
            last.contains(&format!(
                "updated={}",
                fairlead_proxy::abi::programs::CGROUP.len()
            )) && last.contains("attached=0"),
            "{last}"
        );
        one_program_per_hook(&c.hooks());
        assert_eq!(c.link_pins(), pins, "round {round}");
    }

    let report = looping.finish();
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    let ok = report["ok"].as_u64().expect("ok");
    assert!(ok >= 20, "{report}");
    let backends = report["backends"].as_object().expect("backends");
    assert_eq!(backends.len(), 2, "{report}");

    let report = stream.finish();
    assert_eq!(report["error"], Value::Null, "{report}");
    assert!(report["bytes"].as_u64().expect("bytes") > 0, "{report}");
}

/// `fairlead proxy --cleanup` detaches every program and removes every pin; after a plain
/// SIGTERM everything stays.
#[test]
fn cleanup_removes_links_and_maps() {
    if !privileged("proxy::cleanup_removes_links_and_maps") {
        return;
    }
    let mut c = Cluster::new("cleanup", 1, &["tcp:8080"]);
    c.write(
        "svc.yaml",
        &docs(&[
            service("web", &["10.96.0.70"], "[{port: 80, targetPort: 8080}]", ""),
            slice(
                "web-1",
                "web",
                "IPv4",
                "[{port: 8080}]",
                &[ready(&pod_ip(0))],
            ),
        ]),
    );
    c.start_proxy();
    c.wait_backends("10.96.0.70:80/tcp", &[format!("{}:8080", pod_ip(0))]);
    c.wait_installed(1);
    c.stop_proxy();
    one_program_per_hook(&c.hooks());
    assert_eq!(
        tally(&c.run("tcp", "10.96.0.70", 80, 3))
            .values()
            .sum::<usize>(),
        3
    );

    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["proxy", "--cleanup", "--bpffs"])
        .arg(c.bpffs())
        .output()
        .expect("cleanup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "removed {} link(s) and {} map(s)",
            fairlead_proxy::abi::programs::CGROUP.len(),
            maps::ALL.len()
        )),
        "{stderr}"
    );
    assert_eq!(c.hooks(), Vec::<(String, String)>::new());
    assert!(
        !c.bpffs().exists(),
        "{} is still there",
        c.bpffs().display()
    );
    // Untranslated now: the VIP is nowhere routed.
    let results = c.run("tcp", "10.96.0.70", 80, 1);
    assert!(results[0]["errno"].as_u64().is_some(), "{results:?}");
    // Idempotent.
    let again = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["proxy", "--cleanup", "--bpffs"])
        .arg(c.bpffs())
        .output()
        .expect("cleanup");
    assert!(again.status.success());
}

/// `curl -i` of `http://127.0.0.1:<port>/`: (status, headers lower-cased, JSON body), or
/// `None` when nothing answers.
fn health_check(port: u16) -> Option<(u16, BTreeMap<String, String>, Value)> {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((
        status,
        headers,
        serde_json::from_str(body).expect("JSON body"),
    ))
}

fn wait_health(
    port: u16,
    want: Option<u16>,
    log: &dyn Fn() -> String,
) -> Option<(u16, BTreeMap<String, String>, Value)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = health_check(port);
        if got.as_ref().map(|g| g.0) == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "port {port}: wanted {want:?}, got {got:?}; log:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// The healthCheckNodePort server of an `externalTrafficPolicy: Local` Service answers 503
/// without a ready endpoint on this node and 200 with one, with kube-proxy's body and
/// headers; it follows port changes and goes away with the Service.
#[test]
fn health_check_node_port_follows_local_endpoints() {
    if !privileged("proxy::health_check_node_port_follows_local_endpoints") {
        return;
    }
    let mut c = Cluster::new("hcnp", 0, &[]);
    c.proxy_args = vec!["--health-check-address".into(), "127.0.0.1".into()];
    let port = free_port();
    let lb = |hcnp: u16| {
        service(
            "lb",
            &["10.96.0.80"],
            "[{port: 80, targetPort: 8080, nodePort: 30080}]",
            &format!(
                "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {hcnp}\n"
            ),
        )
    };
    let endpoint = |ip: &str, node: &str, ready: bool| {
        format!("{{addresses: [\"{ip}\"], conditions: {{ready: {ready}}}, nodeName: {node}}}")
    };
    c.write(
        "lb.yaml",
        &docs(&[
            lb(port),
            slice(
                "lb-1",
                "lb",
                "IPv4",
                "[{port: 8080}]",
                &[
                    endpoint("10.244.9.2", "node-b", true),
                    endpoint("10.244.9.3", "node-a", false),
                ],
            ),
        ]),
    );
    c.start_proxy();
    let log = || c.log_text();
    let (_, headers, body) = wait_health(port, Some(503), &log).expect("an answer");
    assert_eq!(
        body,
        serde_json::json!({
            "service": {"namespace": "t", "name": "lb"},
            "localEndpoints": 0,
            "serviceProxyHealthy": true
        })
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-load-balancing-endpoint-weight"], "0");

    // A ready endpoint on this node (node-a): 200.
    c.write(
        "lb.yaml",
        &docs(&[
            lb(port),
            slice(
                "lb-1",
                "lb",
                "IPv4",
                "[{port: 8080}]",
                &[
                    endpoint("10.244.9.2", "node-b", true),
                    endpoint("10.244.9.3", "node-a", true),
                ],
            ),
        ]),
    );
    let (_, headers, body) = wait_health(port, Some(200), &log).expect("an answer");
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(headers["x-load-balancing-endpoint-weight"], "1");

    // Another port: the old one closes, the new one answers.
    let moved = free_port();
    c.write(
        "lb.yaml",
        &docs(&[
            lb(moved),
            slice(
                "lb-1",
                "lb",
                "IPv4",
                "[{port: 8080}]",
                &[endpoint("10.244.9.3", "node-a", true)],
            ),
        ]),
    );
    wait_health(moved, Some(200), &log);
    wait_health(port, None, &log);

    // The Service goes: so does its server.
    std::fs::remove_file(c.manifests.path().join("lb.yaml")).expect("remove manifest");
    wait_health(moved, None, &log);
    assert!(c.log_text().contains("health check server stopped"));
}
