//! L7 Services end to end: a Service with an HTTPRoute is sent by the kernel
//! to the node's waypoint (`zerohop-waypoint`, in a pod of node 1), which
//! applies the route. Real kernel programs, a real agent, real processes in
//! the sandboxed cluster's pods. Privileged; run for real (`cargo xtask test`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    ops::Deref,
    path::Path,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use zerohop_sandbox::{inspect, node_name, pod_yaml, program, waypoint_binary, Family, PodProcess};
use zerohop_tests::{
    promtool_check,
    world::{self, route_to_itself, TARGET_PORT},
    World,
};

const WAYPOINT_PORT: u16 = 15001;
/// Longer than other suites wait: requests cross the waypoint.
const WAIT: Duration = Duration::from_secs(20);

/// Service number `n` (IPv4: the suite's pods are IPv4 clients).
fn frontend(n: u8) -> SocketAddr {
    world::frontend(Family::V4, n)
}

/// ClusterIP numbers of the Services.
const WEB: u8 = 30;
const V1: u8 = 31;
const V2: u8 = 32;
const MIRROR: u8 = 33;
const SLOW: u8 = 34;
const PLAIN: u8 = 35;
const GUARDED: u8 = 36;
const UNROUTED: u8 = 37;
const GRPC: u8 = 38;
const H2C: u8 = 39;
const OPAQUE: u8 = 40;
const TLS: u8 = 41;
const GREETER: u8 = 42;
const GRPC_B: u8 = 43;
const GRPC_C: u8 = 44;

/// The producer route of Service `web`: one rule per feature under test.
const WEB_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: v1, port: 80, weight: 80}, {name: v2, port: 80, weight: 20}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pick}, headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pick}, queryParams: [{name: version, value: v2}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pick}, method: POST}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pick}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: by-route}], add: [{name: x-added, value: yes}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-response, value: by-route}], remove: [x-backend]}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /internal}}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 80}}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {backendRequest: 300ms}
    backendRefs: [{name: slow, port: 80}]
"#;

/// A consumer route: clients in namespace team-a get v2 for everything. It
/// sends to another namespace without a ReferenceGrant: mesh routes need
/// none (GEP-1294).
const TEAM_A_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-for-team-a, namespace: team-a}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: default, port: 80}]
  rules:
  - backendRefs: [{name: v2, namespace: default, port: 80}]
"#;

/// Bad routes: `guarded` keeps one valid rule whose backend Service does
/// not exist; every rule of `unrouted`'s only route is invalid, so that
/// route is not accepted.
const BAD_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing-backend, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: guarded}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /elsewhere}}]
    backendRefs: [{name: v1, namespace: elsewhere, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: teleport, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: unrouted}]
  rules:
  - filters: [{type: Teleport}]
    backendRefs: [{name: v1, port: 80}]
"#;

/// The route of Service `grpc`: its calls get a header the server reports.
const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /zh.Echo/}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-routed, value: "yes"}]}
    backendRefs: [{name: grpc, port: 80}]
"#;

/// A GRPCRoute on Service `grpc`, younger than [`GRPC_ROUTE`]: the most
/// specific rule first, a weighted split, and a backend that is missing.
const GRPC_GRPCROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-methods, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 80}]
  rules:
  - matches: [{method: {service: zh.Echo}}]
    backendRefs: [{name: grpc, port: 80, weight: 80}, {name: grpc-b, port: 80, weight: 20}]
  - matches: [{method: {service: zh.Echo, method: Unary}, headers: [{name: x-canary, value: "1"}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-routed, value: canary}]}
    backendRefs: [{name: grpc-c, port: 80}]
  - matches: [{method: {type: RegularExpression, service: "zh\\.Ech.", method: "F.*"}}]
    backendRefs: [{name: grpc-c, port: 80}]
  - matches: [{method: {service: zh.Broken}}]
    backendRefs: [{name: missing, port: 80}]
"#;

