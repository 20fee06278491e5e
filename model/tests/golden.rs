//! Golden tests: manifest directories → the rendered model, compared to
//! checked-in files. `UPDATE_GOLDEN=1 cargo test -p fairlead-model --test golden`
//! rewrites them; review the diff before committing.

use std::path::{Path, PathBuf};

use fairlead_model::gateway_status::{self, Serving};
use fairlead_model::source::ManifestDir;
use fairlead_model::{DEFAULT_GATEWAY_CONTROLLER, ModelWriter, Snapshot, dump};

fn manifest_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn check_golden(dir: &Path, golden: &str) {
    check_golden_with(dir, golden, dump::render);
}

fn check_golden_with(dir: &Path, golden: &str, render: impl Fn(&Snapshot) -> String) {
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(dir)
        .sync(&mut writer)
        .expect("directory reads");
    let actual = render(&writer.snapshot());
    let path = manifest_root().join("tests/golden").join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if actual != expected {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(5)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .collect();
        panic!(
            "{} differs from the model of {} ({} vs {} lines):\n{}\n\nactual:\n{actual}",
            path.display(),
            dir.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn examples() {
    check_golden(&manifest_root().join("../examples"), "examples.txt");
}

#[test]
fn gateway_api() {
    check_golden(
        &manifest_root().join("tests/fixtures/gateway-api"),
        "gateway-api.txt",
    );
}

/// The Gateway API status of one case per condition reason (routes
/// accepted or not attached, unresolved backends, invalid listeners).
#[test]
fn gateway_api_status() {
    check_golden_with(
        &manifest_root().join("tests/fixtures/gateway-api-status"),
        "gateway-api-status.txt",
        |snapshot| {
            gateway_status::render(&gateway_status::compute(
                snapshot,
                &Serving {
                    controller: DEFAULT_GATEWAY_CONTROLLER.to_owned(),
                    http_port: 80,
                    https_port: 443,
                    listen_failures: fairlead_model::gateway_status::ListenFailures::default(),
                },
            ))
        },
    );
}

#[test]
fn bad_input() {
    check_golden(&manifest_root().join("tests/fixtures/bad"), "bad.txt");
}

#[test]
fn endpoints() {
    check_golden(
        &manifest_root().join("tests/fixtures/endpoints"),
        "endpoints.txt",
    );
}

#[test]
fn ingress_classes() {
    check_golden(
        &manifest_root().join("tests/fixtures/ingress-classes"),
        "ingress-classes.txt",
    );
}
