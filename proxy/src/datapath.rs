//! Loading the embedded object into the kernel and handling what it holds.

use std::{
    fs::{self, File},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{HashMap, MapData, MapInfo, MapType},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError,
        cgroup_sock_addr::CgroupSockAddrLinkId,
    },
};
use fairlead_abi::{
    Backend4, Backend6, BackendId, Reason, RevNat4, RevNat6, RevNatId, Service4Key, Service6Key,
    ServiceValue,
    maps::{self, MapKind, MapSpec},
    programs,
};
use tracing::{debug, info, warn};

use crate::links::{Hook, Installed, PinnedLinks};
use crate::{Error, object::ebpf_object};

/// How to load the data path.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pin_dir: Option<PathBuf>,
    sizes: Vec<(&'static str, u32)>,
}

impl LoadOptions {
    /// Maps private to this process, gone when it exits.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Pin every map as `<dir>/<map name>` on a bpffs (e.g. `/sys/fs/bpf/fairlead`), and
    /// adopt the maps already pinned there by an earlier run, entries included, after
    /// checking that their layout matches this build. The directory is created if needed.
    #[must_use]
    pub fn pin_maps_under(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pin_dir = Some(dir.into());
        self
    }

    /// The pin directory, if maps are pinned.
    #[must_use]
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Creates the map `name` (one of [`maps::ALL`]) with room for `entries` instead of its
    /// default size. A pinned map of another size is not adopted (see
    /// [`Error::IncompatiblePin`]).
    #[must_use]
    pub fn map_size(mut self, name: &'static str, entries: u32) -> Self {
        self.sizes.retain(|(n, _)| *n != name);
        self.sizes.push((name, entries));
        self
    }

    /// The size the map `name` is created with.
    #[must_use]
    pub fn size_of(&self, name: &str) -> u32 {
        self.sizes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, size)| *size)
            .or_else(|| maps::spec(name).map(|s| s.max_entries))
            .unwrap_or(0)
    }
}

