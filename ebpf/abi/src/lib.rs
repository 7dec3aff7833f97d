//! The contract between zerohop's kernel programs and user space: map names,
//! and the `#[repr(C)]` keys and values stored in those maps.
//!
//! Rules for every type here: explicit padding, no `bool`, integers only, a
//! size assertion, and a comment on each field saying its unit and byte order.
//! Changing a layout means bumping the `_vN` suffix of the map names, so an
//! agent never reads a pinned map written with another layout.
#![no_std]

/// Map names. The kernel keeps 15 characters of a map name; the `zh_` prefix
/// marks ours and the `_vN` suffix is the layout version.
pub mod map_name {
    /// Frontends: [`FrontendKey`](super::FrontendKey) → [`Service`](super::Service).
    pub const SERVICES: &str = "zh_svc_v2";
    /// Eligible endpoints: [`BackendKey`](super::BackendKey) → [`Backend`](super::Backend).
    pub const BACKENDS: &str = "zh_backend_v1";
    /// Run-time switches and the waypoint: index 0 → [`Config`](super::Config).
    pub const CONFIG: &str = "zh_config_v2";
    /// Per-CPU counters, indexed by [`Counter`](super::Counter).
    pub const STATS: &str = "zh_stats_v7";
    /// Sockets connected to a local endpoint, by socket cookie (u64) → the
    /// [`FrontendKey`](super::FrontendKey) they dialled (all zero for the
    /// waypoint's connects to pod IPs).
    pub const TAGGED: &str = "zh_tagged_v2";
    /// Accepting ends we expect, as [`SockKey`](super::SockKey) seen from
    /// them → [`Pending`](super::Pending).
    pub const PENDING: &str = "zh_pending_v3";
    /// Registered sockets of bypassed connections: [`SockKey`](super::SockKey) → socket.
    pub const SOCKETS: &str = "zh_socks_v1";
    /// Registered sockets' order-keeping state: [`SockKey`](super::SockKey) →
    /// [`End`](super::End).
    pub const ENDS: &str = "zh_ends_v2";
    /// What the bypassed connections of each frontend do, for the agent's
    /// bypass policy: [`FrontendKey`](super::FrontendKey) →
    /// [`Traffic`](super::Traffic). The agent creates and removes the
    /// entries; the programs only add to them.
    pub const TRAFFIC: &str = "zh_traffic_v2";
    /// Session affinity and the endpoint of each unconnected UDP socket:
    /// [`AffinityKey`](super::AffinityKey) → [`Affinity`](super::Affinity).
    pub const AFFINITY: &str = "zh_affinity_v1";
    /// Service of each frontend, for `zerohop inspect` (no program reads it):
    /// [`FrontendKey`](super::FrontendKey) → [`ServiceName`](super::ServiceName).
    pub const NAMES: &str = "zh_names_v1";
    /// Sockets the connect hook sent to the waypoint, not yet established:
    /// socket cookie (u64) → the [`FrontendKey`](super::FrontendKey) they dialled.
    pub const DIALED: &str = "zh_dialed_v1";
    /// Original destinations for `SO_ORIGINAL_DST`: the waypoint's accepted
    /// socket, as [`SockKey`](super::SockKey) seen from it → the
    /// [`FrontendKey`](super::FrontendKey) its client dialled.
    pub const ORIGDST: &str = "zh_origdst_v1";
    /// Reverse translations: a socket and the endpoint the hooks sent it to,
    /// [`ReverseKey`](super::ReverseKey) → the ClusterIP:port it dialled
    /// ([`Dialled`](super::Dialled)), for `getpeername()` and the source of
    /// UDP replies.
    pub const REVERSE: &str = "zh_reverse_v1";
    /// Endpoints that just left a frontend,
    /// [`FrontendEndpoint`](super::FrontendEndpoint) →
    /// u8 (1): the agent fills it, runs the socket iterators that terminate
    /// the sockets still connected to them, and empties it again.
    pub const GONE: &str = "zh_gone_v1";
    /// The agent's lease on the maps: index 0 → u64, the `CLOCK_MONOTONIC`
    /// time in ns (`bpf_ktime_get_ns`) until which the agent vouches that
    /// the maps hold what the cluster holds. The hooks translate only
    /// before it; 0 (never written) vouches for nothing.
    pub const LEASE: &str = "zh_lease_v1";
}

