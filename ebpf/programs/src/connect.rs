//! cgroup connect4/connect6: Service frontend → one eligible endpoint, or the
//! node's waypoint for L7 Services.
//!
//! The user-space planner already decided which endpoints are eligible for
//! this node (all ready ones, the local ones only, ...) and stored them in
//! slots `0..endpoints` of the backend map, so the hook only draws a slot.
//! Drawing uniformly keeps the Service's load spread as kube-proxy would.
//!
//! An IPv6 socket dialling `::ffff:a.b.c.d` (Java, Python) dials an IPv4
//! address: connect6 looks it up as an IPv4 frontend and writes the chosen
//! endpoint back in the same mapped form.
//!
//! A Service with HTTPRoutes (`SERVICE_L7`) must see every request pass its
//! routes, so connects to it go to the waypoint proxy of this node instead,
//! and the waypoint learns the ClusterIP:port dialled through
//! `SO_ORIGINAL_DST` (see getsockopt.rs). The waypoint's own sockets carry
//! its `SO_MARK`: they get the plain L4 translation, or no waypoint could
//! ever reach the Service it proxies.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use zerohop_abi::{
    Affinity, AffinityKey, Backend, BackendKey, Config, Counter, FrontendKey, PeerName, FAMILY_V4,
    FAMILY_V6, PROTO_TCP, SERVICE_L7, SERVICE_NO_BYPASS, SERVICE_SHORT_CONNS, SHORT_CONNS_SAMPLE,
};

use crate::{
    conn::{v4_mapped, V4_MAPPED_WORD},
    maps::{
        bypass_disabled, config, count, count_traffic, AFFINITY, BACKENDS, DIALED, PEERS, SERVICES,
        TAGGED,
    },
};

/// Return value that lets the connect (or getpeername) proceed. zerohop
/// never rejects one (0 would fail it with EPERM): a call it cannot help
/// goes on unchanged.
pub(crate) const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn zh_connect4(ctx: SockAddrContext) -> i32 {
    translate::<V4>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn zh_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    let destination = V6::destination(unsafe { &*ctx.sock_addr });
    // An IPv6 socket dialling an IPv4 address as ::ffff:a.b.c.d (Java's
    // default, Python, gRPC's C core) reaches IPv4 Services.
    if v4_mapped(&destination).is_some() {
        translate::<Mapped>(&ctx);
    } else {
        translate::<V6>(&ctx);
    }
    PROCEED
}

/// How one address family stores the destination in `bpf_sock_addr`.
/// Accesses are single 4-byte loads and stores, the only width the verifier
/// accepts for every one of these fields.
pub(crate) trait Family {
    const FAMILY: u8;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4];
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]);
    /// The waypoint of this family (address, host-order port), if any.
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)>;
    /// The socket's own family.
    const SOCKET_FAMILY: u8 = Self::FAMILY;
    /// The destination in the socket's own form, as getpeername.rs sees it.
    fn as_stored(sa: &bpf_sock_addr) -> [u32; 4] {
        Self::destination(sa)
    }
}

pub(crate) struct V4;
pub(crate) struct V6;
/// IPv4 through an IPv6 socket: IPv4 frontends and endpoints, written
/// back in the socket's mapped form (`::ffff:a.b.c.d`).
struct Mapped;

impl Family for V4 {
    const FAMILY: u8 = FAMILY_V4;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        [unsafe { core::ptr::read_volatile(&sa.user_ip4) }, 0, 0, 0]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        unsafe { core::ptr::write_volatile(&mut sa.user_ip4, addr[0]) }
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        let port = config.waypoint_port_v4;
        (port != 0).then_some(([config.waypoint_v4, 0, 0, 0], port))
    }
}

impl Family for V6 {
    const FAMILY: u8 = FAMILY_V6;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        let word = |i: usize| unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) };
        [word(0), word(1), word(2), word(3)]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        for (i, word) in addr.iter().enumerate() {
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], *word) }
        }
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        let port = config.waypoint_port_v6;
        (port != 0).then_some((config.waypoint_v6, port))
    }
}

impl Family for Mapped {
    const FAMILY: u8 = FAMILY_V4;
    const SOCKET_FAMILY: u8 = FAMILY_V6;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        [V6::destination(sa)[3], 0, 0, 0]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        V6::set_destination(sa, &[0, 0, V4_MAPPED_WORD, addr[0]]);
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        V4::waypoint(config)
    }
    fn as_stored(sa: &bpf_sock_addr) -> [u32; 4] {
        V6::destination(sa)
    }
}

