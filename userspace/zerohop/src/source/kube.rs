//! Services, EndpointSlices, Namespaces, this agent's own Node (for its
//! zone), the Pods of this node (the waypoint's clients), HTTPRoutes and
//! ReferenceGrants from the Kubernetes API, through kube-rs watchers (list, then watch; re-list on 410 Gone or a lost
//! connection).
//!
//! Objects are watched untyped and converted one by one, so that one
//! malformed object is reported (with its namespace and name) and skipped
//! while everything else keeps working; a typed watcher would fail its whole
//! list on it.
//!
//! A re-list fills a buffer that replaces the kind's objects only once the
//! list is complete (`InitDone`): the view, and so the maps, never pass
//! through an empty or partial state. Nothing is published before every kind
//! completed its first list.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    serde::de::DeserializeOwned,
};
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tracing::{debug, info, warn};
use zerohop_k8s::{FromObject, ObjectRef, Origins};
use zerohop_planner::{model, ClusterView};

use super::{Publisher, Snapshot};
use crate::problem::Problem;

/// How often the source confirms its last snapshot while it runs.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);
use zerohop_routes::model::{self as routes, GROUP as GATEWAY_GROUP};

/// The kinds zerohop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    EndpointSlice,
    Namespace,
    Node,
    Pod,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::HttpRoute => routes::RouteKind::Http.name(),
            Kind::GrpcRoute => routes::RouteKind::Grpc.name(),
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }

    fn resource(self) -> ApiResource {
        let gateway_api = |version: &str, kind: &str, plural: &str| ApiResource {
            group: GATEWAY_GROUP.to_owned(),
            version: version.to_owned(),
            api_version: format!("{GATEWAY_GROUP}/{version}"),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        };
        match self {
            Kind::Service => ApiResource::erase::<core::Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<discovery::EndpointSlice>(&()),
            Kind::Namespace => ApiResource::erase::<core::Namespace>(&()),
            Kind::Node => ApiResource::erase::<core::Node>(&()),
            Kind::Pod => ApiResource::erase::<core::Pod>(&()),
            Kind::HttpRoute => gateway_api("v1", "HTTPRoute", "httproutes"),
            Kind::GrpcRoute => gateway_api("v1", "GRPCRoute", "grpcroutes"),
            Kind::ReferenceGrant => gateway_api("v1beta1", "ReferenceGrant", "referencegrants"),
        }
    }

    /// Kinds of CRDs a cluster may not have: until their first list
    /// succeeds, they count as listed and empty.
    fn optional(self) -> bool {
        matches!(
            self,
            Kind::HttpRoute | Kind::GrpcRoute | Kind::ReferenceGrant
        )
    }

    /// What to watch of this kind: everything, but for Nodes this one only
    /// and for Pods those of this node.
    fn watcher_config(self, node: &str) -> watcher::Config {
        match self {
            Kind::Node => watcher::Config::default().fields(&format!("metadata.name={node}")),
            Kind::Pod => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            _ => watcher::Config::default(),
        }
    }

    /// Converts one object of this kind to the model.
    fn convert(self, object: &DynamicObject) -> Converted {
        match self {
            Kind::Service => convert::<core::Service, model::Service>(self, object, |service| {
                Converted::Service(Arc::new(service))
            }),
            Kind::EndpointSlice => {
                convert::<discovery::EndpointSlice, model::EndpointSlice>(self, object, |slice| {
                    Converted::Slice(Arc::new(slice))
                })
            }
            Kind::Namespace => {
                convert::<core::Namespace, model::Namespace>(self, object, Converted::Namespace)
            }
            Kind::Node => convert::<core::Node, model::Node>(self, object, |node| {
                Converted::Node(Box::new(node))
            }),
            Kind::Pod => {
                convert::<core::Pod, model::Pod>(self, object, |pod| Converted::Pod(Box::new(pod)))
            }
            Kind::HttpRoute => convert::<routes::HttpRoute, model::Route>(self, object, |route| {
                Converted::Route(Box::new(route))
            }),
            Kind::GrpcRoute => convert::<routes::GrpcRoute, model::Route>(self, object, |route| {
                Converted::Route(Box::new(route))
            }),
            Kind::ReferenceGrant => {
                convert::<routes::ReferenceGrant, model::Grant>(self, object, |grant| {
                    Converted::Grant(Box::new(grant))
                })
            }
        }
    }
}

