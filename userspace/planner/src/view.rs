//! The cluster as the planner sees it: every usable Service and EndpointSlice.
//!
//! Sources (the Kubernetes watcher, manifest files) feed it one object at a
//! time with an `apply_*` (add or replace) or `delete_*` per kind, and the
//! planner reads it. Two views compare equal when they hold the same
//! objects, so a source can tell whether a reload changed anything.
//!
//! The view is held in persistent maps ([`imbl`]'s B-trees): a source
//! publishes a copy of its view after every change, and a copy shares every
//! node with the view it was made from, so it costs nothing in time or
//! memory until one of them changes, and then only the path to the changed
//! entry is copied. Comparing two views ([`ClusterView::touched_services`],
//! `==`) skips the nodes they share, so its cost follows what changed, not
//! the size of the cluster. Services and EndpointSlices are behind
//! [`Arc`]s as well, so a changed node copies pointers, not objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{ordmap::DiffItem, ordset::DiffItem as SetDiff, OrdMap, OrdSet};

use crate::model::{
    EndpointSlice, Grant, Namespace, Node, ObjectKey, Pod, Route, RouteKey, Service, ServiceId,
    SliceId,
};

/// Every Service and EndpointSlice known, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    services: OrdMap<ServiceId, Arc<Service>>,
    slices: OrdMap<SliceId, Arc<EndpointSlice>>,
    /// The slices of each Service that has any, sorted (derived from
    /// `slices`). A Service has one or a few: a shared slice is far smaller
    /// than a persistent set, and as cheap to clone.
    slices_of: OrdMap<ServiceId, Arc<[SliceId]>>,
    /// Namespaces labelled `zerohop.io/fast-path: "off"`.
    opted_out: OrdSet<String>,
    /// Zone of each known node.
    zones: OrdMap<String, Option<String>>,
    /// HTTPRoutes and GRPCRoutes with a Service parent.
    routes: OrdMap<RouteKey, Route>,
    /// ReferenceGrants.
    grants: OrdMap<ObjectKey, Grant>,
    /// Pods (the sources read those of this node only).
    pods: OrdMap<ObjectKey, Pod>,
}

