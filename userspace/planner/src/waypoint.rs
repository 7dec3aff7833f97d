//! What the node's waypoint needs to know, and which Services are L7.
//!
//! A Service with at least one accepted HTTPRoute or GRPCRoute (parentRef kind Service,
//! the GAMMA pattern) is an L7 Service: its connections go to the waypoint,
//! which applies the routes. The waypoint gets a [`WaypointConfig`]: every
//! route and grant (it resolves routes itself), the Services the routes
//! name with the ready endpoints of each of their ports (marked when on
//! this node), and the namespace of each pod of this node by IP (consumer
//! routes apply per client namespace). Services no route names are not in
//! it: they cannot change what a route does.

use std::collections::BTreeSet;

use zerohop_routes::{
    contract::{Endpoint, ServiceEndpoints, ServiceInfo, WaypointConfig},
    model::{ReferenceGrant, Route as RouteObject},
    status::Inputs,
};

use crate::model::{Protocol, Route, ServiceId};
use crate::plan::ready_targets;
use crate::view::ClusterView;

/// The ports of the view's Services with at least one accepted route
/// (a route whose parentRef names a port attaches to that port only),
/// but those whose `appProtocol` is not HTTP ([`crate::model::ServicePort::http`]).
pub fn l7_ports(view: &ClusterView) -> BTreeSet<(ServiceId, u16)> {
    let routes: Vec<&Route> = view.routes().values().collect();
    let referenced = referenced_services(routes.iter().copied());
    let (services, routes, grants) = route_inputs(view, routes.into_iter(), &referenced);
    zerohop_routes::status::l7_service_ports(&routes, acceptance(&services, &grants))
        .into_iter()
        .map(|(namespace, name, port)| (ServiceId::new(namespace, name), port))
        .filter(|(id, port)| speaks_http(view, id, *port))
        .collect()
}

/// What decides whether routes are accepted. Whether backends in other
/// namespaces need grants does not: an unresolved backend leaves its route
/// accepted.
fn acceptance<'a>(services: &'a [ServiceInfo], grants: &'a [ReferenceGrant]) -> Inputs<'a> {
    Inputs {
        services,
        grants,
        require_reference_grants: false,
    }
}

/// Whether TCP port `port` of Service `id` may be sent to the waypoint.
fn speaks_http(view: &ClusterView, id: &ServiceId, port: u16) -> bool {
    view.services().get(id).is_some_and(|service| {
        service.ports.iter().any(|candidate| {
            candidate.port == port
                && candidate.protocol == Protocol::Tcp
                && candidate.http().is_some()
        })
    })
}

/// [`l7_ports`] of Service `id` alone: only the routes naming it as a
/// parent are evaluated.
pub(crate) fn l7_ports_of(view: &ClusterView, id: &ServiceId) -> BTreeSet<u16> {
    let parent_of: Vec<&Route> = view
        .routes()
        .values()
        .filter(|route| route.parent_services().any(|parent| parent == *id))
        .collect();
    let referenced = referenced_services(parent_of.iter().copied());
    let (services, routes, grants) = route_inputs(view, parent_of.into_iter(), &referenced);
    zerohop_routes::status::l7_service_ports(&routes, acceptance(&services, &grants))
        .into_iter()
        .filter(|(namespace, name, port)| {
            *namespace == id.namespace && *name == id.name && speaks_http(view, id, *port)
        })
        .map(|(_, _, port)| port)
        .collect()
}

/// The waypoint's input for node `node`: the routes and grants, and the
/// Services they name, with the ready endpoints of each of their ports.
/// Grants are not required (the agent's flag may require them).
pub fn waypoint_config(view: &ClusterView, node: &str) -> WaypointConfig {
    let referenced = referenced_services(view.routes().values());
    let mut endpoints = Vec::new();
    for service in referenced.iter().filter_map(|id| view.services().get(id)) {
        let slices = view.slices_of(&service.id);
        for port in service
            .ports
            .iter()
            .filter(|port| port.protocol == Protocol::Tcp)
        {
            let targets = ready_targets(&slices, port, node, None).unwrap_or_default();
            endpoints.push(ServiceEndpoints {
                namespace: service.id.namespace.clone(),
                name: service.id.name.clone(),
                port: port.port,
                http: port.http().unwrap_or_default(),
                endpoints: targets
                    .iter()
                    .map(|target| Endpoint {
                        addr: (target.address, target.port).into(),
                        local: target.local,
                    })
                    .collect(),
            });
        }
    }
    let clients = view
        .pods()
        .values()
        .filter(|pod| pod.node.as_deref() == Some(node))
        .flat_map(|pod| pod.ips.iter().map(|ip| (*ip, pod.namespace.clone())))
        .collect();
    let (services, routes, grants) = route_inputs(view, view.routes().values(), &referenced);
    WaypointConfig {
        services,
        routes,
        grants,
        require_reference_grants: false,
        endpoints,
        clients,
    }
}

/// What `routes` are resolved against: the Services they name,
/// `referenced` (no other Service can change what they do), themselves,
/// and every grant.
fn route_inputs<'a>(
    view: &ClusterView,
    routes: impl Iterator<Item = &'a Route>,
    referenced: &BTreeSet<ServiceId>,
) -> (Vec<ServiceInfo>, Vec<RouteObject>, Vec<ReferenceGrant>) {
    let services = referenced
        .iter()
        .filter_map(|id| view.services().get(id))
        .map(|service| ServiceInfo {
            namespace: service.id.namespace.clone(),
            name: service.id.name.clone(),
            cluster_ips: service.cluster_ips.clone(),
            ports: service
                .ports
                .iter()
                .filter(|port| port.protocol == Protocol::Tcp)
                .map(|port| port.port)
                .collect(),
        })
        .collect();
    let routes = routes.map(|route| route.0.clone()).collect();
    let grants = view
        .grants()
        .values()
        .map(|grant| grant.0.clone())
        .collect();
    (services, routes, grants)
}

/// Every Service some of `routes` name.
fn referenced_services<'a>(routes: impl Iterator<Item = &'a Route>) -> BTreeSet<ServiceId> {
    routes.flat_map(Route::referenced_services).collect()
}
