//! The map writes that turn the current contents into the desired ones.
//!
//! Only entries that differ are written. The writes must be applied in this
//! order, which [`Changes::in_order`] gives:
//!
//! 1. upsert backends (and names, which no program reads): new slots exist
//!    before any Service counts them;
//! 2. upsert Services: a Service that grows now counts slots already
//!    written, one that shrinks stops counting the slots about to go;
//! 3. delete Services: nothing points at their slots any more;
//! 4. delete backends (and names): slots no Service counts.
//!
//! So the connect hook, which reads a Service and then one of its slots
//! `0..endpoints`, always finds the slot, whether the Service grows, shrinks
//! or goes. (While the backends of a Service are rewritten one by one a
//! connect may see old and new endpoints side by side; every one of them is
//! an endpoint the Service had a moment ago or has now.)

use std::collections::{BTreeMap, BTreeSet};

use zerohop_abi::{self as abi, BackendKey, FrontendKey};

use crate::plan::MapEntries;

/// The writes from one map state to another, grouped by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Backend slots to add or overwrite (first).
    pub upsert_backends: Vec<(BackendKey, abi::Backend)>,
    /// Frontends to add or overwrite (second).
    pub upsert_services: Vec<(FrontendKey, abi::Service)>,
    /// Frontends to remove (third).
    pub delete_services: Vec<FrontendKey>,
    /// Backend slots to remove (last).
    pub delete_backends: Vec<BackendKey>,
    /// Frontend names to add or overwrite (with the backends).
    pub upsert_names: Vec<(FrontendKey, abi::ServiceName)>,
    /// Frontend names to remove (with the backends).
    pub delete_names: Vec<FrontendKey>,
}

/// One map write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add or overwrite a backend slot.
    UpsertBackend(BackendKey, abi::Backend),
    /// Add or overwrite a frontend.
    UpsertService(FrontendKey, abi::Service),
    /// Remove a frontend.
    DeleteService(FrontendKey),
    /// Remove a backend slot.
    DeleteBackend(BackendKey),
    /// Add or overwrite a frontend's name.
    UpsertName(FrontendKey, abi::ServiceName),
    /// Remove a frontend's name.
    DeleteName(FrontendKey),
}

/// What to write so that maps holding `current` hold `desired`.
pub fn diff(current: &MapEntries, desired: &MapEntries) -> Changes {
    let (upsert_backends, delete_backends) = map_diff(&current.backends, &desired.backends);
    let (upsert_services, delete_services) = map_diff(&current.services, &desired.services);
    let (upsert_names, delete_names) = map_diff(&current.names, &desired.names);
    Changes {
        upsert_backends,
        upsert_services,
        delete_services,
        delete_backends,
        upsert_names,
        delete_names,
    }
}

/// [`diff`] restricted to the entries of `frontends`: what to write when
/// only those can differ (a [`crate::NodePlan`] update says which), at a
/// cost that follows their number, not the maps' size.
pub fn diff_frontends(
    current: &MapEntries,
    desired: &MapEntries,
    frontends: &BTreeSet<FrontendKey>,
) -> Changes {
    let mut changes = Changes::default();
    for frontend in frontends {
        let (upserts, deletes) = map_diff(
            &slots_of(&current.backends, frontend),
            &slots_of(&desired.backends, frontend),
        );
        changes.upsert_backends.extend(upserts);
        changes.delete_backends.extend(deletes);
        let (upserts, deletes) = map_diff(
            &entry_of(&current.services, frontend),
            &entry_of(&desired.services, frontend),
        );
        changes.upsert_services.extend(upserts);
        changes.delete_services.extend(deletes);
        let (upserts, deletes) = map_diff(
            &entry_of(&current.names, frontend),
            &entry_of(&desired.names, frontend),
        );
        changes.upsert_names.extend(upserts);
        changes.delete_names.extend(deletes);
    }
    changes
}

/// The endpoint slots of `frontend`.
fn slots_of(
    backends: &BTreeMap<BackendKey, abi::Backend>,
    frontend: &FrontendKey,
) -> BTreeMap<BackendKey, abi::Backend> {
    let slot = |slot| BackendKey {
        frontend: *frontend,
        slot,
    };
    backends
        .range(slot(0)..=slot(u32::MAX))
        .map(|(key, backend)| (*key, *backend))
        .collect()
}

/// The entry of `key` in `map`, alone.
fn entry_of<K: Ord + Copy, V: Copy>(map: &BTreeMap<K, V>, key: &K) -> BTreeMap<K, V> {
    map.get_key_value(key)
        .map(|(key, value)| (*key, *value))
        .into_iter()
        .collect()
}

/// Entries of `desired` missing or different in `current`, and keys of
/// `current` missing in `desired`.
fn map_diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = desired
        .iter()
        .filter(|(key, value)| current.get(key) != Some(value))
        .map(|(key, value)| (*key, *value))
        .collect();
    let deletes = current
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    (upserts, deletes)
}

