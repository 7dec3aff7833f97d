//! `cargo xtask`: zerohop's developer tasks.
//!
//! - `setup`: installs what a fresh machine needs (idempotent, quick when done);
//! - `test`: setup, then every test tier, the privileged ones included;
//! - `demo`: a sandboxed two-node cluster showing the fast path at work.

mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "zerohop developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and system tools zerohop needs.
    Setup,
    /// Build the agent (and its eBPF object) and the test programs.
    Build,
    /// Run setup, then the unit tests and the privileged tests on this kernel.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Show the fast path in a sandboxed two-node cluster, then clean up.
    Demo,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build().map(drop),
        Task::Test { filter } => test(&filter),
        Task::Demo => {
            setup::run()?;
            let binaries = build()?;
            demo::run(&binaries)
        }
    }
}

/// Paths of the programs the tests and the demo start.
pub struct Binaries {
    pub zerohop: PathBuf,
    pub testpod: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn build() -> Result<Binaries> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "zerohop",
        "-p",
        "zerohop-tests",
        "--bins",
    ])?;
    let release = workspace_root().join("target/release");
    Ok(Binaries {
        zerohop: release.join("zerohop"),
        testpod: release.join("zh-testpod"),
    })
}

fn test(filter: &[String]) -> Result<()> {
    setup::run()?;
    require_root()?;
    let binaries = build()?;
    println!("== unit tests (no privileges needed)");
    cargo(&["test", "--workspace", "--exclude", "zerohop-tests"])?;
    println!("== privileged tests on this kernel, in sandboxed clusters");
    let mut args = vec!["test", "--release", "-p", "zerohop-tests", "--"];
    args.extend(filter.iter().map(String::as_str));
    let status = Command::new(cargo_path())
        .args(&args)
        .current_dir(workspace_root())
        .env("ZEROHOP_BIN", &binaries.zerohop)
        .status()?;
    if !status.success() {
        bail!("privileged tests failed");
    }
    leftovers_check()
}

/// Fails when a run left any of our network namespaces, cgroups, pins or
/// programs behind (names start with `zh`, programs with `zh_`).
pub fn leftovers_check() -> Result<()> {
    let netns = command_output("ip", &["netns", "list"])?;
    let mut left: Vec<String> = netns
        .lines()
        .filter(|line| line.starts_with("zh"))
        .map(|line| format!("netns {line}"))
        .collect();
    let cgroups = zerohop_tests::cgroup2_mount();
    for dir in [Path::new("/sys/fs/bpf"), cgroups.as_path()] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("zh") {
                left.push(entry.path().display().to_string());
            }
        }
    }
    let programs = command_output("bpftool", &["prog", "show"])?;
    left.extend(
        programs
            .lines()
            .filter(|line| line.contains(" name zh_"))
            .map(str::to_owned),
    );
    if !left.is_empty() {
        bail!("left behind: {left:#?}");
    }
    println!("== nothing left behind: no zh* network namespace, cgroup, bpffs pin or zh_* program");
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the privileged tests load BPF programs and create network namespaces: run as root");
    }
    Ok(())
}

/// Runs cargo (the one running xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_path())
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// The cargo that runs xtask, so the same toolchain builds everything.
fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
