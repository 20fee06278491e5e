//! The kernel maps behind [`LbMaps`]: for the loaded object ([`Datapath`]) and for maps
//! opened from their pins without loading anything ([`PinnedMaps`], what `fairlead status`
//! reads).

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray};
use fairlead_abi::{
    Backend4, Backend6, BackendId, Be16, Be32, Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key,
    Frag6Key, FragPorts, MaglevKey, MaglevTable, Reason, RevNat4, RevNat6, RevNatId, Scope,
    Service4Key, Service6Key, ServiceValue, SourceRange4Key, SourceRange6Key, maps, maps::MapKind,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::Error;
use crate::datapath::{Counters, Datapath};
use crate::tables::{BackendEntry, Contents, Family, Frontend, LbMaps, Op, Table, WriteError};

/// A set of the object's maps by name.
pub(crate) trait MapSet {
    fn map(&self, name: &'static str) -> Result<&Map, Error>;
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error>;
}

impl MapSet for Datapath {
    fn map(&self, name: &'static str) -> Result<&Map, Error> {
        self.ebpf().map(name).ok_or(Error::MissingMap { name })
    }
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.ebpf_mut()
            .map_mut(name)
            .ok_or(Error::MissingMap { name })
    }
}

/// The maps pinned under a directory by a running (or earlier) `fairlead proxy`, opened
/// read-write without loading any program.
#[derive(Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
    maps: Vec<(&'static str, Map)>,
}

impl PinnedMaps {
    /// Opens every map of [`maps::ALL`] pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let mut out = Vec::new();
        for spec in &maps::ALL {
            let path = dir.join(spec.name);
            let data = MapData::from_pin(&path).map_err(|source| Error::InspectPin {
                path: path.clone(),
                source,
            })?;
            let map = match spec.kind {
                MapKind::Hash => Map::HashMap(data),
                MapKind::LruHash => Map::LruHashMap(data),
                MapKind::PerCpuArray => Map::PerCpuArray(data),
                MapKind::LpmTrie => Map::LpmTrie(data),
                MapKind::SkStorage => Map::SkStorage(data),
            };
            out.push((spec.name, map));
        }
        Ok(Self {
            dir: dir.to_owned(),
            maps: out,
        })
    }

    /// The pin directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        counters(self)
    }

    /// The kernel's view of a map.
    pub fn map_info(&self, name: &'static str) -> Result<MapInfo, Error> {
        map_info(self, name)
    }

    /// Entries in a map (by iterating it) and its size.
    pub fn fill(&self, name: &'static str) -> Result<(usize, u32), Error> {
        fill(self, name)
    }
}

impl MapSet for PinnedMaps {
    fn map(&self, name: &'static str) -> Result<&Map, Error> {
        self.maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or(Error::MissingMap { name })
    }
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.maps
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or(Error::MissingMap { name })
    }
}

fn data<'a>(set: &'a impl MapSet, name: &'static str) -> Result<&'a MapData, Error> {
    match set.map(name)? {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::LpmTrie(d)
        | Map::SkStorage(d) => Ok(d),
        _ => Err(Error::UnexpectedMapKind { name }),
    }
}

pub(crate) fn map_info(set: &impl MapSet, name: &'static str) -> Result<MapInfo, Error> {
    data(set, name)?.info().map_err(|source| Error::Map {
        name,
        action: "inspect",
        source,
    })
}

pub(crate) fn counters(set: &impl MapSet) -> Result<Counters, Error> {
    let name = maps::COUNTERS;
    let array =
        PerCpuArray::<&MapData, u64>::try_from(set.map(name)?).map_err(|source| Error::Map {
            name,
            action: "open",
            source,
        })?;
    let mut totals = [0; Reason::COUNT as usize];
    for (total, reason) in totals.iter_mut().zip(Reason::ALL) {
        let per_cpu = array.get(&reason.index(), 0).map_err(|source| Error::Map {
            name,
            action: "read",
            source,
        })?;
        *total = per_cpu.iter().fold(0, |sum: u64, n| sum.wrapping_add(*n));
    }
    Ok(Counters(totals))
}

