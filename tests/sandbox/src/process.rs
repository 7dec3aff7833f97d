//! Processes in pods: started inside a pod's network namespace and its node's
//! cgroup, read line by line, and always killed and reaped.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A child process; `None` once it was killed and reaped. Whoever takes it out
/// kills and reaps it, so its pid is never signalled after it could be reused.
type Slot = Mutex<Option<Child>>;

/// Kills (SIGKILL, by the pid of our own child) and reaps the child in `slot`.
fn kill_and_reap(slot: &Slot) {
    if let Some(mut child) = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        // std does not signal a child it already reaped (try_wait), so this only
        // ever hits our own, live or zombie, process.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The processes started in a cluster's pods, so that the cluster can end them
/// before it removes their namespaces and cgroups, even if a [`PodProcess`]
/// outlives its [`crate::Cluster`].
#[derive(Default)]
pub(crate) struct Children {
    slots: Mutex<Vec<Weak<Slot>>>,
}

impl Children {
    fn register(&self, child: Child) -> Arc<Slot> {
        let slot = Arc::new(Mutex::new(Some(child)));
        let mut slots = self.slots.lock().unwrap();
        slots.retain(|slot| slot.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    pub(crate) fn kill_all(&self) {
        let slots = std::mem::take(
            &mut *self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        slots
            .iter()
            .filter_map(Weak::upgrade)
            .for_each(|slot| kill_and_reap(&slot));
    }

    /// Starts `program args…` in pod `pod`: in the network namespace `netns`
    /// and in the cgroup `cgroup` (its node's) from its very first instruction,
    /// so the cgroup's BPF programs see all of its sockets, and registers it
    /// among these children. stdin and stdout are pipes, stderr is collected.
    ///
    /// Both files are opened here in the parent; between fork and exec the child
    /// only makes system calls (async-signal-safe, no allocation), and the files
    /// are close-on-exec, so the program inherits neither.
    ///
    /// The process also gets SIGKILL when this process dies (`PR_SET_PDEATHSIG`):
    /// Drop cannot run after a SIGKILL or an abort, and an orphan would keep its
    /// cgroup busy and its namespace alive (the sweep removes names, it never
    /// kills). As that signal follows the death of the forking *thread*, the
    /// fork happens on one thread that lives as long as the process.
    pub(crate) fn spawn<I, S>(
        &self,
        pod: &str,
        netns: &str,
        cgroup: &Path,
        program: &Path,
        args: I,
    ) -> Result<PodProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let what = format!("{} in pod {}", program.display(), pod);
        let netns_path = format!("/run/netns/{netns}");
        let netns = File::open(&netns_path).with_context(|| format!("cannot open {netns_path}"))?;
        let procs_path = cgroup.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("cannot open {}", procs_path.display()))?;
        let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        dies_with_this_process(&mut command);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls, on descriptors that stay open (the
        // parent holds `netns` and `procs` until spawn returns).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" in cgroup.procs moves the writing process itself.
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            spawn_on_keeper_thread(command).with_context(|| format!("cannot start {what}"))?;
        drop((netns, procs));

        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        let (stderr_end, stderr_done) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _end = stderr_end;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buf) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let child = self.register(child);
        Ok(PodProcess {
            what,
            pid,
            child,
            stdin,
            lines,
            stderr,
            stderr_done,
        })
    }
}

/// A process running in a pod. Its stdout is read line by line (each read with a
/// timeout), its stderr collected for error messages. Dropping it kills it.
pub struct PodProcess {
    /// `<program> in pod <name>`, for messages.
    what: String,
    pid: u32,
    child: Arc<Slot>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Disconnects when stderr has ended (its reader thread drops the sender).
    stderr_done: Receiver<()>,
}

/// What a finished [`PodProcess`] left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The stdout lines not read before (without their newlines).
    pub stdout: Vec<String>,
    pub stderr: String,
}

/// Makes the process `command` starts get SIGKILL when this process dies
/// (`PR_SET_PDEATHSIG`), from its first instruction: Drop cannot run after a
/// SIGKILL or an abort, and the orphan would outlive what it belongs to.
/// The signal follows the death of the *thread* that forks, so spawn from
/// one that lives as long as the process.
pub fn dies_with_this_process(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

/// Spawns `command` from a thread that lives until the process exits, so that
/// `PR_SET_PDEATHSIG` fires only then (not when some test thread ends). The
/// `Child` is usable from any thread: all threads of a process may wait for
/// its children.
fn spawn_on_keeper_thread(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("zh-pod-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the pod spawner thread");
        requests
    });
    let gone = || std::io::Error::other("the pod spawner thread is gone");
    let (reply, result) = mpsc::channel();
    keeper.send((command, reply)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

impl PodProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line: `Ok(None)` at the end of stdout, an error when
    /// no line comes within `timeout`.
    pub fn read_line_timeout(&mut self, timeout: Duration) -> Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{}: no output line within {timeout:?}; stderr: {}",
                    self.what,
                    self.stderr()
                )
            }
        }
    }

    /// Reads stdout until a line starting with `prefix` and returns it; fails
    /// at the end of stdout or after `timeout` in all.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_line_timeout(left) {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(line)) => skipped.push(line),
                Ok(None) => bail!(
                    "{} ended its output without a line {prefix:?} (got {skipped:?}); stderr: {}",
                    self.what,
                    self.stderr()
                ),
                Err(e) => {
                    return Err(
                        e.context(format!("waiting for a line {prefix:?} (got {skipped:?})"))
                    )
                }
            }
        }
    }

    /// Writes `line` and a newline to the process's stdin.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin is closed", self.what))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot write to {}", self.what))
    }

    /// Closes stdin: the process reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the process to exit (it is not killed on timeout).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = match self.child.lock().unwrap().as_mut() {
                Some(child) => child
                    .try_wait()
                    .with_context(|| format!("cannot wait for {}", self.what))?,
                None => bail!("{} was killed by its cluster's cleanup", self.what),
            };
            match status {
                Some(status) => return Ok(status),
                None if Instant::now() >= deadline => {
                    bail!(
                        "{} still runs after {timeout:?}; stderr: {}",
                        self.what,
                        self.stderr()
                    )
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Waits for the process to exit and its stdout to end (within `timeout`)
    /// and returns its exit status and remaining output. Killed on timeout.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let mut stdout = Vec::new();
        while let Some(line) =
            self.read_line_timeout(deadline.saturating_duration_since(Instant::now()))?
        {
            stdout.push(line);
        }
        let status = self.wait_timeout(deadline.saturating_duration_since(Instant::now()))?;
        // The stderr reader may trail the exit by a moment.
        let _ = self
            .stderr_done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        Ok(Finished {
            status,
            stdout,
            stderr: self.stderr(),
        })
    }

    /// Kills (SIGKILL) and reaps the process now.
    pub fn kill(&mut self) {
        kill_and_reap(&self.child);
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}
