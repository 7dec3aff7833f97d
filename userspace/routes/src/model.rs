//! The HTTPRoute and GRPCRoute (`gateway.networking.k8s.io/v1`) and
//! ReferenceGrant (`gateway.networking.k8s.io/v1beta1`) fields zerohop
//! reads, deserialized straight from the objects' JSON (camelCase, as the
//! API serves them). Fields zerohop does not read are ignored; defaults are
//! the spec's.

use serde::{Deserialize, Serialize};

/// API group of the Gateway API kinds.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// A route of either kind zerohop serves, tagged by its `kind` as the API
/// serves it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind")]
pub enum Route {
    #[serde(rename = "HTTPRoute")]
    Http(HttpRoute),
    #[serde(rename = "GRPCRoute")]
    Grpc(GrpcRoute),
}

/// The kind of a [`Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub const ALL: [RouteKind; 2] = [RouteKind::Http, RouteKind::Grpc];

    /// The kind's name, as objects and ReferenceGrants spell it.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The kind's resource (plural) name in the API.
    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
        }
    }
}

impl Route {
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Http(_) => RouteKind::Http,
            Route::Grpc(_) => RouteKind::Grpc,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Route::Http(route) => &route.metadata,
            Route::Grpc(route) => &route.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Route::Http(route) => &mut route.metadata,
            Route::Grpc(route) => &mut route.metadata,
        }
    }

    pub fn parent_refs(&self) -> &[ParentRef] {
        match self {
            Route::Http(route) => &route.spec.parent_refs,
            Route::Grpc(route) => &route.spec.parent_refs,
        }
    }

    /// Every backendRef of every rule, mirrors' included.
    pub fn backend_targets(&self) -> Vec<&ObjectRef> {
        let (filters, backends): (Vec<&Filter>, Vec<&BackendRef>) = match self {
            Route::Http(route) => (
                route.spec.rules.iter().flat_map(|r| &r.filters).collect(),
                route
                    .spec
                    .rules
                    .iter()
                    .flat_map(|r| &r.backend_refs)
                    .collect(),
            ),
            Route::Grpc(route) => (
                route.spec.rules.iter().flat_map(|r| &r.filters).collect(),
                route
                    .spec
                    .rules
                    .iter()
                    .flat_map(|r| &r.backend_refs)
                    .collect(),
            ),
        };
        let backend_filters = backends.iter().flat_map(|b| &b.filters);
        let mirrors = filters
            .into_iter()
            .chain(backend_filters)
            .filter_map(|f| f.request_mirror.as_ref())
            .map(|m| &m.backend_ref);
        backends.iter().map(|b| &b.target).chain(mirrors).collect()
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        let metadata = self.metadata();
        format!("{}/{}", metadata.namespace, metadata.name)
    }

    /// Where the route goes among routes of equal precedence.
    pub fn seniority(&self) -> Seniority {
        let timestamp = self.metadata().creation_timestamp.clone();
        Seniority(timestamp.is_none(), timestamp, self.key())
    }
}

/// The spec's order of routes of equal precedence (HTTPRouteRule and
/// GRPCRouteRule matches): the oldest first (RFC 3339 UTC timestamps sort
/// as strings; a route without one goes last), then `namespace/name` in
/// alphabetical order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seniority(bool, Option<String>, String);

impl From<HttpRoute> for Route {
    fn from(route: HttpRoute) -> Route {
        Route::Http(route)
    }
}

impl From<GrpcRoute> for Route {
    fn from(route: GrpcRoute) -> Route {
        Route::Grpc(route)
    }
}

/// An HTTPRoute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

/// The object metadata zerohop reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// RFC 3339; orders routes of equal precedence (oldest first).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A parent of a route: for zerohop, a Service (group `""`, kind `Service`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Defaults to the Gateway API group; `""` is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Defaults to `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Kind of the Services zerohop serves and routes to.
pub const SERVICE_KIND: &str = "Service";

/// True for the core API group: `""`, or `"core"`, which the Gateway API
/// mesh documentation itself uses in examples and meshes accept.
pub fn is_core_group(group: &str) -> bool {
    group.is_empty() || group == "core"
}

