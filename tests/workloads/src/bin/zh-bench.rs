//! zh-bench: the client and server of `cargo xtask bench`.
//!
//! ```text
//! zh-bench server [--tcp-port P] [--uds PATH] [--greet-tcp-port Q] [--greet-uds PATH]
//!                 [--cpu C]
//! zh-bench client --target tcp:IP:PORT|uds:PATH [--greet] --mode rr|stream|conn
//!                 --size N [--nodelay] [--iterations N] [--seconds S] [--warmup N]
//!                 [--cpu C]
//! ```
//!
//! `--cpu C` pins the process (all its threads) to CPU `C`.
//!
//! On the `--greet-…` listeners the server speaks first: one byte, right after
//! accepting, which the client (`--greet`) waits for before it writes. This is
//! for long connections through zerohop's bypass: a message sent before the
//! server's end of the connection is registered in the sockhash goes through
//! the stack, and the whole connection with it (sk_msg.rs); after the greeting
//! both ends are registered. The connection-rate runs use the other listeners,
//! where the client writes right after `connect()`, as an HTTP client does.
//!
//! One server answers every mode, over TCP and over a Unix socket. A
//! connection starts with a 16-byte header from the client:
//!
//! | bytes | field                                                    |
//! |-------|----------------------------------------------------------|
//! | 0     | mode: 1 rr, 2 stream, 3 conn, 4 cpu                      |
//! | 1     | 1: the server sets TCP_NODELAY on its side too           |
//! | 2..4  | zero                                                     |
//! | 4..8  | message size, u32 little-endian                          |
//! | 8..16 | stream: warm-up bytes before the sync byte, u64 LE       |
//!
//! - rr: the server echoes messages of `size` bytes until EOF;
//! - stream: the server reads the warm-up bytes, answers one sync byte, then
//!   reads and discards until EOF and answers the total byte count (u64 LE);
//! - conn: the server reads one `size`-byte message, echoes it, and closes
//!   after the client has (the client closes first, so TIME_WAIT stays on the
//!   client: on the server, it would refuse SYNs of a later path that reuse a
//!   4-tuple with other sequence numbers and timestamps, e.g. behind DNAT);
//! - cpu: the server answers its own CPU time so far (user + system, µs, u64 LE).
//!
//! The client prints one JSON line. Its CPU time (getrusage) and the server's
//! (asked with a `cpu` connection before and after) cover the measured phase
//! only, not the warm-up.
//!
//! Reads sit out spurious `EAGAIN`s: on a socket whose connection bypasses the
//! stack (sockmap), the kernel's `tcp_bpf_recvmsg` may return `EAGAIN` from a
//! blocking read when a wake-up brought no data. A read still fails after
//! [`CLIENT_TIMEOUT`] (client) or [`SERVER_IDLE`] (server) without data.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zerohop_workloads::cli::{say, Context, Res};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_IDLE: Duration = Duration::from_secs(120);
/// How long one blocking read waits before the loop looks at its deadline.
const READ_SLICE: Duration = Duration::from_secs(1);
const HEADER: usize = 16;

const MODE_RR: u8 = 1;
const MODE_STREAM: u8 = 2;
const MODE_CONN: u8 = 3;
const MODE_CPU: u8 = 4;
/// What a greeting listener sends first on each connection.
const GREETING: u8 = b'G';

/// The client and server of `cargo xtask bench`.
#[derive(Parser)]
#[command(name = "zh-bench")]
struct Cli {
    /// Pin the process (all its threads) to this CPU.
    #[arg(long, global = true, value_name = "C")]
    cpu: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every mode, over TCP and over Unix sockets.
    Server(ServerArgs),
    /// Measure one mode against a server and print one JSON line.
    Client(ClientFlags),
}

#[derive(Args)]
struct ServerArgs {
    /// Listen on this TCP port (all IPv4 addresses); the client writes first.
    #[arg(long, value_name = "P")]
    tcp_port: Option<u16>,
    /// Listen on this Unix socket path; the client writes first.
    #[arg(long, value_name = "PATH")]
    uds: Option<PathBuf>,
    /// Listen on this TCP port and greet each connection with one byte.
    #[arg(long, value_name = "Q")]
    greet_tcp_port: Option<u16>,
    /// Listen on this Unix socket path and greet each connection with one byte.
    #[arg(long, value_name = "PATH")]
    greet_uds: Option<PathBuf>,
}

