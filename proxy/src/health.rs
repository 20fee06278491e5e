//! The `healthCheckNodePort` servers: for every Service with `externalTrafficPolicy: Local`
//! and a `spec.healthCheckNodePort`, an HTTP server on that port of the node that tells a
//! cloud load balancer whether this node has somewhere local to send the Service's traffic,
//! as kube-proxy's does:
//!
//! - `200` when the node has at least one ready endpoint of the Service and the proxy
//!   serves the synced model, `503` otherwise (terminating endpoints do not count: their
//!   node should be drained);
//! - a JSON body `{"service": {"namespace", "name"}, "localEndpoints": n,
//!   "serviceProxyHealthy": bool}`, with `Content-Type: application/json`,
//!   `X-Content-Type-Options: nosniff` and `X-Load-Balancing-Endpoint-Weight: n`;
//! - any method, any path.
//!
//! [`HealthServers`] is a reconciler: from each model snapshot it computes the servers there
//! should be ([`desired`]), starts and stops listeners as Services come, go or change port,
//! and updates the counts the running servers answer with. Only Services that changed since
//! the last snapshot are looked at. A port that cannot be bound (in use) is retried.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fairlead_model::{Locality, Purpose, Ready, Service, ServiceKey, Snapshot, TrafficPolicy};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

/// The ready endpoints of `service` on the node `node_name`: what the health server of the
/// Service reports (kube-proxy's "local ready endpoints", the model's
/// [`Purpose::HealthCheck`] selection). An endpoint counts once however many addresses
/// (families) its Pod has; without a node name nothing is local.
#[must_use]
pub fn local_ready_endpoints(service: &Service, node_name: Option<&str>) -> usize {
    let here = Locality {
        node: node_name,
        zone: None,
    };
    let mut seen = BTreeSet::new();
    service
        .select_endpoints(None, Purpose::HealthCheck, here)
        .endpoints
        .into_iter()
        .filter(|e| match &e.target_ref {
            Some(target) => seen.insert(format!(
                "{}/{}/{}",
                target.kind, target.namespace, target.name
            )),
            None => seen.insert(e.address.to_string()),
        })
        .count()
}

/// The health server `service` should have on `node_name`: its port and the count it
/// answers with, or `None` when the Service has none (not `externalTrafficPolicy: Local`,
/// or no `healthCheckNodePort`).
#[must_use]
pub fn desired(service: &Service, node_name: Option<&str>) -> Option<(u16, usize)> {
    if service.external_traffic_policy != TrafficPolicy::Local {
        return None;
    }
    let port = service.health_check_node_port?;
    Some((port, local_ready_endpoints(service, node_name)))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, Default)]
struct HealthMetrics {
    servers: Gauge,
    requests: Family<CodeLabels, Counter>,
}

impl HealthMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        let r = registry.sub_registry_with_prefix("proxy");
        r.register(
            "health_check_servers",
            "healthCheckNodePort servers listening (Services with externalTrafficPolicy Local)",
            this.servers.clone(),
        );
        r.register(
            "health_check_requests",
            "Requests answered by the healthCheckNodePort servers, by HTTP status",
            this.requests.clone(),
        );
        this
    }
}

/// What a running server answers from.
#[derive(Debug)]
struct ServerState {
    key: ServiceKey,
    local: AtomicUsize,
}

#[derive(Debug)]
struct Server {
    port: u16,
    state: Arc<ServerState>,
    stop: CancellationToken,
}

/// The health servers of one node, reconciled from model snapshots.
#[derive(Debug)]
pub struct HealthServers {
    node_name: Option<String>,
    addresses: Vec<IpAddr>,
    proxy_healthy: Ready,
    servers: BTreeMap<ServiceKey, Server>,
    ports: BTreeMap<u16, ServiceKey>,
    /// Services whose server could not start (port taken): tried again at every sync.
    failed: BTreeSet<ServiceKey>,
    applied: Option<u64>,
    metrics: HealthMetrics,
    shutdown: CancellationToken,
}

