//! `cargo xtask …`: chores around fairlead that are not part of building it.

mod bench_autopath;
mod bench_dns;
mod bench_node;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench_nodeport;
mod bench_packets;
mod bench_proxy;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the example TLS material: a throw-away CA and a certificate for
    /// the example Ingress hosts, written as a `kubernetes.io/tls` Secret
    /// manifest plus the CA certificate (for clients' --cacert).
    ExampleCert {
        /// Directory to write `shop-tls.yaml` and `example-ca.crt` into.
        #[arg(long, default_value = "examples/shop")]
        out: PathBuf,
        /// Names the certificate is for.
        #[arg(long, default_values_t = ["shop.example.com".to_owned(), "*.shop.example.com".to_owned()])]
        names: Vec<String>,
    },
    /// Benchmarks against peers on this machine (not run in CI); prints figures and ratios.
    Bench {
        #[command(subcommand)]
        component: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// fairlead's socket load balancer against kube-proxy-style iptables and nftables
    /// rules: sync time for N Services, one changed EndpointSlice, connect latency.
    Proxy {
        /// Numbers of Services (the sweep; `--services` too).
        #[arg(long, alias = "services", value_delimiter = ',', default_values_t = [100, 1000, 10_000])]
        sizes: Vec<usize>,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Connects per connect measurement (0 skips them).
        #[arg(long, default_value_t = 5000)]
        connects: usize,
        /// Measure fairlead only (no iptables/nftables loads; connects still compare with
        /// direct and, when the rules are loaded, iptables).
        #[arg(long)]
        fairlead_only: bool,
        /// Seconds each rule-set load (iptables-restore, nft -f) may take; one still
        /// running then is stopped and reported as "> cap", so every size prints its row.
        #[arg(long, default_value_t = 120)]
        rules_timeout: u64,
        /// Only the NodePort benchmark (skip the socket load balancer's).
        #[arg(long)]
        nodeport_only: bool,
        /// First, the TC ingress program's time per packet of a NodePort flow
        /// (`BPF_PROG_TEST_RUN`) over this many flows per round (0: not measured).
        #[arg(long, default_value_t = 0)]
        packet_runs: usize,
        /// The NodePort benchmark: wrk and iperf3 through a NodePort, fairlead against
        /// kube-proxy's nftables and iptables rules.
        #[command(flatten)]
        nodeport: bench_nodeport::Options,
    },
    /// fairlead's DNS against Knot DNS and NSD with dnsperf.
    Dns(bench_dns::Options),
    /// The ingress gateway against nginx and HAProxy: wrk (HTTP/1.1
    /// keep-alive), h2load (h2 over TLS), TLS handshakes, route updates
    /// under load.
    Ingress(bench_ingress::Options),
    /// `fairlead node` against proxy + dns + ingress as three processes:
    /// memory, CPU, and manifest change → every component serving it.
    Node(bench_node::Options),
    /// `fairlead dns --kubeconfig` from the fake apiserver: start-up, memory,
    /// EndpointSlice update → answered.
    Source(bench_source::Options),
}

mod bench_ingress;
mod bench_source;

/// Fails with the package to install when `tool` is not on `PATH`.
fn need(tool: &str, package: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
    anyhow::ensure!(found, "{tool} not found: apt-get install {package}");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::ExampleCert { out, names } => example_cert(&out, &names),
        Command::Bench {
            component: Bench::Dns(options),
        } => bench_dns::run(&options),
        Command::Bench {
            component: Bench::Ingress(options),
        } => bench_ingress::ingress(&options),
        Command::Bench {
            component: Bench::Node(options),
        } => bench_node::run_bench(&options),
        Command::Bench {
            component: Bench::Source(options),
        } => bench_source::run(&options),
        Command::Bench {
            component:
                Bench::Proxy {
                    sizes,
                    endpoints,
                    connects,
                    fairlead_only,
                    rules_timeout,
                    nodeport_only,
                    packet_runs,
                    nodeport,
                },
        } => {
            // Before the minutes of the sweep: a missing tool fails now, not at the end.
            bench_nodeport::check_tools(&nodeport)?;
            if packet_runs > 0 {
                bench_packets::run(packet_runs)?;
            }
            let figures = if nodeport_only {
                Vec::new()
            } else {
                bench_proxy::bench(
                    &sizes,
                    endpoints,
                    connects,
                    !fairlead_only,
                    std::time::Duration::from_secs(rules_timeout),
                )?
            };
            let ratios = bench_nodeport::run(&nodeport)?;
            bench_proxy::print_goals(&figures, ratios);
            Ok(())
        }
    }
}

fn example_cert(out: &std::path::Path, names: &[String]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    let validity = |params: &mut CertificateParams| {
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "fairlead example CA (test only)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, names[0].clone());
    validity(&mut leaf);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let indent = |pem: &str| {
        pem.lines().fold(String::new(), |mut s, l| {
            let _ = writeln!(s, "    {l}");
            s
        })
    };
    let secret = format!(
        "# Test-only TLS material for the example Ingress, generated by\n\
         # `cargo xtask example-cert`. The CA that signed it is example-ca.crt.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: shop-tls\n  namespace: shop\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}{}  tls.key: |\n{}",
        indent(&leaf_cert.pem()),
        indent(&ca_cert.pem()),
        indent(&leaf_key.serialize_pem()),
    );
    std::fs::write(out.join("shop-tls.yaml"), secret)?;
    std::fs::write(out.join("example-ca.crt"), ca_cert.pem())?;
    eprintln!("wrote {}/shop-tls.yaml and example-ca.crt", out.display());
    Ok(())
}
