//! What the datapath needs from the kernel, and what this kernel gives it.
//!
//! zerohop runs on the kernels its users' distributions ship, and each hook
//! or helper appeared in some release. Every program of the object belongs
//! to a [`Feature`] of [`FEATURES`]. At start the agent loads every program
//! (the verifier says what this kernel accepts): a feature whose programs
//! all load is on; one whose program the kernel refuses is off, reported
//! with the kernel's reason in one log line and `zerohop_feature{name} 0`,
//! and the agent runs without it. Only the core, connect-time translation,
//! must load, or there is nothing to run.
//!
//! A new hook is one more line in [`FEATURES`], with the release that
//! brought what it needs; the kernel matrix (`cargo xtask test`) checks on
//! every kernel it boots that the feature is on exactly from that release.

use aya::{
    programs::{Program, ProgramError},
    Btf,
};
use serde::Serialize;

/// A capability of the datapath and the programs that make it.
#[derive(Debug)]
pub struct Feature {
    /// Its name in the log and in `zerohop_feature{name}`.
    pub name: &'static str,
    /// What it gives, and what happens without it.
    pub gives: &'static str,
    /// The oldest Linux release (major, minor) whose verifier accepts all
    /// its programs.
    pub since: (u32, u32),
    /// What in its programs needs which release, for the log.
    pub needs: &'static str,
    /// Its programs, in attach order. A program may serve several features;
    /// it is loaded and attached once.
    pub programs: &'static [&'static str],
    /// Kernel functions its programs call (see kfunc.rs). Where the kernel
    /// lacks one, the programs still load (the call answers -EOPNOTSUPP)
    /// but the feature is off.
    pub kfuncs: &'static [&'static str],
    /// Without it the agent does not start.
    pub core: bool,
}

/// The connect hooks: without them zerohop does nothing.
pub const CONNECT: &str = "connect";
/// sockops + sk_msg: same-node connections move socket-to-socket.
pub const BYPASS: &str = "bypass";
/// sockops + cgroup getsockopt: the waypoint learns where a connection was going.
pub const ORIGINAL_DST: &str = "original_dst";

/// cgroup getpeername: a translated socket's peer is the ClusterIP it dialled.
pub const PEER_NAME: &str = "peer_name";
/// cgroup sendmsg/recvmsg: UDP datagrams, and replies from the ClusterIP.
pub const UDP: &str = "udp";
/// Socket iterators with bpf_sock_destroy: stale connections are terminated.
pub const TERMINATE: &str = "terminate";

/// Every feature, in attach order.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: CONNECT,
        gives: "connect-time translation of Service addresses",
        since: (5, 7),
        needs: "cgroup connect4/connect6 hooks with bpf_get_netns_cookie (5.7)",
        programs: &["zh_connect4", "zh_connect6"],
        kfuncs: &[],
        core: true,
    },
    Feature {
        name: BYPASS,
        gives: "socket-to-socket bypass of same-node connections; without it \
                they go through the TCP/IP stack",
        since: (5, 9),
        needs: "sockhash and sk_msg socket fields (4.18), sk_msg message size (5.0), \
                bpf_skc_to_tcp_sock in sk_msg for the sequence numbers that keep \
                bytes in order (5.9)",
        // sk_msg first: a socket takes the sockhash's programs when sockops
        // registers it, so the verdict program must be there before.
        programs: &["zh_sk_msg", "zh_sockops"],
        kfuncs: &[],
        core: false,
    },
    Feature {
        name: ORIGINAL_DST,
        gives: "SO_ORIGINAL_DST for the waypoint; without it L7 Services are \
                left to the cluster's normal path",
        since: (5, 3),
        needs: "cgroup getsockopt hook (5.3)",
        programs: &["zh_sockops", "zh_getsockopt"],
        kfuncs: &[],
        core: false,
    },
    Feature {
        name: PEER_NAME,
        gives: "getpeername() of a translated socket returns the ClusterIP:port \
                it dialled, as through kube-proxy; without it, the endpoint's address",
        since: (5, 8),
        needs: "cgroup getpeername4/getpeername6 hooks (5.8)",
        programs: &["zh_getpeername4", "zh_getpeername6"],
        kfuncs: &[],
        core: false,
    },
    Feature {
        name: UDP,
        gives: "translation of UDP Service ports: datagrams sent without a connect \
                (sendto, what resolvers do) and connected UDP sockets, with replies \
                from the ClusterIP; without it UDP takes the cluster's normal path",
        since: (5, 7),
        needs: "cgroup sendmsg4/6 (4.18) and recvmsg4/6 (5.2) hooks, \
                bpf_get_netns_cookie (5.7) for session affinity",
        programs: &["zh_sendmsg4", "zh_sendmsg6", "zh_recvmsg4", "zh_recvmsg6"],
        kfuncs: &[],
        core: false,
    },
    Feature {
        name: TERMINATE,
        gives: "sockets still connected to an endpoint that left its Service are \
                terminated, so that their clients connect again to a live one (UDP \
                by default, TCP on request); without it they are only counted",
        since: (6, 5),
        needs: "TCP and UDP socket iterators (5.9), bpf_sock_destroy (6.5)",
        programs: &["zh_terminate_tcp", "zh_terminate_udp"],
        kfuncs: &["bpf_sock_destroy"],
        core: false,
    },
];

