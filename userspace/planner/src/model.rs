//! zerohop's own view of the Kubernetes objects it routes by: plain data,
//! only the fields a routing decision reads. Routing code takes these values
//! as valid; whoever builds them from Kubernetes objects checks them first.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use zerohop_routes::{contract::UpstreamHttp, model::RouteKind};

/// Namespace and name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl ServiceId {
    /// Builds an id from its namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Shown as `namespace/name`.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Namespace and name of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceId {
    /// Kubernetes namespace (always the namespace of its Service).
    pub namespace: String,
    /// EndpointSlice name.
    pub name: String,
}

impl SliceId {
    /// Builds an id from its namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Shown as `namespace/name`.
impl fmt::Display for SliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service that has at least one ClusterIP (headless and ExternalName
/// Services never become one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub id: ServiceId,
    /// Every ClusterIP (`spec.clusterIPs`, one per family for dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    /// Service ports, in manifest order.
    pub ports: Vec<ServicePort>,
    /// Which endpoints a connection may go to.
    pub traffic: TrafficPolicy,
    /// Whether connections to a local endpoint bypass the network stack
    /// (annotation `zerohop.io/bypass`).
    pub bypass: Bypass,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its endpoint
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, 10800 by default).
    pub affinity_seconds: Option<u32>,
    /// Whether zerohop handles the Service at all; false when it is annotated
    /// `zerohop.io/fast-path: "off"` (its traffic is left untouched).
    pub fast_path: bool,
}

/// Whether a Service's connections to local endpoints bypass the network
/// stack: annotation `zerohop.io/bypass`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bypass {
    /// No annotation, or `auto`: they do, unless this node's agent learns
    /// that the Service's connections are too short to gain from it
    /// ([`crate::policy`]).
    #[default]
    Auto,
    /// `on`: they always do.
    On,
    /// `off`: they never do (they are still translated).
    Off,
}

/// What zerohop reads of a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// False when the Namespace is labelled `zerohop.io/fast-path: "off"`:
    /// traffic to its Services is left untouched.
    pub fast_path: bool,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name; `""` for an unnamed port. EndpointSlice ports carry the same
    /// name, which is how a (possibly named) targetPort is resolved.
    pub name: String,
    /// Port clients connect to on the ClusterIP.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// `appProtocol`: the application protocol it serves, when named.
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// How the waypoint speaks to this port's endpoints, or `None` when its
    /// `appProtocol` names a protocol that is not plain HTTP (`tcp`, `tls`,
    /// `https`, `kubernetes.io/ws`, `redis`, …; WebSocket's upgrade is not
    /// proxied): such a port is never sent to the waypoint.
    pub fn http(&self) -> Option<UpstreamHttp> {
        let Some(name) = &self.app_protocol else {
            return Some(UpstreamHttp::AsClient);
        };
        match name.to_ascii_lowercase().as_str() {
            "http" => Some(UpstreamHttp::Http1),
            "kubernetes.io/h2c" | "http2" | "grpc" => Some(UpstreamHttp::H2c),
            "grpc-web" => Some(UpstreamHttp::AsClient),
            _ => None,
        }
    }
}

/// Which endpoints of a Service a connection may be sent to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Every ready endpoint (the Kubernetes default).
    #[default]
    Cluster,
    /// `trafficDistribution: PreferSameNode`: the ready endpoints on this
    /// node if there is any, else every ready endpoint.
    PreferSameNode,
    /// `internalTrafficPolicy: Local`: only the ready endpoints on this node,
    /// possibly none. Takes precedence over `trafficDistribution`.
    NodeLocal,
    /// `trafficDistribution: PreferClose` (or `PreferSameZone`): the ready
    /// endpoints the EndpointSlices hint for this node's zone, else every
    /// ready endpoint.
    PreferClose,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the only protocol the kernel hook translates.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(address: &IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Shown as Kubernetes spells it: `IPv4`, `IPv6`.
impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A set of endpoints of one Service, all of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name of the slice itself.
    pub id: SliceId,
    /// The Service it belongs to (label `kubernetes.io/service-name`, same namespace).
    pub service: ServiceId,
    /// Family of every address in the slice.
    pub family: Family,
    /// Target ports, named like the Service ports they serve.
    pub ports: Vec<SlicePort>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A port of an EndpointSlice: the target port of the Service port with the
/// same name and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Name of the Service port it serves; `""` for an unnamed one.
    pub name: String,
    /// Port the endpoints listen on.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// One endpoint (usually a pod). A cluster has a hundred thousand of them
/// or more: boxed slices, exactly their size, and node and zone names that
/// the endpoints of one node can share (one allocation per node, see
/// `zerohop_k8s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses, all of the slice's family.
    pub addresses: Box<[IpAddr]>,
    /// Whether it may receive new connections (`conditions.ready`, absent = ready).
    pub ready: bool,
    /// The node it runs on, when known.
    pub node_name: Option<Arc<str>>,
    /// Zones it is hinted for (`hints.forZones`), for PreferClose.
    pub zones: Box<[Arc<str>]>,
}

