//! Conversion of Kubernetes API objects into the planner's
//! [`model`](zerohop_planner::model) ([`FromObject`]).
//!
//! Each conversion either gives a model object, or a [`ConvertError`] that
//! names the object. Two kinds of error:
//! - [`ConvertError::Ignored`]: a valid object zerohop has nothing to do with
//!   (headless and ExternalName Services, FQDN EndpointSlices). Callers skip
//!   it silently; [`ConvertError::is_ignored`] tells them apart.
//! - [`ConvertError::Invalid`]: an object that cannot be routed by, with the
//!   reason. Callers report it and carry on with the other objects.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use zerohop_planner::model::{
    Bypass, Endpoint, EndpointSlice, Family, Grant, Namespace, Node, Pod, Protocol, Route, Service,
    ServiceId, ServicePort, SliceId, SlicePort, TrafficPolicy,
};
use zerohop_routes::model as routes;

/// Service annotation: `off` keeps connections of the Service on the
/// network stack (they are still translated at connect time), `on` bypasses
/// them whatever the agent learns, anything else (or none) leaves it to the
/// agent ([`Bypass::Auto`]).
pub const BYPASS_ANNOTATION: &str = "zerohop.io/bypass";
/// Annotation (on a Service) or label (on a Namespace) that opts out of zerohop.
pub const FAST_PATH_KEY: &str = "zerohop.io/fast-path";

/// EndpointSlice label naming the Service the slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace of an object whose manifest does not say.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A model object made from a Kubernetes object of type `Wire`: the
/// conversions of this module. (A trait of this crate's own, as the
/// Kubernetes types and the model are both other crates'.)
pub trait FromObject<Wire>: Sized {
    /// Converts `wire`, or says why it cannot be.
    fn from_object(wire: &Wire) -> Result<Self, ConvertError>;
}

/// Why an object could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A valid object without anything for zerohop to do: skip it silently.
    #[error("{object}: ignored: {reason}")]
    Ignored {
        /// The object, e.g. `Service default/web`.
        object: ObjectRef,
        /// Why it is ignored.
        reason: IgnoreReason,
    },
    /// An object zerohop cannot use: report it.
    #[error("{object}: {reason}")]
    Invalid {
        /// The object, e.g. `Service default/web`.
        object: ObjectRef,
        /// What is wrong with it.
        reason: InvalidReason,
    },
}

impl ConvertError {
    /// The object, e.g. `Service default/web`.
    pub fn object(&self) -> &ObjectRef {
        match self {
            ConvertError::Ignored { object, .. } | ConvertError::Invalid { object, .. } => object,
        }
    }

    /// True for objects to skip silently rather than report.
    pub fn is_ignored(&self) -> bool {
        matches!(self, ConvertError::Ignored { .. })
    }

    /// The reason alone, without the object.
    pub fn reason(&self) -> String {
        match self {
            ConvertError::Ignored { reason, .. } => format!("ignored: {reason}"),
            ConvertError::Invalid { reason, .. } => reason.to_string(),
        }
    }
}

/// Why a valid object has nothing for zerohop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    /// `clusterIP: None`.
    #[error("headless Service (clusterIP None): clients resolve the endpoints themselves")]
    Headless,
    /// `type: ExternalName`.
    #[error("ExternalName Service: it is a DNS alias, without a ClusterIP")]
    ExternalName,
    /// `addressType: FQDN`.
    #[error("FQDN EndpointSlice: it holds names, not addresses")]
    FqdnSlice,
    /// An HTTPRoute or GRPCRoute whose parents are all Gateways.
    #[error("no Service parent: the route belongs to a Gateway, not to the mesh")]
    NoServiceParent,
    /// `spec.hostNetwork: true`.
    #[error("host-network Pod: its IP is the node's")]
    HostNetwork,
}

