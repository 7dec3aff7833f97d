//! The agent's HTTPRoute status writer (`zerohop::route_status`) and the
//! election of the one agent that writes (`zerohop::election`), against the
//! in-process API server. No root needed: everything is on 127.0.0.1.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use zerohop::election::{self, Election};
use zerohop::route_status::{self, RouteKind, RouteStatus, RouteStatuses, CONTROLLER_NAME};
use zerohop_fake_apiserver::ApiServer;

mod kube_client;
use kube_client::{client, eventually, within};

const FOREIGN: &str = "example.com/mesh-controller";
const STATUS_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes/";

fn parent_ref() -> Value {
    json!({"group": "", "kind": "Service", "name": "web", "port": 80})
}

fn condition(kind: &str, status: &str, reason: &str, time: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": time,
    })
}

fn foreign_entry() -> Value {
    json!({
        "parentRef": parent_ref(),
        "controllerName": FOREIGN,
        "conditions": [condition("Accepted", "True", "Accepted", "2024-01-01T00:00:00Z")],
    })
}

fn route(name: &str, parents: Vec<Value>) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "prod", "generation": 1},
        "spec": {
            "parentRefs": [parent_ref()],
            "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}],
        },
        "status": {"parents": parents},
    })
}

fn ours(resolved: (&str, &str), time: &str) -> RouteStatus {
    RouteStatus {
        generation: 1,
        parents: vec![serde_json::from_value(json!({
            "parentRef": parent_ref(),
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", "True", "Accepted", time),
                condition("ResolvedRefs", resolved.0, resolved.1, time),
            ],
        }))
        .unwrap()],
    }
}

/// Our entry as the route carries it.
fn as_written(status: &RouteStatus) -> Value {
    serde_json::to_value(&status.parents[0]).unwrap()
}

fn desired(entries: &[(&str, RouteStatus)]) -> RouteStatuses {
    entries
        .iter()
        .map(|(name, status)| {
            let key = (RouteKind::Http, "prod".to_string(), name.to_string());
            (key, status.clone())
        })
        .collect()
}

/// The writer's go-ahead, for tests of the writing alone.
fn always_writes() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    // Kept open for the test's length.
    std::mem::forget(tx);
    rx
}

