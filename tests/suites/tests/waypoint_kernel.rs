//! The kernel side of L7 Services, end to end: a Service with an HTTPRoute
//! (given to a real `zerohop agent` as a manifest, with `--waypoint` pointing
//! at a pod of the node) has its connections sent to that waypoint, which
//! learns the ClusterIP:port dialled with getsockopt(SO_ORIGINAL_DST), as
//! Envoy does. `zh-origdst` plays the waypoint (and the marked client).
//! Privileged; run for real, never skipped (`cargo xtask test`).

use std::{
    net::SocketAddr,
    ops::{Deref, DerefMut},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use rstest::rstest;
use serde::Deserialize;
use zerohop_sandbox::{program, Family, PodProcess};
use zerohop_tests::{
    world::{frontend, route_to_itself, TARGET_PORT, WAIT},
    World,
};

/// Port the waypoint listens on.
const WAYPOINT_PORT: u16 = 15001;
/// The SO_MARK the waypoint puts on its own sockets.
const WAYPOINT_MARK: u32 = 0x5a17;
/// ClusterIP number of the Service with an HTTPRoute.
const ROUTED: u8 = 30;
/// ClusterIP number of the Service without routes.
const PLAIN: u8 = 31;

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
/// client is there. The waypoint stops before the rest of the world.
struct WithWaypoint {
    waypoint: PodProcess,
    world: World,
}

impl Deref for WithWaypoint {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl DerefMut for WithWaypoint {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl WithWaypoint {
    fn new() -> Result<WithWaypoint> {
        let mut world = World::new(
            &[("client", 1), ("waypoint", 1), ("near", 1), ("far", 2)],
            &["near", "far"],
        )?;
        let mut waypoint = world.pod("waypoint").spawn(
            &program("zh-origdst"),
            [
                "--listen",
                &format!("0.0.0.0:{WAYPOINT_PORT},[::]:{WAYPOINT_PORT}"),
            ],
        )?;
        waypoint.wait_for_line("READY", WAIT)?;

        for family in Family::ALL {
            let suffix = match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            };
            for (service, n) in [("routed", ROUTED), ("plain", PLAIN)] {
                let name = format!("{service}-{suffix}");
                world.service(family, &name, n, &["near", "far"]).write()?;
            }
            let routed = format!("routed-{suffix}");
            world
                .manifests
                .write(&format!("{routed}-route.yaml"), &route_to_itself(&routed))?;
        }

        let waypoint_pod = world.pod("waypoint");
        let waypoints = Family::ALL
            .map(|family| SocketAddr::new(waypoint_pod.ip(family), WAYPOINT_PORT).to_string());
        let mark = WAYPOINT_MARK.to_string();
        let waypoint_config = world.scratch.dir().join("waypoint.json");
        world.start_agent(
            1,
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
        )?;
        Ok(WithWaypoint { waypoint, world })
    }

    /// `zh-origdst --connect target [--mark mark]` from pod `client`.
    fn dial(&self, target: SocketAddr, mark: Option<u32>) -> Result<Dialled> {
        let mut args = vec!["--connect".to_owned(), target.to_string()];
        if let Some(mark) = mark {
            args.extend(["--mark".to_owned(), mark.to_string()]);
        }
        let finished = self
            .world
            .pod("client")
            .run(&program("zh-origdst"), &args, WAIT * 2)?;
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
}

/// The waypoint answers `ORIGDST <frontend>` to the client and saw the
/// client's own address on the connection.
fn check_reaches_waypoint(world: &mut WithWaypoint, family: Family) -> Result<()> {
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
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn l7_connection_reaches_the_waypoint(#[case] family: Family) -> Result<()> {
    let mut world = WithWaypoint::new()?;
    let redirected = world.counter("msg_redirected")?;
    check_reaches_waypoint(&mut world, family)?;
    assert_eq!(world.counter("to_waypoint")?, 1);
    assert!(
        world.counter("msg_redirected")? > redirected,
        "client <-> waypoint is bypassed like any same-node connection"
    );

    world.agents[0].set_bypass(false)?;
    check_reaches_waypoint(&mut world, family)?;
    assert_eq!(world.counter("to_waypoint")?, 2);
    world.backends_saw_nothing()?;
    Ok(())
}

/// (b) A Service without routes goes straight to a backend, without the
/// waypoint.
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn service_without_routes_skips_the_waypoint(#[case] family: Family) -> Result<()> {
    let mut world = WithWaypoint::new()?;
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

/// (c) The backends of an L7 Service, local or remote, are never reached
/// straight from a client: every connection lands on the waypoint.
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn l7_backends_are_never_reached_directly(#[case] family: Family) -> Result<()> {
    const CONNECTIONS: u64 = 12;
    let mut world = WithWaypoint::new()?;
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

/// (d) The waypoint's own sockets (its SO_MARK) get the plain translation to
/// a backend of the L7 Service, and their connections to endpoints on this
/// node dialled by pod IP move socket-to-socket.
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn waypoint_sockets_are_not_sent_to_the_waypoint(#[case] family: Family) -> Result<()> {
    let mut world = WithWaypoint::new()?;
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
