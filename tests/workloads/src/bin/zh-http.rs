//! zh-http: the HTTP workload of the sandbox's L7 tests, a backend that tells
//! who answered and what it received, and a keep-alive client that counts
//! the answers. HTTP/1.1 only (h2c checks use `curl --http2-prior-knowledge`).
//!
//! ```text
//! zh-http server --name NAME --port P [--delay-ms D]
//! zh-http get    --target IP:PORT [--count N] [--method M] [--path P]
//!                [--header NAME:VALUE]... [--host H] [--body TEXT] [--pause-ms D]
//! ```
//!
//! The server listens on `0.0.0.0:P` and `[::]:P`, prints `READY`, then
//! answers every request `200` with `x-backend: NAME` and the JSON body
//! `{"backend", "method", "path" (path and query as received), "headers"
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
//! otherwise (with `"error"` in the line). Socket timeouts are 10 s.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::ExitCode,
    sync::Arc,
    thread,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use zerohop_workloads::cli::{say, Context, Res};
use zerohop_workloads::socket::listen;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Larger request or response heads are refused.
const MAX_HEAD: usize = 64 * 1024;

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
    Get(GetArgs),
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

#[derive(Args)]
struct GetArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Requests to send.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Request method.
    #[arg(long, value_name = "M", default_value = "GET")]
    method: String,
    /// Request path (and query).
    #[arg(long, value_name = "P", default_value = "/")]
    path: String,
    /// Extra request header (repeatable).
    #[arg(long, value_name = "NAME:VALUE", value_parser = parse_header)]
    header: Vec<(String, String)>,
    /// Host header (default: the target address).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Request body.
    #[arg(long, value_name = "TEXT", default_value = "")]
    body: String,
    /// Pause between requests, in milliseconds.
    #[arg(long, value_name = "D", default_value_t = 0)]
    pause_ms: u64,
}

/// `NAME:VALUE`, both trimmed.
fn parse_header(header: &str) -> Res<(String, String)> {
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| format!("{header:?}: expected NAME:VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
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

// ---------------------------------------------------------------- messages

/// A request or response head: the start line, and headers with lower-case
/// names in order.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Headers as a JSON object; repeated names joined with ", ".
    fn headers_json(&self) -> Value {
        let mut map = Map::new();
        for (name, value) in &self.headers {
            match map.get_mut(name) {
                Some(Value::String(joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                _ => {
                    map.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        Value::Object(map)
    }
}

/// Reads a head; `None` on a clean end of stream before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut start = String::new();
    // Tolerate empty lines between messages (RFC 9112 §2.2).
    while start.trim_end().is_empty() {
        start.clear();
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
    }
    let mut size = start.len();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream in a head",
            ));
        }
        size += line.len();
        if size > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad header {line:?}"))
        })?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(Head {
        start: start.trim_end().to_owned(),
        headers,
    }))
}

/// Reads a body framed by `content-length` or chunked encoding; without
/// either, a request has none and a response runs to the end of stream.
fn read_body(reader: &mut impl BufRead, head: &Head, is_response: bool) -> io::Result<Vec<u8>> {
    if head.has_token("transfer-encoding", "chunked") {
        return read_chunked(reader);
    }
    if let Some(length) = head.get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if is_response {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?; // the CRLF after the data
    }
}

// ---------------------------------------------------------------- server

/// Serves on `0.0.0.0:P` and `[::]:P` until killed.
fn server(flags: &ServerArgs) -> Res<bool> {
    let name: Arc<str> = flags.name.as_str().into();
    let port = flags.port;
    let delay = Duration::from_millis(flags.delay_ms);
    let listeners = [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ]
    .map(|ip| {
        let addr = SocketAddr::new(ip, port);
        listen(addr).ctx(&format!("listen on {addr}"))
    });
    let listeners = listeners.into_iter().collect::<Res<Vec<_>>>()?;
    say("READY");
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let name = name.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let name = name.clone();
                            thread::spawn(move || {
                                if let Err(e) = serve(stream, &name, delay) {
                                    eprintln!("connection: {e}");
                                }
                            });
                        }
                        Err(e) => eprintln!("accept: {e}"),
                    }
                }
            })
        })
        .collect();
    acceptors
        .into_iter()
        .for_each(|acceptor| drop(acceptor.join()));
    Ok(true)
}

