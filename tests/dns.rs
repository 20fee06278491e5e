//! `fairlead dns` end to end: the binary on loopback, asked by real clients
//! (dig and kdig over UDP and TCP, glibc's resolver in a network namespace),
//! with truncation forcing a TCP retry, a manifest change reaching the
//! answer, forwarding to an upstream (a second fairlead) and serving stale
//! when it stops, bad packets, telemetry and the lameduck shutdown; and, on
//! a wildcard `--listen` in a node namespace with several addresses, UDP
//! answers that leave from the address asked.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fairlead_proxy::testing::TestNetns;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dns/tests/fixtures/cluster")
}

/// A copy of the fixtures that a test may change.
fn fixtures_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// A running `fairlead dns`, killed on drop.
struct Fairlead {
    child: Child,
    dns: SocketAddr,
    telemetry: SocketAddr,
}

impl Fairlead {
    /// Starts `fairlead dns` on loopback (ports chosen by the kernel) and
    /// waits until it serves a synced model.
    fn start(manifests: &Path, extra: &[&str]) -> Self {
        let command = Command::new(env!("CARGO_BIN_EXE_fairlead"));
        Self::start_with(command, manifests, "127.0.0.1:0", extra)
    }

    fn start_with(mut command: Command, manifests: &Path, listen: &str, extra: &[&str]) -> Self {
        command
            .args(["--log-format", "json", "dns", "--manifests"])
            .arg(manifests)
            .args(["--listen", listen, "--telemetry-addr", "127.0.0.1:0"])
            .args(if extra.contains(&"--lameduck") {
                &[][..]
            } else {
                &["--lameduck", "0"][..]
            })
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("fairlead starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line.clone()).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                    eprintln!("fairlead: {line}");
                }
            }
        });
        let (mut dns, mut telemetry, mut synced) = (None, None, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut log = Vec::new();
        while dns.is_none() || telemetry.is_none() || !synced {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "fairlead did not log that it serves a synced model within 30 s:\n{}",
                    log.join("\n")
                );
            };
            log.push(line.clone());
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &event["fields"];
            match fields["message"].as_str().unwrap_or_default() {
                "serving DNS" => {
                    dns = fields["addrs"]
                        .as_str()
                        .and_then(|a| a.split(',').next()?.parse().ok());
                }
                m if m.starts_with("telemetry listening") => {
                    telemetry = fields["addr"].as_str().and_then(|a| a.parse().ok());
                }
                m if m.starts_with("model synced") => synced = true,
                _ => {}
            }
        }
        // Forward the rest of the log to the test's output.
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                eprintln!("fairlead: {line}");
            }
        });
        Self {
            child,
            dns: dns.unwrap(),
            telemetry: telemetry.unwrap(),
        }
    }

    fn dig(&self, args: &[&str]) -> String {
        run(Command::new("dig")
            .arg(format!("@{}", self.dns.ip()))
            .args(["-p", &self.dns.port().to_string(), "+time=2", "+tries=1"])
            .args(args))
    }

    fn kdig(&self, args: &[&str]) -> String {
        run(Command::new("kdig")
            .arg(format!("@{}", self.dns.ip()))
            .args(["-p", &self.dns.port().to_string(), "+timeout=2", "+retry=0"])
            .args(args))
    }

    fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.telemetry, path)
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fairlead did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fairlead {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's stdout, then its stderr (where kdig puts its warnings).
fn run(command: &mut Command) -> String {
    let out = command.output().expect("the client runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` every 20 ms for at most `within`.
fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dig_and_kdig_over_udp_and_tcp() {
    let dns = Fairlead::start(&fixtures(), &["--upstream", "127.0.0.1:9"]);
    assert_eq!(
        dns.dig(&["+short", "web.shop.svc.cluster.local"]).trim(),
        "10.96.10.10"
    );
    let tcp = dns.dig(&["+tcp", "dual.shop.svc.cluster.local", "AAAA"]);
    assert!(tcp.contains("(TCP)"), "{tcp}");
    assert!(tcp.contains("status: NOERROR"), "{tcp}");
    assert!(tcp.contains("flags: qr aa rd ra"), "{tcp}");
    assert!(tcp.contains("fd00:10:96::20"), "{tcp}");
    assert_eq!(
        sorted_lines(&dns.kdig(&["+short", "db.data.svc.cluster.local", "SRV"])),
        [
            "0 33 5432 10-244-3-44.db.data.svc.cluster.local.",
            "0 33 5432 db-0.db.data.svc.cluster.local.",
            "0 33 5432 db-1.db.data.svc.cluster.local.",
        ]
    );
    let nx = dns.kdig(&["+tcp", "nosuch.shop.svc.cluster.local", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("(TCP)"), "{nx}");
    assert!(
        nx.contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{nx}"
    );
    let nodata = dns.kdig(&["web.shop.svc.cluster.local", "AAAA"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("AUTHORITY: 1"), "{nodata}");
    assert_eq!(
        dns.dig(&["+short", "-x", "10.96.10.10"]).trim(),
        "web.shop.svc.cluster.local."
    );
    assert_eq!(
        dns.dig(&["+short", "dns-version.cluster.local", "TXT"])
            .trim(),
        "\"1.1.0\""
    );

    assert_eq!(dns.http_get("/health").0, 200);
    assert_eq!(dns.http_get("/ready").0, 200);
    let (status, metrics) = dns.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fairlead_dns_requests_total{type=\"A\",rcode=\"NOERROR\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fairlead_dns_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fairlead_dns_model_to_serving_seconds_count 1"),
        "{metrics}"
    );
}

fn big_headless(dir: &Path, endpoints: usize) {
    let mut list = String::new();
    for i in 0..endpoints {
        let _ = writeln!(
            list,
            "  - addresses: [\"10.1.{}.{}\"]",
            i / 250,
            i % 250 + 1
        );
    }
    std::fs::write(
        dir.join("big.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\n\
             spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 80}}]\nendpoints:\n{list}"
        ),
    )
    .unwrap();
}

#[test]
fn truncation_forces_a_tcp_retry() {
    let dir = tempfile::tempdir().unwrap();
    big_headless(dir.path(), 150);
    let dns = Fairlead::start(dir.path(), &["--upstream", "127.0.0.1:9"]);
    // dig asks over UDP (EDNS, 1232 bytes), gets TC, retries over TCP.
    let out = dns.dig(&["big.default.svc.cluster.local", "A"]);
    assert!(out.contains(";; Truncated, retrying in TCP mode."), "{out}");
    assert!(out.contains("ANSWER: 150,"), "{out}");
    assert!(out.contains("(TCP)"), "{out}");
    // Without the retry, the UDP answer is what fits, flagged TC.
    let udp = dns.dig(&["+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(udp.contains("flags: qr aa tc rd ra"), "{udp}");
    assert!(udp.contains("(UDP)"), "{udp}");
    assert!(!udp.contains("ANSWER: 150,"), "{udp}");
    // kdig (no EDNS: 512 bytes) retries too.
    let k = dns.kdig(&["big.default.svc.cluster.local", "A"]);
    assert!(k.contains("retrying over TCP"), "{k}");
    assert!(k.contains("ANSWER: 150;"), "{k}");
    assert!(!k.contains("malformed"), "{k}");
}

#[test]
fn an_endpoint_change_in_a_manifest_changes_the_answer() {
    let dir = fixtures_copy();
    let dns = Fairlead::start(dir.path(), &["--upstream", "127.0.0.1:9"]);
    let before = sorted_lines(&dns.dig(&["+short", "db.data.svc.cluster.local"]));
    assert_eq!(before, ["10.244.1.41", "10.244.2.42", "10.244.3.44"]);
    let file = dir.path().join("data.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("10.244.2.42", "10.244.2.99")).unwrap();
    let changed = Instant::now();
    eventually(
        "the new endpoint in the answer",
        Duration::from_secs(10),
        || {
            sorted_lines(&dns.dig(&["+short", "db.data.svc.cluster.local"]))
                == ["10.244.1.41", "10.244.2.99", "10.244.3.44"]
        },
    );
    eprintln!("manifest change to answer: {:?}", changed.elapsed());
    assert_eq!(
        dns.dig(&["+short", "db-1.db.data.svc.cluster.local"])
            .trim(),
        "10.244.2.99"
    );
    assert_eq!(
        dns.dig(&["+short", "-x", "10.244.2.99"]).trim(),
        "db-1.db.data.svc.cluster.local."
    );
}

#[test]
fn forwards_to_an_upstream_and_serves_stale_when_it_stops() {
    // The upstream: another fairlead, authoritative for `upstream.test`.
    let upstream = Fairlead::start(
        &fixtures(),
        &[
            "--zone",
            "upstream.test",
            "--ttl",
            "1",
            "--upstream",
            "127.0.0.1:9",
        ],
    );
    let dns = Fairlead::start(
        &fixtures(),
        &[
            "--upstream",
            &upstream.dns.to_string(),
            "--dns-upstream-timeout",
            "500ms",
        ],
    );
    let answer = dns.dig(&["+noall", "+answer", "web.shop.svc.upstream.test", "A"]);
    assert_eq!(
        answer.split_whitespace().collect::<Vec<_>>(),
        ["web.shop.svc.upstream.test.", "1", "IN", "A", "10.96.10.10"],
        "{answer}"
    );
    let nx = dns.dig(&["nosuch.shop.svc.upstream.test", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    // The upstream goes away; after the TTL, the last answer is served stale.
    drop(upstream);
    std::thread::sleep(Duration::from_millis(1200));
    let stale = dns.dig(&["+noall", "+answer", "web.shop.svc.upstream.test", "A"]);
    assert_eq!(
        stale.split_whitespace().collect::<Vec<_>>(),
        [
            "web.shop.svc.upstream.test.",
            "30",
            "IN",
            "A",
            "10.96.10.10"
        ],
        "{stale}"
    );
    let (_, metrics) = dns.http_get("/metrics");
    assert!(
        metrics.contains("fairlead_dns_cache_stale_answers_total 1"),
        "{metrics}"
    );
    // A name never seen fails.
    assert!(
        dns.dig(&["db.data.svc.upstream.test"])
            .contains("status: SERVFAIL")
    );
}

#[test]
fn bad_packets_do_not_stop_the_server() {
    let mut dns = Fairlead::start(&fixtures(), &["--upstream", "127.0.0.1:9"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(dns.dns).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // A header that announces a question that is not there: FORMERR.
    socket
        .send(&[0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0xAB, 0xCD]);
    assert_eq!(buf[3] & 0x0F, 1, "FORMERR");
    assert!(n >= 12);
    // Garbage of every size (xorshift, fixed seed), and over TCP too.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..2000 {
        let len = usize::try_from(next() % 700).unwrap();
        let packet: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        socket.send(&packet).unwrap();
        if i % 200 == 0 {
            let mut tcp = TcpStream::connect(dns.dns).unwrap();
            let _ = tcp.write_all(&u16::try_from(len).unwrap().to_be_bytes());
            let _ = tcp.write_all(&packet);
        }
    }
    assert!(dns.child.try_wait().unwrap().is_none(), "still running");
    // Garbage that happens to parse as a query for an outside name is
    // forwarded to the (silent) upstream; under load the flood may take a
    // moment to drain, but the server must answer again within seconds.
    eventually("an answer after the flood", Duration::from_secs(10), || {
        dns.dig(&["+short", "web.shop.svc.cluster.local"]).trim() == "10.96.10.10"
    });
}

/// The query of issue 20: `Dual.Shop` then a compression pointer to offset 3
/// of the message (the low flags byte, 0: the root), type 0x7376, class
/// 0x6307 (REFUSED), trailing bytes. Its answer used to copy the pointer,
/// which then pointed at the answer's flags byte.
const COMPRESSED_QUESTION: [u8; 46] = [
    18, 52, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 68, 117, 97, 108, 4, 83, 104, 111, 112, 192, 3, 115,
    118, 99, 7, 99, 108, 117, 115, 116, 101, 114, 5, 108, 111, 99, 97, 108, 0, 0, 228, 0, 1,
];

/// A UDP relay on loopback between one client question and `server`: the
/// client's query is replaced by `rewrite(query)` (its id kept), and the
/// server's answer goes back to the client byte for byte.
fn relay(server: SocketAddr, rewrite: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    std::thread::spawn(move || {
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 65535];
        let Ok((n, client)) = front.recv_from(&mut buf) else {
            return;
        };
        let mut query = rewrite(&buf[..n]);
        query[..2].copy_from_slice(&buf[..2]);
        back.send_to(&query, server).unwrap();
        if let Ok(n) = back.recv(&mut buf) {
            front.send_to(&buf[..n], client).unwrap();
        }
    });
    addr
}

#[test]
fn a_question_with_a_compression_pointer_gets_an_answer_that_parses() {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};

    let dns = Fairlead::start(&fixtures(), &["--upstream", "127.0.0.1:9"]);
    // Raw, parsed by a DNS library.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(dns.dns).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send(&COMPRESSED_QUESTION).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    let mut decoder = BinDecoder::new(&buf[..n]);
    let answer = Message::read(&mut decoder).expect("the answer parses");
    assert!(decoder.is_empty(), "nothing after the message");
    assert_eq!(answer.metadata.id, 0x1234);
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert_eq!(answer.queries.len(), 1);
    assert_eq!(answer.queries[0].name().to_string(), "Dual.Shop.");

    // kdig asks the same question written out; the relay sends the
    // compressed form instead and kdig reads fairlead's answer.
    let via = relay(dns.dns, |_| COMPRESSED_QUESTION.to_vec());
    let out = run(Command::new("kdig")
        .arg(format!("@{}", via.ip()))
        .args(["-p", &via.port().to_string(), "+timeout=3", "+retry=0"])
        .args(["Dual.Shop.", "CLASS25351", "TYPE29558"]));
    assert!(out.contains("status: REFUSED"), "{out}");
    assert!(!out.to_lowercase().contains("malformed"), "{out}");
    assert!(out.contains("Dual.Shop."), "{out}");

    // A real question whose root label is such a pointer gets its answer.
    let via = relay(dns.dns, |_| {
        let mut query = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend(b"\x03Web\x04Shop\x03svc\x07cluster\x05local\xC0\x03\x00\x01\x00\x01");
        query
    });
    let out = run(Command::new("kdig")
        .arg(format!("@{}", via.ip()))
        .args(["-p", &via.port().to_string(), "+timeout=3", "+retry=0"])
        .args(["Web.Shop.svc.cluster.local.", "A"]));
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(!out.to_lowercase().contains("malformed"), "{out}");
    assert!(
        out.contains("Web.Shop.svc.cluster.local.\t5\tIN\tA\t10.96.10.10"),
        "{out}"
    );
}

#[test]
fn sigterm_fails_ready_at_once_and_stops_after_the_lameduck_period() {
    let mut dns = Fairlead::start(
        &fixtures(),
        &["--upstream", "127.0.0.1:9", "--lameduck", "3"],
    );
    assert_eq!(dns.http_get("/ready").0, 200);
    let pid = dns.child.id().to_string();
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Generous bounds: CI machines are loaded while every suite runs.
    eventually("/ready to fail", Duration::from_secs(2), || {
        dns.http_get("/ready").0 == 503
    });
    // Still alive and answering in the lameduck period.
    assert_eq!(dns.http_get("/health").0, 200);
    assert_eq!(
        dns.dig(&["+short", "web.shop.svc.cluster.local"]).trim(),
        "10.96.10.10"
    );
    let status = dns.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
}

/// A network namespace with loopback up and its own resolv.conf and
/// nsswitch.conf (bind-mounted by `ip netns exec`); removed on drop.
struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    fn new(tag: &str, resolv_conf: &str) -> Self {
        let name = format!("fl-{tag}-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), resolv_conf).unwrap();
        std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
        Self { name, etc }
    }

    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

#[test]
fn glibc_resolves_a_short_name_through_the_search_path_in_a_namespace() {
    if !fairlead_proxy::testing::privileged(
        "glibc_resolves_a_short_name_through_the_search_path_in_a_namespace",
    ) {
        return;
    }
    let netns = Netns::new(
        "dns",
        "nameserver 127.0.0.1\n\
         search shop.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5 timeout:1 attempts:2\n",
    );
    let _dns = Fairlead::start_with(
        netns.exec(env!("CARGO_BIN_EXE_fairlead")),
        &fixtures(),
        "127.0.0.1:53",
        &["--upstream", "127.0.0.1:9"],
    );
    let getent = |name: &str| {
        netns
            .exec("getent")
            .args(["ahosts", name])
            .output()
            .expect("getent runs")
    };
    // `web` → web.shop.svc.cluster.local (first search domain).
    let out = getent("web");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("10.96.10.10") && text.contains("web.shop.svc.cluster.local"),
        "{text}"
    );
    // `db.data` → db.data.svc.cluster.local (second search domain): all ready endpoints.
    let out = getent("db.data");
    let text = String::from_utf8_lossy(&out.stdout);
    for ip in ["10.244.1.41", "10.244.2.42", "10.244.3.44"] {
        assert!(text.contains(ip), "{ip} in {text}");
    }
    assert!(
        !text.contains("10.244.1.43"),
        "not-ready endpoint in {text}"
    );
    // Dual-stack: both families.
    let text = String::from_utf8_lossy(&getent("dual").stdout).into_owned();
    assert!(
        text.contains("10.96.10.20") && text.contains("fd00:10:96::20"),
        "{text}"
    );
    // A name that exists nowhere: not found (exit 2).
    assert_eq!(getent("nosuch").status.code(), Some(2));
}

/// Sum of the samples of metric `name` of a fairlead whose telemetry
/// listens inside `netns`.
fn metric_in(netns: &Netns, telemetry: SocketAddr, name: &str) -> f64 {
    let out = netns
        .exec("curl")
        .args(["-sf", "--max-time", "2"])
        .arg(format!("http://{telemetry}/metrics"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn autopath_answers_a_pods_external_lookup_in_one_query() {
    if !fairlead_proxy::testing::privileged("autopath_answers_a_pods_external_lookup_in_one_query")
    {
        return;
    }
    // A pod of namespace `data` (db-0, 10.244.1.41) with the cluster's
    // default search path; the DNS service address on the same loopback,
    // reached from the pod's address (the local route's source).
    let netns = Netns::new(
        "autopath",
        "nameserver 10.96.0.10\n\
         search data.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5 timeout:1 attempts:2\n",
    );
    for addr in ["10.244.1.41/32", "10.244.9.9/32", "10.96.0.10/32"] {
        run(Command::new("ip").args(["-n", &netns.name, "addr", "add", addr, "dev", "lo"]));
    }
    let source = |from: &str| {
        run(Command::new("ip").args([
            "-n",
            &netns.name,
            "route",
            "replace",
            "table",
            "local",
            "local",
            "10.96.0.10",
            "dev",
            "lo",
            "proto",
            "kernel",
            "scope",
            "host",
            "src",
            from,
        ]));
    };
    source("10.244.1.41");
    // The upstream: another fairlead, authoritative for `upstream.test`.
    let _upstream = Fairlead::start_with(
        netns.exec(env!("CARGO_BIN_EXE_fairlead")),
        &fixtures(),
        "127.0.0.1:5300",
        &["--zone", "upstream.test", "--upstream", "127.0.0.1:9"],
    );
    // The node's resolv.conf has no search domains.
    let host_conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host_conf.path(), "nameserver 127.0.0.1\n").unwrap();
    let dns = Fairlead::start_with(
        netns.exec(env!("CARGO_BIN_EXE_fairlead")),
        &fixtures(),
        "10.96.0.10:53",
        &[
            "--upstream",
            "127.0.0.1:5300",
            "--dns-autopath",
            "--dns-resolv-conf",
            host_conf.path().to_str().unwrap(),
        ],
    );
    let requests = || metric_in(&netns, dns.telemetry, "fairlead_dns_requests_total");
    // `web.shop.svc.upstream.test` has four dots: with ndots:5 the resolver
    // tries the search list first. Each lookup must find the address.
    let lookup = |name: &str| {
        let before = requests();
        let out = netns
            .exec("getent")
            .args(["ahostsv4", name])
            .output()
            .expect("getent runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{name}: {text}");
        (text, requests() - before)
    };
    let (text, queries) = lookup("web.shop.svc.upstream.test");
    assert!(text.contains("10.96.10.10"), "{text}");
    assert!(
        (queries - 1.0).abs() < f64::EPSILON,
        "one query with autopath, not {queries}"
    );
    assert!(
        (metric_in(
            &netns,
            dns.telemetry,
            "fairlead_dns_autopath_total{result=\"completed\"}"
        ) - 1.0)
            .abs()
            < f64::EPSILON
    );
    // A Service of another namespace by its short name: one query too.
    let (text, queries) = lookup("web.shop");
    assert!(text.contains("10.96.10.10"), "{text}");
    assert!((queries - 1.0).abs() < f64::EPSILON, "{queries} queries");
    // A client that is not a pod in the model searches by itself: four
    // queries (three search domains, then the name), the same address.
    source("10.244.9.9");
    let (text, queries) = lookup("web.shop.svc.upstream.test");
    assert!(text.contains("10.96.10.10"), "{text}");
    assert!((queries - 4.0).abs() < f64::EPSILON, "{queries} queries");
}

/// A plain query for `name` (type A, class IN, no EDNS) with message id `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// Runs `f` on a thread inside `netns` (sockets it opens belong there).
fn in_netns<T: Send>(netns: &TestNetns, f: impl FnOnce() -> T + Send) -> T {
    let path = netns.path();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// The interface index of `dev` in `netns`.
fn ifindex(netns: &TestNetns, dev: &str) -> u32 {
    let out = run(Command::new("ip").args(["-n", netns.name(), "-o", "link", "show", "dev", dev]));
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex for {dev}: {out}"))
}

/// The node of the wildcard test: two IPv4 and two IPv6 addresses on its
/// interface, an IPv6 link-local one besides the kernel's, and an address
/// of each family on loopback (a VIP, as node-local DNS caches use) that
/// the client reaches through the first. The client has no link-local
/// address (only a route to fe80::/64): it asks fe80::53 from fd53::100, so
/// the answer must name the interface to leave from. Returns the node, the client and the client's
/// interface.
fn multi_homed_node() -> (TestNetns, TestNetns, String) {
    let node = TestNetns::new("dnode").expect("node netns");
    let client = TestNetns::new("dcli").expect("client netns");
    // Set before the veth arrives: no link-local address on it, ever.
    client
        .sysctl("net.ipv6.conf.default.addr_gen_mode=1")
        .unwrap();
    let (_, client_if) = node
        .link(
            &[
                "10.53.0.1/24",
                "10.53.0.2/24",
                "fd53::1/64",
                "fd53::2/64",
                "fe80::53/64",
            ],
            &client,
            &["10.53.0.100/24", "fd53::100/64"],
        )
        .expect("veth");
    for vip in ["10.99.0.53/32", "fd99::53/128"] {
        node.ip(&["addr", "add", vip, "dev", "lo"]).unwrap();
    }
    for route in [
        &["route", "add", "10.99.0.53/32", "via", "10.53.0.1"][..],
        &["route", "add", "fd99::53/128", "via", "fd53::1"],
        &["-6", "route", "replace", "fe80::/64", "dev", &client_if],
    ] {
        client.ip(route).unwrap();
    }
    (node, client, client_if)
}

/// dig, from `client`, asks `server` on `port` over each path of the UDP
/// loop; each answer must arrive (dig drops or never sees one from another
/// address).
fn dig_gets_every_answer(client: &TestNetns, server: &str, port: u16) {
    let port = port.to_string();
    for (question, want) in [
        // The fast path.
        (&["web.shop.svc.cluster.local", "A"][..], "10.96.10.10"),
        // The general path (another class: REFUSED).
        (
            &["-c", "CH", "web.shop.svc.cluster.local", "A"][..],
            "status: REFUSED",
        ),
        // Forwarded to the upstream, answered from a spawned task.
        (&["web.shop.svc.upstream.test", "A"][..], "10.96.10.10"),
    ] {
        let mut dig = client.command("dig");
        dig.arg(format!("@{server}"))
            .args(["-p", &port, "+time=2", "+tries=1"])
            .args(question);
        let out = fairlead_proxy::testing::run_with_timeout(dig, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("status: ") && text.contains(want),
            "dig @{server} -p {port} {question:?}:\n{text}"
        );
        assert!(!text.contains("unexpected source"), "{text}");
    }
}

/// A UDP socket in `client`, connect()ed to `to` (the kernel drops
/// datagrams from any other address), gets its answers: a cluster name
/// (fast path) and a forwarded one.
fn connected_socket_gets_answers(client: &TestNetns, to: SocketAddr) {
    let answers = in_netns(client, || {
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(local).unwrap();
        socket.connect(to).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut answers = Vec::new();
        for (id, name) in [
            (0x5301, "web.shop.svc.cluster.local"),
            (0x5302, "web.shop.svc.upstream.test"),
        ] {
            socket.send(&a_query(id, name)).unwrap();
            let mut buf = [0u8; 512];
            let answer = socket.recv(&mut buf).map(|n| buf[..n].to_vec());
            answers.push((id, answer.map_err(|e| e.to_string())));
        }
        answers
    });
    for (id, answer) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("no answer from {to} to {id:#x}: {e}"));
        assert_eq!(answer[..2], id.to_be_bytes(), "{to}");
        assert_eq!(answer[3] & 0x0F, 0, "NOERROR from {to}");
        assert_eq!(answer[6..8], [0, 1], "one answer from {to}");
    }
}

/// On a wildcard `--listen`, every UDP answer leaves from the address its
/// query was sent to. fairlead listens on `:53` (IPv4) and on `[::]:5353`
/// (dual-stack: IPv4 arrives v4-mapped) on a node with several addresses
/// (`multi_homed_node`). From another namespace, dig asks each address over
/// each path and must get its answers, and so must a socket connect()ed to
/// the address asked.
#[test]
fn udp_answers_on_a_wildcard_listener_leave_from_the_address_asked() {
    if !fairlead_proxy::testing::privileged(
        "udp_answers_on_a_wildcard_listener_leave_from_the_address_asked",
    ) {
        return;
    }
    let (node, client, client_if) = multi_homed_node();
    let fairlead = || node.command(env!("CARGO_BIN_EXE_fairlead"));
    let upstream = Fairlead::start_with(
        fairlead(),
        &fixtures(),
        "127.0.0.1:0",
        &["--zone", "upstream.test", "--upstream", "127.0.0.1:9"],
    );
    let forward_to = upstream.dns.to_string();
    let _v4 = Fairlead::start_with(fairlead(), &fixtures(), ":53", &["--upstream", &forward_to]);
    let _dual = Fairlead::start_with(
        fairlead(),
        &fixtures(),
        "[::]:5353",
        &["--upstream", &forward_to],
    );

    let mut asked: Vec<(String, SocketAddr)> = Vec::new();
    for ip in ["10.53.0.1", "10.53.0.2", "10.99.0.53"] {
        for port in [53, 5353] {
            asked.push((ip.to_owned(), SocketAddr::new(ip.parse().unwrap(), port)));
        }
    }
    for ip in ["fd53::1", "fd53::2", "fd99::53"] {
        asked.push((ip.to_owned(), SocketAddr::new(ip.parse().unwrap(), 5353)));
    }
    let link_local = std::net::SocketAddrV6::new(
        "fe80::53".parse().unwrap(),
        5353,
        0,
        ifindex(&client, &client_if),
    );
    asked.push((format!("fe80::53%{client_if}"), link_local.into()));
    for (server, to) in &asked {
        dig_gets_every_answer(&client, server, to.port());
        connected_socket_gets_answers(&client, *to);
    }
}
