//! An in-process Kubernetes API server for tests: plain HTTP/1.1 on
//! `127.0.0.1:<free port>`, no authentication, JSON only, speaking the real
//! list/watch protocol so that kube-rs clients, watchers and reflectors run end
//! to end against it.
//!
//! What it serves (see [`RESOURCES`] to add kinds):
//! - list (`GET /api/v1/services`, `GET /api/v1/namespaces/{ns}/services`, the
//!   same under `/apis/{group}/{version}/...`) with `labelSelector`,
//!   `fieldSelector`; `limit`, `continue`, `resourceVersion` and
//!   `resourceVersionMatch` are accepted and the whole current state is returned
//!   (no `continue` token), except that an explicit resourceVersion older than
//!   the compaction point answers 410 Gone;
//! - watch (`watch=true|1`) as chunked JSON lines: replays the changes after
//!   `resourceVersion` from a history log then streams live changes, sends
//!   BOOKMARKs when `allowWatchBookmarks=true`, ends after `timeoutSeconds`,
//!   sends an ERROR 410 event when the resourceVersion is compacted away.
//!   `resourceVersion` empty or `0` (and `sendInitialEvents=true`) start with
//!   synthetic ADDED events for the current state, as a real API server does;
//!   with `sendInitialEvents=true` and bookmarks, the initial state ends with a
//!   BOOKMARK annotated `k8s.io/initial-events-end: "true"` (streaming lists).
//!   When a change makes an object enter or leave a watch's selector the watch
//!   sees ADDED or DELETED, like the API server's watch cache does;
//! - single GET (`/api/v1/nodes/{name}`, `/api/v1/namespaces/{ns}/services/{name}`),
//!   also on the `/status` subresource (the whole object, as the real one does);
//! - PATCH with `Content-Type: application/merge-patch+json` (RFC 7386) of one
//!   object or of its `/status` subresource: through `/status` only the patch's
//!   `status` is applied, through the object everything but `status` (the
//!   object's identity in `metadata` and its `kind`/`apiVersion` are never
//!   changed). A `metadata.resourceVersion` in the patch is a precondition
//!   (409 Conflict when stale); a change bumps the resourceVersion (and
//!   `metadata.generation`, if the object has one, when more than `metadata` and
//!   `status` changed) and is seen by watches as MODIFIED; a patch that changes
//!   nothing is not written, as with the real API server. Other patch types are
//!   415, an unknown object 404;
//! - POST of a new object to its collection (201; 409 AlreadyExists when one
//!   of that name is there), seen by watches as ADDED;
//! - `/version`, `/api`, `/apis`, `/api/v1` and `/apis/{group}/{version}`
//!   discovery documents; anything else is 404 with a `Status` body, and methods
//!   other than GET, PATCH and POST are 405: the state changes otherwise only
//!   through [`ApiServer::apply`] and [`ApiServer::delete`]. [`ApiServer::get`]
//!   reads an object back.
//!
//! Threads: HTTP/1.1 is hyper's. The server owns one thread that runs a
//! tokio runtime (two workers): the accept loop, one task per connection
//! (keep-alive is supported) and one task per watch, which waits for store
//! changes, bookmark times and its deadline, and ends when its client is
//! gone. The state is the synchronous store under a mutex, as the public
//! methods see it. A connection is closed when it is idle (or sends no
//! complete request head) for 90 s, or when its client stops reading for
//! 5 s; a watch notices a closed client at once; dropping the [`ApiServer`]
//! closes every connection, ends every task and joins the thread.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// A kind the server knows: its API group/version, URL plural and scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `v1` for the core group, else `group/version`.
    pub api_version: &'static str,
    /// The lower-case plural used in URLs.
    pub plural: &'static str,
    /// The object kind (`Service`); lists are `<kind>List`.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// The kinds served. Add a row to serve another kind.
