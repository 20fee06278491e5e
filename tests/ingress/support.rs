//! Harness for the gateway's end-to-end tests: small HTTP backends on
//! 127.0.0.x, manifests in a temporary directory, the `fairlead ingress`
//! binary on loopback ports, curl and raw sockets as clients.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// A runtime for the backends (and async clients) of one test.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A test backend.
#[derive(Clone)]
pub(crate) struct Backend {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<AtomicUsize>,
    pub(crate) paths: Arc<Mutex<Vec<String>>>,
    /// The path and body of each request, once its body was read whole.
    pub(crate) bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
}

/// Starts an HTTP backend on `ip` (port chosen by the kernel) that answers
/// every request with a description of what it received. `/slow` waits a
/// second first (`/slowN`: N seconds); `/dripN` answers at once and sends
/// its body over N seconds, a line every 100 ms; `/ws` with an Upgrade is a
/// WebSocket echo. With `h2c`, it
/// speaks HTTP/2 by prior knowledge and sends a `grpc-status` trailer.
pub(crate) fn backend(rt: &Runtime, ip: [u8; 4], name: &str, h2c: bool) -> Backend {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(SocketAddr::from((ip, 0))))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Backend {
        name: name.to_owned(),
        addr,
        hits: Arc::new(AtomicUsize::new(0)),
        paths: Arc::new(Mutex::new(Vec::new())),
        bodies: Arc::new(Mutex::new(Vec::new())),
    };
    let b = backend.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let b = b.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let svc = service_fn(move |req| handle(b.clone(), req, h2c));
                if h2c {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    backend
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    b: Backend,
    mut req: Request<Incoming>,
    h2c: bool,
) -> Result<Response<TestBody>, Infallible> {
    b.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    b.paths.lock().unwrap().push(path.clone());
    if path == "/ws" && req.headers().contains_key("upgrade") {
        let key = header(req.headers(), "sec-websocket-key");
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                websocket_echo(TokioIo::new(upgraded)).await;
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&websocket_accept(&key)).unwrap(),
        );
        return Ok(response);
    }
    if let Some(secs) = path.strip_prefix("/drip") {
        let ticks: u32 = secs.parse::<u32>().unwrap_or(1) * 10;
        let lines = futures::stream::unfold(0, move |n| async move {
            if n == ticks {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let line = Bytes::from(format!("drip {n}\n"));
            Some((Ok::<_, Infallible>(hyper::body::Frame::data(line)), n + 1))
        });
        return Ok(Response::new(
            http_body_util::StreamBody::new(lines).boxed(),
        ));
    }
    if let Some(secs) = path.strip_prefix("/slow") {
        // `/slow` waits a second, `/slowN` N seconds.
        let secs = secs.parse().unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let mut text = String::new();
    let _ = writeln!(text, "name={}", b.name);
    let _ = writeln!(text, "proto={:?}", req.version());
    let _ = writeln!(text, "path={}", req.uri().path());
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(ToString::to_string))
        .unwrap_or_default();
    let _ = writeln!(text, "host={host}");
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-request-id",
        "connection",
        "x-secret",
        "te",
    ] {
        let _ = writeln!(text, "{name}={}", header(req.headers(), name));
    }
    // Every header (for header filters), and the query.
    let mut names: Vec<&str> = req.headers().keys().map(http::HeaderName::as_str).collect();
    names.dedup();
    for name in names {
        let _ = writeln!(text, "h:{name}={}", header(req.headers(), name));
    }
    let _ = writeln!(text, "query={}", req.uri().query().unwrap_or(""));
    // A body that broke off is not recorded.
    let body = match req.into_body().collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            b.bodies.lock().unwrap().push((path.clone(), body.clone()));
            body
        }
        Err(_) => Bytes::new(),
    };
    let _ = writeln!(text, "body={}", String::from_utf8_lossy(&body));
    let full = Full::new(Bytes::from(text));
    let body = if h2c {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        full.with_trailers(async move { Some(Ok(trailers)) })
            .boxed()
    } else {
        full.boxed()
    };
    let mut response = Response::new(body);
    // Response headers for response header filters to change.
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::from_str(&b.name).unwrap());
    response
        .headers_mut()
        .insert("x-internal", HeaderValue::from_static("secret"));
    if h2c {
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
    }
    Ok(response)
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub(crate) fn websocket_accept(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes WebSocket frames (unmasked, as a server sends them) until close.
async fn websocket_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    loop {
        let mut head = [0u8; 2];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            len = u64::from(u16::from_be_bytes(b));
        }
        let mut mask = [0u8; 4];
        if masked && s.read_exact(&mut mask).await.is_err() {
            return;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if opcode == 8 {
            let _ = s.write_all(&[0x88, 0]).await;
            return;
        }
        let mut frame = vec![0x80 | opcode, u8::try_from(payload.len()).unwrap()];
        frame.extend_from_slice(&payload);
        if s.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// A WebSocket client over a blocking socket (frames under 126 bytes).
pub(crate) struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    /// Opens `/ws` through the gateway on `addr` for `host`.
    pub(crate) fn connect(addr: SocketAddr, host: &str) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused:\n{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains(&format!(
                "sec-websocket-accept: {}",
                websocket_accept(key).to_ascii_lowercase()
            )),
            "{head}"
        );
        assert!(lower.contains("upgrade: websocket"), "{head}");
        WebSocket { stream }
    }

    /// Sends a text message and returns the echo.
    pub(crate) fn echo(&mut self, text: &str) -> String {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x81, "a text frame");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        self.stream.read_exact(&mut payload).unwrap();
        String::from_utf8(payload).unwrap()
    }
}

