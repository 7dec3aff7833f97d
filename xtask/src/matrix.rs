//! The kernel tier of `cargo xtask test`: the privileged test suites on each
//! kernel of `xtask/kernels.txt`, one VM at a time (see vm.rs), then a table
//! kernel × suite. Any failure on any kernel fails the tier. The run is kept
//! in `target/kernel-matrix/last-run.json`, which `cargo xtask
//! supported-kernels` turns into the README's table, and each kernel's
//! console in `target/kernel-matrix/<kernel>/console.log`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    cargo_command,
    kernels::{self, Entry},
    vm::{self, Accel},
    workspace_root, Binaries,
};

/// Suites of zerohop-tests that never touch the kernel: the host tier runs
/// them; booting a kernel for them would prove nothing.
const HOST_ONLY: &[&str] = &["apiserver", "route_status"];
/// Runs first on every kernel: it says in seconds whether the programs load
/// and which features are on, before the longer suites.
const FIRST_SUITE: &str = "kernel";

/// How a suite fared on a kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteRun {
    pub suite: String,
    /// `passed`, `failed` or `skipped`.
    pub status: String,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    pub seconds: u64,
}

/// One kernel of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelRun {
    pub name: String,
    pub debian_suite: String,
    pub package: Option<String>,
    pub version: Option<String>,
    pub release: Option<String>,
    pub accel: Option<String>,
    pub suites: Vec<SuiteRun>,
    /// What went wrong besides the suites (fetch, boot, VM).
    pub problem: Option<String>,
    /// The first VM ended during a suite; the rest ran in a second one.
    #[serde(default)]
    pub crashed: Option<String>,
    /// `zerohop probe -o json` on this kernel: features and verifier numbers.
    pub probe: Option<serde_json::Value>,
    pub seconds: u64,
}

impl KernelRun {
    pub fn passed(&self) -> bool {
        self.problem.is_none() && self.suites.iter().all(|suite| suite.status != "failed")
    }

    fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self.problem.iter().cloned().collect();
        failures.extend(
            self.suites
                .iter()
                .filter(|suite| suite.status == "failed")
                .map(|suite| suite.suite.clone()),
        );
        failures
    }
}

/// The whole run, as `last-run.json` keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    pub kernels: Vec<KernelRun>,
    pub seconds: u64,
}

pub fn out_dir() -> PathBuf {
    workspace_root().join("target/kernel-matrix")
}

/// Runs the tier on every kernel, or on the one named `only`; `filter` goes
/// to every suite (test name filters).
pub fn run(binaries: &Binaries, only: Option<&str>, filter: &[String]) -> Result<()> {
    let started = Instant::now();
    let entries = kernels::matrix()?;
    let entries: Vec<&Entry> = match only {
        Some(name) => {
            let entry = entries.iter().find(|entry| entry.name == name);
            vec![entry.with_context(|| {
                let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
                format!("no kernel {name} in xtask/kernels.txt; there are {names:?}")
            })?]
        }
        None => entries.iter().collect(),
    };
    let suites = suite_binaries()?;
    for entry in &entries {
        for suite in entry.suites.iter().flatten() {
            ensure!(
                suites.contains_key(suite),
                "kernel {}: no test suite {suite} in zerohop-tests for the matrix",
                entry.name
            );
        }
    }
    same_filesystem_as_root(&[&kernels::cache_dir(), &workspace_root()])?;
    vm::stop_on_signals();
    vm::sweep_stale();
    std::fs::create_dir_all(out_dir())?;

    let mut accel = if vm::kvm_available() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let mut runs = Vec::new();
    for entry in entries {
        if vm::interrupted() {
            bail!("stopped by a signal");
        }
        let (run, next_accel) = run_kernel(entry, binaries, &suites, filter, accel);
        accel = next_accel;
        println!(
            "== kernel {}: {} in {}",
            run.name,
            if run.passed() { "passed" } else { "FAILED" },
            duration(run.seconds)
        );
        runs.push(run);
    }
    let run = Run {
        kernels: runs,
        seconds: started.elapsed().as_secs(),
    };
    print_summary(&run, &suites);
    std::fs::write(
        out_dir().join("last-run.json"),
        serde_json::to_string_pretty(&run)?,
    )?;
    let failed: Vec<String> = run
        .kernels
        .iter()
        .filter(|kernel| !kernel.passed())
        .map(|kernel| format!("{} ({})", kernel.name, kernel.failures().join(", ")))
        .collect();
    // A CI log keeps only its end; a console's end says why a VM stopped
    // early (an oops, a hung task, the OOM killer).
    for kernel in &run.kernels {
        let dir = out_dir().join(&kernel.name);
        if kernel.crashed.is_some() {
            print_console_tail(&dir.join("console.crashed.log"));
        }
        if !kernel.passed() {
            print_console_tail(&dir.join("console.log"));
        }
    }
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join("; "));
    }
    Ok(())
}

