//! cgroup connect4/connect6: Service frontend → one eligible endpoint, or the
//! node's waypoint for L7 Services. TCP sockets and connected UDP sockets
//! come through here; UDP datagrams sent without a connect, through udp.rs.
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
    Affinity, AffinityKey, Backend, BackendKey, Config, Counter, FrontendKey, AFFINITY_CLIENT,
    AFFINITY_SOCKET, PROTO_TCP, PROTO_UDP, SERVICE_L7, SERVICE_NO_BYPASS, SERVICE_SHORT_CONNS,
    SHORT_CONNS_BURST, SHORT_CONNS_INTERVAL_NS, SHORT_CONNS_SAMPLE,
};

use crate::{
    conn::v4_mapped,
    family::{Family, Mapped, V4, V6},
    maps::{
        bypass_disabled, config, count, count_traffic, leased, udp_enabled, AFFINITY, BACKENDS,
        DIALED, SERVICES, TAGGED, TRAFFIC,
    },
    reverse,
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
    // An IPv6 socket dialling an IPv4 address as ::ffff:a.b.c.d (Java's
    // default, Python, gRPC's C core) reaches IPv4 Services.
    if dials_mapped(&ctx) {
        translate::<Mapped>(&ctx);
    } else {
        translate::<V6>(&ctx);
    }
    PROCEED
}

/// Whether an IPv6 socket's destination is an IPv4-mapped address.
#[inline(always)]
fn dials_mapped(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    v4_mapped(&V6::destination(unsafe { &*ctx.sock_addr })).is_some()
}

/// Who keeps the endpoint drawn for a frontend.
#[derive(Clone, Copy)]
pub(crate) enum Keep {
    /// Nobody: every connect draws anew.
    Nothing,
    /// The client (its network namespace), while it comes back within
    /// this many seconds: session affinity, refreshed on every connect as
    /// kube-proxy's is.
    Client(u32),
    /// The socket, for as long as it lives: an unconnected UDP socket's
    /// datagrams to a Service all reach one endpoint, as one connected
    /// through kube-proxy's conntrack entry would.
    Socket,
}

