//! One request: ask the router, then answer directly or forward upstream.
//!
//! Forwarding goes in the HTTP version of the backend's Service port
//! (`appProtocol`), else in the one the client spoke (HTTP/2 as h2c, see
//! `upstream`), with the router's request headers (less hop-by-hop
//! ones, but for `te: trailers` over HTTP/2, which gRPC requires), path and
//! Host; bodies and their trailers stream both ways, except that a request
//! with mirrors or a retry policy has the first bytes of its body read
//! first, up to the replay body limit: a body that ends within them is
//! copied to each mirror and sent again on a retry, a longer one is neither
//! mirrored nor retried. Timeouts: `backend_timeout` bounds one upstream
//! attempt and `request_timeout` the whole exchange, retries and their
//! waits included, both up to the response head (the body then streams);
//! either expiring answers 504. A client whose request body fails
//! (malformed, cut short) gets 400.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, TE},
    http::uri::PathAndQuery,
    HeaderMap, Request, Response, StatusCode, Uri, Version,
};
use tracing::{debug, warn};
use zerohop_routes::{
    contract::UpstreamHttp,
    filters::apply_header_modifier,
    model::HeaderModifier,
    request::RequestHead,
    router::{self, Decision, Forward, Upstream},
};

use crate::{
    access_log::{AccessLog, Entry},
    body::{from_client, read_ahead, Body, BoxError, ReadAhead, Received, Replay},
    config::Routes,
    grpc,
    metrics::{Answerer, Metrics, RetryReason, UpstreamError},
    upstream::Clients,
};

/// A mirror's exchange is abandoned after this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection-level headers: they describe one hop, never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// What a request's connection tells.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's IP (the peer address).
    pub client: IpAddr,
    /// The ClusterIP:port the client dialled.
    pub destination: SocketAddr,
}

pub struct Proxy {
    routes: Routes,
    client: Clients,
    metrics: Metrics,
    /// The longest request body kept whole, for mirrors and retries.
    replay_body_limit: usize,
    access_log: Option<Arc<AccessLog>>,
}

