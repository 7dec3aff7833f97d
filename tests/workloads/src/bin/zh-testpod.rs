//! zh-testpod: the workload of the sandbox's pods, a TCP echo server (and a
//! UDP responder on the same port) and the clients that check it. Every client prints one JSON line and exits 0 only
//! when everything it checked held.
//!
//! ```text
//! zh-testpod server     --name NAME --port P [--dual-stack] [--quiet]
//! zh-testpod echo       --target IP:PORT --bytes N [--chunk C] [--nodelay]
//! zh-testpod spread     --target IP:PORT --count N
//! zh-testpod concurrent --target IP:PORT --conns K --bytes N
//! zh-testpod reset      --target IP:PORT
//! zh-testpod hold       --target IP:PORT      (lines on stdin are echoed)
//! zh-testpod rr         --target IP:PORT --count N --size S [--interval-ms M]
//!                       (to a --quiet server)
//! zh-testpod datagrams  --target IP:PORT --count N [--connected]
//! zh-testpod watch      --target IP:PORT [--udp]
//!                       (prints its server, then `ENDED <why>` when the
//!                       socket fails)
//! zh-testpod reach      --target IP:PORT --name NAME
//!                       (connects every millisecond until NAME greets;
//!                       prints `STARTED` after the first attempt, then
//!                       `REACHED attempts=N others=O failed=F …`)
//! ```
//!
//! The UDP responder answers each datagram with `<name> <peer-ip> <peer-port>`;
//! `datagrams` sends N of them from one socket (with `sendto`, or after a
//! `connect` with `--connected`) and checks every answer came back from the
//! address it sent to.
//!
//! The server greets each connection with `HELLO <name> <peer-ip> <peer-port>`,
//! so a client learns which backend it reached and which address that backend
//! saw (the test of "no NAT on the way"). Addresses in the output are written
//! like Rust's `SocketAddr`: `1.2.3.4:80`, `[fd00::1]:80`.
//!
//! Blocking reads time out (10 s for clients, 5 min for an idle server
//! connection), so a broken data path fails a test instead of hanging it.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    sync::Arc,
    thread,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zerohop_workloads::cli::{say, Context, Res};
use zerohop_workloads::pattern::{check_pattern, fill_pattern, Patient};
use zerohop_workloads::socket::{linger_zero, listen, listen_dual_stack, udp_bind};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_CHUNK: usize = 64 * 1024;

/// The sandbox pods' TCP echo server and UDP responder, and the clients that
/// check it.
#[derive(Parser)]
#[command(name = "zh-testpod")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve TCP (greeting each connection) and UDP on a port until killed.
    Server(ServerArgs),
    /// Send N bytes over one connection and check they come back.
    Echo(EchoArgs),
    /// Open N connections and count which backend greeted each.
    Spread(SpreadArgs),
    /// Echo N bytes over K connections at once.
    Concurrent(ConcurrentArgs),
    /// Echo a probe, then end the connection with a reset instead of a FIN.
    Reset(TargetArgs),
    /// Hold a connection open, echoing lines from stdin.
    Hold(TargetArgs),
    /// Time request-response round trips (to a --quiet server).
    Rr(RrArgs),
    /// Send N datagrams from one socket and check every answer.
    Datagrams(DatagramsArgs),
    /// Print the server, then `ENDED <why>` when the socket fails.
    Watch(WatchArgs),
    /// Connect every millisecond until NAME greets.
    Reach(ReachArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Name the server greets with and the UDP responder answers with.
    #[arg(long)]
    name: String,
    /// TCP and UDP port.
    #[arg(long, value_name = "P")]
    port: u16,
    /// Listen on one dual-stack [::]:P socket instead of 0.0.0.0:P and [::]:P.
    #[arg(long)]
    dual_stack: bool,
    /// Do not greet: the client speaks first.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TargetArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
}

#[derive(Args)]
struct EchoArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Bytes to send.
    #[arg(long, value_name = "N")]
    bytes: u64,
    /// Bytes per write.
    #[arg(long, value_name = "C", default_value_t = DEFAULT_CHUNK)]
    chunk: usize,
    /// Set TCP_NODELAY.
    #[arg(long)]
    nodelay: bool,
}

