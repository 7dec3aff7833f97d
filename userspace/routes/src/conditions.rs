//! The Gateway API conditions zerohop sets on a route's Service parents:
//! the condition types, the reasons it uses, and a condition as evaluated
//! ([`Condition`]) and as written in a status ([`StatusCondition`]). The
//! rule checks name their reasons from here, and the status module reports
//! them.

use serde::{Deserialize, Serialize};

/// Condition types.
pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";

/// The Gateway API condition reasons zerohop uses.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INCOMPATIBLE_FILTERS: &str = "IncompatibleFilters";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// zerohop's own: an HTTPRoute and a GRPCRoute compete for a Service,
    /// and the other kind's older route holds it.
    pub const CONFLICTED: &str = "Conflicted";
}

/// One status condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs` or `PartiallyInvalid`.
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub(crate) fn new(
        kind: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            kind,
            status,
            reason,
            message: message.into(),
        }
    }

    /// As written in a status.
    pub fn written(&self, observed_generation: i64, last_transition_time: &str) -> StatusCondition {
        StatusCondition {
            type_: self.kind.to_string(),
            status: if self.status { "True" } else { "False" }.to_string(),
            reason: self.reason.to_string(),
            message: self.message.clone(),
            observed_generation,
            last_transition_time: last_transition_time.to_string(),
        }
    }
}

/// A `metav1.Condition`, as written in a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: i64,
    /// RFC 3339; empty when not set yet.
    #[serde(default)]
    pub last_transition_time: String,
}
