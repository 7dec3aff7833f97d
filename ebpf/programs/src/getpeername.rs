//! cgroup getpeername4/getpeername6: a translated socket's peer is the
//! ClusterIP:port it dialled, not the endpoint (or waypoint) the connect
//! hook sent it to. Through kube-proxy's DNAT a client sees the Service it
//! connected to; clients that log, check or dial their peer again must see
//! the same here.
//!
//! The answer comes from PEERS, filed by connect.rs. An entry counts only
//! while the socket's peer is still where the connect hook sent it: a socket
//! that disconnected (connect with AF_UNSPEC) and dialled something else
//! keeps its true peer. Accepted sockets have no entry, so servers always
//! see their real clients.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::{
    connect::{Family, PROCEED, V4, V6},
    maps::PEERS,
};

#[cgroup_sock_addr(getpeername4)]
pub fn zh_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_dialled::<V4>(&ctx);
    PROCEED
}

/// Also IPv6 sockets that dialled an IPv4 Service as `::ffff:a.b.c.d`:
/// their entry holds both addresses in that mapped form.
#[cgroup_sock_addr(getpeername6)]
pub fn zh_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_dialled::<V6>(&ctx);
    PROCEED
}

#[inline(always)]
fn restore_dialled<F: Family>(ctx: &SockAddrContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: values are plain integers.
    let Some(peer) = (unsafe { PEERS.get(cookie) }) else {
        return;
    };
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its
    // duration; it holds the peer address the call is about to return.
    let sa = unsafe { &mut *ctx.sock_addr };
    let port = unsafe { core::ptr::read_volatile(&sa.user_port) } as u16;
    if F::as_stored(sa) != peer.sent_to || port != peer.sent_to_port {
        return;
    }
    F::set_destination(sa, &peer.dialled);
    unsafe { core::ptr::write_volatile(&mut sa.user_port, u32::from(peer.dialled_port)) };
}
