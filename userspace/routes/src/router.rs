//! The waypoint's routing decision for one request: which route rule of the
//! Service the client dialled applies, and what to do (answer directly, or
//! forward to which endpoint, with which edits).
//!
//! Input is [`WaypointConfig`], the JSON file the agent writes for the
//! waypoint; [`Router::new`] compiles it once per change.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::model::{HeaderModifier, HttpRoute, ReferenceGrant};

/// Everything the waypoint needs, written by the agent (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct WaypointConfig {
    /// Every Service (not only L7 ones): parents and backends resolve against it.
    pub services: Vec<ServiceInfo>,
    /// Every HTTPRoute with a Service parent, as read (invalid ones included:
    /// the router applies the spec's rules for them).
    pub routes: Vec<HttpRoute>,
    pub grants: Vec<ReferenceGrant>,
    /// Ready endpoints of each Service port.
    pub endpoints: Vec<ServiceEndpoints>,
    /// Namespace of each pod IP on this node (the waypoint's possible clients).
    pub clients: BTreeMap<IpAddr, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// TCP Service ports.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceEndpoints {
    pub namespace: String,
    pub name: String,
    /// The Service port.
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Endpoint {
    /// Endpoint address and target port.
    pub addr: SocketAddr,
    /// Runs on this node.
    pub local: bool,
}

/// The parts of a request routing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Upper case, as sent.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Names lower case; repeated names appear once per value.
    pub headers: Vec<(String, String)>,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The destination is no L7 Service the waypoint knows.
    UnknownService,
    /// Answer without forwarding: 404 (no rule matches), 500 (the rule's
    /// backends are invalid), 503 (no ready endpoint), a redirect, ...
    Respond(Response),
    /// Forward upstream.
    Forward(Forward),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Why, for logs and the response body.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `namespace/name` of the route and the rule index, for logs.
    pub route: String,
    /// The chosen endpoint.
    pub upstream: SocketAddr,
    /// Request headers after the filters (names lower case, in order).
    pub request_headers: Vec<(String, String)>,
    /// Path and query after URLRewrite.
    pub path_and_query: String,
    /// Host after URLRewrite, when rewritten.
    pub host: Option<String>,
    /// To apply to the upstream's response.
    pub response_headers: HeaderModifier,
    /// Endpoints that get a copy; their answers are ignored.
    pub mirrors: Vec<SocketAddr>,
    /// HTTPRoute `timeouts.request`: the whole exchange, client side.
    pub request_timeout: Option<Duration>,
    /// HTTPRoute `timeouts.backendRequest`: one upstream attempt.
    pub backend_timeout: Option<Duration>,
}

/// The compiled config.
#[derive(Debug, Default)]
pub struct Router {}

impl Router {
    /// Compiles a config; invalid routes and rules are handled as the spec
    /// prescribes (see the status module).
    pub fn new(_config: &WaypointConfig) -> Router {
        Router {}
    }

    /// `namespace/name` of the L7 Service at a ClusterIP:port, if any.
    pub fn service_at(&self, _destination: SocketAddr) -> Option<String> {
        None
    }

    /// Decides what to do with a request sent by `client` to `destination`
    /// (the ClusterIP:port it dialled). `dice(n)` returns a uniform number
    /// in `0..n` (weighted backend choice).
    pub fn decide(
        &self,
        _destination: SocketAddr,
        _client: IpAddr,
        _request: &RequestHead,
        _dice: &mut dyn FnMut(u32) -> u32,
    ) -> Decision {
        Decision::UnknownService
    }
}
