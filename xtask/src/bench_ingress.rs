//! `cargo xtask bench ingress`: fairlead's gateway against nginx and HAProxy
//! on this machine, same upstream, configurations generated from the same
//! manifests. Prints figures and ratios; not a test.
//!
//! Layout on a 2-core machine: the proxy under test is pinned to CPU 0
//! (fairlead then runs one tokio worker; nginx one worker process; HAProxy
//! one thread); the load generator and the upstream (an nginx answering a
//! fixed 200) share CPU 1.
//!
//! TLS handshakes are measured with `openssl s_time` (parallel clients,
//! no SNI, so each proxy serves its default certificate: an RSA-2048 one,
//! then the shop ECDSA P-256 one), full and resumed, TLS 1.3 and 1.2; the
//! figure to compare is handshakes per CPU-second of the proxy process(es),
//! because the clients share one core and saturate it first with ECDSA.
//!
//! Memory: each proxy loads 1,000 Ingress hosts with 10 endpoints each
//! (`--memory-only` runs just that row) and is measured before traffic, as
//! the PSS and the RSS of the process and its workers.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fairlead_model::source::ManifestDir;
use fairlead_model::{IngressBackend, Locality, ModelWriter, PortRef, Purpose, Snapshot};

use crate::need;

/// Options of the ingress benchmark.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Manifest rewrites (route changes) during the update run.
    #[arg(long, default_value_t = 1000)]
    updates: u32,
    /// Skip building fairlead (use the release binary already built).
    #[arg(long)]
    no_build: bool,
    /// The fairlead binary to run (default: the release build of this
    /// checkout); implies --no-build.
    #[arg(long, value_name = "PATH")]
    fairlead_bin: Option<PathBuf>,
    /// Parallel `openssl s_time` clients in the handshake runs.
    #[arg(long, default_value_t = 4)]
    tls_clients: usize,
    /// Only the memory row (1,000 Ingress hosts, 10k endpoints).
    #[arg(long)]
    memory_only: bool,
    /// Only the Gateway API run (HTTPRoute with a header match against the
    /// same traffic through an Ingress; HTTPRoute updates under load).
    #[arg(long)]
    gateway_api_only: bool,
}

const UPSTREAM: u16 = 18_900;
const HOST: &str = "shop.example.com";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Fairlead,
    Nginx,
    Haproxy,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Fairlead => "fairlead",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    fn ports(self) -> (u16, u16) {
        match self {
            Peer::Fairlead => (18_080, 18_443),
            Peer::Nginx => (18_081, 18_444),
            Peer::Haproxy => (18_082, 18_445),
        }
    }
}

#[derive(Default, Debug, Clone)]
struct Figures {
    h1_rps: f64,
    h1_p50_ms: f64,
    h1_p99_ms: f64,
    h1_errors: u64,
    h2_rps: f64,
    h2_mean_ms: f64,
    h2_failed: u64,
    handshakes: f64,
    https_h1_rps: f64,
    https_h1_p99_ms: f64,
}

/// Handshakes with one certificate type (`openssl s_time`, no SNI: every
/// proxy serves its default certificate): per second, and per CPU-second
/// of the proxy (its own CPU time, so a saturated client does not hide
/// what a handshake costs the proxy).
#[derive(Default, Debug, Clone, Copy)]
struct Handshakes {
    full13: Rate,
    resumed13: Rate,
    full12: Rate,
    resumed12: Rate,
}

#[derive(Default, Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    per_cpu_second: f64,
}

struct Process {
    name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: {} did not stop; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, cpu: &str, program: &Path, args: &[&str], log: &Path) -> Result<Process> {
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Process {
        name: name.to_owned(),
        child,
    })
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} after 20 s")
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("taskset")
        .args(["-c", "1", program])
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU seconds (user + system) used so far by a process and its
/// descendants (nginx's worker is a child of its master).
fn cpu_seconds(pid: u32) -> f64 {
    let mut ticks = 0u64;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // After the command: state is field 3; utime 14, stime 15.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            for i in [11, 12] {
                ticks += fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    stack.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    // USER_HZ is 100 on Linux.
    #[allow(clippy::cast_precision_loss, reason = "CPU ticks of a bench run")]
    let seconds = ticks as f64 / 100.0;
    seconds
}

