//! zerohop's privileged integration suites (`tests/*.rs`) and the fixture
//! they share ([`world::World`]). They run as root in sandboxed clusters
//! (`zerohop-sandbox`); `cargo xtask test` builds what they run and runs
//! them on this kernel and on each kernel of the matrix.

pub mod world;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{ensure, Context, Result};
pub use world::World;

/// Checks a Prometheus exposition with `promtool check metrics` (Debian's
/// prometheus package, which `cargo xtask setup` installs).
pub fn promtool_check(metrics: &str) -> Result<()> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus, installed by cargo xtask setup)")?;
    promtool
        .stdin
        .take()
        .context("stdin")?
        .write_all(metrics.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    ensure!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}
