//! Writes the status of the HTTPRoutes and GRPCRoutes zerohop serves (GAMMA: Service
//! parentRefs): our `RouteParentStatus` entries, under `controllerName`
//! [`CONTROLLER_NAME`], in `status.parents` of each route.
//!
//! Which entries and conditions a route should carry is decided elsewhere
//! (pure, in `zerohop-routes`); this module only does the I/O: [`run`] watches
//! the [`RouteStatuses`] state and, for each route whose entries differ from what it
//! last wrote, reads the route, merges ours into `status.parents` and patches
//! the `/status` subresource.
//!
//! Every agent of every node evaluates the same routes, but only one writes
//! their status at a time: the holder of the status Lease (see
//! [`crate::election`]); the others only read that Lease. Writes are
//! idempotent all the same, since a new writer takes over from an old one
//! and other controllers write the same routes:
//! - nothing is written when the merged parents equal what the route already
//!   carries (ignoring `lastTransitionTime`), so a new writer writes only
//!   what changed;
//! - `lastTransitionTime` of a condition whose status did not change is kept
//!   from the route (as `meta.SetStatusCondition` does), so timestamps do not
//!   churn between writers or evaluations;
//! - the entries of other controllers are kept, in place, and ours keep their
//!   position: nobody's write is undone by reordering;
//! - JSON merge patch replaces `status.parents` as a whole, so the patch
//!   carries the resourceVersion of the read: a concurrent writer (another
//!   controller, or an old writer's last write) makes it fail with 409
//!   Conflict instead of being overwritten, and the route is retried on a
//!   later tick (read again, usually found equal by then).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};
pub use zerohop_routes::model::RouteKind;

/// The `controllerName` of our entries in a route's `status.parents`.
pub use zerohop_routes::status::CONTROLLER_NAME;
pub use zerohop_routes::{conditions::StatusCondition, status::RouteParentStatus};

/// The field manager of our status writes.
const FIELD_MANAGER: &str = "zerohop";
/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// A read or write taking longer than this counts as failed (and is retried).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Routes read and written at the same time.
const CONCURRENCY: usize = 8;

/// Our part of one route's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteStatus {
    /// The route's `metadata.generation` the entries were computed from. A
    /// route found at a newer generation is not written (its new evaluation
    /// is on the way); 0 turns that check off.
    pub generation: i64,
    /// Our entries. A condition without `lastTransitionTime` gets the time
    /// of the write.
    pub parents: Vec<RouteParentStatus>,
}

/// The status wanted for each route, by kind, namespace and name. Routes
/// absent here are not written (their status is left as it is).
pub type RouteStatuses = BTreeMap<RouteKey, RouteStatus>;

/// A route's kind, namespace and name.
pub type RouteKey = (RouteKind, String, String);

