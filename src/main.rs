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
use tracing::Instrument as _;

mod explain;
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
    /// Run the whole data plane of a node: proxy, DNS and ingress in one
    /// process, from one source and one model (each part can be switched off).
    Node(NodeArgs),
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
    /// Show what a running fairlead serves: per component the model generation
    /// (from its telemetry listener), and what is programmed in the kernel:
    /// services, backends, map fill, drops (from the pinned maps).
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The bpffs directory `fairlead proxy` pins its maps in.
        #[arg(long, value_name = "DIR", default_value = fairlead_proxy::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The telemetry listener of the running fairlead.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9402")]
        telemetry_addr: std::net::SocketAddr,
    },
    /// Explain one Service's whole story (its DNS records, kernel frontends
    /// and backends, the routes that send traffic to it) or what the ingress
    /// does with one request, from a running fairlead or a manifest
    /// directory; each part with the model generation it comes from, and
    /// every disagreement between components and the model flagged.
    Explain(ExplainArgs),
    /// Print a shell completion script, e.g. `fairlead completions bash >
    /// /etc/bash_completion.d/fairlead`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `fairlead man | man -l -`.
    Man,
}

/// `fairlead explain`.
#[derive(clap::Args, Debug)]
struct ExplainArgs {
    #[command(subcommand)]
    what: ExplainWhat,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Explain from this directory of manifests (with the default flags:
    /// zone cluster.local, IngressClass fairlead, no node) instead of
    /// asking a running fairlead.
    #[arg(long, value_name = "DIR", global = true)]
    manifests: Option<PathBuf>,
    /// The telemetry listener of the running fairlead.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9402",
        global = true
    )]
    telemetry_addr: std::net::SocketAddr,
}

#[derive(Subcommand, Debug)]
enum ExplainWhat {
    /// A Service: `fairlead explain service NAMESPACE/NAME`.
    Service {
        /// NAMESPACE/NAME.
        service: String,
    },
    /// A request: `fairlead explain request https://HOST/PATH`.
    Request {
        /// http://HOST/PATH or https://HOST/PATH.
        url: String,
    },
}

