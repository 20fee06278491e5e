//! `fairlead ingress` end to end: the binary on loopback, manifests in a
//! temporary directory whose EndpointSlices point at small backends on
//! 127.0.0.x, and real clients (curl, raw sockets, a WebSocket).

#![allow(
    clippy::too_many_lines,
    reason = "each end-to-end test reads as one scenario, top to bottom"
)]

mod gateway_api;
mod gateway_rules;
mod h2;
#[path = "../support/ports.rs"]
mod ports;
mod support;
mod tls;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{
    CLASS, Gateway, WebSocket, backend, curl, example_ca, ingress, namespace, raw, rule, runtime,
    service, shop_tls, status_of,
};

#[test]
fn http1_routes_forwarded_headers_and_404() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 1, 1], "web", false);
    let api = backend(&rt, [127, 0, 1, 2], "api", false);
    let rules = format!(
        "  rules:\n{}{}",
        rule("shop.test", &[("/", "web"), ("/api", "api")]),
        rule("*.apps.test", &[("/", "api")])
    );
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("api.yaml", service("shop", "api", None, &[api.addr])),
            ("ingress.yaml", ingress("shop", "shop", &rules)),
        ],
        &["--trusted-proxies", "192.0.2.0/24"],
    );
    let url = |host: &str, path: &str| format!("http://{host}:{}{path}", gw.http.port());
    let resolve = gw.resolve_http("shop.test");

    let r = curl(&["--resolve", &resolve, &url("shop.test", "/api/v1?x=1")]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    assert_eq!(r.field("name"), "api");
    assert_eq!(r.field("path"), "/api/v1");
    assert_eq!(r.field("proto"), "HTTP/1.1");
    assert_eq!(r.field("host"), format!("shop.test:{}", gw.http.port()));
    // Forwarded headers: a forged X-Forwarded-For from an untrusted client
    // is replaced; a hop-by-hop header named by Connection is dropped.
    let r = curl(&[
        "--resolve",
        &resolve,
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Request-Id: forged",
        "-H",
        "Connection: x-secret",
        "-H",
        "X-Secret: 1",
        &url("shop.test", "/apiary"),
    ]);
    assert_eq!(r.field("name"), "web", "/apiary is not under /api");
    assert_eq!(r.field("x-forwarded-for"), "127.0.0.1");
    assert_eq!(r.field("x-real-ip"), "127.0.0.1");
    assert_eq!(r.field("x-forwarded-proto"), "http");
    assert_eq!(
        r.field("x-forwarded-host"),
        format!("shop.test:{}", gw.http.port())
    );
    assert_eq!(r.field("x-request-id").len(), 32, "{r:?}");
    assert_eq!(r.field("x-secret"), "");
    assert_eq!(r.field("connection"), "");
    // Dot segments are resolved before routing.
    let r = curl(&[
        "--path-as-is",
        "--resolve",
        &resolve,
        &url("shop.test", "/static/../api/x"),
    ]);
    assert_eq!(
        (r.field("name"), r.field("path")),
        ("api", "/api/x"),
        "{r:?}"
    );
    // Wildcard host.
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("a.apps.test"),
        &url("a.apps.test", "/"),
    ]);
    assert_eq!(r.field("name"), "api");
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("a.b.apps.test"),
        &url("a.b.apps.test", "/"),
    ]);
    assert_eq!(r.status, 404, "a wildcard matches one label only");
    // Unknown host: 404 with a small body.
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("nope.test"),
        &url("nope.test", "/"),
    ]);
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "404 Not Found\n");
    // A POST body goes through.
    let r = curl(&[
        "--resolve",
        &resolve,
        "-d",
        "hello=1",
        &url("shop.test", "/api"),
    ]);
    assert_eq!(r.field("body"), "hello=1");
    // Metrics count by Ingress, host and status.
    assert!(gw.metric("fairlead_ingress_requests_total{ingress=\"shop/shop\",host=\"shop.test\",status=\"200\"}") >= 4);
    assert!(
        gw.metric("fairlead_ingress_requests_total{ingress=\"\",host=\"\",status=\"404\"}") >= 1
    );
    // The access log has the request.
    let log = gw.log();
    let access = log
        .lines()
        .find(|l| l.contains("fairlead_ingress::access") && l.contains("/api/v1"))
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    for field in [
        "\"status\":200",
        "\"ingress\":\"shop/shop\"",
        "\"route_host\":\"shop.test\"",
        "\"route_path\":\"/api\"",
        "\"upstream\":\"shop/api:80\"",
        "\"attempts\":1",
        "\"upstream_ms\":",
        "\"request_id\":\"",
        // Logged by a connection task, still in the component's span.
        "\"component\":\"ingress\"",
    ] {
        assert!(access.contains(field), "{field} missing in {access}");
    }
}