impl Proxy {
    pub fn new(
        routes: Routes,
        client: Clients,
        metrics: Metrics,
        replay_body_limit: usize,
        access_log: Option<AccessLog>,
    ) -> Proxy {
        Proxy {
            routes,
            client,
            metrics,
            replay_body_limit,
            access_log: access_log.map(Arc::new),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn clients(&self) -> &Clients {
        &self.client
    }

    /// Answers one request; errors become status codes.
    pub async fn handle(&self, mut request: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = Instant::now();
        let grpc_call = grpc::is_grpc(request.headers());
        let head = request_head(&mut request);
        let (method, path) = (head.method.clone(), head.path.clone());
        // The head's headers become the forwarded request's, not copied.
        let decision =
            self.routes
                .current()
                .decide_owned(conn.destination, conn.client, head, &mut dice);
        debug!(client = %conn.client, destination = %conn.destination, %method, %path, ?decision, "request");
        let answerer = match &decision {
            Decision::Forward(forward) => Answerer {
                route: forward.route.clone(),
                backend: forward.backend.clone(),
            },
            Decision::UnknownService | Decision::Respond(_) => Answerer::default(),
        };
        let received = Received::default();
        let response = self.answer(request, conn, decision, &received).await;
        let status = response.status().as_u16();
        let duration = started.elapsed();
        let response = if grpc_call && !grpc::is_grpc(response.headers()) {
            grpc::status_response(response).await
        } else {
            response
        };
        let Some(log) = &self.access_log else {
            self.metrics.request(answerer, status, duration);
            return response;
        };
        self.metrics.request(answerer.clone(), status, duration);
        let entry = Entry {
            answerer,
            method,
            path,
            status,
            duration,
            client: conn.client,
            received,
        };
        log.until_sent(response, entry)
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        conn: Conn,
        decision: Decision,
        received: &Received,
    ) -> Response<Body> {
        match decision {
            Decision::UnknownService => text(
                StatusCode::BAD_GATEWAY,
                format!("no L7 Service at {}", conn.destination),
            ),
            Decision::Respond(response) => respond(response),
            Decision::Forward(forward) => {
                let request_timeout = forward.request_timeout;
                let route = forward.route.clone();
                let exchange = self.forward(request, *forward, received);
                with_timeout(request_timeout, exchange, || {
                    warn!(%route, client = %conn.client, destination = %conn.destination, timeout = ?request_timeout, "request timeout");
                    text(StatusCode::GATEWAY_TIMEOUT, "request timeout".into())
                })
                .await
            }
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        forward: Forward,
        received: &Received,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let host = forward
            .host
            .clone()
            .or_else(|| original_host(&parts.headers, &parts.uri));
        let host = host.as_deref();
        let mut body = match self
            .read_ahead(body, &parts, &forward, host, received)
            .await
        {
            Ok(body) => body,
            Err(e) => {
                debug!(route = %forward.route, error = %e, "reading the request body");
                return text(StatusCode::BAD_REQUEST, "bad request body".into());
            }
        };
        let mut upstream = forward.upstream;
        let mut tried = Vec::new();
        loop {
            let sent = match &mut body {
                Sent::Again(replay) => replay.body(),
                // Taken by the first attempt, the only one (see `retry`).
                Sent::Once(once) => once.take().unwrap_or_default(),
            };
            let attempt = self.attempt(upstream, &parts, &forward, host, sent, received);
            let attempt = attempt.await;
            // Spec (HTTPRouteRetry): the listed codes, and failed
            // connections, resets and backend timeouts (SHOULD).
            let retry = match (&forward.retry, &attempt, &body) {
                (Some(retry), Attempt::Answered(response), Sent::Again(_))
                    if retry.policy.retries_status(response.status().as_u16()) =>
                {
                    Some((retry, RetryReason::Status))
                }
                (Some(retry), Attempt::Failed(error), Sent::Again(_)) => {
                    Some((retry, RetryReason::Failed(*error)))
                }
                _ => None,
            };
            match retry {
                Some((retry, reason)) if tried.len() < retry.policy.attempts as usize => {
                    tried.push(upstream.addr);
                    self.metrics.retry(&forward.route, reason);
                    drop(attempt);
                    tokio::time::sleep(retry.policy.wait_before(tried.len() as u32)).await;
                    upstream = retry.next_upstream(&tried, &mut dice).unwrap_or(upstream);
                    debug!(route = %forward.route, ?reason, %upstream, retry = tried.len(), "retrying");
                }
                _ => return attempt.into_response(&forward.response_headers),
            }
        }
    }

    /// One exchange with `upstream`, bounded by the rule's backend timeout.
    async fn attempt(
        &self,
        upstream: Upstream,
        parts: &hyper::http::request::Parts,
        forward: &Forward,
        host: Option<&str>,
        body: Body,
        received: &Received,
    ) -> Attempt {
        let request = match upstream_request(upstream, parts, forward, host, body) {
            Ok(request) => request,
            Err(e) => {
                warn!(route = %forward.route, %upstream, error = %e, "cannot build the upstream request");
                return Attempt::Final(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad upstream request".into(),
                ));
            }
        };
        let exchange = async {
            match self.client.request(request).await {
                Ok(response) => Attempt::Answered(response),
                Err(e) if received.failed() => {
                    debug!(route = %forward.route, error = %chain(&e), "the client's request body failed");
                    Attempt::Final(text(StatusCode::BAD_REQUEST, "bad request body".into()))
                }
                Err(e) => {
                    warn!(route = %forward.route, %upstream, error = %chain(&e), "upstream request failed");
                    let error = match e.is_connect() {
                        true => UpstreamError::Connect,
                        false => UpstreamError::Other,
                    };
                    self.metrics.upstream_error(error);
                    Attempt::Failed(error)
                }
            }
        };
        with_timeout(forward.backend_timeout, exchange, || {
            warn!(route = %forward.route, %upstream, timeout = ?forward.backend_timeout, "backend request timeout");
            self.metrics.upstream_error(UpstreamError::Timeout);
            Attempt::Failed(UpstreamError::Timeout)
        })
        .await
    }

    /// The body to send upstream. A request with mirrors or a retry policy
    /// has its body read first, up to the replay body limit: a body that
    /// ends within it is copied to each mirror and can be sent again; a
    /// longer one is neither mirrored nor retried, and streams once.
    async fn read_ahead(
        &self,
        body: Incoming,
        parts: &hyper::http::request::Parts,
        forward: &Forward,
        host: Option<&str>,
        received: &Received,
    ) -> Result<Sent, hyper::Error> {
        if forward.mirrors.is_empty() && forward.retry.is_none() {
            let once = from_client(Vec::new(), Some(body), received);
            return Ok(Sent::Once(Some(once)));
        }
        let replay = match read_ahead(body, self.replay_body_limit, received).await? {
            ReadAhead::Whole(replay) => replay,
            ReadAhead::Partial(body) => {
                let limit = self.replay_body_limit;
                if !forward.mirrors.is_empty() {
                    debug!(route = %forward.route, limit, "request body too large to mirror");
                    self.metrics.mirror_body_too_large();
                }
                if forward.retry.is_some() {
                    debug!(route = %forward.route, limit, "request body too large to retry");
                    self.metrics.retry_body_too_large();
                }
                return Ok(Sent::Once(Some(body)));
            }
        };
        for &mirror in &forward.mirrors {
            match upstream_request(mirror, parts, forward, host, replay.body()) {
                Ok(request) => self.mirror(mirror, request),
                Err(e) => debug!(%mirror, error = %e, "mirror request"),
            }
        }
        Ok(Sent::Again(replay))
    }

    /// Sends a copy in the background; its answer and errors are ignored.
    fn mirror(&self, mirror: Upstream, request: Request<Body>) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                // Read it all, so that the connection goes back to the pool.
                response.into_body().collect().await?;
                Ok::<_, BoxError>(())
            };
            match tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%mirror, error = %chain(&*e), "mirror request failed"),
                Err(_) => debug!(%mirror, "mirror request timed out"),
            }
        });
    }
}

