//! End-to-end test of `fairlead node` in the demo topology (privileged): runs
//! `scripts/demo.sh` — the README's "run the main job" command — with this
//! build's binary. The script builds an outside client, node-a and three pods
//! of shop/web in network namespaces, runs `fairlead node` on a copy of
//! examples/, and checks every path it shows, failing on the first that does
//! not hold:
//!
//! - a pod resolves `web` by its short name (glibc resolver, kube-dns
//!   ClusterIP, the node's DNS server), resolves the headless `web-pods` to the
//!   three pod addresses, and reaches all three pods through the ClusterIP;
//! - the outside client reaches all three through NodePort 30080 and through
//!   the ingress over HTTPS by host name;
//! - after web-c's endpoint is removed from the manifests, every component
//!   serves the new model generation, DNS no longer gives its address and no
//!   path reaches web-c any more;
//! - a connection through the ClusterIP keeps working, request after request,
//!   while `fairlead node` is stopped and started again.
//!
//! This test also asserts that the script reported each of these steps, so a
//! step dropped from the demo fails here; and that every metric the Grafana
//! dashboard and the alerting rules of deploy/monitoring name is one the node
//! exported during the demo.

use std::path::Path;
use std::process::Command;

use fairlead_proxy::testing::privileged;

#[test]
fn the_demo_shows_every_path_following_the_model_and_surviving_a_restart() {
    if !privileged("the_demo_shows_every_path_following_the_model_and_surviving_a_restart") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = format!("fldt{}", std::process::id() % 100_000);
    let metrics = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .env("FAIRLEAD_DEMO_METRICS", metrics.path())
        .env("FAIRLEAD_BIN", env!("CARGO_BIN_EXE_fairlead"))
        .env("FAIRLEAD_DEMO_PREFIX", &prefix)
        .current_dir(root)
        .output()
        .expect("running scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let lines: Vec<&str> = stdout.lines().collect();
    let position = |needle: &str, from: usize| {
        let found = lines[from..].iter().position(|line| line.contains(needle));
        let Some(i) = found else {
            panic!("the demo did not report {needle:?} after line {from}:\n{stdout}");
        };
        i + from
    };
    // Before the endpoint is removed every path reaches all three pods; after, every
    // component serves the new generation, and web-c is gone from DNS and every path.
    let mut at = position("Three paths to Service shop/web", 0);
    let paths = |at: &mut usize, addresses: &str, pods: &str| {
        *at = position("resolves the short name 'web'", *at);
        *at = position("headless Service 'web-pods'", *at);
        assert!(lines[*at].ends_with(addresses), "{}", lines[*at]);
        for path in ["ClusterIP", "NodePort", "ingress, TLS"] {
            *at = position(path, *at);
            let answered = format!("answered by {pods}");
            assert!(lines[*at].ends_with(&answered), "{}", lines[*at]);
        }
    };
    paths(
        &mut at,
        "10.244.1.11 10.244.1.12 10.244.1.13",
        "web-a web-b web-c",
    );
    at = position("all serve the new model generation", at);
    paths(&mut at, "10.244.1.11 10.244.1.12", "web-a web-b");
    // The restart: one connection, no request lost.
    at = position("the live connection:", at);
    assert!(
        lines[at].contains("requests on one connection"),
        "{}",
        lines[at]
    );
    position("Done: every path followed the model", at);

    // The dashboard and the alerts name only metrics the node exports.
    let exported = exported_names(&std::fs::read_to_string(metrics.path()).unwrap());
    assert!(
        exported.contains("fairlead_proxy_map_entries")
            && exported.contains("fairlead_dns_requests_total")
            && exported.contains("fairlead_ingress_requests_total"),
        "the demo's /metrics holds every component: {exported:?}"
    );
    for file in [
        "deploy/monitoring/fairlead-dashboard.json",
        "deploy/monitoring/fairlead-alerts.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let named = named_metrics(&text);
        assert!(named.len() > 10, "{file} names metrics: {named:?}");
        let unknown: Vec<_> = named
            .difference(&exported)
            .filter(|name| !registered_without_series(name))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics fairlead node does not export: {unknown:?}"
        );
    }

    // Nothing is left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&prefix),
        "network namespaces left behind"
    );
    assert!(
        !Path::new("/sys/fs/bpf").join(&prefix).exists(),
        "pins left behind"
    );
}

/// Every sample name an exposition can hold for the families in `text`
/// (families without samples yet appear only in their `# TYPE` line).
fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if !name.is_empty() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `fairlead_*` metric names a dashboard or rules file mentions.
fn named_metrics(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("fairlead_") {
        let start = at + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Families whose labels name a peer or a status code have no series until
/// one occurs (prometheus-client leaves empty families out of a scrape), and
/// the demo makes no upstream fail: for those, the name must be the one
/// their crate registers.
fn registered_without_series(name: &str) -> bool {
    let sources = [
        ("fairlead_proxy_", include_str!("../proxy/src/health.rs")),
        ("fairlead_dns_", include_str!("../dns/src/metrics.rs")),
        (
            "fairlead_ingress_",
            include_str!("../ingress/src/metrics.rs"),
        ),
    ];
    let families = [
        "fairlead_proxy_health_check_requests_total",
        "fairlead_dns_upstream_errors_total",
        "fairlead_ingress_upstream_errors_total",
        "fairlead_ingress_ejections_total",
    ];
    families.contains(&name)
        && sources.iter().any(|(prefix, source)| {
            name.strip_prefix(prefix)
                .and_then(|n| n.strip_suffix("_total"))
                .is_some_and(|n| source.contains(&format!("\"{n}\",")))
        })
}
