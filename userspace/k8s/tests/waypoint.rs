//! Which Services are L7 and what the waypoint learns, planned from
//! manifests (the planner's `waypoint` module).

use std::net::SocketAddr;

use zerohop_abi::{SERVICE_L7, SERVICE_NO_BYPASS};
use zerohop_k8s::build_view;
use zerohop_planner::model::{Family, ServiceId};
use zerohop_planner::plan::{frontend_key, PlanProblem, Waypoints};
use zerohop_planner::{plan_with, waypoint_config, ClusterView};
use zerohop_routes::contract::UpstreamHttp;

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

fn flags(plan: &zerohop_planner::Plan, ip: &str, port: u16) -> Option<u32> {
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

/// `appProtocol`: a port that names a protocol other than HTTP stays L4
/// under a route (a TLS or database client never meets the waypoint); one
/// that names HTTP/2 tells the waypoint to speak h2c to its endpoints.
#[test]
fn app_protocol_keeps_non_http_ports_l4_and_tells_the_waypoint_h2c() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: shop}
spec:
  clusterIP: 10.96.0.60
  ports:
  - {name: grpc, port: 50051, appProtocol: kubernetes.io/h2c}
  - {name: tls, port: 443, appProtocol: https}
  - {name: web, port: 80}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mixed-1, namespace: shop, labels: {kubernetes.io/service-name: mixed}}
addressType: IPv4
ports: [{name: grpc, port: 50051}, {name: tls, port: 8443}, {name: web, port: 8080}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mixed, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: mixed}]
  rules: [{backendRefs: [{name: mixed, port: 50051}]}]
"#;
    let built = build_view([("mixed.yaml".to_string(), yaml.to_string())]);
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
    let l7 = |port| flags(&plan, "10.96.0.60", port).map(|flags| flags & SERVICE_L7);
    assert_eq!(
        [l7(50051), l7(443), l7(80)],
        [Some(SERVICE_L7), Some(0), Some(SERVICE_L7)]
    );
    let config = waypoint_config(&built.view, "node1");
    let http: Vec<(u16, UpstreamHttp)> = config
        .endpoints
        .iter()
        .map(|endpoints| (endpoints.port, endpoints.http))
        .collect();
    assert_eq!(
        http,
        [
            (50051, UpstreamHttp::H2c),
            (443, UpstreamHttp::AsClient),
            (80, UpstreamHttp::AsClient)
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
    let plain = zerohop_planner::plan(&view(), "node1");
    assert_eq!(flags(&plain, "10.96.0.30", 80), None);
    assert_eq!(flags(&plain, "10.96.0.40", 80), Some(0));
}

#[test]
fn the_waypoint_learns_routes_ready_endpoints_and_this_nodes_clients() {
    let config = waypoint_config(&view(), "node1");
    let routes: Vec<&str> = config
        .routes
        .iter()
        .map(|route| route.metadata().name.as_str())
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
