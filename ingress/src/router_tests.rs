//! Table-driven tests of every matching and precedence rule, and property
//! tests of the matcher against a straightforward reference.

use super::*;
use crate::test_support::{ingress, ingress_class, model, service};
use proptest::prelude::*;
use serde_json::json;

fn selection(class: &str) -> ClassSelection {
    ClassSelection {
        class: class.to_owned(),
        default_backend: None,
        gateway_api: crate::gateway_api::Selection::default(),
    }
}

/// `"ns/ingress -> ns/service:port"`, or `"404"`.
fn answer(table: &RouteTable, host: &str, path: &str) -> String {
    match table.route(&normalize_host(host), path) {
        None => "404".to_owned(),
        Some(route) => format!("{} -> {}", route.ingress, table.backend(route.backend)),
    }
}

fn check(table: &RouteTable, cases: &[(&str, &str, &str)]) {
    let mut failures = Vec::new();
    for (host, path, expected) in cases {
        let got = answer(table, host, path);
        if got != *expected {
            failures.push(format!("{host}{path}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn path(path: &str, path_type: &str, svc: &str) -> serde_json::Value {
    json!({"path": path, "pathType": path_type, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

fn services(names: &[&str]) -> Vec<serde_json::Value> {
    names
        .iter()
        .map(|n| service("default", n, &[("http", 80)]))
        .collect()
}

#[test]
fn path_types_and_precedence() {
    let mut objects = services(&["exact", "foo", "foobar", "deep", "root", "impl", "slash"]);
    objects.push(ingress_class("fairlead", true));
    objects.push(ingress(
        "default",
        "a",
        &json!({"rules": [{"host": "example.com", "http": {"paths": [
            path("/foo", "Prefix", "foo"),
            path("/foo", "Exact", "exact"),
            path("/foo/bar/baz", "Prefix", "deep"),
            path("/foobar", "Prefix", "foobar"),
            path("/", "Prefix", "root"),
            path("/impl", "ImplementationSpecific", "impl"),
            path("/slash/", "Prefix", "slash"),
        ]}}]}),
    ));
    let snapshot = model(objects);
    let table = RouteTable::compile(&snapshot, &selection("fairlead"));
    assert!(table.problems.is_empty(), "{:?}", table.problems);
    check(
        &table,
        &[
            // Exact wins over a Prefix of the same path.
            ("example.com", "/foo", "default/a -> default/exact:80"),
            // Exact is exact: a trailing slash is another path, which the
            // Prefix /foo matches.
            ("example.com", "/foo/", "default/a -> default/foo:80"),
            ("example.com", "/FOO", "default/a -> default/root:80"),
            // Prefix is element-wise.
            ("example.com", "/foo/bar", "default/a -> default/foo:80"),
            ("example.com", "/foobar", "default/a -> default/foobar:80"),
            ("example.com", "/foobar/x", "default/a -> default/foobar:80"),
            ("example.com", "/foobarbaz", "default/a -> default/root:80"),
            ("example.com", "/fo", "default/a -> default/root:80"),
            // The longest prefix wins.
            (
                "example.com",
                "/foo/bar/baz",
                "default/a -> default/deep:80",
            ),
            (
                "example.com",
                "/foo/bar/baz/",
                "default/a -> default/deep:80",
            ),
            (
                "example.com",
                "/foo/bar/baz/q",
                "default/a -> default/deep:80",
            ),
            (
                "example.com",
                "/foo/bar/bazz",
                "default/a -> default/foo:80",
            ),
            // Empty path elements are elements.
            ("example.com", "/foo//bar", "default/a -> default/foo:80"),
            // ImplementationSpecific is Prefix.
            ("example.com", "/impl", "default/a -> default/impl:80"),
            ("example.com", "/impl/x", "default/a -> default/impl:80"),
            ("example.com", "/implx", "default/a -> default/root:80"),
            // A trailing slash on the Ingress path is ignored.
            ("example.com", "/slash", "default/a -> default/slash:80"),
            ("example.com", "/slash/", "default/a -> default/slash:80"),
            ("example.com", "/slash/x", "default/a -> default/slash:80"),
            ("example.com", "/slashx", "default/a -> default/root:80"),
            ("example.com", "/", "default/a -> default/root:80"),
        ],
    );
}

#[test]
fn hosts_exact_wildcard_and_catch_all() {
    let mut objects = services(&["exact", "wild", "any", "deep-wild"]);
    objects.push(ingress_class("fairlead", true));
    objects.push(ingress(
        "default",
        "hosts",
        &json!({"rules": [
            {"host": "foo.example.com", "http": {"paths": [path("/", "Prefix", "exact")]}},
            {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
            {"host": "*.b.example.com", "http": {"paths": [path("/", "Prefix", "deep-wild")]}},
            {"http": {"paths": [path("/only", "Prefix", "any")]}},
        ]}),
    ));
    let table = RouteTable::compile(&model(objects), &selection("fairlead"));
    check(
        &table,
        &[
            ("foo.example.com", "/", "default/hosts -> default/exact:80"),
            // Case, port and a trailing dot do not matter.
            (
                "FOO.Example.COM:8443",
                "/",
                "default/hosts -> default/exact:80",
            ),
            ("foo.example.com.", "/", "default/hosts -> default/exact:80"),
            // A wildcard matches exactly one label.
            ("bar.example.com", "/", "default/hosts -> default/wild:80"),
            (
                "a.b.example.com",
                "/",
                "default/hosts -> default/deep-wild:80",
            ),
            (
                "x.a.b.example.com",
                "/only",
                "default/hosts -> default/any:80",
            ),
            ("example.com", "/only", "default/hosts -> default/any:80"),
            // Rules without a host catch every other host...
            ("other.test", "/only/x", "default/hosts -> default/any:80"),
            ("", "/only", "default/hosts -> default/any:80"),
            ("[::1]:80", "/only", "default/hosts -> default/any:80"),
            // ...but a host group never falls through to them.
            (
                "bar.example.com",
                "/only",
                "default/hosts -> default/wild:80",
            ),
            ("other.test", "/", "404"),
        ],
    );
}

#[test]
fn paths_merge_across_ingresses_and_conflicts_resolve_by_name() {
    let mut objects = services(&["a-api", "b-web", "b-api", "c-exact"]);
    objects.push(ingress_class("fairlead", true));
    // Written out of order: the model orders by namespace/name.
    objects.push(ingress(
        "team-b",
        "web",
        &json!({"rules": [{"host": "shop.example.com", "http": {"paths": [
            path("/", "Prefix", "b-web"),
            path("/api", "Prefix", "b-api"),
        ]}}]}),
    ));
    objects.push(ingress(
        "team-a",
        "api",
        &json!({"rules": [{"host": "shop.example.com", "http": {"paths": [
            path("/api", "Prefix", "a-api"),
        ]}}]}),
    ));
    objects.push(ingress(
        "team-c",
        "exact",
        &json!({"rules": [{"host": "shop.example.com", "http": {"paths": [
            path("/api/v1", "Exact", "c-exact"),
        ]}}]}),
    ));
    for ns in ["team-a", "team-b", "team-c"] {
        for name in ["a-api", "b-web", "b-api", "c-exact"] {
            objects.push(service(ns, name, &[("http", 80)]));
        }
    }
    let table = RouteTable::compile(&model(objects), &selection("fairlead"));
    check(
        &table,
        &[
            ("shop.example.com", "/api", "team-a/api -> team-a/a-api:80"),
            (
                "shop.example.com",
                "/api/v1",
                "team-c/exact -> team-c/c-exact:80",
            ),
            (
                "shop.example.com",
                "/api/v1/x",
                "team-a/api -> team-a/a-api:80",
            ),
            ("shop.example.com", "/shop", "team-b/web -> team-b/b-web:80"),
        ],
    );
    assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
    assert_eq!(table.problems[0].ingress, ObjectKey::new("team-b", "web"));
    assert!(table.problems[0].message.contains("/api"));
}

#[test]
fn default_backends_per_ingress_and_global() {
    let mut objects = services(&["a", "a-default", "b", "global", "flag"]);
    objects.push(ingress_class("fairlead", true));
    objects.push(ingress(
        "default",
        "a",
        &json!({
            "defaultBackend": {"service": {"name": "a-default", "port": {"number": 80}}},
            "rules": [{"host": "a.example.com", "http": {"paths": [path("/app", "Prefix", "a")]}}],
        }),
    ));
    objects.push(ingress(
        "default",
        "b",
        &json!({"rules": [{"host": "b.example.com", "http": {"paths": [path("/app", "Prefix", "b")]}}]}),
    ));
    objects.push(ingress(
        "default",
        "z-global",
        &json!({"defaultBackend": {"service": {"name": "global", "port": {"number": 80}}}}),
    ));
    let snapshot = model(objects);
    let table = RouteTable::compile(&snapshot, &selection("fairlead"));
    check(
        &table,
        &[
            ("a.example.com", "/app", "default/a -> default/a:80"),
            // The Ingress's own defaultBackend serves its hosts' other paths.
            (
                "a.example.com",
                "/other",
                "default/a -> default/a-default:80",
            ),
            // Without one, the global default (a rule-less Ingress) does.
            (
                "b.example.com",
                "/other",
                "default/z-global -> default/global:80",
            ),
            (
                "unknown.example.com",
                "/",
                "default/z-global -> default/global:80",
            ),
        ],
    );
    // --ingress-default-backend overrides.
    let flag = ClassSelection {
        class: "fairlead".to_owned(),
        default_backend: Some("default/flag:http".parse().unwrap()),
        gateway_api: crate::gateway_api::Selection::default(),
    };
    let table = RouteTable::compile(&snapshot, &flag);
    check(
        &table,
        &[
            (
                "b.example.com",
                "/other",
                "--ingress-default-backend -> default/flag:80",
            ),
            (
                "a.example.com",
                "/other",
                "default/a -> default/a-default:80",
            ),
        ],
    );
}

#[test]
fn class_selection() {
    let mut objects = services(&["mine", "other", "classless", "legacy"]);
    let rule = |svc: &str| json!({"rules": [{"host": format!("{svc}.example.com"), "http": {"paths": [path("/", "Prefix", svc)]}}]});
    let mut named = rule("mine");
    named["ingressClassName"] = json!("fairlead");
    let mut other = rule("other");
    other["ingressClassName"] = json!("nginx");
    objects.push(ingress("default", "mine", &named));
    objects.push(ingress("default", "other", &other));
    objects.push(ingress("default", "classless", &rule("classless")));
    let mut legacy = ingress("default", "legacy", &rule("legacy"));
    legacy["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "fairlead"});
    objects.push(legacy);

    // No default class: only Ingresses naming ours (field or annotation).
    let mut without_default = objects.clone();
    without_default.push(ingress_class("fairlead", false));
    let table = RouteTable::compile(&model(without_default), &selection("fairlead"));
    check(
        &table,
        &[
            ("mine.example.com", "/", "default/mine -> default/mine:80"),
            (
                "legacy.example.com",
                "/",
                "default/legacy -> default/legacy:80",
            ),
            ("other.example.com", "/", "404"),
            ("classless.example.com", "/", "404"),
        ],
    );
    // Ours is the default class: class-less Ingresses too.
    let mut with_default = objects.clone();
    with_default.push(ingress_class("fairlead", true));
    let snapshot = model(with_default);
    let table = RouteTable::compile(&snapshot, &selection("fairlead"));
    check(
        &table,
        &[
            (
                "classless.example.com",
                "/",
                "default/classless -> default/classless:80",
            ),
            ("other.example.com", "/", "404"),
        ],
    );
    // --ingress-class picks another class.
    let table = RouteTable::compile(&snapshot, &selection("nginx"));
    check(
        &table,
        &[
            (
                "other.example.com",
                "/",
                "default/other -> default/other:80",
            ),
            ("mine.example.com", "/", "404"),
            ("classless.example.com", "/", "404"),
        ],
    );
}

#[test]
fn backend_ports_by_number_and_name_and_unresolved() {
    let mut objects = vec![
        service("default", "multi", &[("http", 80), ("admin", 9000)]),
        ingress_class("fairlead", true),
    ];
    let mut external = service("default", "ext", &[("http", 80)]);
    external["spec"] = json!({"type": "ExternalName", "externalName": "example.net"});
    objects.push(external);
    let port = |name: &str, port: serde_json::Value| json!({"path": name, "pathType": "Exact", "backend": {"service": {"name": if name.starts_with("/ext") {"ext"} else if name.starts_with("/missing-svc") {"nope"} else {"multi"}, "port": port}}});
    objects.push(ingress(
        "default",
        "ports",
        &json!({"rules": [{"http": {"paths": [
            port("/by-number", json!({"number": 9000})),
            port("/by-name", json!({"name": "admin"})),
            port("/target-number", json!({"number": 9001})),
            port("/missing-name", json!({"name": "grpc"})),
            port("/missing-svc", json!({"number": 80})),
            port("/ext", json!({"number": 80})),
        ]}}]}),
    ));
    let table = RouteTable::compile(&model(objects), &selection("fairlead"));
    check(
        &table,
        &[
            ("x", "/by-number", "default/ports -> default/multi:9000"),
            ("x", "/by-name", "default/ports -> default/multi:9000"),
            (
                "x",
                "/target-number",
                "default/ports -> default/multi:9001 (unresolved)",
            ),
            (
                "x",
                "/missing-name",
                "default/ports -> default/multi:grpc (unresolved)",
            ),
            (
                "x",
                "/missing-svc",
                "default/ports -> default/nope:80 (unresolved)",
            ),
            ("x", "/ext", "default/ports -> default/ext:80 (unresolved)"),
        ],
    );
    // Same Service port by number and by name: one backend.
    let by_number = table.route("x", "/by-number").unwrap().backend;
    let by_name = table.route("x", "/by-name").unwrap().backend;
    assert_eq!(by_number, by_name);
    assert_eq!(table.problems.len(), 4, "{:?}", table.problems);
}

#[test]
fn app_protocol_selects_h2c() {
    let mut objects = vec![ingress_class("fairlead", true)];
    let mut grpc = service("default", "grpc", &[("grpc", 9000)]);
    grpc["spec"]["ports"][0]["appProtocol"] = json!("kubernetes.io/h2c");
    objects.push(grpc);
    objects.push(service("default", "web", &[("http", 80)]));
    objects.push(ingress(
        "default",
        "g",
        &json!({"rules": [{"http": {"paths": [
            {"path": "/grpc", "pathType": "Prefix", "backend": {"service": {"name": "grpc", "port": {"number": 9000}}}},
            path("/", "Prefix", "web"),
        ]}}]}),
    ));
    let table = RouteTable::compile(&model(objects), &selection("fairlead"));
    let protocol = |p: &str| match table.backend(table.route("x", p).unwrap().backend) {
        BackendSpec::Service { protocol, .. } => *protocol,
        BackendSpec::Unresolved { .. } => panic!("unresolved"),
    };
    assert_eq!(protocol("/grpc"), UpstreamProtocol::H2c);
    assert_eq!(protocol("/"), UpstreamProtocol::Http1);
}

#[test]
fn tls_hosts() {
    let mut objects = services(&["web"]);
    objects.push(ingress_class("fairlead", true));
    objects.push(ingress(
        "default",
        "tls",
        &json!({
            "tls": [{"hosts": ["secure.example.com", "*.wild.example.com"], "secretName": "s"}],
            "rules": [{"http": {"paths": [path("/", "Prefix", "web")]}}],
        }),
    ));
    let table = RouteTable::compile(&model(objects), &selection("fairlead"));
    assert!(table.tls_hosts.contains("secure.example.com"));
    assert!(table.tls_hosts.contains("a.wild.example.com"));
    assert!(!table.tls_hosts.contains("wild.example.com"));
    assert!(!table.tls_hosts.contains("a.b.wild.example.com"));
    assert!(!table.tls_hosts.contains("example.com"));
}

#[test]
fn hosts_normalise() {
    for (authority, host) in [
        ("Example.COM", "example.com"),
        ("example.com:443", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:80", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("", ""),
    ] {
        assert_eq!(normalize_host(authority), host, "{authority}");
    }
}

#[test]
fn dot_segments() {
    for (path, expected) in [
        ("/a/b", None),
        ("/a/./b", Some("/a/b")),
        ("/a/../b", Some("/b")),
        ("/../../b", Some("/b")),
        ("/a/b/..", Some("/a/")),
        ("/a/.", Some("/a/")),
        ("/..", Some("/")),
        ("/a/..b/c", None),
        ("/public/../admin", Some("/admin")),
    ] {
        assert_eq!(remove_dot_segments(path).as_deref(), expected, "{path}");
    }
}

#[test]
fn default_backend_flag_parses() {
    let d: DefaultBackend = "ns/svc:8080".parse().unwrap();
    assert_eq!(d.service, ObjectKey::new("ns", "svc"));
    assert_eq!(d.port, PortRef::Number(8080));
    let d: DefaultBackend = "ns/svc:http".parse().unwrap();
    assert_eq!(d.port, PortRef::Name("http".to_owned()));
    for bad in ["svc:80", "ns/svc", "/svc:80", "ns/:80", "ns/svc:"] {
        assert!(bad.parse::<DefaultBackend>().is_err(), "{bad}");
    }
}

// --- properties ---------------------------------------------------------

/// Reference semantics of one path against a request path, straight from
/// the API documentation.
fn reference_matches(path_type: PathType, path: &str, request: &str) -> bool {
    match path_type {
        PathType::Exact => path == request,
        PathType::Prefix | PathType::ImplementationSpecific => {
            let elements = |p: &str| -> Vec<String> {
                let trimmed = p.trim_end_matches('/');
                if trimmed.is_empty() {
                    Vec::new()
                } else {
                    trimmed[1..].split('/').map(str::to_owned).collect()
                }
            };
            let (route, req) = (elements(path), elements(request));
            route.len() <= req.len() && route.iter().zip(&req).all(|(a, b)| a == b)
        }
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("ab".to_owned()),
        Just(String::new())
    ]
}

fn url_path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..5), any::<bool>()).prop_map(|(segments, slash)| {
        let mut p = String::new();
        for s in segments {
            p.push('/');
            p.push_str(&s);
        }
        if p.is_empty() || slash {
            p.push('/');
        }
        p
    })
}

fn path_type() -> impl Strategy<Value = PathType> {
    prop_oneof![
        Just(PathType::Exact),
        Just(PathType::Prefix),
        Just(PathType::ImplementationSpecific)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The chosen route matches the request; no Exact route matches when a
    /// Prefix one was chosen; and no matching prefix is longer than the
    /// chosen one.
    #[test]
    fn chosen_route_is_the_most_specific_match(
        paths in prop::collection::vec((path_type(), url_path()), 1..8),
        requests in prop::collection::vec(url_path(), 1..16),
    ) {
        let mut objects = vec![ingress_class("fairlead", true)];
        let mut http_paths = Vec::new();
        for (i, (t, p)) in paths.iter().enumerate() {
            let name = format!("s{i}");
            objects.push(service("default", &name, &[("http", 80)]));
            http_paths.push(json!({"path": p, "pathType": t.to_string(),
                "backend": {"service": {"name": name, "port": {"number": 80}}}}));
        }
        objects.push(ingress("default", "p", &json!({"rules": [{"http": {"paths": http_paths}}]})));
        let table = RouteTable::compile(&model(objects), &selection("fairlead"));
        for request in &requests {
            let matching: Vec<&(PathType, String)> =
                paths.iter().filter(|(t, p)| reference_matches(*t, p, request)).collect();
            match table.route("x", request) {
                None => prop_assert!(matching.is_empty(), "{request}: no route, but {matching:?} match"),
                Some(route) => {
                    let t = route.path_type.unwrap();
                    prop_assert!(reference_matches(t, &route.path, request),
                        "{request}: chose {t} {} which does not match", route.path);
                    let any_exact = matching.iter().any(|(t, _)| *t == PathType::Exact);
                    if t != PathType::Exact {
                        prop_assert!(!any_exact, "{request}: chose a prefix over an exact match");
                        let len = |p: &str| p.trim_end_matches('/').len();
                        let longest = matching.iter().map(|(_, p)| len(p)).max().unwrap();
                        prop_assert_eq!(len(&route.path), longest,
                            "{}: a longer matching prefix exists", request);
                    }
                }
            }
        }
    }

    /// A longer matching prefix always wins, whatever the declaration order.
    #[test]
    fn longer_prefix_wins(
        base in prop::collection::vec("[a-c]{1,3}", 1..4),
        extra in prop::collection::vec("[a-c]{1,3}", 1..3),
        tail in prop::collection::vec("[a-c]{1,3}", 0..3),
        short_first in any::<bool>(),
    ) {
        let short = format!("/{}", base.join("/"));
        let long = format!("{short}/{}", extra.join("/"));
        let request = if tail.is_empty() { long.clone() } else { format!("{long}/{}", tail.join("/")) };
        let mut objects = services(&["short", "long"]);
        objects.push(ingress_class("fairlead", true));
        let mut p = vec![path(&short, "Prefix", "short"), path(&long, "Prefix", "long")];
        if !short_first { p.reverse(); }
        objects.push(ingress("default", "p", &json!({"rules": [{"http": {"paths": p}}]})));
        let table = RouteTable::compile(&model(objects), &selection("fairlead"));
        prop_assert_eq!(answer(&table, "x", &request), "default/p -> default/long:80");
        prop_assert_eq!(answer(&table, "x", &short), "default/p -> default/short:80");
    }

    /// Host matching: exact beats wildcard; a wildcard matches one label only.
    #[test]
    fn wildcard_matches_one_label(
        labels in prop::collection::vec("[a-z]{1,4}", 1..4),
        suffix in prop::collection::vec("[a-z]{1,4}", 1..3),
    ) {
        let suffix = suffix.join(".");
        let host = format!("{}.{suffix}", labels.join("."));
        let mut objects = services(&["wild"]);
        objects.push(ingress_class("fairlead", true));
        objects.push(ingress("default", "w", &json!({"rules": [
            {"host": format!("*.{suffix}"), "http": {"paths": [path("/", "Prefix", "wild")]}}]})));
        let table = RouteTable::compile(&model(objects), &selection("fairlead"));
        let expected = if labels.len() == 1 { "default/w -> default/wild:80" } else { "404" };
        prop_assert_eq!(answer(&table, &host, "/"), expected);
    }

    /// Normalising dot segments is idempotent and leaves no dot segments.
    #[test]
    fn dot_segments_removed(p in prop::collection::vec(prop_oneof![Just("."), Just(".."), Just("a"), Just("")], 0..6)) {
        let path = format!("/{}", p.join("/"));
        let once = remove_dot_segments(&path).unwrap_or_else(|| path.clone());
        prop_assert!(once.starts_with('/'));
        prop_assert!(remove_dot_segments(&once).is_none(), "{} -> {}", path, once);
    }
}
