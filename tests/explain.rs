//! `fairlead explain` on a manifest directory: golden files of its text and
//! JSON output (`tests/explain/*.txt`, `*.json`). After an intended change,
//! `UPDATE_GOLDEN=1 cargo nextest run -p fairlead --test explain` rewrites
//! them. The end-to-end tests against a running `fairlead node` are in
//! tests/node.rs.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `fairlead explain ARGS --manifests DIR`: (exit code, stdout).
fn explain(dir: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .arg("explain")
        .args(args)
        .arg("--manifests")
        .arg(dir)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("fairlead runs");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        out.stderr.is_empty(),
        "{args:?}: stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/explain").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn service_of_the_examples() {
    let (code, out) = explain("examples", &["service", "shop/web"]);
    assert_eq!(code, 0, "{out}");
    golden("examples-service-shop-web.txt", &out);
    let (code, out) = explain("examples", &["service", "shop/api"]);
    assert_eq!(code, 0, "{out}");
    golden("examples-service-shop-api.txt", &out);
}

#[test]
fn request_of_the_examples() {
    // The most specific path wins; the others say why they did not.
    let (code, out) = explain(
        "examples",
        &["request", "https://shop.example.com/api/orders"],
    );
    assert_eq!(code, 0, "{out}");
    golden("examples-request-api.txt", &out);
    // Plain HTTP to a TLS host: the redirect comes first.
    let (_, out) = explain(
        "examples",
        &["request", "http://SHOP.example.com:80/healthz"],
    );
    assert!(out.contains("redirect to HTTPS"), "{out}");
    assert!(
        out.contains("=> ingress shop/shop  host shop.example.com  Exact /healthz"),
        "{out}"
    );
}

#[test]
fn gateway_api_and_ingress_side_by_side() {
    let dir = "tests/explain/fixture";
    // Every kind of frontend, the HTTPRoute's weighted backends, the Ingress.
    let (code, out) = explain(dir, &["service", "demo/a"]);
    assert_eq!(code, 0, "{out}");
    golden("fixture-service-a.txt", &out);
    // The HTTPRoute takes it first; every Ingress route says so.
    let (_, out) = explain(dir, &["request", "http://app.example.com/v2/x"]);
    golden("fixture-request-v2.txt", &out);
    // An exact path to a missing Service: 503, and why.
    let (_, out) = explain(dir, &["request", "https://app.example.com/old"]);
    golden("fixture-request-old.txt", &out);
    // Another host: the rule without a host.
    let (_, out) = explain(dir, &["request", "https://other.example.org/"]);
    golden("fixture-request-other-host.txt", &out);
    // A Service the model does not have.
    let (_, out) = explain(dir, &["service", "demo/nope"]);
    assert!(out.contains("not in the model"), "{out}");
}

