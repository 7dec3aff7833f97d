//! The agent's HTTP endpoints: `/healthz` (the process serves), `/readyz`
//! (the hooks are attached and the agent's lease on the maps runs: the
//! first full sync is in them and they are current) and
//! `/metrics` (Prometheus text exposition: the kernel counters, read from the
//! maps at scrape time, and the agent's own).
//!
//! `zerohop_telemetry` serves them; a collector reads the metrics at each
//! scrape.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use zerohop_abi::{map_name, Counter};
use zerohop_telemetry::{exposition, Health};

use crate::{
    agent_status::{AgentStatus, SharedStatus},
    datapath, inspect,
};

/// Binds `addr` (logging the bound address, useful with port 0) and returns
/// the server, which serves the endpoints until it is dropped.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    pin_dir: PathBuf,
) -> Result<impl std::future::Future<Output = ()>> {
    zerohop_telemetry::serve(addr, Arc::new(Endpoints::new(status, pin_dir))).await
}

/// What the endpoints read.
struct Endpoints {
    status: SharedStatus,
    /// The metrics, collected at each scrape.
    registry: Registry,
}

impl Endpoints {
    fn new(status: SharedStatus, pin_dir: PathBuf) -> Endpoints {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            status: Arc::clone(&status),
            pin_dir,
        }));
        Endpoints { status, registry }
    }
}

impl Health for Endpoints {
    fn not_ready(&self) -> Option<String> {
        self.status.lock().unwrap().not_ready().map(str::to_owned)
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The kernel counter as a Prometheus metric: (name, label, help).
fn kernel_metric(counter: Counter) -> (&'static str, Option<&'static str>, &'static str) {
    const CONNECTS: &str = "Connects seen by the connect hook, by outcome.";
    const STALE: &str = "Sockets found connected to an endpoint that left their Service: \
                         terminated, or left (the kernel lacks bpf_sock_destroy).";
    match counter {
        Counter::TranslatedLocal => ("zerohop_connects_total", Some("translated_local"), CONNECTS),
        Counter::TranslatedRemote => (
            "zerohop_connects_total",
            Some("translated_remote"),
            CONNECTS,
        ),
        Counter::PassedNotService => (
            "zerohop_connects_total",
            Some("passed_not_service"),
            CONNECTS,
        ),
        Counter::PassedNoEndpoint => (
            "zerohop_connects_total",
            Some("passed_no_endpoint"),
            CONNECTS,
        ),
        Counter::MsgRedirected => (
            "zerohop_redirected_messages_total",
            None,
            "Messages moved socket-to-socket.",
        ),
        Counter::BytesRedirected => (
            "zerohop_redirected_bytes_total",
            None,
            "Bytes moved socket-to-socket.",
        ),
        Counter::RedirectMiss => (
            "zerohop_redirect_misses_total",
            None,
            "Messages of registered sockets that went through the stack.",
        ),
        Counter::MapFull => (
            "zerohop_map_full_total",
            None,
            "Kernel map inserts refused because a map was full.",
        ),
        Counter::ToWaypoint => ("zerohop_connects_total", Some("to_waypoint"), CONNECTS),
        Counter::ConnsBypassed => (
            "zerohop_bypassed_connections_total",
            None,
            "Connections that moved at least one message socket-to-socket.",
        ),
        Counter::BytesPassed => (
            "zerohop_passed_bytes_total",
            None,
            "Bytes of registered sockets' messages that went through the stack.",
        ),
        Counter::ConnsSent => (
            "zerohop_sending_connections_total",
            None,
            "Registered connections that sent at least one message, either way.",
        ),
        Counter::ConnsKeptOff => (
            "zerohop_kept_off_connections_total",
            None,
            "Connections handed whole to the stack: the client's first message \
             went through it before the server's end was registered.",
        ),
        Counter::LocalTranslatedOnly => (
            "zerohop_translated_only_connections_total",
            None,
            "Connects to a local endpoint translated without the bypass: off for \
             the Service or the node, or its connections judged short.",
        ),
        Counter::DatagramsTranslated => (
            "zerohop_translated_datagrams_total",
            None,
            "UDP datagrams sent without a connect (sendto) rewritten to an endpoint.",
        ),
        Counter::RepliesRestored => (
            "zerohop_restored_replies_total",
            None,
            "UDP datagrams from an endpoint whose source was given back as the \
             ClusterIP:port the socket sent to.",
        ),
        Counter::SocketsTerminated => ("zerohop_stale_sockets_total", Some("terminated"), STALE),
        Counter::SocketsLeftStale => ("zerohop_stale_sockets_total", Some("left"), STALE),
        Counter::PassedLeaseLapsed => (
            "zerohop_connects_total",
            Some("passed_lease_lapsed"),
            CONNECTS,
        ),
    }
}

/// What /metrics reads from the kernel's maps at each scrape.
#[derive(Debug, Default)]
pub struct Kernel {
    /// The counters, summed over CPUs.
    pub counters: Vec<(Counter, u64)>,
    /// Entries of the reverse map, when it could be read.
    pub reverse_entries: Option<usize>,
}

impl Kernel {
    /// Reads the maps pinned under `pin_dir`, leaving out what cannot be
    /// read.
    fn read(pin_dir: &Path) -> Kernel {
        Kernel {
            counters: datapath::read_counters(pin_dir).unwrap_or_default(),
            reverse_entries: inspect::reverse_entries(pin_dir).ok(),
        }
    }
}

/// The exposition text (Prometheus text format 0.0.4) of `status` and
/// `kernel`: HELP and TYPE once per metric, then its samples.
pub fn metrics(status: &AgentStatus, kernel: &Kernel) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(families(status, kernel)));
    exposition(&registry).expect("the metrics encode into a String")
}

