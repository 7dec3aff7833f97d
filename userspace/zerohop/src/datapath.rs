//! The kernel side of the agent: loads the programs, pins their maps,
//! attaches the hooks, and gives typed access to the maps.
//!
//! Loading is also the probe of what this kernel supports: every program is
//! verified at load, and a program the kernel refuses switches its feature
//! off (see `features`); only the core must load.
//!
//! Maps are pinned by name under one bpffs directory of ours and outlive the
//! agent: a restarted agent reuses them (the maps stay exact across a restart,
//! with no window where they are empty), and connections already moving
//! socket-to-socket keep doing so while no agent runs. Programs do not outlive
//! the agent: dropping [`Datapath`] detaches them.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, Program},
    Ebpf, EbpfLoader,
};
use zerohop_abi::{
    map_name, Backend, BackendKey, Config, Counter, FrontendKey, Service, ServiceName, SockKey,
    Traffic, CONFIG_NO_BYPASS, CONFIG_UDP,
};
use zerohop_planner::{Capacity, Change, MapEntries};

use crate::features::{self, FeatureState, ProgramState, FEATURES};
use crate::kernel_btf::{KernelBtf, VMLINUX_BTF};
use crate::kfunc;
use crate::map_sync::MapWriter;

/// The compiled kernel programs, or nothing in a build that did not ask for
/// them (see build.rs).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zerohop.bpf.o"));

/// `bpf_map_update_elem` flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Default bpffs directory for our pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/zerohop";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Loaded programs and their maps. Dropping it detaches every program.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    programs: Vec<ProgramState>,
    features: Vec<FeatureState>,
    /// The pin directory's lock, held while the programs are loaded.
    _lock: File,
}

