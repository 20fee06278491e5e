//! What every long-running mode shares: the model source, the telemetry
//! listener, signals, lameduck and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Ready, Snapshot};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::telemetry::{self, Telemetry};

/// Where the model comes from, and the process-wide settings of every
/// long-running mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct SourceArgs {
    /// Read objects from a directory of manifests (reloaded on change) instead of the apiserver.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub(crate) manifests: Option<PathBuf>,
    /// Kubeconfig for the apiserver; in-cluster config when neither this nor --manifests is given.
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// This node's name (for node-local endpoints and the Node object).
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// Address of the telemetry listener: /metrics, /health, /ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9402")]
    pub(crate) telemetry_addr: SocketAddr,
    /// After SIGTERM, how long /ready reports 503 while still serving, so
    /// that clients and load balancers move away before the drain.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub(crate) lameduck: f64,
    /// Longest graceful drain after the lameduck period.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub(crate) drain_timeout: f64,
}

/// A component's main future.
pub(crate) type Component = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// The running model source and the shared pieces components hook into.
pub(crate) struct Runtime {
    /// Snapshots of the model.
    pub(crate) model: watch::Receiver<Arc<Snapshot>>,
    /// Where components register their metrics.
    pub(crate) registry: Registry,
    /// Cancelled when the process shuts down.
    pub(crate) cancel: CancellationToken,
    components: Vec<(&'static str, Ready)>,
    tasks: JoinSet<(&'static str, Result<()>)>,
    args: SourceArgs,
}

impl Runtime {
    /// Starts the model source.
    pub(crate) fn start(args: &SourceArgs) -> Result<Self> {
        let (writer, model) = ModelWriter::new();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(dir) = &args.manifests {
            if !dir.is_dir() {
                bail!("--manifests {}: not a directory", dir.display());
            }
            let source = ManifestDir::new(dir);
            let stop = cancel.clone();
            tasks.spawn(async move {
                tokio::select! {
                    result = source.watch(writer) => ("source", result.context("manifest source")),
                    () = stop.cancelled() => ("source", Ok(())),
                }
            });
        } else {
            bail!(
                "reading the apiserver is not built yet (issue \"Kubernetes apiserver source\"); use --manifests DIR"
            );
        }
        Ok(Self {
            model,
            registry: Registry::with_prefix("fairlead"),
            cancel,
            components: Vec::new(),
            tasks,
            args: args.clone(),
        })
    }

    /// The node name, if given.
    pub(crate) fn node_name(&self) -> Option<&str> {
        self.args.node_name.as_deref()
    }

    /// A readiness flag for a component; `/ready` waits for all of them.
    pub(crate) fn ready_flag(&mut self, name: &'static str) -> Ready {
        let ready = Ready::new();
        self.components.push((name, ready.clone()));
        ready
    }

    /// Runs a component until shutdown.
    pub(crate) fn spawn(&mut self, name: &'static str, component: Component) {
        self.tasks.spawn(async move { (name, component.await) });
    }

    /// Serves telemetry and waits for a signal (or a component failing),
    /// then shuts down: lameduck, cancel, drain.
    pub(crate) async fn run(mut self) -> Result<()> {
        let listener = telemetry::bind(self.args.telemetry_addr).await?;
        let telemetry = Arc::new(Telemetry::new(self.registry, self.components));
        let telemetry_cancel = CancellationToken::new();
        tokio::spawn(telemetry::serve(
            listener,
            Arc::clone(&telemetry),
            telemetry_cancel.clone(),
        ));

        let failure = tokio::select! {
            signal = shutdown_signal() => {
                info!(signal, "shutting down");
                None
            }
            Some(joined) = self.tasks.join_next() => Some(joined),
        };
        if let Some(joined) = failure {
            let (name, result) = joined.context("a component panicked")?;
            telemetry_cancel.cancel();
            self.cancel.cancel();
            return match result {
                Err(e) => Err(e.context(format!("{name} failed"))),
                Ok(()) => bail!("{name} stopped unexpectedly"),
            };
        }
        telemetry.start_shutdown();
        let lameduck = Duration::from_secs_f64(self.args.lameduck.max(0.0));
        if !lameduck.is_zero() {
            info!(?lameduck, "lameduck: /ready answers 503, still serving");
            tokio::time::sleep(lameduck).await;
        }
        self.cancel.cancel();
        let drain = Duration::from_secs_f64(self.args.drain_timeout.max(0.0));
        let drained = tokio::time::timeout(drain, async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok((name, Err(e))) if name != "source" => {
                        error!(component = name, error = %format!("{e:#}"), "failed while draining");
                    }
                    Err(e) => error!(error = %e, "a component panicked while draining"),
                    Ok(_) => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(?drain, "drain timeout reached; exiting with work in flight");
            self.tasks.abort_all();
        }
        telemetry_cancel.cancel();
        info!("stopped");
        Ok(())
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops fairlead");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