/// The feature named `name`. Panics on a name not in [`FEATURES`]: names
/// are constants of this module.
pub fn feature(name: &str) -> &'static Feature {
    FEATURES
        .iter()
        .find(|feature| feature.name == name)
        .unwrap_or_else(|| panic!("no feature {name}"))
}

impl Feature {
    /// Whether a kernel of release `kernel` (major, minor) has it.
    pub fn expected_on(&self, kernel: (u32, u32)) -> bool {
        kernel >= self.since
    }
}

/// Whether a feature is on here, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureState {
    pub name: &'static str,
    pub on: bool,
    /// The first of its programs the kernel refused, and the kernel's reason.
    pub off_because: Option<String>,
}

/// One program as this kernel's verifier took it.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramState {
    pub name: String,
    /// The kernel's reason when it refused the program.
    pub refused: Option<String>,
    /// Instructions after verification and the kernel's rewrites (4.15+).
    pub xlated_insns: Option<u32>,
    /// Instructions the verifier walked, the count its complexity limit
    /// (1,000,000) applies to (5.16+).
    pub verified_insns: Option<u32>,
    /// Size of the JIT-compiled code.
    pub jited_bytes: Option<u32>,
}

/// Loads `program` (verification by this kernel), whatever its type; on
/// refusal, the kernel's reason. Every type the object uses has an arm
/// here; a new type is one more. Iterator programs are named after what
/// they walk (`zh_terminate_tcp` walks `tcp`), which `btf` knows.
fn load(name: &str, program: &mut Program, btf: &Btf) -> Result<(), String> {
    let loaded = match program {
        Program::CgroupSockAddr(program) => program.load(),
        Program::SockOps(program) => program.load(),
        Program::SkMsg(program) => program.load(),
        Program::CgroupSockopt(program) => program.load(),
        Program::Iter(program) => program.load(name.rsplit('_').next().unwrap_or(name), btf),
        other => {
            return Err(format!(
                "{:?} programs have no load rule in features.rs",
                other.prog_type()
            ))
        }
    };
    loaded.map_err(|error| refusal(&error))
}

/// Loads `program` and describes how the kernel took it.
pub fn load_and_describe(name: &str, program: &mut Program, btf: &Btf) -> ProgramState {
    let mut state = ProgramState {
        name: name.to_owned(),
        refused: None,
        xlated_insns: None,
        verified_insns: None,
        jited_bytes: None,
    };
    if let Err(reason) = load(name, program, btf) {
        state.refused = Some(reason);
        return state;
    }
    if let Ok(info) = program.info() {
        const INSN_BYTES: u32 = 8;
        state.xlated_insns = info.size_translated().map(|bytes| bytes / INSN_BYTES);
        state.verified_insns = info.verified_instruction_count();
        state.jited_bytes = Some(info.size_jitted()).filter(|&bytes| bytes > 0);
    }
    state
}

/// The states of [`FEATURES`] given the programs' states and the kernel
/// functions this kernel lacks. A program missing from `programs` counts
/// as refused (it is not in the object).
pub fn states(programs: &[ProgramState], missing_kfuncs: &[&str]) -> Vec<FeatureState> {
    FEATURES
        .iter()
        .map(|feature| {
            let off_because = feature.programs.iter().find_map(|name| {
                match programs.iter().find(|program| program.name == *name) {
                    None => Some(format!("{name}: not in the object")),
                    Some(program) => program
                        .refused
                        .as_ref()
                        .map(|reason| format!("{name}: {reason}")),
                }
            });
            let off_because = off_because.or_else(|| {
                let missing = feature
                    .kfuncs
                    .iter()
                    .find(|name| missing_kfuncs.contains(name))?;
                Some(format!("{missing}: not in this kernel"))
            });
            FeatureState {
                name: feature.name,
                on: off_because.is_none(),
                off_because,
            }
        })
        .collect()
}