/// Draws one of the `endpoints` slots, or takes the one kept: it is kept
/// while it is still that endpoint's slot.
#[inline(always)]
pub(crate) fn pick(
    ctx: &SockAddrContext,
    frontend: FrontendKey,
    endpoints: u32,
    keep: Keep,
) -> Option<Backend> {
    let (scope, owner, seconds) = match keep {
        Keep::Nothing => return draw(frontend, endpoints).map(|(_, backend)| backend),
        Keep::Client(seconds) => (
            AFFINITY_CLIENT,
            unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) },
            seconds,
        ),
        Keep::Socket => (
            AFFINITY_SOCKET,
            unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
            0,
        ),
    };
    // Only clients with affinity pay for the clock.
    let now = if seconds != 0 {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let key = AffinityKey {
        frontend,
        scope,
        owner,
    };
    let kept = unsafe { AFFINITY.get(key) }.and_then(|kept| {
        let fresh =
            seconds == 0 || now.wrapping_sub(kept.last_ns) < u64::from(seconds) * 1_000_000_000;
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
    let (slot, backend) = match (kept, keep) {
        // A socket's endpoint needs no refresh: it has no clock.
        (Some((_, backend)), Keep::Socket) => return Some(backend),
        (Some(kept), _) => kept,
        (None, _) => draw(frontend, endpoints)?,
    };
    if AFFINITY
        .insert(
            key,
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

/// The frontend a socket addresses, if its protocol is one of ours.
#[inline(always)]
pub(crate) fn frontend_of<F: Family>(sa: &bpf_sock_addr) -> Option<FrontendKey> {
    let proto = unsafe { core::ptr::read_volatile(&sa.protocol) };
    if proto != u32::from(PROTO_TCP) && proto != u32::from(PROTO_UDP) {
        return None;
    }
    // user_port: the port in network byte order, in the low 16 bits of a u32.
    let user_port = unsafe { core::ptr::read_volatile(&sa.user_port) };
    Some(FrontendKey {
        addr: F::destination(sa),
        port: u16::from_be(user_port as u16),
        proto: proto as u8,
        family: F::FAMILY,
    })
}

/// Sends the socket of `sa` to `addr`:`port` (host byte order) instead of
/// what it addressed, and files what it addressed for reverse.rs.
#[inline(always)]
pub(crate) fn send_to<F: Family>(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    frontend: &FrontendKey,
    addr: &[u32; 4],
    port: u16,
    unless_filed: bool,
) {
    let dialled = F::as_stored(sa);
    F::set_destination(sa, addr);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, u32::from(port.to_be())) };
    reverse::remember::<F>(ctx, sa, dialled, frontend.port, unless_filed);
}

#[inline(always)]
fn translate<F: Family>(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(frontend) = frontend_of::<F>(sa) else {
        return;
    };
    // Only TCP has a bypass, and L7 Services (the waypoint) are TCP only.
    let tcp = frontend.proto == PROTO_TCP;
    if !tcp && !udp_enabled() {
        return;
    }

    let config = config();
    let from_waypoint = is_waypoint_socket(sa, config);

    // SAFETY: values are plain integers; a concurrent update can at worst
    // give a stale view, which the slot lookup below tolerates.
    let Some(service) = (unsafe { SERVICES.get(frontend) }) else {
        // The waypoint dials endpoints by their pod IPs: tagged, its
        // connections to endpoints on this node move socket-to-socket like
        // translated ones; to other nodes the peer never registers, so
        // sk_msg falls back to the stack on the first message.
        if from_waypoint && tcp && !bypass_disabled() {
            tag(ctx, &FrontendKey::default());
        }
        count(Counter::PassedNotService, 1);
        return;
    };
    if !leased() {
        count(Counter::PassedLeaseLapsed, 1);
        return;
    }
    let (endpoints, flags) = (service.endpoints, service.flags);
    // Before the endpoint check: an L7 Service without endpoints of its own
    // is fine, its routes may send every request to other Services.
    if flags & SERVICE_L7 != 0 && tcp && !from_waypoint {
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
    let keep = match service.affinity_seconds {
        0 => Keep::Nothing,
        seconds => Keep::Client(seconds),
    };
    let Some(backend) = pick(ctx, frontend, endpoints, keep) else {
        // A slot can be missing for an instant while the agent shrinks the
        // Service; the connect then takes the cluster's normal path.
        count(Counter::PassedNoEndpoint, 1);
        return;
    };
    if backend.local == 0 {
        count(Counter::TranslatedRemote, 1);
    } else if !tcp {
        count(Counter::TranslatedLocal, 1);
    } else {
        // Tag the socket so that sockops registers it once established.
        // Untagged, the connection is still translated, just not bypassed.
        if flags & SERVICE_NO_BYPASS == 0 && !bypass_disabled() && sampled(flags, &frontend) {
            tag(ctx, &frontend);
            count_traffic(&frontend, |traffic| &mut traffic.conns);
        } else {
            count(Counter::LocalTranslatedOnly, 1);
        }
        count(Counter::TranslatedLocal, 1);
    }
    send_to::<F>(ctx, sa, &frontend, &backend.addr, backend.port, false);
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
    send_to::<F>(ctx, sa, &frontend, &addr, port, false);
    count(Counter::ToWaypoint, 1);
}

/// Whether a connect to `frontend`, with these flags, takes the bypass: all
/// of them, but where the agent learned that the frontend's connections are
/// too short to gain from it, only one in SHORT_CONNS_SAMPLE and up to one
/// per SHORT_CONNS_INTERVAL_NS besides, in bursts of SHORT_CONNS_BURST (the
/// samples keep its traffic counters telling, so the agent sees a change;
/// at a low connect rate the verdict saves nothing, and the counters need
/// samples sooner than one in 16 would give them).
#[inline(always)]
fn sampled(flags: u32, frontend: &FrontendKey) -> bool {
    if flags & SERVICE_SHORT_CONNS == 0 {
        return true;
    }
    if unsafe { bpf_get_prandom_u32() } % SHORT_CONNS_SAMPLE == 0 {
        return true;
    }
    let Some(traffic) = TRAFFIC.get_ptr_mut(frontend) else {
        return false;
    };
    // A token bucket kept as one time (GCRA): the next conforming time
    // never lags `now` by more than a burst; a connect conforms when that
    // time has come, and moves it one interval on.
    let now = unsafe { bpf_ktime_get_ns() };
    let burst = SHORT_CONNS_BURST * SHORT_CONNS_INTERVAL_NS;
    // SAFETY: a map value, valid while the program runs. Two connects at
    // once may both take the same token: harmless.
    let next = unsafe { &mut (*traffic).sampled_at };
    let at = (*next).max(now.saturating_sub(burst));
    if at > now {
        return false;
    }
    *next = at + SHORT_CONNS_INTERVAL_NS;
    true
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