#[derive(Args)]
struct ClientFlags {
    /// Where to connect: tcp:IP:PORT or uds:PATH.
    #[arg(long, value_name = "tcp:IP:PORT|uds:PATH")]
    target: Address,
    /// Wait for the server's one-byte greeting before writing.
    #[arg(long)]
    greet: bool,
    /// What to measure.
    #[arg(long, value_parser = ["rr", "stream", "conn"])]
    mode: String,
    /// Message size in bytes (1 to 2^32-1).
    #[arg(long, value_name = "N")]
    size: usize,
    /// Set TCP_NODELAY on both ends.
    #[arg(long)]
    nodelay: bool,
    /// Round trips to measure (rr).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    iterations: u64,
    /// How long to measure, in seconds (stream, conn).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    seconds: f64,
    /// Round trips, bytes or connections before the measured phase.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    warmup: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Server(_) => "server",
        Command::Client(_) => "client",
    };
    let run = || -> Res<()> {
        if let Some(cpu) = cli.cpu {
            pin(cpu)?;
        }
        match &cli.command {
            Command::Server(flags) => server(flags),
            Command::Client(flags) => client(flags),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zh-bench {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pins this process (and the threads it starts later) to CPU `cpu`.
fn pin(cpu: usize) -> Res<()> {
    // SAFETY: the set is a plain bit array, zeroed then filled by CPU_SET
    // (which checks `cpu` against its size); pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("pin to CPU {cpu}: {}", io::Error::last_os_error()))
    }
}

/// This process's CPU time so far, user + system, in microseconds.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed structure we pass; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

// ---------------------------------------------------------------- sockets

/// A connected TCP or Unix stream socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn configure(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_nodelay(nodelay)?;
                s.set_read_timeout(Some(READ_SLICE))
            }
            Conn::Unix(s) => s.set_read_timeout(Some(READ_SLICE)),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }

    fn write_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    /// One read, retried on `EAGAIN`/`EINTR` (see the module docs) until
    /// `patience` passes without data. `Ok(0)` is EOF.
    fn read_patiently(&mut self, buf: &mut [u8], patience: Duration) -> io::Result<usize> {
        let mut since: Option<Instant> = None;
        loop {
            match self.read_some(buf) {
                Ok(n) => return Ok(n),
                Err(e) if retry(&e) => {
                    let since = *since.get_or_insert_with(Instant::now);
                    if since.elapsed() > patience {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no data for {patience:?}"),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `buf`: `Ok(false)` on EOF before its first byte, an error on EOF
    /// within it.
    fn read_full(&mut self, buf: &mut [u8], patience: Duration) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_patiently(&mut buf[got..], patience)? {
                0 if got == 0 => return Ok(false),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF after {got} of {} bytes", buf.len()),
                    ))
                }
                n => got += n,
            }
        }
        Ok(true)
    }

    fn write_full(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let mut since: Option<Instant> = None;
        while !buf.is_empty() {
            match self.write_some(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if retry(&e) => {
                    let since = *since.get_or_insert_with(Instant::now);
                    if since.elapsed() > CLIENT_TIMEOUT {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------- server

fn server(flags: &ServerArgs) -> Res<()> {
    let pool = Pool::new();
    let mut acceptors = Vec::new();
    let mut listening = Vec::new();
    for (port_flag, port, uds_flag, uds, greet) in [
        ("tcp-port", flags.tcp_port, "uds", &flags.uds, false),
        (
            "greet-tcp-port",
            flags.greet_tcp_port,
            "greet-uds",
            &flags.greet_uds,
            true,
        ),
    ] {
        if let Some(port) = port {
            let tcp =
                TcpListener::bind(("0.0.0.0", port)).ctx(&format!("listen on TCP port {port}"))?;
            let pool = pool.clone();
            acceptors.push(thread::spawn(move || {
                for stream in tcp.incoming() {
                    match stream {
                        Ok(stream) => pool.run(Conn::Tcp(stream), greet),
                        Err(e) => eprintln!("accept (tcp): {e}"),
                    }
                }
            }));
            listening.push(format!("{port_flag}={port}"));
        }
        if let Some(path) = uds {
            let _ = std::fs::remove_file(path);
            let unix = UnixListener::bind(path).ctx(&format!("listen on {}", path.display()))?;
            let pool = pool.clone();
            acceptors.push(thread::spawn(move || {
                for stream in unix.incoming() {
                    match stream {
                        Ok(stream) => pool.run(Conn::Unix(stream), greet),
                        Err(e) => eprintln!("accept (unix): {e}"),
                    }
                }
            }));
            listening.push(format!("{uds_flag}={}", path.display()));
        }
    }
    if acceptors.is_empty() {
        return Err(
            "nothing to listen on: give --tcp-port, --uds, --greet-tcp-port or --greet-uds".into(),
        );
    }
    say(format_args!("READY {}", listening.join(" ")));
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    Ok(())
}

/// One thread per connection, but threads are kept and reused: thread
/// creation would otherwise weigh on the connection rate of every path alike.
#[derive(Clone)]
struct Pool {
    /// Workers that promised to take the next queued connection.
    idle: Arc<Mutex<usize>>,
    queue: mpsc::Sender<(Conn, bool)>,
    incoming: Arc<Mutex<mpsc::Receiver<(Conn, bool)>>>,
}

impl Pool {
    fn new() -> Pool {
        let (queue, incoming) = mpsc::channel();
        Pool {
            idle: Arc::default(),
            queue,
            incoming: Arc::new(Mutex::new(incoming)),
        }
    }

    /// Serves `conn` on an idle worker, else on a new one. Each queued
    /// connection consumes one idle promise, so none waits behind a busy worker.
    fn run(&self, conn: Conn, greet: bool) {
        {
            let mut idle = self.idle.lock().unwrap();
            if *idle > 0 {
                *idle -= 1;
                drop(idle);
                let _ = self.queue.send((conn, greet));
                return;
            }
        }
        let pool = self.clone();
        thread::spawn(move || {
            let mut next = Some((conn, greet));
            while let Some((conn, greet)) = next.take() {
                serve(conn, greet);
                *pool.idle.lock().unwrap() += 1;
                next = pool.incoming.lock().unwrap().recv().ok();
            }
        });
    }
}

fn serve(mut conn: Conn, greet: bool) {
    if let Err(e) = serve_conn(&mut conn, greet) {
        if e.kind() != io::ErrorKind::ConnectionReset {
            eprintln!("connection: {e}");
        }
    }
}

fn serve_conn(conn: &mut Conn, greet: bool) -> io::Result<()> {
    conn.configure(false)?;
    if greet {
        conn.write_full(&[GREETING])?;
    }
    let mut header = [0u8; HEADER];
    if !conn.read_full(&mut header, SERVER_IDLE)? {
        return Ok(());
    }
    let mode = header[0];
    let nodelay = header[1] == 1;
    let size = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let warmup = u64::from_le_bytes(header[8..16].try_into().unwrap());
    conn.configure(nodelay)?;
    match mode {
        MODE_RR => {
            let mut buf = vec![0u8; size.max(1)];
            while conn.read_full(&mut buf, SERVER_IDLE)? {
                conn.write_full(&buf)?;
            }
        }
        MODE_STREAM => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            let mut synced = warmup == 0;
            if synced {
                conn.write_full(&[1])?;
            }
            loop {
                // Before the sync, read no further than the warm-up's end.
                let want = if synced {
                    buf.len()
                } else {
                    buf.len().min((warmup - total) as usize)
                };
                let n = conn.read_patiently(&mut buf[..want], SERVER_IDLE)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if !synced && total == warmup {
                    synced = true;
                    conn.write_full(&[1])?;
                }
            }
            conn.write_full(&total.to_le_bytes())?;
        }
        MODE_CONN => {
            let mut buf = vec![0u8; size.max(1)];
            if conn.read_full(&mut buf, SERVER_IDLE)? {
                conn.write_full(&buf)?;
            }
            // The client closes first (TIME_WAIT stays on its side, where it
            // only holds back its own ports): wait for its EOF, then close.
            conn.read_patiently(&mut buf[..1], SERVER_IDLE)?;
        }
        MODE_CPU => conn.write_full(&cpu_us().to_le_bytes())?,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown mode {other}"),
            ))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- client

#[derive(Clone)]
enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Res<Address> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            Ok(Address::Tcp(addr.parse().ctx("tcp:IP:PORT")?))
        } else if let Some(path) = s.strip_prefix("uds:") {
            Ok(Address::Unix(path.into()))
        } else {
            Err(format!("target {s:?}: expected tcp:IP:PORT or uds:PATH"))
        }
    }
}

/// Where the client connects, and whether the server speaks first there.
struct Target {
    address: Address,
    greet: bool,
}

impl Target {
    /// Connects; with `greet`, also waits for the server's greeting, so that
    /// the client's first message leaves only once the server has accepted.
    fn connect(&self, nodelay: bool) -> io::Result<Conn> {
        let mut conn = match &self.address {
            Address::Tcp(addr) => Conn::Tcp(TcpStream::connect_timeout(addr, CLIENT_TIMEOUT)?),
            Address::Unix(path) => Conn::Unix(UnixStream::connect(path)?),
        };
        conn.configure(nodelay)?;
        if self.greet {
            let mut greeting = [0u8; 1];
            if !conn.read_full(&mut greeting, CLIENT_TIMEOUT)? || greeting[0] != GREETING {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no greeting from the server",
                ));
            }
        }
        Ok(conn)
    }

    /// The server's CPU time so far (a `cpu` connection).
    fn server_cpu_us(&self) -> Res<u64> {
        let mut conn = self.connect(true).ctx("connect (cpu query)")?;
        conn.write_full(&header(MODE_CPU, true, 0, 0))
            .ctx("write (cpu query)")?;
        let mut answer = [0u8; 8];
        conn.read_full(&mut answer, CLIENT_TIMEOUT)
            .ctx("read (cpu query)")?;
        Ok(u64::from_le_bytes(answer))
    }
}

