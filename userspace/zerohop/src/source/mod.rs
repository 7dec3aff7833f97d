//! Where the agent learns the cluster from. Each source publishes
//! [`Snapshot`]s of the whole cluster through a [`Publisher`]; the agent
//! plans and syncs the maps from the latest one. A source also confirms,
//! each time it reads the cluster, that its last snapshot is still current:
//! that keeps the agent's lease on the maps running (see `lease`).

pub mod dir;
pub mod kube;

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub use dir::{load_dir, DirReader, Loaded};
use tokio::sync::watch;
use tracing::warn;
use zerohop_planner::ClusterView;

use crate::lease::SharedFreshness;

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

/// A snapshot as published, numbered.
#[derive(Debug, Clone)]
pub struct Published {
    /// 1 for a source's first snapshot, then one more for each that differs.
    pub generation: u64,
    pub snapshot: Arc<Snapshot>,
}

/// What a source hands the agent: each new snapshot, and how current the
/// last one is.
#[derive(Clone)]
pub struct Publisher {
    snapshots: watch::Sender<Option<Published>>,
    freshness: SharedFreshness,
}

impl Publisher {
    /// A publisher, and the receiving end for the agent.
    pub fn new(freshness: SharedFreshness) -> (Publisher, watch::Receiver<Option<Published>>) {
        let (snapshots, receiver) = watch::channel(None);
        (
            Publisher {
                snapshots,
                freshness,
            },
            receiver,
        )
    }

    /// The source read `snapshot` from the cluster at `read_at`: published
    /// when it differs from the last one, else a confirmation that the last
    /// one is still current.
    pub fn publish(&self, snapshot: Snapshot, read_at: Instant) {
        let mut freshness = self.freshness.lock().unwrap();
        self.snapshots.send_if_modified(|current| {
            let changed = current
                .as_ref()
                .is_none_or(|published| *published.snapshot != snapshot);
            let generation = freshness.read(read_at, changed);
            if changed {
                *current = Some(Published {
                    generation,
                    snapshot: Arc::new(snapshot),
                });
            }
            changed
        });
    }

    /// The source's last snapshot is still current as of `at`.
    pub fn confirm(&self, at: Instant) {
        self.freshness.lock().unwrap().read(at, false);
    }
}

/// Reads `dir` every `interval` and publishes a snapshot whenever what it
/// holds changed, or confirms the last one. A directory that cannot be read
/// keeps the last snapshot: it must not empty the maps, but it confirms
/// nothing either. Each read runs on a blocking thread: a read that hangs
/// (a stuck mount, a file that never ends) holds up this source only, and
/// the lease runs out.
pub async fn watch_dir(dir: PathBuf, interval: Duration, publisher: Publisher) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reader = DirReader::new(dir.clone());
    loop {
        tick.tick().await;
        let read_at = Instant::now();
        let read = tokio::task::spawn_blocking(move || {
            let loaded = reader.read();
            (reader, loaded)
        })
        .await;
        let loaded;
        (reader, loaded) = match read {
            Ok(read) => read,
            // A read that panicked: start over with a reader that knows
            // no file.
            Err(error) => (DirReader::new(dir.clone()), Err(io::Error::other(error))),
        };
        match loaded {
            Ok(Some(loaded)) => publisher.publish(Snapshot::from(loaded), read_at),
            Ok(None) => publisher.confirm(read_at),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "cannot read the source; keeping the current maps")
            }
        }
    }
}