/// What makes an object unusable. Fields are named by their manifest path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    /// `metadata.name` is absent or empty.
    #[error("metadata.name is missing")]
    MissingName,
    /// Neither `spec.clusterIPs` nor `spec.clusterIP` is set.
    #[error("no ClusterIP")]
    NoClusterIp,
    /// A string that should be an IP address is not one.
    #[error("{field}: {value:?} is not an IP address")]
    BadAddress {
        /// Where, e.g. `spec.clusterIPs[1]`.
        field: String,
        /// The text found.
        value: String,
    },
    /// A port without a number (or with 0).
    #[error("{field}: no port number")]
    NoPortNumber {
        /// Where, e.g. `spec.ports[0]`.
        field: String,
    },
    /// A port number outside 1-65535.
    #[error("{field}: {value} is not a port number (1-65535)")]
    PortOutOfRange {
        /// Where, e.g. `spec.ports[0]`.
        field: String,
        /// The number found.
        value: i32,
    },
    /// A protocol other than TCP, UDP, SCTP.
    #[error("{field}: protocol {value:?} is not TCP, UDP or SCTP")]
    UnknownProtocol {
        /// Where, e.g. `spec.ports[0]`.
        field: String,
        /// The text found.
        value: String,
    },
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    #[error("label {SERVICE_NAME_LABEL} is missing: the slice belongs to no Service")]
    MissingServiceLabel,
    /// An `addressType` other than IPv4, IPv6, FQDN.
    #[error("addressType {0:?} is not IPv4, IPv6 or FQDN")]
    UnknownAddressType(String),
    /// An endpoint address of the other family than the slice's.
    #[error("{field}: {address} is not an {family} address, as the slice's addressType requires")]
    WrongFamily {
        /// Where, e.g. `endpoints[0].addresses[0]`.
        field: String,
        /// The address found.
        address: IpAddr,
        /// The slice's family.
        family: Family,
    },
}

/// The kind, namespace and name of an object, as its conversion found them.
struct Identity {
    kind: &'static str,
    namespace: String,
    name: Option<String>,
}

impl Identity {
    fn of(kind: &'static str, metadata: &ObjectMeta) -> Identity {
        Identity::named(
            kind,
            metadata.namespace.as_deref(),
            metadata.name.as_deref(),
        )
    }

    fn named(kind: &'static str, namespace: Option<&str>, name: Option<&str>) -> Identity {
        let namespace = namespace
            .filter(|namespace| !namespace.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string();
        let name = name.filter(|name| !name.is_empty()).map(str::to_string);
        Identity {
            kind,
            namespace,
            name,
        }
    }

    fn object(&self) -> ObjectRef {
        ObjectRef::new(self.kind, &self.namespace, self.name.as_deref())
    }

    fn invalid(&self, reason: InvalidReason) -> ConvertError {
        ConvertError::Invalid {
            object: self.object(),
            reason,
        }
    }

    fn ignored(&self, reason: IgnoreReason) -> ConvertError {
        ConvertError::Ignored {
            object: self.object(),
            reason,
        }
    }

    fn name(&self) -> Result<String, ConvertError> {
        self.name
            .clone()
            .ok_or_else(|| self.invalid(InvalidReason::MissingName))
    }
}

/// An object as problems name it: its kind, its namespace (none for a
/// cluster-scoped object) and its name (none when it has none). Shown as
/// `Service default/web`, `Service default/<no name>`, `Node worker-1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `Service`, `EndpointSlice`, `HTTPRoute`, ...
    pub kind: &'static str,
    /// The namespace; `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// The name; `None` when the object has none.
    pub name: Option<String>,
}

impl ObjectRef {
    /// An object of a namespace: `Service default/web`.
    pub fn new(kind: &'static str, namespace: &str, name: Option<&str>) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: Some(namespace.to_owned()),
            name: name.map(str::to_owned),
        }
    }

    /// A cluster-scoped object: `Node worker-1`.
    pub fn cluster_scoped(kind: &'static str, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: None,
            name: Some(name.to_owned()),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(namespace) = &self.namespace {
            write!(f, "{namespace}/")?;
        }
        f.write_str(self.name.as_deref().unwrap_or("<no name>"))
    }
}

impl FromObject<core::Service> for Service {
    fn from_object(service: &core::Service) -> Result<Self, ConvertError> {
        let identity = Identity::of("Service", &service.metadata);
        let name = identity.name()?;
        let default_spec = core::ServiceSpec::default();
        let spec = service.spec.as_ref().unwrap_or(&default_spec);

        if spec.type_.as_deref() == Some("ExternalName") {
            return Err(identity.ignored(IgnoreReason::ExternalName));
        }
        let cluster_ips = cluster_ips(spec).map_err(|reason| identity.invalid(reason))?;
        if cluster_ips.first().map(|(_, text)| text.as_str()) == Some("None") {
            return Err(identity.ignored(IgnoreReason::Headless));
        }
        let cluster_ips = collect_exact(
            cluster_ips.len(),
            cluster_ips
                .into_iter()
                .map(|(field, text)| parse_address(field, &text)),
        )
        .map_err(|reason| identity.invalid(reason))?;

        let listed = spec.ports.as_deref().unwrap_or_default();
        let ports = collect_exact(
            listed.len(),
            listed.iter().enumerate().map(|(index, port)| {
                let field = format!("spec.ports[{index}]");
                Ok(ServicePort {
                    name: port.name.clone().unwrap_or_default(),
                    port: port_number(&field, Some(port.port))?,
                    protocol: protocol(&field, port.protocol.as_deref())?,
                    app_protocol: port.app_protocol.clone(),
                })
            }),
        )
        .map_err(|reason| identity.invalid(reason))?;

        let annotation_on = |key: &str| {
            service
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(key))
                .is_none_or(|value| value != "off")
        };

