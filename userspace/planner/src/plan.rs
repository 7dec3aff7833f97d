//! The routing decisions: what the BPF maps of frontends and backends hold
//! for one Service port, and the types a node's plan is made of (its desired
//! map contents, problems, waypoints and map capacity).
//!
//! For every Service, ClusterIP and TCP or UDP port (the kernel hooks
//! translate those two; SCTP is left to the cluster), one frontend. Its endpoints are the ready endpoints of the
//! Service's EndpointSlices of the ClusterIP's family, at the port the slice
//! gives for the Service port's name (how named targetPorts resolve), each
//! address once. Which of them are eligible depends on the
//! [`TrafficPolicy`]; the eligible ones fill slots `0..n`, those on this node
//! first, then by address, so that a plan never depends on input order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use zerohop_abi::{
    self as abi, BackendKey, FrontendEndpoint, FrontendKey, PROTO_TCP, PROTO_UDP, SERVICE_L7,
    SERVICE_NO_BYPASS, SERVICE_SHORT_CONNS,
};

use crate::addr;
use crate::model::{
    Bypass, EndpointSlice, Family, Protocol, Service, ServiceId, ServicePort, TrafficPolicy,
};

/// What the maps should hold, and what could not be planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The desired map contents.
    pub desired: MapEntries,
    /// Services (or ports of them) planned with fewer endpoints than they
    /// seem to want, or not at all.
    pub problems: Vec<PlanProblem>,
    /// Every ready endpoint of each planned frontend, eligible or not: an
    /// endpoint that leaves this set makes the connections to it stale
    /// ([`gone`]), one that is only no longer eligible does not.
    pub ready: BTreeSet<FrontendEndpoint>,
}

/// The exact contents of the frontend and backend maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntries {
    /// Frontend map ([`abi::map_name::SERVICES`]).
    pub services: BTreeMap<FrontendKey, abi::Service>,
    /// Backend map ([`abi::map_name::BACKENDS`]): slots `0..endpoints` of each frontend.
    pub backends: BTreeMap<BackendKey, abi::Backend>,
    /// Name map ([`abi::map_name::NAMES`]): the Service of each frontend.
    pub names: BTreeMap<FrontendKey, abi::ServiceName>,
}

/// A Service the plan could not fully honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanProblem {
    /// The Service has endpoints of that family, but no slice lists the
    /// port's name and protocol, so there is no target port: the frontend
    /// gets no endpoint (connections take the cluster's normal path).
    #[error(
        "Service {service} {}: no {family} EndpointSlice defines {}",
        listing("port", "ports", ports.iter().map(|port| format!("{port:?}"))),
        if ports.len() == 1 { "it" } else { "them" }
    )]
    PortNotInSlices {
        /// The Service.
        service: ServiceId,
        /// The Service ports' names (`""` for an unnamed port).
        ports: Vec<String>,
        /// The ClusterIP's family.
        family: Family,
    },
    /// The Service has HTTPRoutes, but this node has no waypoint of the
    /// ClusterIP's family: the frontend is left to the cluster's normal path
    /// (routes are never skipped by a shortcut).
    #[error("Service {service} has HTTPRoutes, but this node has no {family} waypoint: its {family} connections are left to the cluster's normal path")]
    NoWaypoint {
        /// The L7 Service.
        service: ServiceId,
        /// The ClusterIP's family.
        family: Family,
    },
    /// The node has more frontends or endpoints than the maps hold: from
    /// `service` on, `frontends` frontends are left to the cluster's normal
    /// path.
    #[error("the maps hold {} frontends and {} endpoint slots: {frontends} frontends, from Service {service} on, do not fit and are left to the cluster's normal path", capacity.frontends, capacity.endpoint_slots)]
    OverCapacity {
        /// The first Service left out (in Service order).
        service: ServiceId,
        /// Frontends left out.
        frontends: usize,
        /// What the maps hold.
        capacity: Capacity,
    },
    /// Two Services claim the same ClusterIP and port; the first by id keeps it.
    #[error(
        "Service {service}: {} already {} to Service {owner}; ignored",
        listing("frontend", "frontends", frontends.iter()),
        if frontends.len() == 1 { "belongs" } else { "belong" }
    )]
    FrontendTaken {
        /// The Service that loses the frontends.
        service: ServiceId,
        /// The ClusterIPs and ports.
        frontends: Vec<SocketAddr>,
        /// The Service that keeps them.
        owner: ServiceId,
    },
}

/// `port "http"`, or `ports "a", "b", "c" and 7 more`: a problem about
/// many ports of one Service is one line, not one per port.
fn listing<T: std::fmt::Display>(
    one: &str,
    many: &str,
    items: impl ExactSizeIterator<Item = T>,
) -> String {
    const SHOWN: usize = 3;
    let count = items.len();
    let shown: Vec<String> = items.take(SHOWN).map(|item| item.to_string()).collect();
    match count {
        1 => format!("{one} {}", shown[0]),
        _ if count <= SHOWN => format!("{many} {}", shown.join(", ")),
        _ => format!("{many} {} and {} more", shown.join(", "), count - SHOWN),
    }
}