/// Read-only globals of the programs that the agent sets at load time.
///
/// The programs read two fields of the kernel's `struct tcp_sock`, whose
/// layout differs between kernels; the agent finds their byte offsets in the
/// running kernel's BTF and sets them here. The verifier checks every such
/// read against the same BTF.
pub mod global {
    /// Byte offset of `copied_seq` in `struct tcp_sock` (u32).
    pub const TCP_COPIED_SEQ: &str = "ZH_TCP_COPIED_SEQ";
    /// Byte offset of `write_seq` in `struct tcp_sock` (u32).
    pub const TCP_WRITE_SEQ: &str = "ZH_TCP_WRITE_SEQ";
    /// Byte offsets in `struct sock_common` (the head of every socket the
    /// TCP and UDP iterators walk) of `skc_daddr` (u32), `skc_dport`
    /// (u16), `skc_family` (u16), `skc_v6_daddr` (16 bytes) and
    /// `skc_cookie` (u64).
    pub const SKC_DADDR: &str = "ZH_SKC_DADDR";
    pub const SKC_DPORT: &str = "ZH_SKC_DPORT";
    pub const SKC_FAMILY: &str = "ZH_SKC_FAMILY";
    pub const SKC_V6_DADDR: &str = "ZH_SKC_V6_DADDR";
    pub const SKC_COOKIE: &str = "ZH_SKC_COOKIE";
}

/// Calls of the programs to kernel functions (kfuncs), which the agent
/// binds at load time.
///
/// Rust has no `__ksym` externs, so a program calls a kfunc through an
/// ordinary helper call whose number is one of these placeholders; the
/// agent rewrites each such instruction before loading the object: into
/// a call of the kfunc (its BTF id in the running kernel) where the kernel
/// has it, else into `r0 = -EOPNOTSUPP`, what the kfunc answers when it
/// cannot act.
pub mod kfunc {
    /// `int bpf_sock_destroy(struct sock_common *sk)` (6.5+).
    pub const SOCK_DESTROY: i32 = 0x7a68_0001;
}

/// Every map name, for pinning, inspection and cleanup.
pub const ALL_MAPS: [&str; 16] = [
    map_name::SERVICES,
    map_name::BACKENDS,
    map_name::CONFIG,
    map_name::STATS,
    map_name::TAGGED,
    map_name::PENDING,
    map_name::SOCKETS,
    map_name::ENDS,
    map_name::NAMES,
    map_name::AFFINITY,
    map_name::DIALED,
    map_name::ORIGDST,
    map_name::TRAFFIC,
    map_name::REVERSE,
    map_name::GONE,
    map_name::LEASE,
];

/// Map capacities.
pub mod capacity {
    /// Frontends (ClusterIP:port pairs) per node.
    pub const SERVICES: u32 = 65_536;
    /// Eligible endpoint slots over all frontends.
    pub const BACKENDS: u32 = 262_144;
    /// Sockets tagged at connect and not yet established.
    pub const TAGGED: u32 = 65_536;
    /// Accepting ends not yet established.
    pub const PENDING: u32 = 65_536;
    /// Registered sockets (two per bypassed connection).
    pub const SOCKETS: u32 = 131_072;
    /// Ends of registered connections (two per connection; LRU: an end
    /// whose entry ages out only has to prove again that it may redirect).
    pub const ENDS: u32 = 131_072;
    /// (client, frontend) pairs remembered for session affinity.
    pub const AFFINITY: u32 = 65_536;
    /// Connects sent to the waypoint and not yet established.
    pub const DIALED: u32 = 65_536;
    /// Connections accepted by the waypoint whose original destination is
    /// remembered (LRU: closed ones age out).
    pub const ORIGDST: u32 = 65_536;
    /// Reverse translations (one per translated TCP or connected UDP
    /// socket, one per endpoint an unconnected UDP socket sent to). Entries
    /// of TCP sockets leave when their connection closes; the map is LRU,
    /// so UDP sockets' entries and connects that never establish age out,
    /// and beyond this many live entries the least used ones go: such a
    /// socket's `getpeername()` returns its endpoint, and its UDP replies
    /// come from the endpoint's address (which resolvers drop).
    pub const REVERSE: u32 = 65_536;
    /// Endpoints terminated in one pass of the socket iterators; the agent
    /// makes as many passes as a change needs.
    pub const GONE: u32 = 4_096;
}

/// How many messages one end of a connection sends before the connection
/// counts as long in [`Traffic::long_ends`], a message counting one more for
/// each [`BYTES_PER_MSG_COUNT`] bytes it carries.
pub const LONG_MSGS: u32 = 8;

