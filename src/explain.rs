//! `fairlead explain`: one Service's whole story, or one request's, from
//! every component of one model.
//!
//! A report puts side by side what each component *serves* (the DNS index it
//! answers from, the frontends in the pinned maps, the gateway's route table
//! and upstream endpoint sets), each with the model generation it comes
//! from, and what the model's newest generation says they should serve. A
//! component behind the model, or serving something other than what the
//! model says, is a disagreement, listed at the end.
//!
//! Against a running fairlead the telemetry listener builds the report
//! (`/explain/service/NS/NAME`, `/explain/request/SCHEME/HOST/PATH`); from a
//! manifest directory the CLI builds the same report from a model it loads
//! itself, where every part is, by construction, the model's.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use fairlead_dns::{Index, ZoneConfig};
use fairlead_ingress::explain::{RouteEntry, View};
use fairlead_ingress::proxy::Routing;
use fairlead_ingress::router::{BackendSpec, ClassSelection, RouteTable, normalize_host};
use fairlead_model::{ServiceKey, Snapshot};
use fairlead_proxy::status::FrontendStatus;
use fairlead_proxy::tables::{LbMaps as _, MemoryMaps};
use serde::{Deserialize, Serialize};

/// One component's part of a report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Part<T> {
    /// The model generation the component serves (`None`: not running, or
    /// before its first).
    pub(crate) generation: Option<u64>,
    /// Why there is nothing to show, when there is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
    /// What it serves.
    pub(crate) items: T,
}

/// A kernel frontend of a Service and its backends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KernelFrontend {
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `externalIP`.
    pub(crate) kind: String,
    /// `address:port/protocol`.
    pub(crate) frontend: String,
    /// Slot-0 flags.
    pub(crate) flags: Vec<String>,
    /// The backends in slot order.
    pub(crate) backends: Vec<KernelBackend>,
    /// Inconsistencies the maps show.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) problems: Vec<String>,
}

/// A backend of a kernel frontend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelBackend {
    /// `address:port`.
    pub(crate) backend: String,
    /// `active`, `terminating`, ...
    pub(crate) state: String,
    /// On this node.
    pub(crate) local: bool,
}

/// A route and the upstreams it sends traffic to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RouteReport {
    /// `httproute`, `ingress`, `ingress-default`, `default`.
    pub(crate) source: String,
    /// The Ingress or HTTPRoute.
    pub(crate) object: String,
    /// The host group (`*` for any host).
    pub(crate) host: String,
    /// How it matches.
    pub(crate) matches: String,
    /// Its backends.
    pub(crate) backends: Vec<UpstreamReport>,
}

/// One backend of a route: a Service port and its endpoint set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UpstreamReport {
    /// `namespace/name:port`, or what did not resolve.
    pub(crate) backend: String,
    /// The weight (HTTPRoute rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<u32>,
    /// Why it does not resolve (requests get 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unresolved: Option<String>,
    /// The endpoint set.
    pub(crate) endpoints: Vec<UpstreamEndpoint>,
}

/// An endpoint of an upstream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UpstreamEndpoint {
    /// `address:port`.
    pub(crate) address: String,
    /// `serving`, or `ejected` (outlier detection).
    pub(crate) state: String,
    /// Requests in flight.
    pub(crate) in_flight: u32,
}

/// The Service as the model has it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    /// `ClusterIP`, `NodePort`, ...
    pub(crate) service_type: String,
    /// The ClusterIPs.
    pub(crate) cluster_ips: Vec<String>,
    /// `name port/protocol -> target`.
    pub(crate) ports: Vec<String>,
    /// `address node conditions`.
    pub(crate) endpoints: Vec<String>,
}

/// `fairlead explain service`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ServiceReport {
    /// `namespace/name`.
    pub(crate) service: String,
    /// Where the report comes from.
    pub(crate) source: String,
    /// The model's newest generation.
    pub(crate) model_generation: u64,
    /// The Service in the model (`None`: the model has no such Service).
    pub(crate) spec: Option<ServiceSpec>,
    /// The DNS records served for it.
    pub(crate) dns: Part<Vec<String>>,
    /// Its kernel frontends.
    pub(crate) kernel: Part<Vec<KernelFrontend>>,
    /// The routes that send traffic to it.
    pub(crate) routes: Part<Vec<RouteReport>>,
    /// Components behind the model, or serving something else than it says.
    pub(crate) disagreements: Vec<String>,
}