/// The last lines of a console log, for a kernel that failed.
fn print_console_tail(log: &Path) {
    const LINES: usize = 60;
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    println!("\n== the last {LINES} lines of {}", log.display());
    for line in &lines[lines.len().saturating_sub(LINES)..] {
        println!("{line}");
    }
}

/// Fetches and boots one kernel and runs its suites. Returns the
/// acceleration to use for the next kernel: KVM until a kernel hangs under
/// it (as stock kernels do behind some software hypervisors), then TCG.
fn run_kernel(
    entry: &Entry,
    binaries: &Binaries,
    suites: &BTreeMap<String, PathBuf>,
    filter: &[String],
    mut accel: Accel,
) -> (KernelRun, Accel) {
    let started = Instant::now();
    let mut run = KernelRun {
        name: entry.name.clone(),
        debian_suite: entry.suite.clone(),
        package: None,
        version: None,
        release: None,
        accel: None,
        suites: Vec::new(),
        problem: None,
        crashed: None,
        probe: None,
        seconds: 0,
    };
    let kernel = match kernels::fetch(entry) {
        Ok(kernel) => kernel,
        Err(error) => {
            run.problem = Some(format!("cannot fetch the kernel: {error:#}"));
            return (run, accel);
        }
    };
    run.package = Some(kernel.package.clone());
    run.version = Some(kernel.version.clone());
    run.release = Some(kernel.release.clone());
    let chosen = chosen_suites(entry, suites);
    let work = out_dir().join(&entry.name);
    let log = work.join("console.log");
    let boot = |chosen: &[String], accel: &mut Accel| {
        let plan = plan(&kernel.modules, binaries, suites, chosen, filter);
        boot(&kernel, &entry.name, chosen, &plan, accel, &work, &log)
    };
    let mut outcome = match boot(&chosen, &mut accel) {
        Ok(outcome) => outcome,
        Err(error) => {
            run.problem = Some(format!("cannot run the VM: {error:#}"));
            run.seconds = started.elapsed().as_secs();
            return (run, accel);
        }
    };
    // A guest kernel that panicked or reset in the middle of the plan (under
    // emulation, seen as oopses while the kernel patched its own text) gets
    // one more VM for the suites it did not finish. The summary says so and
    // prints the end of the first console.
    if ended_early(&outcome) {
        let crashed = work.join("console.crashed.log");
        let _ = std::fs::rename(&log, &crashed);
        let rest = unfinished(&chosen, &outcome);
        let note = format!(
            "the VM ended during {} (console: {}); {} ran again in a new VM",
            rest.first().map_or("-", String::as_str),
            crashed.display(),
            rest.join(" ")
        );
        println!("== kernel {}: {note}", entry.name);
        run.crashed = Some(note);
        match boot(&rest, &mut accel) {
            Ok(mut again) => {
                let mut suites = std::mem::take(&mut outcome.suites);
                suites.append(&mut again.suites);
                again.suites = suites;
                again.report = again.report.or(outcome.report);
                outcome = again;
            }
            Err(error) => run.problem = Some(format!("cannot run the VM again: {error:#}")),
        }
    }
    run.accel = Some(format!("{accel:?}"));
    run.probe = outcome
        .report
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok());
    run.problem = run
        .problem
        .take()
        .or_else(|| vm_problem(&outcome, &kernel.release, &log))
        .or_else(|| {
            run.probe
                .is_none()
                .then(|| "no probe report from the guest".to_owned())
        });
    run.suites = suite_runs(&outcome, suites, &chosen, &log);
    run.seconds = started.elapsed().as_secs();
    (run, accel)
}

