//! `zerohop agent`: keeps this node's BPF maps equal to what the planner
//! derives from the cluster, until SIGTERM or SIGINT.
//!
//! Order of events: load programs and maps while the source reads the
//! cluster, sync the maps once from that full read, take the lease on
//! them, then attach the hooks (so no connect ever sees a half-built map),
//! then re-sync on every change, writing only the entries that differ, and
//! keep the lease running while the source keeps confirming what the maps
//! hold (see `lease`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    task::JoinHandle,
};
use tracing::{info, info_span, warn, Instrument};
use zerohop_abi::{
    map_name, FrontendEndpoint, FrontendKey, SHORT_CONNS_INTERVAL_NS, SHORT_CONNS_SAMPLE,
};
use zerohop_k8s::{ObjectRef, Origins};
use zerohop_planner::{
    policy::{Learner, Verdict, LEARN_EVERY},
    waypoint_config, Capacity, Waypoints,
};
use zerohop_routes::{
    contract::WaypointConfig,
    model::Route,
    status::{self, RouteEvaluation},
};

use crate::{
    agent_status::SharedStatus,
    datapath::{self, Datapath, ServiceMaps},
    election::{self, Election},
    features::{self, FEATURES},
    freshness::SharedFreshness,
    health,
    lease::Lease,
    map_sync::MapSync,
    node_idle::IdleBehaviour,
    others,
    problem::{report, Problem},
    route_status,
    source::{self, Published, Publisher, Snapshot},
    stale::{self, Terminate},
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
    /// This node's waypoint, at most one address per family.
    pub waypoints: Vec<SocketAddr>,
    /// SO_MARK of the waypoint's own sockets.
    pub waypoint_mark: u32,
    /// Where the waypoint's input is written.
    pub waypoint_config: PathBuf,
    /// Backends in another namespace need a ReferenceGrant.
    pub require_reference_grants: bool,
    /// Start even when other programs run on the cgroup's hooks.
    pub allow_other_programs: bool,
    /// Whose sockets are terminated when their endpoint leaves its Service.
    pub terminate: Terminate,
    /// How long the hooks keep translating past the last moment the maps
    /// were known current.
    pub lease: Duration,
    /// What the Service maps hold, when this agent creates them.
    pub capacity: Capacity,
    /// The Lease whose holder writes the routes' status (kube source).
    pub status_lease: Election,
}

