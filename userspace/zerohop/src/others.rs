//! Other BPF programs on the cgroup hooks zerohop attaches to.
//!
//! Another connect-time load balancer or sockmap user on the same sockets
//! (Cilium's socket LB, Merbridge, an eBPF observability agent, or a second
//! zerohop agent) rewrites the same connects or registers the same sockets,
//! and the two break each other silently. So before it touches any map, the
//! agent asks the kernel which programs already run on those hooks for its
//! cgroup, including those inherited from its ancestors, and refuses to
//! start when there are any. The agent's own programs are attached through
//! links that end with its process, so at its start none of them is there.
//!
//! Sockmaps and sockhashes of other programs on the node are listed too,
//! with the programs that run on their sockets' messages, but only for the
//! log: a socket enters such a map through a sock_ops program (on this
//! cgroup's hooks it would stop the agent, see above) or a process that
//! adds its own sockets, so the sockets of zerohop's cgroup are in none.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{loaded_maps, MapType};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, BPF_F_QUERY_EFFECTIVE};

/// The cgroup hooks zerohop uses, or that rewrite the same traffic
/// (sendmsg/recvmsg: UDP Services), by name.
const HOOKS: &[(&str, bpf_attach_type)] = &[
    ("sock_ops", bpf_attach_type::BPF_CGROUP_SOCK_OPS),
    ("connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    ("connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    ("sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    ("sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
    ("recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    ("recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    ("getsockopt", bpf_attach_type::BPF_CGROUP_GETSOCKOPT),
    (
        "getpeername4",
        bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
    ),
    (
        "getpeername6",
        bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME,
    ),
];

/// One program found on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub hook: &'static str,
    pub id: u32,
    /// The program's name as the kernel knows it (up to 15 characters).
    pub name: String,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: program {} ({})", self.hook, self.id, self.name)
    }
}

/// The programs running on zerohop's hooks for sockets of `cgroup`.
pub fn on_hooks_of(cgroup: &Path) -> Result<Vec<Found>> {
    let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let mut ids = Vec::new();
    for &(hook, attach_type) in HOOKS {
        // A hook this kernel does not have (EINVAL) has nothing on it.
        if let Ok(found) = query(&dir, attach_type, BPF_F_QUERY_EFFECTIVE) {
            ids.extend(found.into_iter().map(|id| (hook, id)));
        }
    }
    Ok(named(ids))
}

/// The attach points of programs that act on a sockmap's sockets.
const SOCKMAP_HOOKS: &[(&str, bpf_attach_type)] = &[
    ("sk_msg", bpf_attach_type::BPF_SK_MSG_VERDICT),
    ("stream_parser", bpf_attach_type::BPF_SK_SKB_STREAM_PARSER),
    ("stream_verdict", bpf_attach_type::BPF_SK_SKB_STREAM_VERDICT),
    ("skb_verdict", bpf_attach_type::BPF_SK_SKB_VERDICT),
];

/// A sockmap or sockhash that is not zerohop's (its name lacks the `zh_`
/// prefix) and the programs on it. `programs` is `None` where this kernel
/// cannot say (it answers that query from 5.19 on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignSockmap {
    pub id: u32,
    pub name: String,
    pub programs: Option<Vec<Found>>,
}

impl fmt::Display for ForeignSockmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "map {} ({}): ", self.id, self.name)?;
        match &self.programs {
            Some(programs) if programs.is_empty() => write!(f, "no programs"),
            Some(programs) => write!(f, "{}", listing(programs)),
            None => write!(f, "programs unknown on this kernel"),
        }
    }
}

/// Every sockmap and sockhash of other programs on this node.
pub fn foreign_sockmaps() -> Vec<ForeignSockmap> {
    loaded_maps()
        .filter_map(Result::ok)
        .filter(|info| {
            matches!(info.map_type(), Ok(MapType::SockHash | MapType::SockMap))
                && !info.name_as_str().unwrap_or_default().starts_with("zh_")
        })
        .map(|info| {
            let programs = info.fd().ok().and_then(|fd| {
                let mut ids = Vec::new();
                for &(hook, attach_type) in SOCKMAP_HOOKS {
                    let found = query(&fd.as_fd(), attach_type, 0).ok()?;
                    ids.extend(found.into_iter().map(|id| (hook, id)));
                }
                Some(named(ids))
            });
            ForeignSockmap {
                id: info.id(),
                name: info.name_as_str().unwrap_or("?").to_owned(),
                programs,
            }
        })
        .collect()
}