        Ok(Service {
            id: ServiceId::new(identity.namespace, name),
            cluster_ips,
            ports,
            traffic: traffic_policy(spec),
            affinity_seconds: affinity_seconds(spec),
            bypass: bypass(service),
            fast_path: annotation_on(FAST_PATH_KEY),
        })
    }
}

impl FromObject<core::Namespace> for Namespace {
    fn from_object(namespace: &core::Namespace) -> Result<Self, ConvertError> {
        let (name, opt_out) = name_and_label("Namespace", &namespace.metadata, FAST_PATH_KEY)?;
        let fast_path = opt_out.is_none_or(|value| value != "off");
        Ok(Namespace { name, fast_path })
    }
}

/// The ClusterIPs as text, each with its manifest path: `spec.clusterIPs`
/// when present (it lists every family), else `spec.clusterIP`.
fn cluster_ips(spec: &core::ServiceSpec) -> Result<Vec<(String, String)>, InvalidReason> {
    let listed: Vec<(String, String)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(index, ip)| (format!("spec.clusterIPs[{index}]"), ip.clone()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .filter(|ip| !ip.is_empty())
            .map(|ip| ("spec.clusterIP".to_string(), ip.clone()))
            .collect(),
    };
    if listed.is_empty() {
        return Err(InvalidReason::NoClusterIp);
    }
    Ok(listed)
}

/// `internalTrafficPolicy: Local` wins over `trafficDistribution`.
/// `sessionAffinity: ClientIP` and its timeout (Kubernetes' default: 3 hours).
/// The Service's `zerohop.io/bypass` annotation.
fn bypass(service: &core::Service) -> Bypass {
    let value = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(BYPASS_ANNOTATION));
    match value.map(String::as_str) {
        Some("off") => Bypass::Off,
        Some("on") => Bypass::On,
        _ => Bypass::Auto,
    }
}

fn affinity_seconds(spec: &core::ServiceSpec) -> Option<u32> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|config| config.client_ip.as_ref())
            .and_then(|client_ip| client_ip.timeout_seconds)
            .and_then(|seconds| u32::try_from(seconds).ok())
            .filter(|&seconds| seconds > 0)
            .unwrap_or(10_800)
    })
}

fn traffic_policy(spec: &core::ServiceSpec) -> TrafficPolicy {
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        TrafficPolicy::NodeLocal
    } else {
        match spec.traffic_distribution.as_deref() {
            Some("PreferSameNode") => TrafficPolicy::PreferSameNode,
            Some("PreferClose" | "PreferSameZone") => TrafficPolicy::PreferClose,
            _ => TrafficPolicy::Cluster,
        }
    }
}

impl FromObject<discovery::EndpointSlice> for EndpointSlice {
    fn from_object(slice: &discovery::EndpointSlice) -> Result<Self, ConvertError> {
        let identity = Identity::of("EndpointSlice", &slice.metadata);
        let name = identity.name()?;
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .filter(|service| !service.is_empty())
            .ok_or_else(|| identity.invalid(InvalidReason::MissingServiceLabel))?;
        let family = match slice.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            "FQDN" => return Err(identity.ignored(IgnoreReason::FqdnSlice)),
            other => {
                return Err(identity.invalid(InvalidReason::UnknownAddressType(other.to_string())))
            }
        };

        let listed = slice.ports.as_deref().unwrap_or_default();
        let ports = collect_exact(
            listed.len(),
            listed.iter().enumerate().map(|(index, port)| {
                let field = format!("ports[{index}]");
                Ok(SlicePort {
                    name: port.name.clone().unwrap_or_default(),
                    port: port_number(&field, port.port)?,
                    protocol: protocol(&field, port.protocol.as_deref())?,
                })
            }),
        )
        .map_err(|reason| identity.invalid(reason))?;

