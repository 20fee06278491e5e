//! `scripts/demo.sh` run by a test, and what such a test checks of the steps it
//! reports: tests/node.rs runs it with this build's binary, tests/image.rs with
//! the container image.

use std::path::Path;
use std::process::Command;

/// One finished, successful run of the demo.
pub(crate) struct Demo {
    /// FAIRLEAD_DEMO_PREFIX of the run: its namespaces, cgroup, pins and containers.
    pub(crate) prefix: String,
    lines: Vec<String>,
    stdout: String,
}

impl Demo {
    /// Runs the demo with `env` under a prefix of its own (`label` and this process's
    /// id); panics with its output if it fails.
    pub(crate) fn run(label: &str, env: &[(&str, &str)]) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let prefix = format!("{label}{}", std::process::id() % 100_000);
        let out = Command::new("bash")
            .arg(root.join("scripts/demo.sh"))
            .envs(env.iter().copied())
            .env("FAIRLEAD_DEMO_PREFIX", &prefix)
            .current_dir(root)
            .output()
            .expect("running scripts/demo.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the demo failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        Self {
            prefix,
            lines: stdout.lines().map(str::to_owned).collect(),
            stdout,
        }
    }

    /// The index of the first line at or after `from` that contains `needle`.
    pub(crate) fn position(&self, needle: &str, from: usize) -> usize {
        let found = self.lines[from..].iter().position(|l| l.contains(needle));
        let Some(i) = found else {
            panic!(
                "the demo did not report {needle:?} after line {from}:\n{}",
                self.stdout
            );
        };
        i + from
    }

    /// Line `at`.
    pub(crate) fn line(&self, at: usize) -> &str {
        &self.lines[at]
    }

    /// Checks, in order, the steps every run reports, and that the run left nothing
    /// behind:
    ///
    /// - a pod resolves `web` by its short name (glibc resolver, kube-dns ClusterIP, the
    ///   node's DNS server), resolves the headless `web-pods` to the three pod addresses,
    ///   and reaches all three pods through the ClusterIP; the outside client reaches all
    ///   three through NodePort 30080 and through the ingress over HTTPS by host name;
    /// - after web-c's endpoint is removed from the manifests, every component serves the
    ///   new model generation, DNS no longer gives its address and no path reaches web-c;
    /// - a connection through the ClusterIP keeps working, request after request, while
    ///   `fairlead node` is stopped and started again;
    /// - `fairlead node --cleanup` leaves no pins and no program attached, and neither
    ///   the ClusterIP nor the NodePort answers any more;
    /// - fairlead logged no warning and no error.
    pub(crate) fn check_steps(&self) {
        let mut at = self.position("Three paths to Service shop/web", 0);
        let paths = |at: &mut usize, addresses: &str, pods: &str| {
            *at = self.position("resolves the short name 'web'", *at);
            *at = self.position("headless Service 'web-pods'", *at);
            assert!(self.line(*at).ends_with(addresses), "{}", self.line(*at));
            for path in ["ClusterIP", "NodePort", "ingress, TLS"] {
                *at = self.position(path, *at);
                let answered = format!("answered by {pods}");
                assert!(self.line(*at).ends_with(&answered), "{}", self.line(*at));
            }
        };
        paths(
            &mut at,
            "10.244.1.11 10.244.1.12 10.244.1.13",
            "web-a web-b web-c",
        );
        at = self.position("all serve the new model generation", at);
        paths(&mut at, "10.244.1.11 10.244.1.12", "web-a web-b");
        // The restart: one connection, no request lost.
        at = self.position("the live connection:", at);
        assert!(
            self.line(at).contains("requests on one connection"),
            "{}",
            self.line(at)
        );
        at = self.position("fairlead node --cleanup", at);
        at = self.position("ok: removed ", at);
        at = self.position("no pins left under", at);
        at = self.position("no program attached to cgroup", at);
        at = self.position("(ClusterIP): no answer any more", at);
        at = self.position("(NodePort): no answer any more", at);
        at = self.position("fairlead logged no warning and no error", at);
        self.position("Done: every path followed the model", at);

        let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&netns.stdout).contains(&self.prefix),
            "network namespaces left behind"
        );
        assert!(
            !Path::new("/sys/fs/bpf").join(&self.prefix).exists(),
            "pins left behind"
        );
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            assert!(
                !Path::new(root).join(&self.prefix).exists(),
                "cgroup left behind under {root}"
            );
        }
    }
}
