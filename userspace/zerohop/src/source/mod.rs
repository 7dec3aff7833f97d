//! Where the agent learns the cluster from. Each source publishes
//! [`Snapshot`]s of the whole cluster on a watch channel; the agent plans and
//! syncs the maps from the latest one.

pub mod dir;
pub mod kube;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

pub use dir::{load_dir, Loaded};
use tokio::sync::watch;
use tracing::warn;
use zerohop_planner::ClusterView;

/// The cluster as a source last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every Service, EndpointSlice and Namespace that could be used.
    pub view: ClusterView,
    /// What could not be used, each naming its object (and file).
    pub problems: Vec<String>,
    /// The file each object comes from (dir source), by object label.
    pub origins: BTreeMap<String, String>,
}

impl From<Loaded> for Snapshot {
    fn from(loaded: Loaded) -> Snapshot {
        Snapshot {
            view: loaded.view,
            problems: loaded.problems.iter().map(ToString::to_string).collect(),
            origins: loaded.origins,
        }
    }
}

/// Reads `dir` every `interval` and publishes a snapshot whenever what it
/// holds changed. A directory that cannot be read keeps the last snapshot:
/// it must not empty the maps.
pub async fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    snapshots: watch::Sender<Option<Snapshot>>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match load_dir(&dir) {
            Ok(loaded) => {
                let snapshot = Some(Snapshot::from(loaded));
                snapshots.send_if_modified(|current| {
                    let changed = *current != snapshot;
                    if changed {
                        current.clone_from(&snapshot);
                    }
                    changed
                });
            }
            Err(error) => {
                warn!(dir = %dir.display(), %error, "cannot read the source; keeping the current maps")
            }
        }
    }
}
