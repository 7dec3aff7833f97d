//! Where the agent learns the cluster from. Each source produces a
//! [`ClusterView`](zerohop_planner::ClusterView) for the planner.

pub mod dir;

pub use dir::{load_dir, Loaded};
