//! sk_msg on the sockhash: move each message into the peer's receive queue.
//!
//! Bytes must reach the reader in the order they were written. The reader's
//! `tcp_bpf_recvmsg` takes redirected bytes before those the stack
//! delivered, so an end that sent anything through the stack (its peer was
//! not registered yet, as when a client writes right after connect; the
//! bypass was off; TCP Fast Open data) may redirect again only once its peer
//! has read every one of those bytes. Each end publishes how far it has read
//! (its `copied_seq`) in its ENDS entry whenever it sends; an end checks its
//! peer's against its own `write_seq` before its first redirect after any
//! message that went through the stack. Going the other way, from redirect
//! to the stack, never reorders: the reader drains redirected bytes first.
//!
//! Such an end joins the bypass at its next message once the peer has read
//! and, in request/response protocols, answered it. An end whose message
//! went through the stack because its peer was not registered yet is the
//! exception: see [`may_redirect`].

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use zerohop_abi::{
    Counter, End, SockKey, BYTES_PER_MSG_COUNT, END_REDIRECTED, END_SENT, END_STACKED,
    END_VERIFIED, LONG_MSGS,
};

use crate::{
    conn::sock_key,
    maps::{bypass_disabled, count, count_traffic, ENDS, SOCKETS},
    tcp,
};

#[sk_msg]
pub fn zh_sk_msg(ctx: SkMsgContext) -> u32 {
    if !try_redirect(&ctx) {
        count(Counter::RedirectMiss, 1);
        count(Counter::BytesPassed, u64::from(ctx.size()));
    }
    // The verdict is SK_PASS either way: with a redirect set by the helper it
    // means "deliver to the peer", without one "send through the stack".
    SK_PASS
}

/// Redirects the message when order allows; false: it goes through the stack.
#[inline(always)]
fn try_redirect(ctx: &SkMsgContext) -> bool {
    // SAFETY: valid context for the duration of the hook.
    let msg = unsafe { &*ctx.msg };
    let Some(key) = sock_key(msg) else {
        return false;
    };
    // Every socket in the sockhash got its entry when it was registered; an
    // entry the LRU evicted leaves the connection on the stack.
    let Some(end) = ENDS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: map value of this socket's entry; only this socket's programs
    // write it, and its sends are serialised by the socket lock.
    let end = unsafe { &mut *end };
    let Some(seqs) = tcp::seqs(unsafe { msg.__bindgen_anon_3.sk }) else {
        end.flags &= !END_VERIFIED;
        return false;
    };
    // Published for the peer's check, whether or not this message redirects.
    end.read_upto = seqs.copied;
    if end.flags & END_SENT == 0 {
        end.flags |= END_SENT;
        count_once_per_connection(end, &key, END_SENT, Counter::ConnsSent);
    }
    let size = ctx.size();
    // How long the connection is, for the agent's bypass policy: one count
    // per end that reaches LONG_MSGS, a message counting one more for each
    // BYTES_PER_MSG_COUNT it carries (the bypass saves per message and per
    // byte, so a few large writes gain as much as many small ones).
    if end.msgs < LONG_MSGS {
        let weight = 1 + size / BYTES_PER_MSG_COUNT;
        end.msgs = end.msgs.saturating_add(weight).min(LONG_MSGS);
        if end.msgs == LONG_MSGS {
            count_traffic(&end.frontend, |traffic| &mut traffic.long_ends);
        }
    }
    if bypass_disabled() || !(may_redirect(end, &key, seqs.write)) {
        end.flags &= !END_VERIFIED;
        return false;
    }
    if SOCKETS.redirect_msg(ctx, key.peer(), u64::from(BPF_F_INGRESS)) != i64::from(SK_PASS) {
        // The peer is gone (or not registered yet): through the stack.
        end.flags &= !END_VERIFIED;
        return false;
    }
    if end.flags & END_REDIRECTED == 0 {
        end.flags |= END_REDIRECTED;
        count_once_per_connection(end, &key, END_REDIRECTED, Counter::ConnsBypassed);
    }
    count(Counter::MsgRedirected, 1);
    count(Counter::BytesRedirected, u64::from(size));
    true
}

/// Counts `counter` when this end just set `flag` and its peer has not:
/// once per connection (two ends setting it at the same instant on two
/// CPUs may both count; rare, and only a counter).
#[inline(always)]
fn count_once_per_connection(end: &End, key: &SockKey, flag: u32, counter: Counter) {
    let peer_has_it = unsafe { ENDS.get(key.peer()) }
        .is_some_and(|peer| peer.conn == end.conn && peer.flags & flag != 0);
    if !peer_has_it {
        count(counter, 1);
    }
}

/// Whether every byte this end sent through the stack has been read by its
/// peer (checked once, then remembered until a message goes through the
/// stack again).
///
/// A peer that has no entry is not registered yet: this end's message beat
/// the accepting end's registration (a client writing right after
/// connect()). It is marked, and the accepting end, when it establishes,
/// hands the whole connection to the stack instead of registering (see
/// sockops.rs): that connection could join the bypass only if its server
/// ever sent, and stays cheaper on plain TCP than half registered.
#[inline(always)]
fn may_redirect(end: &mut End, key: &SockKey, write_seq: u32) -> bool {
    if end.flags & END_VERIFIED != 0 {
        return true;
    }
    // SAFETY: plain integers; the peer updates `read_upto` with single
    // 4-byte stores, so a read sees an old or a new value, both valid.
    let Some(peer) = (unsafe { ENDS.get(key.peer()) }).filter(|peer| peer.conn == end.conn) else {
        if end.flags & END_REDIRECTED == 0 {
            end.flags |= END_STACKED;
        }
        return false;
    };
    let caught_up = peer.read_upto == write_seq;
    if caught_up {
        end.flags |= END_VERIFIED;
    }
    caught_up
}
