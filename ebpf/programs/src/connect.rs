//! cgroup connect4/connect6: Service frontend → one eligible endpoint.
//!
//! The user-space planner already decided which endpoints are eligible for
//! this node (all ready ones, the local ones only, ...) and stored them in
//! slots `0..endpoints` of the backend map, so the hook only draws a slot.
//! Drawing uniformly keeps the Service's load spread as kube-proxy would.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use zerohop_abi::{
    Affinity, AffinityKey, Backend, BackendKey, Counter, FrontendKey, FAMILY_V4, FAMILY_V6,
    PROTO_TCP, SERVICE_NO_BYPASS,
};

use crate::maps::{bypass_disabled, count, AFFINITY, BACKENDS, SERVICES, TAGGED};

/// Return value that lets the connect proceed. zerohop never rejects one
/// (0 would fail it with EPERM): a connect it cannot help goes on unchanged.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn zh_connect4(ctx: SockAddrContext) -> i32 {
    translate::<V4>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn zh_connect6(ctx: SockAddrContext) -> i32 {
    translate::<V6>(&ctx);
    PROCEED
}

/// How one address family stores the destination in `bpf_sock_addr`.
/// Accesses are single 4-byte loads and stores, the only width the verifier
/// accepts for every one of these fields.
trait Family {
    const FAMILY: u8;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4];
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]);
}

struct V4;
struct V6;

impl Family for V4 {
    const FAMILY: u8 = FAMILY_V4;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        [unsafe { core::ptr::read_volatile(&sa.user_ip4) }, 0, 0, 0]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        unsafe { core::ptr::write_volatile(&mut sa.user_ip4, addr[0]) }
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

    // SAFETY: values are plain integers; a concurrent update can at worst
    // give a stale view, which the slot lookup below tolerates.
    let Some(service) = (unsafe { SERVICES.get(frontend) }) else {
        count(Counter::PassedNotService, 1);
        return;
    };
    let (endpoints, flags) = (service.endpoints, service.flags);
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

    if local {
        // Tag the socket so that sockops registers it once established.
        // Untagged, the connection is still translated, just not bypassed.
        if flags & SERVICE_NO_BYPASS == 0 && !bypass_disabled() {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
            if TAGGED.insert(cookie, 0, 0).is_err() {
                count(Counter::MapFull, 1);
            }
        }
        count(Counter::TranslatedLocal, 1);
    } else {
        count(Counter::TranslatedRemote, 1);
    }
    F::set_destination(sa, &addr);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, u32::from(port.to_be())) };
}
