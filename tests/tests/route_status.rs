//! The agent's HTTPRoute status writer (`zerohop::route_status`) against the
//! in-process API server. No root needed: everything is on 127.0.0.1.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use zerohop::route_status::{self, Desired, RouteStatus, CONTROLLER_NAME};
use zerohop_tests::apiserver::ApiServer;

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
        parents: vec![json!({
            "parentRef": parent_ref(),
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", "True", "Accepted", time),
                condition("ResolvedRefs", resolved.0, resolved.1, time),
            ],
        })],
    }
}

fn desired(entries: &[(&str, RouteStatus)]) -> Desired {
    entries
        .iter()
        .map(|(name, status)| (("prod".to_string(), name.to_string()), status.clone()))
        .collect()
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
    let (tx, rx) = watch::channel(Desired::new());
    let writer = tokio::spawn(route_status::run(client(&server), rx));

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
    assert_eq!(written[1], ours(("True", "ResolvedRefs"), T1).parents[0]);
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
    let other_agent = tokio::spawn(route_status::run(client(&server), rx2));
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
    tx.send(Desired::new()).unwrap();
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
    let (tx, rx) = watch::channel(Desired::new());
    let writer = tokio::spawn(route_status::run(client(&server), rx));
    // "late" does not exist yet: failing, it does not hold up "ready".
    let want = ours(("True", "ResolvedRefs"), "2025-01-01T00:00:00Z");
    tx.send(desired(&[("late", want.clone()), ("ready", want.clone())]))
        .unwrap();
    eventually("ready written", || parents(&server, "ready").len() == 1).await;
    eventually("late retried", || requests(&server, "GET", "late") >= 2).await;

    server.apply(route("late", vec![foreign_entry()]));
    eventually("late written", || parents(&server, "late").len() == 2).await;
    assert_eq!(parents(&server, "late")[1], want.parents[0]);

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
    assert_eq!(parents(&server, "ready")[0], want.parents[0]);

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
