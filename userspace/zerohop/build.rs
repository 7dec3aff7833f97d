//! Embeds the kernel programs (ebpf/programs) in the crate, through OUT_DIR.
//!
//! Which object is embedded is the builder's choice, so that a plain
//! `cargo build`, `cargo test` or `cargo clippy` at the workspace root needs
//! neither the nightly toolchain nor bpf-linker:
//! - `ZEROHOP_EBPF=build`: compile the programs for bpfel-unknown-none with
//!   the nightly toolchain and bpf-linker (`cargo xtask setup` installs
//!   them). Every `cargo xtask` task that runs zerohop sets this.
//! - `ZEROHOP_EBPF_OBJECT=<file>`: embed that object instead.
//! - neither: embed an empty object. Such a binary says so when it is asked
//!   to load the programs, and the unit tests that read the object are not
//!   compiled (they need `--cfg zerohop_ebpf`, set here with a real object).

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("zerohop.bpf.o");
    println!("cargo::rerun-if-env-changed=ZEROHOP_EBPF");
    println!("cargo::rerun-if-env-changed=ZEROHOP_EBPF_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(zerohop_ebpf)");

    if let Ok(prebuilt) = env::var("ZEROHOP_EBPF_OBJECT") {
        println!("cargo::rerun-if-changed={prebuilt}");
        fs::copy(&prebuilt, &out).unwrap_or_else(|e| panic!("copy {prebuilt}: {e}"));
        println!("cargo::rustc-cfg=zerohop_ebpf");
        return;
    }
    match env::var("ZEROHOP_EBPF").as_deref() {
        Ok("build") => {}
        Err(_) | Ok("") => {
            fs::write(&out, []).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
            return;
        }
        Ok(other) => {
            panic!("ZEROHOP_EBPF={other}: the only value is `build` (unset embeds no programs)")
        }
    }

    let programs = root.join("ebpf/programs");
    for watched in [
        "ebpf/programs/src",
        "ebpf/programs/Cargo.toml",
        "ebpf/programs/Cargo.lock",
        "ebpf/abi/src",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    // A target directory of its own: the host build's flags and profile must
    // not leak into the BPF build, and it survives `cargo clean -p zerohop`.
    let target_dir = root.join("target/ebpf");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir);
    // Variables the outer cargo sets for this build script, which would
    // otherwise redirect or reconfigure the inner build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the eBPF programs ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!("building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src and bpf-linker they need");
    }
    let object = target_dir.join("bpfel-unknown-none/release/zerohop-ebpf");
    fs::copy(&object, &out).unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
    println!("cargo::rustc-cfg=zerohop_ebpf");
}