fn header(mode: u8, nodelay: bool, size: usize, warmup: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[0] = mode;
    header[1] = u8::from(nodelay);
    header[4..8].copy_from_slice(&(size as u32).to_le_bytes());
    header[8..16].copy_from_slice(&warmup.to_le_bytes());
    header
}

struct ClientArgs {
    target: Target,
    size: usize,
    nodelay: bool,
    iterations: u64,
    seconds: f64,
    warmup: u64,
}

/// What the measured phase did (warm-up excluded, except in `bytes_sent`).
#[derive(Default)]
struct Measured {
    ops: u64,
    elapsed: Duration,
    /// Per-operation latencies (rr: round trips; conn: connect to close).
    samples: Vec<Duration>,
    /// Payload bytes delivered in the measured phase (stream).
    bytes: u64,
    /// Every byte written and read on the measured connections, warm-up
    /// and headers included (not the `cpu` queries).
    bytes_sent: u64,
    bytes_received: u64,
    client_cpu_us: u64,
    server_cpu_us: u64,
}

fn client(flags: &ClientFlags) -> Res<()> {
    let mode = &flags.mode;
    let args = ClientArgs {
        target: Target {
            address: flags.target.clone(),
            greet: flags.greet,
        },
        size: flags.size,
        nodelay: flags.nodelay,
        iterations: flags.iterations,
        seconds: flags.seconds,
        warmup: flags.warmup,
    };
    if args.size == 0 || args.size > u32::MAX as usize {
        return Err(format!("--size {} out of range", args.size));
    }
    let measured = match mode.as_str() {
        "rr" => rr(&args)?,
        "stream" => stream(&args)?,
        "conn" => conn_rate(&args)?,
        other => return Err(format!("unknown --mode {other:?}")),
    };
    let secs = measured.elapsed.as_secs_f64();
    let mut sorted: Vec<f64> = measured
        .samples
        .iter()
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        // Nearest rank.
        let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
        sorted.get(rank - 1).copied()
    };
    let mean = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64);
    say(json!({
        "mode": mode,
        "size": args.size,
        "nodelay": args.nodelay,
        "ops": measured.ops,
        "elapsed_s": secs,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": sorted.last(),
        "mean_us": mean,
        "throughput_mbps": (measured.bytes > 0).then(|| measured.bytes as f64 / 1e6 / secs),
        "ops_per_s": measured.ops as f64 / secs,
        "bytes": measured.bytes,
        "bytes_sent": measured.bytes_sent,
        "bytes_received": measured.bytes_received,
        "client_cpu_us": measured.client_cpu_us,
        "server_cpu_us": measured.server_cpu_us,
    }));
    Ok(())
}