/// Draws one of the `endpoints` slots; with session affinity, a client
/// (its network namespace) keeps the endpoint it had while it connects again
/// within `affinity_seconds` and that endpoint is still in its slot.
#[inline(always)]
fn pick(
    ctx: &SockAddrContext,
    frontend: FrontendKey,
    endpoints: u32,
    affinity_seconds: u32,
) -> Option<Backend> {
    if affinity_seconds == 0 {
        return draw(frontend, endpoints).map(|(_, backend)| backend);
    }
    // Only Services with affinity pay for the clock and the extra lookups.
    let now = unsafe { bpf_ktime_get_ns() };
    let client = AffinityKey {
        frontend,
        _pad: 0,
        netns: unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) },
    };
    let kept = unsafe { AFFINITY.get(client) }.and_then(|kept| {
        let fresh = now.wrapping_sub(kept.last_ns) < u64::from(affinity_seconds) * 1_000_000_000;
        let still_there = kept.slot < endpoints
            && unsafe {
                BACKENDS.get(BackendKey {
                    frontend,
                    slot: kept.slot,
                })
            }
            .is_some_and(|current| *current == kept.backend);
        (fresh && still_there).then_some((kept.slot, kept.backend))
    });
    let (slot, backend) = match kept {
        Some(kept) => kept,
        None => draw(frontend, endpoints)?,
    };
    // Refreshed on every connect, as kube-proxy's affinity is.
    if AFFINITY
        .insert(
            client,
            Affinity {
                backend,
                slot,
                last_ns: now,
            },
            0,
        )
        .is_err()
    {
        count(Counter::MapFull, 1);
    }
    Some(backend)
}

/// A uniformly drawn slot and its endpoint.
#[inline(always)]
fn draw(frontend: FrontendKey, endpoints: u32) -> Option<(u32, Backend)> {
    let slot = unsafe { bpf_get_prandom_u32() } % endpoints;
    let backend = *unsafe { BACKENDS.get(BackendKey { frontend, slot }) }?;
    Some((slot, backend))
}

#[inline(always)]
fn translate<F: Family>(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    let sa = unsafe { &mut *ctx.sock_addr };
    if unsafe { core::ptr::read_volatile(&sa.protocol) } != u32::from(PROTO_TCP) {
        return;
    }
    // user_port: the port in network byte order, in the low 16 bits of a u32.
    let user_port = unsafe { core::ptr::read_volatile(&sa.user_port) };
    let frontend = FrontendKey {
        addr: F::destination(sa),
        port: u16::from_be(user_port as u16),
        proto: PROTO_TCP,
        family: F::FAMILY,
    };

    let config = config();
    let from_waypoint = is_waypoint_socket(sa, config);

    // SAFETY: values are plain integers; a concurrent update can at worst
    // give a stale view, which the slot lookup below tolerates.
    let Some(service) = (unsafe { SERVICES.get(frontend) }) else {
        // The waypoint dials endpoints by their pod IPs: tagged, its
        // connections to endpoints on this node move socket-to-socket like
        // translated ones; to other nodes the peer never registers, so
        // sk_msg falls back to the stack on the first message.
        if from_waypoint && !bypass_disabled() {
            tag(ctx, &FrontendKey::default());
        }
        count(Counter::PassedNotService, 1);
        return;
    };
    let (endpoints, flags) = (service.endpoints, service.flags);
    // Before the endpoint check: an L7 Service without endpoints of its own
    // is fine, its routes may send every request to other Services.
    if flags & SERVICE_L7 != 0 && !from_waypoint {
        if let Some((addr, port)) = config.and_then(F::waypoint) {
            to_waypoint::<F>(ctx, sa, frontend, flags, addr, port);
        }
        // Without a waypoint for this family the connect goes on untouched:
        // the cluster's normal path still reaches the Service, without its
        // routes, rather than not at all (fail open).
        return;
    }
    if endpoints == 0 {
        count(Counter::PassedNoEndpoint, 1);
        return;
    }
    let affinity_seconds = service.affinity_seconds;
    let Some(backend) = pick(ctx, frontend, endpoints, affinity_seconds) else {
        // A slot can be missing for an instant while the agent shrinks the
        // Service; the connect then takes the cluster's normal path.
        count(Counter::PassedNoEndpoint, 1);
        return;
    };
    let (addr, port, local) = (backend.addr, backend.port, backend.local != 0);
    let dialled = F::as_stored(sa);

    if local {
        // Tag the socket so that sockops registers it once established.
        // Untagged, the connection is still translated, just not bypassed.
        if flags & SERVICE_NO_BYPASS == 0 && !bypass_disabled() && sampled(flags) {
            tag(ctx, &frontend);
            count_traffic(&frontend, |traffic| &mut traffic.conns);
        } else {
            count(Counter::LocalTranslatedOnly, 1);
        }
        count(Counter::TranslatedLocal, 1);
    } else {
        count(Counter::TranslatedRemote, 1);
    }
    F::set_destination(sa, &addr);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, u32::from(port.to_be())) };
    remember_peer::<F>(ctx, sa, dialled, frontend.port);
}

