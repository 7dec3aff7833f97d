//! The waypoint binary end to end on loopback, without the kernel programs:
//! `SO_ORIGINAL_DST` fails there, so the waypoint takes its listen address
//! as the destination, and the config makes that address the ClusterIP:port
//! of an L7 Service ("web"). Backends are small HTTP servers in this test.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use zerohop_routes::{contract::WaypointConfig, router::Router};

/// Requests a backend received, as the JSON it answered.
type Log = Arc<Mutex<Vec<Value>>>;

/// A test backend: where it listens, what it received, its connections
/// and requests.
struct Backend {
    addr: SocketAddr,
    log: Log,
    connections: Count,
    requests: Count,
}

/// How many of something there are now, and were at most.
#[derive(Clone, Default)]
struct Count {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Count {
    fn up(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 and h2c backend answering `{backend, version, method, path,
/// headers, body, body_len}` (`body` only when short) with `x-backend:
/// NAME`; paths under `/slow` answer after a second, requests with
/// `x-delay-ms: N` after N ms, paths ending in `/trailers` end their body
/// with the trailer `x-trailer: NAME`. A request with `x-fail: CODE/N/MS`
/// (MS optional) is answered CODE, after MS ms, while the backend has seen
/// fewer than N requests of its path before it.
async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let (connections, requests) = (Count::default(), Count::default());
    let served = log.clone();
    let (open, busy) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = served.clone();
            let busy = busy.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let log = log.clone();
                let busy = busy.clone();
                async move {
                    busy.up();
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(http_body_util::Collected::to_bytes)
                        .unwrap_or_default();
                    let headers: BTreeMap<_, _> = parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    let report = json!({
                        "backend": name,
                        "version": format!("{:?}", parts.version),
                        "method": parts.method.as_str(),
                        "path": parts.uri.to_string(),
                        "headers": headers,
                        "body": (body.len() <= 1024).then(|| String::from_utf8_lossy(&body)),
                        "body_len": body.len(),
                    });
                    let seen = {
                        let mut log = log.lock().unwrap();
                        let path = &report["path"];
                        let seen = log.iter().filter(|r| &r["path"] == path).count();
                        log.push(report.clone());
                        seen
                    };
                    let failure = failing(&parts.headers, seen);
                    if let Some((_, after)) = failure {
                        tokio::time::sleep(after).await;
                    }
                    if parts.uri.path().starts_with("/slow") {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let delay = parts.headers.get("x-delay-ms");
                    if let Some(ms) = delay.and_then(|ms| ms.to_str().ok()?.parse().ok()) {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    busy.down();
                    let mut trailers = hyper::HeaderMap::new();
                    if parts.uri.path().ends_with("/trailers") {
                        trailers.insert("x-trailer", name.parse().unwrap());
                    }
                    let body = Full::new(Bytes::from(report.to_string()))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    Response::builder()
                        .status(failure.map_or(200, |(code, _)| code))
                        .header("x-backend", name)
                        .header("x-from-backend", "1")
                        .body(body)
                        .map_err(|e| e.to_string())
                }
            });
            let open = open.clone();
            open.up();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                open.down();
            });
        }
    });
    Backend {
        addr,
        log,
        connections,
        requests,
    }
}

