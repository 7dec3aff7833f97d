//! Kubernetes objects -> zerohop's model.
//!
//! The agent learns the cluster as Kubernetes objects: from the API (the
//! kube source) or from manifest files (the dir source, the tests and the
//! benchmarks). This crate turns them into the planner's small
//! [`model`](zerohop_planner::model): [`convert`] converts API objects one
//! by one, checking what routing code takes as valid; [`manifest`] reads
//! manifest files (YAML or JSON) into the same objects and gathers them in
//! a [`ClusterView`](zerohop_planner::ClusterView), keeping the file each
//! comes from. Every decision made from the view is the planner's; this
//! crate only reads.
#![forbid(unsafe_code)]

pub mod convert;
pub mod manifest;

pub use convert::{ConvertError, FromObject, ObjectRef};
pub use manifest::{
    assemble, build_view, parse_manifests, Built, Manifest, ManifestProblem, Origins, Parsed,
};
