//! Booting a kernel of the matrix under qemu and running a plan of test
//! suites inside, where their namespaces, cgroups, bpffs and programs live:
//! the host's kernel is never touched.
//!
//! The guest's root file system is the host's, shared read-only by
//! virtiofsd (the cloud kernels have virtiofs but no 9p) under a tmpfs
//! overlay, so the test binaries, tools and kernel cache are at the same
//! paths inside. A small initramfs (busybox, the modules that mount the
//! root, `vm/init`) sets that up and hands over to `vm/guest.sh`, which
//! follows the plan and reports on the second serial port.
//!
//! Everything a run makes goes when it ends, on failure too (Drop): its
//! directory under [`RUN_ROOT`], named like the sandbox's (`zh<pid>x<n>`,
//! so the sweep finds a crashed run's), the read-only bind mount of `/` in
//! it, and the two processes, virtiofsd and qemu: children of xtask, ended
//! by their PID, and killed by the kernel if xtask dies first.

use std::{
    ffi::CString,
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::kernels::Kernel;

/// Where runs keep their bind mount, virtiofsd's socket and the results.
/// Not under /tmp: nothing that sweeps temporary files recursively may ever
/// reach a bind mount of `/`.
pub const RUN_ROOT: &str = "/run/zerohop-vm";
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const QEMU: &str = "qemu-system-x86_64";
/// The virtiofs tag the guest mounts (vm/init).
const ROOT_TAG: &str = "zh-root";
/// Guest memory; the overlay's writes and the suites live in it.
const MEMORY: &str = "3G";
/// A kernel that works under KVM reaches its init in about a second; one
/// that hangs (a software hypervisor behind /dev/kvm) never does.
const KVM_INIT_DEADLINE: Duration = Duration::from_secs(15);
/// No VM may run longer: every suite of the slowest kernel fits many times.
const VM_DEADLINE: Duration = Duration::from_secs(60 * 60);

const STAGE1: &str = include_str!("../vm/init");
const STAGE2: &str = include_str!("../vm/guest.sh");

/// Set by SIGINT, SIGTERM or SIGHUP once [`stop_on_signals`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP stop the running VM instead of
/// ending xtask on the spot, so that its mount and processes are removed
/// (a SIGKILL leaves the mount to the next run's sweep; the processes die
/// with xtask anyway).
pub fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a signal asked xtask to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulation, on every host core. The CPU model has no AVX: emulating it
    /// made the suites twice as slow as this model does.
    Tcg,
}

/// What a VM did, from its reports on the second serial port.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `uname -r` of the guest, once guest.sh ran.
    pub booted: Option<String>,
    /// The suites that ended: name, exit code, seconds.
    pub suites: Vec<(String, i32, u64)>,
    /// The last `zerohop probe -o json` report.
    pub report: Option<String>,
    /// guest.sh went through the whole plan.
    pub done: bool,
    /// Why the VM was stopped before it ended by itself.
    pub stopped: Option<String>,
    /// Under KVM, the kernel never reached its init.
    pub kvm_hung: bool,
}