/// One route's verdict on a request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RouteVerdict {
    /// The route.
    #[serde(flatten)]
    pub(crate) route: RouteReport,
    /// It takes the request.
    pub(crate) taken: bool,
    /// Why (or why not).
    pub(crate) reason: String,
}

/// `fairlead explain request`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RequestReport {
    /// The request as given.
    pub(crate) url: String,
    /// The host routed on.
    pub(crate) host: String,
    /// The path routed on.
    pub(crate) path: String,
    /// Where the report comes from.
    pub(crate) source: String,
    /// The model's newest generation.
    pub(crate) model_generation: u64,
    /// The gateway's generation, and every route with its verdict.
    pub(crate) routes: Part<Vec<RouteVerdict>>,
    /// Plain HTTP to a host with TLS: redirected to HTTPS first.
    pub(crate) redirect_to_https: bool,
    /// Disagreements (the gateway behind the model, or routing otherwise).
    pub(crate) disagreements: Vec<String>,
}

/// What a running fairlead's components serve, for the telemetry listener.
#[derive(Clone, Debug, Default)]
pub(crate) struct Live {
    /// The DNS server's index.
    pub(crate) dns: Option<Arc<arc_swap::ArcSwap<Index>>>,
    /// The gateway's routing state, and the Ingresses it selects.
    pub(crate) ingress: Option<(View, ClassSelection)>,
    /// Where the proxy pins its maps.
    pub(crate) proxy_bpffs: Option<PathBuf>,
    /// This node.
    pub(crate) node_name: Option<String>,
}

/// The generation each component serves (from its readiness flag).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Generations {
    pub(crate) proxy: Option<u64>,
    pub(crate) ingress: Option<u64>,
}

/// Why a component's part is missing.
struct Absent {
    /// For people.
    why: String,
    /// The component runs in this process but does not serve yet (a
    /// disagreement), rather than not running here at all.
    starting: bool,
}

impl Absent {
    fn not_here(why: &str) -> Self {
        Self {
            why: why.to_owned(),
            starting: false,
        }
    }

    /// The part of a report for it; a starting component is a disagreement.
    fn part<T: Default>(&self, disagreements: &mut Vec<String>) -> Part<T> {
        if self.starting {
            disagreements.push(self.why.clone());
        }
        Part {
            note: Some(self.why.clone()),
            ..Part::default()
        }
    }
}

/// What the components serve, gathered once per report.
struct Observed {
    source: String,
    dns: Result<(Arc<Index>, Option<u64>), Absent>,
    kernel: Result<(Vec<FrontendStatus>, Option<u64>), Absent>,
    ingress: Result<(Arc<Routing>, Option<u64>), Absent>,
}

/// What the model says the components should serve.
struct Expected {
    dns: Index,
    kernel: Vec<FrontendStatus>,
    table: RouteTable,
}

/// The DNS zone of `fairlead dns` with its default flags (manifest mode).
fn default_zone() -> Arc<ZoneConfig> {
    let args = fairlead_dns::Args::with_listen(std::net::SocketAddr::from(([127, 0, 0, 1], 53)));
    Arc::new(
        ZoneConfig::new(&args.zone, args.ttl, args.pods)
            .expect("the default zone is valid")
            .with_autopath(args.autopath),
    )
}

/// The frontends the proxy programs for `snapshot` on `node`, from
/// in-memory maps.
fn model_frontends(snapshot: &Snapshot, node: Option<&str>) -> Vec<FrontendStatus> {
    let mut maps = MemoryMaps::new();
    let mut reconciler = fairlead_proxy::Reconciler::new(node.map(str::to_owned));
    let _ = reconciler.sync(snapshot, &mut maps);
    maps.contents()
        .map(|c| fairlead_proxy::status::frontends(&c))
        .unwrap_or_default()
}

fn expected(
    snapshot: &Snapshot,
    zone: Arc<ZoneConfig>,
    selection: &ClassSelection,
    node: Option<&str>,
) -> Expected {
    Expected {
        dns: Index::build(zone, snapshot),
        kernel: model_frontends(snapshot, node),
        table: RouteTable::compile(snapshot, selection),
    }
}