/// The status and delay `x-fail: CODE/N/MS` asks for, when the backend has
/// seen fewer than N requests of the path before (`seen`).
fn failing(headers: &hyper::HeaderMap, seen: usize) -> Option<(u16, Duration)> {
    let spec = headers.get("x-fail")?.to_str().ok()?;
    let mut fields = spec
        .split('/')
        .map(|n| n.parse::<u64>().expect("x-fail: CODE/N/MS"));
    let (code, first) = (fields.next()?, fields.next()?);
    let delay = Duration::from_millis(fields.next().unwrap_or(0));
    (seen < first as usize).then_some((code as u16, delay))
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The waypoint process; killed on drop.
struct Waypoint(Child);

impl Waypoint {
    fn start(listen: &[SocketAddr], config: &Path, health: SocketAddr) -> Waypoint {
        Waypoint::start_with(listen, config, health, &[])
    }

    /// With more flags.
    fn start_with(
        listen: &[SocketAddr],
        config: &Path,
        health: SocketAddr,
        flags: &[&str],
    ) -> Waypoint {
        let command = Command::new(env!("CARGO_BIN_EXE_zerohop-waypoint"));
        Waypoint::start_command(command, listen, config, health, flags)
    }

    /// `command`, with the waypoint's arguments.
    fn start_command(
        mut command: Command,
        listen: &[SocketAddr],
        config: &Path,
        health: SocketAddr,
        flags: &[&str],
    ) -> Waypoint {
        for addr in listen {
            command.arg("--listen").arg(addr.to_string());
        }
        command
            .arg("--config")
            .arg(config)
            .arg("--health-addr")
            .arg(health.to_string())
            .args(["--mark", "0", "--poll-ms", "50", "--node", "test"])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        Waypoint(command.spawn().expect("start zerohop-waypoint"))
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(mut self) -> bool {
        // SAFETY: plain kill(2) of the child we started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One client connection, HTTP/1.1 keep-alive or HTTP/2 prior knowledge.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(addr: SocketAddr, h2: bool) -> Conn {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => panic!("connect {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(sender)
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(sender) => sender.is_closed(),
            Conn::H2(sender) => sender.is_closed(),
        }
    }

    /// Sends a request; answers status, headers and body (JSON or text).
    async fn send(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, hyper::HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = match self {
            Conn::H1(sender) => {
                sender.ready().await.expect("connection open");
                sender.send_request(request).await
            }
            Conn::H2(sender) => {
                sender.ready().await.expect("connection open");
                sender.send_request(request).await
            }
        }
        .expect("an answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, body)
    }
}

fn service(name: &str, ip: &str, port: u16) -> Value {
    json!({"namespace": "default", "name": name, "cluster_ips": [ip], "ports": [port]})
}

fn endpoints(name: &str, port: u16, addr: SocketAddr) -> Value {
    json!({"namespace": "default", "name": name, "port": port,
           "endpoints": [{"addr": addr.to_string(), "local": true}]})
}

fn backend_ref(name: &str) -> Value {
    json!({"name": name, "port": 80})
}

/// Service `web` at `listen` with one HTTPRoute; `default_backend` is where
/// requests matching no other rule go.
fn config(
    listen: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    mirror: SocketAddr,
    down: SocketAddr,
    default_backend: &str,
) -> WaypointConfig {
    let web_ip = listen.ip().to_string();
    let config = json!({
        "services": [
            service("web", &web_ip, listen.port()),
            service("web-v1", "10.96.0.11", 80),
            service("web-v2", "10.96.0.12", 80),
            service("mirror", "10.96.0.13", 80),
            service("down", "10.96.0.14", 80),
            service("down-then-v1", "10.96.0.15", 80),
        ],
        "endpoints": [
            endpoints("web", listen.port(), v1),
            endpoints("web-v1", 80, v1),
            endpoints("web-v2", 80, v2),
            endpoints("mirror", 80, mirror),
            endpoints("down", 80, down),
            {"namespace": "default", "name": "down-then-v1", "port": 80,
             "endpoints": [{"addr": down.to_string(), "local": true},
                           {"addr": v1.to_string(), "local": false}]},
        ],
        "clients": {"127.0.0.1": "default"},
        "grants": [],
        "routes": [{
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "default",
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": listen.port()}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                        "filters": [
                            {"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "x-route", "value": "v2"}]}},
                            {"type": "ResponseHeaderModifier",
                             "responseHeaderModifier": {"add": [{"name": "x-resp", "value": "yes"}],
                                                        "remove": ["x-from-backend"]}},
                        ],
                        "backendRefs": [backend_ref("web-v2")],
                    },
                    {
                        "matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                        "backendRefs": [backend_ref("web-v2")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                        "backendRefs": [backend_ref("web-v1")],
                        "timeouts": {"backendRequest": "200ms"},
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/mirror"}}],
                        "filters": [{"type": "RequestMirror",
                                     "requestMirror": {"backendRef": backend_ref("mirror")}}],
                        "backendRefs": [backend_ref("web-v1")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/rewrite"}}],
                        "filters": [{"type": "URLRewrite", "urlRewrite": {
                            "hostname": "rewritten.example",
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}],
                        "backendRefs": [backend_ref("web-v1")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/redirect"}}],
                        "filters": [{"type": "RequestRedirect", "requestRedirect": {
                            "hostname": "example.com", "statusCode": 301}}],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/down"}}],
                        "backendRefs": [backend_ref("down")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/retry"}}],
                        "retry": {"codes": [500, 503], "attempts": 2, "backoff": "10ms"},
                        "backendRefs": [backend_ref("web-v1")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/flaky-endpoint"}}],
                        "retry": {"attempts": 1},
                        "backendRefs": [backend_ref("down-then-v1")],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/timeout-retry"}}],
                        "retry": {"codes": [500], "attempts": 5, "backoff": "10ms"},
                        "timeouts": {"request": "500ms", "backendRequest": "200ms"},
                        "backendRefs": [backend_ref("web-v1")],
                    },
                    {"backendRefs": [backend_ref(default_backend)]},
                ],
            },
        }],
    });
    serde_json::from_value(config).expect("a WaypointConfig")
}

fn write_config(path: &Path, config: &WaypointConfig) {
    // Written beside and renamed over, as the agent does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

const HOST: (&str, &str) = ("host", "web.default.svc.cluster.local");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_applies_routes_and_reloads() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("zh-waypoint-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let config_path = dir.0.join("waypoint.json");

    let Backend {
        addr: v1,
        log: v1_log,
        ..
    } = backend("v1").await;
    let v2 = backend("v2").await.addr;
    let Backend {
        addr: mirror,
        log: mirror_log,
        ..
    } = backend("mirror").await;
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let unknown = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let web = config(listen, v1, v2, mirror, down, "web-v1");

    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // A new connection per request: the endpoints close each.
    let get = |path: &'static str| async move {
        let mut conn = Conn::open(health, false).await;
        let (status, _, body) = conn.send("GET", path, &[], "").await;
        (status, body.as_str().unwrap_or_default().to_owned())
    };

    // Starts before the config exists: an empty router, then the reload.
    let waypoint = Waypoint::start(&[listen, unknown], &config_path, health);
    let mut conn = Conn::open(listen, false).await;
    let (status, _, _) = conn.send("GET", "/", &[HOST], "").await;
    assert_eq!(status, 502, "no config yet");
    assert_eq!(
        get("/readyz").await,
        (503, "the agent's config has not been read yet\n".to_owned())
    );
    write_config(&config_path, &web);

    // Not an L7 Service: 502 whatever the router.
    let mut other = Conn::open(unknown, false).await;
    let (status, _, body) = other.send("GET", "/", &[HOST], "").await;
    assert_eq!(status, 502, "{body}");

    if Router::new(&web).service_at(listen).is_none() {
        // The router's bodies are still stubs: everything is unknown.
        let (status, _, _) = conn.send("GET", "/", &[HOST], "").await;
        assert_eq!(status, 502);
        eprintln!("zerohop-routes' Router knows no Service yet: route checks skipped");
        assert!(waypoint.stop(), "clean exit on SIGTERM");
        return;
    }

    // The default rule, over the same keep-alive connection as before, once
    // the waypoint has read the file.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, headers, body) = loop {
        let answer = conn.send("GET", "/hello?x=1", &[HOST], "").await;
        if answer.0 != 502 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-backend"], "v1");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(body["headers"]["host"], HOST.1);
    assert_eq!(body["version"], "HTTP/1.1");

    // Path match, request and response header filters.
    let (status, headers, body) = conn.send("GET", "/v2/a", &[HOST], "").await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"v2".parse().unwrap())
    );
    assert_eq!(body["headers"]["x-route"], "v2");
    assert_eq!(headers["x-resp"], "yes");
    assert!(!headers.contains_key("x-from-backend"));

    // Header match.
    let (_, headers, _) = conn
        .send("GET", "/", &[HOST, ("x-canary", "true")], "")
        .await;
    assert_eq!(headers["x-backend"], "v2");

    // URL rewrite.
    let (status, _, body) = conn.send("GET", "/rewrite/a?q", &[HOST], "").await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/new/a?q");
    assert_eq!(body["headers"]["host"], "rewritten.example");

    // Redirect, answered by the waypoint.
    let (status, headers, _) = conn.send("GET", "/redirect/x", &[HOST], "").await;
    assert_eq!(status, 301);
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .contains("example.com"));

    // Backend timeout: the backend answers after 1 s, the route allows 200 ms.
    let started = Instant::now();
    let (status, _, _) = conn.send("GET", "/slow", &[HOST], "").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_millis(900));

    // No endpoint listening: 503.
    let (status, _, _) = conn.send("GET", "/down", &[HOST], "").await;
    assert_eq!(status, 503);

    // Mirror: the mirror gets a copy, body included; the client v1's answer.
    let (status, headers, _) = conn.send("POST", "/mirror/m", &[HOST], "hello").await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"v1".parse().unwrap())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirror_log.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = mirror_log.lock().unwrap().clone();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["body"], "hello");
    assert_eq!(copies[0]["path"], "/mirror/m");
    assert!(v1_log
        .lock()
        .unwrap()
        .iter()
        .any(|r| r["path"] == "/mirror/m" && r["body"] == "hello"));

    // HTTP/2 with prior knowledge on the same port.
    let mut h2 = Conn::open(listen, true).await;
    let uri = format!("http://{}/v2/h2", HOST.1);
    let (status, headers, body) = h2.send("GET", &uri, &[], "").await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"v2".parse().unwrap())
    );
    assert_eq!(body["headers"]["host"], HOST.1);
    // ... goes upstream in HTTP/2, the backend's trailers come back.
    assert_eq!(body["version"], "HTTP/2.0");
    let Conn::H2(sender) = &mut h2 else {
        unreachable!()
    };
    let request = Request::post(format!("http://{}/v2/trailers", HOST.1))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().map(|trailers| &trailers["x-trailer"]),
        Some(&"v2".parse().unwrap())
    );
    let body: Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
    assert_eq!(body["headers"]["te"], "trailers");

    // A bad file keeps the routes; a new one applies to open connections.
    std::fs::write(&config_path, b"{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, headers, _) = conn.send("GET", "/", &[HOST], "").await;
    assert_eq!(headers["x-backend"], "v1");
    write_config(
        &config_path,
        &config(listen, v1, v2, mirror, down, "web-v2"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, headers, _) = conn.send("GET", "/", &[HOST], "").await;
        if headers["x-backend"] == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "the new config never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What happened, as /metrics tells it.
    assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    let value = |sample: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in:\n{metrics}"))
    };
    assert!(value("zerohop_waypoint_requests_total{route=\"\",backend=\"\",code=\"502\"}") >= 2.0);
    assert!(value("zerohop_waypoint_upstream_errors_total{kind=\"connect\"}") >= 1.0);
    assert!(value("zerohop_waypoint_upstream_errors_total{kind=\"timeout\"}") >= 1.0);
    assert_eq!(value("zerohop_waypoint_connections{kind=\"http\"}"), 3.0);
    let forwarded: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("zerohop_waypoint_requests_total{route=\"default/web#"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(forwarded >= 5.0, "{metrics}");

    drop((conn, other, h2));
    assert!(waypoint.stop(), "clean exit on SIGTERM");
}

/// A waypoint started with `flags` in front of the Services of [`config`],
/// once it routes; its backends.
struct Routed {
    listen: SocketAddr,
    health: SocketAddr,
    waypoint: Waypoint,
    v1: Backend,
    mirror: Backend,
    _dir: TempDir,
}

async fn routed(flags: &[&str]) -> Routed {
    routed_by(|listen, config, health| Waypoint::start_with(&[listen], config, health, flags)).await
}

/// [`routed`], the waypoint started by `start` (listen, config, health).
async fn routed_by(start: impl FnOnce(SocketAddr, &Path, SocketAddr) -> Waypoint) -> Routed {
    let v1 = backend("v1").await;
    let v2 = backend("v2").await;
    let mirror = backend("mirror").await;
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = TempDir(std::env::temp_dir().join(format!(
        "zh-waypoint-test-{}-{}",
        std::process::id(),
        listen.port()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let config_path = dir.0.join("waypoint.json");
    write_config(
        &config_path,
        &config(listen, v1.addr, v2.addr, mirror.addr, down, "web-v1"),
    );
    let waypoint = start(listen, &config_path, health);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = Conn::open(listen, false).await;
        if conn.send("GET", "/", &[HOST], "").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the waypoint never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Routed {
        listen,
        health,
        waypoint,
        v1,
        mirror,
        _dir: dir,
    }
}

impl Routed {
    /// The value of `sample` (`name{labels}`) on /metrics.
    async fn metric(&self, sample: &str) -> f64 {
        let mut conn = Conn::open(self.health, false).await;
        let (_, _, body) = conn.send("GET", "/metrics", &[], "").await;
        let text = body.as_str().unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
    }

    /// A connection that has sent part of a request head, and stops there.
    async fn half_sent(&self) -> TcpStream {
        let mut stream = TcpStream::connect(self.listen).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nx-more: ")
            .await
            .unwrap();
        stream
    }
}

/// Whether the waypoint closes `stream` within 10 s (whatever it sends
/// first).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    // Ends with EOF or a reset.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Slowloris: clients that never finish a request head are closed after
/// the header-read timeout, HTTP/2 ones that never send a request too, and
/// other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_are_closed_after_the_header_read_timeout() {
    let routed = routed(&["--header-read-timeout", "1s"]).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(routed.half_sent().await);
    }
    let silent_h2 = Conn::open(routed.listen, true).await;
    let mut conn = Conn::open(routed.listen, false).await;
    assert_eq!(conn.send("GET", "/", &[HOST], "").await.0, 200);
    for stream in &mut slow {
        assert!(closed(stream).await, "a half-sent request head stays open");
    }
    eventually("the silent HTTP/2 connection is closed", async || {
        silent_h2.is_closed()
    })
    .await;
    drop(routed.waypoint);
}

/// At --max-connections, a new connection is not served until one ends
/// (here: half-sent ones, at the header-read timeout); then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_new_connection_waits_for_one_to_end() {
    let routed = routed(&["--max-connections", "20", "--header-read-timeout", "2s"]).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(routed.half_sent().await);
    }
    let listen = routed.listen;
    let waiting = tokio::spawn(async move {
        let mut conn = Conn::open(listen, false).await;
        conn.send("GET", "/", &[HOST], "").await.0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond the connection limit");
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the half-sent connections are closed")
        .unwrap();
    assert_eq!(status, 200);
    drop(slow);
}

/// A client connection with no request in flight for the idle timeout is
/// closed, HTTP/1.1 and HTTP/2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let routed = routed(&["--client-idle-timeout", "1s"]).await;
    for h2 in [false, true] {
        let mut conn = Conn::open(routed.listen, h2).await;
        assert_eq!(conn.send("GET", "/", &[HOST], "").await.0, 200);
        eventually("the idle connection is closed", async || conn.is_closed()).await;
    }
}

/// A request whose body is malformed (bad chunked encoding) or cut short
/// (fewer bytes than its Content-Length) is answered 400: the client is at
/// fault, not the backend; with or without a mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bodies_are_answered_400() {
    let routed = routed(&[]).await;
    for path in ["/", "/mirror/x"] {
        let bad_chunk = format!(
            "POST {path} HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        );
        let short =
            format!("POST {path} HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\nten bytes.");
        for request in [bad_chunk, short] {
            let mut stream = TcpStream::connect(routed.listen).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
                .await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("HTTP/1.1 400 "),
                "{request:?} answered {answer:?}"
            );
        }
    }
}