pub(crate) fn fill(set: &impl MapSet, name: &'static str) -> Result<(usize, u32), Error> {
    let max = map_info(set, name)?.max_entries();
    let map = set.map(name)?;
    let read = |source| Error::Map {
        name,
        action: "read",
        source,
    };
    let count = match name {
        maps::COUNTERS | maps::REJECT_BUDGET => return Ok((max as usize, max)),
        // Socket-local storage has no size and cannot be walked: its entries live in the
        // sockets, and go with them.
        maps::SOCK_REV_NAT4 | maps::SOCK_REV_NAT6 => return Ok((0, 0)),
        maps::SERVICES4 => HashMap::<_, Service4Key, ServiceValue>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::SERVICES6 => HashMap::<_, Service6Key, ServiceValue>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::BACKENDS4 => HashMap::<_, BackendId, Backend4>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::BACKENDS6 => HashMap::<_, BackendId, Backend6>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::REV_NAT4 => HashMap::<_, RevNatId, RevNat4>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::REV_NAT6 => HashMap::<_, RevNatId, RevNat6>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::AFFINITY => {
            HashMap::<_, fairlead_abi::AffinityKey, fairlead_abi::AffinityValue>::try_from(map)
                .map_err(read)?
                .keys()
                .count()
        }
        maps::MAGLEV => HashMap::<_, MaglevKey, MaglevTable>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::CT4_TCP | maps::CT4_ANY => HashMap::<_, Ct4Key, CtValue>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::NODE_ADDR4 => HashMap::<_, Be32, u32>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::IF_ADDR4 => HashMap::<_, u32, Be32>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::SOURCE_RANGES4 => LpmTrie::<_, SourceRange4Key, u8>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::SOURCE_RANGES6 => LpmTrie::<_, SourceRange6Key, u8>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::CT6_TCP | maps::CT6_ANY => HashMap::<_, Ct6Key, Ct6Value>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::NODE_ADDR6 => HashMap::<_, [u8; 16], u32>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::IF_ADDR6 => HashMap::<_, u32, [u8; 16]>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::FRAG4 => HashMap::<_, Frag4Key, FragPorts>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        maps::FRAG6 => HashMap::<_, Frag6Key, FragPorts>::try_from(map)
            .map_err(read)?
            .keys()
            .count(),
        _ => return Err(Error::MissingMap { name }),
    };
    Ok((count, max))
}

fn v4(address: IpAddr) -> Be32 {
    match address {
        IpAddr::V4(a) => Be32::from_ipv4(a),
        IpAddr::V6(_) => Be32::default(),
    }
}

