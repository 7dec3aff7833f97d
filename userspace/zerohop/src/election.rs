//! Which agent writes the routes' status: the one holding a Lease
//! (coordination.k8s.io/v1), so that a cluster of N nodes has one writer,
//! not N. The others evaluate the routes as well (they need them for their
//! maps) but only read the Lease.
//!
//! The election is client-go's (`tools/leaderelection`), with the API
//! server's `resourceVersion` as the referee:
//! - every [`Election::retry`], each agent reads the Lease;
//! - there is none: it creates one naming itself (of several creates, the
//!   API server lets one succeed);
//! - the agent holds it: it renews it (`renewTime`);
//! - another agent holds it: it waits until the Lease has stayed unchanged
//!   for the Lease's `leaseDurationSeconds`, as measured by its own clock
//!   from when it first saw that version (node clocks may disagree; time
//!   elapsed on one node can be trusted), or until the holder released it,
//!   and then takes it;
//! - renewals and takeovers carry the `resourceVersion` just read as a
//!   precondition: of several agents taking an expired Lease one succeeds,
//!   the others get 409 Conflict;
//! - the holder counts itself the writer only until
//!   [`Election::renew_deadline`] after the start of its last successful
//!   renewal, which is shorter than the Lease: it stops writing before any
//!   other agent may start;
//! - on shutdown the holder releases the Lease, so a successor (the next
//!   version of the DaemonSet's pod) need not wait for it to run out.
//!
//! The decisions ([`Candidate`]) are pure and unit-tested; [`run`] does the
//! I/O.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The field manager of our Lease writes.
const FIELD_MANAGER: &str = "zerohop";

/// What [`run`] does to its Lease (`create` only when there is none), for
/// the agent's RBAC (deploy/rbac.yaml).
pub const LEASE_VERBS: [&str; 3] = ["create", "get", "patch"];

/// Where the election happens and who takes part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This agent, unique in the cluster and over restarts.
    pub identity: String,
    /// How long a Lease nobody renews stays held.
    pub duration: Duration,
}

impl Election {
    /// How long after the start of its last successful renewal the holder
    /// still writes: two thirds of the Lease (client-go: 10 s of 15 s).
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often each agent reads (and the holder renews) the Lease: two
    /// fifteenths of it (client-go: 2 s of 15 s).
    pub fn retry(&self) -> Duration {
        self.duration * 2 / 15
    }

    /// An identity for the agent of `node`: the node's name and the start
    /// time, so that a restarted agent is told from its predecessor.
    pub fn identity_of(node: &str) -> String {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{node}_{started:x}")
    }
}

/// What the election reads from the Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`; `None` (or empty) when released.
    pub holder: Option<String>,
    /// `metadata.resourceVersion`: changes whenever the Lease does.
    pub version: String,
    /// `spec.leaseDurationSeconds`.
    pub duration: Option<Duration>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.as_ref();
        Record {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            version: lease.metadata.resource_version.clone().unwrap_or_default(),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// What an agent does after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or its holder let it run out: take it.
    Take,
    /// Another agent holds it.
    Follow { holder: String },
}

/// One agent's side of the election, without I/O.
#[derive(Debug)]
pub struct Candidate {
    identity: String,
    duration: Duration,
    /// The version of the Lease last read and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Candidate {
    pub fn new(election: &Election) -> Candidate {
        Candidate {
            identity: election.identity.clone(),
            duration: election.duration,
            observed: None,
        }
    }

    /// What to do about the Lease read at `now` (`None`: there is none).
    pub fn step(&mut self, lease: Option<&Record>, now: Instant) -> Step {
        let Some(lease) = lease else {
            self.observed = None;
            return Step::Create;
        };
        let since = match &self.observed {
            Some((version, since)) if *version == lease.version => *since,
            _ => {
                self.observed = Some((lease.version.clone(), now));
                now
            }
        };
        match &lease.holder {
            Some(holder) if *holder == self.identity => Step::Renew,
            None => Step::Take,
            Some(holder) => {
                let lasts = lease.duration.unwrap_or(self.duration);
                if now.duration_since(since) >= lasts {
                    Step::Take
                } else {
                    Step::Follow {
                        holder: holder.clone(),
                    }
                }
            }
        }
    }
}

/// What one round of the election found.
enum Round {
    /// We hold the Lease, as of the given version.
    Holding(Record),
    /// Another agent holds it (or won the race for it).
    Following(Option<String>),
}

