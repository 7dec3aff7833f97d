//! The sandboxed cluster: nodes and pods as network namespaces, cgroups, pins.
//!
//! Layout for a run with prefix `zh<pid>x<n>` (see [`Cluster::new`]):
//!
//! ```text
//!   netns <prefix>-n1                       netns <prefix>-n2
//!   ┌───────────────────────────┐  wire0   ┌──────────────────────────┐
//!   │ 10.0.0.1  fd00:0:0:ffff::1├──veth────┤10.0.0.2 fd00:0:0:ffff::2 │
//!   │ zhp1 ─┐  zhp2 ─┐          │          │ zhp1 ─┐                  │
//!   └───────┼────────┼──────────┘          └───────┼──────────────────┘
//!        eth0     eth0                           eth0
//!   <prefix>-n1-a  <prefix>-n1-b            <prefix>-n2-c   (pod netns)
//!   10.244.1.2     10.244.1.3               10.244.2.2
//! ```
//!
//! Pods are joined to their node by a routed veth (no bridge), so every packet a
//! pod sends crosses its node's IP stack, where the kube-proxy style DNAT rules of
//! [`Node::add_dnat`] apply, exactly as with Calico. Pod processes run in a cgroup
//! per node, to which zerohop's programs attach.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use crate::{
    addressing::{cidr, Family},
    cmd,
    dnat::{self, Services},
    mounts::{bpffs_mount, cgroup2_mount},
    process::{Children, Finished, PodProcess},
};

/// Tells runs of this process apart (the pid tells processes apart).
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Interface joining the nodes, the same name in every node namespace.
const WIRE: &str = "wire0";

/// A sandboxed cluster of 1 or 2 nodes. Dropping it removes everything it made.
pub struct Cluster {
    prefix: String,
    nodes: Vec<Node>,
    bpffs: PathBuf,
    /// Every process started in a pod, killed before the namespaces go.
    children: Arc<Children>,
    /// What Drop removes, recorded as soon as it exists so that a failure half-way
    /// through [`Cluster::new`] or [`Cluster::add_pod`] leaves nothing behind.
    made: Mutex<Made>,
}

#[derive(Default)]
struct Made {
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
}

/// One node: a network namespace routing for its pods, a cgroup for their
/// processes, and a bpffs directory for its agent's pins.
pub struct Node {
    index: usize,
    netns: String,
    cgroup: PathBuf,
    pods: AtomicUsize,
    /// The kube-proxy style Services of [`Node::add_dnat`].
    services: Services,
}

/// A pod: a network namespace with `eth0` routed through its node.
///
/// A plain handle: the [`Cluster`] owns (and removes) the namespace.
#[derive(Clone)]
pub struct Pod {
    pub name: String,
    /// Index of the node (from 1).
    pub node: usize,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Name of the pod's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Name of the host side of the pod's veth, in the node's namespace.
    pub host_veth: String,
    pub(crate) node_netns: String,
    pub(crate) cgroup: PathBuf,
    pub(crate) children: Arc<Children>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.name)
            .field("node", &self.node)
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .field("netns", &self.netns)
            .field("host_veth", &self.host_veth)
            .finish()
    }
}

impl Cluster {
    /// Builds a cluster of `nodes` nodes (1 or 2), after sweeping the leftovers
    /// of earlier runs that crashed.
    ///
    /// Names start with the run prefix `zh<pid>x<n>`: the pid lets
    /// [`sweep_stale`] tell a dead run's leftovers from a live one's.
    pub fn new(nodes: usize) -> Result<Cluster> {
        // Two nodes are one veth pair; more would need a bridge, so far unneeded.
        ensure!(
            (1..=2).contains(&nodes),
            "a sandbox cluster has 1 or 2 nodes, not {nodes}"
        );
        sweep_stale();
        let prefix = run_name();
        let mut cluster = Cluster {
            bpffs: bpffs_mount()?,
            prefix,
            nodes: Vec::new(),
            children: Arc::default(),
            made: Mutex::default(),
        };
        for index in 1..=nodes {
            let node = cluster
                .make_node(index)
                .with_context(|| format!("cannot build node {index}"))?;
            cluster.nodes.push(node);
        }
        cluster.wire().context("cannot wire the nodes")?;
        Ok(cluster)
    }

