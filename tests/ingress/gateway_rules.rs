//! Gateway API route rules end to end, organised like the upstream
//! conformance suite's HTTPRoute/GRPCRoute cases: regular expression
//! matches (path, header, gRPC service and method) and their precedence,
//! a rule with an invalid expression dropped while the rest serves;
//! filters; timeouts; weights. Real clients: curl, and an h2 client for
//! gRPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::gateway_api::{CLASS, free_port, grpc_call, http_route, name_of};
use crate::support::{Gateway, backend, curl, namespace, runtime, service};

/// `GET http://{host}:{port}{path}` with extra curl arguments.
fn get(port: u16, host: &str, path: &str, extra: &[&str]) -> crate::support::Curl {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("http://{host}:{port}{path}");
    let mut args = vec!["--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: gw, namespace: shop}}\nspec:\n  gatewayClassName: fl\n  listeners:\n\
         \x20 - {{name: http, port: {port}, protocol: HTTP}}\n"
    )
}

/// HTTPPathMatch / HTTPHeaderMatch RegularExpression (conformance
/// `HTTPRoutePathMatchOrder`, `HTTPRouteHeaderMatching` with regex), a rule
/// with an invalid expression dropped (the others serve), and GRPCRoute
/// RegularExpression method matches.
#[test]
fn gateway_api_regular_expression_matches() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 15, 1], "web", false);
    let items = backend(&rt, [127, 0, 15, 2], "items", false);
    let special = backend(&rt, [127, 0, 15, 3], "special", false);
    let v2 = backend(&rt, [127, 0, 15, 4], "v2", false);
    let cart = backend(&rt, [127, 0, 15, 5], "cart", true);
    let any = backend(&rt, [127, 0, 15, 6], "any", true);
    let port = free_port();
    let route = http_route(
        "shop",
        "re",
        "  parentRefs: [{name: gw}]\n  hostnames: [re.test]\n  rules:\n\
         \x20 - backendRefs: [{name: web, port: 80}]\n\
         \x20 - matches: [{path: {type: RegularExpression, value: \"/items/[0-9]+\"}}]\n\
         \x20   backendRefs: [{name: items, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /items/special}}]\n\
         \x20   backendRefs: [{name: special, port: 80}]\n\
         \x20 - matches: [{headers: [{type: RegularExpression, name: X-Version, value: \"v2(\\\\.[0-9]+)*\"}]}]\n\
         \x20   backendRefs: [{name: v2, port: 80}]\n\
         \x20 - matches: [{path: {type: RegularExpression, value: \"/broken/([\"}}]\n\
         \x20   backendRefs: [{name: special, port: 80}]\n",
    );
    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {name: rpc, namespace: shop}\nspec:\n\
         \x20 parentRefs: [{name: gw}]\n  hostnames: [grpc.test]\n  rules:\n\
         \x20 - matches: [{method: {type: RegularExpression, service: \"shop\\\\.(Cart|Basket)\", method: \"Get.*\"}}]\n\
         \x20   filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-via, value: regex-rule}]}}]\n\
         \x20   backendRefs: [{name: cart, port: 80}]\n\
         \x20 - matches: [{method: {service: shop.Cart, method: Put}, headers: [{type: RegularExpression, name: x-tenant, value: \"t[0-9]+\"}]}]\n\
         \x20   backendRefs: [{name: cart, port: 80}]\n\
         \x20 - matches: [{method: {type: RegularExpression, service: \".*\"}}]\n\
         \x20   backendRefs: [{name: any, port: 80}]\n"
        .to_owned();
    let http = format!("127.0.0.1:{port}");
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("items.yaml", service("shop", "items", None, &[items.addr])),
            (
                "special.yaml",
                service("shop", "special", None, &[special.addr]),
            ),
            ("v2.yaml", service("shop", "v2", None, &[v2.addr])),
            ("cart.yaml", service("shop", "cart", None, &[cart.addr])),
            ("any.yaml", service("shop", "any", None, &[any.addr])),
            ("gateway.yaml", gateway(port)),
            ("route.yaml", route),
            ("grpc.yaml", grpc),
        ],
        &["--http", &http],
    );
    let name = |path: &str, extra: &[&str]| {
        let r = get(port, "re.test", path, extra);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        r.field("name").to_owned()
    };
    // The expression matches the whole path, beats the catch-all prefix,
    // and yields to a longer prefix.
    assert_eq!(name("/items/42", &[]), "items");
    assert_eq!(name("/items/42/reviews", &[]), "web");
    assert_eq!(name("/x/items/42", &[]), "web");
    assert_eq!(name("/items/special", &[]), "special");
    assert_eq!(name("/items/abc", &[]), "web");
    // A header expression, anchored too.
    assert_eq!(name("/", &["-H", "X-Version: v2.1.3"]), "v2");
    assert_eq!(name("/", &["-H", "X-Version: v2"]), "v2");
    assert_eq!(name("/", &["-H", "X-Version: v21"]), "web");
    // The rule with the invalid expression is dropped and reported; its
    // requests fall to the catch-all, every other rule serves.
    assert_eq!(name("/broken/x", &[]), "web");
    let log = gw.log();
    assert!(
        log.contains("HTTPRoute rule 4 dropped: UnsupportedValue"),
        "{log}"
    );

    rt.block_on(async {
        let call = |path: &'static str| grpc_call(gw.http, "grpc.test", path, &[]);
        for (path, want) in [
            ("/shop.Cart/GetItems", "cart"),
            ("/shop.Basket/Get", "cart"),
            ("/shop.Cart/Put", "any"),
            ("/shopXCart/Get", "any"),
        ] {
            let (status, text, grpc) = call(path).await;
            assert_eq!(
                (status, name_of(&text), grpc.as_str()),
                (200, want, "0"),
                "{path}: {text}"
            );
        }
        // The rule's RequestHeaderModifier reached the backend.
        let (_, text, _) = call("/shop.Cart/GetItems").await;
        assert!(text.contains("h:x-via=regex-rule"), "{text}");
        // A header RegularExpression match on a GRPCRoute.
        for (tenant, want) in [("t42", "cart"), ("t42x", "any")] {
            let headers = [("x-tenant", tenant)];
            let (_, text, _) = grpc_call(gw.http, "grpc.test", "/shop.Cart/Put", &headers).await;
            assert_eq!(name_of(&text), want, "{tenant}: {text}");
        }
    });
}

