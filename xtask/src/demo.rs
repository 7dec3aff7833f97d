//! `cargo xtask demo`: the fast path at work in a sandboxed two-node cluster.
//!
//! node1 runs a client pod and `local-echo`; node2 runs `remote-echo`. One
//! agent per node reads deploy/examples/. The client calls both Services;
//! the demo shows, per call, which pod answered, how many bytes crossed the
//! client's veth, and what the kernel counters say. Everything is removed at
//! the end, also on failure.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{ensure, Context, Result};
use zerohop_tests::{require_root, Agent, Cluster, Family, Testpod};

use crate::Binaries;

const PAYLOAD: u64 = 4 << 20;

struct Call {
    what: &'static str,
    target: &'static str,
}

const CALLS: [Call; 3] = [
    Call {
        what: "local-echo (IPv4), backend on node1",
        target: "10.96.0.10:80",
    },
    Call {
        what: "local-echo (IPv6), backend on node1",
        target: "[fd00:96::10]:80",
    },
    Call {
        what: "remote-echo (IPv4), backend on node2",
        target: "10.96.0.20:80",
    },
];

pub fn run(binaries: &Binaries) -> Result<()> {
    require_root();
    // Read by zerohop_tests::Agent; set before any thread starts.
    std::env::set_var("ZEROHOP_BIN", &binaries.zerohop);
    let testpod = Testpod::at(&binaries.testpod);
    let examples = crate::workspace_root().join("deploy/examples");

    println!("== building a sandboxed cluster: 2 nodes, 3 pods");
    let cluster = Cluster::new(2)?;
    // Pods get addresses in creation order; the example manifests expect
    // local-echo at 10.244.1.2 and remote-echo at 10.244.2.2.
    let local_echo = cluster.add_pod(1, "local-echo")?;
    let client = cluster.add_pod(1, "client")?;
    let remote_echo = cluster.add_pod(2, "remote-echo")?;
    ensure!(
        local_echo.ip(Family::V4) == IpAddr::from([10, 244, 1, 2])
            && remote_echo.ip(Family::V4) == IpAddr::from([10, 244, 2, 2]),
        "pod addresses differ from deploy/examples"
    );
    let _servers = [
        testpod.server(&local_echo, "local-echo", 8080)?,
        testpod.server(&remote_echo, "remote-echo", 8080)?,
    ];
    for pod in [&local_echo, &client, &remote_echo] {
        println!(
            "   {:<12} node{}  {}  {}",
            pod.name, pod.node, pod.ipv4, pod.ipv6
        );
    }

    println!("== starting zerohop agent on node1 and node2 (--source dir:deploy/examples)");
    let agents = [
        Agent::start(&cluster, 1, &examples, &[])?,
        Agent::start(&cluster, 2, &examples, &[])?,
    ];

    println!(
        "== client (node1) echoes {} MiB through each Service\n",
        PAYLOAD >> 20
    );
    println!(
        "{:<38} {:<12} {:>14} {:>10} {:>10} {:>16}",
        "SERVICE", "ANSWERED BY", "VETH BYTES", "LOCAL", "REMOTE", "BYTES REDIRECTED"
    );
    for call in &CALLS {
        let target: SocketAddr = call.target.parse()?;
        let (rx, tx) = client.veth_bytes()?;
        let before = agents[0].counters()?;
        let report = testpod.echo(&client, target, PAYLOAD)?;
        ensure!(report.ok, "echo through {} failed: {report:?}", call.target);
        let (rx_after, tx_after) = client.veth_bytes()?;
        let after = agents[0].counters()?;
        let delta = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        println!(
            "{:<38} {:<12} {:>14} {:>10} {:>10} {:>16}",
            call.what,
            report.server.unwrap_or_default(),
            (rx_after - rx) + (tx_after - tx),
            delta("translated_local"),
            delta("translated_remote"),
            delta("bytes_redirected"),
        );
    }
    println!(
        "\nLOCAL/REMOTE: connects translated to an endpoint on this node / another node.\n\
         The local calls moved their bytes socket-to-socket (BYTES REDIRECTED, both\n\
         directions) and left the veth almost idle; the remote call crossed the network."
    );

    println!("\n== node1 kernel counters (zerohop inspect stats)");
    let counters: BTreeMap<String, u64> = agents[0].counters().context("reading counters")?;
    for (name, value) in &counters {
        println!("   {name:<20} {value:>12}");
    }

    println!("\n== stopping the agents and removing the cluster");
    drop(agents);
    drop(cluster);
    crate::leftovers_check()
}
