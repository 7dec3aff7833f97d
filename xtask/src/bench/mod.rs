//! `cargo xtask bench`: zerohop against the kube-proxy path on one node, with
//! third-party clients and servers and zerohop's own `zh-bench`.
//!
//! One sandboxed node, pods `server` and `client`. Every server runs behind
//! two Services: Service Z is in the agent's manifests (zerohop translates
//! it and bypasses the stack), Service K only has a kube-proxy style DNAT rule
//! (zerohop is installed and running, but does not know it). The agent runs
//! the whole time, so the two paths alternate trial by trial with nothing to
//! restart: for each workload and concurrency, a warm-up run per path (not
//! counted), then N trials of each path, zerohop first in odd trials,
//! kube-proxy first in even ones. Results are medians with their range, and
//! every trial's share of connections and bytes that took the bypass, from
//! the kernel counters; nothing is measured again or left out. The method is
//! described in the README, section "Benchmark".

mod control_plane;
mod idle;
mod l7;
mod report;
mod stats;
mod workload;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;
use zerohop_sandbox::{
    node_name, require_root, service_yaml, slice_yaml, Agent, Cluster, Endpoint, Manifests, Pod,
    PodProcess,
};

use crate::Binaries;
use idle::{IdleArg, Setting};
use report::{Cell, Run, Trial};
use stats::{delta, Counts, VETH_BYTES};
use workload::{
    wrk_errors, zh_bench_socket, Backend, Budget, Programs, Route, Target, Tool, Workload, BACKENDS,
};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short sanity run: 3 trials of 1 s per path, concurrencies 1, 8, 64.
    #[arg(long)]
    pub quick: bool,
    /// Trials per path and cell (default 5; --quick 3).
    #[arg(long, value_name = "N")]
    pub trials: Option<usize>,
    /// Only the workloads whose name contains one of these words (e.g. `--only wrk,iperf3`).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Write every trial of every cell to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the ratios against concurrency to FILE (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Pin every client and server to one CPU (default: the last one). The
    /// default leaves them to the scheduler, as in a cluster.
    #[arg(long, value_name = "CPU", num_args = 0..=1)]
    pub pin: Option<Option<usize>>,
    /// The node's idle behaviour while measuring: as it is, halt (an idle vCPU
    /// halts at once), poll (it polls 200 µs first), or both, one after the
    /// other. The original setting is always restored.
    #[arg(long, value_enum, default_value = "as-is")]
    pub idle: IdleArg,
    /// Measure the agent's control plane instead of the datapath: first
    /// sync, one change to the maps, memory and idle CPU with 1k, 10k and
    /// 50k Services (--quick: 1k and 10k).
    #[arg(long)]
    pub control_plane: bool,
    /// Measure the waypoint instead: HTTP/1.1 (wrk) and h2c (h2load)
    /// through zerohop-waypoint, an nginx reverse proxy and haproxy, against
    /// direct L4; idle connections' memory and slowloris (section "L7
    /// benchmark" of the README). Unpinned, with the node's idle behaviour
    /// as it is.
    #[arg(long, conflicts_with_all = ["pin", "only", "idle", "control_plane"])]
    pub l7: bool,
    /// With --l7: worker threads of each proxy (waypoint --workers, nginx
    /// worker_processes, haproxy nbthread).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "l7")]
    pub workers: usize,
}

/// Trial counts and lengths.
struct Plan {
    trials: usize,
    sweep: Vec<u32>,
    /// One trial of a timed tool (wrk, zh-bench stream and conn); the target
    /// length of a redis-benchmark trial.
    seconds: u32,
    iperf3_seconds: u32,
    /// The warm-up run of each cell and path.
    warmup_seconds: u32,
    rr_iterations: u64,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        if args.quick {
            Plan {
                trials: args.trials.unwrap_or(3),
                sweep: vec![1, 8, 64],
                seconds: 1,
                iperf3_seconds: 1,
                warmup_seconds: 1,
                rr_iterations: 10_000,
            }
        } else {
            Plan {
                trials: args.trials.unwrap_or(5),
                sweep: vec![1, 2, 4, 8, 16, 32, 64],
                seconds: 2,
                iperf3_seconds: 3,
                warmup_seconds: 1,
                rr_iterations: 50_000,
            }
        }
    }

    fn workloads(&self, only: &[String]) -> Vec<Workload> {
        workload::workloads(&self.sweep)
            .into_iter()
            .filter(|w| only.is_empty() || only.iter().any(|word| w.name.contains(word.as_str())))
            .collect()
    }
}

