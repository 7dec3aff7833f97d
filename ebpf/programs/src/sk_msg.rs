//! sk_msg on the sockhash: move each message into the peer's receive queue.
//!
//! Bytes must never be reordered. A message that cannot be redirected (the
//! peer is not registered yet, or is gone) goes through the stack, and from
//! then on every message of that socket does too (FALLBACK): a later message
//! redirected straight into the peer's queue could overtake one still in
//! flight through the stack.

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use zerohop_abi::Counter;

use crate::{
    conn::sock_key,
    maps::{bypass_disabled, count, FALLBACK, SOCKETS},
};

#[sk_msg]
pub fn zh_sk_msg(ctx: SkMsgContext) -> u32 {
    try_redirect(&ctx);
    // The verdict is SK_PASS either way: with a redirect set by the helper it
    // means "deliver to the peer", without one "send through the stack".
    SK_PASS
}

#[inline(always)]
fn try_redirect(ctx: &SkMsgContext) {
    if bypass_disabled() {
        return;
    }
    // SAFETY: valid context for the duration of the hook.
    let Some(key) = sock_key(unsafe { &*ctx.msg }) else {
        return;
    };
    if unsafe { FALLBACK.get(key) }.is_some() {
        return;
    }
    let size = ctx.size();
    if SOCKETS.redirect_msg(ctx, key.peer(), u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(Counter::MsgRedirected, 1);
        count(Counter::BytesRedirected, u64::from(size));
    } else {
        count(Counter::RedirectMiss, 1);
        if FALLBACK.insert(key, 0, 0).is_err() {
            count(Counter::MapFull, 1);
        }
    }
}
