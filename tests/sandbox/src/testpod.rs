//! Typed driver for the `zh-testpod` program (src/bin/zh-testpod.rs) in pods.
//!
//! The program prints one JSON line per client command; these helpers run it in
//! a pod and parse that line, so tests read as "echo from a to b".

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde::{de::DeserializeOwned, Deserialize};

use crate::{cluster::Pod, process::PodProcess, programs::program};

/// How long a client command may take in all (its own reads time out at 10 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `zh-testpod` binary.
#[derive(Clone, Debug)]
pub struct Testpod {
    path: PathBuf,
}

/// Result of `zh-testpod echo`.
#[derive(Debug, Deserialize)]
pub struct EchoReport {
    /// Name of the server that answered (from its HELLO line).
    pub server: Option<String>,
    /// The client address the server saw.
    pub seen_peer: Option<SocketAddr>,
    /// The client's own address.
    pub local: Option<SocketAddr>,
    /// What the client's getpeername() returned.
    pub peer: Option<SocketAddr>,
    /// Bytes echoed back and verified.
    pub bytes: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Result of `zh-testpod spread`: connections per answering server.
#[derive(Debug, Deserialize)]
pub struct SpreadReport {
    pub counts: BTreeMap<String, u64>,
    pub failed: u64,
}

/// Result of `zh-testpod datagrams`.
#[derive(Debug, Deserialize)]
pub struct DatagramsReport {
    /// Answers per answering server.
    pub servers: BTreeMap<String, u64>,
    /// Answers per address they came from.
    pub sources: BTreeMap<String, u64>,
    /// The datagrams left unanswered, by index.
    pub lost: Vec<u32>,
    /// What the connected socket's getpeername() returned.
    pub peer: Option<SocketAddr>,
    /// Nothing lost, every answer from the address sent to.
    pub ok: bool,
}

/// Result of `zh-testpod concurrent`.
#[derive(Debug, Deserialize)]
pub struct ConcurrentReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few errors, if any.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// Result of `zh-testpod reset`.
#[derive(Debug, Deserialize)]
pub struct ResetReport {
    pub ok: bool,
    pub error: Option<String>,
}

/// Result of `zh-testpod rr`.
#[derive(Debug, Deserialize)]
pub struct RrReport {
    pub ok: bool,
    /// The client's own address.
    pub local: Option<SocketAddr>,
    pub error: Option<String>,
}

/// The first line of `zh-testpod hold`: who answered.
#[derive(Debug, Deserialize)]
pub struct Greeting {
    pub server: String,
    pub seen_peer: SocketAddr,
    pub local: SocketAddr,
    /// What the client's getpeername() returned.
    pub peer: SocketAddr,
}

/// What `zh-testpod watch` connected to.
#[derive(Debug, Deserialize)]
pub struct Watched {
    /// The server that answered.
    pub server: String,
    /// What the client's getpeername() returned.
    pub peer: SocketAddr,
}

/// A server's `CONN peer=<addr> bytes=<n> end=<how>` line, one per finished
/// connection.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerConn {
    pub peer: SocketAddr,
    /// Bytes received (and echoed).
    pub bytes: u64,
    /// `eof`, `reset` or `error:<message>`.
    pub end: String,
}

impl ServerConn {
    pub fn parse(line: &str) -> Option<ServerConn> {
        let mut fields = line.strip_prefix("CONN ")?.splitn(3, ' ');
        let peer = fields.next()?.strip_prefix("peer=")?.parse().ok()?;
        let bytes = fields.next()?.strip_prefix("bytes=")?.parse().ok()?;
        let end = fields.next()?.strip_prefix("end=")?.to_owned();
        Some(ServerConn { peer, bytes, end })
    }
}

/// A long-lived connection (`zh-testpod hold`) driven line by line.
pub struct Hold {
    pub greeting: Greeting,
    process: PodProcess,
}

impl Hold {
    /// Sends `line` over the connection and returns the echoed line.
    pub fn echo(&mut self, line: &str) -> Result<String> {
        self.process.write_line(line)?;
        let reply = self
            .process
            .read_line_timeout(Duration::from_secs(15))?
            .context("hold client ended")?;
        match reply.strip_prefix("ECHO ") {
            Some(echoed) => Ok(echoed.to_owned()),
            None => bail!("hold client: {reply}"),
        }
    }