/// A temporary directory (nginx's configuration and files, Unix sockets),
/// removed on Drop. Named like the sandbox, so a crashed run's is swept.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(binaries: &Binaries, args: &BenchArgs) -> Result<()> {
    require_root();
    let started = Instant::now();
    // Read by zerohop_sandbox::Agent; set before any thread starts.
    std::env::set_var("ZEROHOP_BIN", &binaries.zerohop);
    if args.control_plane {
        return control_plane::run(args);
    }
    if args.l7 {
        return l7::run(binaries, args);
    }
    let zh_bench = binaries.testpod.with_file_name("zh-bench");
    ensure!(zh_bench.is_file(), "{} is not built", zh_bench.display());
    idle::install_signal_handler()?;
    let plan = Plan::new(args);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = args.pin.map(|cpu| cpu.unwrap_or(cpus - 1));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let original_poll = idle::halt_poll_ns();
    println!(
        "== zerohop benchmark ({} run: {} trials per path and cell, concurrencies {:?})",
        if args.quick { "quick" } else { "full" },
        plan.trials,
        plan.sweep
    );
    println!(
        "   node: {cpus} CPUs, kernel {kernel}; {}",
        idle::describe()
    );
    println!(
        "   {}",
        match pin {
            Some(cpu) => format!("every client and server pinned to CPU {cpu}"),
            None => "clients and servers not pinned (the scheduler places them)".into(),
        }
    );

    let cluster = Cluster::new(1)?;
    let prefix = cluster.prefix().to_owned();
    let outcome = measure(&cluster, &zh_bench, &plan, args, pin);
    drop(cluster);
    println!(
        "   after the run: {} (at the start: {})",
        idle::describe(),
        original_poll.map_or("no haltpoll parameter".into(), |ns| format!(
            "guest_halt_poll_ns {ns}"
        ))
    );
    let runs = outcome?;

    for run in &runs {
        report::print_run(run, plan.trials);
    }
    let subtitle = format!(
        "{} run, medians of {} trials, {}",
        if args.quick { "quick" } else { "full" },
        plan.trials,
        if pin.is_some() { "pinned" } else { "unpinned" }
    );
    if let Some(path) = &args.json {
        let node = json!({
            "cpus": cpus,
            "kernel": kernel,
            "idle": idle::describe(),
            "pinned_cpu": pin,
            "trials": plan.trials,
            "quick": args.quick,
        });
        report::write_json(path, &report::json(&runs, node))?;
        println!("\n== wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&runs, &subtitle)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("== wrote {}", path.display());
    }
    let secs = started.elapsed().as_secs();
    println!(
        "== {} min {} s in all (excluding the build)",
        secs / 60,
        secs % 60
    );
    leftovers(&prefix)
}

