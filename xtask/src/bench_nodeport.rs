//! `cargo xtask bench proxy --nodeport-seconds S`: requests/s and connections/s (wrk)
//! through a NodePort to a backend on another node (DNAT + SNAT), for fairlead's TC path
//! against the equivalent nftables rules (kube-proxy's nftables mode: DNAT at prerouting,
//! masquerade at postrouting) and iptables rules, in one topology of network namespaces:
//!
//! ```text
//!  ext 192.168.77.2 ── node 192.168.77.1 | 172.19.0.1 ── remote 172.19.0.2 (nginx :8080)
//! ```
//!
//! `remote` has no route to `ext`: answers come back only through the node's source NAT.
//! iperf3 is not installed on this image, so throughput is not measured. Prints figures,
//! ratios and the load average; asserts nothing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fairlead_model::{Change, ModelWriter, decode};
use fairlead_proxy::nodeaddr::node_addresses;
use fairlead_proxy::{Datapath, LoadOptions, Reconciler};

const EXT: &str = "flbench-ext";
const NODE: &str = "flbench-node";
const REMOTE: &str = "flbench-remote";
const URL: &str = "http://192.168.77.1:30080/";

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip").args(args).status().context("ip")?;
    if !status.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Topology;

impl Topology {
    fn new() -> Result<Self> {
        Self::remove();
        for ns in [EXT, NODE, REMOTE] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "flb-n-e", "type", "veth", "peer", "name", "flb-e",
        ])?;
        ip(&[
            "link", "add", "flb-n-r", "type", "veth", "peer", "name", "flb-r",
        ])?;
        for (dev, ns, addr) in [
            ("flb-n-e", NODE, "192.168.77.1/24"),
            ("flb-e", EXT, "192.168.77.2/24"),
            ("flb-n-r", NODE, "172.19.0.1/24"),
            ("flb-r", REMOTE, "172.19.0.2/24"),
        ] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", EXT, "route", "add", "default", "via", "192.168.77.1"])?;
        in_ns(NODE, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Self)
    }

    fn remove() {
        for ns in [EXT, NODE, REMOTE] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// nginx in `remote` answering 200 on :8080, until dropped.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nginx.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{ listen 8080 backlog=4096; keepalive_requests 100000; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", REMOTE, "nginx", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nginx")?;
        thread::sleep(Duration::from_millis(500));
        Ok(Self { child, _dir: dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// wrk from `ext`: requests/s with keep-alive, and with `Connection: close` (= connections/s).
fn wrk(seconds: u64) -> Result<(f64, f64)> {
    let duration = format!("{seconds}s");
    let parse = |out: &str| -> Result<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk output: {out}"))
    };
    let keepalive = in_ns(EXT, "wrk", &["-t1", "-c32", "-d", &duration, URL])?;
    let close = in_ns(
        EXT,
        "wrk",
        &[
            "-t1",
            "-c32",
            "-d",
            &duration,
            "-H",
            "Connection: close",
            URL,
        ],
    )?;
    Ok((parse(&keepalive)?, parse(&close)?))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// fairlead's datapath programmed for one NodePort Service, attached to the node's two
/// interfaces (from a thread inside the node namespace); detached when dropped.
fn fairlead() -> Result<Datapath> {
    thread::spawn(|| -> Result<Datapath> {
        let file = std::fs::File::open(format!("/var/run/netns/{NODE}"))?;
        rustix::thread::move_into_link_name_space(
            rustix::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let mut datapath = Datapath::load(&LoadOptions::new())?;
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: b}\nspec:\n  type: NodePort\n  clusterIP: 10.96.77.1\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: b, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n- {addresses: [\"172.19.0.2\"], conditions: {ready: true}, nodeName: node-2}\n";
        let changes: Vec<Change> = yaml
            .split("---\n")
            .map(|doc| -> Result<Change> {
                let value: serde_json::Value = serde_yaml::from_str(doc)?;
                Ok(Change::Upsert {
                    object: decode(value).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                    origin: None,
                })
            })
            .collect::<Result<_>>()?;
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(changes, Vec::new(), true);
        let snapshot: Arc<_> = writer.snapshot();
        let report = Reconciler::new(Some("node-1".to_owned())).sync(&snapshot, &mut datapath);
        if !report.errors.is_empty() {
            bail!("sync: {:?}", report.errors);
        }
        let addresses = node_addresses()?;
        datapath.set_node_addresses(&addresses, Some(Ipv4Addr::new(172, 19, 0, 1)), None)?;
        for interface in ["flb-n-e", "flb-n-r"] {
            datapath.attach_interface(interface, None)?;
        }
        Ok(datapath)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
}

const NFT_RULES: &str = "table ip kube-proxy {
  map service-ips {
    type inet_proto . inet_service : verdict
    elements = { tcp . 30080 : goto svc-web }
  }
  chain svc-web {
    meta l4proto tcp meta mark set 0x4000 dnat to 172.19.0.2:8080
  }
  chain nat-prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local meta l4proto . th dport vmap @service-ips
  }
  chain nat-postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    meta mark 0x4000 masquerade
  }
}
";

/// The NodePort benchmark.
pub(crate) fn run(seconds: u64) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    let _topology = Topology::new()?;
    let _nginx = Nginx::start()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nNodePort through a node to a remote backend (DNAT+SNAT), wrk -t1 -c32 for {seconds}s each"
    );
    let _ = writeln!(out, "  load average before: {}", loadavg());

    let datapath = fairlead()?;
    let fl = wrk(seconds)?;
    drop(datapath);

    let rules = std::env::temp_dir().join(format!("fairlead-bench-nft-{}", std::process::id()));
    std::fs::write(&rules, NFT_RULES)?;
    in_ns(NODE, "nft", &["-f", &rules.display().to_string()])?;
    let nft = wrk(seconds)?;
    in_ns(NODE, "nft", &["flush", "ruleset"])?;
    let _ = std::fs::remove_file(&rules);

    let ipt = if Path::new("/usr/sbin/iptables-legacy").exists() {
        "iptables-legacy"
    } else {
        "iptables"
    };
    in_ns(
        NODE,
        ipt,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "30080",
            "-j",
            "DNAT",
            "--to-destination",
            "172.19.0.2:8080",
        ],
    )?;
    in_ns(
        NODE,
        ipt,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-d",
            "172.19.0.2",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "MASQUERADE",
        ],
    )?;
    let iptables = wrk(seconds)?;
    in_ns(NODE, ipt, &["-t", "nat", "-F"])?;

    let _ = writeln!(
        out,
        "  {:<16} {:>14} {:>14}",
        "", "requests/s", "connections/s"
    );
    for (name, (rps, cps)) in [("fairlead", fl), ("nftables", nft), (ipt, iptables)] {
        let _ = writeln!(out, "  {name:<16} {rps:>14.0} {cps:>14.0}");
    }
    let _ = writeln!(
        out,
        "  fairlead / nftables: {:.2}x requests/s, {:.2}x connections/s",
        fl.0 / nft.0,
        fl.1 / nft.1
    );
    let _ = writeln!(
        out,
        "  fairlead / {ipt}: {:.2}x requests/s, {:.2}x connections/s",
        fl.0 / iptables.0,
        fl.1 / iptables.1
    );
    let _ = writeln!(out, "  load average after: {}", loadavg());
    print!("{out}");
    Ok(())
}