/// `fairlead node`: every component's flags, and switches.
#[derive(clap::Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Do not run the kernel load balancer.
    #[arg(long)]
    no_proxy: bool,
    /// Do not run the DNS server.
    #[arg(long)]
    no_dns: bool,
    /// Do not run the ingress gateway.
    #[arg(long)]
    no_ingress: bool,
    #[command(flatten, next_help_heading = "Proxy")]
    proxy: fairlead_proxy::Args,
    #[command(flatten, next_help_heading = "DNS")]
    dns: fairlead_dns::Args,
    #[command(flatten, next_help_heading = "Ingress")]
    ingress: fairlead_ingress::Args,
    #[command(flatten, next_help_heading = "Ingress status")]
    status: runtime::IngressStatusArgs,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` and `explain` print every problem themselves; their log would
    // only repeat them.
    let default_level = if matches!(cli.command, Command::Check { .. } | Command::Explain(_)) {
        "error"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_level);
    match run(cli.command) {
        Ok(code) => code,
        // The reader of our output went away (`fairlead status | head`): end
        // quietly, with the status a shell reports for a coreutils program
        // that SIGPIPE ended (128 + 13).
        Err(e) if e.is::<StdoutClosed>() => ExitCode::from(141),
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
        Command::Proxy { proxy, .. } if proxy.cleanup => cleanup(&proxy.bpffs),
        Command::Node(node) if node.proxy.cleanup => cleanup(&node.proxy.bpffs),
        Command::Node(node) => {
            if node.no_proxy && node.no_dns && node.no_ingress {
                anyhow::bail!(
                    "fairlead node: every part is switched off (--no-proxy --no-dns --no-ingress)"
                );
            }
            let NodeArgs {
                source,
                no_proxy,
                no_dns,
                no_ingress,
                proxy,
                dns,
                ingress,
                status,
            } = node;
            serve(&source, move |rt| {
                Box::pin(async move {
                    // The proxy first: it programs the kernel before the DNS
                    // server hands out Service addresses.
                    if !no_proxy {
                        start_proxy(rt, &proxy)?;
                    }
                    if !no_dns {
                        start_dns(rt, dns).await?;
                    }
                    if !no_ingress {
                        start_ingress(rt, ingress, &status)?;
                    }
                    Ok(())
                })
            })
        }
        Command::Proxy { source, proxy } => serve(&source, |rt| {
            Box::pin(async move { start_proxy(rt, &proxy) })
        }),
        Command::Dns { source, dns } => {
            limit_malloc_arenas();
            serve(&source, |rt| Box::pin(start_dns(rt, dns)))
        }
        Command::Ingress {
            source,
            ingress,
            status,
        } => serve(&source, |rt| {
            Box::pin(async move { start_ingress(rt, ingress, &status) })
        }),
        Command::Status {
            json,
            bpffs,
            telemetry_addr,
        } => status(json, &bpffs, telemetry_addr),
        Command::Explain(args) => explain(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "fairlead", &mut out);
            write_stdout(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .context("rendering the manual page")?;
            write_stdout(&out)
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) ends quietly.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `--cleanup`: removes every link and map pin of the proxy, and exits.
fn cleanup(bpffs: &Path) -> Result<ExitCode> {
    let done = fairlead_proxy::links::cleanup(bpffs)
        .with_context(|| format!("removing what is pinned under {}", bpffs.display()))?;
    eprintln!(
        "fairlead: removed {} link(s) and {} map(s) pinned under {}",
        done.links.len(),
        done.maps.len(),
        bpffs.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Adds the kernel load balancer to the runtime.
fn start_proxy(rt: &mut runtime::Runtime, args: &fairlead_proxy::Args) -> Result<()> {
    let span = tracing::info_span!("component", component = "proxy");
    let _entered = span.enter();
    rt.live.proxy_bpffs = Some(args.bpffs.clone());
    let context = fairlead_proxy::Context {
        model: rt.model_for("proxy"),
        ready: rt.ready_flag("proxy"),
        cancel: rt.cancel.clone(),
        node_name: rt.node_name().map(str::to_owned),
        // `fairlead_proxy_*`, as documented (the proxy adds `proxy`).
        registry: rt.registry.sub_registry_with_prefix("fairlead"),
    };
    let component = fairlead_proxy::Proxy::start(args, context)
        .context("starting the proxy (needs root, bpffs and cgroup v2)")?;
    rt.node_problems = Some(component.problems());
    let span = span.clone();
    rt.spawn(
        "proxy",
        Box::pin(async move { Ok(component.run().instrument(span).await?) }),
    );
    Ok(())
}

/// Adds the DNS server to the runtime (its sockets are bound on return).
async fn start_dns(rt: &mut runtime::Runtime, args: fairlead_dns::Args) -> Result<()> {
    let span = tracing::info_span!("component", component = "dns");
    let component = fairlead_dns::Dns::bind(args, &mut rt.registry)
        .instrument(span.clone())
        .await?;
    rt.live.dns = Some(component.index());
    let ctx = fairlead_dns::Context {
        model: rt.model_for("dns"),
        ready: rt.ready_flag("dns"),
        cancel: rt.cancel.clone(),
    };
    rt.spawn(
        "dns",
        Box::pin(async move { Ok(component.run(ctx).instrument(span).await?) }),
    );
    Ok(())
}

/// Adds the ingress gateway (and its Ingress status writer) to the runtime.
fn start_ingress(
    rt: &mut runtime::Runtime,
    args: fairlead_ingress::Args,
    status: &runtime::IngressStatusArgs,
) -> Result<()> {
    let span = tracing::info_span!("component", component = "ingress");
    let _entered = span.enter();
    // The status and the gateway share the report of listening sockets.
    let selection = args.class_selection().gateway_api;
    let listen_failures = selection.listen_failures.clone();
    rt.publish_ingress_status(&args.ingress_class, status, selection)?;
    let ready = rt.ready_flag("ingress");
    let node_name = rt.node_name().map(str::to_owned);
    let view = fairlead_ingress::explain::View::default();
    rt.live.ingress = Some((view.clone(), args.class_selection()));
    let gateway = fairlead_ingress::run(
        args,
        fairlead_ingress::Context {
            snapshots: rt.model_for("ingress"),
            view,
            registry: &mut rt.registry,
            ready,
            cancel: rt.cancel.clone(),
            node_name,
            listen_failures,
        },
    );
    let span = span.clone();
    rt.spawn(
        "ingress",
        Box::pin(async move { Ok(gateway.instrument(span).await?) }),
    );
    Ok(())
}

/// Caps glibc's malloc at two arenas (`M_ARENA_MAX`; its default is eight
/// per CPU), before any thread starts. Each thread that allocates otherwise
/// gets an arena of its own that keeps what it freed: the manifest parser,
/// the index builder (a blocking thread) and the workers each held their
/// own. `fairlead dns` at 10k Services resides in 5 MiB less this way
/// (GLIBC_TUNABLES=glibc.malloc.arena_max=1 or 2 measured the same); its
/// answer path does not allocate, so it loses nothing to contention.
/// jemalloc and mimalloc (LD_PRELOAD) saved 4 MiB more, not worth an
/// allocator in the binary.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "mallopt is glibc's interface to its own tunables; it takes no pointer"
    )]
    // SAFETY: mallopt sets a malloc parameter and is safe to call at any
    // time; called before the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
    async_runtime()
        .context("starting the async runtime")?
        .block_on(async {
            let mut rt = runtime::Runtime::start(source)?;
            setup(&mut rt).await?;
            rt.run().await?;
            Ok(ExitCode::SUCCESS)
        })
}

/// The async runtime of a long-running mode. Given one CPU (pinned with
/// taskset or cpusets, or a CPU limit of one), a current-thread runtime:
/// every task runs on the thread that polls the sockets, so a request's
/// hand-offs between the client connection's task and the upstream
/// connection's task stay on one run queue, with no cross-thread wake-ups;
/// otherwise one worker per CPU, work-stealing (about 2% more CPU per
/// proxied request on one CPU, docs/benchmarks.md).
/// `TOKIO_WORKER_THREADS` set asks for the work-stealing runtime with that
/// many workers (tokio reads it), whatever the CPUs.
fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let current_thread = cpus == 1 && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let flavor = if current_thread {
        "current-thread"
    } else {
        "multi-thread"
    };
    tracing::info!(cpus, flavor, "async runtime");
    builder.enable_all().build()
}

/// How long `fairlead status` waits for the telemetry listener.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Prints what a running fairlead serves: per component the model generation
/// (from the telemetry listener), and what the pinned maps hold. Either part
/// may be missing (no process running; no proxy enabled); both missing is an
/// error.
fn status(json: bool, bpffs: &Path, telemetry: std::net::SocketAddr) -> Result<ExitCode> {
    let runtime = fetch_runtime_status(telemetry);
    let kernel = fairlead_proxy::PinnedMaps::open(bpffs)
        .with_context(|| {
            format!(
                "opening the maps pinned under {} (is `fairlead proxy --bpffs {0}` running, or has it run?)",
                bpffs.display()
            )
        })
        .and_then(|pinned| {
            fairlead_proxy::status::Status::read(&pinned).context("reading the maps")
        });
    if let (Err(runtime), Err(kernel)) = (&runtime, &kernel) {
        anyhow::bail!("nothing to show: {runtime:#}; {kernel:#}");
    }
    if json {
        let mut out = match &kernel {
            Ok(kernel) => serde_json::to_value(kernel)?,
            Err(_) => serde_json::Value::Object(serde_json::Map::new()),
        };
        if let (Ok(runtime), Some(object)) = (&runtime, out.as_object_mut()) {
            object.insert("runtime".to_owned(), runtime.clone());
        }
        emit(format_args!("{}\n", serde_json::to_string_pretty(&out)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &runtime {
        Ok(runtime) => emit(render_runtime_status(runtime))?,
        Err(e) => emit(format_args!("components: not reachable ({e:#})\n\n"))?,
    }
    match &kernel {
        Ok(kernel) => emit(kernel)?,
        Err(e) => emit(format_args!("kernel: {e:#}\n"))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `fairlead explain`: the report from the manifests, or from the running
/// fairlead's telemetry listener; text or JSON. Exits 1 when the report
/// lists a disagreement, so scripts can wait for agreement.
fn explain(args: &ExplainArgs) -> Result<ExitCode> {
    let (json, disagreements, text) = match &args.what {
        ExplainWhat::Service { service } => {
            let key = explain::parse_service(service)?;
            let report = match &args.manifests {
                Some(dir) => explain::service_from_manifests(dir, &key)?,
                None => serde_json::from_value(fetch_telemetry(
                    args.telemetry_addr,
                    &format!("/explain/service/{key}"),
                )?)
                .context("the /explain answer is not a service report")?,
            };
            (
                serde_json::to_string_pretty(&report)?,
                report.disagreements.len(),
                report.to_string(),
            )
        }
        ExplainWhat::Request { url } => {
            let report = if let Some(dir) = &args.manifests {
                explain::request_from_manifests(dir, url)?
            } else {
                let (scheme, rest) = url.split_once("://").with_context(|| {
                    format!("{url:?}: expected http://HOST/PATH or https://HOST/PATH")
                })?;
                serde_json::from_value(fetch_telemetry(
                    args.telemetry_addr,
                    &format!("/explain/request/{scheme}/{rest}"),
                )?)
                .context("the /explain answer is not a request report")?
            };
            (
                serde_json::to_string_pretty(&report)?,
                report.disagreements.len(),
                report.to_string(),
            )
        }
    };
    if args.json {
        emit(format_args!("{json}\n"))?;
    } else {
        emit(text)?;
    }
    Ok(if disagreements == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Standard output was closed by its reader (`fairlead status | head`).
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output is closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes the CLI's output to stdout. A closed stdout is [`StdoutClosed`],
/// which `main` ends on quietly; other write errors are errors.
fn emit(text: impl std::fmt::Display) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `GET /status` from a running fairlead's telemetry listener.
fn fetch_runtime_status(addr: std::net::SocketAddr) -> Result<serde_json::Value> {
    fetch_telemetry(addr, "/status")
}

/// `GET path` (JSON) from a running fairlead's telemetry listener.
fn fetch_telemetry(addr: std::net::SocketAddr, path: &str) -> Result<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let context = || format!("asking the telemetry listener {addr} (--telemetry-addr)");
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, STATUS_TIMEOUT).with_context(context)?;
    stream.set_read_timeout(Some(STATUS_TIMEOUT))?;
    stream.set_write_timeout(Some(STATUS_TIMEOUT))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: fairlead\r\n\r\n").as_bytes())
        .with_context(context)?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .with_context(context)?;
    let response = String::from_utf8(response).context("the telemetry answer is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("a malformed HTTP answer from {path}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        anyhow::bail!(
            "{path} answered {}: {}",
            head.lines().next().unwrap_or_default(),
            body.trim()
        );
    }
    serde_json::from_str(body).with_context(|| format!("the {path} answer is not JSON"))
}

/// The components part of `fairlead status`.
pub(crate) fn render_runtime_status(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let model = &status["model_generation"];
    let synced = if status["model_synced"].as_bool() == Some(true) {
        "synced"
    } else {
        "not synced yet"
    };
    let _ = writeln!(out, "model: generation {model} ({synced})");
    if status["shutting_down"].as_bool() == Some(true) {
        let _ = writeln!(out, "shutting down");
    }
    let _ = writeln!(out, "{:<10} {:<10} generation", "component", "state");
    for component in status["components"].as_array().into_iter().flatten() {
        let name = component["name"].as_str().unwrap_or("?");
        let state = if component["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "not ready"
        };
        let generation = match component["generation"].as_u64() {
            Some(g) if Some(g) == model.as_u64() => format!("{g} (current)"),
            Some(g) => format!("{g} (behind)"),
            None => "-".to_owned(),
        };
        let _ = writeln!(out, "{name:<10} {state:<10} {generation}");
    }
    let programmed = |v: &serde_json::Value| {
        if v["programmed"].as_bool() == Some(true) {
            "programmed"
        } else {
            "not programmed"
        }
    };
    for gateway in status["gateways"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "gateway {} ({})",
            gateway["gateway"].as_str().unwrap_or("?"),
            programmed(gateway)
        );
        for l in gateway["listeners"].as_array().into_iter().flatten() {
            let problems: Vec<&str> = l["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            let _ = writeln!(
                out,
                "  listener {} attachedRoutes={} ({}){}",
                l["name"].as_str().unwrap_or("?"),
                l["attached_routes"],
                programmed(l),
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(": {}", problems.join(", "))
                }
            );
        }
        for route in gateway["routes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", route.as_str().unwrap_or("?"));
        }
    }
    out.push('\n');
    out
}

/// Loads every program of the embedded eBPF object into the kernel.
fn check_kernel() -> Result<ExitCode> {
    let mut datapath = fairlead_proxy::Datapath::load(&fairlead_proxy::LoadOptions::new())
        .context("loading the eBPF maps (needs root and a BPF-capable kernel)")?;
    let programs = datapath
        .load_all_programs()
        .context("loading the eBPF programs into the kernel")?;
    emit(format_args!(
        "kernel: {} eBPF program(s) accepted by the verifier: {}\n",
        programs.len(),
        programs.join(", ")
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &Path) -> Result<ExitCode> {
    let mut source = ManifestDir::new(dir);
    let (mut writer, _rx) = ModelWriter::new();
    source
        .sync(&mut writer)
        .with_context(|| format!("loading manifests from {}", dir.display()))?;
    report(&writer.snapshot(), &dir.display().to_string())
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
    report(&snapshot, "the apiserver")
}

/// Prints the model and its problems; 1 when anything is invalid.
fn report(snapshot: &Snapshot, what: &str) -> Result<ExitCode> {
    emit(dump::render(snapshot))?;
    if !snapshot.gateway_classes.is_empty() {
        // The status the gateway would write, for the default controller and
        // ports (HTTP 80, HTTPS 443).
        let serving = fairlead_model::gateway_status::Serving {
            controller: fairlead_model::DEFAULT_GATEWAY_CONTROLLER.to_owned(),
            http_port: 80,
            https_port: 443,
            listen_failures: fairlead_model::gateway_status::ListenFailures::default(),
        };
        emit(format!(
            "gateway api status ({}, HTTP 80, HTTPS 443):\n{}",
            serving.controller,
            fairlead_model::gateway_status::render(&fairlead_model::gateway_status::compute(
                snapshot, &serving
            ))
        ))?;
    }
    let errors = snapshot
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = snapshot.problems.len() - errors;
    if errors > 0 {
        eprintln!("fairlead check: {errors} error(s), {warnings} warning(s) in {what}");
        Ok(ExitCode::from(1))
    } else {
        eprintln!("fairlead check: {what} OK ({warnings} warning(s))");
        Ok(ExitCode::SUCCESS)
    }
}