/// CPU of both sides at the start of a measured phase.
struct CpuMark {
    client: u64,
    server: u64,
}

impl CpuMark {
    fn now(target: &Target) -> Res<CpuMark> {
        Ok(CpuMark {
            server: target.server_cpu_us()?,
            client: cpu_us(),
        })
    }

    fn finish(self, target: &Target, measured: &mut Measured) -> Res<()> {
        measured.client_cpu_us = cpu_us() - self.client;
        measured.server_cpu_us = target.server_cpu_us()? - self.server;
        Ok(())
    }
}

/// Round trips of `size` bytes on one connection.
fn rr(args: &ClientArgs) -> Res<Measured> {
    let mut conn = args.target.connect(args.nodelay).ctx("connect")?;
    let mut measured = Measured::default();
    conn.write_full(&header(MODE_RR, args.nodelay, args.size, 0))
        .ctx("write header")?;
    measured.bytes_sent += HEADER as u64;
    let message = vec![0x5a_u8; args.size];
    let mut reply = vec![0u8; args.size];
    let mut exchange = |conn: &mut Conn| -> Res<()> {
        conn.write_full(&message).ctx("write")?;
        match conn.read_full(&mut reply, CLIENT_TIMEOUT).ctx("read")? {
            true => Ok(()),
            false => Err("EOF instead of a reply".into()),
        }
    };
    for _ in 0..args.warmup {
        exchange(&mut conn)?;
    }
    measured.samples.reserve(args.iterations as usize);
    let mark = CpuMark::now(&args.target)?;
    let start = Instant::now();
    for _ in 0..args.iterations {
        let t = Instant::now();
        exchange(&mut conn)?;
        measured.samples.push(t.elapsed());
    }
    measured.elapsed = start.elapsed();
    mark.finish(&args.target, &mut measured)?;
    measured.ops = args.iterations;
    measured.bytes_sent += (args.warmup + args.iterations) * args.size as u64;
    measured.bytes_received =
        (args.warmup + args.iterations) * args.size as u64 + u64::from(args.target.greet);
    Ok(measured)
}