/// Runs the agent until SIGTERM or SIGINT, then detaches its programs.
pub async fn run(mut settings: Settings) -> Result<()> {
    if settings.node.is_empty() {
        bail!("the node name is empty: pass --node or set NODE_NAME");
    }
    if matches!(settings.source, Source::Dir(_)) && settings.lease < 2 * settings.poll_interval {
        bail!(
            "a lease of {} ms is shorter than two polls of the source directory ({} ms each): \
             the lease would run out between them; raise --lease-ms or lower --poll-ms",
            settings.lease.as_millis(),
            settings.poll_interval.as_millis()
        );
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let status = SharedStatus::default();
    let idle = IdleBehaviour::of_this_node();
    if idle.halts() {
        warn!(
            idle = %idle,
            "every wake-up of a reader on another vCPU is an interrupt here: small \
             request/response traffic may gain little from the bypass, or lose; idle \
             polling removes that cost (/sys/module/haltpoll/parameters/guest_halt_poll_ns, \
             e.g. 200000)"
        );
    } else {
        info!(idle = %idle, "node idle behaviour");
    }
    status.lock().unwrap().idle_halts = idle.halts();
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

    // Before any map is created or written: a second agent must not
    // overwrite the first one's maps on its way to refusing.
    let others = others::on_hooks_of(&settings.cgroup)?;
    if let Some(refusal) = others::refusal(&others, &settings.cgroup) {
        if !settings.allow_other_programs {
            bail!("{refusal}");
        }
        warn!(
            programs = %others::listing(&others),
            "other BPF programs run on the hooks zerohop attaches to; starting beside them \
             as --allow-other-programs asks"
        );
    }
    let sockmaps = others::foreign_sockmaps();
    if !sockmaps.is_empty() {
        info!(
            sockmaps = %others::listing(&sockmaps),
            "other programs' sockmaps on this node; their sockets come from other \
             cgroups' sock_ops programs or from processes that add their own"
        );
    }
    // The source reads the cluster while the programs load (on this thread;
    // the source runs on the runtime's workers and blocking threads): the
    // first sync needs both, and neither needs the other.
    let freshness = SharedFreshness::default();
    let (publisher, mut snapshots) = Publisher::new(Arc::clone(&freshness));
    let (source, client) = start_source(&settings, publisher).await?;
    let mut datapath = Datapath::load(&settings.pin_dir, settings.capacity)?;
    let capacity = datapath::pinned_capacity(&settings.pin_dir)?;
    if capacity != settings.capacity {
        warn!(
            frontends = capacity.frontends,
            endpoint_slots = capacity.endpoint_slots,
            "the pinned maps were made by an earlier agent with other sizes and keep them; \
             --max-frontends and --max-endpoint-slots take effect once they are removed \
             (`zerohop cleanup` while no agent runs; bypassed connections then continue \
             through the stack)"
        );
    }
    status.lock().unwrap().capacity = Some(capacity);
    report_features(&datapath);
    status.lock().unwrap().features = datapath
        .features()
        .iter()
        .map(|state| (state.name, state.on))
        .collect();
    // Without sockops and sk_msg nothing would register the sockets the
    // connect hook tags: tag none.
    let bypass = settings.bypass && datapath.feature_on(features::BYPASS);
    datapath::set_bypass(&settings.pin_dir, bypass)?;
    // Without the recvmsg hooks a translated UDP socket's replies would come
    // from the endpoint, which resolvers drop: leave UDP alone then.
    datapath::set_udp(&settings.pin_dir, datapath.feature_on(features::UDP))?;
    // Without SO_ORIGINAL_DST the waypoint cannot tell where a connection
    // was going: plan as if there were none (L7 Services keep the normal path).
    if !datapath.feature_on(features::ORIGINAL_DST) {
        settings.waypoints.clear();
    }
    datapath::set_waypoint(
        &settings.pin_dir,
        &settings.waypoints,
        settings.waypoint_mark,
    )?;
    let mut sync = Syncer::new(&settings, capacity, Arc::clone(&status))?;

    let mut status_lease = None;
    if let Some(client) = &client {
        let (statuses, desired) = watch::channel(route_status::RouteStatuses::new());
        sync.route_statuses = Some(statuses);
        let (writes, writer) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(
            election::run(
                client.clone(),
                settings.status_lease.clone(),
                writes,
                stopped,
            )
            .instrument(info_span!("status_lease")),
        );
        status_lease = Some((stop, task));
        tokio::spawn(
            route_status::run(client.clone(), desired, writer)
                .instrument(info_span!("route_status")),
        );
    }

    // One full read of the source builds the maps, then the hooks attach.
    let first = tokio::select! {
        first = next_snapshot(&mut snapshots) => first?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    sync.maps.count_traffic_of_every_frontend()?;
    sync.apply(&first.snapshot)
        .context("first sync of the maps")?;
    freshness.lock().unwrap().applied(first.generation);
    let mut lease = Lease::open(
        &settings.pin_dir,
        settings.lease,
        Arc::clone(&freshness),
        Arc::clone(&status),
    )?;
    lease.renew().context("taking the lease on the maps")?;
    let _renewing = lease.keep_renewing();
    datapath.attach(&settings.cgroup)?;
    return_freed_memory();
    status.lock().unwrap().ready = true;
    info!(cgroup = %settings.cgroup.display(), pin_dir = %settings.pin_dir.display(), "attached");

    let watch = async {
        let mut last = first;
        let mut learning = tokio::time::interval(LEARN_EVERY);
        learning.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                snapshot = next_snapshot(&mut snapshots) => {
                    let Ok(snapshot) = snapshot else {
                        return;
                    };
                    last = snapshot;
                }
                _ = learning.tick() => {
                    match sync.learn(&last.snapshot) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(error) => {
                            warn!(%error, "reading the traffic counters failed");
                            continue;
                        }
                    }
                }
            }
            match sync.apply(&last.snapshot) {
                Ok(gone) => {
                    freshness.lock().unwrap().applied(last.generation);
                    terminate_stale(&mut datapath, &settings, &gone);
                }
                Err(error) => warn!(%error, "sync failed; retrying on the next change"),
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
    // The next agent need not wait for the status Lease to run out.
    if let Some((stop, task)) = status_lease {
        stop.send_replace(true);
        let bound = settings.status_lease.retry() + Duration::from_secs(1);
        if tokio::time::timeout(bound, task).await.is_err() {
            warn!("the status lease was not released in time; it runs out by itself");
        }
    }
    Ok(())
}

/// Starts reading the cluster from the configured source; for the kube
/// source, also returns its client, which the route status shares.
async fn start_source(
    settings: &Settings,
    publisher: Publisher,
) -> Result<(JoinHandle<()>, Option<kube::Client>)> {
    match settings.source.clone() {
        Source::Dir(dir) => {
            let span = info_span!("source", dir = %dir.display());
            let task = source::watch_dir(dir, settings.poll_interval, publisher).instrument(span);
            Ok((tokio::spawn(task), None))
        }
        Source::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
            let task = source::kube::run(client.clone(), settings.node.clone(), publisher)
                .instrument(info_span!("source", kind = "kube"));
            Ok((tokio::spawn(task), Some(client)))
        }
    }
}

/// Gives the memory freed since start back to the system. Loading the
/// programs (the kernel's BTF) and the first full read of the source
/// (every file parsed) leave tens of MiB free in the allocator's heap that
/// it would otherwise keep until the threads that freed it allocate again;
/// the parsing threads may never. The agent's binary allocates with
/// mimalloc (main.rs); under another allocator this finds nothing to do.
fn return_freed_memory() {
    // SAFETY: asks mimalloc to return what it holds free to the system; it
    // touches no memory the program still uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Terminates the sockets still connected to the endpoints that just left
/// their Service, and says what happened.
fn terminate_stale(datapath: &mut Datapath, settings: &Settings, gone: &[FrontendEndpoint]) {
    if gone.is_empty() {
        return;
    }
    match stale::terminate(datapath, &settings.cgroup, gone, settings.terminate) {
        Ok(pass) if pass.left > 0 => warn!(
            endpoints = gone.len(),
            namespaces = pass.namespaces,
            terminated = pass.terminated,
            left = pass.left,
            "stale sockets found that this kernel cannot terminate (bpf_sock_destroy \
             came in 6.5): they keep their departed endpoint until their owner closes them"
        ),
        Ok(pass) => info!(
            endpoints = gone.len(),
            namespaces = pass.namespaces,
            terminated = pass.terminated,
            "endpoints left their Services; sockets still connected to them terminated"
        ),
        Err(error) => warn!(%error, "terminating the sockets of departed endpoints failed"),
    }
}

/// One line for the features this kernel has, and one per feature it lacks,
/// with the kernel's reason.
fn report_features(datapath: &Datapath) {
    let on: Vec<&str> = datapath
        .features()
        .iter()
        .filter(|state| state.on)
        .map(|state| state.name)
        .collect();
    info!(on = on.join(","), "kernel features");
    for (feature, state) in FEATURES.iter().zip(datapath.features()) {
        if let Some(reason) = &state.off_because {
            let (major, minor) = feature.since;
            warn!(
                feature = feature.name,
                "feature off on this kernel: {}: {}. It needs Linux {major}.{minor}+ ({}); the kernel refused {reason}",
                feature.name,
                feature.gives,
                feature.needs,
            );
        }
    }
}

/// `namespace/name` of the Service of each frontend of a snapshot, for log
/// lines.
fn frontend_names(snapshot: &Snapshot) -> BTreeMap<FrontendKey, String> {
    snapshot
        .view
        .services()
        .values()
        .flat_map(|service| {
            service.cluster_ips.iter().flat_map(move |&ip| {
                service.ports.iter().filter_map(move |port| {
                    let key = zerohop_planner::plan::port_frontend_key(ip, port)?;
                    Some((key, service.id.to_string()))
                })
            })
        })
        .collect()
}

/// Waits for the next snapshot the source publishes.
async fn next_snapshot(snapshots: &mut watch::Receiver<Option<Published>>) -> Result<Published> {
    loop {
        snapshots.changed().await.context("the source stopped")?;
        if let Some(snapshot) = snapshots.borrow_and_update().clone() {
            return Ok(snapshot);
        }
    }
}

/// Plans and writes the maps and the waypoint's input; remembers which
/// problems are already logged.
struct Syncer {
    maps: ServiceMaps,
    node: String,
    waypoints: Waypoints,
    /// The node's plan and what the maps hold.
    map_sync: MapSync,
    waypoint_config: PathBuf,
    /// Backends in another namespace need a ReferenceGrant.
    require_reference_grants: bool,
    /// The waypoint input last written.
    written_config: Option<String>,
    route_problems: BTreeSet<Problem>,
    /// Where the routes' parent status goes (kube source only).
    route_statuses: Option<watch::Sender<route_status::RouteStatuses>>,
    source_problems: BTreeSet<Problem>,
    plan_problems: BTreeSet<Problem>,
    /// What /metrics and /readyz report.
    status: SharedStatus,
    /// The bypass policy's view of each frontend's connections.
    learner: Learner,
    /// [`ServiceMaps::traffic_activity`] when the traffic was last read.
    traffic_activity: Option<u64>,
}

impl Syncer {
    fn new(settings: &Settings, capacity: Capacity, status: SharedStatus) -> Result<Self> {
        let waypoints = Waypoints {
            v4: settings.waypoints.iter().any(SocketAddr::is_ipv4),
            v6: settings.waypoints.iter().any(SocketAddr::is_ipv6),
        };
        Ok(Self {
            maps: ServiceMaps::open(&settings.pin_dir)?,
            node: settings.node.clone(),
            waypoints,
            map_sync: MapSync::new(&settings.node, waypoints, capacity),
            waypoint_config: settings.waypoint_config.clone(),
            require_reference_grants: settings.require_reference_grants,
            written_config: None,
            route_problems: BTreeSet::new(),
            route_statuses: None,
            source_problems: BTreeSet::new(),
            plan_problems: BTreeSet::new(),
            status,
            learner: Learner::default(),
            traffic_activity: None,
        })
    }

    /// Reads what the frontends' bypassed connections did since the last
    /// look and tells whether the bypass policy changed its mind about any
    /// of them (then the maps need planning again).
    fn learn(&mut self, snapshot: &Snapshot) -> Result<bool> {
        // Nothing was counted since the last look: nothing to learn, and
        // no reason to read a counter per frontend, unless connects counted
        // at the last look are still to be judged.
        let activity = self.maps.traffic_activity()?;
        if self.traffic_activity == Some(activity) && !self.learner.judging() {
            return Ok(false);
        }
        let mut traffic = self.maps.read_traffic()?;
        traffic.retain(|frontend, _| self.map_sync.plan().learns(frontend));
        self.traffic_activity = Some(activity);
        let changes = self.learner.observe(&traffic);
        if changes.is_empty() {
            return Ok(false);
        }
        let names = frontend_names(snapshot);
        for change in &changes {
            let service = names.get(&change.frontend).map_or("?", String::as_str);
            let frontend =
                zerohop_planner::addr::from_kernel(change.frontend.addr, change.frontend.family)
                    .map_or_else(
                        |_| "?".to_owned(),
                        |ip| SocketAddr::new(ip, change.frontend.port).to_string(),
                    );
            let (conns, long_ends) = (change.window.conns, change.window.long_ends);
            match change.verdict {
                Verdict::ShortConns => info!(
                    %service, %frontend, conns, long_ends,
                    "connections are too short to gain from the bypass: translated only, \
                     one in {SHORT_CONNS_SAMPLE} and up to {} a second still bypassed to keep \
                     watching",
                    1_000_000_000 / SHORT_CONNS_INTERVAL_NS
                ),
                Verdict::Bypass => info!(
                    %service, %frontend, conns, long_ends,
                    "connections got longer: bypassed again"
                ),
            }
        }
        Ok(true)
    }

    /// Writes the maps for `snapshot`; returns the endpoints that left
    /// their frontends since the last sync. Plans again only the Services
    /// that differ from the last snapshot's (or whose bypass verdict
    /// changed), and compares only their entries with the maps.
    fn apply(&mut self, snapshot: &Arc<Snapshot>) -> Result<Vec<FrontendEndpoint>> {
        let started = Instant::now();
        report(&mut self.source_problems, snapshot.problems.iter().cloned());
        let view = &snapshot.view;
        let short_conns = self.learner.short_conns();
        let synced = self.map_sync.sync(snapshot, &short_conns, &mut self.maps)?;
        let problems = self.map_sync.plan().problems();
        let described = problems.iter().map(|problem| {
            let service = problem.service();
            let object = ObjectRef::new("Service", &service.namespace, Some(&service.name));
            Problem::about(object, &snapshot.origins, problem.to_string())
        });
        report(&mut self.plan_problems, described);
        let mut config = waypoint_config(view, &self.node);
        config.require_reference_grants = self.require_reference_grants;
        let inputs = status::Inputs {
            services: &config.services,
            grants: &config.grants,
            require_reference_grants: config.require_reference_grants,
        };
        let evaluations: Vec<(&Route, RouteEvaluation)> = config
            .routes
            .iter()
            .zip(status::evaluate(&config.routes, inputs))
            .collect();
        report(
            &mut self.route_problems,
            route_problems(&evaluations, &snapshot.origins),
        );
        if let Some(statuses) = &self.route_statuses {
            statuses.send_replace(desired_route_statuses(&evaluations));
        }
        if self.waypoints != Waypoints::default() {
            self.write_waypoint_config(&config)?;
        }
        let desired = self.map_sync.plan().desired();
        {
            let mut status = self.status.lock().unwrap();
            status.syncs += 1;
            status.last_sync_seconds = started.elapsed().as_secs_f64();
            status.objects = BTreeMap::from([
                ("service", view.services().len()),
                ("endpointslice", view.slices().len()),
            ]);
            status.map_entries = BTreeMap::from([
                (map_name::SERVICES, desired.services.len()),
                (map_name::BACKENDS, desired.backends.len()),
                (map_name::NAMES, desired.names.len()),
            ]);
            let udp = desired
                .services
                .keys()
                .filter(|key| key.proto == zerohop_abi::PROTO_UDP)
                .count();
            status.frontends =
                BTreeMap::from([("tcp", desired.services.len() - udp), ("udp", udp)]);
            status.problems = BTreeMap::from([
                ("source", self.source_problems.len()),
                ("plan", self.plan_problems.len()),
            ]);
            status.map_write_errors += synced.failed as u64;
            status.short_conn_frontends = short_conns.len();
        }
        info!(
            frontends = desired.services.len(),
            endpoints = desired.backends.len(),
            replanned = synced.replanned,
            written = synced.written,
            failed = synced.failed,
            micros = started.elapsed().as_micros() as u64,
            "maps synced"
        );
        Ok(synced.gone)
    }
}

impl Syncer {
    /// Writes the waypoint's input when it changed, atomically (the waypoint
    /// polls the file and must never read half of it).
    fn write_waypoint_config(&mut self, config: &WaypointConfig) -> Result<()> {
        let text = serde_json::to_string_pretty(config)?;
        if self.written_config.as_ref() == Some(&text) {
            return Ok(());
        }
        let path = &self.waypoint_config;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, &text)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("writing the waypoint config {}", path.display()))?;
        info!(path = %path.display(), routes = config.routes.len(), "waypoint config written");
        self.written_config = Some(text);
        Ok(())
    }
}