impl ClusterView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Service. Returns whether the view changed.
    pub fn apply_service(&mut self, service: impl Into<Arc<Service>>) -> bool {
        let service = service.into();
        upsert(&mut self.services, service.id.clone(), service)
    }

    /// Removes a Service (its slices stay until they are deleted too).
    /// Returns whether the view changed.
    pub fn delete_service(&mut self, id: &ServiceId) -> bool {
        self.services.remove(id).is_some()
    }

    /// Adds or replaces an EndpointSlice. Returns whether the view changed.
    pub fn apply_slice(&mut self, slice: impl Into<Arc<EndpointSlice>>) -> bool {
        let slice = slice.into();
        let id = slice.id.clone();
        let service = slice.service.clone();
        let Some(before) = upsert_returning(&mut self.slices, id.clone(), slice) else {
            return false;
        };
        match before {
            // The usual update: same Service, so the index already holds it.
            Some(before) if before.service == service => return true,
            Some(before) => self.unindex_slice(&before),
            None => {}
        }
        let ids = self.slices_of.get(&service).map_or(&[][..], |ids| &ids[..]);
        if let Err(at) = ids.binary_search(&id) {
            let mut ids = ids.to_vec();
            ids.insert(at, id);
            self.slices_of.insert(service, ids.into());
        }
        true
    }

    /// Removes an EndpointSlice. Returns whether the view changed.
    pub fn delete_slice(&mut self, id: &SliceId) -> bool {
        match self.slices.remove(id) {
            Some(slice) => {
                self.unindex_slice(&slice);
                true
            }
            None => false,
        }
    }

    fn unindex_slice(&mut self, slice: &EndpointSlice) {
        if let Some(ids) = self.slices_of.get(&slice.service) {
            let rest: Vec<SliceId> = ids.iter().filter(|id| **id != slice.id).cloned().collect();
            if rest.is_empty() {
                self.slices_of.remove(&slice.service);
            } else {
                self.slices_of.insert(slice.service.clone(), rest.into());
            }
        }
    }

    /// Records a Namespace's opt-out label. Returns whether the view changed.
    pub fn apply_namespace(&mut self, namespace: Namespace) -> bool {
        if namespace.fast_path {
            self.opted_out.remove(&namespace.name).is_some()
        } else {
            self.opted_out.insert(namespace.name).is_none()
        }
    }

    /// Forgets a Namespace. Returns whether the view changed.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.opted_out.remove(name).is_some()
    }

    /// Whether zerohop handles the Services of namespace `name`.
    pub fn namespace_fast_path(&self, name: &str) -> bool {
        !self.opted_out.contains(name)
    }

    /// Records a Node's zone. Returns whether the view changed.
    pub fn apply_node(&mut self, node: Node) -> bool {
        self.zones.insert(node.name, node.zone.clone()) != Some(node.zone)
    }

    /// Forgets a Node. Returns whether the view changed.
    pub fn delete_node(&mut self, name: &str) -> bool {
        self.zones.remove(name).is_some()
    }

    /// The zone of node `name`, when known.
    pub fn node_zone(&self, name: &str) -> Option<&str> {
        self.zones.get(name).and_then(Option::as_deref)
    }

    /// Adds or replaces a route. Returns whether the view changed.
    pub fn apply_route(&mut self, route: Route) -> bool {
        upsert(&mut self.routes, route.key(), route)
    }

    /// Removes a route. Returns whether the view changed.
    pub fn delete_route(&mut self, key: &RouteKey) -> bool {
        self.routes.remove(key).is_some()
    }

    /// Adds or replaces a ReferenceGrant. Returns whether the view changed.
    pub fn apply_grant(&mut self, grant: Grant) -> bool {
        let key = (
            grant.0.metadata.namespace.clone(),
            grant.0.metadata.name.clone(),
        );
        upsert(&mut self.grants, key, grant)
    }

    /// Removes a ReferenceGrant. Returns whether the view changed.
    pub fn delete_grant(&mut self, key: &ObjectKey) -> bool {
        self.grants.remove(key).is_some()
    }

    /// Adds or replaces a Pod. Returns whether the view changed.
    pub fn apply_pod(&mut self, pod: Pod) -> bool {
        let key = (pod.namespace.clone(), pod.name.clone());
        upsert(&mut self.pods, key, pod)
    }

    /// Removes a Pod. Returns whether the view changed.
    pub fn delete_pod(&mut self, key: &ObjectKey) -> bool {
        self.pods.remove(key).is_some()
    }

    /// Every HTTPRoute and GRPCRoute with a Service parent, by kind,
    /// namespace and name.
    pub fn routes(&self) -> &OrdMap<RouteKey, Route> {
        &self.routes
    }

    /// Every ReferenceGrant, by namespace and name.
    pub fn grants(&self) -> &OrdMap<ObjectKey, Grant> {
        &self.grants
    }

    /// Every Pod, by namespace and name.
    pub fn pods(&self) -> &OrdMap<ObjectKey, Pod> {
        &self.pods
    }

    /// Every Service, ordered by id.
    pub fn services(&self) -> &OrdMap<ServiceId, Arc<Service>> {
        &self.services
    }

    /// The EndpointSlices of Service `id`, ordered by slice id.
    pub fn slices_of(&self, id: &ServiceId) -> Vec<&EndpointSlice> {
        self.slices_of
            .get(id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|slice| self.slices.get(slice).map(|slice| &**slice))
            .collect()
    }

    /// Every EndpointSlice, ordered by id.
    pub fn slices(&self) -> &OrdMap<SliceId, Arc<EndpointSlice>> {
        &self.slices
    }

    /// The Services whose plan may differ between `before` and this view:
    /// those added, removed or changed, those whose slices changed, those
    /// of a namespace whose opt-out changed, and those a changed HTTPRoute
    /// names as its parent, before or after. [`Touched::All`] when what
    /// changed concerns every Service (a node's zone, a ReferenceGrant).
    /// Pods concern no plan. Objects shared with `before` (the same
    /// [`Arc`]) cost a pointer comparison.
    pub fn touched_services(&self, before: &ClusterView) -> Touched {
        if self.zones != before.zones || self.grants != before.grants {
            return Touched::All;
        }
        let mut touched = BTreeSet::new();
        for (id, _) in changed(&before.services, &self.services) {
            touched.insert(id.clone());
        }
        for (_, slice) in changed(&before.slices, &self.slices) {
            touched.insert(slice.service.clone());
        }
        for namespace in before.opted_out.diff(&self.opted_out) {
            let (SetDiff::Add(namespace) | SetDiff::Remove(namespace)) = namespace;
            let ids = |view: &ClusterView| -> Vec<ServiceId> {
                view.services
                    .range(ServiceId::new(namespace.as_str(), "")..)
                    .take_while(|(id, _)| id.namespace == *namespace)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            touched.extend(ids(self));
            touched.extend(ids(before));
        }
        for (_, route) in changed(&before.routes, &self.routes) {
            touched.extend(route.parent_services());
        }
        Touched::Services(touched)
    }
}

/// What [`ClusterView::touched_services`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Every Service may plan differently.
    All,
    /// These Services may plan differently; no other does.
    Services(BTreeSet<ServiceId>),
}

/// The entries of `before` and `after` that differ, each as (key, value)
/// from whichever side holds it (both sides when it changed), in key order.
/// Nodes the two maps share are skipped unvisited.
fn changed<'a, K: Ord + Clone, V: Clone + PartialEq>(
    before: &'a OrdMap<K, V>,
    after: &'a OrdMap<K, V>,
) -> Vec<(&'a K, &'a V)> {
    let mut found = Vec::new();
    for item in before.diff(after) {
        match item {
            DiffItem::Add(key, value) | DiffItem::Remove(key, value) => found.push((key, value)),
            DiffItem::Update { old, new } => found.extend([old, new]),
        }
    }
    found
}

