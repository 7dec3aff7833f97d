//! `cargo xtask bench --control-plane`: what the agent costs as the cluster
//! grows, with each source: the directory source, and the kube source
//! against the in-process API server (the real kube-rs watches, list then
//! watch). For 1k, 10k and 50k Services of 10 endpoints each (one on this
//! node), one agent in a sandboxed node:
//!
//! - the first full sync: the time from starting the agent to its hooks
//!   being attached (loading the programs, reading every object, planning,
//!   writing the maps), and the sync itself as the agent logs it
//!   (`maps synced … micros`: planning and writing);
//! - idle CPU over 10 s with nothing changing (`--poll-ms 100` for the
//!   directory);
//! - one change at a time: a Service's local endpoint moved from one pod to
//!   another (its file rewritten, or its EndpointSlice changed in the API
//!   server), timed from the change to the first connect to the Service's
//!   ClusterIP, from a client pod connecting every millisecond, that reaches
//!   the new pod: p50 and p99 over the changes, and the agent's CPU per change;
//! - the agent's resident memory after the changes, and its peak.
//!
//! The directory holds files of 100 Services and their EndpointSlices. The
//! maps are sized to hold the whole cluster (`--max-frontends`,
//! `--max-endpoint-slots`: 524,288 slots at 50k Services of 10 endpoints).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use zerohop_fake_apiserver::ApiServer;
use zerohop_sandbox::{
    require_root, service_yaml, slice_yaml, Agent, AgentSource, Cluster, Endpoint, Manifests, Pod,
    PodProcess, Testpod,
};

use super::BenchArgs;

/// Services per manifest file.
const PER_FILE: usize = 100;
/// Endpoints per Service; the first is on this node.
const ENDPOINTS: usize = 10;
const POLL_MS: u64 = 100;
/// The Services' target port, where the pods' servers listen.
const TARGET_PORT: u16 = 8080;

/// Where the agent reads the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Dir,
    Kube,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Dir => "dir",
            Source::Kube => "kube",
        }
    }
}

/// What one source and size measured.
struct Row {
    source: Source,
    services: usize,
    first_sync: Duration,
    attached: Duration,
    idle_cpu_percent: f64,
    change_p50: Duration,
    change_p99: Duration,
    synced_p50: Duration,
    synced_p99: Duration,
    changes: usize,
    cpu_ms_per_change: f64,
    rss_mib: f64,
    peak_mib: f64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    require_root();
    let started = Instant::now();
    let (sizes, changes) = if args.quick {
        (vec![1_000, 10_000], 50)
    } else {
        (vec![1_000, 10_000, 50_000], 200)
    };
    println!(
        "== control plane: {ENDPOINTS} endpoints per Service, maps sized to hold them all, \
         {changes} changes per size; the directory source ({PER_FILE} Services per file, \
         --poll-ms {POLL_MS}) and the kube source (in-process API server)"
    );
    print_header();
    let mut rows = Vec::new();
    for services in sizes {
        for source in [Source::Dir, Source::Kube] {
            let row = measure(source, services, changes)?;
            print_row(&row);
            rows.push(row);
        }
    }
    print_footnote();
    print_targets(&rows);
    println!(
        "== {} s in all (excluding the build)",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// The cluster as the agent's source holds it, changed one endpoint at a time.
enum Feed {
    Dir(Manifests),
    Kube { api: ApiServer, files: Manifests },
}

impl Feed {
    fn new(source: Source, services: usize) -> Result<Feed> {
        let files = services.div_ceil(PER_FILE);
        let manifests = Manifests::new()?;
        match source {
            Source::Dir => {
                for file in 0..files {
                    manifests.write(
                        &file_name(file),
                        &file_text(file, services, &BTreeMap::new()),
                    )?;
                }
                Ok(Feed::Dir(manifests))
            }
            Source::Kube => {
                let api = ApiServer::start()?;
                // As a real API server's watch cache sends them (about once
                // a minute), not the test server's every second: each one
                // wakes the agent, on every watch, and would count as its
                // idle CPU.
                api.set_bookmark_interval(Duration::from_secs(60));
                api.apply(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}
                }));
                for file in 0..files {
                    for object in objects(&file_text(file, services, &BTreeMap::new()))? {
                        api.apply(object);
                    }
                }
                api.write_kubeconfig(&manifests.dir().join("kubeconfig"))?;
                Ok(Feed::Kube {
                    api,
                    files: manifests,
                })
            }
        }
    }

    fn start_agent(&self, cluster: &Cluster, extra: &[&str]) -> Result<Agent> {
        match self {
            Feed::Dir(manifests) => {
                let poll = POLL_MS.to_string();
                let mut args = vec!["--poll-ms", &poll];
                args.extend_from_slice(extra);
                Agent::start(cluster, 1, manifests.dir(), &args)
            }
            Feed::Kube { files, .. } => {
                let kubeconfig = files.dir().join("kubeconfig");
                Agent::start_with(cluster, 1, AgentSource::Kube(&kubeconfig), extra)
            }
        }
    }

    /// Service `service`'s local endpoint moved to what `local` says (the
    /// Services of its file as `local` has them), rendered now and made by
    /// the returned call as a user would make it (the file renamed into
    /// place, or the slice applied in the API server): the harness's own
    /// rendering stays out of the timed change.
    fn prepare(
        &self,
        service: usize,
        services: usize,
        local: &BTreeMap<usize, IpAddr>,
    ) -> Result<Box<dyn FnOnce() -> Result<()> + '_>> {
        let file = service / PER_FILE;
        let text = file_text(file, services, local);
        match self {
            Feed::Dir(manifests) => Ok(Box::new(move || manifests.write(&file_name(file), &text))),
            Feed::Kube { api, .. } => {
                let slice_name = format!("s{service}-1");
                let slice = objects(&text)?
                    .into_iter()
                    .find(|o| o["kind"] == "EndpointSlice" && o["metadata"]["name"] == slice_name)
                    .context("the changed slice")?;
                Ok(Box::new(move || {
                    api.apply(slice);
                    Ok(())
                }))
            }
        }
    }
}