/// Boots the kernel for `plan`, the suites `chosen`: under KVM until a
/// kernel hangs under it (as stock kernels do behind some software
/// hypervisors), then TCG for this and every later kernel.
fn boot(
    kernel: &kernels::Kernel,
    name: &str,
    chosen: &[String],
    plan: &str,
    accel: &mut Accel,
    work: &Path,
    log: &Path,
) -> Result<vm::Outcome> {
    // A kernel that never reaches its init under TCG (seen once: the newest
    // kernel oopsed in the scheduler while patching its own text, before
    // any of our code ran) is booted once more; its first console is kept.
    let mut booted_again = false;
    loop {
        println!(
            "== kernel {name}: booting {} under {accel:?}: {}",
            kernel.release,
            chosen.join(" ")
        );
        std::fs::create_dir_all(work)?;
        let outcome = vm::run(kernel, name, plan, *accel, work, log)?;
        if outcome.kvm_hung {
            println!(
                "== kernel {name}: {}; TCG from now on",
                outcome.stopped.as_deref().unwrap_or_default()
            );
            *accel = Accel::Tcg;
        } else if outcome.booted.is_none() && !booted_again {
            booted_again = true;
            let first = work.join("console.first-boot.log");
            let _ = std::fs::rename(log, &first);
            println!(
                "== kernel {name}: the guest did not reach its init (console: {}); booting once more",
                first.display()
            );
        } else {
            return Ok(outcome);
        }
    }
}

/// The suites of `chosen` that did not end in `outcome`, in plan order.
fn unfinished(chosen: &[String], outcome: &vm::Outcome) -> Vec<String> {
    chosen
        .iter()
        .filter(|name| !outcome.suites.iter().any(|(ended, _, _)| ended == *name))
        .cloned()
        .collect()
}

/// The guest ran part of its plan, then its VM ended without being stopped.
fn ended_early(outcome: &vm::Outcome) -> bool {
    outcome.booted.is_some() && !outcome.done && outcome.stopped.is_none()
}

/// What went wrong with the VM itself, if anything.
fn vm_problem(outcome: &vm::Outcome, release: &str, log: &Path) -> Option<String> {
    let log = log.display();
    match (&outcome.booted, &outcome.stopped) {
        (_, Some(stopped)) => Some(format!("VM {stopped} (console: {log})")),
        (None, None) => Some(format!("the guest did not start (console: {log})")),
        (Some(booted), None) if booted != release => {
            Some(format!("booted {booted}, not {release}"))
        }
        (Some(_), None) if !outcome.done => {
            Some(format!("the VM ended before its plan did (console: {log})"))
        }
        _ => None,
    }
}

/// Each suite of the matrix on this kernel: passed or failed as it ran,
/// failed if chosen but never run, else skipped.
fn suite_runs(
    outcome: &vm::Outcome,
    suites: &BTreeMap<String, PathBuf>,
    chosen: &[String],
    log: &Path,
) -> Vec<SuiteRun> {
    suites
        .keys()
        .map(|name| {
            let ran = outcome.suites.iter().find(|(suite, _, _)| suite == name);
            let (status, reason, seconds) = match ran {
                Some((_, 0, seconds)) => ("passed", None, *seconds),
                Some((_, code, seconds)) => (
                    "failed",
                    Some(format!("exit {code} (console: {})", log.display())),
                    *seconds,
                ),
                None if chosen.contains(name) => (
                    "failed",
                    Some("did not run: the VM stopped before".to_owned()),
                    0,
                ),
                None => ("skipped", Some(SUBSET_REASON.to_owned()), 0),
            };
            SuiteRun {
                suite: name.clone(),
                status: status.to_owned(),
                reason,
                seconds,
            }
        })
        .collect()
}

const SUBSET_REASON: &str = "time budget: every suite runs on the oldest and the newest \
                             kernel, a subset on the others (xtask/kernels.txt)";

