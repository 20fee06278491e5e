//! The container image, run as deploy/ runs it (privileged).
//!
//! The image is `$FAIRLEAD_IMAGE` when set (CI: scripts/test.sh builds the release image
//! with scripts/image.sh and names it here), else one that scripts/image.sh builds from
//! this build's binary for the test and removes after. The test checks what the image
//! holds, then runs `scripts/demo.sh` with it: podman runs the node DaemonSet's
//! container exactly as deploy/30-node.yaml describes it (scripts/run-pod.py reads the
//! manifest: host network, the listed capabilities and no others, the seccomp profile,
//! read-only root, /sys/fs/bpf and the cgroup2 mount, the ConfigMap's settings and the
//! arguments), for `fairlead --version`, `fairlead check --kernel` and `fairlead node` in
//! the demo topology (a pod reaches a ClusterIP, the outside a NodePort, ...); the
//! cleanup DaemonSet's init container for `--cleanup`, which must leave no pins; and the
//! ingress Deployment's container (non-root, no capabilities) serving the Ingress over
//! HTTPS from a pod of its own. It also shows that the seccomp profile is in force:
//! with the rules of runtimes older than CAP_BPF, the same container cannot load a
//! program.

#[path = "support/demo.rs"]
mod demo;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use demo::Demo;
use fairlead_proxy::testing::{TestNetns, privileged};
use serde::Deserialize as _;
use serde_norway::Value;

/// The image under test; removed on drop when the test built it.
struct Image {
    tag: String,
    built: bool,
    _out: Option<tempfile::TempDir>,
}

