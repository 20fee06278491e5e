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
use fairlead_model::source::kube::gateway_status::GatewayStatusWriter;
use fairlead_model::source::kube::leader::{LeaderElector, LeaseConfig, StatusLeader};
use fairlead_model::source::kube::status::{
    DEFAULT_RESYNC, IngressStatusConfig, IngressStatusWriter, StatusAddress, StatusAddresses,
};
use fairlead_model::source::kube::{
    self as kube_source, Client, IngressStore, KubeOptions, KubeSource,
};
use fairlead_model::{ModelWriter, ObjectKey, Ready, Snapshot};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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
    /// Read Services, EndpointSlices, Ingresses and TLS Secrets of this
    /// namespace only (apiserver source; cluster-scoped kinds are read as usual).
    #[arg(
        long,
        value_name = "NAMESPACE",
        conflicts_with = "manifests",
        env = "FAIRLEAD_NAMESPACE"
    )]
    pub(crate) namespace: Option<String>,
    /// Publish a Warning Event on the object of each problem the model
    /// reports (apiserver source; deduplicated and rate-limited like
    /// client-go's recorder). Needs create and patch on events.k8s.io
    /// events. Enable it on one workload (deploy/ enables it on the ingress
    /// Deployment).
    #[arg(long, env = "FAIRLEAD_EVENTS")]
    pub(crate) events: bool,
    /// Publish a Warning Event on this node's Node object for each problem
    /// of the kernel load balancer (a full map), from every node: each
    /// reports its own (apiserver source, needs --node-name). `--events`
    /// implies it. deploy/ enables it on the node DaemonSet.
    #[arg(long, env = "FAIRLEAD_NODE_EVENTS")]
    pub(crate) node_events: bool,
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

/// The environment variable of the testing hook of [`Runtime::model_for`].
const HOLD_ENV: &str = "FAIRLEAD_TESTING_HOLD";

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
    /// What the components serve, for `/explain` (each fills its part).
    pub(crate) live: crate::explain::Live,
    components: Vec<(&'static str, Ready)>,
    tasks: JoinSet<(&'static str, Result<()>)>,
    /// The model source. It stops last, after the components have drained:
    /// a component that sees the model channel close while it drains would
    /// take that for a failure.
    source: JoinHandle<Result<()>>,
    /// Cancelled once the components have stopped; stops the source.
    source_stop: CancellationToken,
    args: SourceArgs,
    /// Set when the model comes from the apiserver.
    apiserver: Option<Apiserver>,
    /// Whether this replica writes status (every status writer checks it):
    /// always, unless `--ingress-status-lease` elects one replica.
    pub(crate) status_leader: StatusLeader,
    /// The kernel load balancer's problems of this node, when it runs.
    pub(crate) node_problems: Option<watch::Receiver<Arc<[fairlead_model::Problem]>>>,
    /// The IngressClass of the gateway, when it runs: only its Ingresses get
    /// Events.
    ingress_class: Option<String>,
}

/// What the apiserver source shares with other tasks.
struct Apiserver {
    /// The client, once configured by the source task.
    client: watch::Receiver<Option<Client>>,
    /// The source's Ingress store (statuses included).
    ingresses: IngressStore,
    /// The source's Gateway API stores (statuses included).
    gateway_api: fairlead_model::source::kube::gateway_status::GatewayApiStores,
}

/// Where the Ingress gateway publishes its address in the status of the
/// Ingresses it serves (`status.loadBalancer.ingress`), like ingress-nginx.
/// Without any of these flags no status is written. Apiserver source only.
#[derive(Args, Debug, Clone, Default)]
#[allow(
    clippy::struct_field_names,
    reason = "clap derives the flag names (and ids, unique across flattened args) from the fields"
)]
pub(crate) struct IngressStatusArgs {
    /// Publish these addresses (IPs or DNS names, comma-separated).
    #[arg(
        long,
        value_name = "ADDR,...",
        value_delimiter = ',',
        env = "FAIRLEAD_INGRESS_STATUS_ADDRESS",
        conflicts_with_all = ["ingress_status_service", "ingress_status_node"]
    )]
    pub(crate) ingress_status_address: Vec<StatusAddress>,
    /// Publish the addresses of this Service (the gateway's own): its
    /// load-balancer IPs, else its external IPs.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        env = "FAIRLEAD_INGRESS_STATUS_SERVICE",
        conflicts_with = "ingress_status_node"
    )]
    pub(crate) ingress_status_service: Option<String>,
    /// Publish this node's ExternalIPs (else InternalIPs). Only for a single
    /// gateway instance: instances on several nodes would overwrite each other.
    #[arg(long, env = "FAIRLEAD_INGRESS_STATUS_NODE")]
    pub(crate) ingress_status_node: bool,
    /// With several replicas: only the holder of this coordination.k8s.io
    /// Lease writes status (leader election; the others take over within
    /// the lease duration, 15 s, when it dies). The identity is POD_NAME,
    /// else the host name.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        env = "FAIRLEAD_INGRESS_STATUS_LEASE"
    )]
    pub(crate) ingress_status_lease: Option<String>,
}