#[test]
fn tls_http2_sni_default_certificate_and_redirect() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 2, 1], "web", false);
    let spec = format!(
        "  tls: [{{hosts: [shop.example.com, \"*.shop.example.com\"], secretName: shop-tls}}]\n  rules:\n{}{}",
        rule("shop.example.com", &[("/", "web")]),
        rule("*.shop.example.com", &[("/", "web")])
    );
    let plain = format!("  rules:\n{}", rule("plain.example.com", &[("/", "web")]));
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("shop")),
            ("ingress.yaml", ingress("shop", "shop", &spec)),
            ("plain.yaml", ingress("shop", "plain", &plain)),
        ],
        &[],
    );
    let ca = example_ca();
    let ca = ca.to_str().unwrap();
    let https = |host: &str| format!("https://{host}:{}/path?q=1", gw.https.port());

    // HTTP/2 over TLS, certificate verified against the test CA.
    let r = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &https("shop.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(r.field("proto"), "HTTP/1.1", "HTTP/1.1 to the backend");
    assert_eq!(r.field("x-forwarded-proto"), "https");
    // HTTP/1.1 over TLS (ALPN http/1.1).
    let r = curl(&[
        "--http1.1",
        "--cacert",
        ca,
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &https("shop.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    // TLS 1.2 works too.
    let r = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        ca,
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &https("shop.example.com"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    // The wildcard certificate covers one label below.
    let r = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &gw.resolve_https("a.shop.example.com"),
        &https("a.shop.example.com"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    // An unknown name gets the default (self-signed) certificate: verification fails...
    let r = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &gw.resolve_https("plain.example.com"),
        &https("plain.example.com"),
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    // ...and, unverified, it is the default one; the request is still served.
    let r = curl(&[
        "-v",
        "-k",
        "--resolve",
        &gw.resolve_https("plain.example.com"),
        &https("plain.example.com"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.stderr.contains("CN=fairlead default certificate"),
        "{}",
        r.stderr
    );
    let r = curl(&[
        "-v",
        "-k",
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &https("shop.example.com"),
    ]);
    assert!(r.stderr.contains("CN=shop.example.com"), "{}", r.stderr);
    assert!(
        gw.metric("fairlead_ingress_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\"}") >= 4
    );
    assert!(
        gw.metric("fairlead_ingress_tls_handshakes_total{result=\"ok\",version=\"TLSv1.2\"}") >= 1
    );

    // Plain HTTP for a TLS host: 308 to HTTPS, path and query kept.
    let http = |host: &str| format!("http://{host}:{}/path?q=1", gw.http.port());
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("shop.example.com"),
        &http("shop.example.com"),
    ]);
    assert_eq!(r.status, 308, "{r:?}");
    assert!(
        r.headers.contains(&format!(
            "location: https://shop.example.com:{}/path?q=1",
            gw.https.port()
        )),
        "{}",
        r.headers
    );
    // ACME HTTP-01 challenges are not redirected; hosts without TLS neither.
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("shop.example.com"),
        &format!(
            "http://shop.example.com:{}/.well-known/acme-challenge/x",
            gw.http.port()
        ),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("plain.example.com"),
        &http("plain.example.com"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    drop(gw);

    // The redirect can be switched off.
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("shop")),
            ("ingress.yaml", ingress("shop", "shop", &spec)),
        ],
        &["--ingress-ssl-redirect=false"],
    );
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("shop.example.com"),
        &format!("http://shop.example.com:{}/", gw.http.port()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// The plain listener serves HTTP/2 with prior knowledge (h2c, what gRPC
/// clients inside a cluster speak) beside HTTP/1.1, to real clients: curl
/// and h2load. (tests/ingress/h2.rs holds the HTTP/2 limits, over TLS and
/// h2c alike.)
#[test]
fn h2c_prior_knowledge_beside_http1_on_the_plain_listener() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 10, 1], "web", false);
    let spec = format!(
        "  tls: [{{hosts: [shop.example.com], secretName: shop-tls}}]\n  rules:\n{}{}",
        rule("plain.example.com", &[("/", "web")]),
        rule("shop.example.com", &[("/", "web")])
    );
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("h2c")),
            ("web.yaml", service("h2c", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("h2c")),
            ("ingress.yaml", ingress("h2c", "web", &spec)),
        ],
        &[],
    );
    let url = |host: &str| format!("http://{host}:{}/grpc?q=1", gw.http.port());
    let resolve = gw.resolve_http("plain.example.com");
    let r = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        &url("plain.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(r.field("proto"), "HTTP/1.1", "HTTP/1.1 to the backend");
    assert_eq!(r.field("x-forwarded-proto"), "http");
    assert_eq!(r.field("path"), "/grpc", "{r:?}");
    // HTTP/1.1 on the same port, as before.
    let r = curl(&[
        "--http1.1",
        "--resolve",
        &resolve,
        &url("plain.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    // A POST (its first byte is the preface's) is HTTP/1.1 too.
    let r = curl(&[
        "--http1.1",
        "--data",
        "x=1",
        "--resolve",
        &resolve,
        &url("plain.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    // h2c is plain HTTP: a host with TLS is redirected to HTTPS, as HTTP/1.1 is.
    let r = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &gw.resolve_http("shop.example.com"),
        &url("shop.example.com"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (308, "2"), "{r:?}");

    // h2load: 4 connections, 10 streams each at a time, every request answered.
    let before = web.hits.load(Ordering::SeqCst);
    let out = std::process::Command::new("h2load")
        .args([
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "10",
            "-H",
            ":authority: plain.example.com",
        ])
        .arg(format!("http://127.0.0.1:{}/load", gw.http.port()))
        .output()
        .expect("h2load (nghttp2-client, scripts/setup.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("400 succeeded, 0 failed, 0 errored")
            && report.contains("status codes: 400 2xx"),
        "{report}"
    );
    assert!(report.contains("Application protocol: h2c"), "{report}");
    assert_eq!(web.hits.load(Ordering::SeqCst) - before, 400);
}

#[test]
fn hundred_requests_spread_over_ten_endpoints_refusing_one_retried_then_ejected() {
    let rt = runtime();
    let backends: Vec<_> = (1..=10)
        .map(|i| backend(&rt, [127, 0, 3, i], &format!("b{i}"), false))
        .collect();
    // An endpoint that refuses connections: a port nobody listens on.
    let refusing = {
        let l = std::net::TcpListener::bind("127.0.3.100:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut endpoints: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    endpoints.push(refusing);
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("lb")),
            ("web.yaml", service("lb", "web", None, &endpoints)),
            (
                "ingress.yaml",
                ingress(
                    "lb",
                    "web",
                    &format!("  rules:\n{}", rule("", &[("/", "web")])),
                ),
            ),
        ],
        &["--ingress-eject-after", "3"],
    );
    let url = format!("http://127.0.0.1:{}/", gw.http.port());
    // `n` requests over one keep-alive connection; their status codes.
    let batch = |n: usize| -> Vec<String> {
        let mut args = vec!["-w", "%{http_code}\n"];
        for _ in 0..n {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let codes = batch(100);
    assert_eq!(codes.len(), 100, "{codes:?}");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    let hits: Vec<usize> = backends
        .iter()
        .map(|b| b.hits.load(Ordering::SeqCst))
        .collect();
    assert_eq!(hits.iter().sum::<usize>(), 100);
    // Spread: with uniform picks, an endpoint left out of 100 happens in
    // 1 run of 4000, two left out in 1 of 10^8.
    assert!(
        hits.iter().filter(|h| **h > 0).count() >= 9,
        "spread: {hits:?}"
    );
    assert!(hits.iter().all(|h| *h <= 30), "spread: {hits:?}");
    let upstream = "upstream=\"lb/web:80\"";
    let connect_errors =
        format!("fairlead_ingress_upstream_errors_total{{{upstream},kind=\"connect\"}}");
    let retries = format!("fairlead_ingress_upstream_retries_total{{{upstream}}}");
    let ejections = format!("fairlead_ingress_ejections_total{{{upstream}}}");
    // The refusing endpoint is picked about one time in eleven: more
    // requests until it has failed three times and is ejected.
    for _ in 0..10 {
        if gw.metric(&ejections) == 1 {
            break;
        }
        assert!(batch(50).iter().all(|c| c == "200"));
    }
    // Three connect failures, each retried on another endpoint, then ejected.
    assert_eq!(gw.metric(&ejections), 1);
    assert_eq!(gw.metric(&connect_errors), 3);
    assert_eq!(gw.metric(&retries), 3);
    // Ejected: no longer tried.
    assert!(batch(100).iter().all(|c| c == "200"));
    assert_eq!(gw.metric(&connect_errors), 3);
    // No endpoint at all: 503; every endpoint refusing: 502.
    gw.write("web.yaml", &service("lb", "web", None, &[]));
    gw.wait_for("503 without endpoints", || curl(&[&url]).status == 503);
    gw.write("web.yaml", &service("lb", "web", None, &[refusing]));
    gw.wait_for("502 when the only endpoint refuses", || {
        curl(&[&url]).status == 502
    });
}

#[test]
fn h2c_upstream_gets_http2_with_trailers() {
    let rt = runtime();
    let grpc = backend(&rt, [127, 0, 4, 1], "grpc", true);
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("rpc")),
            (
                "grpc.yaml",
                service("rpc", "grpc", Some("kubernetes.io/h2c"), &[grpc.addr]),
            ),
            ("tls.yaml", shop_tls("rpc")),
            (
                "ingress.yaml",
                ingress(
                    "rpc",
                    "grpc",
                    &format!(
                        "  tls: [{{hosts: [shop.example.com], secretName: shop-tls}}]\n  rules:\n{}",
                        rule("shop.example.com", &[("/", "grpc")])
                    ),
                ),
            ),
        ],
        &[],
    );
    let ca = example_ca();
    let r = curl(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        "-H",
        "TE: trailers",
        "-H",
        "content-type: application/grpc",
        "--data-binary",
        "payload",
        &format!(
            "https://shop.example.com:{}/pkg.Service/Method",
            gw.https.port()
        ),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(
        r.field("proto"),
        "HTTP/2.0",
        "the upstream speaks HTTP/2: {r:?}"
    );
    assert_eq!(r.field("path"), "/pkg.Service/Method");
    assert_eq!(r.field("te"), "trailers");
    assert_eq!(r.field("body"), "payload");
    // The upstream's trailer reaches the client (curl does not show
    // HTTP/2 trailers; nghttp prints every frame).
    let out = std::process::Command::new("nghttp")
        .args(["-v", "-t", "10", "-d", "/dev/null"])
        .args(["-H", ":authority: shop.example.com", "-H", "te: trailers"])
        .arg(format!(
            "https://127.0.0.1:{}/pkg.Service/Method",
            gw.https.port()
        ))
        .output()
        .expect("nghttp (Debian nghttp2-client) runs");
    let frames = String::from_utf8_lossy(&out.stdout);
    let status = frames.find(":status: 200").expect("a 200");
    let trailer = frames
        .find("grpc-status: 0")
        .unwrap_or_else(|| panic!("no trailer:\n{frames}"));
    let data = frames[status..].find("recv DATA frame").map(|i| i + status);
    assert!(
        data.is_some_and(|d| d < trailer),
        "the trailer comes after the data:\n{frames}"
    );
    // An HTTP/1.1 client reaches the h2c upstream too.
    let r = curl(&[
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &format!("https://shop.example.com:{}/x", gw.https.port()),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
    assert_eq!(r.field("proto"), "HTTP/2.0");
}

#[test]
fn websocket_and_updates_under_load_lose_nothing() {
    let rt = runtime();
    let backends: Vec<_> = (1..=4)
        .map(|i| backend(&rt, [127, 0, 5, i], &format!("b{i}"), false))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // The Ingress flips between two routes sets and two Secrets (same
    // certificate, different objects), so routes and certificates change.
    let main_ingress = |flip: bool| {
        let mut paths = vec![("/", "web"), ("/ws", "web")];
        if flip {
            paths.push(("/extra", "web"));
        }
        let secret = if flip { "shop-tls-2" } else { "shop-tls" };
        ingress(
            "live",
            "web",
            &format!(
                "  tls: [{{hosts: [shop.example.com], secretName: {secret}}}]\n  rules:\n{}{}",
                rule("live.test", &paths),
                rule("shop.example.com", &[("/", "web")])
            ),
        )
    };
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("live")),
            ("web.yaml", service("live", "web", None, &addrs[..2])),
            ("tls.yaml", shop_tls("live")),
            (
                "tls2.yaml",
                shop_tls("live").replace("name: shop-tls", "name: shop-tls-2"),
            ),
            ("ingress.yaml", main_ingress(false)),
        ],
        &["--ingress-access-log=false"],
    );
    let mut ws = WebSocket::connect(gw.http, "live.test");
    assert_eq!(ws.echo("before"), "before");

    // The load: four keep-alive clients and one new-connection client.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let names = Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let mut workers = Vec::new();
    for worker in 0..5 {
        let (stop, ok, failures, names) =
            (stop.clone(), ok.clone(), failures.clone(), names.clone());
        let addr = gw.http;
        workers.push(rt.spawn(async move {
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() || worker == 4 {
                    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let (s, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let s = sender.as_mut().unwrap();
                let request = http::Request::builder()
                    .uri("/")
                    .header("host", "live.test")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                match s.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let body = http_body_util::BodyExt::collect(response.into_body()).await;
                        match body {
                            Ok(body) if status == 200 => {
                                let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                                if let Some(name) =
                                    text.lines().next().and_then(|l| l.strip_prefix("name="))
                                {
                                    names.lock().unwrap().insert(name.to_owned());
                                }
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{status}: {other:?}"));
                                sender = None;
                            }
                        }
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("send: {e}"));
                        sender = None;
                    }
                }
            }
        }));
    }
    // HTTP/2 over TLS, three streams per connection, certificate checked.
    let tls_worker = {
        let stop = stop.clone();
        let resolve = gw.resolve_https("shop.example.com");
        let url = format!("https://shop.example.com:{}/", gw.https.port());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let ca = support::example_ca();
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "--http2", "--max-time", "10", "--resolve", &resolve])
                    .arg("--cacert")
                    .arg(&ca)
                    .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
                    .args(["-w", "%{http_code} %{http_version}\n", &url, &url, &url])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && text.lines().filter(|l| *l == "200 2").count() == 3 {
                    ok += 3;
                } else {
                    failed.push(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            (ok, failed)
        })
    };
    // Change endpoints, routes and certificates many times.
    let reloads_before = gw.metric("fairlead_ingress_reloads_total");
    let subsets: [&[SocketAddr]; 4] = [&addrs[2..], &addrs[..], &addrs[1..3], &addrs[..2]];
    let changes = 24;
    for i in 0..changes {
        if i % 2 == 0 {
            gw.write(
                "web.yaml",
                &service("live", "web", None, subsets[(i / 2) % 4]),
            );
        } else {
            gw.write("ingress.yaml", &main_ingress(i % 4 == 1));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        rt.block_on(w).unwrap();
    }
    let (tls_ok, tls_failed) = tls_worker.join().unwrap();
    assert!(tls_failed.is_empty(), "HTTPS failures: {tls_failed:?}");
    assert!(tls_ok >= 9, "only {tls_ok} HTTPS requests");
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 200, "only {ok} requests");
    let names = names.lock().unwrap().clone();
    assert_eq!(names.len(), 4, "every endpoint set was served: {names:?}");
    let reloads = gw.metric("fairlead_ingress_reloads_total") - reloads_before;
    assert!(reloads >= 10, "only {reloads} route tables published");
    // The WebSocket opened before every change is still open.
    assert_eq!(ws.echo("after"), "after");
}

#[test]
fn bad_input_is_refused_and_others_keep_being_served() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 6, 1], "web", false);
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("bad")),
            ("web.yaml", service("bad", "web", None, &[web.addr])),
            (
                "ingress.yaml",
                ingress(
                    "bad",
                    "web",
                    &format!("  rules:\n{}", rule("", &[("/", "web")])),
                ),
            ),
        ],
        &["--ingress-header-timeout", "1s"],
    );
    let t = Duration::from_secs(5);
    let served = || curl(&[&format!("http://127.0.0.1:{}/ok", gw.http.port())]).status == 200;

    // A slowloris client, trickling its head, is cut off while others are served.
    let slow = {
        let addr = gw.http;
        std::thread::spawn(move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let start = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(100));
                if s.write_all(b"X-A: b\r\n").is_err() {
                    return start.elapsed();
                }
            }
            // Still open after five seconds of trickling would be a failure.
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 64];
            let closed = matches!(std::io::Read::read(&mut s, &mut buf), Ok(0) | Err(_));
            assert!(closed);
            start.elapsed()
        })
    };
    assert!(served());

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "bad header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "no Host in HTTP/1.1",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
            400,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            "CONNECT",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n".to_vec(),
            405,
        ),
        (
            "oversize header",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(40_000)
            )
            .into_bytes(),
            431,
        ),
        (
            "too many headers",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                "X-H: 1\r\n".repeat(150)
            )
            .into_bytes(),
            431,
        ),
        (
            "URI too long",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10_000)).into_bytes(),
            414,
        ),
    ];
    for (what, request, expected) in &cases {
        let (response, _) = raw(gw.http, request, t);
        assert_eq!(status_of(&response), *expected, "{what}: {response}");
        assert!(served(), "still serving after {what}");
    }
    // An idle keep-alive connection is closed after the header timeout.
    let (_, closed) = raw(gw.http, b"", Duration::from_secs(4));
    assert!(closed, "idle connection closed");

    let slow_for = slow.join().unwrap();
    assert!(
        slow_for < Duration::from_secs(4),
        "slowloris cut after {slow_for:?}"
    );
    assert!(served());
}

