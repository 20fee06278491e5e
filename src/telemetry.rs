//! The one telemetry listener of a fairlead process: `/metrics` (Prometheus
//! text format), `/health` (alive), `/ready` (every enabled component
//! serves the synced model, and the process is not shutting down) and
//! `/status` (JSON: the model generation and, per component, whether it is
//! ready and which generation it serves; what `fairlead status` shows).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use fairlead_model::{Ready, Snapshot};

use crate::explain::{Generations, Live};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What the telemetry endpoints report on.
#[derive(Debug)]
pub(crate) struct Telemetry {
    registry: Registry,
    components: Vec<(&'static str, Ready)>,
    model: watch::Receiver<Arc<Snapshot>>,
    shutting_down: AtomicBool,
    generations: Family<ComponentLabel, Gauge>,
    model_generation: Gauge,
    explain: Live,
}

/// The `component` label of the per-component gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: &'static str,
}

/// The body of `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct RuntimeStatus {
    /// The newest model generation.
    pub(crate) model_generation: u64,
    /// Whether the model holds every object of the source yet.
    pub(crate) model_synced: bool,
    /// In lameduck or draining.
    pub(crate) shutting_down: bool,
    /// Every enabled component.
    pub(crate) components: Vec<ComponentStatus>,
    /// When the gateway runs here: the Gateways of its controller, each with
    /// its listeners and the routes attached, as the status writer reports
    /// them (`fairlead check` shows the whole status).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) gateways: Vec<GatewayLine>,
}

/// One Gateway in `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct GatewayLine {
    /// `namespace/name`.
    pub(crate) gateway: String,
    /// Its `Programmed` condition.
    pub(crate) programmed: bool,
    /// Each listener.
    pub(crate) listeners: Vec<ListenerLine>,
    /// `httproute namespace/name` or `grpcroute ...` of each route accepted
    /// by one of its listeners.
    pub(crate) routes: Vec<String>,
}

/// One listener of a Gateway in `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct ListenerLine {
    /// The listener's name.
    pub(crate) name: String,
    /// `attachedRoutes`.
    pub(crate) attached_routes: i32,
    /// Its `Programmed` condition.
    pub(crate) programmed: bool,
    /// The reasons of its conditions that are not as they should be
    /// (`Conflicted` true, any other false), e.g. `PortUnavailable`.
    pub(crate) problems: Vec<String>,
}

/// The Gateways of `status`, with their listeners and accepted routes.
fn gateway_lines(status: &fairlead_model::gateway_status::GatewayApiStatus) -> Vec<GatewayLine> {
    use fairlead_model::gateway_status::StatusCondition;
    let holds = |conditions: &[StatusCondition], type_: &str| {
        conditions.iter().any(|c| c.type_ == type_ && c.status)
    };
    status
        .gateways
        .iter()
        .map(|(key, gateway)| {
            let routes = [
                ("httproute", &status.http_routes),
                ("grpcroute", &status.grpc_routes),
            ]
            .into_iter()
            .flat_map(|(kind, routes)| {
                routes
                    .iter()
                    .filter(|(_, parents)| {
                        parents
                            .iter()
                            .any(|p| p.parent.gateway == *key && holds(&p.conditions, "Accepted"))
                    })
                    .map(move |(route, _)| format!("{kind} {route}"))
            })
            .collect();
            GatewayLine {
                gateway: key.to_string(),
                programmed: holds(&gateway.conditions, "Programmed"),
                listeners: gateway
                    .listeners
                    .iter()
                    .map(|l| ListenerLine {
                        name: l.name.clone(),
                        attached_routes: l.attached_routes,
                        programmed: holds(&l.conditions, "Programmed"),
                        problems: l
                            .conditions
                            .iter()
                            .filter(|c| c.status == (c.type_ == "Conflicted"))
                            .map(|c| c.reason.clone())
                            .collect(),
                    })
                    .collect(),
                routes,
            }
        })
        .collect()
}