fn default_selection() -> ClassSelection {
    ClassSelection {
        class: "fairlead".to_owned(),
        default_backend: None,
        gateway_api: fairlead_ingress::gateway_api::Selection::default(),
    }
}

impl Live {
    fn observe(&self, generations: Generations) -> Observed {
        let dns = self
            .dns
            .as_ref()
            .map(|index| {
                let index = index.load_full();
                let generation = index.synced().then(|| index.generation());
                (index, generation)
            })
            .ok_or_else(|| Absent::not_here("the DNS server is not running in this process"));
        let kernel = match &self.proxy_bpffs {
            None => Err(Absent::not_here("the proxy is not running in this process")),
            Some(dir) => fairlead_proxy::PinnedMaps::open(dir)
                .and_then(|pinned| fairlead_proxy::status::Status::read(&pinned))
                .map(|status| (status.services, generations.proxy))
                .map_err(|e| Absent {
                    why: format!(
                        "proxy: reading the maps pinned under {}: {e}",
                        dir.display()
                    ),
                    starting: true,
                }),
        };
        let ingress = match &self.ingress {
            None => Err(Absent::not_here(
                "the ingress gateway is not running in this process",
            )),
            Some((view, _)) => view
                .routing()
                .map(|routing| (routing, generations.ingress))
                .ok_or_else(|| Absent {
                    why: "ingress: the gateway has not started yet".to_owned(),
                    starting: true,
                }),
        };
        Observed {
            source: "running fairlead".to_owned(),
            dns,
            kernel,
            ingress,
        }
    }

    fn expected(&self, snapshot: &Snapshot) -> Expected {
        let zone = self.dns.as_ref().map_or_else(default_zone, |index| {
            Arc::new(index.load().config().clone())
        });
        let selection = self
            .ingress
            .as_ref()
            .map_or_else(default_selection, |(_, s)| s.clone());
        expected(snapshot, zone, &selection, self.node_name.as_deref())
    }

    /// `explain service` against the running components.
    pub(crate) fn service(
        &self,
        snapshot: &Snapshot,
        generations: Generations,
        key: &ServiceKey,
    ) -> ServiceReport {
        let observed = self.observe(generations);
        let expected = self.expected(snapshot);
        service_report(
            snapshot,
            key,
            &observed,
            &expected,
            self.node_name.as_deref(),
        )
    }

    /// `explain request` against the running gateway.
    pub(crate) fn request(
        &self,
        snapshot: &Snapshot,
        generations: Generations,
        url: &str,
    ) -> Result<RequestReport> {
        let observed = self.observe(generations);
        let expected = self.expected(snapshot);
        request_report(
            snapshot,
            url,
            &observed,
            &expected,
            self.node_name.as_deref(),
        )
    }
}

/// Loads a manifest directory into a model.
fn load(dir: &std::path::Path) -> Result<Arc<Snapshot>> {
    let (mut writer, _rx) = fairlead_model::ModelWriter::new();
    fairlead_model::source::ManifestDir::new(dir)
        .sync(&mut writer)
        .with_context(|| format!("loading manifests from {}", dir.display()))?;
    Ok(writer.snapshot())
}

/// What every component would serve from the manifests in `dir`, with the
/// default flags (zone `cluster.local`, class `fairlead`, no node).
fn manifest_parts(dir: &std::path::Path) -> Result<(Arc<Snapshot>, Observed, Expected)> {
    let snapshot = load(dir)?;
    let generation = Some(snapshot.generation);
    let expected = expected(&snapshot, default_zone(), &default_selection(), None);
    let mut routing_table = RouteTable::compile(&snapshot, &default_selection());
    // Upstreams as the gateway would fill them: the model's endpoints, none ejected.
    let upstreams = routing_table
        .backends
        .iter()
        .map(|spec| {
            let BackendSpec::Service { protocol, .. } = spec else {
                return None;
            };
            let upstream = fairlead_ingress::upstream::Upstream::new(
                Arc::from(spec.to_string()),
                *protocol,
                Arc::new(fairlead_ingress::upstream::PoolConfig::default()),
                fairlead_ingress::metrics::Metrics::register(
                    &mut prometheus_client::registry::Registry::default(),
                ),
            );
            upstream.set_endpoints(fairlead_ingress::explain::model_endpoints(
                &snapshot, spec, None,
            ));
            Some(Arc::new(upstream))
        })
        .collect();
    routing_table.problems.clear();
    let observed = Observed {
        source: format!("manifests {}", dir.display()),
        dns: Ok((
            Arc::new(Index::build(default_zone(), &snapshot)),
            generation,
        )),
        kernel: Ok((expected.kernel.clone(), generation)),
        ingress: Ok((
            Arc::new(Routing {
                table: routing_table,
                upstreams,
            }),
            generation,
        )),
    };
    Ok((snapshot, observed, expected))
}

