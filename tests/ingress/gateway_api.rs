//! `fairlead ingress` serving the Gateway API from a manifest directory: a
//! GatewayClass of our controller, a Gateway with two HTTP listeners on the
//! `--http` port, HTTPRoutes attached (or not) to them, and curl.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{Gateway, backend, curl, example_ca, namespace, runtime, service, shop_tls};

pub(crate) const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
    metadata: {name: fl}\nspec: {controllerName: fairlead.dev/gateway-controller}\n";

pub(crate) use crate::ports::free_port;

pub(crate) fn http_route(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

#[test]
fn gateway_api_http_routes_by_host_path_header_and_attachment() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 14, 1], "web", false);
    let api = backend(&rt, [127, 0, 14, 2], "api", false);
    let canary = backend(&rt, [127, 0, 14, 3], "canary", false);
    let port = free_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: web, namespace: infra}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: apps, port: {port}, protocol: HTTP, hostname: \"*.example.test\",\n\
         \x20    allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         \x20 - {{name: same, port: {port}, protocol: HTTP}}\n"
    );
    let shop = http_route(
        "shop",
        "shop",
        "  parentRefs: [{name: web, namespace: infra, sectionName: apps}]\n\
         \x20 hostnames: [shop.example.test]\n  rules:\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /api}}]\n\
         \x20   backendRefs: [{name: api, port: 80}]\n\
         \x20 - matches: [{headers: [{name: X-Canary, value: \"yes\"}]}]\n\
         \x20   backendRefs: [{name: canary, port: 80}]\n\
         \x20 - backendRefs: [{name: web, port: 80}]\n",
    );
    // A route of another namespace on the `Same` listener, and one naming a
    // listener that does not exist: neither is served.
    let denied = http_route(
        "shop",
        "denied",
        "  parentRefs: [{name: web, namespace: infra, sectionName: same}]\n\
         \x20 rules: [{backendRefs: [{name: web, port: 80}]}]\n",
    );
    let wrong_section = http_route(
        "shop",
        "wrong-section",
        "  parentRefs: [{name: web, namespace: infra, sectionName: nope}]\n\
         \x20 hostnames: [wrong.example.test]\n\
         \x20 rules: [{backendRefs: [{name: web, port: 80}]}]\n",
    );
    let http = format!("127.0.0.1:{port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            (
                "ns.yaml",
                format!("{}---\n{}", namespace("shop"), namespace("infra")),
            ),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("api.yaml", service("shop", "api", None, &[api.addr])),
            (
                "canary.yaml",
                service("shop", "canary", None, &[canary.addr]),
            ),
            ("gateway.yaml", gateway),
            ("shop.yaml", shop),
            ("denied.yaml", denied),
            ("wrong.yaml", wrong_section),
        ],
        &["--http", &http],
    );
    assert_eq!(gw.http, SocketAddr::from(([127, 0, 0, 1], port)));
    let get = |host: &str, path: &str, headers: &[&str]| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("http://{host}:{port}{path}");
        let mut args = vec!["--resolve", &resolve];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(&args)
    };

    let r = get("shop.example.test", "/api/v1", &[]);
    assert_eq!((r.status, r.field("name")), (200, "api"), "{r:?}");
    assert_eq!(r.field("path"), "/api/v1");
    let r = get("shop.example.test", "/apiary", &[]);
    assert_eq!(r.field("name"), "web", "/apiary is not under /api: {r:?}");
    let r = get("shop.example.test", "/", &["X-Canary: yes"]);
    assert_eq!(r.field("name"), "canary", "{r:?}");
    let r = get("shop.example.test", "/", &["X-Canary: no"]);
    assert_eq!(r.field("name"), "web", "{r:?}");
    // Another host under the listener's wildcard: no route names it.
    assert_eq!(get("other.example.test", "/", &[]).status, 404);
    // Not attached: not served, and logged with the spec's reason.
    assert_eq!(get("denied.test", "/", &[]).status, 404);
    assert_eq!(get("wrong.example.test", "/", &[]).status, 404);
    let log = gw.log();
    assert!(log.contains("NotAllowedByListeners"), "{log}");
    assert!(log.contains("NoMatchingParent"), "{log}");

    // A route attached later is served without a restart.
    gw.write(
        "late.yaml",
        &http_route(
            "infra",
            "late",
            "  parentRefs: [{name: web, sectionName: same}]\n\
             \x20 hostnames: [late.test]\n\
             \x20 rules: [{matches: [{method: POST}], backendRefs: [{name: api, namespace: infra, port: 80}]}]\n",
        ),
    );
    gw.write(
        "api-infra.yaml",
        &service("infra", "api", None, &[api.addr]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl(&[
            "--resolve",
            &format!("late.test:{port}:127.0.0.1"),
            "-d",
            "x=1",
            &format!("http://late.test:{port}/"),
        ]);
        if r.field("name") == "api" {
            break;
        }
        assert!(Instant::now() < deadline, "late route not served: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The method match holds: a GET is not routed.
    assert_eq!(get("late.test", "/", &[]).status, 404);
}

fn reference_grant(ns: &str, name: &str, from_kind: &str, from_ns: &str, to: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n\
         \x20 from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]\n\
         \x20 to: [{to}]\n"
    )
}

