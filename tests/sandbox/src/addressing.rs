//! The sandbox's address plan, written once for both address families.
//!
//! | what                   | IPv4              | IPv6                  |
//! |------------------------|-------------------|-----------------------|
//! | node `i` on the wire   | 10.0.0.i/24       | fd00:0:0:ffff::i/64   |
//! | pods of node `i`       | 10.244.i.0/24     | fd00:244:i::/64       |
//! | pod `k` of node `i`    | 10.244.i.(k+1)/32 | fd00:244:i::(k+1)/128 |
//! | pod default gateway    | 169.254.1.1       | fe80::1               |
//!
//! (`i` and `k + 1` are written in hex in IPv6 text, the same digits below 10.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family; every address of the plan is a function of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Prefix length of one host (32 or 128).
    pub fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Node `node`'s address on the wire between nodes, with its prefix length.
    pub fn node_addr(self, node: usize) -> (IpAddr, u8) {
        let node = u8::try_from(node).expect("node number fits in a byte");
        match self {
            Family::V4 => (Ipv4Addr::new(10, 0, 0, node).into(), 24),
            Family::V6 => (
                Ipv6Addr::new(0xfd00, 0, 0, 0xffff, 0, 0, 0, node.into()).into(),
                64,
            ),
        }
    }

    /// The pod subnet of node `node`, with its prefix length.
    pub fn pod_subnet(self, node: usize) -> (IpAddr, u8) {
        self.pod_addr_raw(node, 0)
    }

    /// Address of the `k`-th pod (from 1) of node `node`: host number `k + 1`,
    /// as `.1` is traditionally the subnet's gateway.
    pub fn pod_addr(self, node: usize, k: usize) -> IpAddr {
        self.pod_addr_raw(node, k + 1).0
    }

    fn pod_addr_raw(self, node: usize, host: usize) -> (IpAddr, u8) {
        let node = u8::try_from(node).expect("node number fits in a byte");
        let host = u8::try_from(host).expect("at most 253 pods per node");
        match self {
            Family::V4 => (Ipv4Addr::new(10, 244, node, host).into(), 24),
            Family::V6 => (
                Ipv6Addr::new(0xfd00, 0x244, node.into(), 0, 0, 0, 0, host.into()).into(),
                64,
            ),
        }
    }

    /// The pods' default gateway: an address no interface has, answered by the
    /// static neighbour entry pointing at the host-side veth (Calico's trick, so
    /// that every packet of a pod is routed by its node).
    pub fn gateway(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(169, 254, 1, 1).into(),
            Family::V6 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
        }
    }

    /// `-4` or `-6`, for `ip`.
    pub(crate) fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// `iptables-restore` or `ip6tables-restore`.
    pub(crate) fn iptables_restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// `addr/len` as `ip` and iptables write it.
pub(crate) fn cidr((addr, len): (IpAddr, u8)) -> String {
    format!("{addr}/{len}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_table() {
        assert_eq!(Family::V4.pod_addr(1, 1).to_string(), "10.244.1.2");
        assert_eq!(Family::V6.pod_addr(1, 1).to_string(), "fd00:244:1::2");
        assert_eq!(cidr(Family::V6.pod_subnet(2)), "fd00:244:2::/64");
        assert_eq!(cidr(Family::V4.node_addr(2)), "10.0.0.2/24");
        assert_eq!(cidr(Family::V6.node_addr(2)), "fd00:0:0:ffff::2/64");
        assert_eq!(Family::V6.gateway().to_string(), "fe80::1");
    }
}
