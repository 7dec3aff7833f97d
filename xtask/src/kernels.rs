//! The kernels of the matrix: which ones (`xtask/kernels.txt`), and fetching
//! them from Debian's archive into a cache, without touching the machine's
//! own apt configuration.
//!
//! Each Debian suite gets a private apt setup (`APT_CONFIG`: its own sources
//! list, package lists and archive directory) under the cache. The suite's
//! `linux-image-cloud-amd64` metapackage names the current kernel package
//! (old versions leave the security pools, so versions are never pinned);
//! that package and the `linux-*` packages of the same kernel it depends on
//! (newer suites split the image from its modules) are downloaded and
//! unpacked, and `depmod` indexes the modules so that the guest's modprobe
//! finds them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::workspace_root;

/// The metapackage every suite resolves its cloud kernel through.
const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The keyring of Debian's archive (package debian-archive-keyring).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One line of `xtask/kernels.txt`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What `cargo xtask test --kernel NAME` selects, and the report shows.
    pub name: String,
    /// The Debian suite serving it, e.g. `bookworm-security`.
    pub suite: String,
    /// The archive serving the suite.
    pub archive: String,
    /// The kernel series the suite must serve (`6.1`), if pinned.
    pub series: Option<String>,
    /// The test suites to run on it; `None`: all.
    pub suites: Option<Vec<String>>,
}

/// The matrix, in file order.
pub fn matrix() -> Result<Vec<Entry>> {
    let path = workspace_root().join("xtask/kernels.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_matrix(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_matrix(text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, suite, archive, series, suites @ ..] = &words[..] else {
            bail!("`{line}`: expected NAME SUITE ARCHIVE SERIES SUITES…");
        };
        ensure!(!suites.is_empty(), "`{line}`: no test suites");
        entries.push(Entry {
            name: name.to_string(),
            suite: suite.to_string(),
            archive: archive.to_string(),
            series: (*series != "-").then(|| series.to_string()),
            suites: (*suites != ["all"]).then(|| suites.iter().map(ToString::to_string).collect()),
        });
    }
    ensure!(!entries.is_empty(), "no kernels");
    Ok(entries)
}

/// A kernel unpacked in the cache, ready to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    /// The package holding the kernel image, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`, indexed by depmod.
    pub modules: PathBuf,
}

/// Where kernels are cached: `$ZEROHOP_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/zerohop/kernels`, else `~/.cache/zerohop/kernels`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZEROHOP_KERNEL_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("zerohop/kernels")
}

/// The entry's kernel: the suite's current one, downloaded and unpacked
/// unless the cache has it. When the archive cannot be reached, the kernel
/// cached last for the entry, if any, with a warning.
pub fn fetch(entry: &Entry) -> Result<Kernel> {
    let dir = cache_dir().join(&entry.name);
    match resolve_and_fetch(entry, &dir) {
        Ok(kernel) => Ok(kernel),
        Err(error) => {
            let cached = cached_kernels(&dir).into_iter().next().ok_or(error)?;
            println!(
                "== kernel {}: the archive did not answer; using the cached {} {}",
                entry.name, cached.package, cached.version
            );
            Ok(cached)
        }
    }
}

fn resolve_and_fetch(entry: &Entry, dir: &Path) -> Result<Kernel> {
    let apt = Apt::new(entry, &dir.join("apt"))?;
    apt.run("apt-get", &["update", "-qq"])?;
    let image = apt
        .show(METAPACKAGE)?
        .1
        .into_iter()
        .find(|dependency| dependency.starts_with("linux-image-"))
        .with_context(|| format!("{METAPACKAGE} in {} names no linux-image", entry.suite))?;
    let release = image.trim_start_matches("linux-image-").to_owned();
    if let Some(series) = &entry.series {
        ensure!(
            release.starts_with(&format!("{series}.")),
            "{} serves {release}, not the {series} series of xtask/kernels.txt",
            entry.suite
        );
    }
    // The image first, then the packages of the same kernel it needs
    // (linux-binary-, linux-modules-, linux-base-<release> on newer suites).
    let mut packages: Vec<(String, String)> = Vec::new();
    let mut queue = vec![image.clone()];
    while let Some(package) = queue.pop() {
        let (version, depends) = apt.show(&package)?;
        packages.push((package, version));
        for dependency in depends {
            let known =
                queue.contains(&dependency) || packages.iter().any(|(name, _)| *name == dependency);
            if dependency.starts_with("linux-") && dependency.ends_with(&release) && !known {
                queue.push(dependency);
            }
        }
    }
    let version = packages[0].1.clone();
    let unpacked = dir.join(format!("{release}_{version}"));
    if let Ok(kernel) = read_kernel(&unpacked) {
        println!("== kernel {}: {image} {version} (cached)", entry.name);
        return Ok(kernel);
    }
    println!("== kernel {}: fetching {image} {version}", entry.name);
    let _ = std::fs::remove_dir_all(&unpacked);
    let downloads = unpacked.join("debs");
    std::fs::create_dir_all(&downloads)?;
    let wanted: Vec<String> = packages
        .iter()
        .map(|(name, version)| format!("{name}={version}"))
        .collect();
    let mut args = vec!["download", "-qq"];
    args.extend(wanted.iter().map(String::as_str));
    apt.run_in("apt-get", &args, &downloads)?;
    let root = unpacked.join("root");
    for deb in std::fs::read_dir(&downloads)? {
        let deb = deb?.path();
        run("dpkg-deb", &[Path::new("-x"), &deb, &root])?;
    }
    std::fs::remove_dir_all(&downloads)?;
    let kernel = locate(&root, &image, &version, &release)?;
    let base = kernel
        .modules
        .ancestors()
        .nth(3)
        .context("modules directory without a base")?;
    run("depmod", &[Path::new("-b"), base, Path::new(&release)])?;
    std::fs::write(
        unpacked.join("kernel.json"),
        serde_json::to_string_pretty(&kernel)?,
    )?;
    // Only the current kernel of each entry is kept.
    for stale in cached_kernels(dir) {
        if stale.release != release || stale.version != version {
            let stale_dir = dir.join(format!("{}_{}", stale.release, stale.version));
            let _ = std::fs::remove_dir_all(stale_dir);
        }
    }
    Ok(kernel)
}