/// `clients` parallel `openssl s_time` runs (CPU 1) against `port` for
/// `seconds`: full (`-new`) or resumed (`-reuse`) handshakes; the rate per
/// second and per CPU-second of the proxy `pid`.
fn s_time(pid: u32, port: u16, args: &[&str], seconds: u32, clients: usize) -> Result<Rate> {
    let before = cpu_seconds(pid);
    let connect = format!("127.0.0.1:{port}");
    let time = seconds.to_string();
    let children = (0..clients)
        .map(|_| {
            Command::new("taskset")
                .args([
                    "-c", "1", "openssl", "s_time", "-connect", &connect, "-time", &time,
                ])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("running openssl s_time")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut connections = 0.0;
    let mut per_second = 0.0;
    for child in children {
        let out = child.wait_with_output()?;
        let out = String::from_utf8_lossy(&out.stdout);
        // "N connections in T real seconds, B bytes read per connection"
        if let Some(line) = out.lines().rfind(|l| l.contains("real seconds")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let n: f64 = words.first().and_then(|w| w.parse().ok()).unwrap_or(0.0);
            let t: f64 = words
                .get(3)
                .and_then(|w| w.parse().ok())
                .unwrap_or(f64::NAN);
            connections += n;
            per_second += n / t;
        }
    }
    let cpu = cpu_seconds(pid) - before;
    Ok(Rate {
        per_second,
        per_cpu_second: connections / cpu,
    })
}

/// The handshake rows, TLS 1.3 and 1.2, full and resumed. TLS 1.3 runs
/// fetch `/` on each connection (s_time must read the response to get a
/// ticket); TLS 1.2 runs only shake hands.
fn handshakes(pid: u32, port: u16, o: &Options) -> Result<Handshakes> {
    let (secs, n) = (o.seconds.min(5), o.tls_clients);
    let www = ["-www", "/"];
    Ok(Handshakes {
        full13: s_time(
            pid,
            port,
            &[&["-new", "-tls1_3"][..], &www].concat(),
            secs,
            n,
        )?,
        resumed13: s_time(
            pid,
            port,
            &[&["-reuse", "-tls1_3"][..], &www].concat(),
            secs,
            n,
        )?,
        full12: s_time(pid, port, &["-new", "-tls1_2"], secs, n)?,
        resumed12: s_time(pid, port, &["-reuse", "-tls1_2"], secs, n)?,
    })
}

fn to_ms(value: &str) -> f64 {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn field_after<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
}

/// Parses wrk's output: (requests/s, p50 ms, p99 ms, errors).
fn parse_wrk(out: &str) -> (f64, f64, f64, u64) {
    let rps = field_after(out, "Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let p50 = field_after(out, "50%").map_or(f64::NAN, to_ms);
    let p99 = field_after(out, "99%").map_or(f64::NAN, to_ms);
    let mut errors = field_after(out, "Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(socket) = field_after(out, "Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    (rps, p50, p99, errors)
}

/// Parses h2load's output: (requests/s, mean ms, failed).
fn parse_h2load(out: &str) -> (f64, f64, u64) {
    let rps = field_after(out, "finished in")
        .and_then(|v| v.split(',').nth(1))
        .and_then(|v| v.trim().strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mean = field_after(out, "time for request:")
        .and_then(|v| v.split_whitespace().nth(2))
        .map_or(f64::NAN, to_ms);
    let failed = field_after(out, "requests:")
        .and_then(|v| {
            v.split(',')
                .filter(|p| p.contains("failed") || p.contains("errored") || p.contains("timeout"))
                .map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<Option<u64>>()
        })
        .unwrap_or(0);
    (rps, mean, failed)
}

fn measure(peer: Peer, o: &Options) -> Result<Figures> {
    let (http, https) = peer.ports();
    let secs = format!("{}s", o.seconds);
    let conns = o.connections.to_string();
    let host = format!("Host: {HOST}");
    // Warm up.
    run(
        "wrk",
        &[
            "-t1",
            "-c10",
            "-d2s",
            "-H",
            &host,
            &format!("http://127.0.0.1:{http}/"),
        ],
    )?;
    let wrk = run(
        "wrk",
        &[
            "-t1",
            "-c",
            &conns,
            "-d",
            &secs,
            "--latency",
            "-H",
            &host,
            &format!("http://127.0.0.1:{http}/"),
        ],
    )?;
    let (h1_rps, h1_p50_ms, h1_p99_ms, h1_errors) = parse_wrk(&wrk);
    let h2 = run(
        "h2load",
        &[
            "-t1",
            "-c",
            &conns,
            "-m",
            "10",
            "-D",
            &o.seconds.to_string(),
            "-H",
            &format!(":authority: {HOST}"),
            &format!("https://127.0.0.1:{https}/"),
        ],
    )?;
    let (h2_rps, h2_mean_ms, h2_failed) = parse_h2load(&h2);
    let handshakes = run(
        "wrk",
        &[
            "-t1",
            "-c",
            "20",
            "-d",
            &secs,
            "-H",
            &host,
            "-H",
            "Connection: close",
            &format!("https://127.0.0.1:{https}/"),
        ],
    )?;
    let (handshakes, ..) = parse_wrk(&handshakes);
    let https_h1 = run(
        "wrk",
        &[
            "-t1",
            "-c",
            &conns,
            "-d",
            &secs,
            "--latency",
            "-H",
            &host,
            &format!("https://127.0.0.1:{https}/"),
        ],
    )?;
    let (https_h1_rps, _, https_h1_p99_ms, _) = parse_wrk(&https_h1);
    Ok(Figures {
        h1_rps,
        h1_p50_ms,
        h1_p99_ms,
        h1_errors,
        h2_rps,
        h2_mean_ms,
        h2_failed,
        handshakes,
        https_h1_rps,
        https_h1_p99_ms,
    })
}

/// The route of the bench Ingress, read back from the model: (host, path,
/// endpoint addresses).
fn routes(snapshot: &Snapshot) -> Result<Vec<(String, String, Vec<SocketAddr>)>> {
    let mut out = Vec::new();
    for ingress in snapshot.ingresses_for_class("fairlead") {
        for rule in &ingress.rules {
            let host = rule
                .host
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            for path in &rule.paths {
                let IngressBackend::Service { name, port } = &path.backend else {
                    continue;
                };
                let service = snapshot
                    .service(&ingress.key.namespace, name)
                    .context("bench Service missing")?;
                let port = service
                    .ports
                    .iter()
                    .find(|p| match port {
                        PortRef::Number(n) => p.port == *n,
                        PortRef::Name(n) => p.name == *n,
                    })
                    .context("bench Service port missing")?;
                // The gateway's own choice (no node name: no locality).
                let endpoints = service
                    .select(port, None, Purpose::ClusterIp, Locality::default())
                    .endpoints
                    .iter()
                    .map(|b| SocketAddr::new(b.address, b.port))
                    .collect();
                out.push((host.clone(), path.path.clone(), endpoints));
            }
        }
    }
    Ok(out)
}

fn manifests(dir: &Path, root: &Path, extra_path: bool) -> Result<()> {
    let mut paths = String::from(
        "        - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
    );
    if extra_path {
        paths.push_str(
            "        - {path: /extra, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
        );
    }
    let ingress = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: bench}}\n\
         spec:\n  ingressClassName: fairlead\n  tls: [{{hosts: [{HOST}], secretName: shop-tls}}]\n  rules:\n  - host: {HOST}\n    http:\n      paths:\n{paths}"
    );
    let tmp = dir.join(".ingress.yaml.tmp");
    std::fs::write(&tmp, ingress)?;
    std::fs::rename(&tmp, dir.join("ingress.yaml"))?;
    if !dir.join("web.yaml").exists() {
        std::fs::write(
            dir.join("web.yaml"),
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: fairlead}}\n\
                 spec: {{controller: fairlead.dev/ingress}}\n---\n\
                 apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: bench}}\n\
                 spec: {{clusterIP: 10.96.99.1, ports: [{{name: http, port: 80, targetPort: {UPSTREAM}}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-1, namespace: bench, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: {UPSTREAM}}}]\n\
                 endpoints: [{{addresses: [127.0.0.1]}}]\n"
            ),
        )?;
        let tls = std::fs::read_to_string(root.join("examples/shop/shop-tls.yaml"))?
            .replace("namespace: shop", "namespace: bench");
        std::fs::write(dir.join("tls.yaml"), tls)?;
    }
    Ok(())
}