#[derive(Args)]
struct SpreadArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Connections to open.
    #[arg(long, value_name = "N")]
    count: u32,
}

#[derive(Args)]
struct ConcurrentArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Connections at once.
    #[arg(long, value_name = "K")]
    conns: u64,
    /// Bytes to echo on each connection.
    #[arg(long, value_name = "N")]
    bytes: u64,
}

#[derive(Args)]
struct RrArgs {
    /// Server address (a --quiet server).
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Round trips.
    #[arg(long, value_name = "N")]
    count: u64,
    /// Message size in bytes.
    #[arg(long, value_name = "S")]
    size: usize,
    /// Pause between round trips, in milliseconds.
    #[arg(long, value_name = "M", default_value_t = 0)]
    interval_ms: u64,
}

#[derive(Args)]
struct DatagramsArgs {
    /// Responder address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Datagrams to send.
    #[arg(long, value_name = "N")]
    count: u32,
    /// connect() the socket and send() instead of sendto().
    #[arg(long)]
    connected: bool,
}

#[derive(Args)]
struct WatchArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Watch a connected UDP socket instead of a TCP connection.
    #[arg(long)]
    udp: bool,
}

#[derive(Args)]
struct ReachArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// The backend to wait for.
    #[arg(long)]
    name: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match &cli.command {
        Command::Server(_) => "server",
        Command::Echo(_) => "echo",
        Command::Spread(_) => "spread",
        Command::Concurrent(_) => "concurrent",
        Command::Reset(_) => "reset",
        Command::Hold(_) => "hold",
        Command::Rr(_) => "rr",
        Command::Datagrams(_) => "datagrams",
        Command::Watch(_) => "watch",
        Command::Reach(_) => "reach",
    };
    let run = || -> Res<bool> {
        match &cli.command {
            Command::Server(flags) => server(flags),
            Command::Echo(flags) => echo(flags),
            Command::Spread(flags) => spread(flags),
            Command::Concurrent(flags) => concurrent(flags),
            Command::Reset(flags) => reset(flags),
            Command::Hold(flags) => hold(flags),
            Command::Rr(flags) => rr(flags),
            Command::Datagrams(flags) => datagrams(flags),
            Command::Watch(flags) => watch(flags),
            Command::Reach(flags) => reach(flags),
        }
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("zh-testpod {command}: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- server

/// Serves on `0.0.0.0:P` and `[::]:P` (IPv6 only) until killed; with
/// `--dual-stack`, on one dual-stack `[::]:P` socket instead. With
/// `--quiet` it does not greet: the client speaks first.
fn server(flags: &ServerArgs) -> Res<bool> {
    let name: Arc<str> = flags.name.as_str().into();
    let greet = !flags.quiet;
    let port = flags.port;
    let listeners = if flags.dual_stack {
        vec![listen_dual_stack(port).ctx(&format!("listen dual-stack on port {port}"))]
    } else {
        [
            IpAddr::from(Ipv4Addr::UNSPECIFIED),
            IpAddr::from(Ipv6Addr::UNSPECIFIED),
        ]
        .map(|ip| {
            listen(SocketAddr::new(ip, port))
                .ctx(&format!("listen on {}", SocketAddr::new(ip, port)))
        })
        .into()
    };
    let listeners = listeners.into_iter().collect::<Res<Vec<_>>>()?;
    let responders = [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ]
    .map(|ip| {
        udp_bind(SocketAddr::new(ip, port)).ctx(&format!("UDP bind {}", SocketAddr::new(ip, port)))
    });
    for responder in responders {
        let (responder, name) = (responder?, name.clone());
        thread::spawn(move || respond(&responder, &name));
    }
    say("READY");
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let name = name.clone();
            thread::spawn(move || accept_loop(listener, name, greet))
        })
        .collect();
    acceptors
        .into_iter()
        .for_each(|acceptor| drop(acceptor.join()));
    Ok(true)
}