impl Image {
    fn get() -> Self {
        if let Ok(tag) = std::env::var("FAIRLEAD_IMAGE") {
            let exists = Command::new("podman")
                .args(["image", "exists", &tag])
                .status()
                .expect("podman (scripts/setup.sh installs it)");
            assert!(
                exists.success(),
                "FAIRLEAD_IMAGE={tag}: no such image (build it with scripts/image.sh)"
            );
            return Self {
                tag,
                built: false,
                _out: None,
            };
        }
        let out = tempfile::tempdir().expect("a directory for the debug info");
        let tag = format!("localhost/fairlead:test-{}", std::process::id());
        let result = Command::new("bash")
            .arg(root().join("scripts/image.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_fairlead"), "--tag", &tag])
            .arg("--out")
            .arg(out.path())
            .current_dir(root())
            .output()
            .expect("running scripts/image.sh");
        assert!(
            result.status.success(),
            "scripts/image.sh failed:\n{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        Self {
            tag,
            built: true,
            _out: Some(out),
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.built {
            let _ = Command::new("podman")
                .args(["rmi", "--force", &self.tag])
                .output();
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn podman(args: &[&str]) -> Output {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The workload of kind `kind` in a deploy/ file.
fn workload(file: &str, kind: &str) -> Value {
    let text = fs::read_to_string(root().join("deploy").join(file)).expect("a deploy/ file");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/{file}"))
}

/// What the image holds: the binary, the libraries it links, their package records
/// and copyright files, an os-release naming where they come from; nothing else (no
/// shell). It runs as a user without privileges unless the pod says otherwise.
fn check_contents(image: &Image) {
    let inspect = podman(&["image", "inspect", &image.tag]);
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &config[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/fairlead"])
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    let mount = podman(&["image", "mount", &image.tag]);
    let top = PathBuf::from(String::from_utf8_lossy(&mount.stdout).trim());
    let mut files = BTreeSet::new();
    let mut dirs = vec![top.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                let path = entry.path();
                files.insert(format!("/{}", path.strip_prefix(&top).unwrap().display()));
            }
        }
    }
    // The libraries: what the dynamic loader needs for the image's binary.
    let ldd = Command::new("ldd")
        .arg(top.join("usr/bin/fairlead"))
        .output()
        .unwrap();
    let mut libraries: BTreeSet<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields.as_slice() {
                [_, "=>", path, ..] | [path, ..] if path.starts_with('/') => {
                    Some((*path).to_owned())
                }
                _ => None,
            }
        })
        .collect();
    podman(&["image", "unmount", &image.tag]);
    libraries.insert("/usr/bin/fairlead".to_owned());
    let rest: Vec<&String> = files
        .iter()
        .filter(|f| !libraries.contains(*f))
        .filter(|f| {
            !(f.starts_with("/var/lib/dpkg/status.d/")
                || f.starts_with("/usr/share/doc/") && f.ends_with("/copyright")
                || *f == "/etc/os-release")
        })
        .collect();
    assert!(rest.is_empty(), "unexpected files in the image: {rest:?}");
    for library in &libraries {
        assert!(files.contains(library), "{library} missing: {files:?}");
    }
    assert!(
        files.iter().any(|f| f.ends_with("status.d/libc6")),
        "no package record of glibc: {files:?}"
    );
}

/// With the seccomp rules of runtimes before CAP_BPF (bpf(2) for CAP_SYS_ADMIN only),
/// the node container cannot load a program: the profile is in force, and it is the
/// CAP_BPF rule of current runtimes that lets fairlead's bpf(2) calls through.
fn check_seccomp_is_in_force(image: &Image) {
    let netns = TestNetns::new("img").expect("a network namespace");
    let host = tempfile::tempdir().unwrap();
    let (bpffs, cgroup) = (host.path().join("bpf"), host.path().join("cgroup"));
    fs::create_dir_all(&bpffs).unwrap();
    fs::create_dir_all(&cgroup).unwrap();
    let run = |variant: &str| {
        Command::new("python3")
            .arg(root().join("scripts/run-pod.py"))
            .args([
                "--manifest",
                "deploy/30-node.yaml",
                "--config",
                "deploy/20-config.yaml",
            ])
            .arg("--netns")
            .arg(netns.path())
            .args([
                "--netns-is-node",
                "--node-name",
                "node-a",
                "--image",
                &image.tag,
            ])
            .args(["--name", &format!("{}-{variant}", netns.name())])
            .arg(format!("--host-path=/sys/fs/bpf={}", bpffs.display()))
            .arg(format!("--host-path=/sys/fs/cgroup={}", cgroup.display()))
            .args([
                "--runtime-default",
                variant,
                "--rm",
                "--",
                "check",
                "--kernel",
            ])
            .current_dir(root())
            .output()
            .expect("running scripts/run-pod.py")
    };
    let legacy = run("legacy");
    let stderr = String::from_utf8_lossy(&legacy.stderr);
    assert!(
        !legacy.status.success() && stderr.contains("Operation not permitted"),
        "check --kernel under the pre-CAP_BPF profile: {} {stderr}",
        legacy.status
    );
    let current = run("current");
    assert!(
        current.status.success(),
        "check --kernel under RuntimeDefault: {}",
        String::from_utf8_lossy(&current.stderr)
    );
}

/// `BPF` -> `cap_bpf`, sorted and joined as capsh prints them (by number).
fn capabilities(container: &Value) -> BTreeSet<String> {
    container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .map(|caps| {
            caps.iter()
                .map(|c| format!("cap_{}", c.as_str().unwrap().to_lowercase()))
                .collect()
        })
        .unwrap_or_default()
}

fn reported(line: &str, field: &str) -> BTreeSet<String> {
    let value = line
        .split("; ")
        .find_map(|part| part.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field:?} in {line}"));
    if value == "none" {
        return BTreeSet::new();
    }
    value.split(',').map(str::to_owned).collect()
}

#[test]
fn the_image_runs_as_deploy_describes() {
    if !privileged("the_image_runs_as_deploy_describes") {
        return;
    }
    let image = Image::get();
    check_contents(&image);
    check_seccomp_is_in_force(&image);

    let demo = Demo::run("img", &[("FAIRLEAD_IMAGE", &image.tag)]);
    demo.check_steps();

    // The image's own steps, in order.
    let mut at = demo.position("fairlead --version:", 0);
    assert!(
        demo.line(at)
            .ends_with(&format!("fairlead {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        demo.line(at)
    );
    at = demo.position("fairlead check --kernel:", at);
    assert!(
        demo.line(at).contains("accepted by the verifier"),
        "{}",
        demo.line(at)
    );
    // The node container's process: root, exactly the capabilities 30-node.yaml adds
    // (effective and bounding), no_new_privs, a seccomp filter, read-only root.
    let node = workload("30-node.yaml", "DaemonSet");
    let node = &node["spec"]["template"]["spec"]["containers"][0];
    at = demo.position(&format!("container {}-node runs as", demo.prefix), at);
    let line = demo.line(at);
    assert!(line.contains("runs as uid 0 gid 0;"), "{line}");
    assert_eq!(
        reported(line, "capabilities: "),
        capabilities(node),
        "{line}"
    );
    assert_eq!(
        reported(line, "bounding set: "),
        capabilities(node),
        "{line}"
    );
    for state in ["no_new_privs 1", "seccomp mode 2", "root filesystem ro"] {
        assert!(line.contains(state), "{line}");
    }
    // The gateway Deployment's container: its user, no capability at all, and the
    // Ingress served over HTTPS from its own pod.
    let gateway = workload("50-ingress.yaml", "Deployment");
    let user = &gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"];
    at = demo.position(&format!("container {}-gw runs as", demo.prefix), at);
    let line = demo.line(at);
    assert!(
        line.contains(&format!(
            "runs as uid {} gid {};",
            user.as_u64().unwrap(),
            user.as_u64().unwrap()
        )),
        "{line}"
    );
    assert!(
        line.contains("capabilities: none; bounding set: none;"),
        "{line}"
    );
    for state in ["no_new_privs 1", "seccomp mode 2", "root filesystem ro"] {
        assert!(line.contains(state), "{line}");
    }
    at = demo.position("(the gateway pod 10.244.1.20, TLS", at);
    assert!(
        demo.line(at).ends_with("answered by web-a web-b web-c"),
        "{}",
        demo.line(at)
    );
    demo.position("the gateway stopped (SIGTERM)", at);
}

/// deploy/ runs the image scripts/image.sh builds for this version:
/// `localhost/fairlead:<version>` in every workload (the cleanup DaemonSet's pause
/// container apart).
#[test]
fn deploy_runs_the_image_the_script_builds() {
    let wanted = format!("localhost/fairlead:{}", env!("CARGO_PKG_VERSION"));
    let mut seen = 0;
    for file in ["30-node.yaml", "50-ingress.yaml", "uninstall/cleanup.yaml"] {
        let text = fs::read_to_string(root().join("deploy").join(file)).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("image:"))
        {
            let image = line.trim_start().trim_start_matches("image:").trim();
            if image.starts_with("registry.k8s.io/pause:") {
                continue;
            }
            assert_eq!(image, wanted, "deploy/{file}");
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "one fairlead container per workload");
}
