//! `fairlead ingress` serving the Gateway API from a manifest directory: a
//! GatewayClass of our controller, a Gateway with two HTTP listeners on the
//! `--http` port, HTTPRoutes attached (or not) to them, and curl.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{Gateway, backend, curl, namespace, runtime, service};

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
    metadata: {name: fl}\nspec: {controllerName: fairlead.dev/gateway-controller}\n";

/// A free port on loopback: Gateway listeners name their port, so the
/// gateway's `--http` port must be known before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_route(ns: &str, name: &str, spec: &str) -> String {
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
