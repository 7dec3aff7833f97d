//! How current a source's snapshots are, and which of them the agent has
//! written to the maps: the source and the agent update it, and the lease
//! on the maps (see `lease`) runs from the last moment it vouches for.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