/// Builds the node (pods, Services, servers, agent), then measures the
/// matrix under each idle behaviour asked for.
fn measure(
    cluster: &Cluster,
    zh_bench: &Path,
    plan: &Plan,
    args: &BenchArgs,
    pin: Option<usize>,
) -> Result<Vec<Run>> {
    let server = cluster.add_pod(1, "server")?;
    let client = cluster.add_pod(1, "client")?;
    // Room for the short-connection runs' ports and TIME_WAIT sockets (zh-bench
    // conn closes first, so its TIME_WAIT is on the client), this pod only.
    client.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )?;
    let server_ip = IpAddr::from(server.ipv4);
    let dir = TempDir(std::env::temp_dir().join(format!("{}-bench", cluster.prefix())));
    std::fs::create_dir_all(&dir.0)?;

    let manifests = Manifests::new()?;
    for backend in BACKENDS {
        for route in [Route::Zerohop, Route::KubeProxy] {
            let (name, ip, port) = (
                backend.service(route),
                backend.cluster_ip(route),
                backend.port(),
            );
            let target = backend.target_port(route);
            // kube-proxy programs every Service, zerohop's too.
            cluster.add_dnat_everywhere(ip, port, &[(server_ip, target)])?;
            if route == Route::Zerohop {
                manifests.write(
                    &format!("{name}.yaml"),
                    &service_yaml(&name, ip, port, target, ""),
                )?;
                let endpoint = Endpoint {
                    ip: server_ip,
                    node: &node_name(1),
                    ready: true,
                };
                manifests.write(
                    &format!("{name}-slice.yaml"),
                    &slice_yaml(&name, &format!("{name}-1"), target, &[endpoint]),
                )?;
            }
        }
        println!(
            "   {}: Service {} {}:{} -> {server_ip}:{} (zerohop); Service {} {}:{} -> {server_ip}:{} (DNAT only)",
            backend.name(),
            backend.service(Route::Zerohop),
            backend.cluster_ip(Route::Zerohop),
            backend.port(),
            backend.target_port(Route::Zerohop),
            backend.service(Route::KubeProxy),
            backend.cluster_ip(Route::KubeProxy),
            backend.port(),
            backend.target_port(Route::KubeProxy),
        );
    }
    let mut servers = start_servers(&server, zh_bench, &dir.0, pin)?;
    println!(
        "== starting the zerohop agent on {}: it knows the Z Services, not the K ones",
        node_name(1)
    );
    let agent = Agent::start(cluster, 1, manifests.dir(), &[])?;

    let bench = Bench {
        client: &client,
        agent: &agent,
        programs: Programs {
            zh_bench: zh_bench.to_owned(),
        },
        plan,
        pin,
        dir: dir.0.clone(),
    };
    let workloads = plan.workloads(&args.only);
    ensure!(
        !workloads.is_empty(),
        "--only {:?} matches no workload",
        args.only
    );
    let mut runs = Vec::new();
    for mode in args.idle.modes() {
        let setting = match mode.halt_poll_ns() {
            Some(ns) => Some(Setting::set(
                Path::new(idle::HALT_POLL_NS),
                &ns.to_string(),
            )?),
            None => None,
        };
        println!(
            "\n== measuring under idle {}: {}{}",
            mode.name(),
            idle::describe(),
            setting.as_ref().map_or(String::new(), |s| format!(
                " (was {}, restored afterwards)",
                s.original()
            ))
        );
        let halt_poll_ns = idle::halt_poll_ns();
        let mut cells = Vec::new();
        for workload in &workloads {
            for &concurrency in &workload.concurrencies {
                let cell = bench
                    .cell(workload, concurrency)
                    .map_err(|e| e.context(servers_state(&server, &mut servers)))?;
                cells.push(cell);
            }
        }
        drop(setting);
        runs.push(Run {
            idle: mode,
            halt_poll_ns,
            cells,
        });
    }
    drop(agent);
    drop(servers);
    Ok(runs)
}

/// `taskset -c CPU program args…` when pinned.
fn pinned(pin: Option<usize>, program: PathBuf, args: Vec<String>) -> (PathBuf, Vec<String>) {
    match pin {
        None => (program, args),
        Some(cpu) => {
            let mut all = vec![
                "-c".to_owned(),
                cpu.to_string(),
                program.display().to_string(),
            ];
            all.extend(args);
            ("taskset".into(), all)
        }
    }
}

/// nginx's configuration: one process serving a 300-byte page on the target
/// ports of both Services. `master_process off` runs the worker's event loop
/// in the process we start (the same work as `worker_processes 1` under a
/// master), so that process is ended by its PID like every pod process: a
/// master killed with SIGKILL would leave its worker running in the pod.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    let (z, k) = (
        Backend::Nginx.target_port(Route::Zerohop),
        Backend::Nginx.target_port(Route::KubeProxy),
    );
    format!(
        "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  \
         client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n  \
         fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  \
         scgi_temp_path {d}/nginx-scgi;\n  default_type text/html;\n  \
         server {{\n    listen {z};\n    listen {k};\n    root {d}/www;\n  }}\n}}\n"
    )
}