impl HealthServers {
    /// Servers for the node `node_name`, listening on `addresses` (each server binds its
    /// port on every one; `::` is every address of both families), answering
    /// `serviceProxyHealthy` from `proxy_healthy`. Metrics go under `fairlead_proxy_*`.
    #[must_use]
    pub fn new(
        node_name: Option<String>,
        addresses: Vec<IpAddr>,
        proxy_healthy: Ready,
        registry: &mut Registry,
    ) -> Self {
        Self {
            node_name,
            addresses,
            proxy_healthy,
            servers: BTreeMap::new(),
            ports: BTreeMap::new(),
            failed: BTreeSet::new(),
            applied: None,
            metrics: HealthMetrics::register(registry),
            shutdown: CancellationToken::new(),
        }
    }

    /// The ports served now, with their Service.
    #[must_use]
    pub fn ports(&self) -> Vec<(u16, ServiceKey)> {
        self.ports.iter().map(|(p, k)| (*p, k.clone())).collect()
    }

    /// The generation of the last snapshot applied.
    #[must_use]
    pub fn applied_generation(&self) -> Option<u64> {
        self.applied
    }

    /// Brings the servers to what `snapshot` asks for. Must run inside a tokio runtime
    /// (servers are tasks).
    pub fn sync(&mut self, snapshot: &Snapshot) {
        let changes = snapshot.changes_since(self.applied);
        let mut todo: BTreeSet<ServiceKey> = if changes.everything() {
            snapshot
                .services
                .keys()
                .cloned()
                .chain(self.servers.keys().cloned())
                .collect()
        } else {
            changes.services().map(|(key, _)| key.clone()).collect()
        };
        todo.extend(std::mem::take(&mut self.failed));
        // Stops first, so a port moving from one Service to another is free for the start.
        let mut starts = Vec::new();
        for key in todo {
            let want = snapshot
                .services
                .get(&key)
                .and_then(|s| desired(s, self.node_name.as_deref()));
            match (self.servers.get(&key), want) {
                (Some(server), Some((port, local))) if server.port == port => {
                    server.state.local.store(local, Ordering::Relaxed);
                }
                (Some(_), want) => {
                    self.stop(&key);
                    if let Some((port, local)) = want {
                        starts.push((key, port, local));
                    }
                }
                (None, Some((port, local))) => starts.push((key, port, local)),
                (None, None) => {}
            }
        }
        for (key, port, local) in starts {
            self.start(key, port, local);
        }
        self.applied = Some(snapshot.generation);
        self.metrics
            .servers
            .set(i64::try_from(self.servers.len()).unwrap_or(i64::MAX));
    }

    /// Stops every server.
    pub fn shutdown(&mut self) {
        self.shutdown.cancel();
        self.servers.clear();
        self.ports.clear();
        self.metrics.servers.set(0);
    }

    fn stop(&mut self, key: &ServiceKey) {
        if let Some(server) = self.servers.remove(key) {
            server.stop.cancel();
            self.ports.remove(&server.port);
            info!(service = %key, port = server.port, "health check server stopped");
        }
    }

