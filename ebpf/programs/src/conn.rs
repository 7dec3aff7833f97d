//! The 4-tuple of a connection end, read the same way from the sock_ops and
//! sk_msg contexts, whose connection fields share names and byte orders, and
//! from a `bpf_sock` (the socket of a sockopt context), whose fields differ.

use aya_ebpf::bindings::{bpf_sock, bpf_sock_ops, sk_msg_md};
use zerohop_abi::{SockKey, FAMILY_V4, FAMILY_V6};

/// Connection fields of a program context. Each read is one 4-byte load:
/// the verifier rejects wider loads from these context fields, which LLVM
/// would otherwise merge adjacent reads into.
pub trait ConnFields {
    fn family(&self) -> u32;
    fn local_ip4(&self) -> u32;
    fn remote_ip4(&self) -> u32;
    fn local_ip6(&self, word: usize) -> u32;
    fn remote_ip6(&self, word: usize) -> u32;
    /// Host byte order.
    fn local_port(&self) -> u32;
    /// Network byte order in the upper 16 bits: the kernel loads the 16-bit
    /// port and shifts it left by 16 on little-endian machines.
    fn remote_port_raw(&self) -> u32;
}

macro_rules! conn_fields {
    ($ctx:ty) => {
        impl ConnFields for $ctx {
            fn family(&self) -> u32 {
                unsafe { core::ptr::read_volatile(&self.family) }
            }
            fn local_ip4(&self) -> u32 {
                unsafe { core::ptr::read_volatile(&self.local_ip4) }
            }
            fn remote_ip4(&self) -> u32 {
                unsafe { core::ptr::read_volatile(&self.remote_ip4) }
            }
            fn local_ip6(&self, word: usize) -> u32 {
                unsafe { core::ptr::read_volatile(&self.local_ip6[word]) }
            }
            fn remote_ip6(&self, word: usize) -> u32 {
                unsafe { core::ptr::read_volatile(&self.remote_ip6[word]) }
            }
            fn local_port(&self) -> u32 {
                unsafe { core::ptr::read_volatile(&self.local_port) }
            }
            fn remote_port_raw(&self) -> u32 {
                unsafe { core::ptr::read_volatile(&self.remote_port) }
            }
        }
    };
}

conn_fields!(bpf_sock_ops);
conn_fields!(sk_msg_md);

/// `struct bpf_sock`: `src_*` is the local end, `dst_*` the remote one.
/// Same 4-byte loads, except `dst_port`: a `__be16` followed by padding,
/// read with the 2-byte load its type asks for.
impl ConnFields for bpf_sock {
    fn family(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.family) }
    }
    fn local_ip4(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.src_ip4) }
    }
    fn remote_ip4(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.dst_ip4) }
    }
    fn local_ip6(&self, word: usize) -> u32 {
        unsafe { core::ptr::read_volatile(&self.src_ip6[word]) }
    }
    fn remote_ip6(&self, word: usize) -> u32 {
        unsafe { core::ptr::read_volatile(&self.dst_ip6[word]) }
    }
    /// `src_port` is host byte order, like sock_ops' `local_port`.
    fn local_port(&self) -> u32 {
        unsafe { core::ptr::read_volatile(&self.src_port) }
    }
    /// `dst_port` is network byte order in 16 bits: moved to the upper half
    /// to match the sock_ops layout [`sock_key`] decodes.
    fn remote_port_raw(&self) -> u32 {
        u32::from(unsafe { core::ptr::read_volatile(&self.dst_port) }) << 16
    }
}

/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), loaded as the
/// kernel stores it: bytes `00 00 ff ff`, read little-endian.
pub const V4_MAPPED_WORD: u32 = u32::from_le_bytes([0, 0, 0xff, 0xff]);

/// The connection end as a sockhash key, or `None` for a non-IP socket.
///
/// An IPv4 connection on an IPv6 socket (a dual-stack listener's accepted
/// socket, or a client that dialled `::ffff:a.b.c.d`) gets the IPv4 key:
/// its other end may be a plain IPv4 socket, and both ends must compute the
/// same key for one to find the other.
#[inline(always)]
pub fn sock_key<C: ConnFields>(ctx: &C) -> Option<SockKey> {
    let family = ctx.family();
    let (family, local_addr, remote_addr) = if family == u32::from(FAMILY_V4) {
        (
            family,
            [ctx.local_ip4(), 0, 0, 0],
            [ctx.remote_ip4(), 0, 0, 0],
        )
    } else if family == u32::from(FAMILY_V6) {
        let local = [
            ctx.local_ip6(0),
            ctx.local_ip6(1),
            ctx.local_ip6(2),
            ctx.local_ip6(3),
        ];
        let remote = [
            ctx.remote_ip6(0),
            ctx.remote_ip6(1),
            ctx.remote_ip6(2),
            ctx.remote_ip6(3),
        ];
        match (v4_mapped(&local), v4_mapped(&remote)) {
            (Some(local), Some(remote)) => {
                (u32::from(FAMILY_V4), [local, 0, 0, 0], [remote, 0, 0, 0])
            }
            _ => (family, local, remote),
        }
    } else {
        return None;
    };
    Some(SockKey {
        local_addr,
        remote_addr,
        local_port: ctx.local_port(),
        remote_port: u32::from(u16::from_be((ctx.remote_port_raw() >> 16) as u16)),
        family,
    })
}

/// The IPv4 address (network byte order, as `local_ip4`) of an IPv4-mapped
/// IPv6 address, or `None` for any other IPv6 address.
#[inline(always)]
pub fn v4_mapped(addr: &[u32; 4]) -> Option<u32> {
    (addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD).then_some(addr[3])
}
