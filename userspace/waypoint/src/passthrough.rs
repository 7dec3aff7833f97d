//! Connections to an L7 Service port that do not speak HTTP (see `sniff`):
//! relayed byte for byte to an endpoint of the Service port the client
//! dialled, chosen as the L4 path chooses (one on this node if there is
//! one), so that a TLS, database or server-first client works as it would
//! without routes. Its routes do not apply to it.

use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::{
    metrics::ConnectionKind,
    proxy::{dice, Conn, Proxy},
    sniff::Reason,
};

/// Relays `client` until both directions end.
pub async fn relay(proxy: &Proxy, mut client: TcpStream, conn: Conn, reason: Reason) {
    proxy.metrics().passthrough(reason);
    let _open = proxy.metrics().connection(ConnectionKind::Passthrough);
    let endpoint = proxy
        .routes()
        .current()
        .passthrough(conn.destination, &mut dice);
    let Some(endpoint) = endpoint else {
        warn!(client = %conn.client, destination = %conn.destination, reason = reason.as_str(), "not HTTP, and no endpoint to pass it to: closed");
        return;
    };
    debug!(client = %conn.client, destination = %conn.destination, %endpoint, reason = reason.as_str(), "not HTTP: passed through");
    let mut upstream = match proxy.clients().connect(endpoint).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(client = %conn.client, %endpoint, error = %e, "pass-through connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(client = %conn.client, %endpoint, error = %e, "pass-through ended with an error");
    }
}
