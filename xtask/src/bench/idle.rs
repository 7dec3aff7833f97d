//! The node's idle behaviour, and setting it for a measurement.
//!
//! On a VM whose idle vCPUs halt at once (`guest_halt_poll_ns` 0), waking a
//! task on the other vCPU is an inter-processor interrupt that exits to the
//! hypervisor: tens of µs. With idle polling (`guest_halt_poll_ns` e.g.
//! 200000, i.e. 200 µs, the usual KVM guest default) a vCPU spins a while
//! before it halts and a wake-up is nearly free. The socket-to-socket bypass
//! hands work between client and server without the stack's softirq work in
//! between, so it wakes the other side more often, and pays this more.
//!
//! [`Setting`] writes the parameter and puts the original value back when it
//! is dropped (also on error and panic), and from a signal handler on
//! SIGINT, SIGTERM and SIGHUP ([`install_signal_handler`]), which also tells
//! the benchmark to stop ([`interrupted`]).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering},
};

use anyhow::{bail, Context, Result};

/// Upper bound of the haltpoll governor's polling before a vCPU halts, in ns.
pub const HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
const CPUIDLE_DRIVER: &str = "/sys/devices/system/cpu/cpuidle/current_driver";

/// Idle polling used by `--idle poll`: 200 µs, the KVM guest default.
pub const POLL_NS: u64 = 200_000;

/// `--idle`: what the measurement runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleArg {
    /// Leave the node as it is.
    AsIs,
    /// guest_halt_poll_ns 0: an idle vCPU halts at once.
    Halt,
    /// guest_halt_poll_ns 200000: an idle vCPU polls up to 200 µs first.
    Poll,
    /// The whole matrix under `halt`, then under `poll`.
    Both,
}

/// One idle behaviour a matrix is measured under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    AsIs,
    Halt,
    Poll,
}

impl IdleArg {
    pub fn modes(self) -> Vec<Idle> {
        match self {
            IdleArg::AsIs => vec![Idle::AsIs],
            IdleArg::Halt => vec![Idle::Halt],
            IdleArg::Poll => vec![Idle::Poll],
            IdleArg::Both => vec![Idle::Halt, Idle::Poll],
        }
    }
}

impl Idle {
    pub fn name(self) -> &'static str {
        match self {
            Idle::AsIs => "as-is",
            Idle::Halt => "halt",
            Idle::Poll => "poll",
        }
    }

    /// The `guest_halt_poll_ns` this mode sets, if any.
    pub fn halt_poll_ns(self) -> Option<u64> {
        match self {
            Idle::AsIs => None,
            Idle::Halt => Some(0),
            Idle::Poll => Some(POLL_NS),
        }
    }
}

/// The current `guest_halt_poll_ns`, if the node has the haltpoll module.
pub fn halt_poll_ns() -> Option<u64> {
    std::fs::read_to_string(HALT_POLL_NS)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// One line on the node's idle behaviour.
pub fn describe() -> String {
    let driver = std::fs::read_to_string(CPUIDLE_DRIVER)
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "none".into());
    let poll = match halt_poll_ns() {
        None => "no haltpoll parameter".to_owned(),
        Some(0) => {
            "guest_halt_poll_ns 0: an idle vCPU halts at once, every cross-CPU wake-up is an IPI"
                .to_owned()
        }
        Some(ns) => format!(
            "guest_halt_poll_ns {ns}: an idle vCPU polls up to {} µs before it halts",
            ns / 1000
        ),
    };
    format!("cpuidle driver {driver}, {poll}")
}

/// A kernel parameter set for a while: the original value is written back on
/// Drop, and by the signal handler if a signal comes first.
pub struct Setting {
    path: PathBuf,
    original: String,
}