/// The request body as it goes upstream.
enum Sent {
    /// Whole in memory: every attempt sends it.
    Again(Replay),
    /// Streamed: the first attempt takes it; there is no other.
    Once(Option<Body>),
}

/// How one upstream attempt ended.
enum Attempt {
    /// The upstream answered (any status).
    Answered(Response<Incoming>),
    /// No answer: no connection, a reset, a timeout.
    Failed(UpstreamError),
    /// The answer to give, not to retry (the client's body failed, the
    /// request cannot be built).
    Final(Response<Body>),
}

impl Attempt {
    fn into_response(self, response_headers: &HeaderModifier) -> Response<Body> {
        match self {
            Attempt::Answered(response) => response_from_upstream(response, response_headers),
            Attempt::Failed(UpstreamError::Connect) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error".into(),
            ),
            Attempt::Failed(UpstreamError::Timeout) => {
                text(StatusCode::GATEWAY_TIMEOUT, "upstream timeout".into())
            }
            Attempt::Failed(UpstreamError::Other) => {
                text(StatusCode::BAD_GATEWAY, "upstream error".into())
            }
            Attempt::Final(response) => response,
        }
    }
}

/// A uniform number in `0..n` (0 when `n` is 0): the router's choices.
pub fn dice(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        fastrand::u32(0..n)
    }
}

/// Runs `exchange`, or answers `expired()` once `limit` (if any) has passed.
async fn with_timeout<T>(
    limit: Option<Duration>,
    exchange: impl Future<Output = T>,
    expired: impl FnOnce() -> T,
) -> T {
    match limit {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| expired()),
        None => exchange.await,
    }
}

