//! What the agent and the waypoint agree on: the [`WaypointConfig`] the
//! agent writes and the waypoint reads, where that file lives, and the mark
//! of the waypoint's own sockets. Both binaries import this module, not the
//! router, so the agent does not depend on how the waypoint decides.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::model::{ReferenceGrant, Route};

/// Where the agent writes, and the waypoint reads, [`WaypointConfig`] unless
/// told otherwise (`zerohop agent --waypoint-config`, `zerohop-waypoint --config`).
pub const DEFAULT_CONFIG_PATH: &str = "/run/zerohop/waypoint.json";

/// The SO_MARK of the waypoint's own sockets unless told otherwise
/// (`zerohop agent --waypoint-mark`, `zerohop-waypoint --mark`): the connect
/// hook never sends sockets with it back to the waypoint.
pub const DEFAULT_MARK: &str = "0x7a68";

/// A socket mark as both commands take it: decimal, or hexadecimal after `0x`.
pub fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e}"))
}

/// Everything the waypoint needs, written by the agent (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct WaypointConfig {
    /// Every Service (not only L7 ones): parents and backends resolve against it.
    pub services: Vec<ServiceInfo>,
    /// Every HTTPRoute and GRPCRoute with a Service parent, as read
    /// (invalid ones included: the router applies the spec's rules for
    /// them).
    pub routes: Vec<Route>,
    pub grants: Vec<ReferenceGrant>,
    /// A backendRef to a Service in another namespace needs a
    /// ReferenceGrant there. Off by default: mesh routes need none
    /// (GEP-1294).
    #[serde(default)]
    pub require_reference_grants: bool,
    /// Ready endpoints of each Service port.
    pub endpoints: Vec<ServiceEndpoints>,
    /// Namespace of each pod IP on this node (the waypoint's possible clients).
    pub clients: BTreeMap<IpAddr, String>,
}

/// A Service, as routes and backends resolve against it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// TCP Service ports.
    pub ports: Vec<u16>,
}

/// The ready endpoints of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceEndpoints {
    pub namespace: String,
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// The HTTP version its endpoints are spoken to in.
    #[serde(default, skip_serializing_if = "UpstreamHttp::is_default")]
    pub http: UpstreamHttp,
    pub endpoints: Vec<Endpoint>,
}

/// The HTTP version the waypoint speaks to the endpoints of a Service port,
/// from the port's `appProtocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamHttp {
    /// The version each client spoke (the port names no protocol): a
    /// client that speaks h2c knows its server does.
    #[default]
    AsClient,
    /// HTTP/1.1 (`http`).
    Http1,
    /// HTTP/2 over cleartext (`kubernetes.io/h2c`, `grpc`, …).
    H2c,
}

impl UpstreamHttp {
    fn is_default(&self) -> bool {
        *self == UpstreamHttp::AsClient
    }
}

/// One ready endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Endpoint {
    /// Endpoint address and target port.
    pub addr: SocketAddr,
    /// Runs on this node.
    pub local: bool,
}