impl Changes {
    /// True when the maps already hold what is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of map writes.
    pub fn len(&self) -> usize {
        self.upsert_backends.len()
            + self.upsert_services.len()
            + self.delete_services.len()
            + self.delete_backends.len()
            + self.upsert_names.len()
            + self.delete_names.len()
    }

    /// Every write, in the order they must be applied (see the module doc).
    pub fn in_order(&self) -> impl Iterator<Item = Change> + '_ {
        upserts(&self.upsert_backends, Change::UpsertBackend)
            .chain(upserts(&self.upsert_names, Change::UpsertName))
            .chain(upserts(&self.upsert_services, Change::UpsertService))
            .chain(deletes(&self.delete_services, Change::DeleteService))
            .chain(deletes(&self.delete_backends, Change::DeleteBackend))
            .chain(deletes(&self.delete_names, Change::DeleteName))
    }
}

/// Each entry to add or overwrite, as the write `change` makes of it.
fn upserts<K: Copy, V: Copy>(
    entries: &[(K, V)],
    change: fn(K, V) -> Change,
) -> impl Iterator<Item = Change> + '_ {
    entries.iter().map(move |&(key, value)| change(key, value))
}

/// Each key to remove, as the write `change` makes of it.
fn deletes<K: Copy>(keys: &[K], change: fn(K) -> Change) -> impl Iterator<Item = Change> + '_ {
    keys.iter().copied().map(change)
}

impl Change {
    /// Applies the write to an in-memory copy of the maps (for callers that
    /// track what they wrote, and for tests).
    pub fn apply_to(self, maps: &mut MapEntries) {
        match self {
            Change::UpsertBackend(key, value) => {
                maps.backends.insert(key, value);
            }
            Change::UpsertService(key, value) => {
                maps.services.insert(key, value);
            }
            Change::DeleteService(key) => {
                maps.services.remove(&key);
            }
            Change::DeleteBackend(key) => {
                maps.backends.remove(&key);
            }
            Change::UpsertName(key, value) => {
                maps.names.insert(key, value);
            }
            Change::DeleteName(key) => {
                maps.names.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::frontend_key;
    use zerohop_abi::SERVICE_NO_BYPASS;

    fn frontend(last_octet: u8) -> FrontendKey {
        frontend_key([10, 96, 0, last_octet].into(), 80)
    }

    fn backend(last_octet: u8) -> abi::Backend {
        let (addr, _) = crate::addr::to_kernel([10, 244, 1, last_octet].into());
        abi::Backend {
            addr,
            port: 8080,
            local: 1,
            _pad: 0,
        }
    }

    /// Maps where each frontend has backends with the given last octets.
    fn maps(frontends: &[(u8, &[u8])]) -> MapEntries {
        let mut maps = MapEntries::default();
        for &(front, backends) in frontends {
            for (index, &octet) in (0u32..).zip(backends) {
                maps.backends.insert(slot(front, index), backend(octet));
            }
            let endpoints = u32::try_from(backends.len()).unwrap();
            maps.services.insert(frontend(front), counting(endpoints));
        }
        maps
    }

    /// A frontend's value: `endpoints` slots, no flag.
    fn counting(endpoints: u32) -> abi::Service {
        abi::Service {
            endpoints,
            flags: 0,
            affinity_seconds: 0,
        }
    }

    fn slot(front: u8, slot: u32) -> BackendKey {
        BackendKey {
            frontend: frontend(front),
            slot,
        }
    }

    /// Every Service counts only slots that exist.
    fn assert_consistent(maps: &MapEntries, step: &str) {
        for (key, service) in &maps.services {
            for slot in 0..service.endpoints {
                assert!(
                    maps.backends.contains_key(&BackendKey {
                        frontend: *key,
                        slot
                    }),
                    "{step}: {key:?} counts missing slot {slot}"
                );
            }
        }
    }

    /// Applies the changes one write at a time, checking consistency after
    /// each, and returns the final maps.
    fn apply_checked(current: &MapEntries, changes: &Changes) -> MapEntries {
        let mut maps = current.clone();
        for change in changes.in_order() {
            change.apply_to(&mut maps);
            assert_consistent(&maps, &format!("after {change:?}"));
        }
        maps
    }

    #[test]
    fn identical_maps_need_no_write() {
        let current = maps(&[(10, &[1, 2]), (20, &[3])]);
        let changes = diff(&current, &current.clone());
        assert!(changes.is_empty());
        assert_eq!(changes.len(), 0);
    }

    #[test]
    fn from_empty_everything_is_upserted_backends_first() {
        let desired = maps(&[(10, &[1, 2])]);
        let changes = diff(&MapEntries::default(), &desired);
        assert_eq!(changes.len(), 3);
        assert_eq!(
            changes.in_order().collect::<Vec<_>>(),
            vec![
                Change::UpsertBackend(slot(10, 0), backend(1)),
                Change::UpsertBackend(slot(10, 1), backend(2)),
                Change::UpsertService(frontend(10), counting(2)),
            ]
        );
        assert_eq!(apply_checked(&MapEntries::default(), &changes), desired);
    }

    #[test]
    fn growing_writes_the_new_slot_then_the_count_only() {
        let current = maps(&[(10, &[1, 2]), (20, &[5])]);
        let desired = maps(&[(10, &[1, 2, 3]), (20, &[5])]);
        let changes = diff(&current, &desired);
        assert_eq!(
            changes,
            Changes {
                upsert_backends: vec![(slot(10, 2), backend(3))],
                upsert_services: vec![(frontend(10), counting(3))],
                delete_services: vec![],
                delete_backends: vec![],
                ..Changes::default()
            }
        );
        assert_eq!(apply_checked(&current, &changes), desired);
    }

    #[test]
    fn names_come_with_their_frontend_and_go_with_it() {
        let mut current = maps(&[(10, &[1])]);
        current
            .names
            .insert(frontend(10), abi::ServiceName::new("default", "web"));
        let mut desired = maps(&[(20, &[1])]);
        desired
            .names
            .insert(frontend(20), abi::ServiceName::new("default", "api"));
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.upsert_names,
            vec![(frontend(20), abi::ServiceName::new("default", "api"))]
        );
        assert_eq!(changes.delete_names, vec![frontend(10)]);
        assert_eq!(apply_checked(&current, &changes), desired);
        assert!(diff(&desired, &desired.clone()).is_empty());
    }

    #[test]
    fn shrinking_writes_the_count_then_deletes_the_slot() {
        let current = maps(&[(10, &[1, 2, 3])]);
        let desired = maps(&[(10, &[1, 2])]);
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.in_order().collect::<Vec<_>>(),
            vec![
                Change::UpsertService(frontend(10), counting(2)),
                Change::DeleteBackend(slot(10, 2)),
            ]
        );
        assert_eq!(apply_checked(&current, &changes), desired);
    }

    #[test]
    fn replacing_an_endpoint_rewrites_only_its_slot() {
        let current = maps(&[(10, &[1, 2])]);
        let desired = maps(&[(10, &[1, 7])]);
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.in_order().collect::<Vec<_>>(),
            vec![Change::UpsertBackend(slot(10, 1), backend(7))]
        );
    }