/// A Service of `ns` named `name` whose endpoint accepts connections and
/// never answers (the kernel's backlog takes them): a black hole.
fn black_hole(ip: [u8; 4]) -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The filters of HTTPRoute rules and backendRefs (conformance
/// `HTTPRouteRequestHeaderModifier`, `HTTPRouteResponseHeaderModifier`,
/// `HTTPRouteBackendRequestHeaderModifier`, `HTTPRouteRedirectScheme`,
/// `...RedirectHostAndStatus`, `...RedirectPort`, `...RedirectPath`,
/// `HTTPRouteRewriteHost`, `HTTPRouteRewritePath`, `HTTPRouteRequestMirror`).
#[test]
fn gateway_api_filters() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 15, 11], "web", false);
    let mirror = backend(&rt, [127, 0, 15, 12], "mirror", false);
    let (_stuck, stuck) = black_hole([127, 0, 15, 13]);
    let port = free_port();
    let route = http_route(
        "shop",
        "filters",
        r#"  parentRefs: [{name: gw}]
  hostnames: [filters.test]
  rules:
  - matches: [{path: {value: /req-headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set1}]
        add: [{name: X-Add, value: added}]
        remove: [X-Remove]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /resp-headers}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Backend, value: replaced}]
        add: [{name: X-Extra, value: "1"}]
        remove: [X-Internal]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /backend-headers}}]
    backendRefs:
    - name: web
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: X-Backend-Filter, value: "yes"}]}
  - matches: [{path: {value: /redirect-https}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {value: /redirect-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: other.test, port: 8443}}]
  - matches: [{path: {value: /redirect-prefix}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: Exact, value: /redirect-full}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full}}
  - matches: [{path: {value: /rewrite-prefix}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /rewrite-full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 80}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /stuck-mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: stuck, port: 80}}
    backendRefs: [{name: web, port: 80}]
