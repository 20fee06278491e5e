//! A normal shutdown: every long-running mode, started from manifests and
//! stopped with SIGTERM once it serves, exits 0 and logs nothing at WARN or
//! ERROR. The shutdown used to race the model source against the components
//! (`failed while draining component="ingress" error=the model source
//! stopped` about one stop in three), so each mode is stopped several times.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fairlead_proxy::testing::{KillOnDrop, TestCgroup, TestPinDir, privileged};

/// How often each mode is started and stopped.
const ROUNDS: usize = 6;

/// One Service with one endpoint, in a Namespace, and an IngressClass with
/// an Ingress to it: something for every component to serve.
const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: quiet}
spec:
  clusterIP: 10.96.77.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: quiet, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - {addresses: [10.244.77.2], conditions: {ready: true}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: fairlead}
spec: {controller: fairlead.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: quiet}
spec:
  ingressClassName: fairlead
  rules:
    - host: web.example
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
";

/// Flags that keep every listener on a free loopback port.
const LOOPBACK: [&str; 4] = ["--telemetry-addr", "127.0.0.1:0", "--lameduck", "0"];
const DNS: [&str; 2] = ["--listen", "127.0.0.1:0"];
const INGRESS: [&str; 4] = ["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"];

/// Starts `fairlead <args>` on the manifests, waits until `/ready` answers 200,
/// sends SIGTERM and checks the exit and the log.
fn start_and_stop(dir: &Path, args: &[&str]) {
    let log_path = dir.join(".log");
    let child = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["--log-format", "json"])
        .args(args)
        .arg("--manifests")
        .arg(dir)
        .args(LOOPBACK)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("fairlead starts");
    let mut child = KillOnDrop(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(telemetry) = logged_telemetry(&log())
            && get(telemetry, "/ready").starts_with("HTTP/1.0 200")
        {
            break;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("fairlead {args:?} exited with {status}:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "fairlead {args:?} not ready in 30 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "fairlead {args:?} did not stop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = log();
    assert!(status.success(), "fairlead {args:?}: {status}\n{log}");
    let loud: Vec<&str> = log
        .lines()
        .filter(|line| {
            let level = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|event| event["level"].as_str().map(str::to_owned));
            // A line that is not a JSON event (a panic message) is loud too.
            level.is_none_or(|level| level == "WARN" || level == "ERROR")
        })
        .collect();
    assert!(
        loud.is_empty(),
        "fairlead {args:?} stopped with warnings or errors:\n{}\n--- whole log ---\n{log}",
        loud.join("\n")
    );
    assert!(log.contains("\"stopped\""), "{log}");
}

/// The telemetry address from the `telemetry listening` log line.
fn logged_telemetry(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &event["fields"];
        if !fields["message"]
            .as_str()?
            .starts_with("telemetry listening")
        {
            return None;
        }
        fields["addr"].as_str()?.parse().ok()
    })
}

fn get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quiet.yaml"), MANIFESTS).unwrap();
    dir
}

#[test]
fn sigterm_stops_dns_and_ingress_quietly() {
    let dir = manifests();
    let node: Vec<&str> = ["node", "--no-proxy"]
        .into_iter()
        .chain(DNS)
        .chain(INGRESS)
        .collect();
    let ingress: Vec<&str> = ["ingress"].into_iter().chain(INGRESS).collect();
    let dns: Vec<&str> = ["dns"].into_iter().chain(DNS).collect();
    for _ in 0..ROUNDS {
        for args in [&node, &ingress, &dns] {
            start_and_stop(dir.path(), args);
        }
    }
}

#[test]
fn sigterm_stops_the_whole_node_quietly() {
    if !privileged("sigterm_stops_the_whole_node_quietly") {
        return;
    }
    let dir = manifests();
    let cgroup = TestCgroup::new("quiet").expect("test cgroup");
    let pins = TestPinDir::new("quiet").expect("pin dir");
    let (cgroup, bpffs) = (
        cgroup.path().to_str().unwrap(),
        pins.path().join("maps").to_str().unwrap().to_owned(),
    );
    let node: Vec<&str> = ["node", "--cgroup", cgroup, "--bpffs", &bpffs]
        // No TC programs on the host's interfaces (tests/nodeport.rs covers them).
        .into_iter()
        .chain(["--interfaces", "none"])
        .chain(DNS)
        .chain(INGRESS)
        .collect();
    let proxy: Vec<&str> = [
        "proxy",
        "--cgroup",
        cgroup,
        "--bpffs",
        &bpffs,
        "--interfaces",
        "none",
    ]
    .into();
    for _ in 0..ROUNDS {
        for args in [&node, &proxy] {
            start_and_stop(dir.path(), args);
        }
    }
}
