//! The plan of one node, kept up to date change by change.
//!
//! [`NodePlan`] plans each Service on its own (its candidate: the
//! frontends of its ClusterIPs and ports, their endpoints and problems),
//! then decides across Services who owns a frontend two of them claim (the
//! first by id) and what fits in the maps (Services in id order, the first
//! that does not fit and all after it left out). A change to a few Services
//! plans those again, and the Services that claim a frontend with them, and
//! touches only their entries: its cost follows the change, not the
//! cluster. On a node with more than the maps hold, where one Service
//! growing can push others out, every change fits all Services again
//! (from the plans kept for the Services it did not touch).
//!
//! [`plan_within`] is a [`NodePlan`] used once: both give the same plan for
//! the same view, which the tests check over random sequences of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zerohop_abi::{FrontendEndpoint, FrontendKey};

use crate::model::{Bypass, Family, Protocol, Service, ServiceId};
use crate::plan::{
    eligible, endpoint_of, packed, port_frontend_key, ready_targets, Capacity, MapEntries, Plan,
    PlanProblem, Target, Waypoints,
};
use crate::view::{ClusterView, Touched};
use crate::waypoint::{l7_ports, l7_ports_of};

/// Plans the map contents for node `node`, which has no waypoint.
pub fn plan(view: &ClusterView, node: &str) -> Plan {
    plan_with(view, node, Waypoints::default(), &BTreeSet::new())
}

/// Plans the map contents for node `node`. Frontends of L7 Services (ports
/// of Services with an accepted HTTPRoute) are marked for the waypoint when the node has
/// one of their family; their endpoints are still planned, for the
/// waypoint's own connections. Frontends in `short_conns` (learned by the
/// node's agent, see [`crate::policy`]) are marked as such unless their
/// Service says `zerohop.io/bypass` itself.
pub fn plan_with(
    view: &ClusterView,
    node: &str,
    waypoints: Waypoints,
    short_conns: &BTreeSet<FrontendKey>,
) -> Plan {
    plan_within(view, node, waypoints, short_conns, Capacity::KERNEL)
}

/// [`plan_with`] for maps of `capacity`. Frontends are planned in Service
/// order; those that would not fit are left out whole (their connections
/// take the cluster's normal path, as without zerohop), reported in one
/// [`PlanProblem::OverCapacity`], so the maps never refuse a write.
pub fn plan_within(
    view: &ClusterView,
    node: &str,
    waypoints: Waypoints,
    short_conns: &BTreeSet<FrontendKey>,
    capacity: Capacity,
) -> Plan {
    let mut node_plan = NodePlan::new(node, waypoints, capacity);
    node_plan.update(view, &Touched::All, short_conns);
    node_plan.plan()
}

/// The plan of one node, and what it was made of.
#[derive(Debug)]
pub struct NodePlan {
    node: String,
    waypoints: Waypoints,
    capacity: Capacity,
    short_conns: BTreeSet<FrontendKey>,
    /// Each handled Service's own plan.
    candidates: BTreeMap<ServiceId, Candidate>,
    /// The handled Services that claim each frontend, sorted; the first
    /// owns it. Nearly always one: a vector of one is a tenth of the size
    /// of a set of one (a whole B-tree node).
    claimants: BTreeMap<FrontendKey, Vec<ServiceId>>,
    /// What each Service put in the plan.
    contributions: BTreeMap<ServiceId, Contribution>,
    desired: MapEntries,
    /// Set when the last full planning left frontends out.
    over_capacity: Option<PlanProblem>,
}

/// What an [`NodePlan::update`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The frontends whose entries may differ from before; `None` when the
    /// whole node was planned again (any may).
    pub frontends: Option<BTreeSet<FrontendKey>>,
    /// The ready endpoints that left a frontend that stays (see
    /// [`crate::plan::gone`]).
    pub gone: Vec<FrontendEndpoint>,
    /// What the plan held before the update: the entries of `frontends`,
    /// or every entry when `frontends` is `None`. Maps that held the plan
    /// before need the writes from this to [`NodePlan::desired`], so their
    /// writer need not keep a copy of them.
    pub before: MapEntries,
    /// How many Services were planned again.
    pub services: usize,
}

