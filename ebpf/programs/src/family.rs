//! The address families of the cgroup sock_addr hooks: where each keeps
//! the destination in `bpf_sock_addr`, and which waypoint serves it. The
//! connect hooks (connect.rs, udp.rs) translate through it, and reverse.rs
//! files and restores dialled addresses through it.

use aya_ebpf::bindings::bpf_sock_addr;
use zerohop_abi::{Config, FAMILY_V4, FAMILY_V6};

use crate::conn::V4_MAPPED_WORD;

/// How one address family stores the destination in `bpf_sock_addr`.
/// Accesses are single 4-byte loads and stores, the only width the verifier
/// accepts for every one of these fields.
pub(crate) trait Family {
    const FAMILY: u8;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4];
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]);
    /// The waypoint of this family (address, host-order port), if any.
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)>;
    /// The socket's own family.
    const SOCKET_FAMILY: u8 = Self::FAMILY;
    /// The destination in the socket's own form, as getpeername.rs sees it.
    fn as_stored(sa: &bpf_sock_addr) -> [u32; 4] {
        Self::destination(sa)
    }
}

pub(crate) struct V4;
pub(crate) struct V6;
/// IPv4 through an IPv6 socket: IPv4 frontends and endpoints, written
/// back in the socket's mapped form (`::ffff:a.b.c.d`).
pub(crate) struct Mapped;

impl Family for V4 {
    const FAMILY: u8 = FAMILY_V4;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        [unsafe { core::ptr::read_volatile(&sa.user_ip4) }, 0, 0, 0]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        unsafe { core::ptr::write_volatile(&mut sa.user_ip4, addr[0]) }
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        let port = config.waypoint_port_v4;
        (port != 0).then_some(([config.waypoint_v4, 0, 0, 0], port))
    }
}

impl Family for V6 {
    const FAMILY: u8 = FAMILY_V6;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        let word = |i: usize| unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) };
        [word(0), word(1), word(2), word(3)]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        for (i, word) in addr.iter().enumerate() {
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], *word) }
        }
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        let port = config.waypoint_port_v6;
        (port != 0).then_some((config.waypoint_v6, port))
    }
}

impl Family for Mapped {
    const FAMILY: u8 = FAMILY_V4;
    const SOCKET_FAMILY: u8 = FAMILY_V6;
    fn destination(sa: &bpf_sock_addr) -> [u32; 4] {
        [V6::destination(sa)[3], 0, 0, 0]
    }
    fn set_destination(sa: &mut bpf_sock_addr, addr: &[u32; 4]) {
        V6::set_destination(sa, &[0, 0, V4_MAPPED_WORD, addr[0]]);
    }
    fn waypoint(config: &Config) -> Option<([u32; 4], u16)> {
        V4::waypoint(config)
    }
    fn as_stored(sa: &bpf_sock_addr) -> [u32; 4] {
        V6::destination(sa)
    }
}
