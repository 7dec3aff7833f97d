//! `zerohop agent`: keeps this node's BPF maps equal to what the planner
//! derives from the cluster, until SIGTERM or SIGINT.
//!
//! Order of events: load programs and maps, sync the maps once from a full
//! read of the source, then attach the hooks (so no connect ever sees a
//! half-built map), then re-sync on every change, writing only the entries
//! that differ.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{info, info_span, warn, Instrument};
use zerohop_abi::map_name;
use zerohop_planner::convert::object_label;

use crate::{
    datapath::{self, Datapath, ServiceMaps},
    health::{self, SharedStatus},
    source::{self, Snapshot},
};

/// Where the agent learns Services and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API (in-cluster config, or KUBECONFIG), watched.
    Kube,
    /// A directory of Kubernetes manifests (YAML or JSON), watched for changes.
    Dir(PathBuf),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "kube" => Ok(Source::Kube),
            Some(("dir", path)) if !path.is_empty() => Ok(Source::Dir(PathBuf::from(path))),
            _ => Err(format!(
                "unknown source {text:?}; expected kube or dir:PATH"
            )),
        }
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub cgroup: PathBuf,
    pub source: Source,
    pub pin_dir: PathBuf,
    pub bypass: bool,
    pub poll_interval: Duration,
    /// Where /healthz, /readyz and /metrics are served; `None`: not served.
    pub health_addr: Option<SocketAddr>,
}

/// Runs the agent until SIGTERM or SIGINT, then detaches its programs.
pub async fn run(settings: Settings) -> Result<()> {
    if settings.node.is_empty() {
        bail!("the node name is empty: pass --node or set NODE_NAME");
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let status = SharedStatus::default();
    let health = match settings.health_addr {
        Some(addr) => {
            Some(health::serve(addr, Arc::clone(&status), settings.pin_dir.clone()).await?)
        }
        None => None,
    };
    let health = async move {
        match health {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };

    let mut datapath = Datapath::load(&settings.pin_dir)?;
    datapath::set_bypass(&settings.pin_dir, settings.bypass)?;
    let mut sync = Sync::new(&settings.pin_dir, &settings.node, Arc::clone(&status))?;

    let (publish, mut snapshots) = watch::channel(None);
    let source = match settings.source.clone() {
        Source::Dir(dir) => {
            let span = info_span!("source", dir = %dir.display());
            tokio::spawn(source::watch_dir(dir, settings.poll_interval, publish).instrument(span))
        }
        Source::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
            tokio::spawn(
                source::kube::run(client, settings.node.clone(), publish)
                    .instrument(info_span!("source", kind = "kube")),
            )
        }
    };

    // One full read of the source builds the maps, then the hooks attach.
    let first = tokio::select! {
        first = next_snapshot(&mut snapshots) => first?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    sync.apply(&first).context("first sync of the maps")?;
    datapath.attach(&settings.cgroup)?;
    status.lock().unwrap().ready = true;
    info!(cgroup = %settings.cgroup.display(), pin_dir = %settings.pin_dir.display(), "attached");

    let watch = async {
        loop {
            let Ok(snapshot) = next_snapshot(&mut snapshots).await else {
                return;
            };
            if let Err(error) = sync.apply(&snapshot) {
                warn!(%error, "sync failed; retrying on the next change");
            }
        }
    };

    // A signal ends the agent; so does a source that stopped publishing.
    tokio::select! {
        () = watch => warn!("the source stopped"),
        () = health => {}
        _ = terminate.recv() => info!("SIGTERM"),
        _ = interrupt.recv() => info!("SIGINT"),
    }
    source.abort();
    drop(datapath);
    info!("programs detached; maps stay pinned for established connections and the next agent");
    Ok(())
}

/// Waits for the next snapshot the source publishes.
async fn next_snapshot(snapshots: &mut watch::Receiver<Option<Snapshot>>) -> Result<Snapshot> {
    loop {
        snapshots.changed().await.context("the source stopped")?;
        if let Some(snapshot) = snapshots.borrow_and_update().clone() {
            return Ok(snapshot);
        }
    }
}

/// Plans and writes the maps; remembers which problems are already logged.
struct Sync {
    maps: ServiceMaps,
    node: String,
    source_problems: BTreeSet<String>,
    plan_problems: BTreeSet<String>,
    /// What /metrics and /readyz report.
    status: SharedStatus,
}

impl Sync {
    fn new(pin_dir: &Path, node: &str, status: SharedStatus) -> Result<Self> {
        Ok(Self {
            maps: ServiceMaps::open(pin_dir)?,
            node: node.to_owned(),
            source_problems: BTreeSet::new(),
            plan_problems: BTreeSet::new(),
            status,
        })
    }

    fn apply(&mut self, snapshot: &Snapshot) -> Result<()> {
        let started = Instant::now();
        report(&mut self.source_problems, snapshot.problems.iter().cloned());
        let view = &snapshot.view;
        let plan = zerohop_planner::plan(view, &self.node);
        let described = plan.problems.iter().map(|problem| {
            let service = problem.service();
            let label = object_label("Service", &service.namespace, Some(&service.name));
            match snapshot.origins.get(&label) {
                Some(file) => format!("{file}: {problem}"),
                None => problem.to_string(),
            }
        });
        report(&mut self.plan_problems, described);
        let current = self.maps.read()?;
        let changes = zerohop_planner::diff(&current, &plan.desired);
        let applied = self.maps.apply(&changes);
        {
            let mut status = self.status.lock().unwrap();
            status.syncs += 1;
            status.last_sync_seconds = started.elapsed().as_secs_f64();
            status.objects = BTreeMap::from([
                ("service", view.services().len()),
                ("endpointslice", view.slices().len()),
            ]);
            status.map_entries = BTreeMap::from([
                (map_name::SERVICES, plan.desired.services.len()),
                (map_name::BACKENDS, plan.desired.backends.len()),
                (map_name::NAMES, plan.desired.names.len()),
            ]);
            status.problems = BTreeMap::from([
                ("source", self.source_problems.len()),
                ("plan", self.plan_problems.len()),
            ]);
            status.map_write_errors += applied.failed as u64;
        }
        info!(
            frontends = plan.desired.services.len(),
            endpoints = plan.desired.backends.len(),
            written = applied.written,
            failed = applied.failed,
            micros = started.elapsed().as_micros() as u64,
            "maps synced"
        );
        Ok(())
    }
}

/// Logs the problems not in `known`, then makes `known` the current set, so
/// a problem is logged once while it lasts and again if it comes back.
fn report(known: &mut BTreeSet<String>, current: impl Iterator<Item = String>) {
    let current: BTreeSet<String> = current.collect();
    for problem in current.difference(known) {
        warn!("{problem}");
    }
    *known = current;
}