        let listed = slice.endpoints.as_deref().unwrap_or_default();
        let endpoints = collect_exact(
            listed.len(),
            listed
                .iter()
                .enumerate()
                .map(|(index, endpoint)| convert_endpoint(index, endpoint, family)),
        )
        .map_err(|reason| identity.invalid(reason))?;

        Ok(EndpointSlice {
            service: ServiceId::new(identity.namespace.clone(), service_name.clone()),
            id: SliceId::new(identity.namespace, name),
            family,
            ports,
            endpoints,
        })
    }
}

fn convert_endpoint(
    index: usize,
    endpoint: &discovery::Endpoint,
    family: Family,
) -> Result<Endpoint, InvalidReason> {
    let field = |address_index| format!("endpoints[{index}].addresses[{address_index}]");
    let addresses = collect_exact(
        endpoint.addresses.len(),
        endpoint
            .addresses
            .iter()
            .enumerate()
            .map(|(address_index, text)| {
                let address = text.parse().map_err(|_| InvalidReason::BadAddress {
                    field: field(address_index),
                    value: text.clone(),
                })?;
                if Family::of(&address) != family {
                    return Err(InvalidReason::WrongFamily {
                        field: field(address_index),
                        address,
                        family,
                    });
                }
                Ok(address)
            }),
    )?;
    Ok(Endpoint {
        addresses: addresses.into_boxed_slice(),
        // Kubernetes: "nil should be interpreted as ready".
        ready: endpoint
            .conditions
            .as_ref()
            .and_then(|conditions| conditions.ready)
            .unwrap_or(true),
        node_name: endpoint.node_name.as_deref().map(shared_name),
        zones: endpoint
            .hints
            .as_ref()
            .and_then(|hints| hints.for_zones.as_ref())
            .map(|zones| zones.iter().map(|zone| shared_name(&zone.name)).collect())
            .unwrap_or_default(),
    })
}

/// A node's or zone's name, in one allocation shared by every endpoint
/// that names it: 100,000 endpoints on 100 nodes hold 100 strings, not
/// 100,000.
fn shared_name(name: &str) -> Arc<str> {
    static NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = names.get(name) {
        return Arc::clone(shared);
    }
    // Now and then, forget the names no endpoint holds any more: the set
    // follows the cluster's nodes as they come and go.
    if names.len() >= 1024 && names.len().is_power_of_two() {
        names.retain(|shared| Arc::strong_count(shared) > 1);
    }
    let shared: Arc<str> = name.into();
    names.insert(Arc::clone(&shared));
    shared
}

/// The name of a cluster-scoped object and the value of one of its labels.
fn name_and_label<'m>(
    kind: &'static str,
    metadata: &'m ObjectMeta,
    label: &str,
) -> Result<(String, Option<&'m String>), ConvertError> {
    let name = metadata.name.clone().ok_or_else(|| ConvertError::Invalid {
        object: ObjectRef::new(kind, "", None),
        reason: InvalidReason::MissingName,
    })?;
    Ok((
        name,
        metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(label)),
    ))
}

/// Node label holding its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

impl FromObject<core::Node> for Node {
    fn from_object(node: &core::Node) -> Result<Self, ConvertError> {
        let (name, zone) = name_and_label("Node", &node.metadata, ZONE_LABEL)?;
        let zone = zone.cloned();
        Ok(Node { name, zone })
    }
}

/// `items`, all `len` of them, or the first error: in a vector of exactly
/// `len` (a view of a large cluster holds a hundred thousand endpoints and
/// tens of thousands of port lists; collecting into a `Result` cannot know
/// the count, and keeps room for at least four, or up to twice the count).
fn collect_exact<T, E>(len: usize, items: impl Iterator<Item = Result<T, E>>) -> Result<Vec<T>, E> {
    let mut collected = Vec::with_capacity(len);
    for item in items {
        collected.push(item?);
    }
    Ok(collected)
}

fn parse_address(field: String, text: &str) -> Result<IpAddr, InvalidReason> {
    text.parse().map_err(|_| InvalidReason::BadAddress {
        field,
        value: text.to_string(),
    })
}

fn port_number(field: &str, value: Option<i32>) -> Result<u16, InvalidReason> {
    match value {
        None | Some(0) => Err(InvalidReason::NoPortNumber {
            field: field.to_string(),
        }),
        Some(number) => u16::try_from(number).map_err(|_| InvalidReason::PortOutOfRange {
            field: field.to_string(),
            value: number,
        }),
    }
}