impl Setting {
    /// Sets `path` (a sysfs file) to `value`, remembering what it held.
    pub fn set(path: &Path, value: &str) -> Result<Setting> {
        let original = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        arm(path, &original)?;
        // From here on Drop restores, whatever happens.
        let setting = Setting {
            path: path.to_owned(),
            original,
        };
        write(path, value)?;
        let now = std::fs::read_to_string(path)?;
        if now.trim() != value {
            bail!(
                "{} reads {:?} after writing {value:?}",
                path.display(),
                now.trim()
            );
        }
        Ok(setting)
    }

    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for Setting {
    fn drop(&mut self) {
        disarm();
        if let Err(e) = write(&self.path, &self.original) {
            eprintln!(
                "cannot restore {} to {}: {e:#}",
                self.path.display(),
                self.original
            );
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

// What the signal handler writes back, if anything: a path and the bytes to
// write, both leaked (a few bytes per setting) so they stay valid for a
// handler that runs at any moment.
static RESTORE_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static RESTORE_VALUE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static RESTORE_LEN: AtomicUsize = AtomicUsize::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn arm(path: &Path, original: &str) -> Result<()> {
    if !RESTORE_PATH.load(Ordering::Acquire).is_null() {
        bail!("another setting is in force");
    }
    let value: &'static mut [u8] = Box::leak(original.as_bytes().to_vec().into_boxed_slice());
    RESTORE_LEN.store(value.len(), Ordering::Release);
    RESTORE_VALUE.store(value.as_mut_ptr(), Ordering::Release);
    let path = CString::new(path.as_os_str().as_bytes())?;
    RESTORE_PATH.store(path.into_raw(), Ordering::Release);
    Ok(())
}

fn disarm() {
    RESTORE_PATH.store(std::ptr::null_mut(), Ordering::Release);
}

/// Whether SIGINT, SIGTERM or SIGHUP came (once [`install_signal_handler`] ran).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe calls: atomics, open, write, close.
    INTERRUPTED.store(true, Ordering::Release);
    let path = RESTORE_PATH.load(Ordering::Acquire);
    if path.is_null() {
        return;
    }
    let value = RESTORE_VALUE.load(Ordering::Acquire);
    let len = RESTORE_LEN.load(Ordering::Acquire);
    // SAFETY: `path` is a leaked NUL-terminated string and `value` a leaked
    // buffer of `len` bytes (see `arm`), valid for the life of the process.
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_TRUNC);
        if fd >= 0 {
            libc::write(fd, value.cast(), len);
            libc::close(fd);
        }
    }
}

/// On SIGINT, SIGTERM and SIGHUP: restore the setting in force, if any, and
/// mark the run [`interrupted`] so it stops after its current trial and its
/// guards clean up. A second signal has the default effect (it ends the
/// process; the setting was already restored by the first).
pub fn install_signal_handler() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that makes only
        // async-signal-safe calls; SA_RESETHAND restores the default after one.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("sigaction: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }

    /// One test, as the restore slot and the signal disposition are
    /// process-wide.
    #[test]
    fn the_original_value_comes_back_on_drop_on_panic_and_on_a_signal() {
        let dir = std::env::temp_dir().join(format!("xtask-idle-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("guest_halt_poll_ns");
        std::fs::write(&file, "0\n").unwrap();

        // Drop.
        {
            let setting = Setting::set(&file, "200000").unwrap();
            assert_eq!(setting.original(), "0");
            assert_eq!(read(&file), "200000");
        }
        assert_eq!(read(&file), "0");

        // A panic while it is in force.
        let panicked = std::panic::catch_unwind(|| {
            let _setting = Setting::set(&file, "200000").unwrap();
            panic!("measurement failed");
        });
        assert!(panicked.is_err());
        assert_eq!(read(&file), "0");

        // A signal while it is in force: the handler restores at once, and
        // the run is told to stop.
        install_signal_handler().unwrap();
        let setting = Setting::set(&file, "200000").unwrap();
        assert!(Setting::set(&file, "1").is_err(), "one setting at a time");
        assert!(!interrupted());
        // SAFETY: raise runs our handler on this thread before returning.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(interrupted());
        assert_eq!(read(&file), "0");
        drop(setting);
        assert_eq!(read(&file), "0");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
