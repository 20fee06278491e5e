//! The one telemetry listener of a fairlead process: `/metrics` (Prometheus
//! text format), `/health` (alive) and `/ready` (every enabled component
//! serves the synced model, and the process is not shutting down).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use fairlead_model::Ready;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What the telemetry endpoints report on.
#[derive(Debug)]
pub(crate) struct Telemetry {
    registry: Registry,
    components: Vec<(&'static str, Ready)>,
    shutting_down: AtomicBool,
}

impl Telemetry {
    /// Metrics from `registry`; readiness from `components`.
    pub(crate) fn new(registry: Registry, components: Vec<(&'static str, Ready)>) -> Self {
        Self {
            registry,
            components,
            shutting_down: AtomicBool::new(false),
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
                "not found; try /metrics, /health or /ready\n".to_owned(),
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
        info!(%addr, "telemetry listening (/metrics, /health, /ready)");
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
                    let response = telemetry.respond(request.method(), request.uri().path());
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
        let t = Telemetry::new(
            registry,
            vec![("dns", dns.clone()), ("proxy", proxy.clone())],
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
    }
}
