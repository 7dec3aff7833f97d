//! The kernel side of L7 Services, end to end: a Service with an HTTPRoute
//! (given to a real `zerohop agent` as a manifest, with `--waypoint` pointing
//! at a pod of the node) has its connections sent to that waypoint, which
//! learns the ClusterIP:port dialled with getsockopt(SO_ORIGINAL_DST), as
//! Envoy does. `zh-origdst` plays the waypoint (and the marked client).
//! Privileged; run for real, never skipped (`cargo xtask test`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use zerohop_tests::{
    require_root, service_yaml, slice_yaml, Agent, Cluster, Endpoint, Family, Manifests, Pod,
    PodProcess, Testpod,
};

/// Port of every Service.
const SERVICE_PORT: u16 = 80;
/// Port the backends listen on (the Services' targetPort).
const TARGET_PORT: u16 = 8080;
/// Port the waypoint listens on.
const WAYPOINT_PORT: u16 = 15001;
/// The SO_MARK the waypoint puts on its own sockets.
const WAYPOINT_MARK: u32 = 0x5a17;
/// ClusterIP number of the Service with an HTTPRoute.
const ROUTED: u8 = 30;
/// ClusterIP number of the Service without routes.
const PLAIN: u8 = 31;
const WAIT: Duration = Duration::from_secs(15);

fn testpod() -> Testpod {
    Testpod::at(env!("CARGO_BIN_EXE_zh-testpod"))
}

fn origdst_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zh-origdst"))
}

/// ClusterIP number `n` of a family: 10.96.0.n or fd00:96::n.
fn frontend(family: Family, n: u8) -> SocketAddr {
    let ip = match family {
        Family::V4 => IpAddr::from([10, 96, 0, n]),
        Family::V6 => IpAddr::from([0xfd00, 0x96, 0, 0, 0, 0, 0, u16::from(n)]),
    };
    SocketAddr::new(ip, SERVICE_PORT)
}

/// An HTTPRoute attached to Service `service` (the GAMMA pattern), sending
/// everything back to that Service.
fn route_yaml(service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  \
         name: {service}-route\n  namespace: default\nspec:\n  parentRefs:\n  \
         - group: \"\"\n    kind: Service\n    name: {service}\n    port: {SERVICE_PORT}\n  \
         rules:\n  - backendRefs:\n    - name: {service}\n      port: {SERVICE_PORT}\n"
    )
}

/// What `zh-origdst --connect` reports.
#[derive(Debug, Deserialize)]
struct Dialled {
    /// The first line the server sent.
    line: Option<String>,
    /// What the client's getpeername() returned.
    peer: Option<SocketAddr>,
    ok: bool,
    error: Option<String>,
}

/// What the waypoint reports per accepted connection.
#[derive(Debug, Deserialize)]
struct Accepted {
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    origdst: Option<SocketAddr>,
    errno: Option<i32>,
}

/// Node 1 runs a client, the waypoint and a backend; node 2 a second
/// backend. Service `routed` (with an HTTPRoute) and `plain` (without) both
/// have both backends, in both families. Only node 1 runs an agent: every
/// client is there. Fields drop in order: processes and the agent stop
/// before the cluster goes.
struct World {
    waypoint: PodProcess,
    servers: Vec<PodProcess>,
    agent: Agent,
    _manifests: Manifests,
    /// Holds the waypoint input the agent writes (never the shared default path).
    _scratch: Manifests,
    pods: BTreeMap<&'static str, Pod>,
    _cluster: Cluster,
}

impl World {
    fn new() -> Result<World> {
        require_root();
        let cluster = Cluster::new(2)?;
        let mut pods = BTreeMap::new();
        for (name, node) in [("client", 1), ("waypoint", 1), ("near", 1), ("far", 2)] {
            pods.insert(name, cluster.add_pod(node, name)?);
        }
        let mut servers = Vec::new();
        for name in ["near", "far"] {
            servers.push(testpod().server(&pods[name], name, TARGET_PORT)?);
        }
        let mut waypoint = pods["waypoint"].spawn(
            origdst_bin(),
            [
                "--listen",
                &format!("0.0.0.0:{WAYPOINT_PORT},[::]:{WAYPOINT_PORT}"),
            ],
        )?;
        waypoint.wait_for_line("READY", WAIT)?;

        let manifests = Manifests::new()?;
        for family in Family::ALL {
            let suffix = match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            };
            let endpoints = [("near", "node1"), ("far", "node2")].map(|(pod, node)| Endpoint {
                ip: pods[pod].ip(family),
                node,
                ready: true,
            });
            for (service, n) in [("routed", ROUTED), ("plain", PLAIN)] {
                let name = format!("{service}-{suffix}");
                let cluster_ip = frontend(family, n).ip();
                manifests.write(
                    &format!("{name}-svc.yaml"),
                    &service_yaml(&name, cluster_ip, SERVICE_PORT, TARGET_PORT, ""),
                )?;
                manifests.write(
                    &format!("{name}-slice.yaml"),
                    &slice_yaml(&name, &format!("{name}-1"), TARGET_PORT, &endpoints),
                )?;
            }
            let routed = format!("routed-{suffix}");
            manifests.write(&format!("{routed}-route.yaml"), &route_yaml(&routed))?;
        }