pub const RESOURCES: &[Resource] = &[
    Resource {
        api_version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Resource {
        api_version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Resource {
        api_version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
    },
    Resource {
        api_version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    Resource {
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Resource {
        api_version: "gateway.networking.k8s.io/v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
    },
    Resource {
        api_version: "gateway.networking.k8s.io/v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
    },
    Resource {
        api_version: "gateway.networking.k8s.io/v1beta1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
    },
    Resource {
        api_version: "coordination.k8s.io/v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
];

fn resource_by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// The store key of an object; the namespace is ignored for cluster-scoped kinds.
fn key_of(kind: &str, namespace: Option<&str>, name: &str) -> Key {
    let namespace = match resource_by_kind(kind) {
        Some(r) if !r.namespaced => "",
        _ => namespace.unwrap_or(""),
    };
    (kind.to_string(), namespace.to_string(), name.to_string())
}

fn resource_by_path(api_version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.api_version == api_version && r.plural == plural)
}

/// How long the server refuses connections during [`ApiServer::restart`].
const RESTART_DOWNTIME: Duration = Duration::from_millis(300);
/// Changes kept for watch replay; older ones are compacted (410 for watches
/// starting before them).
const MAX_HISTORY: usize = 10_000;
/// Request lines kept for [`ApiServer::requests`].
const MAX_REQUEST_LOG: usize = 100_000;
/// A connection that sends no complete request head for this long (idle
/// keep-alive included) is closed; so is one whose request body stalls.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A client that does not read its response for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Watch length when the client gives no `timeoutSeconds` (and the cap).
const MAX_WATCH: Duration = Duration::from_secs(1800);
const MAX_BODY: usize = 1024 * 1024;
/// Event batches a watch may have queued for its connection.
const WATCH_QUEUE: usize = 16;
/// How long dropping the server waits for its runtime's workers.
const SHUTDOWN: Duration = Duration::from_secs(2);

type Key = (String, String, String); // (kind, namespace or "", name)

/// One change in the history log.
struct Change {
    rv: u64,
    kind: String,
    namespace: String,
    /// The object before the change (None on create and for deletions).
    old: Option<Value>,
    /// The object after the change, or the deleted object with the new rv.
    new: Value,
    deleted: bool,
}

struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// A watch or list from a resourceVersion below this answers 410.
    compacted: u64,
    /// Bumped by expire_watches: open watches end with ERROR 410.
    expiry_epoch: u64,
    bookmark_every: Duration,
    next_uid: u64,
}

#[derive(Default)]
struct ListenerCtl {
    /// Restarts asked for by `restart()`.
    requested: u64,
    /// Restarts for which the accept loop has closed its listener.
    down: u64,
}

struct Shared {
    port: u16,
    stop: AtomicBool,
    store: Mutex<Store>,
    /// Bumped after every change of the store that watches care about.
    changed: watch::Sender<u64>,
    requests: Mutex<Vec<String>>,
    /// Connections open now.
    open: AtomicUsize,
    /// Bumped to close every open connection (restart).
    closing: watch::Sender<u64>,
    ctl: Mutex<ListenerCtl>,
    ctl_changed: Condvar,
    /// Wakes the accept loop for a restart or the stop.
    wake: Notify,
    /// Plurals answered 404, as for a CRD that is not installed.
    hidden: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not take the server down with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Wakes the watches, after a change of the store.
    fn notify_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn close_all_connections(&self) {
        self.closing.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// An in-process Kubernetes API server on `127.0.0.1`. Dropping it stops it:
/// connections are closed and its thread joined.
pub struct ApiServer {
    shared: Arc<Shared>,
    /// The thread running the server's runtime.
    runner: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url())
            .finish()
    }
}

impl ApiServer {
    /// Binds `127.0.0.1:0` and starts serving on its own threads.
    pub fn start() -> anyhow::Result<ApiServer> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            port,
            stop: AtomicBool::new(false),
            store: Mutex::new(Store {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                expiry_epoch: 0,
                bookmark_every: Duration::from_secs(1),
                next_uid: 1,
            }),
            changed: watch::Sender::new(0),
            requests: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            closing: watch::Sender::new(0),
            ctl: Mutex::new(ListenerCtl::default()),
            ctl_changed: Condvar::new(),
            wake: Notify::new(),
            hidden: Mutex::new(Vec::new()),
        });
        let for_thread = shared.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The runtime is built, run and dropped on this thread: a runtime may
        // not be dropped where the caller is, inside another runtime.
        let runner = thread::Builder::new()
            .name(format!("apiserver-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("apiserver-{port}-rt"))
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(()));
                        runtime
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(accept_loop(for_thread, listener));
                // Drops every connection and watch task: their sockets close.
                runtime.shutdown_timeout(SHUTDOWN);
            })
            .context("spawning the server thread")?;
        let started = ready_rx
            .recv()
            .context("the server thread ended before starting")
            .and_then(|built| built.context("building the server's runtime"));
        if let Err(e) = started {
            let _ = runner.join();
            return Err(e);
        }
        Ok(ApiServer {
            shared,
            runner: Mutex::new(Some(runner)),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// Writes a kubeconfig whose cluster, user and context are all named
    /// `test`, pointing at [`url`](Self::url), without credentials.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test\n  cluster:\n    server: {}\n\
             users:\n\
             - name: test\n  user: {{}}\n\
             contexts:\n\
             - name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\n\
             preferences: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces an object by (kind, namespace, name). Sets
    /// `metadata.resourceVersion` (one global counter), `metadata.uid` on
    /// create (kept on replace), `apiVersion` if missing and
    /// `metadata.namespace` (`default`) if missing on a namespaced kind. The
    /// rest is stored and served as given, however malformed.
    ///
    /// Panics if the object has no `kind` or `metadata.name` (a test bug).
    pub fn apply(&self, mut object: Value) {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("apply: object without kind: {object}"))
            .to_string();
        let resource = resource_by_kind(&kind);
        if let (Some(r), Some(obj)) = (resource, object.as_object_mut()) {
            obj.entry("apiVersion")
                .or_insert_with(|| json!(r.api_version));
        }
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            panic!("apply: object without metadata: {object}");
        };
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("apply: object without metadata.name"))
            .to_string();
        let namespace = match resource {
            Some(r) if r.namespaced => meta
                .entry("namespace")
                .or_insert_with(|| json!("default"))
                .as_str()
                .unwrap_or("default")
                .to_string(),
            Some(_) => {
                meta.remove("namespace");
                String::new()
            }
            None => meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };

        let mut store = lock(&self.shared.store);
        store.rv += 1;
        let rv = store.rv;
        let key = (kind.clone(), namespace.clone(), name);
        let old = store.objects.get(&key).cloned();
        let uid = match old
            .as_ref()
            .and_then(|o| o.pointer("/metadata/uid"))
            .cloned()
        {
            Some(uid) => uid,
            None => match meta.get("uid") {
                Some(uid) => uid.clone(),
                None => {
                    store.next_uid += 1;
                    json!(format!("00000000-0000-4000-8000-{:012x}", store.next_uid))
                }
            },
        };
        meta.insert("uid".into(), uid);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        store.objects.insert(key, object.clone());
        push_change(
            &mut store,
            Change {
                rv,
                kind,
                namespace,
                old,
                new: object,
                deleted: false,
            },
        );
        drop(store);
        self.shared.notify_changed();
    }

    /// The stored object (kind, namespace, name) as served, or `None`. The
    /// namespace is ignored for cluster-scoped kinds.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = key_of(kind, namespace, name);
        lock(&self.shared.store).objects.get(&key).cloned()
    }

    /// Deletes an object (no-op if absent); watches see DELETED with the
    /// object carrying the new resourceVersion.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let key = key_of(kind, namespace, name);
        let namespace = key.1.clone();
        let mut store = lock(&self.shared.store);
        let Some(mut object) = store.objects.remove(&key) else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        push_change(
            &mut store,
            Change {
                rv,
                kind: kind.to_string(),
                namespace,
                old: None,
                new: object,
                deleted: true,
            },
        );
        drop(store);
        self.shared.notify_changed();
    }

    /// Compaction: every open watch gets an ERROR event (Status 410 Expired)
    /// and its response ends; from now on every watch, and every list with an
    /// explicit resourceVersion, older than the current one answers 410.
    pub fn expire_watches(&self) {
        let mut store = lock(&self.shared.store);
        store.compacted = store.rv;
        store.history.clear();
        store.expiry_epoch += 1;
        drop(store);
        self.shared.notify_changed();
    }

    /// An API server restart: closes the listener and every open connection,
    /// refuses connections for ~300 ms, then serves again on the same port
    /// with the same store. Returns once the server is down (it comes back
    /// ~300 ms later on its own).
    pub fn restart(&self) {
        let mut ctl = lock(&self.shared.ctl);
        ctl.requested += 1;
        let target = ctl.requested;
        self.shared.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctl.down < target && Instant::now() < deadline {
            ctl = self
                .shared
                .ctl_changed
                .wait_timeout(ctl, Duration::from_millis(20))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        drop(ctl);
        self.shared.close_all_connections();
    }

    /// Serves the resource `plural` (e.g. `httproutes`) or answers 404 for
    /// it, as for a CRD that is installed or not.
    pub fn set_served(&self, plural: &str, served: bool) {
        let mut hidden = lock(&self.shared.hidden);
        hidden.retain(|hidden| hidden != plural);
        if !served {
            hidden.push(plural.to_owned());
        }
    }

    /// The request lines seen so far, e.g.
    /// `GET /api/v1/services?watch=true&timeoutSeconds=290&...` (query as sent).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// How often watches that allow bookmarks get a BOOKMARK (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        lock(&self.shared.store).bookmark_every = every.max(Duration::from_millis(10));
        self.shared.notify_changed();
    }

    /// Connections currently open (for leak checks).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.stop.store(true, Ordering::SeqCst);
        shared.wake.notify_one();
        shared.ctl_changed.notify_all();
        // The accept loop ends, then the runtime drops every task left.
        if let Some(runner) = lock(&self.runner).take() {
            let _ = runner.join();
        }
    }
}

