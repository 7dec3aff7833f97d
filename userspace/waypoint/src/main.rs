//! zerohop-waypoint: the node-local HTTP proxy for L7 Services.
fn main() {}
