//! zh-origdst: a stand-in for an Envoy-style waypoint, which learns where a
//! redirected connection was going with getsockopt(SO_ORIGINAL_DST), and the
//! client that checks it.
//!
//! ```text
//! zh-origdst --listen ADDR:PORT[,ADDR:PORT...] [--count N]
//! zh-origdst --connect ADDR:PORT [--mark M]
//! ```
//!
//! `--listen`: one listener per address (IPv6 ones IPv6-only, as a real
//! pod's); prints `READY` once all listen. For each accepted connection it
//! asks getsockopt(SOL_IP, SO_ORIGINAL_DST) — SOL_IPV6 and
//! IP6T_SO_ORIGINAL_DST on an IPv6 socket, as Envoy does — writes the client
//! one line `ORIGDST <addr:port>` (or `ORIGDST none <errno>`), closes, and
//! prints a JSON line `{"peer","local","origdst","errno"}`. It exits after
//! `N` connections (default: never).
//!
//! `--connect`: connects (with `SO_MARK` M, as a waypoint marks its own
//! sockets, when given), reads the first line the server sends (`ORIGDST …`
//! from a zh-origdst, `HELLO …` from a zh-testpod server) and prints
//! `{"line","local","peer","ok","error"}` (`peer`: what getpeername()
//! returned).

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use clap::Parser;
use serde_json::json;
use socket2::SockRef;
use zerohop_workloads::cli::{say, Context, Res};
use zerohop_workloads::socket::{connect_marked, listen};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A stand-in for an Envoy-style waypoint that reports SO_ORIGINAL_DST, and
/// its client.
#[derive(Parser)]
#[command(name = "zh-origdst")]
#[command(group = clap::ArgGroup::new("role").required(true).args(["listen", "connect"]))]
struct Cli {
    /// Serve on these addresses (comma-separated ADDR:PORT list).
    #[arg(long, value_name = "ADDR:PORT[,ADDR:PORT...]", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Exit after this many connections (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    count: u64,
    /// Connect to this address and print the first line it sends.
    #[arg(long, value_name = "ADDR:PORT")]
    connect: Option<SocketAddr>,
    /// SO_MARK of the client's socket (0: none).
    #[arg(long, value_name = "M", default_value_t = 0)]
    mark: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Res<bool> {
        match cli.connect {
            Some(target) => connect(target, cli.mark),
            None => serve(&cli.listen, cli.count),
        }
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("zh-origdst: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- waypoint

fn serve(addrs: &[SocketAddr], count: u64) -> Res<bool> {
    // count 0 = serve until killed.
    let listeners = addrs
        .iter()
        .map(|&addr| listen(addr).ctx(&format!("listen on {addr}")))
        .collect::<Res<Vec<_>>>()?;
    say("READY");
    let served = Arc::new(AtomicU64::new(0));
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let served = served.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => answer(stream),
                        Err(e) => eprintln!("accept: {e}"),
                    }
                    if served.fetch_add(1, Ordering::SeqCst) + 1 == count {
                        // Every answer was printed (and flushed) before.
                        std::process::exit(0);
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

/// Asks the accepted socket for its original destination, tells the client,
/// reports it, and closes.
fn answer(mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let origdst = original_dst(&stream);
    let line = match &origdst {
        Ok(addr) => format!("ORIGDST {addr}\n"),
        Err(errno) => format!("ORIGDST none {errno}\n"),
    };
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    // One write: the client reads one line.
    if let Err(e) = stream.write_all(line.as_bytes()) {
        eprintln!("write to {peer:?}: {e}");
    }
    say(json!({
        "peer": peer.map(|addr| addr.to_string()),
        "local": local.map(|addr| addr.to_string()),
        "origdst": origdst.as_ref().ok().map(ToString::to_string),
        "errno": origdst.err(),
    }));
}

/// getsockopt(SO_ORIGINAL_DST) at the level of the socket's family, as
/// Envoy's `getOriginalDst` asks it; the errno when it fails.
fn original_dst(stream: &TcpStream) -> Result<SocketAddr, i32> {
    let socket = SockRef::from(stream);
    let original = match stream.local_addr() {
        Ok(SocketAddr::V4(_)) => socket.original_dst_v4(),
        Ok(SocketAddr::V6(_)) => socket.original_dst_v6(),
        Err(e) => Err(e),
    };
    let original = original.map_err(|e| e.raw_os_error().unwrap_or(0))?;
    original.as_socket().ok_or(libc::EAFNOSUPPORT)
}

// ---------------------------------------------------------------- client

fn connect(target: SocketAddr, mark: u32) -> Res<bool> {
    let result = (|| -> Res<(String, SocketAddr, SocketAddr)> {
        let stream = connect_marked(target, mark, TIMEOUT).ctx(&format!("connect to {target}"))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .ctx("set read timeout")?;
        let local = stream.local_addr().ctx("local address")?;
        let peer = stream.peer_addr().ctx("peer address")?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .ctx("read the first line")?;
        Ok((line.trim_end().to_owned(), local, peer))
    })();
    let ok = result.is_ok();
    let (line, local, peer) = match &result {
        Ok((line, local, peer)) => (
            Some(line.clone()),
            Some(local.to_string()),
            Some(peer.to_string()),
        ),
        Err(_) => (None, None, None),
    };
    say(json!({ "line": line, "local": local, "peer": peer, "ok": ok, "error": result.err() }));
    Ok(ok)
}
