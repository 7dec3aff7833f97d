//! `cargo xtask bench --l7`: the waypoint (`zerohop-waypoint`) against nginx
//! and haproxy as reverse proxies, and against direct L4, on one node.
//!
//! Pods `backend` (nginx, one process, a 300-byte page; HTTP/1.1 on one
//! port, h2c on another), `proxy` (the waypoint, an nginx reverse proxy and
//! haproxy, each with the same number of worker threads or processes) and
//! `client` (wrk for HTTP/1.1, h2load for h2c). Every path is a Service the
//! agent knows, so the client's connects are translated the same way:
//!
//! - waypoint: Service `web`, with an HTTPRoute (parentRef the Service)
//!   sending to Service `backend`: the agent redirects its connects to the
//!   waypoint, which forwards in HTTP/1.1 (`appProtocol: http`);
//! - nginx, haproxy: a Service per proxy and protocol, whose endpoint is
//!   the proxy's listener in the waypoint's pod; both proxy to the
//!   backend's address in HTTP/1.1 over pooled keep-alive connections;
//! - direct: Service `backend` (`backend-h2` for h2c), L4 only: the floor.
//!
//! For each load (wrk connections, h2load connections × streams), a
//! warm-up run per path (not counted), then N interleaved trials (the
//! order rotates each round). Each trial reads the requests, req/s, p50 and
//! p99 from the client, and the CPU time (utime + stime) of the proxy's
//! processes from /proc before and after. Then: the waypoint's (and the
//! others') RSS with 10,000 idle client connections, and wrk c8 through
//! the waypoint with and without 4,000 slowloris connections held,
//! interleaved.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use zerohop_sandbox::{
    node_name, pod_yaml, require_root, service_yaml, slice_yaml, Agent, Cluster, Endpoint,
    Manifests, Pod, PodProcess,
};

use super::{
    control_plane::{cpu_ticks, memory_mib, ticks_per_second},
    idle, report,
    stats::{self, Spread},
    wait_listening,
    workload::wrk_errors,
    BenchArgs, TempDir,
};
use crate::Binaries;

/// Ports in the backend pod.
const BACKEND_H1: u16 = 8080;
const BACKEND_H2: u16 = 8090;
/// Ports in the proxy pod.
const WAYPOINT_PORT: u16 = 15001;
const NGINX_H1: u16 = 8081;
const NGINX_H2: u16 = 8082;
const HAPROXY_H1: u16 = 8083;
const HAPROXY_H2: u16 = 8084;
/// Every Service's port.
const SERVICE_PORT: u16 = 80;
/// Idle client connections held for the memory figure.
const IDLE_CONNECTIONS: usize = 10_000;
/// Slowloris connections held while wrk measures.
const SLOW_CONNECTIONS: usize = 4_000;
/// wrk's connections in the slowloris measurement.
const SLOWLORIS_WRK: u32 = 8;

/// The paths a request takes from client to backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path4 {
    Waypoint,
    Nginx,
    Haproxy,
    Direct,
}

const PATHS: [Path4; 4] = [Path4::Waypoint, Path4::Nginx, Path4::Haproxy, Path4::Direct];
const PROXIES: [Path4; 3] = [Path4::Waypoint, Path4::Nginx, Path4::Haproxy];

impl Path4 {
    fn name(self) -> &'static str {
        match self {
            Path4::Waypoint => "waypoint",
            Path4::Nginx => "nginx",
            Path4::Haproxy => "haproxy",
            Path4::Direct => "direct",
        }
    }

    /// The Service's ClusterIP for `proto` (the waypoint's serves both).
    fn cluster_ip(self, proto: Proto) -> IpAddr {
        let last = match (self, proto) {
            (Path4::Direct, Proto::H1) => 10,
            (Path4::Direct, Proto::H2c) => 11,
            (Path4::Waypoint, _) => 20,
            (Path4::Nginx, Proto::H1) => 30,
            (Path4::Nginx, Proto::H2c) => 31,
            (Path4::Haproxy, Proto::H1) => 40,
            (Path4::Haproxy, Proto::H2c) => 41,
        };
        Ipv4Addr::new(10, 96, 3, last).into()
    }

    fn target(self, proto: Proto) -> SocketAddr {
        SocketAddr::new(self.cluster_ip(proto), SERVICE_PORT)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// HTTP/1.1, wrk.
    H1,
    /// HTTP/2 over cleartext with prior knowledge, h2load.
    H2c,
}

/// One load: the client, its connections and (h2load) streams per connection.
#[derive(Clone, Copy, Debug)]
struct Load {
    proto: Proto,
    connections: u32,
    streams: u32,
}

impl Load {
    fn label(&self) -> String {
        match self.proto {
            Proto::H1 => format!("wrk c{}", self.connections),
            Proto::H2c => format!("h2load c{} m{}", self.connections, self.streams),
        }
    }
}

/// What one client run measured.
#[derive(Clone, Debug)]
struct Trial {
    path: Path4,
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU seconds of the proxy's processes (none for direct).
    cpu_s: Option<f64>,
    errors: Option<String>,
}

impl Trial {
    /// Requests per CPU second of the proxy.
    fn per_cpu(&self) -> Option<f64> {
        self.cpu_s
            .filter(|cpu| *cpu > 0.0)
            .map(|cpu| self.requests / cpu)
    }
}

struct Cell {
    load: Load,
    trials: Vec<Trial>,
}

impl Cell {
    fn spread(&self, path: Path4, value: impl Fn(&Trial) -> Option<f64>) -> Option<Spread> {
        let values: Vec<f64> = self
            .trials
            .iter()
            .filter(|t| t.path == path)
            .filter_map(value)
            .collect();
        stats::spread(&values)
    }

    fn rps(&self, path: Path4) -> Option<Spread> {
        self.spread(path, |t| Some(t.rps))
    }
    fn p50(&self, path: Path4) -> Option<Spread> {
        self.spread(path, |t| Some(t.p50_us))
    }
    fn p99(&self, path: Path4) -> Option<Spread> {
        self.spread(path, |t| Some(t.p99_us))
    }
    fn per_cpu(&self, path: Path4) -> Option<Spread> {
        self.spread(path, Trial::per_cpu)
    }

