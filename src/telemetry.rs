//! The smallest telemetry endpoint the long-running modes need: `/metrics`
//! (Prometheus text), `/health` (200 while the process runs) and `/ready`
//! (200 while every component is ready and the process is not shutting
//! down, 503 otherwise). HTTP/1.0-style, one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use fairlead_model::Ready;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

/// What `/ready` and `/health` report.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    /// Components that must all be ready.
    pub(crate) ready: Vec<Ready>,
    /// Set when shutdown begins (lameduck): `/ready` turns 503 at once.
    pub(crate) shutting_down: Arc<AtomicBool>,
}

impl Health {
    fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.ready.iter().all(Ready::get)
    }
}

/// Binds the telemetry address; the listener is served by [`serve`].
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the telemetry address {addr}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "telemetry listening (/metrics, /health, /ready)");
    Ok(listener)
}

/// Serves telemetry until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>, health: Health) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            if let Err(error) = respond(stream, &registry, &health).await {
                debug!(%peer, %error, "telemetry request failed");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, registry: &Registry, health: &Health) -> Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    })
    .await
    .context("reading the request")??;
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry)?;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        (b"GET", b"/health") => ("200 OK", "text/plain", "ok\n".to_owned()),
        (b"GET", b"/ready") if health.is_ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
        (b"GET", b"/ready") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_owned(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