/// Absent means TCP, as in Kubernetes.
fn protocol(field: &str, value: Option<&str>) -> Result<Protocol, InvalidReason> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(InvalidReason::UnknownProtocol {
            field: field.to_string(),
            value: other.to_string(),
        }),
    }
}

impl FromObject<routes::HttpRoute> for Route {
    fn from_object(route: &routes::HttpRoute) -> Result<Self, ConvertError> {
        service_route(route.clone().into())
    }
}

impl FromObject<routes::GrpcRoute> for Route {
    fn from_object(route: &routes::GrpcRoute) -> Result<Self, ConvertError> {
        service_route(route.clone().into())
    }
}

/// A route of either kind, named, with at least one Service parent.
fn service_route(mut route: routes::Route) -> Result<Route, ConvertError> {
    let identity = with_identity(route.kind().name(), route.metadata_mut())?;
    if !route
        .parent_refs()
        .iter()
        .any(routes::ParentRef::is_service)
    {
        return Err(identity.ignored(IgnoreReason::NoServiceParent));
    }
    Ok(Route(route))
}

impl FromObject<routes::ReferenceGrant> for Grant {
    fn from_object(grant: &routes::ReferenceGrant) -> Result<Self, ConvertError> {
        let mut grant = grant.clone();
        with_identity("ReferenceGrant", &mut grant.metadata)?;
        Ok(Grant(grant))
    }
}

/// Checks the name and fills in the default namespace of a Gateway API object.
fn with_identity(
    kind: &'static str,
    metadata: &mut routes::Metadata,
) -> Result<Identity, ConvertError> {
    let identity = Identity::named(kind, Some(&metadata.namespace), Some(&metadata.name));
    metadata.name = identity.name()?;
    metadata.namespace.clone_from(&identity.namespace);
    Ok(identity)
}

impl FromObject<core::Pod> for Pod {
    fn from_object(pod: &core::Pod) -> Result<Self, ConvertError> {
        let identity = Identity::of("Pod", &pod.metadata);
        let name = identity.name()?;
        let spec = pod.spec.as_ref();
        if spec.and_then(|spec| spec.host_network) == Some(true) {
            return Err(identity.ignored(IgnoreReason::HostNetwork));
        }
        let status = pod.status.as_ref();
        let listed = status
            .and_then(|status| status.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.clone());
        let single = status.and_then(|status| status.pod_ip.clone());
        let mut ips = Vec::new();
        for (index, text) in listed.chain(single).enumerate() {
            let address = parse_address(format!("status.podIPs[{index}]"), &text)
                .map_err(|reason| identity.invalid(reason))?;
            if !ips.contains(&address) {
                ips.push(address);
            }
        }
        Ok(Pod {
            namespace: identity.namespace,
            name,
            node: spec.and_then(|spec| spec.node_name.clone()),
            ips,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Result<Service, ConvertError> {
        let wire: core::Service = serde_yaml_ng::from_str(yaml).expect("test YAML is a Service");
        Service::from_object(&wire)
    }

    fn slice(yaml: &str) -> Result<EndpointSlice, ConvertError> {
        let wire: discovery::EndpointSlice =
            serde_yaml_ng::from_str(yaml).expect("test YAML is an EndpointSlice");
        EndpointSlice::from_object(&wire)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The full message, and checks it names the object.
    fn invalid_message(result: Result<impl fmt::Debug, ConvertError>, object: &str) -> String {
        let error = result.expect_err("conversion should fail");
        assert!(!error.is_ignored(), "{error}");
        assert_eq!(error.object().to_string(), object);
        let message = error.to_string();
        assert!(message.starts_with(&format!("{object}: ")), "{message}");
        message
    }

    const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP}
";

    #[test]
    fn service_keeps_id_ips_ports_and_defaults() {
        let web = service(WEB).unwrap();
        assert_eq!(web.id, ServiceId::new("shop", "web"));
        assert_eq!(web.cluster_ips, vec![ip("10.96.0.10")]);
        assert_eq!(
            web.ports,
            vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    app_protocol: None,
                },
                ServicePort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                    app_protocol: None,
                },
            ]
        );
        assert_eq!(web.traffic, TrafficPolicy::Cluster);
        assert_eq!(web.bypass, Bypass::Auto);
    }

