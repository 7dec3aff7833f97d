//! `cargo xtask bench --control-plane`: what the agent costs as the cluster
//! grows, with the directory source. For 1k, 10k and 50k Services of 10
//! endpoints each (one on this node), in files of 100 Services and their
//! EndpointSlices, one agent in a sandboxed node:
//!
//! - the first full sync: the time from starting the agent to its hooks
//!   being attached (loading the programs, reading and parsing every file,
//!   planning, writing the maps), and the sync itself as the agent logs it
//!   (`maps synced … micros`: planning and writing);
//! - idle CPU over 10 s with nothing changing (`--poll-ms 100`);
//! - one change at a time (a file rewritten, its first Service's local
//!   endpoint moved to a new address), from the rename to the agent's
//!   `maps synced` line for it: p50 and p99 over the changes;
//! - the agent's resident memory after the changes, and its peak.
//!
//! The maps are sized to hold the whole cluster (`--max-frontends`,
//! `--max-endpoint-slots`: 524,288 slots at 50k Services of 10 endpoints).
//! The kube source is not measured here.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use zerohop_tests::{require_root, service_yaml, slice_yaml, Agent, Cluster, Endpoint, Manifests};

use super::BenchArgs;

/// Services per manifest file.
const PER_FILE: usize = 100;
/// Endpoints per Service; the first is on this node.
const ENDPOINTS: usize = 10;
const POLL_MS: u64 = 100;

/// What one size measured.
struct Row {
    services: usize,
    first_sync: Duration,
    attached: Duration,
    idle_cpu_percent: f64,
    change_p50: Duration,
    change_p99: Duration,
    changes: usize,
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
        "== control plane: the directory source, {ENDPOINTS} endpoints per Service, \
         {PER_FILE} Services per file, --poll-ms {POLL_MS}, maps sized to hold them all, \
         {changes} changes per size"
    );
    let mut rows = Vec::new();
    for services in sizes {
        let row = measure(services, changes)?;
        println!(
            "   {services} Services: first sync {} ms, attached after {} ms, idle CPU {:.2}%, \
             change p50 {} ms p99 {} ms, RSS {:.0} MiB (peak {:.0})",
            row.first_sync.as_millis(),
            row.attached.as_millis(),
            row.idle_cpu_percent,
            row.change_p50.as_millis(),
            row.change_p99.as_millis(),
            row.rss_mib,
            row.peak_mib
        );
        rows.push(row);
    }
    print_table(&rows);
    print_targets(&rows);
    println!(
        "== {} s in all (excluding the build)",
        started.elapsed().as_secs()
    );
    Ok(())
}