/// One component in `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct ComponentStatus {
    /// `proxy`, `dns` or `ingress`.
    pub(crate) name: &'static str,
    /// Serving the synced model.
    pub(crate) ready: bool,
    /// The model generation it serves (absent before its first one).
    pub(crate) generation: Option<u64>,
}

impl Telemetry {
    /// Metrics from `registry` (where the per-component generation gauges
    /// are added); readiness and generations from `components`; the model's
    /// own generation from `model`.
    pub(crate) fn new(
        mut registry: Registry,
        components: Vec<(&'static str, Ready)>,
        model: watch::Receiver<Arc<Snapshot>>,
        explain: Live,
    ) -> Self {
        let generations = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "fairlead_component_generation",
            "Model generation each component serves (-1 before its first)",
            generations.clone(),
        );
        let model_generation = Gauge::default();
        registry.register(
            "fairlead_model_generation",
            "Newest generation of the shared model",
            model_generation.clone(),
        );
        Self {
            registry,
            components,
            model,
            shutting_down: AtomicBool::new(false),
            generations,
            model_generation,
            explain,
        }
    }

    /// What `/status` reports.
    pub(crate) fn status(&self) -> RuntimeStatus {
        let snapshot = self.model.borrow().clone();
        RuntimeStatus {
            model_generation: snapshot.generation,
            model_synced: snapshot.synced,
            shutting_down: self.shutting_down.load(Ordering::Acquire),
            components: self
                .components
                .iter()
                .map(|(name, ready)| ComponentStatus {
                    name,
                    ready: ready.get(),
                    generation: ready.generation(),
                })
                .collect(),
            gateways: self
                .explain
                .ingress
                .as_ref()
                .map(|(_, selection)| {
                    gateway_lines(&fairlead_model::gateway_status::compute(
                        &snapshot,
                        &selection.gateway_api,
                    ))
                })
                .unwrap_or_default(),
        }
    }

    /// Copies the generations into their gauges (before each scrape).
    fn update_gauges(&self) {
        let status = self.status();
        self.model_generation
            .set(i64::try_from(status.model_generation).unwrap_or(i64::MAX));
        for component in status.components {
            let value = component
                .generation
                .map_or(-1, |g| i64::try_from(g).unwrap_or(i64::MAX));
            self.generations
                .get_or_create(&ComponentLabel {
                    component: component.name,
                })
                .set(value);
        }
    }