    /// Median latency over direct L4's median.
    fn added(&self, path: Path4, latency: fn(&Cell, Path4) -> Option<Spread>) -> Option<f64> {
        Some(latency(self, path)?.median - latency(self, Path4::Direct)?.median)
    }
}

/// Trial counts and lengths of the L7 mode.
struct Plan {
    trials: usize,
    wrk: Vec<u32>,
    h2load: Vec<(u32, u32)>,
    seconds: u32,
    warmup_seconds: u32,
    slowloris_seconds: u32,
    workers: usize,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let workers = args.workers.max(1);
        if args.quick {
            Plan {
                trials: args.trials.unwrap_or(3),
                wrk: vec![1, 8, 64],
                h2load: vec![(1, 1), (1, 64), (4, 16)],
                seconds: 1,
                warmup_seconds: 1,
                slowloris_seconds: 2,
                workers,
            }
        } else {
            Plan {
                trials: args.trials.unwrap_or(5),
                wrk: vec![1, 2, 4, 8, 16, 32, 64],
                h2load: vec![(1, 1), (1, 8), (1, 64), (4, 16)],
                seconds: 2,
                warmup_seconds: 1,
                slowloris_seconds: 4,
                workers,
            }
        }
    }

    fn loads(&self) -> Vec<Load> {
        let h1 = self.wrk.iter().map(|&c| Load {
            proto: Proto::H1,
            connections: c,
            streams: 1,
        });
        let h2 = self.h2load.iter().map(|&(c, m)| Load {
            proto: Proto::H2c,
            connections: c,
            streams: m,
        });
        h1.chain(h2).collect()
    }
}

/// RSS of a proxy's processes, idle and with the idle connections held.
struct Memory {
    path: Path4,
    before_mib: f64,
    with_idle_mib: f64,
    opened: usize,
    established: usize,
}

/// wrk c8 through the waypoint, without and with the slow connections.
struct Slowloris {
    without: Vec<f64>,
    with: Vec<f64>,
    held: Vec<usize>,
    errors: Vec<String>,
}

pub fn run(binaries: &Binaries, args: &BenchArgs) -> Result<()> {
    require_root();
    let started = Instant::now();
    idle::install_signal_handler()?;
    let nofile = raise_nofile()?;
    let plan = Plan::new(args);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    println!(
        "== zerohop L7 benchmark ({} run: {} trials per path and load, wrk connections {:?}, \
         h2load (connections, streams) {:?})",
        if args.quick { "quick" } else { "full" },
        plan.trials,
        plan.wrk,
        plan.h2load
    );
    println!(
        "   node: {cpus} CPUs, kernel {kernel}; {}; nothing pinned; {} worker thread(s) \
         for each proxy (waypoint --workers, nginx worker_processes, haproxy nbthread)",
        idle::describe(),
        plan.workers
    );
    let cluster = Cluster::new(1)?;
    let prefix = cluster.prefix().to_owned();
    let outcome = measure(&cluster, binaries, &plan, nofile);
    drop(cluster);
    let (cells, memory, slowloris) = match outcome {
        Ok(measured) => measured,
        Err(error) => {
            // What a failed run left matters too; the failure comes first.
            if let Err(left) = super::leftovers(&prefix) {
                eprintln!("{left:#}");
            }
            return Err(error);
        }
    };

    print_table(&cells, plan.trials);
    print_memory(&memory);
    print_slowloris(&slowloris);
    print_targets(&cells, &memory, &slowloris);
    if let Some(path) = &args.json {
        let node = json!({
            "cpus": cpus,
            "kernel": kernel,
            "idle": idle::describe(),
            "trials": plan.trials,
            "quick": args.quick,
            "workers": plan.workers,
        });
        report::write_json(path, &to_json(&cells, &memory, &slowloris, node))?;
        println!("\n== wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let subtitle = format!(
            "{} run, medians of {} trials, {} worker(s) per proxy",
            if args.quick { "quick" } else { "full" },
            plan.trials,
            plan.workers
        );
        std::fs::write(path, svg(&cells, &subtitle)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("== wrote {}", path.display());
    }
    let secs = started.elapsed().as_secs();
    println!(
        "== {} min {} s in all (excluding the build)",
        secs / 60,
        secs % 60
    );
    super::leftovers(&prefix)
}

/// Raises this process's soft limit on open files to its hard limit: the
/// proxies started in the pods inherit it, and hold 10,000 connections.
fn raise_nofile() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit"
        );
        limit.rlim_cur = limit.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    let needed = (IDLE_CONNECTIONS + 1000) as u64;
    ensure!(
        limit.rlim_cur >= needed,
        "RLIMIT_NOFILE is {}: fewer than the {needed} descriptors a proxy needs for \
         {IDLE_CONNECTIONS} idle connections",
        limit.rlim_cur
    );
    Ok(limit.rlim_cur)
}

/// The proxies, each ended by its PID when dropped.
struct Proxies {
    waypoint: PodProcess,
    nginx: PodProcess,
    haproxy: PodProcess,
}

impl Proxies {
    fn pid(&self, path: Path4) -> Option<u32> {
        match path {
            Path4::Waypoint => Some(self.waypoint.pid()),
            Path4::Nginx => Some(self.nginx.pid()),
            Path4::Haproxy => Some(self.haproxy.pid()),
            Path4::Direct => None,
        }
    }

    /// The proxy's processes: the one started and its children (nginx's
    /// workers under a master).
    fn processes(&self, path: Path4) -> Vec<u32> {
        let Some(pid) = self.pid(path) else {
            return Vec::new();
        };
        let mut all = vec![pid];
        all.extend(children(pid));
        all
    }

    /// CPU seconds (utime + stime) of the proxy's processes.
    fn cpu_seconds(&self, path: Path4) -> Result<Option<f64>> {
        if path == Path4::Direct {
            return Ok(None);
        }
        let mut ticks = 0;
        for pid in self.processes(path) {
            ticks += cpu_ticks(pid)?;
        }
        Ok(Some(ticks as f64 / ticks_per_second()))
    }

