//! The cluster as the planner sees it: every usable Service and EndpointSlice.
//!
//! Sources (the Kubernetes watcher, manifest files) feed it one object at a
//! time with an `apply_*` (add or replace) or `delete_*` per kind, and the
//! planner reads it whole. Two views compare equal when they hold the same
//! objects, so a source can tell whether a reload changed anything.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    EndpointSlice, Grant, Namespace, Node, ObjectKey, Pod, Route, Service, ServiceId, SliceId,
};

/// Every Service and EndpointSlice known, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    services: BTreeMap<ServiceId, Service>,
    slices: BTreeMap<SliceId, EndpointSlice>,
    /// Namespaces labelled `zerohop.io/fast-path: "off"`.
    opted_out: BTreeSet<String>,
    /// Zone of each known node.
    zones: BTreeMap<String, Option<String>>,
    /// HTTPRoutes with a Service parent.
    routes: BTreeMap<ObjectKey, Route>,
    /// ReferenceGrants.
    grants: BTreeMap<ObjectKey, Grant>,
    /// Pods (the sources read those of this node only).
    pods: BTreeMap<ObjectKey, Pod>,
}

impl ClusterView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Service. Returns whether the view changed.
    pub fn apply_service(&mut self, service: Service) -> bool {
        upsert(&mut self.services, service.id.clone(), service)
    }

    /// Removes a Service (its slices stay until they are deleted too).
    /// Returns whether the view changed.
    pub fn delete_service(&mut self, id: &ServiceId) -> bool {
        self.services.remove(id).is_some()
    }

    /// Adds or replaces an EndpointSlice. Returns whether the view changed.
    pub fn apply_slice(&mut self, slice: EndpointSlice) -> bool {
        upsert(&mut self.slices, slice.id.clone(), slice)
    }

    /// Removes an EndpointSlice. Returns whether the view changed.
    pub fn delete_slice(&mut self, id: &SliceId) -> bool {
        self.slices.remove(id).is_some()
    }

    /// Records a Namespace's opt-out label. Returns whether the view changed.
    pub fn apply_namespace(&mut self, namespace: Namespace) -> bool {
        if namespace.fast_path {
            self.opted_out.remove(&namespace.name)
        } else {
            self.opted_out.insert(namespace.name)
        }
    }

    /// Forgets a Namespace. Returns whether the view changed.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.opted_out.remove(name)
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

    /// Adds or replaces an HTTPRoute. Returns whether the view changed.
    pub fn apply_route(&mut self, route: Route) -> bool {
        let key = (
            route.0.metadata.namespace.clone(),
            route.0.metadata.name.clone(),
        );
        upsert(&mut self.routes, key, route)
    }

    /// Removes an HTTPRoute. Returns whether the view changed.
    pub fn delete_route(&mut self, key: &ObjectKey) -> bool {
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

    /// Every HTTPRoute with a Service parent, by namespace and name.
    pub fn routes(&self) -> &BTreeMap<ObjectKey, Route> {
        &self.routes
    }

    /// Every ReferenceGrant, by namespace and name.
    pub fn grants(&self) -> &BTreeMap<ObjectKey, Grant> {
        &self.grants
    }

    /// Every Pod, by namespace and name.
    pub fn pods(&self) -> &BTreeMap<ObjectKey, Pod> {
        &self.pods
    }

    /// Every Service, ordered by id.
    pub fn services(&self) -> &BTreeMap<ServiceId, Service> {
        &self.services
    }

    /// The EndpointSlices of each Service that has any.
    pub fn slices_by_service(&self) -> BTreeMap<&ServiceId, Vec<&EndpointSlice>> {
        let mut by_service: BTreeMap<&ServiceId, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in self.slices.values() {
            by_service.entry(&slice.service).or_default().push(slice);
        }
        by_service
    }

    /// Every EndpointSlice, ordered by id.
    pub fn slices(&self) -> &BTreeMap<SliceId, EndpointSlice> {
        &self.slices
    }
}

/// Inserts or replaces `value`; returns whether the map changed.
fn upsert<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
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
