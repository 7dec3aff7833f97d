//! How this node's idle CPUs wait for work, which decides what a wake-up
//! across CPUs costs.
//!
//! The bypass hands each message straight to the peer socket and wakes its
//! reader at once. On a virtual machine whose idle vCPUs halt right away
//! (the `haltpoll` cpuidle driver with `guest_halt_poll_ns` 0, or a guest
//! without a polling idle driver), every wake-up of a reader sleeping on the
//! other vCPU is an inter-processor interrupt and a VM exit, tens of µs for
//! the waker. Request/response traffic at a few connections per thread then
//! hands work back and forth in lock-step and can lose to the stack, whose
//! per-packet work keeps both vCPUs busy. With idle polling on (KVM guests'
//! usual 200 µs) the waker only flags the polling vCPU. Operators who see
//! `halts` can turn polling on: `echo 200000 >
//! /sys/module/haltpoll/parameters/guest_halt_poll_ns`.

use std::{fmt, fs, path::Path};

/// What the node's idle behaviour is, as far as the kernel tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleBehaviour {
    /// Not a virtual machine: idle states wake in a few µs.
    BareMetal,
    /// A virtual machine whose idle vCPUs poll for `poll_ns` before halting.
    Polls { poll_ns: u64 },
    /// A virtual machine whose idle vCPUs halt at once (`driver`: the
    /// cpuidle driver, or "none").
    Halts { driver: String },
}

impl IdleBehaviour {
    /// Reads the node's behaviour from `sys` (normally `/sys`) and `cpuinfo`
    /// (normally the text of `/proc/cpuinfo`).
    pub fn read(sys: &Path, cpuinfo: &str) -> IdleBehaviour {
        let text = |path: &str| {
            fs::read_to_string(sys.join(path))
                .ok()
                .map(|text| text.trim().to_owned())
        };
        classify(
            cpuinfo,
            text("devices/system/cpu/cpuidle/current_driver").as_deref(),
            text("module/haltpoll/parameters/guest_halt_poll_ns").and_then(|ns| ns.parse().ok()),
        )
    }

    /// Of this node, from `/sys` and `/proc/cpuinfo`.
    pub fn of_this_node() -> IdleBehaviour {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        IdleBehaviour::read(Path::new("/sys"), &cpuinfo)
    }

    /// True when every cross-CPU wake-up of a sleeping reader is an
    /// interrupt to a halted vCPU.
    pub fn halts(&self) -> bool {
        matches!(self, IdleBehaviour::Halts { .. })
    }
}

/// The behaviour from the CPU flags (`hypervisor`: a guest), the cpuidle
/// driver and haltpoll's poll time.
fn classify(cpuinfo: &str, driver: Option<&str>, halt_poll_ns: Option<u64>) -> IdleBehaviour {
    let guest = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"));
    if !guest {
        return IdleBehaviour::BareMetal;
    }
    match (driver, halt_poll_ns) {
        (Some("haltpoll"), Some(poll_ns)) if poll_ns > 0 => IdleBehaviour::Polls { poll_ns },
        (driver, _) => IdleBehaviour::Halts {
            driver: driver.unwrap_or("none").to_owned(),
        },
    }
}

impl fmt::Display for IdleBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdleBehaviour::BareMetal => write!(f, "bare metal"),
            IdleBehaviour::Polls { poll_ns } => {
                write!(f, "idle vCPUs poll {} µs before halting", poll_ns / 1000)
            }
            IdleBehaviour::Halts { driver } => {
                write!(f, "idle vCPUs halt at once (cpuidle driver {driver})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &str = "processor\t: 0\nflags\t\t: fpu vme sse hypervisor lahf_lm\n";
    const HOST: &str = "processor\t: 0\nflags\t\t: fpu vme sse lahf_lm\n";

    #[test]
    fn a_guest_with_haltpoll_at_zero_halts() {
        assert_eq!(
            classify(GUEST, Some("haltpoll"), Some(0)),
            IdleBehaviour::Halts {
                driver: "haltpoll".into()
            }
        );
    }

    #[test]
    fn a_guest_with_haltpoll_polling_polls() {
        let polls = classify(GUEST, Some("haltpoll"), Some(200_000));
        assert_eq!(polls, IdleBehaviour::Polls { poll_ns: 200_000 });
        assert!(!polls.halts());
        assert_eq!(polls.to_string(), "idle vCPUs poll 200 µs before halting");
    }

    #[test]
    fn a_guest_without_a_polling_driver_halts() {
        assert!(classify(GUEST, None, None).halts());
        assert!(classify(GUEST, Some("acpi_idle"), None).halts());
    }

    #[test]
    fn without_the_hypervisor_flag_it_is_bare_metal() {
        assert_eq!(
            classify(HOST, Some("intel_idle"), None),
            IdleBehaviour::BareMetal
        );
    }

    #[test]
    fn reads_sysfs_files() {
        let dir = std::env::temp_dir().join(format!("zh-idle-test-{}", std::process::id()));
        let driver = dir.join("devices/system/cpu/cpuidle");
        let param = dir.join("module/haltpoll/parameters");
        fs::create_dir_all(&driver).unwrap();
        fs::create_dir_all(&param).unwrap();
        fs::write(driver.join("current_driver"), "haltpoll\n").unwrap();
        fs::write(param.join("guest_halt_poll_ns"), "0\n").unwrap();
        let behaviour = IdleBehaviour::read(&dir, GUEST);
        fs::remove_dir_all(&dir).unwrap();
        assert!(behaviour.halts(), "{behaviour}");
    }
}
