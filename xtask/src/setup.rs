//! `cargo xtask setup`: everything a fresh machine needs, checked first so a
//! second run takes a second or two.
//!
//! - the nightly toolchain pinned in ebpf/programs/rust-toolchain.toml, with
//!   rust-src (the eBPF programs build `core` for bpfel-unknown-none), rustfmt
//!   and clippy;
//! - bpf-linker at the version pinned in ebpf/toolchain, built against that
//!   toolchain's own LLVM (no system LLVM needed);
//! - iproute2 and iptables for the sandboxed cluster, bpftool for inspection,
//!   promtool (package prometheus) to check the agent's metrics, curl for
//!   the waypoint's HTTP/2 (h2c) test, dnsmasq (dnsmasq-base) and dig
//!   (bind9-dnsutils) for DNS through a ClusterIP, python3-grpcio for gRPC
//!   through an L7 Service;
//! - for the kernel matrix: qemu-system-x86 (with virtiofsd), busybox-static
//!   for the VMs' initramfs, kmod (depmod here, modprobe in the guests),
//!   xz-utils for compressed modules, and Debian's archive keyring;
//! - wrk, nginx-light, redis-server, redis-tools and iperf3 for the
//!   benchmark, and haproxy and h2load (nghttp2-client) for its L7 mode;
//! - a bpffs mount at /sys/fs/bpf for the pinned maps.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use zerohop_ebpf_toolchain::{Toolchain, BPF_LINKER_VERSION, LLVM_MAJOR, TOOLCHAIN_FILE};

use crate::command_output as output;

pub fn run() -> Result<()> {
    let pinned = zerohop_ebpf_toolchain::toolchain(&crate::workspace_root())?;
    pinned_toolchain(&pinned)?;
    let llvm = pinned_llvm(&pinned.channel)?;
    bpf_linker(&pinned.channel, &llvm)?;
    system_packages()?;
    bpffs()?;
    Ok(())
}

/// The dated nightly of ebpf/programs/rust-toolchain.toml with its
/// components (rust-src, and rustfmt and clippy for `cargo xtask lint`).
fn pinned_toolchain(pinned: &Toolchain) -> Result<()> {
    let channel = pinned.channel.as_str();
    // Fails when the toolchain is not installed (nothing auto-installs it).
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", channel, "--installed"],
    )
    .unwrap_or_default();
    let missing: Vec<&str> = pinned
        .components
        .iter()
        .map(String::as_str)
        .filter(|component| {
            !installed
                .lines()
                .any(|line| line == *component || line.starts_with(&format!("{component}-")))
        })
        .collect();
    if !installed.is_empty() && missing.is_empty() {
        return Ok(());
    }
    println!("== installing {channel} (pinned in {TOOLCHAIN_FILE})");
    let mut args = vec!["toolchain", "install", channel, "--profile", "minimal"];
    for component in &pinned.components {
        args.extend(["--component", component.as_str()]);
    }
    run_cmd("rustup", &args).with_context(|| {
        format!(
            "installing {channel} failed: check the network access to static.rust-lang.org, \
             or move the pin ({TOOLCHAIN_FILE}, see the README)"
        )
    })
}

/// The pinned toolchain's libLLVM, checked to be of the major bpf-linker is
/// built for.
fn pinned_llvm(channel: &str) -> Result<std::path::PathBuf> {
    let version = output("rustup", &["run", channel, "rustc", "-vV"])?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|llvm| llvm.split('.').next()?.trim().parse::<u32>().ok())
        .with_context(|| format!("no LLVM version in `rustc -vV` of {channel}:\n{version}"))?;
    if major != LLVM_MAJOR {
        bail!(
            "{channel} (pinned in {TOOLCHAIN_FILE}) uses LLVM {major}, but ebpf/toolchain/src/lib.rs \
             pins LLVM_MAJOR = {LLVM_MAJOR} for bpf-linker {BPF_LINKER_VERSION}: move LLVM_MAJOR to \
             {major}, and BPF_LINKER_VERSION to a release with the feature llvm-{major}, \
             or pin a nightly with LLVM {LLVM_MAJOR}"
        );
    }
    let sysroot = output("rustup", &["run", channel, "rustc", "--print", "sysroot"])?;
    let lib = Path::new(sysroot.trim()).join("lib");
    std::fs::read_dir(&lib)?
        .filter_map(std::result::Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with(&format!("libLLVM.so.{LLVM_MAJOR}."))
            })
        })
        .with_context(|| format!("no libLLVM.so.{LLVM_MAJOR}.* in {}", lib.display()))
}

/// bpf-linker at the pinned version, built with the pinned LLVM feature
/// against the pinned toolchain's libLLVM (no system LLVM needed).
fn bpf_linker(channel: &str, llvm: &Path) -> Result<()> {
    // Through rustup, as the eBPF build runs it: the toolchain's lib
    // directory (with libLLVM) is then on the library path.
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = output("rustup", &["run", channel, "bpf-linker", "--version"]);
    match &found {
        Ok(version) if version.trim() == wanted => return Ok(()),
        Ok(version) => println!("== found {}, want {wanted}", version.trim()),
        Err(error) => println!("== no bpf-linker runs with {channel}: {error:#}"),
    }
    // bpf-linker links against libLLVM; point it at the toolchain's copy
    // through a prefix directory holding lib/libLLVM.so.
    let prefix = crate::workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(llvm, &link)?;
    println!("== building {wanted} against {channel}'s LLVM {LLVM_MAJOR} (a few minutes, once)");
    // --locked: bpf-linker's own Cargo.lock, so that every machine builds the
    // same; --force: replaces a bpf-linker of this version that does not run.
    let status = Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", &format!("={BPF_LINKER_VERSION}")])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker failed (its output is above): it needs crates.io \
             and a C compiler; then run `cargo xtask setup` again"
        );
    }
    Ok(())
}

fn system_packages() -> Result<()> {
    let mut missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("bpftool", "bpftool"),
        ("promtool", "prometheus"),
        ("curl", "curl"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "bind9-dnsutils"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/lib/qemu/virtiofsd", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("depmod", "kmod"),
        ("xz", "xz-utils"),
        ("dpkg-deb", "dpkg"),
        (
            "/usr/share/keyrings/debian-archive-keyring.gpg",
            "debian-archive-keyring",
        ),
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("iperf3", "iperf3"),
        ("haproxy", "haproxy"),
        ("h2load", "nghttp2-client"),
        // gRPC through L7 Services (tests/workloads/zh-grpc.py).
        (
            "/usr/lib/python3/dist-packages/grpc/__init__.py",
            "python3-grpcio",
        ),
    ]
    .into_iter()
    .filter(|(tool, _)| crate::which(tool).is_none())
    .map(|(_, package)| package)
    .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("== installing {}", missing.join(" "));
    run_cmd("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    run_cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn run_cmd(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}
