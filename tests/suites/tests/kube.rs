//! The agent's `--source kube` end to end: the real kube-rs client against an
//! in-process API server speaking list/watch, the real agent and kernel
//! programs in a sandboxed cluster. Privileged; run for real.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    ops::Deref,
    path::PathBuf,
    thread::sleep,
    time::Duration,
};

use anyhow::Result;
use serde_json::{json, Value};
use zerohop_fake_apiserver::ApiServer;
use zerohop_sandbox::{inspect, Agent, AgentSource, Pod};
use zerohop_tests::{world::TARGET_PORT, World};

const CLUSTER_IP: &str = "10.96.0.10";
/// Time for a change to reach the maps: a watch event, a plan, the writes.
const SETTLE: Duration = Duration::from_secs(1);

fn service(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                 "ports": [{"name": "http", "port": 80, "targetPort": TARGET_PORT, "protocol": "TCP"}]}
    })
}

fn slice(service: &str, backend: &Pod) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.ipv4.to_string()], "nodeName": "node1",
                       "conditions": {"ready": true}}]
    })
}

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": labels}})
}

/// Pods `client`, `a` and `b` on node 1 (`a` and `b` serve), an API server,
/// and an agent of node 1 reading it once started.
struct KubeWorld {
    world: World,
    api: ApiServer,
}

impl Deref for KubeWorld {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl KubeWorld {
    fn new() -> Result<KubeWorld> {
        Ok(KubeWorld {
            world: World::new(&[("client", 1), ("a", 1), ("b", 1)], &["a", "b"])?,
            api: ApiServer::start()?,
        })
    }

    fn kubeconfig(&self) -> Result<PathBuf> {
        let kubeconfig = self.scratch.dir().join("kubeconfig");
        self.api.write_kubeconfig(&kubeconfig)?;
        Ok(kubeconfig)
    }

    fn start_agent(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig()?;
        self.world
            .start_agent_with(1, AgentSource::Kube(&kubeconfig), &[])
    }

    fn agent(&mut self) -> &mut Agent {
        self.world.agents.first_mut().expect("agent started")
    }

    /// Which servers answer 40 connections to the ClusterIP.
    fn answered_by(&self) -> Result<BTreeMap<String, u64>> {
        let target = SocketAddr::new(CLUSTER_IP.parse::<IpAddr>()?, 80);
        self.spread("client", target, 40)
    }

    fn frontends(&mut self) -> Result<usize> {
        let pin_dir = self.agent().pin_dir().to_owned();
        let services: Vec<Value> = serde_json::from_str(&inspect("services", &pin_dir)?)?;
        Ok(services.len())
    }