    fn rss_mib(&self, path: Path4) -> Result<f64> {
        let mut sum = 0.0;
        for pid in self.processes(path) {
            sum += memory_mib(pid)?.0;
        }
        Ok(sum)
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        // An nginx master ends its workers on SIGTERM (SIGKILL would leave
        // them running); the workers we started, by their PIDs.
        let workers = children(self.nginx.pid());
        if !workers.is_empty() {
            // SAFETY: a signal to the nginx master this run started.
            unsafe { libc::kill(self.nginx.pid() as i32, libc::SIGTERM) };
            let _ = self.nginx.wait_timeout(Duration::from_secs(5));
            for pid in workers {
                if !zerohop_sandbox::process_gone(pid) {
                    // SAFETY: an nginx worker of the master this run started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
}

/// PIDs whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

type Measured = (Vec<Cell>, Vec<Memory>, Slowloris);

fn measure(cluster: &Cluster, binaries: &Binaries, plan: &Plan, nofile: u64) -> Result<Measured> {
    let backend = cluster.add_pod(1, "backend")?;
    let proxy = cluster.add_pod(1, "proxy")?;
    let client = cluster.add_pod(1, "client")?;
    // Ports for 10,000 connections to one address, this pod only.
    client.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )?;
    for pod in [&proxy, &backend] {
        pod.exec("sysctl", &["-qw", "net.core.somaxconn=65535"])?;
    }
    let backend_ip = IpAddr::from(backend.ipv4);
    let proxy_ip = IpAddr::from(proxy.ipv4);
    let dir = TempDir(std::env::temp_dir().join(format!("{}-bench", cluster.prefix())));
    std::fs::create_dir_all(&dir.0)?;
    let d = &dir.0;

    let manifests = Manifests::new()?;
    let http = |yaml: String| {
        yaml.replace(
            "    protocol: TCP\n",
            "    protocol: TCP\n    appProtocol: http\n",
        )
    };
    let services: [(&str, Path4, Proto, IpAddr, u16); 7] = [
        ("backend", Path4::Direct, Proto::H1, backend_ip, BACKEND_H1),
        (
            "backend-h2",
            Path4::Direct,
            Proto::H2c,
            backend_ip,
            BACKEND_H2,
        ),
        ("web", Path4::Waypoint, Proto::H1, backend_ip, BACKEND_H1),
        ("nginx", Path4::Nginx, Proto::H1, proxy_ip, NGINX_H1),
        ("nginx-h2", Path4::Nginx, Proto::H2c, proxy_ip, NGINX_H2),
        ("haproxy", Path4::Haproxy, Proto::H1, proxy_ip, HAPROXY_H1),
        (
            "haproxy-h2",
            Path4::Haproxy,
            Proto::H2c,
            proxy_ip,
            HAPROXY_H2,
        ),
    ];
    for (name, path, proto, ip, port) in services {
        let yaml = service_yaml(name, path.cluster_ip(proto), SERVICE_PORT, port, "");
        // HTTP/1.1 to the backend (the waypoint forwards in the version the
        // backend's port names), and the waypoint waits for every client of
        // `web` to speak, however long it stays silent.
        let yaml = if matches!(name, "backend" | "web") {
            http(yaml)
        } else {
            yaml
        };
        manifests.write(&format!("{name}.yaml"), &yaml)?;
        let endpoint = Endpoint {
            ip,
            node: &node_name(1),
            ready: true,
        };
        manifests.write(
            &format!("{name}-slice.yaml"),
            &slice_yaml(name, &format!("{name}-1"), port, &[endpoint]),
        )?;
    }
    manifests.write("web-route.yaml", &route("web", "backend"))?;
    for (name, namespace, pod) in [
        ("client", "default", &client),
        ("proxy", "zerohop-system", &proxy),
    ] {
        manifests.write(
            &format!("{name}-pod.yaml"),
            &pod_yaml(name, namespace, &node_name(1), &[IpAddr::from(pod.ipv4)]),
        )?;
    }
    println!(
        "   backend {backend_ip}: nginx, one process, 300-byte page, HTTP/1.1 :{BACKEND_H1}, \
         h2c :{BACKEND_H2}\n   proxy {proxy_ip}: waypoint :{WAYPOINT_PORT}, nginx :{NGINX_H1} \
         (h2c :{NGINX_H2}), haproxy :{HAPROXY_H1} (h2c :{HAPROXY_H2})\n   Services: web \
         {} (HTTPRoute to backend, to the waypoint), nginx {}/{}, haproxy {}/{}, backend {}/{} \
         (direct L4), h1/h2c",
        Path4::Waypoint.cluster_ip(Proto::H1),
        Path4::Nginx.cluster_ip(Proto::H1),
        Path4::Nginx.cluster_ip(Proto::H2c),
        Path4::Haproxy.cluster_ip(Proto::H1),
        Path4::Haproxy.cluster_ip(Proto::H2c),
        Path4::Direct.cluster_ip(Proto::H1),
        Path4::Direct.cluster_ip(Proto::H2c),
    );

    let _backend_server = start_backend(&backend, d, nofile)?;
    let waypoint_config = d.join("waypoint.json");
    let waypoint_addr = SocketAddr::new(proxy_ip, WAYPOINT_PORT);
    let agent = Agent::start(
        cluster,
        1,
        manifests.dir(),
        &[
            &format!("--waypoint={waypoint_addr}"),
            &format!("--waypoint-config={}", waypoint_config.display()),
        ],
    )?;
    let proxies = start_proxies(
        &proxy,
        binaries,
        d,
        (plan.workers, nofile),
        backend_ip,
        waypoint_addr,
    )?;
    for path in PATHS {
        for proto in [Proto::H1, Proto::H2c] {
            wait_ok(&client, path.target(proto), proto)
                .with_context(|| format!("{} {proto:?}: {}", path.name(), stderr_of(&proxies)))?;
        }
    }
    println!(
        "== every path answers 200 in HTTP/1.1 and h2c; proxies: waypoint pid {}, nginx {:?}, \
         haproxy pid {}",
        proxies.waypoint.pid(),
        proxies.processes(Path4::Nginx),
        proxies.haproxy.pid()
    );

    let bench = L7Bench {
        client: &client,
        agent: &agent,
        proxies: &proxies,
        plan,
        dir: d.clone(),
    };
    let mut cells = Vec::new();
    for load in plan.loads() {
        cells.push(bench.cell(load).with_context(|| stderr_of(&proxies))?);
    }
    let mut memory = Vec::new();
    for path in PROXIES {
        memory.push(bench.idle_memory(path, &proxy)?);
    }
    let slowloris = bench.slowloris(&proxy)?;
    drop(proxies);
    drop(agent);
    Ok((cells, memory, slowloris))
}

/// The HTTPRoute attached to Service `service` that sends everything to
/// Service `to`.
fn route(service: &str, to: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {service}, namespace: default}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {service}, port: {SERVICE_PORT}}}]\n  \
         rules: [{{backendRefs: [{{name: {to}, port: {SERVICE_PORT}}}]}}]\n"
    )
}