#[test]
fn json_reports() {
    let (code, out) = explain("tests/explain/fixture", &["service", "demo/a", "--json"]);
    assert_eq!(code, 0, "{out}");
    golden("fixture-service-a.json", &out);
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["service"], "demo/a");
    assert_eq!(report["kernel"]["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(report["disagreements"].as_array().map(Vec::len), Some(0));
    let (_, out) = explain(
        "tests/explain/fixture",
        &["request", "https://app.example.com/old", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let taken: Vec<&serde_json::Value> = report["routes"]["items"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["taken"] == true)
        .collect();
    assert_eq!(taken.len(), 1, "{out}");
    assert_eq!(taken[0]["matches"], "Exact /old");
    assert_eq!(taken[0]["backends"][0]["unresolved"], "no such Service");
}

/// A network namespace of this test (`fop-x<pid>`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("fop-x{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "lo up in {name}");
        Self(name)
    }

    /// `program` in the namespace (nsenter execs it: the child is the program).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0)).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `fairlead explain ARGS` against the node's telemetry listener.
fn explain_live(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = ns
        .command(env!("CARGO_BIN_EXE_fairlead"))
        .arg("explain")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("fairlead explain runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `explain ARGS` prints something `done` accepts.
fn explain_until(ns: &Netns, args: &[&str], done: impl Fn(i32, &str) -> bool) -> (i32, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = explain_live(ns, args);
        if done(code, &out) {
            return (code, out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "explain {args:?} never got there: rc {code}\n{out}\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `fairlead node` in `ns` on the manifests, its DNS server held on the
/// first synced generation (`FAIRLEAD_TESTING_HOLD=dns`).
fn start_node(
    ns: &Netns,
    manifests: &Path,
    cgroup: &Path,
    pins: &Path,
) -> fairlead_proxy::testing::KillOnDrop {
    use fairlead_proxy::testing::KillOnDrop;
    let node = ns
        .command(env!("CARGO_BIN_EXE_fairlead"))
        .args(["node", "--node-name", "node-a", "--manifests"])
        .arg(manifests)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--bpffs")
        .arg(pins)
        .args([
            "--listen",
            "127.0.0.1:53",
            "--upstream",
            "127.0.0.1:5399",
            "--http",
            "127.0.0.1:80",
            "--https",
            "127.0.0.1:443",
            "--lameduck",
            "0",
            "--drain-timeout",
            "1",
        ])
        .env("FAIRLEAD_TESTING_HOLD", "dns")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fairlead node starts");
    KillOnDrop(node)
}

/// `fairlead explain` against a running `fairlead node` (kernel load
/// balancer, DNS and ingress) in a network namespace, on the fixture: the
/// kernel part comes from the pinned maps, the routes from the running
/// gateway. Then one component lags: the DNS server is held on the first
/// synced generation (the testing hook `FAIRLEAD_TESTING_HOLD=dns`, see
/// `Runtime::model_for`), an endpoint is added to the manifests, and
/// `explain` flags the DNS server as behind, with the record it misses,
/// while the kernel and the gateway have the new endpoint; it exits 1.
#[test]
fn explain_a_running_node_and_flag_a_component_behind() {
    use fairlead_proxy::testing::{TestCgroup, TestPinDir, privileged};
    if !privileged("explain_a_running_node_and_flag_a_component_behind") {
        return;
    }
    let manifests = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/explain/fixture/demo.yaml");
    let yaml = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(manifests.path().join("demo.yaml"), &yaml).unwrap();
    let ns = Netns::new();
    let cgroup = TestCgroup::new("fop-explain").unwrap();
    let pins = TestPinDir::new("fop-explain").unwrap();
    let node = start_node(&ns, manifests.path(), cgroup.path(), pins.path());

    // In agreement: every part at the model's generation.
    let (code, out) = explain_until(&ns, &["service", "demo/a"], |code, out| {
        code == 0 && out.contains("KERNEL [generation") && out.contains("ROUTES [generation")
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(from running fairlead;"), "{out}");
    for line in [
        "  a.demo.svc.cluster.local. 5 IN A 10.96.50.1",
        "  ClusterIP    10.96.50.1:80/tcp  1 backend(s)",
        "      10.244.5.1:8080 active local",
        "  LoadBalancer 198.51.100.50:80/tcp  [external]  1 backend(s)",
        "  externalIP   192.0.2.50:80/tcp  [external]  1 backend(s)",
        "    ingress demo/legacy  host app.example.com  Prefix /",
        "           10.244.5.1:8080 serving in-flight 0",
        "no disagreement",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let (code, out) = explain_until(&ns, &["request", "http://app.example.com/v2/x"], |c, _| {
        c == 0
    });
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("  => httproute demo/app  host app.example.com  Prefix /v2"),
        "{out}"
    );

    // A second ready endpoint of demo/a; the DNS server stays behind.
    let changed = yaml.replace(
        "- addresses: [10.244.5.2]",
        "- addresses: [10.244.5.3]\n  conditions: {ready: true}\n  nodeName: node-a\n- addresses: [10.244.5.2]",
    );
    assert_ne!(changed, yaml);
    std::fs::write(manifests.path().join("demo.yaml"), &changed).unwrap();
    // Until the proxy and the ingress serve it (the model's side of a
    // disagreement names the new backend too, so that alone proves nothing).
    // explain reads the model and each component one after the other, so
    // the components can be read after a change the model read missed: wait
    // for the model's own view too.
    let (code, out) = explain_until(&ns, &["service", "demo/a"], |_, out| {
        out.contains("10.244.5.3:8080 serving")
            && out.contains("endpoint 10.244.5.3 ")
            && !out.contains("proxy serves generation")
            && !out.contains("ingress serves generation")
            && !out.contains("proxy: the backends of")
    });
    assert_eq!(code, 1, "a disagreement exits 1:\n{out}");
    assert!(out.contains("(BEHIND: model at"), "{out}");
    assert!(out.contains("DISAGREEMENTS"), "{out}");
    assert!(out.contains("dns serves generation"), "{out}");
    assert!(out.contains("dns is behind"), "{out}");
    assert!(
        out.contains("10-244-5-3.a.demo.svc.cluster.local. 5 IN A 10.244.5.3"),
        "the record the DNS server misses is named: {out}"
    );
    assert!(
        !out.contains("proxy serves generation") && !out.contains("ingress serves generation"),
        "only the DNS server lags: {out}"
    );
    let (code, json, _) = explain_live(&ns, &["service", "demo/a", "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let model = report["model_generation"].as_u64().unwrap();
    assert!(
        report["dns"]["generation"].as_u64().unwrap() < model,
        "{json}"
    );
    assert_eq!(
        report["kernel"]["generation"].as_u64(),
        Some(model),
        "{json}"
    );
    assert_eq!(
        report["routes"]["generation"].as_u64(),
        Some(model),
        "{json}"
    );

    // Clean up the kernel side (the pin directory guard removes the rest).
    drop(node);
    let _ = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["node", "--cleanup", "--bpffs"])
        .arg(pins.path())
        .output();
}
