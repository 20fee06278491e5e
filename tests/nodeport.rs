//! End-to-end tests of the per-packet path of `fairlead proxy` (NodePort, LoadBalancer IPs,
//! external IPs) in a two-node topology of network namespaces (privileged):
//!
//! ```text
//!  ext (192.168.50.2, .3) ──── node1 (192.168.50.1; fairlead proxy runs here)
//!                                │  172.18.0.1            ├── pod-a 10.244.1.2 (node-1)
//!                                │                        └── pod-b 10.244.1.3 (node-1)
//!                              node2 (172.18.0.2) ──────────── pod-c 10.244.2.2 (node-2)
//! ```
//!
//! node2 has no route to ext: a reply from pod-c reaches the client only if node1 translated
//! the flow's source to its own address (172.18.0.1, its InternalIP) and translates back.
//! The backends (tests/support/nodeport_server.py) greet each client with the address they
//! see, and echo.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fairlead_proxy::PinnedMaps;
use fairlead_proxy::abi::Reason;
use fairlead_proxy::status::render_contents;
use fairlead_proxy::tables::LbMaps as _;
use fairlead_proxy::testing::{
    KillOnDrop, TestCgroup, TestNetns, TestPinDir, privileged, run_with_timeout,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(15);
const NODE: &str = "192.168.50.1";

fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

struct Pod {
    _server: KillOnDrop,
    ns: TestNetns,
}

struct Topology {
    manifests: tempfile::TempDir,
    cgroup: TestCgroup,
    pins: TestPinDir,
    ext: TestNetns,
    node1: TestNetns,
    node2: TestNetns,
    pods: Vec<Pod>,
    interfaces: Vec<String>,
    /// `--xdp` for the proxy, if not off.
    xdp: Option<&'static str>,
    proxy: Option<KillOnDrop>,
    log: PathBuf,
}

fn start_server(ns: &TestNetns, name: &str) -> KillOnDrop {
    let mut child = ns
        .command("python3")
        .arg(support("nodeport_server.py"))
        .arg(name)
        .args(["tcp:8080", "udp:5353"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a backend");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("backend output");
    assert_eq!(line.trim(), "ready", "backend {name} did not start");
    KillOnDrop(child)
}

impl Topology {
    #[expect(
        clippy::too_many_lines,
        reason = "the whole topology, namespace by namespace, reads best in one place"
    )]
    fn new(label: &str) -> Self {
        let ext = TestNetns::new("ext").expect("ext netns");
        let node1 = TestNetns::new("n1").expect("node1 netns");
        let node2 = TestNetns::new("n2").expect("node2 netns");
        let (to_ext, ext_end) = node1
            .link(
                &["192.168.50.1/24", "fd50::1/64"],
                &ext,
                &["192.168.50.2/24", "192.168.50.3/24", "fd50::2/64"],
            )
            .expect("veth ext");
        let (to_node2, from_node1) = node1
            .link(
                &["172.18.0.1/24", "fd18::1/64"],
                &node2,
                &["172.18.0.2/24", "fd18::2/64"],
            )
            .expect("veth node2");
        ext.ip(&["route", "add", "default", "via", NODE])
            .expect("ext route");
        ext.ip(&[
            "-6", "route", "add", "default", "via", "fd50::1", "dev", &ext_end, "onlink",
        ])
        .expect("ext route (IPv6)");
        let mut pods = Vec::new();
        for (node, name, subnet, host) in [
            (&node1, "pod-a", 1, 2),
            (&node1, "pod-b", 1, 3),
            (&node2, "pod-c", 2, 2),
        ] {
            let ns = TestNetns::new("pod").expect("pod netns");
            // One veth per pod; the node side carries the gateway address as a /32 (/128)
            // so that two pods of a node can share a subnet.
            let (node_end, pod_end) = node
                .link(
                    &[],
                    &ns,
                    &[
                        &format!("10.244.{subnet}.{host}/24"),
                        &format!("fd44:{subnet}::{host}/64"),
                    ],
                )
                .expect("veth pod");
            for (gateway, route, v6) in [
                (
                    format!("10.244.{subnet}.1/32"),
                    format!("10.244.{subnet}.{host}/32"),
                    false,
                ),
                (
                    format!("fd44:{subnet}::1/128"),
                    format!("fd44:{subnet}::{host}/128"),
                    true,
                ),
            ] {
                let mut add = vec!["addr", "add", gateway.as_str(), "dev", node_end.as_str()];
                if v6 {
                    add.push("nodad");
                }
                node.ip(&add).expect("gateway address");
                node.ip(&["route", "add", &route, "dev", &node_end])
                    .expect("pod route");
            }
            pods.push((ns, name, subnet, pod_end));
        }
        let pods = pods
            .into_iter()
            .map(|(ns, name, subnet, dev)| {
                ns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.244.{subnet}.1"),
                ])
                .expect("default route");
                ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd44:{subnet}::1"),
                    "dev",
                    &dev,
                    "onlink",
                ])
                .expect("default route (IPv6)");
                let server = start_server(&ns, name);
                Pod {
                    _server: server,
                    ns,
                }
            })
            .collect();
        node1
            .ip(&["route", "add", "10.244.2.0/24", "via", "172.18.0.2"])
            .expect("node1 route");
        node2
            .ip(&["route", "add", "10.244.1.0/24", "via", "172.18.0.1"])
            .expect("node2 route");
        node1
            .ip(&[
                "-6",
                "route",
                "add",
                "fd44:2::/64",
                "via",
                "fd18::2",
                "dev",
                &to_node2,
                "onlink",
            ])
            .expect("node1 route (IPv6)");
        node2
            .ip(&[
                "-6",
                "route",
                "add",
                "fd44:1::/64",
                "via",
                "fd18::1",
                "dev",
                &from_node1,
                "onlink",
            ])
            .expect("node2 route (IPv6)");
        for ns in [&node1, &node2] {
            ns.sysctl("net.ipv4.ip_forward=1").expect("forwarding");
            ns.sysctl("net.ipv6.conf.all.forwarding=1")
                .expect("forwarding (IPv6)");
        }
        let manifests = tempfile::tempdir().expect("manifest dir");
        let log = manifests.path().join(".proxy.log");
        let this = Self {
            manifests,
            cgroup: TestCgroup::new(label).expect("test cgroup"),
            pins: TestPinDir::new(label).expect("pin dir"),
            ext,
            node1,
            node2,
            pods,
            interfaces: vec![to_ext, to_node2],
            xdp: None,
            proxy: None,
            log,
        };
        this.write(
            "nodes.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus:\n  addresses: [{type: InternalIP, address: 172.18.0.1}, {type: InternalIP, address: \"fd18::1\"}]\n",
        );
        this
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
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node1.path().display()))
            .arg(env!("CARGO_BIN_EXE_fairlead"))
            .arg("proxy")
            .arg("--manifests")
            .arg(self.manifests.path())
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg("--bpffs")
            .arg(self.bpffs())
            .arg("--interfaces")
            .arg(self.interfaces.join(","))
            .args([
                "--telemetry-addr",
                "127.0.0.1:0",
                "--lameduck",
                "0",
                "--node-name",
                "node-1",
                "--maglev-table-size",
                "1021",
            ])
            .args(self.xdp.map(|mode| format!("--xdp={mode}")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fairlead proxy");
        self.proxy = Some(KillOnDrop(child));
    }

    fn kill_proxy(&mut self) {
        let mut proxy = self.proxy.take().expect("a running proxy");
        proxy.0.kill().expect("SIGKILL");
        proxy.0.wait().expect("reap");
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

    fn counter(&self, reason: Reason) -> u64 {
        PinnedMaps::open(&self.bpffs())
            .and_then(|m| m.counters())
            .map_or(0, |c| c.get(reason))
    }

    /// Waits until the rendered maps contain every one of `needles`.
    fn wait_programmed(&self, needles: &[&str]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.rendered();
            if needles.iter().all(|n| text.contains(n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never programmed {needles:?}; maps:\n{text}\nproxy log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Counts, in node1's netfilter forward hook, packets to the backends' ports (TCP 8080,
    /// UDP 5353): [`Topology::forwarded_to_backends`] reads the counts.
    fn count_forwarded_to_backends(&self) {
        let rules = "table inet fltest {\n chain counted {\n  type filter hook forward priority 0;\n  tcp dport 8080 counter\n  udp dport 5353 counter\n }\n}\n";
        let mut nft = self.node1.command("nft");
        nft.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = nft.spawn().expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("nft rules");
        assert!(child.wait().expect("nft").success(), "nft -f failed");
    }

    /// The (TCP, UDP) packet counts of [`Topology::count_forwarded_to_backends`].
    fn forwarded_to_backends(&self) -> (u64, u64) {
        let out = self
            .node1
            .command("nft")
            .args(["list", "chain", "inet", "fltest", "counted"])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |proto: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.contains(proto))
                .unwrap_or_else(|| panic!("no {proto} rule in {text}"));
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words
                .iter()
                .position(|w| *w == "packets")
                .unwrap_or_else(|| panic!("no counter in {line}"));
            words[at + 1].parse().expect("a packet count")
        };
        (count("tcp dport 8080"), count("udp dport 5353"))
    }

    /// Runs the client in `ns` (optionally in the test cgroup).
    fn client(&self, ns: &TestNetns, in_cgroup: bool, args: &[&str]) -> Value {
        let mut command = if in_cgroup {
            let script = r#"echo $$ > "$1" && shift && exec ip netns exec "$@""#;
            let mut c = Command::new("sh");
            c.args(["-c", script, "client"])
                .arg(self.cgroup.procs_file())
                .arg(ns.name())
                .arg("python3");
            c
        } else {
            ns.command("python3")
        };
        command.arg(support("nodeport_client.py")).args(args);
        let out = run_with_timeout(command, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "client output {stdout:?} ({e}); stderr: {}; proxy log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            )
        })
    }

    /// `n` attempts from ext (from `source`, if given).
    fn ext_clients(
        &self,
        mode: &str,
        host: &str,
        port: u16,
        n: usize,
        source: Option<&str>,
    ) -> Vec<Value> {
        let port = port.to_string();
        let n = n.to_string();
        let mut args = vec![mode, host, &port, &n];
        if let Some(s) = source {
            args.push(s);
        }
        self.client(&self.ext, false, &args)
            .as_array()
            .expect("a list")
            .clone()
    }
}

/// A Service of `kind` with NodePorts 30080/tcp and 30053/udp, its EndpointSlice listing
/// `pods` (name, address, node), and `extra` spec lines.
fn service(name: &str, kind: &str, vip: &str, pods: &[(&str, &str)], extra: &str) -> String {
    let mut eps = String::new();
    for (address, node) in pods {
        let _ = writeln!(
            eps,
            "  - {{addresses: [\"{address}\"], conditions: {{ready: true}}, nodeName: {node}}}"
        );
    }
    if pods.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  type: {kind}\n  clusterIP: \"{vip}\"\n  clusterIPs: [\"{vip}\"]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}\n{extra}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{eps}"
    )
}

/// A dual-stack NodePort Service (30080/tcp, 30053/udp) over the pods, IPv4 and IPv6.
fn dual_stack(name: &str, pods: &[(&str, &str, &str)]) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for (a4, a6, node) in pods {
        let _ = writeln!(
            v4,
            "  - {{addresses: [\"{a4}\"], conditions: {{ready: true}}, nodeName: {node}}}"
        );
        let _ = writeln!(
            v6,
            "  - {{addresses: [\"{a6}\"], conditions: {{ready: true}}, nodeName: {node}}}"
        );
    }
    if pods.is_empty() {
        v4.push_str("  []\n");
        v6.push_str("  []\n");
    }
    let ports = "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]";
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  type: NodePort\n  clusterIP: \"10.96.0.20\"\n  clusterIPs: [\"10.96.0.20\", \"fd96::20\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-4, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: {ports}\nendpoints:\n{v4}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-6, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv6\nports: {ports}\nendpoints:\n{v6}"
    )
}

