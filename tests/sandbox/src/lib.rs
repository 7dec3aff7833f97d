//! A sandboxed Kubernetes-like cluster on one machine, for zerohop's privileged
//! integration tests (`tests/suites`), `cargo xtask demo` and the benchmark.
//!
//! [`Cluster::new`] builds nodes as network namespaces joined by a veth "wire",
//! [`Cluster::add_pod`] adds pods as namespaces routed through their node (Calico
//! style), [`Pod::spawn`] runs programs inside a pod and its node's cgroup (where
//! zerohop's programs attach), and [`Node::add_dnat`] makes kube-proxy style
//! Services. The programs pods run are built by `tests/workloads`; [`program`]
//! finds them, and [`Testpod`] drives `zh-testpod`, which serves and checks
//! traffic.
//!
//! Safety on a shared machine: every name starts with a per-run prefix
//! `zh<pid>x<n>`; all addresses live only in the namespaces made here; nothing
//! touches the root namespace's interfaces, routes or iptables, nor the root
//! cgroup; only processes started here are ever killed. Dropping the
//! [`Cluster`] (also on panic) removes everything, and [`sweep_stale`] removes
//! what runs that died before their Drop left behind.

mod addressing;
mod agent;
mod cluster;
mod cmd;
mod dnat;
mod manifests;
mod mounts;
mod process;
mod programs;
mod testpod;

pub use addressing::Family;
pub use agent::{counters, inspect, node_name, Agent, AgentSource};
pub use cluster::{
    process_gone, run_entries, run_name, run_owner, stale_leftovers, sweep_stale, Cluster, Node,
    Pod,
};
pub use manifests::{pod_yaml, service_yaml, slice_yaml, Endpoint, Manifests};
pub use mounts::{bpffs_mount, cgroup2_mount, require_root};
pub use process::{dies_with_this_process, Finished, PodProcess};
pub use programs::{program, waypoint_binary, zerohop_binary};
pub use testpod::{
    ConcurrentReport, EchoReport, Greeting, Hold, ResetReport, RrReport, ServerConn, SpreadReport,
    Testpod,
};
