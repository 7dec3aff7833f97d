//! zerohop's user space: the agent that keeps the BPF maps exact, and the
//! node CLI that reads them.
//!
//! Routing decisions live in the pure `zerohop-planner` crate; this crate
//! feeds it (`source`) and writes its output into the kernel (`datapath`),
//! with what this kernel supports (`features`).

pub mod agent;
pub mod agent_status;
pub mod datapath;
pub mod election;
pub mod features;
pub mod freshness;
pub mod health;
pub mod inspect;
pub mod kernel_btf;
pub mod kfunc;
pub mod lease;
pub mod map_sync;
pub mod node_idle;
pub mod others;
pub mod probe;
pub mod problem;
pub mod route_status;
pub mod source;
pub mod stale;