"#,
    );
    let http = format!("127.0.0.1:{port}");
    let _gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            (
                "mirror.yaml",
                service("shop", "mirror", None, &[mirror.addr]),
            ),
            ("stuck.yaml", service("shop", "stuck", None, &[stuck])),
            ("gateway.yaml", gateway(port)),
            ("route.yaml", route),
        ],
        &["--http", &http],
    );
    let get = |path: &str, extra: &[&str]| get(port, "filters.test", path, extra);
    let header = |r: &crate::support::Curl, name: &str| -> Option<String> {
        r.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };

    // Request headers: set replaces, add appends, remove removes.
    let r = get(
        "/req-headers",
        &[
            "-H",
            "X-Set: client",
            "-H",
            "X-Add: client",
            "-H",
            "X-Remove: x",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.field("h:x-set"), "set1", "{r:?}");
    assert_eq!(r.field("h:x-add"), "client,added", "{r:?}");
    assert_eq!(r.field("h:x-remove"), "", "{r:?}");
    // Response headers.
    let r = get("/resp-headers", &[]);
    assert_eq!(
        header(&r, "x-backend").as_deref(),
        Some("replaced"),
        "{r:?}"
    );
    assert_eq!(header(&r, "x-extra").as_deref(), Some("1"), "{r:?}");
    assert_eq!(header(&r, "x-internal"), None, "{r:?}");
    // Without the filter the backend's headers pass unchanged.
    let r = get("/req-headers", &[]);
    assert_eq!(header(&r, "x-internal").as_deref(), Some("secret"), "{r:?}");
    // A backendRef's filter.
    let r = get("/backend-headers", &[]);
    assert_eq!(r.field("h:x-backend-filter"), "yes", "{r:?}");

    // Redirects: scheme (its port left out), hostname and port, paths;
    // the query is kept.
    let r = get("/redirect-https/a?x=1", &[]);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        header(&r, "location").as_deref(),
        Some("https://filters.test/redirect-https/a?x=1")
    );
    let r = get("/redirect-host?x=1", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        header(&r, "location").as_deref(),
        Some("http://other.test:8443/redirect-host?x=1")
    );
    let r = get("/redirect-prefix/a/b", &[]);
    assert_eq!(
        header(&r, "location"),
        Some(format!("http://filters.test:{port}/new/a/b"))
    );
    let r = get("/redirect-full", &[]);
    assert_eq!(
        header(&r, "location"),
        Some(format!("http://filters.test:{port}/full"))
    );

    // Rewrites: host and prefix, full path; the query is kept.
    let r = get("/rewrite-prefix/x/y?q=1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.field("path"), r.field("host"), r.field("query")),
        ("/x/y", "rewritten.test", "q=1"),
        "{r:?}"
    );
    assert_eq!(get("/rewrite-prefix", &[]).field("path"), "/");
    let r = get("/rewrite-full", &[]);
    assert_eq!(
        (r.field("path"), r.field("host")),
        ("/replaced", format!("filters.test:{port}").as_str())
    );

    // Mirror: the copy arrives; the answer comes from the backend.
    let r = get("/mirror/m1", &[]);
    assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mirror
        .paths
        .lock()
        .unwrap()
        .contains(&"/mirror/m1".to_owned())
    {
        assert!(Instant::now() < deadline, "the mirror got no copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A request body is mirrored too: with a length, and chunked.
    let r = get("/mirror/post", &["--data-binary", "hello-mirror"]);
    assert_eq!((r.status, r.field("body")), (200, "hello-mirror"), "{r:?}");
    let big: Vec<u8> = (0..512 * 1024_u32).map(|i| b'a' + (i % 26) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &big).unwrap();
    let data = format!("@{}", file.path().display());
    let r = get(
        "/mirror/chunked",
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            "-o",
            "/dev/null",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let mirrored = |path: &str| -> Option<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = mirror
                .bodies
                .lock()
                .unwrap()
                .iter()
                .find_map(|(p, b)| (p == path).then(|| b.clone()));
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(
        mirrored("/mirror/post").as_deref(),
        Some(&b"hello-mirror"[..])
    );
    let copy = mirrored("/mirror/chunked").expect("the mirror got the chunked body");
    assert!(
        copy == big,
        "the mirror's copy differs: {} bytes",
        copy.len()
    );

    // A mirror that never answers does not delay the request, with or
    // without a body: one that falls 1 MiB behind is cut off while the
    // original streams on.
    let started = Instant::now();
    for _ in 0..3 {
        let r = get("/stuck-mirror", &[]);
        assert_eq!((r.status, r.field("name")), (200, "web"), "{r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let huge = vec![b'x'; 16 << 20];
    std::fs::write(file.path(), &huge).unwrap();
    let started = Instant::now();
    let r = get(
        "/stuck-mirror/post",
        &["--data-binary", &data, "-o", "/dev/null"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let got = web
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find_map(|(p, b)| (p == "/stuck-mirror/post").then(|| b.len()));
    assert_eq!(got, Some(huge.len()));
}

/// `timeouts.request` and `timeouts.backendRequest` (conformance
/// `HTTPRouteTimeoutRequest`, `HTTPRouteTimeoutBackendRequest`): 504 when
/// exceeded, answered in about the time given; a slow answer inside the
/// limits passes.
#[test]
fn gateway_api_timeouts() {
    let rt = runtime();
    let web = backend(&rt, [127, 0, 15, 21], "web", false);
    let port = free_port();
    let route = http_route(
        "shop",
        "timeouts",
        r"  parentRefs: [{name: gw}]
  hostnames: [timeouts.test]
  rules:
  - matches: [{path: {value: /slow2}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /slow3}}]
    timeouts: {request: 10s, backendRequest: 300ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /slow}}]
    timeouts: {request: 1m}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /drip3}}]
    timeouts: {request: 700ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /drip1}}]
    timeouts: {request: 5s}
    backendRefs: [{name: web, port: 80}]
