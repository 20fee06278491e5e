//! `fairlead`: the Kubernetes service-networking data plane of one node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Severity, dump};

#[derive(Parser, Debug)]
#[command(
    name = "fairlead",
    version,
    about = "Kubernetes service networking for one node: eBPF load balancing, cluster DNS and ingress from one model"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FAIRLEAD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate manifests and print the model they make; exits 1 when anything is invalid.
    Check {
        /// Directory of manifests (*.yaml, *.yml, *.json, read recursively).
        #[arg(long, value_name = "DIR", required_unless_present = "kernel")]
        manifests: Option<PathBuf>,
        /// Also load every eBPF program of this binary into the kernel (the
        /// verifier's verdict), without attaching anything. Needs root.
        #[arg(long)]
        kernel: bool,
    },
    /// Run the whole data plane of a node: proxy, DNS and ingress on one model.
    Node(SourceArgs),
    /// Run the kernel load balancer (ClusterIP, NodePort, LoadBalancer).
    Proxy(SourceArgs),
    /// Run the cluster DNS server.
    Dns(SourceArgs),
    /// Run the HTTP/TLS ingress gateway.
    Ingress(Box<IngressCommand>),
    /// Show what is programmed in the kernel: services, backends, map fill, drops.
    Status,
}

/// Where the model comes from; shared by every long-running mode.
#[derive(Args, Debug)]
struct SourceArgs {
    /// Read objects from a directory of manifests (reloaded on change) instead of the apiserver.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the apiserver; in-cluster config when neither this nor --manifests is given.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (for node-local endpoints and the Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

/// `fairlead ingress`: the model source, the gateway's own flags, telemetry.
#[derive(Args, Debug)]
struct IngressCommand {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    ingress: fairlead_ingress::Args,
    /// Serve /metrics, /health and /ready here.
    #[arg(long, value_name = "ADDR")]
    telemetry_addr: Option<std::net::SocketAddr>,
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` prints every problem itself; its log would only repeat them.
    let default_level = if matches!(cli.command, Command::Check { .. }) {
        "error"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fairlead: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { manifests, kernel } => {
            let mut code = ExitCode::SUCCESS;
            if kernel {
                code = check_kernel()?;
            }
            if let Some(dir) = manifests {
                let manifests_code = check(&dir)?;
                if manifests_code != ExitCode::SUCCESS {
                    code = manifests_code;
                }
            }
            Ok(code)
        }
        Command::Node(_) => not_built("node", "`fairlead node`: the whole data plane on one model"),
        Command::Proxy(_) => not_built("proxy", "ClusterIP in the kernel"),
        Command::Dns(_) => not_built("dns", "Cluster DNS"),
        Command::Ingress(command) => runtime::block_on(runtime::ingress(*command)),
        Command::Status => not_built("status", "ClusterIP in the kernel"),
    }
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "same signature as the modes it stands in for"
)]
fn not_built(command: &str, issue: &str) -> Result<ExitCode> {
    eprintln!("fairlead {command}: not built yet (see the issue \"{issue}\")");
    Ok(ExitCode::from(2))
}

mod runtime;

/// Loads every program of the embedded eBPF object into the kernel.
fn check_kernel() -> Result<ExitCode> {
    let mut datapath = fairlead_proxy::Datapath::load(&fairlead_proxy::LoadOptions::new())
        .context("loading the eBPF maps (needs root and a BPF-capable kernel)")?;
    let programs = datapath
        .load_all_programs()
        .context("loading the eBPF programs into the kernel")?;
    println!(
        "kernel: {} eBPF program(s) accepted by the verifier: {}",
        programs.len(),
        programs.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &Path) -> Result<ExitCode> {
    let mut source = ManifestDir::new(dir);
    let (mut writer, _rx) = ModelWriter::new();
    source
        .sync(&mut writer)
        .with_context(|| format!("loading manifests from {}", dir.display()))?;
    let snapshot = writer.snapshot();
    print!("{}", dump::render(&snapshot));
    let errors = snapshot
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = snapshot.problems.len() - errors;
    if errors > 0 {
        eprintln!(
            "fairlead check: {errors} error(s), {warnings} warning(s) in {}",
            dir.display()
        );
        Ok(ExitCode::from(1))
    } else {
        eprintln!(
            "fairlead check: {} OK ({warnings} warning(s))",
            dir.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