/// (API group, plural resource) of everything the agent lists and watches;
/// deploy/rbac.yaml grants exactly these.
pub fn watched_resources() -> Vec<(String, String)> {
    Kind::ALL
        .iter()
        .map(|kind| {
            let resource = kind.resource();
            (resource.group, resource.plural)
        })
        .collect()
}

/// One object as the planner sees it. Kinds larger than a few words are
/// boxed: the store holds one of these per object (20k at 10k Services),
/// and a map slot has the size of the largest kind.
#[derive(Debug, Clone)]
enum Converted {
    /// Shared with every snapshot built since it was converted.
    Service(Arc<model::Service>),
    Slice(Arc<model::EndpointSlice>),
    Namespace(model::Namespace),
    Node(Box<model::Node>),
    Pod(Box<model::Pod>),
    Route(Box<model::Route>),
    Grant(Box<model::Grant>),
    /// Not for zerohop (headless or ExternalName Service, FQDN slice).
    Ignored,
    /// Malformed: the problem, naming the object.
    Invalid(Box<Problem>),
}

fn convert<Wire, Domain>(
    kind: Kind,
    object: &DynamicObject,
    wrap: fn(Domain) -> Converted,
) -> Converted
where
    Wire: DeserializeOwned,
    Domain: FromObject<Wire>,
{
    let wire: Wire = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(wire) => wire,
        Err(error) => {
            let object = ObjectRef::new(
                kind.name(),
                object.metadata.namespace.as_deref().unwrap_or(""),
                object.metadata.name.as_deref(),
            );
            let message = format!("{object}: {error}");
            return Converted::Invalid(Box::new(Problem::of(object, message)));
        }
    };
    match Domain::from_object(&wire) {
        Ok(domain) => wrap(domain),
        Err(error) if error.is_ignored() => Converted::Ignored,
        Err(error) => Converted::Invalid(Box::new(Problem::of(
            error.object().clone(),
            error.to_string(),
        ))),
    }
}

/// (namespace, name) of an object.
type Key = (String, String);

fn route_key(kind: routes::RouteKind, (namespace, name): &Key) -> model::RouteKey {
    (kind, namespace.clone(), name.clone())
}

fn key_of(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Every object of every kind, as last listed and watched, and the view
/// they make, kept up to date event by event.
#[derive(Default)]
struct Store {
    objects: BTreeMap<Kind, BTreeMap<Key, Converted>>,
    /// Re-lists under way: filled by InitApply, swapped in at InitDone.
    relisting: BTreeMap<Kind, BTreeMap<Key, Converted>>,
    listed: BTreeSet<Kind>,
    view: ClusterView,
    /// The malformed objects' problems.
    invalid: BTreeMap<(Kind, Key), Problem>,
}

impl Store {
    /// Applies one watcher event; returns whether the published view may change.
    fn apply(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.relisting
                    .entry(kind)
                    .or_default()
                    .insert(key_of(&object), kind.convert(&object));
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.remove(&kind).unwrap_or_default();
                info!(kind = kind.name(), objects = listed.len(), "listed");
                let before = self.objects.remove(&kind).unwrap_or_default();
                for key in before.keys().filter(|key| !listed.contains_key(*key)) {
                    self.forget(kind, key);
                }
                // Collected anew: full B-tree nodes, where filling it in
                // key order left them half empty.
                let listed: BTreeMap<Key, Converted> = listed.into_iter().collect();
                for (key, converted) in &listed {
                    self.record(kind, key, converted);
                }
                self.objects.insert(kind, listed);
                self.listed.insert(kind);
                true
            }
            watcher::Event::Apply(object) => {
                let key = key_of(&object);
                let converted = kind.convert(&object);
                self.record(kind, &key, &converted);
                self.objects.entry(kind).or_default().insert(key, converted);
                true
            }
            watcher::Event::Delete(object) => {
                let key = key_of(&object);
                self.forget(kind, &key);
                self.objects.entry(kind).or_default().remove(&key);
                true
            }
        }
    }

    /// Puts object `key` of `kind`, as converted, in the view (or its
    /// problem in `invalid`), in place of what it was.
    fn record(&mut self, kind: Kind, key: &Key, converted: &Converted) {
        self.forget(kind, key);
        let view = &mut self.view;
        match converted.clone() {
            Converted::Service(service) => _ = view.apply_service(service),
            Converted::Slice(slice) => _ = view.apply_slice(slice),
            Converted::Namespace(namespace) => _ = view.apply_namespace(namespace),
            Converted::Node(node) => _ = view.apply_node(*node),
            Converted::Pod(pod) => _ = view.apply_pod(*pod),
            Converted::Route(route) => _ = view.apply_route(*route),
            Converted::Grant(grant) => _ = view.apply_grant(*grant),
            Converted::Ignored => {}
            Converted::Invalid(problem) => _ = self.invalid.insert((kind, key.clone()), *problem),
        }
    }

    /// Takes object `key` of `kind` out of the view and `invalid`.
    fn forget(&mut self, kind: Kind, key: &Key) {
        self.invalid.remove(&(kind, key.clone()));
        let (namespace, name) = key;
        let view = &mut self.view;
        match kind {
            Kind::Service => _ = view.delete_service(&model::ServiceId::new(namespace, name)),
            Kind::EndpointSlice => _ = view.delete_slice(&model::SliceId::new(namespace, name)),
            Kind::Namespace => _ = view.delete_namespace(name),
            Kind::Node => _ = view.delete_node(name),
            Kind::Pod => _ = view.delete_pod(key),
            Kind::HttpRoute => _ = view.delete_route(&route_key(routes::RouteKind::Http, key)),
            Kind::GrpcRoute => _ = view.delete_route(&route_key(routes::RouteKind::Grpc, key)),
            Kind::ReferenceGrant => _ = view.delete_grant(key),
        }
    }

    fn complete(&self) -> bool {
        Kind::ALL.iter().all(|kind| self.listed.contains(kind))
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            view: self.view.clone(),
            problems: self.invalid.values().cloned().collect(),
            origins: Origins::new(),
        }
    }
}