/// pod-a (local) and pod-c (remote), IPv4 and IPv6.
const DUAL_STACK_PODS: [(&str, &str, &str); 2] = [
    ("10.244.1.2", "fd44:1::2", "node-1"),
    ("10.244.2.2", "fd44:2::2", "node-2"),
];
const POD_A: (&str, &str) = ("10.244.1.2", "node-1");
const POD_B: (&str, &str) = ("10.244.1.3", "node-1");
const POD_C: (&str, &str) = ("10.244.2.2", "node-2");

/// name → list of addresses seen by that backend.
fn by_backend(results: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for r in results {
        let backend = r["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("a failed attempt: {r}; all: {results:?}"));
        let seen = r["seen"].as_str().unwrap_or("?");
        let ip = seen.rsplit_once(':').map_or(seen, |(ip, _)| ip).to_owned();
        out.entry(backend.to_owned()).or_default().push(ip);
    }
    out
}

fn all_from(results: &[Value], peer: &str) {
    for r in results {
        assert_eq!(
            r["peer"].as_str(),
            Some(peer),
            "answer not from the frontend: {r}"
        );
    }
}

#[test]
fn nodeport_tcp_and_udp_reach_local_and_remote_backends() {
    if !privileged("nodeport::nodeport_tcp_and_udp_reach_local_and_remote_backends") {
        return;
    }
    let mut t = Topology::new("np");
    t.write(
        "web.yaml",
        &service("web", "NodePort", "10.96.0.10", &[POD_A, POD_C], ""),
    );
    t.start_proxy();
    t.wait_programmed(&[
        "0.0.0.0:30080/tcp",
        "0.0.0.0:30053/udp",
        "maglev 1021 slots",
    ]);
    t.count_forwarded_to_backends();

    // TCP: 80 connections from ext to node1:30080 spread over both backends (each gets at
    // least 15 of 80 with probability > 1 - 1e-7 under Maglev's even split). The local
    // backend sees the client's own address; the remote one node1's InternalIP (SNAT);
    // every answer comes from the NodePort.
    let results = t.ext_clients("tcp", NODE, 30080, 80, None);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen["pod-a"].len() >= 15 && seen["pod-c"].len() >= 15,
        "{seen:?}"
    );
    assert!(
        seen["pod-a"].iter().all(|ip| ip == "192.168.50.2"),
        "{seen:?}"
    );
    assert!(
        seen["pod-c"].iter().all(|ip| ip == "172.18.0.1"),
        "{seen:?}"
    );
    all_from(&results, "192.168.50.1:30080");

    // UDP: the same, replies from the NodePort.
    let results = t.ext_clients("udp", NODE, 30053, 60, None);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen["pod-a"].iter().all(|ip| ip == "192.168.50.2"),
        "{seen:?}"
    );
    assert!(
        seen["pod-c"].iter().all(|ip| ip == "172.18.0.1"),
        "{seen:?}"
    );
    all_from(&results, "192.168.50.1:30053");
    // Every TCP connection is a new flow; UDP sockets may reuse a source port, and then
    // conntrack already knows the flow.
    assert!(t.counter(Reason::ExternalHit) >= 80);
    assert!(t.counter(Reason::CtReply) >= 140);
    // Translated packets went straight to their output interface (bpf_fib_lookup +
    // redirect): netfilter's forward hook on node1 saw none of them, and none needed the
    // kernel's forwarding path. (Replies of the local backend are the stack's own.)
    assert_eq!(
        t.forwarded_to_backends(),
        (0, 0),
        "packets took the stack's path"
    );
    assert!(
        t.counter(Reason::FibRedirect) >= 80 * 3 + 60,
        "{}",
        t.rendered()
    );
    assert_eq!(t.counter(Reason::FibFallback), 0);
    // The remote backend's packets (to node2) and its translated replies (to ext) left
    // through node1's egress programs without a conntrack lookup there.
    assert!(
        t.counter(Reason::EgressSkipped) >= 15 * 3,
        "{:?}",
        PinnedMaps::open(&t.bpffs()).and_then(|m| m.counters())
    );

    // Status shows the NodePort with its Maglev table and the conntrack fill.
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["status", "--bpffs"])
        .arg(t.bpffs())
        .output()
        .expect("fairlead status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("0.0.0.0:30080/tcp") && text.contains("nodeport"),
        "{text}"
    );
    let ct_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("fl_ct4_tcp"))
        .unwrap_or_else(|| panic!("no conntrack fill in {text}"));
    let entries: usize = ct_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(entries >= 160, "{ct_line}"); // two entries per flow
}

