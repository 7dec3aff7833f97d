//! Listening sockets and the accept loop: each accepted connection is
//! sniffed (`sniff`), then served by hyper (HTTP/1.1 with keep-alive, or
//! HTTP/2 with prior knowledge, told apart by the first bytes) with the
//! destination its client dialled, or passed through (`passthrough`).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};
use zerohop_routes::contract::UpstreamHttp;

use crate::{
    metrics::ConnectionKind,
    passthrough,
    proxy::{Conn, Proxy},
    sniff::{sniff, Sniffed},
};

/// A listening socket for `addr`; an IPv6 one takes IPv6 connections only
/// (a dual-stack one would see IPv4 clients as `::ffff:a.b.c.d`).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Accepts and serves connections until `stop` turns true. `silent`: how
/// long a client that sends nothing is waited for, on a port that names no
/// protocol, before it is passed through (`None`: as long as it takes).
pub async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    graceful: Arc<GracefulShutdown>,
    silent: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // No timer: hyper then applies no server-side timeouts, so an idle
    // keep-alive connection stays open as long as the client keeps it (as
    // it would, talking to the backend directly), rather than being closed
    // by the 30 s header-read timeout that also runs between requests.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            // The only change is to "stop" (or the sender is gone).
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE, or a connection reset before accept:
                // back off a little rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = Conn {
            client: peer.ip().to_canonical(),
            destination: destination(&stream),
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A port that names HTTP is waited on: its client speaks first.
            let wait = match proxy.routes().current().port_http(conn.destination) {
                UpstreamHttp::AsClient => silent,
                UpstreamHttp::Http1 | UpstreamHttp::H2c => None,
            };
            match sniff(&stream, wait).await {
                Sniffed::Http => {}
                Sniffed::Closed => return,
                Sniffed::Other(reason) => {
                    // Within the drain: a relay ends when its peers do.
                    return passthrough::relay(&proxy, stream, conn, reason).await;
                }
            }
            let _open = proxy.metrics().connection(ConnectionKind::Http);
            let service = service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(request, conn).await) }
            });
            let served = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(served).await {
                debug!(client = %conn.client, destination = %conn.destination, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The ClusterIP:port the client dialled; the local address when the kernel
/// does not know it (no zerohop program attached, or a client that dialled
/// the waypoint directly).
fn destination(stream: &TcpStream) -> SocketAddr {
    static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
    let local = stream.local_addr();
    let original = original_dst(stream, matches!(local, Ok(SocketAddr::V6(_))));
    match (original, local) {
        (Ok(original), _) => canonical(original),
        (Err(e), Ok(local)) => {
            if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                warn!(error = %e, %local, "no original destination; using the local address (logged once)");
            } else {
                debug!(error = %e, %local, "no original destination; using the local address");
            }
            canonical(local)
        }
        (Err(e), Err(_)) => {
            warn!(error = %e, "neither original destination nor local address");
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The original destination the kernel keeps for the connection (zerohop's
/// getsockopt hook answers it): `SO_ORIGINAL_DST` at `SOL_IP`, or
/// `IP6T_SO_ORIGINAL_DST` at `SOL_IPV6`.
fn original_dst(stream: &TcpStream, v6: bool) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let original = if v6 {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    original
        .as_socket()
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_falls_back_to_the_local_address() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(destination(&server), addr);
        drop(client);
    }

    #[tokio::test]
    async fn ipv6_listeners_are_v6_only() {
        let Ok(listener) = bind("[::1]:0".parse().unwrap()) else {
            return; // no IPv6 loopback here
        };
        assert!(SockRef::from(&listener).only_v6().unwrap());
    }
}