/// Takes part in `election` until `stop` turns true (or its sender is
/// dropped), telling through `writer` whether this agent is the writer.
/// On stop, releases the Lease if it holds it, and says it no longer writes.
/// Never fails: API errors are logged and the next round tries again.
pub async fn run(
    client: kube::Client,
    election: Election,
    writer: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut candidate = Candidate::new(&election);
    // Until when we may write, and the version of the Lease we hold.
    let mut holding: Option<(Instant, Record)> = None;
    let mut holder: Option<String> = None;
    // Whether this agent writes: only while its last renewal is recent. Said
    // before each round too: a process that was stopped (SIGSTOP) must not
    // write on while it reads the Lease again.
    let publish = |holding: &Option<(Instant, Record)>| {
        let writes = holding
            .as_ref()
            .is_some_and(|(until, _)| Instant::now() < *until);
        writer.send_if_modified(|current| std::mem::replace(current, writes) != writes);
    };
    loop {
        publish(&holding);
        let started = Instant::now();
        let round = tokio::time::timeout(
            election.retry().max(Duration::from_millis(100)),
            round(&api, &election, &mut candidate, started),
        )
        .await
        .unwrap_or_else(|_| Err(kube_timeout()));
        match round {
            Ok(Round::Holding(record)) => {
                holding = Some((started + election.renew_deadline(), record));
                if holder.as_deref() != Some(&election.identity) {
                    info!(lease = %election.name, identity = %election.identity,
                          "this agent writes the routes' status");
                    holder = Some(election.identity.clone());
                }
            }
            Ok(Round::Following(other)) => {
                holding = None;
                if other != holder {
                    info!(lease = %election.name, holder = other.as_deref().unwrap_or("none"),
                          "another agent writes the routes' status");
                    holder = other;
                }
            }
            // We keep writing until the renew deadline, if we held it.
            Err(error) => {
                warn!(lease = %election.name, %error, "reading or renewing the lease failed");
            }
        }
        publish(&holding);
        let until = holding.as_ref().map(|(until, _)| *until);
        let next = started + election.retry();
        // Wake at the renew deadline, if it comes first, to stop writing then.
        let wake = until
            .filter(|until| *until > Instant::now() && *until < next)
            .unwrap_or(next);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    writer.send_replace(false);
    if let Some((_, record)) = holding {
        match tokio::time::timeout(election.retry(), release(&api, &election, &record)).await {
            Ok(Ok(())) => info!(lease = %election.name, "lease released"),
            Ok(Err(error)) => warn!(lease = %election.name, %error, "releasing the lease failed"),
            Err(_) => warn!(lease = %election.name, "releasing the lease timed out"),
        }
    }
}

fn kube_timeout() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "timed out",
    )))
}

/// Reads the Lease and does what the candidate decides.
async fn round(
    api: &Api<Lease>,
    election: &Election,
    candidate: &mut Candidate,
    now: Instant,
) -> Result<Round, kube::Error> {
    let lease = api.get_opt(&election.name).await?;
    let record = lease.as_ref().map(Record::of);
    let written = match candidate.step(record.as_ref(), now) {
        Step::Follow { holder } => return Ok(Round::Following(Some(holder))),
        Step::Create => {
            api.create(&PostParams::default(), &new_lease(election))
                .await
        }
        Step::Renew => patch(api, election, &renewal(election, record.as_ref())).await,
        Step::Take => patch(api, election, &takeover(election, record.as_ref())).await,
    };
    match written {
        Ok(lease) => Ok(Round::Holding(Record::of(&lease))),
        // Another agent created or changed it first: it is theirs, this round.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(lease = %election.name, "lost a race for the lease");
            let holder = api
                .get_opt(&election.name)
                .await?
                .and_then(|lease| Record::of(&lease).holder);
            Ok(Round::Following(holder))
        }
        Err(error) => Err(error),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn new_lease(election: &Election) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": election.name, "namespace": election.namespace},
        "spec": {
            "holderIdentity": election.identity,
            "leaseDurationSeconds": seconds(election.duration),
            "acquireTime": now(),
            "renewTime": now(),
            "leaseTransitions": 0,
        },
    }))
    .expect("a Lease")
}

/// The patch that renews our Lease, as of the version read.
fn renewal(election: &Election, read: Option<&Record>) -> serde_json::Value {
    json!({
        "metadata": {"resourceVersion": read.map(|r| r.version.as_str())},
        "spec": {
            "holderIdentity": election.identity,
            "leaseDurationSeconds": seconds(election.duration),
            "renewTime": now(),
        },
    })
}

/// The patch that takes the Lease over, as of the version read.
fn takeover(election: &Election, read: Option<&Record>) -> serde_json::Value {
    json!({
        "metadata": {"resourceVersion": read.map(|r| r.version.as_str())},
        "spec": {
            "holderIdentity": election.identity,
            "leaseDurationSeconds": seconds(election.duration),
            "acquireTime": now(),
            "renewTime": now(),
            "leaseTransitions": read.map_or(0, |r| r.transitions + 1),
        },
    })
}

