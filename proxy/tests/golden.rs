//! Golden scenarios: manifests in, the load-balancer maps out. Each directory under
//! `tests/golden/` is loaded as a manifest directory, programmed into in-memory maps for
//! node `node-a`, and the dump compared with `tests/golden/<dir>.txt`. After an intended
//! change, `UPDATE_GOLDEN=1 cargo test -p fairlead-proxy --test golden` rewrites them.

use std::path::Path;

use fairlead_model::ModelWriter;
use fairlead_model::source::ManifestDir;
use fairlead_proxy::Reconciler;
use fairlead_proxy::status::render_contents;
use fairlead_proxy::tables::{LbMaps as _, MemoryMaps};

fn render(dir: &Path) -> String {
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(dir)
        .sync(&mut writer)
        .expect("manifests load");
    let snapshot = writer.snapshot();
    assert!(!snapshot.has_errors(), "{:?}", snapshot.problems);
    let mut maps = MemoryMaps::new();
    let mut reconciler = Reconciler::new(Some("node-a".to_owned()));
    let report = reconciler.sync(&snapshot, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    render_contents(&maps.contents().expect("memory maps read"))
}

fn golden(name: &str, dir: &Path) {
    let actual = render(dir);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden file");
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
fn semantics() {
    golden(
        "semantics",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/semantics"),
    );
}

#[test]
fn examples() {
    golden(
        "examples",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"),
    );
}