/// Program ids found on hooks, with the programs' names.
fn named(ids: Vec<(&'static str, u32)>) -> Vec<Found> {
    if ids.is_empty() {
        return Vec::new();
    }
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| (info.id(), info.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    ids.into_iter()
        .map(|(hook, id)| Found {
            hook,
            id,
            name: names.get(&id).cloned().unwrap_or_else(|| "?".to_owned()),
        })
        .collect()
}

/// `items`, one after the other: `hook: program id (name), …` for
/// [`Found`], `map id (name): …` for [`ForeignSockmap`].
pub fn listing(items: &[impl fmt::Display]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the agent does not start beside `found`; `None` when nothing is there.
pub fn refusal(found: &[Found], cgroup: &Path) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let list = listing(found);
    Some(format!(
        "other BPF programs already run on the hooks zerohop attaches to for {}: {list}. \
         Another connect-time load balancer or sockmap user (or a second zerohop agent) \
         would rewrite or register the same connections and break them silently. Stop it \
         first, or pass --allow-other-programs to run beside it anyway (see the README)",
        cgroup.display()
    ))
}

/// `BPF_PROG_QUERY`'s part of `union bpf_attr`, up to `prog_cnt` (the
/// kernel zero-fills what it does not get). aya queries cgroups only for
/// device programs, so this one call is made here.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The ids of the programs that run on `attach_type` of `target` (a cgroup,
/// or a sockmap); for a cgroup with `BPF_F_QUERY_EFFECTIVE` in `flags`,
/// those inherited from ancestor cgroups included.
fn query(
    target: &impl AsRawFd,
    attach_type: bpf_attach_type,
    flags: u32,
) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_fd: target.as_raw_fd() as u32,
            attach_type: attach_type as u32,
            query_flags: flags,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..QueryAttr::default()
        };
        // SAFETY: `attr` is a valid BPF_PROG_QUERY attribute whose
        // `prog_ids` points to `prog_cnt` writable u32s that outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_PROG_QUERY as libc::c_long,
                &mut attr as *mut QueryAttr,
                size_of::<QueryAttr>(),
            )
        };
        if ret == 0 {
            ids.truncate(attr.prog_cnt as usize);
            return Ok(ids);
        }
        let error = std::io::Error::last_os_error();
        // ENOSPC: more programs than room; prog_cnt says how many.
        if error.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() {
            ids.resize(attr.prog_cnt as usize, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_sockmap_reads_with_its_programs_or_why_they_are_unknown() {
        let with = ForeignSockmap {
            id: 7,
            name: "sock_ops_map".into(),
            programs: Some(vec![Found {
                hook: "sk_msg",
                id: 9,
                name: "bpf_redir".into(),
            }]),
        };
        assert_eq!(
            with.to_string(),
            "map 7 (sock_ops_map): sk_msg: program 9 (bpf_redir)"
        );
        let unknown = ForeignSockmap {
            programs: None,
            ..with
        };
        assert_eq!(
            unknown.to_string(),
            "map 7 (sock_ops_map): programs unknown on this kernel"
        );
    }

    #[test]
    fn nothing_on_the_hooks_is_no_refusal() {
        assert_eq!(refusal(&[], Path::new("/sys/fs/cgroup/pods")), None);
    }

    #[test]
    fn the_refusal_names_every_program_and_the_way_out() {
        let found = [
            Found {
                hook: "connect4",
                id: 41,
                name: "cil_sock4_conne".into(),
            },
            Found {
                hook: "sock_ops",
                id: 42,
                name: "?".into(),
            },
        ];
        let text = refusal(&found, Path::new("/sys/fs/cgroup/pods")).unwrap();
        assert!(text.contains("/sys/fs/cgroup/pods"), "{text}");
        assert!(
            text.contains("connect4: program 41 (cil_sock4_conne), sock_ops: program 42 (?)"),
            "{text}"
        );
        assert!(text.contains("--allow-other-programs"), "{text}");
    }
}