/// The metrics of `status` and `kernel`, in the order exposed.
fn families(status: &AgentStatus, kernel: &Kernel) -> Families {
    let mut out = Families::default();
    // Families in the kernel's counters come in name order, each with its
    // samples in the counters' order.
    let mut counters: Vec<_> = kernel
        .counters
        .iter()
        .map(|&(counter, value)| (kernel_metric(counter), value))
        .collect();
    counters.sort_by_key(|((name, _, _), _)| *name);
    for ((name, outcome, help), value) in counters {
        out.sample(
            name,
            MetricType::Counter,
            help,
            outcome.map(|outcome| ("outcome", outcome)),
            value,
        );
    }
    if let Some(entries) = kernel.reverse_entries {
        out.sample(
            "zerohop_reverse_entries",
            MetricType::Gauge,
            "Reverse translations in the kernel: translated sockets and the \
             ClusterIP:port each dialled (the map holds 65,536, LRU).",
            None,
            entries,
        );
    }
    out.sample(
        "zerohop_ready",
        MetricType::Gauge,
        "1 while /readyz answers 200: the hooks are attached and the lease on the \
         maps runs.",
        None,
        u64::from(status.not_ready().is_none()),
    );
    out.sample(
        "zerohop_lease_remaining_seconds",
        MetricType::Gauge,
        "How long the hooks keep translating unless the agent renews its lease on \
         the maps; 0: connects take the cluster's normal path.",
        None,
        status.lease_remaining().as_secs_f64(),
    );
    out.sample(
        "zerohop_syncs_total",
        MetricType::Counter,
        "Map syncs since the agent started.",
        None,
        status.syncs,
    );
    out.sample(
        "zerohop_sync_duration_seconds",
        MetricType::Gauge,
        "Duration of the last map sync.",
        None,
        status.last_sync_seconds,
    );
    for (kind, count) in &status.objects {
        out.sample(
            "zerohop_objects",
            MetricType::Gauge,
            "Objects in the agent's view of the cluster, by kind.",
            Some(("kind", kind)),
            *count,
        );
    }
    for (map, count) in &status.map_entries {
        out.sample(
            "zerohop_map_entries",
            MetricType::Gauge,
            "Entries the agent keeps in each BPF map.",
            Some(("map", map)),
            *count,
        );
    }
    if let Some(capacity) = status.capacity {
        for (map, size) in [
            (map_name::SERVICES, capacity.frontends),
            (map_name::BACKENDS, capacity.endpoint_slots),
        ] {
            out.sample(
                "zerohop_map_capacity",
                MetricType::Gauge,
                "Entries each Service map holds at most (--max-frontends, \
                 --max-endpoint-slots).",
                Some(("map", map)),
                size,
            );
        }
    }
    for (protocol, count) in &status.frontends {
        out.sample(
            "zerohop_frontends",
            MetricType::Gauge,
            "Service frontends (ClusterIP, port) the kernel translates, by protocol.",
            Some(("protocol", protocol)),
            *count,
        );
    }
    for (kind, count) in &status.problems {
        out.sample(
            "zerohop_problems",
            MetricType::Gauge,
            "Problems with the cluster data currently reported, by kind.",
            Some(("kind", kind)),
            *count,
        );
    }
    for (name, on) in &status.features {
        out.sample(
            "zerohop_feature",
            MetricType::Gauge,
            "1 when this kernel supports the datapath feature, 0 when it is off.",
            Some(("name", name)),
            u64::from(*on),
        );
    }
    out.sample(
        "zerohop_short_connection_frontends",
        MetricType::Gauge,
        "Frontends whose connections the bypass policy judged too short to gain \
         from the bypass (translated only, one in 16 still bypassed).",
        None,
        status.short_conn_frontends,
    );
    out.sample(
        "zerohop_node_idle_halts",
        MetricType::Gauge,
        "1 when this node is a VM whose idle vCPUs halt at once, so that every \
         wake-up of a reader on another vCPU is an interrupt (see the README).",
        None,
        u64::from(status.idle_halts),
    );
    out.sample(
        "zerohop_map_write_errors_total",
        MetricType::Counter,
        "Map writes the kernel refused.",
        None,
        status.map_write_errors,
    );
    out
}

