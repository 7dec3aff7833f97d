//! Self-tests of the sandbox (privileged, on the real kernel, never skipped):
//! pods reach each other by pod IP and through kube-proxy style ClusterIPs, the
//! test program's checks work, and nothing is left behind afterwards.
//!
//! Run: `cargo test -p zerohop-tests --test sandbox` (as root).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Result};
use zerohop_sandbox::{
    cgroup2_mount, require_root, sweep_stale, Cluster, Family, Pod, PodProcess, Testpod,
};

const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);

/// Two pods `a`, `b` on node 1 and `c` on node 2, `b` and `c` serving on 8080.
struct Fixture {
    // Declared first so they are killed first (the cluster would do it anyway).
    servers: Vec<PodProcess>,
    a: Pod,
    b: Pod,
    c: Pod,
    cluster: Cluster,
}

fn fixture() -> Result<Fixture> {
    require_root();
    let cluster = Cluster::new(2)?;
    let a = cluster.add_pod(1, "a")?;
    let b = cluster.add_pod(1, "b")?;
    let c = cluster.add_pod(2, "c")?;
    let servers = vec![
        Testpod::locate().server(&b, "b", PORT)?,
        Testpod::locate().server(&c, "c", PORT)?,
    ];
    Ok(Fixture {
        servers,
        a,
        b,
        c,
        cluster,
    })
}

fn clusterip(family: Family) -> IpAddr {
    match family {
        Family::V4 => "10.96.0.99".parse().unwrap(),
        Family::V6 => "fd00:96::99".parse().unwrap(),
    }
}

#[test]
fn pods_get_the_planned_addresses() -> Result<()> {
    let f = fixture()?;
    assert_eq!(
        f.a.ips(),
        ["10.244.1.2".parse::<IpAddr>()?, "fd00:244:1::2".parse()?]
    );
    assert_eq!(
        f.b.ips(),
        ["10.244.1.3".parse::<IpAddr>()?, "fd00:244:1::3".parse()?]
    );
    assert_eq!(
        f.c.ips(),
        ["10.244.2.2".parse::<IpAddr>()?, "fd00:244:2::2".parse()?]
    );
    let cgroup = f.cluster.node(1).cgroup_path();
    assert!(cgroup.starts_with(cgroup2_mount()) && cgroup.is_dir());
    // The servers run in their node's cgroup.
    let procs = std::fs::read_to_string(f.cluster.node(2).cgroup_path().join("cgroup.procs"))?;
    assert_eq!(
        procs.split_whitespace().collect::<Vec<_>>(),
        [f.servers[1].pid().to_string()]
    );
    Ok(())
}

/// Same node (a → b) and across nodes (a → c), over IPv4 and IPv6: the data
/// comes back intact and the server sees the client's own pod address.
#[test]
fn pods_reach_each_other_by_pod_ip() -> Result<()> {
    let mut f = fixture()?;
    for family in Family::ALL {
        for (index, server) in [&f.b, &f.c].into_iter().enumerate() {
            let target = SocketAddr::new(server.ip(family), PORT);
            let report = Testpod::locate().echo(&f.a, target, 1 << 20)?;
            ensure!(report.ok, "echo a → {target}: {report:?}");
            assert_eq!(report.server.as_deref(), Some(server.name.as_str()));
            assert_eq!(report.bytes, 1 << 20);
            let seen = report.seen_peer.expect("server's view");
            assert_eq!(
                seen.ip(),
                f.a.ip(family),
                "the server sees the client's pod address"
            );
            assert_eq!(Some(seen), report.local);

            let conn = Testpod::next_conn(&mut f.servers[index], WAIT)?;
            assert_eq!(
                (conn.peer, conn.bytes, conn.end.as_str()),
                (seen, 1 << 20, "eof")
            );
        }
    }
    Ok(())
}