/// A request through a mirrored route whose body is longer than
/// --replay-body-limit streams to its backend whole and is not mirrored;
/// the waypoint's peak memory grows by far less than the body's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_replay_limit_is_not_mirrored_nor_held() {
    const BIG: usize = 50 << 20;
    let routed = routed(&[]).await;
    let mut conn = Conn::open(routed.listen, false).await;
    let peak_before = peak_rss_kib(&routed.waypoint);
    let big = "x".repeat(BIG);
    let (status, _, body) = conn.send("POST", "/mirror/big", &[HOST], &big).await;
    assert_eq!(status, 200);
    assert_eq!(body["body_len"], BIG);
    // A short one is mirrored, after the long one would have been.
    assert_eq!(
        conn.send("POST", "/mirror/small", &[HOST], "hi").await.0,
        200
    );
    let mirrored = async || {
        let log = routed.mirror.log.lock().unwrap();
        log.iter().any(|copy| copy["path"] == "/mirror/small")
    };
    eventually("the short body is mirrored", mirrored).await;
    let copies = routed.mirror.log.lock().unwrap().clone();
    assert!(
        copies.iter().all(|copy| copy["path"] != "/mirror/big"),
        "{copies:?}"
    );
    assert_eq!(
        routed
            .metric("zerohop_waypoint_mirror_body_too_large_total")
            .await,
        1.0
    );
    let peak = peak_rss_kib(&routed.waypoint);
    let grown = peak - peak_before;
    assert!(
        grown < (BIG >> 10) / 4,
        "peak RSS {peak_before} -> {peak} kB"
    );
}