/// The loaded eBPF object: its maps exist in the kernel; its programs are loaded on demand.
///
/// Dropping it detaches the programs it attached and unloads them; maps disappear too unless
/// they are pinned.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Parses the embedded object and creates its maps (or adopts pinned ones, see
    /// [`LoadOptions::pin_maps_under`]). No program is loaded yet.
    pub fn load(options: &LoadOptions) -> Result<Self, Error> {
        let object = ebpf_object();
        if object.is_empty() {
            return Err(Error::PlaceholderObject);
        }
        let mut loader = EbpfLoader::new();
        for (name, entries) in &options.sizes {
            loader.map_max_entries(name, *entries);
        }
        if let Some(dir) = options.pin_dir() {
            fs::create_dir_all(dir).map_err(|source| Error::PinDirectory {
                path: dir.to_owned(),
                source,
            })?;
            // An older fairlead's reverse socket NAT maps: replaced by socket-local
            // storage, nothing reads them any more.
            for retired in maps::RETIRED {
                let path = dir.join(retired);
                match fs::remove_file(&path) {
                    Ok(()) => info!(path = %path.display(), "removed a retired pinned map"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot remove a retired pinned map");
                    }
                }
            }
            for spec in &maps::ALL {
                let path = dir.join(spec.name);
                if path.exists() {
                    check_pinned(&path, spec, options.size_of(spec.name))?;
                    debug!(map = spec.name, path = %path.display(), "adopting pinned map");
                }
                loader.map_pin_path(spec.name, path);
            }
        }
        let ebpf = loader.load(object).map_err(Error::Load)?;
        info!(
            object_bytes = object.len(),
            pin_dir = ?options.pin_dir(),
            "eBPF object loaded"
        );
        Ok(Self { ebpf })
    }

    /// Loads every program of the object into the kernel (each goes through the verifier),
    /// skipping those already loaded, and returns the names of all programs, sorted.
    pub fn load_all_programs(&mut self) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for (name, program) in self.ebpf.programs_mut() {
            if program.fd().is_err() {
                load_program(name, program)?;
                debug!(program = name, "program verified and loaded");
            }
            names.push(name.to_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Attaches every socket program of the object ([`programs::SOCK_ADDR`]: `connect`,
    /// `sendmsg`, `recvmsg`, `getpeername`, both families) to the cgroup v2 directory
    /// `cgroup`, loading them first if needed: from then on, sockets of processes in that
    /// cgroup and its descendants are balanced. Detached when `self` drops.
    ///
    /// The attachments are BPF links, so they coexist with programs other tools attached to
    /// the same cgroup or its ancestors (links are always multi-attach).
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), Error> {
        for name in programs::SOCK_ADDR {
            self.attach_program(name, cgroup)?;
        }
        info!(cgroup = %cgroup.display(), programs = programs::SOCK_ADDR.len(), "socket load balancer attached");
        Ok(())
    }

    /// Attaches one socket program (a name of [`programs::SOCK_ADDR`]) to the cgroup v2 directory
    /// `cgroup`, loading it first if needed. Detached when `self` drops.
    pub fn attach_program(
        &mut self,
        name: &str,
        cgroup: &Path,
    ) -> Result<CgroupSockAddrLinkId, Error> {
        let cgroup_dir = open_cgroup(cgroup)?;
        let program = self.sock_addr_program(name)?;
        // `Single` is the only mode a link accepts: aya attaches with a BPF link on kernels
        // since 5.7, the kernel refuses BPF_F_ALLOW_MULTI on link creation, and cgroup links
        // run alongside other programs anyway.
        let link = program
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(|source| Error::Program {
                name: name.to_owned(),
                action: "attach",
                source,
            })?;
        debug!(program = name, cgroup = %cgroup.display(), "attached");
        Ok(link)
    }

    /// Attaches every socket program of the object ([`programs::SOCK_ADDR`]) and the NodePort
    /// bind guard ([`programs::POST_BIND4`], [`programs::POST_BIND6`]) to the cgroup v2
    /// directory `cgroup` through links pinned in `links` ([`crate::PinnedLinks`]), loading
    /// the programs first:
    /// a link pinned by an earlier run on the same cgroup takes the new program in place,
    /// with no moment where a hook is empty or runs twice. The attachments outlive `self`
    /// and the process; [`crate::links::cleanup`] removes them. Returns, per program, how
    /// it was installed. Pins no run installs are left for [`PinnedLinks::prune`], which
    /// the caller runs once every hook (the interfaces' too) is installed.
    pub fn install_pinned(
        &mut self,
        cgroup: &Path,
        links: &mut PinnedLinks,
    ) -> Result<Vec<(&'static str, Installed)>, Error> {
        let hook = Hook::Cgroup(cgroup.to_owned());
        let mut out = Vec::new();
        for name in programs::SOCK_ADDR {
            let program = self.sock_addr_program(name)?;
            let fd = program_fd(name, program.fd())?;
            let installed = links.install(&link_name(name), &hook, fd.as_fd(), || {
                let cgroup_dir = open_cgroup(cgroup)?;
                let program = self.sock_addr_program(name)?;
                let id = program
                    .attach(cgroup_dir, CgroupAttachMode::Single)
                    .map_err(|source| program_error(name, "attach", source))?;
                program
                    .take_link(id)
                    .map_err(|source| program_error(name, "take the link of", source))
            })?;
            out.push((name, installed));
        }
        for name in [programs::POST_BIND4, programs::POST_BIND6] {
            let program = self.sock_program(name)?;
            let fd = program_fd(name, program.fd())?;
            let installed = links.install(&link_name(name), &hook, fd.as_fd(), || {
                let cgroup_dir = open_cgroup(cgroup)?;
                let program = self.sock_program(name)?;
                let id = program
                    .attach(cgroup_dir, CgroupAttachMode::Single)
                    .map_err(|source| program_error(name, "attach", source))?;
                program
                    .take_link(id)
                    .map_err(|source| program_error(name, "take the link of", source))
            })?;
            out.push((name, installed));
        }
        let updated = out
            .iter()
            .filter(|(_, i)| matches!(i, Installed::Updated { .. }))
            .count();
        info!(
            cgroup = %cgroup.display(),
            links = %links.dir().display(),
            programs = out.len(),
            updated,
            attached = out.len() - updated,
            "socket load balancer installed on pinned links, with the NodePort bind guard"
        );
        Ok(out)
    }

    /// The `cgroup/post_bind` program `name`, loaded.
    fn sock_program(&mut self, name: &str) -> Result<&mut CgroupSock, Error> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram {
                name: name.to_owned(),
            })?;
        let program: &mut CgroupSock = program
            .try_into()
            .map_err(|source| program_error(name, "open", source))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| program_error(name, "load", source))?;
        }
        Ok(program)
    }

    /// The socket program `name`, loaded.
    fn sock_addr_program(&mut self, name: &str) -> Result<&mut CgroupSockAddr, Error> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram {
                name: name.to_owned(),
            })?;
        let program: &mut CgroupSockAddr = program.try_into().map_err(|source| Error::Program {
            name: name.to_owned(),
            action: "open",
            source,
        })?;
        if program.fd().is_err() {
            program.load().map_err(|source| Error::Program {
                name: name.to_owned(),
                action: "load",
                source,
            })?;
        }
        Ok(program)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        crate::kernel::counters(self)
    }

    /// The kernel's view of one of the object's maps (size, flags, id).
    pub fn map_info(&self, name: &'static str) -> Result<MapInfo, Error> {
        crate::kernel::map_info(self, name)
    }

    /// The IPv4 service map ([`maps::SERVICES4`]).
    pub fn services4(&mut self) -> Result<HashMap<&mut MapData, Service4Key, ServiceValue>, Error> {
        self.hash_map(maps::SERVICES4)
    }

    /// The IPv4 backend map ([`maps::BACKENDS4`]).
    pub fn backends4(&mut self) -> Result<HashMap<&mut MapData, BackendId, Backend4>, Error> {
        self.hash_map(maps::BACKENDS4)
    }

    /// The IPv4 rev-NAT map ([`maps::REV_NAT4`]).
    pub fn rev_nat4(&mut self) -> Result<HashMap<&mut MapData, RevNatId, RevNat4>, Error> {
        self.hash_map(maps::REV_NAT4)
    }

    /// The IPv6 service map ([`maps::SERVICES6`]).
    pub fn services6(&mut self) -> Result<HashMap<&mut MapData, Service6Key, ServiceValue>, Error> {
        self.hash_map(maps::SERVICES6)
    }

    /// The IPv6 backend map ([`maps::BACKENDS6`]).
    pub fn backends6(&mut self) -> Result<HashMap<&mut MapData, BackendId, Backend6>, Error> {
        self.hash_map(maps::BACKENDS6)
    }

    /// The IPv6 rev-NAT map ([`maps::REV_NAT6`]).
    pub fn rev_nat6(&mut self) -> Result<HashMap<&mut MapData, RevNatId, RevNat6>, Error> {
        self.hash_map(maps::REV_NAT6)
    }

    /// The aya handle, for what this type does not wrap yet.
    #[must_use]
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The aya handle, mutably.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn hash_map<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, Error> {
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
        HashMap::try_from(map).map_err(|source| Error::Map {
            name,
            action: "open",
            source,
        })
    }
}