/// The route kind's resource (gateway.networking.k8s.io/v1).
fn route_resource(kind: RouteKind) -> ApiResource {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind.name());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// Keeps the routes' status in line with `desired` while `writer` says this
/// agent is the writer, until `desired`'s sender is dropped. Never fails:
/// errors are logged and the route retried every `RETRY` while other
/// routes go on.
pub async fn run(
    client: kube::Client,
    mut desired: watch::Receiver<RouteStatuses>,
    mut writer: watch::Receiver<bool>,
) {
    // The desired status last settled per route: written, found already
    // there, or found outdated by a newer generation of the route. Only
    // while this agent writes: another writer may have changed any route.
    let mut settled: BTreeMap<RouteKey, RouteStatus> = BTreeMap::new();
    let mut current = desired.borrow_and_update().clone();
    loop {
        if !*writer.borrow_and_update() {
            settled.clear();
            tokio::select! {
                // A closed `writer` never makes this agent the writer again.
                Ok(_) = writer.wait_for(|writes| *writes) => {}
                changed = desired.changed() => if changed.is_err() { return },
            }
            current = desired.borrow_and_update().clone();
            continue;
        }
        settled.retain(|key, _| current.contains_key(key));
        let mut pending: BTreeSet<RouteKey> = current
            .iter()
            .filter(|(key, status)| !settled.get(*key).is_some_and(|s| same_status(s, status)))
            .map(|(key, _)| key.clone())
            .collect();

        if !pending.is_empty() {
            // Owned jobs: the future must be Send for any caller's spawn.
            let jobs: Vec<_> = pending
                .iter()
                .filter_map(|key| Some((key.clone(), current.get(key)?.clone())))
                .map(|(key, status)| {
                    let api = Api::<DynamicObject>::namespaced_with(
                        client.clone(),
                        &key.1,
                        &route_resource(key.0),
                    );
                    async move {
                        let result =
                            tokio::time::timeout(CALL_TIMEOUT, sync_route(&api, &key.2, &status))
                                .await
                                .unwrap_or(Err(SyncError::Timeout));
                        (key, status, result)
                    }
                })
                .collect();
            let batch = futures::stream::iter(jobs)
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>();
            // Writes in flight are dropped as soon as another agent may write.
            let results = tokio::select! {
                results = batch => results,
                Ok(_) = writer.wait_for(|writes| !*writes) => continue,
            };
            for (key, status, result) in results {
                let (kind, namespace, name) = (key.0.name(), &key.1, &key.2);
                match result {
                    Ok(Outcome::Written) => {
                        info!(kind, %namespace, %name, "route status written");
                    }
                    Ok(Outcome::Unchanged) => {
                        debug!(kind, %namespace, %name, "route status already up to date");
                    }
                    Ok(Outcome::Outdated { live, ours }) => {
                        // The route changed since the evaluation: a new desired
                        // state follows; do not write the old one meanwhile.
                        debug!(kind, %namespace, %name, live, ours, "route newer than its evaluation; waiting");
                    }
                    Err(SyncError::NotFound) => {
                        debug!(kind, %namespace, %name, "route not found (yet?); retrying");
                        continue;
                    }
                    Err(error) => {
                        warn!(kind, %namespace, %name, %error, "writing the route status failed; retrying");
                        continue;
                    }
                }
                pending.remove(&key);
                settled.insert(key, status);
            }
        }

        let retry = async {
            if pending.is_empty() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(RETRY).await;
            }
        };
        let changed = tokio::select! {
            changed = desired.changed() => changed.is_ok(),
            () = retry => true,
            Ok(_) = writer.wait_for(|writes| !*writes) => true,
        };
        if !changed {
            debug!("desired route status closed; route status writer stops");
            return;
        }
        current = desired.borrow_and_update().clone();
    }
}

/// What [`sync_route`] did.
#[derive(Debug)]
enum Outcome {
    Written,
    Unchanged,
    /// The route's generation is newer than the one evaluated.
    Outdated {
        live: i64,
        ours: i64,
    },
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("route not found")]
    NotFound,
    #[error("conflict: the route changed since it was read")]
    Conflict,
    #[error("timed out after {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("route has no resourceVersion")]
    NoResourceVersion,
    #[error(transparent)]
    Kube(kube::Error),
}

impl From<kube::Error> for SyncError {
    fn from(error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 404 => SyncError::NotFound,
            kube::Error::Api(status) if status.code == 409 => SyncError::Conflict,
            _ => SyncError::Kube(error),
        }
    }
}

/// Reads one route and patches its status if our entries differ.
async fn sync_route(
    api: &Api<DynamicObject>,
    name: &str,
    status: &RouteStatus,
) -> Result<Outcome, SyncError> {
    let route = api.get(name).await?;
    if let Some(live) = route.metadata.generation {
        if status.generation > 0 && live > status.generation {
            return Ok(Outcome::Outdated {
                live,
                ours: status.generation,
            });
        }
    }
    let resource_version = route
        .metadata
        .resource_version
        .clone()
        .ok_or(SyncError::NoResourceVersion)?;
    let existing: &[Value] = route
        .data
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let mut ours = status.parents.clone();
    fill_transition_times(&mut ours, &now());
    let parents = merged_parents(existing, &ours);
    if same_ignoring_transition_time(existing, &parents) {
        return Ok(Outcome::Unchanged);
    }
    let patch = json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {"parents": parents},
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(name, &pp, &Patch::Merge(&patch)).await?;
    Ok(Outcome::Written)
}

/// Whether two desired states of a route need no write from one to the other.
fn same_status(a: &RouteStatus, b: &RouteStatus) -> bool {
    let times_cleared = |parents: &[RouteParentStatus]| {
        let mut parents = parents.to_vec();
        for condition in parents.iter_mut().flat_map(|p| &mut p.conditions) {
            condition.last_transition_time.clear();
        }
        parents
    };
    a.generation == b.generation && times_cleared(&a.parents) == times_cleared(&b.parents)
}

