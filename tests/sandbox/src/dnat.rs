//! kube-proxy style Services in a node: iptables DNAT in the node's namespace.
//!
//! This is the cluster's "normal path": whatever zerohop leaves alone (an unknown
//! address, a map miss, zerohop not running at all) must still reach a backend
//! through these rules, and the benchmark compares zerohop against them.
//!
//! Each node keeps its [`Services`]. `Node::add_dnat`, `Node::remove_dnat` and
//! `Node::drop_handshake_acks` call in here with the node's namespace and its
//! index (for messages).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use anyhow::{ensure, Context, Result};

use crate::{addressing::Family, cmd};

/// The Services installed in one node's namespace, each with its own chain.
pub(crate) struct Services {
    installed: Mutex<Vec<Service>>,
    /// Numbers the chains, so that their names are unique per node.
    next_chain: AtomicUsize,
}

impl Default for Services {
    fn default() -> Services {
        Services {
            installed: Mutex::default(),
            next_chain: AtomicUsize::new(1),
        }
    }
}

/// A service installed by [`Services::add`]: its address and its own chain.
struct Service {
    cluster_ip: IpAddr,
    port: u16,
    chain: String,
}

/// The rules sending `cluster_ip:port` to `chain`. Pods' packets arrive through
/// PREROUTING; OUTPUT serves clients in the node's own namespace (host network),
/// as kube-proxy does.
fn jump_rules(op: &str, service: &Service) -> String {
    let Service {
        cluster_ip,
        port,
        chain,
    } = service;
    ["PREROUTING", "OUTPUT"]
        .iter()
        .map(|hook| {
            format!("{op} {hook} -d {cluster_ip} -p tcp -m tcp --dport {port} -j {chain}\n")
        })
        .collect()
}

/// Feeds `rules` (for the nat table) to ip(6)tables-restore inside `netns`,
/// keeping the rules already there.
fn restore(netns: &str, family: Family, rules: &str) -> Result<()> {
    let input = format!("*nat\n{rules}COMMIT\n");
    cmd::netns_exec(
        netns,
        family.iptables_restore(),
        &["--noflush"],
        Some(&input),
    )
    .map(drop)
}

impl Services {
    /// Makes `cluster_ip:port` (TCP) a Service in `netns`, the namespace of node
    /// `node`, load-balanced over `endpoints` like kube-proxy's iptables mode: a
    /// chain per service whose rule `i` of `n` matches with probability
    /// `1/(n-i)`, so that each endpoint gets an even share; the last rule takes
    /// what is left.
    pub(crate) fn add(
        &self,
        netns: &str,
        node: usize,
        cluster_ip: IpAddr,
        port: u16,
        endpoints: &[(IpAddr, u16)],
    ) -> Result<()> {
        let family = Family::of(cluster_ip);
        ensure!(
            !endpoints.is_empty(),
            "service {cluster_ip}:{port} needs at least one endpoint"
        );
        ensure!(
            endpoints.iter().all(|(ip, _)| Family::of(*ip) == family),
            "service {cluster_ip}:{port}: endpoints {endpoints:?} must all be of the ClusterIP's family"
        );
        let mut services = self.installed.lock().unwrap();
        ensure!(
            !services
                .iter()
                .any(|s| s.cluster_ip == cluster_ip && s.port == port),
            "service {cluster_ip}:{port} already exists on node {node}"
        );
        // Chain names are short (28 characters at most) and unique per node.
        let service = Service {
            cluster_ip,
            port,
            chain: format!("ZH-SVC-{}", self.next_chain.fetch_add(1, Ordering::Relaxed)),
        };
        let chain = &service.chain;
        let mut rules = format!(":{chain} - [0:0]\n");
        rules += &jump_rules("-A", &service);
        for (i, &endpoint) in endpoints.iter().enumerate() {
            let left = endpoints.len() - i;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            // SocketAddr writes `[v6]:port`, the form --to-destination wants.
            let to = SocketAddr::from(endpoint);
            rules += &format!("-A {chain} -p tcp {pick}-j DNAT --to-destination {to}\n");
        }
        restore(netns, family, &rules)
            .with_context(|| format!("cannot add service {cluster_ip}:{port} on node {node}"))?;
        services.push(service);
        Ok(())
    }

    /// Removes the Service `cluster_ip:port` added by [`Services::add`] from
    /// `netns`, the namespace of node `node`.
    pub(crate) fn remove(
        &self,
        netns: &str,
        node: usize,
        cluster_ip: IpAddr,
        port: u16,
    ) -> Result<()> {
        let mut services = self.installed.lock().unwrap();
        let at = services
            .iter()
            .position(|s| s.cluster_ip == cluster_ip && s.port == port)
            .with_context(|| format!("no service {cluster_ip}:{port} on node {node}"))?;
        let service = &services[at];
        let rules = format!(
            "{}-F {chain}\n-X {chain}\n",
            jump_rules("-D", service),
            chain = service.chain
        );
        restore(netns, Family::of(cluster_ip), &rules)
            .with_context(|| format!("cannot remove service {cluster_ip}:{port} on node {node}"))?;
        services.remove(at);
        Ok(())
    }
}

/// Drops, with `probability`, the ACK that completes the handshake of IPv4
/// connections to pod port `port` on their way through `netns`, the namespace
/// of node `node`. (conntrack counts the SYN as the first packet of the
/// original direction, the ACK as the second.)
pub(crate) fn drop_handshake_acks(
    netns: &str,
    node: usize,
    port: u16,
    probability: f64,
) -> Result<()> {
    // The connbytes match turns the namespace's conntrack accounting on
    // when its rule is added.
    let (port, probability) = (port.to_string(), format!("{probability:.4}"));
    let mut rule = vec!["-I", "FORWARD", "-p", "tcp", "--dport", &port];
    if probability != "1.0000" {
        rule.extend([
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
        ]);
    }
    rule.extend([
        "-m",
        "connbytes",
        "--connbytes",
        "2:2",
        "--connbytes-dir",
        "original",
        "--connbytes-mode",
        "packets",
        "-j",
        "DROP",
    ]);
    cmd::netns_exec(netns, "iptables", &rule, None)
        .map(drop)
        .with_context(|| format!("cannot drop handshake ACKs on node {node}"))
}