/// What zerohop reads of a Node: its zone (label `topology.kubernetes.io/zone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub zone: Option<String>,
}

/// Namespace and name of a namespaced object other than a Service or slice
/// (HTTPRoute, GRPCRoute, ReferenceGrant, Pod).
pub type ObjectKey = (String, String);

/// An HTTPRoute or GRPCRoute with at least one Service parent (the GAMMA
/// pattern); routes of Gateways only are not zerohop's. Namespace
/// defaulted, name present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route(pub zerohop_routes::model::Route);

/// A route's kind, namespace and name: an HTTPRoute and a GRPCRoute may
/// share a name.
pub type RouteKey = (RouteKind, String, String);

impl Route {
    pub fn key(&self) -> RouteKey {
        let metadata = self.0.metadata();
        (
            self.0.kind(),
            metadata.namespace.clone(),
            metadata.name.clone(),
        )
    }

    /// The Services it names as parents.
    pub fn parent_services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.0
            .parent_refs()
            .iter()
            .filter(|parent| parent.is_service())
            .map(|parent| self.service_id(parent.namespace.as_ref(), &parent.name))
    }

    /// Every Service it names: its parents, backends and mirror targets.
    pub fn referenced_services(&self) -> BTreeSet<ServiceId> {
        let targets = self
            .0
            .backend_targets()
            .into_iter()
            .filter(|target| target.is_service())
            .map(|target| self.service_id(target.namespace.as_ref(), &target.name));
        self.parent_services().chain(targets).collect()
    }

    /// A Service named from this route: its namespace defaults to the route's.
    fn service_id(&self, namespace: Option<&String>, name: &str) -> ServiceId {
        ServiceId::new(
            namespace.unwrap_or(&self.0.metadata().namespace).as_str(),
            name,
        )
    }
}

/// A ReferenceGrant (namespace defaulted, name present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant(pub zerohop_routes::model::ReferenceGrant);

/// What zerohop reads of a Pod: where it runs and its IPs, so the waypoint
/// knows the namespace of a client by its address. Host-network pods are
/// ignored (their IP is the node's, shared by many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocols_name_the_http_version_or_no_http() {
        let http = |app_protocol: Option<&str>| {
            ServicePort {
                name: String::new(),
                port: 80,
                protocol: Protocol::Tcp,
                app_protocol: app_protocol.map(str::to_owned),
            }
            .http()
        };
        let cases = [
            (None, Some(UpstreamHttp::AsClient)),
            (Some("http"), Some(UpstreamHttp::Http1)),
            (Some("HTTP"), Some(UpstreamHttp::Http1)),
            (Some("kubernetes.io/h2c"), Some(UpstreamHttp::H2c)),
            (Some("grpc"), Some(UpstreamHttp::H2c)),
            (Some("http2"), Some(UpstreamHttp::H2c)),
            (Some("grpc-web"), Some(UpstreamHttp::AsClient)),
            (Some("https"), None),
            (Some("tls"), None),
            (Some("kubernetes.io/ws"), None),
            (Some("redis"), None),
            (Some("example.com/custom"), None),
        ];
        for (app_protocol, expected) in cases {
            assert_eq!(http(app_protocol), expected, "{app_protocol:?}");
        }
    }
}