impl ParentRef {
    /// True for a core-group Service parent (the GAMMA pattern). The group
    /// must be given: left out, it defaults to the Gateway API group.
    pub fn is_service(&self) -> bool {
        self.group.as_deref().is_some_and(is_core_group)
            && self.kind.as_deref() == Some(SERVICE_KIND)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Empty means one match: PathPrefix `/`.
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Defaults to PathPrefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<QueryMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

/// Same shape as a header match; names are case-sensitive here.
pub type QueryMatch = HeaderMatch;

/// A filter. `type` says which of the optional fields applies; a type
/// zerohop does not implement keeps its name in `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: ObjectRef,
    /// Share of requests mirrored, 0 to 100; at most one of `percent` and
    /// `fraction`; neither mirrors every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator` (default 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

/// A reference to a backend Service (group `""`, kind `Service` by default).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ObjectRef {
    /// True for a core-group Service (the defaults: group `""`, kind `Service`).
    pub fn is_service(&self) -> bool {
        is_core_group(self.group.as_deref().unwrap_or(""))
            && self.kind.as_deref().unwrap_or(SERVICE_KIND) == SERVICE_KIND
    }

    /// `group/kind` as written, with the defaults, for messages.
    pub fn group_kind(&self) -> String {
        format!(
            "{}/{}",
            self.group.as_deref().unwrap_or(""),
            self.kind.as_deref().unwrap_or(SERVICE_KIND)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(flatten)]
    pub target: ObjectRef,
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// Gateway API durations (`1h2m3s4ms` style strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// HTTPRouteRetry (GEP-1731): which answers to retry, how often, and how
/// long to wait in between.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Status codes, 400 to 599.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<i64>,
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// A Gateway API duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// A GRPCRoute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

/// A GRPCRoute rule: HTTPRoute's filters and backendRefs (GRPCRoute allows
/// fewer filter types), gRPC matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Empty matches every gRPC request.
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMatch {
    /// Left out, every service and method matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC service and/or method; at least one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A ReferenceGrant: lets routes in `from` namespaces refer to Services in
/// the grant's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrant {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ReferenceGrantSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `kubectl get httproute -o json` shows the Gateway API mesh example.
    const HTTP_ROUTE: &str = r#"{
      "apiVersion": "gateway.networking.k8s.io/v1",
      "kind": "HTTPRoute",
      "metadata": {
        "name": "smiley-route",
        "namespace": "faces",
        "creationTimestamp": "2024-03-01T10:00:00Z",
        "generation": 3,
        "resourceVersion": "12345",
        "uid": "0b9c3a1e-7d3f-4c2e-9f58-1f0a9a2e0c11"
      },
      "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "smiley", "port": 80}],
        "rules": [
          {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                         "headers": [{"type": "Exact", "name": "x-canary", "value": "true"}],
                         "queryParams": [{"type": "RegularExpression", "name": "v", "value": "[0-9]+"}],
                         "method": "GET"}],
            "filters": [
              {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "zerohop"}], "remove": ["x-debug"]}},
              {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
              {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "smiley-shadow", "port": 80}}}
            ],
            "backendRefs": [
              {"group": "", "kind": "Service", "name": "smiley", "port": 80, "weight": 90},
              {"name": "smiley2", "namespace": "faces-next", "port": 80, "weight": 10,
               "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-version", "value": "2"}]}}]}
            ],
            "timeouts": {"request": "10s", "backendRequest": "2s"},
            "retry": {"codes": [500, 503], "attempts": 2, "backoff": "100ms"}
          },
          {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
        ]
      },
      "status": {"parents": []}
    }"#;

    #[test]
    fn an_http_route_round_trips_through_json() {
        let route: HttpRoute = serde_json::from_str(HTTP_ROUTE).unwrap();
        assert_eq!(route.metadata.name, "smiley-route");
        assert_eq!(route.metadata.generation, Some(3));
        assert!(route.spec.parent_refs[0].is_service());
        let rule = &route.spec.rules[0];
        assert_eq!(
            rule.matches[0].query_params[0].kind.as_deref(),
            Some("RegularExpression")
        );
        assert_eq!(
            rule.filters[2]
                .request_mirror
                .as_ref()
                .unwrap()
                .backend_ref
                .name,
            "smiley-shadow"
        );
        assert_eq!(
            rule.backend_refs[1].target.namespace.as_deref(),
            Some("faces-next")
        );
        assert_eq!(rule.backend_refs[1].weight, Some(10));
        assert_eq!(
            rule.backend_refs[1].filters[0].kind,
            "ResponseHeaderModifier"
        );
        assert_eq!(
            rule.timeouts.as_ref().unwrap().backend_request.as_deref(),
            Some("2s")
        );
        let retry = rule.retry.as_ref().unwrap();
        assert_eq!(retry.codes, [500, 503]);
        assert_eq!(retry.attempts, Some(2));
        assert_eq!(retry.backoff.as_deref(), Some("100ms"));
        assert_eq!(
            route.spec.rules[1].filters[0]
                .request_redirect
                .as_ref()
                .unwrap()
                .status_code,
            Some(301)
        );

        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["spec"]["rules"][0]["backendRefs"][0]["weight"], 90);
        assert_eq!(
            json["spec"]["rules"][0]["filters"][1]["urlRewrite"]["path"]["replacePrefixMatch"],
            "/"
        );
        assert_eq!(serde_json::from_value::<HttpRoute>(json).unwrap(), route);
    }

    #[test]
    fn routes_of_both_kinds_read_by_their_kind() {
        // The Gateway API mesh conformance GRPCRoute, as the API serves it.
        let grpc = r#"{
          "apiVersion": "gateway.networking.k8s.io/v1",
          "kind": "GRPCRoute",
          "metadata": {"name": "mesh-grpc-weighted-backends", "namespace": "gateway-conformance-mesh"},
          "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 7070}],
            "rules": [{
              "matches": [{"method": {"service": "grpc.health.v1.Health", "method": "Check"},
                           "headers": [{"name": "x-version", "value": "2"}]}],
              "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "zerohop"}]}}],
              "backendRefs": [{"name": "echo-v1", "port": 7070, "weight": 70}, {"name": "echo-v2", "port": 7070, "weight": 30}]
            }]
          }
        }"#;
        let route: Route = serde_json::from_str(grpc).unwrap();
        assert_eq!(route.kind(), RouteKind::Grpc);
        assert_eq!(
            route.key(),
            "gateway-conformance-mesh/mesh-grpc-weighted-backends"
        );
        let Route::Grpc(grpc_route) = &route else {
            panic!("a GRPCRoute")
        };
        let method = grpc_route.spec.rules[0].matches[0].method.as_ref().unwrap();
        assert_eq!(method.service.as_deref(), Some("grpc.health.v1.Health"));
        assert_eq!(route.backend_targets().len(), 2);
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["kind"], "GRPCRoute");
        assert_eq!(serde_json::from_value::<Route>(json).unwrap(), route);

        let http: Route = serde_json::from_str(HTTP_ROUTE).unwrap();
        assert_eq!(http.kind(), RouteKind::Http);
        let targets: Vec<&str> = http
            .backend_targets()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(targets, ["smiley", "smiley2", "smiley-shadow"]);
        assert!(serde_json::from_str::<Route>(r#"{"kind": "TCPRoute", "metadata": {}}"#).is_err());
    }

    #[test]
    fn service_parents_need_the_core_group() {
        let parent = |group: Option<&str>, kind: Option<&str>| ParentRef {
            group: group.map(Into::into),
            kind: kind.map(Into::into),
            namespace: None,
            name: "svc".into(),
            section_name: None,
            port: None,
        };
        assert!(parent(Some(""), Some("Service")).is_service());
        assert!(parent(Some("core"), Some("Service")).is_service());
        assert!(
            !parent(None, Some("Service")).is_service(),
            "the group defaults to gateway.networking.k8s.io"
        );
        assert!(!parent(None, None).is_service());
        assert!(!parent(Some(""), Some("Gateway")).is_service());
    }
}