/// The entry's suites in run order: [`FIRST_SUITE`], then by name.
fn chosen_suites(entry: &Entry, suites: &BTreeMap<String, PathBuf>) -> Vec<String> {
    let mut chosen: Vec<String> = suites
        .keys()
        .filter(|name| entry.suites.as_ref().is_none_or(|only| only.contains(name)))
        .cloned()
        .collect();
    chosen.sort_by_key(|name| (name != FIRST_SUITE, name.clone()));
    chosen
}

/// The plan vm/guest.sh follows.
fn plan(
    modules: &Path,
    binaries: &Binaries,
    suites: &BTreeMap<String, PathBuf>,
    chosen: &[String],
    filter: &[String],
) -> String {
    let mut plan = format!(
        "modules {}\nenv ZEROHOP_BIN={}\nenv ZEROHOP_WAYPOINT_BIN={}\nprobe {}\n",
        modules.display(),
        binaries.zerohop.display(),
        binaries.waypoint.display(),
        binaries.zerohop.display(),
    );
    for name in chosen {
        plan.push_str(&format!(
            "suite {name} {} --color=never {}\n",
            suites[name].display(),
            filter.join(" ")
        ));
    }
    plan
}

/// The test executables of zerohop-tests by suite name (its `tests/*.rs`),
/// as cargo built them for the host tier, but for the [`HOST_ONLY`] ones.
fn suite_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let output = cargo_command()
        .args(["test", "--release", "-p", "zerohop-tests", "--no-run"])
        .args(["--message-format=json-render-diagnostics"])
        .output()
        .context("cargo test --no-run")?;
    ensure!(
        output.status.success(),
        "building the test suites failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut suites = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &message["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            target["name"].as_str(),
            message["executable"].as_str(),
        ) {
            if !HOST_ONLY.contains(&name) {
                suites.insert(name.to_owned(), PathBuf::from(executable));
            }
        }
    }
    ensure!(!suites.is_empty(), "cargo reported no test suites");
    Ok(suites)
}

/// The guest sees the host's root file system alone (not the file systems
/// mounted on it): what it runs must be there.
fn same_filesystem_as_root(paths: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/")?.dev();
    for path in paths {
        std::fs::create_dir_all(path)?;
        ensure!(
            std::fs::metadata(path)?.dev() == root,
            "{} is not on the root file system, the only one the test VMs see \
             (set ZEROHOP_KERNEL_CACHE for the kernel cache)",
            path.display()
        );
    }
    Ok(())
}

fn print_summary(run: &Run, suites: &BTreeMap<String, PathBuf>) {
    let mut header = vec!["KERNEL".to_owned(), "PACKAGE VERSION".to_owned()];
    header.extend(suites.keys().cloned());
    header.push("TOTAL".to_owned());
    let mut rows = vec![header];
    let mut reasons: Vec<String> = Vec::new();
    for kernel in &run.kernels {
        let mut row = vec![
            kernel.name.clone(),
            kernel.version.clone().unwrap_or_else(|| "-".to_owned()),
        ];
        for suite in &kernel.suites {
            let mark = match (&suite.reason, suite.status.as_str()) {
                (Some(reason), "skipped" | "failed") => {
                    if !reasons.contains(reason) {
                        reasons.push(reason.clone());
                    }
                    let index = reasons
                        .iter()
                        .position(|known| known == reason)
                        .unwrap_or(0);
                    format!("{} [{}]", suite.status, index + 1)
                }
                (_, status) => format!("{status} {}", duration(suite.seconds)),
            };
            row.push(mark);
        }
        row.push(duration(kernel.seconds));
        rows.push(row);
    }
    println!(
        "\n== kernel matrix: {} kernel(s) in {}",
        run.kernels.len(),
        duration(run.seconds)
    );
    print!("{}", columns(&rows));
    for (index, reason) in reasons.iter().enumerate() {
        println!("[{}] {reason}", index + 1);
    }
    println!(
        "host tier only (no root, no kernel involved): {}",
        HOST_ONLY.join(", ")
    );
    for kernel in &run.kernels {
        for note in kernel.crashed.iter().chain(&kernel.problem) {
            println!("{}: {note}", kernel.name);
        }
    }
    println!("\nFEATURES (zerohop probe)");
    for kernel in &run.kernels {
        let (on, off) = (features(kernel, true), features(kernel, false));
        println!("{:<8} on: {}; off: {}", kernel.name, list(&on), list(&off));
    }
    println!("\nVERIFIER (per program: instructions after verification / walked by the verifier (5.16+) / JIT bytes)");
    for kernel in &run.kernels {
        let programs = kernel
            .probe
            .as_ref()
            .and_then(|probe| probe["programs"].as_array().cloned())
            .unwrap_or_default();
        let text: Vec<String> = programs
            .iter()
            .map(|program| {
                let count = |key: &str| {
                    program[key]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |n| n.to_string())
                };
                let name = program["name"].as_str().unwrap_or_default();
                match program["refused"].as_str() {
                    Some(reason) => format!("{name} refused: {reason}"),
                    None => format!(
                        "{name} {}/{}/{}",
                        count("xlated_insns"),
                        count("verified_insns"),
                        count("jited_bytes")
                    ),
                }
            })
            .collect();
        println!("{:<8} {}", kernel.name, text.join("  "));
    }
}