/// `explain service` from a manifest directory.
pub(crate) fn service_from_manifests(
    dir: &std::path::Path,
    key: &ServiceKey,
) -> Result<ServiceReport> {
    let (snapshot, observed, expected) = manifest_parts(dir)?;
    Ok(service_report(&snapshot, key, &observed, &expected, None))
}

/// `explain request` from a manifest directory.
pub(crate) fn request_from_manifests(dir: &std::path::Path, url: &str) -> Result<RequestReport> {
    let (snapshot, observed, expected) = manifest_parts(dir)?;
    request_report(&snapshot, url, &observed, &expected, None)
}

/// Flags a component serving another generation than the model's newest.
fn lag(disagreements: &mut Vec<String>, component: &str, served: Option<u64>, model: u64) {
    match served {
        Some(g) if g == model => {}
        Some(g) => disagreements.push(format!(
            "{component} serves generation {g}, the model is at {model}: {component} is behind"
        )),
        None => disagreements.push(format!(
            "{component} serves no generation yet (the model is at {model})"
        )),
    }
}

fn spec_of(snapshot: &Snapshot, key: &ServiceKey) -> Option<ServiceSpec> {
    let service = snapshot.services.get(key)?;
    Some(ServiceSpec {
        service_type: service.service_type.to_string(),
        cluster_ips: service
            .cluster_ips
            .iter()
            .map(ToString::to_string)
            .collect(),
        ports: service
            .ports
            .iter()
            .map(|p| {
                let mut s = format!("{} {}/{}", p.name, p.port, p.protocol.as_str());
                if let Some(node_port) = p.node_port {
                    let _ = write!(s, " nodePort {node_port}");
                }
                s
            })
            .collect(),
        endpoints: service
            .endpoints
            .iter()
            .map(|e| {
                let c = &e.conditions;
                format!(
                    "{} node={} ready={} serving={} terminating={}",
                    e.address,
                    e.node_name.as_deref().unwrap_or("-"),
                    c.ready,
                    c.serving,
                    c.terminating
                )
            })
            .collect(),
    })
}

/// The frontends of `key`: those whose address:port/protocol is one of the
/// Service's frontends in `reference` (what the model programs), classified.
fn service_frontends(
    snapshot: &Snapshot,
    key: &ServiceKey,
    frontends: &[FrontendStatus],
    node: Option<&str>,
) -> Vec<KernelFrontend> {
    let Some(service) = snapshot.services.get(key) else {
        return Vec::new();
    };
    let wanted: Vec<(String, bool)> =
        fairlead_proxy::desired::desired_frontends(service, snapshot.locality(node))
            .into_iter()
            .map(|d| {
                (
                    d.frontend.to_string(),
                    d.flags & fairlead_proxy::abi::ServiceValue::FLAG_NODEPORT != 0,
                )
            })
            .collect();
    let mut out = Vec::new();
    for fe in frontends {
        let Some((_, node_port)) = wanted.iter().find(|(f, _)| *f == fe.frontend) else {
            continue;
        };
        let address: Option<std::net::IpAddr> = fe.address.parse().ok();
        let kind = if *node_port {
            "NodePort"
        } else if address.is_some_and(|a| service.cluster_ips.contains(&a)) {
            "ClusterIP"
        } else if address.is_some_and(|a| service.load_balancer_ips.contains(&a)) {
            "LoadBalancer"
        } else {
            "externalIP"
        };
        let mut backends: Vec<KernelBackend> = fe
            .backends
            .iter()
            .map(|b| KernelBackend {
                backend: b.backend.clone(),
                state: b.state.to_owned(),
                local: b.local,
            })
            .collect();
        backends.sort();
        out.push(KernelFrontend {
            kind: kind.to_owned(),
            frontend: fe.frontend.clone(),
            flags: fe.flags.iter().map(|f| (*f).to_owned()).collect(),
            backends,
            problems: fe.problems.clone(),
        });
    }
    out.sort_by(|a, b| (&a.kind, &a.frontend).cmp(&(&b.kind, &b.frontend)));
    out
}

