//! What is measured: the servers (each behind two Services) and the
//! workloads, each a client command per path and concurrency and a parser of
//! its output.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};

use super::stats::Role;

/// The paths between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Service Z's ClusterIP: zerohop translates it and bypasses the stack.
    Zerohop,
    /// Service K's ClusterIP: only the iptables DNAT rule knows it (zerohop
    /// runs, but does not know this Service).
    KubeProxy,
    /// A Unix socket between the same programs: the floor, where it applies.
    Uds,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Zerohop => "zerohop",
            Route::KubeProxy => "kube-proxy",
            Route::Uds => "uds",
        }
    }
}

/// A server program behind two Services with identical settings, each on
/// its own target port: Z (in the agent's manifests) and K (DNAT only).
/// Distinct target ports keep one path's server-side TIME_WAIT sockets from
/// meeting the other path's 4-tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nginx,
    Redis,
    Iperf3,
    /// zh-bench's listener where the server speaks first (rr, stream).
    ZhBench,
    /// zh-bench's listener where the client writes right after connect.
    ZhBenchConn,
}

pub const BACKENDS: [Backend; 5] = [
    Backend::Nginx,
    Backend::Redis,
    Backend::Iperf3,
    Backend::ZhBench,
    Backend::ZhBenchConn,
];

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nginx => "nginx",
            Backend::Redis => "redis",
            Backend::Iperf3 => "iperf3",
            Backend::ZhBench => "zh-bench",
            Backend::ZhBenchConn => "zh-bench-conn",
        }
    }

    fn index(self) -> u8 {
        BACKENDS.iter().position(|b| *b == self).unwrap() as u8
    }

    /// The Service port clients dial.
    pub fn port(self) -> u16 {
        match self {
            Backend::Nginx | Backend::ZhBench | Backend::ZhBenchConn => 80,
            Backend::Redis => 6379,
            Backend::Iperf3 => 5201,
        }
    }

    /// The server's port behind Service Z or K.
    pub fn target_port(self, route: Route) -> u16 {
        let z = match self {
            Backend::Nginx => 8080,
            Backend::Redis => 6379,
            Backend::Iperf3 => 5201,
            Backend::ZhBench => 9000,
            Backend::ZhBenchConn => 9002,
        };
        match route {
            Route::KubeProxy => z + 1,
            Route::Zerohop | Route::Uds => z,
        }
    }

    /// Service Z's ClusterIP is 10.96.1.x, Service K's 10.96.2.x.
    pub fn cluster_ip(self, route: Route) -> IpAddr {
        let third = if route == Route::KubeProxy { 2 } else { 1 };
        Ipv4Addr::new(10, 96, third, 10 + self.index()).into()
    }

    /// The Service's name, e.g. `nginx-z`.
    pub fn service(self, route: Route) -> String {
        let suffix = if route == Route::KubeProxy { "k" } else { "z" };
        format!("{}-{suffix}", self.name())
    }
}

/// What a workload reports, one number per metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Appended to the workload's name in tables (empty for the only one).
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub role: Role,
}

/// The client program of a workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tool {
    /// wrk against nginx; `close`: `Connection: close`, a connection per request.
    Wrk { close: bool },
    /// redis-benchmark GET, `pipeline` requests per round trip.
    Redis { pipeline: u32 },
    /// iperf3, concurrency = parallel streams.
    Iperf3,
    /// zh-bench 64 B request/response on one connection.
    ZhRr,
    /// zh-bench streaming writes of `size` bytes on one connection.
    ZhStream { size: usize, nodelay: bool },
    /// zh-bench connection rate: connect, 64 B exchange, close.
    ZhConn,
}

/// One workload: its server, client, concurrencies and metrics.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub tool: Tool,
    pub concurrencies: Vec<u32>,
    pub metrics: Vec<Metric>,
}

const fn rate(unit: &'static str, role: Role) -> Metric {
    Metric {
        name: "",
        unit,
        higher_is_better: true,
        role,
    }
}