/// The two pods a Service's local endpoint moves between, and the client
/// that connects to the Service.
struct Pods {
    client: Pod,
    servers: [(Pod, &'static str); 2],
    _processes: Vec<PodProcess>,
}

fn measure(source: Source, services: usize, changes: usize) -> Result<Row> {
    let cluster = Cluster::new(1)?;
    let testpod = Testpod::locate();
    let a = cluster.add_pod(1, "a")?;
    let b = cluster.add_pod(1, "b")?;
    let pods = Pods {
        client: cluster.add_pod(1, "client")?,
        _processes: vec![
            testpod.server(&a, "a", TARGET_PORT)?,
            testpod.server(&b, "b", TARGET_PORT)?,
        ],
        servers: [(a, "a"), (b, "b")],
    };
    let feed = Feed::new(source, services)?;
    let started = Instant::now();
    // Maps that hold the whole cluster, as its operator would size them.
    let frontends = services.next_power_of_two().max(65_536).to_string();
    let slots = (services * ENDPOINTS)
        .next_power_of_two()
        .max(262_144)
        .to_string();
    let mut agent = feed.start_agent(
        &cluster,
        &[
            "--max-frontends",
            &frontends,
            "--max-endpoint-slots",
            &slots,
        ],
    )?;
    let attached = started.elapsed();
    let first_sync = sync_micros(&agent.log_text())
        .first()
        .map(|&micros| Duration::from_micros(micros))
        .context("no `maps synced` line")?;
    let pid = agent.pid().context("the agent runs")?;

    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(pid)?;
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let ticks = cpu_ticks(pid)? - before;
    let idle_cpu_percent = ticks as f64 / ticks_per_second() / idle.as_secs_f64() * 100.0;

    // Each change moves one Service's endpoint from one pod to the other; a
    // Service changed for the first time first gets one endpoint, on a pod,
    // in place of its ten, untimed.
    let files = services.div_ceil(PER_FILE);
    let mut local = BTreeMap::<usize, usize>::new();
    let mut latencies = Vec::with_capacity(changes);
    let mut synced = Vec::with_capacity(changes);
    let mut applied = 0;
    let before = cpu_ticks(pid)?;
    for change in 0..changes {
        let service = (change % files) * PER_FILE;
        if let std::collections::btree_map::Entry::Vacant(entry) = local.entry(service) {
            entry.insert(0);
            move_local(&feed, &pods, &agent, &local, service, services)?;
            applied += 1;
        }
        let to = 1 - local[&service];
        local.insert(service, to);
        let moved = move_local(&feed, &pods, &agent, &local, service, services)?;
        latencies.push(moved.reached);
        synced.extend(moved.synced);
        applied += 1;
    }
    let cpu_ms_per_change =
        (cpu_ticks(pid)? - before) as f64 / ticks_per_second() * 1000.0 / applied as f64;
    let (rss_mib, peak_mib) = memory_mib(pid)?;
    agent.stop()?;
    Ok(Row {
        source,
        services,
        first_sync,
        attached,
        idle_cpu_percent,
        change_p50: percentile(&mut latencies, 50),
        change_p99: percentile(&mut latencies, 99),
        synced_p50: percentile(&mut synced, 50),
        synced_p99: percentile(&mut synced, 99),
        changes,
        cpu_ms_per_change,
        rss_mib,
        peak_mib,
    })
}

/// The `p`th percentile of `values` (zero when there are none).
fn percentile(values: &mut [Duration], p: usize) -> Duration {
    values.sort();
    match values.len() {
        0 => Duration::ZERO,
        n => values[(n * p / 100).min(n - 1)],
    }
}

/// How long one change took to show.
struct Moved {
    /// Until a connect to the Service reached the new endpoint.
    reached: Duration,
    /// Until the agent's first `maps synced` line after the change, by the
    /// line's own timestamp (when the agent logged one in time).
    synced: Option<Duration>,
}

/// Applies `local` for `service` (the index of the pod its local endpoint
/// is now), and says how long it took to show.
fn move_local(
    feed: &Feed,
    pods: &Pods,
    agent: &Agent,
    local: &BTreeMap<usize, usize>,
    service: usize,
    services: usize,
) -> Result<Moved> {
    let (pod, name) = &pods.servers[local[&service]];
    let target = SocketAddr::new(cluster_ip(service), 80);
    let mut reach = Testpod::locate().reach(&pods.client, target, name)?;
    let addresses: BTreeMap<usize, IpAddr> = local
        .iter()
        .map(|(&s, &i)| (s, IpAddr::from(pods.servers[i].0.ipv4)))
        .collect();
    let logged = agent.log_text().lines().count();
    let change = feed.prepare(service, services, &addresses)?;
    let changed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let changed = Instant::now();
    change()?;
    reach
        .wait_for_line("REACHED", Duration::from_secs(60))
        .with_context(|| format!("Service s{service} never reached {name} ({})", pod.ipv4))?;
    let reached = changed.elapsed();
    let synced = agent
        .log_text()
        .lines()
        .skip(logged)
        .filter(|line| line.contains("maps synced"))
        .find_map(|line| {
            let at: k8s_openapi::jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
            let at = Duration::from_micros(u64::try_from(at.as_microsecond()).ok()?);
            at.checked_sub(changed_at)
        });
    Ok(Moved { reached, synced })
}

fn file_name(file: usize) -> String {
    format!("services-{file:04}.yaml")
}

fn cluster_ip(service: usize) -> IpAddr {
    IpAddr::from([10, 96, (service / 250) as u8, (service % 250 + 1) as u8])
}

/// File `file`: its Services and their slices; a Service in `local` has one
/// endpoint, on this node, at that address.
fn file_text(file: usize, services: usize, local: &BTreeMap<usize, IpAddr>) -> String {
    let mut text = String::new();
    for service in file * PER_FILE..((file + 1) * PER_FILE).min(services) {
        let name = format!("s{service}");
        let endpoint_ip = |j: usize| {
            let n = service * ENDPOINTS + j;
            IpAddr::from([
                10,
                128 + (n / 62_500) as u8,
                (n / 250 % 250) as u8,
                (n % 250 + 1) as u8,
            ])
        };
        let endpoints: Vec<Endpoint> = match local.get(&service) {
            // Every connect reaches it: connects are spread over all of a
            // Service's endpoints, and the others lead nowhere here.
            Some(&ip) => vec![Endpoint {
                ip,
                node: "node1",
                ready: true,
            }],
            None => (0..ENDPOINTS)
                .map(|j| Endpoint {
                    ip: endpoint_ip(j),
                    node: if j == 0 { "node1" } else { "node2" },
                    ready: true,
                })
                .collect(),
        };
        text.push_str(&service_yaml(
            &name,
            cluster_ip(service),
            80,
            TARGET_PORT,
            "",
        ));
        text.push_str("---\n");
        text.push_str(&slice_yaml(
            &name,
            &format!("{name}-1"),
            TARGET_PORT,
            &endpoints,
        ));
        text.push_str("---\n");
    }
    text
}

/// The objects of a multi-document YAML text, as the API server holds them.
fn objects(text: &str) -> Result<Vec<Value>> {
    text.split("---\n")
        .filter(|document| !document.trim().is_empty())
        .map(|document| serde_yaml_ng::from_str(document).context("a generated object"))
        .collect()
}

/// The `micros=` of every `maps synced` line, in order.
fn sync_micros(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("maps synced"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("micros="))?
                .parse()
                .ok()
        })
        .collect()
}

