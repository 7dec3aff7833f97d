//! Stale connections: sockets the hooks sent to an endpoint that has since
//! left its Service.
//!
//! A translated socket holds its endpoint's address itself, so nothing in
//! the maps can move it. When a sync takes endpoints away
//! ([`zerohop_planner::gone`]), the agent files them in the GONE map and
//! reads the TCP and UDP socket iterators (ebpf/programs/src/terminate.rs)
//! in every network namespace of its cgroup's processes: each iterator
//! walks the sockets of the namespace it was opened in, and terminates
//! those sent to a gone endpoint (6.5+), or counts them where the kernel
//! cannot (`bpf_sock_destroy` is missing).
//!
//! UDP is on by default, as a connected UDP socket has no other way to
//! learn that its server went (Cilium does the same). TCP is opt-in: a TCP
//! connection notices a dead peer itself, and cutting one whose endpoint
//! only stopped being ready (a pod draining) would break graceful shutdown.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Read},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    str::FromStr,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{iter::IterLink, Iter},
};
use zerohop_abi::{capacity, map_name, Counter, FrontendEndpoint, PROTO_TCP, PROTO_UDP};

use crate::datapath::{self, Datapath};

/// The iterator program of each protocol (named after what it walks, see
/// features.rs).
pub const ITERATORS: [(u8, &str); 2] = [
    (PROTO_TCP, "zh_terminate_tcp"),
    (PROTO_UDP, "zh_terminate_udp"),
];

/// Which protocols' stale sockets the agent terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminate {
    pub tcp: bool,
    pub udp: bool,
}

impl Default for Terminate {
    fn default() -> Self {
        Terminate {
            tcp: false,
            udp: true,
        }
    }
}

impl FromStr for Terminate {
    type Err = String;

    /// `udp`, `tcp`, `tcp,udp` (either order) or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut terminate = Terminate {
            tcp: false,
            udp: false,
        };
        for word in text.split(',').map(str::trim) {
            match word {
                "tcp" => terminate.tcp = true,
                "udp" => terminate.udp = true,
                "none" if text.trim() == "none" => {}
                _ => return Err(format!("{text:?}: expected udp, tcp, tcp,udp or none")),
            }
        }
        Ok(terminate)
    }
}

impl Terminate {
    fn covers(&self, proto: u8) -> bool {
        (proto == PROTO_TCP && self.tcp) || (proto == PROTO_UDP && self.udp)
    }
}

/// What one termination pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Network namespaces walked.
    pub namespaces: usize,
    /// Sockets terminated.
    pub terminated: u64,
    /// Stale sockets the kernel could not terminate.
    pub left: u64,
}

/// Terminates the sockets of `cgroup`'s processes that the hooks sent to
/// an endpoint of `gone`, for the protocols `terminate` covers.
pub fn terminate(
    datapath: &mut Datapath,
    cgroup: &Path,
    gone: &[FrontendEndpoint],
    terminate: Terminate,
) -> Result<Pass> {
    let gone: Vec<FrontendEndpoint> = gone
        .iter()
        .filter(|endpoint| terminate.covers(endpoint.frontend.proto))
        .copied()
        .collect();
    let programs: Vec<&str> = ITERATORS
        .iter()
        .filter(|&&(proto, program)| {
            gone.iter().any(|endpoint| endpoint.frontend.proto == proto)
                && datapath.program_loaded(program)
        })
        .map(|&(_, program)| program)
        .collect();
    if programs.is_empty() {
        return Ok(Pass::default());
    }
    let namespaces = network_namespaces(cgroup)?;
    let before = counters(datapath.pin_dir())?;
    for chunk in gone.chunks(capacity::GONE as usize) {
        let mut map: HashMap<_, FrontendEndpoint, u8> =
            HashMap::try_from(datapath.map_mut(map_name::GONE)?)?;
        for endpoint in chunk {
            map.insert(endpoint, 1, 0)?;
        }
        let walked = walk(datapath, &programs, &namespaces);
        let mut map: HashMap<_, FrontendEndpoint, u8> =
            HashMap::try_from(datapath.map_mut(map_name::GONE)?)?;
        for endpoint in chunk {
            map.remove(endpoint)?;
        }
        walked?;
    }
    let after = counters(datapath.pin_dir())?;
    Ok(Pass {
        namespaces: namespaces.len(),
        terminated: after.0 - before.0,
        left: after.1 - before.1,
    })
}