/// Every workload in run order. `sweep` are the concurrencies of the matrix.
pub fn workloads(sweep: &[u32]) -> Vec<Workload> {
    let sweep = sweep.to_vec();
    let one = vec![1];
    let latency = |name, role| Metric {
        name,
        unit: "µs",
        higher_is_better: false,
        role,
    };
    vec![
        Workload {
            name: "wrk",
            tool: Tool::Wrk { close: false },
            concurrencies: sweep.clone(),
            metrics: vec![rate("req/s", Role::Wrk)],
        },
        Workload {
            name: "short conns",
            tool: Tool::Wrk { close: true },
            concurrencies: sweep.clone(),
            metrics: vec![rate("req/s", Role::ShortConnections)],
        },
        Workload {
            name: "redis GET",
            tool: Tool::Redis { pipeline: 1 },
            concurrencies: sweep.clone(),
            metrics: vec![rate("req/s", Role::RedisGet)],
        },
        Workload {
            name: "redis GET -P 16",
            tool: Tool::Redis { pipeline: 16 },
            concurrencies: sweep,
            metrics: vec![rate("req/s", Role::RedisPipelined)],
        },
        Workload {
            name: "iperf3",
            tool: Tool::Iperf3,
            concurrencies: vec![1, 4],
            metrics: vec![rate("Gbit/s", Role::Iperf3)],
        },
        Workload {
            name: "zh-bench rr 64 B",
            tool: Tool::ZhRr,
            concurrencies: one.clone(),
            metrics: vec![latency("p50", Role::RrP50), latency("p99", Role::Extra)],
        },
        Workload {
            name: "zh-bench stream 64 KiB",
            tool: Tool::ZhStream {
                size: 64 * 1024,
                nodelay: true,
            },
            concurrencies: one.clone(),
            metrics: vec![rate("MB/s", Role::Extra)],
        },
        Workload {
            name: "zh-bench stream 64 B Nagle",
            tool: Tool::ZhStream {
                size: 64,
                nodelay: false,
            },
            concurrencies: one.clone(),
            metrics: vec![rate("MB/s", Role::Extra)],
        },
        Workload {
            name: "zh-bench conn",
            tool: Tool::ZhConn,
            concurrencies: one,
            metrics: vec![rate("conn/s", Role::Extra)],
        },
    ]
}

/// How much work one client run does.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// For the tools that run for a time.
    pub seconds: u32,
    /// For the tools that run a count: redis-benchmark requests, zh-bench
    /// rr round trips.
    pub requests: u64,
}

/// The programs a client runs.
pub struct Programs {
    pub zh_bench: PathBuf,
}

impl Workload {
    pub fn backend(&self) -> Backend {
        match self.tool {
            Tool::Wrk { .. } => Backend::Nginx,
            Tool::Redis { .. } => Backend::Redis,
            Tool::Iperf3 => Backend::Iperf3,
            Tool::ZhRr | Tool::ZhStream { .. } => Backend::ZhBench,
            Tool::ZhConn => Backend::ZhBenchConn,
        }
    }

    /// The paths measured, in the first trial's order.
    pub fn routes(&self) -> Vec<Route> {
        match self.tool {
            Tool::ZhRr => vec![Route::Zerohop, Route::KubeProxy, Route::Uds],
            _ => vec![Route::Zerohop, Route::KubeProxy],
        }
    }