#[test]
fn external_traffic_policy_local_serves_only_local_endpoints() {
    if !privileged("nodeport::external_traffic_policy_local_serves_only_local_endpoints") {
        return;
    }
    let mut t = Topology::new("etp");
    // No endpoint at all: rejected at once, whatever the policy (ECONNREFUSED).
    t.write(
        "web.yaml",
        &service(
            "web",
            "NodePort",
            "10.96.0.11",
            &[],
            "  externalTrafficPolicy: Local\n",
        ),
    );
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp"]);
    let results = t.ext_clients("tcp", NODE, 30080, 2, None);
    assert!(
        results.iter().all(|r| r["errno"].as_i64() == Some(111)),
        "{results:?}"
    );
    let rejected = t.counter(Reason::ExternalNoBackend);
    assert!(rejected >= 2);

    // Only a remote endpoint: node1 does not serve the NodePort (dropped, counted).
    t.write(
        "web.yaml",
        &service(
            "web",
            "NodePort",
            "10.96.0.11",
            &[POD_C],
            "  externalTrafficPolicy: Local\n",
        ),
    );
    t.wait_programmed(&["0.0.0.0:30080/tcp", "external-local"]);
    // Dropped (the client times out: -1), not refused: kube-proxy drops too, so that a load
    // balancer's health check, not the client, learns that this node does not serve.
    let results = t.ext_clients("tcp", NODE, 30080, 3, None);
    assert!(
        results.iter().all(|r| r["errno"].as_i64() == Some(-1)),
        "{results:?}"
    );
    assert!(t.counter(Reason::ExternalNoLocalBackend) >= 3);
    assert_eq!(t.counter(Reason::ExternalNoBackend), rejected);

    // With local endpoints: only they serve, and they see the client's own address.
    t.write(
        "web.yaml",
        &service(
            "web",
            "NodePort",
            "10.96.0.11",
            &[POD_A, POD_B, POD_C],
            "  externalTrafficPolicy: Local\n",
        ),
    );
    t.wait_programmed(&["10.244.1.3:8080"]);
    let results = t.ext_clients("tcp", NODE, 30080, 40, None);
    let seen = by_backend(&results);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b"],
        "{seen:?}"
    );
    assert!(
        seen.values().flatten().all(|ip| ip == "192.168.50.2"),
        "{seen:?}"
    );
}