/// The counters of [`Datapath::counters`]: one total per [`Reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub(crate) [u64; Reason::COUNT as usize]);

impl Counters {
    /// The total for `reason`.
    #[must_use]
    pub fn get(&self, reason: Reason) -> u64 {
        Reason::ALL
            .iter()
            .zip(self.0)
            .find_map(|(r, n)| (*r == reason).then_some(n))
            .unwrap_or(0)
    }

    /// Every reason with its total, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.into_iter().zip(self.0)
    }
}

/// The stable name of the pinned link of the socket program `program` (`cgroup-fl_connect4`).
#[must_use]
pub fn link_name(program: &str) -> String {
    format!("cgroup-{program}")
}

/// A program's fd, owned (for [`PinnedLinks::install`]).
fn program_fd(
    name: &str,
    fd: Result<&aya::programs::ProgramFd, ProgramError>,
) -> Result<std::os::fd::OwnedFd, Error> {
    fd.and_then(|fd| {
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(ProgramError::IOError)
    })
    .map_err(|source| program_error(name, "open", source))
}

fn program_error(name: &str, action: &'static str, source: ProgramError) -> Error {
    Error::Program {
        name: name.to_owned(),
        action,
        source,
    }
}

fn open_cgroup(cgroup: &Path) -> Result<File, Error> {
    File::open(cgroup).map_err(|source| Error::Cgroup {
        path: cgroup.to_owned(),
        source,
    })
}

