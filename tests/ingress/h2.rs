//! HTTP/2 against the binary with a raw client (the `h2` crate, and
//! hand-written frames where h2 would not misbehave), over TLS and in clear
//! text with prior knowledge (h2c, on the plain listener) alike: settings and
//! limits, connections that send nothing or half a head, idle connections,
//! and rapid reset (CVE-2023-44487).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::support::{
    Backend, CLASS, Gateway, backend, example_ca, ingress, namespace, rule, runtime, service,
    shop_tls,
};

const HOST: &str = "shop.example.com";

/// How a test speaks HTTP/2 to the gateway.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// TLS to the HTTPS listener, ALPN h2.
    Tls,
    /// Clear text to the plain listener, HTTP/2 with prior knowledge.
    H2c,
}

use Transport::{H2c, Tls};

/// A connection of either transport.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = Box<dyn Io>;

impl Transport {
    const ALL: [Transport; 2] = [Tls, H2c];

    /// A connection to the gateway, TLS handshake done (nothing sent on h2c).
    async fn connect(self, gw: &Gateway) -> Conn {
        match self {
            Tls => Box::new(connect(gw.https).await),
            H2c => Box::new(TcpStream::connect(gw.http).await.unwrap()),
        }
    }

    /// A GET of `path` on `HOST` with this transport's scheme.
    fn get(self, path: &str) -> http::Request<()> {
        let scheme = match self {
            Tls => "https",
            H2c => "http",
        };
        http::Request::builder()
            .uri(format!("{scheme}://{HOST}{path}"))
            .body(())
            .unwrap()
    }
}

/// A TLS connection to the gateway's HTTPS port offering only h2.
async fn connect(addr: SocketAddr) -> TlsStream<TcpStream> {
    connect_alpn(addr, b"h2").await
}

/// A TLS connection to the gateway's HTTPS port offering only `alpn`.
async fn connect_alpn(addr: SocketAddr, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(example_ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

type Client = h2::client::SendRequest<Bytes>;

type ConnTask = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// An h2 client connection: the sender, the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS as last seen, and the connection's task
/// (it ends when the connection does).
async fn client(transport: Transport, gw: &Gateway) -> (Client, watch::Receiver<usize>, ConnTask) {
    let io = transport.connect(gw).await;
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    let mut conn = Box::pin(conn);
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        let poll = conn.as_mut().poll(cx);
        tx.send_replace(conn.max_concurrent_send_streams());
        poll
    }));
    (send, rx, task)
}

/// Sends a GET; returns the status.
async fn request(send: &mut Client, request: http::Request<()>) -> Result<u16, h2::Error> {
    Ok(exchange(send, request).await?.0)
}

/// Sends a GET; returns the status and the body.
async fn exchange(
    send: &mut Client,
    request: http::Request<()>,
) -> Result<(u16, String), h2::Error> {
    let (response, _) = send.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// Reads until the gateway closes the connection; returns how long that took.
async fn time_to_close(mut conn: Conn, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(elapsed) => panic!("connection still open after {limit:?} ({elapsed})"),
        }
    }
}

/// The Ingress: `HOST/` to the Service `service`, with TLS.
fn shop_ingress(service: &str) -> String {
    let spec = format!(
        "  tls: [{{hosts: [{HOST}], secretName: shop-tls}}]\n  rules:\n{}",
        rule(HOST, &[("/", service)])
    );
    ingress("shop", "shop", &spec)
}

/// The gateway in front of `web`; plain-HTTP requests for the TLS host are
/// served (no redirect), so that h2c reaches the backend.
fn gateway(web: &Backend, extra: &[&str]) -> Gateway {
    let extra: Vec<&str> = ["--ingress-ssl-redirect", "false"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("shop")),
            ("ingress.yaml", shop_ingress("web")),
        ],
        &extra,
    )
}

