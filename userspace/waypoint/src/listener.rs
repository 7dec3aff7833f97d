//! Listening sockets and the accept loop: each accepted connection is
//! sniffed (`sniff`), then served by hyper (HTTP/1.1 with keep-alive, or
//! HTTP/2 with prior knowledge, told apart by the first bytes) with the
//! destination its client dialled, or passed through (`passthrough`).
//! Connections count against `--max-connections`; an HTTP one ends when
//! its client is too slow to send a request head, or idle too long
//! (`idle`), or on shutdown, gracefully.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, warn};
use zerohop_routes::contract::UpstreamHttp;

use crate::{
    idle::Activity,
    limits::{timeout, Limits},
    metrics::ConnectionKind,
    passthrough,
    proxy::{Conn, Proxy},
    sniff::{sniff, Reason, Sniffed},
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

/// Serves the connections of every listener; counts them against
/// `--max-connections`.
pub struct Server {
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    /// How long a client that sends nothing is waited for, on a port that
    /// names no protocol, before it is passed through (`None`: as long as
    /// it takes).
    silent: Option<Duration>,
    header_read: Option<Duration>,
    idle: Option<Duration>,
    slots: Arc<Semaphore>,
    max_connections: u32,
    stop: watch::Receiver<bool>,
}

impl Server {
    /// Connections end (gracefully) once `stop` turns true.
    pub fn new(
        proxy: Arc<Proxy>,
        limits: &Limits,
        silent: Option<Duration>,
        stop: watch::Receiver<bool>,
    ) -> Server {
        let header_read = timeout(limits.header_read_timeout);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams);
        Server {
            proxy,
            builder,
            silent,
            header_read,
            idle: timeout(limits.client_idle_timeout),
            slots: Arc::new(Semaphore::new(limits.max_connections as usize)),
            max_connections: limits.max_connections,
            stop,
        }
    }

    /// Accepts and serves connections until `stop` turns true; at the
    /// connection limit, accepts none until one closes.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.clone();
        let mut full = Throttled::default();
        let mut failing = Throttled::default();
        let mut backoff = MIN_BACKOFF;
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if full.due() {
                        warn!(max = self.max_connections, "connection limit reached: accepting no more until one closes (logged once a minute)");
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        slot = self.slots.clone().acquire_owned() => {
                            slot.expect("the semaphore is never closed")
                        }
                    }
                }
            };
            let accepted = tokio::select! {
                // The only change is to "stop" (or the sender is gone).
                _ = stop.changed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff = MIN_BACKOFF;
                    accepted
                }
                Err(e) => {
                    // Typically EMFILE (out of file descriptors), or a
                    // connection reset before accept: back off, more each
                    // time, rather than spin, and do not log each one.
                    if failing.due() {
                        warn!(error = %e, "accept failed; backing off (logged once a minute)");
                    } else {
                        debug!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let conn = Conn {
                client: peer.ip().to_canonical(),
                destination: destination(&stream),
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().serve(stream, conn, slot));
        }
    }

    /// Waits until every connection has ended.
    pub async fn drained(&self) {
        let _all = self.slots.acquire_many(self.max_connections).await;
    }

    /// Serves one accepted connection, which holds `_slot` until it ends.
    async fn serve(self: Arc<Self>, stream: TcpStream, conn: Conn, _slot: OwnedSemaphorePermit) {
        let proxy = &self.proxy;
        // A port that names HTTP is waited on: its client speaks first; but
        // only as long as it may take to send a request head.
        let http_port = match proxy.routes().current().port_http(conn.destination) {
            UpstreamHttp::AsClient => false,
            UpstreamHttp::Http1 | UpstreamHttp::H2c => true,
        };
        let wait = if http_port {
            self.header_read
        } else {
            self.silent
        };
        match sniff(&stream, wait).await {
            Sniffed::Http => {}
            Sniffed::Closed => return,
            Sniffed::Other(Reason::Silent) if http_port => {
                debug!(client = %conn.client, destination = %conn.destination, "no request head in time: closed");
                return;
            }
            Sniffed::Other(reason) => {
                // Within the drain: a relay ends when its peers do.
                return passthrough::relay(proxy, stream, conn, reason).await;
            }
        }
        let _open = proxy.metrics().connection(ConnectionKind::Http);
        let activity = Activity::new();
        let idle = activity.expired(self.header_read, self.idle);
        let service = service_fn({
            let proxy = proxy.clone();
            move |request| {
                let proxy = proxy.clone();
                let in_flight = activity.begin();
                async move {
                    let response = proxy.handle(request, conn).await;
                    Ok::<_, std::convert::Infallible>(in_flight.until_sent(response))
                }
            }
        });
        let served = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(served, idle);
        let mut stop = self.stop.clone();
        let mut closing = false;
        let ended = loop {
            tokio::select! {
                ended = served.as_mut() => break ended,
                () = idle.as_mut(), if !closing => {
                    debug!(client = %conn.client, destination = %conn.destination, "idle: closed");
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stop.wait_for(|stop| *stop), if !closing => {
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = ended {
            debug!(client = %conn.client, destination = %conn.destination, error = %e, "connection ended with an error");
        }
    }
}

/// The first wait after an accept fails, and the longest.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a repeated warning is due: once a minute at most.
#[derive(Default)]
struct Throttled(Option<Instant>);

impl Throttled {
    fn due(&mut self) -> bool {
        let due = self
            .0
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(60));
        if due {
            self.0 = Some(Instant::now());
        }
        due
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
