//! zerohop-waypoint: the node-local HTTP proxy for L7 Services.
//!
//! The kernel redirects connections to Services that carry HTTPRoutes to this
//! process. For each connection it learns the ClusterIP:port the client
//! dialled (`SO_ORIGINAL_DST`, answered by zerohop's cgroup getsockopt
//! program), and for each request asks `zerohop_routes::router::Router` what
//! to do: answer directly, or forward to an endpoint with edits.
//!
//! - [`access_log`]: the optional JSON line per request;
//! - [`body`]: the body type requests and responses share on both sides;
//! - [`config`]: the router, reloaded when the agent rewrites its JSON file;
//! - [`grpc`]: the waypoint's own answers to gRPC calls, as gRPC statuses;
//! - [`idle`]: when a client connection has been idle too long;
//! - [`limits`]: the flags bounding connections, idle time and memory;
//! - [`listener`]: listening sockets, accept loop, original destination;
//! - [`metrics`]: what `/metrics` and `/readyz` tell;
//! - [`passthrough`]: connections that do not speak HTTP, relayed as bytes;
//! - [`proxy`]: one request: decision, forwarding, mirrors, timeouts;
//! - [`sniff`]: whether a connection speaks HTTP, from its first bytes;
//! - [`upstream`]: the pooled upstream clients and their marked sockets.

mod access_log;
mod body;
mod config;
mod grpc;
mod idle;
mod limits;
mod listener;
mod metrics;
mod passthrough;
mod proxy;
mod sniff;
mod upstream;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use zerohop_routes::contract::{parse_mark, DEFAULT_CONFIG_PATH, DEFAULT_MARK};
use zerohop_telemetry::{parse_health_addr, HealthAddr};

/// How long open connections get to finish their requests on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Node-local HTTP proxy applying Gateway API HTTPRoutes to L7 Services.
#[derive(Debug, Parser)]
#[command(name = "zerohop-waypoint", version)]
struct Cli {
    /// Address to listen on (repeatable: one listener per address; an IPv6
    /// listener takes IPv6 connections only).
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true)]
    listen: Vec<SocketAddr>,

    /// The waypoint config (JSON) the agent writes; polled for changes.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    /// SO_MARK set on every upstream socket, so that the kernel does not send
    /// the waypoint's own connects back to it (must match the agent's
    /// --waypoint-mark; 0 sets none).
    #[arg(long, value_name = "N", default_value = DEFAULT_MARK, value_parser = parse_mark)]
    mark: u32,

    /// Interval between two checks of the config file, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    poll_ms: u64,

    /// How long, in milliseconds, a client that sends nothing after
    /// connecting to an L7 Service port is waited for before it is taken
    /// for the client of a server-first protocol (one whose server speaks
    /// first: SMTP, MySQL, …) and passed through to an endpoint at L4,
    /// without its routes. 0 waits as long as it takes. Ports whose
    /// appProtocol names HTTP are always waited on.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    silent_client_ms: u64,

    /// Address for /healthz, /readyz (the agent's config has been read) and
    /// /metrics (port 0 picks a free one); "off" serves none.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:9878", value_parser = parse_health_addr)]
    health_addr: HealthAddr,

    /// Node name, for logs.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node: Option<String>,

    /// Worker threads of the runtime that serves every connection (0: one
    /// per CPU).
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,

    #[command(flatten)]
    limits: limits::Limits,

    /// Writes one JSON line per request (time, route, rule, backend,
    /// method, path, status, duration, request and response bytes,
    /// client) to "stdout" or to the file at PATH (appended to). Off when
    /// not given.
    #[arg(long, value_name = "stdout|PATH")]
    access_log: Option<access_log::Target>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    zerohop_telemetry::init_logging();
    limits::raise_open_file_limit(cli.limits.max_connections);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.workers > 0 {
        runtime.worker_threads(cli.workers);
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let node = cli.node.as_deref().unwrap_or("");
    // Before anything else, so that a stop signal always ends in a drain.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let routes = config::Routes::default();
    let mut watcher = config::Watcher::new(cli.config.clone(), routes.clone());
    watcher.poll();
    tokio::spawn(watcher.run(Duration::from_millis(cli.poll_ms.max(1))));
    let metrics = metrics::Metrics::new(routes.clone());
    if let HealthAddr(Some(addr)) = cli.health_addr {
        tokio::spawn(zerohop_telemetry::serve(addr, Arc::new(metrics.clone())).await?);
    }
    let state = Arc::new(proxy::Proxy::new(
        routes,
        upstream::Clients::new(cli.mark, &cli.limits),
        metrics,
        cli.limits.replay_body_limit,
        cli.access_log
            .as_ref()
            .map(access_log::AccessLog::open)
            .transpose()?,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = Arc::new(listener::Server::new(
        state,
        &cli.limits,
        (cli.silent_client_ms > 0).then(|| Duration::from_millis(cli.silent_client_ms)),
        stop_rx,
    ));
    let mut acceptors = Vec::new();
    for addr in &cli.listen {
        let listener = listener::bind(*addr)?;
        info!(%addr, node, mark = %format_args!("{:#x}", cli.mark), "listening");
        acceptors.push(tokio::spawn(server.clone().accept_loop(listener)));
    }

    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, node, "shutting down");
    let _ = stop_tx.send(true);
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, server.drained())
        .await
        .is_err()
    {
        info!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "connections still open after the drain timeout; closing them"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn marks() {
        assert_eq!(parse_mark("0x7a68"), Ok(0x7a68));
        assert_eq!(parse_mark("31336"), Ok(31336));
        assert!(parse_mark("x").is_err());
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["zerohop-waypoint", "--listen", "127.0.0.1:15001"]).unwrap();
        assert_eq!(cli.mark, 0x7a68);
        assert_eq!(cli.poll_ms, 250);
        assert_eq!(cli.silent_client_ms, 200);
        assert_eq!(
            cli.health_addr,
            HealthAddr(Some("0.0.0.0:9878".parse().unwrap()))
        );
        assert_eq!(cli.config, PathBuf::from("/run/zerohop/waypoint.json"));
        assert_eq!(cli.workers, 0);
        let limits = &cli.limits;
        assert_eq!(limits.header_read_timeout, Duration::from_secs(30));
        assert_eq!(limits.client_idle_timeout, Duration::from_secs(300));
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.max_concurrent_streams, 128);
        assert_eq!(limits.upstream_idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.upstream_max_idle_per_host, 64);
        assert_eq!(limits.replay_body_limit, 65_536);
        assert_eq!(cli.access_log, None);
        let cli = Cli::try_parse_from([
            "zerohop-waypoint",
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:1",
        ])
        .unwrap();
        assert_eq!(cli.listen.len(), 2);
        Cli::command().debug_assert();
    }
}
