//! `cargo xtask bench`: same-node latency, throughput, connection rate and CPU
//! cost of four paths between two pods of one node, in one run.
//!
//! - (a) `zerohop`: the Service's ClusterIP with zerohop's agent running
//!   (connect-time translation and the socket-to-socket bypass);
//! - (b) `kube-proxy`: the same ClusterIP through the iptables DNAT rule and
//!   the veths, zerohop off;
//! - (c) `pod-ip`: the backend pod's own address, over the veths;
//! - (d) `uds`: a Unix domain socket between the same two processes (the floor).
//!
//! The client and server are `zh-bench` (tests/src/bin/zh-bench.rs), pinned
//! to one CPU by default. Paths (b), (c), (d) are measured before the agent
//! starts, (a) after; every (a) run is checked against the kernel counters:
//! its connects must have been translated and its bytes redirected. A long
//! connection (rr, stream) that fell back to the stack is measured again (up
//! to [`ATTEMPTS`] times, then the benchmark fails); the connection-rate run
//! reports how many of its connections fell back. The method is described in
//! the README, section "Benchmark".

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use zerohop_tests::{
    node_name, require_root, service_yaml, slice_yaml, Agent, Cluster, Endpoint, Manifests, Pod,
    PodProcess,
};

use crate::Binaries;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer iterations and shorter phases: the whole run takes under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Write one JSON record per (path, metric, size) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the results as SVG bar charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// The CPU client and server are pinned to (default: the last one).
    #[arg(long, value_name = "N", conflicts_with = "no_pin")]
    pub cpu: Option<usize>,
    /// Let the scheduler place client and server (on a VM, wake-ups across
    /// vCPUs make the numbers noisy and bimodal).
    #[arg(long)]
    pub no_pin: bool,
}

const SERVICE_PORT: u16 = 80;

/// The server's two kinds of listeners, each behind its own Service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The server speaks first (rr and stream: long connections).
    Greeting,
    /// The client writes right after connect() (the connection-rate runs).
    ClientFirst,
}

impl Listener {
    fn service(self) -> &'static str {
        match self {
            Listener::Greeting => "bench",
            Listener::ClientFirst => "bench-conn",
        }
    }

    fn cluster_ip(self) -> IpAddr {
        match self {
            Listener::Greeting => [10, 96, 0, 10].into(),
            Listener::ClientFirst => [10, 96, 0, 11].into(),
        }
    }

    fn target_port(self) -> u16 {
        match self {
            Listener::Greeting => 8080,
            Listener::ClientFirst => 8081,
        }
    }

    fn socket_name(self) -> &'static str {
        match self {
            Listener::Greeting => "bench.sock",
            Listener::ClientFirst => "bench-conn.sock",
        }
    }

    /// The server's flags for this listener.
    fn server_flags(self, dir: &Path) -> [String; 4] {
        let (port, uds) = match self {
            Listener::Greeting => ("--greet-tcp-port", "--greet-uds"),
            Listener::ClientFirst => ("--tcp-port", "--uds"),
        };
        [
            port.to_owned(),
            self.target_port().to_string(),
            uds.to_owned(),
            dir.join(self.socket_name()).display().to_string(),
        ]
    }
}

const LISTENERS: [Listener; 2] = [Listener::Greeting, Listener::ClientFirst];

const RR_SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const STREAM_SIZES: [usize; 5] = [64, 1024, 16 * 1024, 64 * 1024, 256 * 1024];
const CONN_SIZE: usize = 64;

/// Iteration counts and durations, fixed per mode.
struct Plan {
    rr_warmup: u64,
    rr_iterations: u64,
    /// Warm-up of a stream: about this many bytes, within the bounds below.
    stream_warmup_bytes: u64,
    stream_warmup_writes: (u64, u64),
    stream_seconds: f64,
    conn_warmup: u64,
    conn_seconds: f64,
}

const FULL: Plan = Plan {
    rr_warmup: 5_000,
    rr_iterations: 100_000,
    stream_warmup_bytes: 8 << 20,
    stream_warmup_writes: (50, 2_000),
    stream_seconds: 2.0,
    conn_warmup: 300,
    conn_seconds: 2.0,
};