    /// The client's command line. `target` is the Service's address, or for
    /// [`Route::Uds`] the Unix socket.
    pub fn client(
        &self,
        programs: &Programs,
        target: &Target,
        concurrency: u32,
        budget: Budget,
    ) -> (PathBuf, Vec<String>) {
        let c = concurrency.to_string();
        let secs = budget.seconds.to_string();
        let n = budget.requests.to_string();
        let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        match (self.tool, target) {
            (Tool::Wrk { close }, Target::Tcp(addr)) => {
                let mut list = args(&["-t1", "-c", &c, "-d", &secs, "--latency"]);
                if close {
                    list.extend(args(&["-H", "Connection: close"]));
                }
                list.push(format!("http://{addr}/"));
                ("wrk".into(), list)
            }
            (Tool::Redis { pipeline }, Target::Tcp(addr)) => {
                let mut list = args(&["-h", &addr.ip().to_string()]);
                list.extend(args(&["-p", &addr.port().to_string(), "-t", "get"]));
                list.extend(args(&["-c", &c, "-n", &n, "--csv"]));
                if pipeline > 1 {
                    list.extend(args(&["-P", &pipeline.to_string()]));
                }
                ("redis-benchmark".into(), list)
            }
            (Tool::Iperf3, Target::Tcp(addr)) => {
                let mut list = args(&["-c", &addr.ip().to_string()]);
                list.extend(args(&["-p", &addr.port().to_string(), "-t", &secs, "-J"]));
                if concurrency > 1 {
                    list.extend(args(&["-P", &c]));
                }
                ("iperf3".into(), list)
            }
            (Tool::ZhRr | Tool::ZhStream { .. } | Tool::ZhConn, target) => {
                let mut list = args(&["client", "--target", &target.zh_bench()]);
                let (mode, size, nodelay) = match self.tool {
                    Tool::ZhRr => ("rr", 64, true),
                    Tool::ZhStream { size, nodelay } => ("stream", size, nodelay),
                    _ => ("conn", 64, true),
                };
                list.extend(args(&["--mode", mode, "--size", &size.to_string()]));
                if nodelay {
                    list.push("--nodelay".into());
                }
                match self.tool {
                    // Warm-up is the uncounted warm-up trial's job.
                    Tool::ZhRr => list.extend(args(&["--greet", "--warmup", "100"])),
                    Tool::ZhStream { .. } => list.extend(args(&["--greet", "--warmup", "64"])),
                    _ => list.extend(args(&["--warmup", "10"])),
                }
                if self.tool == Tool::ZhRr {
                    list.extend(args(&["--iterations", &n]));
                } else {
                    list.extend(args(&["--seconds", &secs]));
                }
                (programs.zh_bench.clone(), list)
            }
            (tool, Target::Uds(_)) => unreachable!("{tool:?} has no Unix socket path"),
        }
    }

    /// The metrics' values from the client's standard output.
    pub fn parse(&self, stdout: &str) -> Result<Vec<f64>> {
        let values = match self.tool {
            Tool::Wrk { .. } => vec![parse_wrk(stdout)?],
            Tool::Redis { .. } => vec![parse_redis(stdout)?],
            Tool::Iperf3 => vec![parse_iperf3(stdout)? / 1e9],
            Tool::ZhRr => {
                let report = zh_report(stdout)?;
                vec![report.get("p50_us")?, report.get("p99_us")?]
            }
            Tool::ZhStream { .. } => vec![zh_report(stdout)?.get("throughput_mbps")?],
            Tool::ZhConn => vec![zh_report(stdout)?.get("ops_per_s")?],
        };
        ensure!(
            values.iter().all(|v| v.is_finite() && *v > 0.0),
            "not a positive number: {values:?}"
        );
        Ok(values)
    }
}

/// Where a client connects.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Uds(PathBuf),
}

impl Target {
    fn zh_bench(&self) -> String {
        match self {
            Target::Tcp(addr) => format!("tcp:{addr}"),
            Target::Uds(path) => format!("uds:{}", path.display()),
        }
    }
}

/// The Unix socket of zh-bench's greeting listener in `dir`.
pub fn zh_bench_socket(dir: &Path) -> PathBuf {
    dir.join("zh-bench.sock")
}

/// wrk: `Requests/sec:  12345.67`.
fn parse_wrk(stdout: &str) -> Result<f64> {
    let value = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec line")?;
    value
        .trim()
        .parse()
        .with_context(|| format!("Requests/sec {value:?}"))
}

/// wrk's error lines (`Socket errors: …`, `Non-2xx or 3xx responses: …`), if any.
pub fn wrk_errors(stdout: &str) -> Option<String> {
    let errors: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("Socket errors") || line.starts_with("Non-2xx"))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// redis-benchmark --csv: a header, then `"GET","12345.67",…`.
fn parse_redis(stdout: &str) -> Result<f64> {
    let fields = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|field| field.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut lines = stdout.lines().map(fields);
    let header = lines
        .find(|f| f.first().is_some_and(|x| x == "test"))
        .context("no CSV header")?;
    let column = header
        .iter()
        .position(|name| name == "rps")
        .context("no rps column")?;
    let row = lines
        .find(|f| f.first().is_some_and(|x| x.starts_with("GET")))
        .context("no GET row")?;
    let value = row.get(column).context("short GET row")?;
    value.parse().with_context(|| format!("rps {value:?}"))
}

/// iperf3 -J: the receiver's bits per second.
fn parse_iperf3(stdout: &str) -> Result<f64> {
    let json: serde_json::Value = serde_json::from_str(stdout).context("not JSON")?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3: {error}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")
}

struct ZhReport(serde_json::Value);

