//! zh-stress: many connections to `zh-testpod server`s, each checking every
//! byte of its echo, in plans drawn from a seed.
//!
//! ```text
//! zh-stress --target hello:IP:PORT|quiet:IP:PORT[,...] --conns N [--parallel P]
//!           [--seed S] [--max-bytes B]
//! ```
//!
//! `hello:` targets greet first (`zh-testpod server`), `quiet:` ones wait
//! for the client (`zh-testpod server --quiet`). Each connection draws from
//! the seed and its index: its target; whether the client writes before the
//! server's greeting arrives (client-first, racing the greeting on `hello:`
//! targets) or after it (server-first); how many bytes it sends (1 to B) in
//! writes of 1 byte to 64 KiB with short pauses between some; TCP_NODELAY or
//! not; and one in ten ends with a reset (SO_LINGER 0) part-way instead of a
//! half-close. A normal connection must get back exactly what it sent, then
//! EOF; a reset one, a correct prefix of it. Every byte is checked for value
//! and place against a pattern unique to the connection, so a lost,
//! reordered, duplicated or crossed byte fails it.
//!
//! Prints one JSON line: `{"conns", "ok", "failed", "errors" (the first few),
//! "client_first", "server_first", "resets", "bytes_sent", "bytes_checked"}`.
//! Exits 0 only when every connection held.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use serde_json::json;
use zerohop_workloads::{
    cli::{say, Context, Res},
    pattern::{check_pattern, fill_pattern, Patient, Rng},
    socket::linger_zero,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const MAX_WRITE: u64 = 64 * 1024;

#[derive(Clone, Copy)]
struct Target {
    addr: SocketAddr,
    /// The server greets with one `HELLO …` line before echoing.
    hello: bool,
}

/// What one connection does, drawn from the seed.
struct Plan {
    target: Target,
    /// Pattern seed, unique to the connection.
    seed: u64,
    client_first: bool,
    /// Bytes to send, in writes of these sizes.
    writes: Vec<usize>,
    /// Microseconds to sleep after each write (mostly 0).
    pauses: Vec<u64>,
    nodelay: bool,
    /// Reset after this many bytes were sent and echoed, instead of a half-close.
    reset_after: Option<u64>,
}

impl Plan {
    fn draw(targets: &[Target], seed: u64, index: u64, max_bytes: u64) -> Plan {
        let mut rng = Rng::new(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let target = targets[rng.below(targets.len() as u64) as usize];
        let client_first = !target.hello || rng.one_in(2);
        let total = 1 + rng.below(max_bytes);
        let (mut writes, mut pauses, mut planned) = (Vec::new(), Vec::new(), 0u64);
        while planned < total {
            // Sizes spread over every power of two up to 64 KiB.
            let scale = 1 << rng.below(17);
            let size = (1 + rng.below(scale)).min(MAX_WRITE);
            let size = size.min(total - planned);
            writes.push(size as usize);
            pauses.push(if rng.one_in(8) { rng.below(300) } else { 0 });
            planned += size;
        }
        let nodelay = rng.one_in(2);
        let reset_after = rng.one_in(10).then(|| rng.below(total));
        Plan {
            target,
            seed: seed.wrapping_add(index) << 8 | 0x5a,
            client_first,
            writes,
            pauses,
            nodelay,
            reset_after,
        }
    }

    fn total(&self) -> u64 {
        self.writes.iter().map(|&n| n as u64).sum()
    }
}

/// Many connections to zh-testpod servers, each checking every byte of its
/// echo, in plans drawn from a seed.
#[derive(clap::Parser)]
#[command(name = "zh-stress")]
struct Cli {
    /// Servers to spread the connections over (comma-separated hello:IP:PORT or quiet:IP:PORT).
    #[arg(long, value_name = "hello:IP:PORT|quiet:IP:PORT[,...]", value_delimiter = ',', value_parser = parse_target, required = true)]
    target: Vec<Target>,
    /// Connections to make.
    #[arg(long, value_name = "N")]
    conns: u64,
    /// Connections at once.
    #[arg(long, value_name = "P", default_value_t = 16)]
    parallel: u64,
    /// Seed of the connection plans.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Most bytes one connection sends.
    #[arg(long, value_name = "B", default_value_t = 256 * 1024)]
    max_bytes: u64,
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("zh-stress: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(flags: &Cli) -> Res<bool> {
    let targets = flags.target.clone();
    let (conns, parallel, seed, max_bytes) =
        (flags.conns, flags.parallel, flags.seed, flags.max_bytes);
    if targets.is_empty() || max_bytes == 0 {
        return Err("--target and --max-bytes must not be empty".into());
    }

    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (next, tally, targets) = (next.clone(), tally.clone(), targets.clone());
            thread::spawn(move || loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= conns {
                    break;
                }
                let plan = Plan::draw(&targets, seed, index, max_bytes);
                let outcome = run_conn(&plan);
                tally.lock().unwrap().add(&plan, index, outcome);
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked")?;
    }
    let tally = tally.lock().unwrap();
    say(json!({
        "conns": conns,
        "ok": tally.ok,
        "failed": tally.errors.len(),
        "errors": tally.errors.iter().take(5).collect::<Vec<_>>(),
        "client_first": tally.client_first,
        "server_first": tally.server_first,
        "resets": tally.resets,
        "bytes_sent": tally.bytes_sent,
        "bytes_checked": tally.bytes_checked,
    }));
    Ok(tally.errors.is_empty())
}

fn parse_target(text: &str) -> Res<Target> {
    let (hello, addr) = match text.split_once(':') {
        Some(("hello", addr)) => (true, addr),
        Some(("quiet", addr)) => (false, addr),
        _ => {
            return Err(format!(
                "target {text:?}: write hello:IP:PORT or quiet:IP:PORT"
            ))
        }
    };
    let addr = addr.parse().ctx(&format!("target {text:?}"))?;
    Ok(Target { addr, hello })
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: Vec<String>,
    client_first: u64,
    server_first: u64,
    resets: u64,
    bytes_sent: u64,
    bytes_checked: u64,
}

/// What a connection sent and checked, or why it failed.
struct Outcome {
    sent: u64,
    checked: u64,
    error: Option<String>,
}

impl Tally {
    fn add(&mut self, plan: &Plan, index: u64, outcome: Outcome) {
        if plan.client_first {
            self.client_first += 1;
        } else {
            self.server_first += 1;
        }
        if plan.reset_after.is_some() {
            self.resets += 1;
        }
        self.bytes_sent += outcome.sent;
        self.bytes_checked += outcome.checked;
        match outcome.error {
            None => self.ok += 1,
            Some(error) => self.errors.push(format!(
                "connection {index} to {} ({}, {} bytes{}): {error}",
                plan.target.addr,
                if plan.client_first {
                    "client first"
                } else {
                    "server first"
                },
                plan.total(),
                plan.reset_after
                    .map_or(String::new(), |at| format!(", reset after {at}")),
            )),
        }
    }
}

fn run_conn(plan: &Plan) -> Outcome {
    let failed = |error: String| Outcome {
        sent: 0,
        checked: 0,
        error: Some(error),
    };
    let stream = match connect(plan) {
        Ok(stream) => stream,
        Err(error) => return failed(error),
    };
    let reader = match stream.try_clone() {
        Ok(clone) => BufReader::new(clone),
        Err(e) => return failed(format!("clone socket: {e}")),
    };
    match plan.reset_after {
        None => echo(plan, stream, reader),
        Some(after) => echo_then_reset(plan, stream, reader, after),
    }
}

fn connect(plan: &Plan) -> Res<TcpStream> {
    let stream = TcpStream::connect_timeout(&plan.target.addr, TIMEOUT).ctx("connect")?;
    stream.set_read_timeout(Some(TIMEOUT)).ctx("read timeout")?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .ctx("write timeout")?;
    stream.set_nodelay(plan.nodelay).ctx("TCP_NODELAY")?;
    Ok(stream)
}

/// Reads the server's greeting line, if it greets.
fn read_hello(plan: &Plan, reader: &mut BufReader<TcpStream>) -> Res<()> {
    if !plan.target.hello {
        return Ok(());
    }
    let mut line = String::new();
    Patient(&mut *reader)
        .read_to_newline(&mut line)
        .ctx("read the greeting")?;
    if !line.starts_with("HELLO ") {
        return Err(format!("greeting {line:?}"));
    }
    Ok(())
}

/// Sends the plan's writes from a thread (then half-closes), reads the echo
/// meanwhile and checks it to EOF.
fn echo(plan: &Plan, stream: TcpStream, mut reader: BufReader<TcpStream>) -> Outcome {
    let mut outcome = Outcome {
        sent: 0,
        checked: 0,
        error: None,
    };
    if !plan.client_first {
        if let Err(error) = read_hello(plan, &mut reader) {
            outcome.error = Some(error);
            return outcome;
        }
    }
    let (seed, writes, pauses) = (plan.seed, plan.writes.clone(), plan.pauses.clone());
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            outcome.error = Some(format!("clone socket: {e}"));
            return outcome;
        }
    };
    let sender = thread::spawn(move || -> (u64, Res<()>) {
        let mut buf = vec![0u8; MAX_WRITE as usize];
        let mut sent = 0u64;
        for (&size, &pause) in writes.iter().zip(&pauses) {
            fill_pattern(seed, sent, &mut buf[..size]);
            if let Err(e) = writer.write_all(&buf[..size]) {
                return (sent, Err(format!("write at byte {sent}: {e}")));
            }
            sent += size as u64;
            if pause > 0 {
                thread::sleep(Duration::from_micros(pause));
            }
        }
        (
            sent,
            writer.shutdown(Shutdown::Write).ctx("shutdown(write)"),
        )
    });
    let read = if plan.client_first {
        read_hello(plan, &mut reader)
    } else {
        Ok(())
    };
    let total = plan.total();
    let (checked, read_error) = match read {
        Ok(()) => check_pattern(&mut reader, seed, total, true),
        Err(error) => (0, Some(error)),
    };
    if read_error.is_some() {
        // Unblocks a sender stuck on a full socket buffer.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let (sent, sent_result) = sender
        .join()
        .unwrap_or((0, Err("writer thread panicked".into())));
    outcome.sent = sent;
    outcome.checked = checked;
    outcome.error = read_error.or(sent_result.err());
    outcome
}

/// Sends until `after` bytes went out, checks their echo, then aborts the
/// connection with a reset.
fn echo_then_reset(
    plan: &Plan,
    stream: TcpStream,
    mut reader: BufReader<TcpStream>,
    after: u64,
) -> Outcome {
    let mut outcome = Outcome {
        sent: 0,
        checked: 0,
        error: None,
    };
    let result = (|| -> Res<()> {
        if !plan.client_first {
            read_hello(plan, &mut reader)?;
        }
        let mut writer = stream.try_clone().ctx("clone socket")?;
        let mut buf = vec![0u8; MAX_WRITE as usize];
        for &size in &plan.writes {
            if outcome.sent >= after.max(1) {
                break;
            }
            fill_pattern(plan.seed, outcome.sent, &mut buf[..size]);
            writer
                .write_all(&buf[..size])
                .ctx(&format!("write at byte {}", outcome.sent))?;
            outcome.sent += size as u64;
        }
        if plan.client_first {
            read_hello(plan, &mut reader)?;
        }
        // Everything sent comes back before the reset: no EOF is expected.
        let (checked, error) = check_pattern(&mut reader, plan.seed, outcome.sent, false);
        outcome.checked = checked;
        if let Some(error) = error {
            return Err(error);
        }
        linger_zero(&stream).ctx("SO_LINGER")?;
        Ok(())
    })();
    outcome.error = result.err();
    // Both descriptors close here; the last close sends the reset.
    drop((stream, reader));
    outcome
}

/// Line reads through [`Patient`].
trait ReadToNewline {
    fn read_to_newline(&mut self, line: &mut String) -> io::Result<usize>;
}

impl<R: BufRead> ReadToNewline for Patient<&mut R> {
    fn read_to_newline(&mut self, line: &mut String) -> io::Result<usize> {
        loop {
            match self.0.read_line(line) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::yield_now(),
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_kind_of_connection() {
        let targets = [
            parse_target("hello:10.96.0.10:80").unwrap(),
            parse_target("quiet:10.96.0.11:80").unwrap(),
        ];
        let plans: Vec<Plan> = (0..400)
            .map(|i| Plan::draw(&targets, 7, i, 64 * 1024))
            .collect();
        assert!(plans.iter().any(|p| p.client_first && p.target.hello));
        assert!(plans.iter().any(|p| !p.client_first));
        assert!(plans.iter().all(|p| p.client_first || p.target.hello));
        assert!(plans.iter().any(|p| p.reset_after.is_some()));
        assert!(plans.iter().any(|p| p.writes.contains(&1)));
        assert!(plans.iter().all(|p| (1..=64 * 1024).contains(&p.total())));
        let seeds: std::collections::HashSet<u64> = plans.iter().map(|p| p.seed).collect();
        assert_eq!(
            seeds.len(),
            plans.len(),
            "every connection has its own pattern"
        );
    }

    #[test]
    fn targets_need_a_kind() {
        assert!(parse_target("10.96.0.10:80").is_err());
        assert!(parse_target("hello:[fd00::1]:80").unwrap().hello);
    }
}