        let waypoint_pod = &pods["waypoint"];
        let waypoints = Family::ALL
            .map(|family| SocketAddr::new(waypoint_pod.ip(family), WAYPOINT_PORT).to_string());
        let mark = WAYPOINT_MARK.to_string();
        let scratch = Manifests::new()?;
        let waypoint_config = scratch.dir().join("waypoint.json");
        let agent = Agent::start(
            &cluster,
            1,
            manifests.dir(),
            &[
                "--waypoint",
                &waypoints[0],
                "--waypoint",
                &waypoints[1],
                "--waypoint-mark",
                &mark,
                "--waypoint-config",
                &waypoint_config.display().to_string(),
            ],
        )
        .context("agent of node1")?;
        Ok(World {
            waypoint,
            servers,
            agent,
            _manifests: manifests,
            _scratch: scratch,
            pods,
            _cluster: cluster,
        })
    }

    fn pod(&self, name: &str) -> &Pod {
        &self.pods[name]
    }

    /// `zh-origdst --connect target [--mark mark]` from pod `client`.
    fn dial(&self, target: SocketAddr, mark: Option<u32>) -> Result<Dialled> {
        let mut args = vec!["--connect".to_owned(), target.to_string()];
        if let Some(mark) = mark {
            args.extend(["--mark".to_owned(), mark.to_string()]);
        }
        let finished = self.pod("client").run(origdst_bin(), &args, WAIT * 2)?;
        let last = finished.stdout.last().context("no report")?;
        let dialled: Dialled = serde_json::from_str(last)
            .with_context(|| format!("zh-origdst --connect {target}: {finished:?}"))?;
        ensure!(
            dialled.ok,
            "dialling {target} failed: {}",
            dialled.error.as_deref().unwrap_or("?")
        );
        Ok(dialled)
    }

    /// The next connection the waypoint reports.
    fn accepted(&mut self) -> Result<Accepted> {
        let line = self.waypoint.wait_for_line("{", WAIT)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Fails if the waypoint reports a connection within a short while.
    fn waypoint_saw_nothing(&mut self) -> Result<()> {
        match self.waypoint.read_line_timeout(Duration::from_millis(300)) {
            Ok(Some(line)) => anyhow::bail!("the waypoint got a connection: {line}"),
            Ok(None) => anyhow::bail!("the waypoint exited: {}", self.waypoint.stderr()),
            Err(_) => Ok(()),
        }
    }

    /// Fails if a backend reports a connection within a short while.
    fn backends_saw_nothing(&mut self) -> Result<()> {
        for server in &mut self.servers {
            match server.read_line_timeout(Duration::from_millis(300)) {
                Ok(Some(line)) => anyhow::bail!("a backend got a connection: {line}"),
                Ok(None) => anyhow::bail!("a backend exited: {}", server.stderr()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let counters = self.agent.counters()?;
        counters
            .get(name)
            .copied()
            .with_context(|| format!("no counter {name} in {counters:?}"))
    }
}

/// The waypoint answers `ORIGDST <frontend>` to the client and saw the
/// client's own address on the connection.
fn check_reaches_waypoint(world: &mut World, family: Family) -> Result<()> {
    let target = frontend(family, ROUTED);
    let dialled = world.dial(target, None)?;
    assert_eq!(
        dialled.line.as_deref(),
        Some(format!("ORIGDST {target}").as_str()),
        "the waypoint learns the ClusterIP:port dialled"
    );
    assert_eq!(
        dialled.peer,
        Some(target),
        "the client's getpeername() returns the ClusterIP:port it dialled, not the waypoint"
    );
    let accepted = world.accepted()?;
    assert_eq!(accepted.origdst, Some(target), "{accepted:?}");
    assert_eq!(accepted.errno, None);
    assert_eq!(
        accepted.peer.map(|peer| peer.ip()),
        Some(world.pod("client").ip(family)),
        "no NAT between client and waypoint"
    );
    assert_eq!(
        accepted.local,
        Some(SocketAddr::new(
            world.pod("waypoint").ip(family),
            WAYPOINT_PORT
        ))
    );
    Ok(())
}

/// (a) A client dialling an L7 Service reaches the waypoint, whose
/// SO_ORIGINAL_DST is exactly the ClusterIP:port dialled, with the bypass on
/// (the one line back moves socket-to-socket) and off.
fn l7_connection_reaches_the_waypoint(family: Family) -> Result<()> {
    let mut world = World::new()?;
    let redirected = world.counter("msg_redirected")?;
    check_reaches_waypoint(&mut world, family)?;
    assert_eq!(world.counter("to_waypoint")?, 1);
    assert!(
        world.counter("msg_redirected")? > redirected,
        "client <-> waypoint is bypassed like any same-node connection"
    );

    world.agent.set_bypass(false)?;
    check_reaches_waypoint(&mut world, family)?;
    assert_eq!(world.counter("to_waypoint")?, 2);
    world.backends_saw_nothing()?;
    Ok(())
}

#[test]
fn l7_connection_reaches_the_waypoint_v4() -> Result<()> {
    l7_connection_reaches_the_waypoint(Family::V4)
}

#[test]
fn l7_connection_reaches_the_waypoint_v6() -> Result<()> {
    l7_connection_reaches_the_waypoint(Family::V6)
}

/// (b) A Service without routes goes straight to a backend, without the
/// waypoint.
fn service_without_routes_skips_the_waypoint(family: Family) -> Result<()> {
    let mut world = World::new()?;
    for _ in 0..4 {
        let dialled = world.dial(frontend(family, PLAIN), None)?;
        let line = dialled.line.unwrap_or_default();
        assert!(
            line.starts_with("HELLO near ") || line.starts_with("HELLO far "),
            "a backend greets the client: {line:?}"
        );
    }
    assert_eq!(world.counter("to_waypoint")?, 0);
    assert_eq!(
        world.counter("translated_local")? + world.counter("translated_remote")?,
        4
    );
    world.waypoint_saw_nothing()?;
    Ok(())
}

#[test]
fn service_without_routes_skips_the_waypoint_v4() -> Result<()> {
    service_without_routes_skips_the_waypoint(Family::V4)
}

#[test]
fn service_without_routes_skips_the_waypoint_v6() -> Result<()> {
    service_without_routes_skips_the_waypoint(Family::V6)
}

/// (c) The backends of an L7 Service, local or remote, are never reached
/// straight from a client: every connection lands on the waypoint.
fn l7_backends_are_never_reached_directly(family: Family) -> Result<()> {
    const CONNECTIONS: u64 = 12;
    let mut world = World::new()?;
    let target = frontend(family, ROUTED);
    for _ in 0..CONNECTIONS {
        let dialled = world.dial(target, None)?;
        assert_eq!(
            dialled.line.as_deref(),
            Some(format!("ORIGDST {target}").as_str())
        );
        assert_eq!(world.accepted()?.origdst, Some(target));
    }
    assert_eq!(world.counter("to_waypoint")?, CONNECTIONS);
    assert_eq!(world.counter("translated_local")?, 0);
    assert_eq!(world.counter("translated_remote")?, 0);
    world.backends_saw_nothing()?;
    Ok(())
}

#[test]
fn l7_backends_are_never_reached_directly_v4() -> Result<()> {
    l7_backends_are_never_reached_directly(Family::V4)
}

#[test]
fn l7_backends_are_never_reached_directly_v6() -> Result<()> {
    l7_backends_are_never_reached_directly(Family::V6)
}

/// (d) The waypoint's own sockets (its SO_MARK) get the plain translation to
/// a backend of the L7 Service, and their connections to endpoints on this
/// node dialled by pod IP move socket-to-socket.
fn waypoint_sockets_are_not_sent_to_the_waypoint(family: Family) -> Result<()> {
    let mut world = World::new()?;
    for _ in 0..4 {
        let dialled = world.dial(frontend(family, ROUTED), Some(WAYPOINT_MARK))?;
        let line = dialled.line.unwrap_or_default();
        assert!(
            line.starts_with("HELLO near ") || line.starts_with("HELLO far "),
            "a backend greets the waypoint's socket: {line:?}"
        );
    }
    assert_eq!(world.counter("to_waypoint")?, 0);
    assert_eq!(
        world.counter("translated_local")? + world.counter("translated_remote")?,
        4
    );
    world.waypoint_saw_nothing()?;

    // Any other mark is an ordinary client's.
    let dialled = world.dial(frontend(family, ROUTED), Some(WAYPOINT_MARK + 1))?;
    assert!(
        dialled.line.unwrap_or_default().starts_with("ORIGDST "),
        "another mark is no waypoint's"
    );
    assert_eq!(world.counter("to_waypoint")?, 1);
    world.accepted()?;

    // The waypoint dials endpoints by pod IP: the local one is bypassed.
    let redirected = world.counter("bytes_redirected")?;
    let near = SocketAddr::new(world.pod("near").ip(family), TARGET_PORT);
    let dialled = world.dial(near, Some(WAYPOINT_MARK))?;
    assert!(dialled.line.unwrap_or_default().starts_with("HELLO near "));
    assert!(
        world.counter("bytes_redirected")? > redirected,
        "the greeting moved socket-to-socket"
    );
    // The remote one only passes (the sk_msg fallback), and still works.
    let far = SocketAddr::new(world.pod("far").ip(family), TARGET_PORT);
    let dialled = world.dial(far, Some(WAYPOINT_MARK))?;
    assert!(dialled.line.unwrap_or_default().starts_with("HELLO far "));
    Ok(())
}

#[test]
fn waypoint_sockets_are_not_sent_to_the_waypoint_v4() -> Result<()> {
    waypoint_sockets_are_not_sent_to_the_waypoint(Family::V4)
}

#[test]
fn waypoint_sockets_are_not_sent_to_the_waypoint_v6() -> Result<()> {
    waypoint_sockets_are_not_sent_to_the_waypoint(Family::V6)
}
