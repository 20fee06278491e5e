//! `fairlead check --kubeconfig`: the binary reads the apiserver through a
//! kubeconfig file (here pointing at the fake apiserver of model/tests) and
//! prints the same model as for the same objects as manifests.

#[path = "../model/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::path::Path;
use std::process::{Command, Output};

use fake_apiserver::FakeApiserver;
use serde_json::Value;

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("fairlead runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every object of the example cluster except Nodes (`check` reads no Node
/// without a node name), as JSON.
fn examples_without_nodes(dir: &Path) -> Vec<Value> {
    let mut objects = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    for file in files {
        let content = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&content) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            let items = if value["kind"] == "List" {
                value["items"].as_array().unwrap().clone()
            } else {
                vec![value]
            };
            objects.extend(items.into_iter().filter(|o| o["kind"] != "Node"));
        }
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_apiserver_of_a_kubeconfig() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let objects = examples_without_nodes(&root.join("examples"));
    let manifests = tempfile::tempdir().unwrap();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(manifests.path().join("all.json"), list.to_string()).unwrap();
    let server = FakeApiserver::start(objects).await;
    let kubeconfig = manifests.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            server.url()
        ),
    )
    .unwrap();
    let manifest_dir = manifests.path().to_str().unwrap().to_owned();
    let kubeconfig_path = kubeconfig.to_str().unwrap().to_owned();
    let (from_files, from_apiserver) = tokio::task::spawn_blocking(move || {
        (
            check(&["--manifests", &manifest_dir]),
            check(&["--kubeconfig", &kubeconfig_path]),
        )
    })
    .await
    .unwrap();
    assert!(from_files.status.success(), "{}", text(&from_files.stderr));
    assert!(
        from_apiserver.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&from_apiserver.stdout),
        text(&from_apiserver.stderr)
    );
    let printed = text(&from_apiserver.stdout);
    assert!(
        printed.contains("service shop/web NodePort vip=[10.96.10.10] endpoints 3/4 ready"),
        "{printed}"
    );
    assert_eq!(printed, text(&from_files.stdout));
    assert!(
        server.requests().iter().any(|r| r.is_list_of("services")),
        "the binary listed Services from the fake"
    );
}

#[test]
fn a_missing_kubeconfig_is_a_clear_error() {
    let out = check(&["--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/kubeconfig"),
        "the error names the file: {stderr}"
    );
}