/// Now, as a Kubernetes `metav1.Time` (RFC 3339, seconds).
fn now() -> String {
    let time = Time(k8s_openapi::jiff::Timestamp::now());
    match serde_json::to_value(time) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// An entry of ours, read back from a route (`None`: another controller's,
/// or not one zerohop could have written).
fn ours_in(entry: &Value) -> Option<RouteParentStatus> {
    is_ours(entry)
        .then(|| serde_json::from_value(entry.clone()).ok())
        .flatten()
}

fn is_ours(entry: &Value) -> bool {
    entry.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
}

/// `status.parents` with ours replaced by `ours`: other controllers' entries
/// are kept as they are, where they are; each of ours takes the place of our
/// existing entry for the same `parentRef` (new ones are appended in the
/// order given, ours for parents no longer in `ours` are dropped). A
/// condition keeps its existing `lastTransitionTime` when its status did not
/// change (whatever its reason, message or observedGeneration). Our entries
/// always carry our `controllerName`.
pub fn merged_parents(existing: &[Value], ours: &[RouteParentStatus]) -> Vec<Value> {
    let mut ours: Vec<Option<RouteParentStatus>> = ours
        .iter()
        .map(|entry| {
            Some(RouteParentStatus {
                controller_name: CONTROLLER_NAME.to_string(),
                ..entry.clone()
            })
        })
        .collect();
    let written = |entry: RouteParentStatus| {
        serde_json::to_value(entry).expect("a RouteParentStatus is JSON")
    };
    let mut merged = Vec::with_capacity(existing.len() + ours.len());
    for old in existing {
        if !is_ours(old) {
            merged.push(old.clone());
            continue;
        }
        // Ours, but not readable as ours: replaced or dropped.
        let Some(old) = ours_in(old) else { continue };
        let slot = ours.iter_mut().find(|new| {
            new.as_ref()
                .is_some_and(|new| new.parent_ref == old.parent_ref)
        });
        if let Some(new) = slot.and_then(Option::take) {
            merged.push(written(keep_transition_times(&old, new)));
        }
    }
    merged.extend(ours.into_iter().flatten().map(written));
    merged
}

/// `new` with the `lastTransitionTime` of `old`'s condition of the same type
/// wherever the condition's status is unchanged.
fn keep_transition_times(old: &RouteParentStatus, mut new: RouteParentStatus) -> RouteParentStatus {
    for condition in &mut new.conditions {
        let before = old.conditions.iter().find(|c| c.type_ == condition.type_);
        if let Some(before) = before.filter(|before| before.status == condition.status) {
            if !before.last_transition_time.is_empty() {
                condition
                    .last_transition_time
                    .clone_from(&before.last_transition_time);
            }
        }
    }
    new
}

/// Sets `lastTransitionTime` to `now` on the conditions without one.
fn fill_transition_times(parents: &mut [RouteParentStatus], now: &str) {
    for condition in parents.iter_mut().flat_map(|p| &mut p.conditions) {
        if condition.last_transition_time.is_empty() {
            condition.last_transition_time = now.to_string();
        }
    }
}

/// The parents without the conditions' `lastTransitionTime`.
fn without_transition_times(parents: &[Value]) -> Vec<Value> {
    let mut parents = parents.to_vec();
    for entry in &mut parents {
        if let Some(conditions) = entry.get_mut("conditions").and_then(Value::as_array_mut) {
            for condition in conditions.iter_mut().filter_map(Value::as_object_mut) {
                condition.remove("lastTransitionTime");
            }
        }
    }
    parents
}

/// Whether two `status.parents` lists are equal but for the conditions'
/// `lastTransitionTime`.
pub fn same_ignoring_transition_time(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && without_transition_times(a) == without_transition_times(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent_ref(service: &str) -> Value {
        json!({"group": "", "kind": "Service", "name": service, "port": 80})
    }

    fn condition(kind: &str, status: &str, reason: &str, generation: i64, time: &str) -> Value {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": time,
        })
    }

    fn entry(controller: &str, service: &str, conditions: Vec<Value>) -> Value {
        json!({
            "parentRef": parent_ref(service),
            "controllerName": controller,
            "conditions": conditions,
        })
    }

    /// The entry of `controller` for parent `service`, accepted.
    fn accepted(controller: &str, service: &str, generation: i64, time: &str) -> Value {
        let condition = condition("Accepted", "True", "Accepted", generation, time);
        entry(controller, service, vec![condition])
    }

    fn typed(entries: &[Value]) -> Vec<RouteParentStatus> {
        entries
            .iter()
            .map(|entry| serde_json::from_value(entry.clone()).unwrap())
            .collect()
    }

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-06-01T00:00:00Z";

    #[test]
    fn keeps_other_controllers_in_place_and_replaces_ours() {
        let foreign = accepted("example.com/mesh", "web", 1, T0);
        let old_ours = entry(
            CONTROLLER_NAME,
            "web",
            vec![condition("Accepted", "False", "NotAllowed", 1, T0)],
        );
        let gone = accepted(CONTROLLER_NAME, "old", 1, T0);
        let foreign2 = entry("example.com/other", "db", vec![]);
        let existing = vec![old_ours, foreign.clone(), gone, foreign2.clone()];

        let new_web = accepted(CONTROLLER_NAME, "web", 2, T1);
        let new_api = accepted(CONTROLLER_NAME, "api", 2, T1);
        let merged = merged_parents(&existing, &typed(&[new_api.clone(), new_web.clone()]));
        // Ours for web stays first, the foreign ones stay where they were, the
        // dropped parent is gone and the new one is appended.
        assert_eq!(merged, vec![new_web, foreign, foreign2, new_api]);
    }

    #[test]
    fn transition_time_kept_while_status_is_unchanged() {
        let existing = vec![entry(
            CONTROLLER_NAME,
            "web",
            vec![
                condition("Accepted", "True", "Accepted", 1, T0),
                condition("ResolvedRefs", "True", "ResolvedRefs", 1, T0),
            ],
        )];
        // Same status, new generation and reason: the old time stays.
        // Changed status: the new time.
        let ours = vec![entry(
            CONTROLLER_NAME,
            "web",
            vec![
                condition("Accepted", "True", "Accepted", 2, T1),
                condition("ResolvedRefs", "False", "BackendNotFound", 2, T1),
            ],
        )];
        let merged = merged_parents(&existing, &typed(&ours));
        let conditions = merged[0]["conditions"].as_array().unwrap();
        assert_eq!(conditions[0]["lastTransitionTime"], T0);
        assert_eq!(conditions[0]["observedGeneration"], 2);
        assert_eq!(conditions[1]["lastTransitionTime"], T1);
        assert_eq!(conditions[1]["reason"], "BackendNotFound");
    }

    #[test]
    fn equal_state_means_no_write() {
        let existing = vec![
            entry("example.com/mesh", "web", vec![]),
            accepted(CONTROLLER_NAME, "web", 1, T0),
        ];
        // A fresh evaluation stamps a new time: still equal, nothing to write.
        let ours = vec![accepted(CONTROLLER_NAME, "web", 1, T1)];
        let merged = merged_parents(&existing, &typed(&ours));
        assert!(same_ignoring_transition_time(&existing, &merged));
        assert_eq!(merged, existing, "the time is kept too");

        let changed = vec![accepted(CONTROLLER_NAME, "web", 2, T1)];
        assert!(!same_ignoring_transition_time(
            &existing,
            &merged_parents(&existing, &typed(&changed))
        ));
        // Dropping our last entry is a change; other controllers' are not ours to drop.
        let only_foreign = merged_parents(&existing, &[]);
        assert_eq!(only_foreign, vec![existing[0].clone()]);
        assert!(!same_ignoring_transition_time(&existing, &only_foreign));
    }

    #[test]
    fn controller_name_and_missing_times_are_filled_in() {
        let mut ours = typed(&[entry(
            "example.com/not-us",
            "web",
            vec![json!({"type": "Accepted", "status": "True", "reason": "Accepted"})],
        )]);
        fill_transition_times(&mut ours, T1);
        assert_eq!(ours[0].conditions[0].last_transition_time, T1);
        let merged = merged_parents(&[], &ours);
        assert_eq!(
            merged[0]["controllerName"], CONTROLLER_NAME,
            "ours, whatever it said"
        );
        assert_eq!(merged[0]["conditions"][0]["lastTransitionTime"], T1);
        // A time already there stays.
        let mut timed = typed(&[accepted(CONTROLLER_NAME, "web", 1, T0)]);
        fill_transition_times(&mut timed, T1);
        assert_eq!(timed[0].conditions[0].last_transition_time, T0);
        assert!(now().ends_with('Z'), "{}", now());
    }

    #[test]
    fn an_entry_of_ours_that_does_not_read_as_one_is_replaced() {
        let broken = json!({"parentRef": "web", "controllerName": CONTROLLER_NAME});
        let foreign = entry("example.com/mesh", "web", vec![]);
        let ours = typed(&[accepted(CONTROLLER_NAME, "web", 1, T0)]);
        let merged = merged_parents(&[broken, foreign.clone()], &ours);
        assert_eq!(
            merged,
            vec![foreign, serde_json::to_value(&ours[0]).unwrap()]
        );
    }
}
