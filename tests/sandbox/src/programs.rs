//! Where the programs the sandbox runs are: zerohop's own binaries and the
//! workloads of `tests/workloads`, as this workspace builds them.

use std::path::{Path, PathBuf};

/// The `zerohop` binary: `$ZEROHOP_BIN` (set by `cargo xtask test`), else
/// [`program`].
pub fn zerohop_binary() -> PathBuf {
    std::env::var_os("ZEROHOP_BIN").map_or_else(|| program("zerohop"), PathBuf::from)
}

/// The `zerohop-waypoint` binary: `$ZEROHOP_WAYPOINT_BIN` (set by `cargo
/// xtask test`), else [`program`].
pub fn waypoint_binary() -> PathBuf {
    std::env::var_os("ZEROHOP_WAYPOINT_BIN")
        .map_or_else(|| program("zerohop-waypoint"), PathBuf::from)
}

/// A binary of this workspace by name (`zh-testpod`, `zh-http`, …): the
/// release build, else the debug build. `cargo xtask test` builds them
/// (`cargo build --release -p zerohop-workloads` builds the workloads alone);
/// a missing one fails where it is started, naming this path.
pub fn program(name: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let release = target.join("release").join(name);
    if release.exists() {
        release
    } else {
        target.join("debug").join(name)
    }
}
