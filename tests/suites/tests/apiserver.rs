//! Self-test of the in-process API server against the real kube-rs client,
//! watcher and reflector. No root needed: everything is on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use zerohop_fake_apiserver::ApiServer;

mod kube_client;
use kube_client::{client, eventually, within};

fn service(ns: &str, name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, service: &str) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
    })
}

fn names<K: ResourceExt>(objects: impl IntoIterator<Item = K>) -> BTreeSet<String> {
    objects.into_iter().map(|o| o.name_any()).collect()
}

fn store_names(store: &Store<Service>) -> BTreeSet<String> {
    names(store.state().iter().map(|s| (**s).clone()))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(ToString::to_string).collect()
}

/// List requests (not watches) for services.
fn service_lists(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services") && !r.contains("watch="))
        .count()
}

fn service_watches(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true"))
        .count()
}

/// A constant retry delay, to keep the tests quick (the default starts at 800 ms).
struct Fixed(Duration);

impl Iterator for Fixed {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl Backoff for Fixed {
    fn reset(&mut self) {}
}

/// A reflector over all Services, driven by a background task.
fn reflect_services(client: Client) -> (Store<Service>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Service>::all(client), watcher::Config::default()),
    )
    .backoff(Fixed(Duration::from_millis(100)));
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(_event) = stream.next().await {}
    });
    (reader, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_watcher_events() {
    let server = ApiServer::start().unwrap();
    server.apply(service("default", "a", 80));
    server.apply(service("other", "b", 81));
    let api = Api::<Service>::all(client(&server));

    let list = within("list", api.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(names(list.items.clone()), set(&["a", "b"]));
    assert!(list.metadata.resource_version.is_some());
    assert!(list
        .items
        .iter()
        .all(|s| s.uid().is_some() && s.resource_version().is_some()));
    let other = Api::<Service>::namespaced(client(&server), "other");
    let ns_list = within("namespaced list", other.list(&ListParams::default())).await;
    assert_eq!(names(ns_list.unwrap()), set(&["b"]));
    let default = Api::<Service>::namespaced(client(&server), "default");
    let got = within("get", default.get("a")).await;
    assert_eq!(got.unwrap().spec.unwrap().ports.unwrap()[0].port, 80);

    let stream = watcher(api, watcher::Config::default());
    futures::pin_mut!(stream);
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    let mut initial = BTreeSet::new();
    loop {
        match next_event(&mut stream).await {
            watcher::Event::InitApply(s) => initial.insert(s.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        };
    }
    assert_eq!(initial, set(&["a", "b"]));

    let uid_before = server_uid(&server, "a").await;
    server.apply(service("default", "a", 8080));
    match next_event(&mut stream).await {
        watcher::Event::Apply(s) => {
            assert_eq!(s.name_any(), "a");
            assert_eq!(s.spec.unwrap().ports.unwrap()[0].port, 8080);
            assert_eq!(s.metadata.uid, uid_before, "uid kept on replace");
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    server.delete("Service", Some("other"), "b");
    match next_event(&mut stream).await {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "b"),
        other => panic!("expected Delete, got {other:?}"),
    }
    server.apply(service("third", "c", 82));
    match next_event(&mut stream).await {
        watcher::Event::Apply(s) => assert_eq!(s.namespace().as_deref(), Some("third")),
        other => panic!("expected Apply, got {other:?}"),
    }
}

async fn next_event<K, S>(stream: &mut S) -> watcher::Event<K>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    within("watch event", stream.try_next())
        .await
        .expect("watch error")
        .expect("watch stream ended")
}

async fn server_uid(server: &ApiServer, name: &str) -> Option<String> {
    let api = Api::<Service>::namespaced(client(server), "default");
    within("get", api.get(name)).await.unwrap().metadata.uid
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_relists_after_expire() {
    let server = ApiServer::start().unwrap();
    server.apply(service("default", "a", 80));
    server.apply(service("default", "b", 80));
    let (store, task) = reflect_services(client(&server));
    eventually("initial sync", || store_names(&store) == set(&["a", "b"])).await;
    let lists_before = service_lists(&server);
    assert_eq!(lists_before, 1);
    // Older than the current version: compacted away by expire_watches().
    let old_rv = (server_rv(&server).await.parse::<u64>().unwrap() - 1).to_string();

    server.expire_watches();
    server.delete("Service", Some("default"), "a");
    server.apply(service("default", "c", 80));
    eventually("convergence after expiry", || {
        store_names(&store) == set(&["b", "c"])
    })
    .await;
    eventually("a re-list", || service_lists(&server) > lists_before).await;

    // Compaction: an old resourceVersion is gone for watches and lists alike.
    let api = Api::<Service>::all(client(&server));
    let watch = within("watch", api.watch(&WatchParams::default(), &old_rv))
        .await
        .unwrap();
    futures::pin_mut!(watch);
    match within("error event", watch.try_next()).await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(within("end of watch", watch.try_next())
        .await
        .unwrap()
        .is_none());
    let lp = ListParams::default()
        .at(&old_rv)
        .matching(VersionMatch::Exact);
    match within("old list", api.list(&lp)).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    task.abort();
}

async fn server_rv(server: &ApiServer) -> String {
    let api = Api::<Service>::all(client(server));
    let list = within("list", api.list(&ListParams::default()))
        .await
        .unwrap();
    list.metadata.resource_version.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_recovers_after_restart() {
    let server = ApiServer::start().unwrap();
    server.apply(service("default", "a", 80));
    let (store, task) = reflect_services(client(&server));
    eventually("initial sync", || store_names(&store) == set(&["a"])).await;
    eventually("the watch to start", || service_watches(&server) == 1).await;
    let requests_before = server.requests().len();

    // Build the client first: that takes a while (TLS setup), and the server is
    // down for only ~300 ms.
    let api = Api::<Service>::all(client(&server));
    server.restart();
    // Down: the client cannot connect.
    assert!(within("list while down", api.list(&ListParams::default()))
        .await
        .is_err());
    server.apply(service("default", "b", 80));
    server.delete("Service", Some("default"), "a");
    eventually("convergence after restart", || {
        store_names(&store) == set(&["b"])
    })
    .await;
    let after: Vec<String> = server.requests()[requests_before..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true")),
        "no new watch after the restart: {after:?}"
    );

    // A change and a compaction during the downtime force a re-list: the
    // watcher's resourceVersion is now too old.
    let lists_before = service_lists(&server);
    server.restart();
    server.apply(service("default", "c", 80));
    server.expire_watches();
    eventually("convergence after restart+expiry", || {
        store_names(&store) == set(&["b", "c"])
    })
    .await;
    eventually("a re-list", || service_lists(&server) > lists_before).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_nodes_and_slices() {
    let server = ApiServer::start().unwrap();
    for name in ["node-a", "node-b"] {
        server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}));
    }
    server.apply(slice("web-1", "web"));
    server.apply(slice("web-2", "web"));
    server.apply(slice("db-1", "db"));
    let c = client(&server);

    let nodes = Api::<Node>::all(c.clone());
    let lp = ListParams::default().fields("metadata.name=node-b");
    assert_eq!(
        names(within("nodes", nodes.list(&lp)).await.unwrap()),
        set(&["node-b"])
    );
    let node = within("get node", nodes.get("node-a")).await.unwrap();
    assert_eq!(node.name_any(), "node-a");
    match within("missing node", nodes.get("node-c")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }

    let slices = Api::<EndpointSlice>::namespaced(c.clone(), "default");
    let web = ListParams::default().labels("kubernetes.io/service-name=web");
    assert_eq!(
        names(within("web", slices.list(&web)).await.unwrap()),
        set(&["web-1", "web-2"])
    );
    let not_web = ListParams::default().labels("kubernetes.io/service-name!=web");
    assert_eq!(
        names(within("!web", slices.list(&not_web)).await.unwrap()),
        set(&["db-1"])
    );
    let empty = Api::<EndpointSlice>::namespaced(c.clone(), "elsewhere");
    assert!(within("other ns", empty.list(&web))
        .await
        .unwrap()
        .items
        .is_empty());

    // A watcher with a label selector: relabelling out of it is a Delete.
    let cfg = watcher::Config::default().labels("kubernetes.io/service-name=web");
    let stream = watcher(Api::<EndpointSlice>::all(c.clone()), cfg);
    futures::pin_mut!(stream);
    let mut initial = BTreeSet::new();
    loop {
        match next_event(&mut stream).await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => {
                initial.insert(s.name_any());
            }
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, set(&["web-1", "web-2"]));
    server.apply(slice("web-2", "db"));
    match next_event(&mut stream).await {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "web-2"),
        other => panic!("expected Delete, got {other:?}"),
    }
    server.apply(slice("db-1", "web"));
    match next_event(&mut stream).await {
        watcher::Event::Apply(s) => assert_eq!(s.name_any(), "db-1"),
        other => panic!("expected Apply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeconfig_httproutes_bookmarks_and_errors() {
    let server = ApiServer::start().unwrap();
    let path = std::env::temp_dir().join(format!("zh-apiserver-{}.kubeconfig", std::process::id()));
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path);
    let _ = std::fs::remove_file(&path);
    let options = kube::config::KubeConfigOptions::default();
    let config = within(
        "config",
        Config::from_custom_kubeconfig(kubeconfig.unwrap(), &options),
    )
    .await
    .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let c = Client::try_from(config).unwrap();

    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}));
    let namespaces = Api::<Namespace>::all(c.clone());
    let ns = within("namespaces", namespaces.list(&ListParams::default())).await;
    assert_eq!(names(ns.unwrap()), set(&["prod"]));
    let version = within("version", c.apiserver_version()).await.unwrap();
    assert_eq!(version.major, "1");

    // HTTPRoutes, served generically.
    server.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "prod"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}]},
    }));
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    let routes = Api::<DynamicObject>::namespaced_with(c.clone(), "prod", &ar);
    let list = within("routes", routes.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].data["spec"]["parentRefs"][0]["name"], "web");

    // Bookmarks every interval, and the watch ends after timeoutSeconds.
    server.set_bookmark_interval(Duration::from_millis(100));
    let rv = list.metadata.resource_version.unwrap();
    let wp = WatchParams::default().timeout(1);
    let events = within("watch", routes.watch(&wp, &rv)).await.unwrap();
    let events: Vec<_> = within("bounded watch", events.try_collect::<Vec<_>>())
        .await
        .unwrap();
    let bookmarks = events
        .iter()
        .filter(|e| matches!(e, WatchEvent::Bookmark(_)))
        .count();
    assert!(
        (3..=15).contains(&bookmarks),
        "{bookmarks} bookmarks in 1 s: {events:?}"
    );

    // Unknown kinds are 404 with a Status; malformed objects are served as is.
    match within(
        "configmaps",
        Api::<ConfigMap>::all(c.clone()).list(&ListParams::default()),
    )
    .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    server.apply(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "broken", "namespace": "prod"},
        "spec": {"ports": "not a list"},
    }));
    let typed = Api::<Service>::namespaced(c.clone(), "prod");
    let got = within("broken", typed.get("broken")).await;
    assert!(matches!(got, Err(kube::Error::SerdeError(_))), "{got:?}");
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services");
    let raw = Api::<DynamicObject>::namespaced_with(c, "prod", &ar);
    let got = within("raw", raw.get("broken")).await.unwrap();
    assert_eq!(got.data["spec"]["ports"], "not a list");
}

