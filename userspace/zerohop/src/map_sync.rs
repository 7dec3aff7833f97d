//! Keeping the Service maps equal to the node's plan, change by change.
//!
//! [`MapSync`] plans each snapshot from the last ([`NodePlan`]), works out
//! the writes from what the plan held before (the maps hold that: the agent
//! is their only writer, one agent per pin directory), and makes them
//! through a
//! [`MapWriter`]: the kernel's maps in the agent (`datapath::ServiceMaps`),
//! memory in the tests here. So a change costs writes in proportion to
//! what it changed, and the sync is tested without root.

use std::{collections::BTreeSet, sync::Arc};

use anyhow::Result;
use zerohop_abi::{FrontendEndpoint, FrontendKey};
use zerohop_planner::{
    diff, diff_frontends, Capacity, Change, MapEntries, NodePlan, Touched, Waypoints,
};

use crate::source::Snapshot;

/// Where the Service maps' entries go.
pub trait MapWriter {
    /// Makes one write; an error is a refusal (a full map, say).
    fn write(&mut self, change: Change) -> Result<()>;
    /// What the maps hold now.
    fn read(&self) -> Result<MapEntries>;
}

/// The node's plan, and whether the maps hold it.
pub struct MapSync {
    plan: NodePlan,
    /// The snapshot `plan` was made from.
    planned: Option<Arc<Snapshot>>,
    /// Whether the maps hold `plan`: false until first read, and again
    /// after a refused write (then read again). No copy of the maps is
    /// kept: while they hold the plan, the plan is that copy.
    held: bool,
}

/// What one [`MapSync::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Services planned again.
    pub replanned: usize,
    /// Entries written or deleted.
    pub written: usize,
    /// Writes refused; the frontends concerned keep their previous state or
    /// fall back to the cluster's normal path, and the next sync compares
    /// every entry with what the maps then hold.
    pub failed: usize,
    /// Ready endpoints that left a frontend that stays: sockets connected
    /// to them are stale.
    pub gone: Vec<FrontendEndpoint>,
}

impl MapSync {
    /// Nothing planned yet, for node `node`.
    pub fn new(node: &str, waypoints: Waypoints, capacity: Capacity) -> MapSync {
        MapSync {
            plan: NodePlan::new(node, waypoints, capacity),
            planned: None,
            held: false,
        }
    }

    /// The node's plan as last synced.
    pub fn plan(&self) -> &NodePlan {
        &self.plan
    }