    #[test]
    fn namespace_defaults_to_default() {
        let web = service(
            "{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: 10.96.0.1}}",
        )
        .unwrap();
        assert_eq!(web.id, ServiceId::new("default", "web"));
        assert!(web.ports.is_empty());
    }

    #[test]
    fn cluster_ips_win_over_cluster_ip() {
        let web = service(
            "
kind: Service
apiVersion: v1
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
",
        )
        .unwrap();
        assert_eq!(web.cluster_ips, vec![ip("10.96.0.10"), ip("fd00:96::10")]);
    }

    #[test]
    fn traffic_policies() {
        let with_spec = |extra: &str| {
            service(&format!(
                "{{kind: Service, apiVersion: v1, metadata: {{name: web}}, spec: {{clusterIP: 10.96.0.1 {extra}}}}}"
            ))
            .unwrap()
            .traffic
        };
        assert_eq!(with_spec(""), TrafficPolicy::Cluster);
        assert_eq!(
            with_spec(", internalTrafficPolicy: Cluster"),
            TrafficPolicy::Cluster
        );
        assert_eq!(
            with_spec(", trafficDistribution: PreferClose"),
            TrafficPolicy::PreferClose
        );
        assert_eq!(
            with_spec(", trafficDistribution: PreferSameZone"),
            TrafficPolicy::PreferClose
        );
        assert_eq!(
            with_spec(", trafficDistribution: PreferSameNode"),
            TrafficPolicy::PreferSameNode
        );
        assert_eq!(
            with_spec(", internalTrafficPolicy: Local"),
            TrafficPolicy::NodeLocal
        );
        assert_eq!(
            with_spec(", internalTrafficPolicy: Local, trafficDistribution: PreferSameNode"),
            TrafficPolicy::NodeLocal
        );
    }

