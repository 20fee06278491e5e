//! The load-balancer tables as user space sees them: family-neutral entries, the operations
//! the reconciler performs, and the [`LbMaps`] trait over the kernel maps
//! ([`crate::Datapath`], [`crate::PinnedMaps`]) and an in-memory stand-in ([`MemoryMaps`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use fairlead_abi::{BackendId, BackendState, Protocol, RevNatId, ServiceValue, maps};
use ipnet::IpNet;
use serde::Serialize;

/// A service frontend: one (virtual address, port, protocol) of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    /// The virtual address (a ClusterIP).
    pub address: IpAddr,
    /// The service port.
    pub port: u16,
    /// `IPPROTO_*`.
    pub protocol: u8,
}

impl Frontend {
    /// The address family as the tables split it.
    #[must_use]
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = Protocol::from_raw(self.protocol).map_or("?", Protocol::name);
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{protocol}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{protocol}", self.port),
        }
    }
}

/// IPv4 or IPv6: which set of maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 maps.
    V4,
    /// IPv6 maps.
    V6,
}

impl Family {
    /// The family of an address.
    #[must_use]
    pub fn of(address: &IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// A backend entry: where a frontend's slot sends connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendEntry {
    /// The endpoint address.
    pub address: IpAddr,
    /// The endpoint port.
    pub port: u16,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// [`BackendState`] as stored.
    pub state: u8,
    /// The frontend this backend serves.
    pub rev_nat_id: RevNatId,
    /// `BACKEND_FLAG_*` bits (local).
    pub flags: u8,
}

impl BackendEntry {
    /// The state's name (`active`, `terminating`, ...).
    #[must_use]
    pub fn state_name(&self) -> &'static str {
        BackendState::from_raw(self.state).map_or("unknown", BackendState::name)
    }
}

impl fmt::Display for BackendEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// One write to the tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets slot `slot` of a frontend's service entries (scope external).
    PutService {
        /// The frontend.
        frontend: Frontend,
        /// 0 for the service entry, `1..=count` for backends.
        slot: u16,
        /// The value.
        value: ServiceValue,
    },
    /// Deletes slot `slot` of a frontend.
    DeleteService {
        /// The frontend.
        frontend: Frontend,
        /// The slot.
        slot: u16,
    },
    /// Sets a backend.
    PutBackend {
        /// Its id.
        id: BackendId,
        /// The entry (its address says the family).
        backend: BackendEntry,
    },
    /// Deletes a backend.
    DeleteBackend {
        /// Which map.
        family: Family,
        /// Its id.
        id: BackendId,
    },
    /// Sets a rev-NAT entry: `id` → the frontend's address and port.
    PutRevNat {
        /// The id.
        id: RevNatId,
        /// The frontend.
        frontend: Frontend,
    },
    /// Deletes a rev-NAT entry.
    DeleteRevNat {
        /// Which map.
        family: Family,
        /// The id.
        id: RevNatId,
    },
    /// Sets the Maglev table of an external frontend.
    PutMaglev {
        /// The frontend's family.
        family: Family,
        /// The frontend's rev-NAT id.
        rev_nat_id: RevNatId,
        /// Backend ids, one per slot (empty: no backend).
        slots: Arc<[BackendId]>,
    },
    /// Deletes the Maglev table of a frontend.
    DeleteMaglev {
        /// The frontend's family.
        family: Family,
        /// The frontend's rev-NAT id.
        rev_nat_id: RevNatId,
    },
    /// Admits clients of `range` to a frontend with source ranges.
    PutSourceRange {
        /// The frontend's rev-NAT id.
        rev_nat_id: RevNatId,
        /// The client prefix (its family says the trie).
        range: IpNet,
    },
    /// Deletes a source range.
    DeleteSourceRange {
        /// The frontend's rev-NAT id.
        rev_nat_id: RevNatId,
        /// The client prefix.
        range: IpNet,
    },
}

impl Op {
    /// The table the operation writes.
    #[must_use]
    pub fn table(&self) -> Table {
        match self {
            Op::PutService { frontend, .. } | Op::DeleteService { frontend, .. } => {
                Table::services(frontend.family())
            }
            Op::PutBackend { backend, .. } => Table::backends(Family::of(&backend.address)),
            Op::DeleteBackend { family, .. } => Table::backends(*family),
            Op::PutRevNat { frontend, .. } => Table::rev_nat(frontend.family()),
            Op::DeleteRevNat { family, .. } => Table::rev_nat(*family),
            Op::PutMaglev { .. } | Op::DeleteMaglev { .. } => Table::Maglev,
            Op::PutSourceRange { range, .. } | Op::DeleteSourceRange { range, .. } => {
                Table::source_ranges(Family::of(&range.addr()))
            }
        }
    }

    /// Whether the operation may add an entry (deletes never do).
    #[must_use]
    pub fn is_put(&self) -> bool {
        matches!(
            self,
            Op::PutService { .. }
                | Op::PutBackend { .. }
                | Op::PutRevNat { .. }
                | Op::PutMaglev { .. }
                | Op::PutSourceRange { .. }
        )
    }
}