impl PlanProblem {
    /// The Service the problem is about.
    pub fn service(&self) -> &ServiceId {
        match self {
            PlanProblem::PortNotInSlices { service, .. }
            | PlanProblem::NoWaypoint { service, .. }
            | PlanProblem::FrontendTaken { service, .. }
            | PlanProblem::OverCapacity { service, .. } => service,
        }
    }
}

/// An endpoint a frontend may send connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) address: IpAddr,
    pub(crate) port: u16,
    pub(crate) local: bool,
    /// Hinted for this node's zone.
    pub(crate) close: bool,
}

/// The address families for which this node runs a waypoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waypoints {
    /// An IPv4 waypoint address is configured.
    pub v4: bool,
    /// An IPv6 waypoint address is configured.
    pub v6: bool,
}

impl Waypoints {
    pub(crate) fn serve(self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

/// How much the kernel maps hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Frontends ([`abi::capacity::SERVICES`]).
    pub frontends: usize,
    /// Endpoint slots over all frontends ([`abi::capacity::BACKENDS`]).
    pub endpoint_slots: usize,
}

impl Capacity {
    /// The maps' sizes.
    pub const KERNEL: Capacity = Capacity {
        frontends: abi::capacity::SERVICES as usize,
        endpoint_slots: abi::capacity::BACKENDS as usize,
    };
}

/// `map` rebuilt with full nodes. A B-tree filled entry by entry, as a
/// whole node is planned, keeps its nodes partly empty (a split leaves six
/// of eleven entries on one side and five on the other; filled in key
/// order, they stay so); one built from sorted entries at once fills them.
pub(crate) fn packed<K: Ord, V>(map: &mut BTreeMap<K, V>) {
    *map = std::mem::take(map).into_iter().collect();
}

impl MapEntries {
    /// Rebuilds its maps with full nodes (see [`packed`]).
    pub(crate) fn pack(&mut self) {
        packed(&mut self.services);
        packed(&mut self.backends);
        packed(&mut self.names);
    }

    /// Moves one frontend, its endpoint slots and its name to `into`.
    pub(crate) fn move_frontend(&mut self, frontend: &FrontendKey, into: &mut MapEntries) {
        if let Some(service) = self.services.remove(frontend) {
            for slot in 0..service.endpoints {
                let key = BackendKey {
                    frontend: *frontend,
                    slot,
                };
                if let Some(backend) = self.backends.remove(&key) {
                    into.backends.insert(key, backend);
                }
            }
            into.services.insert(*frontend, service);
        }
        if let Some(name) = self.names.remove(frontend) {
            into.names.insert(*frontend, name);
        }
    }

    /// Replaces the entries of `frontends` with those `from` holds (of
    /// those frontends only).
    pub(crate) fn restore<'a>(
        &mut self,
        frontends: impl IntoIterator<Item = &'a FrontendKey>,
        from: MapEntries,
    ) {
        let mut dropped = MapEntries::default();
        for frontend in frontends {
            self.move_frontend(frontend, &mut dropped);
        }
        self.services.extend(from.services);
        self.backends.extend(from.backends);
        self.names.extend(from.names);
    }

    /// Writes one frontend and its eligible endpoints, in slot order.
    pub(crate) fn insert(
        &mut self,
        frontend: FrontendKey,
        service: &Service,
        l7: bool,
        short_conns: bool,
        targets: &[Target],
    ) {
        for (slot, target) in (0u32..).zip(targets) {
            let backend = abi::Backend {
                addr: addr::to_kernel(target.address).0,
                port: target.port,
                local: u8::from(target.local),
                _pad: 0,
            };
            self.backends.insert(BackendKey { frontend, slot }, backend);
        }
        let bypass = match service.bypass {
            Bypass::Off => SERVICE_NO_BYPASS,
            Bypass::Auto if short_conns => SERVICE_SHORT_CONNS,
            Bypass::Auto | Bypass::On => 0,
        };
        let flags = bypass | if l7 { SERVICE_L7 } else { 0 };
        let endpoints = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        let affinity_seconds = service.affinity_seconds.unwrap_or(0);
        self.services.insert(
            frontend,
            abi::Service {
                endpoints,
                flags,
                affinity_seconds,
            },
        );
        let name = abi::ServiceName::new(&service.id.namespace, &service.id.name);
        self.names.insert(frontend, name);
    }
}

/// The endpoints of `before` (an earlier plan's [`Plan::ready`]) that left
/// their frontend in `after`: sockets sent to them are stale. Frontends
/// gone from `after` as a whole (a Service deleted or opted out) keep their
/// connections: their endpoints may live on.
pub fn gone(before: &BTreeSet<FrontendEndpoint>, after: &Plan) -> Vec<FrontendEndpoint> {
    before
        .difference(&after.ready)
        .filter(|endpoint| after.desired.services.contains_key(&endpoint.frontend))
        .copied()
        .collect()
}

pub(crate) fn endpoint_of(frontend: FrontendKey, address: IpAddr, port: u16) -> FrontendEndpoint {
    FrontendEndpoint {
        frontend,
        addr: addr::to_kernel(address).0,
        port,
        _pad: 0,
    }
}

