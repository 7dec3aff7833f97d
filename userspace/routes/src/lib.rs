//! Gateway API HTTPRoutes and GRPCRoutes attached to Services (the GAMMA
//! mesh profile).
//!
//! Each module below depends only on modules listed before it:
//!
//! - [`model`]: the HTTPRoute, GRPCRoute and ReferenceGrant fields zerohop reads, as
//!   they arrive from the API server or a manifest file;
//! - [`duration`]: Gateway API durations (timeouts);
//! - [`retry`]: retry policies (GEP-1731) checked and compiled;
//! - [`filters`]: the edits filters make (header modifiers, path rewrites,
//!   redirect locations), also for the waypoint's responses;
//! - [`request`]: the parts of a request that routing reads;
//! - [`contract`]: what the agent writes and the waypoint reads (the
//!   waypoint config, its default path, the waypoint's socket mark);
//! - [`conditions`]: the status conditions zerohop sets (Accepted,
//!   ResolvedRefs, PartiallyInvalid) and the reasons it gives;
//! - `rules` (private): rules compiled and validated, shared by [`status`]
//!   and [`router`] so that status and routing always agree;
//! - [`status`]: a route checked against the cluster, as the per-parent
//!   status zerohop writes, and which Services are L7 Services;
//! - [`router`]: the waypoint's decision for one request.
//!
//! Everything here is pure: no I/O, no clock, no randomness of its own, so
//! every routing decision is unit-tested.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod contract;
pub mod duration;
pub mod filters;
pub mod model;
pub mod request;
pub mod retry;
pub mod router;
mod rules;
pub mod status;
#[cfg(test)]
mod testing;