    /// The run prefix every name of this cluster starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node `index`, counted from 1. Panics when there is no such node.
    pub fn node(&self, index: usize) -> &Node {
        assert!(
            index >= 1 && index <= self.nodes.len(),
            "no node {index} in a {}-node cluster",
            self.nodes.len()
        );
        &self.nodes[index - 1]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The pin directory for node `index`'s agent: under the bpffs mount, unique
    /// to this run. Not created here (the agent creates it); removed on Drop.
    pub fn bpffs_dir(&self, index: usize) -> PathBuf {
        self.bpffs.join(self.node(index).netns())
    }

    fn make_node(&self, index: usize) -> Result<Node> {
        let netns = format!("{}-n{index}", self.prefix);
        self.add_netns(&netns)?;
        // Forwarding makes the namespace a router for its pods; DAD off before any
        // interface appears, or IPv6 addresses stay "tentative" (unusable) ~1 s.
        cmd::netns_exec(
            &netns,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
            None,
        )?;
        cmd::ip(&netns, &["link", "set", "lo", "up"])?;
        let cgroup = cgroup2_mount().join(&netns);
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("cannot create cgroup {}", cgroup.display()))?;
        self.made.lock().unwrap().cgroups.push(cgroup.clone());
        Ok(Node {
            index,
            netns,
            cgroup,
            pods: AtomicUsize::new(0),
            services: Services::default(),
        })
    }