    fn start(&mut self, key: ServiceKey, port: u16, local: usize) {
        if let Some(owner) = self.ports.get(&port) {
            warn!(service = %key, port, owner = %owner, "healthCheckNodePort already served for another Service");
            self.failed.insert(key);
            return;
        }
        let mut listeners = Vec::new();
        for address in &self.addresses {
            let at = SocketAddr::new(*address, port);
            match bind(at) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    warn!(service = %key, address = %at, error = %e, "cannot listen for health checks; retrying at the next sync");
                    self.failed.insert(key);
                    return;
                }
            }
        }
        let state = Arc::new(ServerState {
            key: key.clone(),
            local: AtomicUsize::new(local),
        });
        let stop = self.shutdown.child_token();
        for listener in listeners {
            let address = listener.local_addr().ok();
            let span = info_span!("health_check", service = %key, address = ?address);
            tokio::spawn(
                serve(
                    listener,
                    state.clone(),
                    self.proxy_healthy.clone(),
                    self.metrics.requests.clone(),
                    stop.clone(),
                )
                .instrument(span),
            );
        }
        info!(service = %key, port, local_endpoints = local, "health check server started");
        self.ports.insert(port, key.clone());
        self.servers.insert(key, Server { port, state, stop });
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn bind(at: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = match std::net::TcpListener::bind(at) {
        // `::` on a node without IPv6: every IPv4 address instead.
        Err(e)
            if at.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            std::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                at.port(),
            ))?
        }
        other => other?,
    };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    proxy_healthy: Ready,
    requests: Family<CodeLabels, Counter>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let proxy_healthy = proxy_healthy.clone();
        let requests = requests.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move {
                let service =
                    hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
                        let (response, code) = answer(&state, proxy_healthy.get());
                        requests.get_or_create(&CodeLabels { code }).inc();
                        async move { Ok::<_, Infallible>(response) }
                    });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = stop.cancelled() => {}
                    result = connection => {
                        if let Err(e) = result {
                            debug!(error = %e, "health check connection failed");
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }
}

/// The response for the current state, and its status code.
fn answer(state: &ServerState, proxy_healthy: bool) -> (Response<Full<Bytes>>, u16) {
    let local = state.local.load(Ordering::Relaxed);
    let body = body(&state.key, local, proxy_healthy);
    let status = if local > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let response = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Load-Balancing-Endpoint-Weight", local.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    (response, status.as_u16())
}