    /// Plans `snapshot`, with the frontends `short_conns` judged short, and
    /// writes what differs through `maps`: only the entries of the Services
    /// that changed since the last snapshot, unless the maps must be read
    /// again.
    pub fn sync(
        &mut self,
        snapshot: &Arc<Snapshot>,
        short_conns: &BTreeSet<FrontendKey>,
        maps: &mut impl MapWriter,
    ) -> Result<Synced> {
        let touched = match &self.planned {
            Some(planned) if Arc::ptr_eq(planned, snapshot) => Touched::Services(BTreeSet::new()),
            Some(planned) => snapshot.view.touched_services(&planned.view),
            None => Touched::All,
        };
        let update = self.plan.update(&snapshot.view, &touched, short_conns);
        self.planned = Some(Arc::clone(snapshot));
        let desired = self.plan.desired();
        // Maps read again may differ anywhere: compare every entry then.
        let changes = match (self.held, &update.frontends) {
            (true, Some(frontends)) => diff_frontends(&update.before, desired, frontends),
            (true, None) => diff(&update.before, desired),
            (false, _) => diff(&maps.read()?, desired),
        };
        let mut synced = Synced {
            replanned: update.services,
            gone: update.gone,
            ..Synced::default()
        };
        for change in changes.in_order() {
            match maps.write(change) {
                Ok(()) => synced.written += 1,
                // The first refusal names its entry; the count of all goes
                // in the sync's line.
                Err(error) => {
                    if synced.failed == 0 {
                        tracing::error!(?change, %error, "map write failed");
                    }
                    synced.failed += 1;
                }
            }
        }
        // What a refused write left in the maps is read again next time.
        self.held = synced.failed == 0;
        Ok(synced)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use anyhow::bail;
    use zerohop_abi::BackendKey;
    use zerohop_k8s::build_view;
    use zerohop_planner::plan_within;

    use super::*;

    /// Maps in memory that hold at most `room` frontends, and count writes.
    #[derive(Default)]
    struct MemoryMaps {
        maps: MapEntries,
        room: Option<usize>,
        writes: usize,
    }

    impl MapWriter for MemoryMaps {
        fn write(&mut self, change: Change) -> Result<()> {
            if let (Change::UpsertService(key, _), Some(room)) = (change, self.room) {
                if !self.maps.services.contains_key(&key) && self.maps.services.len() >= room {
                    bail!("no room");
                }
            }
            self.writes += 1;
            change.apply_to(&mut self.maps);
            Ok(())
        }

        fn read(&self) -> Result<MapEntries> {
            Ok(self.maps.clone())
        }
    }

    /// Services `web` and `api` (and `extra` when asked), each with a
    /// slice of `web_endpoints` / two endpoints.
    fn snapshot(web_endpoints: &[&str], extra: bool) -> Arc<Snapshot> {
        let mut yaml = String::new();
        let mut add = |name: &str, ip: &str, endpoints: &[&str]| {
            let endpoints: Vec<String> = endpoints
                .iter()
                .map(|address| format!("{{addresses: [{address}], nodeName: node1}}"))
                .collect();
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n---\n",
                endpoints.join(", ")
            ));
        };
        add("web", "10.96.0.1", web_endpoints);
        add("api", "10.96.0.2", &["10.244.0.5", "10.244.0.6"]);
        if extra {
            add("extra", "10.96.0.3", &["10.244.0.7"]);
        }
        let built = build_view([("cluster.yaml".to_owned(), yaml)]);
        assert_eq!(built.problems, vec![]);
        Arc::new(Snapshot {
            view: built.view,
            ..Snapshot::default()
        })
    }

    fn planned(snapshot: &Snapshot) -> MapEntries {
        let none = BTreeSet::new();
        plan_within(
            &snapshot.view,
            "node1",
            Waypoints::default(),
            &none,
            Capacity::KERNEL,
        )
        .desired
    }

    fn sync() -> MapSync {
        MapSync::new("node1", Waypoints::default(), Capacity::KERNEL)
    }

    #[test]
    fn the_first_sync_writes_the_plan_and_a_change_writes_only_what_it_changed() {
        let mut maps = MemoryMaps::default();
        let mut map_sync = sync();
        let first = snapshot(&["10.244.0.1"], false);
        let synced = map_sync.sync(&first, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!(maps.maps, planned(&first));
        // Two frontends, three endpoint slots, two names.
        assert_eq!((synced.written, synced.failed), (7, 0));

        // web gets a second endpoint: one slot, and web's count.
        let second = snapshot(&["10.244.0.1", "10.244.0.2"], false);
        let synced = map_sync.sync(&second, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!(maps.maps, planned(&second));
        assert_eq!((synced.replanned, synced.written), (1, 2));

        // The same snapshot again writes nothing.
        let synced = map_sync.sync(&second, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!((synced.replanned, synced.written), (0, 0));
    }

    #[test]
    fn an_endpoint_that_leaves_a_frontend_is_gone_and_a_deleted_service_is_removed() {
        let mut maps = MemoryMaps::default();
        let mut map_sync = sync();
        map_sync
            .sync(
                &snapshot(&["10.244.0.1", "10.244.0.2"], true),
                &BTreeSet::new(),
                &mut maps,
            )
            .unwrap();
        let after = snapshot(&["10.244.0.2"], false);
        let synced = map_sync.sync(&after, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!(maps.maps, planned(&after));
        let gone: Vec<(IpAddr, u16)> = synced
            .gone
            .iter()
            .map(|endpoint| {
                let family = endpoint.frontend.family;
                let address = zerohop_planner::addr::from_kernel(endpoint.addr, family).unwrap();
                (address, endpoint.port)
            })
            .collect();
        // web lost 10.244.0.1; extra went as a whole, which keeps its
        // connections.
        assert_eq!(gone, [("10.244.0.1".parse().unwrap(), 8080)]);
    }

    #[test]
    fn entries_another_agent_left_are_read_and_corrected() {
        let first = snapshot(&["10.244.0.1"], false);
        let mut maps = MemoryMaps {
            maps: planned(&snapshot(&["10.244.0.9"], true)),
            ..MemoryMaps::default()
        };
        let mut map_sync = sync();
        map_sync.sync(&first, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!(maps.maps, planned(&first));
    }

    #[test]
    fn refused_writes_are_counted_and_repaired_once_the_maps_have_room() {
        let all = snapshot(&["10.244.0.1"], true);
        let mut maps = MemoryMaps {
            room: Some(2),
            ..MemoryMaps::default()
        };
        let mut map_sync = sync();
        let synced = map_sync.sync(&all, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!(synced.failed, 1);
        assert_eq!(maps.maps.services.len(), 2);

        // Nothing changed in the cluster, but the maps now have room: the
        // sync compares every entry again and writes the one refused.
        maps.room = None;
        let synced = map_sync.sync(&all, &BTreeSet::new(), &mut maps).unwrap();
        assert_eq!((synced.failed, synced.written), (0, 1));
        assert_eq!(maps.maps, planned(&all));
        let slots: Vec<&BackendKey> = maps.maps.backends.keys().collect();
        assert_eq!(slots.len(), 4);
    }

    #[test]
    fn a_frontend_judged_short_is_rewritten_alone() {
        let mut maps = MemoryMaps::default();
        let mut map_sync = sync();
        let snapshot = snapshot(&["10.244.0.1"], true);
        map_sync
            .sync(&snapshot, &BTreeSet::new(), &mut maps)
            .unwrap();
        let web = zerohop_planner::plan::frontend_key("10.96.0.1".parse().unwrap(), 80);
        let short = BTreeSet::from([web]);
        let synced = map_sync.sync(&snapshot, &short, &mut maps).unwrap();
        assert_eq!((synced.replanned, synced.written), (1, 1));
        assert_ne!(
            maps.maps.services[&web].flags & zerohop_abi::SERVICE_SHORT_CONNS,
            0
        );
    }
}