/// The tables user space writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// [`maps::SERVICES4`]
    Services4,
    /// [`maps::BACKENDS4`]
    Backends4,
    /// [`maps::REV_NAT4`]
    RevNat4,
    /// [`maps::SERVICES6`]
    Services6,
    /// [`maps::BACKENDS6`]
    Backends6,
    /// [`maps::REV_NAT6`]
    RevNat6,
    /// [`maps::MAGLEV`] (both families)
    Maglev,
    /// [`maps::SOURCE_RANGES4`]
    SourceRanges4,
    /// [`maps::SOURCE_RANGES6`]
    SourceRanges6,
}

impl Table {
    /// The number of tables.
    pub const COUNT: usize = 9;

    /// Every table.
    pub const ALL: [Table; Self::COUNT] = [
        Table::Services4,
        Table::Backends4,
        Table::RevNat4,
        Table::Services6,
        Table::Backends6,
        Table::RevNat6,
        Table::Maglev,
        Table::SourceRanges4,
        Table::SourceRanges6,
    ];

    /// The service table of a family.
    #[must_use]
    pub fn services(family: Family) -> Self {
        match family {
            Family::V4 => Self::Services4,
            Family::V6 => Self::Services6,
        }
    }

    /// The backend table of a family.
    #[must_use]
    pub fn backends(family: Family) -> Self {
        match family {
            Family::V4 => Self::Backends4,
            Family::V6 => Self::Backends6,
        }
    }

    /// The rev-NAT table of a family.
    #[must_use]
    pub fn rev_nat(family: Family) -> Self {
        match family {
            Family::V4 => Self::RevNat4,
            Family::V6 => Self::RevNat6,
        }
    }

    /// The source-range trie of a family.
    #[must_use]
    pub fn source_ranges(family: Family) -> Self {
        match family {
            Family::V4 => Self::SourceRanges4,
            Family::V6 => Self::SourceRanges6,
        }
    }

