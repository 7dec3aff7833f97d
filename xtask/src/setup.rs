//! `cargo xtask setup`: everything a fresh machine needs, checked first so a
//! second run takes a second or two.
//!
//! - the nightly toolchain with rust-src (the eBPF programs build `core` for
//!   bpfel-unknown-none);
//! - bpf-linker, built against the nightly toolchain's own LLVM (no system
//!   LLVM needed);
//! - iproute2 and iptables for the sandboxed cluster, bpftool for inspection,
//!   promtool (package prometheus) to check the agent's metrics, curl for
//!   the waypoint's HTTP/2 (h2c) test, dnsmasq (dnsmasq-base) and dig
//!   (bind9-dnsutils) for DNS through a ClusterIP;
//! - for the kernel matrix: qemu-system-x86 (with virtiofsd), busybox-static
//!   for the VMs' initramfs, kmod (depmod here, modprobe in the guests),
//!   xz-utils for compressed modules, and Debian's archive keyring;
//! - wrk, nginx-light, redis-server, redis-tools and iperf3 for the
//!   benchmark;
//! - a bpffs mount at /sys/fs/bpf for the pinned maps.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::command_output as output;

const BPF_LINKER_VERSION: &str = "0.13";

pub fn run() -> Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    system_packages()?;
    bpffs()?;
    Ok(())
}

fn nightly_with_rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    if !output("rustup", &["toolchain", "list"])?
        .lines()
        .any(|line| line.starts_with("nightly"))
    {
        run_cmd(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    run_cmd(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn bpf_linker() -> Result<()> {
    // Through rustup, as the eBPF build runs it: the nightly toolchain's lib
    // directory (with libLLVM) is then on the library path.
    if output("rustup", &["run", "nightly", "bpf-linker", "--version"])
        .is_ok_and(|v| v.contains(&format!(" {BPF_LINKER_VERSION}.")))
    {
        return Ok(());
    }
    // bpf-linker links against libLLVM; point it at the nightly toolchain's
    // copy through a prefix directory holding lib/libLLVM.so.
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .file_name()
        .and_then(|name| {
            name.to_string_lossy()
                .strip_prefix("libLLVM.so.")?
                .split('.')
                .next()
                .map(str::to_owned)
        })
        .context("cannot read the LLVM version")?;
    let prefix = crate::workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    println!(
        "== building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes, once)"
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            &format!("~{BPF_LINKER_VERSION}"),
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("cargo install bpf-linker failed");
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
