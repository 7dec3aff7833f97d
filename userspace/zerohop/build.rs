//! Embeds the kernel programs (ebpf/programs) in the crate, through OUT_DIR.
//!
//! Which object is embedded is the builder's choice, so that a plain
//! `cargo build`, `cargo test` or `cargo clippy` at the workspace root needs
//! neither the nightly toolchain nor bpf-linker:
//! - `ZEROHOP_EBPF=build`: compile the programs for bpfel-unknown-none with
//!   the nightly toolchain pinned in ebpf/programs/rust-toolchain.toml and
//!   bpf-linker (`cargo xtask setup` installs them; ebpf/toolchain runs
//!   that toolchain's cargo). Every `cargo xtask` task that runs zerohop
//!   sets this.
//! - `ZEROHOP_EBPF_OBJECT=<file>`: embed that object instead.
//! - neither: embed an empty object. Such a binary says so when it is asked
//!   to load the programs, and the unit tests that read the object are not
//!   compiled (they need `--cfg zerohop_ebpf`, set here with a real object).

use std::{env, fs, path::PathBuf};

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

    for watched in [
        "ebpf/programs/src",
        "ebpf/programs/Cargo.toml",
        "ebpf/programs/Cargo.lock",
        zerohop_ebpf_toolchain::TOOLCHAIN_FILE,
        "ebpf/abi/src",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    // The pinned toolchain's cargo, in a target directory of its own.
    let setup = "`cargo xtask setup` installs the pinned toolchain and bpf-linker";
    let pinned = zerohop_ebpf_toolchain::toolchain(&root).unwrap_or_else(|e| panic!("{e}"));
    let mut cargo = zerohop_ebpf_toolchain::cargo(&root).unwrap_or_else(|e| panic!("{e}"));
    cargo.args(["build", "--release", "--locked"]).args([
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
    ]);
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("cannot run rustup to build the eBPF programs ({e}); {setup}"));
    if !status.success() {
        panic!(
            "building the eBPF programs with {} failed; {setup}",
            pinned.channel
        );
    }
    let object = zerohop_ebpf_toolchain::object(&root);
    fs::copy(&object, &out).unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
    println!("cargo::rustc-cfg=zerohop_ebpf");
}
