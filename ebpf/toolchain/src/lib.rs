//! The toolchain of the kernel programs (ebpf/programs), in one place.
//!
//! The programs build for bpfel-unknown-none with a nightly toolchain pinned
//! by date in [`TOOLCHAIN_FILE`], and link with bpf-linker built against that
//! toolchain's own libLLVM. `cargo xtask setup` installs both; `cargo xtask
//! lint` and userspace/zerohop/build.rs run that toolchain's cargo through
//! [`cargo`]. Small, so that a build script can depend on it.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

/// The kernel programs' crate, relative to the workspace root.
pub const PROGRAMS_DIR: &str = "ebpf/programs";

/// The pin (a rust-toolchain.toml), relative to the workspace root.
pub const TOOLCHAIN_FILE: &str = "ebpf/programs/rust-toolchain.toml";

/// The kernel programs' target directory, relative to the workspace root: the
/// host build's flags and profile must not leak into theirs, and it survives
/// `cargo clean -p zerohop`.
pub const TARGET_DIR: &str = "target/ebpf";

// These two move together with the channel of TOOLCHAIN_FILE: bpf-linker is
// built against the pinned toolchain's libLLVM, with the cargo feature of
// that LLVM's major version, and a bpf-linker release supports a few majors.
/// The bpf-linker release `cargo xtask setup` installs, exactly.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major of the pinned toolchain (its `rustc -vV`); bpf-linker is
/// built with the feature `llvm-{LLVM_MAJOR}`.
pub const LLVM_MAJOR: u32 = 22;

/// Variables that a calling cargo sets (for a build script, or for xtask
/// under `cargo run`) and that would redirect or reconfigure the inner build.
const CLEARED_ENV: &[&str] = &[
    // The calling toolchain's compiler, which would replace the pinned one's.
    "RUSTC",
    // A host build's wrapper (an outer `cargo clippy` sets clippy-driver).
    "RUSTC_WRAPPER",
    // The same, for workspace members only.
    "RUSTC_WORKSPACE_WRAPPER",
    // Host compiler flags, wrong for bpfel-unknown-none.
    "RUSTFLAGS",
    // The same flags, as cargo hands them to build scripts.
    "CARGO_ENCODED_RUSTFLAGS",
    // The calling toolchain's name, which must not override the pinned one.
    "RUSTUP_TOOLCHAIN",
    // The host build's target, which would replace bpfel-unknown-none.
    "CARGO_BUILD_TARGET",
    // The calling cargo's jobserver, whose descriptors the inner one lacks.
    "CARGO_MAKEFLAGS",
    // The calling cargo's path, which cargo-clippy and cargo-fmt would run.
    "CARGO",
];

/// What [`TOOLCHAIN_FILE`] pins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Toolchain {
    /// A dated nightly, e.g. `nightly-2026-05-20`.
    pub channel: String,
    /// The components beyond the minimal profile, e.g. `rust-src`.
    #[serde(default)]
    pub components: Vec<String>,
}

/// A rust-toolchain.toml: its `[toolchain]` table (other keys are rustup's).
#[derive(Deserialize)]
struct ToolchainFile {
    toolchain: Toolchain,
}

/// Reads [`TOOLCHAIN_FILE`] under the workspace `root`.
pub fn toolchain(root: &Path) -> io::Result<Toolchain> {
    let file = root.join(TOOLCHAIN_FILE);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", file.display())))?;
    parse(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", file.display()),
        )
    })
}

/// The `[toolchain]` table of a rust-toolchain.toml.
pub fn parse(text: &str) -> Result<Toolchain, String> {
    let file: ToolchainFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.toolchain.channel.is_empty() {
        return Err("the channel is empty".into());
    }
    Ok(file.toolchain)
}

/// `rustup run <pinned channel> cargo`, to be given its arguments: run in
/// [`PROGRAMS_DIR`], building into [`TARGET_DIR`], without the variables of
/// a calling cargo ([`CLEARED_ENV`]).
pub fn cargo(root: &Path) -> io::Result<Command> {
    let toolchain = toolchain(root)?;
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", &toolchain.channel, "cargo"])
        .current_dir(root.join(PROGRAMS_DIR))
        .env("CARGO_TARGET_DIR", root.join(TARGET_DIR));
    for var in CLEARED_ENV {
        cargo.env_remove(var);
    }
    Ok(cargo)
}

/// Where the kernel programs' object lands after a release build.
pub fn object(root: &Path) -> PathBuf {
    root.join(TARGET_DIR)
        .join("bpfel-unknown-none/release/zerohop-ebpf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channel_and_components() {
        let text = "# pinned\n[toolchain]\nchannel = \"nightly-2026-05-20\"  # why\n\
                    components = [\"rust-src\", \"clippy\"]\nprofile = \"minimal\"\n";
        assert_eq!(
            parse(text),
            Ok(Toolchain {
                channel: "nightly-2026-05-20".into(),
                components: vec!["rust-src".into(), "clippy".into()],
            })
        );
    }

    #[test]
    fn components_are_optional() {
        let parsed = parse("[toolchain]\nchannel=\"nightly-2026-05-20\"\n").unwrap();
        assert!(parsed.components.is_empty());
    }

    #[test]
    fn rejects_a_missing_or_unquoted_channel() {
        assert!(parse("[toolchain]\nprofile = \"minimal\"\n").is_err());
        assert!(parse("[toolchain]\nchannel = nightly\n").is_err());
        assert!(parse("[toolchain]\nchannel = \"\"\n").is_err());
        assert!(
            parse("[toolchain]\nchannel = \"nightly\"\ncomponents = [\"rust-src\",\n").is_err()
        );
        assert!(
            parse("channel = \"nightly-2026-05-20\"\n").is_err(),
            "outside [toolchain]"
        );
    }

    #[test]
    fn the_pin_is_a_dated_nightly_with_rust_src() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let pinned = toolchain(&root).unwrap();
        let date = pinned.channel.strip_prefix("nightly-").unwrap_or_default();
        let digits: Vec<_> = date
            .split('-')
            .map(|part| part.parse::<u32>().ok().map(|_| part.len()))
            .collect();
        assert_eq!(
            digits,
            [Some(4), Some(2), Some(2)],
            "not a dated nightly: {}",
            pinned.channel
        );
        assert!(pinned.components.iter().any(|c| c == "rust-src"));
    }

    #[test]
    fn the_cargo_runs_the_pinned_channel() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = cargo(&root).unwrap();
        let args: Vec<_> = cargo.get_args().collect();
        assert_eq!(args[1], toolchain(&root).unwrap().channel.as_str());
        let cleared: Vec<_> = cargo
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(var, _)| var)
            .collect();
        assert_eq!(cleared.len(), CLEARED_ENV.len());
    }
}