/// Writes of `size` bytes for `seconds` on one connection, after `warmup`
/// writes and a sync byte (so the measured phase starts with empty buffers).
/// The phase ends when the server has counted every byte.
fn stream(args: &ClientArgs) -> Res<Measured> {
    let mut conn = args.target.connect(args.nodelay).ctx("connect")?;
    let mut measured = Measured::default();
    let warmup_bytes = args.warmup * args.size as u64;
    conn.write_full(&header(MODE_STREAM, args.nodelay, args.size, warmup_bytes))
        .ctx("write header")?;
    let chunk = vec![0x5a_u8; args.size];
    for _ in 0..args.warmup {
        conn.write_full(&chunk).ctx("write (warm-up)")?;
    }
    let mut sync = [0u8; 1];
    if !conn.read_full(&mut sync, CLIENT_TIMEOUT).ctx("read sync")? {
        return Err("EOF instead of the sync byte".into());
    }
    let mark = CpuMark::now(&args.target)?;
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < duration {
        conn.write_full(&chunk).ctx("write")?;
        writes += 1;
    }
    conn.shutdown_write().ctx("shutdown(write)")?;
    let mut count = [0u8; 8];
    if !conn
        .read_full(&mut count, CLIENT_TIMEOUT)
        .ctx("read count")?
    {
        return Err("EOF instead of the byte count".into());
    }
    measured.elapsed = start.elapsed();
    mark.finish(&args.target, &mut measured)?;
    let bytes = writes * args.size as u64;
    let counted = u64::from_le_bytes(count);
    if counted != warmup_bytes + bytes {
        return Err(format!(
            "the server counted {counted} bytes, {} were sent",
            warmup_bytes + bytes
        ));
    }
    measured.ops = writes;
    measured.bytes = bytes;
    measured.bytes_sent = HEADER as u64 + warmup_bytes + bytes;
    measured.bytes_received = 1 + 8 + u64::from(args.target.greet);
    Ok(measured)
}

/// Connections for `seconds`, each: connect, one `size`-byte exchange, close.
fn conn_rate(args: &ClientArgs) -> Res<Measured> {
    let mut measured = Measured::default();
    let mut request = header(MODE_CONN, args.nodelay, args.size, 0).to_vec();
    request.resize(HEADER + args.size, 0x5a);
    let mut reply = vec![0u8; args.size];
    let mut one = || -> Res<()> {
        let mut conn = args.target.connect(args.nodelay).ctx("connect")?;
        // Header and message in one write, as a client's first request would go.
        conn.write_full(&request).ctx("write")?;
        if !conn.read_full(&mut reply, CLIENT_TIMEOUT).ctx("read")? {
            return Err("EOF instead of a reply".into());
        }
        // Dropping the socket closes it: the client closes first, as an
        // HTTP/1.0 client would.
        Ok(())
    };
    for _ in 0..args.warmup {
        one()?;
    }
    let mark = CpuMark::now(&args.target)?;
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        one()?;
        measured.samples.push(t.elapsed());
    }
    measured.elapsed = start.elapsed();
    mark.finish(&args.target, &mut measured)?;
    measured.ops = measured.samples.len() as u64;
    measured.bytes_sent = (args.warmup + measured.ops) * request.len() as u64;
    measured.bytes_received =
        (args.warmup + measured.ops) * (args.size as u64 + u64::from(args.target.greet));
    Ok(measured)
}