fn httproutes(c: Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    Api::<DynamicObject>::namespaced_with(c, ns, &ar)
}

fn route(ns: &str, name: &str, backend: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
    })
}

fn parent_status(controller: &str, status: &str) -> serde_json::Value {
    json!({
        "parentRef": {"group": "", "kind": "Service", "name": "web", "port": 80},
        "controllerName": controller,
        "conditions": [{
            "type": "Accepted",
            "status": status,
            "reason": "Accepted",
            "message": "",
            "observedGeneration": 1,
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        }],
    })
}

fn rv_of(object: &serde_json::Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_patch_of_status() {
    let server = ApiServer::start().unwrap();
    server.apply(route("prod", "r", "v1"));
    let routes = httproutes(client(&server), "prod");
    let list = within("list", routes.list(&ListParams::default()))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let events = within("watch", routes.watch(&WatchParams::default(), &rv))
        .await
        .unwrap();
    futures::pin_mut!(events);

    let before = server.get("HTTPRoute", Some("prod"), "r").unwrap();
    let patch = json!({
        "metadata": {"resourceVersion": rv_of(&before)},
        "status": {"parents": [parent_status("zerohop.io/waypoint", "True")]},
    });
    let pp = PatchParams::default();
    let patched = within(
        "patch status",
        routes.patch_status("r", &pp, &Patch::Merge(&patch)),
    )
    .await
    .unwrap();
    assert_eq!(
        patched.data["status"]["parents"][0]["controllerName"],
        "zerohop.io/waypoint"
    );
    let after = server.get("HTTPRoute", Some("prod"), "r").unwrap();
    assert_eq!(after["status"], patch["status"]);
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["generation"], 1,
        "a status change keeps the generation"
    );
    assert_ne!(rv_of(&after), rv_of(&before));
    assert_eq!(patched.metadata.resource_version, Some(rv_of(&after)));
    match within("modified event", events.try_next()).await.unwrap() {
        Some(WatchEvent::Modified(obj)) => {
            assert_eq!(obj.name_any(), "r");
            assert_eq!(obj.data["status"], patch["status"]);
            assert_eq!(obj.metadata.resource_version, Some(rv_of(&after)));
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // GET of the status subresource serves the object.
    let got = within("get_status", routes.get_status("r")).await.unwrap();
    assert_eq!(got.data["status"], patch["status"]);

    // The same patch again, at the new version: a no-op, not written.
    let mut again = patch.clone();
    again["metadata"]["resourceVersion"] = json!(rv_of(&after));
    within(
        "no-op",
        routes.patch_status("r", &pp, &Patch::Merge(&again)),
    )
    .await
    .unwrap();
    assert_eq!(
        rv_of(&server.get("HTTPRoute", Some("prod"), "r").unwrap()),
        rv_of(&after)
    );

    // Without a resourceVersion, no precondition; null removes a key.
    let clear = json!({"status": {"parents": null}});
    let cleared = within(
        "clear",
        routes.patch_status("r", &pp, &Patch::Merge(&clear)),
    )
    .await
    .unwrap();
    assert_eq!(cleared.data["status"], json!({}));
    let patches = server
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with(
                "PATCH /apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes/r/status",
            )
        })
        .count();
    assert_eq!(patches, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_patch_conflicts_and_errors() {
    let server = ApiServer::start().unwrap();
    server.apply(route("prod", "r", "v1"));
    let routes = httproutes(client(&server), "prod");
    let pp = PatchParams::default();
    let stale = rv_of(&server.get("HTTPRoute", Some("prod"), "r").unwrap());
    server.apply(route("prod", "r", "v2")); // someone else wrote it since
    let patch = json!({
        "metadata": {"resourceVersion": stale},
        "status": {"parents": [parent_status("zerohop.io/waypoint", "True")]},
    });
    match within(
        "stale",
        routes.patch_status("r", &pp, &Patch::Merge(&patch)),
    )
    .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
        }
        other => panic!("expected 409, got {other:?}"),
    }
    assert!(server.get("HTTPRoute", Some("prod"), "r").unwrap()["status"].is_null());

    match within(
        "missing",
        routes.patch_status("nope", &pp, &Patch::Merge(&patch)),
    )
    .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    let strategic = Patch::Strategic(json!({"status": {}}));
    match within("strategic", routes.patch_status("r", &pp, &strategic)).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 415),
        other => panic!("expected 415, got {other:?}"),
    }
    // The connection pool survives error answers.
    assert!(within("get", routes.get("r")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_main_paths_change_their_own_parts() {
    let server = ApiServer::start().unwrap();
    server.apply(route("prod", "r", "v1"));
    let routes = httproutes(client(&server), "prod");
    let pp = PatchParams::default();
    let before = server.get("HTTPRoute", Some("prod"), "r").unwrap();

    // Through /status: the spec (and the identity) stay, the status changes.
    let sneaky = json!({
        "metadata": {"name": "other", "uid": "x", "labels": {"a": "b"}},
        "spec": {"rules": []},
        "status": {"parents": [parent_status("zerohop.io/waypoint", "False")]},
    });
    within(
        "status",
        routes.patch_status("r", &pp, &Patch::Merge(&sneaky)),
    )
    .await
    .unwrap();
    let after = server.get("HTTPRoute", Some("prod"), "r").unwrap();
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["name"], "r");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert!(after["metadata"]["labels"].is_null());
    assert_eq!(after["status"], sneaky["status"]);

    // Only a spec change through /status: nothing to write.
    let only_spec = json!({"spec": {"rules": []}});
    within(
        "spec via status",
        routes.patch_status("r", &pp, &Patch::Merge(&only_spec)),
    )
    .await
    .unwrap();
    let unchanged = server.get("HTTPRoute", Some("prod"), "r").unwrap();
    assert_eq!(unchanged, after);

    // Through the object: the spec changes (and the generation), not the status.
    let main = json!({
        "metadata": {"labels": {"a": "b"}},
        "spec": {"rules": [{"backendRefs": [{"name": "v3", "port": 80}]}]},
        "status": {"parents": []},
    });
    within("main", routes.patch("r", &pp, &Patch::Merge(&main)))
        .await
        .unwrap();
    let last = server.get("HTTPRoute", Some("prod"), "r").unwrap();
    assert_eq!(last["spec"]["rules"][0]["backendRefs"][0]["name"], "v3");
    assert_eq!(last["spec"]["parentRefs"], before["spec"]["parentRefs"]);
    assert_eq!(last["metadata"]["labels"]["a"], "b");
    assert_eq!(last["metadata"]["generation"], 2);
    assert_eq!(last["status"], sneaky["status"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_grants_are_served() {
    let server = ApiServer::start().unwrap();
    server.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "backend"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "prod"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }));
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "referencegrants");
    let grants = Api::<DynamicObject>::all_with(client(&server), &ar);
    let list = within("grants", grants.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(names(list.items.clone()), set(&["g"]));
    assert_eq!(list.items[0].data["spec"]["to"][0]["kind"], "Service");
    assert!(server.get("ReferenceGrant", Some("backend"), "g").is_some());
    assert!(server.get("ReferenceGrant", Some("prod"), "g").is_none());
}

#[test]
fn plain_sync_use_and_cleanup() {
    let server = ApiServer::start().unwrap();
    let addr = server.url().trim_start_matches("http://").to_string();
    server.apply(service("default", "a", 80));
    server.delete("Service", Some("default"), "a");
    server.delete("Service", Some("default"), "never-existed");
    assert!(server.requests().is_empty());
    drop(server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}