    fn translated(&mut self) -> Result<u64> {
        Ok(self.agent().counters()?["translated_local"])
    }
}

fn only(name: &str) -> BTreeMap<String, u64> {
    BTreeMap::from([(name.to_owned(), 40)])
}

#[test]
fn the_kube_source_keeps_the_maps_exact() -> Result<()> {
    let mut world = KubeWorld::new()?;
    world.api.apply(namespace(json!({})));
    world.api.apply(service("web", json!({})));
    world.api.apply(slice("web", world.pod("a")));
    world.start_agent()?;
    world.agent().wait_for_log("attached", SETTLE)?;
    assert_eq!(world.answered_by()?, only("a"), "created Service and slice");
    assert_eq!(
        world.translated()?,
        40,
        "translated, with no DNAT rule to fall back on"
    );

    world.api.apply(slice("web", world.pod("b")));
    sleep(SETTLE);
    assert_eq!(world.answered_by()?, only("b"), "updated slice");

    // A lost watch: the agent re-lists, and the maps stay in place meanwhile.
    world.api.expire_watches();
    assert_eq!(world.frontends()?, 1);
    world.api.apply(slice("web", world.pod("a")));
    sleep(SETTLE * 2);
    assert_eq!(world.answered_by()?, only("a"), "converged after 410 Gone");

    // An API server restart.
    world.api.restart();
    world.api.apply(slice("web", world.pod("b")));
    sleep(SETTLE * 3);
    assert_eq!(world.answered_by()?, only("b"), "converged after a restart");
    assert_eq!(world.frontends()?, 1);

    // A malformed Service is reported by name; the rest keeps working.
    let mut broken = service("broken", json!({}));
    broken["spec"]["ports"] = json!("eighty");
    broken["spec"]["clusterIP"] = json!("10.96.0.11");
    world.api.apply(broken);
    world
        .agent()
        .wait_for_log("Service default/broken", SETTLE * 3)?;
    assert_eq!(world.answered_by()?, only("b"));

    // Opt-outs: the Service annotation, then the Namespace label.
    world
        .api
        .apply(service("web", json!({"zerohop.io/fast-path": "off"})));
    sleep(SETTLE);
    assert_eq!(world.frontends()?, 0, "annotated Service left alone");
    world.api.apply(service("web", json!({})));
    sleep(SETTLE);
    assert_eq!(world.frontends()?, 1);
    world
        .api
        .apply(namespace(json!({"zerohop.io/fast-path": "off"})));
    sleep(SETTLE);
    assert_eq!(world.frontends()?, 0, "labelled namespace left alone");
    world.api.apply(namespace(json!({})));
    sleep(SETTLE);
    assert_eq!(world.frontends()?, 1);

    // A deleted Service leaves no map entry behind.
    world.api.delete("Service", Some("default"), "web");
    sleep(SETTLE);
    assert_eq!(world.frontends()?, 0);
    let pin_dir = world.agent().pin_dir().to_owned();
    assert_eq!(inspect("backends", &pin_dir)?.trim(), "[]");
    Ok(())
}

fn route(name: &str, rule: Value) -> Value {
    route_of_kind("HTTPRoute", name, rule)
}

fn route_of_kind(kind: &str, name: &str, rule: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": "default", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [rule]}
    })
}

/// Polls `done` until it holds or `deadline` passes (the caller then asserts).
fn wait_until(deadline: std::time::Instant, mut done: impl FnMut() -> bool) {
    while !done() && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(100));
    }
}

/// Our (zerohop's) conditions on a route, as `type → (status, reason)`.
fn our_conditions(api: &ApiServer, kind: &str, name: &str) -> BTreeMap<String, (String, String)> {
    let route = api.get(kind, Some("default"), name).unwrap_or_default();
    let parents = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    parents
        .iter()
        .filter(|parent| parent["controllerName"] == "zerohop.io/waypoint")
        .flat_map(|parent| parent["conditions"].as_array().cloned().unwrap_or_default())
        .map(|condition| {
            let text = |key: &str| condition[key].as_str().unwrap_or_default().to_owned();
            (text("type"), (text("status"), text("reason")))
        })
        .collect()
}

