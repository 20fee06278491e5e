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

fn slice(service: &str, address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n  - port: 8080\nendpoints:\n  - addresses: [\"{address}\"]\n    conditions: {{ready: true}}\n"
    )
}

/// `count` files, file `i` holding Service `s<i>` and its slice.
fn many_files(dir: &Path, count: usize) {
    for i in 0..count {
        let ip = format!("10.96.1.{}", i + 1);
        let pod = format!("10.244.1.{}", i + 1);
        write(
            dir,
            &format!("f{i:02}.yaml"),
            &format!(
                "{}---\n{}",
                service(&format!("s{i}"), &ip, 80),
                slice(&format!("s{i}"), &pod)
            ),
        );
    }
}

/// The state the writer would hold if it read the directory from scratch.
fn from_scratch(dir: &Path) -> Arc<Snapshot> {
    let (mut writer, _rx) = ModelWriter::new();
    ManifestDir::new(dir).sync(&mut writer).unwrap();
    writer.snapshot()
}

fn same_model(a: &Snapshot, b: &Snapshot) {
    assert_eq!(a.services, b.services);
    assert_eq!(a.problems, b.problems);
}

#[test]
fn an_edit_to_one_file_among_many_rereads_and_changes_only_that_file() {
    let dir = tempfile::tempdir().unwrap();
    many_files(dir.path(), 40);
    let mut source = ManifestDir::new(dir.path());
    let (mut writer, _rx) = ModelWriter::new();
    let first = source.sync(&mut writer).unwrap();
    assert_eq!(writer.snapshot().services.len(), 40);

    // File 7's endpoint moves; file 9 is broken on disk, but no event names it.
    write(
        dir.path(),
        "f07.yaml",
        &format!(
            "{}---\n{}",
            service("s7", "10.96.1.8", 80),
            slice("s7", "10.244.9.9")
        ),
    );
    write(dir.path(), "f09.yaml", "kind: [\n");
    let second = source
        .refresh([Path::new("f07.yaml").to_path_buf()], &mut writer)
        .unwrap();
    assert_eq!(second, first + 1);
    let snapshot = writer.snapshot();
    let changes = snapshot.changes_since(Some(first));
    let touched: Vec<String> = changes.services().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(touched, ["s7"], "only file 7's Service changed");
    assert_eq!(
        changes.service(&fairlead_model::ServiceKey::new("demo", "s7")),
        Some(fairlead_model::ServiceChange::Endpoints),
        "the Service's spec did not change"
    );
    // File 9 was not read: its error is not reported yet.
    assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);

    // Now it is; its objects keep serving.
    source
        .refresh([Path::new("f09.yaml").to_path_buf()], &mut writer)
        .unwrap();
    let snapshot = writer.snapshot();
    assert_eq!(snapshot.services.len(), 40);
    assert_eq!(snapshot.problems.len(), 1);
    let problem = &snapshot.problems[0];
    let origin = problem
        .origin
        .as_ref()
        .expect("a file problem has an origin");
    assert_eq!(origin.file, Path::new("f09.yaml"));
    assert_eq!(origin.document, "1");
    assert!(
        problem.to_string().contains("YAML syntax error"),
        "{problem}"
    );
    assert_eq!(
        snapshot.service("demo", "s9").unwrap().endpoints.len(),
        1,
        "the broken file's objects keep serving"
    );
}

#[test]
fn a_broken_file_keeps_its_objects_until_fixed_and_fixes_apply_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!(
        "{}---\n{}",
        service("a", "10.96.0.1", 80),
        service("b", "10.96.0.2", 80)
    );
    write(dir.path(), "ab.yaml", &two);
    write(dir.path(), "c.yaml", &service("c", "10.96.0.3", 80));
    let mut source = ManifestDir::new(dir.path());
    let (mut writer, _rx) = ModelWriter::new();
    source.sync(&mut writer).unwrap();

    // Broken: a and b stay, the error names the file and document.
    write(
        dir.path(),
        "ab.yaml",
        &format!(
            "{}---\nkind: Service\n  metadata: [\n",
            service("a", "10.96.0.1", 80)
        ),
    );
    source
        .refresh([Path::new("ab.yaml").into()], &mut writer)
        .unwrap();
    let broken = writer.snapshot();
    assert_eq!(port_of(&broken, "a"), Some(80));
    assert_eq!(port_of(&broken, "b"), Some(80));
    assert_eq!(broken.problems.len(), 1, "{:?}", broken.problems);
    let text = broken.problems[0].to_string();
    assert!(
        text.contains("ab.yaml (document 2)") && text.contains("previous contents stay"),
        "{text}"
    );

    // An invalid field in one object: that object's last good version stays,
    // the field is reported.
    write(
        dir.path(),
        "ab.yaml",
        &format!(
            "{}---\n{}",
            service("a", "10.96.0.1", 0),
            service("b", "10.96.0.2", 80)
        ),
    );
    source
        .refresh([Path::new("ab.yaml").into()], &mut writer)
        .unwrap();
    let invalid = writer.snapshot();
    assert_eq!(port_of(&invalid, "a"), Some(80));
    assert!(
        invalid
            .problems
            .iter()
            .any(|p| p.error.field == "spec.ports[0].port"
                && p.origin.as_ref().is_some_and(|o| o.document == "1")),
        "{:?}",
        invalid.problems
    );

    // Fixed without b: a changes, b is deleted, c is untouched.
    let before = writer.snapshot().generation;
    write(dir.path(), "ab.yaml", &service("a", "10.96.0.1", 81));
    source
        .refresh([Path::new("ab.yaml").into()], &mut writer)
        .unwrap();
    let fixed = writer.snapshot();
    assert_eq!(port_of(&fixed, "a"), Some(81));
    assert_eq!(port_of(&fixed, "b"), None);
    assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);
    let mut touched: Vec<String> = fixed
        .changes_since(Some(before))
        .services()
        .map(|(k, _)| k.name.clone())
        .collect();
    touched.sort();
    assert_eq!(touched, ["a", "b"]);
    same_model(&fixed, &from_scratch(dir.path()));
}