impl Datapath {
    /// Creates (or reuses) the pinned maps under `pin_dir` and loads every
    /// program into the kernel, which verifies it. Fails only when the
    /// kernel refuses the core; other refused programs switch their
    /// features off ([`Datapath::features`]). Nothing is attached yet.
    /// Maps created now hold `capacity`; maps already pinned keep the size
    /// they were made with (see [`pinned_capacity`]).
    pub fn load(pin_dir: &Path, capacity: Capacity) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this zerohop was built without its kernel programs: build it with \
                 `cargo xtask build`, or `ZEROHOP_EBPF=build cargo build --release -p zerohop` \
                 after `cargo xtask setup`"
            );
        }
        raise_memlock_limit();
        let parent = pin_dir.parent().unwrap_or(Path::new("/"));
        if filesystem_magic(parent)? != BPF_FS_MAGIC {
            bail!(
                "{} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf` \
                 or choose --pin-dir under an existing one",
                pin_dir.display()
            );
        }
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let lock = lock_pin_dir(pin_dir)?;
        // Each parse of the kernel's BTF holds tens of MiB while it lives
        // (btf_rs's here, aya's in the loader and below): one at a time,
        // each dropped once used, so that they do not add up to the
        // agent's peak memory.
        let (object, bindings, offsets) = {
            let kernel = KernelBtf::open(Path::new(VMLINUX_BTF))?;
            let (object, bindings) = kfunc::bind(EBPF_OBJECT, |name| kernel.function(name))?;
            // The programs read kernel struct fields at these offsets
            // (tcp.rs, terminate.rs).
            (object, bindings, kernel.field_offsets()?)
        };
        let missing_kfuncs: Vec<&str> = bindings
            .iter()
            .filter(|binding| binding.id.is_none())
            .map(|binding| binding.name)
            .collect();
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            loader.default_map_pin_directory(pin_dir);
            let frontends = u32::try_from(capacity.frontends)?;
            for map in [map_name::SERVICES, map_name::NAMES, map_name::TRAFFIC] {
                loader.map_max_entries(map, frontends);
            }
            loader.map_max_entries(map_name::BACKENDS, u32::try_from(capacity.endpoint_slots)?);
            for (global, offset) in &offsets {
                loader.override_global(global, offset, true);
            }
            loader.load(&object).with_context(|| {
                format!(
                    "loading the eBPF object (pinned maps of another layout in {}? \
                     remove them with `zerohop cleanup`)",
                    pin_dir.display()
                )
            })?
        };
        drop(object);
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let mut programs: Vec<ProgramState> = ebpf
            .programs_mut()
            .map(|(name, program)| features::load_and_describe(name, program, &btf))
            .collect();
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        let features = features::states(&programs, &missing_kfuncs);
        for (feature, state) in FEATURES.iter().zip(&features) {
            if feature.core && !state.on {
                bail!(
                    "this kernel cannot run zerohop's {} ({}): {}",
                    feature.name,
                    feature.gives,
                    state.off_because.as_deref().unwrap_or_default()
                );
            }
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            programs,
            features,
            _lock: lock,
        })
    }

    /// How the kernel took each program of the object.
    pub fn programs(&self) -> &[ProgramState] {
        &self.programs
    }

    /// Which features this kernel supports, in [`FEATURES`] order.
    pub fn features(&self) -> &[FeatureState] {
        &self.features
    }

    /// Whether the kernel took the program `name`.
    pub fn program_loaded(&self, name: &str) -> bool {
        self.programs
            .iter()
            .any(|program| program.name == name && program.refused.is_none())
    }

    /// The program `name` of the object.
    pub(crate) fn program_mut(&mut self, name: &str) -> Result<&mut Program> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))
    }

    /// The map `name` of the object.
    pub(crate) fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    /// Whether the feature `name` is on.
    pub fn feature_on(&self, name: &str) -> bool {
        self.features
            .iter()
            .any(|state| state.name == name && state.on)
    }

    /// Attaches the programs of every feature that is on: the cgroup hooks
    /// to the cgroup v2 directory `cgroup` (every socket of its processes
    /// and their descendants), sk_msg to the sockhash. Once the kernel
    /// accepted a program for its hook, attaching it fails only for reasons
    /// of this machine (the cgroup, privileges), which must stop the agent.
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        if filesystem_magic(cgroup)? != CGROUP2_SUPER_MAGIC {
            bail!("{} is not a cgroup v2 directory", cgroup.display());
        }
        let cgroup_dir =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let sockets: SockHash<&MapData, SockKey> = SockHash::try_from(
            self.ebpf
                .map(map_name::SOCKETS)
                .context("sockhash missing from the object")?,
        )?;
        let sockets = sockets.fd().try_clone()?;
        let mut attached: Vec<&str> = Vec::new();
        for (feature, state) in FEATURES.iter().zip(&self.features) {
            for &name in feature.programs {
                if !state.on || attached.contains(&name) {
                    continue;
                }
                let program = self
                    .ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the object"))?;
                // aya attaches cgroup programs through bpf_link on kernels
                // >= 5.7, which always coexists with other programs on the
                // cgroup (a CNI's) and rejects explicit attach flags, hence
                // the default mode.
                let mode = CgroupAttachMode::default();
                let result = match program {
                    Program::CgroupSockAddr(program) => program.attach(&cgroup_dir, mode).map(drop),
                    Program::SockOps(program) => program.attach(&cgroup_dir, mode).map(drop),
                    Program::CgroupSockopt(program) => program.attach(&cgroup_dir, mode).map(drop),
                    Program::SkMsg(program) => program.attach(&sockets).map(drop),
                    // Iterators hook nothing: stale.rs opens them when it
                    // needs a walk of the sockets.
                    Program::Iter(_) => Ok(()),
                    other => bail!("{name}: no attach rule for {:?}", other.prog_type()),
                };
                result.with_context(|| format!("attaching {name}"))?;
                attached.push(name);
            }
        }
        Ok(())
    }

    /// The pin directory in use.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// The maps the agent writes: frontends, their endpoint slots and names,
