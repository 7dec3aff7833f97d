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
    io::{self, BufRead, BufReader, Write},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::json;
use zerohop_tests::cli::{say, Context, Flags, Res};
use zerohop_tests::socket::{connect_marked, listen};

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h), the same number as
/// `IP6T_SO_ORIGINAL_DST` (linux/netfilter_ipv6/ip6_tables.h).
const SO_ORIGINAL_DST: i32 = 80;
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Res<bool> {
        let flags = Flags::parse(&args)?;
        if flags.has("listen") {
            serve(&flags)
        } else if flags.has("connect") {
            connect(&flags)
        } else {
            Err("usage: zh-origdst --listen ADDR:PORT[,…] [--count N] | --connect ADDR:PORT [--mark M]".into())
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

fn serve(flags: &Flags) -> Res<bool> {
    let addrs = flags
        .get::<String>("listen")?
        .split(',')
        .map(|addr| addr.parse::<SocketAddr>().ctx(&format!("--listen {addr}")))
        .collect::<Res<Vec<_>>>()?;
    // 0 = serve until killed.
    let count: u64 = flags.get_or("count", 0)?;
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
        "origdst": origdst.as_ref().ok().map(|addr| addr.to_string()),
        "errno": origdst.err(),
    }));
}

/// getsockopt(SO_ORIGINAL_DST) at the level of the socket's family, as
/// Envoy's `getOriginalDst` asks it; the errno when it fails.
fn original_dst(stream: &TcpStream) -> Result<SocketAddr, i32> {
    let level = match stream.local_addr() {
        Ok(SocketAddr::V4(_)) => libc::SOL_IP,
        Ok(SocketAddr::V6(_)) => libc::SOL_IPV6,
        Err(e) => return Err(e.raw_os_error().unwrap_or(0)),
    };
    // SAFETY: all-zero is a valid sockaddr_storage; the kernel writes at most
    // `len` bytes into it and the new length into `len`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    socket_addr(&storage, len).ok_or(libc::EAFNOSUPPORT)
}

/// A `sockaddr_in`/`sockaddr_in6` of `len` bytes as a `SocketAddr`.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: sockaddr_in and sockaddr_in6 fit in a sockaddr_storage and are
    // plain integers; the family and length say which one it holds.
    unsafe {
        match i32::from(storage.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                    u16::from_be(sin.sin_port),
                ))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                let sin6 =
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    u16::from_be(sin6.sin6_port),
                ))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- client

fn connect(flags: &Flags) -> Res<bool> {
    let target: SocketAddr = flags.get("connect")?;
    let mark: u32 = flags.get_or("mark", 0)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use zerohop_tests::socket::sockaddr;

    #[test]
    fn sockaddrs_round_trip() {
        for addr in ["10.96.0.10:80", "[fd00:96::a]:8080"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, len) = sockaddr(addr);
            assert_eq!(socket_addr(&storage, len), Some(addr));
        }
    }
}
