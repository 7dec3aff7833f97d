//! Reverse translations: what a socket dialled, filed under the socket and
//! the address the hooks sent it to instead (REVERSE).
//!
//! Through kube-proxy's DNAT a client only ever sees the Service it
//! addressed: `getpeername()` returns the ClusterIP:port, and UDP replies
//! come from it. zerohop rewrites the destination in the socket itself, so
//! the hooks that return addresses to the application (getpeername.rs,
//! recvmsg in udp.rs) give the dialled address back from here.
//!
//! The key holds the address the socket was sent to, so an entry only
//! counts while that is still the address in question: a socket that
//! disconnected and dialled something else, or a datagram from any other
//! source, keeps its true address. Accepted sockets have no entry, so
//! servers always see their real clients.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::generated::bpf_get_socket_cookie,
    programs::SockAddrContext,
};
use zerohop_abi::{Counter, Dialled, ReverseKey, FAMILY_V4, FAMILY_V6};

use crate::{
    conn::{ConnFields, V4_MAPPED_WORD},
    family::Family,
    maps::{count, REVERSE},
};

/// Files that the socket of `ctx`, now sent to the address in `sa`, dialled
/// `dialled`:`dialled_port` (host byte order). `unless_filed` spares the
/// write when the same entry is there (every datagram of an unconnected
/// UDP socket comes through here). A miss only costs the client the
/// ClusterIP: it sees the endpoint, as without zerohop.
#[inline(always)]
pub(crate) fn remember<F: Family>(
    ctx: &SockAddrContext,
    sa: &bpf_sock_addr,
    dialled: [u32; 4],
    dialled_port: u16,
    unless_filed: bool,
) {
    let mut key = key_of_socket::<F>(ctx, sa);
    let mut dialled = dialled;
    // An IPv6 socket's datagram to ::ffff:a.b.c.d reaches the IPv4 sendmsg
    // hook (udpv6_sendmsg hands it to udp_sendmsg as IPv4), as does its
    // connect with an IPv4 sockaddr: file it in the socket's own, mapped
    // form, which recvmsg6 and getpeername6 ask for.
    if key.family == u32::from(FAMILY_V4) && socket_family(sa) == u32::from(FAMILY_V6) {
        key.addr = [0, 0, V4_MAPPED_WORD, key.addr[0]];
        key.family = u32::from(FAMILY_V6);
        dialled = [0, 0, V4_MAPPED_WORD, dialled[0]];
    }
    let value = Dialled {
        addr: dialled,
        port: u32::from(dialled_port.to_be()),
    };
    if unless_filed && unsafe { REVERSE.get(key) }.is_some_and(|filed| *filed == value) {
        return;
    }
    if REVERSE.insert(key, value, 0).is_err() {
        count(Counter::MapFull, 1);
    }
}

/// Rewrites the address in the context (the peer getpeername returns, or
/// the source recvmsg returns) to what the socket dialled, if the hooks
/// sent it there. Returns whether it did. `F` is the socket's family, V4 or
/// V6: an IPv6 socket's addresses are all stored in its own form.
#[inline(always)]
pub(crate) fn restore<F: Family>(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = key_of_socket::<F>(ctx, sa);
    // SAFETY: values are plain integers. Copied out: the entry may go.
    let Some(dialled) = (unsafe { REVERSE.get(key) }).copied() else {
        return false;
    };
    F::set_destination(sa, &dialled.addr);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, dialled.port) };
    true
}

/// The family of the socket of `sa`, which can differ from the family of
/// the hook (see [`remember`]).
#[inline(always)]
fn socket_family(sa: &bpf_sock_addr) -> u32 {
    // SAFETY: `sk` of a sock_addr context is the socket, never null (the
    // verifier types it PTR_TO_SOCKET); `family` takes a 4-byte load.
    let sk: *mut bpf_sock = unsafe { core::ptr::read_volatile(&sa.__bindgen_anon_1.sk) };
    unsafe { core::ptr::read_volatile(&(*sk).family) }
}

/// The key of the socket of `ctx` and the address in `sa`.
#[inline(always)]
fn key_of_socket<F: Family>(ctx: &SockAddrContext, sa: &bpf_sock_addr) -> ReverseKey {
    ReverseKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr: F::as_stored(sa),
        port: unsafe { core::ptr::read_volatile(&sa.user_port) },
        family: u32::from(F::SOCKET_FAMILY),
    }
}

/// The key of a TCP connection's entry as sockops sees the connecting end
/// (the remote end is where the connect hook sent it), or `None` for a
/// non-IP socket.
#[inline(always)]
pub(crate) fn key_of_connection<C: ConnFields>(ctx: &C, cookie: u64) -> Option<ReverseKey> {
    let family = ctx.family();
    let addr = if family == u32::from(FAMILY_V4) {
        [ctx.remote_ip4(), 0, 0, 0]
    } else if family == u32::from(FAMILY_V6) {
        [
            ctx.remote_ip6(0),
            ctx.remote_ip6(1),
            ctx.remote_ip6(2),
            ctx.remote_ip6(3),
        ]
    } else {
        return None;
    };
    Some(ReverseKey {
        cookie,
        addr,
        port: ctx.remote_port_raw() >> 16,
        family,
    })
}