    #[test]
    fn a_flag_change_rewrites_only_the_service() {
        let current = maps(&[(10, &[1, 2])]);
        let mut desired = current.clone();
        desired.services.get_mut(&frontend(10)).unwrap().flags = SERVICE_NO_BYPASS;
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.in_order().collect::<Vec<_>>(),
            vec![Change::UpsertService(
                frontend(10),
                abi::Service {
                    endpoints: 2,
                    flags: SERVICE_NO_BYPASS,
                    affinity_seconds: 0,
                }
            )]
        );
    }

    #[test]
    fn a_removed_service_goes_before_its_slots() {
        let current = maps(&[(10, &[1, 2]), (20, &[3])]);
        let desired = maps(&[(20, &[3])]);
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.in_order().collect::<Vec<_>>(),
            vec![
                Change::DeleteService(frontend(10)),
                Change::DeleteBackend(slot(10, 0)),
                Change::DeleteBackend(slot(10, 1)),
            ]
        );
        assert_eq!(apply_checked(&current, &changes), desired);
    }

    #[test]
    fn many_changes_at_once_stay_consistent_at_every_step() {
        let current = maps(&[(10, &[1, 2, 3]), (20, &[4]), (30, &[5, 6]), (40, &[])]);
        let desired = maps(&[(10, &[1]), (20, &[4, 8, 9]), (40, &[7]), (50, &[2, 3])]);
        let changes = diff(&current, &desired);
        assert_eq!(apply_checked(&current, &changes), desired);
        // Nothing unchanged is rewritten: slot 10/0 and slot 20/0 stay.
        let upserted: Vec<BackendKey> = changes
            .upsert_backends
            .iter()
            .map(|(key, _)| *key)
            .collect();
        assert!(!upserted.contains(&slot(10, 0)));
        assert!(!upserted.contains(&slot(20, 0)));
        assert_eq!(
            upserted,
            vec![
                slot(20, 1),
                slot(20, 2),
                slot(40, 0),
                slot(50, 0),
                slot(50, 1)
            ]
        );
        assert_eq!(changes.upsert_services.len(), 4);
        assert_eq!(changes.delete_services, vec![frontend(30)]);
        assert_eq!(
            changes.delete_backends,
            vec![slot(10, 1), slot(10, 2), slot(30, 0), slot(30, 1)]
        );
        assert_eq!(changes.len(), 5 + 4 + 1 + 4);
    }
}
