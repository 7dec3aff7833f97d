//! What a client or an upstream may hold of the waypoint, and for how long:
//! the flags that bound connections, idle time and memory (README, "Limits
//! and timeouts"). A duration is a Gateway API one (`30s`, `1m`, `500ms`);
//! `0s` turns that timeout off.

use std::time::Duration;

use tracing::{debug, warn};
use zerohop_routes::duration::parse_duration;

/// Files the waypoint opens besides its connections: listeners, the config,
/// the access log, the health server's, mirrors' and the runtime's own.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// How long a client gets to send a whole request head, from the moment
    /// the waypoint waits for it: on HTTP/1.1 also the longest wait for the
    /// next request on a kept-alive connection; on HTTP/2 (and on a port
    /// whose appProtocol names HTTP, before any byte) the longest wait for
    /// the first request. A half-sent request (slowloris) is closed then.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// A client connection with no request in flight for this long, after
    /// its first request, is closed (gracefully: HTTP/2 gets a GOAWAY).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub client_idle_timeout: Duration,

    /// Client connections served at once (HTTP and passed through). At the
    /// limit, no more are accepted until one closes: new ones wait in the
    /// listen backlog. Each takes a file descriptor, and one more for its
    /// upstream: keep it well under half the open-file limit (`ulimit -n`).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// HTTP/2 streams (requests) a client connection may have open at once;
    /// more are refused (`REFUSED_STREAM`, which clients retry).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// An idle upstream connection (kept for a next request) is closed after
    /// at most this long idle (the pool sweeps every half of it).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Idle upstream connections kept per endpoint; beyond them, a
    /// connection whose request is done is closed rather than kept.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub upstream_max_idle_per_host: usize,

    /// Bytes of a request body the waypoint keeps whole, to copy it to a
    /// RequestMirror or send it again on a retry: a request of such a rule
    /// whose body is longer is neither mirrored nor retried (counted in
    /// zerohop_waypoint_mirror_body_too_large_total and
    /// zerohop_waypoint_retry_body_too_large_total) while it streams to its
    /// backend as any other; so that the waypoint never holds a whole large
    /// body in memory, only up to this much per request.
    #[arg(long, visible_alias = "mirror-body-limit", value_name = "BYTES", default_value_t = 64 * 1024)]
    pub replay_body_limit: usize,
}

/// Open files the waypoint needs at `max_connections` client connections:
/// each has its upstream connection too.
fn files_needed(max_connections: u32) -> u64 {
    2 * u64::from(max_connections) + FILES_BESIDES_CONNECTIONS
}

/// Raises the open-file limit (RLIMIT_NOFILE) to what `--max-connections`
/// needs, as far as its hard limit allows, and warns at start when that is
/// not enough: the waypoint would run out of files before it reached its
/// connection limit (accepts then fail with EMFILE, and back off).
pub fn raise_open_file_limit(max_connections: u32) {
    let needed = files_needed(max_connections);
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit >= needed => debug!(limit, needed, "open-file limit"),
        Ok(limit) => warn!(
            limit,
            needed,
            max_connections,
            "the open-file limit is below what --max-connections needs (two files per \
             connection): lower --max-connections to half the limit, or raise the limit \
             (ulimit -n, the container runtime's nofile)"
        ),
        Err(error) => warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// A duration flag.
fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is no duration such as 30s, 1m or 500ms"))
}

/// A timeout flag's value: `0s` is none.
pub fn timeout(flag: Duration) -> Option<Duration> {
    (!flag.is_zero()).then_some(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_needs_two_files() {
        assert_eq!(files_needed(10_000), 20_256);
        assert_eq!(files_needed(u32::MAX), 2 * u64::from(u32::MAX) + 256);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("0s").map(timeout), Ok(None));
        assert!(duration("30").is_err());
    }
}