/// A frame header: length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn http2_connections_without_requests_are_closed() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 1], "web", false);
    for transport in Transport::ALL {
        let gw = gateway(
            &web,
            &[
                "--ingress-header-timeout",
                "1s",
                "--ingress-idle-timeout",
                "2s",
            ],
        );
        let limit = Duration::from_secs(5);
        rt.block_on(async {
            // TLS done (or, h2c, connected), then nothing at all: closed after
            // the header timeout (and the grace period: no preface, so no
            // GOAWAY either).
            let took = time_to_close(transport.connect(&gw).await, limit).await;
            assert!(
                took >= Duration::from_millis(900),
                "{transport:?}: closed after {took:?}"
            );

            // Preface and SETTINGS, then a HEADERS frame without END_HEADERS
            // and no CONTINUATION: the request never starts, the connection
            // is closed.
            let mut conn = transport.connect(&gw).await;
            conn.write_all(PREFACE).await.unwrap();
            conn.write_all(&frame(4, 0, 0, &[])).await.unwrap();
            // :method GET, :scheme https, :path / (HPACK static table), and
            // END_STREAM, but not END_HEADERS.
            conn.write_all(&frame(1, 0x1, 1, &[0x82, 0x87, 0x84]))
                .await
                .unwrap();
            conn.flush().await.unwrap();
            let took = time_to_close(conn, limit).await;
            assert!(
                took >= Duration::from_millis(900),
                "{transport:?}: closed after {took:?}"
            );

            // Only a preface and pings: a client answering the gateway's
            // PINGs and sending its own does not keep a request-less
            // connection open.
            let mut conn = transport.connect(&gw).await;
            conn.write_all(PREFACE).await.unwrap();
            conn.write_all(&frame(4, 0, 0, &[])).await.unwrap();
            let start = Instant::now();
            let pinger = async {
                for i in 0u64..100 {
                    if conn
                        .write_all(&frame(6, 0, 0, &i.to_be_bytes()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(limit, pinger).await.ok();
            assert!(
                start.elapsed() < limit,
                "{transport:?}: pings kept the connection open"
            );
        });
        // The silent h2c connection never said it was HTTP/2: it is closed
        // before it gets that far, like a silent HTTP/1.1 one.
        let counted = match transport {
            Tls => 3,
            H2c => 2,
        };
        assert!(
            gw.metric("fairlead_ingress_h2_closed_connections_total{reason=\"header-timeout\"}")
                >= counted,
            "{transport:?}"
        );
    }
    assert_eq!(web.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn http2_idle_connections_are_closed_but_open_streams_are_not() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 2], "web", false);
    for transport in Transport::ALL {
        let gw = gateway(
            &web,
            &[
                "--ingress-header-timeout",
                "1s",
                "--ingress-idle-timeout",
                "1s",
                "--ingress-h2-max-streams",
                "7",
                "--ingress-max-header-bytes",
                "4096",
            ],
        );
        rt.block_on(async {
            let (mut send, streams, conn) = client(transport, &gw).await;
            let (status, body) = exchange(&mut send, transport.get("/a")).await.unwrap();
            assert_eq!(status, 200, "{transport:?}: {body}");
            // HTTP/2 from the client, HTTP/1.1 to the backend.
            assert!(body.contains("proto=HTTP/1.1"), "{transport:?}: {body}");
            // The limits are advertised in SETTINGS.
            assert_eq!(*streams.borrow(), 7, "{transport:?}");
            // A stream lasting longer than the idle timeout is not cut.
            let start = Instant::now();
            assert_eq!(
                request(&mut send, transport.get("/slow2")).await.unwrap(),
                200
            );
            assert!(start.elapsed() >= Duration::from_secs(2));
            // A header list over the limit never reaches the backend.
            let hits = web.hits.load(Ordering::SeqCst);
            let mut big = transport.get("/big");
            big.headers_mut()
                .insert("x-big", "a".repeat(8000).parse().unwrap());
            let status = request(&mut send, big).await;
            assert!(
                matches!(status, Ok(431) | Err(_)),
                "{transport:?}: oversize header list: {status:?}"
            );
            assert_eq!(web.hits.load(Ordering::SeqCst), hits, "{transport:?}");
            // Then idle: the gateway says GOAWAY and the connection ends.
            let start = Instant::now();
            let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
            assert!(ended.is_ok(), "{transport:?}: idle connection still open");
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(900),
                "{transport:?}: closed after {took:?}"
            );
            // (By GOAWAY; the client may still see the socket close as an
            // error if its PING acknowledgement crosses the close, so the
            // metric below says why it ended.)
            drop(ended);
        });
        assert_eq!(
            gw.metric("fairlead_ingress_h2_closed_connections_total{reason=\"idle\"}"),
            1,
            "{transport:?}"
        );
    }
}

#[test]
fn http2_rapid_reset_is_cut_off() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 3], "web", false);
    for transport in Transport::ALL {
        rapid_reset_is_cut_off(&rt, &web, transport);
    }
}