fn accept_loop(listener: TcpListener, name: Arc<str>, greet: bool) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || serve(stream, &name, greet));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Greets (unless told not to), echoes until EOF, half-closes, and reports
/// how the connection ended.
fn serve(mut stream: TcpStream, name: &str, greet: bool) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(e) => return eprintln!("peer_addr: {e}"),
    };
    let mut bytes = 0u64;
    let mut echo = || -> io::Result<()> {
        stream.set_read_timeout(Some(SERVER_IDLE_TIMEOUT))?;
        if greet {
            // One write: a formatted write to a socket would send each piece alone.
            stream.write_all(format!("HELLO {name} {} {}\n", peer.ip(), peer.port()).as_bytes())?;
        }
        let mut buf = vec![0u8; DEFAULT_CHUNK];
        loop {
            let n = Patient(&stream).read(&mut buf)?;
            if n == 0 {
                return stream.shutdown(Shutdown::Write);
            }
            stream.write_all(&buf[..n])?;
            bytes += n as u64;
        }
    };
    let end = match echo() {
        Ok(()) => "eof".to_owned(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset".to_owned(),
        Err(e) => format!("error:{e}"),
    };
    say(format_args!("CONN peer={peer} bytes={bytes} end={end}"));
}

/// Answers every datagram with `<name> <peer-ip> <peer-port>`.
fn respond(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let answer = format!("{name} {} {}", peer.ip(), peer.port());
                if let Err(e) = socket.send_to(answer.as_bytes(), peer) {
                    eprintln!("UDP answer to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("UDP receive: {e}"),
        }
    }
}

// ---------------------------------------------------------------- clients

/// A connection to a test server, past its HELLO line.
struct Conn {
    stream: TcpStream,
    /// Reads of the stream; everything read goes through it, so that nothing
    /// buffered after the HELLO line is lost, and it sits out the bypass's
    /// spurious `EAGAIN`s (see [`Patient`]).
    reader: BufReader<Patient<TcpStream>>,
    server: String,
    seen_peer: SocketAddr,
    local: SocketAddr,
    /// What getpeername() returned once connected.
    peer: SocketAddr,
}

