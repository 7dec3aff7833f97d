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
//! Threads: one accept thread and one thread per connection (keep-alive is
//! supported). Every socket has read/write timeouts, a watch notices a closed
//! client within ~100 ms, and dropping the [`ApiServer`] closes every socket
//! and joins every thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Map, Value};

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
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A client that does not read its response for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting watch checks for a closed client or a stop.
const POLL: Duration = Duration::from_millis(100);
/// Watch length when the client gives no `timeoutSeconds` (and the cap).
const MAX_WATCH: Duration = Duration::from_secs(1800);
const MAX_HEADER: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

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
    /// Bumped by restart and stop: open watches drop their connection.
    restart_epoch: u64,
    bookmark_every: Duration,
    next_uid: u64,
}

#[derive(Default)]
struct ListenerCtl {
    /// Restarts asked for by `restart()`.
    requested: u64,
    /// Restarts for which the accept thread has closed its listener.
    down: u64,
}

struct Shared {
    port: u16,
    stop: AtomicBool,
    store: Mutex<Store>,
    changed: Condvar,
    requests: Mutex<Vec<String>>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
    ctl: Mutex<ListenerCtl>,
    ctl_changed: Condvar,
    /// Plurals answered 404, as for a CRD that is not installed.
    hidden: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the server down with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn close_all_connections(&self) {
        for stream in lock(&self.conns).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// An in-process Kubernetes API server on `127.0.0.1`. Dropping it stops it:
/// sockets are closed and its threads joined.
pub struct ApiServer {
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
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
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
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
                restart_epoch: 0,
                bookmark_every: Duration::from_secs(1),
                next_uid: 1,
            }),
            changed: Condvar::new(),
            requests: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
            ctl: Mutex::new(ListenerCtl::default()),
            ctl_changed: Condvar::new(),
            hidden: Mutex::new(Vec::new()),
        });
        let for_thread = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("apiserver-{port}"))
            .spawn(move || accept_loop(&for_thread, listener))
            .context("spawning the accept thread")?;
        Ok(ApiServer {
            shared,
            acceptor: Mutex::new(Some(acceptor)),
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
        self.shared.changed.notify_all();
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
        self.shared.changed.notify_all();
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
        self.shared.changed.notify_all();
    }

    /// An API server restart: closes the listener and every open connection,
    /// refuses connections for ~300 ms, then serves again on the same port
    /// with the same store. Returns once the server is down (it comes back
    /// ~300 ms later on its own).
    pub fn restart(&self) {
        let mut ctl = lock(&self.shared.ctl);
        ctl.requested += 1;
        let target = ctl.requested;
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
        lock(&self.shared.store).restart_epoch += 1;
        self.shared.changed.notify_all();
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
        self.shared.changed.notify_all();
    }

    /// Connections currently open (for leak checks).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.stop.store(true, Ordering::SeqCst);
        lock(&shared.store).restart_epoch += 1;
        shared.changed.notify_all();
        shared.ctl_changed.notify_all();
        if let Some(acceptor) = lock(&self.acceptor).take() {
            let _ = acceptor.join();
        }
        // No connection is accepted any more: close the open ones and wait.
        shared.close_all_connections();
        let workers = std::mem::take(&mut *lock(&shared.workers));
        for worker in workers {
            let _ = worker.join();
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

/// Waits up to `timeout` for `fd` to be readable (a pending connection).
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, and fd stays open for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

fn accept_loop(shared: &Arc<Shared>, first: TcpListener) {
    let mut next = Some(first);
    // Restarts handled so far (restart() may run before we first get here).
    let mut handled = 0;
    loop {
        let listener = match next.take() {
            Some(l) => l,
            None => match rebind(shared) {
                Some(l) => l,
                None => return,
            },
        };
        let seen = serve_listener(shared, &listener, handled);
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
        let until = Instant::now() + RESTART_DOWNTIME;
        while Instant::now() < until {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn rebind(shared: &Shared) -> Option<TcpListener> {
    let mut warned = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        match TcpListener::bind(("127.0.0.1", shared.port)) {
            Ok(l) => return Some(l),
            Err(e) => {
                if !warned {
                    eprintln!(
                        "apiserver: rebinding 127.0.0.1:{} failed ({e}), retrying",
                        shared.port
                    );
                    warned = true;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Accepts connections until stop or a restart request beyond `handled`;
/// returns the restart requests seen.
fn serve_listener(shared: &Arc<Shared>, listener: &TcpListener, handled: u64) -> u64 {
    let restart_requested = || {
        let requested = lock(&shared.ctl).requested;
        (requested != handled).then_some(requested)
    };
    let _ = listener.set_nonblocking(true);
    loop {
        if let Some(seen) = restart_requested() {
            return seen;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return handled;
        }
        if !wait_readable(listener.as_raw_fd(), Duration::from_millis(50)) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) || restart_requested().is_some() {
            continue; // dropping `stream` closes it; the checks above return
        }
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        lock(&shared.conns).insert(id, registered);
        let for_thread = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("apiserver-conn-{id}"))
            .spawn(move || {
                serve_connection(&for_thread, &stream);
                let _ = stream.shutdown(Shutdown::Both);
                lock(&for_thread.conns).remove(&id);
            });
        let mut workers = lock(&shared.workers);
        workers.retain(|w| !w.is_finished());
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(_) => {
                if let Some(s) = lock(&shared.conns).remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    close: bool,
    /// The media type of the body, lower-case, without parameters.
    content_type: String,
    body: Vec<u8>,
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

/// Reads more bytes into `buf`; `Ok(false)` on a clean close.
fn fill(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads up to and including the next CRLF; `Ok(None)` on close or garbage.
fn read_line(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<String>> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.drain(..pos + 2);
            return Ok(Some(line));
        }
        if buf.len() > MAX_HEADER || !fill(stream, buf)? {
            return Ok(None);
        }
    }
}

/// Reads a `Transfer-Encoding: chunked` body; `Ok(None)` on close or garbage.
fn read_chunked(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(stream, buf)? else {
            return Ok(None);
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Ok(None);
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(stream, buf)? {
                    Some(l) if l.is_empty() => return Ok(Some(body)),
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Ok(None);
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf)? {
                return Ok(None);
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads one request (head and body). `Ok(None)` on a clean close, a timeout
/// or garbage.
fn read_request(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEADER || !fill(stream, buf)? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);

    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return Ok(None);
    };
    let version = first.next().unwrap_or("HTTP/1.1");
    let mut close = version == "HTTP/1.0";
    let mut body_len = 0usize;
    let mut chunked = false;
    let mut content_type = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = value.split(';').next().unwrap_or("");
            content_type = media.trim().to_ascii_lowercase();
        }
    }
    let body = if chunked {
        match read_chunked(stream, buf)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else {
        if body_len > MAX_BODY {
            return Ok(None);
        }
        while buf.len() < body_len {
            if !fill(stream, buf)? {
                return Ok(None);
            }
        }
        buf.drain(..body_len).collect()
    };

    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let query = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        path: path.to_string(),
        query,
        close,
        content_type,
        body,
    }))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Error",
    }
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

fn write_json(stream: &TcpStream, code: u16, body: &Value, close: bool) -> io::Result<()> {
    let body = serde_json::to_vec(body).map_err(io::Error::other)?;
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        reason_phrase(code),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    )
    .into_bytes();
    out.extend_from_slice(&body);
    (&*stream).write_all(&out)?;
    (&*stream).flush()
}

fn serve_connection(shared: &Shared, stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(Some(req)) = read_request(stream, &mut buf) else {
            return;
        };
        {
            let mut log = lock(&shared.requests);
            if log.len() >= MAX_REQUEST_LOG {
                log.drain(..MAX_REQUEST_LOG / 2);
            }
            log.push(format!("{} {}", req.method, req.target));
        }
        match handle(shared, stream, &req) {
            Ok(true) if !req.close => {}
            _ => return,
        }
    }
}

/// Answers one request; `Ok(true)` if the connection may serve another.
fn handle(shared: &Shared, stream: &TcpStream, req: &Request) -> io::Result<bool> {
    let reply = |code: u16, body: Value| write_json(stream, code, &body, req.close).map(|()| true);
    if !matches!(req.method.as_str(), "GET" | "PATCH" | "POST") {
        let msg = format!(
            "method {} is not supported by the test API server",
            req.method
        );
        write_json(
            stream,
            405,
            &status_object(405, "MethodNotAllowed", &msg),
            true,
        )?;
        return Ok(false);
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
        return serve_watch(shared, stream, req, &filter);
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
    shared.changed.notify_all();
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

fn event_line(out: &mut Vec<u8>, kind: &str, object: &Value) {
    let mut event = Map::new();
    event.insert("type".into(), json!(kind));
    event.insert("object".into(), object.clone());
    let mut line = serde_json::to_vec(&Value::Object(event)).unwrap_or_default();
    line.push(b'\n');
    out.extend_from_slice(format!("{:x}\r\n", line.len()).as_bytes());
    out.extend_from_slice(&line);
    out.extend_from_slice(b"\r\n");
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

fn send(stream: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        (&*stream).write_all(out)?;
        (&*stream).flush()?;
        out.clear();
    }
    Ok(())
}

/// True if the client closed its side (or the socket is broken).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let result = stream.peek(&mut byte);
    let _ = stream.set_nonblocking(false);
    match result {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

fn serve_watch(
    shared: &Shared,
    stream: &TcpStream,
    req: &Request,
    filter: &Filter,
) -> io::Result<bool> {
    let started = Instant::now();
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0) // 0 means the server's default, as in Kubernetes
        .map_or(MAX_WATCH, |t| Duration::from_secs(t).min(MAX_WATCH));
    let deadline = started + timeout;
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let send_initial = req.param("sendInitialEvents") == Some("true");
    let rv_param = req.param("resourceVersion").unwrap_or("");

    let head = concat!(
        "HTTP/1.1 200 OK\r\n",
        "Content-Type: application/json\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Cache-Control: no-cache, private\r\n",
        "\r\n",
    );
    let mut out = head.as_bytes().to_vec();

    let store = lock(&shared.store);
    let expiry_epoch = store.expiry_epoch;
    let restart_epoch = store.restart_epoch;
    let requested: Option<u64> = match rv_param {
        "" | "0" => None,
        other => match other.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                drop(store);
                let msg = format!("invalid resourceVersion {other:?}");
                write_json(
                    stream,
                    400,
                    &status_object(400, "BadRequest", &msg),
                    req.close,
                )?;
                return Ok(true);
            }
        },
    };
    if let Some(n) = requested {
        if n < store.compacted {
            let msg = format!("too old resource version: {n} ({})", store.compacted);
            drop(store);
            expired(&mut out, &msg);
            out.extend_from_slice(b"0\r\n\r\n");
            send(stream, &mut out)?;
            return Ok(true);
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
    let mut bookmark_every = store.bookmark_every;
    drop(store);
    if initial && send_initial && bookmarks {
        bookmark(&mut out, filter.resource, last, true);
    }
    send(stream, &mut out)?;

    let mut next_bookmark = Instant::now() + bookmark_every;
    loop {
        let now = Instant::now();
        if now >= deadline {
            out.extend_from_slice(b"0\r\n\r\n");
            send(stream, &mut out)?;
            return Ok(true);
        }
        let mut wait = POLL.min(deadline - now);
        if bookmarks {
            wait = wait.min(next_bookmark.saturating_duration_since(now));
        }
        let mut store = lock(&shared.store);
        let idle = |s: &Store| {
            s.rv <= last
                && s.expiry_epoch == expiry_epoch
                && s.restart_epoch == restart_epoch
                && s.bookmark_every == bookmark_every
        };
        if idle(&store) && !wait.is_zero() {
            store = shared
                .changed
                .wait_timeout_while(store, wait, |s| idle(s))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        if store.restart_epoch != restart_epoch || shared.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if store.expiry_epoch != expiry_epoch || last < store.compacted {
            let msg = format!("too old resource version: {last} ({})", store.compacted);
            drop(store);
            expired(&mut out, &msg);
            out.extend_from_slice(b"0\r\n\r\n");
            send(stream, &mut out)?;
            return Ok(true);
        }
        if store.rv > last {
            for change in store.history.iter().filter(|c| c.rv > last) {
                if let Some((kind, obj)) = filter.event(change) {
                    event_line(&mut out, kind, &obj);
                }
            }
            last = store.rv;
        }
        if store.bookmark_every != bookmark_every {
            bookmark_every = store.bookmark_every;
            next_bookmark = Instant::now() + bookmark_every;
        }
        drop(store);
        if bookmarks && Instant::now() >= next_bookmark {
            bookmark(&mut out, filter.resource, last, false);
            next_bookmark = Instant::now() + bookmark_every;
        }
        send(stream, &mut out)?;
        if peer_closed(stream) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn restart_refuses_then_serves_on_the_same_port() {
        let server = ApiServer::start().unwrap();
        let addr = server.url().trim_start_matches("http://").to_string();
        server.restart();
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