/// Starts every server in the server pod and waits until all listen.
fn start_servers(
    pod: &Pod,
    zh_bench: &Path,
    dir: &Path,
    pin: Option<usize>,
) -> Result<Vec<PodProcess>> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "z".repeat(300))?;
    std::fs::write(dir.join("nginx.conf"), nginx_conf(dir))?;
    let d = |file: &str| dir.join(file).display().to_string();
    let mut commands: Vec<(PathBuf, Vec<String>)> = vec![(
        "nginx".into(),
        vec![
            "-p".into(),
            d(""),
            "-c".into(),
            d("nginx.conf"),
            "-e".into(),
            d("nginx-error.log"),
        ],
    )];
    for port in ports_of(Backend::Redis) {
        commands.push((
            "redis-server".into(),
            ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
                .into_iter()
                .map(String::from)
                .chain(["--port".into(), port.to_string()])
                .chain(["--loglevel".into(), "warning".into()])
                .collect(),
        ));
    }
    for port in ports_of(Backend::Iperf3) {
        commands.push((
            "iperf3".into(),
            vec!["-s".into(), "-p".into(), port.to_string()],
        ));
    }
    for route in [Route::Zerohop, Route::KubeProxy] {
        let mut args = vec![
            "server".to_owned(),
            "--greet-tcp-port".into(),
            Backend::ZhBench.target_port(route).to_string(),
            "--tcp-port".into(),
            Backend::ZhBenchConn.target_port(route).to_string(),
        ];
        if route == Route::Zerohop {
            args.extend([
                "--greet-uds".into(),
                zh_bench_socket(dir).display().to_string(),
            ]);
        }
        commands.push((zh_bench.to_owned(), args));
    }
    let mut servers = Vec::new();
    for (program, args) in commands {
        let (program, args) = pinned(pin, program, args);
        servers.push(pod.spawn(&program, &args)?);
    }
    let ports: Vec<u16> = BACKENDS.into_iter().flat_map(ports_of).collect();
    wait_listening(pod, &ports, &mut servers)?;
    // The key redis-benchmark's GET asks for (3 bytes, its default data size).
    for port in ports_of(Backend::Redis) {
        let set = pod.run(
            Path::new("redis-cli"),
            ["-p", &port.to_string(), "SET", "key:__rand_int__", "xxx"],
            Duration::from_secs(10),
        )?;
        ensure!(
            set.status.success() && set.stdout.join("") == "OK",
            "redis-cli SET on port {port}: {set:?}"
        );
    }
    println!(
        "   servers in pod server ({}): nginx (one process, both ports, 300-byte page), \
         redis-server and iperf3 (one per port), zh-bench (one per path, Unix socket on Z's)",
        pod.ipv4
    );
    Ok(servers)
}