/// A Service ClusterIP (DNAT in the client's node) reaches a backend on the other
/// node, without source NAT.
#[test]
fn clusterip_dnat_reaches_the_backend() -> Result<()> {
    let f = fixture()?;
    for family in Family::ALL {
        f.cluster
            .add_dnat_everywhere(clusterip(family), 80, &[(f.c.ip(family), PORT)])?;
        let report =
            Testpod::locate().echo(&f.a, SocketAddr::new(clusterip(family), 80), 100_000)?;
        ensure!(
            report.ok,
            "echo a → ClusterIP {}: {report:?}",
            clusterip(family)
        );
        assert_eq!(report.server.as_deref(), Some("c"));
        assert_eq!(report.seen_peer.map(|peer| peer.ip()), Some(f.a.ip(family)));
    }
    // Removing the Service removes the path.
    f.cluster
        .remove_dnat_everywhere(clusterip(Family::V4), 80)?;
    let report = Testpod::locate().echo(&f.a, SocketAddr::new(clusterip(Family::V4), 80), 10)?;
    assert!(!report.ok, "no Service, no answer: {report:?}");
    Ok(())
}

/// Two endpoints get about half of the connections each (kube-proxy's random
/// probabilities), over both families.
#[test]
fn clusterip_spreads_over_endpoints() -> Result<()> {
    let f = fixture()?;
    for family in Family::ALL {
        let endpoints = [(f.b.ip(family), PORT), (f.c.ip(family), PORT)];
        f.cluster
            .node(1)
            .add_dnat(clusterip(family), 80, &endpoints)?;
        let report = Testpod::locate().spread(&f.a, SocketAddr::new(clusterip(family), 80), 200)?;
        assert_eq!(report.failed, 0, "{report:?}");
        // Binomial(200, 1/2): below 60 has a probability of about 1e-8.
        for name in ["b", "c"] {
            let count = report.counts.get(name).copied().unwrap_or(0);
            assert!(count >= 60, "{family:?}: uneven spread {report:?}");
        }
    }
    Ok(())
}

#[test]
fn concurrent_connections_reset_and_long_lived_connections() -> Result<()> {
    let mut f = fixture()?;
    for family in Family::ALL {
        let target = SocketAddr::new(f.b.ip(family), PORT);
        let report = Testpod::locate().concurrent(&f.a, target, 20, 256 << 10)?;
        assert_eq!((report.ok, report.failed), (20, 0), "{report:?}");
        for _ in 0..20 {
            assert_eq!(Testpod::next_conn(&mut f.servers[0], WAIT)?.end, "eof");
        }

        let report = Testpod::locate().reset(&f.a, target)?;
        assert!(report.ok, "{report:?}");
        assert_eq!(Testpod::next_conn(&mut f.servers[0], WAIT)?.end, "reset");

        let mut hold = Testpod::locate().hold(&f.a, target)?;
        assert_eq!(
            (hold.greeting.server.as_str(), hold.greeting.seen_peer),
            ("b", hold.greeting.local)
        );
        for line in ["one", "two words", ""] {
            assert_eq!(hold.echo(line)?, line);
        }
        hold.close()?;
        let conn = Testpod::next_conn(&mut f.servers[0], WAIT)?;
        assert_eq!(
            (conn.bytes, conn.end.as_str()),
            ("one\ntwo words\n\n".len() as u64, "eof")
        );
    }
    Ok(())
}

/// Veth counters see a pod's traffic from both sides.
#[test]
fn veth_counters_count_pod_traffic() -> Result<()> {
    let f = fixture()?;
    let (rx0, tx0) = f.a.veth_bytes()?;
    let (host_rx0, host_tx0) = f.a.host_veth_bytes()?;
    let report = Testpod::locate().echo(&f.a, SocketAddr::new(f.b.ipv4.into(), PORT), 1 << 20)?;
    ensure!(report.ok, "{report:?}");
    let (rx1, tx1) = f.a.veth_bytes()?;
    let (host_rx1, host_tx1) = f.a.host_veth_bytes()?;
    assert!(
        tx1 - tx0 >= 1 << 20 && rx1 - rx0 >= 1 << 20,
        "eth0 {rx0}/{tx0} → {rx1}/{tx1}"
    );
    assert!(host_rx1 - host_rx0 >= 1 << 20 && host_tx1 - host_tx0 >= 1 << 20);
    Ok(())
}

#[test]
fn a_single_node_cluster_works() -> Result<()> {
    require_root();
    let cluster = Cluster::new(1)?;
    let a = cluster.add_pod(1, "a")?;
    let b = cluster.add_pod(1, "b")?;
    let _server = Testpod::locate().server(&b, "b", PORT)?;
    for ip in b.ips() {
        let report = Testpod::locate().echo(&a, SocketAddr::new(ip, PORT), 10_000)?;
        ensure!(report.ok, "{report:?}");
    }
    Ok(())
}