/// HTTPS listeners terminate TLS with certificates from Secrets (here one
/// of another namespace, allowed by a ReferenceGrant), chosen by SNI; their
/// routes are not served on the HTTP listener; cross-namespace backends need
/// a grant (500 without); a missing Service is 500; a listener whose
/// certificate is not granted is not served.
#[test]
fn gateway_api_https_listeners_and_reference_grants() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 14, 11], "web", false);
    let other = backend(&rt, [127, 0, 14, 12], "other", false);
    let (plain_port, tls_port) = (free_port(), free_port());
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: web, namespace: infra}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: https, port: {tls_port}, protocol: HTTPS, hostname: \"*.shop.example.com\",\n\
         \x20    tls: {{certificateRefs: [{{name: shop-tls, namespace: certs}}]}},\n\
         \x20    allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         \x20 - {{name: denied, port: {tls_port}, protocol: HTTPS, hostname: \"denied.example.com\",\n\
         \x20    tls: {{certificateRefs: [{{name: shop-tls, namespace: shop}}]}},\n\
         \x20    allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
         \x20 - {{name: http, port: {plain_port}, protocol: HTTP,\n\
         \x20    allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
    );
    let secure = http_route(
        "shop",
        "secure",
        "  parentRefs: [{name: web, namespace: infra, sectionName: https}]\n\
         \x20 hostnames: [www.shop.example.com]\n  rules:\n\
         \x20 - backendRefs: [{name: web, port: 80}]\n",
    );
    let plain = http_route(
        "shop",
        "plain",
        "  parentRefs: [{name: web, namespace: infra, sectionName: http}]\n  rules:\n\
         \x20 - matches: [{path: {value: /granted}}]\n\
         \x20   backendRefs: [{name: other, namespace: backends, port: 80}]\n\
         \x20 - matches: [{path: {value: /denied}}]\n\
         \x20   backendRefs: [{name: hidden, namespace: backends, port: 80}]\n\
         \x20 - matches: [{path: {value: /missing}}]\n\
         \x20   backendRefs: [{name: nothing, port: 80}]\n\
         \x20 - matches: [{path: {value: /q}, queryParams: [{name: to, value: other}]}]\n\
         \x20   backendRefs: [{name: other, namespace: backends, port: 80}]\n",
    );
    let http = format!("127.0.0.1:{plain_port}");
    let https = format!("127.0.0.1:{tls_port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            (
                "ns.yaml",
                ["shop", "infra", "certs", "backends"]
                    .map(namespace)
                    .join("---\n"),
            ),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            (
                "other.yaml",
                service("backends", "other", None, &[other.addr]),
            ),
            (
                "hidden.yaml",
                service("backends", "hidden", None, &[other.addr]),
            ),
            (
                "certs.yaml",
                format!("{}---\n{}", shop_tls("certs"), shop_tls("shop")),
            ),
            (
                "grants.yaml",
                format!(
                    "{}---\n{}",
                    reference_grant(
                        "certs",
                        "gateway-certs",
                        "Gateway",
                        "infra",
                        "{group: \"\", kind: Secret, name: shop-tls}"
                    ),
                    reference_grant(
                        "backends",
                        "shop-routes",
                        "HTTPRoute",
                        "shop",
                        "{group: \"\", kind: Service, name: other}"
                    )
                ),
            ),
            ("gateway.yaml", gateway),
            ("secure.yaml", secure),
            ("plain.yaml", plain),
        ],
        &["--http", &http, "--https", &https],
    );
    let ca = example_ca();
    let ca = ca.to_str().unwrap();
    let get_tls = |host: &str| {
        curl(&[
            "--cacert",
            ca,
            "--resolve",
            &format!("{host}:{tls_port}:127.0.0.1"),
            &format!("https://{host}:{tls_port}/"),
        ])
    };
    let get_plain = |host: &str, path: &str| {
        curl(&[
            "--resolve",
            &format!("{host}:{plain_port}:127.0.0.1"),
            &format!("http://{host}:{plain_port}{path}"),
        ])
    };

    // TLS terminated with the granted Secret of another namespace, verified
    // against the example CA.
    let r = get_tls("www.shop.example.com");
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    // The HTTPS listener's route is not served on the HTTP listener.
    assert_eq!(get_plain("www.shop.example.com", "/").status, 404);
    // A listener whose Secret is not granted: no certificate for its host
    // (the default one, which the CA does not sign).
    let r = get_tls("denied.example.com");
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains("certificate"), "{r:?}");

    // Cross-namespace backends: granted, not granted (500), missing (500).
    let r = get_plain("any.test", "/granted");
    assert_eq!((r.status, r.field("name")), (200, "other"), "{r:?}");
    assert_eq!(get_plain("any.test", "/denied").status, 500);
    assert_eq!(get_plain("any.test", "/missing").status, 500);
    // A query parameter match.
    let r = get_plain("any.test", "/q?x=1&to=other");
    assert_eq!((r.status, r.field("name")), (200, "other"), "{r:?}");
    assert_eq!(get_plain("any.test", "/q?to=web").status, 404);
    let log = gw.log();
    assert!(
        log.contains("RefNotPermitted: Service backends/hidden"),
        "{log}"
    );
    assert!(
        log.contains("RefNotPermitted: Secret shop/shop-tls"),
        "{log}"
    );
    assert!(
        log.contains("BackendNotFound: Service shop/nothing"),
        "{log}"
    );

    // Revoking the backend grant: the next request gets 500.
    gw.write(
        "grants.yaml",
        &reference_grant(
            "certs",
            "gateway-certs",
            "Gateway",
            "infra",
            "{group: \"\", kind: Secret, name: shop-tls}",
        ),
    );
    gw.wait_for("the grant revoked", || {
        get_plain("any.test", "/granted").status == 500
    });
}