#[test]
fn load_balancer_ip_external_ip_and_source_ranges() {
    if !privileged("nodeport::load_balancer_ip_external_ip_and_source_ranges") {
        return;
    }
    let mut t = Topology::new("lb");
    for ip in ["192.0.2.10", "198.51.100.10"] {
        t.ext
            .ip(&["route", "add", ip, "via", NODE])
            .expect("route to the LB IP");
    }
    t.write(
        "web.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: t}}\nspec:\n  clusterIP: \"10.96.0.13\"\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  externalIPs: [\"198.51.100.10\"]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ext-1, namespace: t, labels: {{kubernetes.io/service-name: ext}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n  - {{addresses: [\"10.244.2.2\"], conditions: {{ready: true}}, nodeName: node-2}}\n",
            service(
                "lb",
                "LoadBalancer",
                "10.96.0.12",
                &[POD_A, POD_C],
                "  loadBalancerSourceRanges: [\"192.168.50.2/32\"]\nstatus:\n  loadBalancer:\n    ingress: [{ip: \"192.0.2.10\"}]\n",
            )
        ),
    );
    t.start_proxy();
    t.wait_programmed(&[
        "192.0.2.10:80/tcp",
        "198.51.100.10:80/tcp",
        "source ranges: 192.168.50.2/32",
    ]);

    // The LoadBalancer IP from inside the source range: served by both backends.
    let results = t.ext_clients("tcp", "192.0.2.10", 80, 40, Some("192.168.50.2"));
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    all_from(&results, "192.0.2.10:80");
    // From outside it: dropped.
    let before = t.counter(Reason::SourceRangeDrop);
    let results = t.ext_clients("tcp", "192.0.2.10", 80, 2, Some("192.168.50.3"));
    assert!(
        results.iter().all(|r| r.get("errno").is_some()),
        "{results:?}"
    );
    assert!(t.counter(Reason::SourceRangeDrop) >= before + 2);
    // The external IP (no source ranges): served from anywhere, by its one (remote) backend.
    let results = t.ext_clients("tcp", "198.51.100.10", 80, 5, Some("192.168.50.3"));
    let seen = by_backend(&results);
    assert_eq!(seen["pod-c"].len(), 5, "{seen:?}");
    all_from(&results, "198.51.100.10:80");
}

