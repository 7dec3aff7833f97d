//! zerohop's privileged integration suites (`tests/*.rs`) and the fixture
//! they share ([`world::World`]). They run as root in sandboxed clusters
//! (`zerohop-sandbox`); `cargo xtask test` builds what they run and runs
//! them on this kernel and on each kernel of the matrix.

pub mod world;

pub use world::World;
