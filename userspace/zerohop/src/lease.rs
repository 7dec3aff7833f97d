//! The agent's lease on the maps (`zh_lease_v1`): the hooks translate only
//! while the agent vouches that the maps hold what the cluster holds, so a
//! node never keeps acting on maps nobody keeps true.
//!
//! The agent vouches for the maps as of the last moment its source
//! confirmed the state they were written from. A source confirms each time
//! it finds the cluster as it last published it (the dir source at every
//! poll, the kube source every second while its watch task runs); a read
//! that finds a change publishes a new snapshot, and the maps are vouched
//! for again once the agent has written it. A thread of its own, apart from
//! the async runtime, writes that moment plus the lease's length into the
//! map a few times per lease. So the lease runs out one lease after the
//! source stopped confirming (a read that hangs, a wedged task) or the
//! agent stopped writing what the source found (a sync that fails or
//! hangs), and also when the whole process stops (SIGSTOP) or dies.

use std::{
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{Array, MapData};
use tracing::{info, warn};
use zerohop_abi::map_name;

use crate::{agent_status::SharedStatus, datapath::open_pinned, freshness::SharedFreshness};

/// The lease map and what goes in it.
pub struct Lease {
    map: Array<MapData, u64>,
    length: Duration,
    freshness: SharedFreshness,
    status: SharedStatus,
    /// Whether the last renewal left a lease running.
    held: bool,
}

impl Lease {
    /// Opens the pinned lease map; leases last `length` past the last
    /// moment the maps were known current.
    pub fn open(
        pin_dir: &Path,
        length: Duration,
        freshness: SharedFreshness,
        status: SharedStatus,
    ) -> Result<Lease> {
        Ok(Lease {
            map: Array::try_from(open_pinned(pin_dir, map_name::LEASE)?)?,
            length,
            freshness,
            status,
            held: false,
        })
    }

    /// Writes the lease the maps deserve now, and logs when it starts or
    /// stops running.
    pub fn renew(&mut self) -> Result<()> {
        let vouched = self.freshness.lock().unwrap().vouched_at();
        let until = vouched.map(|at| at + self.length);
        self.map.set(0, until.map_or(0, monotonic_ns), 0)?;
        self.status.lock().unwrap().lease_until = until;
        let held = until.is_some_and(|until| until > Instant::now());
        match (self.held, held) {
            (false, true) => info!(
                lease_ms = self.length.as_millis() as u64,
                "lease on the maps running: connects to Services are translated"
            ),
            (true, false) => warn!(
                since_confirmed_ms = vouched.map_or(0, |at| at.elapsed().as_millis() as u64),
                "lease on the maps ran out: the source has not confirmed the cluster's state, \
                 or the maps have not caught up with it, for longer than the lease; connects \
                 take the cluster's normal path until they are current again"
            ),
            _ => {}
        }
        self.held = held;
        Ok(())
    }

    /// Renews the lease a few times per lease length in a thread of its
    /// own, until the returned guard is dropped.
    pub fn keep_renewing(mut self) -> mpsc::Sender<()> {
        let (guard, stop) = mpsc::channel::<()>();
        let every = (self.length / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("zerohop-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                    if let Err(error) = self.renew() {
                        warn!(%error, "renewing the lease on the maps failed");
                    }
                }
            })
            .expect("spawning the lease thread");
        guard
    }
}

/// `at` on the kernel's `CLOCK_MONOTONIC` (what `bpf_ktime_get_ns` reads),
/// in ns. Rust's `Instant` reads the same clock but does not expose it.
fn monotonic_ns(at: Instant) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let reference = Instant::now();
    let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    if at >= reference {
        now_ns + (at - reference).as_nanos() as u64
    } else {
        now_ns.saturating_sub((reference - at).as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_ns_follows_instants() {
        let now = Instant::now();
        let later = monotonic_ns(now + Duration::from_secs(3));
        let earlier = monotonic_ns(now);
        let gap = later - earlier;
        assert!(
            (2_990_000_000..=3_010_000_000).contains(&gap),
            "3 s apart measured {gap} ns"
        );
    }
}