/// Request smuggling: every head whose framing another server could read
/// differently gets 400 and a closed connection, nothing reaches the backend,
/// and the gateway goes on serving.
#[test]
fn smuggling_attempts_get_400_and_a_closed_connection() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 6, 2], "web", false);
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("smuggle")),
            ("web.yaml", service("smuggle", "web", None, &[web.addr])),
            (
                "ingress.yaml",
                ingress(
                    "smuggle",
                    "web",
                    &format!("  rules:\n{}", rule("", &[("/", "web")])),
                ),
            ),
        ],
        &[],
    );
    let t = Duration::from_secs(5);
    let served = || curl(&[&format!("http://127.0.0.1:{}/ok", gw.http.port())]).status == 200;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = |headers: &str, body: &str| {
        format!("POST /first HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}{smuggled}")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length then Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "duplicate Content-Length",
            post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
        ),
        (
            "conflicting Content-Lengths",
            post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd"),
        ),
        (
            "Content-Length list",
            post("Content-Length: 3, 3\r\n", "abc"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding other than chunked alone",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "two Transfer-Encoding lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST /first HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold",
            post("X-A: b\r\n Transfer-Encoding: chunked\r\n", ""),
        ),
        (
            "obs-fold of Transfer-Encoding",
            post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "bare LF line ends",
            format!("GET /first HTTP/1.1\nHost: x\n\n{smuggled}"),
        ),
        (
            "a bare LF ending one header line",
            format!("GET /first HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n{smuggled}"),
        ),
        (
            "NUL in a header value",
            format!("GET /first HTTP/1.1\r\nHost: x\r\nX-A: b\0c\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR in a header value",
            format!("GET /first HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            post("Content-Length : 3\r\n", "abc"),
        ),
    ];
    for (what, request) in &cases {
        let hits = web.hits.load(Ordering::SeqCst);
        let (response, closed) = raw(gw.http, request.as_bytes(), t);
        assert_eq!(status_of(&response), 400, "{what}: {response}");
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{what}: one response only: {response}"
        );
        assert!(closed, "{what}: connection closed");
        assert_eq!(
            web.hits.load(Ordering::SeqCst),
            hits,
            "{what}: nothing reached the backend"
        );
        assert!(served(), "still serving after {what}");
    }
    assert!(
        gw.metric("fairlead_ingress_refused_requests_total{reason=\"content-length-and-transfer-encoding\"}")
            >= 2
    );

    // The ambiguous head comes after well-framed requests on the same
    // connection (one with a chunked body that looks like a head): those are
    // served, the ambiguous one is refused, and the connection closed.
    let hits = web.hits.load(Ordering::SeqCst);
    let pipelined = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         1e\r\nContent-Length: 5\r\nX-Y: zz\r\n\r\n\r\n0\r\n\r\n\
         GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n{smuggled}"
    );
    let (response, closed) = raw(gw.http, pipelined.as_bytes(), t);
    let statuses: Vec<u16> = response
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(status_of)
        .collect();
    assert_eq!(statuses, [200, 200, 400], "{response}");
    assert!(closed);
    assert_eq!(web.hits.load(Ordering::SeqCst), hits + 2);
    let paths = web.paths.lock().unwrap().clone();
    assert!(
        paths.ends_with(&["/a".to_owned(), "/b".to_owned()]),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p == "/c" || p == "/smuggled"),
        "{paths:?}"
    );
    assert!(served());
}

