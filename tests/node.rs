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
//! step dropped from the demo fails here.

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
    let out = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
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
