//! The upstream side: pooled clients for every endpoint and mirror, one
//! speaking HTTP/1.1 (keep-alive) and one HTTP/2 over cleartext (h2c, with
//! prior knowledge, streams multiplexed on one connection per endpoint).
//! A request goes upstream in the version its client spoke: a client that
//! speaks h2c (every gRPC client) knows its server does. Their sockets carry
//! the waypoint's mark: zerohop's connect hook leaves marked sockets alone,
//! so the waypoint's own connects (to an endpoint, or to a ClusterIP) are
//! never sent back to the waypoint.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::{Request, Uri, Version};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    body::Body,
    limits::{timeout, Limits},
};

/// A connect that takes longer fails the request with 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Pool = Client<MarkedConnector, Body>;

/// The clients every request and mirror goes through, one per version.
#[derive(Clone)]
pub struct Clients {
    http1: Pool,
    http2: Pool,
    mark: u32,
}

impl Clients {
    /// Clients whose sockets carry `mark` (0: none), which keep idle
    /// connections as `limits` say.
    pub fn new(mark: u32, limits: &Limits) -> Clients {
        // The pool closes a connection idle longer than its timeout when it
        // sweeps, once per timeout: half the flag closes each by the flag.
        let idle_timeout = timeout(limits.upstream_idle_timeout).map(|idle| idle / 2);
        let pool = |http2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle_timeout)
                .pool_max_idle_per_host(limits.upstream_max_idle_per_host)
                .pool_timer(TokioTimer::new())
                .http2_only(http2)
                .build(MarkedConnector { mark })
        };
        Clients {
            http1: pool(false),
            http2: pool(true),
            mark,
        }
    }

    /// A marked connection to `addr`, for a connection passed through.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, self.mark))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Sends `request` in its version: HTTP/2 over h2c, anything else over
    /// HTTP/1.1.
    pub fn request(&self, request: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        if request.version() == Version::HTTP_2 {
            self.http2.request(request)
        } else {
            self.http1.request(request)
        }
    }
}

/// Connects to the `IP:port` of a request URI with a marked, no-delay socket.
#[derive(Debug, Clone, Copy)]
pub struct MarkedConnector {
    /// `SO_MARK`; 0 sets none.
    mark: u32,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mark = self.mark;
        Box::pin(async move {
            // The proxy only builds URIs of an endpoint address.
            let addr: SocketAddr = uri
                .authority()
                .map(hyper::http::uri::Authority::as_str)
                .unwrap_or_default()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}")))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, mark))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

async fn connect(addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if mark != 0 {
        SockRef::from(&socket).set_mark(mark)?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use tower_service::Service;

    use super::*;

    #[tokio::test]
    async fn connects_to_the_uri_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connector = MarkedConnector { mark: 0 };
        let uri: Uri = format!("http://{addr}/x").parse().unwrap();
        let stream = connector.call(uri).await.unwrap();
        assert_eq!(stream.inner().peer_addr().unwrap(), addr);
        assert!(stream.inner().nodelay().unwrap());
        let bad: Uri = "http://example.com/".parse().unwrap();
        assert!(connector.call(bad).await.is_err());
    }
}