#[test]
fn routes_get_their_parent_status_and_bad_ones_are_reported() -> Result<()> {
    let mut world = KubeWorld::new()?;
    world.api.apply(namespace(json!({})));
    world.api.apply(service("web", json!({})));
    world.api.apply(slice("web", world.pod("a")));
    let backend = |namespace: &str| json!({"name": "web", "namespace": namespace, "port": 80});
    world
        .api
        .apply(route("good", json!({"backendRefs": [backend("default")]})));
    world.api.apply(route(
        "unknown-filter",
        json!({"filters": [{"type": "Teleport"}], "backendRefs": [backend("default")]}),
    ));
    world.api.apply(route(
        "missing-backend",
        json!({"backendRefs": [backend("elsewhere")]}),
    ));
    // A GRPCRoute on the same Service, younger than the HTTPRoutes there:
    // the two kinds are never merged, and the older kind holds the Service.
    let mut grpc_route = route_of_kind(
        "GRPCRoute",
        "grpc",
        json!({"backendRefs": [backend("default")]}),
    );
    grpc_route["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
    world.api.apply(grpc_route);
    world.api.apply(route(
        "bad-regex",
        json!({"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}],
               "backendRefs": [backend("default")]}),
    ));
    // A route of a Gateway is someone else's: no status from zerohop.
    let mut gateway_route = route("gateway-only", json!({}));
    gateway_route["spec"]["parentRefs"] = json!([{"name": "a-gateway"}]);
    world.api.apply(gateway_route);
    world.start_agent()?;

    let expected = [
        (
            "HTTPRoute",
            "good",
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
        ),
        (
            "GRPCRoute",
            "grpc",
            ("False", "Conflicted"),
            ("True", "ResolvedRefs"),
        ),
        (
            "HTTPRoute",
            "unknown-filter",
            ("False", "UnsupportedValue"),
            ("True", "ResolvedRefs"),
        ),
        (
            "HTTPRoute",
            "missing-backend",
            ("True", "Accepted"),
            ("False", "BackendNotFound"),
        ),
        (
            "HTTPRoute",
            "bad-regex",
            ("False", "UnsupportedValue"),
            ("True", "ResolvedRefs"),
        ),
    ];
    let deadline = std::time::Instant::now() + SETTLE * 10;
    for (kind, name, accepted, resolved) in expected {
        let want = BTreeMap::from([
            (
                "Accepted".to_owned(),
                (accepted.0.to_owned(), accepted.1.to_owned()),
            ),
            (
                "ResolvedRefs".to_owned(),
                (resolved.0.to_owned(), resolved.1.to_owned()),
            ),
        ]);
        wait_until(deadline, || our_conditions(&world.api, kind, name) == want);
        assert_eq!(
            our_conditions(&world.api, kind, name),
            want,
            "status of {kind} {name}"
        );
    }
    assert!(our_conditions(&world.api, "HTTPRoute", "gateway-only").is_empty());
    for name in ["unknown-filter", "missing-backend", "bad-regex"] {
        world
            .agent()
            .wait_for_log(&format!("HTTPRoute default/{name}"), SETTLE)?;
    }
    // Written once: the same view again writes nothing.
    let written = status_writes(&world.api);
    world.api.apply(slice("web", world.pod("b")));
    sleep(SETTLE * 2);
    assert_eq!(
        status_writes(&world.api),
        written,
        "no write when nothing changed"
    );
    Ok(())
}

/// The route status writes the API server received.
fn status_writes(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|line| line.starts_with("PATCH /apis/gateway.networking.k8s.io/"))
        .count()
}