/// and each frontend's traffic counters (which the programs add to).
pub struct ServiceMaps {
    services: HashMap<MapData, FrontendKey, Service>,
    backends: HashMap<MapData, BackendKey, Backend>,
    names: HashMap<MapData, FrontendKey, ServiceName>,
    traffic: HashMap<MapData, FrontendKey, Traffic>,
    stats: PerCpuArray<MapData, u64>,
}

impl ServiceMaps {
    /// Opens the pinned maps under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: HashMap::try_from(open_pinned(pin_dir, map_name::SERVICES)?)?,
            backends: HashMap::try_from(open_pinned(pin_dir, map_name::BACKENDS)?)?,
            names: HashMap::try_from(open_pinned(pin_dir, map_name::NAMES)?)?,
            traffic: HashMap::try_from(open_pinned(pin_dir, map_name::TRAFFIC)?)?,
            stats: PerCpuArray::try_from(open_pinned(pin_dir, map_name::STATS)?)?,
        })
    }

    /// A sum that moves whenever the programs add to a frontend's traffic
    /// counters: a connect tagged for the bypass also counts
    /// `translated_local`, and every message of a registered socket
    /// `msg_redirected` or `redirect_miss`. Reading it takes three
    /// syscalls, reading the traffic map two per frontend.
    pub fn traffic_activity(&self) -> Result<u64> {
        let mut sum = 0u64;
        for counter in [
            Counter::TranslatedLocal,
            Counter::MsgRedirected,
            Counter::RedirectMiss,
        ] {
            let per_cpu = self.stats.get(&(counter as u32), 0)?;
            sum = per_cpu
                .iter()
                .fold(sum, |sum, value| sum.wrapping_add(*value));
        }
        Ok(sum)
    }

    /// Every frontend's traffic counters, as the programs left them.
    pub fn read_traffic(&self) -> Result<BTreeMap<FrontendKey, Traffic>> {
        self.traffic.iter().map(|entry| Ok(entry?)).collect()
    }

    /// Gives every frontend in the maps a traffic entry (kept if it has one):
    /// the maps of an earlier agent may hold frontends this one never writes.
    pub fn count_traffic_of_every_frontend(&mut self) -> Result<()> {
        let frontends: Vec<FrontendKey> = self.services.keys().collect::<Result<_, _>>()?;
        for frontend in frontends {
            self.start_counting(frontend);
        }
        Ok(())
    }

    /// A zeroed traffic entry for `frontend`, unless it has one. A refused
    /// insert (a full map) only leaves the frontend unlearned.
    fn start_counting(&mut self, frontend: FrontendKey) {
        let _ = self
            .traffic
            .insert(frontend, Traffic::default(), BPF_NOEXIST);
    }

    /// The current contents of the three maps, read from the kernel.
    pub fn read(&self) -> Result<MapEntries> {
        let mut current = MapEntries::default();
        for entry in self.services.iter() {
            let (key, value) = entry?;
            current.services.insert(key, value);
        }
        for entry in self.backends.iter() {
            let (key, value) = entry?;
            current.backends.insert(key, value);
        }
        for entry in self.names.iter() {
            let (key, value) = entry?;
            current.names.insert(key, value);
        }
        Ok(current)
    }
}

/// The kernel's maps, as the agent's sync writes them. A frontend written
/// gets a traffic entry for the bypass policy; one deleted loses it.
impl MapWriter for ServiceMaps {
    fn write(&mut self, change: Change) -> Result<()> {
        match change {
            Change::UpsertBackend(key, value) => self.backends.insert(key, value, 0)?,
            Change::UpsertName(key, value) => self.names.insert(key, value, 0)?,
            Change::UpsertService(key, value) => {
                self.start_counting(key);
                self.services.insert(key, value, 0)?;
            }
            Change::DeleteService(key) => {
                let _ = self.traffic.remove(&key);
                self.services.remove(&key)?;
            }
            Change::DeleteBackend(key) => self.backends.remove(&key)?,
            Change::DeleteName(key) => self.names.remove(&key)?,
        }
        Ok(())
    }