/// What listens in the server pod, whether each server still runs, and what
/// it wrote on stderr: the context of a failed trial.
/// Waits until each of `ports` listens in `pod`, for 10 s at most; fails
/// at once when one of `servers` has exited.
fn wait_listening(pod: &Pod, ports: &[u16], servers: &mut [PodProcess]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening = pod.exec("ss", &["-Hltn"])?;
        let missing: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|port| {
                !listening
                    .split_whitespace()
                    .any(|word| word.ends_with(&format!(":{port}")))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for server in servers.iter_mut() {
            if let Ok(status) = server.wait_timeout(Duration::ZERO) {
                bail!("a server exited ({status}): {}", server.stderr());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "ports {missing:?} are not listening in pod {} after 10 s:\n{listening}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn servers_state(pod: &Pod, servers: &mut [PodProcess]) -> String {
    let listening = pod
        .exec("ss", &["-Hltn"])
        .unwrap_or_else(|e| format!("{e:#}"));
    let mut text = format!("listening in pod {}:\n{listening}the servers:", pod.name);
    for server in servers {
        let state = match server.wait_timeout(Duration::ZERO) {
            Ok(status) => format!("exited ({status})"),
            Err(_) => "running".to_owned(),
        };
        let stderr = server.stderr();
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        text += &format!("\n  pid {} {state}; stderr: {:?}", server.pid(), tail);
    }
    text
}

fn ports_of(backend: Backend) -> [u16; 2] {
    [Route::Zerohop, Route::KubeProxy].map(|route| backend.target_port(route))
}

/// The running benchmark: the client pod and what it reaches.
struct Bench<'a> {
    client: &'a Pod,
    agent: &'a Agent,
    programs: Programs,
    plan: &'a Plan,
    pin: Option<usize>,
    /// Where zh-bench's Unix socket is.
    dir: PathBuf,
}

impl Bench<'_> {
    fn target(&self, backend: Backend, route: Route) -> Target {
        match route {
            Route::Uds => Target::Uds(zh_bench_socket(&self.dir)),
            _ => Target::Tcp(SocketAddr::new(backend.cluster_ip(route), backend.port())),
        }
    }

    /// The kernel counters and the client's veth bytes (both directions).
    fn snapshot(&self) -> Result<Counts> {
        let mut counts = self.agent.counters()?;
        let (rx, tx) = self.client.veth_bytes()?;
        counts.insert(VETH_BYTES.to_owned(), rx + tx);
        Ok(counts)
    }

    /// One run of the client: the only place a measurement is taken.
    fn trial(&self, w: &Workload, route: Route, concurrency: u32, budget: Budget) -> Result<Trial> {
        if idle::interrupted() {
            bail!("interrupted");
        }
        let target = self.target(w.backend(), route);
        let (program, args) = w.client(&self.programs, &target, concurrency, budget);
        let (program, args) = pinned(self.pin, program, args);
        let line = format!("{} {}", program.display(), args.join(" "));
        let timeout = Duration::from_secs(u64::from(budget.seconds) * 5 + 60);
        let before = self.snapshot()?;
        let finished = self.client.run(&program, &args, timeout);
        let after = self.snapshot()?;
        let finished = finished.map_err(|e| match idle::interrupted() {
            true => anyhow!("interrupted"),
            false => e.context(format!("`{line}`")),
        })?;
        let stdout = finished.stdout.join("\n");
        let output = || format!("`{line}` printed:\n{stdout}\n{}", finished.stderr);
        ensure!(
            finished.status.success(),
            "{} ({})",
            output(),
            finished.status
        );
        let values = w.parse(&stdout).with_context(output)?;
        let counts = delta(&before, &after);
        let translated = counts.get("translated_local").copied().unwrap_or(0);
        match route {
            Route::Zerohop => ensure!(
                translated > 0,
                "path zerohop: no connect was translated: {counts:?}; {}",
                output()
            ),
            _ => ensure!(
                translated == 0,
                "path {}: zerohop translated {translated} connects; {}",
                route.name(),
                output()
            ),
        }
        Ok(Trial {
            route,
            values,
            counts,
            errors: matches!(w.tool, Tool::Wrk { .. })
                .then(|| wrk_errors(&stdout))
                .flatten(),
        })
    }

    /// Warm-up (not counted), then the interleaved trials of one cell.
    fn cell(&self, w: &Workload, concurrency: u32) -> Result<Cell> {
        let plan = self.plan;
        let routes = w.routes();
        let head = format!("{} c{concurrency}", w.name);
        let warmup = Budget {
            seconds: plan.warmup_seconds,
            requests: match w.tool {
                Tool::Redis { pipeline } => 20_000 * u64::from(pipeline),
                _ => 5_000,
            },
        };
        let mut warm = Vec::new();
        for &route in &routes {
            warm.push(self.trial(w, route, concurrency, warmup)?);
        }
        let budget = self.budget(w, &warm);
        println!(
            "   {head:<30} warm-up (not counted): {}{}",
            warm.iter()
                .map(|t| format!("{} {}", t.route.name(), stats::number(t.values[0])))
                .collect::<Vec<_>>()
                .join(", "),
            match w.tool {
                Tool::Redis { .. } => format!("; {} requests per trial", budget.requests),
                _ => String::new(),
            }
        );
        let mut trials = Vec::new();
        for i in 0..plan.trials {
            // ZK, KZ, ZK …: neither path always runs on the warmer cache.
            let mut order = routes.clone();
            order.rotate_left(i % routes.len());
            for route in order {
                let trial = self.trial(w, route, concurrency, budget)?;
                let values: Vec<String> = trial.values.iter().map(|v| stats::number(*v)).collect();
                println!(
                    "   {head:<30} #{} {:<10} {:>9} {:<6} {}{}",
                    i + 1,
                    route.name(),
                    values.join("/"),
                    w.metrics[0].unit,
                    report::shares_text(route, &trial.counts),
                    trial
                        .errors
                        .as_ref()
                        .map_or(String::new(), |e| format!("  ! {e}")),
                );
                trials.push(trial);
            }
        }
        let cell = Cell {
            workload: w.clone(),
            concurrency,
            trials,
        };
        for row in cell.rows() {
            println!(
                "   {:<30} => zerohop {}, kube-proxy {} {}: {:.2}x; {}",
                format!("{} c{concurrency}", row.label),
                report::spread_text(Some(row.zerohop)),
                report::spread_text(Some(row.kube_proxy)),
                row.unit,
                row.ratio,
                report::shares_text(Route::Zerohop, &row.zerohop_counts),
            );
        }
        Ok(cell)
    }

    /// A trial's length. redis-benchmark runs a request count: enough for
    /// `seconds` at the faster path's warm-up rate, the same for both paths.
    fn budget(&self, w: &Workload, warm: &[Trial]) -> Budget {
        let plan = self.plan;
        let seconds = match w.tool {
            Tool::Iperf3 => plan.iperf3_seconds,
            _ => plan.seconds,
        };
        let requests = match w.tool {
            Tool::Redis { .. } => {
                let rate = warm.iter().map(|t| t.values[0]).fold(0.0, f64::max);
                ((rate * f64::from(seconds) / 1000.0).ceil() as u64 * 1000).max(10_000)
            }
            _ => plan.rr_iterations,
        };
        Budget { seconds, requests }
    }
}

/// Checks that this run left nothing behind (its names start with `prefix`),
/// then runs the workspace's leftovers check.
fn leftovers(prefix: &str) -> Result<()> {
    let mut left = Vec::new();
    for dir in [
        PathBuf::from("/run/netns"),
        std::env::temp_dir(),
        zerohop_sandbox::cgroup2_mount(),
        zerohop_sandbox::bpffs_mount()?,
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