#[test]
fn connection_cap_sheds_with_503() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 7, 1], "web", false);
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("cap")),
            ("web.yaml", service("cap", "web", None, &[web.addr])),
            (
                "ingress.yaml",
                ingress(
                    "cap",
                    "web",
                    &format!("  rules:\n{}", rule("", &[("/", "web")])),
                ),
            ),
        ],
        &["--ingress-max-connections", "3"],
    );
    let url = format!("http://127.0.0.1:{}/", gw.http.port());
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(gw.http).unwrap())
        .collect();
    gw.wait_for("3 connections open", || {
        gw.metric("fairlead_ingress_active_connections{listener=\"http\"}") >= 3
    });
    let r = curl(&[&url]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.headers.to_ascii_lowercase().contains("connection: close"),
        "{}",
        r.headers
    );
    assert!(gw.metric("fairlead_ingress_shed_connections_total") >= 1);
    drop(idle);
    gw.wait_for("connections closed", || {
        gw.metric("fairlead_ingress_active_connections{listener=\"http\"}") < 1
    });
    assert_eq!(curl(&[&url]).status, 200);
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 8, 1], "web", false);
    let mut gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("drain")),
            ("web.yaml", service("drain", "web", None, &[web.addr])),
            (
                "ingress.yaml",
                ingress(
                    "drain",
                    "web",
                    &format!("  rules:\n{}", rule("", &[("/", "web")])),
                ),
            ),
        ],
        &["--ingress-drain-timeout", "5s"],
    );
    let url = format!("http://127.0.0.1:{}/slow", gw.http.port());
    let slow = std::thread::spawn(move || curl(&[&url]));
    gw.wait_for("the slow request to reach the backend", || {
        web.hits.load(Ordering::SeqCst) == 1
    });
    gw.terminate();
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "in-flight request finished: {r:?}");
    let status = gw.wait_exit();
    assert!(status.success(), "{status}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(gw.http).is_err());
}

