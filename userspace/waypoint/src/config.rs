//! The router in use, and its hot reload: the agent rewrites the config file
//! whenever Services, endpoints or routes change; we poll it, compile the new
//! content and swap it in. Requests in flight keep the router they started
//! with; the next request of any connection uses the new one. A file that
//! does not parse is logged and the previous router kept.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};
use zerohop_routes::{contract::WaypointConfig, router::Router};

/// The current router, shared by every connection. Readers take a snapshot
/// without locking; a reload swaps in a new one.
#[derive(Clone, Default)]
pub struct Routes {
    router: Arc<ArcSwap<Router>>,
    /// A config has been compiled.
    loaded: Arc<AtomicBool>,
}

impl Routes {
    /// The router for one request.
    pub fn current(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// Whether the agent's config has been read: until then every
    /// Service is unknown.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Parses and compiles `content`, and swaps it in.
    fn apply(&self, path: &Path, content: &[u8]) -> Result<(), serde_json::Error> {
        let config: WaypointConfig = serde_json::from_slice(content)?;
        self.router.store(Arc::new(Router::new(&config)));
        self.loaded.store(true, Ordering::Relaxed);
        info!(
            path = %path.display(),
            services = config.services.len(),
            routes = config.routes.len(),
            endpoints = config.endpoints.len(),
            clients = config.clients.len(),
            "config loaded"
        );
        Ok(())
    }
}

/// What tells a file changed without reading it: a rename over it changes
/// the inode, an edit in place the size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        inode: meta.ino(),
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Follows the config file: [`Watcher::poll`] reloads the routes when the
/// file's content changed since the last poll.
pub struct Watcher {
    path: PathBuf,
    routes: Routes,
    last_stamp: Option<Stamp>,
    /// The content last compiled (or that failed to).
    last_content: Option<Vec<u8>>,
    /// The file was missing or unreadable at the last poll (logged once).
    unreadable: bool,
}

impl Watcher {
    pub fn new(path: PathBuf, routes: Routes) -> Watcher {
        Watcher {
            path,
            routes,
            last_stamp: None,
            last_content: None,
            unreadable: false,
        }
    }

    /// Checks the file once. Until a first good file, the router is empty:
    /// every request gets the unknown-Service answer.
    pub fn poll(&mut self) {
        let path = self.path.display();
        let read = stamp(&self.path).and_then(|now| {
            if self.last_stamp == Some(now) {
                return Ok(None);
            }
            Ok(Some((now, std::fs::read(&self.path)?)))
        });
        let (now, content) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(e) => {
                if !self.unreadable {
                    let what = if self.last_content.is_some() {
                        "config unreadable; keeping the current routes"
                    } else {
                        "no config yet; no routes"
                    };
                    warn!(%path, error = %e, "{what}");
                    self.unreadable = true;
                }
                self.last_stamp = None;
                return;
            }
        };
        self.unreadable = false;
        self.last_stamp = Some(now);
        if self.last_content.as_deref() == Some(&content[..]) {
            return;
        }
        if let Err(e) = self.routes.apply(&self.path, &content) {
            error!(%path, error = %e, "bad config; keeping the current routes");
        }
        self.last_content = Some(content);
    }

    /// Polls every `every`, until the process ends.
    pub async fn run(mut self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // A small local file: reading it blocks less than a thread hop.
            self.poll();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_the_last_good_router() {
        let dir = std::env::temp_dir().join(format!("zh-waypoint-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("waypoint.json");
        let _ = std::fs::remove_file(&path);
        let routes = Routes::default();
        let mut watcher = Watcher::new(path.clone(), routes.clone());
        let empty = routes.current();
        watcher.poll();
        assert!(Arc::ptr_eq(&empty, &routes.current()), "missing file");

        std::fs::write(
            &path,
            serde_json::to_vec(&WaypointConfig::default()).unwrap(),
        )
        .unwrap();
        watcher.poll();
        let good = routes.current();
        assert!(!Arc::ptr_eq(&empty, &good), "first good file");
        watcher.poll();
        assert!(Arc::ptr_eq(&good, &routes.current()), "unchanged file");

        std::fs::write(&path, b"{not json").unwrap();
        watcher.poll();
        assert!(Arc::ptr_eq(&good, &routes.current()), "bad file");

        std::fs::remove_file(&path).unwrap();
        watcher.poll();
        assert!(Arc::ptr_eq(&good, &routes.current()), "removed file");

        let config = WaypointConfig {
            services: vec![zerohop_routes::contract::ServiceInfo {
                namespace: "default".into(),
                name: "web".into(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![80],
            }],
            ..WaypointConfig::default()
        };
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        watcher.poll();
        assert!(!Arc::ptr_eq(&good, &routes.current()), "new good file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
