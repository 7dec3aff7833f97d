//! Where the agent learns the cluster from: the Kubernetes API ([`kube`])
//! or a directory of manifest files ([`dir`]). Both read the same seven
//! kinds: Services, EndpointSlices, Namespaces, Nodes, Pods, HTTPRoutes and
//! ReferenceGrants (the API source only this node's Node and Pods), which
//! `zerohop-k8s` converts to the planner's model. Each source publishes
//! [`Snapshot`]s of the whole cluster through a [`Publisher`]; the agent
//! plans and syncs the maps from the latest one. A source also confirms,
//! each time it reads the cluster, that its last snapshot is still current:
//! that keeps the agent's lease on the maps running (see `lease`).

pub mod dir;
pub mod kube;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

pub use dir::{load_dir, DirReader, Loaded};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc::Sender, watch};
use tracing::warn;
use zerohop_k8s::Origins;
use zerohop_planner::ClusterView;

use crate::{freshness::SharedFreshness, problem::Problem};

/// The cluster as a source last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every object that could be used: Services, EndpointSlices,
    /// Namespaces, Nodes, Pods, HTTPRoutes and ReferenceGrants.
    pub view: ClusterView,
    /// What could not be used, each naming its object (and file).
    pub problems: Vec<Problem>,
    /// The file each object comes from (dir source).
    pub origins: Origins,
}

impl From<Loaded> for Snapshot {
    fn from(loaded: Loaded) -> Snapshot {
        Snapshot {
            view: loaded.view,
            problems: loaded.problems.into_iter().map(Problem::from).collect(),
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

/// How long a change notification waits for the ones that follow it (an
/// editor's write is several), so that a file is read once it is whole.
const SETTLE: Duration = Duration::from_millis(10);

/// How often the directory is read whole although no change was notified:
/// a safety net for changes the kernel does not report (a file behind a
/// symlink changed in place), and what notices a mount that hangs.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// Reads `dir` whenever the kernel says something in it changed, and every
/// `interval` confirms the last snapshot (for the lease). With change
/// notifications, a confirmation needs no read, and the directory is read
/// anyway every [`SCAN_EVERY`]; without them (file systems that send none),
/// every `interval`. Publishes a snapshot whenever what the directory holds
/// changed. A directory that cannot be read keeps the last snapshot: it
/// must not empty the maps, but it confirms nothing either. Each read runs
/// on a blocking thread: a read that hangs (a stuck mount, a file that
/// never ends) holds up this source only, and the lease runs out.
pub async fn watch_dir(dir: PathBuf, interval: Duration, publisher: Publisher) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (changed, mut changes) = tokio::sync::mpsc::channel(1);
    let watcher = notify_changes(&dir, changed);
    let scan_every = if watcher.is_some() {
        (SCAN_EVERY.as_millis() / interval.as_millis().max(1)).max(1)
    } else {
        1
    };
    let mut ticks = 0;
    let mut reader = DirReader::new(dir.clone());
    loop {
        let notified = tokio::select! {
            _ = tick.tick() => changes.try_recv().is_ok(),
            Some(()) = changes.recv() => true,
        };
        if notified {
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
        } else {
            // The first tick, at once, reads.
            let scan = ticks % scan_every == 0;
            ticks += 1;
            if !scan {
                publisher.confirm(Instant::now());
                continue;
            }
        }
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
                warn!(dir = %dir.display(), %error, "cannot read the source; keeping the current maps");
            }
        }
    }
}

/// Sends on `changed` whenever something in `dir` changes (inotify); `None`,
/// and a warning, when the kernel will not watch it: then only the polls
/// read it.
fn notify_changes(dir: &Path, changed: Sender<()>) -> Option<RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening and reading (the source's own reads among them) change
        // nothing.
        if event.is_ok_and(|event| !event.kind.is_access()) {
            // Full means a read is due already.
            let _ = changed.try_send(());
        }
    });
    let watched = watcher.and_then(|mut watcher| {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "no change notifications; the directory is read at each poll only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{dir::tests::TempDir, *};

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    /// How long a test waits for a snapshot.
    const DEADLINE: Duration = Duration::from_secs(5);

    /// The number of Services in the next snapshot published, waited for
    /// at most [`DEADLINE`]; panics with `what` when none comes.
    async fn next_published(
        snapshots: &mut watch::Receiver<Option<Published>>,
        what: &str,
    ) -> usize {
        tokio::time::timeout(DEADLINE, snapshots.changed())
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap();
        snapshots
            .borrow()
            .as_ref()
            .map_or(0, |published| published.snapshot.view.services().len())
    }

    /// A file added to the directory is published at once, not at the
    /// next poll.
    #[tokio::test]
    async fn a_change_is_read_when_notified_not_at_the_next_poll() {
        let dir = TempDir::new();
        dir.write("a.yaml", service("a", "10.96.0.1"));
        let (publisher, mut snapshots) = Publisher::new(SharedFreshness::default());
        let poll = Duration::from_secs(60);
        let source = tokio::spawn(watch_dir(dir.0.clone(), poll, publisher));
        let first = next_published(&mut snapshots, "the first read is published").await;
        assert_eq!(first, 1);

        // Written aside and renamed in, as tools that replace files do.
        dir.write(".b.yaml.tmp", service("b", "10.96.0.2"));
        std::fs::rename(dir.0.join(".b.yaml.tmp"), dir.0.join("b.yaml")).unwrap();
        let changed = next_published(
            &mut snapshots,
            "the change is published long before the next poll",
        )
        .await;
        assert_eq!(changed, 2);
        source.abort();
    }

    /// A change the kernel does not report to the directory's watch (the
    /// file a manifest links to, changed in place elsewhere) is still read,
    /// by the scan every [`SCAN_EVERY`], although polls confirm without
    /// reading.
    #[tokio::test]
    async fn an_unnotified_change_is_read_by_the_periodic_scan() {
        let dir = TempDir::new();
        let elsewhere = TempDir::new();
        elsewhere.write("services.yaml", service("a", "10.96.0.1"));
        let target = elsewhere.0.join("services.yaml");
        std::os::unix::fs::symlink(&target, dir.0.join("a.yaml")).unwrap();
        let (publisher, mut snapshots) = Publisher::new(SharedFreshness::default());
        let poll = Duration::from_millis(100);
        let started = Instant::now();
        let source = tokio::spawn(watch_dir(dir.0.clone(), poll, publisher));
        let first = next_published(&mut snapshots, "the first read is published").await;
        assert_eq!(first, 1);
        // The first read does not wait for a scan to be due.
        assert!(
            started.elapsed() < SCAN_EVERY / 2,
            "{:?}",
            started.elapsed()
        );

        let both = service("a", "10.96.0.1") + "---\n" + &service("b", "10.96.0.2");
        std::fs::write(&target, both).unwrap();
        let changed = next_published(&mut snapshots, "the scan reads the change").await;
        assert_eq!(changed, 2);
        source.abort();
    }
}
