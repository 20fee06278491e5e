//! The manifest source while it runs: hot reload, broken edits keeping the
//! last good version, fixes picked up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Snapshot};
use tokio::sync::watch;

fn service(name: &str, ip: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  clusterIP: {ip}\n  ports:\n    - port: {port}\n"
    )
}

/// Waits until a snapshot satisfies `done`, for at most `limit`.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    limit: Duration,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    tokio::time::timeout(limit, async {
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if done(&snapshot) {
                return snapshot;
            }
            rx.changed().await.expect("writer alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no matching snapshot within {limit:?}; last: {:#?}",
            rx.borrow().problems
        )
    })
}

fn port_of(s: &Snapshot, name: &str) -> Option<u16> {
    s.service("demo", name).map(|svc| svc.ports[0].port)
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write-then-rename, as editors and ConfigMap updates do.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reload_within_a_second_and_broken_edits_keep_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 80));
    let (writer, mut rx) = ModelWriter::new();
    let task = tokio::spawn(ManifestDir::new(dir.path()).watch(writer));

    let first = wait_for(&mut rx, Duration::from_secs(5), |s| s.synced).await;
    assert_eq!(port_of(&first, "a"), Some(80));

    // A plain edit shows up within a second.
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 81));
    wait_for(&mut rx, Duration::from_secs(1), |s| {
        port_of(s, "a") == Some(81)
    })
    .await;

    // A new file too.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(
        &dir.path().join("sub"),
        "b.yml",
        &service("b", "10.96.0.2", 53),
    );
    wait_for(&mut rx, Duration::from_secs(1), |s| {
        port_of(s, "b") == Some(53)
    })
    .await;

    // A YAML syntax error keeps the file's last good objects and says so.
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Service\n  metadata: [\n",
    );
    let broken = wait_for(
        &mut rx,
        Duration::from_secs(1),
        fairlead_model::Snapshot::has_errors,
    )
    .await;
    assert_eq!(port_of(&broken, "a"), Some(81), "last good version stays");
    assert!(
        broken.problems[0].to_string().contains("a.yaml"),
        "{}",
        broken.problems[0]
    );

    // An invalid field keeps the object's last good version.
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 0));
    let invalid = wait_for(&mut rx, Duration::from_secs(1), |s| {
        s.problems
            .iter()
            .any(|p| p.error.field == "spec.ports[0].port")
    })
    .await;
    assert_eq!(port_of(&invalid, "a"), Some(81), "last good version stays");

    // A fix is picked up and the problem goes away.
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 82));
    let fixed = wait_for(&mut rx, Duration::from_secs(1), |s| {
        port_of(s, "a") == Some(82)
    })
    .await;
    assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);

    // Deleting a file deletes its objects.
    std::fs::remove_file(dir.path().join("sub/b.yml")).unwrap();
    wait_for(&mut rx, Duration::from_secs(1), |s| {
        port_of(s, "b").is_none()
    })
    .await;

    drop(rx);
    // The watcher notices no-one listens any more on the next event.
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 83));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("source stops when no consumer is left")
        .unwrap()
        .unwrap();
}

#[test]
fn unchanged_reload_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 80));
    let mut source = ManifestDir::new(dir.path());
    let (mut writer, _rx) = ModelWriter::new();
    let first = source.sync(&mut writer).unwrap();
    assert_eq!(source.sync(&mut writer).unwrap(), first);
    write(dir.path(), "a.yaml", &service("a", "10.96.0.1", 81));
    let second = source.sync(&mut writer).unwrap();
    assert_eq!(second, first + 1);
    let snapshot = writer.snapshot();
    let changed = snapshot.changes_since(Some(first));
    assert_eq!(changed.services().count(), 1);
    assert!(snapshot.changes_since(Some(second)).is_empty());
}

#[test]
fn duplicates_are_reported_and_the_first_wins() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "1.yaml", &service("a", "10.96.0.1", 80));
    write(dir.path(), "2.yaml", &service("a", "10.96.0.1", 90));
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(dir.path()).sync(&mut writer).unwrap();
    let s = writer.snapshot();
    assert_eq!(port_of(&s, "a"), Some(80));
    assert_eq!(s.problems.len(), 1);
    let text = s.problems[0].to_string();
    assert!(
        text.contains("2.yaml") && text.contains("defined twice") && text.contains("1.yaml"),
        "{text}"
    );
}