fn push_change(store: &mut Store, change: Change) {
    store.history.push_back(change);
    while store.history.len() > MAX_HISTORY {
        if let Some(dropped) = store.history.pop_front() {
            store.compacted = store.compacted.max(dropped.rv);
        }
    }
}

// ---------------------------------------------------------------------------
// Accepting connections

/// Runs until the server is dropped: serves on `first`, and after each
/// restart closes the listener, stays down for [`RESTART_DOWNTIME`] and binds
/// the same port again.
async fn accept_loop(shared: Arc<Shared>, first: std::net::TcpListener) {
    let mut next = Some(first);
    // Restarts handled so far (restart() may run before we first get here).
    let mut handled = 0;
    loop {
        let Some(listener) = listen(&shared, next.take()).await else {
            return;
        };
        let seen = serve_listener(&shared, &listener, handled).await;
        drop(listener);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // Restart: the listener is closed; tell restart() and stay down.
        {
            let mut ctl = lock(&shared.ctl);
            ctl.down = seen;
            handled = seen;
        }
        shared.ctl_changed.notify_all();
        tokio::select! {
            () = tokio::time::sleep(RESTART_DOWNTIME) => {}
            () = stopped(&shared) => return,
        }
    }
}

/// Returns once the server is being dropped.
async fn stopped(shared: &Shared) {
    loop {
        let woken = shared.wake.notified();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        woken.await;
    }
}

