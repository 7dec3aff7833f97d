//! What the test programs check bytes with: a pattern any slice of which
//! can be computed on its own, so a reader verifies every byte's value and
//! place (nothing lost, reordered or duplicated) without keeping what was
//! sent; and a reader that sits out the bypass's spurious `EAGAIN`s.

use std::{
    io::Read,
    thread,
    time::{Duration, Instant},
};

/// How long [`Patient`] sits out `EAGAIN`s before it gives up.
const PATIENCE: Duration = Duration::from_secs(10);

/// Writes `buf.len()` bytes of the pattern for `seed` starting at `offset`:
/// 8 bytes per splitmix64 step of the 8-byte block index, so that any slice of
/// the stream can be computed (and checked) without generating what precedes.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut done = 0;
    while done < buf.len() {
        let word = splitmix64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (pos / 8)).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&word[start..start + n]);
        done += n;
        pos += n as u64;
    }
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How much [`check_pattern`] reads at a time.
const CHECK_CHUNK: usize = 256 * 1024;

/// Reads `total` bytes of the pattern for `seed` and checks each one's value
/// and place; with `to_eof`, then expects EOF (and fails on more bytes). Returns the bytes checked and the first problem.
pub fn check_pattern(
    reader: &mut impl Read,
    seed: u64,
    total: u64,
    to_eof: bool,
) -> (u64, Option<String>) {
    let mut reader = Patient(reader);
    let mut buf = vec![0u8; CHECK_CHUNK];
    let mut expected = vec![0u8; CHECK_CHUNK];
    let mut checked = 0u64;
    while checked < total || to_eof {
        let want = if to_eof {
            buf.len()
        } else {
            buf.len().min((total - checked) as usize)
        };
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) if checked == total => return (checked, None),
            Ok(0) => {
                return (
                    checked,
                    Some(format!("EOF after {checked} of {total} bytes")),
                )
            }
            Ok(n) => n,
            Err(e) => {
                return (
                    checked,
                    Some(format!("read after {checked} of {total} bytes: {e}")),
                )
            }
        };
        if checked + n as u64 > total {
            return (
                checked,
                Some(format!("more than the {total} bytes sent came back")),
            );
        }
        fill_pattern(seed, checked, &mut expected[..n]);
        if let Some(at) = buf[..n]
            .iter()
            .zip(&expected[..n])
            .position(|(a, b)| a != b)
        {
            return (
                checked,
                Some(format!(
                    "wrong byte at offset {} of {total}",
                    checked + at as u64
                )),
            );
        }
        checked += n as u64;
    }
    (checked, None)
}

/// A small deterministic random generator (splitmix64 steps): test plans
/// drawn from a seed are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in `0..n` (n > 0), close enough for test plans.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A blocking reader that sits out spurious `EAGAIN`s.
///
/// On a socket whose connection bypasses the stack (sockmap), the kernel's
/// `tcp_bpf_recvmsg` returns `EAGAIN` from a blocking read when the waiting
/// reader is woken by something other than data, e.g. write space freed for
/// another thread writing on the same socket. Event-driven programs (epoll)
/// treat that as "not ready yet"; this reader does the same, so the echo
/// checks the bytes, not that kernel quirk. A real timeout still ends it.
pub struct Patient<R>(pub R);

impl<R: Read> Read for Patient<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.0.read(buf) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    thread::yield_now();
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_slices_agree_with_the_whole() {
        let mut whole = vec![0u8; 100];
        fill_pattern(7, 0, &mut whole);
        let mut part = vec![0u8; 37];
        fill_pattern(7, 13, &mut part);
        assert_eq!(&whole[13..50], &part[..]);
        let mut other = vec![0u8; 100];
        fill_pattern(8, 0, &mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