/// What the kernel said when it refused a program: the verifier's last
/// word (e.g. `unknown func bpf_sock_destroy#207`) and the error code.
fn refusal(error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => match last_word(&verifier_log.to_string()) {
            Some(line) => format!("{line} ({io_error})"),
            None => format!("refused ({io_error})"),
        },
        other => other.to_string(),
    }
}

/// The verifier log's last line but for the statistics printed after it.
fn last_word(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|line| {
        !line.is_empty()
            && !line.starts_with("processed ")
            && !line.starts_with("verification time")
            && !line.starts_with("stack depth")
    })
}

/// The running kernel's release as (major, minor), from `uname -r`
/// (e.g. `5.10.0-46-cloud-amd64` → (5, 10)).
pub fn kernel_release() -> std::io::Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    parse_release(&release)
        .ok_or_else(|| std::io::Error::other(format!("cannot read the kernel release {release:?}")))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.trim().split(['.', '-', '+']);
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(name: &str, refused: Option<&str>) -> ProgramState {
        ProgramState {
            name: name.to_owned(),
            refused: refused.map(str::to_owned),
            xlated_insns: None,
            verified_insns: None,
            jited_bytes: None,
        }
    }

    #[test]
    fn every_feature_has_programs_and_only_connect_is_core() {
        for feature in FEATURES {
            assert!(!feature.programs.is_empty(), "{}", feature.name);
            assert_eq!(feature.core, feature.name == CONNECT, "{}", feature.name);
        }
        assert_eq!(feature(BYPASS).name, BYPASS);
    }

    #[test]
    fn a_refused_program_turns_off_every_feature_that_needs_it_and_only_those() {
        let programs = [
            program("zh_connect4", None),
            program("zh_connect6", None),
            program("zh_sk_msg", None),
            program("zh_sockops", None),
            program(
                "zh_getsockopt",
                Some("unknown func bpf_x#999 (Invalid argument)"),
            ),
            program("zh_getpeername4", None),
            program("zh_getpeername6", None),
            program("zh_sendmsg4", None),
            program("zh_sendmsg6", None),
            program("zh_recvmsg4", None),
            program("zh_recvmsg6", None),
        ];
        let states = states(&programs, &[]);
        let state = |name: &str| states.iter().find(|state| state.name == name).unwrap();
        assert!(state(CONNECT).on && state(BYPASS).on && state(PEER_NAME).on && state(UDP).on);
        assert!(!state(ORIGINAL_DST).on);
        assert_eq!(
            state(ORIGINAL_DST).off_because.as_deref(),
            Some("zh_getsockopt: unknown func bpf_x#999 (Invalid argument)")
        );

        let without_sockops = [
            program("zh_connect4", None),
            program("zh_connect6", None),
            program("zh_getpeername4", None),
            program("zh_getpeername6", None),
            program("zh_sendmsg4", None),
            program("zh_sendmsg6", None),
            program("zh_recvmsg4", None),
            program("zh_recvmsg6", None),
        ];
        let states = super::states(&without_sockops, &[]);
        assert!(states.iter().filter(|state| !state.on).all(|state| state
            .off_because
            .as_deref()
            .unwrap()
            .ends_with("not in the object")));
        assert_eq!(states.iter().filter(|state| !state.on).count(), 3);
    }

    #[test]
    fn a_missing_kfunc_turns_off_the_features_that_call_it() {
        let programs: Vec<ProgramState> = FEATURES
            .iter()
            .flat_map(|feature| feature.programs)
            .map(|name| program(name, None))
            .collect();
        let states = states(&programs, &["bpf_sock_destroy"]);
        let off: Vec<(&str, &str)> = states
            .iter()
            .filter(|state| !state.on)
            .map(|state| (state.name, state.off_because.as_deref().unwrap()))
            .collect();
        assert_eq!(
            off,
            vec![(TERMINATE, "bpf_sock_destroy: not in this kernel")]
        );
        assert!(super::states(&programs, &[]).iter().all(|state| state.on));
    }

    #[test]
    fn the_refusal_is_the_verifiers_last_word() {
        let log = "0: (85) call bpf_ktime_get_coarse_ns#160\n\
                   unknown func bpf_ktime_get_coarse_ns#160\n\
                   processed 1 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(
            last_word(log),
            Some("unknown func bpf_ktime_get_coarse_ns#160")
        );
        assert_eq!(last_word("processed 0 insns\n"), None);
    }

    #[test]
    fn releases_read_as_major_and_minor() {
        assert_eq!(parse_release("5.10.0-46-cloud-amd64\n"), Some((5, 10)));
        assert_eq!(parse_release("6.12.118+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_release("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("garbage"), None);
        assert!(feature(ORIGINAL_DST).expected_on((5, 10)));
        assert!(!feature(ORIGINAL_DST).expected_on((5, 2)));
    }
}