#[test]
fn node_local_access_hairpin_and_bind_guard() {
    if !privileged("nodeport::node_local_access_hairpin_and_bind_guard") {
        return;
    }
    let mut t = Topology::new("hp");
    t.write(
        "web.yaml",
        &service("web", "NodePort", "10.96.0.14", &[POD_A, POD_C], ""),
    );
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp"]);

    // From the node itself (a process in the balanced cgroup): the node's address, loopback.
    for host in [NODE, "127.0.0.1", "172.18.0.1"] {
        let results = t.client(&t.node1, true, &["tcp", host, "30080", "10"]);
        let seen = by_backend(results.as_array().unwrap());
        assert_eq!(
            seen.values().map(Vec::len).sum::<usize>(),
            10,
            "{host}: {seen:?}"
        );
    }
    // Hairpin: pod-a reaching its own Service through the NodePort.
    let results = t.client(&t.pods[0].ns, true, &["tcp", NODE, "30080", "20"]);
    let seen = by_backend(results.as_array().unwrap());
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 20, "{seen:?}");
    assert!(seen.contains_key("pod-a"), "{seen:?}");

    // A process on the node cannot bind the NodePort (EPERM); another port it can.
    let refused = t.client(&t.node1, true, &["bind", "30080"]);
    assert_eq!(refused["errno"], 1, "{refused}");
    let allowed = t.client(&t.node1, true, &["bind", "30081"]);
    assert_eq!(allowed["errno"], 0, "{allowed}");
    assert!(t.counter(Reason::BindRefused) >= 1);
}

struct Stream {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Stream {
    fn start(mut command: Command) -> (Self, Value) {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a stream");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("greeting");
        let greeting =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("stream greeting {line:?}: {e}"));
        (
            Self {
                child,
                stdin,
                stdout,
            },
            greeting,
        )
    }

    fn finish(mut self) -> Value {
        self.stdin.write_all(b"stop\n").expect("stop the stream");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("stream result");
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stream result {line:?}: {e}"))
    }
}

#[test]
fn streams_survive_a_proxy_kill_and_restart() {
    if !privileged("nodeport::streams_survive_a_proxy_kill_and_restart") {
        return;
    }
    let mut t = Topology::new("rs");
    // Only the remote backend: the NodePort stream takes the source-NAT path.
    t.write(
        "web.yaml",
        &service("web", "NodePort", "10.96.0.15", &[POD_C], ""),
    );
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp"]);

    let (nodeport, greeting) = Stream::start({
        let mut c = t.ext.command("python3");
        c.arg(support("nodeport_client.py"))
            .args(["stream", NODE, "30080"]);
        c
    });
    assert_eq!(greeting["backend"], "pod-c", "{greeting}");
    let (cluster_ip, greeting) = Stream::start({
        let script = r#"echo $$ > "$1" && shift && exec ip netns exec "$@""#;
        let mut c = Command::new("sh");
        c.args(["-c", script, "client"])
            .arg(t.cgroup.procs_file())
            .arg(t.node1.name())
            .arg("python3")
            .arg(support("nodeport_client.py"))
            .args(["stream", "10.96.0.15", "80"]);
        c
    });
    assert_eq!(greeting["backend"], "pod-c", "{greeting}");

    thread::sleep(Duration::from_millis(500));
    let links = t.bpffs().join("links");
    t.kill_proxy();
    // The TC links are pinned: the programs stay attached while no agent runs.
    assert!(
        std::fs::read_dir(&links).map_or(0, Iterator::count) >= 4,
        "TC links not pinned under {}",
        links.display()
    );
    thread::sleep(Duration::from_millis(1500));
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp"]);
    thread::sleep(Duration::from_millis(1500));

    for (what, stream) in [("NodePort", nodeport), ("ClusterIP", cluster_ip)] {
        let result = stream.finish();
        assert_eq!(
            result["ok"],
            true,
            "{what} stream: {result}; log:\n{}",
            t.log_text()
        );
        assert!(
            result["bytes"].as_u64().unwrap_or(0) > 200 * 1024,
            "{what} stream barely moved: {result}"
        );
    }
}