/// nginx's temp paths and logs in `dir`, for a configuration of its own;
/// as many connections per worker as `nofile` descriptors allow.
fn nginx_common(dir: &Path, name: &str, nofile: u64) -> String {
    let d = dir.display();
    let connections = nofile.saturating_sub(100).max(1024);
    format!(
        "daemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections {connections}; }}\n"
    )
}

fn nginx_http_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  \
         client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n  \
         fastcgi_temp_path {d}/{name}-fastcgi;\n  uwsgi_temp_path {d}/{name}-uwsgi;\n  \
         scgi_temp_path {d}/{name}-scgi;\n  default_type text/html;\n"
    )
}

/// The backend: one nginx process (`master_process off`, ended by its PID)
/// serving a 300-byte page in HTTP/1.1 and in h2c (prior knowledge).
fn backend_conf(dir: &Path, nofile: u64) -> String {
    let d = dir.display();
    format!(
        "master_process off;\n{}http {{\n{}  server {{\n    listen {BACKEND_H1};\n    \
         listen {BACKEND_H2} http2;\n    root {d}/www;\n  }}\n}}\n",
        nginx_common(dir, "backend", nofile),
        nginx_http_common(dir, "backend")
    )
}

/// nginx as a reverse proxy: `workers` worker processes (one: no master, the
/// process we start is the worker), HTTP/1.1 and h2c listeners, keep-alive
/// connections to the backend.
fn nginx_proxy_conf(dir: &Path, workers: usize, backend: IpAddr, nofile: u64) -> String {
    let processes = if workers == 1 {
        "master_process off;\n".to_owned()
    } else {
        format!("worker_processes {workers};\n")
    };
    format!(
        "{processes}{}http {{\n{}  upstream backend {{\n    server {backend}:{BACKEND_H1};\n    \
         keepalive 256;\n  }}\n  server {{\n    listen {NGINX_H1} backlog=65535;\n    \
         listen {NGINX_H2} http2 backlog=65535;\n    location / {{\n      proxy_pass http://backend;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        nginx_common(dir, "nginx-proxy", nofile),
        nginx_http_common(dir, "nginx-proxy")
    )
}

/// haproxy with `workers` threads, HTTP/1.1 and h2c (`proto h2`) frontends,
/// connections to the backend reused across requests; `maxconn` as high as
/// `nofile` descriptors allow (haproxy counts two per connection).
fn haproxy_conf(workers: usize, backend: IpAddr, nofile: u64) -> String {
    let maxconn = nofile.saturating_sub(100) / 2;
    format!(
        "global\n  nbthread {workers}\n  maxconn {maxconn}\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  \
         timeout server 300s\n  http-reuse always\n\
         frontend h1\n  bind :{HAPROXY_H1}\n  default_backend be\n\
         frontend h2\n  bind :{HAPROXY_H2} proto h2\n  default_backend be\n\
         backend be\n  server backend {backend}:{BACKEND_H1}\n"
    )
}

fn start_backend(pod: &Pod, dir: &Path, nofile: u64) -> Result<PodProcess> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "z".repeat(300))?;
    std::fs::write(dir.join("backend.conf"), backend_conf(dir, nofile))?;
    let mut server = nginx(pod, dir, "backend")?;
    wait_listening(
        pod,
        &[BACKEND_H1, BACKEND_H2],
        std::slice::from_mut(&mut server),
    )?;
    Ok(server)
}

fn nginx(pod: &Pod, dir: &Path, name: &str) -> Result<PodProcess> {
    let d = |file: &str| dir.join(file).display().to_string();
    pod.spawn(
        Path::new("nginx"),
        [
            "-p".into(),
            d(""),
            "-c".into(),
            d(&format!("{name}.conf")),
            "-e".into(),
            d(&format!("{name}-error.log")),
        ],
    )
}

fn start_proxies(
    pod: &Pod,
    binaries: &Binaries,
    dir: &Path,
    (workers, nofile): (usize, u64),
    backend: IpAddr,
    waypoint: SocketAddr,
) -> Result<Proxies> {
    std::fs::write(
        dir.join("nginx-proxy.conf"),
        nginx_proxy_conf(dir, workers, backend, nofile),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        haproxy_conf(workers, backend, nofile),
    )?;
    let config = dir.join("waypoint.json").display().to_string();
    let proxies = Proxies {
        waypoint: pod.spawn(
            &binaries.waypoint,
            [
                "--listen",
                &waypoint.to_string(),
                "--config",
                &config,
                "--poll-ms",
                "100",
                "--workers",
                &workers.to_string(),
                "--health-addr",
                "off",
            ],
        )?,
        nginx: nginx(pod, dir, "nginx-proxy")?,
        haproxy: pod.spawn(
            Path::new("haproxy"),
            ["-db", "-f", &dir.join("haproxy.cfg").display().to_string()],
        )?,
    };
    let ports = [WAYPOINT_PORT, NGINX_H1, NGINX_H2, HAPROXY_H1, HAPROXY_H2];
    let listening = wait_listening(pod, &ports, &mut []);
    listening.with_context(|| stderr_of(&proxies))?;
    Ok(proxies)
}

