//! Fixtures shared by the unit tests.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::{
    contract::{Endpoint, ServiceEndpoints, ServiceInfo, UpstreamHttp},
    model::{GrpcRoute, HttpRoute, ReferenceGrant},
    request::RequestHead,
};

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

pub fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[u16]) -> ServiceInfo {
    ServiceInfo {
        namespace: namespace.into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        ports: ports.to_vec(),
    }
}

/// Endpoints of a Service port: `(address, local)`.
pub fn endpoints(
    namespace: &str,
    name: &str,
    port: u16,
    list: &[(&str, bool)],
) -> ServiceEndpoints {
    ServiceEndpoints {
        namespace: namespace.into(),
        name: name.into(),
        port,
        http: UpstreamHttp::AsClient,
        endpoints: list
            .iter()
            .map(|(a, local)| Endpoint {
                addr: addr(a),
                local: *local,
            })
            .collect(),
    }
}

pub fn route(json: Value) -> HttpRoute {
    serde_json::from_value(json).expect("a valid HTTPRoute")
}

pub fn grpc_route(json: Value) -> GrpcRoute {
    serde_json::from_value(json).expect("a valid GRPCRoute")
}

/// A route in `namespace` on the Service parent `parent` (`ns/name`, or
/// `name` in the route's namespace) with the given rules.
pub fn service_route(namespace: &str, name: &str, parent: &str, rules: Value) -> HttpRoute {
    route(route_json(namespace, name, parent, rules))
}

/// [`service_route`], a GRPCRoute.
pub fn service_grpc_route(namespace: &str, name: &str, parent: &str, rules: Value) -> GrpcRoute {
    grpc_route(route_json(namespace, name, parent, rules))
}

fn route_json(namespace: &str, name: &str, parent: &str, rules: Value) -> Value {
    let parent_ref = match parent.split_once('/') {
        Some((ns, svc)) => {
            serde_json::json!({"group": "", "kind": "Service", "namespace": ns, "name": svc})
        }
        None => serde_json::json!({"group": "", "kind": "Service", "name": parent}),
    };
    serde_json::json!({
        "metadata": {"namespace": namespace, "name": name, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"parentRefs": [parent_ref], "rules": rules}
    })
}

/// Lets HTTPRoutes in `from` refer to Services in `to` (every Service, or `name`).
pub fn grant(to: &str, from: &str, name: Option<&str>) -> ReferenceGrant {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": to, "name": format!("from-{from}")},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from}],
            "to": [{"group": "", "kind": "Service", "name": name}]
        }
    }))
    .unwrap()
}

pub fn request(method: &str, path_and_query: &str, headers: &[(&str, &str)]) -> RequestHead {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (path_and_query, None),
    };
    RequestHead {
        method: method.into(),
        path: path.into(),
        query,
        headers: header_map(headers),
    }
}

/// Headers in this order, a name repeated once per value.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

/// `headers` as (name, value) pairs, in iteration order.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}