/// The metric families of one scrape, in the order exposed.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

/// One metric and its samples.
#[derive(Debug)]
struct Family {
    /// The name as exposed (a counter's ends in `_total`).
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    /// Each sample's label (name, value), if it has one, and value.
    samples: Vec<(Option<(&'static str, &'static str)>, Value)>,
}

/// A sample's value.
#[derive(Clone, Copy, Debug)]
enum Value {
    Whole(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value::Whole(value)
    }
}

impl From<usize> for Value {
    fn from(value: usize) -> Value {
        Value::Whole(value as u64)
    }
}

impl From<f64> for Value {
    /// Whole numbers stay without a fraction in the text (`0`, not `0.0`).
    fn from(value: f64) -> Value {
        // Below 2^53, where every whole number is exact.
        if value.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&value) {
            Value::Whole(value as u64)
        } else {
            Value::Real(value)
        }
    }
}

impl Families {
    /// Adds a sample to the family `name`, described by the first sample
    /// of that name.
    fn sample(
        &mut self,
        name: &'static str,
        kind: MetricType,
        help: &'static str,
        label: Option<(&'static str, &'static str)>,
        value: impl Into<Value>,
    ) {
        let family = match self.0.iter().position(|family| family.name == name) {
            Some(index) => &mut self.0[index],
            None => {
                self.0.push(Family {
                    name,
                    help,
                    kind,
                    samples: Vec::new(),
                });
                self.0.last_mut().unwrap()
            }
        };
        family.samples.push((label, value.into()));
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|family| family.encode(&mut encoder))
    }
}

