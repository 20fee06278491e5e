//! End-to-end test of `fairlead node` in the demo topology (privileged): runs
//! `scripts/demo.sh` — the README's "run the main job" command — with this
//! build's binary. The script builds an outside client, node-a and three pods
//! of shop/web in network namespaces, runs `fairlead node` on a copy of
//! examples/, and checks every path it shows, failing on the first that does
//! not hold; this test also asserts that the script reported each step
//! ([`Demo::check_steps`] lists them), so a step dropped from the demo fails
//! here. tests/image.rs runs the same demo with the container image. It also
//! checks that every metric the Grafana dashboard and the alerting rules of
//! deploy/monitoring name is one the node exported during the demo, and that
//! docs/operations.md lists every metric the node exported.

#[path = "support/demo.rs"]
mod demo;

use demo::Demo;
use fairlead_proxy::testing::privileged;

#[test]
fn the_demo_shows_every_path_following_the_model_and_surviving_a_restart() {
    if !privileged("the_demo_shows_every_path_following_the_model_and_surviving_a_restart") {
        return;
    }
    let metrics = tempfile::NamedTempFile::new().unwrap();
    let metrics_path = metrics.path().to_str().unwrap();
    let demo = Demo::run(
        "fldt",
        &[
            ("FAIRLEAD_BIN", env!("CARGO_BIN_EXE_fairlead")),
            ("FAIRLEAD_DEMO_METRICS", metrics_path),
        ],
    );
    demo.check_steps();

    // The dashboard and the alerts name only metrics the node exports.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exported = exported_names(&std::fs::read_to_string(metrics.path()).unwrap());
    assert!(
        exported.contains("fairlead_proxy_map_entries")
            && exported.contains("fairlead_dns_requests_total")
            && exported.contains("fairlead_ingress_requests_total"),
        "the demo's /metrics holds every component: {exported:?}"
    );
    // docs/operations.md lists every metric family the node exports.
    let reference = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let undocumented: Vec<_> = exported
        .iter()
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .filter(|name| {
            // A histogram's series are documented under the family's name.
            !["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| reference.contains(&format!("`{family}`")))
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations.md lists every metric the node exports; missing: {undocumented:?}"
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
