//! `cargo xtask`: zerohop's developer tasks.
//!
//! - `setup`: installs what a fresh machine needs (idempotent, quick when done);
//! - `lint`: formatting and clippy, the kernel programs included;
//! - `test`: setup, then the lints and every test tier, the privileged ones included, on
//!   this kernel and on each kernel of the matrix (`xtask/kernels.txt`);
//! - `demo`: a sandboxed two-node cluster showing the fast path at work.

mod bench;
mod demo;
mod kernels;
mod matrix;
mod modgraph;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
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
    /// Check that no crate has a module cycle, check formatting and run
    /// clippy (warnings are errors) on every crate, the kernel programs
    /// included.
    Lint,
    /// Run setup and the lints, then the unit tests and the privileged tests on this
    /// kernel and on every kernel of the matrix (xtask/kernels.txt).
    Test {
        /// Only the privileged tests, on this kernel of the matrix (its
        /// name in xtask/kernels.txt: 5.10, 6.1, 6.12, newest).
        #[arg(long)]
        kernel: Option<String>,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Write the README's "Supported kernels" table from the last run of the
    /// kernel matrix (target/kernel-matrix/last-run.json).
    SupportedKernels,
    /// Show the fast path in a sandboxed two-node cluster, then clean up.
    Demo,
    /// Benchmark zerohop against the kube-proxy path on one node (wrk, redis, iperf3, zh-bench).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build().map(drop),
        Task::Lint => lint(),
        Task::Test { kernel, filter } => test(kernel.as_deref(), &filter),
        Task::SupportedKernels => matrix::write_readme_table(),
        Task::Demo => {
            setup::run()?;
            let binaries = build()?;
            demo::run(&binaries)
        }
        Task::Bench(args) => {
            setup::run()?;
            let binaries = build()?;
            bench::run(&binaries, &args)
        }
    }
}

/// Paths of the programs the tests and the demo start.
pub struct Binaries {
    pub zerohop: PathBuf,
    pub waypoint: PathBuf,
    pub testpod: PathBuf,
    pub http: PathBuf,
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
        "zerohop-waypoint",
        "-p",
        "zerohop-workloads",
        "--bins",
    ])?;
    let release = workspace_root().join("target/release");
    Ok(Binaries {
        zerohop: release.join("zerohop"),
        waypoint: release.join("zerohop-waypoint"),
        testpod: release.join("zh-testpod"),
        http: release.join("zh-http"),
    })
}

/// The tiers in order; `kernel` runs the privileged tests on that kernel of
/// the matrix only.
fn test(kernel: Option<&str>, filter: &[String]) -> Result<()> {
    let started = Instant::now();
    setup::run()?;
    require_root()?;
    let binaries = build()?;
    // Read by the tests (zerohop_sandbox::zerohop_binary, waypoint_binary);
    // xtask has one thread.
    std::env::set_var("ZEROHOP_BIN", &binaries.zerohop);
    std::env::set_var("ZEROHOP_WAYPOINT_BIN", &binaries.waypoint);
    if kernel.is_none() {
        lint()?;
        println!("== unit tests (no privileges needed)");
        cargo(&["test", "--workspace", "--exclude", "zerohop-tests"])?;
        println!("== privileged tests on this kernel, in sandboxed clusters");
        let mut args = vec!["test", "--release", "-p", "zerohop-tests", "--"];
        args.extend(filter.iter().map(String::as_str));
        cargo(&args)?;
    }
    println!("== privileged tests on the kernels of the matrix, one VM at a time");
    let matrix = matrix::run(&binaries, kernel, filter);
    // Also after a failed matrix: what it left matters most then.
    let leftovers = leftovers_check();
    if let (Err(_), Err(left)) = (&matrix, &leftovers) {
        eprintln!("{left:#}");
    }
    matrix?;
    leftovers?;
    let elapsed = started.elapsed().as_secs();
    println!(
        "== cargo xtask test passed in {}m{:02}s",
        elapsed / 60,
        elapsed % 60
    );
    Ok(())
}

/// Formatting and clippy, warnings denied, for the workspace and for the
/// kernel programs (a crate of their own, built by the pinned nightly
/// toolchain for bpfel-unknown-none), and no module cycle in any crate (modgraph.rs;
/// a unit test checks that too, for a plain `cargo test`).
fn lint() -> Result<()> {
    println!("== lints: module cycles, rustfmt and clippy, the kernel programs included");
    let cycles = modgraph::workspace_cycles(&workspace_root())?;
    ensure!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let root = workspace_root();
    let nightly = |args: &[&str]| -> Result<()> {
        let status = zerohop_ebpf_toolchain::cargo(&root)?
            .args(args)
            .status()
            .with_context(|| format!("running rustup for cargo {}", args.join(" ")))?;
        ensure!(
            status.success(),
            "cargo {} failed in ebpf/programs (with the toolchain pinned in {}; \
             `cargo xtask setup` installs it)",
            args.join(" "),
            zerohop_ebpf_toolchain::TOOLCHAIN_FILE
        );
        Ok(())
    };
    nightly(&["fmt", "--check"])?;
    nightly(&[
        "clippy",
        "--release",
        "--locked",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--",
        "-D",
        "warnings",
    ])
}