/// `first`, or `127.0.0.1:port` bound again (retried until it works), as a
/// tokio listener; `None` once the server is being dropped.
async fn listen(shared: &Shared, mut first: Option<std::net::TcpListener>) -> Option<TcpListener> {
    let mut warned = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        let bound = match first.take() {
            Some(listener) => Ok(listener),
            None => std::net::TcpListener::bind(("127.0.0.1", shared.port)),
        };
        let listener = bound
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        match listener {
            Ok(listener) => return Some(listener),
            Err(e) => {
                if !warned {
                    eprintln!(
                        "apiserver: rebinding 127.0.0.1:{} failed ({e}), retrying",
                        shared.port
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Accepts connections until stop or a restart request beyond `handled`;
/// returns the restart requests seen.
async fn serve_listener(shared: &Arc<Shared>, listener: &TcpListener, handled: u64) -> u64 {
    let restart_requested = || {
        let requested = lock(&shared.ctl).requested;
        (requested != handled).then_some(requested)
    };
    loop {
        let woken = shared.wake.notified();
        if let Some(seen) = restart_requested() {
            return seen;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return handled;
        }
        tokio::select! {
            () = woken => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Dropping `stream` closes it; the checks above return.
                    if !shared.stop.load(Ordering::SeqCst) && restart_requested().is_none() {
                        spawn_connection(shared, stream);
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: &Arc<Shared>) -> OpenConnection {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(shared.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection on its own task until the client closes it, a
/// timeout, or a restart (the runtime's shutdown drops it too).
fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let open = OpenConnection::new(shared);
    let mut closing = shared.closing.subscribe();
    let for_service = shared.clone();
    tokio::spawn(async move {
        let _open = open;
        let service = service_fn(move |req| {
            let shared = for_service.clone();
            async move { Ok::<_, Infallible>(respond(&shared, req).await) }
        });
        let io = WriteTimeout {
            io: TokioIo::new(stream),
            stalled: None,
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(IDLE_TIMEOUT)
            .serve_connection(io, service);
        tokio::select! {
            _ = connection => {}
            _ = closing.changed() => {}
        }
    });
}

/// A connection's socket that fails a write stalled for [`WRITE_TIMEOUT`]
/// (a client that does not read its response).
struct WriteTimeout {
    io: TokioIo<TcpStream>,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeout {
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read its response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Read for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.deadline(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.deadline(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.deadline(cx, polled)
    }
}

// ---------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    /// The media type of the body, lower-case, without parameters.
    content_type: String,
    body: Bytes,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

type ResponseBody = BoxBody<Bytes, io::Error>;

fn json_response(code: u16, body: &Value) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `Status` answer after which the connection is closed.
fn refusal(code: u16, reason: &str, message: &str) -> Response<ResponseBody> {
    let mut response = json_response(code, &status_object(code, reason, message));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Reads the request's body, logs the request and answers it.
async fn respond(shared: &Arc<Shared>, req: hyper::Request<Incoming>) -> Response<ResponseBody> {
    let (head, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect();
    let body = match tokio::time::timeout(IDLE_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            let msg = format!("the request body is larger than {MAX_BODY} bytes");
            return refusal(413, "RequestEntityTooLarge", &msg);
        }
        Ok(Err(e)) => {
            let msg = format!("reading the request body: {e}");
            return refusal(400, "BadRequest", &msg);
        }
        Err(_) => return refusal(408, "Timeout", "the request body stalled"),
    };
    let target = head.uri.to_string();
    let query = head
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let content_type = head
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let req = Request {
        method: head.method.to_string(),
        target,
        path: head.uri.path().to_string(),
        query,
        content_type,
        body,
    };
    {
        let mut log = lock(&shared.requests);
        if log.len() >= MAX_REQUEST_LOG {
            log.drain(..MAX_REQUEST_LOG / 2);
        }
        log.push(format!("{} {}", req.method, req.target));
    }
    handle(shared, &req)
}

/// Answers one request.
fn handle(shared: &Arc<Shared>, req: &Request) -> Response<ResponseBody> {
    let reply = |code: u16, body: Value| json_response(code, &body);
    if !matches!(req.method.as_str(), "GET" | "PATCH" | "POST") {
        let msg = format!(
            "method {} is not supported by the test API server",
            req.method
        );
        return refusal(405, "MethodNotAllowed", &msg);
    }
    if req.method == "GET" {
        if let Some(doc) = discovery(&req.path) {
            return reply(200, doc);
        }
    }
    let hidden = |target: &Target| {
        lock(&shared.hidden)
            .iter()
            .any(|p| p == target.resource.plural)
    };
    let Some(target) = parse_resource_path(&req.path).filter(|target| !hidden(target)) else {
        let msg = format!(
            "the server could not find the requested resource ({})",
            req.path
        );
        return reply(404, status_object(404, "NotFound", &msg));
    };
    if req.method == "PATCH" {
        let (code, body) = patch(shared, &target, req);
        return reply(code, body);
    }
    if req.method == "POST" {
        let (code, body) = create(shared, &target, req);
        return reply(code, body);
    }
    let labels = match LabelSelector::parse(req.param("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return reply(400, status_object(400, "BadRequest", &e)),
    };
    let fields = match FieldSelector::parse(req.param("fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return reply(400, status_object(400, "BadRequest", &e)),
    };
    let filter = Filter {
        resource: target.resource,
        namespace: target.namespace,
        labels,
        fields,
    };

    if let Some(name) = &target.name {
        let store = lock(&shared.store);
        let key = (
            filter.resource.kind.to_string(),
            filter.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let found = store.objects.get(&key).cloned();
        drop(store);
        return match found {
            Some(obj) => reply(200, obj),
            None => reply(404, not_found(filter.resource, name)),
        };
    }

    let watch = matches!(req.param("watch"), Some("true" | "1"));
    let rv = req.param("resourceVersion").unwrap_or("");
    if watch {
        return serve_watch(shared, req, filter);
    }

    let store = lock(&shared.store);
    if let Ok(n) = rv.parse::<u64>() {
        if n != 0 && n < store.compacted {
            let msg = format!("too old resource version: {n} ({})", store.compacted);
            drop(store);
            return reply(410, status_object(410, "Expired", &msg));
        }
    }
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((kind, ns, _), obj)| filter.matches(kind, ns, obj))
        .map(|(_, obj)| obj.clone())
        .collect();
    let current = store.rv;
    drop(store);
    let list = json!({
        "apiVersion": filter.resource.api_version,
        "kind": format!("{}List", filter.resource.kind),
        "metadata": {"resourceVersion": current.to_string()},
        "items": items,
    });
    reply(200, list)
}

fn not_found(resource: &Resource, name: &str) -> Value {
    let msg = format!("{} \"{name}\" not found", resource.plural);
    let mut status = status_object(404, "NotFound", &msg);
    status["details"] = json!({"name": name, "kind": resource.plural});
    status
}

/// `plural.group` (`httproutes.gateway.networking.k8s.io`), or `plural` for
/// the core group, as the API server names a resource in its messages.
fn qualified_plural(resource: &Resource) -> String {
    match resource.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", resource.plural),
        None => resource.plural.to_string(),
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a
/// key, anything else (arrays included) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The object without `metadata` and `status`: what a change of bumps
/// `metadata.generation`.
fn spec_part(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(map) = rest.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    rest
}

/// PATCH of one object or its `/status`: the status code and body to answer.
fn patch(shared: &Shared, target: &Target, req: &Request) -> (u16, Value) {
    let resource = target.resource;
    let Some(name) = &target.name else {
        let msg = format!("PATCH of a collection ({}) is not supported", req.path);
        return (405, status_object(405, "MethodNotAllowed", &msg));
    };
    if req.content_type != "application/merge-patch+json" {
        let msg = format!(
            "the test API server supports only application/merge-patch+json patches, not {:?}",
            req.content_type
        );
        return (415, status_object(415, "UnsupportedMediaType", &msg));
    }
    let patch = match body_object(req, "a merge patch") {
        Ok(patch) => patch,
        Err(refusal) => return refusal,
    };
    // Through /status only the status changes; through the object everything
    // but the status. resourceVersion is a precondition, not a change.
    let mut effective = Map::new();
    if target.status {
        if let Some(status) = patch.get("status") {
            effective.insert("status".into(), status.clone());
        }
    } else if let Some(map) = patch.as_object() {
        for (key, value) in map {
            if key != "status" {
                effective.insert(key.clone(), value.clone());
            }
        }
    }
    let wanted_rv = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty());

    let key = key_of(resource.kind, target.namespace.as_deref(), name);
    let store = lock(&shared.store);
    let Some(old) = store.objects.get(&key).cloned() else {
        return (404, not_found(resource, name));
    };
    let stored_rv = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(wanted) = wanted_rv {
        if wanted != stored_rv {
            let msg = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified_plural(resource)
            );
            let mut status = status_object(409, "Conflict", &msg);
            status["details"] = json!({
                "name": name,
                "group": resource.api_version.split_once('/').map_or("", |(g, _)| g),
                "kind": resource.plural,
            });
            return (409, status);
        }
    }

    let mut new = old.clone();
    merge_patch(&mut new, &Value::Object(effective));
    // Identity is not the patch's to change.
    for field in ["kind", "apiVersion"] {
        match old.get(field) {
            Some(v) => new[field] = v.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove(field);
                }
            }
        }
    }
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    for field in ["name", "namespace", "uid", "resourceVersion", "generation"] {
        let meta = new["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    if new == old {
        // A no-op: not written, no new resourceVersion, no event.
        return (200, old);
    }
    if let Some(generation) = old.pointer("/metadata/generation").and_then(Value::as_i64) {
        if spec_part(&new) != spec_part(&old) {
            new["metadata"]["generation"] = json!(generation + 1);
        }
    }
    (200, store_object(shared, store, key, Some(old), new))
}

/// Stores `new` at a new resourceVersion, for watches to see, and returns it.
fn store_object(
    shared: &Shared,
    mut store: MutexGuard<'_, Store>,
    key: Key,
    old: Option<Value>,
    mut new: Value,
) -> Value {
    store.rv += 1;
    let rv = store.rv;
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.objects.insert(key.clone(), new.clone());
    push_change(
        &mut store,
        Change {
            rv,
            kind: key.0,
            namespace: key.1,
            old,
            new: new.clone(),
            deleted: false,
        },
    );
    drop(store);
    shared.notify_changed();
    new
}

/// The request's body, a JSON object (`what` it should be, for the 400).
fn body_object(req: &Request, what: &str) -> Result<Value, (u16, Value)> {
    match serde_json::from_slice(&req.body) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(other) => {
            let msg = format!("{what} must be a JSON object, not {other}");
            Err((400, status_object(400, "BadRequest", &msg)))
        }
        Err(e) => {
            let msg = format!("invalid JSON in {what}: {e}");
            Err((400, status_object(400, "BadRequest", &msg)))
        }
    }
}

/// POST to a collection: stores a new object, 409 AlreadyExists if one of
/// that name is there. The kind, apiVersion and namespace come from the path;
/// `metadata.name` is required (no `generateName`).
fn create(shared: &Shared, target: &Target, req: &Request) -> (u16, Value) {
    let resource = target.resource;
    if target.name.is_some() || target.status {
        let msg = format!("POST to an object ({}) is not supported", req.path);
        return (405, status_object(405, "MethodNotAllowed", &msg));
    }
    let mut object = match body_object(req, "an object") {
        Ok(object) => object,
        Err(refusal) => return refusal,
    };
    let Some(name) = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
    else {
        let msg = "metadata.name: Required value: name is required";
        return (422, status_object(422, "Invalid", msg));
    };
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version);
    match &target.namespace {
        Some(namespace) => object["metadata"]["namespace"] = json!(namespace),
        None => {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
        }
    }
    let key = key_of(resource.kind, target.namespace.as_deref(), &name);
    let mut store = lock(&shared.store);
    if store.objects.contains_key(&key) {
        let msg = format!("{} \"{name}\" already exists", qualified_plural(resource));
        let mut status = status_object(409, "AlreadyExists", &msg);
        status["details"] = json!({"name": name, "kind": resource.plural});
        return (409, status);
    }
    store.next_uid += 1;
    object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", store.next_uid));
    (201, store_object(shared, store, key, None, object))
}

/// Discovery documents (enough for `kubectl`-like clients and kube's discovery).
fn discovery(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    let resources_of = |api_version: &str| {
        let list: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.api_version == api_version)
            .map(|r| {
                json!({
                    "name": r.plural,
                    "singularName": r.kind.to_lowercase(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "list", "watch", "patch"],
                })
            })
            .collect();
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": api_version,
            "resources": list,
        })
    };
    match path {
        "/version" => Some(json!({
            "major": "1",
            "minor": "34",
            "gitVersion": "v1.34.0-zerohop-test",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        "/api" => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        "/apis" => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in RESOURCES {
                if let Some((group, version)) = r.api_version.split_once('/') {
                    let versions = groups.entry(group).or_default();
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(group, versions)| {
                    let versions: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                        .collect();
                    json!({
                        "name": group,
                        "preferredVersion": versions[0].clone(),
                        "versions": versions,
                    })
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/api/v1" => Some(resources_of("v1")),
        _ => {
            let rest = path.strip_prefix("/apis/")?;
            let (group, version) = rest.split_once('/')?;
            if version.contains('/') {
                return None;
            }
            let api_version = format!("{group}/{version}");
            RESOURCES
                .iter()
                .any(|r| r.api_version == api_version)
                .then(|| resources_of(&api_version))
        }
    }
}

struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    /// The `/status` subresource of the named object.
    status: bool,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...` followed by `{plural}`,
/// `{plural}/{name}`, `namespaces/{ns}/{plural}` or `namespaces/{ns}/{plural}/{name}`,
/// the last two forms optionally followed by `/status`.
fn parse_resource_path(path: &str) -> Option<Target> {
    let (api_version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1".to_string(), rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (format!("{group}/{version}"), rest)
    };
    let mut segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    // `{plural}/{name}/status` or `namespaces/{ns}/{plural}/{name}/status`
    // (`namespaces/{ns}/status` is a Namespace's status, as in Kubernetes).
    let status = matches!(segs.len(), 3 | 5) && segs.last() == Some(&"status");
    if status {
        segs.pop();
    }
    let (namespace, plural, name) = match segs.as_slice() {
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, Some(name.to_string())),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = resource_by_path(&api_version, plural)?;
    match (resource.namespaced, &namespace, &name) {
        (false, Some(_), _) => None,   // cluster-scoped kind under a namespace
        (true, None, Some(_)) => None, // a namespaced object needs its namespace
        (_, _, None) if status => None,
        _ => Some(Target {
            resource,
            namespace,
            name,
            status,
        }),
    }
}

// ---------------------------------------------------------------------------
// Selectors

enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

struct LabelSelector(Vec<LabelTerm>);

impl LabelSelector {
    fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut terms = Vec::new();
        let mut depth = 0i32;
        let mut start = 0;
        let mut pieces = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    pieces.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        pieces.push(&s[start..]);
        for piece in pieces.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("unable to parse requirement: {piece:?}");
            let term = if let Some(key) = piece.strip_prefix('!') {
                LabelTerm::NotExists(key.trim().to_string())
            } else if let Some(open) = piece.find('(') {
                let inner = piece[open + 1..].strip_suffix(')').ok_or_else(bad)?;
                let values = inner.split(',').map(|v| v.trim().to_string()).collect();
                let mut head = piece[..open].split_whitespace();
                let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
                    return Err(bad());
                };
                match op {
                    "in" => LabelTerm::In(key.to_string(), values),
                    "notin" => LabelTerm::NotIn(key.to_string(), values),
                    _ => return Err(bad()),
                }
            } else if let Some((k, v)) = piece.split_once("!=") {
                LabelTerm::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = piece.split_once("==").or_else(|| piece.split_once('=')) {
                LabelTerm::Eq(k.trim().to_string(), v.trim().to_string())
            } else if piece.contains(['<', '>', ' ']) {
                return Err(bad());
            } else {
                LabelTerm::Exists(piece.to_string())
            };
            terms.push(term);
        }
        Ok(LabelSelector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }
}

/// `path=value`, `path==value`, `path!=value` on any dotted path of the
/// object (`metadata.name`, `metadata.namespace`, `spec.nodeName`, ...).
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for piece in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((k, v)) = piece.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = piece.split_once("==").or_else(|| piece.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: {piece:?}"));
            };
            let pointer = format!("/{}", path.trim().replace('.', "/"));
            terms.push((pointer, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(pointer, equal, value)| {
            let actual = match obj.pointer(pointer) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

struct Filter {
    resource: &'static Resource,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, kind: &str, namespace: &str, obj: &Value) -> bool {
        kind == self.resource.kind
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.selects(obj)
    }

    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a watch with this filter sees for a change, if any.
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.kind != self.resource.kind
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != change.namespace)
        {
            return None;
        }
        if change.deleted {
            return self
                .selects(&change.new)
                .then(|| ("DELETED", change.new.clone()));
        }
        let was = change.old.as_ref().is_some_and(|o| self.selects(o));
        let is = self.selects(&change.new);
        match (was, is) {
            (false, true) => Some(("ADDED", change.new.clone())),
            (true, true) => Some(("MODIFIED", change.new.clone())),
            (true, false) => {
                // Leaving the selector: DELETED with the old object at the new rv.
                let mut old = change.old.clone().unwrap_or(Value::Null);
                if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), json!(change.rv.to_string()));
                }
                Some(("DELETED", old))
            }
            (false, false) => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Watch

/// Appends one watch event, a JSON line.
fn event_line(out: &mut Vec<u8>, kind: &str, object: &Value) {
    let mut event = Map::new();
    event.insert("type".into(), json!(kind));
    event.insert("object".into(), object.clone());
    if serde_json::to_writer(&mut *out, &Value::Object(event)).is_ok() {
        out.push(b'\n');
    }
}

fn bookmark(out: &mut Vec<u8>, resource: &Resource, rv: u64, initial_end: bool) {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
    });
    event_line(out, "BOOKMARK", &object);
}

fn expired(out: &mut Vec<u8>, message: &str) {
    event_line(out, "ERROR", &status_object(410, "Expired", message));
}

/// A watch's response body: the event batches its task sends, until the
/// task ends (the end of the body) or the connection drops the body. A
/// task that ends because the server is being dropped fails the body, so
/// that the client sees its connection cut rather than a watch's clean
/// end, whichever of the server's tasks its shutdown drops first.
struct WatchBody {
    batches: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let body = self.get_mut();
        body.batches.poll_recv(cx).map(|batch| match batch {
            Some(batch) => Some(Ok(Frame::data(batch))),
            None if body.shared.stop.load(Ordering::SeqCst) => {
                Some(Err(io::Error::other("the server is stopping")))
            }
            None => None,
        })
    }
}

/// Where a watch is: what it has sent, and what it waits for.
struct Watch {
    filter: Filter,
    /// The resourceVersion sent up to.
    last: u64,
    expiry_epoch: u64,
    bookmarks: bool,
    bookmark_every: Duration,
    deadline: tokio::time::Instant,
}

/// Answers a watch: a 200 whose body streams the events (see the module
/// doc), from a task that stops when the client is gone, or a 400.
fn serve_watch(shared: &Arc<Shared>, req: &Request, filter: Filter) -> Response<ResponseBody> {
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0) // 0 means the server's default, as in Kubernetes
        .map_or(MAX_WATCH, |t| Duration::from_secs(t).min(MAX_WATCH));
    let deadline = tokio::time::Instant::now() + timeout;
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let send_initial = req.param("sendInitialEvents") == Some("true");
    let rv_param = req.param("resourceVersion").unwrap_or("");

    // Subscribed before reading the store: no later change goes unnoticed.
    let changes = shared.changed.subscribe();
    let mut out = Vec::new();
    let (tx, rx) = mpsc::channel(WATCH_QUEUE);
    let body = WatchBody {
        batches: rx,
        shared: shared.clone(),
    };
    let mut response = Response::new(body.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));

    let store = lock(&shared.store);
    let requested: Option<u64> = match rv_param {
        "" | "0" => None,
        other => match other.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                drop(store);
                let msg = format!("invalid resourceVersion {other:?}");
                return json_response(400, &status_object(400, "BadRequest", &msg));
            }
        },
    };
    if let Some(n) = requested {
        if n < store.compacted {
            let msg = format!("too old resource version: {n} ({})", store.compacted);
            drop(store);
            expired(&mut out, &msg);
            // The only batch: the body ends when `tx` is dropped.
            let _ = tx.try_send(Bytes::from(out));
            return response;
        }
    }
    let initial = requested.is_none() || send_initial;
    let mut last = match requested {
        Some(n) if !initial => n,
        _ => store.rv,
    };
    if initial {
        for ((kind, ns, _), obj) in &store.objects {
            if filter.matches(kind, ns, obj) {
                event_line(&mut out, "ADDED", obj);
            }
        }
    } else {
        for change in store.history.iter().filter(|c| c.rv > last) {
            if let Some((kind, obj)) = filter.event(change) {
                event_line(&mut out, kind, &obj);
            }
        }
        last = last.max(store.rv);
    }
    let watch = Watch {
        filter,
        last,
        expiry_epoch: store.expiry_epoch,
        bookmarks,
        bookmark_every: store.bookmark_every,
        deadline,
    };
    drop(store);
    if initial && send_initial && bookmarks {
        bookmark(&mut out, watch.filter.resource, last, true);
    }
    tokio::spawn(stream_watch(shared.clone(), watch, changes, tx, out));
    response
}

/// Appends the watch's events for the changes since `watch.last` to `out`
/// and follows a new bookmark interval; the ERROR message if the watch is
/// expired.
fn catch_up(
    shared: &Shared,
    watch: &mut Watch,
    out: &mut Vec<u8>,
    next_bookmark: &mut tokio::time::Instant,
) -> Option<String> {
    let store = lock(&shared.store);
    if store.expiry_epoch != watch.expiry_epoch || watch.last < store.compacted {
        return Some(format!(
            "too old resource version: {} ({})",
            watch.last, store.compacted
        ));
    }
    if store.rv > watch.last {
        for change in store.history.iter().filter(|c| c.rv > watch.last) {
            if let Some((kind, obj)) = watch.filter.event(change) {
                event_line(out, kind, &obj);
            }
        }
        watch.last = store.rv;
    }
    if store.bookmark_every != watch.bookmark_every {
        watch.bookmark_every = store.bookmark_every;
        *next_bookmark = tokio::time::Instant::now() + watch.bookmark_every;
    }
    None
}

/// Sends `out`, then the changes as they come, bookmarks when they are due,
/// until the deadline, an expiry (ERROR 410) or the client is gone.
async fn stream_watch(
    shared: Arc<Shared>,
    mut watch: Watch,
    mut changes: watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
    mut out: Vec<u8>,
) {
    let mut next_bookmark = tokio::time::Instant::now() + watch.bookmark_every;
    loop {
        if !out.is_empty()
            && tx
                .send(Bytes::from(std::mem::take(&mut out)))
                .await
                .is_err()
        {
            return; // the connection is gone
        }
        if tokio::time::Instant::now() >= watch.deadline {
            return; // dropping `tx` ends the body
        }
        let mut wake = watch.deadline;
        if watch.bookmarks {
            wake = wake.min(next_bookmark);
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
            () = tx.closed() => return,
        }
        if let Some(message) = catch_up(&shared, &mut watch, &mut out, &mut next_bookmark) {
            expired(&mut out, &message);
            let _ = tx.send(Bytes::from(out)).await;
            return;
        }
        if watch.bookmarks && tokio::time::Instant::now() >= next_bookmark {
            bookmark(&mut out, watch.filter.resource, watch.last, false);
            next_bookmark = tokio::time::Instant::now() + watch.bookmark_every;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    fn raw_get(server: &ApiServer, target: &str) -> TcpStream {
        let addr = server.url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        s
    }

    fn read_some(s: &mut TcpStream, needle: &str) -> String {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while !text.contains(needle) && Instant::now() < deadline {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn usable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ApiServer>();
    }

    #[test]
    fn closed_client_ends_its_watch() {
        let server = ApiServer::start().unwrap();
        let mut s = raw_get(&server, "/api/v1/services?watch=true&resourceVersion=1");
        let head = read_some(&mut s, "\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(server.open_connections(), 1);
        drop(s);
        wait_until("the watch connection to close", || {
            server.open_connections() == 0
        });
    }

    #[test]
    fn raw_protocol() {
        let server = ApiServer::start().unwrap();
        server.apply(json!({
            "kind": "Service",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"ports": "not a list"},
        }));
        let mut s = raw_get(&server, "/api/v1/namespaces/ns/services/bad");
        let text = read_some(&mut s, "}}");
        assert!(text.contains("\"ports\":\"not a list\""), "{text}");
        assert!(text.contains("\"apiVersion\":\"v1\""), "{text}");

        let mut s = raw_get(&server, "/api/v1/pods/x/y/z");
        let text = read_some(&mut s, "}");
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        assert!(text.contains("\"kind\":\"Status\""), "{text}");

        // An expired watch answers 200 then an ERROR event and the end chunk.
        server.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}}));
        server.expire_watches();
        let mut s = raw_get(&server, "/api/v1/namespaces?watch=1&resourceVersion=2");
        let text = read_some(&mut s, "0\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"type\":\"ERROR\""), "{text}");
        assert!(text.contains("\"code\":410"), "{text}");
        assert!(text.ends_with("0\r\n\r\n"), "{text}");
    }

    fn raw_request(server: &ApiServer, head: &str, body: &[u8]) -> String {
        let addr = server.url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_some(&mut s, "}")
    }

    #[test]
    fn raw_patch_bodies() {
        let server = ApiServer::start().unwrap();
        server.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}}));
        // A chunked body, split in two chunks, with a charset parameter.
        let body = br#"{"status":{"phase":"Terminating"}}"#;
        let (one, two) = body.split_at(10);
        let mut chunked = Vec::new();
        for part in [one, two] {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let text = raw_request(
            &server,
            "PATCH /api/v1/namespaces/a/status HTTP/1.1\r\nHost: t\r\n\
             Content-Type: application/merge-patch+json; charset=utf-8\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            &chunked,
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let stored = server.get("Namespace", Some("ignored"), "a").unwrap();
        assert_eq!(stored["status"]["phase"], "Terminating");

        let head = format!(
            "PATCH /api/v1/namespaces/a HTTP/1.1\r\nHost: t\r\n\
             Content-Type: application/json-patch+json\r\nContent-Length: {}\r\n\r\n",
            2
        );
        let text = raw_request(&server, &head, b"[]");
        assert!(text.starts_with("HTTP/1.1 415"), "{text}");
        let text = raw_request(
            &server,
            "PATCH /api/v1/namespaces HTTP/1.1\r\nHost: t\r\n\
             Content-Type: application/merge-patch+json\r\nContent-Length: 2\r\n\r\n",
            b"{}",
        );
        assert!(text.starts_with("HTTP/1.1 405"), "{text}");
        let text = raw_request(
            &server,
            "PATCH /api/v1/namespaces/a HTTP/1.1\r\nHost: t\r\n\
             Content-Type: application/merge-patch+json\r\nContent-Length: 4\r\n\r\n",
            b"[1,2",
        );
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }

    #[test]
    fn merge_patch_rfc7386() {
        // The examples of RFC 7386 section 3.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }

    #[test]
    fn selectors() {
        let slice = |labels: Value| json!({"metadata": {"labels": labels}});
        let sel = |s: &str| LabelSelector::parse(s).unwrap();
        let obj = slice(json!({"a": "1", "b": "2"}));
        assert!(sel("").matches(&obj));
        assert!(sel("a=1,b==2").matches(&obj));
        assert!(!sel("a=1,b!=2").matches(&obj));
        assert!(sel("c!=3").matches(&obj));
        assert!(sel("a in (1, 5),b notin (3)").matches(&obj));
        assert!(sel("a,!c").matches(&obj));
        assert!(!sel("c").matches(&obj));
        assert!(LabelSelector::parse("a < 2").is_err());
        let f = FieldSelector::parse("metadata.name=x,metadata.namespace!=y").unwrap();
        assert!(f.matches(&json!({"metadata": {"name": "x", "namespace": "z"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "x", "namespace": "y"}})));
        assert_eq!(percent_decode("a%3Db%2Cc%21%3Dd+e"), "a=b,c!=d e");
        assert_eq!(percent_decode("100%"), "100%");
    }

    /// Reads until the server closes the connection; what was read.
    fn read_to_close(s: &mut TcpStream) -> String {
        let mut text = Vec::new();
        let _ = s.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped() {
        let server = ApiServer::start().unwrap();
        let mut s = raw_get(&server, "/api/v1/services?watch=true");
        let head = read_some(&mut s, "\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // ~60 MB of events, more than the sockets buffer: the writes stall.
        let big = "x".repeat(200_000);
        for i in 0..300 {
            server.apply(json!({
                "kind": "Service",
                "metadata": {"name": "a", "annotations": {"big": big, "i": i.to_string()}},
            }));
        }
        let deadline = Instant::now() + WRITE_TIMEOUT + Duration::from_secs(10);
        while server.open_connections() != 0 {
            assert!(Instant::now() < deadline, "a stalled client is kept");
            thread::sleep(Duration::from_millis(50));
        }
        drop(s);
    }

    #[test]
    fn drop_closes_open_watches() {
        let server = ApiServer::start().unwrap();
        let mut s = raw_get(&server, "/api/v1/services?watch=true");
        let head = read_some(&mut s, "\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(2), "slow drop");
        let rest = read_to_close(&mut s);
        assert!(!rest.contains("0\r\n\r\n"), "a clean end: {rest:?}");
    }

    #[test]
    fn restart_refuses_then_serves_on_the_same_port() {
        let server = ApiServer::start().unwrap();
        let addr = server.url().trim_start_matches("http://").to_string();
        let mut watch = raw_get(&server, "/api/v1/services?watch=true");
        let head = read_some(&mut watch, "\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        server.restart();
        read_to_close(&mut watch);
        wait_until("the watch connection to close", || {
            server.open_connections() == 0
        });
        assert!(
            TcpStream::connect(&addr).is_err(),
            "connection accepted while down"
        );
        wait_until("the server to come back", || {
            TcpStream::connect(&addr).is_ok()
        });
        drop(server);
        assert!(
            TcpStream::connect(&addr).is_err(),
            "still listening after drop"
        );
    }
}