fn v6(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn write_error(table: Table, error: MapError, capacity: u32) -> WriteError {
    let io_error = match error {
        MapError::SyscallError(e) => e.io_error,
        other => io::Error::other(other.to_string()),
    };
    if io_error.raw_os_error() == Some(libc_e2big()) {
        WriteError::Full { table, capacity }
    } else {
        WriteError::Kernel {
            table,
            source: io_error,
        }
    }
}

/// `E2BIG`: what a full hash map answers.
const fn libc_e2big() -> i32 {
    7
}

fn apply_op(set: &mut impl MapSet, op: &Op) -> Result<(), WriteError> {
    apply_inner(set, op).map_err(|e| match e {
        WriteError::Full { table, .. } => WriteError::Full {
            table,
            capacity: capacity(set, table),
        },
        e @ WriteError::Kernel { .. } => e,
    })
}

#[expect(
    clippy::too_many_lines,
    reason = "one short arm per operation and family reads better than a layer of helpers"
)]
fn apply_inner(set: &mut impl MapSet, op: &Op) -> Result<(), WriteError> {
    let table = op.table();
    let name = table.map_name();
    let capacity = 0;
    let map = set.map_mut(name).map_err(|e| WriteError::Kernel {
        table,
        source: io::Error::other(e.to_string()),
    })?;
    let fail = |e| write_error(table, e, capacity);
    match op.clone() {
        Op::PutService {
            frontend,
            slot,
            value,
        } => match frontend.family() {
            Family::V4 => HashMap::<_, Service4Key, ServiceValue>::try_from(map)
                .map_err(fail)?
                .insert(service4_key(frontend, slot), value, 0)
                .map_err(fail),
            Family::V6 => HashMap::<_, Service6Key, ServiceValue>::try_from(map)
                .map_err(fail)?
                .insert(service6_key(frontend, slot), value, 0)
                .map_err(fail),
        },
        Op::DeleteService { frontend, slot } => match frontend.family() {
            Family::V4 => ignore_missing(
                HashMap::<_, Service4Key, ServiceValue>::try_from(map)
                    .map_err(fail)?
                    .remove(&service4_key(frontend, slot)),
            )
            .map_err(fail),
            Family::V6 => ignore_missing(
                HashMap::<_, Service6Key, ServiceValue>::try_from(map)
                    .map_err(fail)?
                    .remove(&service6_key(frontend, slot)),
            )
            .map_err(fail),
        },
        Op::PutBackend { id, backend } => match Family::of(&backend.address) {
            Family::V4 => HashMap::<_, BackendId, Backend4>::try_from(map)
                .map_err(fail)?
                .insert(id, backend4(&backend), 0)
                .map_err(fail),
            Family::V6 => HashMap::<_, BackendId, Backend6>::try_from(map)
                .map_err(fail)?
                .insert(id, backend6(&backend), 0)
                .map_err(fail),
        },
        Op::DeleteBackend { family, id } => match family {
            Family::V4 => ignore_missing(
                HashMap::<_, BackendId, Backend4>::try_from(map)
                    .map_err(fail)?
                    .remove(&id),
            )
            .map_err(fail),
            Family::V6 => ignore_missing(
                HashMap::<_, BackendId, Backend6>::try_from(map)
                    .map_err(fail)?
                    .remove(&id),
            )
            .map_err(fail),
        },
        Op::PutRevNat { id, frontend } => match frontend.family() {
            Family::V4 => HashMap::<_, RevNatId, RevNat4>::try_from(map)
                .map_err(fail)?
                .insert(
                    id,
                    RevNat4::new(v4(frontend.address), Be16::from_host(frontend.port)),
                    0,
                )
                .map_err(fail),
            Family::V6 => HashMap::<_, RevNatId, RevNat6>::try_from(map)
                .map_err(fail)?
                .insert(
                    id,
                    RevNat6::new(v6(frontend.address), Be16::from_host(frontend.port)),
                    0,
                )
                .map_err(fail),
        },
        Op::DeleteRevNat { family, id } => match family {
            Family::V4 => ignore_missing(
                HashMap::<_, RevNatId, RevNat4>::try_from(map)
                    .map_err(fail)?
                    .remove(&id),
            )
            .map_err(fail),
            Family::V6 => ignore_missing(
                HashMap::<_, RevNatId, RevNat6>::try_from(map)
                    .map_err(fail)?
                    .remove(&id),
            )
            .map_err(fail),
        },
        Op::PutMaglev {
            family,
            rev_nat_id,
            slots,
        } => HashMap::<_, MaglevKey, MaglevTable>::try_from(map)
            .map_err(fail)?
            .insert(
                MaglevKey::new(rev_nat_id, family_byte(family)),
                MaglevTable::boxed(&slots),
                0,
            )
            .map_err(fail),
        Op::DeleteMaglev { family, rev_nat_id } => ignore_missing(
            HashMap::<_, MaglevKey, MaglevTable>::try_from(map)
                .map_err(fail)?
                .remove(&MaglevKey::new(rev_nat_id, family_byte(family))),
        )
        .map_err(fail),
        Op::PutSourceRange { rev_nat_id, range } => match range {
            IpNet::V4(net) => LpmTrie::<_, SourceRange4Key, u8>::try_from(map)
                .map_err(fail)?
                .insert(&range4_key(rev_nat_id, net), 1, 0)
                .map_err(fail),
            IpNet::V6(net) => LpmTrie::<_, SourceRange6Key, u8>::try_from(map)
                .map_err(fail)?
                .insert(&range6_key(rev_nat_id, net), 1, 0)
                .map_err(fail),
        },
        Op::DeleteSourceRange { rev_nat_id, range } => match range {
            IpNet::V4(net) => ignore_missing(
                LpmTrie::<_, SourceRange4Key, u8>::try_from(map)
                    .map_err(fail)?
                    .remove(&range4_key(rev_nat_id, net)),
            )
            .map_err(fail),
            IpNet::V6(net) => ignore_missing(
                LpmTrie::<_, SourceRange6Key, u8>::try_from(map)
                    .map_err(fail)?
                    .remove(&range6_key(rev_nat_id, net)),
            )
            .map_err(fail),
        },
    }
}

