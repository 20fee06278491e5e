//! TLS certificates by key type and session resumption, end to end, with
//! `openssl s_client` as the client.

use std::path::Path;
use std::process::{Command, Stdio};

use super::support::{CLASS, Gateway, ingress, namespace, service};

/// A self-signed certificate for `names` with a new key (`ec` or `rsa`),
/// its subject `CN=<cn>`, as a kubernetes.io/tls Secret.
fn secret(dir: &Path, ns: &str, name: &str, kind: &str, cn: &str, names: &[&str]) -> String {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let newkey = match kind {
        "ec" => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => vec!["-newkey", "rsa:2048"],
    };
    let san = format!(
        "subjectAltName={}",
        names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let status = Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "2"])
        .args(newkey)
        .args(["-subj", &format!("/CN={cn}"), "-addext", &san, "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let indent = |path: &Path| {
        let mut out = String::new();
        for line in std::fs::read_to_string(path).unwrap().lines() {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert),
        indent(&key)
    )
}

/// `openssl s_client` to the gateway for `host` with `args`, sending one
/// HTTP/1.0 request and reading to the close; its output.
fn s_client(gw: &Gateway, host: &str, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-connect"])
        .arg(gw.https.to_string())
        .args(["-servername", host])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The subject line of the server certificate in `s_client` output.
fn subject(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate in:\n{out}"))
}

#[test]
fn ecdsa_and_rsa_certificates_by_sni_and_resumed_sessions_counted() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    let spec = "  tls:\n  \
        - {hosts: [both.example.com, ec.example.com], secretName: ec}\n  \
        - {hosts: [both.example.com], secretName: rsa}\n  \
        rules: [{host: both.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: none, port: {number: 80}}}}]}}]\n";
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("tls")),
            ("none.yaml", service("tls", "none", None, &[])),
            (
                "ec.yaml",
                secret(
                    dir,
                    "tls",
                    "ec",
                    "ec",
                    "ecdsa-cert",
                    &["both.example.com", "ec.example.com"],
                ),
            ),
            (
                "rsa.yaml",
                secret(dir, "tls", "rsa", "rsa", "rsa-cert", &["both.example.com"]),
            ),
            ("ingress.yaml", ingress("tls", "tls", spec)),
        ],
        &[],
    );

    // An ECDSA-only Secret, served by SNI.
    let out = s_client(&gw, "ec.example.com", &[]);
    assert!(subject(&out).contains("ecdsa-cert"), "{out}");
    // A host with both: ECDSA to a client that verifies ECDSA (and RSA)...
    for version in ["-tls1_3", "-tls1_2"] {
        let out = s_client(
            &gw,
            "both.example.com",
            &[
                version,
                "-sigalgs",
                "ECDSA+SHA256:RSA-PSS+SHA256:RSA+SHA256",
            ],
        );
        assert!(subject(&out).contains("ecdsa-cert"), "{version}: {out}");
        // ...RSA to a client that verifies only RSA.
        let out = s_client(
            &gw,
            "both.example.com",
            &[version, "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"],
        );
        assert!(subject(&out).contains("rsa-cert"), "{version}: {out}");
    }
    // Other names get the default certificate.
    let out = s_client(&gw, "other.example.com", &[]);
    assert!(
        subject(&out).contains("fairlead default certificate"),
        "{out}"
    );
    assert_eq!(
        gw.metric("fairlead_ingress_tls_resumed_handshakes_total{version=\"TLSv1.3\"}"),
        0,
        "full handshakes are not counted as resumed"
    );

    // Sessions resume: TLS 1.3 by ticket, TLS 1.2 by ticket and by session id.
    let resumed = |version: &str, extra: &[&str], n: u64| {
        let session = dir.join(format!("session{version}{}", extra.len()));
        let session = session.to_str().unwrap();
        let out = s_client(
            &gw,
            "both.example.com",
            &[&[version, "-sess_out", session], extra].concat(),
        );
        assert!(out.contains("New, TLSv1."), "{version} {extra:?}: {out}");
        let out = s_client(
            &gw,
            "both.example.com",
            &[&[version, "-sess_in", session], extra].concat(),
        );
        assert!(out.contains("Reused, TLSv1."), "{version} {extra:?}: {out}");
        assert!(out.contains("HTTP/1.0 503"), "no endpoints: {out}");
        let label = if version == "-tls1_3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert_eq!(
            gw.metric(&format!(
                "fairlead_ingress_tls_resumed_handshakes_total{{version=\"{label}\"}}"
            )),
            n,
            "{version} {extra:?}"
        );
    };
    resumed("-tls1_3", &[], 1);
    resumed("-tls1_2", &[], 1);
    resumed("-tls1_2", &["-no_ticket"], 2);
    drop(gw);

    // Resumption off: the same client gets full handshakes.
    let gw = Gateway::start(
        &[
            ("class.yaml", CLASS.to_owned()),
            ("ns.yaml", namespace("tls")),
            ("none.yaml", service("tls", "none", None, &[])),
            (
                "ec.yaml",
                secret(dir, "tls", "ec", "ec", "ecdsa-off", &["both.example.com"]),
            ),
            ("ingress.yaml", ingress("tls", "tls", spec)),
        ],
        &["--ingress-tls-session-timeout", "0s"],
    );
    // TLS 1.3: no ticket, so s_client has no session to save.
    let session = dir.join("off13");
    let out = s_client(
        &gw,
        "both.example.com",
        &["-tls1_3", "-sess_out", session.to_str().unwrap()],
    );
    assert!(out.contains("New, TLSv1.3"), "{out}");
    assert!(!session.exists(), "no resumable session: {out}");
    // TLS 1.2: a session id the server does not remember.
    let session = dir.join("off12");
    let session = session.to_str().unwrap();
    let out = s_client(&gw, "both.example.com", &["-tls1_2", "-sess_out", session]);
    if std::path::Path::new(session).exists() {
        let out = s_client(&gw, "both.example.com", &["-tls1_2", "-sess_in", session]);
        assert!(out.contains("New, TLSv1.2"), "{out}");
    } else {
        assert!(out.contains("New, TLSv1.2"), "{out}");
    }
    for version in ["TLSv1.3", "TLSv1.2"] {
        assert_eq!(
            gw.metric(&format!(
                "fairlead_ingress_tls_resumed_handshakes_total{{version=\"{version}\"}}"
            )),
            0
        );
    }
}