/// Inserts or replaces `value`; returns whether the map changed.
fn upsert<K: Ord + Clone, V: Clone + PartialEq>(map: &mut OrdMap<K, V>, key: K, value: V) -> bool {
    upsert_returning(map, key, value).is_some()
}

/// Inserts or replaces `value`: `None` when the map already held it, else
/// `Some` of the value replaced, if any.
fn upsert_returning<K: Ord + Clone, V: Clone + PartialEq>(
    map: &mut OrdMap<K, V>,
    key: K,
    value: V,
) -> Option<Option<V>> {
    if map.get(&key) == Some(&value) {
        return None;
    }
    Some(map.insert(key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, TrafficPolicy};

    fn service(name: &str, ip: &str) -> Service {
        Service {
            id: ServiceId::new("default", name),
            cluster_ips: vec![ip.parse().unwrap()],
            ports: vec![],
            traffic: TrafficPolicy::Cluster,
            bypass: crate::model::Bypass::Auto,
            affinity_seconds: None,
            fast_path: true,
        }
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            id: SliceId::new("default", name),
            service: ServiceId::new("default", service),
            family: Family::V4,
            ports: vec![],
            endpoints: vec![],
        }
    }

    #[test]
    fn apply_replaces_and_reports_changes() {
        let mut view = ClusterView::new();
        assert!(view.apply_service(service("web", "10.96.0.1")));
        assert!(!view.apply_service(service("web", "10.96.0.1")));
        assert!(view.apply_service(service("web", "10.96.0.2")));
        assert_eq!(view.services().len(), 1);
        assert_eq!(
            view.services()[&ServiceId::new("default", "web")].cluster_ips,
            vec!["10.96.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(view.apply_slice(slice("web-1", "web")));
        assert!(!view.apply_slice(slice("web-1", "web")));
        assert!(view.apply_slice(slice("web-1", "other")));
        assert_eq!(view.slices().len(), 1);
    }

    #[test]
    fn each_service_finds_exactly_its_slices_as_they_change_and_move() {
        let mut view = ClusterView::new();
        let names = |view: &ClusterView, service: &str| -> Vec<String> {
            view.slices_of(&ServiceId::new("default", service))
                .iter()
                .map(|slice| slice.id.name.clone())
                .collect()
        };
        view.apply_slice(slice("web-b", "web"));
        view.apply_slice(slice("web-a", "web"));
        assert_eq!(names(&view, "web"), ["web-a", "web-b"]);
        // An update that keeps its Service changes the slice, not the index.
        let mut updated = slice("web-a", "web");
        updated.family = Family::V6;
        assert!(view.apply_slice(updated));
        assert_eq!(names(&view, "web"), ["web-a", "web-b"]);
        assert_eq!(
            view.slices_of(&ServiceId::new("default", "web"))[0].family,
            Family::V6
        );
        // A slice relabelled to another Service leaves the first one's.
        assert!(view.apply_slice(slice("web-a", "api")));
        assert_eq!(names(&view, "web"), ["web-b"]);
        assert_eq!(names(&view, "api"), ["web-a"]);
        assert!(view.delete_slice(&SliceId::new("default", "web-b")));
        assert!(names(&view, "web").is_empty());
        assert_eq!(view, {
            let mut fresh = ClusterView::new();
            fresh.apply_slice(slice("web-a", "api"));
            fresh
        });
    }

    #[test]
    fn delete_removes_only_that_object() {
        let mut view = ClusterView::new();
        view.apply_service(service("web", "10.96.0.1"));
        view.apply_service(service("api", "10.96.0.2"));
        view.apply_slice(slice("web-1", "web"));
        assert!(view.delete_service(&ServiceId::new("default", "web")));
        assert!(!view.delete_service(&ServiceId::new("default", "web")));
        assert_eq!(
            view.services().keys().collect::<Vec<_>>(),
            vec![&ServiceId::new("default", "api")]
        );
        assert_eq!(view.slices().len(), 1);
        assert!(view.delete_slice(&SliceId::new("default", "web-1")));
        assert!(!view.delete_slice(&SliceId::new("default", "web-1")));
        assert!(view.slices().is_empty());
    }

    #[test]
    fn views_with_the_same_objects_are_equal_whatever_the_order() {
        let mut first = ClusterView::new();
        first.apply_service(service("web", "10.96.0.1"));
        first.apply_service(service("api", "10.96.0.2"));
        let mut second = ClusterView::new();
        second.apply_service(service("api", "10.96.0.2"));
        second.apply_service(service("web", "10.96.0.1"));
        assert_eq!(first, second);
        second.apply_slice(slice("web-1", "web"));
        assert_ne!(first, second);
    }
}
