//! End-to-end test of endpoint selection (privileged): runs
//! `tests/support/endpoints.sh` with this build's binary. It runs `fairlead node`
//! in network namespaces with three pods of one Service and checks, at each step,
//! that the ClusterIP (from a pod), the NodePort (from outside) and the ingress reach
//! exactly the same pods, and what the headless Service's DNS answers:
//!
//! - mid-rollout, one ready pod and one serving-and-terminating pod: only the ready
//!   one; DNS: only the ready one;
//! - only the serving-and-terminating pod left: every path falls back to it (KEP-1669);
//!   DNS: NXDOMAIN (the DNS specification publishes ready endpoints only);
//! - zone hints, two pods for this node's zone (its Node's
//!   `topology.kubernetes.io/zone` label) and one for another: only the two;
//! - hints removed: all three.

use std::path::Path;
use std::process::Command;

use fairlead_proxy::testing::privileged;

#[test]
fn every_path_reaches_the_pods_the_model_selects_in_a_rollout_and_with_topology() {
    if !privileged("every_path_reaches_the_pods_the_model_selects_in_a_rollout_and_with_topology") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = std::env::var("FAIRLEAD_E2E_PREFIX")
        .unwrap_or_else(|_| format!("flep{}", std::process::id() % 100_000));
    let out = Command::new("bash")
        .arg(root.join("tests/support/endpoints.sh"))
        .env("FAIRLEAD_BIN", env!("CARGO_BIN_EXE_fairlead"))
        .env("E2E_PREFIX", &prefix)
        .current_dir(root)
        .output()
        .expect("running tests/support/endpoints.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the endpoint selection test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Every check ran: 4 steps x 3 paths, and DNS at three of them.
    let checks = stdout.lines().filter(|l| l.starts_with("ok: ")).count();
    assert_eq!(checks, 15, "{stdout}");
    assert!(stdout.lines().any(|l| l == "done"), "{stdout}");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&prefix),
        "network namespaces left behind"
    );
}