/// The key of a TCP frontend (port in host byte order).
pub fn frontend_key(cluster_ip: IpAddr, port: u16) -> FrontendKey {
    key_of(cluster_ip, port, PROTO_TCP)
}

/// The key of a Service port's frontend, if the kernel hooks translate its
/// protocol.
pub fn port_frontend_key(cluster_ip: IpAddr, port: &ServicePort) -> Option<FrontendKey> {
    let proto = match port.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => return None,
    };
    Some(key_of(cluster_ip, port.port, proto))
}

fn key_of(cluster_ip: IpAddr, port: u16, proto: u8) -> FrontendKey {
    let (addr, family) = addr::to_kernel(cluster_ip);
    FrontendKey {
        addr,
        port,
        proto,
        family,
    }
}

/// The ready endpoints serving `port`, each (address, port) once, this
/// node's first, then by address. `None` when some slice has endpoints but
/// none defines the port; slices without endpoints (a Service scaled to zero
/// gets one without ports) are no reason to complain.
pub(crate) fn ready_targets(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    node: &str,
    zone: Option<&str>,
) -> Option<Vec<Target>> {
    let mut targets: BTreeMap<(IpAddr, u16), (bool, bool)> = BTreeMap::new();
    let mut port_defined = false;
    for slice in slices {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|candidate| candidate.name == port.name && candidate.protocol == port.protocol)
        else {
            continue;
        };
        port_defined = true;
        for endpoint in slice.endpoints.iter().filter(|endpoint| endpoint.ready) {
            let local = endpoint.node_name.as_deref() == Some(node);
            let close =
                zone.is_some_and(|zone| endpoint.zones.iter().any(|hinted| **hinted == *zone));
            for &address in &endpoint.addresses {
                let flags = targets.entry((address, slice_port.port)).or_default();
                *flags = (flags.0 | local, flags.1 | close);
            }
        }
    }
    let any_endpoint = slices.iter().any(|slice| !slice.endpoints.is_empty());
    if !port_defined && any_endpoint {
        return None;
    }
    let mut targets: Vec<Target> = targets
        .into_iter()
        .map(|((address, port), (local, close))| Target {
            address,
            port,
            local,
            close,
        })
        .collect();
    // Stable sort: within each group the (address, port) order stays.
    targets.sort_by_key(|target| !target.local);
    Some(targets)
}