fn stderr_of(proxies: &Proxies) -> String {
    let tail = |process: &PodProcess| {
        let text = process.stderr();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        format!("{lines:?}")
    };
    format!(
        "stderr of the waypoint: {}; nginx: {}; haproxy: {}",
        tail(&proxies.waypoint),
        tail(&proxies.nginx),
        tail(&proxies.haproxy)
    )
}

/// Waits until a GET to `target` from pod `client` answers 200 (the
/// waypoint answers once it has read the agent's config).
fn wait_ok(client: &Pod, target: SocketAddr, proto: Proto) -> Result<()> {
    let url = format!("http://{target}/");
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"];
    if proto == Proto::H2c {
        args.push("--http2-prior-knowledge");
    }
    args.push(&url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client
            .run(Path::new("curl"), &args, Duration::from_secs(5))
            .map(|f| f.stdout.join(""));
        if matches!(&got, Ok(code) if code == "200") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("GET {url} never answered 200 within 20 s: {got:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct L7Bench<'a> {
    client: &'a Pod,
    agent: &'a Agent,
    proxies: &'a Proxies,
    plan: &'a Plan,
    dir: PathBuf,
}

impl L7Bench<'_> {
    fn client_command(&self, path: Path4, load: Load, seconds: u32) -> (PathBuf, Vec<String>) {
        let target = path.target(load.proto);
        let c = load.connections.to_string();
        let secs = seconds.to_string();
        match load.proto {
            Proto::H1 => (
                "wrk".into(),
                ["-t1", "-c", &c, "-d", &secs, "--latency"]
                    .iter()
                    .map(ToString::to_string)
                    .chain([format!("http://{target}/")])
                    .collect(),
            ),
            Proto::H2c => (
                "h2load".into(),
                [
                    "-t1",
                    "-c",
                    &c,
                    "-m",
                    &load.streams.to_string(),
                    "-D",
                    &secs,
                    "--log-file",
                    &self.h2load_log().display().to_string(),
                ]
                .iter()
                .map(ToString::to_string)
                .chain([format!("http://{target}/")])
                .collect(),
            ),
        }
    }

    fn h2load_log(&self) -> PathBuf {
        self.dir.join("h2load.log")
    }

    /// One client run: the only place a figure of the matrix is measured.
    fn trial(&self, path: Path4, load: Load, seconds: u32) -> Result<Trial> {
        if idle::interrupted() {
            bail!("interrupted");
        }
        let (program, args) = self.client_command(path, load, seconds);
        let line = format!("{} {}", program.display(), args.join(" "));
        // h2load appends to its log: each trial starts from none.
        match std::fs::remove_file(self.h2load_log()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let counters = self.agent.counters()?;
        let cpu_before = self.proxies.cpu_seconds(path)?;
        let finished = self.client.run(
            &program,
            &args,
            Duration::from_secs(u64::from(seconds) * 5 + 60),
        );
        let cpu_after = self.proxies.cpu_seconds(path)?;
        let counts = stats::delta(&counters, &self.agent.counters()?);
        let finished = finished.with_context(|| format!("`{line}`"))?;
        let stdout = finished.stdout.join("\n");
        let output = || format!("`{line}` printed:\n{stdout}\n{}", finished.stderr);
        ensure!(
            finished.status.success(),
            "{} ({})",
            output(),
            finished.status
        );
        // Every path's connects went where they should.
        let (counter, expected) = match path {
            Path4::Waypoint => ("to_waypoint", "sent to the waypoint"),
            _ => ("translated_local", "translated"),
        };
        ensure!(
            counts.get(counter).copied().unwrap_or(0) > 0,
            "path {}: no connect was {expected}: {counts:?}; {}",
            path.name(),
            output()
        );
        let parsed = match load.proto {
            Proto::H1 => parse_wrk(&stdout),
            Proto::H2c => parse_h2load(&stdout, &std::fs::read_to_string(self.h2load_log())?),
        }
        .with_context(output)?;
        Ok(Trial {
            path,
            requests: parsed.requests,
            rps: parsed.rps,
            p50_us: parsed.p50_us,
            p99_us: parsed.p99_us,
            cpu_s: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
            errors: parsed.errors,
        })
    }

    /// Warm-up (not counted), then the interleaved trials of one load.
    fn cell(&self, load: Load) -> Result<Cell> {
        let head = load.label();
        let mut warm = Vec::new();
        for path in PATHS {
            let trial = self.trial(path, load, self.plan.warmup_seconds)?;
            warm.push(format!("{} {}", path.name(), stats::number(trial.rps)));
        }
        println!(
            "   {head:<16} warm-up (not counted): {} req/s",
            warm.join(", ")
        );
        let mut trials = Vec::new();
        for i in 0..self.plan.trials {
            let mut order = PATHS.to_vec();
            order.rotate_left(i % PATHS.len());
            for path in order {
                let trial = self.trial(path, load, self.plan.seconds)?;
                println!(
                    "   {head:<16} #{} {:<9} {:>9} req/s  p50 {:>8} µs  p99 {:>8} µs  {}{}",
                    i + 1,
                    path.name(),
                    stats::number(trial.rps),
                    stats::number(trial.p50_us),
                    stats::number(trial.p99_us),
                    trial.per_cpu().map_or(String::new(), |r| format!(
                        "{} req per CPU-s ({:.2} CPU-s)",
                        stats::number(r),
                        trial.cpu_s.unwrap_or(0.0)
                    )),
                    trial
                        .errors
                        .as_ref()
                        .map_or(String::new(), |e| format!("  ! {e}")),
                );
                trials.push(trial);
            }
        }
        Ok(Cell { load, trials })
    }

    /// The proxy's RSS before and while the client pod holds 10,000 idle
    /// connections to its HTTP/1.1 Service.
    fn idle_memory(&self, path: Path4, proxy: &Pod) -> Result<Memory> {
        let before_mib = self.proxies.rss_mib(path)?;
        let mut opener = self.hold(path, IDLE_CONNECTIONS, false)?;
        let opened = ready_count(&mut opener)?;
        std::thread::sleep(Duration::from_secs(2));
        let established = established(proxy, listen_port(path))?;
        let with_idle_mib = self.proxies.rss_mib(path)?;
        opener.kill();
        settle(proxy, listen_port(path))?;
        println!(
            "   idle {:<9} {opened} connections opened ({established} established at the \
             proxy): RSS {before_mib:.1} MiB before, {with_idle_mib:.1} MiB with them",
            path.name()
        );
        Ok(Memory {
            path,
            before_mib,
            with_idle_mib,
            opened,
            established,
        })
    }

    /// `count` connections from the client pod to the proxy's HTTP/1.1
    /// Service, idle or (`slow`) each with a request head half sent and a
    /// byte more every 2 s. The helper prints `READY opened failed`.
    fn hold(&self, path: Path4, count: usize, slow: bool) -> Result<PodProcess> {
        let script = self.dir.join("hold.py");
        std::fs::write(&script, HOLD_PY)?;
        let target = path.target(Proto::H1);
        self.client.spawn(
            Path::new("python3"),
            [
                script.display().to_string(),
                target.ip().to_string(),
                target.port().to_string(),
                count.to_string(),
                if slow { "slow" } else { "idle" }.into(),
            ],
        )
    }

    /// wrk c8 through the waypoint, alone and with 4,000 slowloris
    /// connections held, interleaved (alone first in odd rounds).
    fn slowloris(&self, proxy: &Pod) -> Result<Slowloris> {
        let load = Load {
            proto: Proto::H1,
            connections: SLOWLORIS_WRK,
            streams: 1,
        };
        let seconds = self.plan.slowloris_seconds;
        let mut result = Slowloris {
            without: Vec::new(),
            with: Vec::new(),
            held: Vec::new(),
            errors: Vec::new(),
        };
        for i in 0..self.plan.trials {
            let order = if i % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for slow in order {
                let mut holder = None;
                if slow {
                    let mut process = self.hold(Path4::Waypoint, SLOW_CONNECTIONS, true)?;
                    ready_count(&mut process)?;
                    std::thread::sleep(Duration::from_secs(1));
                    result.held.push(established(proxy, WAYPOINT_PORT)?);
                    holder = Some(process);
                }
                let trial = self.trial(Path4::Waypoint, load, seconds)?;
                println!(
                    "   slowloris #{} {:<32} {:>9} req/s  p99 {:>8} µs{}",
                    i + 1,
                    if slow {
                        format!(
                            "with {} slow connections",
                            result.held.last().copied().unwrap_or(0)
                        )
                    } else {
                        "without".into()
                    },
                    stats::number(trial.rps),
                    stats::number(trial.p99_us),
                    trial
                        .errors
                        .as_ref()
                        .map_or(String::new(), |e| format!("  ! {e}")),
                );
                if let Some(e) = &trial.errors {
                    result.errors.push(e.clone());
                }
                if slow {
                    result.with.push(trial.rps);
                } else {
                    result.without.push(trial.rps);
                }
                if let Some(mut process) = holder {
                    process.kill();
                    settle(proxy, WAYPOINT_PORT)?;
                }
            }
        }
        Ok(result)
    }
}

/// The helper that holds connections open (see [`L7Bench::hold`]).
const HOLD_PY: &str = r#"import resource, socket, sys, time
host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
socks, failed = [], 0
for _ in range(count):
    try:
        s = socket.create_connection((host, port), timeout=5)
        if mode == "slow":
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        socks.append(s)
    except OSError:
        failed += 1
print("READY", len(socks), failed, flush=True)
while True:
    time.sleep(2)
    if mode == "slow":
        for s in socks:
            try:
                s.send(b"a")
            except OSError:
                pass
"#;

fn ready_count(process: &mut PodProcess) -> Result<usize> {
    let line = process
        .wait_for_line("READY", Duration::from_secs(120))
        .with_context(|| process.stderr())?;
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("READY line {line:?}"))
}

fn listen_port(path: Path4) -> u16 {
    match path {
        Path4::Waypoint => WAYPOINT_PORT,
        Path4::Nginx => NGINX_H1,
        Path4::Haproxy => HAPROXY_H1,
        Path4::Direct => BACKEND_H1,
    }
}

/// Established connections to local port `port` in `pod`.
fn established(pod: &Pod, port: u16) -> Result<usize> {
    let filter = format!("( sport = :{port} )");
    Ok(pod
        .exec("ss", &["-Htn", "state", "established", &filter])?
        .lines()
        .count())
}

/// Waits (up to 30 s) until the proxy holds at most a handful of
/// connections on `port`, so that the next measurement starts clean.
fn settle(pod: &Pod, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while established(pod, port)? > 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What a client printed.
struct Parsed {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: Option<String>,
}

/// `86.00us`, `1.23ms`, `1.00s` in µs.
fn duration_us(text: &str) -> Result<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("not a duration: {text:?}")
    };
    Ok(number.parse::<f64>().with_context(|| format!("{text:?}"))? * scale)
}

