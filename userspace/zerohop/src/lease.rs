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
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{Array, MapData};
use tracing::{info, warn};
use zerohop_abi::map_name;

use crate::{datapath::open_pinned, health::SharedStatus};

/// How current the snapshots of a source are, and which of them the agent
/// has written to the maps.
#[derive(Debug, Default)]
pub struct Freshness {
    /// Generation of the last snapshot the source published; 0: none yet.
    published: u64,
    /// Generation of the last snapshot written to the maps.
    applied: u64,
    /// When the source last found the cluster as its last snapshot says.
    seen: Option<Instant>,
    /// When the source last found the cluster as the written snapshot says,
    /// once a newer one is published and not yet written.
    applied_seen: Option<Instant>,
}

impl Freshness {
    /// The source read the cluster at `at`, and found it `changed` since
    /// its last snapshot (which it then publishes) or not. Returns the
    /// generation of the source's current snapshot.
    pub fn read(&mut self, at: Instant, changed: bool) -> u64 {
        if changed {
            if self.applied == self.published {
                self.applied_seen = self.seen;
            }
            self.published += 1;
        }
        self.seen = Some(at);
        self.published
    }

    /// The agent wrote the snapshot of `generation` to the maps.
    pub fn applied(&mut self, generation: u64) {
        self.applied = self.applied.max(generation);
    }

    /// The last moment at which the maps were known to hold what the
    /// cluster holds; `None` before the first snapshot is written.
    pub fn vouched_at(&self) -> Option<Instant> {
        if self.applied == 0 {
            None
        } else if self.applied == self.published {
            self.seen
        } else {
            self.applied_seen
        }
    }
}

/// The freshness a source updates and the lease reads.
pub type SharedFreshness = Arc<Mutex<Freshness>>;

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

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn nothing_is_vouched_for_before_the_first_snapshot_is_written() {
        let start = Instant::now();
        let mut freshness = Freshness::default();
        assert_eq!(freshness.vouched_at(), None);
        assert_eq!(
            freshness.read(at(start, 1), false),
            0,
            "a confirmation of nothing"
        );
        assert_eq!(freshness.vouched_at(), None);
        assert_eq!(freshness.read(at(start, 2), true), 1);
        assert_eq!(freshness.vouched_at(), None, "published, not written");
        freshness.applied(1);
        assert_eq!(freshness.vouched_at(), Some(at(start, 2)));
    }

    #[test]
    fn each_confirmation_moves_the_vouched_moment() {
        let start = Instant::now();
        let mut freshness = Freshness::default();
        freshness.read(at(start, 1), true);
        freshness.applied(1);
        for second in 2..5 {
            assert_eq!(freshness.read(at(start, second), false), 1);
            assert_eq!(freshness.vouched_at(), Some(at(start, second)));
        }
    }

    #[test]
    fn a_change_not_yet_written_holds_the_moment_at_the_last_confirmation() {
        let start = Instant::now();
        let mut freshness = Freshness::default();
        freshness.read(at(start, 1), true);
        freshness.applied(1);
        freshness.read(at(start, 2), false);
        // The read at 3 finds a change: from some time after 2 on, the maps
        // may be stale, however often the source confirms the new state.
        assert_eq!(freshness.read(at(start, 3), true), 2);
        freshness.read(at(start, 4), false);
        assert_eq!(freshness.read(at(start, 5), true), 3);
        assert_eq!(freshness.vouched_at(), Some(at(start, 2)));
        // A sync that writes an older snapshot than the newest keeps it so.
        freshness.applied(2);
        assert_eq!(freshness.vouched_at(), Some(at(start, 2)));
        freshness.applied(3);
        assert_eq!(freshness.vouched_at(), Some(at(start, 5)));
        freshness.read(at(start, 6), false);
        assert_eq!(freshness.vouched_at(), Some(at(start, 6)));
    }

    #[test]
    fn a_late_report_of_an_older_write_does_not_go_back() {
        let start = Instant::now();
        let mut freshness = Freshness::default();
        freshness.read(at(start, 1), true);
        freshness.read(at(start, 2), true);
        freshness.applied(2);
        freshness.applied(1);
        assert_eq!(freshness.vouched_at(), Some(at(start, 2)));
    }

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
