//! `fairlead check` against real directories: the exit code, and that every
//! problem is named precisely while the valid objects are still listed.

use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["check", "--manifests"])
        .arg(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("fairlead runs")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn examples_are_valid() {
    let out = check(&root().join("examples"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "service shop/web NodePort vip=[10.96.10.10] endpoints 3/4 ready",
        "service data/db Headless",
        "service data/payments ExternalName -> payments.example.net",
        "shop.example.com/api Prefix -> service api:http",
        "secret shop/shop-tls names=[shop.example.com, *.shop.example.com]",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("problems:"), "{stdout}");
}

#[test]
fn bad_input_is_named_precisely_and_the_rest_listed() {
    let out = check(&root().join("model/tests/fixtures/bad"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        // The YAML syntax error: file, document, line.
        "error: syntax.yaml (document 1): YAML syntax error: did not find expected '-' indicator at line 9",
        // The unknown kind.
        "error: kinds.yaml (document 1): kind: unsupported kind Deployment (apps/v1) shop/web",
        // The invalid port: file, document, object and field.
        "error: kinds.yaml (document 3): Service shop/bad-port: spec.ports[0].port: must be a port number in 1..65535, got 70000",
        "error: kinds.yaml (document 4): Service shop/bad-type: spec.ports[0].port: invalid type: string \"eighty\"",
        // The mismatched key.
        "error: tls.yaml (document 1): Secret shop/mismatched: data[tls.key]: does not match the certificate",
        // The valid objects are still listed.
        "service shop/ok ClusterIP vip=[10.96.0.50]",
        "ingress shop/store",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stderr.contains("6 error(s), 1 warning(s)"), "{stderr}");
    assert!(
        !stdout.contains("bad-port ClusterIP"),
        "an invalid Service is not in the model:\n{stdout}"
    );
}

#[test]
fn missing_directory_is_an_error() {
    let out = check(&root().join("no/such/dir"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dir"));
}

#[test]
fn node_takes_every_components_flags_and_refuses_to_run_nothing() {
    let help = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--manifests",
        "--no-proxy",
        "--no-dns",
        "--no-ingress",
        "--cgroup",
        "--bpffs",
        "--listen",
        "--zone",
        "--https",
        "--ingress-class",
        "--ingress-status-service",
        "--telemetry-addr",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from `node --help`:\n{help}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args([
            "node",
            "--manifests",
            "examples",
            "--no-proxy",
            "--no-dns",
            "--no-ingress",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("every part is switched off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_without_pinned_maps_says_where_it_looked() {
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args([
            "status",
            "--bpffs",
            "/sys/fs/bpf/fairlead-no-such-dir",
            // Nothing listens on port 1.
            "--telemetry-addr",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/sys/fs/bpf/fairlead-no-such-dir")
            && stderr.contains("fairlead proxy")
            && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn kernel_check_loads_every_program() {
    if !fairlead_proxy::testing::privileged("check::kernel_check_loads_every_program") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["check", "--kernel"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("accepted by the verifier") && stdout.contains("fl_connect4"),
        "{stdout}"
    );
}

#[test]
fn completions_and_the_manual_page_are_generated_from_the_cli() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fairlead"))
            .args(args)
            .output()
            .expect("fairlead runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    for (shell, marker) in [
        ("bash", "_fairlead()"),
        ("zsh", "#compdef fairlead"),
        ("fish", "complete -c fairlead"),
    ] {
        let script = run(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their flags are completed.
        for word in ["node", "status", "manifests", "dns-autopath"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH fairlead"),
        "{man}"
    );
    assert!(man.contains("node") && man.contains("completions"), "{man}");
}

/// Runs fairlead with its stdout on a pipe whose reader has already gone, as
/// after `fairlead … | head` once `head` has what it wants.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .stdout(writer)
        .output()
        .expect("fairlead runs")
}

/// A telemetry listener that answers `GET /status` (like a running fairlead)
/// to every connection; returns its address.
fn fake_telemetry() -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let body = r#"{"model_generation":7,"model_synced":true,"shutting_down":false,"components":[{"name":"dns","ready":true,"generation":7}]}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Every CLI output to a closed pipe ends quietly, with the status a shell
/// shows for a coreutils program ended by SIGPIPE (141), never a panic.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let telemetry = fake_telemetry().to_string();
    let no_maps = "/sys/fs/bpf/fairlead-no-such-dir";
    // The fake listener answers: the table and the JSON have something to print.
    let open = Command::new(env!("CARGO_BIN_EXE_fairlead"))
        .args(["status", "--json", "--bpffs", no_maps, "--telemetry-addr"])
        .arg(&telemetry)
        .output()
        .unwrap();
    assert!(
        open.status.success() && String::from_utf8_lossy(&open.stdout).contains("\"runtime\""),
        "{open:?}"
    );
    let runs: [&[&str]; 3] = [
        &[
            "status",
            "--json",
            "--bpffs",
            no_maps,
            "--telemetry-addr",
            &telemetry,
        ],
        &["status", "--bpffs", no_maps, "--telemetry-addr", &telemetry],
        &["check", "--manifests", "examples"],
    ];
    for args in runs {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}

/// `fairlead check` shows the Gateway API status the gateway would write,
/// with the spec's reasons (bad input is reported, not fatal).
#[test]
fn gateway_api_status_is_shown() {
    let out = check(&root().join("model/tests/fixtures/gateway-api-status"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "gateway api status (fairlead.dev/gateway-controller, HTTP 80, HTTPS 443):",
        "gatewayclass fairlead\n  Accepted True Accepted",
        "ResolvedRefs False InvalidCertificateRef: Secret infra/nope does not exist",
        "ResolvedRefs False RefNotPermitted: Secret certs/shop-tls",
        "Conflicted True HostnameConflict",
        "Accepted False NotAllowedByListeners",
        "Accepted False NoMatchingListenerHostname",
        "Accepted False NoMatchingParent",
        "ResolvedRefs False BackendNotFound: Service shop/missing does not exist",
        "ResolvedRefs False RefNotPermitted: Service backends/hidden",
        "ResolvedRefs False InvalidKind",
        // An invalid regular expression drops its rule only.
        "PartiallyInvalid True UnsupportedValue: Dropped Rule(s): rule 1: spec.rules[1].matches[0].path.value: invalid regular expression",
        "Accepted False UnsupportedValue: every rule is dropped",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
