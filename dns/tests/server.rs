//! The server on real loopback sockets: readiness and SERVFAIL before the
//! model syncs, model changes reaching answers, and the forwarder against a
//! local upstream (cache, negative cache, TCP retry, serve-stale, the
//! concurrency cap, loop detection), with the metrics that report them.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlead_dns::{Args, Context, Dns, Error};
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Ready, Snapshot};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use prometheus_client::registry::Registry;
use support::upstream::Upstream;
use support::{fixtures, query_bytes, rcode_name, render, tcp_query, udp_query};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: SocketAddr,
    ready: Ready,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
    registry: Registry,
}

impl Running {
    async fn start(mut args: Args, model: watch::Receiver<Arc<Snapshot>>) -> Self {
        if args.upstream.is_empty() {
            // Nothing listens there: forwarded names fail fast.
            args.upstream = vec!["127.0.0.1:9".to_owned()];
        }
        let mut registry = Registry::default();
        let dns = Dns::bind(args, &mut registry).await.expect("binds");
        let addr = dns.local_addrs()[0];
        let ready = Ready::new();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dns.run(Context {
            model,
            ready: ready.clone(),
            cancel: cancel.clone(),
        }));
        Self {
            addr,
            ready,
            cancel,
            task,
            registry,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("stops within 5 s")
            .expect("does not panic");
        result.expect("stops cleanly");
    }
}

fn args() -> Args {
    Args::with_listen("127.0.0.1:0".parse().unwrap())
}

