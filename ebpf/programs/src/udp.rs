//! cgroup sendmsg4/6 and recvmsg4/6: UDP datagrams sent without a connect.
//!
//! Resolvers (glibc's, musl's, most DNS libraries) send each query with
//! `sendto` on an unconnected socket. sendmsg rewrites such a datagram to a
//! Service's endpoint, and recvmsg gives the reply's source back as the
//! ClusterIP:port it was sent to: resolvers drop replies from any other
//! address. Connected UDP sockets are translated once, at connect
//! (connect.rs); their replies pass recvmsg too.
//!
//! One socket keeps one endpoint per Service while that endpoint stays
//! eligible (`Keep::Socket`), as kube-proxy's conntrack entry keeps it for
//! a socket's flow: a query and its retries reach the same server.
//!
//! A socket that sends to two Services backed by one endpoint sees the
//! replies of both as coming from the Service it sent to last: the reverse
//! entry is keyed by the endpoint (reverse.rs).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use zerohop_abi::{Counter, PROTO_UDP};

use crate::{
    connect::{frontend_of, pick, send_to, Keep, PROCEED},
    family::{Family, V4, V6},
    maps::{count, leased, SERVICES},
    reverse,
};

#[cgroup_sock_addr(sendmsg4)]
pub fn zh_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate::<V4>(&ctx);
    PROCEED
}

/// Never a datagram to `::ffff:a.b.c.d`: udpv6_sendmsg hands those to the
/// IPv4 path, so they come through sendmsg4 (reverse.rs files them in the
/// IPv6 socket's mapped form).
#[cgroup_sock_addr(sendmsg6)]
pub fn zh_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate::<V6>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
pub fn zh_recvmsg4(ctx: SockAddrContext) -> i32 {
    if reverse::restore::<V4>(&ctx) {
        count(Counter::RepliesRestored, 1);
    }
    PROCEED
}

/// Also `::ffff:a.b.c.d` sources: an IPv6 socket's entries hold them so.
#[cgroup_sock_addr(recvmsg6)]
pub fn zh_recvmsg6(ctx: SockAddrContext) -> i32 {
    if reverse::restore::<V6>(&ctx) {
        count(Counter::RepliesRestored, 1);
    }
    PROCEED
}

/// The sendmsg hooks run for every datagram sent with an address, so what
/// is not a UDP Service frontend returns after one lookup, uncounted.
#[inline(always)]
fn translate<F: Family>(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands the hook a valid bpf_sock_addr for its duration.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(frontend) = frontend_of::<F>(sa).filter(|frontend| frontend.proto == PROTO_UDP) else {
        return;
    };
    // SAFETY: values are plain integers.
    let Some(service) = (unsafe { SERVICES.get(frontend) }).copied() else {
        return;
    };
    if !leased() {
        count(Counter::PassedLeaseLapsed, 1);
        return;
    }
    if service.endpoints == 0 {
        return;
    }
    // Session affinity, where the Service asks for it, ties every socket of
    // the client to one endpoint; otherwise each socket keeps its own.
    let keep = match service.affinity_seconds {
        0 => Keep::Socket,
        seconds => Keep::Client(seconds),
    };
    let Some(backend) = pick(ctx, frontend, service.endpoints, keep) else {
        return;
    };
    send_to::<F>(ctx, sa, &frontend, &backend.addr, backend.port, true);
    count(Counter::DatagramsTranslated, 1);
}
