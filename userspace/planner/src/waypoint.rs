//! What the node's waypoint needs to know, and which Services are L7.
//!
//! A Service with at least one accepted HTTPRoute (parentRef kind Service,
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
    model::{HttpRoute, ReferenceGrant},
};

use crate::model::{Protocol, Route, ServiceId};
use crate::plan::ready_targets;
use crate::view::ClusterView;

/// The ports of the view's Services with at least one accepted HTTPRoute
/// (a route whose parentRef names a port attaches to that port only).
pub fn l7_ports(view: &ClusterView) -> BTreeSet<(ServiceId, u16)> {
    let routes: Vec<&Route> = view.routes().values().collect();
    let referenced = referenced_services(routes.iter().copied());
    let (services, routes, grants) = route_inputs(view, routes.into_iter(), &referenced);
    zerohop_routes::status::l7_service_ports(&routes, &services, &grants)
        .into_iter()
        .map(|(namespace, name, port)| (ServiceId::new(namespace, name), port))
        .collect()
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
    zerohop_routes::status::l7_service_ports(&routes, &services, &grants)
        .into_iter()
        .filter(|(namespace, name, _)| *namespace == id.namespace && *name == id.name)
        .map(|(_, _, port)| port)
        .collect()
}

/// The waypoint's input for node `node`: the routes and grants, and the
/// Services they name, with the ready endpoints of each of their ports.
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
) -> (Vec<ServiceInfo>, Vec<HttpRoute>, Vec<ReferenceGrant>) {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use zerohop_abi::{SERVICE_L7, SERVICE_NO_BYPASS};

    use super::*;
    use crate::node_plan::plan_with;
    use crate::plan::{frontend_key, PlanProblem, Waypoints};
    use crate::{build_view, model::Family};

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {zerohop.io/bypass: "off"}}
spec:
  clusterIPs: [10.96.0.30, "fd00:96::30"]
  ports: [{name: http, port: 80}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node1}
- {addresses: [10.244.2.5], nodeName: node2}
- {addresses: [10.244.2.6], nodeName: node2, conditions: {ready: false}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gateway-only, namespace: shop}
spec:
  parentRefs: [{name: my-gateway}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: team-a}
spec: {nodeName: node1}
status: {podIPs: [{ip: 10.244.1.9}, {ip: "fd00:244:1::9"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: team-b}
spec: {nodeName: node2}
status: {podIP: 10.244.2.9}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: kube-system}
spec: {nodeName: node1, hostNetwork: true}
status: {podIP: 192.168.0.1}
"#;

    fn view() -> ClusterView {
        let built = build_view([("cluster.yaml".to_string(), SERVICES.to_string())]);
        assert_eq!(built.problems, vec![]);
        built.view
    }

    fn flags(plan: &crate::Plan, ip: &str, port: u16) -> Option<u32> {
        let key = frontend_key(ip.parse().unwrap(), port);
        plan.desired.services.get(&key).map(|service| service.flags)
    }

    #[test]
    fn only_the_routed_port_of_an_l7_service_goes_to_the_waypoint() {
        let plan = plan_with(
            &view(),
            "node1",
            Waypoints { v4: true, v6: true },
            &Default::default(),
        );
        assert_eq!(plan.problems, vec![]);
        assert_eq!(
            flags(&plan, "10.96.0.30", 80),
            Some(SERVICE_L7 | SERVICE_NO_BYPASS)
        );
        assert_eq!(
            flags(&plan, "fd00:96::30", 80),
            Some(SERVICE_L7 | SERVICE_NO_BYPASS)
        );
        assert_eq!(flags(&plan, "10.96.0.30", 9000), Some(SERVICE_NO_BYPASS));
        assert_eq!(flags(&plan, "10.96.0.40", 80), Some(0));
        // Endpoints stay planned, for the waypoint's own connections.
        let web = frontend_key("10.96.0.30".parse().unwrap(), 80);
        assert_eq!(plan.desired.services[&web].endpoints, 2);
    }

    #[test]
    fn a_route_on_a_port_number_leaves_its_udp_twin_an_l4_frontend() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: shop}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: shop, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: dns, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: dns, port: 53}]
  rules: [{backendRefs: [{name: dns, port: 53}]}]
"#;
        let built = build_view([("dns.yaml".to_string(), yaml.to_string())]);
        assert_eq!(built.problems, vec![]);
        let plan = plan_with(
            &built.view,
            "node1",
            Waypoints {
                v4: true,
                v6: false,
            },
            &Default::default(),
        );
        let flags: Vec<(u8, u32)> = plan
            .desired
            .services
            .iter()
            .map(|(key, service)| (key.proto, service.flags & SERVICE_L7))
            .collect();
        assert_eq!(
            flags,
            vec![
                (zerohop_abi::PROTO_TCP, SERVICE_L7),
                (zerohop_abi::PROTO_UDP, 0)
            ]
        );
    }

    #[test]
    fn without_a_waypoint_of_its_family_an_l7_frontend_is_left_alone() {
        let plan = plan_with(
            &view(),
            "node1",
            Waypoints {
                v4: true,
                v6: false,
            },
            &Default::default(),
        );
        assert_eq!(
            flags(&plan, "10.96.0.30", 80),
            Some(SERVICE_L7 | SERVICE_NO_BYPASS)
        );
        assert_eq!(
            flags(&plan, "fd00:96::30", 80),
            None,
            "never a shortcut past the routes"
        );
        assert_eq!(
            plan.problems,
            vec![PlanProblem::NoWaypoint {
                service: ServiceId::new("shop", "web"),
                family: Family::V6,
            }]
        );
        let plain = crate::plan(&view(), "node1");
        assert_eq!(flags(&plain, "10.96.0.30", 80), None);
        assert_eq!(flags(&plain, "10.96.0.40", 80), Some(0));
    }

    #[test]
    fn the_waypoint_learns_routes_ready_endpoints_and_this_nodes_clients() {
        let config = waypoint_config(&view(), "node1");
        let routes: Vec<&str> = config
            .routes
            .iter()
            .map(|route| route.metadata.name.as_str())
            .collect();
        assert_eq!(routes, ["web"], "routes of Gateways only are not read");
        let web_http = config
            .endpoints
            .iter()
            .find(|entry| entry.name == "web" && entry.port == 80)
            .unwrap();
        let endpoints: Vec<(SocketAddr, bool)> = web_http
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.addr, endpoint.local))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("10.244.1.5:8080".parse().unwrap(), true),
                ("10.244.2.5:8080".parse().unwrap(), false)
            ]
        );
        let clients: Vec<(String, &str)> = config
            .clients
            .iter()
            .map(|(ip, namespace)| (ip.to_string(), namespace.as_str()))
            .collect();
        assert_eq!(
            clients,
            [
                ("10.244.1.9".to_string(), "team-a"),
                ("fd00:244:1::9".to_string(), "team-a")
            ]
        );
        let services: Vec<(&str, &[u16])> = config
            .services
            .iter()
            .map(|service| (service.name.as_str(), service.ports.as_slice()))
            .collect();
        // Only the Services a route names: "plain" cannot change a route.
        assert_eq!(services, [("web", &[80, 9000][..])]);
        assert!(config.endpoints.iter().all(|service| service.name == "web"));
    }
}