fn netns_names() -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

fn leftover_netns(prefix: &str) -> Result<Vec<String>> {
    let names = netns_names()?;
    Ok(names
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect())
}

fn root_nat_rules() -> Result<String> {
    let v4 = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()?;
    let v6 = std::process::Command::new("ip6tables")
        .args(["-t", "nat", "-S"])
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8(v4.stdout)?,
        String::from_utf8(v6.stdout)?
    ))
}

/// After Drop: no namespace, cgroup or pin directory of the run is left, the
/// pod processes are gone (even one whose handle outlives the cluster), and
/// the root namespace's NAT rules are as they were.
#[test]
fn drop_removes_everything() -> Result<()> {
    require_root();
    let nat_before = root_nat_rules()?;
    let cluster = Cluster::new(2)?;
    let prefix = cluster.prefix().to_owned();
    let pod = cluster.add_pod(2, "x")?;
    for family in Family::ALL {
        cluster.add_dnat_everywhere(clusterip(family), 80, &[(pod.ip(family), PORT)])?;
    }
    let server = Testpod::locate().server(&pod, "x", PORT)?;
    let cgroups: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|node| node.cgroup_path().to_owned())
        .collect();
    // Stands for the agent's pins (bpffs allows directories, not plain files).
    let pins = cluster.bpffs_dir(1);
    std::fs::create_dir(&pins)?;
    std::fs::create_dir(pins.join("inner"))?;
    assert!(
        netns_names()?
            .iter()
            .filter(|name| name.starts_with(&prefix))
            .count()
            == 3
    );

    drop(cluster);
    assert_eq!(leftover_netns(&prefix)?, Vec::<String>::new());
    for cgroup in cgroups {
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    assert!(!pins.exists(), "{} is left", pins.display());
    assert!(
        !Path::new(&format!("/proc/{}", server.pid())).exists(),
        "the server still runs"
    );
    assert_eq!(
        root_nat_rules()?,
        nat_before,
        "the root namespace's NAT rules changed"
    );
    Ok(())
}

/// A test that panics half-way leaves nothing either (Drop runs on unwind).
#[test]
fn a_panic_cleans_up_too() -> Result<()> {
    require_root();
    let made = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(|| {
        let cluster = Cluster::new(2).unwrap();
        let pod = cluster.add_pod(1, "p").unwrap();
        let _server = Testpod::locate().server(&pod, "p", PORT).unwrap();
        let cgroup = cluster.node(1).cgroup_path().to_owned();
        *made.lock().unwrap() = Some((cluster.prefix().to_owned(), cgroup));
        panic!("on purpose");
    });
    assert!(outcome.is_err());
    let (prefix, cgroup) = made.into_inner().unwrap().expect("the cluster was made");
    assert_eq!(leftover_netns(&prefix)?, Vec::<String>::new());
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    Ok(())
}

/// A pid that no process has: a child that has been reaped (pids are reused
/// only after the whole pid space went round).
fn dead_pid() -> Result<u32> {
    let mut child = std::process::Command::new("true").spawn()?;
    child.wait()?;
    Ok(child.id())
}

/// Leftovers of a run whose process died are swept; a live run's are kept.
#[test]
fn sweep_removes_only_dead_runs() -> Result<()> {
    require_root();
    let live = Cluster::new(1)?;
    let stale = format!("zh{}x0-n1", dead_pid()?);
    let cgroup = cgroup2_mount().join(&stale);
    let pins = zerohop_sandbox::bpffs_mount()?.join(&stale);
    std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()?;
    std::fs::create_dir(&cgroup)?;
    std::fs::create_dir(&pins)?;

    sweep_stale();
    assert!(!netns_names()?.contains(&stale), "stale namespace kept");
    assert!(
        !cgroup.exists() && !pins.exists(),
        "stale cgroup or pins kept"
    );
    assert!(
        netns_names()?.contains(&live.node(1).netns().to_owned()),
        "a live run was swept"
    );
    assert!(live.node(1).cgroup_path().exists());
    Ok(())
}