/// wrk --latency: requests, req/s, the 50% and 99% lines, error lines.
fn parse_wrk(stdout: &str) -> Result<Parsed> {
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line"))
    };
    let rps = field("Requests/sec:")?.trim().parse()?;
    let requests = stdout
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .context("no `N requests in` line")?;
    let p50_us = duration_us(field("50%")?)?;
    let p99_us = duration_us(field("99%")?)?;
    let parsed = Parsed {
        requests,
        rps,
        p50_us,
        p99_us,
        errors: wrk_errors(stdout),
    };
    ensure!(parsed.requests > 0.0, "no request completed");
    Ok(parsed)
}

/// h2load: `finished in 1.00s, 12345.67 req/s, …`, `requests: N total, …,
/// N succeeded, N failed, N errored, N timeout`; the latencies from its
/// `--log-file` (start, status, µs per request, tab-separated).
fn parse_h2load(stdout: &str, log: &str) -> Result<Parsed> {
    let finished = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("finished in"))
        .context("no `finished in` line")?;
    let rps: f64 = finished
        .split(',')
        .nth(1)
        .and_then(|part| part.trim().strip_suffix("req/s"))
        .context("no req/s")?
        .trim()
        .parse()?;
    let requests_line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests:"))
        .context("no `requests:` line")?;
    let count = |what: &str| -> Result<u64> {
        requests_line
            .split(',')
            .find_map(|part| part.trim().strip_suffix(what))
            .with_context(|| format!("no {what:?} in {requests_line:?}"))?
            .trim()
            .parse()
            .map_err(Into::into)
    };
    let succeeded = count("succeeded")?;
    let failed = count("failed")? + count("errored")? + count("timeout")?;
    let mut latencies: Vec<f64> = log
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    ensure!(!latencies.is_empty(), "no request in h2load's log");
    latencies.sort_by(f64::total_cmp);
    let at = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    ensure!(succeeded > 0, "no request succeeded");
    Ok(Parsed {
        requests: succeeded as f64,
        rps,
        p50_us: at(50),
        p99_us: at(99),
        errors: (failed > 0).then(|| format!("h2load: {requests_line}")),
    })
}