/// One gRPC-shaped call over h2c to the plain listener: the HTTP status,
/// the backend's text and the grpc-status (headers or trailers).
pub(crate) async fn grpc_call(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{host}:{}{path}", addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    // One length-prefixed message: not compressed, 1 byte.
    stream
        .send_data(bytes::Bytes::from_static(b"\0\0\0\0\x01x"), true)
        .unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    if let Some(trailers) = body.trailers().await.unwrap()
        && let Some(v) = trailers.get("grpc-status")
    {
        grpc_status = Some(v.to_str().unwrap().to_owned());
    }
    (
        status,
        String::from_utf8_lossy(&text).into_owned(),
        grpc_status.unwrap_or_default(),
    )
}

pub(crate) fn name_of(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("name="))
        .unwrap_or("")
}

/// GRPCRoute: service/method and header matches over HTTP/2 to h2c
/// backends; an unmatched method is UNIMPLEMENTED (12), a backend without
/// endpoints UNAVAILABLE (14), both as trailers-only answers.
#[test]
fn gateway_api_grpc_routes_by_method_and_header() {
    let rt = runtime();
    let cart = backend(&rt, [127, 0, 14, 21], "cart", true);
    let canary = backend(&rt, [127, 0, 14, 22], "canary", true);
    let search = backend(&rt, [127, 0, 14, 23], "search", true);
    let port = free_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: http, port: {port}, protocol: HTTP}}\n"
    );
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {name: rpc, namespace: shop}\nspec:\n\
         \x20 parentRefs: [{name: web}]\n  hostnames: [grpc.test]\n  rules:\n\
         \x20 - matches: [{method: {service: shop.Cart, method: Get}, headers: [{name: x-canary, value: \"yes\"}]}]\n\
         \x20   backendRefs: [{name: canary, port: 80}]\n\
         \x20 - matches: [{method: {service: shop.Cart, method: Get}}]\n\
         \x20   backendRefs: [{name: cart, port: 80}]\n\
         \x20 - matches: [{method: {service: shop.Search}}]\n\
         \x20   backendRefs: [{name: search, port: 80}]\n\
         \x20 - matches: [{method: {service: shop.Broken}}]\n\
         \x20   backendRefs: [{name: empty, port: 80}]\n"
        .to_owned();
    let http = format!("127.0.0.1:{port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("cart.yaml", service("shop", "cart", None, &[cart.addr])),
            (
                "canary.yaml",
                service("shop", "canary", None, &[canary.addr]),
            ),
            (
                "search.yaml",
                service("shop", "search", None, &[search.addr]),
            ),
            ("empty.yaml", service("shop", "empty", None, &[])),
            ("gateway.yaml", gateway),
            ("route.yaml", route),
        ],
        &["--http", &http],
    );
    rt.block_on(async {
        let call = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
            grpc_call(gw.http, "grpc.test", path, headers)
        };
        let (status, text, grpc) = call("/shop.Cart/Get", &[]).await;
        assert_eq!(
            (status, name_of(&text), grpc.as_str()),
            (200, "cart", "0"),
            "{text}"
        );
        assert!(
            text.contains("proto=HTTP/2.0"),
            "h2c to the backend: {text}"
        );
        assert!(text.contains("path=/shop.Cart/Get"), "{text}");
        let (_, text, _) = call("/shop.Cart/Get", &[("x-canary", "yes")]).await;
        assert_eq!(name_of(&text), "canary", "{text}");
        let (_, text, _) = call("/shop.Search/Query", &[]).await;
        assert_eq!(name_of(&text), "search", "{text}");
        // Unmatched: another method of the service, another service.
        for path in ["/shop.Cart/Put", "/shop.Other/Get"] {
            let (status, text, grpc) = call(path, &[]).await;
            assert_eq!((status, grpc.as_str()), (200, "12"), "{path}: {text}");
        }
        let (status, _, grpc) = call("/shop.Broken/Call", &[]).await;
        assert_eq!((status, grpc.as_str()), (200, "14"));
    });
}

/// A listener the status reports as `Conflicted` (two listeners on one
/// port with one hostname) is not served: its route gets 404 while the
/// route of the sound listener next to it is served; `fairlead ingress`
/// logs the conflict with the spec's reason.
#[test]
fn gateway_api_conflicted_listeners_are_not_served() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 14, 31], "web", false);
    let port = free_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: dup-a, port: {port}, protocol: HTTP, hostname: dup.test}}\n\
         \x20 - {{name: dup-b, port: {port}, protocol: HTTP, hostname: dup.test}}\n\
         \x20 - {{name: ok, port: {port}, protocol: HTTP, hostname: ok.test}}\n"
    );
    let route = |name: &str, section: &str| {
        http_route(
            "shop",
            name,
            &format!(
                "  parentRefs: [{{name: web, sectionName: {section}}}]\n\
                 \x20 rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n"
            ),
        )
    };
    let http = format!("127.0.0.1:{port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("gateway.yaml", gateway),
            ("dup.yaml", route("dup", "dup-a")),
            ("ok.yaml", route("ok", "ok")),
        ],
        &["--http", &http],
    );
    let get = |host: &str| {
        curl(&[
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("http://{host}:{port}/"),
        ])
    };
    let r = get("ok.test");
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    assert_eq!(get("dup.test").status, 404);
    let log = gw.log();
    assert!(log.contains("listener dup-a: HostnameConflict"), "{log}");
    // Renaming one hostname ends the conflict: both are served.
    gw.write(
        "gateway.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: web, namespace: shop}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
             \x20 - {{name: dup-a, port: {port}, protocol: HTTP, hostname: dup.test}}\n\
             \x20 - {{name: dup-b, port: {port}, protocol: HTTP, hostname: other.test}}\n\
             \x20 - {{name: ok, port: {port}, protocol: HTTP, hostname: ok.test}}\n"
        ),
    );
    gw.wait_for("the conflict resolved", || get("dup.test").status == 200);
}