impl ZhReport {
    fn get(&self, key: &str) -> Result<f64> {
        self.0[key].as_f64().with_context(|| format!("no {key}"))
    }
}

/// zh-bench client: one JSON line, the last.
fn zh_report(stdout: &str) -> Result<ZhReport> {
    let last = stdout.lines().last().context("no output")?;
    Ok(ZhReport(serde_json::from_str(last).context("not JSON")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 1s test @ http://127.0.0.1:18080/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   103.06us  168.27us   4.34ms   98.39%
    Req/Sec    20.14k     3.76k   30.77k    90.91%
  Latency Distribution
     50%   86.00us
     99%  408.00us
  21990 requests in 1.10s, 11.28MB read
Requests/sec:  20001.31
Transfer/sec:     10.26MB
";

    const REDIS: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"GET\",\"22573.36\",\"0.074\",\"0.008\",\"0.071\",\"0.127\",\"0.207\",\"5.151\"
";

    #[test]
    fn wrk_output() {
        assert_eq!(parse_wrk(WRK).unwrap(), 20001.31);
        assert_eq!(wrk_errors(WRK), None);
        let with_errors = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert_eq!(
            wrk_errors(&with_errors).unwrap(),
            "Socket errors: connect 0, read 3, write 0, timeout 0"
        );
        assert!(parse_wrk("unable to connect to 10.96.1.10:80 Connection refused").is_err());
    }

    #[test]
    fn redis_output() {
        assert_eq!(parse_redis(REDIS).unwrap(), 22573.36);
        assert!(parse_redis("Could not connect to Redis at 10.96.1.11:6379").is_err());
        assert!(parse_redis(&REDIS.replace("\"GET\"", "\"SET\"")).is_err());
    }

    #[test]
    fn iperf3_output() {
        let ok = r#"{"start": {}, "end": {"sum_sent": {"bits_per_second": 2e9},
            "sum_received": {"bits_per_second": 13205890449.16}}}"#;
        assert_eq!(parse_iperf3(ok).unwrap(), 13205890449.16);
        let refused = r#"{"start": {}, "intervals": [], "end": {},
            "error": "unable to connect to server: Connection refused"}"#;
        let e = parse_iperf3(refused).unwrap_err().to_string();
        assert!(e.contains("Connection refused"), "{e}");
    }

    #[test]
    fn zh_bench_output() {
        let w = &workloads(&[1])[5];
        assert_eq!(w.tool, Tool::ZhRr);
        let out = "{\"p50_us\": 10.5, \"p99_us\": 17.25, \"ops\": 10}\n";
        assert_eq!(w.parse(out).unwrap(), vec![10.5, 17.25]);
        assert!(w.parse("{\"p50_us\": null}").is_err());
    }

    #[test]
    fn command_lines() {
        let programs = Programs {
            zh_bench: "/bin/zh-bench".into(),
        };
        let target = Target::Tcp("10.96.1.10:80".parse().unwrap());
        let budget = Budget {
            seconds: 2,
            requests: 5000,
        };
        let all = workloads(&[1, 8]);
        let line = |i: usize, c| {
            let (program, args) = all[i].client(&programs, &target, c, budget);
            format!("{} {}", program.display(), args.join(" "))
        };
        assert_eq!(
            line(0, 8),
            "wrk -t1 -c 8 -d 2 --latency http://10.96.1.10:80/"
        );
        assert_eq!(
            line(1, 1),
            "wrk -t1 -c 1 -d 2 --latency -H Connection: close http://10.96.1.10:80/"
        );
        assert_eq!(
            line(3, 8),
            "redis-benchmark -h 10.96.1.10 -p 80 -t get -c 8 -n 5000 --csv -P 16"
        );
        assert_eq!(line(4, 1), "iperf3 -c 10.96.1.10 -p 80 -t 2 -J");
        assert_eq!(
            line(5, 1),
            "/bin/zh-bench client --target tcp:10.96.1.10:80 --mode rr --size 64 --nodelay \
             --greet --warmup 100 --iterations 5000"
        );
    }

    #[test]
    fn services_have_their_own_addresses_and_ports() {
        let mut ips = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for backend in BACKENDS {
            for route in [Route::Zerohop, Route::KubeProxy] {
                assert!(ips.insert(backend.cluster_ip(route)));
                assert!(ports.insert(backend.target_port(route)));
            }
        }
    }
}