const QUICK: Plan = Plan {
    rr_warmup: 500,
    rr_iterations: 5_000,
    stream_warmup_bytes: 2 << 20,
    stream_warmup_writes: (20, 500),
    stream_seconds: 0.5,
    conn_warmup: 100,
    conn_seconds: 0.5,
};

impl Plan {
    fn stream_warmup(&self, size: usize) -> u64 {
        let (low, high) = self.stream_warmup_writes;
        (self.stream_warmup_bytes / size as u64).clamp(low, high)
    }
}

/// The four paths, in table order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Route {
    Zerohop,
    KubeProxy,
    PodIp,
    Uds,
}

const ROUTES: [Route; 4] = [Route::Zerohop, Route::KubeProxy, Route::PodIp, Route::Uds];

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Zerohop => "zerohop",
            Route::KubeProxy => "kube-proxy",
            Route::PodIp => "pod-ip",
            Route::Uds => "uds",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Route::Zerohop => "#1b9e77",
            Route::KubeProxy => "#d95f02",
            Route::PodIp => "#7570b3",
            Route::Uds => "#666666",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Metric {
    RttP50,
    RttP99,
    Throughput,
    ThroughputNagle,
    ConnPerS,
    CpuPerOp,
    /// Table only: CPU per MB streamed (TCP_NODELAY runs).
    CpuPerMb,
    /// Table only: CPU per connection of the connection-rate run.
    CpuPerConn,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::RttP50 => "rtt_p50_us",
            Metric::RttP99 => "rtt_p99_us",
            Metric::Throughput => "throughput_mbps",
            Metric::ThroughputNagle => "throughput_nagle_mbps",
            Metric::ConnPerS => "conn_per_s",
            Metric::CpuPerOp => "cpu_us_per_op",
            Metric::CpuPerMb => "cpu_us_per_mb",
            Metric::CpuPerConn => "cpu_us_per_conn",
        }
    }

    /// Written to `--json` (the others are shown in the table only).
    fn in_json(self) -> bool {
        !matches!(self, Metric::CpuPerMb | Metric::CpuPerConn)
    }

    fn chart_title(self) -> &'static str {
        match self {
            Metric::RttP50 => "request/response latency p50 (µs, lower is better)",
            Metric::RttP99 => "request/response latency p99 (µs, lower is better)",
            Metric::Throughput => "streaming, TCP_NODELAY (MB/s, log scale, higher is better)",
            Metric::ThroughputNagle => "streaming, Nagle on (MB/s, log scale, higher is better)",
            Metric::ConnPerS => "connections per second (higher is better)",
            Metric::CpuPerOp => "CPU per request, client + server (µs, lower is better)",
            Metric::CpuPerMb | Metric::CpuPerConn => "",
        }
    }

    fn log_scale(self) -> bool {
        matches!(self, Metric::Throughput | Metric::ThroughputNagle)
    }
}

/// Table row order.
const TABLE: [Metric; 8] = [
    Metric::RttP50,
    Metric::RttP99,
    Metric::Throughput,
    Metric::ThroughputNagle,
    Metric::ConnPerS,
    Metric::CpuPerOp,
    Metric::CpuPerMb,
    Metric::CpuPerConn,
];

const CHARTS: [Metric; 6] = [
    Metric::RttP50,
    Metric::RttP99,
    Metric::Throughput,
    Metric::ThroughputNagle,
    Metric::ConnPerS,
    Metric::CpuPerOp,
];

type Results = BTreeMap<(Metric, usize, Route), f64>;

/// A temporary directory for the Unix sockets, removed on Drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running benchmark: where the client runs and what it reaches.
struct Bench<'a> {
    client: &'a Pod,
    zh_bench: PathBuf,
    plan: &'a Plan,
    server_ip: IpAddr,
    /// Where the Unix sockets are.
    dir: PathBuf,
    /// `--cpu N` for the client, or nothing.
    pin: Vec<String>,
    /// Set while path (a) is measured: every run is checked against its counters.
    agent: Option<&'a Agent>,
    results: Results,
    /// Over all (a) runs.
    checked: Checked,
    /// Redirect misses of the last (a) run.
    last_misses: u64,
}