    /// Joins the nodes by a veth pair and routes each node's pod subnet via its
    /// wire address. A single node gets its node address on `lo` instead, as the
    /// source of its ARP requests towards pods (this kernel has no dummy driver).
    fn wire(&self) -> Result<()> {
        if let [a, b] = &self.nodes[..] {
            cmd::ip(
                &a.netns,
                &[
                    "link", "add", WIRE, "type", "veth", "peer", "name", WIRE, "netns", &b.netns,
                ],
            )?;
        }
        // A lone node has no wire: its address goes on `lo`, as a host address.
        let dev = if self.nodes.len() == 1 { "lo" } else { WIRE };
        for node in &self.nodes {
            for family in Family::ALL {
                let (addr, len) = family.node_addr(node.index);
                let len = if dev == "lo" { family.host_len() } else { len };
                let addr = cidr((addr, len));
                cmd::ip(&node.netns, &["addr", "add", &addr, "dev", dev, "nodad"])?;
            }
            cmd::ip(&node.netns, &["link", "set", dev, "up"])?;
        }
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|peer| peer.index != node.index) {
                for family in Family::ALL {
                    let via = family.node_addr(peer.index).0.to_string();
                    let subnet = cidr(family.pod_subnet(peer.index));
                    cmd::ip(
                        &node.netns,
                        &[family.ip_flag(), "route", "add", &subnet, "via", &via],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Adds the pod `name` on node `node`: its namespace, a routed veth with
    /// `eth0` inside, addresses, default routes and the node's routes to it.
    pub fn add_pod(&self, node: usize, name: &str) -> Result<Pod> {
        ensure!(
            !name.is_empty()
                && name.len() <= 40
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "pod name {name:?}: use 1 to 40 letters, digits or '-'"
        );
        let node = self.node(node);
        let k = node.pods.fetch_add(1, Ordering::Relaxed) + 1;
        let pod_netns = format!("{}-{name}", node.netns);
        // Interface names are at most 15 bytes, so the host side is numbered.
        let host_veth = format!("zhp{k}");
        let addr = |family: Family| family.pod_addr(node.index, k);
        let (IpAddr::V4(ipv4), IpAddr::V6(ipv6)) = (addr(Family::V4), addr(Family::V6)) else {
            unreachable!("Family::V4 gives IPv4, V6 gives IPv6")
        };

        self.add_netns(&pod_netns)?;
        cmd::netns_exec(
            &pod_netns,
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
            None,
        )?;
        cmd::ip(&pod_netns, &["link", "set", "lo", "up"])?;
        cmd::ip(
            &node.netns,
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns",
                &pod_netns,
            ],
        )?;
        // fe80::1 on the host side makes it the pod's IPv6 gateway for real (the
        // node answers neighbour solicitations and sends from it).
        cmd::ip(
            &node.netns,
            &["addr", "add", "fe80::1/64", "dev", &host_veth, "nodad"],
        )?;
        cmd::ip(&node.netns, &["link", "set", &host_veth, "up"])?;
        cmd::ip(&pod_netns, &["link", "set", "eth0", "up"])?;
        let host_mac = link_mac(&node.netns, &host_veth)?;
        for family in Family::ALL {
            let pod_addr = addr(family);
            let gateway = family.gateway().to_string();
            let host = cidr((pod_addr, family.host_len()));
            let ip_pod = |args: &[&str]| cmd::ip(&pod_netns, &[&[family.ip_flag()], args].concat());
            ip_pod(&["addr", "add", &host, "dev", "eth0", "nodad"])?;
            ip_pod(&[
                "neigh",
                "add",
                &gateway,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            ip_pod(&[
                "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
            ])?;
            cmd::ip(
                &node.netns,
                &[family.ip_flag(), "route", "add", &host, "dev", &host_veth],
            )?;
        }
        Ok(Pod {
            name: name.to_owned(),
            node: node.index,
            ipv4,
            ipv6,
            netns: pod_netns,
            host_veth,
            node_netns: node.netns.clone(),
            cgroup: node.cgroup.clone(),
            children: self.children.clone(),
        })
    }

    /// [`Node::add_dnat`] on every node, as kube-proxy programs every node.
    pub fn add_dnat_everywhere(
        &self,
        cluster_ip: IpAddr,
        port: u16,
        endpoints: &[(IpAddr, u16)],
    ) -> Result<()> {
        self.nodes
            .iter()
            .try_for_each(|node| node.add_dnat(cluster_ip, port, endpoints))
    }

    /// [`Node::remove_dnat`] on every node.
    pub fn remove_dnat_everywhere(&self, cluster_ip: IpAddr, port: u16) -> Result<()> {
        self.nodes
            .iter()
            .try_for_each(|node| node.remove_dnat(cluster_ip, port))
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        cmd::run("ip", &["netns", "add", name])?;
        self.made.lock().unwrap().netns.push(name.to_owned());
        Ok(())
    }
}

impl Drop for Cluster {
    /// Removes everything, in dependency order: processes (they keep cgroups
    /// busy), namespaces (pods first; their veths vanish with them), cgroups,
    /// pins. Failures are reported, not raised: Drop may run during a panic.
    fn drop(&mut self) {
        self.children.kill_all();
        let made = std::mem::take(
            &mut *self
                .made
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for netns in made.netns.iter().rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", netns]) {
                eprintln!("zerohop-sandbox cleanup: {e:#}");
            }
        }
        for cgroup in &made.cgroups {
            remove_cgroup(cgroup, Duration::from_secs(3));
        }
        for node in &self.nodes {
            remove_pins(&self.bpffs.join(&node.netns));
        }
    }
}

impl Node {
    /// Index of the node, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Name of the node's network namespace (`/run/netns/<netns>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The cgroup v2 directory holding the node's pod processes: attach here.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The node's address on the wire for `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        family.node_addr(self.index).0
    }

    /// Runs `program args…` inside the node's network namespace and returns its
    /// stdout (e.g. `iptables -t nat -L -v -n` to look at rule counters).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        cmd::netns_exec(&self.netns, program, args, None)
    }

    /// Makes `cluster_ip:port` (TCP) a Service in this node, load-balanced over
    /// `endpoints` like kube-proxy's iptables mode: a chain per service whose
    /// rule `i` of `n` matches with probability `1/(n-i)`, so that each endpoint
    /// gets an even share; the last rule takes what is left.
    pub fn add_dnat(
        &self,
        cluster_ip: IpAddr,
        port: u16,
        endpoints: &[(IpAddr, u16)],
    ) -> Result<()> {
        self.services
            .add(&self.netns, self.index, cluster_ip, port, endpoints)
    }

    /// Removes the Service `cluster_ip:port` added by [`Node::add_dnat`].
    pub fn remove_dnat(&self, cluster_ip: IpAddr, port: u16) -> Result<()> {
        self.services
            .remove(&self.netns, self.index, cluster_ip, port)
    }

    /// Drops, with `probability`, the ACK that completes the handshake of
    /// IPv4 connections to pod port `port` on their way through this node.
    /// The accepting end then establishes only when the client's first data
    /// segment arrives, always after the client wrote it: the race of a
    /// client that writes right after connect() with its server's end,
    /// decided the same way every time. (conntrack counts the SYN as the
    /// first packet of the original direction, the ACK as the second.)
    pub fn drop_handshake_acks(&self, port: u16, probability: f64) -> Result<()> {
        dnat::drop_handshake_acks(&self.netns, self.index, port, probability)
    }
}

impl Pod {
    /// The pod's addresses, IPv4 first.
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    /// The pod's address of `family`.
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ipv4.into(),
            Family::V6 => self.ipv6.into(),
        }
    }

    /// `(rx, tx)` byte counters of the pod's `eth0`, as seen inside the pod.
    pub fn veth_bytes(&self) -> Result<(u64, u64)> {
        link_bytes(&self.netns, "eth0")
    }

    /// `(rx, tx)` byte counters of the host side of the pod's veth (the node's
    /// view: its rx is what the pod sent).
    pub fn host_veth_bytes(&self) -> Result<(u64, u64)> {
        link_bytes(&self.node_netns, &self.host_veth)
    }

    /// Runs `program args…` inside the pod's network namespace (not its cgroup)
    /// and returns its stdout; for looking around (`ip`, `ss`), not for workloads.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        cmd::netns_exec(&self.netns, program, args, None)
    }

    /// Starts `program args…` in this pod: in its network namespace and in its
    /// node's cgroup from its very first instruction, so the cgroup's BPF
    /// programs see all of its sockets. stdin and stdout are pipes, stderr is
    /// collected; it gets SIGKILL when this process dies.
    pub fn spawn<I, S>(&self, program: &Path, args: I) -> Result<PodProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.children
            .spawn(&self.name, &self.netns, &self.cgroup, program, args)
    }

    /// Runs `program args…` in this pod to its end (stdin closed at once) and
    /// returns what it printed; fails if it is not done within `timeout`.
    pub fn run<I, S>(&self, program: &Path, args: I, timeout: Duration) -> Result<Finished>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut process = self.spawn(program, args)?;
        process.close_stdin();
        process.finish(timeout)
    }
}