/// User and system CPU time of a process, in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: utime and
    // stime are the 14th and 15th fields of the line.
    let after_name = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

pub(super) fn ticks_per_second() -> f64 {
    // SAFETY: plain libc query.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// VmRSS and VmHWM of a process, in MiB.
pub(super) fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("no {name}"))?;
        let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn print_header() {
    println!(
        "\n{:>6} {:>9} {:>12} {:>10} {:>9} {:>12} {:>12} {:>12} {:>12} {:>8} {:>10} {:>9} {:>9}",
        "SOURCE",
        "SERVICES",
        "FIRST SYNC",
        "ATTACHED",
        "IDLE CPU",
        "CHANGE p50",
        "CHANGE p99",
        "SYNCED p50",
        "SYNCED p99",
        "CHANGES",
        "CPU/CHANGE",
        "RSS",
        "PEAK RSS"
    );
}

fn print_row(row: &Row) {
    println!(
        "{:>6} {:>9} {:>9} ms {:>7} ms {:>8.2}% {:>9} ms {:>9} ms {:>9} ms {:>9} ms {:>8} {:>7.1} ms {:>5.0} MiB {:>5.0} MiB",
        row.source.name(),
        row.services,
        row.first_sync.as_millis(),
        row.attached.as_millis(),
        row.idle_cpu_percent,
        row.change_p50.as_millis(),
        row.change_p99.as_millis(),
        row.synced_p50.as_millis(),
        row.synced_p99.as_millis(),
        row.changes,
        row.cpu_ms_per_change,
        row.rss_mib,
        row.peak_mib
    );
}

