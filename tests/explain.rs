//! `fairlead explain` on a manifest directory: golden files of its text and
//! JSON output (`tests/explain/*.txt`, `*.json`). After an intended change,
//! `UPDATE_GOLDEN=1 cargo nextest run -p fairlead --test explain` rewrites
//! them. The end-to-end tests against a running `fairlead node` are in
//! tests/node.rs.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `fairlead explain ARGS --manifests DIR`: (exit code, stdout).
fn explain(dir: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .arg("explain")
        .args(args)
        .arg("--manifests")
        .arg(dir)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("fairlead runs");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        out.stderr.is_empty(),
        "{args:?}: stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/explain").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn service_of_the_examples() {
    let (code, out) = explain("examples", &["service", "shop/web"]);
    assert_eq!(code, 0, "{out}");
    golden("examples-service-shop-web.txt", &out);
    let (code, out) = explain("examples", &["service", "shop/api"]);
    assert_eq!(code, 0, "{out}");
    golden("examples-service-shop-api.txt", &out);
}

#[test]
fn request_of_the_examples() {
    // The most specific path wins; the others say why they did not.
    let (code, out) = explain(
        "examples",
        &["request", "https://shop.example.com/api/orders"],
    );
    assert_eq!(code, 0, "{out}");
    golden("examples-request-api.txt", &out);
    // Plain HTTP to a TLS host: the redirect comes first.
    let (_, out) = explain(
        "examples",
        &["request", "http://SHOP.example.com:80/healthz"],
    );
    assert!(out.contains("redirect to HTTPS"), "{out}");
    assert!(
        out.contains("=> ingress shop/shop  host shop.example.com  Exact /healthz"),
        "{out}"
    );
}

#[test]
fn gateway_api_and_ingress_side_by_side() {
    let dir = "tests/explain/fixture";
    // Every kind of frontend, the HTTPRoute's weighted backends, the Ingress.
    let (code, out) = explain(dir, &["service", "demo/a"]);
    assert_eq!(code, 0, "{out}");
    golden("fixture-service-a.txt", &out);
    // The HTTPRoute takes it first; every Ingress route says so.
    let (_, out) = explain(dir, &["request", "http://app.example.com/v2/x"]);
    golden("fixture-request-v2.txt", &out);
    // An exact path to a missing Service: 503, and why.
    let (_, out) = explain(dir, &["request", "https://app.example.com/old"]);
    golden("fixture-request-old.txt", &out);
    // Another host: the rule without a host.
    let (_, out) = explain(dir, &["request", "https://other.example.org/"]);
    golden("fixture-request-other-host.txt", &out);
    // A Service the model does not have.
    let (_, out) = explain(dir, &["service", "demo/nope"]);
    assert!(out.contains("not in the model"), "{out}");
}

#[test]
fn json_reports() {
    let (code, out) = explain("tests/explain/fixture", &["service", "demo/a", "--json"]);
    assert_eq!(code, 0, "{out}");
    golden("fixture-service-a.json", &out);
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["service"], "demo/a");
    assert_eq!(report["kernel"]["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(report["disagreements"].as_array().map(Vec::len), Some(0));
    let (_, out) = explain(
        "tests/explain/fixture",
        &["request", "https://app.example.com/old", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let taken: Vec<&serde_json::Value> = report["routes"]["items"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["taken"] == true)
        .collect();
    assert_eq!(taken.len(), 1, "{out}");
    assert_eq!(taken[0]["matches"], "Exact /old");
    assert_eq!(taken[0]["backends"][0]["unresolved"], "no such Service");
}