/// [`route_to_itself`] for each Service named, in one file.
fn routes_to_themselves(services: &[&str]) -> String {
    services
        .iter()
        .map(|service| route_to_itself(service))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `python3 zh-grpc.py ARGS` (Debian's python3, which has grpcio).
fn zh_grpc(args: &[&str]) -> (PathBuf, Vec<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads/zh-grpc.py");
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    (PathBuf::from("/usr/bin/python3"), all)
}

/// The answer summary `zh-http get` prints.
#[derive(Debug, serde::Deserialize)]
struct GetReport {
    statuses: BTreeMap<String, u32>,
    backends: BTreeMap<String, u32>,
    last: Value,
    /// Why the requests stopped early, if they did.
    #[serde(default)]
    error: Option<String>,
}

impl GetReport {
    fn only_status(&self) -> Option<u16> {
        match self.statuses.keys().collect::<Vec<_>>()[..] {
            [status] => status.parse().ok(),
            _ => None,
        }
    }

    fn last_header(&self, name: &str) -> Option<&str> {
        self.last["headers"][name].as_str()
    }

    /// What the backend received, from its JSON answer.
    fn seen(&self) -> &Value {
        &self.last["body"]
    }
}

/// Pods on node 1: clients in three namespaces, the waypoint, and the
/// backends of the Services; the agent of node 1 with its waypoint.
struct L7World {
    waypoint: Option<PodProcess>,
    /// The backends' `zh-http` servers, by pod name.
    servers: BTreeMap<String, PodProcess>,
    world: World,
}

impl Deref for L7World {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

const BACKENDS: [&str; 6] = ["webpod", "v1", "v2", "mirror", "slow", "plain"];
/// Pods that serve only in the tests that start their server.
const OTHER_BACKENDS: [&str; 5] = ["grpc", "grpc-b", "grpc-c", "tls", "greeter"];
const CLIENTS: [(&str, &str); 3] = [
    ("client", "default"),
    ("client-a", "team-a"),
    ("client-b", "team-b"),
];

impl L7World {
    fn new() -> Result<L7World> {
        let pods: Vec<(&str, usize)> = BACKENDS
            .iter()
            .chain(&OTHER_BACKENDS)
            .chain(CLIENTS.iter().map(|(name, _)| name))
            .chain(&["waypoint"])
            .map(|&name| (name, 1))
            .collect();
        let mut world = L7World {
            waypoint: None,
            servers: BTreeMap::new(),
            world: World::new(&pods, &[])?,
        };
        for name in BACKENDS {
            let delay = if name == "slow" { "2000" } else { "0" };
            let args = [
                "server",
                "--name",
                name,
                "--port",
                &TARGET_PORT.to_string(),
                "--delay-ms",
                delay,
            ];
            let mut server = world.pod(name).spawn(&program("zh-http"), args)?;
            server.wait_for_line("READY", WAIT)?;
            world.servers.insert(name.to_string(), server);
        }
        for (service, n, backend) in [
            ("web", WEB, "webpod"),
            ("v1", V1, "v1"),
            ("v2", V2, "v2"),
            ("mirror", MIRROR, "mirror"),
            ("slow", SLOW, "slow"),
            ("plain", PLAIN, "plain"),
            ("guarded", GUARDED, "plain"),
            ("unrouted", UNROUTED, "plain"),
        ] {
            world.service(Family::V4, service, n, &[backend]).write()?;
        }
        for (name, namespace) in CLIENTS.iter().chain(&[("waypoint", "zerohop-system")]) {
            let ip = world.pod(name).ip(Family::V4);
            world.manifests.write(
                &format!("{name}-pod.yaml"),
                &pod_yaml(name, namespace, &node_name(1), &[ip]),
            )?;
        }
        world.manifests.write("web-route.yaml", WEB_ROUTE)?;
        world.start_agent()?;
        world.start_waypoint()?;
        Ok(world)
    }

    fn waypoint_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod("waypoint").ip(Family::V4), WAYPOINT_PORT)
    }

    fn waypoint_config(&self) -> PathBuf {
        self.scratch.dir().join("waypoint.json")
    }

    fn start_agent(&mut self) -> Result<()> {
        let waypoint = format!("--waypoint={}", self.waypoint_addr());
        let config = format!("--waypoint-config={}", self.waypoint_config().display());
        self.world.start_agent(1, &[&waypoint, &config])
    }

    fn start_waypoint(&mut self) -> Result<()> {
        let listen = self.waypoint_addr().to_string();
        let config = self.waypoint_config().display().to_string();
        let args = ["--listen", &listen, "--config", &config, "--poll-ms", "100"];
        let waypoint = self.pod("waypoint").spawn(&waypoint_binary(), args)?;
        self.waypoint = Some(waypoint);
        // Ready once a request through it is routed by the route of `web`.
        self.eventually("the waypoint routes /pick to v1", || {
            Ok(self
                .get("client", WEB, &["--path", "/pick"])?
                .backends
                .contains_key("v1"))
        })
    }

    /// `zh-http get` from pod `client` to the frontend of Service number `n`.
    fn get(&self, client: &str, n: u8, args: &[&str]) -> Result<GetReport> {
        let target = frontend(n).to_string();
        let mut all = vec!["get", "--target", &target];
        all.extend_from_slice(args);
        let finished = self.pod(client).run(&program("zh-http"), &all, WAIT)?;
        let line = finished.stdout.last().cloned().unwrap_or_default();
        serde_json::from_str(&line)
            .with_context(|| format!("zh-http get {all:?}: {line:?}; stderr {}", finished.stderr))
    }

    /// [`World::eventually`], with the waypoint's log when it fails.
    fn eventually(&self, what: &str, check: impl FnMut() -> Result<bool>) -> Result<()> {
        self.world.eventually(what, WAIT, check).with_context(|| {
            let waypoint = self.waypoint.as_ref().map(PodProcess::stderr);
            format!("waypoint log:\n{}", waypoint.unwrap_or_default())
        })
    }

    /// The requests the backend of pod `name` printed since the last call:
    /// up to `wait_for` of them, waiting at most 3 s for them.
    fn requests_seen(&mut self, name: &str, wait_for: usize) -> Result<Vec<Value>> {
        let server = self.servers.get_mut(name).context("no such server")?;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while seen.len() < wait_for {
            let left = deadline.saturating_duration_since(Instant::now());
            // An error here is the timeout: no more lines came.
            let Ok(Some(line)) = server.read_line_timeout(left) else {
                break;
            };
            if let Ok(request) = serde_json::from_str::<Value>(&line) {
                seen.push(request);
            }
        }
        Ok(seen)
    }
}

#[test]
fn an_80_20_split_holds_within_5_points_over_1000_requests() -> Result<()> {
    let world = L7World::new()?;
    let report = world.get("client", WEB, &["--path", "/split", "--count", "1000"])?;
    ensure!(report.statuses.get("200") == Some(&1000), "{report:?}");
    let v1 = report.backends.get("v1").copied().unwrap_or(0);
    let v2 = report.backends.get("v2").copied().unwrap_or(0);
    ensure!(v1 + v2 == 1000, "{report:?}");
    ensure!(
        (750..=850).contains(&v1),
        "v1 got {v1} of 1000, expected 800 ± 50"
    );
    Ok(())
}

#[test]
fn path_header_query_and_method_rules_pick_their_backend() -> Result<()> {
    let world = L7World::new()?;
    let cases: [(&[&str], &str); 5] = [
        (&["--path", "/exact"], "v2"),
        (&["--path", "/pick/x", "--header", "x-version:v2"], "v2"),
        (&["--path", "/pick?version=v2"], "v2"),
        (&["--path", "/pick", "--method", "POST"], "v2"),
        (&["--path", "/pick/x", "--header", "x-version:v3"], "v1"),
    ];
    for (args, expected) in cases {
        let report = world.get("client", WEB, args)?;
        ensure!(
            report.backends.keys().collect::<Vec<_>>() == [expected],
            "{args:?} should reach {expected}: {report:?}"
        );
    }
    let unmatched = world.get("client", WEB, &["--path", "/nothing-here"])?;
    ensure!(unmatched.only_status() == Some(404), "{unmatched:?}");
    // An Exact rule does not match a longer path.
    let longer = world.get("client", WEB, &["--path", "/exact/more"])?;
    ensure!(longer.only_status() == Some(404), "{longer:?}");
    Ok(())
}

#[test]
fn header_modifiers_are_seen_by_the_backend_and_the_client() -> Result<()> {
    let world = L7World::new()?;
    let report = world.get(
        "client",
        WEB,
        &[
            "--path",
            "/headers",
            "--header",
            "x-drop:1",
            "--header",
            "x-set:by-client",
        ],
    )?;
    ensure!(report.only_status() == Some(200), "{report:?}");
    let seen = &report.seen()["headers"];
    ensure!(seen["x-set"] == "by-route", "set: {seen}");
    ensure!(seen["x-added"] == "yes", "add: {seen}");
    ensure!(seen.get("x-drop").is_none(), "remove: {seen}");
    ensure!(
        report.last_header("x-response") == Some("by-route"),
        "{report:?}"
    );
    ensure!(report.last_header("x-backend").is_none(), "{report:?}");
    Ok(())
}

#[test]
fn a_redirect_answers_with_its_status_and_location() -> Result<()> {
    let world = L7World::new()?;
    let report = world.get(
        "client",
        WEB,
        &["--path", "/old/page?q=1", "--host", "web.default"],
    )?;
    ensure!(report.only_status() == Some(301), "{report:?}");
    ensure!(
        report.last_header("location") == Some("http://web.default/new/page?q=1"),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn a_rewrite_changes_the_path_the_backend_sees() -> Result<()> {
    let world = L7World::new()?;
    let report = world.get("client", WEB, &["--path", "/api/users?id=7"])?;
    ensure!(report.only_status() == Some(200), "{report:?}");
    ensure!(
        report.seen()["path"] == "/internal/users?id=7",
        "{report:?}"
    );
    Ok(())
}

#[test]
fn a_mirror_gets_a_copy_and_its_answer_is_ignored() -> Result<()> {
    let mut world = L7World::new()?;
    let report = world.get("client", WEB, &["--path", "/mirror/x", "--count", "3"])?;
    ensure!(report.backends.get("v1") == Some(&3), "{report:?}");
    ensure!(!report.backends.contains_key("mirror"), "{report:?}");
    let copies = world.requests_seen("mirror", 3)?;
    ensure!(copies.len() == 3, "the mirror saw {copies:?}");
    ensure!(
        copies.iter().all(|copy| copy["path"] == "/mirror/x"),
        "{copies:?}"
    );
    Ok(())
}

#[test]
fn a_backend_request_timeout_answers_504() -> Result<()> {
    let world = L7World::new()?;
    let started = Instant::now();
    let report = world.get("client", WEB, &["--path", "/slow"])?;
    ensure!(report.only_status() == Some(504), "{report:?}");
    ensure!(
        started.elapsed() < Duration::from_millis(1900),
        "answered before the backend would have"
    );
    Ok(())
}

#[test]
fn an_l7_service_is_reached_only_through_the_waypoint_and_others_stay_l4() -> Result<()> {
    let mut world = L7World::new()?;
    let to_waypoint = world.counter("to_waypoint")?;

    // A Service without routes: straight to its backend, from the client's address.
    let plain = world.get("client", PLAIN, &["--path", "/"])?;
    ensure!(
        plain.backends.keys().collect::<Vec<_>>() == ["plain"],
        "{plain:?}"
    );
    let client_ip = world.pod("client").ip(Family::V4).to_string();
    let peer = plain.seen()["peer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        peer.starts_with(&client_ip),
        "plain saw {peer}, not the client"
    );
    ensure!(
        world.counter("to_waypoint")? == to_waypoint,
        "no waypoint for plain"
    );

    // `zerohop inspect services` tells the two apart.
    let pin_dir = world.agents.first().context("agent")?.pin_dir().to_owned();
    let rows: Vec<Value> = serde_json::from_str(&inspect("services", &pin_dir)?)?;
    let row = |n: u8| {
        rows.iter()
            .find(|row| row["frontend"] == format!("{}/TCP", frontend(n)))
            .cloned()
            .unwrap_or_default()
    };
    ensure!(row(WEB)["action"] == "waypoint", "{rows:?}");
    ensure!(
        row(WEB)["waypoint"] == world.waypoint_addr().to_string(),
        "{rows:?}"
    );
    ensure!(row(PLAIN)["action"] == "translate", "{rows:?}");
    ensure!(row(PLAIN)["waypoint"].is_null(), "{rows:?}");

    // The L7 Service: its requests come from the waypoint.
    let web = world.get("client", WEB, &["--path", "/pick", "--count", "5"])?;
    ensure!(web.backends.get("v1") == Some(&5), "{web:?}");
    let waypoint_ip = world.waypoint_addr().ip().to_string();
    let peer = web.seen()["peer"].as_str().unwrap_or_default().to_string();
    ensure!(
        peer.starts_with(&waypoint_ip),
        "v1 saw {peer}, not the waypoint"
    );
    ensure!(world.counter("to_waypoint")? > to_waypoint, "counted");

    // Without the waypoint, the L7 Service is unreachable: never its backends directly.
    if let Some(mut waypoint) = world.waypoint.take() {
        waypoint.kill();
    }
    let finished = world.pod("client").run(
        &program("zh-http"),
        [
            "get",
            "--target",
            &frontend(WEB).to_string(),
            "--path",
            "/pick",
        ],
        WAIT,
    )?;
    ensure!(!finished.status.success(), "reached {:?}", finished.stdout);
    ensure!(
        world.requests_seen("webpod", 1)?.is_empty(),
        "the Service's own backend was reached directly"
    );
    Ok(())
}

#[test]
fn a_consumer_route_applies_to_its_namespace_only() -> Result<()> {
    let world = L7World::new()?;
    world.manifests.write("team-a-route.yaml", TEAM_A_ROUTE)?;
    world.eventually("team-a gets the consumer route", || {
        let report = world.get("client-a", WEB, &["--path", "/pick"])?;
        Ok(report.backends.keys().collect::<Vec<_>>() == ["v2"])
    })?;
    for client in ["client-b", "client"] {
        let report = world.get(client, WEB, &["--path", "/pick", "--count", "5"])?;
        ensure!(
            report.backends.get("v1") == Some(&5),
            "{client}: {report:?}"
        );
    }
    Ok(())
}

#[test]
fn h2c_and_keep_alive_connections_are_served_and_survive_route_changes() -> Result<()> {
    let world = L7World::new()?;
    let url = format!("http://{}/pick", frontend(WEB));
    let finished = world.pod("client").run(
        &PathBuf::from("curl"),
        [
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "\\n%{http_version} %{http_code}",
            &url,
        ],
        WAIT,
    )?;
    // The backend's JSON, then curl's line; the request went upstream in
    // the version the client spoke.
    let backend: Value = serde_json::from_str(finished.stdout.first().map_or("", String::as_str))
        .unwrap_or_default();
    ensure!(
        finished.stdout.last().map(|line| line.trim()) == Some("2 200")
            && backend["version"] == "HTTP/2.0",
        "curl h2c: {:?} {}",
        finished.stdout,
        finished.stderr
    );

    // One keep-alive connection across a route change: its later requests
    // follow the new route, and the connection stays open.
    let target = frontend(WEB).to_string();
    let slow_client = world.pod("client").spawn(
        &program("zh-http"),
        [
            "get",
            "--target",
            &target,
            "--path",
            "/pick",
            "--count",
            "2",
            "--pause-ms",
            "3000",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    world.manifests.write(
        "web-route.yaml",
        &WEB_ROUTE.replace(
            "- matches: [{path: {type: PathPrefix, value: /pick}}]\n    backendRefs: [{name: v1, port: 80}]",
            "- matches: [{path: {type: PathPrefix, value: /pick}}]\n    backendRefs: [{name: v2, port: 80}]",
        ),
    )?;
    let finished = slow_client.finish(WAIT)?;
    let line = finished.stdout.last().cloned().unwrap_or_default();
    let report: GetReport = serde_json::from_str(&line).with_context(|| format!("{finished:?}"))?;
    ensure!(
        report.backends.get("v1") == Some(&1) && report.backends.get("v2") == Some(&1),
        "the second request follows the new route: {report:?}"
    );
    let connections: Value = serde_json::from_str(&line)?;
    ensure!(connections["connections"] == 1, "one connection: {line}");
    Ok(())
}

/// gRPC through an L7 Service, grpcio at both ends: unary, server-streaming
/// and bidirectional calls, and a failing one, with grpc-status, details
/// and trailing metadata intact. The route's header proves the waypoint
/// carried them (over h2c on both of its sides).
#[test]
fn grpc_calls_pass_an_l7_service_with_status_and_trailers() -> Result<()> {
    let world = L7World::new()?;
    let port = TARGET_PORT.to_string();
    let (python, args) = zh_grpc(&["server", "--name", "g1", "--port", &port]);
    let mut server = world.pod("grpc").spawn(&python, &args)?;
    server.wait_for_line("READY", WAIT)?;
    world.service(Family::V4, "grpc", GRPC, &["grpc"]).write()?;
    world.manifests.write("grpc-route.yaml", GRPC_ROUTE)?;

    let target = frontend(GRPC).to_string();
    let (python, args) = zh_grpc(&["call", "--target", &target]);
    let mut report = Value::Null;
    world.eventually("gRPC calls are routed by the waypoint", || {
        let finished = world.pod("client").run(&python, &args, WAIT)?;
        let line = finished.stdout.last().cloned().unwrap_or_default();
        report = serde_json::from_str(&line).unwrap_or(Value::String(line));
        Ok(report["unary"]["trailing"]["x-seen-x-routed"] == "yes")
    })?;
    let expected = serde_json::json!({
        "unary": {
            "reply": "g1:hello",
            "trailing": {"x-backend": "g1", "x-seen-x-client": "zh-grpc", "x-seen-x-routed": "yes"},
        },
        "stream": ["g1:0", "g1:1", "g1:2", "g1:3", "g1:4"],
        "bidi": ["g1:a", "g1:bb", "g1:ccc"],
        "fail": {"code": "NOT_FOUND", "details": "no such thing", "trailing": {"x-backend": "g1"}},
    });
    // A trailers-only answer (a call that fails before any message) has its
    // status in the response head, to which the waypoint adds the Date a
    // forwarded response must carry (RFC 9110, 6.6.1): grpcio reports it as
    // trailing metadata.
    if let Some(trailing) = report["fail"]["trailing"].as_object_mut() {
        trailing.remove("date");
    }
    ensure!(report == expected, "zh-grpc call: {report}");
    drop(server);
    Ok(())
}

/// What `zh-grpc.py calls` prints.
#[derive(Debug, serde::Deserialize)]
struct CallsReport {
    codes: BTreeMap<String, u32>,
    backends: BTreeMap<String, u32>,
    trailing: BTreeMap<String, String>,
}

impl L7World {
    /// `count` unary calls of `method` from pod `client` to Service `grpc`.
    fn grpc_calls(&self, method: &str, count: u32, metadata: &[&str]) -> Result<CallsReport> {
        let target = frontend(GRPC).to_string();
        let count_calls = count;
        let count = count.to_string();
        let mut args = vec![
            "calls", "--target", &target, "--method", method, "--count", &count,
        ];
        for pair in metadata {
            args.extend(["--metadata", pair]);
        }
        let (python, args) = zh_grpc(&args);
        // Python's calls are slow in an emulated VM of the kernel matrix:
        // up to 100 ms each there.
        let patience = WAIT + Duration::from_millis(100) * count_calls;
        let finished = self.pod("client").run(&python, &args, patience)?;
        let line = finished.stdout.last().cloned().unwrap_or_default();
        serde_json::from_str(&line)
            .with_context(|| format!("zh-grpc {args:?}: {line:?}; stderr {}", finished.stderr))
    }
}

/// A GRPCRoute on an L7 Service: calls are split by weight (80/20 within 5
/// points over 1,000 calls), matched by service, method (exact and regular
/// expression) and header, with the most specific rule first, edited by a
/// header filter; a missing backend answers UNAVAILABLE, a call no rule
/// matches UNIMPLEMENTED. An older HTTPRoute on the same Service holds it
/// until it is deleted: the two kinds are never merged.
#[test]
fn grpc_routes_split_match_and_edit_calls() -> Result<()> {
    let mut world = L7World::new()?;
    let port = TARGET_PORT.to_string();
    for (pod, name, service, n) in [
        ("grpc", "g1", "grpc", GRPC),
        ("grpc-b", "g2", "grpc-b", GRPC_B),
        ("grpc-c", "g3", "grpc-c", GRPC_C),
    ] {
        let (python, args) = zh_grpc(&["server", "--name", name, "--port", &port]);
        let mut server = world.pod(pod).spawn(&python, &args)?;
        server.wait_for_line("READY", WAIT)?;
        world.servers.insert(pod.to_string(), server);
        world.service(Family::V4, service, n, &[pod]).write()?;
    }
    world.manifests.write("grpc-route.yaml", GRPC_ROUTE)?;
    world
        .manifests
        .write("grpc-grpcroute.yaml", GRPC_GRPCROUTE)?;
    let agent = world.agents.first().context("agent")?;
    world.eventually("the GRPCRoute is reported in conflict", || {
        Ok(agent.log_text().contains("GRPCRoute default/grpc-methods"))
    })?;
    let held = world.grpc_calls("/zh.Echo/Unary", 3, &[])?;
    ensure!(
        held.trailing.get("x-seen-x-routed").map(String::as_str) == Some("yes"),
        "the older HTTPRoute holds the Service: {held:?}"
    );

    world.manifests.remove("grpc-route.yaml")?;
    world.eventually("the GRPCRoute applies once the HTTPRoute is gone", || {
        let report = world.grpc_calls("/zh.Echo/Unary", 1, &["x-canary=1"])?;
        Ok(report.backends.contains_key("g3"))
    })?;
    let canary = world.grpc_calls("/zh.Echo/Unary", 1, &["x-canary=1"])?;
    ensure!(
        canary.trailing.get("x-seen-x-routed").map(String::as_str) == Some("canary"),
        "{canary:?}"
    );

    let split = world.grpc_calls("/zh.Echo/Unary", 1000, &[])?;
    ensure!(split.codes.get("OK") == Some(&1000), "{split:?}");
    let g1 = split.backends.get("g1").copied().unwrap_or(0);
    let g2 = split.backends.get("g2").copied().unwrap_or(0);
    ensure!(
        g1 + g2 == 1000 && (750..=850).contains(&g1),
        "80/20: {split:?}"
    );

    let fail = world.grpc_calls("/zh.Echo/Fail", 5, &[])?;
    ensure!(
        fail.backends.get("g3") == Some(&5) && fail.codes.get("NOT_FOUND") == Some(&5),
        "the regular expression sends Fail to g3: {fail:?}"
    );
    let broken = world.grpc_calls("/zh.Broken/Unary", 3, &[])?;
    ensure!(broken.codes.get("UNAVAILABLE") == Some(&3), "{broken:?}");
    let unrouted = world.grpc_calls("/zh.Other/Unary", 3, &[])?;
    ensure!(
        unrouted.codes.get("UNIMPLEMENTED") == Some(&3),
        "{unrouted:?}"
    );
    Ok(())
}

/// README, "Who the backend sees": a backend that refuses one client, as a
/// NetworkPolicy would, is not reached by that client through an L4
/// Service (the handshake crosses the stack with the client's address),
/// while through an L7 Service the backend sees the waypoint, so the same
/// rule no longer tells that client apart.
#[test]
fn a_backend_policy_sees_the_client_at_l4_and_the_waypoint_at_l7() -> Result<()> {
    let world = L7World::new()?;
    world
        .manifests
        .write("guarded-route.yaml", &route_to_itself("guarded"))?;
    world.eventually("guarded is an L7 Service", || {
        let report = world.get("client", GUARDED, &["--path", "/"])?;
        let peer = report.seen()["peer"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(peer.starts_with(&world.pod("waypoint").ip(Family::V4).to_string()))
    })?;
    let refused = world.pod("client-b").ip(Family::V4).to_string();
    let port = TARGET_PORT.to_string();
    world.pod("plain").exec(
        "iptables",
        &[
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "-s",
            &refused,
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    )?;

    let l4 = world.get("client-b", PLAIN, &["--path", "/"])?;
    ensure!(
        l4.statuses.is_empty() && l4.error.as_deref().is_some_and(|e| e.contains("refused")),
        "the refused client reached its backend at L4: {l4:?}"
    );
    let other = world.get("client", PLAIN, &["--path", "/"])?;
    ensure!(other.only_status() == Some(200), "{other:?}");

    let l7 = world.get("client-b", GUARDED, &["--path", "/"])?;
    ensure!(l7.only_status() == Some(200), "{l7:?}");
    let peer = l7.seen()["peer"].as_str().unwrap_or_default();
    let waypoint = world.pod("waypoint").ip(Family::V4).to_string();
    ensure!(
        peer.starts_with(&waypoint),
        "the backend saw {peer}, not the waypoint"
    );
    Ok(())
}

/// A port's `appProtocol`: `kubernetes.io/h2c` makes an HTTP/1.1 client's
/// requests reach the backend as HTTP/2; one that is not HTTP (`tcp`)
/// keeps the port off the waypoint under a route: its backend sees the
/// client itself.
#[test]
fn app_protocol_sets_the_upstream_version_or_keeps_a_port_l4() -> Result<()> {
    let world = L7World::new()?;
    world
        .service(Family::V4, "h2c", H2C, &["v1"])
        .app_protocol("kubernetes.io/h2c")
        .write()?;
    world
        .service(Family::V4, "opaque", OPAQUE, &["v2"])
        .app_protocol("tcp")
        .write()?;
    world.manifests.write(
        "app-protocol-routes.yaml",
        &routes_to_themselves(&["h2c", "opaque"]),
    )?;
    world.eventually("h2c's requests reach v1 as HTTP/2", || {
        let report = world.get("client", H2C, &[])?;
        Ok(report.seen()["version"] == "HTTP/2.0")
    })?;
    let client_ip = world.pod("client").ip(Family::V4).to_string();
    let opaque = world.get("client", OPAQUE, &[])?;
    let peer = opaque.seen()["peer"].as_str().unwrap_or_default();
    ensure!(
        opaque.backends.contains_key("v2") && peer.starts_with(&client_ip),
        "opaque: {opaque:?}: not straight from the client"
    );
    Ok(())
}

/// Clients that do not speak HTTP to an L7 Service's port pass through the
/// waypoint to its endpoint, byte for byte: the client of a server-first
/// protocol (zh-testpod's server greets first) gets the greeting once the
/// waypoint has waited for its first bytes in vain, then its echo; a TLS
/// client (curl https, openssl s_server) completes its handshake and gets
/// its answer.
#[test]
fn clients_that_do_not_speak_http_pass_through_an_l7_port() -> Result<()> {
    let world = L7World::new()?;
    let dir = world.scratch.dir();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=tls.default", "-days", "1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    ensure!(made.status.success(), "openssl req: {made:?}");
    let port = TARGET_PORT.to_string();
    let mut tls_server = world.pod("tls").spawn(
        Path::new("openssl"),
        [
            "s_server".as_ref(),
            "-accept".as_ref(),
            port.as_ref(),
            "-cert".as_ref(),
            cert.as_os_str(),
            "-key".as_ref(),
            key.as_os_str(),
            "-www".as_ref(),
        ],
    )?;
    tls_server.wait_for_line("ACCEPT", WAIT)?;
    let greeter = world
        .testpod()
        .server(world.pod("greeter"), "greeter", TARGET_PORT)?;
    world.service(Family::V4, "tls", TLS, &["tls"]).write()?;
    world
        .service(Family::V4, "greeter", GREETER, &["greeter"])
        .write()?;
    world.manifests.write(
        "passthrough-routes.yaml",
        &routes_to_themselves(&["tls", "greeter"]),
    )?;

    let waypoint_ip = world.waypoint_addr().ip();
    world.eventually("the greeter's clients pass through the waypoint", || {
        let report = world
            .testpod()
            .echo(world.pod("client"), frontend(GREETER), 100_000)?;
        ensure!(report.ok, "echo: {report:?}");
        Ok(report.seen_peer.map(|peer| peer.ip()) == Some(waypoint_ip))
    })?;
    // Every byte of many connections at once comes back, in order.
    let report = world
        .testpod()
        .concurrent(world.pod("client"), frontend(GREETER), 50, 1 << 20)?;
    ensure!(
        (report.ok, report.failed) == (50, 0),
        "50 echoes of 1 MiB through the pass-through: {report:?}"
    );

    let to_waypoint = world.counter("to_waypoint")?;
    let url = format!("https://{}/", frontend(TLS));
    let finished = world
        .pod("client")
        .run(Path::new("curl"), ["-sSk", &url], WAIT)?;
    ensure!(
        finished.status.success() && finished.stdout.iter().any(|line| line.contains("s_server")),
        "curl https through the waypoint: {finished:?}"
    );
    ensure!(
        world.counter("to_waypoint")? > to_waypoint,
        "the TLS connection went to the waypoint"
    );

    // The waypoint's /metrics counts them, in an exposition promtool takes.
    let url = format!("http://{}:9878/metrics", world.waypoint_addr().ip());
    let finished = world
        .pod("client")
        .run(Path::new("curl"), ["-sS", &url], WAIT)?;
    let metrics = finished.stdout.join("\n") + "\n";
    for reason in ["tls", "silent"] {
        let sample =
            format!("zerohop_waypoint_passthrough_connections_total{{reason=\"{reason}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&sample)?.parse().ok())
            .with_context(|| format!("no {sample} in {metrics}"))?;
        ensure!(count >= 1.0, "{sample}{count}");
    }
    promtool_check(&metrics)?;
    drop((tls_server, greeter));
    Ok(())
}

#[test]
fn bad_routes_are_logged_and_traffic_follows_the_spec() -> Result<()> {
    let world = L7World::new()?;
    world.manifests.write("bad-routes.yaml", BAD_ROUTES)?;
    let agent = world.agents.first().context("agent")?;
    for route in ["missing-backend", "teleport"] {
        let label = format!("HTTPRoute default/{route}");
        world.eventually(&format!("{label} is reported"), || {
            Ok(agent.log_text().contains(&label))
        })?;
    }
    ensure!(
        agent.log_text().contains("does not compile"),
        "{}",
        agent.log_text()
    );

    // A backend that does not exist: its share of requests gets 500.
    world.eventually("/elsewhere answers 500", || {
        Ok(world
            .get("client", GUARDED, &["--path", "/elsewhere"])?
            .only_status()
            == Some(500))
    })?;
    // The rule whose regular expression does not compile matches nothing.
    let dropped = world.get("client", GUARDED, &["--path", "/(unclosed"])?;
    ensure!(dropped.only_status() == Some(404), "{dropped:?}");

    // A route with no valid rule is not accepted: its Service stays L4,
    // straight from the client to the backend.
    let report = world.get("client", UNROUTED, &["--path", "/"])?;
    ensure!(
        report.backends.keys().collect::<Vec<_>>() == ["plain"],
        "{report:?}"
    );
    let client_ip = world.pod("client").ip(Family::V4).to_string();
    let peer = report.seen()["peer"].as_str().unwrap_or_default();
    ensure!(peer.starts_with(&client_ip), "plain saw {peer}: not direct");
    Ok(())
}