/// One Service planned on its own.
#[derive(Debug, Clone)]
struct Candidate {
    service: Arc<Service>,
    /// Each ClusterIP with its family and the frontends of its ports, in
    /// the Service's order (boxed: exactly their size, kept for every
    /// Service of the node).
    ips: Box<[IpPlan]>,
}

/// A ClusterIP, its family and the frontends of its ports.
type IpPlan = (IpAddr, Family, Box<[PortPlan]>);

/// The frontend of one ClusterIP and port.
#[derive(Debug, Clone)]
struct PortPlan {
    key: FrontendKey,
    port: u16,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// An L7 port on a node without a waypoint of its family: claimed, but
    /// left to the cluster's normal path.
    NoWaypoint,
    /// Planned; without endpoints when no slice defines the port (then
    /// `not_in_slices` names it).
    Planned {
        l7: bool,
        not_in_slices: Option<String>,
        /// Every ready endpoint of the port; those the Service's traffic
        /// policy allows ([`eligible`]) are written. Kept once: the
        /// frontend's ready endpoints and its slots are made from it.
        ready: Vec<Target>,
    },
}

/// What one Service put in the plan. Its frontends' ready endpoints are
/// read from its candidate, not copied: a node's plan holds each endpoint
/// once.
#[derive(Debug, Clone, Default)]
struct Contribution {
    frontends: Vec<FrontendKey>,
    problems: Vec<PlanProblem>,
}

/// Room left in the maps while Services are added in order.
struct Room {
    capacity: Capacity,
    /// The first Service left out, and how many frontends were.
    left_out: Option<(ServiceId, usize)>,
}

impl NodePlan {
    /// An empty plan for node `node`.
    pub fn new(node: &str, waypoints: Waypoints, capacity: Capacity) -> NodePlan {
        NodePlan {
            node: node.to_owned(),
            waypoints,
            capacity,
            short_conns: BTreeSet::new(),
            candidates: BTreeMap::new(),
            claimants: BTreeMap::new(),
            contributions: BTreeMap::new(),
            desired: MapEntries::default(),
            over_capacity: None,
        }
    }

    /// What the maps should hold.
    pub fn desired(&self) -> &MapEntries {
        &self.desired
    }

    /// Every ready endpoint of each planned frontend.
    pub fn ready(&self) -> BTreeSet<FrontendEndpoint> {
        self.contributions
            .iter()
            .flat_map(|(id, contribution)| self.candidates[id].ready_of(&contribution.frontends))
            .collect()
    }

    /// Whether `endpoint`, ready before, is gone: its frontend stays
    /// planned without it (see [`crate::plan::gone`]).
    fn is_gone(&self, endpoint: &FrontendEndpoint) -> bool {
        self.desired.services.contains_key(&endpoint.frontend)
            && !self
                .claimants
                .get(&endpoint.frontend)
                .and_then(|ids| ids.first())
                .and_then(|owner| self.candidates.get(owner))
                .is_some_and(|candidate| {
                    candidate
                        .ready_of(&[endpoint.frontend])
                        .any(|ready| ready == *endpoint)
                })
    }

    /// Whether the bypass policy ([`crate::policy`]) decides for
    /// `frontend`: the Service that owns it leaves that to the policy
    /// (`zerohop.io/bypass` absent or `auto`). A frontend of a Service
    /// annotated `on` or `off` is not learned: no verdict would apply.
    pub fn learns(&self, frontend: &FrontendKey) -> bool {
        self.claimants
            .get(frontend)
            .and_then(|ids| ids.first())
            .and_then(|id| self.candidates.get(id))
            .is_some_and(|candidate| candidate.service.bypass == Bypass::Auto)
    }

    /// What could not be planned, Service by Service in id order.
    pub fn problems(&self) -> Vec<PlanProblem> {
        self.contributions
            .values()
            .flat_map(|contribution| contribution.problems.iter().cloned())
            .chain(self.over_capacity.clone())
            .collect()
    }

    /// The whole plan, copied.
    pub fn plan(&self) -> Plan {
        Plan {
            desired: self.desired.clone(),
            problems: self.problems(),
            ready: self.ready(),
        }
    }