impl IngressStatusArgs {
    /// The configured addresses, if any.
    fn addresses(&self, node_name: Option<&str>) -> Result<Option<StatusAddresses>> {
        if !self.ingress_status_address.is_empty() {
            return Ok(Some(StatusAddresses::Fixed(
                self.ingress_status_address.clone(),
            )));
        }
        if let Some(service) = &self.ingress_status_service {
            let Some((namespace, name)) = service.split_once('/') else {
                bail!("--ingress-status-service {service:?}: expected NAMESPACE/NAME");
            };
            return Ok(Some(StatusAddresses::Service(ObjectKey::new(
                namespace, name,
            ))));
        }
        if self.ingress_status_node {
            let Some(node) = node_name else {
                bail!("--ingress-status-node needs --node-name (or NODE_NAME)");
            };
            return Ok(Some(StatusAddresses::Node(node.to_owned())));
        }
        Ok(None)
    }
}

impl Runtime {
    /// Starts the model source: the manifest directory, or the apiserver
    /// (the client is configured in the source task; a bad kubeconfig fails
    /// that task, which stops the process with the error).
    pub(crate) fn start(args: &SourceArgs) -> Result<Self> {
        let (writer, model) = ModelWriter::new();
        let cancel = CancellationToken::new();
        let tasks = JoinSet::new();
        // Components name their metrics `fairlead_<component>_…` themselves.
        let mut registry = Registry::default();
        let mut apiserver = None;
        let source_stop = CancellationToken::new();
        let stop = source_stop.clone();
        let source = if let Some(dir) = &args.manifests {
            if !dir.is_dir() {
                bail!("--manifests {}: not a directory", dir.display());
            }
            let source = ManifestDir::new(dir);
            tokio::spawn(async move {
                tokio::select! {
                    result = source.watch(writer) => result.context("manifest source"),
                    () = stop.cancelled() => Ok(()),
                }
            })
        } else {
            let options = KubeOptions {
                node_name: args.node_name.clone(),
                namespace: args.namespace.clone(),
            };
            let source =
                KubeSource::new(options, registry.sub_registry_with_prefix("fairlead_kube"))
                    .context("apiserver source")?;
            let (client_tx, client_rx) = watch::channel(None);
            apiserver = Some(Apiserver {
                client: client_rx,
                ingresses: source.ingresses(),
                gateway_api: source.gateway_api(),
            });
            let kubeconfig = args.kubeconfig.clone();
            tokio::spawn(async move {
                let run = async {
                    let client = kube_source::client(kubeconfig.as_deref()).await?;
                    client_tx.send_replace(Some(client.clone()));
                    source.run(client, writer).await
                };
                tokio::select! {
                    result = run => result.context("apiserver source"),
                    () = stop.cancelled() => Ok(()),
                }
            })
        };
        Ok(Self {
            model,
            registry,
            cancel,
            live: crate::explain::Live {
                node_name: args.node_name.clone(),
                ..crate::explain::Live::default()
            },
            components: Vec::new(),
            tasks,
            source,
            source_stop,
            args: args.clone(),
            apiserver,
            status_leader: StatusLeader::always(),
            node_problems: None,
            ingress_class: None,
        })
    }