fn family_byte(family: Family) -> u8 {
    match family {
        Family::V4 => fairlead_abi::sock::FAMILY_V4,
        Family::V6 => fairlead_abi::sock::FAMILY_V6,
    }
}

/// The trie key of an IPv4 source range.
fn range4_key(rev_nat_id: RevNatId, net: Ipv4Net) -> LpmKey<SourceRange4Key> {
    LpmKey::new(
        SourceRange4Key::prefix_len(net.prefix_len()),
        SourceRange4Key::new(rev_nat_id, Be32::from_ipv4(net.network())),
    )
}

/// The trie key of an IPv6 source range.
fn range6_key(rev_nat_id: RevNatId, net: Ipv6Net) -> LpmKey<SourceRange6Key> {
    LpmKey::new(
        SourceRange6Key::prefix_len(net.prefix_len()),
        SourceRange6Key::new(rev_nat_id, net.network().octets()),
    )
}

/// A delete of an entry that is already gone succeeded.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        other => other,
    }
}

fn service4_key(frontend: Frontend, slot: u16) -> Service4Key {
    Service4Key::new(
        v4(frontend.address),
        Be16::from_host(frontend.port),
        frontend.protocol,
        Scope::External,
        slot,
    )
}

fn service6_key(frontend: Frontend, slot: u16) -> Service6Key {
    Service6Key::new(
        v6(frontend.address),
        Be16::from_host(frontend.port),
        frontend.protocol,
        Scope::External,
        slot,
    )
}

fn read_contents(set: &impl MapSet) -> Result<Contents, Error> {
    let mut contents = Contents::default();
    let read = |name: &'static str| {
        move |source| Error::Map {
            name,
            action: "read",
            source,
        }
    };
    let map = set.map(maps::SERVICES4)?;
    for entry in
        &HashMap::<_, Service4Key, ServiceValue>::try_from(map).map_err(read(maps::SERVICES4))?
    {
        let (key, value) = entry.map_err(read(maps::SERVICES4))?;
        let frontend = Frontend {
            address: IpAddr::V4(key.address.to_ipv4()),
            port: key.port.to_host(),
            protocol: key.protocol,
        };
        if Scope::from_raw(key.scope) == Some(Scope::External) {
            contents.services.insert((frontend, key.slot), value);
        } else {
            contents.internal_services.push((frontend, key.slot));
        }
    }
    let map = set.map(maps::SERVICES6)?;
    for entry in
        &HashMap::<_, Service6Key, ServiceValue>::try_from(map).map_err(read(maps::SERVICES6))?
    {
        let (key, value) = entry.map_err(read(maps::SERVICES6))?;
        let frontend = Frontend {
            address: IpAddr::V6(key.ipv6()),
            port: key.port.to_host(),
            protocol: key.protocol,
        };
        if Scope::from_raw(key.scope) == Some(Scope::External) {
            contents.services.insert((frontend, key.slot), value);
        } else {
            contents.internal_services.push((frontend, key.slot));
        }
    }
    let map = set.map(maps::BACKENDS4)?;
    for entry in &HashMap::<_, BackendId, Backend4>::try_from(map).map_err(read(maps::BACKENDS4))? {
        let (id, b) = entry.map_err(read(maps::BACKENDS4))?;
        contents.backends.insert(
            (Family::V4, id),
            BackendEntry {
                address: IpAddr::V4(b.address.to_ipv4()),
                port: b.port.to_host(),
                protocol: b.protocol,
                state: b.state,
                rev_nat_id: b.rev_nat_id,
                flags: b.flags,
            },
        );
    }
    let map = set.map(maps::BACKENDS6)?;
    for entry in &HashMap::<_, BackendId, Backend6>::try_from(map).map_err(read(maps::BACKENDS6))? {
        let (id, b) = entry.map_err(read(maps::BACKENDS6))?;
        contents.backends.insert(
            (Family::V6, id),
            BackendEntry {
                address: IpAddr::V6(b.ipv6()),
                port: b.port.to_host(),
                protocol: b.protocol,
                state: b.state,
                rev_nat_id: b.rev_nat_id,
                flags: b.flags,
            },
        );
    }
    let map = set.map(maps::REV_NAT4)?;
    for entry in &HashMap::<_, RevNatId, RevNat4>::try_from(map).map_err(read(maps::REV_NAT4))? {
        let (id, r) = entry.map_err(read(maps::REV_NAT4))?;
        contents.rev_nats.insert(
            (Family::V4, id),
            (IpAddr::V4(r.address.to_ipv4()), r.port.to_host()),
        );
    }
    let map = set.map(maps::REV_NAT6)?;
    for entry in &HashMap::<_, RevNatId, RevNat6>::try_from(map).map_err(read(maps::REV_NAT6))? {
        let (id, r) = entry.map_err(read(maps::REV_NAT6))?;
        contents.rev_nats.insert(
            (Family::V6, id),
            (IpAddr::V6(Ipv6Addr::from(r.address)), r.port.to_host()),
        );
    }
    read_external(set, &mut contents)?;
    Ok(contents)
}

