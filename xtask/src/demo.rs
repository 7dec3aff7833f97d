//! `cargo xtask demo`: the fast path at work in a sandboxed two-node cluster.
//!
//! node1 runs a client pod, `local-echo`, the two versions of the L7 Service
//! `web`, the node's waypoint and a DNS server (dnsmasq); node2 runs
//! `remote-echo`. One agent per node reads deploy/examples/. The client
//! calls every Service; the demo shows, per call, which pod answered, how
//! many bytes crossed the client's veth, and what the kernel counters say,
//! then sends HTTP requests to the L7 Service and shows where its route sent
//! them, and asks the DNS Service with dig. Everything is removed at the
//! end, also on failure.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use zerohop_sandbox::{require_root, Agent, Cluster, Family, Pod, Testpod};

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
    // Read by zerohop_sandbox::Agent; set before any thread starts.
    std::env::set_var("ZEROHOP_BIN", &binaries.zerohop);
    let testpod = Testpod::at(&binaries.testpod);
    let examples = crate::workspace_root().join("deploy/examples");

    println!("== building a sandboxed cluster: 2 nodes, 7 pods");
    let cluster = Cluster::new(2)?;
    // Pods get addresses in creation order; the example manifests expect
    // local-echo at 10.244.1.2 and remote-echo at 10.244.2.2.
    let local_echo = cluster.add_pod(1, "local-echo")?;
    let client = cluster.add_pod(1, "client")?;
    let web_v1 = cluster.add_pod(1, "web-v1")?;
    let web_v2 = cluster.add_pod(1, "web-v2")?;
    let waypoint = cluster.add_pod(1, "waypoint")?;
    let dns = cluster.add_pod(1, "dns")?;
    let remote_echo = cluster.add_pod(2, "remote-echo")?;
    ensure!(
        local_echo.ip(Family::V4) == IpAddr::from([10, 244, 1, 2])
            && web_v1.ip(Family::V4) == IpAddr::from([10, 244, 1, 4])
            && web_v2.ip(Family::V4) == IpAddr::from([10, 244, 1, 5])
            && dns.ip(Family::V4) == IpAddr::from([10, 244, 1, 7])
            && remote_echo.ip(Family::V4) == IpAddr::from([10, 244, 2, 2]),
        "pod addresses differ from deploy/examples"
    );
    let _dns_server = dns.spawn(
        Path::new("dnsmasq"),
        [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--interface=eth0",
            "--port=5353",
            "--host-record=echo.demo.zerohop,10.96.0.10,fd00:96::10",
        ],
    )?;
    let mut web_servers = Vec::new();
    for (pod, name) in [(&web_v1, "web-v1"), (&web_v2, "web-v2")] {
        let mut server = pod.spawn(&binaries.http, ["server", "--name", name, "--port", "8080"])?;
        server.wait_for_line("READY", Duration::from_secs(10))?;
        web_servers.push(server);
    }
    let _servers = [
        testpod.server(&local_echo, "local-echo", 8080)?,
        testpod.server(&remote_echo, "remote-echo", 8080)?,
    ];
    for pod in [
        &local_echo,
        &client,
        &web_v1,
        &web_v2,
        &waypoint,
        &dns,
        &remote_echo,
    ] {
        println!(
            "   {:<12} node{}  {}  {}",
            pod.name, pod.node, pod.ipv4, pod.ipv6
        );
    }

    let waypoint_addr = SocketAddr::new(waypoint.ip(Family::V4), 15001);
    let waypoint_config = WaypointConfig::new();
    let waypoint_flags = [
        format!("--waypoint={waypoint_addr}"),
        format!("--waypoint-config={}", waypoint_config.0.display()),
    ];
    println!("== starting zerohop agent on node1 and node2 (--source dir:deploy/examples)");
    println!("   node1's waypoint: zerohop-waypoint in pod waypoint, {waypoint_addr}");
    let agents = [
        Agent::start(
            &cluster,
            1,
            &examples,
            &[&waypoint_flags[0], &waypoint_flags[1]],
        )?,
        Agent::start(&cluster, 2, &examples, &[])?,
    ];
    let waypoint_process = waypoint.spawn(
        &binaries.waypoint,
        [
            "--listen",
            &waypoint_addr.to_string(),
            "--config",
            &waypoint_config.0.display().to_string(),
            "--poll-ms",
            "100",
        ],
    )?;

    println!("\n== what the kernel does on node1 (zerohop inspect services)\n");
    let pin_dir = agents[0].pin_dir().display().to_string();
    let zerohop = binaries.zerohop.display().to_string();
    let services =
        crate::command_output(&zerohop, &["inspect", "services", "--pin-dir", &pin_dir])?;
    print!("{services}");

    println!(
        "\n== client (node1) echoes {} MiB through each Service\n",
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

    println!("\n== client (node1) sends HTTP requests to the L7 Service web (10.96.0.30:80)\n");
    println!("{:<38} {:>10} {:>10}", "REQUESTS", "WEB-V1", "WEB-V2");
    let before = agents[0].counters()?;
    for (what, path, count) in [
        ("100 x GET /", "/", "100"),
        ("10 x GET /v2/hello", "/v2/hello", "10"),
    ] {
        let report = http_get(&binaries.http, &client, "10.96.0.30:80", path, count)?;
        let backends = &report["backends"];
        println!(
            "{what:<38} {:>10} {:>10}",
            backends["web-v1"].as_u64().unwrap_or(0),
            backends["web-v2"].as_u64().unwrap_or(0)
        );
    }
    let after = agents[0].counters()?;
    println!(
        "\nThe route splits / 75/25 and sends /v2 to web-v2. The {} connection(s) went\n\
         to the waypoint (to_waypoint), which applied the route; the client never\n\
         connected to a web pod itself.",
        after["to_waypoint"] - before.get("to_waypoint").copied().unwrap_or(0)
    );

    println!("\n== client (node1) asks the DNS Service (10.96.0.53:53/UDP) with dig\n");
    let before = agents[0].counters()?;
    let answer = dig(&client, "echo.demo.zerohop")?;
    let after = agents[0].counters()?;
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0);
    println!("   $ dig @10.96.0.53 echo.demo.zerohop A echo.demo.zerohop AAAA +short");
    for line in &answer {
        println!("   {line}");
    }
    println!(
        "\nThe queries went straight to dnsmasq in pod dns (translated_local +{}: dig\n\
         connects a UDP socket per query), and the answers came back from\n\
         10.96.0.53:53 (replies_restored +{}), the address dig asked: resolvers drop\n\
         answers from any other.",
        delta("translated_local"),
        delta("replies_restored")
    );

    println!("\n== node1 kernel counters (zerohop inspect stats)");
    let counters: BTreeMap<String, u64> = agents[0].counters().context("reading counters")?;
    for (name, value) in &counters {
        println!("   {name:<22} {value:>12}");
    }

    println!("\n== stopping the agents and removing the cluster");
    drop(waypoint_process);
    drop(web_servers);
    drop(agents);
    drop(cluster);
    crate::leftovers_check()
}