    fn read(&self) -> Result<MapEntries> {
        ServiceMaps::read(self)
    }
}

/// Sets the node-wide bypass switch the programs read on every decision.
/// The waypoint settings are kept.
pub fn set_bypass(pin_dir: &Path, enabled: bool) -> Result<()> {
    set_config_flag(pin_dir, CONFIG_NO_BYPASS, !enabled)
}

/// Lets the connect hooks translate UDP sockets, which they may only while
/// the recvmsg hooks run (feature `udp`). The other settings are kept.
pub fn set_udp(pin_dir: &Path, enabled: bool) -> Result<()> {
    set_config_flag(pin_dir, CONFIG_UDP, enabled)
}

/// Sets (`on`) or clears one bit of the run-time flags, keeping the rest.
fn set_config_flag(pin_dir: &Path, flag: u32, on: bool) -> Result<()> {
    update_config(pin_dir, |config| {
        config.flags = if on {
            config.flags | flag
        } else {
            config.flags & !flag
        };
    })
}

/// Whether the node-wide bypass switch is on.
pub fn bypass_enabled(pin_dir: &Path) -> Result<bool> {
    Ok(read_config(pin_dir)?.flags & CONFIG_NO_BYPASS == 0)
}

/// Sets the node's waypoint proxy for L7 Services: at most one address per
/// family (a family without one leaves connects to its L7 Services
/// untouched; an empty list removes the waypoint), and the `SO_MARK` the
/// waypoint puts on its own sockets (0: none, then every socket's connects
/// to L7 Services go to the waypoint, the waypoint's own included). The
/// bypass switch is kept.
pub fn set_waypoint(pin_dir: &Path, waypoints: &[SocketAddr], mark: u32) -> Result<()> {
    let (mut v4, mut v6) = (None, None);
    for &waypoint in waypoints {
        if waypoint.port() == 0 {
            bail!("waypoint {waypoint}: port 0 (it would mean \"no waypoint\")");
        }
        let slot = match waypoint.ip() {
            IpAddr::V4(_) => &mut v4,
            IpAddr::V6(_) => &mut v6,
        };
        if let Some(previous) = slot.replace(waypoint) {
            bail!("two waypoints of one family: {previous} and {waypoint}");
        }
    }
    update_config(pin_dir, |config| {
        config.waypoint_mark = mark;
        (config.waypoint_v4, config.waypoint_port_v4) = match v4 {
            Some(waypoint) => (
                zerohop_planner::addr::to_kernel(waypoint.ip()).0[0],
                waypoint.port(),
            ),
            None => (0, 0),
        };
        (config.waypoint_v6, config.waypoint_port_v6) = match v6 {
            Some(waypoint) => (
                zerohop_planner::addr::to_kernel(waypoint.ip()).0,
                waypoint.port(),
            ),
            None => ([0; 4], 0),
        };
    })
}

/// The node configuration the programs read.
pub fn read_config(pin_dir: &Path) -> Result<Config> {
    let config: Array<MapData, Config> = Array::try_from(open_pinned(pin_dir, map_name::CONFIG)?)?;
    Ok(config.get(&0, 0)?)
}

/// Read-modify-write of the configuration. Only the agent and the CLI write
/// it, one at a time, so nothing is lost between the read and the write;
/// the programs see either the old or the new value, never a mix of fields
/// within one word.
fn update_config(pin_dir: &Path, change: impl FnOnce(&mut Config)) -> Result<()> {
    let mut map: Array<MapData, Config> = Array::try_from(open_pinned(pin_dir, map_name::CONFIG)?)?;
    let mut config = map.get(&0, 0)?;
    change(&mut config);
    map.set(0, config, 0)?;
    Ok(())
}

/// The kernel counters, summed over CPUs, in [`Counter::ALL`] order.
pub fn read_counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>> {
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open_pinned(pin_dir, map_name::STATS)?)?;
    Counter::ALL
        .iter()
        .map(|&counter| {
            let per_cpu = stats.get(&(counter as u32), 0)?;
            Ok((counter, per_cpu.iter().sum()))
        })
        .collect()
}