fn print_footnote() {
    println!(
        "FIRST SYNC: the agent's first sync (plan, write the maps); ATTACHED: from starting the \
         agent to its hooks attached (load, read every object, sync).\nCHANGE: from the change \
         (file renamed into place, or EndpointSlice applied in the API server) to the first \
         connect to the Service that reaches the new endpoint (a client connecting every ms).\n\
         SYNCED: from the change to the agent's `maps synced` line for it, by the line's time.\n\
         CPU/CHANGE: the agent's CPU time over the changes, divided by the changes made."
    );
}

fn print_targets(rows: &[Row]) {
    println!("\nTARGETS");
    let verdict = |met: bool| if met { "MET   " } else { "MISSED" };
    let row = |source: Source, services: usize| {
        rows.iter()
            .find(|row| row.source == source && row.services == services)
    };
    if let Some(row) = row(Source::Kube, 10_000) {
        println!(
            "  {} 10k x 10 one change p99 <= 20 ms (kube source): {} ms",
            verdict(row.change_p99 <= Duration::from_millis(20)),
            row.change_p99.as_millis()
        );
    }
    if let Some(row) = row(Source::Dir, 10_000) {
        let poll_plus = Duration::from_millis(POLL_MS + 20);
        println!(
            "  {} 10k x 10 one change p99 <= poll + 20 ms ({} ms, directory source): {} ms",
            verdict(row.change_p99 <= poll_plus),
            poll_plus.as_millis(),
            row.change_p99.as_millis()
        );
    }
    for source in [Source::Dir, Source::Kube] {
        let name = source.name();
        if let Some(row) = row(source, 10_000) {
            for (met, what) in [
                (
                    row.attached <= Duration::from_millis(500),
                    format!(
                        "10k x 10 full sync <= 0.5 s ({name}): {} ms from start to attached \
                         (the sync itself {} ms)",
                        row.attached.as_millis(),
                        row.first_sync.as_millis()
                    ),
                ),
                (
                    row.rss_mib.max(row.peak_mib) <= 64.0,
                    format!(
                        "10k x 10 RSS <= 64 MiB ({name}): {:.0} MiB (peak {:.0})",
                        row.rss_mib, row.peak_mib
                    ),
                ),
                (
                    row.idle_cpu_percent < 1.0,
                    format!(
                        "10k x 10 idle CPU < 1% of a core ({name}): {:.2}%",
                        row.idle_cpu_percent
                    ),
                ),
            ] {
                println!("  {} {what}", verdict(met));
            }
        }
        if let Some(row) = row(source, 50_000) {
            println!(
                "  {} 50k x 10 works with RSS <= 256 MiB ({name}): {:.0} MiB (peak {:.0})",
                verdict(row.peak_mib <= 256.0),
                row.rss_mib,
                row.peak_mib
            );
        }
    }
}