    /// The map's name.
    #[must_use]
    pub fn map_name(self) -> &'static str {
        match self {
            Table::Services4 => maps::SERVICES4,
            Table::Backends4 => maps::BACKENDS4,
            Table::RevNat4 => maps::REV_NAT4,
            Table::Services6 => maps::SERVICES6,
            Table::Backends6 => maps::BACKENDS6,
            Table::RevNat6 => maps::REV_NAT6,
            Table::Maglev => maps::MAGLEV,
            Table::SourceRanges4 => maps::SOURCE_RANGES4,
            Table::SourceRanges6 => maps::SOURCE_RANGES6,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The map has no room for another entry (`E2BIG`), or user space's count of its entries
    /// says it would not.
    #[error("map {} is full ({capacity} entries)", table.map_name())]
    Full {
        /// The map.
        table: Table,
        /// Its size.
        capacity: u32,
    },
    /// The kernel refused for another reason.
    #[error("map {}: write failed", table.map_name())]
    Kernel {
        /// The map.
        table: Table,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// Everything in the tables, read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// Service entries of the external scope: (frontend, slot) → value.
    pub services: BTreeMap<(Frontend, u16), ServiceValue>,
    /// Internal-scope service entries (fairlead writes none; read so they can be pruned).
    pub internal_services: Vec<(Frontend, u16)>,
    /// Backends: (family, id) → entry.
    pub backends: BTreeMap<(Family, BackendId), BackendEntry>,
    /// Rev-NAT: (family, id) → (address, port).
    pub rev_nats: BTreeMap<(Family, RevNatId), (IpAddr, u16)>,
    /// Maglev tables: (family, rev-NAT id) → the backend id of each slot.
    pub maglev: BTreeMap<(Family, RevNatId), Arc<[BackendId]>>,
    /// Source ranges: (rev-NAT id, client prefix).
    pub source_ranges: BTreeSet<(RevNatId, IpNet)>,
}

/// The load-balancer maps as the reconciler uses them. Implemented by the kernel maps and
/// by [`MemoryMaps`].
pub trait LbMaps {
    /// Performs one write.
    fn apply(&mut self, op: &Op) -> Result<(), WriteError>;
    /// Performs `ops` in order, stopping at the first that fails: returns how many were
    /// performed, and that failure. Each write is atomic and none is reordered, so the order
    /// guarantees of [`fairlead_abi::service`] hold as for [`LbMaps::apply`] one by one; the
    /// kernel maps do runs of the same table and kind in one `bpf()` call.
    fn apply_all(&mut self, ops: &[Op]) -> (usize, Result<(), WriteError>) {
        for (done, op) in ops.iter().enumerate() {
            if let Err(e) = self.apply(op) {
                return (done, Err(e));
            }
        }
        (ops.len(), Ok(()))
    }
    /// Reads every entry.
    fn contents(&self) -> Result<Contents, crate::Error>;
    /// The number of entries a table can hold.
    fn capacity(&self, table: Table) -> u32;
}

/// Load-balancer tables in memory, with the kernel's capacity rule: for tests, and for
/// showing what would be programmed without a kernel.
#[derive(Clone, Debug)]
pub struct MemoryMaps {
    contents: Contents,
    capacity: [u32; Table::COUNT],
    /// Every operation applied, in order.
    pub log: Vec<Op>,
}

impl Default for MemoryMaps {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryMaps {
    /// Empty tables of the default sizes.
    #[must_use]
    pub fn new() -> Self {
        let mut capacity = [0; Table::COUNT];
        for table in Table::ALL {
            capacity[table.index()] = maps::spec(table.map_name()).map_or(0, |s| s.max_entries);
        }
        Self {
            contents: Contents::default(),
            capacity,
            log: Vec::new(),
        }
    }

    /// Sets the size of a table.
    #[must_use]
    pub fn with_capacity(mut self, table: Table, entries: u32) -> Self {
        self.capacity[table.index()] = entries;
        self
    }

    /// Number of entries in a table.
    #[must_use]
    pub fn len(&self, table: Table) -> usize {
        let c = &self.contents;
        match table {
            Table::Services4 | Table::Services6 => {
                let family = if table == Table::Services4 {
                    Family::V4
                } else {
                    Family::V6
                };
                c.services
                    .keys()
                    .filter(|(f, _)| f.family() == family)
                    .count()
            }
            Table::Backends4 => c.backends.keys().filter(|(f, _)| *f == Family::V4).count(),
            Table::Backends6 => c.backends.keys().filter(|(f, _)| *f == Family::V6).count(),
            Table::RevNat4 => c.rev_nats.keys().filter(|(f, _)| *f == Family::V4).count(),
            Table::RevNat6 => c.rev_nats.keys().filter(|(f, _)| *f == Family::V6).count(),
            Table::Maglev => c.maglev.len(),
            Table::SourceRanges4 => c
                .source_ranges
                .iter()
                .filter(|(_, r)| r.addr().is_ipv4())
                .count(),
            Table::SourceRanges6 => c
                .source_ranges
                .iter()
                .filter(|(_, r)| r.addr().is_ipv6())
                .count(),
        }
    }

    fn check_room(&self, table: Table, exists: bool) -> Result<(), WriteError> {
        let capacity = self.capacity[table.index()];
        if !exists && self.len(table) >= capacity as usize {
            return Err(WriteError::Full { table, capacity });
        }
        Ok(())
    }
}

impl LbMaps for MemoryMaps {
    fn apply(&mut self, op: &Op) -> Result<(), WriteError> {
        let table = op.table();
        match op.clone() {
            Op::PutService {
                frontend,
                slot,
                value,
            } => {
                let exists = self.contents.services.contains_key(&(frontend, slot));
                self.check_room(table, exists)?;
                self.contents.services.insert((frontend, slot), value);
            }
            Op::DeleteService { frontend, slot } => {
                self.contents.services.remove(&(frontend, slot));
            }
            Op::PutBackend { id, backend } => {
                let key = (Family::of(&backend.address), id);
                let exists = self.contents.backends.contains_key(&key);
                self.check_room(table, exists)?;
                self.contents.backends.insert(key, backend);
            }
            Op::DeleteBackend { family, id } => {
                self.contents.backends.remove(&(family, id));
            }
            Op::PutRevNat { id, frontend } => {
                let key = (frontend.family(), id);
                let exists = self.contents.rev_nats.contains_key(&key);
                self.check_room(table, exists)?;
                self.contents
                    .rev_nats
                    .insert(key, (frontend.address, frontend.port));
            }
            Op::DeleteRevNat { family, id } => {
                self.contents.rev_nats.remove(&(family, id));
            }
            Op::PutMaglev {
                family,
                rev_nat_id,
                slots,
            } => {
                let exists = self.contents.maglev.contains_key(&(family, rev_nat_id));
                self.check_room(table, exists)?;
                self.contents.maglev.insert((family, rev_nat_id), slots);
            }
            Op::DeleteMaglev { family, rev_nat_id } => {
                self.contents.maglev.remove(&(family, rev_nat_id));
            }
            Op::PutSourceRange { rev_nat_id, range } => {
                let exists = self.contents.source_ranges.contains(&(rev_nat_id, range));
                self.check_room(table, exists)?;
                self.contents.source_ranges.insert((rev_nat_id, range));
            }
            Op::DeleteSourceRange { rev_nat_id, range } => {
                self.contents.source_ranges.remove(&(rev_nat_id, range));
            }
        }
        self.log.push(op.clone());
        Ok(())
    }

    fn contents(&self) -> Result<Contents, crate::Error> {
        Ok(self.contents.clone())
    }

    fn capacity(&self, table: Table) -> u32 {
        self.capacity[table.index()]
    }
}

/// The unspecified address of a family (for rendering).
#[must_use]
pub fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}
