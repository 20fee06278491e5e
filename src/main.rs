//! `fairlead`: the Kubernetes service-networking data plane of one node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fairlead_model::source::ManifestDir;
use fairlead_model::source::kube::{self as kube_source, KubeOptions, KubeSource};
use fairlead_model::{ModelWriter, Severity, Snapshot, dump};
use prometheus_client::registry::Registry;
use runtime::SourceArgs;

mod runtime;
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
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up and matched once; boxing would only add noise"
)]
enum Command {
    /// Validate manifests and print the model they make; exits 1 when anything is invalid.
    Check {
        /// Directory of manifests (*.yaml, *.yml, *.json, read recursively).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["kernel", "kubeconfig"], conflicts_with = "kubeconfig")]
        manifests: Option<PathBuf>,
        /// Read the objects from the apiserver of this kubeconfig instead: one
        /// initial list of every kind, then print the model and exit.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Also load every eBPF program of this binary into the kernel (the
        /// verifier's verdict), without attaching anything. Needs root.
        #[arg(long)]
        kernel: bool,
    },
    /// Run the whole data plane of a node: proxy, DNS and ingress on one model.
    Node(SourceArgs),
    /// Run the kernel load balancer (ClusterIP at the socket: connect, sendmsg, recvmsg,
    /// getpeername in a cgroup).
    Proxy {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        proxy: fairlead_proxy::Args,
    },
    /// Run the cluster DNS server.
    Dns {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        dns: fairlead_dns::Args,
    },
    /// Run the HTTP/TLS ingress gateway.
    Ingress {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        ingress: fairlead_ingress::Args,
        #[command(flatten)]
        status: runtime::IngressStatusArgs,
    },
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

fn init_tracing(format: LogFormat, default_level: &str) {
    // hickory-server logs every request at info; keep that for RUST_LOG.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default_level},hickory_server=warn,hickory_net=warn"
        ))
    });
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
        Command::Check {
            manifests,
            kubeconfig,
            kernel,
        } => {
            let mut code = ExitCode::SUCCESS;
            if kernel {
                code = check_kernel()?;
            }
            let model_code = match (manifests, kubeconfig) {
                (Some(dir), _) => Some(check(&dir)?),
                (None, Some(file)) => Some(check_apiserver(&file)?),
                (None, None) => None,
            };
            if let Some(model_code) = model_code
                && model_code != ExitCode::SUCCESS
            {
                code = model_code;
            }
            Ok(code)
        }
        Command::Node(_) => not_built("node", "`fairlead node`: the whole data plane on one model"),
        Command::Proxy { proxy, .. } if proxy.cleanup => {
            let done = fairlead_proxy::links::cleanup(&proxy.bpffs).with_context(|| {
                format!("removing what is pinned under {}", proxy.bpffs.display())
            })?;
            eprintln!(
                "fairlead proxy: removed {} link(s) and {} map(s) pinned under {}",
                done.links.len(),
                done.maps.len(),
                proxy.bpffs.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy { source, proxy } => serve(&source, |rt| {
            Box::pin(async move {
                let context = fairlead_proxy::Context {
                    model: rt.model.clone(),
                    ready: rt.ready_flag("proxy"),
                    cancel: rt.cancel.clone(),
                    node_name: rt.node_name().map(str::to_owned),
                    registry: &mut rt.registry,
                };
                let component = fairlead_proxy::Proxy::start(&proxy, context)
                    .context("starting the proxy (needs root, bpffs and cgroup v2)")?;
                rt.spawn("proxy", Box::pin(async move { Ok(component.run().await?) }));
                Ok(())
            })
        }),
        Command::Dns { source, dns } => serve(&source, |rt| {
            Box::pin(async move {
                let component = fairlead_dns::Dns::bind(dns, &mut rt.registry).await?;
                let ctx = fairlead_dns::Context {
                    model: rt.model.clone(),
                    ready: rt.ready_flag("dns"),
                    cancel: rt.cancel.clone(),
                };
                rt.spawn(
                    "dns",
                    Box::pin(async move { Ok(component.run(ctx).await?) }),
                );
                Ok(())
            })
        }),
        Command::Ingress {
            source,
            ingress,
            status,
        } => serve(&source, |rt| {
            Box::pin(async move {
                rt.publish_ingress_status(&ingress.ingress_class, &status)?;
                let ready = rt.ready_flag("ingress");
                let gateway = fairlead_ingress::run(
                    ingress,
                    fairlead_ingress::Context {
                        snapshots: rt.model.clone(),
                        registry: &mut rt.registry,
                        ready,
                        cancel: rt.cancel.clone(),
                    },
                );
                rt.spawn("ingress", Box::pin(async move { Ok(gateway.await?) }));
                Ok(())
            })
        }),
        Command::Status { json, bpffs } => status(json, &bpffs),
    }
}

/// Runs a long-running mode: starts the model source, lets `setup` add the
/// mode's components to the runtime, then serves until a signal.
fn serve(
    source: &SourceArgs,
    setup: impl for<'a> FnOnce(
        &'a mut runtime::Runtime,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + 'a>>,
) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let mut rt = runtime::Runtime::start(source)?;
            setup(&mut rt).await?;
            rt.run().await?;
            Ok(ExitCode::SUCCESS)
        })
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "same signature as the modes it stands in for"
)]
fn not_built(command: &str, issue: &str) -> Result<ExitCode> {
    eprintln!("fairlead {command}: not built yet (see the issue \"{issue}\")");
    Ok(ExitCode::from(2))
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
    Ok(report(&writer.snapshot(), &dir.display().to_string()))
}

/// How long `check --kubeconfig` waits for every initial list.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Lists every kind from the apiserver once and reports the model.
fn check_apiserver(kubeconfig: &Path) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let snapshot = runtime.block_on(async {
        let client = kube_source::client(Some(kubeconfig)).await?;
        let source = KubeSource::new(KubeOptions::default(), &mut Registry::default())?;
        let (writer, mut rx) = ModelWriter::new();
        let task = tokio::spawn(source.run(client, writer));
        let synced = tokio::time::timeout(CHECK_TIMEOUT, rx.wait_for(|s| s.synced))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|snapshot| snapshot.clone());
        task.abort();
        synced.with_context(|| {
            format!(
                "the apiserver did not deliver every initial list within {CHECK_TIMEOUT:?} \
                 (RUST_LOG=warn shows the watch errors)"
            )
        })
    })?;
    Ok(report(&snapshot, "the apiserver"))
}

/// Prints the model and its problems; 1 when anything is invalid.
fn report(snapshot: &Snapshot, what: &str) -> ExitCode {
    print!("{}", dump::render(snapshot));
    let errors = snapshot
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = snapshot.problems.len() - errors;
    if errors > 0 {
        eprintln!("fairlead check: {errors} error(s), {warnings} warning(s) in {what}");
        ExitCode::from(1)
    } else {
        eprintln!("fairlead check: {what} OK ({warnings} warning(s))");
        ExitCode::SUCCESS
    }
}