/// PEM files of the bench certificate, from the same Secret the model read.
fn pem_files(snapshot: &Snapshot, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let cert = snapshot
        .certificates
        .values()
        .next()
        .context("the bench Secret did not load")?;
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            s.push('\n');
        }
        let _ = writeln!(s, "-----END {label}-----");
        s
    };
    let chain: String = cert.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let key = pem("PRIVATE KEY", &cert.private_key);
    let paths = (
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("tls.pem"),
    );
    std::fs::write(&paths.0, &chain)?;
    std::fs::write(&paths.1, &key)?;
    std::fs::write(&paths.2, format!("{chain}{key}"))?;
    Ok(paths)
}

/// An RSA-2048 certificate for the bench host (self-signed, made with
/// `openssl req`): the certificate, key and both-in-one PEM files.
fn rsa_files(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (crt, key, pem) = (
        dir.join("rsa.crt"),
        dir.join("rsa.key"),
        dir.join("rsa.pem"),
    );
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-nodes", "-days", "2", "-newkey", "rsa:2048",
        ])
        .args(["-subj", &format!("/CN={HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .context("running openssl req")?;
    if !status.success() {
        bail!("openssl req failed");
    }
    std::fs::write(
        &pem,
        format!(
            "{}{}",
            std::fs::read_to_string(&crt)?,
            std::fs::read_to_string(&key)?
        ),
    )?;
    Ok((crt, key, pem))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// nginx for the same routes. `ssl_protocols` is set: Debian 12's nginx
/// 1.22 leaves TLS 1.3 out by default, and the TLS 1.3 rows then made no
/// connection at all.
fn nginx_conf(
    dir: &Path,
    routes: &[(String, String, Vec<SocketAddr>)],
    crt: &Path,
    key: &Path,
    extra: bool,
) -> String {
    let (http, https) = Peer::Nginx.ports();
    let mut upstreams = String::new();
    let mut locations = String::new();
    for (i, (_, path, endpoints)) in routes.iter().enumerate() {
        let _ = writeln!(upstreams, "  upstream u{i} {{");
        for e in endpoints {
            let _ = writeln!(upstreams, "    server {e};");
        }
        let _ = writeln!(upstreams, "    keepalive 64;\n  }}");
        let _ = writeln!(
            locations,
            "    location {path} {{ proxy_pass http://u{i}; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}"
        );
    }
    if extra {
        locations.push_str("    location /extra { return 200; }\n");
    }
    let host = routes.first().map_or(HOST, |r| r.0.as_str());
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 100000;\n{upstreams}\
         server {{\n    listen 127.0.0.1:{http} default_server;\n    listen 127.0.0.1:{https} ssl http2 default_server;\n\
         server_name {host};\n    ssl_certificate {};\n    ssl_certificate_key {};\n\
         ssl_protocols TLSv1.2 TLSv1.3;\n    \
         ssl_session_cache shared:SSL:10m;\n    ssl_session_timeout 2h;\n{locations}  }}\n}}\n",
        crt.display(),
        key.display()
    )
}

fn haproxy_cfg(routes: &[(String, String, Vec<SocketAddr>)], pem: &Path) -> String {
    let (http, https) = Peer::Haproxy.ports();
    let mut backends = String::new();
    let mut uses = String::new();
    for (i, (_, path, endpoints)) in routes.iter().enumerate() {
        let _ = writeln!(backends, "backend b{i}\n  http-reuse always");
        for (j, e) in endpoints.iter().enumerate() {
            let _ = writeln!(backends, "  server s{j} {e}");
        }
        let _ = writeln!(uses, "  use_backend b{i} if {{ path_beg {path} }}");
    }
    format!(
        "global\n  nbthread 1\n  maxconn 8000\n  tune.ssl.default-dh-param 2048\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
         frontend web\n  bind 127.0.0.1:{http}\n  bind 127.0.0.1:{https} ssl crt {} alpn h2,http/1.1\n\
         option forwardfor\n{uses}{backends}",
        pem.display()
    )
}

/// Starts a peer; fairlead's default certificate (what clients without SNI
/// get, as nginx's and HAProxy's configurations serve theirs) is `pem`.
fn start_peer(
    peer: Peer,
    bin: &Path,
    dir: &Path,
    manifests_dir: &Path,
    pem: &Path,
) -> Result<Process> {
    let (http, https) = peer.ports();
    let log = dir.join(format!("{}.log", peer.name()));
    let process = match peer {
        Peer::Fairlead => spawn(
            "fairlead",
            "0",
            bin,
            &[
                "ingress",
                "--manifests",
                &manifests_dir.display().to_string(),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--https",
                &format!("127.0.0.1:{https}"),
                "--telemetry-addr",
                "127.0.0.1:18990",
                "--ingress-access-log=false",
                "--ingress-ssl-redirect=false",
                // Stopped by SIGTERM between runs: no clients to turn away first.
                "--lameduck",
                "0",
                "--default-cert",
                &pem.display().to_string(),
            ],
            &log,
        )?,
        Peer::Nginx => spawn(
            "nginx",
            "0",
            Path::new("nginx"),
            &[
                "-p",
                &dir.display().to_string(),
                "-c",
                &dir.join("nginx.conf").display().to_string(),
                "-g",
                "daemon off;",
            ],
            &log,
        )?,
        Peer::Haproxy => spawn(
            "haproxy",
            "0",
            Path::new("haproxy"),
            &["-db", "-f", &dir.join("haproxy.cfg").display().to_string()],
            &log,
        )?,
    };
    wait_port(http)?;
    wait_port(https)?;
    Ok(process)
}

