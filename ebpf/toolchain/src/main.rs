//! Prints the pin as shell assignments, for builds without xtask
//! (deploy/Containerfile): `eval "$(cargo run -q -p zerohop-ebpf-toolchain)"`.

use std::path::Path;

use zerohop_ebpf_toolchain::{toolchain, BPF_LINKER_VERSION, LLVM_MAJOR};

fn main() -> std::io::Result<()> {
    let pinned = toolchain(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))?;
    println!("CHANNEL={}", pinned.channel);
    println!("COMPONENTS='{}'", pinned.components.join(" "));
    println!("BPF_LINKER_VERSION={BPF_LINKER_VERSION}");
    println!("LLVM_MAJOR={LLVM_MAJOR}");
    Ok(())
}