    /// Plans `view`, where only the Services `touched` (see
    /// [`ClusterView::touched_services`]) may differ from the view of the
    /// last update, with the frontends `short_conns` judged short.
    pub fn update(
        &mut self,
        view: &ClusterView,
        touched: &Touched,
        short_conns: &BTreeSet<FrontendKey>,
    ) -> Update {
        // A frontend judged otherwise concerns the Services claiming it.
        let mut services = match touched {
            Touched::All => None,
            Touched::Services(services) => Some(services.clone()),
        };
        if let Some(services) = &mut services {
            for key in self.short_conns.symmetric_difference(short_conns) {
                services.extend(self.claimants.get(key).into_iter().flatten().cloned());
            }
        }
        self.short_conns = short_conns.clone();
        let Some(touched) = services else {
            let replaced = self.replan_candidates(view);
            let (gone, before) = self.assemble_all(&replaced);
            return Update {
                gone,
                frontends: None,
                services: self.candidates.len(),
                before,
            };
        };
        let (affected, replaced) = self.refresh_candidates(view, &touched);
        if self.over_capacity.is_some() {
            // What fits depends on every Service before: fit them all
            // again (from the plans kept for the untouched ones).
            let (gone, before) = self.assemble_all(&replaced);
            return Update {
                gone,
                frontends: None,
                services: affected.len(),
                before,
            };
        }
        let update = self.assemble(&affected, &replaced);
        if self.fits() {
            return update;
        }
        // One Service's growth pushed others out: fit them all again.
        let (mut gone, mut before) = self.assemble_all(&BTreeMap::new());
        // What the plan held before the first assembly.
        before.restore(update.frontends.iter().flatten(), update.before);
        gone.extend(
            update
                .gone
                .into_iter()
                .filter(|endpoint| self.is_gone(endpoint)),
        );
        gone.sort();
        gone.dedup();
        Update {
            frontends: None,
            gone,
            services: affected.len(),
            before,
        }
    }

    fn fits(&self) -> bool {
        self.desired.services.len() <= self.capacity.frontends
            && self.desired.backends.len() <= self.capacity.endpoint_slots
    }

    /// Plans every Service of `view` on its own again; returns the plans
    /// it replaced.
    fn replan_candidates(&mut self, view: &ClusterView) -> BTreeMap<ServiceId, Candidate> {
        let l7 = l7_ports(view);
        let replaced = std::mem::take(&mut self.candidates);
        self.claimants.clear();
        for service in view.services().values() {
            let ports: BTreeSet<u16> = l7
                .range((service.id.clone(), 0)..=(service.id.clone(), u16::MAX))
                .map(|(_, port)| *port)
                .collect();
            self.add_candidate(view, service, &ports);
        }
        packed(&mut self.candidates);
        packed(&mut self.claimants);
        replaced
    }

    /// Plans the Services `touched` on its own again; returns them and the
    /// Services that share a frontend with them, before or after, and the
    /// plans it replaced.
    fn refresh_candidates(
        &mut self,
        view: &ClusterView,
        touched: &BTreeSet<ServiceId>,
    ) -> (BTreeSet<ServiceId>, BTreeMap<ServiceId, Candidate>) {
        let mut affected = touched.clone();
        let mut replaced = BTreeMap::new();
        for id in touched {
            if let Some(old) = self.candidates.remove(id) {
                for key in old.keys() {
                    let claimants = self.claimants.get_mut(&key).expect("claimed");
                    claimants.retain(|claimant| claimant != id);
                    affected.extend(claimants.iter().cloned());
                    if claimants.is_empty() {
                        self.claimants.remove(&key);
                    }
                }
                replaced.insert(id.clone(), old);
            }
            if let Some(service) = view.services().get(id) {
                let added = self.add_candidate(view, service, &l7_ports_of(view, id));
                for key in added {
                    affected.extend(self.claimants[&key].iter().cloned());
                }
            }
        }
        (affected, replaced)
    }

