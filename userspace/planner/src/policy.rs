//! The bypass policy: which frontends' new connections take the bypass, as
//! learned from what their bypassed connections did on this node.
//!
//! Registering a connection for the bypass costs a fixed amount (a psock for
//! each end, map entries, and their teardown), and the bypass then saves a
//! little on every message. A connection that carries a request or two (a
//! client that closes after each answer, `Connection: close`, health checks)
//! costs more than it saves: with wrk sending `Connection: close` to nginx,
//! bypassed connections made 0.88x to 0.97x the kube-proxy path's rate, and
//! translated-only ones about 1.0x. So the programs count, per frontend, the
//! connections they tag and the ends of those that send
//! [`LONG_MSGS`](zerohop_abi::LONG_MSGS) messages (a message counting one
//! more per [`BYTES_PER_MSG_COUNT`](zerohop_abi::BYTES_PER_MSG_COUNT) bytes
//! it carries: a connection of a few large writes gains from the bypass as
//! well). When hardly any connection
//! of a frontend gets that long, the frontend is marked
//! [`SERVICE_SHORT_CONNS`](zerohop_abi::SERVICE_SHORT_CONNS): its connects
//! are translated only, but for one in
//! [`SHORT_CONNS_SAMPLE`](zerohop_abi::SHORT_CONNS_SAMPLE) and up to one
//! per [`SHORT_CONNS_INTERVAL_NS`](zerohop_abi::SHORT_CONNS_INTERVAL_NS)
//! besides, whose counts tell the agent when the connections get longer
//! again. A Service
//! annotated `zerohop.io/bypass: "on"` or `"off"` is never learned about.

use std::collections::{BTreeMap, BTreeSet};

use zerohop_abi::{FrontendKey, Traffic};

/// Connects a frontend must have had bypassed since its last verdict before
/// it is judged short.
pub const MIN_CONNS: u64 = 64;

/// Sampled connects a short frontend must have had since its verdict before
/// it may go back to the bypass. Fewer than [`MIN_CONNS`]: at a high
/// connect rate only one connect in
/// [`SHORT_CONNS_SAMPLE`](zerohop_abi::SHORT_CONNS_SAMPLE) is sampled, and
/// the errors do not cost the same. A frontend of long connections
/// judged short loses the bypass's gain for as long as the verdict stands,
/// while a frontend of short ones sent back to the bypass by a chance
/// sample costs a few percent until its next [`MIN_CONNS`] connects, which
/// such a frontend makes quickly.
pub const MIN_SAMPLED: u64 = 8;

/// How often the agent reads the counters and judges: the least time a
/// connection has to get long before it is judged.
pub const LEARN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What a frontend's bypassed connections did over a stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub conns: u64,
    pub long_ends: u64,
}

/// What the policy says of a frontend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Its connections take the bypass.
    #[default]
    Bypass,
    /// Its connections are too short to gain from it.
    ShortConns,
}

impl Verdict {
    /// Connects counted since this verdict before the next may be given.
    fn min_conns(self) -> u64 {
        match self {
            Verdict::Bypass => MIN_CONNS,
            Verdict::ShortConns => MIN_SAMPLED,
        }
    }
}

/// The verdict after `window`, given the one before. Short when fewer than
/// one connection in ten had an end that got long; back to the bypass when
/// more than one in four did (in between, the verdict stays, so a frontend
/// near the line does not flip back and forth).
pub fn judge(previous: Verdict, window: Window) -> Verdict {
    if window.conns < previous.min_conns() {
        return previous;
    }
    if window.long_ends * 10 < window.conns {
        Verdict::ShortConns
    } else if window.long_ends * 4 > window.conns {
        Verdict::Bypass
    } else {
        previous
    }
}

/// The frontends whose connections are short, learned from the programs'
/// running traffic counters.
#[derive(Debug, Default)]
pub struct Learner {
    frontends: BTreeMap<FrontendKey, Learning>,
    /// Whether a frontend's connects counted at the last read are still to
    /// be judged (kept, not searched for: the agent asks every
    /// [`LEARN_EVERY`], also when nothing changed).
    judging: bool,
}

