//! IP addresses as zerohop's BPF maps store them.
//!
//! The kernel hands the programs addresses in network byte order, as `u32`
//! words read straight from memory. So the words are built from the address
//! octets with the *native* byte order of this machine (the same bytes in the
//! same place), not with `u32::from(Ipv4Addr)` which would give a host-order
//! number. IPv4 fills `addr[0]` and leaves the other words zero; IPv6 fills
//! all four words, octets `4i..4i+4` in `addr[i]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zerohop_abi::{FAMILY_V4, FAMILY_V6};

use crate::model::Family;

/// A family code other than `AF_INET` or `AF_INET6` was found in a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown address family {0} (expected {FAMILY_V4} for IPv4 or {FAMILY_V6} for IPv6)")]
pub struct UnknownFamily(pub u8);

/// The kernel's family code (`AF_INET` / `AF_INET6`) for a family.
pub fn family_code(family: Family) -> u8 {
    match family {
        Family::V4 => FAMILY_V4,
        Family::V6 => FAMILY_V6,
    }
}

/// Converts an address to the map layout: its words and family code.
pub fn to_kernel(address: IpAddr) -> ([u32; 4], u8) {
    let mut octets = [0u8; 16];
    match address {
        IpAddr::V4(v4) => octets[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => octets = v6.octets(),
    }
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    (words, family_code(Family::of(&address)))
}

/// Converts words and a family code read from a map back to an address.
/// The unused words of an IPv4 address are not checked.
pub fn from_kernel(words: [u32; 4], family: u8) -> Result<IpAddr, UnknownFamily> {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    match family {
        FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::new(
            octets[0], octets[1], octets[2], octets[3],
        ))),
        FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(octets))),
        other => Err(UnknownFamily(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_fills_the_first_word_with_octets_in_memory_order() {
        let (words, family) = to_kernel(ip("10.96.0.1"));
        assert_eq!(family, FAMILY_V4);
        assert_eq!(words[0].to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(&words[1..], &[0, 0, 0]);
        // Network byte order: the same bits as the big-endian number.
        assert_eq!(u32::from_be(words[0]), 0x0a60_0001);
    }

    #[test]
    fn ipv6_fills_four_words_in_memory_order() {
        let (words, family) = to_kernel(ip("fd00:96::1:10"));
        assert_eq!(family, FAMILY_V6);
        assert_eq!(words[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x96]);
        assert_eq!(words[1], 0);
        assert_eq!(words[2], 0);
        assert_eq!(words[3].to_ne_bytes(), [0x00, 0x01, 0x00, 0x10]);
    }

    #[test]
    fn round_trips_both_families() {
        for text in [
            "0.0.0.0",
            "10.244.1.2",
            "255.255.255.255",
            "::",
            "fd00:244:1::2",
            "::ffff:10.0.0.1",
        ] {
            let address = ip(text);
            let (words, family) = to_kernel(address);
            assert_eq!(from_kernel(words, family), Ok(address), "{text}");
        }
    }

    #[test]
    fn an_ipv4_mapped_ipv6_address_stays_ipv6() {
        let (_, family) = to_kernel(ip("::ffff:10.0.0.1"));
        assert_eq!(family, FAMILY_V6);
    }

    #[test]
    fn unknown_family_is_an_error() {
        let error = from_kernel([0; 4], 7).unwrap_err();
        assert_eq!(error, UnknownFamily(7));
        assert!(error.to_string().contains("unknown address family 7"));
    }
}