/// Answers the requests of one connection until it ends.
fn serve(stream: TcpStream, name: &str, delay: Duration) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(SERVER_IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let body = read_body(&mut reader, &head, false)?;
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let version = parts.next().unwrap_or_default();
        let report = json!({
            "backend": name,
            "method": method,
            "path": target,
            "headers": head.headers_json(),
            "peer": peer.to_string(),
            "body_bytes": body.len(),
        })
        .to_string();
        say(&report);
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let close = head.has_token("connection", "close")
            || (version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-backend: {name}\r\n\
             content-length: {}\r\n{}\r\n{report}",
            report.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        // One write: a formatted write to a socket would send each piece alone.
        writer.write_all(answer.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- client

/// Sends `--count` requests over one keep-alive connection and reports.
fn get(flags: &GetArgs) -> Res<bool> {
    let (target, count) = (flags.target, flags.count);
    let (method, path, body) = (&flags.method, &flags.path, &flags.body);
    let host = flags.host.clone().unwrap_or_else(|| target.to_string());
    let pause = Duration::from_millis(flags.pause_ms);
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in &flags.header {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);

    let mut statuses = BTreeMap::<String, u64>::new();
    let mut backends = BTreeMap::<String, u64>::new();
    let mut last = Value::Null;
    let mut connections = 0u64;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut error = None;
    for n in 0..count {
        if n > 0 && !pause.is_zero() {
            thread::sleep(pause);
        }
        let exchange = (|| -> Res<(Head, Vec<u8>, bool)> {
            let reader = match conn.as_mut() {
                Some(reader) => reader,
                None => {
                    connections += 1;
                    conn.insert(BufReader::new(
                        connect(target).ctx(&format!("connect {target}"))?,
                    ))
                }
            };
            reader.get_mut().write_all(request.as_bytes()).ctx("send")?;
            let head = read_head(reader)
                .ctx("read the response")?
                .ok_or("the connection closed before an answer")?;
            let no_body = method == "HEAD"
                || head
                    .start
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|s| s.starts_with('1') || s == "204" || s == "304");
            let body = if no_body {
                Vec::new()
            } else {
                read_body(reader, &head, true).ctx("read the response body")?
            };
            let framed = head.get("content-length").is_some()
                || head.has_token("transfer-encoding", "chunked")
                || no_body;
            let close = head.has_token("connection", "close") || !framed;
            Ok((head, body, close))
        })();
        let (head, body, close) = match exchange {
            Ok(answer) => answer,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        if close {
            conn = None;
        }
        let status = head
            .start
            .split_whitespace()
            .nth(1)
            .unwrap_or("?")
            .to_owned();
        *statuses.entry(status.clone()).or_default() += 1;
        if let Some(backend) = head.get("x-backend") {
            *backends.entry(backend.to_owned()).or_default() += 1;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        last = json!({
            "status": status.parse::<u16>().map(Value::from).unwrap_or(Value::String(status)),
            "headers": head.headers_json(),
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
    say(report);
    Ok(error.is_none())
}

fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
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
        assert_eq!(
            flags.header,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(flags.count, 2);
        assert!(Cli::try_parse_from([
            "zh-http",
            "get",
            "--target",
            "127.0.0.1:80",
            "--header",
            "a"
        ])
        .is_err());
    }

    #[test]
    fn heads_and_bodies() {
        let wire = b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\
                     Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\n\r\n\
                     GET / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi";
        let mut reader = &wire[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        assert_eq!(head.start, "POST /x?y=1 HTTP/1.1");
        assert_eq!(
            head.headers_json(),
            json!({"host": "a", "x-a": "1, 2", "transfer-encoding": "chunked"})
        );
        assert_eq!(read_body(&mut reader, &head, false).unwrap(), b"abcde");
        let head = read_head(&mut reader).unwrap().unwrap();
        assert_eq!(read_body(&mut reader, &head, false).unwrap(), b"hi");
        assert!(read_head(&mut reader).unwrap().is_none());
    }
}