/// The process's peak resident memory so far (VmHWM).
fn peak_rss_kib(waypoint: &Waypoint) -> usize {
    let pid = waypoint.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Many requests at once, each on its own client connection, each taking
/// a while at v1: as many upstream connections.
async fn burst(routed: &Routed) {
    let mut requests = Vec::new();
    for _ in 0..30 {
        let listen = routed.listen;
        requests.push(tokio::spawn(async move {
            let mut conn = Conn::open(listen, false).await;
            conn.send("GET", "/", &[HOST, ("x-delay-ms", "300")], "")
                .await
                .0
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert!(routed.v1.connections.peak() > 4, "no burst");
}

/// After a burst, idle upstream connections are closed once idle for
/// --upstream-idle-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let routed = routed(&["--upstream-idle-timeout", "1s"]).await;
    burst(&routed).await;
    let open = &routed.v1.connections;
    eventually("v1 has no connection open", async || open.now() == 0).await;
}

/// After a burst, the waypoint keeps no more idle connections to an
/// endpoint than --upstream-max-idle-per-host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_capped_per_endpoint() {
    let routed = routed(&[
        "--upstream-idle-timeout",
        "0s",
        "--upstream-max-idle-per-host",
        "4",
    ])
    .await;
    burst(&routed).await;
    let open = &routed.v1.connections;
    eventually("v1 has 4 connections open", async || open.now() == 4).await;
}

/// --access-log: one JSON line per request, with what answered it; the
/// request metric has the same route and backend labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_and_metrics_name_route_and_backend() {
    let log = TempDir(std::env::temp_dir().join(format!(
        "zh-access-log-{}-{}",
        std::process::id(),
        free_port()
    )));
    let path = log.0.to_str().unwrap().to_owned();
    let routed = routed(&["--access-log", &path]).await;
    let mut conn = Conn::open(routed.listen, false).await;
    let (status, _, _) = conn.send("POST", "/v2/a?q=1", &[HOST], "hello").await;
    assert_eq!(status, 200);
    let (status, _, _) = conn.send("GET", "/redirect/x", &[HOST], "").await;
    assert_eq!(status, 301);
    let lines = async || -> Vec<Value> {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    // The readiness probes' lines, then these two.
    eventually("two more lines", async || {
        lines()
            .await
            .iter()
            .any(|line| line["path"] == "/redirect/x")
    })
    .await;
    let lines = lines().await;
    let [.., forwarded, redirected] = &lines[..] else {
        panic!("{lines:?}")
    };
    assert_eq!(forwarded["route"], "default/web#0", "{forwarded}");
    assert_eq!(forwarded["backend"], "default/web-v2");
    assert_eq!(forwarded["method"], "POST");
    assert_eq!(forwarded["path"], "/v2/a");
    assert_eq!(forwarded["status"], 200);
    assert_eq!(forwarded["request_bytes"], 5);
    assert!(forwarded["response_bytes"].as_u64().unwrap() > 100);
    assert!(forwarded["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(forwarded["client"], "127.0.0.1");
    assert!(forwarded["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(redirected["route"], "", "{redirected}");
    assert_eq!(redirected["backend"], "");
    assert_eq!(redirected["status"], 301);
    let sample = "zerohop_waypoint_requests_total{route=\"default/web#0\",\
                  backend=\"default/web-v2\",code=\"200\"}";
    assert_eq!(routed.metric(sample).await, 1.0);
    let sample = "zerohop_waypoint_requests_total{route=\"\",backend=\"\",code=\"301\"}";
    assert_eq!(routed.metric(sample).await, 1.0);
}

/// Out of file descriptors (`EMFILE`): the accept loop backs off and says
/// so once, and serves again once connections close (here: half-sent ones,
/// at the header-read timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_waypoint_backs_off_and_serves_again() {
    let log = TempDir(std::env::temp_dir().join(format!(
        "zh-waypoint-log-{}-{}",
        std::process::id(),
        free_port()
    )));
    let stderr = std::fs::File::create(&log.0).unwrap();
    let routed = routed_by(|listen, config, health| {
        let mut command = Command::new("sh");
        command
            .args(["-c", "ulimit -n 64 && exec \"$@\"", "sh"])
            .arg(env!("CARGO_BIN_EXE_zerohop-waypoint"))
            .stderr(stderr);
        let flags = ["--header-read-timeout", "1s"];
        Waypoint::start_command(command, &[listen], config, health, &flags)
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..100 {
        slow.push(routed.half_sent().await);
    }
    let mut conn = Conn::open(routed.listen, false).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.send("GET", "/", &[HOST], ""));
    assert_eq!(answer.await.expect("served again").0, 200);
    let text = std::fs::read_to_string(&log.0).unwrap();
    let warnings = text.matches("accept failed").count();
    assert_eq!(warnings, 1, "{text}");
    assert!(text.contains("Too many open files"), "{text}");
    // Said at start too: 64 files cannot serve 10,000 connections.
    assert!(text.contains("open-file limit is below"), "{text}");
    drop(slow);
}

/// A soft open-file limit below what --max-connections needs is raised,
/// up to the hard limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_for_max_connections() {
    let routed = routed_by(|listen, config, health| {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "ulimit -S -n 64 && ulimit -H -n 8192 && exec \"$@\"",
                "sh",
            ])
            .arg(env!("CARGO_BIN_EXE_zerohop-waypoint"));
        let flags = ["--max-connections", "1000"];
        Waypoint::start_command(command, &[listen], config, health, &flags)
    })
    .await;
    let pid = routed.waypoint.0.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files");
    let soft: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(soft, ["2256", "8192"], "{open_files}");
}

/// At most --max-concurrent-streams requests of one HTTP/2 connection are
/// in flight at once: a client that knows the limit (from the server's
/// SETTINGS, here once a first request is answered) holds back the others;
/// streams beyond it would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_per_connection_are_limited() {
    let routed = routed(&["--max-concurrent-streams", "2"]).await;
    let mut conn = Conn::open(routed.listen, true).await;
    assert_eq!(conn.send("GET", "/", &[HOST], "").await.0, 200);
    let Conn::H2(sender) = conn else {
        unreachable!()
    };
    let mut requests = Vec::new();
    for _ in 0..6 {
        let mut sender = sender.clone();
        let request = Request::get(format!("http://{}/", HOST.1))
            .header("x-delay-ms", "300")
            .body(Full::new(Bytes::new()))
            .unwrap();
        requests.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            sender.send_request(request).await.unwrap().status()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(routed.v1.requests.peak(), 2);
}

/// What the v1 backend received at `path`: each attempt's body.
fn attempts(backend: &Backend, path: &str) -> Vec<Value> {
    let log = backend.log.lock().unwrap();
    (log.iter().filter(|r| r["path"] == path))
        .map(|r| r["body"].clone())
        .collect()
}

/// HTTPRoute `retry` (GEP-1731): the listed codes are retried with the
/// whole body again, up to `attempts` retries, after which the last answer
/// stands; other codes are not retried; a failed connection is retried on
/// another endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_as_the_rule_says() {
    let routed = routed(&[]).await;
    let mut conn = Conn::open(routed.listen, false).await;
    let mut send = async |path: &str, fail: &str| {
        let headers = [HOST, ("x-fail", fail)];
        let (status, _, body) = conn.send("POST", path, &headers, "payload").await;
        (status, body)
    };

    let (status, body) = send("/retry/recovers", "503/2").await;
    assert_eq!((status, &body["backend"]), (200, &json!("v1")), "{body}");
    assert_eq!(attempts(&routed.v1, "/retry/recovers"), ["payload"; 3]);

    let (status, _) = send("/retry/exhausted", "500/3").await;
    assert_eq!(status, 500);
    assert_eq!(attempts(&routed.v1, "/retry/exhausted").len(), 3);

    let (status, _) = send("/retry/unlisted", "502/1").await;
    assert_eq!(status, 502);
    assert_eq!(attempts(&routed.v1, "/retry/unlisted").len(), 1);

    // The Service's endpoint on this node refuses connections; the retry
    // goes to its other one.
    let (status, body) = send("/flaky-endpoint", "500/0").await;
    assert_eq!((status, &body["backend"]), (200, &json!("v1")), "{body}");

    let retries = |reason: &str, rule: usize| {
        format!(
            "zerohop_waypoint_retries_total{{route=\"default/web#{rule}\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(routed.metric(&retries("status", 7)).await, 4.0);
    assert_eq!(routed.metric(&retries("connect", 8)).await, 1.0);
}

/// An attempt that outlasts `timeouts.backendRequest` is retried, and
/// `timeouts.request` bounds the whole exchange, retries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_respect_both_timeouts() {
    let routed = routed(&[]).await;
    let mut conn = Conn::open(routed.listen, false).await;
    let slow_once = [HOST, ("x-fail", "500/1/400")];
    let (status, _, body) = conn.send("GET", "/timeout-retry/a", &slow_once, "").await;
    assert_eq!((status, &body["backend"]), (200, &json!("v1")), "{body}");
    assert_eq!(attempts(&routed.v1, "/timeout-retry/a").len(), 2);

    // Every attempt times out at 200 ms: the 500 ms request timeout ends
    // the exchange before the fifth retry.
    let always_slow = [HOST, ("x-fail", "500/100/300")];
    let (status, _, _) = conn.send("GET", "/timeout-retry/b", &always_slow, "").await;
    assert_eq!(status, 504);
    let tried = attempts(&routed.v1, "/timeout-retry/b").len();
    assert!((1..6).contains(&tried), "{tried} attempts");
}

/// A body longer than --replay-body-limit streams to the backend once and
/// is not retried, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_replay_limit_is_not_retried() {
    let routed = routed(&["--replay-body-limit", "1024"]).await;
    let mut conn = Conn::open(routed.listen, false).await;
    let fail_once = [HOST, ("x-fail", "503/1")];
    let long = "x".repeat(4096);
    let (status, _, _) = conn.send("POST", "/retry/long", &fail_once, &long).await;
    assert_eq!(status, 503);
    let (status, _, _) = conn.send("POST", "/retry/short", &fail_once, "short").await;
    assert_eq!(status, 200);
    assert_eq!(attempts(&routed.v1, "/retry/long").len(), 1);
    assert_eq!(attempts(&routed.v1, "/retry/short"), ["short"; 2]);
    let too_large = "zerohop_waypoint_retry_body_too_large_total";
    assert_eq!(routed.metric(too_large).await, 1.0);
}