/// Polls `check` every 10 ms for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_and_not_ready_until_the_model_syncs() {
    let (mut writer, model) = ModelWriter::new();
    let server = Running::start(args(), model).await;
    let name = "web.shop.svc.cluster.local.";
    // Unsynced: cluster names fail (never a false NXDOMAIN), not ready.
    let response = udp_query(server.addr, name, RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert!(!server.ready.get());
    // The data arrives, still unsynced: still SERVFAIL.
    let loaded = ManifestDir::new(fixtures()).load().unwrap();
    writer.replace_all(loaded.changes, loaded.problems, false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = udp_query(server.addr, name, RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert!(!server.ready.get());
    // Synced: answers, and ready.
    writer.set_synced();
    eventually("an answer after sync", || async {
        udp_query(server.addr, name, RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NoError
    })
    .await;
    assert!(server.ready.get());
    let response = tcp_query(server.addr, name, RecordType::A).await;
    assert_eq!(
        render(&response),
        "NOERROR aa\nan: web.shop.svc.cluster.local. 5 IN A 10.96.10.10"
    );
    assert!(server.metric("fairlead_dns_index_updates_total") >= 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_changes_the_answer_quickly() {
    let (mut writer, model) = ModelWriter::new();
    let loaded = ManifestDir::new(fixtures()).load().unwrap();
    writer.replace_all(loaded.changes, loaded.problems, true);
    let server = Running::start(args(), model).await;
    let name = "db.data.svc.cluster.local.";
    eventually("synced", || async { server.ready.get() }).await;
    assert_eq!(
        udp_query(server.addr, name, RecordType::A)
            .await
            .answers
            .len(),
        3
    );
    // db-1 goes away.
    let slice: serde_json::Value = serde_norway::from_str(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: data, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: postgres, port: 5432}]\nendpoints:\n- {addresses: [10.244.1.41], hostname: db-0}\n",
    )
    .unwrap();
    let changed = Instant::now();
    writer.apply([fairlead_model::Change::Upsert {
        object: fairlead_model::decode(slice).unwrap(),
        origin: None,
    }]);
    eventually("the new answer", || async {
        udp_query(server.addr, name, RecordType::A)
            .await
            .answers
            .len()
            == 1
    })
    .await;
    let elapsed = changed.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    server.stop().await;
}

/// `--pods insecure` names follow the Namespaces of the model, through the
/// UDP fast path's answer caches too: NXDOMAIN while the namespace does not
/// exist, the address once it does, NXDOMAIN again once it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_pod_names_follow_the_namespaces() {
    let (mut writer, model) = ModelWriter::new();
    let loaded = ManifestDir::new(fixtures()).load().unwrap();
    writer.replace_all(loaded.changes, loaded.problems, true);
    let mut args = args();
    args.pods = fairlead_dns::PodsMode::Insecure;
    let server = Running::start(args, model).await;
    eventually("synced", || async { server.ready.get() }).await;
    let name = "1-2-3-4.later.pod.cluster.local.";
    let code = || async {
        let response = udp_query(server.addr, name, RecordType::A).await;
        (response.metadata.response_code, render(&response))
    };
    // Asked twice: the second answer comes from the fast path's cache.
    for _ in 0..2 {
        assert_eq!(code().await.0, ResponseCode::NXDomain);
    }
    let namespace: serde_json::Value =
        serde_norway::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: later}\n")
            .unwrap();
    writer.apply([fairlead_model::Change::Upsert {
        object: fairlead_model::decode(namespace).unwrap(),
        origin: None,
    }]);
    eventually("an answer once the namespace exists", || async {
        code().await.1 == "NOERROR aa\nan: 1-2-3-4.later.pod.cluster.local. 5 IN A 1.2.3.4"
    })
    .await;
    writer.apply([fairlead_model::Change::Delete(fairlead_model::ObjectId {
        kind: fairlead_model::Kind::Namespace,
        namespace: String::new(),
        name: "later".to_owned(),
    })]);
    eventually("NXDOMAIN once the namespace is gone", || async {
        code().await.0 == ResponseCode::NXDomain
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_caches_and_serves_stale() {
    let upstream = Upstream::start(1).await;
    let (_writer, model) = ModelWriter::new();
    let mut a = args();
    a.upstream = vec![upstream.addr.to_string()];
    let server = Running::start(a, model).await;
    let name = "www.example.test.";

    // Forwarded (even before the model syncs: not a cluster name).
    let response = udp_query(server.addr, name, RecordType::A).await;
    assert_eq!(
        render(&response),
        "NOERROR\nan: www.example.test. 1 IN A 192.0.2.1"
    );
    let after_first = upstream.queries();
    // Cached.
    let response = udp_query(server.addr, name, RecordType::A).await;
    assert_eq!(rcode_name(response.metadata.response_code), "NOERROR");
    assert_eq!(upstream.queries(), after_first, "answered from the cache");
    assert!(server.metric("fairlead_dns_cache_hits_total") >= 1.0);

    // Negative answers are cached too, with their SOA.
    let response = udp_query(server.addr, "nx.example.test.", RecordType::A).await;
    assert_eq!(
        render(&response),
        "NXDOMAIN\nns: example.test. 1 IN SOA example.test. example.test. 1 60 60 60 1"
    );
    let count = upstream.queries();
    let response = udp_query(server.addr, "nx.example.test.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        upstream.queries(),
        count,
        "NXDOMAIN answered from the cache"
    );

    // The upstream stops; once the entry expired, it is served stale.
    upstream.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = udp_query(server.addr, name, RecordType::A).await;
    assert_eq!(
        render(&response),
        "NOERROR\nan: www.example.test. 30 IN A 192.0.2.1"
    );
    assert!(server.metric("fairlead_dns_cache_stale_answers_total") >= 1.0);
    assert!(server.metric("fairlead_dns_upstream_errors_total") >= 1.0);
    // Nothing cached: SERVFAIL.
    let response = udp_query(server.addr, "other.example.test.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let upstream = Upstream::start(60).await;
    let (_writer, model) = ModelWriter::new();
    let mut a = args();
    a.upstream = vec![upstream.addr.to_string()];
    let server = Running::start(a, model).await;
    let response = tcp_query(server.addr, "big.example.test.", RecordType::A).await;
    assert_eq!(response.answers.len(), 100);
    assert!(!response.metadata.truncation);
    assert_eq!(
        upstream
            .tcp_queries
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Over UDP the client gets what fits in its 1232 bytes, with TC set.
    let response = udp_query(server.addr, "big.example.test.", RecordType::A).await;
    assert!(response.metadata.truncation);
    assert!(response.answers.len() < 100 && !response.answers.is_empty());
    assert!(
        response.edns.is_some(),
        "the OPT record survives truncation"
    );
    upstream.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_cap_questions_are_refused() {
    // An upstream that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_writer, model) = ModelWriter::new();
    let mut a = args();
    a.upstream = vec![silent.local_addr().unwrap().to_string()];
    a.max_concurrent = 1;
    a.upstream_timeout = Duration::from_secs(2);
    let server = Running::start(a, model).await;
    // Give the start-up loop probe (which holds no permit) time to go out.
    let addr = server.addr;
    let hanging =
        tokio::spawn(async move { udp_query(addr, "slow.example.test.", RecordType::A).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let response = udp_query(server.addr, "second.example.test.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert!(server.metric("fairlead_dns_forward_overloaded_total") >= 1.0);
    // The first one fails when its upstream times out.
    let first = hanging.await.unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected() {
    // The "upstream" relays every query back to the server itself.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (_writer, model) = ModelWriter::new();
    let mut a = args();
    a.upstream = vec![relay_addr.to_string()];
    // Long, so that a forwarded question that went round would be slow.
    a.upstream_timeout = Duration::from_secs(3);
    let server = Running::start(a, model).await;
    let target = server.addr;
    let relay_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = relay.recv_from(&mut buf).await else {
                return;
            };
            let query = buf[..n].to_vec();
            let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            back.connect(target).await.unwrap();
            back.send(&query).await.unwrap();
            let mut answer = vec![0u8; 4096];
            if let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_secs(2), back.recv(&mut answer)).await
            {
                let _ = relay.send_to(&answer[..m], from).await;
            }
        }
    });
    eventually("the loop detected", || async {
        server.metric("fairlead_dns_forwarding_loops_total") >= 1.0
    })
    .await;
    // Forwarded names now fail at once instead of circling.
    let started = Instant::now();
    let response = udp_query(server.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    relay_task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_this_server_is_never_used() {
    let (_writer, model) = ModelWriter::new();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let mut a = Args::with_listen(addr);
    a.upstream = vec![addr.to_string()];
    let server = Running::start(a, model).await;
    // The loop probe runs beside the server: wait for its verdict (under load it comes late).
    eventually("the forwarding loop detected", || async {
        server.metric("fairlead_dns_forwarding_loops_total") >= 1.0
    })
    .await;
    let response = udp_query(server.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_names_are_resolved_through_the_upstream() {
    let upstream = Upstream::start(60).await;
    let (mut writer, model) = ModelWriter::new();
    let service: serde_json::Value = serde_norway::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: partner, namespace: shop}\nspec: {type: ExternalName, externalName: api.example.test}\n",
    )
    .unwrap();
    writer.apply([fairlead_model::Change::Upsert {
        object: fairlead_model::decode(service).unwrap(),
        origin: None,
    }]);
    writer.set_synced();
    let mut a = args();
    a.upstream = vec![upstream.addr.to_string()];
    let server = Running::start(a, model).await;
    eventually("synced", || async { server.ready.get() }).await;
    let response = udp_query(
        server.addr,
        "partner.shop.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        render(&response),
        "NOERROR aa\nan: api.example.test. 60 IN A 192.0.2.1\nan: partner.shop.svc.cluster.local. 5 IN CNAME api.example.test."
    );
    assert!(
        matches!(response.answers[0].data, RData::CNAME(_)),
        "CNAME first"
    );
    upstream.stop().await;
    server.stop().await;
}

/// Sends `query` from a socket connected to `to` (so that only datagrams
/// from exactly `to` reach it) and waits at most 5 s for the response.
async fn ask_connected(to: SocketAddr, query: &[u8]) -> Vec<u8> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = tokio::net::UdpSocket::bind(any).await.unwrap();
    socket.connect(to).await.unwrap();
    socket.send(query).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no response from {to} within 5 s"))
        .unwrap();
    buf.truncate(n);
    buf
}

/// On a wildcard address, every UDP answer leaves from the address its
/// query was sent to: asked at 127.0.0.2, where the route back would pick
/// 127.0.0.1, on an IPv4 socket and on a dual-stack one (v4-mapped), on
/// each path (fast, general, forwarded, FORMERR). The client's socket is
/// connected: an answer from any other address never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_on_a_wildcard_address_leave_from_the_address_asked() {
    let upstream = Upstream::start(60).await;
    for wildcard in ["0.0.0.0:0", "[::]:0"] {
        let (mut writer, model) = ModelWriter::new();
        let loaded = ManifestDir::new(fixtures()).load().unwrap();
        writer.replace_all(loaded.changes, loaded.problems, true);
        let mut a = Args::with_listen(wildcard.parse().unwrap());
        a.upstream = vec![upstream.addr.to_string()];
        let server = Running::start(a, model).await;
        eventually("synced", || async { server.ready.get() }).await;
        let port = server.addr.port();
        let mut asked: Vec<SocketAddr> = vec![(Ipv4Addr::new(127, 0, 0, 2), port).into()];
        if server.addr.is_ipv6() {
            asked.push((Ipv6Addr::LOCALHOST, port).into());
        }
        for to in asked {
            let at = format!("{wildcard}, asked at {to}");
            // The fast path, twice (a miss builds the answer, a hit copies it).
            for _ in 0..2 {
                let query = query_bytes(
                    "web.shop.svc.cluster.local.",
                    RecordType::A,
                    DNSClass::IN,
                    Some(1232),
                );
                let response = Message::from_vec(&ask_connected(to, &query).await).unwrap();
                assert_eq!(
                    render(&response),
                    "NOERROR aa\nan: web.shop.svc.cluster.local. 5 IN A 10.96.10.10",
                    "{at}"
                );
            }
            // The general path, inline: another class.
            let query = query_bytes(
                "web.shop.svc.cluster.local.",
                RecordType::A,
                DNSClass::CH,
                Some(1232),
            );
            let response = Message::from_vec(&ask_connected(to, &query).await).unwrap();
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::Refused,
                "{at}"
            );
            // Forwarded: answered from a spawned task.
            let name = format!("www-{}.example.test.", to.port() ^ u16::from(to.is_ipv6()));
            let query = query_bytes(&name, RecordType::A, DNSClass::IN, Some(1232));
            let response = Message::from_vec(&ask_connected(to, &query).await).unwrap();
            assert_eq!(
                render(&response),
                format!("NOERROR\nan: {name} 60 IN A 192.0.2.1"),
                "{at}"
            );
            // A header and a question cut short: FORMERR.
            let mut query = query_bytes(
                "web.shop.svc.cluster.local.",
                RecordType::A,
                DNSClass::IN,
                None,
            );
            query.truncate(20);
            let response = ask_connected(to, &query).await;
            assert_eq!(response[..2], query[..2], "{at}");
            assert_eq!(response[3] & 0x0F, 1, "FORMERR, {at}");
        }
        server.stop().await;
    }
    upstream.stop().await;
}

/// `message` with its two-byte length in front (DNS over TCP).
fn framed(id: u16, name: &str) -> Vec<u8> {
    let mut bytes = query_bytes(name, RecordType::A, DNSClass::IN, None);
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend(bytes);
    out
}

/// The next answer on `stream`, or `None` once the server closed it.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> Option<Message> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 2];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len))
        .await
        .expect("an answer or a close within 5 s");
    if read.is_err() {
        return None;
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.unwrap();
    Some(Message::from_vec(&buf).expect("the answer parses"))
}

/// Whether the server closes `stream` within `within` (reading nothing).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_queries_are_pipelined_and_answered_as_they_are_ready() {
    use tokio::io::AsyncWriteExt as _;
    // An upstream that never answers: forwarded questions take the timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (writer, _) = support::model();
    let mut a = args();
    a.upstream = vec![silent.local_addr().unwrap().to_string()];
    a.upstream_timeout = Duration::from_millis(800);
    a.serve_stale = Duration::ZERO;
    let server = Running::start(a, writer.subscribe()).await;
    eventually("ready", || async { server.ready.get() }).await;

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Four queries in one write: a forwarded name first, then cluster names.
    let mut burst = framed(1, "slow.example.test.");
    burst.extend(framed(2, "web.shop.svc.cluster.local."));
    burst.extend(framed(3, "nosuch.shop.svc.cluster.local."));
    burst.extend(framed(4, "dual.shop.svc.cluster.local."));
    stream.write_all(&burst).await.unwrap();
    // A fifth, a byte at a time (partial reads on the server's side).
    for byte in framed(5, "db.data.svc.cluster.local.") {
        stream.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let answer = read_answer(&mut stream).await.expect("an answer");
        let want = match answer.metadata.id {
            1 => ResponseCode::ServFail,
            3 => ResponseCode::NXDomain,
            _ => ResponseCode::NoError,
        };
        assert_eq!(answer.metadata.response_code, want, "{answer:?}");
        order.push(answer.metadata.id);
    }
    // The cluster names did not wait for the upstream.
    assert_eq!(order.last(), Some(&1), "answered in the order {order:?}");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3, 4, 5]);
    // The client closes its side: the server finishes and closes.
    stream.shutdown().await.unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_dribbling_tcp_connections_are_closed_and_their_number_is_capped() {
    use tokio::io::AsyncWriteExt as _;
    let (writer, _) = support::model();
    let mut a = args();
    a.tcp_idle_timeout = Duration::from_millis(300);
    a.tcp_max_connections = 2;
    let server = Running::start(a, writer.subscribe()).await;
    eventually("ready", || async { server.ready.get() }).await;

    // Silent: closed after the idle timeout.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A byte every 100 ms never completes a message: closed all the same.
    let mut dribbling = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let query = framed(7, "web.shop.svc.cluster.local.");
    let mut closed = false;
    for byte in query.iter().take(20) {
        if dribbling.write_all(&[*byte]).await.is_err()
            || closed_within(&mut dribbling, Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after 20 bytes in 2 s");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Two connections are served; a third is closed at once, and counted.
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(&framed(8, "web.shop.svc.cluster.local."))
            .await
            .unwrap();
        assert!(read_answer(stream).await.is_some());
    }
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = third
        .write_all(&framed(9, "web.shop.svc.cluster.local."))
        .await;
    assert!(read_answer(&mut third).await.is_none(), "closed unanswered");
    let refused = server.metric("fairlead_dns_tcp_connections_refused_total");
    assert!((refused - 1.0).abs() < f64::EPSILON, "{refused} refused");
    let open = server.metric("fairlead_dns_tcp_connections ");
    assert!((open - 2.0).abs() < f64::EPSILON, "{open} open");
    server.stop().await;
}

/// Bursts larger than a receive batch, on a specific and on wildcard
/// addresses, from two clients asking at two addresses of ours: every
/// query gets its own answer (id, question, rcode) from the address it
/// asked, whatever mix of paths a batch holds (fast, general inline,
/// FORMERR, forwarded in a task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_queries_are_each_answered_from_the_address_asked() {
    let upstream = Upstream::start(60).await;
    for listen in ["127.0.0.1:0", "0.0.0.0:0", "[::]:0"] {
        let (mut writer, model) = ModelWriter::new();
        let loaded = ManifestDir::new(fixtures()).load().unwrap();
        writer.replace_all(loaded.changes, loaded.problems, true);
        let mut a = Args::with_listen(listen.parse().unwrap());
        a.upstream = vec![upstream.addr.to_string()];
        a.udp_sockets = 1;
        let server = Running::start(a, model).await;
        eventually("synced", || async { server.ready.get() }).await;
        let port = server.addr.port();
        let mut targets: Vec<SocketAddr> = vec![(Ipv4Addr::LOCALHOST, port).into()];
        if listen.starts_with('0') || listen.starts_with('[') {
            targets.push((Ipv4Addr::new(127, 0, 0, 2), port).into());
        }
        if listen.starts_with('[') {
            targets.push((Ipv6Addr::LOCALHOST, port).into());
        }
        let mut clients = Vec::new();
        for to in &targets {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let socket = tokio::net::UdpSocket::bind(any).await.unwrap();
            socket.connect(to).await.unwrap();
            clients.push(socket);
        }
        let expect = |i: u16| -> (String, ResponseCode) {
            match i % 5 {
                0 | 1 => ("web.shop.svc.cluster.local.".into(), ResponseCode::NoError),
                2 => (
                    "nosuch.shop.svc.cluster.local.".into(),
                    ResponseCode::NXDomain,
                ),
                3 => (format!("b{i}.example.test."), ResponseCode::NoError),
                _ => (String::new(), ResponseCode::FormErr),
            }
        };
        // Waves of 50 (more than a receive batch), each read before the
        // next: 150 unread answers would overflow the client's socket buffer.
        let wave_size: u16 = 50;
        for (c, client) in clients.iter().enumerate() {
            for wave in 0..3 {
                for i in wave * wave_size..(wave + 1) * wave_size {
                    let (name, _) = expect(i);
                    let mut query = if name.is_empty() {
                        // A question announced, none there: FORMERR.
                        vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
                    } else {
                        query_bytes(&name, RecordType::A, DNSClass::IN, Some(1232))
                    };
                    let id = u16::try_from(c).unwrap() * 1000 + i;
                    query[..2].copy_from_slice(&id.to_be_bytes());
                    client.send(&query).await.unwrap();
                }
                let mut seen = std::collections::BTreeSet::new();
                let mut buf = vec![0u8; 65535];
                while seen.len() < usize::from(wave_size) {
                    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "{listen} via {}: {} of {wave_size} answers",
                                targets[c],
                                seen.len()
                            )
                        })
                        .unwrap();
                    let answer = Message::from_vec(&buf[..n]).unwrap();
                    let i = answer.metadata.id - u16::try_from(c).unwrap() * 1000;
                    let (name, rcode) = expect(i);
                    assert_eq!(answer.metadata.response_code, rcode, "{listen} #{i}");
                    if !name.is_empty() {
                        assert_eq!(answer.queries[0].name().to_string(), name);
                    }
                    assert!(seen.insert(i), "{listen}: #{i} answered twice");
                }
            }
        }
        server.stop().await;
    }
    upstream.stop().await;
}
