//! Finding (and, for bpffs, providing) the kernel file systems the sandbox uses.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{anyhow, bail, Context, Result};

/// Fails (panics) with a clear message unless we run as root.
///
/// The privileged tests must run for real: a test that silently skips without
/// privileges would report a pass for code that never ran.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests build network namespaces, cgroups and BPF pins: run them as root \
         (e.g. `sudo -E cargo test -p zerohop-tests`); they never skip"
    );
}

/// Mount points of the file systems of type `fstype`, in /proc/mounts order.
fn mounts_of_type(fstype: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == fstype).then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point, read from /proc/mounts (it is /sys/fs/cgroup on a
/// pure v2 system, /sys/fs/cgroup/unified on a hybrid one such as these VMs).
///
/// Panics when there is none: zerohop's programs attach to cgroup v2, so nothing
/// the tests check could work without it.
pub fn cgroup2_mount() -> PathBuf {
    mounts_of_type("cgroup2")
        .into_iter()
        .next()
        .expect("no cgroup2 file system in /proc/mounts: zerohop needs cgroup v2")
}

/// Where the sandbox pins go: the mount of a bpf file system, preferring
/// /sys/fs/bpf; when none is mounted, bpffs is mounted at /sys/fs/bpf (and left
/// mounted, as other users of the machine may pin there from then on).
pub fn bpffs_mount() -> Result<PathBuf> {
    // One mount attempt per process, so that parallel tests do not stack mounts.
    static MOUNT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MOUNT
        .get_or_init(|| find_or_mount_bpffs().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_or_mount_bpffs() -> Result<PathBuf> {
    let default = Path::new("/sys/fs/bpf");
    let mounted = mounts_of_type("bpf");
    if let Some(path) = mounted
        .iter()
        .find(|path| *path == default)
        .or(mounted.first())
    {
        return Ok(path.clone());
    }
    std::fs::create_dir_all(default)
        .with_context(|| format!("cannot create {}", default.display()))?;
    let target = CString::new(default.as_os_str().as_encoded_bytes())?;
    let bpf = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings for the call; no data.
    let rc = unsafe {
        libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "cannot mount bpffs at {}: {}",
            default.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mount_path(r"/plain\x"), r"/plain\x");
    }
}