/// The features of a kernel's probe report that are `on` (or off, with
/// the kernel's reason).
fn features(kernel: &KernelRun, on: bool) -> Vec<String> {
    let features = kernel
        .probe
        .as_ref()
        .and_then(|probe| probe["features"].as_array().cloned())
        .unwrap_or_default();
    features
        .iter()
        .filter(|feature| (feature["on"] == true) == on)
        .map(|feature| {
            let name = feature["name"].as_str().unwrap_or_default();
            match feature["off_because"].as_str() {
                Some(reason) => format!("{name} ({reason})"),
                None => name.to_owned(),
            }
        })
        .collect()
}

/// `a, b`, or `-` for none.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// Rows padded to their widest cells.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn duration(seconds: u64) -> String {
    if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

const TABLE_BEGIN: &str = "<!-- supported-kernels: begin (cargo xtask supported-kernels) -->";
const TABLE_END: &str = "<!-- supported-kernels: end -->";

/// `cargo xtask supported-kernels`: rewrites the README's table of
/// supported kernels from the last run of the matrix.
pub fn write_readme_table() -> Result<()> {
    let path = out_dir().join("last-run.json");
    let run: Run =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (run `cargo xtask test` first)", path.display())
        })?)?;
    let ran: Vec<&str> = run
        .kernels
        .iter()
        .map(|kernel| kernel.name.as_str())
        .collect();
    let matrix: Vec<String> = kernels::matrix()?
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    ensure!(
        ran == matrix,
        "the last run covered {ran:?}, not the whole matrix {matrix:?}: run `cargo xtask test`"
    );
    let readme_path = workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let (Some(begin), Some(end)) = (readme.find(TABLE_BEGIN), readme.find(TABLE_END)) else {
        bail!("README.md has no {TABLE_BEGIN} … {TABLE_END} markers");
    };
    let table = readme_table(&run);
    let updated = format!(
        "{}{TABLE_BEGIN}\n{table}{}",
        &readme[..begin],
        &readme[end..]
    );
    std::fs::write(&readme_path, updated)?;
    println!("{table}");
    Ok(())
}