fn upstream_reports(
    snapshot: &Snapshot,
    routing: &Routing,
    entry: &RouteEntry,
) -> Vec<UpstreamReport> {
    let _ = snapshot;
    entry
        .backends
        .iter()
        .map(|(id, weight)| {
            let spec = routing.table.backend(*id);
            let endpoints = routing
                .upstreams
                .get(*id)
                .and_then(Option::as_ref)
                .map(|upstream| {
                    upstream
                        .endpoints()
                        .iter()
                        .map(|e| UpstreamEndpoint {
                            address: e.addr.to_string(),
                            state: if e.ejected() { "ejected" } else { "serving" }.to_owned(),
                            in_flight: e.in_flight(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            UpstreamReport {
                backend: match spec {
                    BackendSpec::Service { .. } => spec.to_string(),
                    BackendSpec::Unresolved { wanted, .. } => wanted.clone(),
                },
                weight: *weight,
                unresolved: match spec {
                    BackendSpec::Unresolved { reason, .. } => Some(reason.clone()),
                    BackendSpec::Service { .. } => None,
                },
                endpoints,
            }
        })
        .collect()
}

fn route_report(snapshot: &Snapshot, routing: &Routing, entry: &RouteEntry) -> RouteReport {
    RouteReport {
        source: entry.source.as_str().to_owned(),
        object: entry.object.clone(),
        host: if entry.host.is_empty() {
            "*".to_owned()
        } else {
            entry.host.clone()
        },
        matches: entry.matches.clone(),
        backends: upstream_reports(snapshot, routing, entry),
    }
}

/// The endpoint sets the model gives each Service backend of `routes`,
/// compared with the gateway's.
fn check_upstreams(
    snapshot: &Snapshot,
    routing: &Routing,
    entries: &[RouteEntry],
    node: Option<&str>,
    disagreements: &mut Vec<String>,
) {
    let mut seen = BTreeSet::new();
    for entry in entries {
        for (id, _) in &entry.backends {
            let spec = routing.table.backend(*id);
            if !matches!(spec, BackendSpec::Service { .. }) || !seen.insert(spec.to_string()) {
                continue;
            }
            let model: Vec<String> =
                fairlead_ingress::explain::model_endpoints(snapshot, spec, node)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
            let mut served: Vec<String> = routing
                .upstreams
                .get(*id)
                .and_then(Option::as_ref)
                .map(|u| u.endpoints().iter().map(|e| e.addr.to_string()).collect())
                .unwrap_or_default();
            served.sort();
            let mut model = model;
            model.sort();
            if served != model {
                disagreements.push(format!(
                    "ingress: the endpoints of {spec} are [{}], the model says [{}]",
                    served.join(", "),
                    model.join(", ")
                ));
            }
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the three parts, each observed then checked, in the order they print"
)]
fn service_report(
    snapshot: &Snapshot,
    key: &ServiceKey,
    observed: &Observed,
    expected: &Expected,
    node: Option<&str>,
) -> ServiceReport {
    let model = snapshot.generation;
    let mut disagreements = Vec::new();
    let spec = spec_of(snapshot, key);

    let dns = match &observed.dns {
        Ok((index, generation)) => {
            lag(&mut disagreements, "dns", *generation, model);
            let served = index.service_records(&key.namespace, &key.name);
            let wanted = expected.dns.service_records(&key.namespace, &key.name);
            let text = |r: &Option<Vec<_>>| -> Option<Vec<String>> {
                r.as_ref()
                    .map(|r| r.iter().map(ToString::to_string).collect())
            };
            let (served, wanted) = (text(&served), text(&wanted));
            if served != wanted {
                disagreements.push(format!(
                    "dns: the records served differ from the model's: served [{}], the model says [{}]",
                    served.clone().unwrap_or_default().join("; "),
                    wanted.unwrap_or_default().join("; ")
                ));
            }
            Part {
                generation: *generation,
                note: served
                    .is_none()
                    .then(|| "no such Service in the DNS index".to_owned()),
                items: served.unwrap_or_default(),
            }
        }
        Err(absent) => absent.part(&mut disagreements),
    };

    let kernel = match &observed.kernel {
        Ok((frontends, generation)) => {
            lag(&mut disagreements, "proxy", *generation, model);
            let served = service_frontends(snapshot, key, frontends, node);
            let wanted = service_frontends(snapshot, key, &expected.kernel, node);
            for w in &wanted {
                match served.iter().find(|s| s.frontend == w.frontend) {
                    None => disagreements.push(format!(
                        "proxy: frontend {} is not in the kernel",
                        w.frontend
                    )),
                    Some(s) if s.backends != w.backends => {
                        let list = |b: &[KernelBackend]| {
                            b.iter()
                                .map(|b| format!("{} {}", b.backend, b.state))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        disagreements.push(format!(
                            "proxy: the backends of {} are [{}], the model says [{}]",
                            w.frontend,
                            list(&s.backends),
                            list(&w.backends)
                        ));
                    }
                    Some(_) => {}
                }
            }
            Part {
                generation: *generation,
                note: None,
                items: served,
            }
        }
        Err(absent) => absent.part(&mut disagreements),
    };

    let routes = match &observed.ingress {
        Ok((routing, generation)) => {
            lag(&mut disagreements, "ingress", *generation, model);
            let entries = routing.table.entries_for(key);
            let wanted = expected.table.entries_for(key);
            let describe = |e: &RouteEntry| format!("{} {} {}", e.object, e.host, e.matches);
            let served_set: BTreeSet<String> = entries.iter().map(describe).collect();
            let wanted_set: BTreeSet<String> = wanted.iter().map(describe).collect();
            for missing in wanted_set.difference(&served_set) {
                disagreements.push(format!(
                    "ingress: route {missing} is in the model, not in the gateway"
                ));
            }
            for extra in served_set.difference(&wanted_set) {
                disagreements.push(format!(
                    "ingress: route {extra} is in the gateway, no longer in the model"
                ));
            }
            check_upstreams(snapshot, routing, &entries, node, &mut disagreements);
            Part {
                generation: *generation,
                note: None,
                items: entries
                    .iter()
                    .map(|e| route_report(snapshot, routing, e))
                    .collect(),
            }
        }
        Err(absent) => absent.part(&mut disagreements),
    };

    ServiceReport {
        service: key.to_string(),
        source: observed.source.clone(),
        model_generation: model,
        spec,
        dns,
        kernel,
        routes,
        disagreements,
    }
}

/// Splits `https://HOST[:PORT]/PATH?QUERY` into (https, host, path).
/// A request URL: whether it is HTTPS, its normalised host, its path
/// (dot segments removed) and its query.
struct Url {
    https: bool,
    host: String,
    path: String,
    query: Option<String>,
}

fn parse_url(url: &str) -> Result<Url> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        anyhow::bail!("{url:?}: expected http://HOST/PATH or https://HOST/PATH");
    };
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    if authority.is_empty() {
        anyhow::bail!("{url:?}: no host");
    }
    let path = path.split('#').next().unwrap_or("/");
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q.to_owned())));
    let path =
        fairlead_ingress::router::remove_dot_segments(path).unwrap_or_else(|| path.to_owned());
    Ok(Url {
        https,
        host: normalize_host(authority).into_owned(),
        path,
        query,
    })
}

fn request_report(
    snapshot: &Snapshot,
    url: &str,
    observed: &Observed,
    expected: &Expected,
    node: Option<&str>,
) -> Result<RequestReport> {
    let Url {
        https,
        host,
        path,
        query,
    } = parse_url(url)?;
    let model = snapshot.generation;
    let mut disagreements = Vec::new();
    let method = hyper::Method::GET;
    let headers = hyper::HeaderMap::new();
    let request = fairlead_ingress::explain::Request {
        host: &host,
        path: &path,
        query: query.as_deref(),
        method: &method,
        headers: &headers,
        tls: https,
    };
    let (routes, redirect) = match &observed.ingress {
        Ok((routing, generation)) => {
            lag(&mut disagreements, "ingress", *generation, model);
            let verdicts = routing.table.verdicts(&request);
            let taken: Vec<RouteEntry> = verdicts
                .iter()
                .filter(|v| v.taken)
                .map(|v| v.route.clone())
                .collect();
            let wanted: Vec<RouteEntry> = expected
                .table
                .verdicts(&request)
                .into_iter()
                .filter(|v| v.taken)
                .map(|v| v.route)
                .collect();
            let describe = |e: &[RouteEntry]| {
                e.iter()
                    .map(|e| format!("{} {} {}", e.object, e.host, e.matches))
                    .collect::<Vec<_>>()
            };
            if describe(&taken) != describe(&wanted) {
                disagreements.push(format!(
                    "ingress: the gateway routes it by [{}], the model says [{}]",
                    describe(&taken).join("; "),
                    describe(&wanted).join("; ")
                ));
            }
            check_upstreams(snapshot, routing, &taken, node, &mut disagreements);
            let items = verdicts
                .into_iter()
                .map(|v| RouteVerdict {
                    route: route_report(snapshot, routing, &v.route),
                    taken: v.taken,
                    reason: v.reason,
                })
                .collect();
            (
                Part {
                    generation: *generation,
                    note: None,
                    items,
                },
                !https && routing.table.tls_hosts.contains(&host),
            )
        }
        Err(absent) => (absent.part(&mut disagreements), false),
    };
    Ok(RequestReport {
        url: url.to_owned(),
        host,
        path,
        source: observed.source.clone(),
        model_generation: model,
        routes,
        redirect_to_https: redirect,
        disagreements,
    })
}

fn generation_line(out: &mut String, title: &str, generation: Option<u64>, model: u64) {
    let state = match generation {
        Some(g) if g == model => format!("generation {g}"),
        Some(g) => format!("generation {g} (BEHIND: model at {model})"),
        None => "no generation".to_owned(),
    };
    let _ = writeln!(out, "{title} [{state}]");
}

fn render_routes(out: &mut String, routes: &[RouteReport], verdicts: Option<&[RouteVerdict]>) {
    for (i, route) in routes.iter().enumerate() {
        let verdict = verdicts.map(|v| &v[i]);
        let mark = match verdict {
            Some(v) if v.taken => "=> ",
            Some(_) => "   ",
            None => "  ",
        };
        let _ = writeln!(
            out,
            "  {mark}{} {}  host {}  {}",
            route.source, route.object, route.host, route.matches
        );
        if let Some(v) = verdict {
            let _ = writeln!(out, "       {}", v.reason);
            if !v.taken {
                continue;
            }
        }
        for backend in &route.backends {
            let weight = backend
                .weight
                .map(|w| format!("  weight {w}"))
                .unwrap_or_default();
            match &backend.unresolved {
                Some(reason) => {
                    let _ = writeln!(
                        out,
                        "      -> {}{weight}  UNRESOLVED: {reason} (503)",
                        backend.backend
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "      -> {}{weight}  ({} endpoints)",
                        backend.backend,
                        backend.endpoints.len()
                    );
                }
            }
            for e in &backend.endpoints {
                let _ = writeln!(
                    out,
                    "           {} {} in-flight {}",
                    e.address, e.state, e.in_flight
                );
            }
        }
    }
}

fn render_disagreements(out: &mut String, disagreements: &[String]) {
    if disagreements.is_empty() {
        let _ = writeln!(
            out,
            "\nno disagreement: every component serves the model's view"
        );
    } else {
        let _ = writeln!(out, "\nDISAGREEMENTS ({})", disagreements.len());
        for d in disagreements {
            let _ = writeln!(out, "  ! {d}");
        }
    }
}

impl std::fmt::Display for ServiceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "service {} (from {}; model generation {})",
            self.service, self.source, self.model_generation
        );
        match &self.spec {
            None => {
                let _ = writeln!(out, "  not in the model");
            }
            Some(spec) => {
                let _ = writeln!(
                    out,
                    "  type {}  clusterIPs {}",
                    spec.service_type,
                    if spec.cluster_ips.is_empty() {
                        "-".to_owned()
                    } else {
                        spec.cluster_ips.join(", ")
                    }
                );
                for port in &spec.ports {
                    let _ = writeln!(out, "  port {port}");
                }
                for e in &spec.endpoints {
                    let _ = writeln!(out, "  endpoint {e}");
                }
            }
        }
        let model = self.model_generation;
        out.push('\n');
        generation_line(&mut out, "DNS", self.dns.generation, model);
        if let Some(note) = &self.dns.note {
            let _ = writeln!(out, "  ({note})");
        }
        for record in &self.dns.items {
            let _ = writeln!(out, "  {record}");
        }
        out.push('\n');
        generation_line(&mut out, "KERNEL", self.kernel.generation, model);
        if let Some(note) = &self.kernel.note {
            let _ = writeln!(out, "  ({note})");
        } else if self.kernel.items.is_empty() {
            let _ = writeln!(out, "  (no frontend)");
        }
        for fe in &self.kernel.items {
            let flags = if fe.flags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", fe.flags.join(","))
            };
            let _ = writeln!(
                out,
                "  {:<12} {}{flags}  {} backend(s)",
                fe.kind,
                fe.frontend,
                fe.backends.len()
            );
            for b in &fe.backends {
                let local = if b.local { " local" } else { "" };
                let _ = writeln!(out, "      {} {}{local}", b.backend, b.state);
            }
            for p in &fe.problems {
                let _ = writeln!(out, "      problem: {p}");
            }
        }
        out.push('\n');
        generation_line(&mut out, "ROUTES", self.routes.generation, model);
        if let Some(note) = &self.routes.note {
            let _ = writeln!(out, "  ({note})");
        } else if self.routes.items.is_empty() {
            let _ = writeln!(out, "  (no route sends traffic to it)");
        }
        render_routes(&mut out, &self.routes.items, None);
        render_disagreements(&mut out, &self.disagreements);
        f.write_str(&out)
    }
}