/// kube-proxy's body.
fn body(key: &ServiceKey, local: usize, proxy_healthy: bool) -> String {
    let value = serde_json::json!({
        "service": {"namespace": key.namespace, "name": key.name},
        "localEndpoints": local,
        "serviceProxyHealthy": proxy_healthy,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::sync::Arc;

    use fairlead_model::{Change, ModelWriter, ServiceKey, Snapshot, decode};

    use super::{ServerState, answer, desired, local_ready_endpoints};

    fn snapshot(yaml: &str) -> Arc<Snapshot> {
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(changes(yaml), Vec::new(), true);
        writer.snapshot()
    }

    fn changes(yaml: &str) -> Vec<Change> {
        serde_norway::Deserializer::from_str(yaml)
            .map(|doc| {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
                Change::Upsert {
                    object: decode(value).expect("object"),
                    origin: None,
                }
            })
            .collect()
    }

    /// A LoadBalancer Service `lb` with the given traffic policy and endpoints
    /// (`address node ready terminating pod`).
    fn model(
        policy: &str,
        hcnp: bool,
        endpoints: &[(&str, &str, bool, bool, &str)],
    ) -> Arc<Snapshot> {
        let mut eps = String::new();
        for (address, node, ready, terminating, pod) in endpoints {
            let _ = write!(
                eps,
                "  - addresses: [\"{address}\"]\n    nodeName: {node}\n    conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}\n    targetRef: {{kind: Pod, namespace: ns, name: {pod}}}\n"
            );
        }
        if endpoints.is_empty() {
            eps.push_str("  []\n");
        }
        let hcnp = if hcnp {
            "  healthCheckNodePort: 32000\n"
        } else {
            ""
        };
        snapshot(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: ns}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalTrafficPolicy: {policy}\n{hcnp}  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lb-1, namespace: ns, labels: {{kubernetes.io/service-name: lb}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{eps}"
        ))
    }

    fn key() -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: "lb".into(),
        }
    }

    #[test]
    fn counts_ready_endpoints_on_this_node_only() {
        let s = model(
            "Local",
            true,
            &[
                ("10.0.0.1", "node-a", true, false, "p1"),
                ("10.0.0.2", "node-a", false, true, "p2"),
                ("10.0.0.3", "node-b", true, false, "p3"),
                ("10.0.0.4", "node-a", true, false, "p4"),
                ("10.0.0.5", "node-a", false, false, "p5"),
            ],
        );
        let service = &s.services[&key()];
        assert_eq!(local_ready_endpoints(service, Some("node-a")), 2);
        assert_eq!(local_ready_endpoints(service, Some("node-b")), 1);
        assert_eq!(local_ready_endpoints(service, Some("node-c")), 0);
        assert_eq!(local_ready_endpoints(service, None), 0);
        assert_eq!(desired(service, Some("node-a")), Some((32000, 2)));
    }

    #[test]
    fn only_terminating_local_endpoints_count_zero() {
        let s = model("Local", true, &[("10.0.0.2", "node-a", false, true, "p2")]);
        assert_eq!(
            desired(&s.services[&key()], Some("node-a")),
            Some((32000, 0))
        );
    }

    #[test]
    fn cluster_policy_or_no_port_has_no_server() {
        let s = model(
            "Cluster",
            true,
            &[("10.0.0.1", "node-a", true, false, "p1")],
        );
        assert_eq!(desired(&s.services[&key()], Some("node-a")), None);
        let s = model("Local", false, &[("10.0.0.1", "node-a", true, false, "p1")]);
        assert_eq!(desired(&s.services[&key()], Some("node-a")), None);
    }

    /// The reconciler starts a server for the Service, it answers over TCP, and the
    /// metrics count servers and requests by code; a Service that changes to
    /// `externalTrafficPolicy: Cluster` loses its server.
    #[tokio::test]
    async fn serves_counts_and_stops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut registry = prometheus_client::registry::Registry::default();
        let ready = fairlead_model::Ready::new();
        ready.set(true);
        let mut servers = super::HealthServers::new(
            Some("node-a".into()),
            vec!["127.0.0.1".parse().expect("ip")],
            ready,
            &mut registry,
        );
        let yaml = |policy: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: ns}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalTrafficPolicy: {policy}\n  healthCheckNodePort: {port}\n  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lb-1, namespace: ns, labels: {{kubernetes.io/service-name: lb}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n  - addresses: [10.0.0.1]\n    nodeName: node-a\n"
            )
        };
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(changes(&yaml("Local")), Vec::new(), true);
        servers.sync(&writer.snapshot());
        assert_eq!(servers.ports(), [(port, key())]);
        let response = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut text = String::new();
            stream.read_to_string(&mut text).expect("response");
            text
        })
        .await
        .expect("client");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("\"localEndpoints\": 1"), "{response}");
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &registry).expect("encode");
        assert!(
            metrics.contains("proxy_health_check_servers 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("proxy_health_check_requests_total{code=\"200\"} 1"),
            "{metrics}"
        );

        // The Service moves to eTP Cluster: its server goes.
        writer.apply(changes(&yaml("Cluster")));
        servers.sync(&writer.snapshot());
        assert!(servers.ports().is_empty());
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &registry).expect("encode");
        assert!(
            metrics.contains("proxy_health_check_servers 0"),
            "{metrics}"
        );
    }

    #[test]
    fn answers_like_kube_proxy() {
        let state = ServerState {
            key: key(),
            local: 2.into(),
        };
        let (response, code) = answer(&state, true);
        assert_eq!(code, 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-load-balancing-endpoint-weight"], "2");
        let (_, code) = answer(&state, false);
        assert_eq!(code, 503, "an unhealthy proxy fails the check");
        state.local.store(0, std::sync::atomic::Ordering::Relaxed);
        let (response, code) = answer(&state, true);
        assert_eq!(code, 503);
        assert_eq!(response.headers()["x-load-balancing-endpoint-weight"], "0");
        let body: serde_json::Value =
            serde_json::from_str(&super::body(&key(), 0, true)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "service": {"namespace": "ns", "name": "lb"},
                "localEndpoints": 0,
                "serviceProxyHealthy": true
            })
        );
    }
}