/// See [`LONG_MSGS`]: a single 64 KiB write makes an end long.
pub const BYTES_PER_MSG_COUNT: u32 = 8192;

/// While a frontend is marked [`SERVICE_SHORT_CONNS`], one connect in this
/// many still takes the bypass, so that its [`Traffic`] keeps telling.
pub const SHORT_CONNS_SAMPLE: u32 = 16;

/// While a frontend is marked [`SERVICE_SHORT_CONNS`], connects take the
/// bypass at up to one per this many ns on average, besides one in
/// [`SHORT_CONNS_SAMPLE`], in bursts of up to [`SHORT_CONNS_BURST`] (a
/// token bucket, kept as the next conforming time in
/// [`Traffic::sampled_at`]). The short verdict saves a cost paid per
/// connect, which matters only at a high connect rate; at a low one, this
/// lets the connections take the bypass, and lets their counts tell the
/// agent soon when a client of long connections (a pool opened at once)
/// follows the short ones, where one connect in [`SHORT_CONNS_SAMPLE`]
/// would sample it rarely. 100 a second: at the rates where the verdict
/// matters (thousands a second) that bypasses a few percent more.
pub const SHORT_CONNS_INTERVAL_NS: u64 = 10_000_000;

/// See [`SHORT_CONNS_INTERVAL_NS`]: a pool of this many connections opened
/// at once, after a quiet second, takes the bypass whole.
pub const SHORT_CONNS_BURST: u64 = 64;

/// `AF_INET`, as the kernel reports it in `family` fields.
pub const FAMILY_V4: u8 = 2;
/// `AF_INET6`.
pub const FAMILY_V6: u8 = 10;
/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// A Service frontend: ClusterIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The ClusterIP as the kernel stores it (network byte order words);
    /// IPv4 uses `addr[0]` and leaves the other words zero.
    pub addr: [u32; 4],
    /// Service port, host byte order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// What the connect hook does for a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Number of eligible endpoints, stored in slots `0..endpoints` of the
    /// backend map. 0 means: leave the connect untouched (connects to a
    /// [`SERVICE_L7`] Service still go to the waypoint: its routes may send
    /// them to other Services).
    pub endpoints: u32,
    /// [`SERVICE_NO_BYPASS`], [`SERVICE_L7`], [`SERVICE_SHORT_CONNS`], or 0.
    pub flags: u32,
    /// Session affinity (`sessionAffinity: ClientIP`): how long, in seconds,
    /// a client keeps its endpoint after its last connect; 0 = none.
    pub affinity_seconds: u32,
}

/// Who keeps an endpoint of a frontend: a client, for session affinity, or
/// one unconnected UDP socket, whose datagrams to a Service all go to one
/// endpoint while it stays eligible.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The frontend connected or sent to.
    pub frontend: FrontendKey,
    /// [`AFFINITY_CLIENT`] or [`AFFINITY_SOCKET`]: what `owner` is.
    pub scope: u32,
    /// The client's network namespace cookie (each pod has its own, as it
    /// has its own IP: the hooks run before the source address is chosen),
    /// or the socket's cookie.
    pub owner: u64,
}

/// [`AffinityKey::scope`]: the owner is a client (network namespace).
pub const AFFINITY_CLIENT: u32 = 0;
/// [`AffinityKey::scope`]: the owner is an unconnected UDP socket.
pub const AFFINITY_SOCKET: u32 = 1;

/// The endpoint a client sticks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// The endpoint, as it was in its slot.
    pub backend: Backend,
    /// Its slot, checked again before reuse (the endpoint may be gone).
    pub slot: u32,
    /// Last connect, in bpf_ktime_get_ns() nanoseconds.
    pub last_ns: u64,
}

/// [`Service::flags`]: translate, but never bypass the stack for this Service.
pub const SERVICE_NO_BYPASS: u32 = 1;

/// [`Service::flags`]: the agent learned that this frontend's connections
/// are too short to gain from the bypass (each carries a request or two, and
/// registering a connection costs more than that saves): its connects are
/// translated, and only one in [`SHORT_CONNS_SAMPLE`] is bypassed, and up
/// to one per [`SHORT_CONNS_INTERVAL_NS`] besides.
pub const SERVICE_SHORT_CONNS: u32 = 4;

/// [`Service::flags`]: the Service has L7 policy (HTTPRoutes): connects from
/// ordinary sockets go to the node's waypoint ([`Config`]) instead of an
/// endpoint. The waypoint's own sockets get the endpoints as usual, so the
/// planner fills the endpoint slots of L7 frontends too.
pub const SERVICE_L7: u32 = 2;