    /// The ready endpoints that the Services `ids` put in the plan, as
    /// their candidates were then: `replaced`, or those kept.
    fn ready_contributed<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a ServiceId>,
        replaced: &BTreeMap<ServiceId, Candidate>,
    ) -> Vec<FrontendEndpoint> {
        let mut ready = Vec::new();
        for id in ids {
            let Some(contribution) = self.contributions.get(id) else {
                continue;
            };
            let candidate = replaced.get(id).or_else(|| self.candidates.get(id));
            ready.extend(
                candidate
                    .into_iter()
                    .flat_map(|candidate| candidate.ready_of(&contribution.frontends)),
            );
        }
        ready
    }

    /// Puts every Service's frontends in the plan again, in order, as many
    /// as fit; returns the ready endpoints that left a frontend that stays,
    /// and what the plan held before. `replaced` holds the plans the
    /// Services had when they last contributed, where they changed since.
    fn assemble_all(
        &mut self,
        replaced: &BTreeMap<ServiceId, Candidate>,
    ) -> (Vec<FrontendEndpoint>, MapEntries) {
        let before = self.ready_contributed(self.contributions.keys(), replaced);
        self.contributions.clear();
        let entries = std::mem::take(&mut self.desired);
        let mut room = Room {
            capacity: self.capacity,
            left_out: None,
        };
        let ids: Vec<ServiceId> = self.candidates.keys().cloned().collect();
        for id in ids {
            self.contribute(&id, &mut room);
        }
        self.over_capacity = room
            .left_out
            .map(|(service, frontends)| PlanProblem::OverCapacity {
                service,
                frontends,
                capacity: self.capacity,
            });
        let mut gone: Vec<FrontendEndpoint> = before
            .into_iter()
            .filter(|endpoint| self.is_gone(endpoint))
            .collect();
        gone.sort();
        self.desired.pack();
        packed(&mut self.contributions);
        (gone, entries)
    }

    /// Puts the frontends of the Services `affected` in the plan again,
    /// leaving the others' as they are (while everything fits). `replaced`
    /// as for [`NodePlan::assemble_all`].
    fn assemble(
        &mut self,
        affected: &BTreeSet<ServiceId>,
        replaced: &BTreeMap<ServiceId, Candidate>,
    ) -> Update {
        let mut frontends = BTreeSet::new();
        let left = self.ready_contributed(affected, replaced);
        let mut before = MapEntries::default();
        for id in affected {
            let Some(old) = self.contributions.remove(id) else {
                continue;
            };
            for key in &old.frontends {
                self.desired.move_frontend(key, &mut before);
            }
            frontends.extend(old.frontends);
        }
        let mut room = Room {
            capacity: Capacity {
                frontends: usize::MAX,
                endpoint_slots: usize::MAX,
            },
            left_out: None,
        };
        for id in affected {
            if let Some(contribution) = self.contribute(id, &mut room) {
                frontends.extend(contribution.frontends.iter().copied());
            }
        }
        let gone = left
            .into_iter()
            .filter(|endpoint| self.is_gone(endpoint))
            .collect();
        Update {
            frontends: Some(frontends),
            gone,
            services: affected.len(),
            before,
        }
    }

    /// Plans `service` on its own, if the node handles it, and records its
    /// claims; returns the frontends it claims.
    fn add_candidate(
        &mut self,
        view: &ClusterView,
        service: &Arc<Service>,
        l7: &BTreeSet<u16>,
    ) -> Vec<FrontendKey> {
        if !(service.fast_path && view.namespace_fast_path(&service.id.namespace)) {
            return Vec::new();
        }
        let candidate = Candidate::of(view, service, &self.node, self.waypoints, l7);
        let keys = candidate.keys();
        for key in &keys {
            let claimants = self.claimants.entry(*key).or_default();
            if let Err(at) = claimants.binary_search(&service.id) {
                claimants.insert(at, service.id.clone());
            }
        }
        self.candidates.insert(service.id.clone(), candidate);
        keys
    }

    /// Puts Service `id`'s frontends that it owns, and that fit, in the
    /// plan, and its problems; `None` when it has no candidate.
    fn contribute(&mut self, id: &ServiceId, room: &mut Room) -> Option<&Contribution> {
        let candidate = self.candidates.get(id)?;
        let service = &candidate.service;
        let mut contribution = Contribution::default();
        let mut own = BTreeSet::new();
        for (ip, family, ports) in &candidate.ips {
            let mut taken: BTreeMap<&ServiceId, Vec<SocketAddr>> = BTreeMap::new();
            let mut not_in_slices = Vec::new();
            let mut no_waypoint = false;
            for port in ports {
                // The first claimant by id owns the frontend; a frontend
                // claimed twice by one Service stays with its first port.
                let owner = self.claimants[&port.key].first().expect("claimed");
                if owner != id || !own.insert(port.key) {
                    taken
                        .entry(owner)
                        .or_default()
                        .push(SocketAddr::new(*ip, port.port));
                    continue;
                }
                let Outcome::Planned {
                    l7,
                    not_in_slices: missing,
                    ready,
                } = &port.outcome
                else {
                    no_waypoint = true;
                    continue;
                };
                not_in_slices.extend(missing.clone());
                let targets = eligible(ready.clone(), service.traffic);
                // Once one is left out, all after it are: what fits does
                // not depend on the sizes of the Services that follow.
                let fits = room.left_out.is_none()
                    && self.desired.services.len() < room.capacity.frontends
                    && self.desired.backends.len() + targets.len() <= room.capacity.endpoint_slots;
                if !fits {
                    room.left_out.get_or_insert_with(|| (id.clone(), 0)).1 += 1;
                    continue;
                }
                let short = self.short_conns.contains(&port.key);
                self.desired.insert(port.key, service, *l7, short, &targets);
                contribution.frontends.push(port.key);
            }
            for (owner, frontends) in taken {
                contribution.problems.push(PlanProblem::FrontendTaken {
                    service: id.clone(),
                    frontends,
                    owner: owner.clone(),
                });
            }
            if no_waypoint {
                contribution.problems.push(PlanProblem::NoWaypoint {
                    service: id.clone(),
                    family: *family,
                });
            }
            if !not_in_slices.is_empty() {
                contribution.problems.push(PlanProblem::PortNotInSlices {
                    service: id.clone(),
                    ports: not_in_slices,
                    family: *family,
                });
            }
        }
        // Kept until the Service changes: exactly its size.
        contribution.frontends.shrink_to_fit();
        self.contributions.insert(id.clone(), contribution);
        self.contributions.get(id)
    }
}