/// `zh-http get` from `pod`: its JSON report.
/// `dig @10.96.0.53 <name>` in `pod` for its A and AAAA records, waiting
/// for the DNS server to come up.
fn dig(pod: &Pod, name: &str) -> Result<Vec<String>> {
    let args = [
        "@10.96.0.53",
        name,
        "A",
        name,
        "AAAA",
        "+short",
        "+tries=1",
        "+time=1",
    ];
    for _attempt in 0..20 {
        let finished = pod.run(Path::new("dig"), args, Duration::from_secs(10))?;
        let answers: Vec<String> = finished
            .stdout
            .into_iter()
            .filter(|line| !line.is_empty() && !line.starts_with(';'))
            .collect();
        if answers.len() == 2 {
            return Ok(answers);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("dig {name}: no answer from 10.96.0.53")
}

fn http_get(
    http: &Path,
    pod: &Pod,
    target: &str,
    path: &str,
    count: &str,
) -> Result<serde_json::Value> {
    let args = ["get", "--target", target, "--path", path, "--count", count];
    // The waypoint may still be reading its first config.
    for _ in 0..50 {
        let finished = pod.run(http, args, Duration::from_secs(20))?;
        let line = finished.stdout.last().cloned().unwrap_or_default();
        let report: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("zh-http get: {line:?} {}", finished.stderr))?;
        if report["backends"]
            .as_object()
            .is_some_and(|b| !b.is_empty())
        {
            return Ok(report);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the L7 Service web never answered through the waypoint")
}

/// The waypoint's input file, removed at the end.
struct WaypointConfig(PathBuf);

impl WaypointConfig {
    fn new() -> WaypointConfig {
        // Named like the sandbox's other paths, for the sweep of dead runs.
        let name = format!("zh{}x0-demo-waypoint.json", std::process::id());
        WaypointConfig(std::env::temp_dir().join(name))
    }
}

impl Drop for WaypointConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