/// The Maglev tables and source ranges.
fn read_external(set: &impl MapSet, contents: &mut Contents) -> Result<(), Error> {
    let read = |name: &'static str| {
        move |source| Error::Map {
            name,
            action: "read",
            source,
        }
    };
    let map = set.map(maps::MAGLEV)?;
    for entry in &HashMap::<_, MaglevKey, MaglevTable>::try_from(map).map_err(read(maps::MAGLEV))? {
        let (key, table) = entry.map_err(read(maps::MAGLEV))?;
        let family = if key.family == fairlead_abi::sock::FAMILY_V6 {
            Family::V6
        } else {
            Family::V4
        };
        let size = (table.size as usize).min(table.slots.len());
        contents
            .maglev
            .insert((family, key.rev_nat_id), table.slots[..size].into());
    }
    let map = set.map(maps::SOURCE_RANGES4)?;
    let trie =
        LpmTrie::<_, SourceRange4Key, u8>::try_from(map).map_err(read(maps::SOURCE_RANGES4))?;
    for key in trie.keys() {
        let key = key.map_err(read(maps::SOURCE_RANGES4))?;
        let data = key.data();
        let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(32);
        if let Ok(net) = Ipv4Net::new(data.address.to_ipv4(), len) {
            contents
                .source_ranges
                .insert((data.rev_nat_id.to_host(), IpNet::V4(net)));
        }
    }
    let map = set.map(maps::SOURCE_RANGES6)?;
    let trie =
        LpmTrie::<_, SourceRange6Key, u8>::try_from(map).map_err(read(maps::SOURCE_RANGES6))?;
    for key in trie.keys() {
        let key = key.map_err(read(maps::SOURCE_RANGES6))?;
        let data = key.data();
        let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(128);
        if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(data.address), len) {
            contents
                .source_ranges
                .insert((data.rev_nat_id.to_host(), IpNet::V6(net)));
        }
    }
    Ok(())
}

fn capacity(set: &impl MapSet, table: Table) -> u32 {
    map_info(set, table.map_name()).map_or(0, |i| i.max_entries())
}

/// Which batch an operation can share: same table, same kind (put or delete).
fn run_key(op: &Op) -> (Table, bool) {
    (op.table(), op.is_put())
}

/// [`LbMaps::apply_all`] for kernel maps: each run of operations on the same table and of
/// the same kind is one `BPF_MAP_UPDATE_BATCH` or `BPF_MAP_DELETE_BATCH`, which the kernel
/// performs element by element, in order.
fn apply_all_batched(set: &mut impl MapSet, ops: &[Op]) -> (usize, Result<(), WriteError>) {
    let mut done = 0;
    while done < ops.len() {
        let key = run_key(&ops[done]);
        let len = ops[done..]
            .iter()
            .take_while(|op| run_key(op) == key)
            .count();
        let run = &ops[done..done + len];
        let (n, result) = if matches!(
            run[0],
            Op::PutMaglev { .. }
                | Op::DeleteMaglev { .. }
                | Op::PutSourceRange { .. }
                | Op::DeleteSourceRange { .. }
        ) {
            // Maglev tables and source ranges are few (one per external frontend).
            apply_one_by_one(set, run)
        } else {
            apply_run(set, run)
        };
        done += n;
        if let Err(e) = result {
            let e = match e {
                WriteError::Full { table, .. } => WriteError::Full {
                    table,
                    capacity: capacity(set, table),
                },
                e @ WriteError::Kernel { .. } => e,
            };
            return (done, Err(e));
        }
    }
    (done, Ok(()))
}