/// Listeners on ports other than `--http`/`--https` get sockets of their
/// own, reconciled with the model: an HTTP listener, an HTTPS one (TLS by
/// SNI with the listener's certificate), a Gateway's `spec.addresses`
/// (bound there only); a listener removed at runtime closes its socket, one
/// added opens one; a port already taken is reported and served once free.
#[test]
fn gateway_api_listeners_on_their_own_ports_and_addresses() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 14, 41], "web", false);
    let [http, plain, secure, pinned, late, taken] = [(); 6].map(|()| free_port());
    let blocker = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    let gateway = |listeners: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: web, namespace: shop}}\nspec:\n  gatewayClassName: fl\n  listeners:\n{listeners}"
        )
    };
    let plain_l = format!("  - {{name: plain, port: {plain}, protocol: HTTP}}\n");
    let secure_l = format!(
        "  - {{name: secure, port: {secure}, protocol: HTTPS, hostname: www.shop.example.com,\n\
         \x20    tls: {{certificateRefs: [{{name: shop-tls}}]}}}}\n"
    );
    let taken_l = format!("  - {{name: taken, port: {taken}, protocol: HTTP}}\n");
    let pinned_gw = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: pinned, namespace: shop}}\nspec:\n  gatewayClassName: fl\n\
         \x20 addresses: [{{type: IPAddress, value: 127.0.0.2}}]\n\
         \x20 listeners: [{{name: http, port: {pinned}, protocol: HTTP}}]\n"
    );
    let route = http_route(
        "shop",
        "all",
        "  parentRefs: [{name: web}, {name: pinned}]\n\
         \x20 rules: [{backendRefs: [{name: web, port: 80}]}]\n",
    );
    let listen = format!("127.0.0.1:{http}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("tls.yaml", shop_tls("shop")),
            (
                "gateway.yaml",
                gateway(&format!("{plain_l}{secure_l}{taken_l}")),
            ),
            ("pinned.yaml", pinned_gw),
            ("route.yaml", route),
        ],
        &["--http", &listen],
    );
    let get = |ip: &str, port: u16| {
        curl(&[
            "--resolve",
            &format!("a.test:{port}:{ip}"),
            &format!("http://a.test:{port}/"),
        ])
    };
    let r = get("127.0.0.1", plain);
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    // The listener ports are not served on --http (no listener there).
    assert_eq!(get("127.0.0.1", http).status, 404);
    let ca = example_ca();
    let r = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("www.shop.example.com:{secure}:127.0.0.1"),
        &format!("https://www.shop.example.com:{secure}/"),
    ]);
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    // spec.addresses: bound on 127.0.0.2 only.
    let r = get("127.0.0.2", pinned);
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    assert_eq!(
        get("127.0.0.1", pinned).status,
        0,
        "not bound on the node's address"
    );
    // A port another process holds: reported, retried, served once free.
    assert!(
        gw.log().contains("cannot open a Gateway listener socket"),
        "{}",
        gw.log()
    );
    drop(blocker);
    gw.wait_for("the taken port served once free (retried)", || {
        get("127.0.0.1", taken).status == 200
    });
    // Runtime changes: `plain` removed (its socket closes), `late` added.
    gw.write(
        "gateway.yaml",
        &gateway(&format!(
            "{secure_l}  - {{name: late, port: {late}, protocol: HTTP}}\n"
        )),
    );
    gw.wait_for("the late listener served", || {
        get("127.0.0.1", late).status == 200
    });
    gw.wait_for("the removed listener's socket closed", || {
        get("127.0.0.1", plain).status == 0
    });
}