#[test]
fn ipv6_nodeport_reaches_local_and_remote_backends() {
    if !privileged("nodeport::ipv6_nodeport_reaches_local_and_remote_backends") {
        return;
    }
    let mut t = Topology::new("np6");
    t.write("web.yaml", &dual_stack("web", &DUAL_STACK_PODS));
    t.start_proxy();
    t.wait_programmed(&["[::]:30080/tcp", "[::]:30053/udp", "0.0.0.0:30080/tcp"]);

    // As for IPv4: the local backend sees the client, the remote one node1's IPv6
    // InternalIP; answers come from the NodePort.
    let results = t.ext_clients("tcp", "fd50::1", 30080, 60, None);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen["pod-a"].iter().all(|ip| ip == "fd50::2"), "{seen:?}");
    assert!(seen["pod-c"].iter().all(|ip| ip == "fd18::1"), "{seen:?}");
    all_from(&results, "fd50::1:30080");
    let results = t.ext_clients("udp", "fd50::1", 30053, 40, None);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen["pod-c"].iter().all(|ip| ip == "fd18::1"), "{seen:?}");
    all_from(&results, "fd50::1:30053");
    // Routed by the FIB lookup (and redirect), as for IPv4.
    assert!(t.counter(Reason::FibRedirect) >= 60 * 3 + 40);
    assert_eq!(t.counter(Reason::FibFallback), 0, "{}", t.rendered());

    // Datagrams over the MTU: fragments (a fragment header after the fixed one), each
    // request and answer reassembled whole.
    let results = t.ext_clients("udp-big", "fd50::1", 30053, 20, None);
    all_intact(&results);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen["pod-a"].iter().all(|ip| ip == "fd50::2"), "{seen:?}");
    assert!(seen["pod-c"].iter().all(|ip| ip == "fd18::1"), "{seen:?}");
    all_from(&results, "fd50::1:30053");
    assert!(
        t.counter(Reason::FragmentTranslated) >= 20 * 4,
        "{}",
        t.rendered()
    );
}

#[test]
fn a_frontend_without_endpoints_rejects_at_once() {
    if !privileged("nodeport::a_frontend_without_endpoints_rejects_at_once") {
        return;
    }
    let mut t = Topology::new("rej");
    t.write("web.yaml", &dual_stack("web", &[]));
    t.start_proxy();
    t.wait_programmed(&["[::]:30080/tcp", "0.0.0.0:30053/udp"]);

    // TCP and UDP, IPv4 and IPv6: ICMP port unreachable from the NodePort, so every
    // attempt fails with ECONNREFUSED (111) at once (a drop would time out: -1).
    for (mode, host, port) in [
        ("tcp", NODE, 30080),
        ("tcp", "fd50::1", 30080),
        ("udp-connected", NODE, 30053),
        ("udp-connected", "fd50::1", 30053),
    ] {
        let results = t.ext_clients(mode, host, port, 3, None);
        assert!(
            results.iter().all(|r| r["errno"].as_i64() == Some(111)),
            "{mode} {host}: {results:?}; log:\n{}",
            t.log_text()
        );
    }
    assert!(t.counter(Reason::ExternalNoBackend) >= 12);
    assert_eq!(t.counter(Reason::RejectFailed), 0);

    // A flood is answered at most ICMP_REJECTS_PER_SEC times per CPU and second; the rest
    // is dropped and counted.
    let before = t.counter(Reason::ExternalNoBackend);
    let flood = t.client(&t.ext, false, &["flood", NODE, "30053", "6000"]);
    assert_eq!(flood["sent"].as_u64(), Some(6000), "{flood}");
    let answered = t.counter(Reason::ExternalNoBackend) - before;
    let limited = t.counter(Reason::RejectLimited);
    assert!(limited > 0, "answered {answered}, none limited");
    assert_eq!(
        answered + limited,
        6000,
        "answered {answered}, limited {limited}"
    );
}

#[test]
fn xdp_native_balances_in_front_of_tc() {
    if !privileged("nodeport::xdp_native_balances_in_front_of_tc") {
        return;
    }
    xdp_balances_in_front_of_tc("native");
}

#[test]
fn xdp_generic_balances_and_rejects_in_front_of_tc() {
    if !privileged("nodeport::xdp_generic_balances_and_rejects_in_front_of_tc") {
        return;
    }
    xdp_balances_in_front_of_tc("generic");
}