impl Candidate {
    /// `service` planned on its own for node `node`; `l7` holds its ports
    /// with an accepted HTTPRoute.
    fn of(
        view: &ClusterView,
        service: &Arc<Service>,
        node: &str,
        waypoints: Waypoints,
        l7: &BTreeSet<u16>,
    ) -> Candidate {
        let slices = view.slices_of(&service.id);
        let zone = view.node_zone(node);
        let ips = service
            .cluster_ips
            .iter()
            .map(|&ip| {
                let family = Family::of(&ip);
                let family_slices: Vec<_> = slices
                    .iter()
                    .copied()
                    .filter(|slice| slice.family == family)
                    .collect();
                let ports = service
                    .ports
                    .iter()
                    .filter_map(|port| {
                        let key = port_frontend_key(ip, port)?;
                        // Routes are HTTP: they apply to TCP ports only.
                        let l7 = port.protocol == Protocol::Tcp && l7.contains(&port.port);
                        let outcome = if l7 && !waypoints.serve(family) {
                            Outcome::NoWaypoint
                        } else {
                            match ready_targets(&family_slices, port, node, zone) {
                                Some(ready) => Outcome::Planned {
                                    l7,
                                    not_in_slices: None,
                                    ready,
                                },
                                None => Outcome::Planned {
                                    l7,
                                    not_in_slices: Some(port.name.clone()),
                                    ready: Vec::new(),
                                },
                            }
                        };
                        Some(PortPlan {
                            key,
                            port: port.port,
                            outcome,
                        })
                    })
                    .collect();
                (ip, family, ports)
            })
            .collect();
        Candidate {
            service: service.clone(),
            ips,
        }
    }