impl Family {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        // The encoder appends `_total` to a counter's name.
        let name = match self.kind {
            MetricType::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        };
        let mut metric = encoder.encode_descriptor(name, self.help, None, self.kind)?;
        for (label, value) in &self.samples {
            let labels = label.as_slice();
            let sample = metric.encode_family(&labels)?;
            match (self.kind, *value) {
                (MetricType::Counter, Value::Whole(value)) => {
                    ConstCounter::new(value).encode(sample)?;
                }
                (MetricType::Counter, Value::Real(value)) => {
                    ConstCounter::new(value).encode(sample)?;
                }
                (_, Value::Whole(value)) => ConstGauge::new(value).encode(sample)?,
                (_, Value::Real(value)) => ConstGauge::new(value).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// The collector behind /metrics: at each scrape it reads the kernel's
/// counters from the pinned maps and takes the agent's status.
#[derive(Debug)]
struct Scrape {
    status: SharedStatus,
    pin_dir: PathBuf,
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let kernel = Kernel::read(&self.pin_dir);
        let families = families(&self.status.lock().unwrap(), &kernel);
        families.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, Instant},
    };

    use tokio::net::TcpListener;

    use zerohop_planner::Capacity;

    use super::*;

    /// A status and kernel reading with every metric in them.
    fn full_sample() -> (AgentStatus, Kernel) {
        let status = AgentStatus {
            ready: true,
            syncs: 12,
            last_sync_seconds: 0.0125,
            objects: BTreeMap::from([("service", 3), ("endpointslice", 4)]),
            map_entries: BTreeMap::from([(map_name::SERVICES, 3), (map_name::BACKENDS, 5)]),
            frontends: BTreeMap::from([("tcp", 2), ("udp", 1)]),
            problems: BTreeMap::from([("plan", 1)]),
            map_write_errors: 2,
            features: vec![("connect", true), ("bypass", false)],
            idle_halts: true,
            short_conn_frontends: 1,
            lease_until: None,
            capacity: Some(Capacity::KERNEL),
        };
        let kernel = Kernel {
            counters: Counter::ALL
                .iter()
                .enumerate()
                .map(|(index, &counter)| (counter, 100 + index as u64))
                .collect(),
            reverse_entries: Some(5),
        };
        (status, kernel)
    }

    /// The encoder appends `_total` to counters: the TYPE line and the
    /// samples must still name each family alike (`promtool check metrics`
    /// checks the whole exposition in the fastpath suite).
    #[test]
    fn each_family_is_named_alike_in_its_type_and_its_samples() {
        let (status, kernel) = full_sample();
        let text = metrics(&status, &kernel);
        let mut described = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                described = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert_eq!(line.split(['{', ' ']).next(), Some(described), "{text}");
            }
        }
        assert!(
            text.contains("# TYPE zerohop_connects_total counter\n"),
            "{text}"
        );
    }

    #[test]
    fn each_metric_is_described_once_before_its_samples() {
        let status = AgentStatus {
            ready: true,
            syncs: 3,
            objects: BTreeMap::from([("service", 2), ("endpointslice", 3)]),
            features: vec![("connect", true), ("bypass", false)],
            lease_until: Some(Instant::now() + Duration::from_secs(60)),
            ..AgentStatus::default()
        };
        let kernel = Kernel {
            counters: Counter::ALL.iter().map(|&counter| (counter, 7)).collect(),
            reverse_entries: Some(5),
        };
        let text = metrics(&status, &kernel);
        assert_eq!(
            text.matches("# TYPE zerohop_connects_total counter")
                .count(),
            1
        );
        assert!(text.contains("zerohop_connects_total{outcome=\"translated_local\"} 7\n"));
        assert!(text.contains("zerohop_redirected_bytes_total 7\n"));
        assert!(text.contains("zerohop_stale_sockets_total{outcome=\"left\"} 7\n"));
        assert!(text.contains("zerohop_reverse_entries 5\n"));
        assert!(text.contains("zerohop_objects{kind=\"endpointslice\"} 3\n"));
        assert!(text.contains("zerohop_ready 1\n"));
        assert!(text.contains("zerohop_feature{name=\"connect\"} 1\n"));
        assert!(text.contains("zerohop_feature{name=\"bypass\"} 0\n"));
        let type_line = text.find("# TYPE zerohop_objects").unwrap();
        assert!(type_line < text.find("zerohop_objects{").unwrap());
        // The exposition format wants each metric's samples together.
        let mut finished = std::collections::BTreeSet::new();
        let mut current = "";
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            if name != current {
                assert!(finished.insert(current), "{current} split: {text}");
                current = name;
            }
        }
        assert!(!finished.contains(current), "{current} split: {text}");
    }

    #[test]
    fn ready_only_while_the_lease_runs() {
        let mut status = AgentStatus::default();
        assert_eq!(status.not_ready(), Some("first sync not done"));
        status.ready = true;
        assert!(status
            .not_ready()
            .unwrap()
            .starts_with("lease on the maps ran out"));
        status.lease_until = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(status.not_ready(), None);
        let text = metrics(&status, &Kernel::default());
        assert!(text.contains("zerohop_ready 1\n"), "{text}");
        let remaining: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("zerohop_lease_remaining_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((59.0..=60.0).contains(&remaining), "{remaining}");
        status.lease_until = Some(Instant::now() - Duration::from_millis(1));
        assert!(status.not_ready().is_some());
        let text = metrics(&status, &Kernel::default());
        assert!(text.contains("zerohop_ready 0\n"), "{text}");
        assert!(
            text.contains("zerohop_lease_remaining_seconds 0\n"),
            "{text}"
        );
    }

    /// Sends `request` on a new connection and reads the response until the
    /// server closes it: (status code, headers, body).
    async fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("the server closes the connection after its response")
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_the_endpoints_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = SharedStatus::default();
        let endpoints = Endpoints::new(Arc::clone(&status), PathBuf::from("/nonexistent/zerohop"));
        let server = tokio::spawn(zerohop_telemetry::serving(listener, Arc::new(endpoints)));
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n");

        let (code, head, body) = exchange(addr, &get("/healthz")).await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        assert!(head.contains("\r\ncontent-type: text/plain\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");

        let (code, _, body) = exchange(addr, &get("/readyz")).await;
        assert_eq!((code, body.as_str()), (503, "first sync not done\n"));
        {
            let mut status = status.lock().unwrap();
            status.ready = true;
            status.lease_until = Some(Instant::now() + Duration::from_secs(60));
        }
        let (code, _, body) = exchange(addr, &get("/readyz")).await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));

        let (code, head, body) = exchange(addr, &get("/metrics")).await;
        assert_eq!(code, 200);
        assert!(
            head.contains("\r\ncontent-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("\nzerohop_ready 1\n"), "{body}");

        let (code, _, body) = exchange(addr, &get("/metricz")).await;
        assert_eq!((code, body.as_str()), (404, "not found\n"));
        let post = "POST /healthz HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n\r\nhi";
        let (code, head, body) = exchange(addr, post).await;
        assert_eq!((code, body.as_str()), (405, "only GET\n"));
        assert!(head.contains("\r\nallow: get\r\n"), "{head}");

        // Dropping the server closes the listener.
        server.abort();
        let _ = server.await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