impl Conn {
    fn open(target: SocketAddr, nodelay: bool) -> Res<Conn> {
        let stream = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)
            .ctx(&format!("connect to {target}"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .ctx("set read timeout")?;
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .ctx("set write timeout")?;
        stream.set_nodelay(nodelay).ctx("set TCP_NODELAY")?;
        let local = stream.local_addr().ctx("local address")?;
        let peer = stream.peer_addr().ctx("peer address")?;
        let mut reader = BufReader::new(Patient(stream.try_clone().ctx("clone socket")?));
        let mut hello = String::new();
        reader.read_line(&mut hello).ctx("read HELLO")?;
        let (server, seen_peer) =
            parse_hello(&hello).ok_or_else(|| format!("bad greeting {hello:?}"))?;
        Ok(Conn {
            stream,
            reader,
            server,
            seen_peer,
            local,
            peer,
        })
    }

    fn describe(&self) -> serde_json::Value {
        json!({
            "server": self.server,
            "seen_peer": self.seen_peer.to_string(),
            "local": self.local.to_string(),
            "peer": self.peer.to_string(),
        })
    }
}

/// `HELLO <name> <ip> <port>` → (name, ip:port).
fn parse_hello(line: &str) -> Option<(String, SocketAddr)> {
    let mut fields = line.trim_end().strip_prefix("HELLO ")?.split(' ');
    let (name, ip, port) = (fields.next()?, fields.next()?, fields.next()?);
    Some((
        name.to_owned(),
        SocketAddr::new(ip.parse().ok()?, port.parse().ok()?),
    ))
}

/// What one echo exchange established.
struct Echoed {
    conn: Option<serde_json::Value>,
    /// Bytes that came back and matched.
    bytes: u64,
    error: Option<String>,
}

/// Opens a connection and sends `total` pattern bytes (seeded by `seed`, or by
/// the local port) in writes of `chunk` from a thread, then half-closes; reads
/// the echo meanwhile and checks every byte, and that EOF comes after exactly
/// `total` bytes (a half-close must not lose data in flight).
fn echo_once(
    target: SocketAddr,
    total: u64,
    chunk: usize,
    nodelay: bool,
    seed: Option<u64>,
) -> Echoed {
    let mut conn = match Conn::open(target, nodelay) {
        Ok(conn) => conn,
        Err(e) => {
            return Echoed {
                conn: None,
                bytes: 0,
                error: Some(e),
            }
        }
    };
    let seed = seed.unwrap_or(conn.local.port().into());
    let mut writer = match conn.stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            return Echoed {
                conn: Some(conn.describe()),
                bytes: 0,
                error: Some(format!("clone socket: {e}")),
            }
        }
    };
    let sender = thread::spawn(move || -> Res<()> {
        let mut buf = vec![0u8; chunk.max(1)];
        let mut sent = 0u64;
        while sent < total {
            let n = buf.len().min((total - sent) as usize);
            fill_pattern(seed, sent, &mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .ctx(&format!("write at byte {sent}"))?;
            sent += n as u64;
        }
        writer.shutdown(Shutdown::Write).ctx("shutdown(write)")
    });
    let (received, read_error) = check_pattern(&mut conn.reader, seed, total, true);
    if read_error.is_some() {
        // Unblocks a sender stuck on a full socket buffer.
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
    let send_error = sender
        .join()
        .unwrap_or_else(|_| Err("writer thread panicked".into()))
        .err();
    let error = read_error.or(send_error);
    Echoed {
        conn: Some(conn.describe()),
        bytes: received,
        error,
    }
}

fn echo(flags: &EchoArgs) -> Res<bool> {
    let (target, total, chunk, nodelay) = (flags.target, flags.bytes, flags.chunk, flags.nodelay);
    let echoed = echo_once(target, total, chunk, nodelay, None);
    let mut report = echoed.conn.unwrap_or_else(
        || json!({ "server": null, "seen_peer": null, "local": null, "peer": null }),
    );
    report["bytes"] = echoed.bytes.into();
    report["ok"] = echoed.error.is_none().into();
    report["error"] = echoed.error.clone().into();
    say(report);
    Ok(echoed.error.is_none())
}

fn spread(flags: &SpreadArgs) -> Res<bool> {
    let target = flags.target;
    let count = flags.count;
    let mut counts = BTreeMap::<String, u32>::new();
    let mut errors = Vec::new();
    for _ in 0..count {
        match Conn::open(target, false) {
            Ok(conn) => *counts.entry(conn.server).or_default() += 1,
            Err(e) => errors.push(e),
        }
    }
    errors.dedup();
    errors.truncate(5);
    say(
        json!({ "counts": counts, "failed": count - counts.values().sum::<u32>(), "errors": errors }),
    );
    Ok(errors.is_empty())
}

/// Connects to `target` every millisecond until a connection is greeted by
/// `--name`: how long a change takes to reach the connects of a pod. A
/// connect that fails or takes over 50 ms (an endpoint that does not
/// exist) counts as one more attempt.
fn reach(flags: &ReachArgs) -> Res<bool> {
    let target = flags.target;
    let name = flags.name.clone();
    let attempt = || -> Result<String, String> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_millis(50))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut hello = String::new();
        BufReader::new(Patient(stream))
            .read_line(&mut hello)
            .map_err(|e| format!("read: {e}"))?;
        parse_hello(&hello)
            .map(|(server, _)| server)
            .ok_or_else(|| format!("bad greeting {hello:?}"))
    };
    // What the attempts after the first met: how many were greeted by
    // another server, how many failed (and the last error), the slowest.
    let (mut others, mut failed, mut error) = (0u64, 0u64, String::new());
    let mut slowest = Duration::ZERO;
    for attempts in 1u64.. {
        let started = std::time::Instant::now();
        let outcome = attempt();
        slowest = slowest.max(started.elapsed());
        match outcome {
            Ok(server) if server == name => {
                say(format!(
                    "REACHED attempts={attempts} others={others} failed={failed} \
                     slowest_ms={} error={error:?}",
                    slowest.as_millis()
                ));
                return Ok(true);
            }
            Ok(_) => others += 1,
            Err(e) => {
                failed += 1;
                error = e;
            }
        }
        if attempts == 1 {
            say("STARTED");
            (others, failed, slowest) = (0, 0, Duration::ZERO);
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(false)
}

/// Sends `count` datagrams from one socket, each awaiting its answer (one
/// second at most: a datagram unanswered by then counts as lost), and
/// reports which servers answered and from which addresses the answers came.
/// The unspecified address of `target`'s family, to bind a client to.
fn unspecified_of(target: SocketAddr) -> IpAddr {
    match target {
        SocketAddr::V4(_) => IpAddr::from(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::from(Ipv6Addr::UNSPECIFIED),
    }
}

fn datagrams(flags: &DatagramsArgs) -> Res<bool> {
    let target = flags.target;
    let count = flags.count;
    let connected = flags.connected;
    let socket = UdpSocket::bind((unspecified_of(target), 0)).ctx("UDP bind")?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .ctx("set read timeout")?;
    let mut peer = None;
    if connected {
        socket
            .connect(target)
            .ctx(&format!("connect to {target}"))?;
        peer = Some(socket.peer_addr().ctx("peer address")?.to_string());
    }
    let mut servers = BTreeMap::<String, u32>::new();
    let (mut lost, mut sources) = (Vec::<u32>::new(), BTreeMap::<String, u32>::new());
    let mut buf = [0u8; 2048];
    for index in 0..count {
        let query = format!("Q{index}");
        let sent = if connected {
            socket.send(query.as_bytes())
        } else {
            socket.send_to(query.as_bytes(), target)
        };
        sent.ctx("send")?;
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                *sources.entry(source.to_string()).or_default() += 1;
                let answer = String::from_utf8_lossy(&buf[..n]);
                let server = answer.split(' ').next().unwrap_or_default().to_owned();
                *servers.entry(server).or_default() += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                lost.push(index);
            }
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let ok = lost.is_empty() && sources.keys().all(|source| *source == target.to_string());
    say(json!({
        "servers": servers, "sources": sources, "lost": lost, "peer": peer, "ok": ok,
    }));
    Ok(ok)
}

/// Connects to `--target` (TCP, or UDP with `--udp`), prints which server
/// answered, then waits, reading, until the socket fails or the server
/// ends the connection, and prints `ENDED <why>`.
fn watch(flags: &WatchArgs) -> Res<bool> {
    let target = flags.target;
    let mut buf = [0u8; 2048];
    let ended = if flags.udp {
        let socket = UdpSocket::bind((unspecified_of(target), 0)).ctx("UDP bind")?;
        socket
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .ctx("set read timeout")?;
        socket
            .connect(target)
            .ctx(&format!("connect to {target}"))?;
        socket.send(b"WHO").ctx("send")?;
        let n = socket.recv(&mut buf).ctx("receive the answer")?;
        let answer = String::from_utf8_lossy(&buf[..n]);
        say(json!({
            "server": answer.split(' ').next().unwrap_or_default(),
            "peer": socket.peer_addr().ctx("peer address")?.to_string(),
        }));
        wait_for_failure(|| socket.recv(&mut buf))
    } else {
        let mut conn = Conn::open(target, true)?;
        say(conn.describe());
        wait_for_failure(|| conn.stream.read(&mut buf))
    };
    say(format_args!("ENDED {ended}"));
    Ok(true)
}

/// Reads until a read fails for another reason than its timeout, or
/// returns end of file.
fn wait_for_failure(mut read: impl FnMut() -> io::Result<usize>) -> String {
    loop {
        match read() {
            Ok(0) => return "eof".to_owned(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return e.to_string(),
        }
    }
}

fn concurrent(flags: &ConcurrentArgs) -> Res<bool> {
    let target = flags.target;
    let conns = flags.conns;
    let total = flags.bytes;
    // Each connection's own seed, so that crossed streams would be noticed.
    let workers: Vec<_> = (0..conns)
        .map(|index| {
            thread::spawn(move || {
                echo_once(target, total, DEFAULT_CHUNK, false, Some(1_000_000 + index))
            })
        })
        .collect();
    let errors: Vec<String> = workers
        .into_iter()
        .filter_map(|worker| {
            worker
                .join()
                .map_or(Some("worker panicked".into()), |echoed| echoed.error)
        })
        .collect();
    let failed = errors.len() as u64;
    let first: Vec<_> = errors.into_iter().take(5).collect();
    say(json!({ "ok": conns - failed, "failed": failed, "errors": first }));
    Ok(failed == 0)
}

/// Ends a connection with a reset (RST) instead of a FIN: SO_LINGER on with a
/// zero timeout makes close() abort it.
fn reset(flags: &TargetArgs) -> Res<bool> {
    let target = flags.target;
    let result = (|| -> Res<serde_json::Value> {
        let mut conn = Conn::open(target, true)?;
        let probe = b"zerohop\n";
        conn.stream.write_all(probe).ctx("write")?;
        let mut back = [0u8; 8];
        conn.reader.read_exact(&mut back).ctx("read echo")?;
        if &back != probe {
            return Err(format!("echo {back:?} differs from {probe:?}"));
        }
        linger_zero(&conn.stream).ctx("SO_LINGER")?;
        let report = conn.describe();
        drop(conn); // closes both descriptors of the socket: the last close resets
        Ok(report)
    })();
    let ok = result.is_ok();
    let mut report = result.clone().unwrap_or_else(|_| json!({}));
    report["ok"] = ok.into();
    report["error"] = result.err().into();
    say(report);
    Ok(ok)
}

/// Request/response on one connection, the client speaking first (as HTTP
/// or redis clients do) to a `--quiet` server: `count` times, write `size`
/// pattern bytes right away and read their echo back, checking every byte,
/// then wait `interval-ms`.
fn rr(flags: &RrArgs) -> Res<bool> {
    let target = flags.target;
    let count = flags.count;
    let size = flags.size;
    let interval = Duration::from_millis(flags.interval_ms);
    let result = (|| -> Res<SocketAddr> {
        let mut stream = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)
            .ctx(&format!("connect to {target}"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .ctx("set read timeout")?;
        stream.set_nodelay(true).ctx("set TCP_NODELAY")?;
        let local = stream.local_addr().ctx("local address")?;
        let seed = u64::from(local.port());
        let (mut request, mut reply, mut expected) =
            (vec![0u8; size], vec![0u8; size], vec![0u8; size]);
        for round in 0..count {
            let offset = round * size as u64;
            fill_pattern(seed, offset, &mut request);
            stream
                .write_all(&request)
                .ctx(&format!("write request {round}"))?;
            Patient(&stream)
                .read_exact(&mut reply)
                .ctx(&format!("read reply {round}"))?;
            fill_pattern(seed, offset, &mut expected);
            if reply != expected {
                return Err(format!("reply {round} differs from its request"));
            }
            thread::sleep(interval);
        }
        Ok(local)
    })();
    let ok = result.is_ok();
    say(
        json!({ "ok": ok, "local": result.as_ref().ok().map(ToString::to_string), "error": result.err() }),
    );
    Ok(ok)
}

/// One connection kept open while stdin has lines: each is sent and its echo
/// printed as `ECHO <line>` (or `ERROR <message>`).
fn hold(flags: &TargetArgs) -> Res<bool> {
    let target = flags.target;
    let mut conn = Conn::open(target, true)?;
    say(conn.describe());
    let mut ok = true;
    for line in io::stdin().lock().lines() {
        let line = line.ctx("read stdin")?;
        let mut echoed = String::new();
        let sent = conn.stream.write_all(format!("{line}\n").as_bytes());
        let result = match sent.and_then(|()| conn.reader.read_line(&mut echoed)) {
            Ok(0) => Err("connection closed".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => say(format_args!("ECHO {}", echoed.trim_end_matches('\n'))),
            Err(e) => {
                ok = false;
                say(format_args!("ERROR {e}"));
            }
        }
    }
    // Half-close, then drain what the server still sends until its FIN.
    conn.stream
        .shutdown(Shutdown::Write)
        .ctx("shutdown(write)")?;
    io::copy(&mut conn.reader, &mut io::sink()).ctx("read until EOF")?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_lines_parse() {
        let (name, peer) = parse_hello("HELLO b fd00:244:1::2 4000\n").unwrap();
        assert_eq!(
            (name.as_str(), peer.to_string().as_str()),
            ("b", "[fd00:244:1::2]:4000")
        );
        assert!(parse_hello("HELLO b").is_none());
    }
}