impl std::fmt::Display for RequestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "request {}  (host {:?}, path {:?}; from {}; model generation {})",
            self.url, self.host, self.path, self.source, self.model_generation
        );
        if self.redirect_to_https {
            let _ = writeln!(
                out,
                "  plain HTTP to a host with TLS: answered with a redirect to HTTPS"
            );
        }
        out.push('\n');
        generation_line(
            &mut out,
            "ROUTES",
            self.routes.generation,
            self.model_generation,
        );
        if let Some(note) = &self.routes.note {
            let _ = writeln!(out, "  ({note})");
        }
        match self.routes.items.iter().find(|v| v.taken) {
            Some(v) => {
                let _ = writeln!(
                    out,
                    "  matched: {} {} host {} {}",
                    v.route.source, v.route.object, v.route.host, v.route.matches
                );
            }
            None if self.routes.note.is_none() => {
                let _ = writeln!(out, "  no route matches: the gateway answers 404");
            }
            None => {}
        }
        let routes: Vec<RouteReport> = self.routes.items.iter().map(|v| v.route.clone()).collect();
        render_routes(&mut out, &routes, Some(&self.routes.items));
        render_disagreements(&mut out, &self.disagreements);
        f.write_str(&out)
    }
}

/// Parses `NAMESPACE/NAME`.
pub(crate) fn parse_service(s: &str) -> Result<ServiceKey> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ServiceKey::new(ns, name))
        }
        _ => anyhow::bail!("{s:?}: expected NAMESPACE/NAME"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = parse_url("https://Shop.Example.com:8443/a/../b?x=1#f").unwrap();
        assert_eq!(
            (
                url.https,
                url.host.as_str(),
                url.path.as_str(),
                url.query.as_deref()
            ),
            (true, "shop.example.com", "/b", Some("x=1"))
        );
        let url = parse_url("http://h").unwrap();
        assert_eq!(
            (url.https, url.host.as_str(), url.path.as_str(), url.query),
            (false, "h", "/", None)
        );
        assert!(parse_url("ftp://h/").is_err());
        assert!(parse_service("a/b").is_ok());
        assert!(parse_service("a").is_err());
    }
}
