//! Gateway API HTTPRoutes attached to Services (the GAMMA mesh profile).
//!
//! - [`model`]: the HTTPRoute and ReferenceGrant fields zerohop reads, as
//!   they arrive from the API server or a manifest file;
//! - [`router`]: the waypoint's decision for one request;
//!
//! Everything here is pure: no I/O, no clock, no randomness of its own, so
//! every routing decision is unit-tested.
#![forbid(unsafe_code)]

pub mod model;
pub mod router;
