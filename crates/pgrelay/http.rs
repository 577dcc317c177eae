//! The operator-facing HTTP endpoint shared by every long-running command
//! (`stream`, `native run`, `replica monitor`): `GET /metrics` in the
//! Prometheus text exposition format and `GET /health` as JSON, HTTP 200
//! when healthy and 503 otherwise.
//!
//! Libraries only record through the `metrics` facade; the Prometheus
//! recorder is installed here, at the edge, once per process. The server
//! is deliberately tiny (HTTP/1.1, one request per connection, GET only):
//! it is scraped every few seconds and must never compete with the data
//! path. Health documents are built by the command from its own state and
//! must never contain a secret. Prometheus docs: "Exposition formats".

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What `/health` reports: whether everything is healthy, and the JSON
/// document describing it.
pub trait Health: Send + Sync + 'static {
    /// (healthy, document). Called once per request.
    fn health(&self) -> (bool, serde_json::Value);
}

impl<F> Health for F
where
    F: Fn() -> (bool, serde_json::Value) + Send + Sync + 'static,
{
    fn health(&self) -> (bool, serde_json::Value) {
        self()
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, which this binary
        // never does; the handle still renders (empty) in that case.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Binds `addr` now (so a busy port is reported before any work starts)
/// and returns the future that serves until `shutdown` resolves.
pub async fn bind(
    addr: SocketAddr,
    health: Arc<dyn Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another address with --listen"))?;
    let local = listener.local_addr()?;
    let handle = prometheus().clone();
    let serve = async move {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let health = health.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    respond(stream, &handle, &*health),
                )
                .await;
            });
        }
    };
    Ok((local, serve))
}

async fn respond(
    mut stream: tokio::net::TcpStream,
    prometheus: &PrometheusHandle,
    health: &dyn Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", prometheus.render()),
        ("GET", "/health") | ("GET", "/healthz") => {
            let (ok, doc) = health.health();
            (
                if ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                "application/json",
                serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
            )
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
