//! zerohop's routing decisions, as pure functions.
//!
//! Kubernetes objects (from the API or from manifest files) are converted to
//! a small [`model`] ([`convert`], [`manifest`]), gathered in a
//! [`ClusterView`], turned into the exact desired
//! contents of the BPF frontend and backend maps for one node ([`plan()`],
//! or a [`NodePlan`] kept up to date Service by Service as the view
//! changes), and compared with what the maps hold ([`diff()`]). Services with
//! HTTPRoutes are L7 Services, sent to the node's waypoint, whose input
//! [`waypoint_config`] builds. No I/O, no kernel, no
//! async: every decision is unit-tested here; the agent only applies the
//! result.
#![forbid(unsafe_code)]

pub mod addr;
pub mod convert;
pub mod diff;
pub mod manifest;
pub mod model;
pub mod node_plan;
pub mod plan;
pub mod policy;
pub mod view;
pub mod waypoint;

pub use diff::{diff, diff_frontends, Change, Changes};
pub use manifest::{
    assemble, build_view, parse_manifests, Built, Manifest, ManifestProblem, Origins, Parsed,
};
pub use node_plan::{plan, plan_with, plan_within, NodePlan, Update};
pub use plan::{gone, Capacity, MapEntries, Plan, PlanProblem, Waypoints};
pub use view::{ClusterView, Touched};
pub use waypoint::{l7_ports, waypoint_config};

#[cfg(test)]
mod deploy_examples;
