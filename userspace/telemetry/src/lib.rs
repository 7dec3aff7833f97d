//! What zerohop's binaries (the agent and the waypoint) share to be
//! observed: the logging setup ([`init_logging`]), and the HTTP endpoints
//! `/healthz` (the process serves), `/readyz` (what "ready" means is each
//! binary's: [`Health::not_ready`]) and `/metrics` (Prometheus text
//! exposition of the binary's `Registry`, encoded at each scrape).
//!
//! hyper serves them over HTTP/1.1, one request a connection;
//! prometheus-client encodes the metrics.

use std::{convert::Infallible, fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use prometheus_client;
use prometheus_client::{encoding::prometheus_text, registry::Registry};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Logs to stderr, at the level `RUST_LOG` sets (`info` by default), in
/// colour on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The address of the endpoints; `None`: serve none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthAddr(pub Option<SocketAddr>);

/// [`HealthAddr`] as a flag gives it: `ADDR:PORT`, or `off`.
pub fn parse_health_addr(text: &str) -> Result<HealthAddr, String> {
    match text {
        "off" => Ok(HealthAddr(None)),
        _ => text
            .parse()
            .map(|addr| HealthAddr(Some(addr)))
            .map_err(|e| format!("{text:?}: {e}")),
    }
}

/// What a binary's endpoints answer.
pub trait Health: Send + Sync + 'static {
    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<String>;
    /// The metrics, encoded at each scrape.
    fn registry(&self) -> &Registry;
}

/// Binds `addr` (logging the bound address, useful with port 0) and returns
/// the server, which serves the endpoints until it is dropped.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<dyn Health>,
) -> anyhow::Result<impl Future<Output = ()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health address {addr}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(serving(listener, health))
}

/// Answers the connections `listener` accepts until dropped.
pub fn serving(listener: TcpListener, health: Arc<dyn Health>) -> impl Future<Output = ()> {
    let mut http = http1::Builder::new();
    // One request a connection, whose headers come within 5 s: probes and
    // scrapes open a connection each.
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = Arc::clone(&health);
            let connection = http.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| {
                    let response = answer(&*health, &request);
                    async move { Ok::<_, Infallible>(response) }
                }),
            );
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "health connection");
                }
            });
        }
    }
}

/// The answer to one request.
pub fn answer<B>(health: &dyn Health, request: &Request<B>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain";
    let (code, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET, "/readyz") => match health.not_ready() {
            None => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{reason}\n")),
        },
        (&Method::GET, "/metrics") => match exposition(health.registry()) {
            Ok(text) => (StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "the metrics could not be encoded\n".to_owned(),
            ),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if code == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

/// The registry's metrics in the Prometheus text format (0.0.4): HELP and
/// TYPE once per metric, then its samples.
pub fn exposition(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}
