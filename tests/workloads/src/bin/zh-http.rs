//! zh-http: the HTTP workload of the sandbox's L7 tests, a backend that tells
//! who answered and what it received, and a keep-alive client that counts
//! the answers. The server speaks HTTP/1.1 and HTTP/2 over cleartext (h2c,
//! prior knowledge; checks use `curl --http2-prior-knowledge`), the client
//! HTTP/1.1.
//!
//! ```text
//! zh-http server --name NAME --port P [--delay-ms D]
//! zh-http get    --target IP:PORT [--count N] [--method M] [--path P]
//!                [--header NAME:VALUE]... [--host H] [--body TEXT] [--pause-ms D]
//! ```
//!
//! The server listens on `0.0.0.0:P` and `[::]:P`, prints `READY`, then
//! answers every request `200` with `x-backend: NAME` and the JSON body
//! `{"backend", "version" ("HTTP/1.1", "HTTP/2.0"), "method", "path" (path
//! and query as received; an HTTP/2 request's is its whole URI), "headers"
//! (lower-case names; repeated ones joined with ", "), "peer", "body_bytes"}`,
//! after `--delay-ms` if given; it prints the same JSON as one line per
//! request, so that a test can count what a mirror received.
//!
//! `get` sends `--count` requests (default 1) over one keep-alive connection
//! (a new one only if the server closes it), `--pause-ms` apart, and prints
//! one JSON line:
//! `{"statuses": {"200": n}, "backends": {"v1": n}, "last": {"status",
//! "headers", "body" (JSON when it parses, else text)}, "connections": 1}`.
//! It exits 0 when every request got an answer, whatever its status, and 1
//! otherwise (with `"error"` in the line). Connecting and each answer time
//! out after 10 s.

use std::{
    collections::BTreeMap,
    error::Error,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST},
    service::service_fn,
    HeaderMap, Method, Request, Response, Uri,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use serde_json::{json, Map, Value};
use tokio::{
    net::{TcpListener, TcpStream},
    time::{sleep, timeout},
};
use zerohop_workloads::cli::{say, Context, Res};
use zerohop_workloads::socket::listen;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A server connection with no new request head for this long is closed.
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The HTTP workload of the sandbox's L7 tests.
#[derive(Parser)]
#[command(name = "zh-http")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every request 200 with who answered and what it received.
    Server(ServerArgs),
    /// Send requests over one keep-alive connection and count the answers.
    Get(Box<GetArgs>),
}

#[derive(Args)]
struct ServerArgs {
    /// Backend name, sent as x-backend and in the body.
    #[arg(long)]
    name: String,
    /// Port to listen on (0.0.0.0 and [::]).
    #[arg(long, value_name = "P")]
    port: u16,
    /// Wait this long before each answer, in milliseconds.
    #[arg(long, value_name = "D", default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Args, Clone)]
struct GetArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Requests to send.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Request method.
    #[arg(long, value_name = "M", default_value = "GET")]
    method: Method,
    /// Request path (and query).
    #[arg(long, value_name = "P", default_value = "/")]
    path: Uri,
    /// Extra request header (repeatable).
    #[arg(long, value_name = "NAME:VALUE", value_parser = parse_header)]
    header: Vec<(HeaderName, HeaderValue)>,
    /// Host header (default: the target address).
    #[arg(long, value_name = "H", value_parser = parse_value)]
    host: Option<HeaderValue>,
    /// Request body.
    #[arg(long, value_name = "TEXT", default_value = "")]
    body: String,
    /// Pause between requests, in milliseconds.
    #[arg(long, value_name = "D", default_value_t = 0)]
    pause_ms: u64,
}

/// `NAME:VALUE`, both trimmed.
fn parse_header(header: &str) -> Res<(HeaderName, HeaderValue)> {
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| format!("{header:?}: expected NAME:VALUE"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).ctx(name)?;
    Ok((name, parse_value(value.trim())?))
}

fn parse_value(value: &str) -> Res<HeaderValue> {
    HeaderValue::from_str(value).ctx(value)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (command, run) = match &cli.command {
        Command::Server(flags) => ("server", server(flags)),
        Command::Get(flags) => ("get", get(flags)),
    };
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("zh-http {command}: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx("start the runtime")
}

/// Headers as a JSON object: lower-case names (as hyper keeps them), in the
/// order they first came, repeated ones joined with ", ".
fn headers_json(headers: &HeaderMap) -> Value {
    let map: Map<String, Value> = headers
        .keys()
        .map(|name| {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()))
                .collect();
            (name.as_str().to_owned(), Value::String(values.join(", ")))
        })
        .collect();
    Value::Object(map)
}