",
    );
    let http = format!("127.0.0.1:{port}");
    let _gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("web.yaml", service("shop", "web", None, &[web.addr])),
            ("gateway.yaml", gateway(port)),
            ("route.yaml", route),
        ],
        &["--http", &http],
    );
    for (path, status, within) in [
        ("/slow2", 504, Duration::from_millis(1500)),
        ("/slow3", 504, Duration::from_millis(1500)),
        ("/slow", 200, Duration::from_secs(3)),
    ] {
        let started = Instant::now();
        let r = get(port, "timeouts.test", path, &[]);
        let took = started.elapsed();
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert!(took < within, "{path}: {took:?}");
    }
    // The request timeout covers the response body: one still streaming
    // at the deadline is cut off (the headers had come in time)...
    let started = Instant::now();
    let r = get(port, "timeouts.test", "/drip3", &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.stderr.contains("curl: ("), "the body was not cut: {r:?}");
    let lines = r.body.lines().filter(|l| l.starts_with("drip ")).count();
    assert!((1..30).contains(&lines), "{lines} lines: {r:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // ... and one that ends in time arrives whole.
    let r = get(port, "timeouts.test", "/drip1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    assert_eq!(
        r.body.lines().filter(|l| l.starts_with("drip ")).count(),
        10,
        "{r:?}"
    );
}

/// Weighted backendRefs (conformance `HTTPRouteWeight`): traffic split by
/// weight, a weight of 0 takes none, a rule whose every weight is 0
/// answers 503 (no backend to take it, as for an Ingress backend without
/// endpoints).
#[test]
fn gateway_api_weights() {
    let rt = runtime();
    let a = backend(&rt, [127, 0, 15, 31], "a", false);
    let b = backend(&rt, [127, 0, 15, 32], "b", false);
    let z = backend(&rt, [127, 0, 15, 33], "z", false);
    let port = free_port();
    let route = http_route(
        "shop",
        "weights",
        r"  parentRefs: [{name: gw}]
  hostnames: [weights.test]
  rules:
  - matches: [{path: {value: /none}}]
    backendRefs: [{name: z, port: 80, weight: 0}]
  - backendRefs:
    - {name: a, port: 80, weight: 1}
    - {name: b, port: 80, weight: 3}
    - {name: z, port: 80, weight: 0}
",
    );
    let http = format!("127.0.0.1:{port}");
    let _gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("shop")),
            ("a.yaml", service("shop", "a", None, &[a.addr])),
            ("b.yaml", service("shop", "b", None, &[b.addr])),
            ("z.yaml", service("shop", "z", None, &[z.addr])),
            ("gateway.yaml", gateway(port)),
            ("route.yaml", route),
        ],
        &["--http", &http],
    );
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        let r = get(port, "weights.test", "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.field("name").to_owned()).or_default() += 1;
    }
    assert_eq!(counts.get("z"), None, "{counts:?}");
    // 1:3 of 60: a gets 15 on average; far outside 3..=30 is a broken split.
    let a_hits = counts.get("a").copied().unwrap_or(0);
    assert!((3..=30).contains(&a_hits), "{counts:?}");
    assert_eq!(a_hits + counts.get("b").copied().unwrap_or(0), 60);
    assert_eq!(get(port, "weights.test", "/none", &[]).status, 503);
    assert_eq!(z.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