/// One link's details from `ip -j [-s] link show`.
fn link_json(netns: &str, dev: &str) -> Result<serde_json::Value> {
    let out = cmd::ip(netns, &["-j", "-s", "link", "show", "dev", dev])?;
    let mut links: Vec<serde_json::Value> = serde_json::from_str(&out)
        .with_context(|| format!("unexpected `ip -j link` output: {out}"))?;
    ensure!(
        links.len() == 1,
        "expected one link {dev} in {netns}, got: {out}"
    );
    Ok(links.remove(0))
}

fn link_mac(netns: &str, dev: &str) -> Result<String> {
    let link = link_json(netns, dev)?;
    link["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {dev}: {link}"))
}

/// `(rx, tx)` bytes of a link, from the kernel's 64-bit counters.
fn link_bytes(netns: &str, dev: &str) -> Result<(u64, u64)> {
    let link = link_json(netns, dev)?;
    let counter = |dir: &str| {
        link["stats64"][dir]["bytes"]
            .as_u64()
            .with_context(|| format!("no {dir} byte counter for {dev}: {link}"))
    };
    Ok((counter("rx")?, counter("tx")?))
}

/// Removes a cgroup directory, waiting up to `patience` for exiting processes
/// to leave it.
fn remove_cgroup(cgroup: &Path, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                let procs =
                    std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                let procs = procs.split_whitespace().collect::<Vec<_>>().join(" ");
                eprintln!(
                    "zerohop-sandbox cleanup: cannot remove cgroup {}: {e} (processes: {procs})",
                    cgroup.display()
                );
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes a bpffs pin directory of ours: pinned maps and programs are files
/// (unlinking a pin drops its reference; the object lives on while in use).
fn remove_pins(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            eprintln!(
                "zerohop-sandbox cleanup: cannot remove {}: {e}",
                dir.display()
            );
        }
        _ => {}
    }
}

