//! sockops: register both ends of connections the connect hook tagged.
//!
//! The connecting end establishes first (on the SYN-ACK) and only then sends
//! the ACK that establishes the accepting end. So the connecting end, when it
//! finds its tag, announces the accepting end in PENDING; the accepting end
//! registers itself when it finds that announcement. Sockets of any other
//! connection on the node are never registered.
//!
//! Connections the connect hook sent to the waypoint also leave their
//! original destination for the waypoint's end here (ORIGDST, read by
//! getsockopt.rs), whether or not they are tagged for the bypass.

use aya_ebpf::{
    bindings::{
        bpf_sock_ops, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use zerohop_abi::{Counter, SockKey};

use crate::{
    conn::sock_key,
    maps::{count, DIALED, FALLBACK, ORIGDST, PENDING, SOCKETS, TAGGED},
};

#[sock_ops]
pub fn zh_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_connecting_end_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepting_end_established(&ctx),
        _ => {}
    }
    // sockops return values only matter for ops that ask for a reply.
    1
}

#[inline(always)]
fn on_connecting_end_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // Copied out: the entry is removed below.
    let dialed = unsafe { DIALED.get(cookie) }.copied();
    let tagged = unsafe { TAGGED.get(cookie) }.is_some();
    if dialed.is_none() && !tagged {
        return;
    }
    // SAFETY: valid context for the duration of the hook.
    let key = sock_key(unsafe { &*ctx.ops });
    if let Some(frontend) = dialed {
        let _ = DIALED.remove(cookie);
        // Filed before the waypoint's end is established (that needs the
        // ACK this end sends after this hook), so before it can accept and
        // ask. A miss only leaves that connection without an answer.
        if let Some(key) = key {
            if ORIGDST.insert(key.peer(), frontend, 0).is_err() {
                count(Counter::MapFull, 1);
            }
        }
    }
    if !tagged {
        return;
    }
    let _ = TAGGED.remove(cookie);
    let Some(key) = key else {
        return;
    };
    if PENDING.insert(key.peer(), 0, 0).is_err() {
        count(Counter::MapFull, 1);
        return;
    }
    register(ctx.ops, key);
}

#[inline(always)]
fn on_accepting_end_established(ctx: &SockOpsContext) {
    let Some(key) = sock_key(unsafe { &*ctx.ops }) else {
        return;
    };
    if unsafe { PENDING.get(key) }.is_none() {
        return;
    }
    let _ = PENDING.remove(key);
    register(ctx.ops, key);
}

#[inline(always)]
fn register(ops: *mut bpf_sock_ops, mut key: SockKey) {
    // A recycled 4-tuple starts afresh, whatever its predecessor did.
    let _ = FALLBACK.remove(key);
    // SAFETY: `ops` is the hook's own context.
    if SOCKETS
        .update(&mut key, unsafe { &mut *ops }, u64::from(BPF_ANY))
        .is_err()
    {
        count(Counter::MapFull, 1);
    }
}