/// Requests failed while routes change under load: wrk runs while the
/// routes are rewritten `updates` times (fairlead: the Ingress manifest;
/// nginx: its config plus `nginx -s reload`).
/// What every run needs to know.
struct Setup<'a> {
    options: &'a Options,
    dir: PathBuf,
    manifests: PathBuf,
    root: PathBuf,
    routes: Vec<(String, String, Vec<SocketAddr>)>,
    crt: PathBuf,
    key: PathBuf,
}

fn updates_under_load(peer: Peer, setup: &Setup<'_>) -> Result<(u32, u64, u64)> {
    let (http, _) = peer.ports();
    let seconds = 15;
    let wrk = std::thread::spawn(move || {
        run(
            "wrk",
            &[
                "-t1",
                "-c",
                "20",
                "-d",
                &format!("{seconds}s"),
                "-H",
                &format!("Host: {HOST}"),
                &format!("http://127.0.0.1:{http}/"),
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let budget = Duration::from_secs(seconds - 2);
    let start = Instant::now();
    let mut done = 0;
    // nginx forks new workers per reload; fewer reloads fit in the time.
    let o = setup.options;
    let dir = &setup.dir;
    let updates = if peer == Peer::Nginx {
        o.updates.min(100)
    } else {
        o.updates
    };
    let spacing = budget / updates.max(1);
    for i in 0..updates {
        match peer {
            Peer::Fairlead => manifests(&setup.manifests, &setup.root, i % 2 == 0)?,
            Peer::Nginx => {
                std::fs::write(
                    dir.join("nginx.conf"),
                    nginx_conf(dir, &setup.routes, &setup.crt, &setup.key, i % 2 == 0),
                )?;
                Command::new("nginx")
                    .args([
                        "-p",
                        &dir.display().to_string(),
                        "-c",
                        &dir.join("nginx.conf").display().to_string(),
                        "-s",
                        "reload",
                    ])
                    .stderr(Stdio::null())
                    .status()?;
            }
            Peer::Haproxy => {}
        }
        done += 1;
        let next = spacing * (i + 1);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let out = wrk.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let (_, _, _, errors) = parse_wrk(&out);
    Ok((done, requests, errors))
}

/// The gateway as a library, in this process (pinned to CPU 0), so that the
/// benchmark publishes every route update straight into the model: wrk runs
/// while `updates` snapshots alternate between two route sets.
/// Returns (snapshots published, route tables applied, requests, failed).
fn updates_in_process(setup: &Setup<'_>) -> Result<(u32, u64, u64, u64)> {
    let (a, b) = (setup.dir.join("updates-a"), setup.dir.join("updates-b"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    manifests(&a, &setup.root, false)?;
    manifests(&b, &setup.root, true)?;
    let http = 18_083;
    let mut gateway = InProcess::start(&a, http, 18_446)?;
    let seconds = 15;
    let wrk = std::thread::spawn(move || {
        run(
            "wrk",
            &[
                "-t1",
                "-c",
                "20",
                "-d",
                &format!("{seconds}s"),
                "-H",
                &format!("Host: {HOST}"),
                &format!("http://127.0.0.1:{http}/"),
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let updates = setup.options.updates;
    gateway.alternate(&a, &b, updates, Duration::from_secs(seconds - 2))?;
    let out = wrk.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
    let applied = gateway.stop()?;
    let (_, _, _, errors) = parse_wrk(&out);
    Ok((updates, applied, wrk_requests(&out), errors))
}

/// The gateway as a library in this process (its runtime pinned to CPU 0),
/// fed by a model writer the benchmark drives, so that every update is
/// published straight into the model.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    gateway: tokio::task::JoinHandle<Result<(), fairlead_ingress::Error>>,
    registry: prometheus_client::registry::Registry,
    cancel: tokio_util::sync::CancellationToken,
    writer: ModelWriter,
}

impl InProcess {
    /// Starts the gateway on `http`/`https` with the manifests of `dir`, and
    /// waits until it listens.
    fn start(dir: &Path, http: u16, https: u16) -> Result<Self> {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            args: fairlead_ingress::Args,
        }
        let pid = std::process::id().to_string();
        // Threads made from now on inherit CPU 0 only.
        Command::new("taskset")
            .args(["-p", "-c", "0", &pid])
            .stdout(Stdio::null())
            .status()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Command::new("taskset")
            .args(["-p", "-c", "0,1", &pid])
            .stdout(Stdio::null())
            .status()?;
        let (mut writer, snapshots) = ModelWriter::new();
        ManifestDir::new(dir).sync(&mut writer)?;
        let flags = <Flags as clap::Parser>::try_parse_from([
            "bench",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--https",
            &format!("127.0.0.1:{https}"),
            "--ingress-access-log=false",
            "--ingress-ssl-redirect=false",
        ])?;
        let mut registry = prometheus_client::registry::Registry::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let gateway = runtime.spawn(fairlead_ingress::run(
            flags.args,
            fairlead_ingress::Context {
                snapshots,
                registry: &mut registry,
                ready: fairlead_model::Ready::new(),
                cancel: cancel.clone(),
                node_name: None,
                view: fairlead_ingress::explain::View::default(),
                listen_failures: fairlead_model::gateway_status::ListenFailures::default(),
            },
        ));
        wait_port(http)?;
        Ok(Self {
            runtime,
            gateway,
            registry,
            cancel,
            writer,
        })
    }

    /// Alternates the model between the manifests of `b` and `a`,
    /// `updates` times spread evenly over `spread`.
    fn alternate(&mut self, a: &Path, b: &Path, updates: u32, spread: Duration) -> Result<()> {
        let spacing = spread / updates.max(1);
        let start = Instant::now();
        for i in 0..updates {
            // A fresh source reads its directory whole (a kept one would see
            // no file change and apply nothing): the model then differs from
            // the last snapshot in the routes alone.
            let dir = if i % 2 == 0 { b } else { a };
            ManifestDir::new(dir).sync(&mut self.writer)?;
            if let Some(wait) = (spacing * (i + 1)).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    /// Stops the gateway (after the load is done). Returns the route tables
    /// it applied.
    fn stop(self) -> Result<u64> {
        self.cancel.cancel();
        self.runtime.block_on(self.gateway)??;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("fairlead_ingress_reloads_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

/// The requests wrk reports having made.
fn wrk_requests(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The Gateway API run, in process like [`updates_in_process`]: requests/s
/// and p99 through an HTTPRoute with a header match, then through the
/// Ingress of the same Service on the same socket; then `updates`
/// HTTPRoute changes (alternating two rule sets) under wrk load through the
/// HTTPRoute, with the failed requests.
struct GatewayApiFigures {
    route: (f64, f64),
    ingress: (f64, f64),
    updates: u32,
    applied: u64,
    requests: u64,
    failed: u64,
}

fn gateway_api_manifests(dir: &Path, root: &Path, variant: bool) -> Result<()> {
    manifests(dir, root, false)?;
    let extra = if variant {
        "  - matches: [{path: {type: PathPrefix, value: /extra}, headers: [{name: X-Bench, value: \"1\"}]}]\n\
         \x20   backendRefs: [{name: web, port: 80}]\n"
    } else {
        ""
    };
    let objects = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: fl}}\n\
         spec: {{controllerName: fairlead.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: bench}}\n\
         spec:\n  gatewayClassName: fl\n  listeners: [{{name: http, port: {GATEWAY_API_PORT}, protocol: HTTP}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: bench}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{GATEWAY_API_HOST}]\n  rules:\n\
         \x20 - matches: [{{headers: [{{name: X-Bench, value: \"1\"}}]}}]\n\
         \x20   backendRefs: [{{name: web, port: 80}}]\n{extra}"
    );
    let tmp = dir.join(".gateway-api.yaml.tmp");
    std::fs::write(&tmp, objects)?;
    std::fs::rename(&tmp, dir.join("gateway-api.yaml"))?;
    Ok(())
}

const GATEWAY_API_PORT: u16 = 18_085;
const GATEWAY_API_HOST: &str = "gw.example.com";

#[allow(clippy::too_many_lines, reason = "the benchmark script, top to bottom")]
fn gateway_api_in_process(setup: &Setup<'_>) -> Result<GatewayApiFigures> {
    let (a, b) = (
        setup.dir.join("gateway-api-a"),
        setup.dir.join("gateway-api-b"),
    );
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    gateway_api_manifests(&a, &setup.root, false)?;
    gateway_api_manifests(&b, &setup.root, true)?;
    let http = GATEWAY_API_PORT;
    let mut gateway = InProcess::start(&a, http, 18_447)?;
    let o = setup.options;
    let connections = o.connections;
    let wrk = move |seconds: u32, host: &str, header: bool| {
        let mut args = vec![
            "-t1".to_owned(),
            "-c".to_owned(),
            connections.to_string(),
            "-d".to_owned(),
            format!("{seconds}s"),
            "--latency".to_owned(),
            "-H".to_owned(),
            format!("Host: {host}"),
        ];
        if header {
            args.extend(["-H".to_owned(), "X-Bench: 1".to_owned()]);
        }
        args.push(format!("http://127.0.0.1:{http}/"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("wrk", &args)
    };
    let (route_rps, _, route_p99, route_errors) =
        parse_wrk(&wrk(o.seconds, GATEWAY_API_HOST, true)?);
    let (ingress_rps, _, ingress_p99, _) = parse_wrk(&wrk(o.seconds, HOST, false)?);
    if route_errors > 0 {
        bail!("{route_errors} failed requests through the HTTPRoute");
    }
    let seconds = 15;
    let load = std::thread::spawn(move || wrk(seconds, GATEWAY_API_HOST, true));
    std::thread::sleep(Duration::from_millis(500));
    let updates = o.updates;
    gateway.alternate(&a, &b, updates, Duration::from_secs(u64::from(seconds) - 2))?;
    let out = load.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
    let applied = gateway.stop()?;
    let requests = wrk_requests(&out);
    let (_, _, _, failed) = parse_wrk(&out);
    Ok(GatewayApiFigures {
        route: (route_rps, route_p99),
        ingress: (ingress_rps, ingress_p99),
        updates,
        applied,
        requests,
        failed,
    })
}

fn print_gateway_api(f: &GatewayApiFigures) {
    println!(
        "\ngateway api (fairlead in process, 1 core): {:<28} {:>10} {:>8}",
        "", "req/s", "p99 ms"
    );
    println!(
        "  HTTPRoute, header match          {:>10.0} {:>8.2}",
        f.route.0, f.route.1
    );
    println!(
        "  Ingress, same Service and socket {:>10.0} {:>8.2}",
        f.ingress.0, f.ingress.1
    );
    println!(
        "  {} HTTPRoute updates under load: {} route tables applied, {} requests, {} failed",
        f.updates, f.applied, f.requests, f.failed
    );
}

fn reloads() -> u64 {
    let Ok(mut s) = TcpStream::connect("127.0.0.1:18990") else {
        return 0;
    };
    let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("fairlead_ingress_reloads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::too_many_lines, reason = "the benchmark script, top to bottom")]
pub(crate) fn ingress(o: &Options) -> Result<()> {
    for (tool, package) in [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("taskset", "util-linux"),
        ("openssl", "openssl"),
    ] {
        need(tool, package)?;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    if !o.no_build && o.fairlead_bin.is_none() {
        eprintln!("bench: cargo build --release -p fairlead");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args(["build", "--release", "-p", "fairlead"])
            .current_dir(&root)
            .status()?;
        if !status.success() {
            bail!("the release build failed");
        }
    }
    let bin = o
        .fairlead_bin
        .clone()
        .unwrap_or_else(|| target.join("release/fairlead"));
    let dir = std::env::temp_dir().join(format!("fairlead-bench-{}", std::process::id()));
    let manifests_dir = dir.join("manifests");
    std::fs::create_dir_all(&manifests_dir)?;
    for sub in ["body", "proxy", "fcgi", "uwsgi", "scgi", "upstream"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    manifests(&manifests_dir, &root, false)?;
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(&manifests_dir).sync(&mut writer)?;
    let snapshot = writer.snapshot();
    if snapshot.has_errors() {
        bail!("bench manifests have errors: {:?}", snapshot.problems);
    }
    let routes = routes(&snapshot)?;
    let (crt, key, pem) = pem_files(&snapshot, &dir)?;
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_conf(&dir, &routes, &crt, &key, false),
    )?;
    std::fs::write(dir.join("haproxy.cfg"), haproxy_cfg(&routes, &pem))?;
    let (rsa_crt, rsa_key, rsa_pem) = rsa_files(&dir)?;
    if o.memory_only {
        let memory = memory_rows(&bin, &dir, &rsa_pem, &rsa_crt, &rsa_key)?;
        println!("load average (1, 5, 15 min): {}", load_average());
        print_memory(&memory);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    // The upstream: nginx answering 200 on CPU 1.
    let up = dir.join("upstream");
    std::fs::write(
        up.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {u}/nginx.pid;\nerror_log {u}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 100000; client_body_temp_path {u}/b; proxy_temp_path {u}/p; fastcgi_temp_path {u}/f; uwsgi_temp_path {u}/w; scgi_temp_path {u}/s;\n\
             server {{ listen 127.0.0.1:{UPSTREAM}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            u = up.display()
        ),
    )?;
    let _upstream = spawn(
        "upstream",
        "1",
        Path::new("nginx"),
        &[
            "-p",
            &up.display().to_string(),
            "-c",
            &up.join("nginx.conf").display().to_string(),
            "-g",
            "daemon off;",
        ],
        &up.join("log"),
    )?;
    wait_port(UPSTREAM)?;

    let setup = Setup {
        options: o,
        dir: dir.clone(),
        manifests: manifests_dir.clone(),
        root: root.clone(),
        routes: routes.clone(),
        crt: crt.clone(),
        key: key.clone(),
    };
    if o.gateway_api_only {
        let load_before = load_average();
        eprintln!("bench: fairlead in process, Gateway API");
        let figures = gateway_api_in_process(&setup)?;
        println!(
            "load average (1, 5, 15 min) at the start: {load_before}; at the end: {}",
            load_average()
        );
        print_gateway_api(&figures);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let load_before = load_average();
    let mut results = Vec::new();
    let mut update_results = Vec::new();
    let mut tls_results = Vec::new();
    for peer in [Peer::Fairlead, Peer::Nginx, Peer::Haproxy] {
        eprintln!("bench: {}", peer.name());
        // RSA-2048 first, then ECDSA P-256 (the shop certificate) for the
        // rest.
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_conf(&dir, &routes, &rsa_crt, &rsa_key, false),
        )?;
        std::fs::write(dir.join("haproxy.cfg"), haproxy_cfg(&routes, &rsa_pem))?;
        let process = start_peer(peer, &bin, &dir, &manifests_dir, &rsa_pem)?;
        let rsa = handshakes(process.child.id(), peer.ports().1, o)?;
        drop(process);
        std::fs::write(
            dir.join("nginx.conf"),
            nginx_conf(&dir, &routes, &crt, &key, false),
        )?;
        std::fs::write(dir.join("haproxy.cfg"), haproxy_cfg(&routes, &pem))?;
        let process = start_peer(peer, &bin, &dir, &manifests_dir, &pem)?;
        let ecdsa = handshakes(process.child.id(), peer.ports().1, o)?;
        eprintln!("bench: {} RSA {rsa:?} ECDSA {ecdsa:?}", peer.name());
        tls_results.push((peer, rsa, ecdsa));
        let figures = measure(peer, o)?;
        eprintln!("bench: {} {figures:?}", peer.name());
        if peer != Peer::Haproxy {
            let before = reloads();
            let (done, requests, errors) = updates_under_load(peer, &setup)?;
            let applied = if peer == Peer::Fairlead {
                reloads().saturating_sub(before)
            } else {
                u64::from(done)
            };
            let label = match peer {
                Peer::Fairlead => "fairlead, manifest files (debounced)",
                _ => "nginx, config + nginx -s reload",
            };
            update_results.push((label, done, applied, requests, errors));
        }
        drop(process);
        results.push((peer, figures));
    }

    eprintln!("bench: memory with {MEM_HOSTS} hosts");
    let memory = memory_rows(&bin, &dir, &rsa_pem, &rsa_crt, &rsa_key)?;

    eprintln!("bench: fairlead in process, route updates under load");
    let (done, applied, requests, errors) = updates_in_process(&setup)?;
    eprintln!("bench: fairlead in process, Gateway API");
    let gateway_api = gateway_api_in_process(&setup)?;
    update_results.insert(
        0,
        (
            "fairlead, model updates in process",
            done,
            applied,
            requests,
            errors,
        ),
    );

    let base = results[0].1.clone();
    println!(
        "\ningress benchmark: proxy pinned to 1 core, wrk/h2load + upstream on the other; {} s per run, {} connections",
        o.seconds, o.connections
    );
    // The machine may be shared: say how busy it was, so figures from
    // different runs are read with that in mind.
    println!(
        "load average (1, 5, 15 min) at the start: {load_before}; at the end: {}",
        load_average()
    );
    println!(
        "{:<9} {:>11} {:>9} {:>9} {:>7} {:>11} {:>10} {:>7} {:>12}",
        "",
        "h1 req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "h2 req/s",
        "h2 mean",
        "failed",
        "handshakes/s"
    );
    for (peer, f) in &results {
        println!(
            "{:<9} {:>11.0} {:>9.3} {:>9.3} {:>7} {:>11.0} {:>10.3} {:>7} {:>12.0}",
            peer.name(),
            f.h1_rps,
            f.h1_p50_ms,
            f.h1_p99_ms,
            f.h1_errors,
            f.h2_rps,
            f.h2_mean_ms,
            f.h2_failed,
            f.handshakes
        );
    }
    println!("{:<9} {:>13} {:>9}", "", "https h1 req/s", "p99 ms");
    for (peer, f) in &results {
        println!(
            "{:<9} {:>13.0} {:>9.3}",
            peer.name(),
            f.https_h1_rps,
            f.https_h1_p99_ms
        );
    }
    for (peer, f) in results.iter().skip(1) {
        println!(
            "fairlead / {:<8} h1 req/s {:.2}x, h1 p99 {:.2}x, h2 req/s {:.2}x, https h1 req/s {:.2}x, wrk close handshakes/s {:.2}x",
            peer.name(),
            base.h1_rps / f.h1_rps,
            base.h1_p99_ms / f.h1_p99_ms,
            base.h2_rps / f.h2_rps,
            base.https_h1_rps / f.https_h1_rps,
            base.handshakes / f.handshakes
        );
    }
    println!(
        "\nTLS handshakes (openssl s_time, {} clients on the other core; /s, and per CPU-second of the proxy)",
        o.tls_clients
    );
    println!(
        "{:<9} {:<6} {:>19} {:>19} {:>19} {:>19}",
        "", "cert", "1.3 full (+GET)", "1.3 resumed (+GET)", "1.2 full", "1.2 resumed"
    );
    let cell = |r: Rate| format!("{:.0} / {:.0}", r.per_second, r.per_cpu_second);
    for (peer, rsa, ecdsa) in &tls_results {
        for (cert, h) in [("RSA", rsa), ("ECDSA", ecdsa)] {
            println!(
                "{:<9} {:<6} {:>19} {:>19} {:>19} {:>19}",
                peer.name(),
                cert,
                cell(h.full13),
                cell(h.resumed13),
                cell(h.full12),
                cell(h.resumed12)
            );
        }
    }
    let (_, base_rsa, base_ecdsa) = tls_results[0];
    for (peer, rsa, ecdsa) in tls_results.iter().skip(1) {
        for (cert, b, h) in [("RSA", base_rsa, rsa), ("ECDSA", base_ecdsa, ecdsa)] {
            let ratio = |a: Rate, b: Rate| a.per_cpu_second / b.per_cpu_second;
            println!(
                "fairlead / {:<8} {cert:<5} handshakes per proxy CPU-second: 1.3 full {:.2}x, 1.3 resumed {:.2}x, 1.2 full {:.2}x, 1.2 resumed {:.2}x",
                peer.name(),
                ratio(b.full13, h.full13),
                ratio(b.resumed13, h.resumed13),
                ratio(b.full12, h.full12),
                ratio(b.resumed12, h.resumed12)
            );
        }
    }
    print_memory(&memory);
    print_gateway_api(&gateway_api);
    for (label, done, applied, requests, errors) in &update_results {
        println!(
            "updates under load, {label}: {done} updates, {applied} configurations applied, {requests} requests, {errors} failed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Hosts and endpoints of the memory row (issue 17: 1,000 Ingress hosts,
/// 10k endpoints).
const MEM_HOSTS: usize = 1000;
const MEM_ENDPOINTS_PER_HOST: usize = 10;

/// Resident memory of a process and its descendants (nginx's workers are
/// children of its master), in KiB: (RSS summed, PSS summed). PSS divides
/// pages shared between the processes, so it is the fair total.
fn memory_kib(pid: u32) -> (u64, u64) {
    let (mut rss, mut pss) = (0, 0);
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) {
            for line in rollup.lines() {
                let mut words = line.split_whitespace();
                let (Some(key), Some(value)) = (words.next(), words.next()) else {
                    continue;
                };
                let value: u64 = value.parse().unwrap_or(0);
                match key {
                    "Rss:" => rss += value,
                    "Pss:" => pss += value,
                    _ => {}
                }
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    stack.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    (rss, pss)
}

/// The endpoint addresses of host `i` of the memory row: distinct, never
/// connected to (the row measures the routes loaded, idle).
fn mem_endpoints(i: usize) -> impl Iterator<Item = SocketAddr> {
    (0..MEM_ENDPOINTS_PER_HOST).map(move |j| {
        let n = i * MEM_ENDPOINTS_PER_HOST + j;
        let [_, _, hi, lo] = u32::try_from(n).unwrap_or(0).to_be_bytes();
        SocketAddr::from(([10, 64, hi, lo], 8080))
    })
}

/// The memory row's manifests: one Service, EndpointSlice and Ingress per
/// host, in one multi-document file.
fn mem_manifests(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: fairlead}\n\
         spec: {controller: fairlead.dev/ingress}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: mem}\n",
    );
    for i in 0..MEM_HOSTS {
        let addresses: Vec<String> = mem_endpoints(i)
            .map(|e| format!("{{addresses: [{}]}}", e.ip()))
            .collect();
        let [_, _, hi, lo] = u32::try_from(i).unwrap_or(0).to_be_bytes();
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: mem}}\n\
             spec: {{clusterIP: 10.97.{hi}.{lo}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-1, namespace: mem, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: s{i}, namespace: mem}}\n\
             spec:\n  ingressClassName: fairlead\n  rules:\n  - host: h{i}.mem.example\n    http:\n      paths:\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: s{i}, port: {{number: 80}}}}}}}}\n",
            addresses.join(", ")
        );
    }
    std::fs::write(dir.join("mem.yaml"), out)?;
    Ok(())
}

/// nginx for the memory row: a server block and an upstream per host.
fn mem_nginx_conf(dir: &Path, crt: &Path, key: &Path) -> String {
    let (http, https) = Peer::Nginx.ports();
    let d = dir.display();
    let mut servers = String::new();
    for i in 0..MEM_HOSTS {
        let _ = writeln!(servers, "  upstream m{i} {{");
        for e in mem_endpoints(i) {
            let _ = writeln!(servers, "    server {e};");
        }
        let _ = writeln!(
            servers,
            "    keepalive 64;\n  }}\n  server {{ listen 127.0.0.1:{http}; server_name h{i}.mem.example; \
             location / {{ proxy_pass http://m{i}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        );
    }
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server_names_hash_bucket_size 128;\n  server_names_hash_max_size 4096;\n\
         server {{ listen 127.0.0.1:{http} default_server; listen 127.0.0.1:{https} ssl default_server;\n\
         ssl_certificate {}; ssl_certificate_key {}; return 404; }}\n{servers}}}\n",
        crt.display(),
        key.display()
    )
}

/// HAProxy for the memory row: a backend per host, chosen by a map of
/// hosts (what its ingress controller generates).
fn mem_haproxy_cfg(dir: &Path, pem: &Path) -> Result<String> {
    let (http, https) = Peer::Haproxy.ports();
    let mut backends = String::new();
    let mut hosts = String::new();
    for i in 0..MEM_HOSTS {
        let _ = writeln!(hosts, "h{i}.mem.example m{i}");
        let _ = writeln!(backends, "backend m{i}\n  http-reuse always");
        for (j, e) in mem_endpoints(i).enumerate() {
            let _ = writeln!(backends, "  server s{j} {e}");
        }
    }
    let map = dir.join("hosts.map");
    std::fs::write(&map, hosts)?;
    Ok(format!(
        "global\n  nbthread 1\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend web\n  bind 127.0.0.1:{http}\n  bind 127.0.0.1:{https} ssl crt {}\n\
         use_backend %[req.hdr(host),lower,map({})]\n{backends}",
        pem.display(),
        map.display()
    ))
}

/// Waits until fairlead's gateway has published a route table of at least
/// `routes` routes (its `fairlead_ingress_routes` gauge).
fn wait_routes(routes: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let metrics = Command::new("curl")
            .args(["-sf", "http://127.0.0.1:18990/metrics"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let loaded = metrics
            .lines()
            .find_map(|l| l.strip_prefix("fairlead_ingress_routes "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        if loaded.is_some_and(|n| n >= routes) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("fairlead did not load {routes} routes in 60 s")
}

/// The memory row: each proxy started with 1,000 hosts and 10k endpoints,
/// measured once its routes are loaded, before any traffic.
fn memory_rows(
    bin: &Path,
    dir: &Path,
    pem: &Path,
    crt: &Path,
    key: &Path,
) -> Result<Vec<(Peer, u64, u64)>> {
    let mem = dir.join("mem");
    let manifests = mem.join("manifests");
    mem_manifests(&manifests)?;
    for sub in ["body", "proxy", "fcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(mem.join(sub))?;
    }
    std::fs::write(mem.join("nginx.conf"), mem_nginx_conf(&mem, crt, key))?;
    std::fs::write(mem.join("haproxy.cfg"), mem_haproxy_cfg(&mem, pem)?)?;
    let mut rows = Vec::new();
    for peer in [Peer::Fairlead, Peer::Nginx, Peer::Haproxy] {
        let process = start_peer(peer, bin, &mem, &manifests, pem)?;
        if peer == Peer::Fairlead {
            wait_routes(MEM_HOSTS)?;
        }
        // Let start-up garbage settle (freed parse buffers, nginx's
        // configuration pool) before reading.
        std::thread::sleep(Duration::from_secs(2));
        let (rss, pss) = memory_kib(process.child.id());
        eprintln!("bench: memory {} rss {rss} KiB pss {pss} KiB", peer.name());
        rows.push((peer, rss, pss));
        drop(process);
    }
    Ok(rows)
}

/// Prints the memory rows and fairlead's ratios.
fn print_memory(memory: &[(Peer, u64, u64)]) {
    println!(
        "\nresident memory with {MEM_HOSTS} Ingress hosts and {} endpoints, routes loaded, before traffic (process and its workers)",
        MEM_HOSTS * MEM_ENDPOINTS_PER_HOST
    );
    let mib = |kib: u64| {
        #[expect(clippy::cast_precision_loss, reason = "KiB counts are far below 2^52")]
        let kib = kib as f64;
        kib / 1024.0
    };
    for (peer, rss, pss) in memory {
        println!(
            "{:<9} RSS {:>8.1} MiB   PSS {:>8.1} MiB",
            peer.name(),
            mib(*rss),
            mib(*pss)
        );
    }
    // PSS shares the pages nginx's master and workers have in common; RSS
    // summed over the processes counts them once per process.
    let (_, resident, proportional) = memory[0];
    for (peer, rss, pss) in memory.iter().skip(1) {
        println!(
            "fairlead / {:<8} PSS {:.2}x, RSS summed {:.2}x",
            peer.name(),
            mib(proportional) / mib(*pss),
            mib(resident) / mib(*rss)
        );
    }
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