/// Reads each of `programs`' iterators once in each of `namespaces`.
fn walk(datapath: &mut Datapath, programs: &[&str], namespaces: &[File]) -> Result<()> {
    let mut links: Vec<(&File, Vec<IterLink>)> = Vec::new();
    for namespace in namespaces {
        let mut of_namespace = Vec::new();
        for &name in programs {
            let program: &mut Iter = datapath.program_mut(name)?.try_into()?;
            let id = program.attach()?;
            of_namespace.push(program.take_link(id)?);
        }
        links.push((namespace, of_namespace));
    }
    // An iterator walks the namespace of the thread that opens it; a thread
    // of our own enters each one and ends with the walk. A namespace that
    // fails does not stop the others; the first failure is returned.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut first_error = None;
                for (namespace, links) in links {
                    if let Err(error) = walk_one(namespace, links) {
                        first_error.get_or_insert(error);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
            .join()
            .unwrap_or_else(|_| bail!("the socket walk panicked"))
    })
}

/// Enters `namespace` (this thread only) and reads each iterator there.
fn walk_one(namespace: &File, links: Vec<IterLink>) -> Result<()> {
    // SAFETY: a valid namespace file; setns moves the calling thread only.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("entering a pod's network namespace");
    }
    for link in links {
        let mut iterator = link.into_file().context("opening a socket iterator")?;
        // The programs print nothing: one read walks every socket.
        iterator
            .read_to_end(&mut Vec::new())
            .context("reading a socket iterator")?;
    }
    Ok(())
}

/// The network namespaces of the processes in `cgroup` and below, each once.
/// Processes that exit meanwhile are skipped.
fn network_namespaces(cgroup: &Path) -> Result<Vec<File>> {
    let mut seen = BTreeSet::new();
    let mut namespaces = Vec::new();
    let mut dirs = vec![cgroup.to_owned()];
    while let Some(dir) = dirs.pop() {
        let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(procs) => procs,
            // A child cgroup removed meanwhile.
            Err(error) if error.kind() == io::ErrorKind::NotFound && dir != cgroup => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("reading {}/cgroup.procs", dir.display()))
            }
        };
        for pid in procs.lines().filter(|pid| *pid != "0") {
            let Ok(namespace) = File::open(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            let Ok(metadata) = namespace.metadata() else {
                continue;
            };
            if seen.insert((metadata.dev(), metadata.ino())) {
                namespaces.push(namespace);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
    }
    Ok(namespaces)
}

/// (terminated, left stale) so far.
fn counters(pin_dir: &Path) -> Result<(u64, u64)> {
    let counters = datapath::read_counters(pin_dir)?;
    let value = |wanted: Counter| {
        counters
            .iter()
            .find(|(counter, _)| *counter == wanted)
            .map_or(0, |(_, value)| *value)
    };
    Ok((
        value(Counter::SocketsTerminated),
        value(Counter::SocketsLeftStale),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_reads_protocol_lists() {
        let both = Terminate {
            tcp: true,
            udp: true,
        };
        assert_eq!("udp".parse(), Ok(Terminate::default()));
        assert_eq!("tcp,udp".parse(), Ok(both));
        assert_eq!("udp, tcp".parse(), Ok(both));
        assert_eq!(
            "none".parse(),
            Ok(Terminate {
                tcp: false,
                udp: false
            })
        );
        assert!("sctp"
            .parse::<Terminate>()
            .unwrap_err()
            .contains("expected udp"));
        assert!("none,udp".parse::<Terminate>().is_err());
    }
}