/// Boots `kernel` and follows `plan` (see vm/guest.sh), streaming the
/// console to standard output, each line prefixed with `[label]`, and to
/// `log`. Files of the run other than the log go to `work`.
pub fn run(
    kernel: &Kernel,
    label: &str,
    plan: &str,
    accel: Accel,
    work: &Path,
    log: &Path,
) -> Result<Outcome> {
    let initrd = initramfs(kernel, plan, work)?;
    let dir = RunDir::create()?;
    let share = RootShare::mount(dir.path.join("root"))?;
    let socket = dir.path.join("virtiofs.sock");
    let results = dir.path.join("results");
    let virtiofsd_log = File::create(work.join("virtiofsd.log"))?;
    // cache=always: the shared tree is read-only, so the guest may keep
    // what it read; a single queue thread answers fastest under emulation.
    let virtiofsd = Owned::spawn(
        Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", share.target.display()))
            .args(["-o", "cache=always", "-o", "sandbox=chroot"])
            .arg("--thread-pool-size=0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(virtiofsd_log),
        "virtiofsd",
    )?;
    wait_for_path(&socket, Duration::from_secs(10)).context("virtiofsd did not start")?;

    let started = Instant::now();
    let mut qemu = Owned::spawn(
        qemu_command(kernel, &initrd, &socket, &results, accel).stdout(Stdio::piped()),
        "qemu",
    )?;
    let console = qemu.child.stdout.take().context("qemu's console")?;
    let (init_seen, init_reached) = mpsc::channel();
    let mut log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let prefix = format!("[{label}] ");
    let reader = std::thread::spawn(move || {
        let mut init_seen = Some(init_seen);
        for line in BufReader::new(console).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            let _ = writeln!(log_file, "{line}");
            println!("{prefix}{line}");
            if line.starts_with("zh-stage1 ") {
                init_seen.take().map(|sender| sender.send(()));
            }
        }
    });

    let mut outcome = Outcome::default();
    let mut init_ran = false;
    loop {
        if qemu.child.try_wait()?.is_some() {
            break;
        }
        init_ran = init_ran || init_reached.try_recv().is_ok();
        let elapsed = started.elapsed();
        if accel == Accel::Kvm && !init_ran && elapsed > KVM_INIT_DEADLINE {
            outcome.kvm_hung = true;
            outcome.stopped = Some(format!(
                "under KVM the kernel did not reach its init within {KVM_INIT_DEADLINE:?}"
            ));
            break;
        }
        if elapsed > VM_DEADLINE {
            outcome.stopped = Some(format!("stopped after {VM_DEADLINE:?}"));
            break;
        }
        if interrupted() {
            outcome.stopped = Some("stopped by a signal".to_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(qemu);
    let _ = reader.join();
    drop(virtiofsd);
    let reports = std::fs::read_to_string(&results).unwrap_or_default();
    read_reports(&reports, &mut outcome);
    drop(share);
    drop(dir);
    Ok(outcome)
}

fn qemu_command(
    kernel: &Kernel,
    initrd: &Path,
    socket: &Path,
    results: &Path,
    accel: Accel,
) -> Command {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let mut command = Command::new("nice");
    command.args(["-n", "10", QEMU]);
    command.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    match accel {
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => command.args(["-accel", "tcg,thread=multi", "-cpu", "Nehalem"]),
    };
    command
        .args(["-smp", &cpus.to_string(), "-m", MEMORY])
        // vhost-user devices need the guest's memory shared with virtiofsd.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY},share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=root,path={}", socket.display()))
        .args([
            "-device",
            &format!("vhost-user-fs-pci,chardev=root,tag={ROOT_TAG}"),
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // 115200: qemu paces a serial port at its baud rate. No mitigations:
        // they cost much under emulation and protect nothing in a test VM.
        .args([
            "-append",
            "console=ttyS0,115200 quiet panic=-1 mitigations=off rdinit=/init",
        ])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null());
    command
}

fn read_reports(text: &str, outcome: &mut Outcome) {
    for line in text.lines().map(|line| line.trim_end_matches('\r')) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "booted" => outcome.booted = Some(rest.to_owned()),
            "report" => outcome.report = Some(rest.to_owned()),
            "done" => outcome.done = true,
            "suite" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [name, code, seconds] = words[..] {
                    outcome.suites.push((
                        name.to_owned(),
                        code.parse().unwrap_or(-1),
                        seconds.parse().unwrap_or(0),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Writes the initramfs of a run: busybox, vm/init, vm/guest.sh, the plan,
/// and the kernel's modules that mount the root (decompressed: busybox's
/// insmod reads plain ELF), in load order.
fn initramfs(kernel: &Kernel, plan: &str, work: &Path) -> Result<PathBuf> {
    let staging = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("bin"))?;
    std::fs::create_dir_all(staging.join("modules"))?;
    let mut files = vec!["bin", "modules"]
        .into_iter()
        .map(PathBuf::from)
        .collect::<Vec<_>>();
    let busybox = crate::which("busybox").context("busybox not found: run `cargo xtask setup`")?;
    std::fs::copy(&busybox, staging.join("bin/busybox"))?;
    for (name, text, mode) in [
        ("init", STAGE1, 0o755),
        ("guest.sh", STAGE2, 0o755),
        ("plan", plan, 0o644),
    ] {
        let path = staging.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        files.push(name.into());
    }
    files.push("bin/busybox".into());
    let mut load = String::new();
    for module in load_order(&kernel.modules, &["virtio_pci", "virtiofs", "overlay"])? {
        let name = format!("modules/{}.ko", module_name(&module));
        decompress(&kernel.modules.join(&module), &staging.join(&name))?;
        load.push_str(&name);
        load.push('\n');
        files.push(name.into());
    }
    std::fs::write(staging.join("modules.load"), load)?;
    files.push("modules.load".into());

    let image = work.join("initrd.img");
    let mut cpio = Command::new(&busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(File::create(&image)?)
        .stderr(Stdio::null())
        .spawn()?;
    let mut names = cpio.stdin.take().context("cpio's stdin")?;
    for file in &files {
        names.write_all(file.as_os_str().as_bytes())?;
        names.write_all(b"\n")?;
    }
    drop(names);
    if !cpio.wait()?.success() {
        bail!("busybox cpio failed writing {}", image.display());
    }
    Ok(image)
}

/// The modules (paths relative to `modules`) to load for `wanted`,
/// dependencies first, from `modules.dep`. A wanted module that is not
/// there is built in.
fn load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading modules.dep in {}", modules.display()))?;
    Ok(order_from_dep(&dep, wanted))
}

fn order_from_dep(dep: &str, wanted: &[&str]) -> Vec<String> {
    let dependencies = |module: &str| -> Option<Vec<String>> {
        dep.lines().find_map(|line| {
            let (path, deps) = line.split_once(':')?;
            (path == module).then(|| deps.split_whitespace().map(str::to_owned).collect())
        })
    };
    fn visit(
        module: String,
        dependencies: &dyn Fn(&str) -> Option<Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.contains(&module) {
            return;
        }
        for dependency in dependencies(&module).unwrap_or_default() {
            visit(dependency, dependencies, order);
        }
        order.push(module);
    }
    let mut order = Vec::new();
    for name in wanted {
        let path = dep.lines().find_map(|line| {
            let path = line.split_once(':')?.0;
            (module_name(path) == *name).then(|| path.to_owned())
        });
        if let Some(path) = path {
            visit(path, &dependencies, &mut order);
        }
    }
    order
}

/// `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

fn decompress(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|ext| ext.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            std::fs::copy(from, to)?;
            return Ok(());
        }
    };
    let status = Command::new(tool)
        .arg("-dc")
        .arg(from)
        .stdout(File::create(to)?)
        .status()
        .with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} -dc {} failed", from.display());
    }
    Ok(())
}

fn wait_for_path(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether qemu may try KVM here at all.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A child process of ours: ended (SIGTERM, then SIGKILL) and reaped, by its
/// PID, when dropped, and killed by the kernel when xtask dies.
struct Owned {
    child: Child,
    what: &'static str,
}

impl Owned {
    fn spawn(command: &mut Command, what: &'static str) -> Result<Owned> {
        zerohop_sandbox::dies_with_this_process(command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Owned { child, what })
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child, not yet reaped, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: {} ignored SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run's directory, `RUN_ROOT/zh<pid>x<n>`. Dropping it removes the files
/// a run leaves there, one by one, never recursively.
struct RunDir {
    path: PathBuf,
}

/// Files a run creates in its directory, besides the mount point.
const RUN_FILES: &[&str] = &["virtiofs.sock", "results"];

impl RunDir {
    fn create() -> Result<RunDir> {
        let path = Path::new(RUN_ROOT).join(zerohop_sandbox::run_name());
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        remove_run_dir(&self.path);
    }
}

fn remove_run_dir(path: &Path) {
    for file in RUN_FILES {
        let _ = std::fs::remove_file(path.join(file));
    }
    if let Err(error) = std::fs::remove_dir(path) {
        eprintln!("xtask: cannot remove {}: {error}", path.display());
    }
    // The parent goes too once no run uses it.
    let _ = std::fs::remove_dir(RUN_ROOT);
}

/// A read-only, non-recursive bind mount of `/`: the host's root file
/// system alone, without /proc, /sys, /dev or /run, which the guest mounts
/// its own.
struct RootShare {
    target: PathBuf,
}

impl RootShare {
    fn mount(target: PathBuf) -> Result<RootShare> {
        std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        let share = RootShare { target };
        let target = CString::new(share.target.as_os_str().as_bytes())?;
        let steps: [(&str, libc::c_ulong, Option<&std::ffi::CStr>); 3] = [
            ("bind", libc::MS_BIND, Some(c"/")),
            // Its own, so that nothing mounted under it reaches the host's.
            ("private", libc::MS_PRIVATE, None),
            (
                "read-only",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            ),
        ];
        for (what, flags, source) in steps {
            let source = source.map_or(std::ptr::null(), std::ffi::CStr::as_ptr);
            // SAFETY: valid NUL-terminated paths (or null), no data.
            let rc = unsafe {
                libc::mount(
                    source,
                    target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("{what} mount of / at {}", share.target.display()));
            }
        }
        Ok(share)
    }
}

impl Drop for RootShare {
    fn drop(&mut self) {
        unmount(&self.target);
        if let Err(error) = std::fs::remove_dir(&self.target) {
            eprintln!("xtask: cannot remove {}: {error}", self.target.display());
        }
    }
}

/// Unmounts `target` if it is a mount point; lazily when it is busy.
fn unmount(target: &Path) {
    if !mount_points().iter().any(|point| point == target) {
        return;
    }
    let Ok(path) = CString::new(target.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), 0) } != 0
        // SAFETY: the same path.
        && unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0
    {
        eprintln!(
            "xtask: cannot unmount {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(1).map(PathBuf::from))
        .collect()
}

/// Whether a run of ours is over: its process is gone, or it is this one
/// (asked once its VMs are done).
fn over(pid: u32) -> bool {
    pid == std::process::id() || zerohop_sandbox::process_gone(pid)
}

fn run_dirs_over() -> Vec<PathBuf> {
    zerohop_sandbox::run_entries(Path::new(RUN_ROOT), over)
}

/// Removes what runs that died left under [`RUN_ROOT`] (their processes
/// died with them). Live runs, of other processes, are left alone.
pub fn sweep_stale() {
    for dir in run_dirs_over() {
        let root = dir.join("root");
        unmount(&root);
        let _ = std::fs::remove_dir(&root);
        remove_run_dir(&dir);
        eprintln!("xtask sweep: removed {}", dir.display());
    }
}

/// What finished runs left behind: run directories, bind mounts, and
/// virtiofsd or qemu processes of theirs.
pub fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = run_dirs_over()
        .iter()
        .map(|dir| format!("VM directory {}", dir.display()))
        .collect();
    left.extend(
        mount_points()
            .iter()
            .filter(|point| point.starts_with(RUN_ROOT))
            .map(|point| format!("mount {}", point.display())),
    );
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for process in processes {
        let Ok(cmdline) = std::fs::read(process.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let run = cmdline
            .split_once(&format!("{RUN_ROOT}/"))
            .and_then(|(_, rest)| rest.split('/').next());
        if run.and_then(zerohop_sandbox::run_owner).is_some_and(over) {
            left.push(format!(
                "process {} ({})",
                process.file_name().to_string_lossy(),
                cmdline.trim()
            ));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_dependencies_first_and_built_in_ones_are_skipped() {
        let dep = "kernel/fs/fuse/fuse.ko:\n\
                   kernel/fs/fuse/virtiofs.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/fs/fuse/fuse.ko\n\
                   kernel/fs/overlayfs/overlay.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        assert_eq!(
            order_from_dep(dep, &["virtio_pci", "virtiofs", "overlay"]),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/fs/fuse/fuse.ko",
                "kernel/fs/fuse/virtiofs.ko.xz",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
        assert_eq!(
            order_from_dep(
                "kernel/fs/overlayfs/overlay.ko.xz:\n",
                &["virtiofs", "overlay"]
            ),
            ["kernel/fs/overlayfs/overlay.ko.xz"]
        );
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko.xz"), "virtiofs");
    }

    #[test]
    fn reports_are_read_line_by_line() {
        let mut outcome = Outcome::default();
        read_reports(
            "booted 6.1.0-56-cloud-amd64\r\nsuite fastpath 0 95\nsuite kernel 101 12\nreport {\"a\": 1}\ndone\n",
            &mut outcome,
        );
        assert_eq!(outcome.booted.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            outcome.suites,
            [
                ("fastpath".to_owned(), 0, 95),
                ("kernel".to_owned(), 101, 12)
            ]
        );
        assert_eq!(outcome.report.as_deref(), Some("{\"a\": 1}"));
        assert!(outcome.done);
    }
}