/// Reads an HTTP response head (up to the blank line).
pub(crate) fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends raw bytes and reads until the gateway closes (or `timeout`).
/// Returns what was read and whether the connection was closed.
pub(crate) fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in `text`.
pub(crate) fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// --- manifests ------------------------------------------------------------

/// The IngressClass `fairlead`, default.
pub(crate) const CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: fairlead
  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}
spec: {controller: fairlead.dev/ingress}
";

/// A namespace.
pub(crate) fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// A Service with port 80 (name `http`) and one EndpointSlice per endpoint
/// (each with its own port), all ready.
pub(crate) fn service(
    ns: &str,
    name: &str,
    app_protocol: Option<&str>,
    endpoints: &[SocketAddr],
) -> String {
    let app = app_protocol.map_or(String::new(), |a| format!(", appProtocol: {a}"));
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  clusterIP: None\n  ports: [{{name: http, port: 80, targetPort: 80{app}}}]\n"
    );
    for (i, ep) in endpoints.iter().enumerate() {
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\n\
             endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
            ep.port(),
            ep.ip()
        );
    }
    out
}

/// An Ingress of class `fairlead` with these rules (YAML list items, indented
/// by four spaces) and optional extra spec lines.
pub(crate) fn ingress(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  ingressClassName: fairlead\n{spec}"
    )
}

/// A rule routing `host` (or every host when empty) `path` (Prefix) to `service`.
pub(crate) fn rule(host: &str, paths: &[(&str, &str)]) -> String {
    let mut out = String::from("  - ");
    if !host.is_empty() {
        let _ = write!(out, "host: \"{host}\"\n    ");
    }
    out.push_str("http:\n      paths:\n");
    for (path, service) in paths {
        let _ = writeln!(
            out,
            "        - {{path: \"{path}\", pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}"
        );
    }
    out
}

/// The example TLS Secret (shop.example.com, *.shop.example.com), moved to `ns`.
pub(crate) fn shop_tls(ns: &str) -> String {
    std::fs::read_to_string(root().join("examples/shop/shop-tls.yaml"))
        .unwrap()
        .replace("namespace: shop", &format!("namespace: {ns}"))
}

