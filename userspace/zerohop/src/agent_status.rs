//! What the agent reports about itself: the sync loop and the lease update
//! it, and the health endpoints (see `health`) serve it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use zerohop_planner::Capacity;

/// What the agent reports about itself, updated by every sync.
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// The first full sync is in the maps and the hooks are attached.
    pub ready: bool,
    /// Syncs done since start.
    pub syncs: u64,
    /// Duration of the last sync, in seconds.
    pub last_sync_seconds: f64,
    /// Objects in the last view, by kind (`service`, `endpointslice`).
    pub objects: BTreeMap<&'static str, usize>,
    /// Entries the agent keeps in each map, by map name.
    pub map_entries: BTreeMap<&'static str, usize>,
    /// Frontends in the maps, by protocol (`tcp`, `udp`).
    pub frontends: BTreeMap<&'static str, usize>,
    /// Problems currently reported, by kind (`source`, `plan`).
    pub problems: BTreeMap<&'static str, usize>,
    /// Map writes the kernel refused since start.
    pub map_write_errors: u64,
    /// Each feature of the datapath and whether this kernel has it.
    pub features: Vec<(&'static str, bool)>,
    /// The node's idle vCPUs halt at once (see node_idle.rs).
    pub idle_halts: bool,
    /// Frontends the bypass policy judged to have too short connections.
    pub short_conn_frontends: usize,
    /// Until when the hooks translate (see `lease`); `None`: no lease yet.
    pub lease_until: Option<Instant>,
    /// What the Service maps hold.
    pub capacity: Option<Capacity>,
}

impl AgentStatus {
    /// Why the agent is not ready, if it is not.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if !self.ready {
            Some("first sync not done")
        } else if self.lease_remaining().is_zero() {
            Some(
                "lease on the maps ran out: the source has not confirmed the cluster's state \
                 within the lease, or the maps have not caught up with it",
            )
        } else {
            None
        }
    }

    /// How long the lease on the maps still runs.
    pub(crate) fn lease_remaining(&self) -> Duration {
        self.lease_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }
}

/// Shared between the sync loop and the HTTP server.
pub type SharedStatus = Arc<Mutex<AgentStatus>>;
