//! TCP and UDP socket iterators that terminate stale sockets: those the
//! hooks sent to an endpoint that has since left its Service.
//!
//! A connection keeps the endpoint its connect was translated to. Through
//! kube-proxy, the cluster flushes conntrack entries of deleted UDP
//! endpoints, and a client then resolves the Service again; here nothing
//! would ever move such a socket, so a connected UDP client (or a long TCP
//! connection) would talk to a dead address forever. When endpoints leave,
//! the agent files them in GONE and reads these iterators in every network
//! namespace of its cgroup's pods; each socket that the hooks sent from a
//! frontend to one of them is terminated with `bpf_sock_destroy`: its
//! owner sees ECONNABORTED (a TCP peer gets a reset) and connects again,
//! through the hooks, to a live endpoint.
//!
//! Only sockets with a reverse entry (reverse.rs) are candidates: those the
//! hooks translated, never a server's or a socket that dialled a pod IP.
//! The kernel calls the program once per socket of the namespace, holding
//! the socket's lock, as `bpf_sock_destroy` requires.

use zerohop_abi::{
    kfunc, Counter, Dialled, FrontendEndpoint, FrontendKey, ReverseKey, FAMILY_V4, FAMILY_V6,
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    conn::v4_mapped,
    maps::{count, GONE, REVERSE},
};

// Byte offsets in `struct sock_common`, set by the agent from the running
// kernel's BTF like tcp.rs's: the verifier sees constants and checks each
// read against the same BTF. 0 until set; a zero `skc_family` offset is
// never the real one (the address pair comes first), so it means unset.
#[unsafe(no_mangle)]
static ZH_SKC_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static ZH_SKC_DPORT: u32 = 0;
#[unsafe(no_mangle)]
static ZH_SKC_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static ZH_SKC_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static ZH_SKC_COOKIE: u32 = 0;

/// `iter/tcp`: context `struct bpf_iter__tcp { meta; sk_common; uid }`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn zh_terminate_tcp(ctx: *mut core::ffi::c_void) -> i32 {
    terminate(ctx, PROTO_TCP);
    0
}

/// `iter/udp`: context `struct bpf_iter__udp { meta; udp_sk; uid; bucket }`;
/// a `udp_sock` starts with its `sock_common`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub fn zh_terminate_udp(ctx: *mut core::ffi::c_void) -> i32 {
    terminate(ctx, PROTO_UDP);
    0
}

#[inline(always)]
fn terminate(ctx: *mut core::ffi::c_void, proto: u8) {
    // Both contexts hold the socket right after `meta`; null at the end of
    // the walk.
    let sk = unsafe { core::ptr::read_volatile(ctx.cast::<*const u8>().add(1)) };
    if sk.is_null() {
        return;
    }
    let Some(gone) = gone_key(sk, proto) else {
        return;
    };
    // SAFETY: a value of 1 only marks presence.
    if unsafe { GONE.get(gone) }.is_none() {
        return;
    }
    // SAFETY: `sk` is the iterator's socket, trusted and locked for this call.
    if unsafe { sock_destroy(sk) } == 0 {
        count(Counter::SocketsTerminated, 1);
    } else {
        count(Counter::SocketsLeftStale, 1);
    }
}

/// The frontend `sk` dialled and the endpoint the hooks sent it to, in
/// frontend form (an IPv6 socket's `::ffff:a.b.c.d` as IPv4), or `None`
/// when the hooks did not translate it.
#[inline(always)]
fn gone_key(sk: *const u8, proto: u8) -> Option<FrontendEndpoint> {
    let at = |offset: &u32| unsafe { core::ptr::read_volatile(offset) } as usize;
    let family_at = at(&ZH_SKC_FAMILY);
    if family_at == 0 {
        return None;
    }
    // SAFETY: every offset is that of a field of sock_common of the given
    // size in this kernel's BTF; the verifier rejects the program otherwise.
    let read_u32 =
        |offset: usize| unsafe { core::ptr::read_volatile(sk.add(offset).cast::<u32>()) };
    let family = unsafe { core::ptr::read_volatile(sk.add(family_at).cast::<u16>()) };
    let port = unsafe { core::ptr::read_volatile(sk.add(at(&ZH_SKC_DPORT)).cast::<u16>()) };
    let cookie = unsafe { core::ptr::read_volatile(sk.add(at(&ZH_SKC_COOKIE)).cast::<u64>()) };
    let addr = if family == u16::from(FAMILY_V4) {
        [read_u32(at(&ZH_SKC_DADDR)), 0, 0, 0]
    } else if family == u16::from(FAMILY_V6) {
        let v6 = at(&ZH_SKC_V6_DADDR);
        [
            read_u32(v6),
            read_u32(v6 + 4),
            read_u32(v6 + 8),
            read_u32(v6 + 12),
        ]
    } else {
        return None;
    };
    let key = ReverseKey {
        cookie,
        addr,
        port: u32::from(port),
        family: u32::from(family),
    };
    // SAFETY: values are plain integers.
    let dialled: Dialled = *unsafe { REVERSE.get(key) }?;
    let (family, addr, dialled_addr) = match (v4_mapped(&addr), v4_mapped(&dialled.addr)) {
        (Some(addr), Some(dialled)) => (FAMILY_V4, [addr, 0, 0, 0], [dialled, 0, 0, 0]),
        _ => (family as u8, addr, dialled.addr),
    };
    Some(FrontendEndpoint {
        frontend: FrontendKey {
            addr: dialled_addr,
            port: u16::from_be(dialled.port as u16),
            proto,
            family,
        },
        addr,
        port: u16::from_be(port),
        _pad: 0,
    })
}

/// `bpf_sock_destroy(sk)`: 0 when the socket was terminated. The call is a
/// placeholder the agent binds to the kfunc at load time, or replaces with
/// `-EOPNOTSUPP` on kernels without it (see `zerohop_abi::kfunc`).
#[inline(always)]
unsafe fn sock_destroy(sk: *const u8) -> i64 {
    let ret: i64;
    core::arch::asm!(
        "call {kfunc}",
        kfunc = const kfunc::SOCK_DESTROY,
        inlateout("r1") sk => _,
        lateout("r0") ret,
        lateout("r2") _,
        lateout("r3") _,
        lateout("r4") _,
        lateout("r5") _,
    );
    ret
}