/// NodePorts through the XDP program (`--xdp mode`). Rejects are checked in generic mode
/// only: what native XDP sends back out of a veth (`XDP_TX`) reaches the peer only when the
/// peer runs NAPI (an XDP program of its own), which the client's end does not here.
fn xdp_balances_in_front_of_tc(mode: &'static str) {
    let mut t = Topology::new("xdp");
    t.xdp = Some(mode);
    t.write("web.yaml", &dual_stack("web", &DUAL_STACK_PODS));
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp", "[::]:30080/tcp", "10.244.2.2:8080"]);
    let out = t
        .node1
        .command("ip")
        .args(["-d", "link", "show", "dev", &t.interfaces[0]])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("prog/xdp"),
        "no XDP program on the interface: {text}"
    );

    // Served as at TC: the local backend sees the client, the remote one node1's InternalIP;
    // answers come from the NodePort.
    for (mode, host, port, n) in [
        ("tcp", NODE, 30080, 40),
        ("udp", NODE, 30053, 30),
        ("udp-big", NODE, 30053, 16),
        ("tcp", "fd50::1", 30080, 30),
        ("udp-big", "fd50::1", 30053, 16),
    ] {
        let results = t.ext_clients(mode, host, port, n, None);
        if mode == "udp-big" {
            // Fragmented both ways; XDP translates the client's later fragments.
            all_intact(&results);
        }
        let seen = by_backend(&results);
        assert_eq!(seen.len(), 2, "{mode} {host}: {seen:?}");
        let (client, internal) = if host == NODE {
            ("192.168.50.2", "172.18.0.1")
        } else {
            ("fd50::2", "fd18::1")
        };
        assert!(seen["pod-a"].iter().all(|ip| ip == client), "{seen:?}");
        assert!(seen["pod-c"].iter().all(|ip| ip == internal), "{seen:?}");
        all_from(&results, &format!("{host}:{port}"));
    }
    // XDP translated them: it hands packets for other interfaces to the stack (counted as
    // FIB fallbacks), where TC would have redirected them itself.
    assert_eq!(t.counter(Reason::FibRedirect), 0, "{}", t.rendered());
    assert!(t.counter(Reason::FibFallback) >= 100 * 3);

    if mode == "native" {
        return;
    }
    // Without endpoints: rejected, IPv4 by XDP (XDP_TX), IPv6 by TC behind it.
    t.write("web.yaml", &dual_stack("web", &[]));
    let deadline = Instant::now() + TIMEOUT;
    while t.rendered().contains("10.244.2.2:8080") {
        assert!(Instant::now() < deadline, "endpoints never removed");
        thread::sleep(Duration::from_millis(50));
    }
    for host in [NODE, "fd50::1"] {
        let results = t.ext_clients("tcp", host, 30080, 3, None);
        assert!(
            results.iter().all(|r| r["errno"].as_i64() == Some(111)),
            "{host}: {results:?}"
        );
    }
    assert!(t.counter(Reason::ExternalNoBackend) >= 6);
    assert_eq!(t.counter(Reason::RejectFailed), 0);
}

#[test]
fn path_mtu_discovery_works_through_the_translation() {
    if !privileged("nodeport::path_mtu_discovery_works_through_the_translation") {
        return;
    }
    let mut t = Topology::new("pmtu");
    t.write(
        "web.yaml",
        &dual_stack("web", &[("10.244.2.2", "fd44:2::2", "node-2")]),
    );
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30053/udp", "[::]:30053/udp", "10.244.2.2:5353"]);
    let out = t
        .node2
        .command("ip")
        .args(["-o", "route", "get", "10.244.2.2"])
        .output()
        .expect("ip route get");
    let route = String::from_utf8_lossy(&out.stdout).into_owned();
    let to_pod = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no dev in {route}"))
        .to_owned();
    // The path MTU the client's kernel learns for `host` after a 1400-byte datagram ("don't
    // fragment"; IPv6 never fragments on the way), with node1's link to node2 and node2's
    // link to the backend at the MTUs given.
    let learnt = |family: &str, host: &str, node1_mtu: &str, node2_mtu: &str| {
        t.node1
            .ip(&["link", "set", &t.interfaces[1], "mtu", node1_mtu])
            .expect("mtu");
        t.node2
            .ip(&["link", "set", &to_pod, "mtu", node2_mtu])
            .expect("mtu");
        t.ext
            .ip(&[family, "route", "flush", "cache"])
            .expect("flush");
        let result = t.client(&t.ext, false, &["pmtu", host, "30053", "1400"]);
        result["mtu"].as_u64()
    };
    for (family, host) in [("-4", NODE), ("-6", "fd50::1")] {
        // node1's own route to the backend is narrower than the client's: node1 answers
        // "fragmentation needed" / "packet too big" (1300) from the NodePort, quoting the
        // client's own packet. (Answered from the translated packet, the error would go to
        // node1's own source-NAT address.)
        let too_big = t.counter(Reason::TooBig);
        assert_eq!(learnt(family, host, "1300", "1500"), Some(1300), "{host}");
        assert!(t.counter(Reason::TooBig) > too_big);
        // Datagrams that fit still flow.
        let results = t.ext_clients("udp", host, 30053, 3, None);
        assert_eq!(by_backend(&results)["pod-c"].len(), 3, "{results:?}");

        // Narrower further on: node2's link to the backend. node2 answers the
        // source-NATed packet (MTU 1280) to node1's address; node1 translates the error
        // back to the client (outer destination, quoted addresses and ports, checksums).
        let related = t.counter(Reason::IcmpRelated);
        assert_eq!(learnt(family, host, "1500", "1280"), Some(1280), "{host}");
        assert!(t.counter(Reason::IcmpRelated) > related);
    }
}

/// A NodePort Service (30081/tcp) named `name` whose endpoints are `addresses`
/// (node-2's, so that they are remote and Maglev-balanced like web's).
fn churned_service(name: &str, addresses: &[String]) -> String {
    let mut eps = String::new();
    for address in addresses {
        let _ = writeln!(
            eps,
            "  - {{addresses: [\"{address}\"], conditions: {{ready: true}}, nodeName: node-2}}"
        );
    }
    if addresses.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  type: NodePort\n  clusterIP: \"10.96.0.30\"\n  clusterIPs: [\"10.96.0.30\"]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: 30081}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )
}