/// The route's `resourceVersion`: it changes with every write that the API
/// server took (a write with a stale precondition is refused, 409, and
/// changes nothing).
fn route_version(api: &ApiServer, name: &str) -> Option<String> {
    let route = api.get("HTTPRoute", Some("default"), name)?;
    route["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
}

/// The holder of the status Lease.
fn status_writer(api: &ApiServer) -> Option<String> {
    let lease = api.get("Lease", Some("zerohop-system"), "zerohop-route-status")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[test]
fn one_agent_of_the_cluster_writes_route_status() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(3);
    let world = KubeWorld::new()?;
    world.api.apply(namespace(json!({})));
    world.api.apply(service("web", json!({})));
    world.api.apply(slice("web", world.pod("a")));
    let backend = json!({"name": "web", "port": 80});
    world
        .api
        .apply(route("r", json!({"backendRefs": [backend]})));
    let kubeconfig = world.kubeconfig()?;
    let lease = ["--status-lease-seconds", "3"];
    let mut agents = BTreeMap::new();
    for node in [1, 2] {
        let agent =
            Agent::start_with(&world.cluster, node, AgentSource::Kube(&kubeconfig), &lease)?;
        agents.insert(zerohop_sandbox::node_name(node), agent);
    }
    let accepted = |api: &ApiServer| {
        our_conditions(api, "HTTPRoute", "r")
            .get("Accepted")
            .cloned()
    };
    let deadline = std::time::Instant::now() + SETTLE * 10;
    wait_until(deadline, || accepted(&world.api).is_some());
    assert_eq!(
        accepted(&world.api),
        Some(("True".into(), "Accepted".into()))
    );
    let holder = status_writer(&world.api).expect("the Lease has a holder");
    let (writer, other) = {
        let node = holder.split('_').next().unwrap_or_default().to_owned();
        let other = agents.keys().find(|name| **name != node).cloned().unwrap();
        (node, other)
    };
    assert!(agents.contains_key(&writer), "holder {holder}");
    assert_eq!(status_writes(&world.api), 1, "one write");

    // The writer stopped (SIGSTOP): the other agent does not write the
    // route's new status until the Lease ran out, then it does.
    agents[&writer].signal(libc::SIGSTOP)?;
    let stopped = std::time::Instant::now();
    world.api.apply(route(
        "r",
        json!({"filters": [{"type": "Teleport"}], "backendRefs": [backend]}),
    ));
    let rejected =
        |api: &ApiServer| accepted(api) == Some(("False".into(), "UnsupportedValue".into()));
    sleep(LEASE / 2);
    assert!(
        !rejected(&world.api),
        "written by an agent that does not hold the Lease"
    );
    wait_until(stopped + LEASE + SETTLE * 5, || rejected(&world.api));
    assert!(rejected(&world.api), "written once the Lease ran out");
    assert!(stopped.elapsed() >= LEASE - LEASE * 2 / 15);
    let holder = status_writer(&world.api).unwrap_or_default();
    assert!(holder.starts_with(&format!("{other}_")), "holder {holder}");
    assert_eq!(status_writes(&world.api), 2);
    let written = route_version(&world.api, "r");

    // The first writer comes back and follows; the new one stops (SIGTERM)
    // and releases the Lease: the first takes it back at once, not a
    // Lease later. Coming back, it may still act on the route as it was
    // before its stop (its watch catches up after): such a write carries
    // that older resourceVersion and is refused, so the route's status
    // stays as written.
    agents[&writer].signal(libc::SIGCONT)?;
    let released = std::time::Instant::now();
    agents.get_mut(&other).unwrap().stop()?;
    wait_until(released + LEASE, || {
        status_writer(&world.api).is_some_and(|h| h.starts_with(&format!("{writer}_")))
    });
    let holder = status_writer(&world.api).unwrap_or_default();
    assert!(holder.starts_with(&format!("{writer}_")), "holder {holder}");
    assert!(released.elapsed() < LEASE, "took {:?}", released.elapsed());
    assert_eq!(
        route_version(&world.api, "r"),
        written,
        "nothing new written"
    );
    assert!(rejected(&world.api), "the status stays as written");
    Ok(())
}

#[test]
fn a_cluster_without_the_gateway_api_crds_is_served_all_the_same() -> Result<()> {
    let mut world = KubeWorld::new()?;
    world.api.set_served("httproutes", false);
    world.api.set_served("referencegrants", false);
    world.api.apply(namespace(json!({})));
    world.api.apply(service("web", json!({})));
    world.api.apply(slice("web", world.pod("a")));
    world.start_agent()?;
    assert_eq!(world.answered_by()?, only("a"), "synced without routes");
    world
        .agent()
        .wait_for_log("not served (CRD not installed?)", SETTLE)?;
    // Installed later: the watcher's retries pick the routes up.
    world.api.set_served("httproutes", true);
    world.api.set_served("referencegrants", true);
    world.api.apply(route(
        "later",
        json!({"backendRefs": [{"name": "web", "port": 80}]}),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    wait_until(deadline, || {
        !our_conditions(&world.api, "HTTPRoute", "later").is_empty()
    });
    assert!(
        !our_conditions(&world.api, "HTTPRoute", "later").is_empty(),
        "route status written once served"
    );
    Ok(())
}
