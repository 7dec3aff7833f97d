//! Running the system tools (`ip`, `iptables-restore`, `sysctl`) that build the sandbox.
//!
//! Every call names the network namespace it acts on explicitly (`ip -n NS …` or
//! `ip netns exec NS …`), so nothing here can act on the root namespace by accident.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Runs `program args…`, feeding `stdin` when given, and returns its stdout.
/// A non-zero exit is an error that quotes the command line and its stderr.
pub(crate) fn run_with_input(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    if let Some(input) = stdin {
        // Dropping the handle after writing closes the pipe, so the tool sees EOF.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("cannot feed `{line}`"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("`{line}` failed to run"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdin
                .map(|input| format!("\ninput was:\n{input}"))
                .unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `program args…` and returns its stdout (see [`run_with_input`]).
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// `ip -n <netns> args…`: an iproute2 command inside one of our namespaces.
pub(crate) fn ip(netns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec <netns> program args…`, for tools without a namespace option.
pub(crate) fn netns_exec(
    netns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run_with_input("ip", &full, stdin)
}