#[test]
fn removing_the_first_definition_serves_the_second_and_directories_count() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "1.yaml", &service("a", "10.96.0.1", 80));
    write(dir.path(), "2.yaml", &service("a", "10.96.0.1", 90));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(
        &dir.path().join("sub"),
        "x.yaml",
        &service("x", "10.96.0.9", 80),
    );
    let mut source = ManifestDir::new(dir.path());
    let (mut writer, _rx) = ModelWriter::new();
    source.sync(&mut writer).unwrap();
    assert_eq!(port_of(&writer.snapshot(), "a"), Some(80));
    assert_eq!(writer.snapshot().problems.len(), 1);

    // The first definition goes: the second (not named by the event) serves.
    std::fs::remove_file(dir.path().join("1.yaml")).unwrap();
    source
        .refresh([Path::new("1.yaml").into()], &mut writer)
        .unwrap();
    let s = writer.snapshot();
    assert_eq!(port_of(&s, "a"), Some(90));
    assert!(s.problems.is_empty(), "{:?}", s.problems);

    // A directory removed: its files' objects go.
    std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
    source
        .refresh([Path::new("sub").into()], &mut writer)
        .unwrap();
    assert_eq!(port_of(&writer.snapshot(), "x"), None);
    same_model(&writer.snapshot(), &from_scratch(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_edit_among_many_files_changes_only_its_service() {
    let dir = tempfile::tempdir().unwrap();
    many_files(dir.path(), 40);
    let (writer, mut rx) = ModelWriter::new();
    let task = tokio::spawn(ManifestDir::new(dir.path()).watch(writer));
    let first = wait_for(&mut rx, Duration::from_secs(5), |s| s.synced).await;

    write(
        dir.path(),
        "f13.yaml",
        &format!(
            "{}---\n{}",
            service("s13", "10.96.1.14", 80),
            slice("s13", "10.244.7.7")
        ),
    );
    let edited = wait_for(&mut rx, Duration::from_secs(2), |s| {
        s.service("demo", "s13").is_some_and(|svc| {
            svc.endpoints
                .iter()
                .any(|e| e.address.to_string() == "10.244.7.7")
        })
    })
    .await;
    let touched: Vec<String> = edited
        .changes_since(Some(first.generation))
        .services()
        .map(|(k, _)| k.name.clone())
        .collect();
    assert_eq!(touched, ["s13"]);
    same_model(&edited, &from_scratch(dir.path()));
    task.abort();
}

mod incremental {
    use super::*;
    use proptest::prelude::*;

    /// One step: file `0..4`; what happens to it; the Services (name, port)
    /// it then holds.
    type Step = (usize, u8, Vec<(u8, u16)>);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0usize..4,
                0u8..6,
                prop::collection::vec((0u8..6, 1u16..4), 0..4),
            ),
            1..12,
        )
    }

    fn content(objects: &[(u8, u16)]) -> String {
        objects
            .iter()
            .map(|(s, port)| {
                service(
                    &format!("s{s}"),
                    &format!("10.96.0.{}", s + 1),
                    u32::from(*port),
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the edits (objects moving between files, defined twice,
        /// files deleted or broken then fixed), re-reading only the edited
        /// file leaves the model the directory gives from scratch.
        #[test]
        fn incremental_reads_equal_a_read_from_scratch(steps in steps(), by_directory in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut source = ManifestDir::new(dir.path());
            let (mut writer, _rx) = ModelWriter::new();
            source.sync(&mut writer).unwrap();
            let mut broken = std::collections::BTreeSet::new();
            for (file, action, objects) in &steps {
                let name = format!("f{file}.yaml");
                match action {
                    0 => {
                        let _ = std::fs::remove_file(dir.path().join(&name));
                        broken.remove(file);
                    }
                    1 => {
                        write(dir.path(), &name, "kind: [\n");
                        broken.insert(*file);
                    }
                    _ => {
                        write(dir.path(), &name, &content(objects));
                        broken.remove(file);
                    }
                }
                let named = if by_directory { std::path::PathBuf::new() } else { name.into() };
                source.refresh([named], &mut writer).unwrap();
            }
            // Broken files keep objects a read from scratch cannot know: fix them.
            for file in broken {
                let name = format!("f{file}.yaml");
                write(dir.path(), &name, &content(&[(u8::try_from(file).unwrap(), 9)]));
                source.refresh([name.into()], &mut writer).unwrap();
            }
            let incremental = writer.snapshot();
            let scratch = from_scratch(dir.path());
            prop_assert_eq!(&incremental.services, &scratch.services);
            prop_assert_eq!(&incremental.problems, &scratch.problems);
        }
    }
}