/// One eligible endpoint slot of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// The frontend the slot belongs to.
    pub frontend: FrontendKey,
    /// Slot index, `0..Service::endpoints`.
    pub slot: u32,
}

/// An endpoint a connect may be rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Endpoint address, same layout and family as [`FrontendKey::addr`].
    pub addr: [u32; 4],
    /// Endpoint (target) port, host byte order.
    pub port: u16,
    /// 1 when the endpoint runs on this node (the connection may bypass the stack), else 0.
    pub local: u8,
    /// Padding, always 0.
    pub _pad: u8,
}

/// `namespace/name` of the Service a frontend belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// UTF-8, NUL-padded; Kubernetes names and namespaces have at most 63
    /// characters each, so `namespace/name` always fits.
    pub text: [u8; 128],
}

impl ServiceName {
    /// `namespace/name`, cut at 128 bytes (never reached by valid names).
    pub fn new(namespace: &str, name: &str) -> ServiceName {
        let mut text = [0u8; 128];
        let parts = [namespace.as_bytes(), b"/", name.as_bytes()];
        for (slot, byte) in text.iter_mut().zip(parts.into_iter().flatten()) {
            *slot = *byte;
        }
        ServiceName { text }
    }

    /// The text up to the first NUL.
    pub fn as_str(&self) -> &str {
        let len = self
            .text
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(self.text.len());
        core::str::from_utf8(&self.text[..len]).unwrap_or("<not UTF-8>")
    }
}

/// One endpoint of one frontend. In [`map_name::GONE`]: an endpoint that
/// left the frontend's ready endpoints, so that sockets the hooks sent from
/// that frontend to it are stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendEndpoint {
    /// The frontend the socket dialled.
    pub frontend: FrontendKey,
    /// The endpoint, layout and family of [`FrontendKey::addr`].
    pub addr: [u32; 4],
    /// The endpoint's port, host byte order.
    pub port: u16,
    /// Padding, always 0.
    pub _pad: u16,
}

/// Run-time switches the programs read on every decision, and the node's
/// waypoint proxy for [`SERVICE_L7`] Services.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`CONFIG_NO_BYPASS`], [`CONFIG_UDP`], or 0.
    pub flags: u32,
    /// The `SO_MARK` the waypoint puts on its own sockets (host byte order):
    /// connects from sockets with this mark are never sent to the waypoint.
    /// 0 = no mark check (no socket counts as the waypoint's).
    pub waypoint_mark: u32,
    /// The waypoint's IPv4 address, network byte order (as `FrontendKey::addr[0]`).
    pub waypoint_v4: u32,
    /// The waypoint's IPv6 address, network byte order words (as `FrontendKey::addr`).
    pub waypoint_v6: [u32; 4],
    /// The waypoint's IPv4 port, host byte order; 0 = no IPv4 waypoint
    /// (connects to IPv4 L7 frontends are left untouched).
    pub waypoint_port_v4: u16,
    /// The waypoint's IPv6 port, host byte order; 0 = no IPv6 waypoint.
    pub waypoint_port_v6: u16,
}

/// A socket and an address the hooks sent it to instead of a ClusterIP:port.
/// Addresses here and in [`Dialled`] are in the socket's own form, as its
/// `bpf_sock_addr` holds them: an IPv4 socket's in word 0, an IPv6 socket's
/// in all four (`::ffff:a.b.c.d` when it dialled IPv4); ports are in
/// network byte order in the low 16 bits, as `bpf_sock_addr::user_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReverseKey {
    /// The socket's cookie.
    pub cookie: u64,
    /// The endpoint (or waypoint) it was sent to.
    pub addr: [u32; 4],
    pub port: u32,
    /// The socket's family: [`FAMILY_V4`] or [`FAMILY_V6`] (also for
    /// `::ffff:a.b.c.d`).
    pub family: u32,
}

/// The ClusterIP:port a socket dialled (see [`ReverseKey`] for the form).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dialled {
    pub addr: [u32; 4],
    pub port: u32,
}

/// [`Config::flags`]: translate, but send every message through the stack.
pub const CONFIG_NO_BYPASS: u32 = 1;

/// [`Config::flags`]: the recvmsg hooks run, so the connect hooks may
/// translate UDP sockets too (their replies would otherwise come from the
/// endpoint's address, which resolvers drop).
pub const CONFIG_UDP: u32 = 2;

