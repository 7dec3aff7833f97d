//! zerohop's routing decisions, as pure functions.
//!
//! The cluster's objects, in a small [`model`] (the `zerohop-k8s` crate
//! converts Kubernetes objects, from the API or from manifest files, to
//! it), are gathered in a [`ClusterView`], turned into the exact desired
//! contents of the BPF frontend and backend maps for one node ([`plan()`],
//! or a [`NodePlan`] kept up to date Service by Service as the view
//! changes), and compared with what the maps hold ([`diff()`]). Services with
//! HTTPRoutes are L7 Services, sent to the node's waypoint, whose input
//! [`waypoint_config`] builds. No I/O, no kernel, no
//! async, no Kubernetes types: every decision is unit-tested (here, and from
//! manifests in `zerohop-k8s`); the agent only applies the result.
#![forbid(unsafe_code)]

pub mod addr;
pub mod diff;
pub mod model;
pub mod node_plan;
pub mod plan;
pub mod policy;
pub mod view;
pub mod waypoint;

pub use diff::{diff, diff_frontends, Change, Changes};
pub use node_plan::{plan, plan_with, plan_within, NodePlan, Update};
pub use plan::{gone, Capacity, MapEntries, Plan, PlanProblem, Waypoints};
pub use view::{ClusterView, Touched};
pub use waypoint::{l7_ports, waypoint_config};