fn spread_or_dash(spread: Option<Spread>) -> String {
    report::spread_text(spread)
}

fn signed(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:+.0}"))
}

fn print_table(cells: &[Cell], trials: usize) {
    println!("\n== RESULTS (L7)");
    println!(
        "{:<16} {:<9} {:<26} {:<24} {:<24} {:>7} {:>7} {:<24}",
        "LOAD",
        "PATH",
        "req/s median [min–max]",
        "p50 µs",
        "p99 µs",
        "+p50",
        "+p99",
        "req per CPU-s of proxy"
    );
    for cell in cells {
        for path in PATHS {
            let added = |latency| match path {
                Path4::Direct => "".into(),
                _ => signed(cell.added(path, latency)),
            };
            println!(
                "{:<16} {:<9} {:<26} {:<24} {:<24} {:>7} {:>7} {:<24}",
                cell.load.label(),
                path.name(),
                spread_or_dash(cell.rps(path)),
                spread_or_dash(cell.p50(path)),
                spread_or_dash(cell.p99(path)),
                added(Cell::p50),
                added(Cell::p99),
                spread_or_dash(cell.per_cpu(path)),
            );
        }
    }
    println!(
        "Medians of {trials} interleaved trials per path, [min–max] over them. wrk: HTTP/1.1, \
         c = connections; h2load: h2c, c connections × m streams each. +p50, +p99: µs over \
         direct L4 (medians).\nreq per CPU-s: requests completed ÷ the CPU time (utime + stime) \
         of the proxy's processes over the trial."
    );
    println!(
        "\n{:<16} {:>14} {:>14}",
        "EFFICIENCY", "wp÷nginx", "wp÷haproxy"
    );
    for cell in cells {
        let ratio = |other| {
            cell.per_cpu(Path4::Waypoint)
                .zip(cell.per_cpu(other))
                .map_or("-".into(), |(w, o)| format!("{:.2}x", w.median / o.median))
        };
        println!(
            "{:<16} {:>14} {:>14}",
            cell.load.label(),
            ratio(Path4::Nginx),
            ratio(Path4::Haproxy)
        );
    }
}

fn print_memory(memory: &[Memory]) {
    println!("\n== {IDLE_CONNECTIONS} IDLE CLIENT CONNECTIONS (HTTP/1.1 Service of each proxy)");
    for m in memory {
        println!(
            "   {:<9} opened {:>6}, established at the proxy {:>6}: RSS {:>6.1} MiB before, \
             {:>6.1} MiB with them",
            m.path.name(),
            m.opened,
            m.established,
            m.before_mib,
            m.with_idle_mib
        );
    }
}

fn print_slowloris(s: &Slowloris) {
    println!(
        "\n== SLOWLORIS: wrk c{SLOWLORIS_WRK} through the waypoint, without and with \
         {SLOW_CONNECTIONS} connections holding half a request head (a byte every 2 s), \
         interleaved"
    );
    println!(
        "   without {} req/s; with {} req/s; slow connections established at the waypoint: \
         {:?}{}",
        spread_or_dash(stats::spread(&s.without)),
        spread_or_dash(stats::spread(&s.with)),
        s.held,
        if s.errors.is_empty() {
            String::new()
        } else {
            format!("; wrk errors: {}", s.errors.join(" | "))
        }
    );
}

fn print_targets(cells: &[Cell], memory: &[Memory], s: &Slowloris) {
    println!("\nTARGETS (L7; medians of interleaved trials, one run)");
    let verdict = |met: bool| if met { "MET   " } else { "MISSED" };
    for other in [Path4::Nginx, Path4::Haproxy] {
        let mut parts = Vec::new();
        let mut met = true;
        for cell in cells {
            let ratio = cell
                .per_cpu(Path4::Waypoint)
                .zip(cell.per_cpu(other))
                .map(|(w, o)| w.median / o.median);
            met &= ratio.is_some_and(|r| r >= 1.0);
            parts.push(format!(
                "{} {}",
                cell.load.label(),
                ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            ));
        }
        println!(
            "  {} waypoint req per CPU-s >= 1.0x {} at every load: {}",
            verdict(met && !cells.is_empty()),
            other.name(),
            parts.join(", ")
        );
    }
    let c1 = cells
        .iter()
        .find(|c| c.load.proto == Proto::H1 && c.load.connections == 1);
    let added = c1.and_then(|c| c.added(Path4::Waypoint, Cell::p50));
    println!(
        "  {} added p50 at 1 connection (wrk) <= 15 µs over direct L4: {}",
        verdict(added.is_some_and(|a| a <= 15.0)),
        match (added, c1) {
            (Some(a), Some(c)) => format!(
                "{a:+.0} µs (waypoint {} µs, direct {} µs)",
                stats::number(c.p50(Path4::Waypoint).map_or(0.0, |s| s.median)),
                stats::number(c.p50(Path4::Direct).map_or(0.0, |s| s.median))
            ),
            _ => "not measured".into(),
        }
    );
    let wp = memory.iter().find(|m| m.path == Path4::Waypoint);
    println!(
        "  {} {IDLE_CONNECTIONS} idle client connections: waypoint RSS <= 64 MiB: {}",
        verdict(wp.is_some_and(|m| m.with_idle_mib <= 64.0 && m.established >= IDLE_CONNECTIONS)),
        wp.map_or("not measured".into(), |m| format!(
            "{:.1} MiB with {} established (of {} opened)",
            m.with_idle_mib, m.established, m.opened
        ))
    );
    let (without, with) = (stats::spread(&s.without), stats::spread(&s.with));
    let share = without.zip(with).map(|(a, b)| b.median / a.median);
    println!(
        "  {} slowloris: wrk c{SLOWLORIS_WRK} keeps >= 90% of its rate with {SLOW_CONNECTIONS} \
         slow connections held: {}",
        verdict(share.is_some_and(|r| r >= 0.9)),
        share.map_or("not measured".into(), |r| format!(
            "{:.1}% ({} vs {} req/s)",
            r * 100.0,
            stats::number(with.map_or(0.0, |s| s.median)),
            stats::number(without.map_or(0.0, |s| s.median))
        ))
    );
}