async fn patch(
    api: &Api<Lease>,
    election: &Election,
    patch: &serde_json::Value,
) -> Result<Lease, kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&election.name, &params, &Patch::Merge(patch))
        .await
}

/// Gives the Lease up, if it is still as we last wrote it.
async fn release(api: &Api<Lease>, election: &Election, held: &Record) -> Result<(), kube::Error> {
    let released = json!({
        "metadata": {"resourceVersion": held.version},
        "spec": {"holderIdentity": null, "leaseDurationSeconds": 1, "renewTime": now()},
    });
    patch(api, election, &released).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(identity: &str) -> Election {
        Election {
            namespace: "zerohop-system".into(),
            name: "zerohop-route-status".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        }
    }

    fn held_by(holder: Option<&str>, version: &str) -> Record {
        Record {
            holder: holder.map(str::to_string),
            version: version.into(),
            duration: Some(Duration::from_secs(15)),
            transitions: 0,
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_our_own_renewed() {
        let now = Instant::now();
        let mut a = Candidate::new(&election("a"));
        assert_eq!(a.step(None, now), Step::Create);
        assert_eq!(a.step(Some(&held_by(Some("a"), "1")), now), Step::Renew);
        assert_eq!(a.step(Some(&held_by(None, "2")), now), Step::Take);
    }

    #[test]
    fn another_holder_is_followed_while_its_lease_changes() {
        let start = Instant::now();
        let mut b = Candidate::new(&election("b"));
        let follow = Step::Follow { holder: "a".into() };
        // Renewed every 2 s: b never takes it, however long it runs.
        for round in 0..30u32 {
            let now = start + Duration::from_secs(2) * round;
            let lease = held_by(Some("a"), &round.to_string());
            assert_eq!(b.step(Some(&lease), now), follow, "round {round}");
        }
    }

    #[test]
    fn a_lease_unchanged_for_its_duration_on_our_clock_is_taken() {
        let start = Instant::now();
        let mut b = Candidate::new(&election("b"));
        let lease = held_by(Some("a"), "7");
        let follow = Step::Follow { holder: "a".into() };
        // What the record says about time does not matter: b counts from
        // when it first saw this version.
        assert_eq!(b.step(Some(&lease), start), follow);
        assert_eq!(
            b.step(Some(&lease), start + Duration::from_secs(14)),
            follow
        );
        assert_eq!(
            b.step(Some(&lease), start + Duration::from_secs(15)),
            Step::Take
        );
        // A renewal seen just in time starts the count again.
        let renewed = held_by(Some("a"), "8");
        assert_eq!(
            b.step(Some(&renewed), start + Duration::from_secs(16)),
            follow
        );
        assert_eq!(
            b.step(Some(&renewed), start + Duration::from_secs(30)),
            follow
        );
        assert_eq!(
            b.step(Some(&renewed), start + Duration::from_secs(31)),
            Step::Take
        );
        // The lease's own duration counts, not ours.
        let short = Record {
            duration: Some(Duration::from_secs(3)),
            ..held_by(Some("a"), "9")
        };
        let at = start + Duration::from_secs(40);
        assert_eq!(b.step(Some(&short), at), follow);
        assert_eq!(
            b.step(Some(&short), at + Duration::from_secs(3)),
            Step::Take
        );
    }

    #[test]
    fn the_holder_stops_writing_before_another_may_start() {
        let e = election("a");
        assert!(e.renew_deadline() + e.retry() < e.duration);
        assert_eq!(e.renew_deadline(), Duration::from_secs(10));
        assert_eq!(e.retry(), Duration::from_secs(2));
        let a = Election::identity_of("node1");
        assert!(a.starts_with("node1_"), "{a}");
    }

    #[test]
    fn takeover_and_renewal_carry_the_version_read() {
        let e = election("b");
        let read = Record {
            transitions: 4,
            ..held_by(Some("a"), "42")
        };
        let take = takeover(&e, Some(&read));
        assert_eq!(take["metadata"]["resourceVersion"], "42");
        assert_eq!(take["spec"]["holderIdentity"], "b");
        assert_eq!(take["spec"]["leaseTransitions"], 5);
        assert_eq!(take["spec"]["leaseDurationSeconds"], 15);
        let renew = renewal(&e, Some(&held_by(Some("b"), "43")));
        assert_eq!(renew["metadata"]["resourceVersion"], "43");
        assert!(renew["spec"].get("leaseTransitions").is_none());
        let lease = new_lease(&e);
        assert_eq!(Record::of(&lease).holder.as_deref(), Some("b"));
    }
}
