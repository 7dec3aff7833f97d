//! What the running kernel gives zerohop, on the host and on every kernel
//! of the matrix (`cargo xtask test` boots each): every program of a
//! feature this release has loads, within the verifier's budget, and the
//! agent reports exactly the features of this release (`FEATURES`' `since`),
//! switching the others off with one log line each while it keeps
//! translating connects. Privileged; run for real, never skipped.

use std::{net::SocketAddr, process::Command};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use zerohop::features::{feature, kernel_release, BYPASS, FEATURES};
use zerohop_sandbox::{
    bpffs_mount, require_root, run_name, service_yaml, slice_yaml, zerohop_binary, Agent, Cluster,
    Endpoint, Family, Manifests, Testpod,
};

/// Half of the verifier's complexity limit (1,000,000 instructions walked
/// since 5.2): a program past it is one feature away from not loading.
const VERIFIER_BUDGET: u64 = 500_000;

fn kernel() -> (u32, u32) {
    kernel_release().expect("reading the kernel release")
}

/// `zerohop probe -o json`: every program loaded into this kernel, nothing
/// attached; its maps in a pin directory of this run, which it removes.
fn probe() -> Result<Value> {
    let pin_dir = bpffs_mount()?.join(format!("{}-probe", run_name()));
    let output = Command::new(zerohop_binary())
        .args(["probe", "-o", "json", "--pin-dir"])
        .arg(&pin_dir)
        .output()?;
    ensure!(
        output.status.success(),
        "zerohop probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn every_program_of_a_feature_this_kernel_has_loads_within_the_verifier_budget() -> Result<()> {
    require_root();
    let report = probe()?;
    let kernel = kernel();
    let programs = report["programs"]
        .as_array()
        .context("no programs in the report")?;
    let mut problems = Vec::new();
    for program in programs {
        let name = program["name"].as_str().unwrap_or_default();
        let needed_by: Vec<_> = FEATURES
            .iter()
            .filter(|feature| feature.programs.contains(&name))
            .collect();
        if needed_by.is_empty() {
            problems.push(format!("{name} belongs to no feature of FEATURES"));
        }
        let expected = needed_by.iter().any(|feature| feature.expected_on(kernel));
        match (&program["refused"], expected) {
            (Value::String(reason), true) => problems.push(format!(
                "the kernel refused {name}, needed by a feature it should have: {reason}"
            )),
            (Value::Null, _) => {
                // Walked instructions where the kernel tells them (5.16+),
                // else the size after verification, a lower bound.
                let walked = program["verified_insns"]
                    .as_u64()
                    .or(program["xlated_insns"].as_u64())
                    .unwrap_or_default();
                if walked > VERIFIER_BUDGET {
                    problems.push(format!(
                        "{name}: the verifier walks {walked} instructions, over half its limit"
                    ));
                }
            }
            _ => {}
        }
        println!("{program}");
    }
    ensure!(
        problems.is_empty(),
        "on Linux {}.{}: {problems:#?}",
        kernel.0,
        kernel.1
    );
    Ok(())
}

#[test]
fn the_agent_reports_the_features_of_this_kernel_and_translates_connects() -> Result<()> {
    require_root();
    let kernel = kernel();
    let cluster = Cluster::new(1)?;
    let client = cluster.add_pod(1, "client")?;
    let server_pod = cluster.add_pod(1, "server")?;
    let testpod = Testpod::locate();
    let _server = testpod.server(&server_pod, "server", 8080)?;
    let manifests = Manifests::new()?;
    let frontend = SocketAddr::from(([10, 96, 0, 10], 80));
    manifests.write(
        "echo-svc.yaml",
        &service_yaml("echo", frontend.ip(), frontend.port(), 8080, ""),
    )?;
    let endpoint = Endpoint {
        ip: server_pod.ip(Family::V4),
        node: "node1",
        ready: true,
    };
    manifests.write(
        "echo-slice.yaml",
        &slice_yaml("echo", "echo-1", 8080, &[endpoint]),
    )?;
    let agent = Agent::start(&cluster, 1, manifests.dir(), &[])?;

    let (_, metrics) = agent.http_get("/metrics")?;
    let log = agent.log_text();
    for feature in FEATURES {
        let on = feature.expected_on(kernel);
        let sample = format!(
            "zerohop_feature{{name=\"{}\"}} {}",
            feature.name,
            u8::from(on)
        );
        ensure!(
            metrics.lines().any(|line| line == sample),
            "Linux {}.{} should have {} {}: no `{sample}` in\n{metrics}\nlog:\n{log}",
            kernel.0,
            kernel.1,
            feature.name,
            if on { "on" } else { "off" },
        );
        let off_lines = log
            .lines()
            .filter(|line| line.contains(&format!("feature off on this kernel: {}:", feature.name)))
            .count();
        ensure!(
            off_lines == usize::from(!on),
            "{off_lines} lines saying {} is off:\n{log}",
            feature.name
        );
    }

    let report = testpod.echo(&client, frontend, 64 * 1024)?;
    ensure!(
        report.ok && report.server.as_deref() == Some("server"),
        "echo through {frontend}: {report:?}"
    );
    let counters = agent.counters()?;
    ensure!(counters.get("translated_local") == Some(&1), "{counters:?}");
    ensure!(
        (counters.get("bytes_redirected") > Some(&0)) == feature(BYPASS).expected_on(kernel),
        "the bypass moved bytes exactly when this kernel has it: {counters:?}"
    );
    Ok(())
}
