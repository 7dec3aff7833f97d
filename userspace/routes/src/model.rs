//! The HTTPRoute (`gateway.networking.k8s.io/v1`) and ReferenceGrant
//! (`gateway.networking.k8s.io/v1beta1`) fields zerohop reads, deserialized
//! straight from the objects' JSON (camelCase, as the API serves them).
//! Fields zerohop does not read are ignored; defaults are the spec's.

use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "gateway.networking.k8s.io";

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

impl HttpRoute {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
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
            "timeouts": {"request": "10s", "backendRequest": "2s"}
          },
          {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
        ]
      },
      "status": {"parents": []}
    }"#;

    #[test]
    fn an_http_route_round_trips_through_json() {
        let route: HttpRoute = serde_json::from_str(HTTP_ROUTE).unwrap();
        assert_eq!(route.key(), "faces/smiley-route");
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