fn rapid_reset_is_cut_off(rt: &tokio::runtime::Runtime, web: &Backend, transport: Transport) {
    let gw = gateway(web, &[]);
    let closed =
        || gw.metric("fairlead_ingress_h2_closed_connections_total{reason=\"rapid-reset\"}");

    // HEADERS and RST_STREAM back to back, as fast as the client goes: the
    // gateway (h2's limit on reset streams not yet accepted, or ours on
    // cancelled ones) closes the connection, and only a bounded number of
    // requests reach the backend.
    let hits = web.hits.load(Ordering::SeqCst);
    let streams_sent = rt.block_on(async {
        let (mut send, _, conn) = client(transport, &gw).await;
        let mut count = 0;
        for _ in 0..5000 {
            let Ok(ready) = send.clone().ready().await else {
                break;
            };
            send = ready;
            let Ok((_, mut stream)) = send.send_request(transport.get("/burst"), false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            count += 1;
            if count % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(
            ended.is_ok(),
            "{transport:?}: connection still open after {count} resets"
        );
        count
    });
    let reached = web.hits.load(Ordering::SeqCst) - hits;
    assert!(
        reached < 400,
        "{transport:?}: {reached} of {streams_sent} reset requests reached the backend"
    );

    // Requests that reach the backend and are cancelled then, one after the
    // other: the gateway closes the connection after about a hundred.
    let before = closed();
    let cancelled = rt.block_on(async {
        let (mut send, _, conn) = client(transport, &gw).await;
        let mut cancelled = 0;
        for _ in 0..300 {
            let hits = web.hits.load(Ordering::SeqCst);
            let Ok((response, mut stream)) = send.send_request(transport.get("/slow"), false)
            else {
                break;
            };
            let deadline = Instant::now() + Duration::from_secs(2);
            while web.hits.load(Ordering::SeqCst) == hits && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            cancelled += 1;
            // Let the reset go out before the next request.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if conn.is_finished() {
                break;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(
            ended.is_ok(),
            "{transport:?}: connection open after {cancelled} cancellations"
        );
        cancelled
    });
    assert!(
        (100..=140).contains(&cancelled),
        "{transport:?}: closed after {cancelled} cancellations"
    );
    assert_eq!(closed(), before + 1, "{transport:?}");

    // Others are still served.
    rt.block_on(async {
        let (mut send, _, _conn) = client(transport, &gw).await;
        assert_eq!(
            request(&mut send, transport.get("/after")).await.unwrap(),
            200
        );
    });
}

#[test]
fn http2_streams_survive_route_updates() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 4], "web", false);
    let other = backend(&rt, [127, 0, 9, 5], "other", false);
    for transport in Transport::ALL {
        let gw = gateway(&web, &[]);
        gw.write("other.yaml", &service("shop", "other", None, &[other.addr]));
        let hits = web.hits.load(Ordering::SeqCst);
        rt.block_on(async {
            let (mut send, _, conn) = client(transport, &gw).await;
            // A stream in flight on the connection while the route moves to
            // another Service.
            let mut slow_send = send.clone();
            let slow =
                tokio::spawn(
                    async move { exchange(&mut slow_send, transport.get("/slow2")).await },
                );
            let deadline = Instant::now() + Duration::from_secs(5);
            while web.hits.load(Ordering::SeqCst) == hits {
                assert!(Instant::now() < deadline, "the slow request never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            gw.write("ingress.yaml", &shop_ingress("other"));
            // New streams on the same connection follow the new route...
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (status, body) = exchange(&mut send, transport.get("/new")).await.unwrap();
                assert_eq!(status, 200, "{transport:?}: {body}");
                if body.contains("name=other") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{transport:?}: the route never moved"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // ...and the one in flight finishes where it started.
            let (status, body) = slow.await.unwrap().unwrap();
            assert_eq!(status, 200, "{transport:?}: {body}");
            assert!(body.contains("name=web"), "{transport:?}: {body}");
            assert!(!conn.is_finished(), "{transport:?}");
        });
    }
}

/// The HTTP/1.1 framing guard covers TLS connections too.
#[test]
fn smuggling_over_tls_gets_400() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 6], "web", false);
    let gw = gateway(&web, &[]);
    rt.block_on(async {
        let mut tls = connect_alpn(gw.https, b"http/1.1").await;
        tls.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response))
            .await
            .expect("connection closed")
            .ok();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    });
    assert_eq!(web.hits.load(Ordering::SeqCst), 0);
}