    /// The ready endpoints of its `frontends` (those it claims), each as
    /// planned by the first port with that frontend.
    fn ready_of<'a>(
        &'a self,
        frontends: &'a [FrontendKey],
    ) -> impl Iterator<Item = FrontendEndpoint> + 'a {
        frontends.iter().flat_map(move |&frontend| {
            let port = self
                .ips
                .iter()
                .flat_map(|(_, _, ports)| ports)
                .find(|port| port.key == frontend);
            let ready = match port.map(|port| &port.outcome) {
                Some(Outcome::Planned { ready, .. }) => ready.as_slice(),
                _ => &[],
            };
            ready
                .iter()
                .map(move |target| endpoint_of(frontend, target.address, target.port))
        })
    }

    /// Every frontend it claims, each once.
    fn keys(&self) -> Vec<FrontendKey> {
        let keys: BTreeSet<FrontendKey> = self
            .ips
            .iter()
            .flat_map(|(_, _, ports)| ports.iter().map(|port| port.key))
            .collect();
        keys.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{diff, diff_frontends};
    use crate::model::{
        Endpoint, EndpointSlice, Namespace, Node, Route, ServicePort, SliceId, SlicePort,
        TrafficPolicy,
    };
    use zerohop_routes::model::RouteKind;

    /// xorshift64*: a small deterministic generator, so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const NAMESPACES: [&str; 2] = ["shop", "team"];
    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    /// A random Service: ClusterIPs from a small pool (so two Services
    /// may claim one frontend), one or two ports, sometimes a policy.
    fn service(rng: &mut Rng, namespace: &str, name: &str) -> Service {
        let v4 = *rng.pick(&["10.96.0.1", "10.96.0.2", "10.96.0.3"]);
        let ips = match rng.below(3) {
            0 => vec![v4.to_owned()],
            1 => vec![v4.to_owned(), format!("fd00::{}", 1 + rng.below(2))],
            _ => vec![format!("fd00::{}", 1 + rng.below(2))],
        };
        let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Udp]);
        let mut ports = vec![ServicePort {
            name: "http".into(),
            port: 80 + rng.below(2) as u16,
            protocol,
            app_protocol: None,
        }];
        if rng.below(2) == 0 {
            ports.push(ServicePort {
                name: "admin".into(),
                port: 9000,
                protocol: Protocol::Tcp,
                app_protocol: None,
            });
        }
        // Annotation zerohop.io/bypass "off", or zerohop.io/fast-path "off".
        let (bypass, fast_path) = match rng.below(5) {
            0 => (Bypass::Off, true),
            1 => (Bypass::Auto, false),
            _ => (Bypass::Auto, true),
        };
        // internalTrafficPolicy Cluster, Cluster, PreferClose (not an
        // internal policy: Cluster) or Local.
        let traffic = *rng.pick(&[
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
            TrafficPolicy::NodeLocal,
        ]);
        Service {
            id: ServiceId::new(namespace, name),
            cluster_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ports,
            traffic,
            bypass,
            affinity_seconds: None,
            fast_path,
        }
    }

    /// A random slice of Service `name`: a few endpoints on this node or
    /// another, ready or not, zone-hinted or not.
    fn slice(rng: &mut Rng, namespace: &str, name: &str, slice: &str) -> EndpointSlice {
        let v6 = rng.below(3) == 0;
        let mut endpoints = Vec::new();
        for _ in 0..rng.below(4) {
            let address = if v6 {
                format!("fd00:244::{}", 1 + rng.below(6))
            } else {
                format!("10.244.0.{}", 1 + rng.below(6))
            };
            let node = *rng.pick(&["node1", "node2"]);
            let ready = *rng.pick(&[true, true, false]);
            let zone = *rng.pick(&["zone-a", "zone-b"]);
            endpoints.push(Endpoint {
                addresses: Box::new([address.parse().unwrap()]),
                ready,
                node_name: Some(node.into()),
                zones: Box::new([zone.into()]),
            });
        }
        let port_name = *rng.pick(&["http", "http", "other"]);
        let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Udp]);
        EndpointSlice {
            id: SliceId::new(namespace, slice),
            service: ServiceId::new(namespace, name),
            family: if v6 { Family::V6 } else { Family::V4 },
            ports: vec![
                SlicePort {
                    name: port_name.into(),
                    port: 8080,
                    protocol,
                },
                SlicePort {
                    name: "admin".into(),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
            endpoints,
        }
    }

    fn route(rng: &mut Rng, namespace: &str, name: &str) -> Route {
        let parent = *rng.pick(&NAMES);
        let parent_namespace = *rng.pick(&NAMESPACES);
        let backend = *rng.pick(&NAMES);
        let route = serde_json::json!({
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "parentRefs": [
                    {"group": "", "kind": "Service", "name": parent, "namespace": parent_namespace}
                ],
                "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
            },
        });
        Route(serde_json::from_value(route).unwrap())
    }

    /// One random change to `view`.
    fn change(rng: &mut Rng, view: &mut ClusterView) {
        let namespace = *rng.pick(&NAMESPACES);
        let name = *rng.pick(&NAMES);
        let slice_name = format!("{name}-{}", rng.below(2));
        match rng.below(12) {
            0..=2 => _ = view.apply_service(service(rng, namespace, name)),
            3 => _ = view.delete_service(&ServiceId::new(namespace, name)),
            4..=6 => _ = view.apply_slice(slice(rng, namespace, name, &slice_name)),
            7 => _ = view.delete_slice(&SliceId::new(namespace, slice_name)),
            8 => {
                let opted_out = rng.below(2) == 0;
                view.apply_namespace(Namespace {
                    name: namespace.to_owned(),
                    fast_path: !opted_out,
                });
            }
            9 => {
                let zone = *rng.pick(&["zone-a", "zone-b"]);
                view.apply_node(Node {
                    name: "node1".to_owned(),
                    zone: Some(zone.to_owned()),
                });
            }
            10 => _ = view.apply_route(route(rng, namespace, name)),
            _ => {
                let key = (RouteKind::Http, namespace.to_owned(), name.to_owned());
                _ = view.delete_route(&key);
            }
        }
    }

    /// Over random changes, a plan kept up to date change by change is the
    /// plan made from scratch, the frontends it reports as changed and what
    /// it says they held give every map write, and the endpoints it reports gone are those
    /// [`crate::plan::gone`] finds.
    #[test]
    fn an_updated_plan_is_the_plan_made_from_scratch() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // Some runs on small maps, to go over capacity and back.
            let capacity = if seed % 4 == 0 {
                Capacity {
                    frontends: 4,
                    endpoint_slots: 8,
                }
            } else {
                Capacity::KERNEL
            };
            let waypoints = Waypoints {
                v4: seed % 2 == 0,
                v6: seed % 3 == 0,
            };
            let mut view = ClusterView::new();
            let mut node_plan = NodePlan::new("node1", waypoints, capacity);
            let mut short = BTreeSet::new();
            node_plan.update(&view, &Touched::All, &short);
            let mut before = node_plan.plan();
            let mut before_view = view.clone();
            for step in 0..150 {
                for _ in 0..1 + rng.below(3) {
                    change(&mut rng, &mut view);
                }
                if rng.below(6) == 0 {
                    // The bypass policy judges a frontend short, or no more.
                    if let Some(key) = before.desired.services.keys().nth(rng.below(4)) {
                        if !short.remove(key) {
                            short.insert(*key);
                        }
                    }
                }
                let touched = view.touched_services(&before_view);
                let update = node_plan.update(&view, &touched, &short);
                let fresh = plan_within(&view, "node1", waypoints, &short, capacity);
                let context = format!("seed {seed} step {step}");
                assert_eq!(node_plan.desired(), &fresh.desired, "{context}");
                assert_eq!(node_plan.ready(), fresh.ready, "{context}");
                assert_eq!(node_plan.problems(), fresh.problems, "{context}");
                // Writing the frontends said to have changed, from what
                // the update says they held, is writing every change.
                let writes = match &update.frontends {
                    Some(frontends) => diff_frontends(&update.before, &fresh.desired, frontends),
                    None => diff(&update.before, &fresh.desired),
                };
                assert_eq!(writes, diff(&before.desired, &fresh.desired), "{context}");
                let mut gone = update.gone.clone();
                gone.sort();
                assert_eq!(gone, crate::plan::gone(&before.ready, &fresh), "{context}");
                before = fresh;
                before_view = view.clone();
            }
        }
    }

    #[test]
    fn a_change_to_one_service_plans_only_it_and_those_sharing_a_frontend() {
        let mut rng = Rng(7);
        let mut view = ClusterView::new();
        for name in NAMES {
            view.apply_service(service(&mut rng, "shop", name));
        }
        let mut node_plan = NodePlan::new("node1", Waypoints::default(), Capacity::KERNEL);
        let all = node_plan.update(&view, &Touched::All, &BTreeSet::new());
        assert_eq!(all.frontends, None);
        let before = view.clone();
        view.apply_slice(slice(&mut rng, "shop", "a", "a-0"));
        let touched = view.touched_services(&before);
        assert_eq!(
            touched,
            Touched::Services(BTreeSet::from([ServiceId::new("shop", "a")]))
        );
        let update = node_plan.update(&view, &touched, &BTreeSet::new());
        let sharing: BTreeSet<&ServiceId> = node_plan
            .claimants
            .values()
            .filter(|claimants| claimants.contains(&ServiceId::new("shop", "a")))
            .flatten()
            .collect();
        assert_eq!(update.services, sharing.len().max(1));
        assert!(update.services < NAMES.len() || sharing.len() == NAMES.len());
    }
}