fn measure(services: usize, changes: usize) -> Result<Row> {
    let cluster = Cluster::new(1)?;
    let manifests = Manifests::new()?;
    let files = services.div_ceil(PER_FILE);
    for file in 0..files {
        manifests.write(&file_name(file), &file_text(file, services, None))?;
    }
    let started = Instant::now();
    let poll = POLL_MS.to_string();
    // Maps that hold the whole cluster, as its operator would size them.
    let frontends = services.next_power_of_two().max(65_536).to_string();
    let slots = (services * ENDPOINTS)
        .next_power_of_two()
        .max(262_144)
        .to_string();
    let mut agent = Agent::start(
        &cluster,
        1,
        manifests.dir(),
        &[
            "--poll-ms",
            &poll,
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

    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        let file = change % files;
        let synced = sync_micros(&agent.log_text()).len();
        let text = file_text(file, services, Some(change + 1));
        let written = Instant::now();
        manifests.write(&file_name(file), &text)?;
        let deadline = written + Duration::from_secs(60);
        while sync_micros(&agent.log_text()).len() == synced {
            ensure!(
                Instant::now() < deadline,
                "change {change} not synced in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(written.elapsed());
    }
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let (rss_mib, peak_mib) = memory_mib(pid)?;
    agent.stop()?;
    Ok(Row {
        services,
        first_sync,
        attached,
        idle_cpu_percent,
        change_p50: percentile(50),
        change_p99: percentile(99),
        changes,
        rss_mib,
        peak_mib,
    })
}

fn file_name(file: usize) -> String {
    format!("services-{file:04}.yaml")
}

/// File `file`: its Services and their slices; `generation` moves its
/// first Service's local endpoint to a new address.
fn file_text(file: usize, services: usize, generation: Option<usize>) -> String {
    let mut text = String::new();
    for service in file * PER_FILE..((file + 1) * PER_FILE).min(services) {
        let name = format!("s{service}");
        let cluster_ip = IpAddr::from([10, 96, (service / 250) as u8, (service % 250 + 1) as u8]);
        let endpoint_ip = |j: usize| {
            let n = service * ENDPOINTS + j;
            IpAddr::from([
                10,
                128 + (n / 62_500) as u8,
                (n / 250 % 250) as u8,
                (n % 250 + 1) as u8,
            ])
        };
        let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
            .map(|j| Endpoint {
                ip: match generation {
                    Some(g) if j == 0 && service == file * PER_FILE => {
                        IpAddr::from([10, 200, (g / 250 % 250) as u8, (g % 250 + 1) as u8])
                    }
                    _ => endpoint_ip(j),
                },
                node: if j == 0 { "node1" } else { "node2" },
                ready: true,
            })
            .collect();
        text.push_str(&service_yaml(&name, cluster_ip, 80, 8080, ""));
        text.push_str("---\n");
        text.push_str(&slice_yaml(&name, &format!("{name}-1"), 8080, &endpoints));
        text.push_str("---\n");
    }
    text
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
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: utime and
    // stime are the 14th and 15th fields of the line.
    let after_name = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: plain libc query.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
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

fn print_table(rows: &[Row]) {
    println!(
        "\n{:>9} {:>12} {:>10} {:>9} {:>12} {:>12} {:>8} {:>9} {:>9}",
        "SERVICES",
        "FIRST SYNC",
        "ATTACHED",
        "IDLE CPU",
        "CHANGE p50",
        "CHANGE p99",
        "CHANGES",
        "RSS",
        "PEAK RSS"
    );
    for row in rows {
        println!(
            "{:>9} {:>9} ms {:>7} ms {:>8.2}% {:>9} ms {:>9} ms {:>8} {:>5.0} MiB {:>5.0} MiB",
            row.services,
            row.first_sync.as_millis(),
            row.attached.as_millis(),
            row.idle_cpu_percent,
            row.change_p50.as_millis(),
            row.change_p99.as_millis(),
            row.changes,
            row.rss_mib,
            row.peak_mib
        );
    }
    println!(
        "FIRST SYNC: the agent's first sync (plan, write the maps); ATTACHED: from starting the \
         agent to its hooks attached (load, read and parse the files, sync).\nCHANGE: from a file's rename to the agent's `maps synced` line \
         for it (not yet checked in the kernel's maps)."
    );
}

fn print_targets(rows: &[Row]) {
    println!("\nTARGETS (directory source)");
    let verdict = |met: bool| if met { "MET   " } else { "MISSED" };
    if let Some(row) = rows.iter().find(|row| row.services == 10_000) {
        let poll_plus = Duration::from_millis(POLL_MS + 20);
        for (met, what) in [
            (
                row.attached <= Duration::from_millis(500),
                format!(
                    "10k x 10 full sync <= 0.5 s: {} ms from start to attached \
                     (the sync itself {} ms)",
                    row.attached.as_millis(),
                    row.first_sync.as_millis()
                ),
            ),
            (
                row.change_p99 <= poll_plus,
                format!(
                    "10k x 10 one change p99 <= poll + 20 ms ({} ms): {} ms",
                    poll_plus.as_millis(),
                    row.change_p99.as_millis()
                ),
            ),
            (
                row.rss_mib.max(row.peak_mib) <= 64.0,
                format!(
                    "10k x 10 RSS <= 64 MiB: {:.0} MiB (peak {:.0})",
                    row.rss_mib, row.peak_mib
                ),
            ),
            (
                row.idle_cpu_percent < 1.0,
                format!(
                    "10k x 10 idle CPU < 1% of a core: {:.2}%",
                    row.idle_cpu_percent
                ),
            ),
        ] {
            println!("  {} {what}", verdict(met));
        }
    }
    if let Some(row) = rows.iter().find(|row| row.services == 50_000) {
        println!(
            "  {} 50k x 10 works with RSS <= 256 MiB: {:.0} MiB (peak {:.0})",
            verdict(row.peak_mib <= 256.0),
            row.rss_mib,
            row.peak_mib
        );
    }
}
