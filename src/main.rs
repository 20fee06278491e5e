//! `fairlead`: the Kubernetes service-networking data plane of one node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Severity, dump};
use runtime::SourceArgs;

// Wired into the long-running modes as their issues land.
#[allow(
    dead_code,
    reason = "the shared runtime of the long-running modes; each mode's issue wires it"
)]
mod runtime;
#[allow(dead_code, reason = "served by the runtime; see `runtime`")]
mod telemetry;

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
    /// Run the kernel load balancer (ClusterIP at the socket: connect, sendmsg, recvmsg,
    /// getpeername in a cgroup).
    Proxy(ProxyArgs),
    /// Run the cluster DNS server.
    Dns(SourceArgs),
    /// Run the HTTP/TLS ingress gateway.
    Ingress(SourceArgs),
    /// Show what is programmed in the kernel: services, backends, map fill, drops.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The bpffs directory `fairlead proxy` pins its maps in.
        #[arg(long, value_name = "DIR", default_value = fairlead_proxy::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

/// `fairlead proxy`: the model source and the proxy's own flags.
#[derive(clap::Args, Debug)]
struct ProxyArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    proxy: fairlead_proxy::Args,
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
        Command::Proxy(args) => run_proxy(args),
        Command::Dns(_) => not_built("dns", "Cluster DNS"),
        Command::Ingress(_) => not_built("ingress", "Ingress gateway"),
        Command::Status { json, bpffs } => status(json, &bpffs),
    }
}

/// Runs the kernel load balancer until SIGTERM/SIGINT.
fn run_proxy(args: ProxyArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut runtime = runtime::Runtime::start(&args.source)?;
        let ready = runtime.ready_flag("proxy");
        let context = fairlead_proxy::Context {
            model: runtime.model.clone(),
            registry: &mut runtime.registry,
            ready,
            cancel: runtime.cancel.clone(),
            node_name: args.source.node_name.clone(),
        };
        let proxy = fairlead_proxy::Proxy::start(&args.proxy, context)
            .context("starting the proxy (needs root, bpffs and cgroup v2)")?;
        runtime.spawn(
            "proxy",
            Box::pin(async move { proxy.run().await.map_err(anyhow::Error::from) }),
        );
        runtime.run().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints what the pinned maps hold.
fn status(json: bool, bpffs: &Path) -> Result<ExitCode> {
    let pinned = fairlead_proxy::PinnedMaps::open(bpffs).with_context(|| {
        format!(
            "opening the maps pinned under {} (is `fairlead proxy --bpffs {0}` running, or has it run?)",
            bpffs.display()
        )
    })?;
    let status = fairlead_proxy::status::Status::read(&pinned).context("reading the maps")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "same signature as the modes it stands in for"
)]
fn not_built(command: &str, issue: &str) -> Result<ExitCode> {
    eprintln!("fairlead {command}: not built yet (see the issue \"{issue}\")");
    Ok(ExitCode::from(2))
}

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
