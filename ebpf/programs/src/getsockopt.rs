//! cgroup getsockopt: `SO_ORIGINAL_DST` for the waypoint.
//!
//! Envoy-style proxies behind an iptables REDIRECT learn where a connection
//! was going with getsockopt(SOL_IP, SO_ORIGINAL_DST) (IPv6: SOL_IPV6,
//! IP6T_SO_ORIGINAL_DST), which the kernel answers from conntrack. zerohop
//! rewrites the destination at connect time instead, so conntrack only knows
//! the waypoint's own address, or nothing (ENOENT; ENOPROTOOPT without
//! nf_conntrack). The answer comes from ORIGDST, which sockops filled when
//! the client's end of the connection was established: the waypoint needs
//! no zerohop-specific code.
//!
//! Fail open: every other option, socket or miss keeps the kernel's answer,
//! and no getsockopt is ever failed.

use aya_ebpf::{bindings::bpf_sock, macros::cgroup_sockopt, programs::SockoptContext};
use zerohop_abi::{FrontendKey, FAMILY_V4, FAMILY_V6, PROTO_TCP};

use crate::{conn::sock_key, maps::ORIGDST};

/// `SOL_IP`, the level of IPv4's SO_ORIGINAL_DST.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`, the level of IPv6's IP6T_SO_ORIGINAL_DST.
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h) share the number.
const SO_ORIGINAL_DST: i32 = 80;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;

/// Return value that lets the getsockopt return what the context now says
/// (0 would fail it with EPERM).
const PROCEED: i32 = 1;

#[cgroup_sockopt(getsockopt)]
pub fn zh_getsockopt(ctx: SockoptContext) -> i32 {
    answer_original_dst(&ctx);
    PROCEED
}

#[inline(always)]
fn answer_original_dst(ctx: &SockoptContext) {
    // SAFETY: the kernel hands the hook a valid bpf_sockopt for its duration.
    let opt = unsafe { &mut *ctx.sockopt };
    // Every getsockopt of the cgroup comes through here: the option is
    // checked first, before any other load or lookup.
    let level = unsafe { core::ptr::read_volatile(&opt.level) };
    let optname = unsafe { core::ptr::read_volatile(&opt.optname) };
    let family = match (level, optname) {
        (SOL_IP, SO_ORIGINAL_DST) => FAMILY_V4,
        (SOL_IPV6, SO_ORIGINAL_DST) => FAMILY_V6,
        _ => return,
    };
    // SAFETY: the sockopt context's `sk` is the socket asked, never null
    // (the verifier types it PTR_TO_SOCKET); 8-byte load of the pointer.
    let sk: &bpf_sock = unsafe { &*core::ptr::read_volatile(&opt.__bindgen_anon_1.sk) };
    // SockKey has no protocol: a UDP socket must not find a TCP entry.
    if unsafe { core::ptr::read_volatile(&sk.protocol) } != u32::from(PROTO_TCP) {
        return;
    }
    let Some(key) = sock_key(sk) else {
        return;
    };
    // Copied out: the entry may be replaced under us by a recycled 4-tuple.
    let Some(frontend) = (unsafe { ORIGDST.get(key) }).copied() else {
        return;
    };
    // The level asks for one family's sockaddr; a frontend of the other
    // family cannot be written in it.
    if frontend.family != family {
        return;
    }
    // optval..optval_end is the kernel's copy of the caller's buffer
    // (optlen bytes, at most a page), copied back to the caller afterwards.
    let start = unsafe { core::ptr::read_volatile(&opt.__bindgen_anon_2.optval) } as usize;
    let end = unsafe { core::ptr::read_volatile(&opt.__bindgen_anon_3.optval_end) } as usize;
    let written = if family == FAMILY_V4 {
        write_sockaddr_in(start, end, &frontend)
    } else {
        write_sockaddr_in6(start, end, &frontend)
    };
    let Some(len) = written else {
        // A buffer too small for the answer keeps the kernel's own.
        return;
    };
    // Overrides the kernel's error (ENOENT, ENOPROTOOPT) or answer.
    unsafe {
        core::ptr::write_volatile(&mut opt.optlen, len as i32);
        core::ptr::write_volatile(&mut opt.retval, 0);
    }
}

/// Writes `struct sockaddr_in { u16 family (host order); be16 port; be32
/// addr; u8 zero[8] }` at `start`, if it fits before `end`.
#[inline(always)]
fn write_sockaddr_in(start: usize, end: usize, frontend: &FrontendKey) -> Option<usize> {
    // The comparison the verifier needs before any store through optval.
    if start + SOCKADDR_IN_LEN > end {
        return None;
    }
    // SAFETY: the 16 bytes at `start` are inside the optval buffer (checked
    // above); the buffer is kmalloc'ed, so these offsets are aligned.
    unsafe {
        core::ptr::write_volatile(start as *mut u16, u16::from(FAMILY_V4));
        core::ptr::write_volatile((start + 2) as *mut u16, frontend.port.to_be());
        core::ptr::write_volatile((start + 4) as *mut u32, frontend.addr[0]);
        core::ptr::write_volatile((start + 8) as *mut u64, 0);
    }
    Some(SOCKADDR_IN_LEN)
}

/// Writes `struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo;
/// u8 addr[16]; u32 scope_id }` at `start`, if it fits before `end`.
#[inline(always)]
fn write_sockaddr_in6(start: usize, end: usize, frontend: &FrontendKey) -> Option<usize> {
    if start + SOCKADDR_IN6_LEN > end {
        return None;
    }
    // SAFETY: as in write_sockaddr_in, for 28 bytes.
    unsafe {
        core::ptr::write_volatile(start as *mut u16, u16::from(FAMILY_V6));
        core::ptr::write_volatile((start + 2) as *mut u16, frontend.port.to_be());
        core::ptr::write_volatile((start + 4) as *mut u32, 0);
        for (i, word) in frontend.addr.iter().enumerate() {
            core::ptr::write_volatile((start + 8 + 4 * i) as *mut u32, *word);
        }
        core::ptr::write_volatile((start + 24) as *mut u32, 0);
    }
    Some(SOCKADDR_IN6_LEN)
}