/// Issue 21: one NodePort request in 46,601 timed out while another Service's endpoints
/// churned. 20,000 requests (a new TCP connection each, 2 s timeout, no retry) to an
/// unchanged NodePort while another NodePort Service changes every 100 ms (its backend
/// count, its Maglev table and backend slots rewritten, web's pods among its endpoints):
/// not one fails.
#[test]
fn nodeport_requests_survive_another_services_churn() {
    const REQUESTS: usize = 20_000;
    if !privileged("nodeport::nodeport_requests_survive_another_services_churn") {
        return;
    }
    let mut t = Topology::new("churn");
    t.write(
        "web.yaml",
        &service("web", "NodePort", "10.96.0.10", &[POD_A, POD_C], ""),
    );
    // Addresses the churned Service draws from: web's pods, and some that serve nothing.
    let pool: Vec<String> = [POD_A.0, POD_C.0, POD_B.0]
        .into_iter()
        .map(str::to_owned)
        .chain((10..20).map(|i| format!("10.244.2.{i}")))
        .collect();
    t.write("other.yaml", &churned_service("other", &pool[..5]));
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30080/tcp", "0.0.0.0:30081/tcp"]);

    let done = std::sync::atomic::AtomicBool::new(false);
    let (result, changes) = thread::scope(|scope| {
        let client = scope.spawn(|| {
            let out = t.client(
                &t.ext,
                false,
                &["tcp-count", NODE, "30080", &REQUESTS.to_string()],
            );
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        });
        let mut changes = 0usize;
        let mut last = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            // 1 to 13 endpoints, a different window of the pool each time.
            let count = changes % pool.len() + 1;
            let start = (changes * 7) % pool.len();
            let addresses: Vec<String> = (0..count)
                .map(|i| pool[(start + i) % pool.len()].clone())
                .collect();
            t.write("other.yaml", &churned_service("other", &addresses));
            last = count;
            changes += 1;
            thread::sleep(Duration::from_millis(100));
        }
        (client.join().expect("client thread"), (changes, last))
    });
    let (changes, last) = changes;
    eprintln!("churn: {changes} changes, client {result}");
    assert_eq!(
        result["ok"].as_u64(),
        Some(REQUESTS as u64),
        "requests to the unchanged NodePort failed during {changes} changes of another Service: {}\nproxy log:\n{}",
        result["failures"],
        t.log_text()
    );
    let backends = &result["backends"];
    assert!(
        backends["pod-a"].as_u64() > Some(0) && backends["pod-c"].as_u64() > Some(0),
        "{backends}"
    );
    // The other Service did churn, and its last change is programmed.
    assert!(changes >= 20, "{changes} changes");
    let frontend_line = |text: &str| {
        text.lines()
            .find(|l| l.contains("0.0.0.0:30081/tcp"))
            .unwrap_or_default()
            .to_owned()
    };
    let deadline = Instant::now() + TIMEOUT;
    let want = format!("backends {last}");
    while !frontend_line(&t.rendered())
        .split("  ")
        .any(|field| field == want)
    {
        assert!(
            Instant::now() < deadline,
            "the last change ({last} backends) never programmed: {}",
            t.rendered()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every `udp-big` result: answered, the 3000-byte datagram echoed intact (the request and
/// the answer each crossed a 1500-byte MTU in fragments).
fn all_intact(results: &[Value]) {
    for r in results {
        assert_eq!(r["intact"], Value::Bool(true), "{results:?}");
        assert!(r["bytes"].as_u64().unwrap_or(0) > 3000, "{r}");
    }
}

/// UDP datagrams larger than the MTU (3000 bytes over 1500-byte veths) to a NodePort: the
/// client's stack sends each in three fragments, of which only the first carries the UDP
/// ports. Every fragment must reach the backend the first was balanced to (else the
/// backend's stack cannot reassemble the datagram), the remote backend's with the same
/// source NAT; the backends' answers, as large and fragmented, come back from the NodePort.
/// Many flows spread over three backends (two local, one remote), each echoed intact.
#[test]
fn fragmented_udp_datagrams_reach_their_backend_whole() {
    if !privileged("nodeport::fragmented_udp_datagrams_reach_their_backend_whole") {
        return;
    }
    let mut t = Topology::new("frag");
    t.write(
        "web.yaml",
        &service("web", "NodePort", "10.96.0.10", &[POD_A, POD_B, POD_C], ""),
    );
    t.start_proxy();
    t.wait_programmed(&["0.0.0.0:30053/udp", "10.244.2.2:5353", "10.244.1.3:5353"]);

    let results = t.ext_clients("udp-big", NODE, 30053, 45, None);
    all_intact(&results);
    let seen = by_backend(&results);
    assert_eq!(seen.len(), 3, "spread over every backend: {seen:?}");
    for local in ["pod-a", "pod-b"] {
        assert!(
            seen[local].iter().all(|ip| ip == "192.168.50.2"),
            "{seen:?}"
        );
    }
    assert!(
        seen["pod-c"].iter().all(|ip| ip == "172.18.0.1"),
        "{seen:?}"
    );
    all_from(&results, "192.168.50.1:30053");
    // Each request and each answer has two later fragments, all translated by the map.
    assert!(
        t.counter(Reason::FragmentTranslated) >= 45 * 4,
        "{}",
        t.rendered()
    );
}