/// Given one CPU (an affinity of one, inherited from the test thread, as
/// `taskset -c 0` gives), the gateway runs everything on one current-thread
/// runtime: keep-alive HTTP/1.1 with a pooled upstream connection, TLS with
/// HTTP/2, and an upgraded (WebSocket) tunnel are all served.
#[test]
fn one_cpu_runs_a_current_thread_runtime_that_serves_everything() {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let rt = runtime();
    let web = backend(&rt, [127, 0, 9, 1], "web", false);
    let spec = format!(
        "  tls: [{{hosts: [shop.example.com], secretName: shop-tls}}]\n  rules:\n{}",
        rule("shop.example.com", &[("/", "web")]),
    );
    let allowed = sched_getaffinity(None).unwrap();
    let first = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).unwrap();
    let mut one = CpuSet::new();
    one.set(first);
    sched_setaffinity(None, &one).unwrap();
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("shop")),
            ("ingress.yaml", ingress("shop", "shop", &spec)),
        ],
        &["--ingress-ssl-redirect=false"],
    );
    sched_setaffinity(None, &allowed).unwrap();
    let log = gw.log();
    assert!(
        log.contains("current-thread") && log.contains("\"cpus\":1"),
        "{log}"
    );

    // Three requests on one keep-alive client connection.
    let url = format!("http://shop.example.com:{}/a", gw.http.port());
    let r = curl(&[
        "--resolve",
        &gw.resolve_http("shop.example.com"),
        &url,
        &url,
        &url,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 3);

    // TLS, HTTP/2.
    let ca = example_ca();
    let r = curl(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &gw.resolve_https("shop.example.com"),
        &format!("https://shop.example.com:{}/b", gw.https.port()),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");

    // An upgraded connection, then plain requests still served.
    let mut ws = WebSocket::connect(gw.http, "shop.example.com");
    assert_eq!(ws.echo("one core"), "one core");
    let r = curl(&["--resolve", &gw.resolve_http("shop.example.com"), &url]);
    assert_eq!(r.status, 200, "{r:?}");
}
