//! zerohop's kernel programs.
//!
//! - `connect.rs`: cgroup connect4/connect6 hooks translate a Service frontend
//!   to one eligible endpoint (or to the waypoint, for L7 Services), and tag
//!   sockets connected to a local endpoint;
//! - `sockops.rs`: registers both ends of tagged connections in the sockhash
//!   once they are established, and files the original destination of
//!   connections sent to the waypoint;
//! - `sk_msg.rs`: moves each message of a registered socket straight into its
//!   peer's receive queue;
//! - `getsockopt.rs`: answers the waypoint's `SO_ORIGINAL_DST` with the
//!   ClusterIP:port its client dialled;
//! - `udp.rs`: cgroup sendmsg4/6 translate UDP datagrams sent without a
//!   connect, recvmsg4/6 give replies the ClusterIP:port as their source;
//! - `getpeername.rs`: answers a translated socket's `getpeername()` with
//!   the ClusterIP:port it dialled (both from `reverse.rs`);
//! - `terminate.rs`: TCP and UDP socket iterators the agent runs to
//!   terminate sockets still connected to endpoints that left their Service.
//!
//! Every hook fails open: whatever goes wrong, the connect or message proceeds
//! as it would without zerohop.
#![no_std]
#![no_main]
// Inline assembly for the kfunc call placeholder (terminate.rs).
#![feature(asm_experimental_arch)]

mod conn;
mod connect;
mod family;
mod getpeername;
mod getsockopt;
mod maps;
mod reverse;
mod sk_msg;
mod sockops;
mod tcp;
mod terminate;
mod udp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is never linked in.
    loop {}
}

/// sockhash and sk_msg helpers are only available to GPL-compatible programs.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