    /// Half-closes the connection and waits for the client to exit cleanly.
    pub fn close(mut self) -> Result<()> {
        self.process.close_stdin();
        let finished = self.process.finish(Duration::from_secs(15))?;
        ensure!(
            finished.status.success(),
            "hold client failed: {finished:?}"
        );
        Ok(())
    }
}

impl Testpod {
    pub fn at(path: impl Into<PathBuf>) -> Testpod {
        Testpod { path: path.into() }
    }

    /// The workspace's `zh-testpod` ([`program`]), or `$ZH_TESTPOD` when set.
    pub fn locate() -> Testpod {
        Testpod::at(
            std::env::var_os("ZH_TESTPOD").map_or_else(|| program("zh-testpod"), PathBuf::from),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts `zh-testpod server` in `pod` and waits until it listens (v4 and v6).
    pub fn server(&self, pod: &Pod, name: &str, port: u16) -> Result<PodProcess> {
        self.server_with(pod, name, port, &[])
    }

    /// [`Testpod::server`] that does not greet: its clients speak first.
    pub fn server_quiet(&self, pod: &Pod, name: &str, port: u16) -> Result<PodProcess> {
        self.server_with(pod, name, port, &["--quiet"])
    }

    /// [`Testpod::server`] on one dual-stack `[::]` socket, where IPv4 clients
    /// arrive as `::ffff:a.b.c.d` (iperf3, Go and Java servers listen so).
    pub fn server_dual_stack(&self, pod: &Pod, name: &str, port: u16) -> Result<PodProcess> {
        self.server_with(pod, name, port, &["--dual-stack"])
    }

    fn server_with(&self, pod: &Pod, name: &str, port: u16, extra: &[&str]) -> Result<PodProcess> {
        let port = port.to_string();
        let args = [&["server", "--name", name, "--port", &port][..], extra].concat();
        let mut server = pod.spawn(&self.path, args)?;
        server
            .wait_for_line("READY", READY_TIMEOUT)
            .with_context(|| format!("server {name} in pod {}", pod.name))?;
        Ok(server)
    }

    /// Runs `zh-testpod <args>` in `pod` and parses its last stdout line.
    /// A failing exit is fine as long as that line parses (reports carry `ok`).
    pub fn run_json<T: DeserializeOwned>(&self, pod: &Pod, args: &[&str]) -> Result<T> {
        let finished = pod.run(&self.path, args, RUN_TIMEOUT)?;
        let last = finished
            .stdout
            .last()
            .map(String::as_str)
            .unwrap_or_default();
        serde_json::from_str(last).with_context(|| {
            format!(
                "zh-testpod {} in pod {} gave no report: {finished:?}",
                args.join(" "),
                pod.name
            )
        })
    }

    /// Sends `bytes` bytes to `target` and checks they come back.
    pub fn echo(&self, pod: &Pod, target: SocketAddr, bytes: u64) -> Result<EchoReport> {
        self.run_json(
            pod,
            &[
                "echo",
                "--target",
                &target.to_string(),
                "--bytes",
                &bytes.to_string(),
            ],
        )
    }

    /// Opens `count` connections to `target` one after the other and counts
    /// which server answered each.
    pub fn spread(&self, pod: &Pod, target: SocketAddr, count: u32) -> Result<SpreadReport> {
        self.run_json(
            pod,
            &[
                "spread",
                "--target",
                &target.to_string(),
                "--count",
                &count.to_string(),
            ],
        )
    }

    /// `count` datagrams from one socket (connected first with `connected`),
    /// each awaiting its answer.
    pub fn datagrams(
        &self,
        pod: &Pod,
        target: SocketAddr,
        count: u32,
        connected: bool,
    ) -> Result<DatagramsReport> {
        let (target, count) = (target.to_string(), count.to_string());
        let mut args = vec!["datagrams", "--target", &target, "--count", &count];
        if connected {
            args.push("--connected");
        }
        self.run_json(pod, &args)
    }

    /// `conns` connections at once, each echoing its own `bytes` bytes.
    pub fn concurrent(
        &self,
        pod: &Pod,
        target: SocketAddr,
        conns: u32,
        bytes: u64,
    ) -> Result<ConcurrentReport> {
        let (target, conns, bytes) = (target.to_string(), conns.to_string(), bytes.to_string());
        self.run_json(
            pod,
            &[
                "concurrent",
                "--target",
                &target,
                "--conns",
                &conns,
                "--bytes",
                &bytes,
            ],
        )
    }

    /// `count` requests of `size` bytes on one connection to a quiet server,
    /// each written right away and its echo read back.
    pub fn rr(&self, pod: &Pod, target: SocketAddr, count: u32, size: usize) -> Result<RrReport> {
        let args = rr_args(target, count, size, 0);
        self.run_json(pod, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`Testpod::rr`] started in the background, `interval_ms` between
    /// rounds; [`Testpod::rr_report`] collects its report.
    pub fn rr_spawn(
        &self,
        pod: &Pod,
        target: SocketAddr,
        count: u32,
        size: usize,
        interval_ms: u32,
    ) -> Result<PodProcess> {
        let mut process = pod.spawn(&self.path, rr_args(target, count, size, interval_ms))?;
        process.close_stdin();
        Ok(process)
    }

    /// The report of a [`Testpod::rr_spawn`]ed client, once it is done.
    pub fn rr_report(process: PodProcess) -> Result<RrReport> {
        let finished = process.finish(RUN_TIMEOUT)?;
        let last = finished.stdout.last().cloned().unwrap_or_default();
        serde_json::from_str(&last).with_context(|| format!("zh-testpod rr: {finished:?}"))
    }

    /// A connection closed by a reset (RST) after a short echo.
    pub fn reset(&self, pod: &Pod, target: SocketAddr) -> Result<ResetReport> {
        self.run_json(pod, &["reset", "--target", &target.to_string()])
    }

    /// Opens a long-lived connection to `target`.
    pub fn hold(&self, pod: &Pod, target: SocketAddr) -> Result<Hold> {
        let mut process = pod.spawn(&self.path, ["hold", "--target", &target.to_string()])?;
        let first = process
            .read_line_timeout(Duration::from_secs(15))?
            .context("hold client printed nothing")?;
        let greeting = serde_json::from_str(&first)
            .with_context(|| format!("hold client: {first}; stderr: {}", process.stderr()))?;
        Ok(Hold { greeting, process })
    }

    /// A socket connected to `target` (UDP when `udp`), watched until it
    /// fails: its greeting, and the process that prints `ENDED <why>` then.
    pub fn watch(&self, pod: &Pod, target: SocketAddr, udp: bool) -> Result<(Watched, PodProcess)> {
        let target = target.to_string();
        let mut args = vec!["watch", "--target", &target];
        if udp {
            args.push("--udp");
        }
        let mut process = pod.spawn(&self.path, args)?;
        let first = process
            .read_line_timeout(Duration::from_secs(15))?
            .context("watch client printed nothing")?;
        let watched = serde_json::from_str(&first)
            .with_context(|| format!("watch client: {first}; stderr: {}", process.stderr()))?;
        Ok((watched, process))
    }

    /// A client in `pod` connecting to `target` every millisecond until
    /// `name` greets it, started: its first attempt is done. Its
    /// `REACHED attempts=N …` line says when (see [`PodProcess::wait_for_line`]).
    pub fn reach(&self, pod: &Pod, target: SocketAddr, name: &str) -> Result<PodProcess> {
        let target = target.to_string();
        let mut process = pod.spawn(&self.path, ["reach", "--target", &target, "--name", name])?;
        process
            .wait_for_line("STARTED", Duration::from_secs(15))
            .with_context(|| format!("reach client: {}", process.stderr()))?;
        Ok(process)
    }

    /// The next finished connection a server reports.
    pub fn next_conn(server: &mut PodProcess, timeout: Duration) -> Result<ServerConn> {
        let line = server.wait_for_line("CONN ", timeout)?;
        ServerConn::parse(&line).with_context(|| format!("malformed server line {line:?}"))
    }
}

fn rr_args(target: SocketAddr, count: u32, size: usize, interval_ms: u32) -> Vec<String> {
    [
        "rr".to_owned(),
        "--target".to_owned(),
        target.to_string(),
        "--count".to_owned(),
        count.to_string(),
        "--size".to_owned(),
        size.to_string(),
        "--interval-ms".to_owned(),
        interval_ms.to_string(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_lines_parse() {
        let conn =
            ServerConn::parse("CONN peer=[fd00:244:1::2]:4000 bytes=12 end=error:broken pipe")
                .unwrap();
        assert_eq!(conn.peer, "[fd00:244:1::2]:4000".parse().unwrap());
        assert_eq!((conn.bytes, conn.end.as_str()), (12, "error:broken pipe"));
        assert!(ServerConn::parse("READY").is_none());
    }
}