    /// From now on `/ready` answers 503, so that load balancers stop sending
    /// new work while the process drains (`/health` stays 200: alive).
    pub(crate) fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Components that are not ready, or `["shutting down"]`.
    fn not_ready(&self) -> Vec<&'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            return vec!["shutting down"];
        }
        self.components
            .iter()
            .filter(|(_, ready)| !ready.get())
            .map(|(name, _)| *name)
            .collect()
    }

    fn generation_of(&self, name: &str) -> Option<u64> {
        self.components
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, ready)| ready.generation())
    }

    /// `/explain/service/NS/NAME` and `/explain/request/SCHEME/HOST/PATH`:
    /// the report of `fairlead explain`, as JSON.
    fn explain(&self, what: &str) -> Result<String, (StatusCode, String)> {
        let snapshot = self.model.borrow().clone();
        let generations = Generations {
            proxy: self.generation_of("proxy"),
            ingress: self.generation_of("ingress"),
        };
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}\n"));
        let json = if let Some(service) = what.strip_prefix("service/") {
            let key = crate::explain::parse_service(service).map_err(bad)?;
            serde_json::to_string_pretty(&self.explain.service(&snapshot, generations, &key))
        } else if let Some(request) = what.strip_prefix("request/") {
            let (scheme, rest) = request.split_once('/').unwrap_or((request, ""));
            let url = format!("{scheme}://{rest}");
            let report = self
                .explain
                .request(&snapshot, generations, &url)
                .map_err(bad)?;
            serde_json::to_string_pretty(&report)
        } else {
            return Err((
                StatusCode::NOT_FOUND,
                "try /explain/service/NS/NAME or /explain/request/SCHEME/HOST/PATH\n".to_owned(),
            ));
        };
        json.map(|mut j| {
            j.push('\n');
            j
        })
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
        };
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
        }
        match path {
            "/metrics" => {
                self.update_gauges();
                let mut body = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &self.registry)
                {
                    warn!(error = %e, "encoding metrics failed");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n".to_owned(),
                    );
                }
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            "/health" => text(StatusCode::OK, "OK\n".to_owned()),
            _ if path.starts_with("/explain/") => match self.explain(&path["/explain/".len()..]) {
                Ok(json) => {
                    let mut response = text(StatusCode::OK, json);
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err((status, message)) => text(status, message),
            },
            "/status" => match serde_json::to_string_pretty(&self.status()) {
                Ok(mut json) => {
                    json.push('\n');
                    let mut response = text(StatusCode::OK, json);
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            "/ready" => {
                let waiting = self.not_ready();
                if waiting.is_empty() {
                    text(StatusCode::OK, "ready\n".to_owned())
                } else {
                    let mut body = String::from("not ready:");
                    for name in waiting {
                        let _ = write!(body, " {name}");
                    }
                    body.push('\n');
                    text(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /health, /ready, /status or /explain/...\n".to_owned(),
            ),
        }
    }
}

/// Binds the telemetry listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the telemetry listener on {addr}"))
}

/// Serves telemetry until `cancel`.
pub(crate) async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "telemetry listening (/metrics, /health, /ready, /status)");
    }
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "telemetry accept failed");
                    continue;
                }
            },
        };
        let telemetry = Arc::clone(&telemetry);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    // `/explain/request/...` carries the request's query.
                    let path = request
                        .uri()
                        .path_and_query()
                        .map_or_else(|| request.uri().path(), |p| p.as_str());
                    let path = if path.starts_with("/explain/") {
                        path
                    } else {
                        request.uri().path()
                    };
                    let response = telemetry.respond(request.method(), path);
                    async move { Ok::<_, Infallible>(response) }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(e) = result {
                    debug!(%peer, error = %e, "telemetry connection ended with an error");
                },
                () = cancel.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn ready_waits_for_every_component_and_drops_on_shutdown() {
        let (dns, proxy) = (Ready::new(), Ready::new());
        let mut registry = Registry::with_prefix("fairlead");
        let counter: Counter = Counter::default();
        registry.register("test_events", "events seen by the test", counter.clone());
        counter.inc();
        let (mut writer, model) = fairlead_model::ModelWriter::new();
        let t = Telemetry::new(
            registry,
            vec![("dns", dns.clone()), ("proxy", proxy.clone())],
            model,
            Live::default(),
        );

        let r = t.respond(&Method::GET, "/ready");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r).await, "not ready: dns proxy\n");
        dns.set(true);
        assert_eq!(
            body(t.respond(&Method::GET, "/ready")).await,
            "not ready: proxy\n"
        );
        proxy.set(true);
        assert_eq!(t.respond(&Method::GET, "/ready").status(), StatusCode::OK);

        t.start_shutdown();
        assert_eq!(
            t.respond(&Method::GET, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            t.respond(&Method::GET, "/health").status(),
            StatusCode::OK,
            "alive while draining"
        );

        let metrics = body(t.respond(&Method::GET, "/metrics")).await;
        assert!(
            metrics.contains("fairlead_test_events_total 1"),
            "{metrics}"
        );
        assert_eq!(
            t.respond(&Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            t.respond(&Method::GET, "/other").status(),
            StatusCode::NOT_FOUND
        );
        assert!(metrics.contains("fairlead_component_generation{component=\"dns\"} -1"));

        // Generations: the model's, and what each component says it serves.
        writer.set_synced();
        let generation = writer.snapshot().generation;
        dns.serving(generation);
        let status: serde_json::Value =
            serde_json::from_str(&body(t.respond(&Method::GET, "/status")).await).unwrap();
        assert_eq!(status["model_generation"], generation);
        assert_eq!(status["model_synced"], true);
        assert_eq!(status["shutting_down"], true);
        assert_eq!(status["components"][0]["name"], "dns");
        assert_eq!(status["components"][0]["generation"], generation);
        assert_eq!(status["components"][1]["name"], "proxy");
        assert!(status["components"][1]["generation"].is_null());
        let metrics = body(t.respond(&Method::GET, "/metrics")).await;
        assert!(
            metrics.contains(&format!(
                "fairlead_component_generation{{component=\"dns\"}} {generation}"
            )),
            "{metrics}"
        );
    }

    /// With the gateway in this process, `/status` lists the Gateways of
    /// its controller, their listeners and the routes they accepted — and
    /// `fairlead status` prints them.
    #[tokio::test]
    async fn status_lists_gateways_listeners_and_attached_routes() {
        use fairlead_model::{Change, decode};
        use serde_json::json;
        let objects = [
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": "fairlead"},
                   "spec": {"controllerName": fairlead_model::DEFAULT_GATEWAY_CONTROLLER}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "infra"},
            "spec": {"gatewayClassName": "fairlead", "listeners": [
                {"name": "web", "port": 80, "protocol": "HTTP",
                 "allowedRoutes": {"namespaces": {"from": "All"}}},
                {"name": "secure", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "missing"}]}},
            ]}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "shop", "namespace": "shop"},
                   "spec": {"parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "web"}],
                            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
        ];
        let (mut writer, model) = fairlead_model::ModelWriter::new();
        writer.replace_all(
            objects
                .into_iter()
                .map(|o| Change::Upsert {
                    object: decode(o).unwrap(),
                    origin: None,
                })
                .collect(),
            Vec::new(),
            true,
        );
        let selection = fairlead_ingress::router::ClassSelection {
            class: "fairlead".to_owned(),
            default_backend: None,
            gateway_api: fairlead_ingress::gateway_api::Selection::default(),
        };
        let t = Telemetry::new(
            Registry::default(),
            Vec::new(),
            model,
            Live {
                ingress: Some((fairlead_ingress::explain::View::default(), selection)),
                ..Live::default()
            },
        );
        let status: serde_json::Value =
            serde_json::from_str(&body(t.respond(&Method::GET, "/status")).await).unwrap();
        let gateway = &status["gateways"][0];
        assert_eq!(gateway["gateway"], "infra/edge", "{status}");
        assert_eq!(gateway["listeners"][0]["name"], "web");
        assert_eq!(gateway["listeners"][0]["attached_routes"], 1);
        assert_eq!(gateway["listeners"][0]["programmed"], true, "{status}");
        assert_eq!(gateway["listeners"][1]["programmed"], false, "{status}");
        assert!(
            !gateway["listeners"][1]["problems"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{status}"
        );
        assert_eq!(gateway["routes"], json!(["httproute shop/shop"]));
        let text = crate::render_runtime_status(&status);
        assert!(text.contains("gateway infra/edge"), "{text}");
        assert!(
            text.contains("  listener web attachedRoutes=1 (programmed)"),
            "{text}"
        );
        assert!(text.contains("  httproute shop/shop"), "{text}");

        // Without the gateway here, no Gateway part.
        let (_writer, model) = fairlead_model::ModelWriter::new();
        let t = Telemetry::new(Registry::default(), Vec::new(), model, Live::default());
        let status: serde_json::Value =
            serde_json::from_str(&body(t.respond(&Method::GET, "/status")).await).unwrap();
        assert!(status.get("gateways").is_none(), "{status}");
    }
}
