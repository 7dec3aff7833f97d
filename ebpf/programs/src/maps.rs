//! The maps, pinned by name under the agent's bpffs directory. The names and
//! layouts are those of `zerohop_abi::map_name`; user space opens the maps by
//! these names, so a mismatch fails at load time, never silently.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_map_delete_elem},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use zerohop_abi::{
    capacity, Affinity, AffinityKey, Backend, BackendKey, Config, Counter, Dialled, End,
    FrontendEndpoint, FrontendKey, Pending, ReverseKey, Service, ServiceName, SockKey, Traffic,
    COUNTERS,
};

#[map(name = "zh_svc_v2")]
pub static SERVICES: HashMap<FrontendKey, Service> = HashMap::pinned(capacity::SERVICES, 0);

#[map(name = "zh_backend_v1")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(capacity::BACKENDS, 0);

#[map(name = "zh_config_v2")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "zh_stats_v7")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS, 0);

// LRU: an entry whose connection never establishes must not leak a slot forever.
#[map(name = "zh_tagged_v2")]
pub static TAGGED: LruHashMap<u64, FrontendKey> = LruHashMap::pinned(capacity::TAGGED, 0);

#[map(name = "zh_pending_v3")]
pub static PENDING: LruHashMap<SockKey, Pending> = LruHashMap::pinned(capacity::PENDING, 0);

// Entries leave by themselves when their socket closes.
#[map(name = "zh_socks_v1")]
pub static SOCKETS: SockHash<SockKey> = SockHash::pinned(capacity::SOCKETS, 0);

// LRU: an entry whose socket closed ages out; an evicted entry of a live
// socket only makes it prove again that it may redirect (see sk_msg.rs).
#[map(name = "zh_ends_v2")]
pub static ENDS: LruHashMap<SockKey, End> = LruHashMap::pinned(capacity::ENDS, 0);

// LRU: affinities of clients that stopped connecting, and endpoints of UDP
// sockets that closed, age out on their own.
#[map(name = "zh_affinity_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::pinned(capacity::AFFINITY, 0);

// Read by `zerohop inspect` only; pinned with the others so that it outlives
// the agent like they do.
#[map(name = "zh_names_v1")]
pub static NAMES: HashMap<FrontendKey, ServiceName> = HashMap::pinned(capacity::SERVICES, 0);

// LRU: a connect that never establishes (refused, timed out) leaves its
// entry behind; it ages out instead of filling the map.
#[map(name = "zh_dialed_v1")]
pub static DIALED: LruHashMap<u64, FrontendKey> = LruHashMap::pinned(capacity::DIALED, 0);

// LRU: nothing sees the waypoint's accepted socket close, so entries of closed
// connections age out; a recycled 4-tuple overwrites its predecessor's.
#[map(name = "zh_origdst_v1")]
pub static ORIGDST: LruHashMap<SockKey, FrontendKey> = LruHashMap::pinned(capacity::ORIGDST, 0);

// TCP entries leave when their connection closes (sockops.rs). LRU: UDP
// sockets' entries and connects that never establish age out, and so, on a
// node with more live entries than the map holds, do the least used ones.
#[map(name = "zh_reverse_v1")]
pub static REVERSE: LruHashMap<ReverseKey, Dialled> = LruHashMap::pinned(capacity::REVERSE, 0);

// The agent's: filled before a pass of the socket iterators, emptied after.
#[map(name = "zh_gone_v1")]
pub static GONE: HashMap<FrontendEndpoint, u8> = HashMap::pinned(capacity::GONE, 0);

// The agent renews it every fraction of a second (see `leased`).
#[map(name = "zh_lease_v1")]
pub static LEASE: Array<u64> = Array::pinned(1, 0);

// Entries are the agent's (one per frontend); programs only add to them.
#[map(name = "zh_traffic_v2")]
pub static TRAFFIC: HashMap<FrontendKey, Traffic> = HashMap::pinned(capacity::SERVICES, 0);

/// Adds one to a frontend's traffic counter, if the agent keeps an entry for it.
#[inline(always)]
pub fn count_traffic(frontend: &FrontendKey, field: impl Fn(&mut Traffic) -> &mut u64) {
    if let Some(traffic) = TRAFFIC.get_ptr_mut(frontend) {
        // SAFETY: a map value, valid while the program runs.
        add(field(unsafe { &mut *traffic }), 1);
    }
}

/// Takes a socket out of the sockhash (aya's SockHash has no delete).
/// sockops may delete any entry; sk_msg may not (6.10+).
#[inline(always)]
pub fn unregister(key: &SockKey) {
    // SAFETY: SockHash is a transparent wrapper of the map definition the
    // helper wants; the key is a valid SockKey for the call's duration.
    unsafe {
        bpf_map_delete_elem(
            core::ptr::addr_of!(SOCKETS).cast_mut().cast(),
            core::ptr::from_ref(key).cast(),
        );
    }
}

/// Adds `n` to a counter of this CPU.
#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a map value, valid while the program runs.
        add(unsafe { &mut *slot }, n);
    }
}

/// `*value += n` as one atomic instruction (BPF_ATOMIC | BPF_ADD, "XADD").
///
/// Atomic even on a per-CPU slot: sk_msg and the cgroup hooks run with
/// migration disabled but preemption enabled (`bpf_prog_run_pin_on_cpu`),
/// so on a preemptible kernel two programs on one CPU can interleave a
/// plain load-add-store and lose counts. Shared counters (`TRAFFIC`) are
/// added to from several CPUs at once. Rust's BPF target has no atomic
/// read-modify-write, hence the instruction by hand; every kernel zerohop
/// supports has it.
#[inline(always)]
fn add(value: &mut u64, n: u64) {
    // SAFETY: `value` is a valid, aligned u64 for the instruction's length;
    // the instruction writes nothing else and clobbers no register.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({value} + 0) += {n}",
            value = in(reg) core::ptr::from_mut(value),
            n = in(reg) n,
            options(nostack),
        );
    }
}

/// The node's run-time configuration; `None` only if the array lookup fails,
/// which it does not for index 0 (the array always has that slot, zeroed
/// until the agent writes it: bypass on, no waypoint).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// True when the agent runs the recvmsg hooks (see `CONFIG_UDP`).
#[inline(always)]
pub fn udp_enabled() -> bool {
    config().is_some_and(|config| config.flags & zerohop_abi::CONFIG_UDP != 0)
}

/// True when the operator switched the bypass off for the whole node.
#[inline(always)]
pub fn bypass_disabled() -> bool {
    config().is_some_and(|config| config.flags & zerohop_abi::CONFIG_NO_BYPASS != 0)
}

/// Whether the agent still vouches for the maps. It renews the lease while
/// its source keeps confirming the cluster's state and its syncs keep up;
/// an agent that is stopped, wedged or reading a stuck source lets it run
/// out, and the hooks then leave connects to the cluster's normal path
/// rather than act on maps nobody keeps true (fail open). Read only on a
/// Service hit: other traffic never pays for the clock.
#[inline(always)]
pub fn leased() -> bool {
    // SAFETY: plain helper call; the value is a u64 the agent writes whole.
    LEASE
        .get(0)
        .is_some_and(|until| unsafe { bpf_ktime_get_ns() } < *until)
}