fn apply_one_by_one(set: &mut impl MapSet, run: &[Op]) -> (usize, Result<(), WriteError>) {
    for (done, op) in run.iter().enumerate() {
        if let Err(e) = apply_op(set, op) {
            return (done, Err(e));
        }
    }
    (run.len(), Ok(()))
}

/// One run (same table, same kind); deletes of keys already gone count as done.
fn apply_run(set: &mut impl MapSet, run: &[Op]) -> (usize, Result<(), WriteError>) {
    let table = run[0].table();
    let fd = match data(set, table.map_name()) {
        Ok(d) => d.fd().as_fd(),
        Err(e) => {
            return (
                0,
                Err(WriteError::Kernel {
                    table,
                    source: io::Error::other(e.to_string()),
                }),
            );
        }
    };
    let mut done = 0;
    while done < run.len() {
        let rest = &run[done..];
        let (n, result) = match rest[0] {
            Op::PutService { frontend, .. } => match frontend.family() {
                Family::V4 => put_batch(fd, rest, |op| match *op {
                    Op::PutService {
                        frontend,
                        slot,
                        value,
                    } => (service4_key(frontend, slot), value),
                    _ => unreachable!("a run holds one kind"),
                }),
                Family::V6 => put_batch(fd, rest, |op| match *op {
                    Op::PutService {
                        frontend,
                        slot,
                        value,
                    } => (service6_key(frontend, slot), value),
                    _ => unreachable!("a run holds one kind"),
                }),
            },
            Op::PutBackend { backend, .. } => match Family::of(&backend.address) {
                Family::V4 => put_batch(fd, rest, |op| match *op {
                    Op::PutBackend { id, backend } => (id, backend4(&backend)),
                    _ => unreachable!("a run holds one kind"),
                }),
                Family::V6 => put_batch(fd, rest, |op| match *op {
                    Op::PutBackend { id, backend } => (id, backend6(&backend)),
                    _ => unreachable!("a run holds one kind"),
                }),
            },
            Op::PutRevNat { frontend, .. } => match frontend.family() {
                Family::V4 => put_batch(fd, rest, |op| match *op {
                    Op::PutRevNat { id, frontend } => (
                        id,
                        RevNat4::new(v4(frontend.address), Be16::from_host(frontend.port)),
                    ),
                    _ => unreachable!("a run holds one kind"),
                }),
                Family::V6 => put_batch(fd, rest, |op| match *op {
                    Op::PutRevNat { id, frontend } => (
                        id,
                        RevNat6::new(v6(frontend.address), Be16::from_host(frontend.port)),
                    ),
                    _ => unreachable!("a run holds one kind"),
                }),
            },
            Op::DeleteService { frontend, .. } => match frontend.family() {
                Family::V4 => delete_batch(fd, rest, |op| match *op {
                    Op::DeleteService { frontend, slot } => service4_key(frontend, slot),
                    _ => unreachable!("a run holds one kind"),
                }),
                Family::V6 => delete_batch(fd, rest, |op| match *op {
                    Op::DeleteService { frontend, slot } => service6_key(frontend, slot),
                    _ => unreachable!("a run holds one kind"),
                }),
            },
            Op::DeleteBackend { .. } => delete_batch(fd, rest, |op| match *op {
                Op::DeleteBackend { id, .. } => id,
                _ => unreachable!("a run holds one kind"),
            }),
            Op::DeleteRevNat { .. } => delete_batch(fd, rest, |op| match *op {
                Op::DeleteRevNat { id, .. } => id,
                _ => unreachable!("a run holds one kind"),
            }),
            Op::PutMaglev { .. }
            | Op::DeleteMaglev { .. }
            | Op::PutSourceRange { .. }
            | Op::DeleteSourceRange { .. } => unreachable!("written one by one above"),
        };
        done += n;
        match result {
            Ok(()) => {}
            // A delete of an entry that is already gone succeeded: skip it, go on.
            Err(e) if !rest[0].is_put() && e.raw_os_error() == Some(libc_enoent()) => done += 1,
            Err(e) if e.raw_os_error() == Some(libc_e2big()) => {
                return (done, Err(WriteError::Full { table, capacity: 0 }));
            }
            Err(source) => return (done, Err(WriteError::Kernel { table, source })),
        }
    }
    (done, Ok(()))
}