/// Removes our pins (and so, once no program or agent holds them, the maps).
/// Registered sockets leave the sockhash and continue through the stack.
/// Pins of earlier layouts (`zh_*` names no longer in use, e.g.
/// `zh_config_v1`) go too, so that the directory itself can go.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    let mut names: Vec<std::ffi::OsString> = zerohop_abi::ALL_MAPS.iter().map(Into::into).collect();
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        names.extend(
            entries
                .filter_map(|entry| Some(entry.ok()?.file_name()))
                .filter(|name| name.as_bytes().starts_with(b"zh_")),
        );
    }
    for name in names {
        let pin = pin_dir.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("removing {}", pin.display())),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", pin_dir.display())),
    }
}

/// What the pinned Service maps hold, whatever size they were made with.
pub fn pinned_capacity(pin_dir: &Path) -> Result<Capacity> {
    let max_entries = |name: &str| -> Result<usize> {
        let data = MapData::from_pin(pin_dir.join(name))
            .with_context(|| format!("opening pinned map {name}"))?;
        Ok(data.info()?.max_entries() as usize)
    };
    Ok(Capacity {
        frontends: max_entries(map_name::SERVICES)?,
        endpoint_slots: max_entries(map_name::BACKENDS)?,
    })
}

pub(crate) fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "no zerohop map {name} in {}: no agent has run on this node with this --pin-dir",
            pin_dir.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: reading BPF maps needs root (CAP_BPF and CAP_SYS_ADMIN)",
            path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    }
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (reading BPF maps needs root)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// Takes the pin directory for this process alone: two agents writing one
/// set of maps would overwrite each other's view, and the one that exits
/// first would take the sk_msg program off the sockhash they share. The
/// lock is the kernel's (flock on the directory), so it goes with the
/// process however that ends.
fn lock_pin_dir(pin_dir: &Path) -> Result<File> {
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(dir);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(error).with_context(|| format!("locking {}", pin_dir.display()));
    }
    let metadata = dir.metadata()?;
    let holder = std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| lock_holder(&locks, metadata.dev(), metadata.ino()));
    let who = match holder {
        Some(pid) => format!("another zerohop agent (PID {pid})"),
        None => "another zerohop agent (its PID is not visible from here)".to_owned(),
    };
    bail!(
        "{who} uses the pin directory {}: one agent per set of maps; stop that one first, \
         or give this one another --pin-dir",
        pin_dir.display()
    )
}

/// The PID holding a flock on the inode `ino` of device `dev`, from the
/// text of /proc/locks (`1: FLOCK  ADVISORY  WRITE 1234 00:27:5678 0 EOF`;
/// waiting locks carry a `->` and are skipped).
fn lock_holder(proc_locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let inode = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    proc_locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == inode => pid.parse().ok(),
            _ => None,
        }
    })
}

fn filesystem_magic(path: &Path) -> Result<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs is plain integers; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a properly sized out-parameter.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    #[expect(
        clippy::useless_conversion,
        reason = "f_type's width differs between targets"
    )]
    Ok(i64::from(stat.f_type))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so the
/// agent also loads there. Newer kernels ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not lift RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_found_by_device_and_inode() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 77 00:27:29036797 0 EOF
2: FLOCK  ADVISORY  WRITE 18328 00:27:29036797 0 EOF
2: -> FLOCK  ADVISORY  WRITE 18400 00:27:29036797 0 EOF
3: FLOCK  ADVISORY  WRITE 99 fd:01:29036797 0 EOF
";
        let dev = libc::makedev(0, 0x27);
        assert_eq!(lock_holder(locks, dev, 29036797), Some(18328));
        assert_eq!(
            lock_holder(locks, libc::makedev(0xfd, 1), 29036797),
            Some(99)
        );
        assert_eq!(lock_holder(locks, dev, 1), None);
    }
}
