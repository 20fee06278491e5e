//! The smallest wiring of a long-running mode: the manifest source, a
//! telemetry endpoint, signals, and one component. (Stand-in until the
//! shared runtime of `fairlead node` lands.)

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use fairlead_model::source::ManifestDir;
use fairlead_model::{ModelWriter, Ready};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::IngressCommand;

/// Runs `future` on a multi-threaded runtime.
pub(crate) fn block_on<F: std::future::Future<Output = Result<ExitCode>>>(
    future: F,
) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(future)
}

/// `fairlead ingress`.
pub(crate) async fn ingress(command: IngressCommand) -> Result<ExitCode> {
    let Some(dir) = command.source.manifests else {
        bail!("--manifests DIR is required (the apiserver source is not built yet)");
    };
    let (writer, snapshots) = ModelWriter::new();
    let model = ManifestDir::new(&dir).watch(writer);
    let mut registry = Registry::default();
    let ready = Ready::new();
    let cancel = CancellationToken::new();
    let gateway = fairlead_ingress::run(
        command.ingress,
        fairlead_ingress::Context {
            snapshots,
            registry: &mut registry,
            ready: ready.clone(),
            cancel: cancel.clone(),
        },
    );
    let registry = Arc::new(registry);
    if let Some(addr) = command.telemetry_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("telemetry listener on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        info!(%addr, "telemetry: /metrics /health /ready");
        tokio::spawn(telemetry(listener, registry.clone(), ready.clone()));
    }
    tokio::spawn(signals(cancel.clone()));
    let mut gateway = tokio::spawn(gateway);
    tokio::pin!(model);
    let mut model_done = false;
    loop {
        tokio::select! {
            result = &mut model, if !model_done => {
                model_done = true;
                if let Err(e) = result {
                    error!(error = %e, "model source failed; shutting down");
                    cancel.cancel();
                }
            }
            result = &mut gateway => {
                return match result.context("the gateway task")? {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) => Err(e).context("ingress gateway"),
                };
            }
        }
    }
}

/// Cancels on SIGTERM or SIGINT.
async fn signals(cancel: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    cancel.cancel();
}

/// A minimal HTTP/1.0 responder for /metrics, /health and /ready.
async fn telemetry(listener: tokio::net::TcpListener, registry: Arc<Registry>, ready: Ready) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let registry = registry.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, content_type) = match path {
                "/metrics" => {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (
                            "200 OK",
                            text,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                        Err(_) => ("500 Internal Server Error", String::new(), "text/plain"),
                    }
                }
                "/health" => ("200 OK", "ok\n".to_owned(), "text/plain"),
                "/ready" if ready.get() => ("200 OK", "ready\n".to_owned(), "text/plain"),
                "/ready" => (
                    "503 Service Unavailable",
                    "not ready\n".to_owned(),
                    "text/plain",
                ),
                _ => ("404 Not Found", String::new(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.0 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