/// Fails when a run left any of our network namespaces, cgroups, pins,
/// programs, VM directories, mounts or VM processes behind. Sandboxes of
/// runs still alive (another test run on the machine) are not leftovers;
/// those of runs whose process is gone are. A `zh_*` program held by no
/// live process is kept alive only by an attachment, so it is a leftover too.
pub fn leftovers_check() -> Result<()> {
    let mut left: Vec<String> = zerohop_sandbox::stale_leftovers()
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    left.extend(vm::leftovers());
    left.extend(unheld_programs_after(PROGRAM_RELEASE)?);
    if !left.is_empty() {
        bail!("left behind: {left:#?}");
    }
    println!(
        "== nothing left behind: no network namespace, cgroup, bpffs pin, program, VM, \
         virtiofsd or mount of ours"
    );
    Ok(())
}

/// How long the kernel may take to free the programs of a finished run.
/// It frees them asynchronously: the sk_msg program lives until the
/// sockhash goes, the sockhash until its last socket has left it, and a
/// socket's psock after an RCU grace period, all on work queues (seconds
/// when a run just deleted many network namespaces).
const PROGRAM_RELEASE: std::time::Duration = std::time::Duration::from_secs(20);

/// The `zh_*` programs no live process holds, once they had `grace` to go;
/// for each that stayed, what keeps it: the `zh_*` maps still alive and the
/// sockets still in our sockhashes.
fn unheld_programs_after(grace: std::time::Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + grace;
    loop {
        let unheld = unheld_programs()?;
        if unheld.is_empty() {
            return Ok(unheld);
        }
        if Instant::now() >= deadline {
            let mut left = unheld;
            left.extend(live_maps()?);
            return Ok(left);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn unheld_programs() -> Result<Vec<String>> {
    let programs: Vec<serde_json::Value> =
        serde_json::from_str(&command_output("bpftool", &["-j", "prog", "show"])?)?;
    let held = held_programs();
    Ok(programs
        .iter()
        .filter(|program| {
            let name = program["name"].as_str().unwrap_or_default();
            let id = program["id"].as_u64();
            name.starts_with("zh_") && !id.is_some_and(|id| held.contains(&id))
        })
        .map(|program| format!("program {} (id {})", program["name"], program["id"]))
        .collect())
}

/// The `zh_*` maps still alive, with the entries of the sockhashes (the
/// 4-tuples of the sockets that keep them).
fn live_maps() -> Result<Vec<String>> {
    let maps: Vec<serde_json::Value> =
        serde_json::from_str(&command_output("bpftool", &["-j", "map", "show"])?)?;
    Ok(maps
        .iter()
        .filter(|map| {
            map["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("zh_"))
        })
        .map(|map| {
            let id = map["id"].to_string();
            let mut line = format!("map {} (id {id}, {})", map["name"], map["type"]);
            if map["type"] == "sockhash" {
                let dump = command_output("bpftool", &["map", "dump", "id", &id])
                    .unwrap_or_else(|error| format!("{error:#}"));
                line.push_str(&format!(", entries:\n{dump}"));
            }
            line
        })
        .collect())
}

/// Ids of the BPF programs a live process holds, through a program or a link
/// descriptor (both show `prog_id:` in their fdinfo). bpftool's `pids` would
/// tell the same, but not every bpftool build can.
fn held_programs() -> std::collections::BTreeSet<u64> {
    let fdinfos = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|process| {
            std::fs::read_dir(process.path().join("fdinfo"))
                .into_iter()
                .flatten()
        })
        .flatten();
    fdinfos
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Runs `program` and returns its standard output; fails with its standard
/// error when it fails.
pub fn command_output(program: &str, args: &[&str]) -> Result<String> {
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

/// Where `tool` is: an absolute path if that file exists, else the first
/// match on PATH or in the sbin directories (root's tools, which a
/// non-login PATH may lack).
pub fn which(tool: &str) -> Option<PathBuf> {
    if Path::new(tool).is_absolute() {
        return Path::new(tool).is_file().then(|| tool.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// Runs cargo (the one running xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = cargo_command()
        .args(args)
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// The cargo that runs xtask, so the same toolchain builds everything, in
/// the workspace root, asking for the real kernel programs (a plain cargo
/// build embeds none; see userspace/zerohop/build.rs).
pub fn cargo_command() -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo
        .current_dir(workspace_root())
        .env("ZEROHOP_EBPF", "build");
    cargo
}