fn parents(server: &ApiServer, name: &str) -> Vec<Value> {
    let route = server.get("HTTPRoute", Some("prod"), name).expect("route");
    route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn requests(server: &ApiServer, method: &str, name: &str) -> usize {
    let prefix = format!("{method} {STATUS_PATH}{name}");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_our_parents_once_and_keeps_the_others() {
    let server = ApiServer::start().unwrap();
    server.apply(route("r", vec![foreign_entry()]));
    let (tx, rx) = watch::channel(RouteStatuses::new());
    let writer = tokio::spawn(route_status::run(client(&server), rx, always_writes()));

    const T1: &str = "2025-01-01T00:00:00Z";
    tx.send(desired(&[("r", ours(("True", "ResolvedRefs"), T1))]))
        .unwrap();
    eventually("our entry written", || parents(&server, "r").len() == 2).await;
    let written = parents(&server, "r");
    assert_eq!(
        written[0],
        foreign_entry(),
        "the foreign entry is kept, first"
    );
    assert_eq!(written[1], as_written(&ours(("True", "ResolvedRefs"), T1)));
    assert_eq!(requests(&server, "PATCH", "r/status"), 1);

    // The same state again, freshly evaluated (new timestamps): no write.
    tx.send(desired(&[(
        "r",
        ours(("True", "ResolvedRefs"), "2025-02-02T00:00:00Z"),
    )]))
    .unwrap();
    // Another agent with the same view reads the route and does not write.
    let (tx2, rx2) = watch::channel(desired(&[(
        "r",
        ours(("True", "ResolvedRefs"), "2025-03-03T00:00:00Z"),
    )]));
    let gets_before = requests(&server, "GET", "r");
    let other_agent = tokio::spawn(route_status::run(client(&server), rx2, always_writes()));
    eventually("the other agent's read", || {
        requests(&server, "GET", "r") > gets_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(&server, "PATCH", "r/status"), 1, "no second write");
    assert_eq!(parents(&server, "r"), written, "timestamps kept");

    // A changed condition is written; the unchanged one keeps its time.
    const T2: &str = "2025-04-04T00:00:00Z";
    tx.send(desired(&[("r", ours(("False", "BackendNotFound"), T2))]))
        .unwrap();
    eventually("the change written", || {
        parents(&server, "r")[1]["conditions"][1]["status"] == "False"
    })
    .await;
    let changed = parents(&server, "r");
    assert_eq!(changed[0], foreign_entry());
    assert_eq!(changed[1]["controllerName"], CONTROLLER_NAME);
    assert_eq!(changed[1]["conditions"][0]["lastTransitionTime"], T1);
    assert_eq!(changed[1]["conditions"][1]["reason"], "BackendNotFound");
    assert_eq!(changed[1]["conditions"][1]["lastTransitionTime"], T2);
    assert_eq!(requests(&server, "PATCH", "r/status"), 2);
    // The other agent, still at the old view, does not fight it (it settled).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(&server, "PATCH", "r/status"), 2);
    drop(tx2);
    within("the other agent to stop", other_agent)
        .await
        .unwrap();

    // A route gone from the desired state is forgotten, not written.
    tx.send(RouteStatuses::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parents(&server, "r"), changed);
    assert_eq!(requests(&server, "PATCH", "r/status"), 2);

    // Dropping the sender stops the writer.
    drop(tx);
    within("the writer to stop", writer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_until_the_route_can_be_written() {
    let server = ApiServer::start().unwrap();
    server.apply(route("ready", vec![]));
    let (tx, rx) = watch::channel(RouteStatuses::new());
    let writer = tokio::spawn(route_status::run(client(&server), rx, always_writes()));
    // "late" does not exist yet: failing, it does not hold up "ready".
    let want = ours(("True", "ResolvedRefs"), "2025-01-01T00:00:00Z");
    tx.send(desired(&[("late", want.clone()), ("ready", want.clone())]))
        .unwrap();
    eventually("ready written", || parents(&server, "ready").len() == 1).await;
    eventually("late retried", || requests(&server, "GET", "late") >= 2).await;

    server.apply(route("late", vec![foreign_entry()]));
    eventually("late written", || parents(&server, "late").len() == 2).await;
    assert_eq!(parents(&server, "late")[1], as_written(&want));

    // The API server down for a while: written once it is back.
    let changed = ours(("False", "RefNotPermitted"), "2025-05-05T00:00:00Z");
    server.restart();
    tx.send(desired(&[
        ("late", changed.clone()),
        ("ready", want.clone()),
    ]))
    .unwrap();
    eventually("written after the restart", || {
        parents(&server, "late")[1]["conditions"][1]["reason"] == "RefNotPermitted"
    })
    .await;
    assert_eq!(parents(&server, "late")[0], foreign_entry());
    assert_eq!(parents(&server, "ready")[0], as_written(&want));

    // A route newer than its evaluation is left alone until re-evaluated.
    let mut newer = route("ready", vec![]);
    newer["metadata"]["generation"] = json!(2);
    server.apply(newer);
    let stale = ours(("False", "BackendNotFound"), "2025-06-06T00:00:00Z");
    tx.send(desired(&[("late", changed), ("ready", stale)]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(parents(&server, "ready").is_empty());
    let mut current = ours(("False", "BackendNotFound"), "2025-06-06T00:00:00Z");
    current.generation = 2;
    tx.send(desired(&[("ready", current.clone())])).unwrap();
    eventually("ready re-evaluated and written", || {
        parents(&server, "ready").len() == 1
    })
    .await;
    drop(tx);
    within("the writer to stop", writer).await.unwrap();
}

/// A short Lease, so that takeovers happen within a test step.
const LEASE: Duration = Duration::from_secs(3);

/// One agent's status writing: its election and its writer, wanting the
/// route's ResolvedRefs reason to be `reason` (so that the route tells who
/// wrote it).
struct Contender {
    identity: String,
    reason: &'static str,
    stop: watch::Sender<bool>,
    election: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    _desired: watch::Sender<RouteStatuses>,
}

impl Contender {
    fn start(server: &ApiServer, identity: &str, reason: &'static str) -> Contender {
        let election = Election {
            namespace: "zerohop-system".into(),
            name: "zerohop-route-status".into(),
            identity: identity.into(),
            duration: LEASE,
        };
        let (writes, writer) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let (desired_tx, desired_rx) = watch::channel(desired(&[(
            "r",
            ours(("False", reason), "2025-01-01T00:00:00Z"),
        )]));
        Contender {
            identity: identity.into(),
            reason,
            stop,
            election: tokio::spawn(election::run(client(server), election, writes, stopped)),
            writer: tokio::spawn(route_status::run(client(server), desired_rx, writer)),
            _desired: desired_tx,
        }
    }

    /// Stops as the agent does on SIGTERM: the Lease is released.
    async fn stop(self) {
        self.stop.send_replace(true);
        within("the election to end", self.election).await.unwrap();
        self.writer.abort();
    }

    /// Ends as a crashed agent does: nothing released.
    fn crash(self) {
        self.election.abort();
        self.writer.abort();
    }
}

fn lease(server: &ApiServer) -> Value {
    server
        .get("Lease", Some("zerohop-system"), "zerohop-route-status")
        .unwrap_or(Value::Null)
}

fn holder(server: &ApiServer) -> Option<String> {
    lease(server)["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// The reason of our ResolvedRefs condition on route `r`: who wrote it.
fn written_reason(server: &ApiServer) -> Option<String> {
    let parents = parents(server, "r");
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME)?;
    ours["conditions"][1]["reason"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_agent_of_several_writes_the_status_and_another_takes_over() {
    let server = ApiServer::start().unwrap();
    server.apply(route("r", vec![foreign_entry()]));
    let mut contenders: Vec<Contender> = [("a", "ByA"), ("b", "ByB"), ("c", "ByC")]
        .iter()
        .map(|(identity, reason)| Contender::start(&server, identity, reason))
        .collect();

    // One holds the Lease, and only it writes: once, and for good.
    eventually("the route's status written", || {
        written_reason(&server).is_some()
    })
    .await;
    let first = holder(&server).expect("a holder");
    let position = contenders.iter().position(|c| c.identity == first).unwrap();
    assert_eq!(
        written_reason(&server).as_deref(),
        Some(contenders[position].reason)
    );
    let renewed = lease(&server)["spec"]["renewTime"].clone();
    tokio::time::sleep(LEASE).await;
    assert_eq!(holder(&server).as_deref(), Some(first.as_str()), "kept");
    assert_ne!(lease(&server)["spec"]["renewTime"], renewed, "renewed");
    assert_eq!(lease(&server)["spec"]["leaseDurationSeconds"], 3);
    assert_eq!(
        requests(&server, "PATCH", "r/status"),
        1,
        "the others never write"
    );
    assert_eq!(
        written_reason(&server).as_deref(),
        Some(contenders[position].reason)
    );

    // The holder stops (SIGTERM): it releases the Lease, and another agent
    // takes over well before the Lease would have run out.
    let stopped = contenders.remove(position);
    let released_at = std::time::Instant::now();
    stopped.stop().await;
    eventually("another agent writing", || {
        written_reason(&server).is_some_and(|reason| contenders.iter().any(|c| c.reason == reason))
    })
    .await;
    assert!(
        released_at.elapsed() < LEASE,
        "took {:?}",
        released_at.elapsed()
    );
    let second = holder(&server).expect("a holder");
    assert_ne!(second, first);
    let position = contenders
        .iter()
        .position(|c| c.identity == second)
        .unwrap();
    assert_eq!(
        written_reason(&server).as_deref(),
        Some(contenders[position].reason)
    );
    assert_eq!(requests(&server, "PATCH", "r/status"), 2);
    assert_eq!(lease(&server)["spec"]["leaseTransitions"], 1);

    // The new holder crashes: nobody writes until its Lease ran out, then
    // the last agent does.
    let crashed = contenders.remove(position);
    let crashed_at = std::time::Instant::now();
    crashed.crash();
    let last = &contenders[0];
    eventually("the last agent writing", || {
        written_reason(&server).as_deref() == Some(last.reason)
    })
    .await;
    let waited = crashed_at.elapsed();
    // Its last renewal was at most one retry (2/15 of the Lease) before.
    assert!(
        waited >= LEASE - LEASE * 2 / 15,
        "took the Lease after {waited:?}, before it ran out"
    );
    assert_eq!(holder(&server).as_deref(), Some(last.identity.as_str()));
    assert_eq!(requests(&server, "PATCH", "r/status"), 3);
    contenders.pop().unwrap().stop().await;
    assert_eq!(holder(&server), None, "released");
}