/// Identifies one end of a TCP connection, as that end sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    /// Local address, layout of [`FrontendKey::addr`].
    pub local_addr: [u32; 4],
    /// Remote address, layout of [`FrontendKey::addr`].
    pub remote_addr: [u32; 4],
    /// Local port, host byte order.
    pub local_port: u32,
    /// Remote port, host byte order.
    pub remote_port: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`], widened to keep the key free of padding.
    pub family: u32,
}

impl SockKey {
    /// The same connection seen from the other end.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
        }
    }
}

/// An accepting end the connecting end announced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The connection's id (the connecting end's socket cookie).
    pub conn: u64,
    /// The frontend the connecting end dialled (all zero: none).
    pub frontend: FrontendKey,
    /// Padding, always 0.
    pub _pad: u32,
}

/// What the bypassed connections of one frontend did, counted by the
/// programs since the agent created the entry (u64 counters that wrap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Connects tagged for the bypass.
    pub conns: u64,
    /// Ends of those connections that sent [`LONG_MSGS`] messages or more
    /// (large messages counting more).
    pub long_ends: u64,
    /// While the frontend is marked [`SERVICE_SHORT_CONNS`]: the
    /// `bpf_ktime_get_ns` time from which the next connect conforms to
    /// [`SHORT_CONNS_INTERVAL_NS`] (the token bucket's state).
    pub sampled_at: u64,
}

/// One end of a registered connection: what its peer needs to know before
/// redirecting to it, and whether this end may redirect.
///
/// Bytes must reach the reader in the order they were written. A reader
/// takes redirected bytes before those the stack delivered, so an end that
/// sent anything through the stack may redirect only once its peer has read
/// all of it: once the peer's published `read_upto` equals this end's
/// `write_seq` (both in the sequence space of this end's sent bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct End {
    /// The connection's id, the same at both ends (the connecting end's
    /// socket cookie): a peer entry of another connection on a recycled
    /// 4-tuple never counts.
    pub conn: u64,
    /// This end's `copied_seq` (the next byte its application reads from the
    /// stack) when it last published it; host byte order, wraps.
    pub read_upto: u32,
    /// [`END_VERIFIED`], [`END_REDIRECTED`], [`END_STACKED`], [`END_SENT`].
    pub flags: u32,
    /// The frontend the connection was dialled at (all zero: none).
    pub frontend: FrontendKey,
    /// Messages this end sent while registered, up to [`LONG_MSGS`] (large
    /// messages counting more, see there).
    pub msgs: u32,
}

/// [`End::flags`]: the peer has read every byte this end sent through the
/// stack; until this end sends through the stack again, it may redirect.
pub const END_VERIFIED: u32 = 1;
/// [`End::flags`]: this end has redirected at least one message.
pub const END_REDIRECTED: u32 = 2;
/// [`End::flags`]: this end sent through the stack before its peer was
/// registered: the peer does not register, and the connection leaves the
/// sockhash.
pub const END_STACKED: u32 = 4;
/// [`End::flags`]: this end has sent at least one message (either way).
pub const END_SENT: u32 = 8;

/// Per-CPU counters in the stats map, by reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connects (TCP, or UDP sockets' `connect`) rewritten to an endpoint
    /// on this node.
    TranslatedLocal = 0,
    /// Connects (TCP or UDP) rewritten to an endpoint on another node.
    TranslatedRemote = 1,
    /// Connects left untouched: the address is no known Service frontend.
    PassedNotService = 2,
    /// Connects left untouched: the Service has no eligible endpoint.
    PassedNoEndpoint = 3,
    /// Messages moved socket-to-socket.
    MsgRedirected = 4,
    /// Bytes moved socket-to-socket.
    BytesRedirected = 5,
    /// Messages of registered sockets that went through the stack instead
    /// (the peer was not registered, or had not read all this end sent
    /// through the stack yet, or the bypass is off).
    RedirectMiss = 6,
    /// Inserts refused because a map was full (the connection fell back).
    MapFull = 7,
    /// Connects to an L7 Service sent to the node's waypoint.
    ToWaypoint = 8,
    /// Connections that moved at least one message socket-to-socket.
    ConnsBypassed = 9,
    /// Bytes of registered sockets' messages that went through the stack.
    BytesPassed = 10,
    /// Connections handed whole to the stack: the client's first message
    /// went through it before the server's end was registered.
    ConnsKeptOff = 11,
    /// Registered connections that sent at least one message, either way
    /// (the base of the bypassed share: a connection that never sends
    /// cannot take the bypass).
    ConnsSent = 12,
    /// Connects to a local endpoint translated without the bypass: it is
    /// off for the Service or the node, or the Service's connections were
    /// judged short (all but one in [`SHORT_CONNS_SAMPLE`]).
    LocalTranslatedOnly = 13,
    /// UDP datagrams sent without a connect (`sendto`) rewritten to an
    /// endpoint.
    DatagramsTranslated = 14,
    /// UDP datagrams received from an endpoint whose source was given back
    /// as the ClusterIP:port the socket sent to.
    RepliesRestored = 15,
    /// Sockets terminated because the endpoint they were sent to left
    /// their Service (stale connections).
    SocketsTerminated = 16,
    /// Stale sockets this kernel could not terminate (it has no
    /// `bpf_sock_destroy`, 6.5+): they keep talking to the old endpoint.
    SocketsLeftStale = 17,
    /// Connects (and UDP datagrams) to a Service frontend left untouched
    /// because the agent's lease on the maps ran out: it no longer vouches
    /// that they are current (stopped, wedged, or its source stuck).
    PassedLeaseLapsed = 18,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 19] = [
        Counter::TranslatedLocal,
        Counter::TranslatedRemote,
        Counter::PassedNotService,
        Counter::PassedNoEndpoint,
        Counter::MsgRedirected,
        Counter::BytesRedirected,
        Counter::RedirectMiss,
        Counter::MapFull,
        Counter::ToWaypoint,
        Counter::ConnsBypassed,
        Counter::BytesPassed,
        Counter::ConnsKeptOff,
        Counter::ConnsSent,
        Counter::LocalTranslatedOnly,
        Counter::DatagramsTranslated,
        Counter::RepliesRestored,
        Counter::SocketsTerminated,
        Counter::SocketsLeftStale,
        Counter::PassedLeaseLapsed,
    ];

    /// Stable name, used by the CLI and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::TranslatedLocal => "translated_local",
            Counter::TranslatedRemote => "translated_remote",
            Counter::PassedNotService => "passed_not_service",
            Counter::PassedNoEndpoint => "passed_no_endpoint",
            Counter::MsgRedirected => "msg_redirected",
            Counter::BytesRedirected => "bytes_redirected",
            Counter::RedirectMiss => "redirect_miss",
            Counter::MapFull => "map_full",
            Counter::ToWaypoint => "to_waypoint",
            Counter::ConnsBypassed => "conns_bypassed",
            Counter::BytesPassed => "bytes_passed",
            Counter::ConnsKeptOff => "conns_kept_off",
            Counter::ConnsSent => "conns_sent",
            Counter::LocalTranslatedOnly => "local_translated_only",
            Counter::DatagramsTranslated => "datagrams_translated",
            Counter::RepliesRestored => "replies_restored",
            Counter::SocketsTerminated => "sockets_terminated",
            Counter::SocketsLeftStale => "sockets_left_stale",
            Counter::PassedLeaseLapsed => "passed_lease_lapsed",
        }
    }
}

/// Number of slots in the stats map.
pub const COUNTERS: u32 = Counter::ALL.len() as u32;

const _: () = {
    assert!(size_of::<FrontendKey>() == 20);
    assert!(size_of::<Service>() == 12);
    assert!(size_of::<AffinityKey>() == 32);
    assert!(size_of::<Affinity>() == 32);
    assert!(size_of::<BackendKey>() == 24);
    assert!(size_of::<Backend>() == 20);
    assert!(size_of::<Config>() == 32);
    assert!(size_of::<SockKey>() == 44);
    assert!(size_of::<End>() == 40);
    assert!(size_of::<Pending>() == 32);
    assert!(size_of::<Traffic>() == 24);
    assert!(size_of::<ServiceName>() == 128);
    assert!(size_of::<ReverseKey>() == 32);
    assert!(size_of::<Dialled>() == 20);
    assert!(size_of::<FrontendEndpoint>() == 40);
};

#[cfg(feature = "user")]
#[expect(
    clippy::undocumented_unsafe_blocks,
    reason = "one SAFETY comment covers every impl"
)]
mod pod {
    // SAFETY: every type is #[repr(C)], made of integers only, without
    // implicit padding (checked by the size assertions above), so any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::Affinity {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::End {}
    unsafe impl aya::Pod for super::Pending {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::ServiceName {}
    unsafe impl aya::Pod for super::ReverseKey {}
    unsafe impl aya::Pod for super::Dialled {}
    unsafe impl aya::Pod for super::FrontendEndpoint {}
}