/// What one `zh-bench client` printed.
struct Report(Value);

impl Report {
    fn f64(&self, key: &str) -> Result<f64> {
        self.0[key]
            .as_f64()
            .with_context(|| format!("no {key} in {}", self.0))
    }

    fn u64(&self, key: &str) -> Result<u64> {
        self.0[key]
            .as_u64()
            .with_context(|| format!("no {key} in {}", self.0))
    }

    fn cpu_us(&self) -> Result<u64> {
        Ok(self.u64("client_cpu_us")? + self.u64("server_cpu_us")?)
    }
}

pub fn run(binaries: &Binaries, args: &BenchArgs) -> Result<()> {
    require_root();
    let started = Instant::now();
    // Read by zerohop_tests::Agent; set before any thread starts.
    std::env::set_var("ZEROHOP_BIN", &binaries.zerohop);
    let zh_bench = binaries.testpod.with_file_name("zh-bench");
    ensure!(zh_bench.is_file(), "{} is not built", zh_bench.display());
    let plan = if args.quick { &QUICK } else { &FULL };

    println!(
        "== building a sandboxed node with pods client and server ({} run)",
        if args.quick { "quick" } else { "full" }
    );
    let cluster = Cluster::new(1)?;
    let prefix = cluster.prefix().to_owned();
    let cpu = match (args.no_pin, args.cpu) {
        (true, _) => None,
        (false, Some(cpu)) => Some(cpu),
        (false, None) => Some(
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .saturating_sub(1),
        ),
    };
    match cpu {
        Some(cpu) => println!("   client and server pinned to CPU {cpu}"),
        None => println!("   client and server not pinned"),
    }
    let outcome = measure(&cluster, &zh_bench, plan, cpu);
    drop(cluster);
    let results = outcome?;

    print_table(&results);
    print_targets(&results);
    if let Some(path) = &args.json {
        write_json(&results, path)?;
        println!("\n== wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&results, args.quick))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("== wrote {}", path.display());
    }
    println!(
        "== {:.0} s in all (excluding the build)",
        started.elapsed().as_secs_f64()
    );
    leftovers(&prefix)
}

/// Builds the pods, Service and DNAT rule, measures (b), (c), (d), then starts
/// the agent and measures (a).
fn measure(cluster: &Cluster, zh_bench: &Path, plan: &Plan, cpu: Option<usize>) -> Result<Results> {
    let server = cluster.add_pod(1, "server")?;
    let client = cluster.add_pod(1, "client")?;
    // The connection-rate runs leave ~10,000 client sockets in TIME_WAIT per
    // path; (a) and (c) reach the same address. Room for them (this pod only).
    client.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    let server_ip = IpAddr::from(server.ipv4);
    let dir = TempDir(std::env::temp_dir().join(format!("zh-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;

    let manifests = Manifests::new()?;
    let pin: Vec<String> = cpu
        .map(|cpu| vec!["--cpu".to_owned(), cpu.to_string()])
        .unwrap_or_default();
    let mut server_args = vec!["server".to_owned()];
    for listener in LISTENERS {
        let (name, cluster_ip, port) = (
            listener.service(),
            listener.cluster_ip(),
            listener.target_port(),
        );
        manifests.write(
            &format!("{name}.yaml"),
            &service_yaml(name, cluster_ip, SERVICE_PORT, port, ""),
        )?;
        manifests.write(
            &format!("{name}-slice.yaml"),
            &slice_yaml(
                name,
                &format!("{name}-1"),
                port,
                &[Endpoint {
                    ip: server_ip,
                    node: &node_name(1),
                    ready: true,
                }],
            ),
        )?;
        cluster.add_dnat_everywhere(cluster_ip, SERVICE_PORT, &[(server_ip, port)])?;
        server_args.extend(listener.server_flags(&dir.0));
        println!(
            "   Service {name} {cluster_ip}:{SERVICE_PORT} -> {server_ip}:{port}, socket {}{}",
            dir.0.join(listener.socket_name()).display(),
            match listener {
                Listener::Greeting => " (server speaks first: rr, stream)",
                Listener::ClientFirst => " (client speaks first: conn)",
            }
        );
    }
    server_args.extend(pin.iter().cloned());
    let mut server_process: PodProcess = server.spawn(zh_bench, &server_args)?;
    server_process.wait_for_line("READY", Duration::from_secs(10))?;
    println!(
        "   server {} (pid {}), client {}",
        server.ipv4,
        server_process.pid(),
        client.ipv4,
    );

    let mut bench = Bench {
        client: &client,
        zh_bench: zh_bench.to_owned(),
        plan,
        server_ip,
        dir: dir.0.clone(),
        pin,
        agent: None,
        results: Results::new(),
        checked: Checked::default(),
        last_misses: 0,
    };
    for route in [Route::KubeProxy, Route::PodIp, Route::Uds] {
        println!("== ({}) {}, zerohop off", letter(route), route.name());
        bench.route(route)?;
    }
    println!(
        "== starting the zerohop agent on {} (Services bench and bench-conn in a manifests dir)",
        node_name(1)
    );
    let agent = Agent::start(cluster, 1, manifests.dir(), &[])?;
    bench.agent = Some(&agent);
    println!("== (a) zerohop, the ClusterIP translated and bypassed");
    bench.route(Route::Zerohop)?;
    let checked = &bench.checked;
    println!(
        "   checked: {} connects translated to the local endpoint; {} bytes redirected \
         socket-to-socket for {} bytes written by the clients; {} redirect misses \
         ({} in {} connections of the connection-rate run); {} run(s) measured again \
         because the connection fell back to the stack",
        checked.translated,
        checked.redirected,
        checked.written,
        checked.misses,
        checked.conn_misses,
        checked.conns,
        checked.repeated
    );
    let results = std::mem::take(&mut bench.results);
    drop(agent);
    drop(server_process);
    Ok(results)
}

fn letter(route: Route) -> char {
    match route {
        Route::Zerohop => 'a',
        Route::KubeProxy => 'b',
        Route::PodIp => 'c',
        Route::Uds => 'd',
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

impl Bench<'_> {
    /// The client's `--target` (and `--greet`) for a path and listener.
    fn target(&self, route: Route, listener: Listener) -> Vec<String> {
        let target = match route {
            Route::Zerohop | Route::KubeProxy => {
                format!(
                    "tcp:{}",
                    SocketAddr::new(listener.cluster_ip(), SERVICE_PORT)
                )
            }
            Route::PodIp => format!(
                "tcp:{}",
                SocketAddr::new(self.server_ip, listener.target_port())
            ),
            Route::Uds => format!("uds:{}", self.dir.join(listener.socket_name()).display()),
        };
        let mut args = vec!["--target".to_owned(), target];
        if listener == Listener::Greeting {
            args.push("--greet".to_owned());
        }
        args
    }

    /// Every measurement of one path.
    fn route(&mut self, route: Route) -> Result<()> {
        let plan = self.plan;
        for size in RR_SIZES {
            let report = self.client_run(
                route,
                "rr",
                size,
                true,
                &[
                    "--warmup",
                    &plan.rr_warmup.to_string(),
                    "--iterations",
                    &plan.rr_iterations.to_string(),
                ],
            )?;
            let (p50, p99) = (report.f64("p50_us")?, report.f64("p99_us")?);
            let cpu = report.cpu_us()? as f64 / report.f64("ops")?;
            println!(
                "   rr      {:>8}  p50 {p50:>8.1} µs  p99 {p99:>8.1} µs  cpu {cpu:>6.1} µs/request",
                size_name(size)
            );
            self.put(Metric::RttP50, size, route, p50);
            self.put(Metric::RttP99, size, route, p99);
            self.put(Metric::CpuPerOp, size, route, cpu);
        }
        for nodelay in [true, false] {
            for size in STREAM_SIZES {
                let report = self.client_run(
                    route,
                    "stream",
                    size,
                    nodelay,
                    &[
                        "--warmup",
                        &plan.stream_warmup(size).to_string(),
                        "--seconds",
                        &plan.stream_seconds.to_string(),
                    ],
                )?;
                let mbps = report.f64("throughput_mbps")?;
                let cpu_per_mb = report.cpu_us()? as f64 / (report.f64("bytes")? / 1e6);
                println!(
                    "   stream  {:>8}  {:<10} {mbps:>9.1} MB/s  cpu {cpu_per_mb:>7.1} µs/MB",
                    size_name(size),
                    if nodelay { "nodelay" } else { "nagle" },
                );
                if nodelay {
                    self.put(Metric::Throughput, size, route, mbps);
                    self.put(Metric::CpuPerMb, size, route, cpu_per_mb);
                } else {
                    self.put(Metric::ThroughputNagle, size, route, mbps);
                }
            }
        }
        let report = self.client_run(
            route,
            "conn",
            CONN_SIZE,
            true,
            &[
                "--warmup",
                &plan.conn_warmup.to_string(),
                "--seconds",
                &plan.conn_seconds.to_string(),
            ],
        )?;
        let rate = report.f64("ops_per_s")?;
        let cpu = report.cpu_us()? as f64 / report.f64("ops")?;
        let misses = if self.agent.is_some() {
            format!(
                "  ({} redirect misses: connections that fell back to the stack)",
                self.last_misses
            )
        } else {
            String::new()
        };
        println!(
            "   conn    {:>8}  {rate:>9.0} conn/s  p50 {:.1} µs  p99 {:.1} µs  max {:.0} µs  cpu {cpu:.1} µs/conn{misses}",
            size_name(CONN_SIZE),
            report.f64("p50_us")?,
            report.f64("p99_us")?,
            report.f64("max_us")?
        );
        self.put(Metric::ConnPerS, CONN_SIZE, route, rate);
        self.put(Metric::CpuPerConn, CONN_SIZE, route, cpu);
        Ok(())
    }

    fn put(&mut self, metric: Metric, size: usize, route: Route, value: f64) {
        self.results.insert((metric, size, route), value);
    }

    /// Runs `zh-bench client` in the client pod and parses its report. On
    /// path (a), checks against the kernel counters that the run was
    /// translated and bypassed; a long connection (rr, stream) that fell back
    /// to the stack is measured again, up to [`ATTEMPTS`] times in all.
    fn client_run(
        &mut self,
        route: Route,
        mode: &str,
        size: usize,
        nodelay: bool,
        extra: &[&str],
    ) -> Result<Report> {
        let listener = if mode == "conn" {
            Listener::ClientFirst
        } else {
            Listener::Greeting
        };
        let mut args = vec!["client".to_owned()];
        args.extend(self.target(route, listener));
        args.extend([
            "--mode".to_owned(),
            mode.to_owned(),
            "--size".to_owned(),
            size.to_string(),
        ]);
        if nodelay {
            args.push("--nodelay".to_owned());
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args.extend(self.pin.iter().cloned());
        let Some(agent) = self.agent else {
            return self.run_once(&args);
        };
        for attempt in 1..=ATTEMPTS {
            let before = agent.counters()?;
            let report = self.run_once(&args)?;
            let after = agent.counters()?;
            let delta = |name: &str| {
                after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
            };
            let written = report.u64("bytes_sent")?;
            let moved = written + report.u64("bytes_received")?;
            let (translated, redirected, misses) = (
                delta("translated_local"),
                delta("bytes_redirected"),
                delta("redirect_miss"),
            );
            let counted = format!(
                "zh-bench {} wrote {written} bytes; the kernel counted {translated} connects \
                 translated locally, {redirected} bytes redirected, {misses} redirect misses",
                args.join(" ")
            );
            ensure!(translated > 0, "path (a) was not translated: {counted}");
            // The redirect counts both directions. rr and stream use one
            // connection: all its bytes must have been redirected (a socket
            // moves through the stack from its first miss on, see sk_msg.rs).
            // Of the many connections of a conn run, some may fall back
            // (their first message left before the server's end was
            // registered): those are counted and shown, not repeated.
            let fell_back = if mode == "conn" {
                redirected == 0
            } else {
                redirected < moved
            };
            if fell_back && (mode == "conn" || attempt == ATTEMPTS) {
                bail!("path (a) was not bypassed: {counted}");
            }
            self.last_misses = misses;
            self.checked.translated += translated;
            self.checked.redirected += redirected;
            self.checked.written += written;
            self.checked.misses += misses;
            if mode == "conn" {
                self.checked.conn_misses += misses;
                self.checked.conns += report.u64("ops")?;
            }
            if !fell_back {
                return Ok(report);
            }
            self.checked.repeated += 1;
            println!(
                "   ! the connection fell back to the stack ({misses} redirect misses, {redirected} \
                 of {moved} bytes redirected); measuring again"
            );
        }
        unreachable!("the last attempt returns or fails")
    }

    fn run_once(&self, args: &[String]) -> Result<Report> {
        let finished = self
            .client
            .run(&self.zh_bench, args, Duration::from_secs(120))?;
        ensure!(
            finished.status.success(),
            "zh-bench {} failed ({}): {}",
            args.join(" "),
            finished.status,
            finished.stderr
        );
        let last = finished.stdout.last().map(String::as_str).unwrap_or("");
        Ok(Report(serde_json::from_str(last).with_context(|| {
            format!("zh-bench {}: no report in {last:?}", args.join(" "))
        })?))
    }
}

/// How often a path (a) run whose connection fell back is measured in all.
const ATTEMPTS: usize = 3;

/// What the kernel counted over all path (a) runs.
#[derive(Default)]
struct Checked {
    translated: u64,
    redirected: u64,
    written: u64,
    misses: u64,
    /// Runs measured again because their connection fell back.
    repeated: u64,
    /// Connections of the connection-rate runs, and their redirect misses.
    conns: u64,
    conn_misses: u64,
}

// ---------------------------------------------------------------- output

fn number(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn sizes_of(results: &Results, metric: Metric) -> Vec<usize> {
    let mut sizes: Vec<usize> = results
        .keys()
        .filter(|(m, _, _)| *m == metric)
        .map(|(_, size, _)| *size)
        .collect();
    sizes.dedup();
    sizes
}

fn print_table(results: &Results) {
    let get = |metric, size, route| results.get(&(metric, size, route)).copied();
    println!(
        "\n{:<22} {:>8} {:>10} {:>10} {:>10} {:>10}  {:>6} {:>6} {:>6}  {:>6} {:>6} {:>6}",
        "METRIC",
        "SIZE",
        "zerohop",
        "kube-proxy",
        "pod-ip",
        "uds",
        "zh/b",
        "ip/b",
        "uds/b",
        "zh/d",
        "kp/d",
        "ip/d"
    );
    for metric in TABLE {
        for size in sizes_of(results, metric) {
            let mut line = format!("{:<22} {:>8}", metric.name(), size_name(size));
            for route in ROUTES {
                let cell = get(metric, size, route).map_or("-".into(), number);
                let _ = write!(line, " {cell:>10}");
            }
            let ratio = |route, base| match (get(metric, size, route), get(metric, size, base)) {
                (Some(value), Some(base)) if base > 0.0 => format!("{:.2}", value / base),
                _ => "-".into(),
            };
            line.push(' ');
            for route in [Route::Zerohop, Route::PodIp, Route::Uds] {
                let _ = write!(line, " {:>6}", ratio(route, Route::KubeProxy));
            }
            line.push(' ');
            for route in [Route::Zerohop, Route::KubeProxy, Route::PodIp] {
                let _ = write!(line, " {:>6}", ratio(route, Route::Uds));
            }
            println!("{line}");
        }
    }
    println!(
        "\n(a) zerohop: ClusterIP with zerohop   (b) kube-proxy: ClusterIP via iptables DNAT, zerohop off\n\
         (c) pod-ip: backend pod IP, over veth  (d) uds: Unix domain socket\n\
         x/b, x/d: ratio of a path's value to that of (b) kube-proxy, (d) uds.\n\
         Latency and CPU: lower is better; throughput (MB/s = 10^6 bytes/s of payload) and conn/s: higher is better.\n\
         cpu: user + system time of client and server processes (getrusage); cpu_us_per_op is per 64 B/1 KiB/16 KiB request."
    );
}

/// The issue's targets, each MET or MISSED with its numbers.
fn print_targets(results: &Results) {
    let get = |metric, size, route| {
        results
            .get(&(metric, size, route))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let verdict = |met: bool| if met { "MET   " } else { "MISSED" };
    println!("\nTARGETS");

    let zh = get(Metric::RttP50, 64, Route::Zerohop);
    let kp = get(Metric::RttP50, 64, Route::KubeProxy);
    let uds = get(Metric::RttP50, 64, Route::Uds);
    println!(
        "  {} zerohop p50 latency at 64 B at most 0.5x kube-proxy and not above uds: \
         zerohop {zh:.1} µs, kube-proxy {kp:.1} µs ({:.3}x{}), uds {uds:.1} µs ({:.3}x{})",
        verdict(zh <= 0.5 * kp && zh <= uds),
        zh / kp,
        if zh <= 0.5 * kp { "" } else { ", MISSED" },
        zh / uds,
        if zh <= uds { "" } else { ", MISSED" },
    );

    for (metric, what) in [
        (Metric::Throughput, "with TCP_NODELAY"),
        (Metric::ThroughputNagle, "with Nagle on"),
    ] {
        let mut met = true;
        let mut detail = Vec::new();
        for size in STREAM_SIZES {
            let (zh, kp) = (
                get(metric, size, Route::Zerohop),
                get(metric, size, Route::KubeProxy),
            );
            let ok = zh >= kp;
            met &= ok;
            detail.push(format!(
                "{} {} vs {} MB/s ({:.3}x{})",
                size_name(size),
                number(zh),
                number(kp),
                zh / kp,
                if ok { "" } else { ", MISSED" }
            ));
        }
        println!(
            "  {} zerohop throughput not below kube-proxy at any size, {what}: {}",
            verdict(met),
            detail.join("; ")
        );
    }

    let zh = get(Metric::ConnPerS, CONN_SIZE, Route::Zerohop);
    let kp = get(Metric::ConnPerS, CONN_SIZE, Route::KubeProxy);
    println!(
        "  {} zerohop connection rate at least 1.2x kube-proxy: zerohop {zh:.0}/s, kube-proxy {kp:.0}/s ({:.3}x)",
        verdict(zh >= 1.2 * kp),
        zh / kp
    );
}

fn write_json(results: &Results, path: &Path) -> Result<()> {
    let records: Vec<String> = results
        .iter()
        .filter(|((metric, _, _), _)| metric.in_json())
        .map(|(&(metric, size, route), &value)| {
            format!(
                r#"{{"path": "{}", "metric": "{}", "size_bytes": {size}, "value": {}}}"#,
                route.name(),
                metric.name(),
                serde_json::Value::from(value)
            )
        })
        .collect();
    let text = format!("[\n  {}\n]\n", records.join(",\n  "));
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round numbers for a linear axis from 0 to at least `max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    let rough = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// Hand-written SVG: one chart per metric, bars grouped by size, one colour
/// per path.
fn svg(results: &Results, quick: bool) -> String {
    const PANEL_W: f64 = 620.0;
    const PANEL_H: f64 = 330.0;
    const TOP: f64 = 70.0;
    let width = 2.0 * PANEL_W;
    let height = TOP + 3.0 * PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="20" y="28" font-size="18" font-weight="bold">zerohop same-node benchmark{}</text>"#,
        if quick { " (--quick)" } else { "" }
    );
    for (i, route) in ROUTES.iter().enumerate() {
        let x = 20.0 + i as f64 * 170.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="42" width="14" height="14" fill="{}"/><text x="{}" y="54">({}) {}</text>"#,
            route.colour(),
            x + 20.0,
            letter(*route),
            route.name()
        );
    }
    for (index, metric) in CHARTS.iter().enumerate() {
        let x0 = (index % 2) as f64 * PANEL_W;
        let y0 = TOP + (index / 2) as f64 * PANEL_H;
        chart(&mut out, results, *metric, x0, y0, PANEL_W, PANEL_H);
    }
    out.push_str("</svg>\n");
    out
}

fn chart(out: &mut String, results: &Results, metric: Metric, x0: f64, y0: f64, w: f64, h: f64) {
    let (left, right, top, bottom) = (x0 + 70.0, x0 + w - 20.0, y0 + 40.0, y0 + h - 40.0);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        x0 + 20.0,
        y0 + 22.0,
        xml_escape(metric.chart_title())
    );
    let sizes = sizes_of(results, metric);
    let values: Vec<f64> = results
        .iter()
        .filter(|((m, _, _), v)| *m == metric && v.is_finite() && **v > 0.0)
        .map(|(_, v)| *v)
        .collect();
    if sizes.is_empty() || values.is_empty() {
        return;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    // Maps a value to a y coordinate, and lists the axis ticks.
    let (scale, ticks): (Box<dyn Fn(f64) -> f64>, Vec<f64>) = if metric.log_scale() {
        let (lo, hi) = (
            min.log10().floor(),
            max.log10().ceil().max(min.log10().floor() + 1.0),
        );
        let scale = move |v: f64| bottom - (v.max(1e-9).log10() - lo) / (hi - lo) * (bottom - top);
        let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
        (Box::new(scale), ticks)
    } else {
        let ticks = linear_ticks(max);
        let top_value = *ticks.last().unwrap();
        let scale = move |v: f64| bottom - v / top_value * (bottom - top);
        (Box::new(scale), ticks)
    };
    for tick in &ticks {
        let y = scale(*tick);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"##,
            left - 6.0,
            y + 3.5,
            if tick.fract() == 0.0 {
                format!("{tick:.0}")
            } else {
                number(*tick)
            }
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333333"/>"##
    );
    let group = (right - left) / sizes.len() as f64;
    let bar = (group * 0.8 / ROUTES.len() as f64).min(40.0);
    for (g, size) in sizes.iter().enumerate() {
        let centre = left + (g as f64 + 0.5) * group;
        let first = centre - bar * ROUTES.len() as f64 / 2.0;
        for (r, route) in ROUTES.iter().enumerate() {
            let Some(&value) = results.get(&(metric, *size, *route)) else {
                continue;
            };
            let x = first + r as f64 * bar;
            let y = scale(value).clamp(top, bottom);
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {} {}: {}</title></rect>"#,
                x + 1.0,
                bar - 2.0,
                bottom - y,
                route.colour(),
                route.name(),
                metric.name(),
                size_name(*size),
                number(value)
            );
            let (tx, ty) = (x + bar / 2.0 + 3.0, y - 3.0);
            let _ = writeln!(
                out,
                r#"<text x="{tx:.1}" y="{ty:.1}" font-size="9" transform="rotate(-90 {tx:.1} {ty:.1})">{}</text>"#,
                number(value)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{centre:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 18.0,
            size_name(*size)
        );
    }
}

/// Checks that this run left nothing behind (its names start with `prefix`),
/// then runs the workspace's leftovers check.
fn leftovers(prefix: &str) -> Result<()> {
    let mut left = Vec::new();
    for dir in [
        PathBuf::from("/run/netns"),
        zerohop_tests::cgroup2_mount(),
        zerohop_tests::bpffs_mount()?,
    ] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                left.push(entry.path().display().to_string());
            }
        }
    }
    ensure!(left.is_empty(), "left behind: {left:#?}");
    crate::leftovers_check()
}
