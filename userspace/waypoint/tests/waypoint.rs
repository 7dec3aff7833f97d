//! The waypoint binary end to end on loopback, without the kernel programs:
//! `SO_ORIGINAL_DST` fails there, so the waypoint takes its listen address
//! as the destination, and the config makes that address the ClusterIP:port
//! of an L7 Service ("web"). Backends are small HTTP servers in this test.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use zerohop_routes::{contract::WaypointConfig, router::Router};

/// Requests a backend received, as the JSON it answered.
type Log = Arc<Mutex<Vec<Value>>>;

/// An HTTP/1.1 and h2c backend answering `{backend, version, method, path,
/// headers, body}` with `x-backend: NAME`; paths under `/slow` answer after
/// a second, paths ending in `/trailers` end their body with the trailer
/// `x-trailer: NAME`.
async fn backend(name: &'static str) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let served = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = served.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let log = log.clone();
                async move {
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
                        "body": String::from_utf8_lossy(&body),
                    });
                    log.lock().unwrap().push(report.clone());
                    if parts.uri.path().starts_with("/slow") {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let mut trailers = hyper::HeaderMap::new();
                    if parts.uri.path().ends_with("/trailers") {
                        trailers.insert("x-trailer", name.parse().unwrap());
                    }
                    let body = Full::new(Bytes::from(report.to_string()))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    Response::builder()
                        .header("x-backend", name)
                        .header("x-from-backend", "1")
                        .body(body)
                        .map_err(|e| e.to_string())
                }
            });
            tokio::spawn(async move {
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            });
        }
    });
    (addr, log)
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_zerohop-waypoint"));
        for addr in listen {
            command.arg("--listen").arg(addr.to_string());
        }
        command
            .arg("--config")
            .arg(config)
            .arg("--health-addr")
            .arg(health.to_string())
            .args(["--mark", "0", "--poll-ms", "50", "--node", "test"])
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
        ],
        "endpoints": [
            endpoints("web", listen.port(), v1),
            endpoints("web-v1", 80, v1),
            endpoints("web-v2", 80, v2),
            endpoints("mirror", 80, mirror),
            endpoints("down", 80, down),
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
    }
}

const HOST: (&str, &str) = ("host", "web.default.svc.cluster.local");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_applies_routes_and_reloads() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("zh-waypoint-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let config_path = dir.0.join("waypoint.json");

    let (v1, v1_log) = backend("v1").await;
    let (v2, _) = backend("v2").await;
    let (mirror, mirror_log) = backend("mirror").await;
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
    assert!(value("zerohop_waypoint_requests_total{route=\"\",code=\"502\"}") >= 2.0);
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