fn readme_table(run: &Run) -> String {
    let mut text = String::from(
        "| kernel | Debian package tested | suites | works | off, and why |\n|---|---|---|---|---|\n",
    );
    for kernel in &run.kernels {
        let with = |status: &str| -> Vec<String> {
            let suites = kernel.suites.iter().filter(|suite| suite.status == status);
            suites.map(|suite| suite.suite.clone()).collect()
        };
        let mut suites = format!("passed: {}", list(&with("passed")));
        let failed = kernel.failures();
        if !failed.is_empty() {
            suites = format!("**failed: {}**; {suites}", failed.join(", "));
        }
        let skipped = with("skipped");
        if !skipped.is_empty() {
            suites.push_str(&format!("; skipped (time budget): {}", skipped.join(", ")));
        }
        text.push_str(&format!(
            "| {} | `{}` {} | {suites} | {} | {} |\n",
            kernel.name,
            kernel.package.as_deref().unwrap_or("-"),
            kernel.version.as_deref().unwrap_or("-"),
            list(&features(kernel, true)),
            list(&features(kernel, false)),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites() -> BTreeMap<String, PathBuf> {
        ["fastpath", "kernel", "l7"]
            .iter()
            .map(|name| (name.to_string(), PathBuf::from(format!("/t/{name}-1"))))
            .collect()
    }

    fn entry(suites: Option<&[&str]>) -> Entry {
        Entry {
            name: "6.1".to_owned(),
            suite: "bookworm-security".to_owned(),
            archive: "http://deb.debian.org/debian-security".to_owned(),
            series: Some("6.1".to_owned()),
            suites: suites.map(|names| names.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn the_kernel_suite_runs_first() {
        assert_eq!(
            chosen_suites(&entry(None), &suites()),
            ["kernel", "fastpath", "l7"]
        );
        assert_eq!(
            chosen_suites(&entry(Some(&["l7", "kernel"])), &suites()),
            ["kernel", "l7"]
        );
    }

    #[test]
    fn the_plan_names_modules_binaries_and_suites() {
        let binaries = Binaries {
            zerohop: "/b/zerohop".into(),
            waypoint: "/b/zerohop-waypoint".into(),
            testpod: "/b/zh-testpod".into(),
            http: "/b/zh-http".into(),
        };
        let plan = plan(
            Path::new("/c/lib/modules/6.1.0-56-cloud-amd64"),
            &binaries,
            &suites(),
            &["kernel".to_owned()],
            &["bypass".to_owned()],
        );
        assert_eq!(
            plan,
            "modules /c/lib/modules/6.1.0-56-cloud-amd64\nenv ZEROHOP_BIN=/b/zerohop\n\
             env ZEROHOP_WAYPOINT_BIN=/b/zerohop-waypoint\nprobe /b/zerohop\n\
             suite kernel /t/kernel-1 --color=never bypass\n"
        );
    }

    #[test]
    fn a_vm_that_ended_early_runs_again_what_did_not_end() {
        let chosen: Vec<String> = ["kernel", "fastpath", "waypoint_kernel"]
            .map(str::to_owned)
            .to_vec();
        let mut outcome = vm::Outcome {
            booted: Some("6.12.118+deb13-cloud-amd64".to_owned()),
            suites: vec![("kernel".to_owned(), 0, 6)],
            ..vm::Outcome::default()
        };
        assert!(ended_early(&outcome));
        assert_eq!(
            unfinished(&chosen, &outcome),
            ["fastpath", "waypoint_kernel"]
        );
        outcome.done = true;
        assert!(!ended_early(&outcome), "a plan that ran to its end");
        outcome.done = false;
        outcome.stopped = Some("hung for 20 minutes".to_owned());
        assert!(
            !ended_early(&outcome),
            "a VM xtask stopped is not run again"
        );
    }

    #[test]
    fn the_readme_table_says_what_works_and_what_is_off() {
        let probe = serde_json::json!({"features": [
            {"name": "connect", "on": true, "off_because": null},
            {"name": "bypass", "on": false, "off_because": "zh_sk_msg: unknown func"},
        ]});
        let kernel = KernelRun {
            name: "5.10".to_owned(),
            debian_suite: "bullseye-security".to_owned(),
            package: Some("linux-image-5.10.0-46-cloud-amd64".to_owned()),
            version: Some("5.10.262-1".to_owned()),
            release: Some("5.10.0-46-cloud-amd64".to_owned()),
            accel: Some("Tcg".to_owned()),
            suites: vec![SuiteRun {
                suite: "kernel".to_owned(),
                status: "passed".to_owned(),
                reason: None,
                seconds: 6,
            }],
            problem: None,
            crashed: None,
            probe: Some(probe),
            seconds: 300,
        };
        let table = readme_table(&Run {
            kernels: vec![kernel],
            seconds: 300,
        });
        assert!(table.ends_with(
            "| 5.10 | `linux-image-5.10.0-46-cloud-amd64` 5.10.262-1 | passed: kernel | connect \
             | bypass (zh_sk_msg: unknown func) |\n"
        ));
    }
}