#[derive(Debug, Default)]
struct Learning {
    verdict: Verdict,
    /// The counters last read.
    last: Traffic,
    /// Counted since the last verdict.
    window: Window,
    /// Connects counted at the last read, judged from the next one on.
    recent: u64,
}

/// A frontend whose verdict changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub frontend: FrontendKey,
    pub verdict: Verdict,
    /// What the verdict was made on.
    pub window: Window,
}

impl Learner {
    /// Takes in the programs' counters (running totals per frontend, as the
    /// kernel map holds them) and returns the frontends whose verdict
    /// changed. Frontends no longer in `totals` are forgotten; new ones
    /// start from their current totals, as bypassed.
    ///
    /// A connect is judged one read after the read that counted it: a
    /// connection counts at connect, but its ends count as long only once
    /// they have sent [`LONG_MSGS`](zerohop_abi::LONG_MSGS) messages, so a
    /// read that fell between 64 connects and their first messages (a
    /// client opening its whole pool at once) would see long connections
    /// as short. Calls are meant to be [`LEARN_EVERY`] apart.
    pub fn observe(&mut self, totals: &BTreeMap<FrontendKey, Traffic>) -> Vec<Change> {
        self.frontends
            .retain(|frontend, _| totals.contains_key(frontend));
        let mut changes = Vec::new();
        self.judging = false;
        for (&frontend, &now) in totals {
            let learning = self.frontends.entry(frontend).or_insert(Learning {
                last: now,
                ..Learning::default()
            });
            learning.window.conns += learning.recent;
            learning.recent = now.conns.wrapping_sub(learning.last.conns);
            self.judging |= learning.recent > 0;
            learning.window.long_ends += now.long_ends.wrapping_sub(learning.last.long_ends);
            learning.last = now;
            if learning.window.conns < learning.verdict.min_conns() {
                continue;
            }
            let verdict = judge(learning.verdict, learning.window);
            if verdict != learning.verdict {
                changes.push(Change {
                    frontend,
                    verdict,
                    window: learning.window,
                });
            }
            learning.verdict = verdict;
            // Long ends beyond two per connection judged belong to the
            // recent connects (a connection has two ends): they count
            // towards those.
            let carried = learning
                .window
                .long_ends
                .saturating_sub(2 * learning.window.conns);
            learning.window = Window {
                conns: 0,
                long_ends: carried,
            };
        }
        changes
    }

    /// Whether connects counted at the last look are still to be judged at
    /// the next, whether or not anything is counted until then.
    pub fn judging(&self) -> bool {
        self.judging
    }