fn to_json(cells: &[Cell], memory: &[Memory], s: &Slowloris, node: Value) -> Value {
    let mut records = Vec::new();
    for cell in cells {
        for path in PATHS {
            let trials: Vec<&Trial> = cell.trials.iter().filter(|t| t.path == path).collect();
            let spread = |s: Option<Spread>| {
                s.map(|s| json!({"median": s.median, "min": s.min, "max": s.max}))
            };
            records.push(json!({
                "load": cell.load.label(),
                "protocol": match cell.load.proto { Proto::H1 => "http/1.1", Proto::H2c => "h2c" },
                "connections": cell.load.connections,
                "streams": cell.load.streams,
                "path": path.name(),
                "trials": trials.iter().map(|t| json!({
                    "requests": t.requests,
                    "rps": t.rps,
                    "p50_us": t.p50_us,
                    "p99_us": t.p99_us,
                    "cpu_s": t.cpu_s,
                    "requests_per_cpu_s": t.per_cpu(),
                    "errors": t.errors,
                })).collect::<Vec<_>>(),
                "rps": spread(cell.rps(path)),
                "p50_us": spread(cell.p50(path)),
                "p99_us": spread(cell.p99(path)),
                "requests_per_cpu_s": spread(cell.per_cpu(path)),
                "added_p50_us": (path != Path4::Direct).then(|| cell.added(path, Cell::p50)).flatten(),
                "added_p99_us": (path != Path4::Direct).then(|| cell.added(path, Cell::p99)).flatten(),
            }));
        }
    }
    json!({
        "node": node,
        "records": records,
        "idle_connections": memory.iter().map(|m| json!({
            "path": m.path.name(),
            "connections": IDLE_CONNECTIONS,
            "opened": m.opened,
            "established": m.established,
            "rss_before_mib": m.before_mib,
            "rss_with_idle_mib": m.with_idle_mib,
        })).collect::<Vec<_>>(),
        "slowloris": {
            "slow_connections": SLOW_CONNECTIONS,
            "wrk_connections": SLOWLORIS_WRK,
            "without_rps": s.without,
            "with_rps": s.with,
            "held": s.held,
            "errors": s.errors,
        },
    })
}

/// Requests per CPU second of each proxy against the load, a panel per protocol.
fn svg(cells: &[Cell], subtitle: &str) -> Result<String> {
    let mut panels = Vec::new();
    for (proto, title) in [
        (Proto::H1, "HTTP/1.1 (wrk): x = connections"),
        (Proto::H2c, "h2c (h2load): x = connections × streams"),
    ] {
        let lines = PROXIES
            .iter()
            .map(|&path| report::Line {
                label: path.name().to_owned(),
                points: cells
                    .iter()
                    .filter(|c| c.load.proto == proto)
                    .filter_map(|c| {
                        let x = f64::from(c.load.connections * c.load.streams);
                        Some((x, c.per_cpu(path)?.median))
                    })
                    .collect(),
            })
            .collect();
        panels.push(report::Panel {
            title: title.to_owned(),
            lines,
        });
    }
    report::lines_svg(
        &format!("requests per CPU second of the proxy ({subtitle})"),
        "concurrency",
        "requests per CPU second",
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 1s test @ http://10.96.3.20:80/
  1 threads and 1 connections
  Latency Distribution
     50%   86.00us
     75%  100.00us
     90%  200.00us
     99%    1.50ms
  21990 requests in 1.10s, 11.28MB read
Requests/sec:  20001.31
";
        let p = parse_wrk(out).unwrap();
        assert_eq!((p.requests, p.rps), (21990.0, 20001.31));
        assert_eq!((p.p50_us, p.p99_us), (86.0, 1500.0));
        assert_eq!(p.errors, None);
    }

    #[test]
    fn h2load_output() {
        let out = "finished in 1.00s, 12345.60 req/s, 5.01MB/s
requests: 12346 total, 12400 started, 12346 done, 12340 succeeded, 6 failed, 0 errored, 0 timeout
";
        let log = (1..=100)
            .map(|i| format!("1700000000000000\t200\t{i}\n"))
            .collect::<String>();
        let p = parse_h2load(out, &log).unwrap();
        assert_eq!((p.requests, p.rps), (12340.0, 12345.6));
        assert_eq!((p.p50_us, p.p99_us), (51.0, 100.0));
        assert!(p.errors.unwrap().contains("6 failed"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_us("12.5us").unwrap(), 12.5);
        assert_eq!(duration_us("2.00ms").unwrap(), 2000.0);
        assert_eq!(duration_us("1.00s").unwrap(), 1e6);
        assert!(duration_us("12").is_err());
    }

    #[test]
    fn the_route_attaches_to_the_service() {
        let text = route("web", "backend");
        assert!(
            text.contains("kind: Service, name: web, port: 80"),
            "{text}"
        );
        assert!(
            text.contains("backendRefs: [{name: backend, port: 80}]"),
            "{text}"
        );
    }

    #[test]
    fn every_service_has_its_own_address() {
        let mut ips = std::collections::BTreeSet::new();
        for path in PATHS {
            for proto in [Proto::H1, Proto::H2c] {
                ips.insert(path.cluster_ip(proto));
            }
        }
        // The waypoint's Service serves both protocols.
        assert_eq!(ips.len(), 7);
    }
}