/// `allowedRoutes.namespaces.from: Selector` on the labels of the route's
/// Namespace: a route of a matching namespace is served, one of another
/// is not, until its Namespace is labelled (at runtime). And
/// `allowedRoutes.kinds` (conformance `HTTPRouteDisallowedKind`): an
/// HTTPRoute is not served by a listener that allows only GRPCRoutes.
#[test]
fn gateway_api_allowed_routes_namespace_selector() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 14, 51], "web", false);
    let port = free_port();
    let ns = |name: &str, env: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{env: {env}}}}}\n"
        )
    };
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: web, namespace: infra}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: http, port: {port}, protocol: HTTP,\n\
         \x20    allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchExpressions: [{{key: env, operator: In, values: [prod]}}]}}}}}}}}\n\
         \x20 - {{name: grpc-only, port: {port}, protocol: HTTP, hostname: kinds.test,\n\
         \x20    allowedRoutes: {{namespaces: {{from: All}}, kinds: [{{kind: GRPCRoute}}]}}}}\n"
    );
    let disallowed = http_route(
        "a",
        "to-grpc-only",
        "  parentRefs: [{name: web, namespace: infra, sectionName: grpc-only}]\n  hostnames: [kinds.test]\n\
         \x20 rules: [{backendRefs: [{name: web, port: 80}]}]\n",
    );
    let route = |namespace: &str| {
        http_route(
            namespace,
            "r",
            &format!(
                "  parentRefs: [{{name: web, namespace: infra}}]\n  hostnames: [{namespace}.test]\n\
                 \x20 rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n"
            ),
        )
    };
    let http = format!("127.0.0.1:{port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("infra.yaml", namespace("infra")),
            ("a.yaml", ns("a", "prod")),
            ("b.yaml", ns("b", "dev")),
            ("web-a.yaml", service("a", "web", None, &[web.addr])),
            ("web-b.yaml", service("b", "web", None, &[web.addr])),
            ("gateway.yaml", gateway),
            ("route-a.yaml", route("a")),
            ("route-b.yaml", route("b")),
            ("disallowed.yaml", disallowed),
        ],
        &["--http", &http],
    );
    let get = |host: &str| {
        curl(&[
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("http://{host}:{port}/"),
        ])
    };
    let r = get("a.test");
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    assert_eq!(get("b.test").status, 404);
    assert!(gw.log().contains("NotAllowedByListeners"), "{}", gw.log());
    assert_eq!(get("kinds.test").status, 404);
    assert!(
        gw.log().contains("route problem") && gw.log().contains("a/to-grpc-only"),
        "{}",
        gw.log()
    );
    gw.write("b.yaml", &ns("b", "prod"));
    gw.wait_for("namespace b relabelled", || get("b.test").status == 200);
}