/// A new run name `zh<pid>x<n>`, unique on this machine while this process
/// lives: name whatever a run creates with it (`<name>-…`), so that
/// [`sweep_stale`] and [`stale_leftovers`] know it once the process is gone.
pub fn run_name() -> String {
    format!(
        "zh{}x{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid in a name `zh<pid>x<n>` or `zh<pid>x<n>-…`, if it has that form.
pub fn run_owner(name: &str) -> Option<u32> {
    let run = name.split('-').next()?;
    let (pid, n) = run.strip_prefix("zh")?.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether the process `pid` is gone.
pub fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Entries of `dir` named by runs whose owner's pid `over` says are over.
pub fn run_entries(dir: &Path, over: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            name.to_str().and_then(run_owner).is_some_and(&over)
        })
        .map(|entry| entry.path())
        .collect()
}

/// Names in `dir` that belong to dead runs.
fn stale_entries(dir: &Path) -> Vec<PathBuf> {
    run_entries(dir, process_gone)
}

/// The namespaces, cgroups, pin directories and temporary files of runs
/// whose process is gone: after a test run, anything listed here was left
/// behind.
pub fn stale_leftovers() -> Vec<PathBuf> {
    let mut left = stale_entries(&std::env::temp_dir());
    left.extend(stale_entries(Path::new("/run/netns")));
    left.extend(stale_entries(&cgroup2_mount()));
    if let Ok(bpffs) = bpffs_mount() {
        left.extend(stale_entries(&bpffs));
    }
    left
}

/// Removes the namespaces, cgroups, pin directories and temporary files of
/// earlier runs whose process is gone (crashed or killed before its Drop
/// ran). Live runs, of this process or others, are left alone. Processes are never killed here: a stale
/// cgroup still holding one is reported and left.
pub fn sweep_stale() {
    let mut netns = stale_entries(Path::new("/run/netns"));
    // Pods (`<run>-n1-x`) before their node (`<run>-n1`), like Drop does.
    netns.sort_by_key(|path| std::cmp::Reverse(path.as_os_str().len()));
    for path in netns {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match cmd::run("ip", &["netns", "del", &name]) {
            Ok(_) => eprintln!("zerohop-sandbox sweep: removed stale namespace {name}"),
            Err(e) => eprintln!("zerohop-sandbox sweep: {e:#}"),
        }
    }
    for cgroup in stale_entries(&cgroup2_mount()) {
        // Our processes die with their run (see `Pod::spawn`), at most a moment late.
        remove_cgroup(&cgroup, Duration::from_millis(500));
    }
    if let Ok(bpffs) = bpffs_mount() {
        stale_entries(&bpffs)
            .iter()
            .for_each(|dir| remove_pins(dir));
    }
    for path in stale_entries(&std::env::temp_dir()) {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            eprintln!(
                "zerohop-sandbox sweep: cannot remove {}: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_of_dead_runs_are_leftovers_and_the_sweep_removes_them() {
        // No process ever has a pid above pid_max.
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("zh{}x0-manifests", pid_max + 1));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("svc.yaml"), "kind: Service\n").unwrap();
        assert!(stale_leftovers().contains(&dir));
        sweep_stale();
        assert!(!dir.exists());
        assert!(!stale_leftovers().contains(&dir));
    }

    #[test]
    fn run_names_are_recognised() {
        assert_eq!(run_owner("zh123x0"), Some(123));
        assert_eq!(run_owner("zh123x4-n1"), Some(123));
        assert_eq!(run_owner("zh123x4-n1-client"), Some(123));
        assert_eq!(run_owner("zh123-n1"), None);
        assert_eq!(run_owner("zhx1-n1"), None);
        assert_eq!(run_owner("other"), None);
        assert_eq!(run_owner("zh12ax1"), None);
    }
}