/// The endpoints a connection may go to under `traffic`.
pub(crate) fn eligible(targets: Vec<Target>, traffic: TrafficPolicy) -> Vec<Target> {
    let any_local = targets.iter().any(|target| target.local);
    let any_close = targets.iter().any(|target| target.close);
    match traffic {
        TrafficPolicy::Cluster => targets,
        TrafficPolicy::PreferClose if !any_close => targets,
        TrafficPolicy::PreferClose => targets.into_iter().filter(|target| target.close).collect(),
        TrafficPolicy::PreferSameNode if !any_local => targets,
        TrafficPolicy::PreferSameNode | TrafficPolicy::NodeLocal => {
            targets.into_iter().filter(|target| target.local).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_plan::{plan, plan_with, plan_within};
    use crate::view::ClusterView;

    fn messages(problems: &[impl ToString]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }
    use crate::model::{Endpoint, SliceId, SlicePort};

    const NODE: &str = "node1";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn tcp(name: &str, port: u16) -> (String, u16, Protocol) {
        (name.to_string(), port, Protocol::Tcp)
    }

    fn service(name: &str, cluster_ips: &[&str], ports: &[(String, u16, Protocol)]) -> Service {
        Service {
            id: ServiceId::new("default", name),
            cluster_ips: cluster_ips.iter().map(|text| ip(text)).collect(),
            ports: ports
                .iter()
                .map(|(name, port, protocol)| ServicePort {
                    name: name.clone(),
                    port: *port,
                    protocol: *protocol,
                    app_protocol: None,
                })
                .collect(),
            traffic: TrafficPolicy::Cluster,
            bypass: Bypass::Auto,
            affinity_seconds: None,
            fast_path: true,
        }
    }

    fn ready_on(address: &str, node: &str) -> Endpoint {
        Endpoint {
            zones: Box::default(),
            addresses: Box::new([ip(address)]),
            ready: true,
            node_name: Some(node.into()),
        }
    }

    fn slice(
        name: &str,
        service: &str,
        ports: &[(String, u16, Protocol)],
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        let family = endpoints
            .first()
            .and_then(|endpoint| endpoint.addresses.first())
            .map_or(Family::V4, Family::of);
        EndpointSlice {
            id: SliceId::new("default", name),
            service: ServiceId::new("default", service),
            family,
            ports: ports
                .iter()
                .map(|(name, port, protocol)| SlicePort {
                    name: name.clone(),
                    port: *port,
                    protocol: *protocol,
                })
                .collect(),
            endpoints,
        }
    }

    fn view(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterView {
        let mut view = ClusterView::new();
        for service in services {
            view.apply_service(service);
        }
        for slice in slices {
            view.apply_slice(slice);
        }
        view
    }

    /// A frontend as written: its Service value and its backends in slot
    /// order as (`address:port`, local).
    fn frontend(
        desired: &MapEntries,
        cluster_ip: &str,
        port: u16,
    ) -> (abi::Service, Vec<(String, bool)>) {
        let key = frontend_key(ip(cluster_ip), port);
        let service = *desired
            .services
            .get(&key)
            .unwrap_or_else(|| panic!("no frontend {cluster_ip}:{port}"));
        let backends = (0..service.endpoints)
            .map(|slot| {
                let backend = desired.backends[&BackendKey {
                    frontend: key,
                    slot,
                }];
                assert_eq!(backend._pad, 0);
                let address = addr::from_kernel(backend.addr, key.family).unwrap();
                (
                    SocketAddr::new(address, backend.port).to_string(),
                    backend.local == 1,
                )
            })
            .collect();
        (service, backends)
    }

    /// Backends of a frontend, in slot order.
    fn backends(desired: &MapEntries, cluster_ip: &str, port: u16) -> Vec<(String, bool)> {
        frontend(desired, cluster_ip, port).1
    }

    fn at(address: &str, local: bool) -> (String, bool) {
        (address.to_string(), local)
    }

    /// `web`: ClusterIP 10.96.0.10, port `http` 80.
    fn web_service() -> Service {
        service("web", &["10.96.0.10"], &[tcp("http", 80)])
    }

    /// A slice of `web` whose port `http` is `port`.
    fn web_slice(name: &str, port: u16, endpoints: Vec<Endpoint>) -> EndpointSlice {
        slice(name, "web", &[tcp("http", port)], endpoints)
    }

    /// A Service with one local and two remote endpoints, under `traffic`.
    fn mixed(traffic: TrafficPolicy) -> ClusterView {
        let mut web = web_service();
        web.traffic = traffic;
        view(
            vec![web],
            vec![web_slice(
                "web-1",
                8080,
                vec![
                    ready_on("10.244.2.9", "node2"),
                    ready_on("10.244.1.5", NODE),
                    ready_on("10.244.2.3", "node2"),
                ],
            )],
        )
    }

    /// `web` (PreferSameNode, 10.96.0.10:80 → 8080) with these endpoints.
    fn web_with(endpoints: Vec<Endpoint>) -> ClusterView {
        let mut web = web_service();
        web.traffic = TrafficPolicy::PreferSameNode;
        view(vec![web], vec![web_slice("web-1", 8080, endpoints)])
    }

    fn gone_between(before: &ClusterView, after: &ClusterView) -> Vec<String> {
        gone(&plan(before, NODE).ready, &plan(after, NODE))
            .iter()
            .map(|endpoint| {
                let frontend = endpoint.frontend;
                let cluster_ip = addr::from_kernel(frontend.addr, frontend.family).unwrap();
                let address = addr::from_kernel(endpoint.addr, frontend.family).unwrap();
                assert_eq!(endpoint._pad, 0);
                format!(
                    "{} -> {}",
                    SocketAddr::new(cluster_ip, frontend.port),
                    SocketAddr::new(address, endpoint.port)
                )
            })
            .collect()
    }

    #[test]
    fn frontends_beyond_the_maps_capacity_are_left_out_in_service_order() {
        let services = ["a", "b", "c", "d"];
        let view = view(
            services
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    service(name, &[&format!("10.96.0.{}", n + 1)], &[tcp("http", 80)])
                })
                .collect(),
            services
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    let endpoints = (0..=n)
                        .map(|e| ready_on(&format!("10.244.{n}.{}", e + 1), "node2"))
                        .collect();
                    slice(&format!("{name}-1"), name, &[tcp("http", 8080)], endpoints)
                })
                .collect(),
        );
        let within = |frontends, endpoint_slots| {
            let capacity = Capacity {
                frontends,
                endpoint_slots,
            };
            plan_within(
                &view,
                NODE,
                Waypoints::default(),
                &BTreeSet::new(),
                capacity,
            )
        };
        let everything = within(4, 10);
        assert_eq!(everything.problems, vec![]);
        assert_eq!(everything.desired.services.len(), 4);

        // Frontends a and b fit; c and d (in Service order) do not.
        let two = within(2, 100);
        assert_eq!(two.desired.services.len(), 2);
        assert_eq!(backends(&two.desired, "10.96.0.2", 80).len(), 2);
        assert_eq!(two.ready.len(), 3, "ready endpoints of a and b only");
        assert_eq!(
            two.problems,
            vec![PlanProblem::OverCapacity {
                service: ServiceId::new("default", "c"),
                frontends: 2,
                capacity: Capacity {
                    frontends: 2,
                    endpoint_slots: 100
                },
            }]
        );
        assert!(two.problems[0]
            .to_string()
            .contains("2 frontends, from Service default/c on, do not fit"));

        // 1 + 2 + 3 slots fit in 7, d's 4 more do not; so nothing after c.
        let slots = within(100, 7);
        assert_eq!(slots.desired.backends.len(), 6);
        assert_eq!(slots.desired.services.len(), 3);
        assert_eq!(slots.problems[0].service(), &ServiceId::new("default", "d"));
    }

    #[test]
    fn an_endpoint_deleted_or_no_longer_ready_is_gone() {
        let both = web_with(vec![
            ready_on("10.244.2.3", "node2"),
            ready_on("10.244.2.9", "node2"),
        ]);
        let one = web_with(vec![ready_on("10.244.2.9", "node2")]);
        assert_eq!(
            gone_between(&both, &one),
            vec!["10.96.0.10:80 -> 10.244.2.3:8080"]
        );
        let mut unready = ready_on("10.244.2.3", "node2");
        unready.ready = false;
        let terminating = web_with(vec![unready, ready_on("10.244.2.9", "node2")]);
        assert_eq!(
            gone_between(&both, &terminating),
            vec!["10.96.0.10:80 -> 10.244.2.3:8080"]
        );
        // The last endpoint going leaves a frontend without endpoints: still gone.
        assert_eq!(
            gone_between(&one, &web_with(vec![])),
            vec!["10.96.0.10:80 -> 10.244.2.9:8080"]
        );
        assert_eq!(gone_between(&both, &both), Vec::<String>::new());
    }

    #[test]
    fn an_endpoint_only_no_longer_eligible_is_not_gone() {
        // A local endpoint appears: PreferSameNode drops the remote ones
        // from the slots, but they still serve the Service.
        let remote = web_with(vec![ready_on("10.244.2.3", "node2")]);
        let with_local = web_with(vec![
            ready_on("10.244.2.3", "node2"),
            ready_on("10.244.1.5", NODE),
        ]);
        assert_eq!(
            backends(&plan(&with_local, NODE).desired, "10.96.0.10", 80),
            vec![at("10.244.1.5:8080", true)]
        );
        assert_eq!(gone_between(&remote, &with_local), Vec::<String>::new());
    }

    #[test]
    fn a_deleted_service_leaves_its_connections_alone() {
        let web = web_with(vec![ready_on("10.244.2.3", "node2")]);
        assert_eq!(
            gone_between(&web, &ClusterView::new()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn cluster_policy_uses_every_ready_endpoint_local_first_then_by_address() {
        let plan = plan(&mixed(TrafficPolicy::Cluster), NODE);
        assert_eq!(plan.problems, vec![]);
        let (service, backends) = frontend(&plan.desired, "10.96.0.10", 80);
        assert_eq!(
            service,
            abi::Service {
                endpoints: 3,
                flags: 0,
                affinity_seconds: 0,
            }
        );
        assert_eq!(
            backends,
            vec![
                at("10.244.1.5:8080", true),
                at("10.244.2.3:8080", false),
                at("10.244.2.9:8080", false)
            ]
        );
        // Nothing beyond the slots of the one frontend.
        assert_eq!(plan.desired.services.len(), 1);
        assert_eq!(plan.desired.backends.len(), 3);
    }

    #[test]
    fn frontend_key_and_backend_use_kernel_layout_and_host_order_ports() {
        let plan = plan(&mixed(TrafficPolicy::Cluster), NODE);
        let key = *plan.desired.services.keys().next().unwrap();
        assert_eq!(key.addr, [u32::from_ne_bytes([10, 96, 0, 10]), 0, 0, 0]);
        assert_eq!(key.port, 80);
        assert_eq!(key.proto, PROTO_TCP);
        assert_eq!(key.family, abi::FAMILY_V4);
        let first = plan.desired.backends[&BackendKey {
            frontend: key,
            slot: 0,
        }];
        assert_eq!(first.port, 8080);
        assert_eq!(first.addr[0].to_ne_bytes(), [10, 244, 1, 5]);
    }

    #[test]
    fn prefer_same_node_uses_local_endpoints_when_there_are_some() {
        let plan = plan(&mixed(TrafficPolicy::PreferSameNode), NODE);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.5:8080", true)]
        );
        assert_eq!(plan.desired.backends.len(), 1);
    }

    #[test]
    fn prefer_same_node_falls_back_to_every_endpoint_without_local_one() {
        let plan = plan(&mixed(TrafficPolicy::PreferSameNode), "node3");
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![
                at("10.244.1.5:8080", false),
                at("10.244.2.3:8080", false),
                at("10.244.2.9:8080", false)
            ]
        );
    }

    #[test]
    fn node_local_uses_only_local_endpoints() {
        let plan = plan(&mixed(TrafficPolicy::NodeLocal), NODE);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.5:8080", true)]
        );
    }

    #[test]
    fn node_local_without_local_endpoint_writes_the_frontend_with_no_endpoint() {
        let plan = plan(&mixed(TrafficPolicy::NodeLocal), "node3");
        assert_eq!(plan.problems, vec![]);
        let (service, backends) = frontend(&plan.desired, "10.96.0.10", 80);
        assert_eq!(service.endpoints, 0);
        assert!(backends.is_empty());
        assert!(plan.desired.backends.is_empty());
    }

    #[test]
    fn endpoints_not_ready_are_left_out_and_unknown_node_is_remote() {
        let not_ready = Endpoint {
            ready: false,
            ..ready_on("10.244.1.7", NODE)
        };
        let nodeless = Endpoint {
            node_name: None,
            ..ready_on("10.244.3.3", NODE)
        };
        let view = view(
            vec![web_service()],
            vec![web_slice("web-1", 8080, vec![not_ready, nodeless])],
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.3.3:8080", false)]
        );
    }

    #[test]
    fn session_affinity_reaches_the_frontend() {
        let mut web = web_service();
        web.affinity_seconds = Some(60);
        let plan = plan(&view(vec![web], vec![]), NODE);
        assert_eq!(
            plan.desired
                .services
                .values()
                .next()
                .unwrap()
                .affinity_seconds,
            60
        );
    }

    #[test]
    fn prefer_close_picks_the_endpoints_hinted_for_this_nodes_zone() {
        let hinted = |address: &str, node: &str, zone: &str| Endpoint {
            zones: Box::new([zone.into()]),
            ..ready_on(address, node)
        };
        let mut web = web_service();
        web.traffic = TrafficPolicy::PreferClose;
        let endpoints = vec![
            hinted("10.244.2.2", "node2", "z1"),
            hinted("10.244.3.2", "node3", "z2"),
            hinted("10.244.4.2", "node4", "z1"),
        ];
        let mut view = view(vec![web], vec![web_slice("web-1", 8080, endpoints)]);
        let eligible = |view: &ClusterView| backends(&plan(view, NODE).desired, "10.96.0.10", 80);
        assert_eq!(
            eligible(&view).len(),
            3,
            "zone unknown: every ready endpoint"
        );
        view.apply_node(crate::model::Node {
            name: NODE.into(),
            zone: Some("z1".into()),
        });
        assert_eq!(
            eligible(&view),
            vec![at("10.244.2.2:8080", false), at("10.244.4.2:8080", false)]
        );
        view.apply_node(crate::model::Node {
            name: NODE.into(),
            zone: Some("z9".into()),
        });
        assert_eq!(
            eligible(&view).len(),
            3,
            "nothing hinted for this zone: every ready endpoint"
        );
    }

    #[test]
    fn opted_out_services_and_namespaces_get_no_frontend() {
        let mut annotated = service("annotated", &["10.96.0.11"], &[tcp("http", 80)]);
        annotated.fast_path = false;
        let mut view = view(vec![web_service(), annotated], vec![]);
        let frontends = |view: &ClusterView| plan(view, NODE).desired.services.len();
        assert_eq!(frontends(&view), 1, "the annotated Service is left alone");
        assert!(view.apply_namespace(crate::model::Namespace {
            name: "default".into(),
            fast_path: false
        }));
        assert_eq!(frontends(&view), 0, "a labelled namespace is left alone");
        assert!(view.apply_namespace(crate::model::Namespace {
            name: "default".into(),
            fast_path: true
        }));
        assert_eq!(frontends(&view), 1);
    }

    #[test]
    fn every_frontend_carries_its_service_name() {
        let view = view(
            vec![service(
                "web",
                &["10.96.0.10", "fd00:96::10"],
                &[tcp("http", 80), tcp("admin", 81)],
            )],
            vec![],
        );
        let plan = plan(&view, NODE);
        assert_eq!(plan.desired.names.len(), 4);
        assert!(plan
            .desired
            .names
            .values()
            .all(|name| name.as_str() == "default/web"));
        assert_eq!(
            plan.desired.names.keys().collect::<Vec<_>>(),
            plan.desired.services.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_address_of_an_endpoint_is_used_once() {
        let two_addresses = Endpoint {
            addresses: Box::new([ip("10.244.1.3"), ip("10.244.1.2")]),
            ..ready_on("10.244.1.2", NODE)
        };
        let view = view(
            vec![web_service()],
            vec![
                web_slice("web-1", 8080, vec![two_addresses]),
                // The same endpoint listed again, as during a slice migration.
                web_slice("web-2", 8080, vec![ready_on("10.244.1.2", NODE)]),
            ],
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.2:8080", true), at("10.244.1.3:8080", true)]
        );
    }

    #[test]
    fn named_target_ports_resolve_through_the_slice_for_each_service_port() {
        let view = view(
            vec![service(
                "web",
                &["10.96.0.10"],
                &[tcp("http", 80), tcp("metrics", 9000), tcp("", 81)],
            )],
            vec![slice(
                "web-1",
                "web",
                &[tcp("metrics", 9090), tcp("http", 8080), tcp("", 8181)],
                vec![ready_on("10.244.1.2", NODE)],
            )],
        );
        let plan = plan(&view, NODE);
        assert_eq!(plan.problems, vec![]);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.2:8080", true)]
        );
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 9000),
            vec![at("10.244.1.2:9090", true)]
        );
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 81),
            vec![at("10.244.1.2:8181", true)]
        );
        assert_eq!(plan.desired.services.len(), 3);
    }

    #[test]
    fn endpoints_spread_over_slices_each_keep_their_slice_port() {
        // During a rollout the named port may map to different numbers.
        let view = view(
            vec![web_service()],
            vec![
                web_slice("web-old", 8080, vec![ready_on("10.244.2.2", "node2")]),
                web_slice("web-new", 8081, vec![ready_on("10.244.1.2", NODE)]),
                slice(
                    "other",
                    "api",
                    &[tcp("http", 7000)],
                    vec![ready_on("10.244.1.9", NODE)],
                ),
            ],
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.2:8081", true), at("10.244.2.2:8080", false)]
        );
    }

    #[test]
    fn slices_of_a_same_named_service_in_another_namespace_are_not_used() {
        let mut elsewhere = web_slice("web-1", 8080, vec![ready_on("10.244.1.9", NODE)]);
        elsewhere.id.namespace = "other".into();
        elsewhere.service.namespace = "other".into();
        let view = view(vec![web_service()], vec![elsewhere]);
        let plan = plan(&view, NODE);
        assert_eq!(plan.problems, vec![]);
        assert_eq!(frontend(&plan.desired, "10.96.0.10", 80).0.endpoints, 0);
    }

    #[test]
    fn dual_stack_frontends_get_endpoints_of_their_own_family() {
        let view = view(
            vec![service(
                "web",
                &["10.96.0.10", "fd00:96::10"],
                &[tcp("http", 80)],
            )],
            vec![
                web_slice("web-v4", 8080, vec![ready_on("10.244.1.2", NODE)]),
                web_slice("web-v6", 8080, vec![ready_on("fd00:244:1::2", NODE)]),
            ],
        );
        let plan = plan(&view, NODE);
        assert_eq!(plan.problems, vec![]);
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.2:8080", true)]
        );
        assert_eq!(
            backends(&plan.desired, "fd00:96::10", 80),
            vec![at("[fd00:244:1::2]:8080", true)]
        );
        let v6 = frontend_key(ip("fd00:96::10"), 80);
        assert_eq!(v6.family, abi::FAMILY_V6);
    }

    #[test]
    fn udp_ports_get_frontends_of_their_own_and_sctp_ports_none() {
        let view = view(
            vec![service(
                "dns",
                &["10.96.0.53"],
                &[
                    ("dns".into(), 53, Protocol::Udp),
                    tcp("dns-tcp", 53),
                    ("s".into(), 99, Protocol::Sctp),
                ],
            )],
            vec![slice(
                "dns-1",
                "dns",
                &[
                    ("dns".into(), 5353, Protocol::Udp),
                    tcp("dns-tcp", 5354),
                    ("s".into(), 99, Protocol::Sctp),
                ],
                vec![ready_on("10.244.1.2", NODE)],
            )],
        );
        let plan = plan(&view, NODE);
        assert_eq!(plan.problems, vec![]);
        let keys: Vec<(u16, u8)> = plan
            .desired
            .services
            .keys()
            .map(|key| (key.port, key.proto))
            .collect();
        assert_eq!(keys, vec![(53, PROTO_TCP), (53, PROTO_UDP)]);
        assert_eq!(
            backends(&plan.desired, "10.96.0.53", 53),
            vec![at("10.244.1.2:5354", true)]
        );
        let udp = port_frontend_key(
            ip("10.96.0.53"),
            &ServicePort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp,
                app_protocol: None,
            },
        )
        .unwrap();
        let slot0 = plan.desired.backends[&BackendKey {
            frontend: udp,
            slot: 0,
        }];
        assert_eq!(slot0.port, 5353, "the UDP port's own target port");
    }

    #[test]
    fn a_slice_port_must_match_the_protocol_too() {
        let view = view(
            vec![web_service()],
            vec![slice(
                "web-1",
                "web",
                &[("http".into(), 8080, Protocol::Udp)],
                vec![ready_on("10.244.1.2", NODE)],
            )],
        );
        let plan = plan(&view, NODE);
        assert_eq!(frontend(&plan.desired, "10.96.0.10", 80).0.endpoints, 0);
        assert_eq!(plan.problems.len(), 1);
    }

    #[test]
    fn a_port_no_slice_defines_is_a_problem_and_gets_no_endpoint() {
        let view = view(
            vec![service(
                "web",
                &["10.96.0.10"],
                &[tcp("http", 80), tcp("admin", 81)],
            )],
            vec![web_slice("web-1", 8080, vec![ready_on("10.244.1.2", NODE)])],
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            messages(&plan.problems),
            vec![r#"Service default/web port "admin": no IPv4 EndpointSlice defines it"#]
        );
        let (admin, admin_backends) = frontend(&plan.desired, "10.96.0.10", 81);
        assert_eq!(admin.endpoints, 0);
        assert!(admin_backends.is_empty());
        assert_eq!(backends(&plan.desired, "10.96.0.10", 80).len(), 1);
    }

    #[test]
    fn a_service_without_endpoints_is_written_with_none_and_no_problem() {
        let view = view(
            vec![web_service()],
            // What Kubernetes writes for a Service scaled to zero.
            vec![slice("web-1", "web", &[], vec![])],
        );
        let plan = plan(&view, NODE);
        assert_eq!(plan.problems, vec![]);
        assert_eq!(
            plan.desired.services[&frontend_key(ip("10.96.0.10"), 80)],
            abi::Service {
                endpoints: 0,
                flags: 0,
                affinity_seconds: 0,
            }
        );
    }

    #[test]
    fn bypass_off_sets_the_no_bypass_flag() {
        let mut web = web_service();
        web.bypass = Bypass::Off;
        let plan = plan(&view(vec![web], vec![]), NODE);
        assert_eq!(
            frontend(&plan.desired, "10.96.0.10", 80).0.flags,
            SERVICE_NO_BYPASS
        );
    }

    #[test]
    fn learned_short_connections_mark_auto_frontends_only() {
        let web = frontend_key(IpAddr::from([10, 96, 0, 10]), 80);
        let short = BTreeSet::from([web]);
        for (bypass, expected) in [
            (Bypass::Auto, SERVICE_SHORT_CONNS),
            (Bypass::On, 0),
            (Bypass::Off, SERVICE_NO_BYPASS),
        ] {
            let mut service = web_service();
            service.bypass = bypass;
            let plan = plan_with(
                &view(vec![service], vec![]),
                NODE,
                Waypoints::default(),
                &short,
            );
            assert_eq!(plan.desired.services[&web].flags, expected, "{bypass:?}");
        }
    }

    #[test]
    fn the_bypass_policy_learns_auto_frontends_only() {
        use crate::{node_plan::NodePlan, view::Touched};
        let web = frontend_key(IpAddr::from([10, 96, 0, 10]), 80);
        for (bypass, learned) in [
            (Bypass::Auto, true),
            (Bypass::On, false),
            (Bypass::Off, false),
        ] {
            let mut service = web_service();
            service.bypass = bypass;
            let mut node_plan = NodePlan::new(NODE, Waypoints::default(), Capacity::KERNEL);
            node_plan.update(
                &view(vec![service], vec![]),
                &Touched::All,
                &BTreeSet::new(),
            );
            assert_eq!(node_plan.learns(&web), learned, "{bypass:?}");
        }
        let elsewhere = frontend_key(IpAddr::from([10, 96, 0, 11]), 80);
        let node_plan = NodePlan::new(NODE, Waypoints::default(), Capacity::KERNEL);
        assert!(!node_plan.learns(&elsewhere), "a frontend no Service owns");
    }

    #[test]
    fn the_problems_of_many_ports_are_one_line_per_service() {
        let ports: Vec<(String, u16, Protocol)> = (0..10_000)
            .map(|n| tcp(&format!("p{n}"), 1000 + n))
            .collect();
        let view = view(
            vec![
                service("alpha", &["10.96.0.10"], &ports[..4]),
                service("many", &["10.96.0.10"], &ports),
            ],
            ["alpha", "many"]
                .iter()
                .map(|name| {
                    let endpoints = vec![ready_on("10.244.1.2", NODE)];
                    slice(&format!("{name}-1"), name, &[tcp("other", 9)], endpoints)
                })
                .collect(),
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            messages(&plan.problems),
            vec![
                r#"Service default/alpha ports "p0", "p1", "p2" and 1 more: no IPv4 EndpointSlice defines them"#,
                "Service default/many: frontends 10.96.0.10:1000, 10.96.0.10:1001, 10.96.0.10:1002 \
                 and 1 more already belong to Service default/alpha; ignored",
                r#"Service default/many ports "p4", "p5", "p6" and 9993 more: no IPv4 EndpointSlice defines them"#,
            ]
        );
    }

    #[test]
    fn two_services_on_one_frontend_the_first_by_id_wins() {
        let view = view(
            vec![
                service("zeta", &["10.96.0.10"], &[tcp("http", 80)]),
                service(
                    "alpha",
                    &["10.96.0.10"],
                    &[tcp("http", 80), tcp("other", 81)],
                ),
            ],
            vec![
                slice(
                    "alpha-1",
                    "alpha",
                    &[tcp("http", 8080), tcp("other", 8081)],
                    vec![ready_on("10.244.1.1", NODE)],
                ),
                slice(
                    "zeta-1",
                    "zeta",
                    &[tcp("http", 8080)],
                    vec![ready_on("10.244.1.26", NODE)],
                ),
            ],
        );
        let plan = plan(&view, NODE);
        assert_eq!(
            plan.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["Service default/zeta: frontend 10.96.0.10:80 already belongs to Service default/alpha; ignored"]
        );
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 80),
            vec![at("10.244.1.1:8080", true)]
        );
        assert_eq!(
            backends(&plan.desired, "10.96.0.10", 81),
            vec![at("10.244.1.1:8081", true)]
        );
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_objects_arrive_in() {
        let endpoints = vec![
            ready_on("10.244.2.2", "node2"),
            ready_on("10.244.1.2", NODE),
        ];
        let mut reversed = endpoints.clone();
        reversed.reverse();
        let first = plan(
            &view(
                vec![web_service()],
                vec![web_slice("web-1", 8080, endpoints)],
            ),
            NODE,
        );
        let second = plan(
            &view(
                vec![web_service()],
                vec![web_slice("web-1", 8080, reversed)],
            ),
            NODE,
        );
        assert_eq!(first, second);
    }
}
