//! cgroup getpeername4/getpeername6: a translated socket's peer is the
//! ClusterIP:port it dialled, not the endpoint (or waypoint) the connect
//! hook sent it to. Through kube-proxy's DNAT a client sees the Service it
//! connected to; clients that log, check or dial their peer again must see
//! the same here. The answer comes from reverse.rs.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    connect::PROCEED,
    family::{V4, V6},
    reverse,
};

#[cgroup_sock_addr(getpeername4)]
pub fn zh_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::restore::<V4>(&ctx);
    PROCEED
}

/// Also IPv6 sockets that dialled an IPv4 Service as `::ffff:a.b.c.d`:
/// their entry holds both addresses in that mapped form.
#[cgroup_sock_addr(getpeername6)]
pub fn zh_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse::restore::<V6>(&ctx);
    PROCEED
}