/// What is wrong with the routes, each naming its route (and file).
fn route_problems(
    evaluations: &[(&Route, RouteEvaluation)],
    origins: &Origins,
) -> impl Iterator<Item = Problem> {
    let mut problems = Vec::new();
    for (route, evaluation) in evaluations {
        let metadata = route.metadata();
        let object = ObjectRef::new(
            route.kind().name(),
            &metadata.namespace,
            Some(&metadata.name),
        );
        for problem in &evaluation.problems {
            let message = format!("{object}: {problem}");
            problems.push(Problem::about(object.clone(), origins, message));
        }
    }
    problems.into_iter()
}

/// The parent status zerohop writes on each route.
fn desired_route_statuses(
    evaluations: &[(&Route, RouteEvaluation)],
) -> route_status::RouteStatuses {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    evaluations
        .iter()
        .map(|(route, evaluation)| {
            let metadata = route.metadata();
            let generation = metadata.generation.unwrap_or(0);
            let key = (
                route.kind(),
                metadata.namespace.clone(),
                metadata.name.clone(),
            );
            let parents = status::status_parents(evaluation, generation, &now);
            (
                key,
                route_status::RouteStatus {
                    generation,
                    parents,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use zerohop_routes::model::{HttpRoute, HttpRouteSpec, Metadata};

    use super::*;

    #[test]
    fn a_route_problem_names_the_route_and_its_file() {
        let route = Route::Http(HttpRoute {
            metadata: Metadata {
                name: "split".into(),
                namespace: "shop".into(),
                ..Metadata::default()
            },
            spec: HttpRouteSpec::default(),
        });
        let evaluation = RouteEvaluation {
            route: "shop/split".into(),
            parents: vec![],
            dropped_rules: vec![],
            problems: vec!["no Service parent".into()],
        };
        let object = ObjectRef::new("HTTPRoute", "shop", Some("split"));
        let origins = Origins::from_iter([(object.clone(), Arc::from("routes.yaml"))]);
        let problems: Vec<Problem> = route_problems(&[(&route, evaluation)], &origins).collect();
        assert_eq!(
            problems,
            vec![Problem {
                message: "routes.yaml: HTTPRoute shop/split: no Service parent".into(),
                object: Some(object),
                file: Some("routes.yaml".into()),
            }]
        );
    }
}
