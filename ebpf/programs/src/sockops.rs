//! sockops: register both ends of connections the connect hook tagged.
//!
//! The connecting end establishes first (on the SYN-ACK) and only then sends
//! the ACK that establishes the accepting end. So the connecting end, when it
//! finds its tag, announces the accepting end in PENDING, with the
//! connection's id (its own socket cookie); the accepting end registers
//! itself when it finds that announcement. Sockets of any other connection on
//! the node are never registered.
//!
//! An accepting end does not register when its client's first message
//! already went through the stack (see sk_msg.rs); the client's end leaves
//! the sockhash then.
//!
//! Registering an end files its ENDS entry (what it has read so far, which
//! its peer checks before redirecting, see sk_msg.rs) before it enters the
//! sockhash: a peer that can redirect to it can also find that entry.
//!
//! Connections the connect hook sent to the waypoint also leave their
//! original destination for the waypoint's end here (ORIGDST, read by
//! getsockopt.rs), whether or not they are tagged for the bypass.
//!
//! A translated connection's REVERSE entry (reverse.rs) leaves when the
//! connection closes: its connecting end asks for state callbacks here.

use aya_ebpf::{
    bindings::{
        bpf_sock_ops, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use zerohop_abi::{Counter, End, Pending, SockKey, END_STACKED};

use crate::{
    conn::sock_key,
    maps::{count, unregister, DIALED, ENDS, ORIGDST, PENDING, REVERSE, SOCKETS, TAGGED},
    reverse, tcp,
};

#[sock_ops]
pub fn zh_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_connecting_end_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepting_end_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            // The remote end is still the one connected to: the kernel
            // clears it only after this callback.
            if let Some(key) = reverse::key_of_connection(unsafe { &*ctx.ops }, cookie) {
                let _ = REVERSE.remove(key);
            }
        }
        _ => {}
    }
    // sockops return values only matter for ops that ask for a reply.
    1
}

/// `TCP_CLOSE` (include/net/tcp_states.h): every socket's last state,
/// also when it leaves a `TIME_WAIT` socket behind.
const TCP_CLOSE: u32 = 7;

#[inline(always)]
fn on_connecting_end_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let translated = reverse::key_of_connection(unsafe { &*ctx.ops }, cookie)
        .is_some_and(|key| REVERSE.get_ptr(key).is_some());
    if translated {
        // Its REVERSE entry goes when it closes (see zh_sockops).
        // Only the state callbacks: no other callback flag is ever set.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
    // Copied out: the entry is removed below.
    let dialed = unsafe { DIALED.get(cookie) }.copied();
    let tagged = unsafe { TAGGED.get(cookie) }.copied();
    if dialed.is_none() && tagged.is_none() {
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
    let Some(frontend) = tagged else {
        return;
    };
    let _ = TAGGED.remove(cookie);
    let Some(key) = key else {
        return;
    };
    let pending = Pending {
        conn: cookie,
        frontend,
        _pad: 0,
    };
    if PENDING.insert(key.peer(), pending, 0).is_err() {
        count(Counter::MapFull, 1);
        return;
    }
    register(ctx.ops, key, &pending);
}

#[inline(always)]
fn on_accepting_end_established(ctx: &SockOpsContext) {
    let Some(key) = sock_key(unsafe { &*ctx.ops }) else {
        return;
    };
    // Copied out: the entry is removed below.
    let Some(pending) = (unsafe { PENDING.get(key) }).copied() else {
        return;
    };
    let _ = PENDING.remove(key);
    // The client's first message beat this registration and went through
    // the stack: the whole connection stays there. Its end leaves the
    // sockhash now, safely, as nothing was ever redirected to it (this end,
    // the only one that could, was never registered); its sends take plain
    // TCP from here on. Registering instead would leave it on the stack
    // anyway until this end had answered, and for good if it never sends.
    let client = key.peer();
    let stacked = unsafe { ENDS.get(client) }
        .is_some_and(|end| end.conn == pending.conn && end.flags & END_STACKED != 0);
    if stacked {
        unregister(&client);
        let _ = ENDS.remove(client);
        count(Counter::ConnsKeptOff, 1);
        return;
    }
    register(ctx.ops, key, &pending);
}

/// Files the end's ENDS entry, then puts it in the sockhash. An end whose
/// sequence numbers cannot be read is not registered: its peer could never
/// check it, so the connection stays on the stack.
#[inline(always)]
fn register(ops: *mut bpf_sock_ops, mut key: SockKey, pending: &Pending) {
    // SAFETY: `ops` is the hook's own context; `sk` is its socket (the
    // verifier types it maybe-null, tcp::seqs checks).
    let Some(seqs) = tcp::seqs(unsafe { (*ops).__bindgen_anon_2.sk }) else {
        return;
    };
    // A recycled 4-tuple starts afresh, whatever its predecessor did.
    let end = End {
        conn: pending.conn,
        read_upto: seqs.copied,
        flags: 0,
        frontend: pending.frontend,
        msgs: 0,
    };
    if ENDS.insert(key, end, 0).is_err() {
        count(Counter::MapFull, 1);
        return;
    }
    // SAFETY: `ops` is the hook's own context.
    if SOCKETS
        .update(&mut key, unsafe { &mut *ops }, u64::from(BPF_ANY))
        .is_err()
    {
        count(Counter::MapFull, 1);
    }
}