/// Puts in a run of at least this many are split among threads (a first sync's tens of
/// thousands): the kernel's hash maps take concurrent updates (a lock per bucket), and
/// below this the threads cost more than they save.
const PARALLEL_PUTS: usize = 8192;

fn put_batch<K: aya::Pod + Send + Sync, V: aya::Pod + Send + Sync>(
    fd: std::os::fd::BorrowedFd<'_>,
    ops: &[Op],
    entry: impl Fn(&Op) -> (K, V),
) -> (usize, io::Result<()>) {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let (keys, values): (Vec<K>, Vec<V>) = ops.iter().map(entry).unzip();
    let threads = if keys.len() < 2 * PARALLEL_PUTS {
        1
    } else {
        // Read once: it reads cgroup files and the affinity mask.
        let cpus = *CPUS
            .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
        cpus.min(4).min(keys.len() / PARALLEL_PUTS)
    };
    if threads < 2 {
        return crate::sys::map_update_batch(fd, &keys, &values);
    }
    // A run holds each key once (a sync plans a frontend once per flush, ids are not
    // reused within one), so its puts commute: any split writes the same entries. The
    // count stays exact for a prefix: on an error in one part, the parts before it were
    // written whole and the count ends at the failing entry. (Parts after it were written
    // too: re-applying them, as the reconciler does, rewrites the same values.)
    let chunk = keys.len().div_ceil(threads);
    let results: Vec<(usize, usize, io::Result<()>)> = std::thread::scope(|scope| {
        let parts: Vec<_> = keys
            .chunks(chunk)
            .zip(values.chunks(chunk))
            .enumerate()
            .map(|(i, (k, v))| {
                scope.spawn(move || {
                    let (n, result) = crate::sys::map_update_batch(fd, k, v);
                    (i * chunk, n, result)
                })
            })
            .collect();
        parts
            .into_iter()
            .map(|part| {
                part.join().unwrap_or_else(|_| {
                    (0, 0, Err(io::Error::other("a map-writing thread panicked")))
                })
            })
            .collect()
    });
    for (start, n, result) in results {
        if let Err(e) = result {
            return (start + n, Err(e));
        }
    }
    (keys.len(), Ok(()))
}

fn delete_batch<K: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    ops: &[Op],
    key: impl Fn(&Op) -> K,
) -> (usize, io::Result<()>) {
    let keys: Vec<K> = ops.iter().map(key).collect();
    crate::sys::map_delete_batch(fd, &keys)
}

/// `ENOENT`: what deleting a missing key answers.
const fn libc_enoent() -> i32 {
    2
}

/// The kernel's entry for a backend (one writer for the single and the batched path).
fn backend4(backend: &BackendEntry) -> Backend4 {
    Backend4::new(
        v4(backend.address),
        Be16::from_host(backend.port),
        backend.protocol,
        fairlead_abi::BackendState::from_raw(backend.state)
            .unwrap_or(fairlead_abi::BackendState::Active),
        backend.rev_nat_id,
    )
    .with_flags(backend.flags)
}

fn backend6(backend: &BackendEntry) -> Backend6 {
    Backend6::new(
        v6(backend.address),
        Be16::from_host(backend.port),
        backend.protocol,
        fairlead_abi::BackendState::from_raw(backend.state)
            .unwrap_or(fairlead_abi::BackendState::Active),
        backend.rev_nat_id,
    )
    .with_flags(backend.flags)
}

impl LbMaps for Datapath {
    fn apply(&mut self, op: &Op) -> Result<(), WriteError> {
        apply_op(self, op)
    }
    fn apply_all(&mut self, ops: &[Op]) -> (usize, Result<(), WriteError>) {
        apply_all_batched(self, ops)
    }
    fn contents(&self) -> Result<Contents, Error> {
        read_contents(self)
    }
    fn capacity(&self, table: Table) -> u32 {
        capacity(self, table)
    }
}

impl LbMaps for PinnedMaps {
    fn apply(&mut self, op: &Op) -> Result<(), WriteError> {
        apply_op(self, op)
    }
    fn apply_all(&mut self, ops: &[Op]) -> (usize, Result<(), WriteError>) {
        apply_all_batched(self, ops)
    }
    fn contents(&self) -> Result<Contents, Error> {
        read_contents(self)
    }
    fn capacity(&self, table: Table) -> u32 {
        capacity(self, table)
    }
}