/// Watches the cluster and publishes a new snapshot after every change, from
/// the end of the first complete list on, and confirms the last one every
/// `CONFIRM_EVERY` while it runs. Runs until the process ends.
///
/// A watch that fails (an API server out of reach) does not stop the
/// confirmations: like kube-proxy's rules, the maps keep the last state the
/// node saw. What stops them is this task no longer running.
pub async fn run(client: Client, node: String, publisher: Publisher) {
    let events = Kind::ALL.map(|kind| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        watcher(api, kind.watcher_config(&node))
            .default_backoff()
            .map(move |event| (kind, event))
            .boxed()
    });
    let mut events = stream::select_all(events);
    let mut store = Store::default();
    // Optional kinds whose lists fail, counted as listed and empty.
    let mut missing = BTreeSet::new();
    let mut confirm = tokio::time::interval(CONFIRM_EVERY);
    loop {
        let (kind, event) = tokio::select! {
            next = events.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = confirm.tick() => {
                publisher.confirm(Instant::now());
                continue;
            }
        };
        match event {
            Ok(event) => {
                if matches!(event, watcher::Event::InitDone) && missing.remove(&kind) {
                    info!(kind = kind.name(), "now served");
                }
                if store.apply(kind, event) && store.complete() {
                    publisher.publish(store.snapshot(), Instant::now());
                }
            }
            // A cluster without the Gateway API CRDs has no routes: that
            // must not hold up the first sync, nor fill the log.
            Err(error) if kind.optional() && !store.listed.contains(&kind) => {
                info!(kind = kind.name(), %error, "not served (CRD not installed?); treated as empty until it is");
                missing.insert(kind);
                if store.apply(kind, watcher::Event::InitDone) && store.complete() {
                    publisher.publish(store.snapshot(), Instant::now());
                }
            }
            Err(error) if missing.contains(&kind) => {
                debug!(kind = kind.name(), %error, "still not served");
            }
            // The watcher re-lists by itself (with backoff): keep serving the
            // current view meanwhile.
            Err(error) => warn!(kind = kind.name(), %error, "watch failed; retrying"),
        }
    }
    debug!("watch streams ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: Kind, json: serde_json::Value) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(json).unwrap();
        object.types = Some(kube::api::TypeMeta {
            api_version: kind.resource().api_version,
            kind: kind.name().to_owned(),
        });
        object
    }

    fn service(name: &str, ip: &str) -> DynamicObject {
        object(
            Kind::Service,
            serde_json::json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}),
        )
    }

    #[test]
    fn nothing_is_published_before_every_kind_is_listed() {
        let mut store = Store::default();
        assert!(store.apply(Kind::Service, watcher::Event::InitDone));
        assert!(!store.complete());
        store.apply(Kind::EndpointSlice, watcher::Event::InitDone);
        store.apply(Kind::Namespace, watcher::Event::InitDone);
        assert!(!store.complete(), "the Node is not listed yet");
        store.apply(Kind::Node, watcher::Event::InitDone);
        store.apply(Kind::Pod, watcher::Event::InitDone);
        store.apply(Kind::HttpRoute, watcher::Event::InitDone);
        store.apply(Kind::GrpcRoute, watcher::Event::InitDone);
        assert!(!store.complete(), "ReferenceGrants are not listed yet");
        store.apply(Kind::ReferenceGrant, watcher::Event::InitDone);
        assert!(store.complete());
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let mut store = Store::default();
        for kind in Kind::ALL {
            store.apply(kind, watcher::Event::InitDone);
        }
        store.apply(
            Kind::Service,
            watcher::Event::Apply(service("a", "10.96.0.1")),
        );
        store.apply(
            Kind::Service,
            watcher::Event::Apply(service("b", "10.96.0.2")),
        );
        assert_eq!(store.snapshot().view.services().len(), 2);

        // A re-list (after 410 Gone, say) that no longer has "a".
        store.apply(Kind::Service, watcher::Event::Init);
        store.apply(
            Kind::Service,
            watcher::Event::InitApply(service("b", "10.96.0.2")),
        );
        assert_eq!(
            store.snapshot().view.services().len(),
            2,
            "the old view stays during the list"
        );
        store.apply(Kind::Service, watcher::Event::InitDone);
        let names: Vec<String> = store
            .snapshot()
            .view
            .services()
            .keys()
            .map(|id| id.name.clone())
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn a_malformed_object_is_reported_by_name_and_skipped() {
        let mut store = Store::default();
        for kind in Kind::ALL {
            store.apply(kind, watcher::Event::InitDone);
        }
        let broken = object(
            Kind::Service,
            serde_json::json!({"metadata": {"name": "broken", "namespace": "team"},
                "spec": {"clusterIP": "10.96.0.9", "ports": "eighty"}}),
        );
        store.apply(Kind::Service, watcher::Event::Apply(broken));
        store.apply(
            Kind::Service,
            watcher::Event::Apply(service("fine", "10.96.0.1")),
        );
        let snapshot = store.snapshot();
        assert_eq!(snapshot.view.services().len(), 1);
        assert_eq!(snapshot.problems.len(), 1);
        let problem = &snapshot.problems[0];
        assert!(
            problem.message.starts_with("Service team/broken: "),
            "{problem:?}"
        );
        assert_eq!(
            problem.object,
            Some(ObjectRef::new("Service", "team", Some("broken")))
        );
        assert_eq!(problem.file, None);

        store.apply(
            Kind::Service,
            watcher::Event::Delete(service("fine", "10.96.0.1")),
        );
        assert!(
            store.snapshot().view.services().is_empty(),
            "a deleted Service leaves nothing behind"
        );
    }

    #[test]
    fn an_object_replaced_by_one_zerohop_cannot_use_leaves_the_view() {
        let mut store = Store::default();
        for kind in Kind::ALL {
            store.apply(kind, watcher::Event::InitDone);
        }
        store.apply(
            Kind::Service,
            watcher::Event::Apply(service("web", "10.96.0.1")),
        );
        assert_eq!(store.snapshot().view.services().len(), 1);
        // Made headless: not zerohop's any more.
        store.apply(Kind::Service, watcher::Event::Apply(service("web", "None")));
        assert!(store.snapshot().view.services().is_empty());
        // Broken, then mended: the problem goes with the mend.
        let broken = object(
            Kind::Service,
            serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": "eighty"}}),
        );
        store.apply(Kind::Service, watcher::Event::Apply(broken));
        assert_eq!(store.snapshot().problems.len(), 1);
        store.apply(
            Kind::Service,
            watcher::Event::Apply(service("web", "10.96.0.1")),
        );
        let snapshot = store.snapshot();
        assert_eq!(snapshot.problems, vec![]);
        assert_eq!(snapshot.view.services().len(), 1);
    }
}
