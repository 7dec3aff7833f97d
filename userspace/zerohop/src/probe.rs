//! `zerohop probe`: what this kernel's verifier makes of every program of
//! the object, and so which [`FEATURES`](crate::features::FEATURES) are on
//! here, without attaching anything.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::{
    datapath::{self, Datapath},
    features::{FeatureState, ProgramState},
    inspect::{on_off, print_rows, Output},
};

/// What `zerohop probe` found on this kernel.
#[derive(Debug, Serialize)]
pub struct KernelReport {
    /// `uname -r`.
    pub kernel: String,
    pub features: Vec<FeatureState>,
    pub programs: Vec<ProgramState>,
}

/// Loads every program into this kernel, attaching none, with its maps
/// pinned under `pin_dir`, which is removed afterwards; fails when the
/// kernel refuses the core.
pub fn probe(pin_dir: &Path) -> Result<KernelReport> {
    let loaded =
        Datapath::load(pin_dir, zerohop_planner::Capacity::KERNEL).map(|datapath| KernelReport {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            features: datapath.features().to_vec(),
            programs: datapath.programs().to_vec(),
        });
    // After the programs are gone (`loaded` holds no Datapath), whether or
    // not they loaded.
    datapath::remove_pins(pin_dir)?;
    loaded
}

/// Prints a [`KernelReport`]: the features, then the programs.
pub fn print_report(report: &KernelReport, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("kernel {}", report.kernel);
    print_rows(
        &report.features,
        output,
        &["FEATURE", "ON", "OFF BECAUSE"],
        |state| {
            vec![
                state.name.to_owned(),
                on_off(state.on),
                state.off_because.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        },
    )?;
    println!();
    let count = |value: Option<u32>| value.map_or_else(|| "-".to_owned(), |n| n.to_string());
    print_rows(
        &report.programs,
        output,
        &[
            "PROGRAM",
            "LOADED",
            "XLATED INSNS",
            "VERIFIED INSNS",
            "JITED BYTES",
        ],
        |program| {
            vec![
                program.name.clone(),
                program
                    .refused
                    .as_ref()
                    .map_or_else(|| "yes".to_owned(), |reason| format!("no: {reason}")),
                count(program.xlated_insns),
                count(program.verified_insns),
                count(program.jited_bytes),
            ]
        },
    )
}