/// The example CA.
pub(crate) fn example_ca() -> PathBuf {
    root().join("examples/shop/example-ca.crt")
}

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// --- the gateway ----------------------------------------------------------

/// An address field of the first JSON log line whose message starts with
/// `message`.
fn logged_addr(log: &str, message: &str, field: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("\"message\":\"{message}")))?;
    let start = line.find(&format!("\"{field}\":\""))? + field.len() + 4;
    line[start..].split('"').next()?.parse().ok()
}

/// The `fairlead ingress` binary on loopback.
pub(crate) struct Gateway {
    child: Option<Child>,
    pub(crate) http: SocketAddr,
    pub(crate) https: SocketAddr,
    pub(crate) telemetry: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    log: PathBuf,
}

impl Gateway {
    /// Writes `files` into a new manifest directory and starts the gateway on
    /// it with `extra` flags; returns once it is ready.
    pub(crate) fn start(files: &[(&str, String)], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let log = dir.path().join(".gateway.log");
        // Port 0 everywhere: the gateway logs what it bound.
        let child = Command::new(env!("CARGO_BIN_EXE_fairlead"))
            .args(["--log-format", "json", "ingress", "--manifests"])
            .arg(dir.path())
            // `--http` and `--https` may be given in `extra` (Gateway
            // listeners name a port).
            .args(
                ["--http", "--https"]
                    .into_iter()
                    .filter(|flag| !extra.contains(flag))
                    .flat_map(|flag| [flag, "127.0.0.1:0"]),
            )
            .args(["--telemetry-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("fairlead starts");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut gateway = Gateway {
            child: Some(child),
            http: unbound,
            https: unbound,
            telemetry: unbound,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = gateway.log();
            if let (Some(http), Some(https), Some(telemetry)) = (
                logged_addr(&log, "ingress gateway listening", "http"),
                logged_addr(&log, "ingress gateway listening", "https"),
                logged_addr(&log, "telemetry", "addr"),
            ) {
                (gateway.http, gateway.https, gateway.telemetry) = (http, https, telemetry);
                if gateway.telemetry_get("/ready").starts_with("HTTP/1.0 200") {
                    return gateway;
                }
            }
            if let Some(status) = gateway.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("fairlead exited with {status}:\n{log}");
            }
            assert!(Instant::now() < deadline, "not ready in 30 s:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gateway's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces a manifest file atomically (write aside, then rename).
    pub(crate) fn write(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    fn telemetry_get(&self, path: &str) -> String {
        let Ok(mut stream) = TcpStream::connect(self.telemetry) else {
            return String::new();
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    /// The value of one integer metric sample (the full name with labels
    /// as printed), or 0 when absent.
    pub(crate) fn metric(&self, sample: &str) -> u64 {
        let text = self.telemetry_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `check` holds (10 s at most).
    pub(crate) fn wait_for(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (10 s at most).
    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://host:port` of the plain listener as curl `--resolve` wants it.
    pub(crate) fn resolve_http(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.http.port())
    }

    /// Same for the TLS listener.
    pub(crate) fn resolve_https(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.https.port())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

// --- curl -------------------------------------------------------------------

/// What curl got.
#[derive(Debug)]
pub(crate) struct Curl {
    pub(crate) status: u16,
    pub(crate) version: String,
    pub(crate) body: String,
    pub(crate) stderr: String,
    pub(crate) headers: String,
}

/// Runs curl with `args` (silent, 10 s timeout); parses status and version.
pub(crate) fn curl(args: &[&str]) -> Curl {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let out: Output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
            "-D",
        ])
        .arg(headers.path())
        .args(args)
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut last = last.split_whitespace();
    Curl {
        status: last.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: last.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        headers: std::fs::read_to_string(headers.path()).unwrap_or_default(),
    }
}

impl Curl {
    /// A `key=value` line of the backend's description.
    pub(crate) fn field(&self, key: &str) -> &str {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("")
    }
}