    /// Runs the leader election of `--ingress-status-lease` (once), and
    /// makes [`Runtime::status_leader`] follow it.
    fn elect_status_leader(&mut self, lease: &str) -> Result<()> {
        let Some(apiserver) = &self.apiserver else {
            return Ok(());
        };
        let Some((namespace, name)) = lease.split_once('/') else {
            bail!("--ingress-status-lease {lease:?}: expected NAMESPACE/NAME");
        };
        let identity = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| self.args.node_name.clone())
            .context("--ingress-status-lease needs POD_NAME (or HOSTNAME) as the identity")?;
        let (elector, leader) = LeaderElector::new(LeaseConfig::new(namespace, name, identity));
        self.status_leader = leader;
        let mut client = apiserver.client.clone();
        let stop = self.cancel.clone();
        self.tasks.spawn(async move {
            let run = async {
                let Ok(client) = client.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return Ok(());
                };
                elector.run(client.expect("waited for Some")).await
            };
            tokio::select! {
                result = run => ("status-lease", result.context("status leader election")),
                () = stop.cancelled() => ("status-lease", Ok(())),
            }
        });
        Ok(())
    }

    /// Publishes a Warning Event for each problem of the model (apiserver
    /// source only), while this replica is the status leader.
    fn publish_events(&mut self) {
        let Some(apiserver) = &self.apiserver else {
            info!("--events: no Events, the model comes from --manifests");
            return;
        };
        let mut client = apiserver.client.clone();
        let ingresses = apiserver.ingresses.clone();
        let model = self.model.clone();
        let stop = self.cancel.clone();
        let leader = self.status_leader.clone();
        let class = self.ingress_class.clone();
        // The reportingInstance: the pod (POD_NAME), else the node.
        let instance = std::env::var("POD_NAME")
            .ok()
            .or_else(|| self.args.node_name.clone());
        self.tasks.spawn(async move {
            let run = async {
                let Ok(client) = client.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return Ok(());
                };
                let client = client.expect("waited for Some");
                let mut events =
                    kube_source::events::ProblemEvents::new().with_ingresses(ingresses);
                if let Some(class) = class {
                    events = events.for_ingress_class(class);
                }
                events.run(client, instance, model, leader).await
            };
            tokio::select! {
                result = run => ("events", result.context("Event publisher")),
                () = stop.cancelled() => ("events", Ok(())),
            }
        });
    }

    /// Publishes a Warning Event on this node's Node for each problem the
    /// kernel load balancer reports (apiserver source, proxy running, node
    /// name known), on every node.
    fn publish_node_events(&mut self) {
        let (Some(apiserver), Some(problems), Some(node)) = (
            &self.apiserver,
            self.node_problems.clone(),
            self.args.node_name.clone(),
        ) else {
            info!("no node Events: they need the apiserver source, the proxy and --node-name");
            return;
        };
        let mut client = apiserver.client.clone();
        let stop = self.cancel.clone();
        let instance = std::env::var("POD_NAME").ok().or(Some(node));
        self.tasks.spawn(async move {
            let run = async {
                let Ok(client) = client.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return Ok(());
                };
                let client = client.expect("waited for Some");
                kube_source::events::ProblemEvents::new()
                    .run_node(client, instance, problems)
                    .await
            };
            tokio::select! {
                result = run => ("node-events", result.context("node Event publisher")),
                () = stop.cancelled() => ("node-events", Ok(())),
            }
        });
    }

    /// Publishes the Ingress gateway's addresses in the status of the
    /// Ingresses of `class`, as `status` configures (nothing when it names no
    /// address, or when the model comes from manifests). Call it from the
    /// modes that run the gateway (`ingress`, `node`).
    ///
    /// The same instance writes the Gateway API status (the conditions of
    /// the GatewayClasses of `gateway_api.controller`, their Gateways and
    /// routes): one status writer per cluster, whichever `--ingress-status-*`
    /// names.
    pub(crate) fn publish_ingress_status(
        &mut self,
        class: &str,
        status: &IngressStatusArgs,
        gateway_api: fairlead_model::gateway_status::Serving,
    ) -> Result<()> {
        self.ingress_class = Some(class.to_owned());
        let Some(addresses) = status.addresses(self.node_name())? else {
            info!("Ingress status is not published (no --ingress-status-* flag)");
            return Ok(());
        };
        let Some(apiserver) = &self.apiserver else {
            warn!("--ingress-status-* ignored: the model comes from --manifests");
            return Ok(());
        };
        let ingresses = apiserver.ingresses.clone();
        if let Some(lease) = &status.ingress_status_lease {
            self.elect_status_leader(lease)?;
        }
        let writer = IngressStatusWriter::new(
            ingresses,
            IngressStatusConfig {
                class: class.to_owned(),
                addresses,
                resync: DEFAULT_RESYNC,
            },
            &mut self.registry,
        )
        .with_leader(self.status_leader.clone());
        let Some(apiserver) = &self.apiserver else {
            return Ok(());
        };
        let mut client = apiserver.client.clone();
        let model = self.model.clone();
        let stop = self.cancel.clone();
        self.tasks.spawn(async move {
            let run = async {
                let Ok(client) = client.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    // The source ended before configuring a client; it reports why.
                    return Ok(());
                };
                let client = client.expect("waited for Some");
                writer.run(client, model).await
            };
            tokio::select! {
                result = run => ("ingress-status", result.context("Ingress status writer")),
                () = stop.cancelled() => ("ingress-status", Ok(())),
            }
        });
        let gateway_writer = GatewayStatusWriter::new(
            apiserver.gateway_api.clone(),
            gateway_api,
            DEFAULT_RESYNC,
            &mut self.registry,
        )
        .with_leader(self.status_leader.clone());
        let mut client = apiserver.client.clone();
        let model = self.model.clone();
        let stop = self.cancel.clone();
        self.tasks.spawn(async move {
            let run = async {
                let Ok(client) = client.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return Ok(());
                };
                let client = client.expect("waited for Some");
                gateway_writer.run(client, model).await
            };
            tokio::select! {
                result = run => ("gateway-api-status", result.context("Gateway API status writer")),
                () = stop.cancelled() => ("gateway-api-status", Ok(())),
            }
        });
        Ok(())
    }

    /// The node name, if given.
    pub(crate) fn node_name(&self) -> Option<&str> {
        self.args.node_name.as_deref()
    }

    /// The model receiver for the component `name`.
    ///
    /// Testing hook: with `FAIRLEAD_TESTING_HOLD=<name>` in the environment,
    /// that component gets snapshots up to the first synced one and nothing
    /// after, so it lags the model deterministically from the next change on
    /// (what the `explain` end-to-end test flags). Logged loudly.
    pub(crate) fn model_for(&self, name: &str) -> watch::Receiver<Arc<Snapshot>> {
        if std::env::var(HOLD_ENV).ok().as_deref() != Some(name) {
            return self.model.clone();
        }
        warn!(
            component = name,
            "{HOLD_ENV}: this component stays on the first synced model generation"
        );
        let mut source = self.model.clone();
        let (tx, rx) = watch::channel(source.borrow().clone());
        tokio::spawn(async move {
            loop {
                let snapshot = source.borrow_and_update().clone();
                let synced = snapshot.synced;
                if tx.send(snapshot).is_err() {
                    return;
                }
                if synced {
                    break;
                }
                if source.changed().await.is_err() {
                    return;
                }
            }
            // Held: keep the channel open until the component goes away.
            tx.closed().await;
        });
        rx
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
        // Started last: it follows the status leader, settled by now.
        if self.args.events {
            self.publish_events();
        }
        if self.args.events || self.args.node_events {
            self.publish_node_events();
        }
        let listener = telemetry::bind(self.args.telemetry_addr).await?;
        let ready: Vec<Ready> = self.components.iter().map(|(_, r)| r.clone()).collect();
        let telemetry = Arc::new(Telemetry::new(
            self.registry,
            self.components,
            self.model.clone(),
            self.live,
        ));
        let telemetry_cancel = CancellationToken::new();
        tokio::spawn(telemetry::serve(
            listener,
            Arc::clone(&telemetry),
            telemetry_cancel.clone(),
        ));

        // Once every component serves its first model, the memory the first load
        // freed goes back to the kernel (once; later loads are small).
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !ready.iter().all(Ready::get) {
                tick.tick().await;
            }
            // The first load's transient memory (parsed manifests or lists, the first
            // translations): the gateway with 1,000 Ingress hosts kept about a third of
            // its anonymous memory that way.
            let released = tokio::task::spawn_blocking(fairlead_proxy::release_freed_memory).await;
            debug!(
                ok = released.is_ok(),
                "returned the first load's freed memory"
            );
        });
        let failure = tokio::select! {
            signal = shutdown_signal() => {
                info!(signal, "shutting down");
                None
            }
            Some(joined) = self.tasks.join_next() => Some(joined),
            joined = &mut self.source => Some(joined.map(|result| ("source", result))),
        };
        if let Some(joined) = failure {
            let (name, result) = joined.context("a component panicked")?;
            telemetry_cancel.cancel();
            self.cancel.cancel();
            self.source_stop.cancel();
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
                    Ok((name, Err(e))) => {
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
        // The components are done with the model: now the source may stop.
        self.source_stop.cancel();
        match self.source.await {
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "the model source failed while stopping");
            }
            Err(e) if e.is_panic() => {
                error!(error = %e, "the model source panicked while stopping");
            }
            Ok(Ok(())) | Err(_) => {}
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