/// An error and its causes, `: `-separated (hyper's own messages leave the
/// cause out).
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------- server

/// Who answers, and how.
struct Backend {
    name: String,
    header: HeaderValue,
    delay: Duration,
}

/// Serves on `0.0.0.0:P` and `[::]:P` until killed.
fn server(flags: &ServerArgs) -> Res<bool> {
    let backend = Arc::new(Backend {
        name: flags.name.clone(),
        header: parse_value(&flags.name).ctx("--name")?,
        delay: Duration::from_millis(flags.delay_ms),
    });
    let listeners = [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ]
    .map(|ip| {
        let addr = SocketAddr::new(ip, flags.port);
        listen(addr).ctx(&format!("listen on {addr}"))
    });
    let listeners = listeners.into_iter().collect::<Res<Vec<_>>>()?;
    runtime()?.block_on(async {
        let mut acceptors = Vec::new();
        for listener in listeners {
            listener.set_nonblocking(true).ctx("listen")?;
            let listener = TcpListener::from_std(listener).ctx("listen")?;
            acceptors.push(tokio::spawn(accept(listener, backend.clone())));
        }
        say("READY");
        for acceptor in acceptors {
            drop(acceptor.await);
        }
        Ok(true)
    })
}

/// Serves the connections of `listener`, each in its own task.
async fn accept(listener: TcpListener, backend: Arc<Backend>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, peer, backend).await {
                        eprintln!("connection: {}", chain(&*e));
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Answers the requests of one connection until it ends, or brings no new
/// request for [`SERVER_IDLE_TIMEOUT`].
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    backend: Arc<Backend>,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    // Best effort: only the latency of small answers depends on it.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| answer(request, peer, backend.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(SERVER_IDLE_TIMEOUT)
        .auto_date_header(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(None);
    builder
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// Reports the request, on stdout and in the answer.
async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    backend: Arc<Backend>,
) -> hyper::Result<Response<Full<Bytes>>> {
    let (head, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let report = json!({
        "backend": backend.name,
        "version": format!("{:?}", head.version),
        "method": head.method.as_str(),
        "path": head.uri.to_string(),
        "headers": headers_json(&head.headers),
        "peer": peer.to_string(),
        "body_bytes": body.len(),
    })
    .to_string();
    say(&report);
    if !backend.delay.is_zero() {
        sleep(backend.delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(report)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-backend", backend.header.clone());
    Ok(response)
}

// ---------------------------------------------------------------- client

/// Sends `--count` requests over one keep-alive connection and reports.
fn get(flags: &GetArgs) -> Res<bool> {
    let (report, answered) = runtime()?.block_on(exchanges(flags.clone()))?;
    say(report);
    Ok(answered)
}

/// The report line of `get`, and whether every request got an answer.
async fn exchanges(flags: GetArgs) -> Res<(Value, bool)> {
    let target = flags.target;
    let mut headers = HeaderMap::new();
    let host = match flags.host {
        Some(host) => host,
        None => parse_value(&target.to_string())?,
    };
    headers.insert(HOST, host);
    for (name, value) in flags.header {
        headers.append(name, value);
    }
    let body = Bytes::from(flags.body);
    let sends_body = [Method::POST, Method::PUT, Method::PATCH].contains(&flags.method);
    if (!body.is_empty() || sends_body) && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let pause = Duration::from_millis(flags.pause_ms);

    let mut statuses = BTreeMap::<String, u64>::new();
    let mut backends = BTreeMap::<String, u64>::new();
    let mut last = Value::Null;
    let mut connections = 0u64;
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut error = None;
    for n in 0..flags.count {
        if n > 0 && !pause.is_zero() {
            sleep(pause).await;
        }
        // The connection is kept unless the server closed it.
        let kept = match conn.take() {
            Some(mut sender) => match timeout(CLIENT_TIMEOUT, sender.ready()).await {
                Ok(Ok(())) => Some(sender),
                _ => None,
            },
            None => None,
        };
        let mut sender = match kept {
            Some(sender) => sender,
            None => {
                connections += 1;
                match connect(target).await {
                    Ok(sender) => sender,
                    Err(e) => {
                        error = Some(format!("connect {target}: {e}"));
                        break;
                    }
                }
            }
        };
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = flags.method.clone();
        *request.uri_mut() = flags.path.clone();
        *request.headers_mut() = headers.clone();
        let exchange = async {
            let response = sender.send_request(request).await;
            let (head, body) = response.map_err(|e| chain(&e))?.into_parts();
            let body = body.collect().await;
            let body = body.map_err(|e| format!("read the response body: {}", chain(&e)))?;
            Ok::<_, String>((head, body.to_bytes()))
        };
        let exchange = match timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(exchange) => exchange,
            Err(_) => Err(format!("no answer within {CLIENT_TIMEOUT:?}")),
        };
        conn = Some(sender);
        let (head, body) = match exchange {
            Ok(answer) => answer,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        *statuses.entry(head.status.as_str().to_owned()).or_default() += 1;
        if let Some(backend) = head.headers.get("x-backend") {
            let backend = String::from_utf8_lossy(backend.as_bytes()).into_owned();
            *backends.entry(backend).or_default() += 1;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        last = json!({
            "status": head.status.as_u16(),
            "headers": headers_json(&head.headers),
            "body": serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
        });
    }
    let mut report = json!({
        "statuses": statuses,
        "backends": backends,
        "last": last,
        "connections": connections,
    });
    if let Some(error) = &error {
        report["error"] = Value::String(error.clone());
    }
    Ok((report, error.is_none()))
}

/// A new HTTP/1.1 connection to `target`, driven by its own task.
async fn connect(target: SocketAddr) -> Res<SendRequest<Full<Bytes>>> {
    let stream = timeout(CLIENT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| format!("no connection within {CLIENT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    // Best effort: only the latency of small requests depends on it.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| chain(&e))?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_are_kept_in_order_and_trimmed() {
        let cli = Cli::try_parse_from([
            "zh-http",
            "get",
            "--target",
            "127.0.0.1:80",
            "--header",
            "a:1",
            "--count",
            "2",
            "--header",
            "b: 2",
        ])
        .unwrap();
        let Command::Get(flags) = cli.command else {
            panic!("not get");
        };
        let header = |name, value| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        };
        assert_eq!(flags.header, [header("a", "1"), header("b", "2")]);
        assert_eq!(flags.count, 2);
        for bad in ["a", "a b:1"] {
            assert!(Cli::try_parse_from([
                "zh-http",
                "get",
                "--target",
                "127.0.0.1:80",
                "--header",
                bad
            ])
            .is_err());
        }
    }

    /// A server task on 127.0.0.1, and `get`'s flags to reach it.
    async fn backend(name: &str, extra: &[&str]) -> GetArgs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let backend = Arc::new(Backend {
            name: name.to_owned(),
            header: parse_value(name).unwrap(),
            delay: Duration::ZERO,
        });
        tokio::spawn(accept(listener, backend));
        let mut args = vec!["zh-http", "get", "--target", &target];
        args.extend_from_slice(extra);
        let Command::Get(flags) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not get");
        };
        *flags
    }

    #[tokio::test]
    async fn the_server_reports_what_it_received_and_get_counts_answers() {
        let flags = backend(
            "v1",
            &[
                "--count",
                "3",
                "--method",
                "POST",
                "--path",
                "/x?y=1",
                "--host",
                "web.example",
                "--header",
                "X-A: 1",
                "--header",
                "x-a:2",
                "--body",
                "hello",
            ],
        )
        .await;
        let (report, answered) = exchanges(flags).await.unwrap();
        assert!(answered, "{report}");
        assert_eq!(report["statuses"], json!({"200": 3}));
        assert_eq!(report["backends"], json!({"v1": 3}));
        assert_eq!(report["connections"], 1);
        let last = &report["last"];
        assert_eq!(last["status"], 200);
        assert_eq!(last["headers"]["x-backend"], "v1");
        assert_eq!(last["headers"]["content-type"], "application/json");
        let seen = &last["body"];
        assert_eq!(seen["backend"], "v1");
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["path"], "/x?y=1");
        assert_eq!(seen["body_bytes"], 5);
        assert_eq!(seen["headers"]["host"], "web.example");
        assert_eq!(seen["headers"]["x-a"], "1, 2");
        assert_eq!(seen["headers"]["content-length"], "5");
        assert!(seen["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_replaced() {
        let flags = backend("v2", &["--count", "2", "--header", "connection: close"]).await;
        let target = flags.target.to_string();
        let (report, answered) = exchanges(flags).await.unwrap();
        assert!(answered, "{report}");
        assert_eq!(report["backends"], json!({"v2": 2}));
        assert_eq!(report["connections"], 2);
        assert_eq!(report["last"]["body"]["headers"]["host"], target);
    }

    #[tokio::test]
    async fn no_server_is_an_error_in_the_report() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        drop(listener);
        let cli = Cli::try_parse_from(["zh-http", "get", "--target", &target]).unwrap();
        let Command::Get(flags) = cli.command else {
            panic!("not get");
        };
        let (report, answered) = exchanges(*flags).await.unwrap();
        assert!(!answered);
        assert!(report["error"].as_str().unwrap().starts_with("connect "));
        assert_eq!(report["statuses"], json!({}));
    }
}
