//! `zerohop agent` processes for the nodes of a sandbox cluster, and the CLI
//! calls tests make against their pinned maps.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{zerohop_binary, Cluster};

/// The node name the sandbox gives node `index` in manifests.
pub fn node_name(index: usize) -> String {
    format!("node{index}")
}

/// Where a test agent learns the cluster.
pub enum AgentSource<'a> {
    /// A directory of manifests.
    Dir(&'a Path),
    /// The Kubernetes API described by this kubeconfig.
    Kube(&'a Path),
}

/// A running agent. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Agent {
    child: Option<Child>,
    pin_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts the agent of node `node`, reading `manifests`, attached to the
    /// node's pod cgroup, and waits until its hooks are attached.
    pub fn start(
        cluster: &Cluster,
        node: usize,
        manifests: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::start_with(cluster, node, AgentSource::Dir(manifests), extra)
    }

    /// Like [`Agent::start`], with the source of choice.
    pub fn start_with(
        cluster: &Cluster,
        node: usize,
        source: AgentSource,
        extra: &[&str],
    ) -> Result<Agent> {
        let pin_dir = cluster.bpffs_dir(node);
        let mut command = Command::new(zerohop_binary());
        command.arg("agent");
        match source {
            AgentSource::Dir(manifests) => {
                command.arg(format!("--source=dir:{}", manifests.display()))
            }
            // The test API server is on loopback: no proxy must sit between.
            AgentSource::Kube(kubeconfig) => command
                .arg("--source=kube")
                .env("KUBECONFIG", kubeconfig)
                .env("NO_PROXY", "127.0.0.1,localhost")
                .env_remove("HTTPS_PROXY")
                .env_remove("https_proxy")
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy")
                .env_remove("ALL_PROXY")
                .env_remove("all_proxy"),
        };
        let mut child = command
            .args(["--node", &node_name(node)])
            .arg("--cgroup")
            .arg(cluster.node(node).cgroup_path())
            .arg("--pin-dir")
            .arg(&pin_dir)
            // Agents of both nodes run in this namespace: each takes a free port.
            .args(["--health-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", zerohop_binary().display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent {
            child: Some(child),
            pin_dir,
            log,
        };
        // A bound for an agent that never attaches, not a speed check: under
        // the kernel matrix's emulated CPUs, loading and verifying the
        // programs beside a busy test can take tens of seconds.
        agent.wait_for_log("attached", Duration::from_secs(90))?;
        Ok(agent)
    }

    /// Waits until a log line contains `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(text))
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "agent exited ({status}) before logging {text:?}:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not log {text:?} within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of /healthz, /readyz and /metrics, from the agent's log.
    pub fn health_addr(&self) -> Result<std::net::SocketAddr> {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|line| line.contains("serving /healthz"))
            .context("the agent logged no health address")?;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .context("no addr= in the health log line")?;
        Ok(addr.parse()?)
    }

    /// GET `path` from the agent's health address: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.health_addr()?, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .context("empty response")?
            .parse()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The agent's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the agent (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("the agent was stopped")?;
        // SAFETY: signalling our own child, not yet reaped, by its pid.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The kernel counters, by name (`zerohop inspect stats -o json`).
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        counters(&self.pin_dir)
    }

    /// `zerohop bypass on|off` for this node.
    pub fn set_bypass(&self, on: bool) -> Result<()> {
        cli(
            &["bypass", if on { "on" } else { "off" }, "--pin-dir"],
            &self.pin_dir,
        )
        .map(drop)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child, not yet reaped, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("agent did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("agent exited with {status}:\n{}", self.log_text());
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stop().is_err() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The kernel counters of the maps pinned in `pin_dir`.
pub fn counters(pin_dir: &Path) -> Result<BTreeMap<String, u64>> {
    #[derive(serde::Deserialize)]
    struct Row {
        counter: String,
        value: u64,
    }
    let json = inspect("stats", pin_dir)?;
    let rows: Vec<Row> =
        serde_json::from_str(&json).with_context(|| format!("stats output {json:?}"))?;
    Ok(rows
        .into_iter()
        .map(|row| (row.counter, row.value))
        .collect())
}

/// `zerohop inspect <what> -o json` of the maps pinned in `pin_dir`.
pub fn inspect(what: &str, pin_dir: &Path) -> Result<String> {
    cli(&["inspect", what, "-o", "json", "--pin-dir"], pin_dir)
}

fn cli(args: &[&str], pin_dir: &Path) -> Result<String> {
    let output = Command::new(zerohop_binary())
        .args(args)
        .arg(pin_dir)
        .output()?;
    if !output.status.success() {
        bail!(
            "zerohop {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}
