//! HTTPRouteRetry (GEP-1731), checked and compiled: which upstream answers
//! are retried, how many times, and how long the waypoint waits between
//! attempts.
//!
//! Besides the listed status codes, a rule with a `retry` stanza retries
//! failed connections, resets and `timeouts.backendRequest` expiries (the
//! spec's SHOULD). Any method is retried, as the spec leaves it.

use std::{fmt, time::Duration};

use crate::{duration::parse_duration, model::Retry};

/// Retries after the first attempt when `attempts` is not set.
pub const DEFAULT_ATTEMPTS: u32 = 1;
/// The wait before the first retry when `backoff` is not set.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// The wait doubles with each retry, up to this many times the first.
const BACKOFF_CAP: u32 = 10;

/// A rule's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    codes: Codes,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The wait before the first retry.
    pub backoff: Duration,
}

/// A set of status codes from 400 to 599: bit `n` is code `400 + n`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Codes([u64; 4]);

impl Codes {
    const FIRST: u16 = 400;
    const LAST: u16 = 599;

    fn insert(&mut self, code: u16) {
        let bit = usize::from(code - Self::FIRST);
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn contains(&self, code: u16) -> bool {
        if !(Self::FIRST..=Self::LAST).contains(&code) {
            return false;
        }
        let bit = usize::from(code - Self::FIRST);
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

impl fmt::Debug for Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes = (Self::FIRST..=Self::LAST).filter(|&code| self.contains(code));
        f.debug_set().entries(codes).finish()
    }
}

impl RetryPolicy {
    /// An upstream answer with this status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(status)
    }

    /// The wait before retry number `retry` (1 for the first): the backoff,
    /// doubled for each retry after the first, at most ten times the backoff.
    pub fn wait_before(&self, retry: u32) -> Duration {
        let doubled = 1u32.checked_shl(retry.saturating_sub(1));
        let factor = doubled.unwrap_or(u32::MAX).min(BACKOFF_CAP);
        self.backoff.saturating_mul(factor)
    }
}

/// The policy of a `retry` stanza; an error tells what makes it invalid
/// (the rule is then dropped, as for any unsupported value).
pub(crate) fn compile_retry(retry: &Retry) -> Result<RetryPolicy, String> {
    let mut codes = Codes::default();
    for &code in &retry.codes {
        match u16::try_from(code) {
            Ok(code) if (Codes::FIRST..=Codes::LAST).contains(&code) => codes.insert(code),
            _ => return Err(format!("retry code {code} is not a status from 400 to 599")),
        }
    }
    let attempts = match retry.attempts {
        None => DEFAULT_ATTEMPTS,
        Some(attempts) => u32::try_from(attempts)
            .ok()
            .filter(|&attempts| attempts >= 1)
            .ok_or_else(|| format!("retry attempts {attempts} is not a number from 1 up"))?,
    };
    let backoff = match &retry.backoff {
        None => DEFAULT_BACKOFF,
        Some(text) => parse_duration(text)
            .ok_or_else(|| format!("retry backoff {text:?} is no Gateway API duration"))?,
    };
    Ok(RetryPolicy {
        codes,
        attempts,
        backoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(codes: &[i64], attempts: Option<i64>, backoff: Option<&str>) -> Retry {
        Retry {
            codes: codes.to_vec(),
            attempts,
            backoff: backoff.map(str::to_owned),
        }
    }

    #[test]
    fn listed_codes_are_retried_and_no_others() {
        let policy = compile_retry(&retry(&[400, 500, 503, 599], Some(3), None)).unwrap();
        for code in [400, 500, 503, 599] {
            assert!(policy.retries_status(code), "{code}");
        }
        for code in [200, 302, 399, 404, 501, 502, 504, 600] {
            assert!(!policy.retries_status(code), "{code}");
        }
        assert_eq!(policy.attempts, 3);
        assert_eq!(format!("{:?}", policy.codes), "{400, 500, 503, 599}");
    }

    #[test]
    fn unset_fields_take_the_defaults() {
        let policy = compile_retry(&Retry::default()).unwrap();
        assert_eq!(policy.attempts, DEFAULT_ATTEMPTS);
        assert_eq!(policy.backoff, DEFAULT_BACKOFF);
        assert!(!(400..600).any(|code| policy.retries_status(code)));
    }

    #[test]
    fn impossible_values_are_refused() {
        for bad in [
            retry(&[399], None, None),
            retry(&[600], None, None),
            retry(&[-500], None, None),
            retry(&[65_936], None, None),
            retry(&[], Some(0), None),
            retry(&[], Some(-1), None),
            retry(&[], Some(1 << 40), None),
            retry(&[], None, Some("soon")),
        ] {
            assert!(compile_retry(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_wait_doubles_up_to_ten_times_the_backoff() {
        let policy = compile_retry(&retry(&[], Some(9), Some("100ms"))).unwrap();
        let waits: Vec<u128> = (1..=7).map(|n| policy.wait_before(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(policy.wait_before(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn a_zero_backoff_retries_at_once() {
        let policy = compile_retry(&retry(&[], None, Some("0s"))).unwrap();
        assert_eq!(policy.wait_before(3), Duration::ZERO);
    }
}