/// The parts of the request the router reads. Its headers are moved, not
/// copied: the router's edits start from them; the request keeps only its
/// `host`, which `original_host` reads. An HTTP/2 request carries its host
/// in `:authority`, which becomes the `host` header here.
fn request_head<B>(request: &mut Request<B>) -> RequestHead {
    let mut headers = std::mem::take(request.headers_mut());
    match headers.get(HOST) {
        Some(host) => {
            request.headers_mut().insert(HOST, host.clone());
        }
        None => {
            let authority = request.uri().authority();
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                headers.insert(HOST, host);
            }
        }
    }
    RequestHead {
        method: request.method().as_str().to_owned(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers,
    }
}

fn original_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    match headers.get(HOST) {
        Some(host) => Some(String::from_utf8_lossy(host.as_bytes()).into_owned()),
        None => uri
            .authority()
            .map(|authority| authority.as_str().to_owned()),
    }
}

/// An error with its causes: `client error (Connect): tcp connect error: ...`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// The request to `upstream`, in its HTTP version (else the client's) and
/// with the method of the client's request (`client`), with the router's
/// headers, path and query, and `host`. Over HTTP/2 the `:authority` is the
/// upstream's address and `host` a header.
fn upstream_request(
    upstream: Upstream,
    client: &hyper::http::request::Parts,
    forward: &Forward,
    host: Option<&str>,
    body: Body,
) -> Result<Request<Body>, hyper::http::Error> {
    let path_and_query = match forward.path_and_query.as_str() {
        "" => PathAndQuery::from_static("/"),
        other => PathAndQuery::try_from(other)?,
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream.addr.to_string())
        .path_and_query(path_and_query)
        .build()?;
    let version = match upstream.http {
        UpstreamHttp::H2c => Version::HTTP_2,
        UpstreamHttp::Http1 => Version::HTTP_11,
        UpstreamHttp::AsClient if client.version == Version::HTTP_2 => Version::HTTP_2,
        UpstreamHttp::AsClient => Version::HTTP_11,
    };
    let mut request = Request::builder()
        .method(client.method.clone())
        .uri(uri)
        .version(version)
        .body(body)?;
    let headers = request.headers_mut();
    if let Some(host) = host {
        headers.insert(HOST, HeaderValue::from_str(host)?);
    }
    for (name, value) in &forward.request_headers {
        let trailers = version == Version::HTTP_2 && name == TE && value == "trailers";
        if (is_hop_by_hop(name.as_str()) && !trailers) || name == HOST {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    Ok(request)
}

/// The upstream's response for the client: hop-by-hop headers dropped, the
/// route's response header filter applied, the body streamed.
fn response_from_upstream(
    response: Response<Incoming>,
    modifier: &HeaderModifier,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    for hop in HOP_BY_HOP {
        parts.headers.remove(hop);
    }
    apply_header_modifier(&mut parts.headers, modifier);
    // The client's connection decides its own version.
    parts.version = Version::default();
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

/// The router's direct answer: its status and headers, its reason as body.
fn respond(response: router::Response) -> Response<Body> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = text(status, response.reason);
    let headers = answer.headers_mut();
    let mut typed = false;
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            if name == CONTENT_TYPE && !typed {
                headers.remove(CONTENT_TYPE);
                typed = true;
            }
            headers.append(name, value);
        }
    }
    answer
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::*;

    fn forward(headers: &[(&str, &str)]) -> Forward {
        let mut request_headers = HeaderMap::new();
        for (name, value) in headers {
            request_headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Forward {
            route: "default/r/0".into(),
            backend: "default/web".into(),
            upstream: Upstream {
                addr: "10.0.0.1:8080".parse().unwrap(),
                http: UpstreamHttp::AsClient,
            },
            request_headers,
            path_and_query: "/v2/x?a=1".into(),
            host: None,
            response_headers: HeaderModifier::default(),
            mirrors: vec![],
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        }
    }

    fn pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn head_of_http1_and_http2_requests() {
        let mut request = Request::builder()
            .uri("/a/b?x=1&y")
            .header("Host", "web.default")
            .header("X-Two", "a")
            .header("x-two", "b")
            .body(())
            .unwrap();
        let head = request_head(&mut request);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/a/b");
        assert_eq!(head.query.as_deref(), Some("x=1&y"));
        assert_eq!(
            pairs(&head.headers),
            [("host", "web.default"), ("x-two", "a"), ("x-two", "b")]
        );
        assert_eq!(pairs(request.headers()), [("host", "web.default")]);
        let mut h2 = Request::builder()
            .method("POST")
            .uri("http://web.default:8080/p")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let head = request_head(&mut h2);
        assert_eq!(head.method, "POST");
        assert_eq!(head.query, None);
        assert_eq!(pairs(&head.headers), [("host", "web.default:8080")]);
    }

    /// The head of a client's request.
    fn client_request(method: Method, version: Version) -> hyper::http::request::Parts {
        let request = Request::builder()
            .method(method)
            .version(version)
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[test]
    fn upstream_request_drops_hop_by_hop_headers() {
        let f = forward(&[
            ("host", "ignored"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-length", "0"),
        ]);
        let request = upstream_request(
            f.upstream,
            &client_request(Method::PUT, Version::HTTP_11),
            &f,
            Some("web.default"),
            full(Bytes::new()),
        )
        .unwrap();
        assert_eq!(request.uri(), "http://10.0.0.1:8080/v2/x?a=1");
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(
            pairs(request.headers()),
            [
                ("host", "web.default"),
                ("x-a", "1"),
                ("x-a", "2"),
                ("content-length", "0")
            ]
        );
    }

    /// gRPC: an HTTP/2 request goes upstream as HTTP/2 and keeps
    /// `te: trailers` (its server refuses a call without it); other `te`
    /// values are HTTP/1.1's and go.
    #[test]
    fn an_http2_request_goes_upstream_as_http2_with_te_trailers() {
        let f = forward(&[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("te", "gzip"),
        ]);
        let request = upstream_request(
            f.upstream,
            &client_request(Method::POST, Version::HTTP_2),
            &f,
            Some("grpc.default:50051"),
            full(Bytes::new()),
        )
        .unwrap();
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.uri(), "http://10.0.0.1:8080/v2/x?a=1");
        assert_eq!(
            pairs(request.headers()),
            [
                ("host", "grpc.default:50051"),
                ("content-type", "application/grpc"),
                ("te", "trailers")
            ]
        );
    }

    /// The backend port's version wins over the client's.
    #[test]
    fn the_upstream_port_decides_the_version() {
        let mut f = forward(&[("te", "trailers")]);
        for (http, client, expected) in [
            (UpstreamHttp::AsClient, Version::HTTP_11, Version::HTTP_11),
            (UpstreamHttp::AsClient, Version::HTTP_2, Version::HTTP_2),
            (UpstreamHttp::H2c, Version::HTTP_11, Version::HTTP_2),
            (UpstreamHttp::Http1, Version::HTTP_2, Version::HTTP_11),
        ] {
            f.upstream.http = http;
            let request = upstream_request(
                f.upstream,
                &client_request(Method::POST, client),
                &f,
                None,
                full(Bytes::new()),
            )
            .unwrap();
            assert_eq!(request.version(), expected, "{http:?} for {client:?}");
            let te = request.headers().get("te").is_some();
            assert_eq!(te, expected == Version::HTTP_2, "{http:?} for {client:?}");
        }
    }

    #[test]
    fn direct_answers() {
        let answer = respond(router::Response {
            status: 302,
            headers: vec![("location".into(), "http://x/y".into())],
            reason: "redirect".into(),
        });
        assert_eq!(answer.status(), 302);
        assert_eq!(answer.headers()["location"], "http://x/y");
        assert!(is_hop_by_hop("Connection") && !is_hop_by_hop("x-a"));
    }
}