    #[test]
    fn session_affinity_client_ip_and_its_timeout() {
        let affinity = |spec: &str| {
            let service: core::Service = serde_yaml_ng::from_str(&format!(
                "{{kind: Service, apiVersion: v1, metadata: {{name: web}}, spec: {{clusterIP: 10.96.0.1{spec}}}}}"
            ))
            .unwrap();
            Service::from_object(&service).unwrap().affinity_seconds
        };
        assert_eq!(affinity(""), None);
        assert_eq!(affinity(", sessionAffinity: None"), None);
        assert_eq!(affinity(", sessionAffinity: ClientIP"), Some(10_800));
        assert_eq!(
            affinity(", sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
            Some(60)
        );
    }

    #[test]
    fn zone_hints_prefer_close_and_node_zones_are_read() {
        let service: core::Service = serde_yaml_ng::from_str(
            "{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: 10.96.0.1, trafficDistribution: PreferClose}}",
        )
        .unwrap();
        assert_eq!(
            Service::from_object(&service).unwrap().traffic,
            TrafficPolicy::PreferClose
        );
        let slice: discovery::EndpointSlice = serde_yaml_ng::from_str(
            "{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}, addressType: IPv4, endpoints: [{addresses: [10.244.1.2], hints: {forZones: [{name: z1}, {name: z2}]}}]}",
        )
        .unwrap();
        assert_eq!(
            EndpointSlice::from_object(&slice).unwrap().endpoints[0].zones,
            Box::from(["z1".into(), "z2".into()])
        );
        let node: core::Node = serde_yaml_ng::from_str(
            "{kind: Node, apiVersion: v1, metadata: {name: node1, labels: {topology.kubernetes.io/zone: z1}}}",
        )
        .unwrap();
        assert_eq!(
            Node::from_object(&node).unwrap(),
            Node {
                name: "node1".into(),
                zone: Some("z1".into())
            }
        );
    }

    #[test]
    fn fast_path_opt_out_by_service_annotation_and_namespace_label() {
        let service: core::Service = serde_yaml_ng::from_str(
            "{kind: Service, apiVersion: v1, metadata: {name: web, annotations: {zerohop.io/fast-path: 'off'}}, spec: {clusterIP: 10.96.0.1}}",
        )
        .unwrap();
        let service = Service::from_object(&service).unwrap();
        assert!(!service.fast_path && service.bypass == Bypass::Auto);
        let namespace = |labels: &str| -> Namespace {
            let wire: core::Namespace = serde_yaml_ng::from_str(&format!(
                "{{kind: Namespace, apiVersion: v1, metadata: {{name: team, labels: {{{labels}}}}}}}"
            ))
            .unwrap();
            Namespace::from_object(&wire).unwrap()
        };
        assert!(!namespace("zerohop.io/fast-path: 'off'").fast_path);
        assert!(namespace("zerohop.io/fast-path: 'on'").fast_path);
        assert!(namespace("team: a").fast_path);
    }

    #[test]
    fn bypass_annotation_reads_off_on_and_auto() {
        let annotated = |value: &str| {
            service(&format!(
                "{{kind: Service, apiVersion: v1, metadata: {{name: web, annotations: {{zerohop.io/bypass: '{value}'}}}}, spec: {{clusterIP: 10.96.0.1}}}}"
            ))
            .unwrap()
            .bypass
        };
        assert_eq!(annotated("off"), Bypass::Off);
        assert_eq!(annotated("on"), Bypass::On);
        assert_eq!(annotated("auto"), Bypass::Auto);
        assert_eq!(annotated("sometimes"), Bypass::Auto);
    }

    #[test]
    fn headless_and_external_name_services_are_ignored() {
        for (yaml, reason) in [
            (
                "{kind: Service, apiVersion: v1, metadata: {name: db}, spec: {clusterIP: None}}",
                IgnoreReason::Headless,
            ),
            (
                "{kind: Service, apiVersion: v1, metadata: {name: db}, spec: {clusterIPs: [None]}}",
                IgnoreReason::Headless,
            ),
            (
                "{kind: Service, apiVersion: v1, metadata: {name: db}, spec: {type: ExternalName, externalName: db.example.com}}",
                IgnoreReason::ExternalName,
            ),
        ] {
            let error = service(yaml).unwrap_err();
            assert!(error.is_ignored(), "{error}");
            assert_eq!(
                error,
                ConvertError::Ignored {
                    object: ObjectRef::new("Service", "default", Some("db")),
                    reason
                }
            );
        }
    }

    #[test]
    fn an_object_is_named_kind_namespace_and_name() {
        let named = |object: ObjectRef| object.to_string();
        assert_eq!(
            named(ObjectRef::new("Service", "shop", Some("web"))),
            "Service shop/web"
        );
        assert_eq!(
            named(ObjectRef::new("Service", "shop", None)),
            "Service shop/<no name>"
        );
        assert_eq!(
            named(ObjectRef::cluster_scoped("Node", "worker-1")),
            "Node worker-1"
        );
    }

    #[test]
    fn service_without_name_is_invalid() {
        let message = invalid_message(
            service("{kind: Service, apiVersion: v1, metadata: {namespace: shop}, spec: {clusterIP: 10.96.0.1}}"),
            "Service shop/<no name>",
        );
        assert!(message.ends_with("metadata.name is missing"), "{message}");
    }

    #[test]
    fn service_without_cluster_ip_is_invalid() {
        for yaml in [
            "{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {ports: [{port: 80}]}}",
            "{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: ''}}",
            "{kind: Service, apiVersion: v1, metadata: {name: web}}",
        ] {
            assert_eq!(
                invalid_message(service(yaml), "Service default/web"),
                "Service default/web: no ClusterIP"
            );
        }
    }

    #[test]
    fn service_with_unparsable_cluster_ip_is_invalid() {
        let message = invalid_message(
            service("{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIPs: [10.96.0.1, 'fd00::zz']}}"),
            "Service default/web",
        );
        assert_eq!(
            message,
            r#"Service default/web: spec.clusterIPs[1]: "fd00::zz" is not an IP address"#
        );
    }

    #[test]
    fn service_port_without_number_is_invalid() {
        // k8s-openapi reads a missing `port` as 0.
        let message = invalid_message(
            service("{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}, {name: http}]}}"),
            "Service default/web",
        );
        assert_eq!(
            message,
            "Service default/web: spec.ports[1]: no port number"
        );
    }

    #[test]
    fn service_port_out_of_range_or_unknown_protocol_is_invalid() {
        let message = invalid_message(
            service("{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: 10.96.0.1, ports: [{port: 70000}]}}"),
            "Service default/web",
        );
        assert!(
            message.contains("spec.ports[0]: 70000 is not a port number"),
            "{message}"
        );
        let message = invalid_message(
            service("{kind: Service, apiVersion: v1, metadata: {name: web}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: QUIC}]}}"),
            "Service default/web",
        );
        assert!(
            message.contains(r#"protocol "QUIC" is not TCP"#),
            "{message}"
        );
    }

    const WEB_SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {port: 9090, protocol: UDP}
endpoints:
- addresses: [10.244.1.2]
  nodeName: node1
- addresses: [10.244.2.2]
  conditions: {ready: false}
- addresses: [10.244.3.2]
  conditions: {ready: true, serving: true}
";

    #[test]
    fn slice_keeps_service_ports_and_endpoints() {
        let web = slice(WEB_SLICE).unwrap();
        assert_eq!(web.id, SliceId::new("shop", "web-abc"));
        assert_eq!(web.service, ServiceId::new("shop", "web"));
        assert_eq!(web.family, Family::V4);
        assert_eq!(
            web.ports,
            vec![
                SlicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp
                },
                SlicePort {
                    name: "".into(),
                    port: 9090,
                    protocol: Protocol::Udp
                },
            ]
        );
        assert_eq!(
            web.endpoints[0],
            Endpoint {
                addresses: Box::new([ip("10.244.1.2")]),
                ready: true,
                node_name: Some("node1".into()),
                zones: Box::default(),
            }
        );
    }

    #[test]
    fn endpoints_of_one_node_share_its_name() {
        let one = slice(WEB_SLICE).unwrap();
        let other = slice(&WEB_SLICE.replace("web-abc", "web-def")).unwrap();
        let node = |slice: &EndpointSlice| slice.endpoints[0].node_name.clone().unwrap();
        assert!(Arc::ptr_eq(&node(&one), &node(&other)));
    }

    #[test]
    fn ready_is_true_when_absent_and_false_only_when_false() {
        let web = slice(WEB_SLICE).unwrap();
        let ready: Vec<bool> = web.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false, true]);
        assert_eq!(web.endpoints[1].node_name, None);
    }

    #[test]
    fn ipv6_slice() {
        let web = slice(
            "{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: IPv6, endpoints: [{addresses: ['fd00:244:1::2']}]}",
        )
        .unwrap();
        assert_eq!(web.family, Family::V6);
        assert_eq!(*web.endpoints[0].addresses, [ip("fd00:244:1::2")]);
        assert!(web.ports.is_empty());
    }

    #[test]
    fn fqdn_slice_is_ignored() {
        let error = slice(
            "{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: FQDN, endpoints: [{addresses: [db.example.com]}]}",
        )
        .unwrap_err();
        assert!(error.is_ignored());
        assert_eq!(
            error.object(),
            &ObjectRef::new("EndpointSlice", "default", Some("s"))
        );
    }

    #[test]
    fn slice_without_name_or_service_label_is_invalid() {
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {labels: {kubernetes.io/service-name: web}}, addressType: IPv4, endpoints: []}"),
            "EndpointSlice default/<no name>",
        );
        assert!(message.ends_with("metadata.name is missing"));
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, namespace: shop}, addressType: IPv4, endpoints: []}"),
            "EndpointSlice shop/s",
        );
        assert!(
            message.contains("label kubernetes.io/service-name is missing"),
            "{message}"
        );
    }

    #[test]
    fn slice_with_unknown_address_type_is_invalid() {
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: IPX, endpoints: []}"),
            "EndpointSlice default/s",
        );
        assert!(
            message.ends_with(r#"addressType "IPX" is not IPv4, IPv6 or FQDN"#),
            "{message}"
        );
    }

    #[test]
    fn slice_address_of_wrong_family_is_invalid() {
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: IPv4, endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2, 'fd00::2']}]}"),
            "EndpointSlice default/s",
        );
        assert_eq!(
            message,
            "EndpointSlice default/s: endpoints[1].addresses[1]: fd00::2 is not an IPv4 address, as the slice's addressType requires"
        );
    }

    #[test]
    fn slice_with_unparsable_address_is_invalid() {
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: IPv4, endpoints: [{addresses: [10.0.0.300]}]}"),
            "EndpointSlice default/s",
        );
        assert!(
            message.ends_with(r#"endpoints[0].addresses[0]: "10.0.0.300" is not an IP address"#),
            "{message}"
        );
    }

    #[test]
    fn slice_port_without_number_is_invalid() {
        let message = invalid_message(
            slice("{kind: EndpointSlice, apiVersion: discovery.k8s.io/v1, metadata: {name: s, labels: {kubernetes.io/service-name: web}}, addressType: IPv4, ports: [{name: http}], endpoints: []}"),
            "EndpointSlice default/s",
        );
        assert!(message.ends_with("ports[0]: no port number"), "{message}");
    }
}