    /// The frontends judged short.
    pub fn short_conns(&self) -> BTreeSet<FrontendKey> {
        self.frontends
            .iter()
            .filter(|(_, learning)| learning.verdict == Verdict::ShortConns)
            .map(|(&frontend, _)| frontend)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(n: u8) -> FrontendKey {
        crate::plan::frontend_key([10, 96, 0, n].into(), 80)
    }

    fn totals(entries: &[(u8, u64, u64)]) -> BTreeMap<FrontendKey, Traffic> {
        entries
            .iter()
            .map(|&(n, conns, long_ends)| {
                (
                    frontend(n),
                    Traffic {
                        conns,
                        long_ends,
                        ..Traffic::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn too_few_connections_say_nothing() {
        let window = Window {
            conns: MIN_CONNS - 1,
            long_ends: 0,
        };
        assert_eq!(judge(Verdict::Bypass, window), Verdict::Bypass);
        let window = Window {
            conns: MIN_SAMPLED - 1,
            long_ends: 2 * (MIN_SAMPLED - 1),
        };
        assert_eq!(judge(Verdict::ShortConns, window), Verdict::ShortConns);
    }

    #[test]
    fn a_short_frontend_goes_back_on_fewer_connections() {
        // Eight sampled connections, long at both ends.
        let window = Window {
            conns: MIN_SAMPLED,
            long_ends: 2 * MIN_SAMPLED,
        };
        assert_eq!(judge(Verdict::ShortConns, window), Verdict::Bypass);
        // Eight short ones keep it short.
        let window = Window {
            conns: MIN_SAMPLED,
            long_ends: 0,
        };
        assert_eq!(judge(Verdict::ShortConns, window), Verdict::ShortConns);
    }

    #[test]
    fn one_request_per_connection_is_short() {
        let window = Window {
            conns: 1000,
            long_ends: 3,
        };
        assert_eq!(judge(Verdict::Bypass, window), Verdict::ShortConns);
    }

    #[test]
    fn keep_alive_connections_are_not() {
        // Every connection long at both ends.
        let window = Window {
            conns: 100,
            long_ends: 200,
        };
        assert_eq!(judge(Verdict::ShortConns, window), Verdict::Bypass);
        // A one-way stream: one long end per connection.
        let window = Window {
            conns: 100,
            long_ends: 100,
        };
        assert_eq!(judge(Verdict::Bypass, window), Verdict::Bypass);
    }

    #[test]
    fn between_the_lines_the_verdict_stays() {
        // 20 long ends per 100 connections: above one in ten, below one in four.
        let window = Window {
            conns: 100,
            long_ends: 20,
        };
        assert_eq!(judge(Verdict::Bypass, window), Verdict::Bypass);
        assert_eq!(judge(Verdict::ShortConns, window), Verdict::ShortConns);
    }

    #[test]
    fn the_learner_judges_counts_since_it_first_saw_a_frontend() {
        let mut learner = Learner::default();
        // Counts from before the agent started (a restart) are not judged.
        assert!(learner.observe(&totals(&[(1, 5000, 0)])).is_empty());
        assert!(learner.observe(&totals(&[(1, 5030, 0)])).is_empty());
        assert!(learner.observe(&totals(&[(1, 5100, 1)])).is_empty());
        let changes = learner.observe(&totals(&[(1, 5100, 1)]));
        assert_eq!(
            changes,
            vec![Change {
                frontend: frontend(1),
                verdict: Verdict::ShortConns,
                window: Window {
                    conns: 100,
                    long_ends: 1
                },
            }]
        );
        assert_eq!(learner.short_conns(), BTreeSet::from([frontend(1)]));
        // The sampled connections get long: back to the bypass.
        assert!(learner.observe(&totals(&[(1, 5200, 1)])).is_empty());
        let changes = learner.observe(&totals(&[(1, 5200, 81)]));
        assert_eq!(changes[0].verdict, Verdict::Bypass);
        assert!(learner.short_conns().is_empty());
    }

    #[test]
    fn a_pool_opened_at_once_has_until_the_next_read_to_get_long() {
        let mut learner = Learner::default();
        learner.observe(&totals(&[(1, 0, 0)]));
        // A client opened 64 connections just before this read; none has
        // sent much yet.
        assert!(learner.observe(&totals(&[(1, 64, 2)])).is_empty());
        assert!(learner.judging());
        // By the next read they all have, at both ends.
        assert!(learner.observe(&totals(&[(1, 64, 128)])).is_empty());
        assert!(!learner.judging());
        assert!(learner.short_conns().is_empty());
        // A pool opened at every read: the long ends of the connects still
        // to be judged count towards them, not towards the verdict just
        // made.
        assert!(learner.observe(&totals(&[(1, 128, 256)])).is_empty());
        assert!(learner.observe(&totals(&[(1, 192, 384)])).is_empty());
        assert!(learner.observe(&totals(&[(1, 192, 384)])).is_empty());
        assert!(learner.short_conns().is_empty());
        // Connections that stay short are judged so a read later.
        assert!(learner.observe(&totals(&[(1, 292, 384)])).is_empty());
        let changes = learner.observe(&totals(&[(1, 292, 385)]));
        assert_eq!(changes[0].verdict, Verdict::ShortConns);
    }

    #[test]
    fn frontends_that_go_are_forgotten_and_counters_may_wrap() {
        let mut learner = Learner::default();
        learner.observe(&totals(&[(1, u64::MAX - 10, 0), (2, 0, 0)]));
        learner.observe(&totals(&[(1, 100, 0), (2, 0, 0)]));
        let changes = learner.observe(&totals(&[(1, 100, 0), (2, 0, 0)]));
        assert_eq!(
            changes.len(),
            1,
            "111 connections across the wrap: {changes:?}"
        );
        learner.observe(&totals(&[(2, 0, 0)]));
        assert!(learner.short_conns().is_empty());
    }
}
