//! The `zerohop` command: the node agent and its companions.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use zerohop::{
    agent::{self, Settings, Source},
    datapath::{self, DEFAULT_PIN_DIR},
    election::Election,
    inspect::{self, Output},
    probe,
    stale::Terminate,
};
use zerohop_routes::contract::{parse_mark, DEFAULT_CONFIG_PATH, DEFAULT_MARK};
use zerohop_telemetry::{parse_health_addr, HealthAddr};

/// mimalloc rather than glibc's malloc: the agent parses a cluster's
/// objects on several threads at once, which left glibc with a fragmented
/// heap per thread that it kept, freed but resident (the kube source at
/// 10k Services: half the agent's resident memory); mimalloc hands freed
/// pages back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h; the crate names it not).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed goes back to the system at once rather than after 10 ms:
/// mimalloc purges only when the thread that freed it allocates again, and
/// the threads that parsed the first objects then mostly sleep (the
/// directory source at 10k Services: 115 MiB instead of 121, peak 120 MiB
/// instead of 140, no slower, in one benchmark run each).
fn purge_freed_memory_at_once() {
    // SAFETY: sets one of mimalloc's options, an integer it reads on every
    // purge; any value is valid for it (0: at once).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// zerohop: same-node fast path for Kubernetes Services.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, attach them to a cgroup and keep their maps
    /// in sync with the cluster until SIGTERM/SIGINT.
    Agent(Box<AgentArgs>),
    /// Switch the socket-to-socket bypass on or off for the whole node, at run
    /// time (connections are still translated when it is off).
    Bypass {
        state: OnOff,
        /// bpffs directory holding the agent's pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Show what the kernel does on this node, read from the pinned maps
    /// (works while the agent runs and after it stopped).
    Inspect {
        #[command(subcommand)]
        what: Inspect,
        /// bpffs directory holding the agent's pinned maps.
        #[arg(long, global = true, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Output format.
        #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Load every kernel program into this kernel, attaching none, and show
    /// which features it supports and each program's size after
    /// verification (the verifier budget). Fails when the kernel refuses
    /// the core (connect translation).
    Probe {
        /// bpffs directory for the programs' maps, created and removed
        /// [default: /sys/fs/bpf/zerohop-probe-<pid>].
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove the pinned maps (after the agent stopped for good). Registered
    /// connections continue through the TCP/IP stack.
    Cleanup {
        /// bpffs directory holding the agent's pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// Each frontend (ClusterIP:port/proto) with its Service, what the
    /// kernel does with it (translate or pass, bypass on or off) and its local backends.
    Services,
    /// Each eligible endpoint slot of each frontend.
    Backends,
    /// Registered sockets of bypassed connections, as 4-tuples, and whether their peer is registered.
    Sockets,
    /// Reverse translations: for each translated socket and endpoint (or
    /// waypoint) it was sent to, the ClusterIP:port it dialled, which its
    /// getpeername() and its UDP replies show. TCP entries leave when the
    /// connection closes; UDP ones age out.
    #[command(alias = "peers")]
    Reverse,
    /// Kernel counters by reason, summed over CPUs.
    Stats {
        /// Refresh every second and show rates.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// This node's name, as in the EndpointSlices' nodeName.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// cgroup v2 directory whose processes' connections are accelerated.
    #[arg(long)]
    cgroup: PathBuf,
    /// Where the cluster's objects (Services, EndpointSlices, Namespaces,
    /// this node's Node and Pods, HTTPRoutes, ReferenceGrants) come from:
    /// `kube`, the Kubernetes API (in-cluster config, or KUBECONFIG), watched; or
    /// `dir:PATH`, the Kubernetes manifests (YAML/JSON, multi-document) in
    /// PATH, watched for changes.
    #[arg(long, default_value = "kube")]
    source: Source,
    /// bpffs directory for the pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Initial state of the socket-to-socket bypass (see `zerohop bypass`).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    bypass: OnOff,
    /// How often the source directory confirms the maps for the lease, in
    /// milliseconds; it is read at each poll too where the file system sends
    /// no change notifications (else once a second, besides every change
    /// notified).
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// Address of this node's waypoint (`zerohop-waypoint --listen`), one per
    /// address family: connections to L7 Services (those with HTTPRoutes) go
    /// there. Without one for a family, L7 Services of that family are left
    /// to the cluster's normal path.
    #[arg(
        long = "waypoint",
        value_name = "ADDR:PORT",
        env = "ZEROHOP_WAYPOINT",
        value_delimiter = ','
    )]
    waypoints: Vec<std::net::SocketAddr>,
    /// SO_MARK of the waypoint's own sockets (`zerohop-waypoint --mark`):
    /// their connects are never sent back to the waypoint.
    #[arg(long, default_value = DEFAULT_MARK, value_parser = parse_mark)]
    waypoint_mark: u32,
    /// Where the waypoint's input (routes, Services, endpoints, clients) is
    /// written, as JSON, whenever it changes (`zerohop-waypoint --config`).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    waypoint_config: PathBuf,
    /// Make a route's backendRefs (and mirrors) to a Service in another
    /// namespace need a ReferenceGrant in that namespace, as Gateway-bound
    /// routes do. Off by default: mesh routes send to any namespace without
    /// one (GEP-1294), since they shape calls to Services their clients can
    /// already reach. Turn it on where NetworkPolicies admit the waypoint to
    /// backends (it calls them on every client's behalf) and namespaces
    /// must not route to each other's Services without consent.
    #[arg(long)]
    require_reference_grants: bool,
    /// Address for /healthz, /readyz and /metrics (port 0 picks a free one);
    /// "off" serves none.
    #[arg(long, default_value = "0.0.0.0:9877", value_parser = parse_health_addr)]
    health_addr: HealthAddr,
    /// Start even when other BPF programs run on the cgroup's connect,
    /// sendmsg, recvmsg, sock_ops, getsockopt or getpeername hooks (another
    /// connect-time load balancer, a sockmap user, a second agent). Without
    /// it the agent refuses, naming them: two such programs on the same
    /// sockets break each other's connections silently.
    #[arg(long)]
    allow_other_programs: bool,
    /// When an endpoint leaves its Service (deleted, or no longer ready),
    /// terminate the sockets still connected to it through zerohop, so that
    /// their clients connect again to a live endpoint: `udp` (connected UDP
    /// sockets, which have no other way to notice), `tcp,udp`, or `none`.
    /// TCP is opt-in: it also cuts connections to a pod that is draining
    /// gracefully. Needs Linux 6.5 (bpf_sock_destroy); older kernels count
    /// such sockets in zerohop_stale_sockets_total{outcome="left"}.
    #[arg(long, value_name = "PROTOCOLS", default_value = "udp")]
    terminate_stale: Terminate,
    /// How long, in milliseconds, the hooks keep translating past the last
    /// moment the agent knew its maps current: when its source stops
    /// confirming the cluster's state (a read that hangs, a wedged task) or
    /// the maps stop catching up with it, or the agent is stopped, connects
    /// take the cluster's normal path from then on, and /readyz fails, until
    /// the maps are current again. With a source directory, at least two
    /// --poll-ms.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    lease_ms: u64,
    /// Service frontends (ClusterIP, port, protocol) the maps hold; past
    /// that, whole Services are left to the cluster's normal path, in
    /// Service order. Takes effect when the maps are created: maps already
    /// pinned keep their size until `zerohop cleanup`.
    #[arg(long, default_value_t = zerohop_abi::capacity::SERVICES,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_frontends: u32,
    /// Endpoint slots the maps hold over all frontends (a frontend takes
    /// one per eligible endpoint). Takes effect as --max-frontends does.
    #[arg(long, default_value_t = zerohop_abi::capacity::BACKENDS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_endpoint_slots: u32,
    /// The Lease (NAMESPACE/NAME, coordination.k8s.io) whose holder writes
    /// the status of the routes zerohop serves: one agent in the cluster
    /// writes, the others only read the Lease. Kube source only.
    #[arg(long, value_name = "NAMESPACE/NAME", default_value = "zerohop-system/zerohop-route-status",
          value_parser = parse_lease_name)]
    status_lease: (String, String),
    /// How long, in seconds, the status Lease stays held when its holder
    /// stops renewing it (it renews every 2/15 of that and stops writing
    /// after 2/3 without a renewal).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    status_lease_seconds: u64,
}

fn parse_lease_name(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?}: expected NAMESPACE/NAME")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Small pages only: where transparent huge pages back the heap, mimalloc
/// hands memory back in 2 MiB units, and one live object keeps all 2 MiB
/// resident; the objects of a cluster are spread over all of it (10k
/// Services: 78 MiB resident instead of 72; no Service: 22 instead of 13).
/// The `no_thp` feature keeps mimalloc from asking for them; this keeps a
/// system that gives them unasked (`enabled` = `always`) from doing so.
fn small_pages_only() {
    // SAFETY: sets a flag of this process; no memory is touched. Failing
    // (a kernel without it) leaves the pages as they were.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> ExitCode {
    small_pages_only();
    purge_freed_memory_at_once();
    zerohop_telemetry::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zerohop: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => {
            let identity = Election::identity_of(&args.node);
            let settings = Settings {
                node: args.node,
                cgroup: args.cgroup,
                source: args.source,
                pin_dir: args.pin_dir,
                bypass: matches!(args.bypass, OnOff::On),
                poll_interval: Duration::from_millis(args.poll_ms.max(10)),
                health_addr: args.health_addr.0,
                waypoints: args.waypoints,
                waypoint_mark: args.waypoint_mark,
                waypoint_config: args.waypoint_config,
                require_reference_grants: args.require_reference_grants,
                allow_other_programs: args.allow_other_programs,
                terminate: args.terminate_stale,
                lease: Duration::from_millis(args.lease_ms),
                capacity: zerohop_planner::Capacity {
                    frontends: args.max_frontends as usize,
                    endpoint_slots: args.max_endpoint_slots as usize,
                },
                status_lease: Election {
                    namespace: args.status_lease.0,
                    name: args.status_lease.1,
                    identity,
                    duration: Duration::from_secs(args.status_lease_seconds),
                },
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let outcome = runtime.block_on(agent::run(settings));
            // A read of the source that hangs (a stuck mount) must not hold
            // up the exit: the programs are detached by now.
            runtime.shutdown_timeout(Duration::from_secs(1));
            outcome
        }
        Command::Bypass { state, pin_dir } => {
            datapath::set_bypass(&pin_dir, matches!(state, OnOff::On))
        }
        Command::Inspect {
            what,
            pin_dir,
            output,
        } => match what {
            Inspect::Services => inspect::print_services(&inspect::services(&pin_dir)?, output),
            Inspect::Backends => inspect::print_backends(&inspect::backends(&pin_dir)?, output),
            Inspect::Sockets => inspect::print_sockets(&inspect::sockets(&pin_dir)?, output),
            Inspect::Reverse => inspect::print_reverse(&inspect::reverse(&pin_dir)?, output),
            Inspect::Stats { watch: true } => inspect::watch_counters(&pin_dir, output),
            Inspect::Stats { watch: false } => {
                inspect::print_counters(&inspect::counters(&pin_dir, None)?, output)
            }
        },
        Command::Probe { pin_dir, output } => {
            let pin_dir = pin_dir.unwrap_or_else(|| {
                PathBuf::from(format!("/sys/fs/bpf/zerohop-probe-{}", std::process::id()))
            });
            probe::print_report(&probe::probe(&pin_dir)?, output)
        }
        Command::Cleanup { pin_dir } => datapath::remove_pins(&pin_dir),
    }
}