/// The kernel image and modules in an unpacked tree: `boot/vmlinuz-<release>`
/// and `lib/modules/<release>`, or, on newer suites, both under
/// `usr/lib/modules/<release>`.
fn locate(root: &Path, package: &str, version: &str, release: &str) -> Result<Kernel> {
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(release))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("no modules of {release} in {package}"))?;
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .with_context(|| format!("no kernel image of {release} in {package}"))?;
    Ok(Kernel {
        package: package.to_owned(),
        version: version.to_owned(),
        release: release.to_owned(),
        vmlinuz,
        modules,
    })
}

fn read_kernel(unpacked: &Path) -> Result<Kernel> {
    let text = std::fs::read_to_string(unpacked.join("kernel.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The kernels unpacked for an entry (written completely: `kernel.json` is
/// written last).
fn cached_kernels(dir: &Path) -> Vec<Kernel> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| read_kernel(&entry.ok()?.path()).ok())
        .collect()
}

/// apt-get and apt-cache on one suite, with a configuration of their own.
struct Apt {
    config: PathBuf,
}

impl Apt {
    fn new(entry: &Entry, dir: &Path) -> Result<Apt> {
        for sub in ["lists/partial", "archives/partial", "parts"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        std::fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by={KEYRING}] {} {} main\n",
                entry.archive, entry.suite
            ),
        )?;
        let d = dir.display();
        // `parts` stays empty: nothing of the machine's apt.conf.d applies.
        // Valid-Until is not checked: the archive this machine reaches may
        // be a snapshot, whose signatures stay good but whose dates expire.
        let config = format!(
            "Dir::State \"{d}\";\nDir::State::Lists \"{d}/lists\";\nDir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}\";\nDir::Cache::Archives \"{d}/archives\";\n\
             Dir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/parts\";\n\
             Dir::Etc::Parts \"{d}/parts\";\nDir::Etc::Preferences \"{d}/parts/none\";\n\
             Dir::Etc::PreferencesParts \"{d}/parts\";\n\
             APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n\
             APT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\n\
             Acquire::Check-Valid-Until \"false\";\n"
        );
        let path = dir.join("apt.conf");
        std::fs::write(&path, config)?;
        Ok(Apt { config: path })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).env("APT_CONFIG", &self.config);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        output_of(self.command(program, args))
    }

    fn run_in(&self, program: &str, args: &[&str], dir: &Path) -> Result<String> {
        let mut command = self.command(program, args);
        command.current_dir(dir);
        output_of(command)
    }

    /// The candidate version of `package`, and its `Depends`, first
    /// alternatives, without version constraints.
    fn show(&self, package: &str) -> Result<(String, Vec<String>)> {
        let text = self.run("apt-cache", &["show", "--no-all-versions", package])?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let version = field("Version:")
            .with_context(|| format!("no version of {package}"))?
            .to_owned();
        let depends = field("Depends:")
            .unwrap_or_default()
            .split(',')
            .filter_map(|dependency| {
                let first = dependency.split('|').next()?.trim();
                Some(first.split_whitespace().next()?.to_owned())
            })
            .collect();
        Ok((version, depends))
    }
}

fn output_of(mut command: Command) -> Result<String> {
    let line = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {line}"))?;
    ensure!(
        output.status.success(),
        "{line} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(program: &str, args: &[&Path]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    output_of(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_file_parses() {
        let entries = parse_matrix(
            "# comment\n\n5.10 bullseye-security http://a/debian-security 5.10 all\n\
             newest sid http://a/debian - kernel fastpath\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].series.as_deref(), Some("5.10"));
        assert!(entries[0].suites.is_none());
        assert_eq!(entries[1].series, None);
        assert_eq!(
            entries[1].suites.as_deref(),
            Some(&["kernel".to_owned(), "fastpath".to_owned()][..])
        );
        assert!(parse_matrix("5.10 bullseye-security http://a 5.10\n").is_err());
        assert!(matrix().is_ok(), "xtask/kernels.txt parses");
    }
}