/// Files what a socket dialled and where it goes now (its `sa` after the
/// rewrite), for getpeername.rs. A miss only costs the client the
/// ClusterIP in getpeername: it sees the endpoint, as without the hook.
#[inline(always)]
fn remember_peer<F: Family>(
    ctx: &SockAddrContext,
    sa: &bpf_sock_addr,
    dialled: [u32; 4],
    dialled_port: u16,
) {
    let peer = PeerName {
        dialled,
        sent_to: F::as_stored(sa),
        dialled_port: dialled_port.to_be(),
        sent_to_port: unsafe { core::ptr::read_volatile(&sa.user_port) } as u16,
        family: u32::from(F::SOCKET_FAMILY),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if PEERS.insert(cookie, peer, 0).is_err() {
        count(Counter::MapFull, 1);
    }
}

/// Sends a connect to an L7 Service to the waypoint. DIALED remembers what
/// the socket dialled until sockops, once the connection is established,
/// files it under the waypoint's end of it for `SO_ORIGINAL_DST`.
#[inline(always)]
fn to_waypoint<F: Family>(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    frontend: FrontendKey,
    flags: u32,
    addr: [u32; 4],
    port: u16,
) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if DIALED.insert(cookie, frontend, 0).is_err() {
        // The waypoint could not tell where this connection was going and
        // would have to refuse it: leave it to the cluster's normal path.
        count(Counter::MapFull, 1);
        return;
    }
    // The waypoint runs on this node: client → waypoint is a same-node
    // connection like any other, worth the bypass.
    if flags & SERVICE_NO_BYPASS == 0 && !bypass_disabled() {
        tag(ctx, &FrontendKey::default());
    }
    let dialled = F::as_stored(sa);
    F::set_destination(sa, &addr);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, u32::from(port.to_be())) };
    remember_peer::<F>(ctx, sa, dialled, frontend.port);
    count(Counter::ToWaypoint, 1);
}

/// Whether a connect to a frontend with these flags takes the bypass: all
/// of them, but only one in SHORT_CONNS_SAMPLE where the agent learned that
/// the frontend's connections are too short to gain from it (the sample
/// keeps its traffic counters telling, so the agent sees a change).
#[inline(always)]
fn sampled(flags: u32) -> bool {
    flags & SERVICE_SHORT_CONNS == 0 || unsafe { bpf_get_prandom_u32() } % SHORT_CONNS_SAMPLE == 0
}

/// Tags the socket so that sockops registers it in the sockhash once
/// established, with the frontend it dialled (all zero: none). A full map
/// only costs the bypass, never the connection.
#[inline(always)]
fn tag(ctx: &SockAddrContext, frontend: &FrontendKey) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if TAGGED.insert(cookie, *frontend, 0).is_err() {
        count(Counter::MapFull, 1);
    }
}

/// Whether the socket is the waypoint's own: it carries the waypoint's
/// `SO_MARK`. With no mark configured (0), no socket is: 0 is also the mark
/// of every unmarked socket.
#[inline(always)]
fn is_waypoint_socket(sa: &bpf_sock_addr, config: Option<&Config>) -> bool {
    let Some(mark) = config.map(|config| config.waypoint_mark) else {
        return false;
    };
    if mark == 0 {
        return false;
    }
    // SAFETY: `sk` of a sock_addr context is the connecting socket, never
    // null (the verifier types it PTR_TO_SOCKET); `mark` takes a 4-byte load.
    let sk: *mut bpf_sock = unsafe { core::ptr::read_volatile(&sa.__bindgen_anon_1.sk) };
    let socket_mark = unsafe { core::ptr::read_volatile(&(*sk).mark) };
    socket_mark == mark
}
