//! End-to-end test of `fairlead node` in the demo topology (privileged): runs
//! `scripts/demo.sh` — the README's "run the main job" command — with this
//! build's binary. The script builds an outside client, node-a and three pods
//! of shop/web in network namespaces, runs `fairlead node` on a copy of
//! examples/, and checks every path it shows, failing on the first that does
//! not hold; this test also asserts that the script reported each step
//! ([`Demo::check_steps`] lists them), so a step dropped from the demo fails
//! here. tests/image.rs runs the same demo with the container image.

#[path = "support/demo.rs"]
mod demo;

use demo::Demo;
use fairlead_proxy::testing::privileged;

#[test]
fn the_demo_shows_every_path_following_the_model_and_surviving_a_restart() {
    if !privileged("the_demo_shows_every_path_following_the_model_and_surviving_a_restart") {
        return;
    }
    let demo = Demo::run("fldt", &[("FAIRLEAD_BIN", env!("CARGO_BIN_EXE_fairlead"))]);
    demo.check_steps();
}