/// Loads one program with the `load` of its kind. Kinds that need an attach target at load
/// time (BTF-typed hooks, extensions, iterators) are refused: the object has none.
fn load_program(name: &str, program: &mut Program) -> Result<(), Error> {
    let unsupported = |kind| Error::UnsupportedProgram {
        name: name.to_owned(),
        kind,
    };
    let result = match program {
        Program::KProbe(p) => p.load(),
        Program::UProbe(p) => p.load(),
        Program::TracePoint(p) => p.load(),
        Program::SocketFilter(p) => p.load(),
        Program::ReusePortSocketFilter(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        Program::SkSkb(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::CgroupSysctl(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::LircMode2(p) => p.load(),
        Program::PerfEvent(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        Program::FlowDissector(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        Program::SkReuseport(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupDevice(p) => p.load(),
        Program::Lsm(_) => return Err(unsupported("lsm")),
        Program::LsmCgroup(_) => return Err(unsupported("lsm_cgroup")),
        Program::BtfTracePoint(_) => return Err(unsupported("tp_btf")),
        Program::FEntry(_) => return Err(unsupported("fentry")),
        Program::FExit(_) => return Err(unsupported("fexit")),
        Program::Extension(_) => return Err(unsupported("extension")),
        Program::Iter(_) => return Err(unsupported("iter")),
    };
    result.map_err(|source| Error::Program {
        name: name.to_owned(),
        action: "load",
        source,
    })
}

/// Refuses to adopt a pinned map whose layout or size differs from `spec` and `max_entries`.
fn check_pinned(path: &Path, spec: &MapSpec, max_entries: u32) -> Result<(), Error> {
    let info = MapInfo::from_pin(path).map_err(|source| Error::InspectPin {
        path: path.to_owned(),
        source,
    })?;
    let mismatch = |field, pinned: String, expected: String| Error::IncompatiblePin {
        path: path.to_owned(),
        field,
        pinned,
        expected,
    };
    let expected_type = match spec.kind {
        MapKind::Hash => MapType::Hash,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::LruHash => MapType::LruHash,
        MapKind::LpmTrie => MapType::LpmTrie,
        MapKind::SkStorage => MapType::SkStorage,
    };
    match info.map_type() {
        Ok(pinned) if pinned == expected_type => {}
        pinned => {
            let pinned = pinned.map_or_else(|_| "unknown".to_owned(), |t| format!("{t:?}"));
            return Err(mismatch("map type", pinned, format!("{expected_type:?}")));
        }
    }
    let fields = [
        ("key size", info.key_size(), spec.key_size),
        ("value size", info.value_size(), spec.value_size),
        ("flags", info.map_flags(), spec.flags),
        ("max entries", info.max_entries(), max_entries),
    ];
    for (field, pinned, expected) in fields {
        if pinned != expected {
            return Err(mismatch(field, pinned.to_string(), expected.to_string()));
        }
    }
    Ok(())
}

/// The root of the cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on hybrid hosts,
/// `/sys/fs/cgroup` on unified ones.
#[must_use]
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.procs").is_file() && is_cgroup2(root))
}

fn is_cgroup2(dir: &Path) -> bool {
    // cgroup v1 hierarchies have no cgroup.type / cgroup.controllers files.
    dir.join("cgroup.controllers").is_file() || dir.join("cgroup.subtree_control").is_file()
}

#[cfg(test)]
mod tests {
    use super::{Datapath, LoadOptions};
    use crate::{Error, ebpf_object, ebpf_object_is_placeholder};

    /// An `AYA_BUILD_SKIP=1` build refuses to load, saying why, before touching the kernel;
    /// a real build embeds a little-endian BPF ELF object.
    #[test]
    fn embedded_object_is_a_bpf_elf_or_refused() {
        if ebpf_object_is_placeholder() {
            let error = Datapath::load(&LoadOptions::new()).expect_err("placeholder loaded");
            assert!(matches!(error, Error::PlaceholderObject), "{error:?}");
            assert!(error.to_string().contains("AYA_BUILD_SKIP=1"), "{error}");
        } else {
            let object = ebpf_object();
            assert_eq!(&object[..4], b"\x7fELF", "not an ELF file");
            assert_eq!(object[5], 1, "not little-endian");
            assert_eq!(
                u16::from_le_bytes([object[18], object[19]]),
                247,
                "not EM_BPF"
            );
        }
    }
}
