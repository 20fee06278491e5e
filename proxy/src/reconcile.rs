//! The reconciler: model snapshot → desired frontends ([`crate::desired`]) → diff against
//! what the tables hold → ordered writes → prune.
//!
//! It keeps a mirror of what it has written (or adopted from pinned maps), updated write by
//! write, so a failure half-way leaves the mirror true to the kernel and the next sync
//! carries on from there. Writes follow the order documented in [`fairlead_abi::service`]:
//! backends and rev-NAT first, then backend slots, the service entry (its count) last; when
//! shrinking, the count first, then the slots above it, then the backends nothing lists.
//!
//! Identifiers are stable: a frontend keeps its rev-NAT id, and a backend (address, port) of
//! a frontend keeps its id, for as long as they exist — across restarts too, since the ids
//! found in pinned maps are adopted ([`Reconciler::adopt`]). Backend ids are allocated
//! upwards and not reused while the 32-bit space lasts; rev-NAT ids are allocated round-robin.
//!
//! A sync costs O(changed Services): the model's change cursor ([`Snapshot::changes_since`])
//! names them; only when it says everything (first sync, a reader behind its log) or this
//! node's Node changed (its zone decides topology) is every Service compared (and what nobody
//! claims pruned).

use std::collections::{BTreeMap, BTreeSet};

// foldhash, not SipHash: these maps are hashed ~1M times in a first sync at 10k Services
// (frontends, Service keys, backend ids), and their keys come from the model, not the wire.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fairlead_abi::{BACKEND_FLAG_LOCAL, BackendId, RevNatId, ServiceValue};
use fairlead_model::{FieldError, Kind, ObjectId, Problem, ServiceKey, Severity, Snapshot};
use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::desired::{DesiredBackend, DesiredFrontend, MAX_BACKENDS, desired_frontends};
use crate::maglev::{self, MaglevBackend};
use crate::tables::{BackendEntry, Contents, Family, Frontend, LbMaps, Op, Table, WriteError};

/// What is programmed for one frontend (the mirror of its entries).
#[derive(Clone, Debug, Default)]
struct Programmed {
    rev_nat_id: RevNatId,
    rev_nat: Option<(IpAddr, u16)>,
    head: Option<ServiceValue>,
    slots: BTreeMap<u16, ServiceValue>,
    backends: BTreeMap<BackendId, BackendEntry>,
    maglev: Option<Arc<[BackendId]>>,
    source_ranges: BTreeSet<IpNet>,
}

/// Why a Service (or one of its frontends) could not be programmed. The rest of the model
/// is programmed regardless; the Service is tried again at the next sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A map is full, or the write would overfill it.
    #[error("service {service} {frontend}: {source}")]
    Write {
        /// The Service.
        service: ServiceKey,
        /// The frontend.
        frontend: Frontend,
        /// What failed.
        #[source]
        source: WriteError,
    },
    /// More backends than slots.
    #[error(
        "service {service} {frontend}: {count} backends, more than the {MAX_BACKENDS} a frontend can have"
    )]
    TooManyBackends {
        /// The Service.
        service: ServiceKey,
        /// The frontend.
        frontend: Frontend,
        /// How many.
        count: usize,
    },
    /// Another Service holds the same address, port and protocol.
    #[error("service {service} {frontend}: already served by service {owner}")]
    Conflict {
        /// The Service that lost.
        service: ServiceKey,
        /// The frontend.
        frontend: Frontend,
        /// The Service that holds it.
        owner: ServiceKey,
    },
    /// Every rev-NAT id of the family is taken.
    #[error("service {service} {frontend}: no free rev-NAT id")]
    NoRevNatId {
        /// The Service.
        service: ServiceKey,
        /// The frontend.
        frontend: Frontend,
    },
}

impl SyncError {
    /// Every value [`SyncError::kind`] can take (the metric's series are
    /// created at zero, so `increase()` works from the first error).
    pub const KINDS: [&'static str; 5] = [
        "map_full",
        "kernel",
        "too_many_backends",
        "conflict",
        "no_rev_nat_id",
    ];

    /// A short label for metrics: one of [`SyncError::KINDS`].
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Write {
                source: WriteError::Full { .. },
                ..
            } => "map_full",
            SyncError::Write { .. } => "kernel",
            SyncError::TooManyBackends { .. } => "too_many_backends",
            SyncError::Conflict { .. } => "conflict",
            SyncError::NoRevNatId { .. } => "no_rev_nat_id",
        }
    }
}

impl SyncReport {
    /// The problems of this node this sync found, as Warning Events on its
    /// Node object report them: one per full map (however many Services it
    /// left unprogrammed), naming the flag that sizes it. Sorted; the same
    /// maps full give the same list, so a publisher can tell news apart.
    #[must_use]
    pub fn node_problems(&self, node: &str) -> Vec<Problem> {
        let mut full: BTreeMap<&'static str, u32> = BTreeMap::new();
        for error in &self.errors {
            if let SyncError::Write {
                source: WriteError::Full { table, capacity },
                ..
            } = error
            {
                let entry = full.entry(table.map_name()).or_default();
                *entry = (*entry).max(*capacity);
            }
        }
        full.into_iter()
            .map(|(map, capacity)| {
                let flag = fairlead_abi::maps::ALL
                    .iter()
                    .find(|spec| spec.name == map)
                    .and_then(|spec| spec.sizing.flag())
                    .map_or_else(String::new, |flag| format!("; raise {flag}"));
                Problem {
                    severity: Severity::Error,
                    origin: None,
                    object: Some(ObjectId {
                        kind: Kind::Node,
                        namespace: String::new(),
                        name: node.to_owned(),
                    }),
                    error: FieldError::new(
                        "",
                        format!(
                            "map {map} is full ({capacity} entries): Services are left \
                             unprogrammed on this node (the log names them){flag}"
                        ),
                    ),
                }
            })
            .collect()
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Whether every Service was compared (first sync, or the change log did not reach).
    pub full: bool,
    /// Services compared.
    pub services_compared: usize,
    /// Writes performed.
    pub writes: usize,
    /// Maglev tables computed (only for external frontends whose backends changed).
    pub maglev_tables: usize,
    /// CPU time of this thread spent deciding what to write (desired state, diff, plans).
    pub planning_cpu: Duration,
    /// CPU time of this thread spent writing (the `bpf()` calls, the mirror's bookkeeping).
    pub writing_cpu: Duration,
    /// What could not be programmed.
    pub errors: Vec<SyncError>,
    /// UDP backends removed from a frontend: (address, port). Connected UDP sockets to them
    /// are stale.
    pub removed_udp_backends: Vec<(IpAddr, u16)>,
    /// Backends removed from an external frontend: (family, backend id, the frontend's
    /// rev-NAT id). The per-packet path's conntrack entries that name them are stale.
    pub removed_external_backends: Vec<(Family, BackendId, RevNatId)>,
}

/// Counts of what is programmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Programmed_ {
    _p: (),
}

/// Sizes of what is programmed, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Services with at least one frontend.
    pub services: usize,
    /// Frontends.
    pub frontends: usize,
    /// Backend entries.
    pub backends: usize,
    /// Entries per table, in [`Table::ALL`] order.
    pub entries: [usize; Table::COUNT],
}

/// The one writer of the load-balancer tables.
#[derive(Debug)]
pub struct Reconciler {
    node_name: Option<String>,
    frontends: BTreeMap<Frontend, Programmed>,
    owners: HashMap<Frontend, ServiceKey>,
    by_service: HashMap<ServiceKey, BTreeSet<Frontend>>,
    contenders: BTreeMap<Frontend, BTreeSet<ServiceKey>>,
    failed: BTreeSet<ServiceKey>,
    /// Entries per table (what user space wrote or adopted).
    entries: [usize; Table::COUNT],
    /// Slots of the Maglev tables this reconciler computes.
    maglev_size: u32,
    used_backend_ids: HashSet<BackendId>,
    next_backend_id: BackendId,
    used_rev_nat: [HashSet<RevNatId>; 2],
    next_rev_nat: [RevNatId; 2],
    /// Entries found at adoption that belong to no frontend: deleted at the first full sync.
    orphans: Vec<Op>,
    applied: Option<u64>,
    /// Writes planned and not yet applied ([`Reconciler::flush`]).
    pending: Pending,
    /// Table sizes, read once per sync (each read is a syscall).
    capacity: [u32; Table::COUNT],
    /// The backends each frontend's Maglev table in the kernel was computed from: a table
    /// is computed again only when these change.
    maglev_inputs: HashMap<Frontend, Vec<MaglevBackend>>,
    /// Inputs of Maglev tables being written by the flush under way.
    maglev_staged: HashMap<Frontend, Vec<MaglevBackend>>,
    /// Maglev tables computed during the sync under way.
    maglev_computed: usize,
}

/// Writes planned for many frontends, applied together phase by phase ([`phase`]), so the
/// kernel maps take them in a few batched `bpf()` calls.
#[derive(Debug, Default)]
struct Pending {
    /// In planning order; each frontend's writes are already in the documented order.
    ops: Vec<(Frontend, Op)>,
    /// Frontends with writes here: planning one of them again needs a flush first (plans
    /// read the mirror, which only flushing updates).
    touched: HashSet<Frontend>,
    /// The Service of each upserted frontend, for errors.
    services: HashMap<Frontend, ServiceKey>,
    /// Frontends being removed: dropped from the mirror once empty.
    removed: Vec<Frontend>,
    /// New keys per table the writes add (deletes are not subtracted: they come last).
    adds: [usize; Table::COUNT],
    /// The backends of each Maglev table written here.
    maglev_inputs: HashMap<Frontend, Vec<MaglevBackend>>,
}

/// The phase of a write. Applying every pending write sorted by phase (stably) keeps each
/// frontend's own order (its plan is already sorted so) and across frontends puts every
/// addition before every count that may publish it, and every count that stops
/// publishing a slot before that slot's removal:
///
/// 0. backends, rev-NAT entries and source ranges; 1. backend slots and Maglev tables;
///    2. counts (slot 0: written or deleted); 3. slots above a count, Maglev tables and
///    source ranges of removed frontends; 4. backends and rev-NAT entries nothing lists.
///
/// Ids are never reused within one batch: an id is freed only once its delete is applied.
fn phase(op: &Op) -> u8 {
    match op {
        // Source ranges guard a frontend before its count lets the first packet in.
        Op::PutRevNat { .. } | Op::PutBackend { .. } | Op::PutSourceRange { .. } => 0,
        Op::PutService { slot: 0, .. } | Op::DeleteService { slot: 0, .. } => 2,
        // A Maglev table names backends (written in phase 0) and is read after the count.
        Op::PutService { .. } | Op::PutMaglev { .. } => 1,
        Op::DeleteService { .. } | Op::DeleteMaglev { .. } | Op::DeleteSourceRange { .. } => 3,
        Op::DeleteBackend { .. } | Op::DeleteRevNat { .. } => 4,
    }
}

/// Phases times tables: the buckets of [`by_phase`].
const BUCKETS: usize = 5 * Table::COUNT;

/// The bucket of a write in [`by_phase`]: its phase, then its table in the order one
/// frontend's plan has (rev-NAT before backends when adding, after them when deleting: the
/// rev-NAT entry goes last; then services, Maglev, source ranges).
fn bucket(op: &Op) -> usize {
    let rank = match (op.table(), op.is_put()) {
        (Table::RevNat4, true) | (Table::Backends4, false) => 0,
        (Table::RevNat6, true) | (Table::Backends6, false) => 1,
        (Table::Backends4, true) | (Table::RevNat4, false) => 2,
        (Table::Backends6, true) | (Table::RevNat6, false) => 3,
        (Table::Services4, _) => 4,
        (Table::Services6, _) => 5,
        (Table::Maglev, _) => 6,
        (Table::SourceRanges4, _) => 7,
        (Table::SourceRanges6, _) => 8,
    };
    usize::from(phase(op)) * Table::COUNT + rank
}

/// The pending writes ordered by [`phase`] and, within a phase, by table (stably: a
/// counting sort; the writes moved, not copied), split into the frontend of each write and
/// the writes. Writes of one phase commute across tables (a phase's writes depend only on
/// earlier phases), so grouping them by table makes each phase a few long runs: a few
/// `bpf()` batch calls instead of two per frontend.
fn by_phase(ops: Vec<(Frontend, Op)>) -> (Vec<Frontend>, Vec<Op>) {
    let mut starts = [0_usize; BUCKETS + 1];
    for (_, op) in &ops {
        starts[bucket(op) + 1] += 1;
    }
    for b in 1..=BUCKETS {
        starts[b] += starts[b - 1];
    }
    // Where each write goes, then the writes moved there in place (following each cycle
    // of the permutation): no second copy of them, whose fresh pages were most of this
    // function's time in the first sync at 10k Services.
    let mut dest: Vec<usize> = ops
        .iter()
        .map(|(_, op)| {
            let b = bucket(op);
            starts[b] += 1;
            starts[b] - 1
        })
        .collect();
    let mut ops = ops;
    for i in 0..ops.len() {
        while dest[i] != i {
            let j = dest[i];
            ops.swap(i, j);
            dest.swap(i, j);
        }
    }
    let mut owners = Vec::with_capacity(ops.len());
    let mut plain = Vec::with_capacity(ops.len());
    for (frontend, op) in ops {
        owners.push(frontend);
        plain.push(op);
    }
    (owners, plain)
}

/// CPU time of the calling thread (what a figure costs on a shared machine).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn fam(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn table_index(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
}

impl Reconciler {
    /// A reconciler for empty tables, for the node `node_name` (`internalTrafficPolicy:
    /// Local` keeps endpoints whose `nodeName` is this; without a name no endpoint is local).
    #[must_use]
    pub fn new(node_name: Option<String>) -> Self {
        Self {
            node_name,
            frontends: BTreeMap::new(),
            owners: HashMap::new(),
            by_service: HashMap::new(),
            contenders: BTreeMap::new(),
            failed: BTreeSet::new(),
            entries: [0; Table::COUNT],
            maglev_size: fairlead_abi::nodeport::MAGLEV_DEFAULT_SIZE,
            used_backend_ids: HashSet::new(),
            next_backend_id: 1,
            used_rev_nat: [HashSet::new(), HashSet::new()],
            next_rev_nat: [1, 1],
            orphans: Vec::new(),
            applied: None,
            pending: Pending::default(),
            capacity: [0; Table::COUNT],
            maglev_inputs: HashMap::new(),
            maglev_staged: HashMap::new(),
            maglev_computed: 0,
        }
    }

    /// Computes Maglev tables of `size` slots (a prime of
    /// [`fairlead_abi::nodeport::MAGLEV_SIZES`]) from now on.
    #[must_use]
    pub fn with_maglev_size(mut self, size: u32) -> Self {
        self.maglev_size = size;
        self
    }

    /// A reconciler that adopts what `maps` hold (pinned maps of an earlier run): frontends
    /// keep their rev-NAT and backend ids, and nothing is rewritten that the model still
    /// wants. What the model no longer wants is pruned at the first sync.
    pub fn adopt(node_name: Option<String>, maps: &impl LbMaps) -> Result<Self, crate::Error> {
        let mut this = Self::new(node_name);
        let contents = maps.contents()?;
        this.load(contents);
        Ok(this)
    }

    fn load(&mut self, contents: Contents) {
        let Contents {
            services,
            internal_services,
            backends,
            rev_nats,
            maglev,
            source_ranges,
        } = contents;
        // Service entries: group by frontend.
        for ((frontend, slot), value) in services {
            let programmed = self.frontends.entry(frontend).or_default();
            if slot == 0 {
                programmed.head = Some(value);
                programmed.rev_nat_id = value.rev_nat_id;
            } else {
                programmed.slots.insert(slot, value);
                if programmed.head.is_none() {
                    programmed.rev_nat_id = value.rev_nat_id;
                }
            }
            self.entries[table_index(Table::services(frontend.family()))] += 1;
        }
        for (frontend, slot) in internal_services {
            // fairlead writes no internal-scope entries; these are from another version.
            self.orphans.push(Op::DeleteService { frontend, slot });
        }
        let mut by_rev_nat: HashMap<(Family, RevNatId), Frontend> = HashMap::new();
        for (frontend, programmed) in &self.frontends {
            by_rev_nat.insert((frontend.family(), programmed.rev_nat_id), *frontend);
        }
        for ((family, id), (address, port)) in rev_nats {
            self.entries[table_index(Table::rev_nat(family))] += 1;
            match by_rev_nat.get(&(family, id)) {
                Some(frontend) if frontend.address == address && frontend.port == port => {
                    let programmed = self.frontends.get_mut(frontend).expect("indexed above");
                    programmed.rev_nat = Some((address, port));
                    self.used_rev_nat[fam(family)].insert(id);
                }
                _ => self.orphans.push(Op::DeleteRevNat { family, id }),
            }
        }
        for ((family, id), backend) in backends {
            self.entries[table_index(Table::backends(family))] += 1;
            self.used_backend_ids.insert(id);
            self.next_backend_id = self.next_backend_id.max(id.wrapping_add(1)).max(1);
            match by_rev_nat.get(&(family, backend.rev_nat_id)) {
                Some(frontend) => {
                    let programmed = self.frontends.get_mut(frontend).expect("indexed above");
                    programmed.backends.insert(id, backend);
                }
                None => self.orphans.push(Op::DeleteBackend { family, id }),
            }
        }
        for ((family, rev_nat_id), slots) in maglev {
            self.entries[table_index(Table::Maglev)] += 1;
            match by_rev_nat.get(&(family, rev_nat_id)) {
                Some(frontend) => {
                    let programmed = self.frontends.get_mut(frontend).expect("indexed above");
                    programmed.maglev = Some(slots);
                }
                None => self.orphans.push(Op::DeleteMaglev { family, rev_nat_id }),
            }
        }
        for (rev_nat_id, range) in source_ranges {
            let family = Family::of(&range.addr());
            self.entries[table_index(Table::source_ranges(family))] += 1;
            match by_rev_nat.get(&(family, rev_nat_id)) {
                Some(frontend) => {
                    let programmed = self.frontends.get_mut(frontend).expect("indexed above");
                    programmed.source_ranges.insert(range);
                }
                None => self
                    .orphans
                    .push(Op::DeleteSourceRange { rev_nat_id, range }),
            }
        }
        for (frontend, programmed) in &self.frontends {
            self.used_rev_nat[fam(frontend.family())].insert(programmed.rev_nat_id);
        }
        info!(
            frontends = self.frontends.len(),
            orphans = self.orphans.len(),
            "adopted the pinned load-balancer tables"
        );
    }

    /// Sizes of what is programmed.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            services: self.by_service.values().filter(|f| !f.is_empty()).count(),
            frontends: self.frontends.len(),
            backends: self.frontends.values().map(|p| p.backends.len()).sum(),
            entries: self.entries,
        }
    }

    /// The generation of the last snapshot applied.
    #[must_use]
    pub fn applied_generation(&self) -> Option<u64> {
        self.applied
    }

    /// Brings the tables to what `snapshot` asks for. Only Services that changed since the
    /// last sync are compared (all of them on the first sync, which also prunes what no
    /// Service claims). Failures are reported, logged and retried at the next sync; they
    /// never stop the rest.
    pub fn sync(&mut self, snapshot: &Snapshot, maps: &mut impl LbMaps) -> SyncReport {
        let mut report = SyncReport::default();
        let started = thread_cpu();
        self.capacity = Table::ALL.map(|t| maps.capacity(t));
        let changes = snapshot.changes_since(self.applied);
        let node_name = self.node_name.clone();
        let here = snapshot.locality(node_name.as_deref());
        let mut todo: BTreeSet<ServiceKey> = if changes.locality(here.node) {
            report.full = true;
            snapshot
                .services
                .keys()
                .cloned()
                .chain(self.by_service.keys().cloned())
                .collect()
        } else {
            changes.services().map(|(key, _)| key.clone()).collect()
        };
        todo.extend(std::mem::take(&mut self.failed));
        let mut done = BTreeSet::new();
        // Contenders of released frontends are queued again; each Service at most twice.
        let mut rounds = 0;
        while !todo.is_empty() && rounds < 2 {
            rounds += 1;
            let mut requeue = BTreeSet::new();
            for key in std::mem::take(&mut todo) {
                let service = snapshot.services.get(&key);
                let desired = service
                    .map(|s| desired_frontends(s, here))
                    .unwrap_or_default();
                report.services_compared += 1;
                self.sync_service(&key, desired, maps, &mut report, &mut requeue);
                done.insert(key);
            }
            self.flush(maps, &mut report);
            todo = requeue;
        }
        if report.full {
            self.prune(maps, &mut report);
        }
        for error in &report.errors {
            error!(error = %error, "load-balancer sync: could not program");
        }
        self.applied = Some(snapshot.generation);
        report.maglev_tables = std::mem::take(&mut self.maglev_computed);
        report.planning_cpu = thread_cpu()
            .saturating_sub(started)
            .saturating_sub(report.writing_cpu);
        report
    }

    fn sync_service(
        &mut self,
        key: &ServiceKey,
        desired: Vec<DesiredFrontend>,
        maps: &mut impl LbMaps,
        report: &mut SyncReport,
        requeue: &mut BTreeSet<ServiceKey>,
    ) {
        let wanted: BTreeSet<Frontend> = desired.iter().map(|d| d.frontend).collect();
        let held = self.by_service.remove(key).unwrap_or_default();
        for frontend in held.difference(&wanted) {
            if self.owners.get(frontend) == Some(key) {
                self.owners.remove(frontend);
                self.remove_frontend(*frontend, maps, report);
                if let Some(waiting) = self.contenders.remove(frontend) {
                    requeue.extend(waiting);
                }
            }
        }
        for waiting in self.contenders.values_mut() {
            waiting.remove(key);
        }
        self.contenders.retain(|_, w| !w.is_empty());
        let mut owned = BTreeSet::new();
        let mut failed = false;
        for d in desired {
            let frontend = d.frontend;
            if let Some(owner) = self.owners.get(&frontend)
                && owner != key
            {
                report.errors.push(SyncError::Conflict {
                    service: key.clone(),
                    frontend,
                    owner: owner.clone(),
                });
                self.contenders
                    .entry(frontend)
                    .or_default()
                    .insert(key.clone());
                continue;
            }
            self.owners.insert(frontend, key.clone());
            owned.insert(frontend);
            if let Err(e) = self.upsert_frontend(key, &d, maps, report) {
                report.errors.push(e);
                failed = true;
            }
        }
        if failed {
            self.failed.insert(key.clone());
        }
        if !owned.is_empty() {
            self.by_service.insert(key.clone(), owned);
        }
    }

    /// The writes that make `frontend` what `d` says, in the safe order.
    fn plan_upsert(&mut self, d: &DesiredFrontend) -> Result<Vec<Op>, ()> {
        let frontend = d.frontend;
        // Taken out of the mirror while planning (ids are allocated meanwhile), put back.
        let known = self.frontends.remove(&frontend);
        let exists = known.is_some();
        let current = known.unwrap_or_default();
        let planned = self.plan_against(d, exists, &current);
        if exists {
            self.frontends.insert(frontend, current);
        }
        planned
    }

    fn plan_against(
        &mut self,
        d: &DesiredFrontend,
        exists: bool,
        current: &Programmed,
    ) -> Result<Vec<Op>, ()> {
        let frontend = d.frontend;
        let family = frontend.family();
        let rev_nat_id = if exists && current.rev_nat_id != 0 {
            current.rev_nat_id
        } else {
            self.allocate_rev_nat(family).ok_or(())?
        };
        let mut ops = Vec::with_capacity(2 * d.backends.len() + 2);
        if current.rev_nat != Some((frontend.address, frontend.port)) {
            ops.push(Op::PutRevNat {
                id: rev_nat_id,
                frontend,
            });
        }
        let ids = self.plan_backends(d, current, rev_nat_id, &mut ops);
        let desired_ids: Vec<BackendId> = d
            .backends
            .iter()
            .map(|b| ids[&(b.address, b.port)])
            .collect();
        // Slots: ids that stay keep their slot; the others fill the gaps.
        let count = desired_ids.len();
        let fresh = current.slots.is_empty() && current.backends.is_empty();
        // Every backend the frontend keeps (slots and Maglev table): the others are deleted.
        let wanted: HashSet<BackendId> = if fresh {
            // A new frontend (the bulk of a first sync): nothing to keep in place.
            HashSet::new()
        } else {
            ids.values().copied().collect()
        };
        // Only the slots' own backends keep their slot: a backend that stays for the Maglev
        // table alone (an external Local frontend's local endpoint) must not hold a slot.
        let in_slots: HashSet<BackendId> = if fresh {
            HashSet::new()
        } else {
            desired_ids.iter().copied().collect()
        };
        let mut placed: HashSet<BackendId> = HashSet::new();
        let mut layout: Vec<Option<BackendId>> = vec![None; count];
        for (slot, value) in &current.slots {
            let index = usize::from(*slot) - 1;
            if index < count
                && in_slots.contains(&value.backend_id)
                && placed.insert(value.backend_id)
            {
                layout[index] = Some(value.backend_id);
            }
        }
        let mut rest = desired_ids.iter().filter(|id| !placed.contains(id));
        for cell in &mut layout {
            if cell.is_none() {
                *cell = rest.next().copied();
            }
        }
        for (index, id) in layout.iter().enumerate() {
            let slot = u16::try_from(index + 1).map_err(|_| ())?;
            let value = ServiceValue::backend(id.unwrap_or(0), rev_nat_id);
            if current.slots.get(&slot) != Some(&value) {
                ops.push(Op::PutService {
                    frontend,
                    slot,
                    value,
                });
            }
        }
        // The Maglev table and the source ranges before the head that turns them on.
        let family_maglev = self.plan_external(d, &ids, current, rev_nat_id, &mut ops);
        let count16 = u16::try_from(count).map_err(|_| ())?;
        let head = ServiceValue::service(count16, rev_nat_id, d.flags, d.affinity_timeout_secs);
        if current.head != Some(head) {
            ops.push(Op::PutService {
                frontend,
                slot: 0,
                value: head,
            });
        }
        let kept_ranges: BTreeSet<IpNet> = family_maglev
            .map(|e| e.source_ranges.iter().copied().collect())
            .unwrap_or_default();
        for range in current.source_ranges.difference(&kept_ranges) {
            ops.push(Op::DeleteSourceRange {
                rev_nat_id,
                range: *range,
            });
        }
        if d.external.is_none() && current.maglev.is_some() {
            ops.push(Op::DeleteMaglev { family, rev_nat_id });
        }
        for slot in current.slots.keys().filter(|s| usize::from(**s) > count) {
            ops.push(Op::DeleteService {
                frontend,
                slot: *slot,
            });
        }
        for id in current.backends.keys().filter(|id| !wanted.contains(id)) {
            ops.push(Op::DeleteBackend { family, id: *id });
        }
        Ok(ops)
    }

    /// Backend ids of every backend the slots or the Maglev table list (the same endpoint
    /// keeps its id), and the backend writes.
    fn plan_backends(
        &mut self,
        d: &DesiredFrontend,
        current: &Programmed,
        rev_nat_id: RevNatId,
        ops: &mut Vec<Op>,
    ) -> HashMap<(IpAddr, u16), BackendId> {
        let frontend = d.frontend;
        // Backend ids: the same (address, port) keeps its id.
        let mut by_endpoint: HashMap<(IpAddr, u16), BackendId> = current
            .backends
            .iter()
            .filter(|(_, b)| b.rev_nat_id == rev_nat_id)
            .map(|(id, b)| ((b.address, b.port), *id))
            .collect();
        // Every backend the slots or the Maglev table list, once.
        let external_backends: &[DesiredBackend] = d.external.as_ref().map_or(&[], |e| &e.backends);
        let mut ids: HashMap<(IpAddr, u16), BackendId> = HashMap::new();
        for b in d.backends.iter().chain(external_backends) {
            if ids.contains_key(&(b.address, b.port)) {
                continue;
            }
            let id = match by_endpoint.remove(&(b.address, b.port)) {
                Some(id) => id,
                None => self.allocate_backend_id(),
            };
            let entry = BackendEntry {
                address: b.address,
                port: b.port,
                protocol: frontend.protocol,
                state: b.state,
                rev_nat_id,
                flags: if b.local { BACKEND_FLAG_LOCAL } else { 0 },
            };
            if current.backends.get(&id) != Some(&entry) {
                ops.push(Op::PutBackend { id, backend: entry });
            }
            ids.insert((b.address, b.port), id);
        }
        ids
    }

    /// The Maglev table and the new source ranges of an external frontend. The table is
    /// computed only when its backends differ from those of the table the kernel holds.
    fn plan_external<'d>(
        &mut self,
        d: &'d DesiredFrontend,
        ids: &HashMap<(IpAddr, u16), BackendId>,
        current: &Programmed,
        rev_nat_id: RevNatId,
        ops: &mut Vec<Op>,
    ) -> Option<&'d crate::desired::ExternalView> {
        let external = d.external.as_ref()?;
        let members: Vec<MaglevBackend> = external
            .backends
            .iter()
            .map(|b| MaglevBackend {
                address: b.address,
                port: b.port,
                id: ids[&(b.address, b.port)],
            })
            .collect();
        let unchanged =
            current.maglev.is_some() && self.maglev_inputs.get(&d.frontend) == Some(&members);
        if !unchanged {
            self.maglev_computed += 1;
            let slots: Arc<[BackendId]> = maglev::table(&members, self.maglev_size).into();
            if current.maglev.as_deref() == Some(&*slots) {
                // Adopted (or equal by chance): the kernel's table is this one.
                self.maglev_inputs.insert(d.frontend, members);
            } else {
                ops.push(Op::PutMaglev {
                    family: d.frontend.family(),
                    rev_nat_id,
                    slots,
                });
                self.pending.maglev_inputs.insert(d.frontend, members);
            }
        }
        for range in &external.source_ranges {
            if !current.source_ranges.contains(range) {
                ops.push(Op::PutSourceRange {
                    rev_nat_id,
                    range: *range,
                });
            }
        }
        Some(external)
    }

    fn upsert_frontend(
        &mut self,
        service: &ServiceKey,
        d: &DesiredFrontend,
        maps: &mut impl LbMaps,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let frontend = d.frontend;
        if d.backends.len() >= MAX_BACKENDS {
            return Err(SyncError::TooManyBackends {
                service: service.clone(),
                frontend,
                count: d.backends.len(),
            });
        }
        if self.pending.touched.contains(&frontend) {
            self.flush(maps, report);
        }
        let ops = self.plan_upsert(d).map_err(|()| SyncError::NoRevNatId {
            service: service.clone(),
            frontend,
        })?;
        if ops.is_empty() {
            return Ok(());
        }
        // Make sure the whole change fits before writing any of it: additions come first,
        // so the peak is today's entries plus every new key.
        let mut adds = [0_usize; Table::COUNT];
        let current = self.frontends.get(&frontend);
        for op in &ops {
            let new_key = match op {
                Op::PutService { slot, .. } => current.is_none_or(|c| {
                    !(if *slot == 0 {
                        c.head.is_some()
                    } else {
                        c.slots.contains_key(slot)
                    })
                }),
                Op::PutBackend { id, .. } => current.is_none_or(|c| !c.backends.contains_key(id)),
                Op::PutRevNat { .. } => current.is_none_or(|c| c.rev_nat.is_none()),
                Op::PutMaglev { .. } => current.is_none_or(|c| c.maglev.is_none()),
                Op::PutSourceRange { range, .. } => {
                    current.is_none_or(|c| !c.source_ranges.contains(range))
                }
                _ => false,
            };
            if new_key {
                adds[table_index(op.table())] += 1;
            }
        }
        let fits = |this: &Self| -> Option<(Table, u32)> {
            Table::ALL.into_iter().find_map(|table| {
                let i = table_index(table);
                let capacity = this.capacity[i];
                (this.entries[i] + this.pending.adds[i] + adds[i] > capacity as usize)
                    .then_some((table, capacity))
            })
        };
        // Pending deletes of other frontends may make room, but they are applied after
        // every pending addition: apply them first, then look again.
        let mut full = fits(self);
        if full.is_some() && !self.pending.ops.is_empty() {
            self.flush(maps, report);
            full = fits(self);
        }
        if let Some((table, capacity)) = full {
            {
                // Ids allocated for this plan are released: nothing was written.
                self.release_unwritten(&frontend, &ops);
                return Err(SyncError::Write {
                    service: service.clone(),
                    frontend,
                    source: WriteError::Full { table, capacity },
                });
            }
        }
        debug!(service = %service, frontend = %frontend, writes = ops.len(), "programming frontend");
        self.frontends.entry(frontend).or_default();
        for (pending, add) in self.pending.adds.iter_mut().zip(adds) {
            *pending += add;
        }
        self.pending.touched.insert(frontend);
        self.pending.services.insert(frontend, service.clone());
        self.pending
            .ops
            .extend(ops.into_iter().map(|op| (frontend, op)));
        Ok(())
    }

    /// Applies every pending write, phase by phase ([`phase`]), and updates the mirror
    /// with what was written. A write that fails stops the rest of its frontend's writes
    /// (so its count never publishes what is missing); the others go on.
    fn flush(&mut self, maps: &mut impl LbMaps, report: &mut SyncReport) {
        let started = thread_cpu();
        let mut pending = std::mem::take(&mut self.pending);
        self.maglev_staged = std::mem::take(&mut pending.maglev_inputs);
        let (owners, plain) = by_phase(pending.ops);
        let mut failed: HashSet<Frontend> = HashSet::new();
        let mut i = 0;
        while i < plain.len() {
            if failed.contains(&owners[i]) {
                i += 1;
                continue;
            }
            let end = if failed.is_empty() {
                plain.len()
            } else {
                (i..plain.len())
                    .find(|&j| failed.contains(&owners[j]))
                    .unwrap_or(plain.len())
            };
            let (done, result) = maps.apply_all(&plain[i..end]);
            let mut k = i;
            while k < i + done {
                let frontend = owners[k];
                let end = (k..i + done)
                    .find(|&j| owners[j] != frontend)
                    .unwrap_or(i + done);
                self.applied(frontend, &plain[k..end], report);
                k = end;
            }
            i += done;
            if let Err(source) = result {
                let frontend = owners[i];
                failed.insert(frontend);
                if let Some(service) = pending.services.get(&frontend) {
                    self.failed.insert(service.clone());
                    report.errors.push(SyncError::Write {
                        service: service.clone(),
                        frontend,
                        source,
                    });
                } else {
                    warn!(frontend = %frontend, error = %source, "deleting a frontend failed; retrying at the next full sync");
                }
                i += 1;
            }
        }
        for frontend in &failed {
            let planned: Vec<Op> = owners
                .iter()
                .zip(&plain)
                .filter(|(f, _)| *f == frontend)
                .map(|(_, op)| op.clone())
                .collect();
            self.release_unwritten(frontend, &planned);
        }
        for frontend in pending.removed {
            if let Some(p) = self.frontends.get(&frontend)
                && p.head.is_none()
                && p.slots.is_empty()
                && p.backends.is_empty()
                && p.rev_nat.is_none()
                && p.maglev.is_none()
                && p.source_ranges.is_empty()
            {
                self.used_rev_nat[fam(frontend.family())].remove(&p.rev_nat_id);
                self.frontends.remove(&frontend);
            }
        }
        self.maglev_staged.clear();
        report.writing_cpu += thread_cpu().saturating_sub(started);
    }

    /// Bookkeeping of writes the kernel took, all of `frontend`.
    fn applied(&mut self, frontend: Frontend, ops: &[Op], report: &mut SyncReport) {
        report.writes += ops.len();
        if let Some(p) = self.frontends.get(&frontend)
            && (p.maglev.is_some()
                || p.head
                    .is_some_and(|h| h.has_flag(ServiceValue::FLAG_EXTERNAL)))
        {
            for op in ops {
                if let Op::DeleteBackend { family, id } = op
                    && p.backends.contains_key(id)
                {
                    report
                        .removed_external_backends
                        .push((*family, *id, p.rev_nat_id));
                }
            }
        }
        if frontend.protocol == fairlead_abi::Protocol::Udp.raw()
            && let Some(p) = self.frontends.get(&frontend)
        {
            for op in ops {
                if let Op::DeleteBackend { id, .. } = op
                    && let Some(b) = p.backends.get(id)
                {
                    report.removed_udp_backends.push((b.address, b.port));
                }
            }
        }
        self.record(frontend, ops);
    }

    /// Deletes a frontend: its service entry first (new connections pass untouched), then
    /// its slots, its backends and its rev-NAT entry.
    fn remove_frontend(
        &mut self,
        frontend: Frontend,
        maps: &mut impl LbMaps,
        report: &mut SyncReport,
    ) {
        if self.pending.touched.contains(&frontend) {
            self.flush(maps, report);
        }
        let Some(current) = self.frontends.get(&frontend) else {
            return;
        };
        let family = frontend.family();
        let mut ops = Vec::with_capacity(current.slots.len() + current.backends.len() + 2);
        if current.head.is_some() {
            ops.push(Op::DeleteService { frontend, slot: 0 });
        }
        for slot in current.slots.keys() {
            ops.push(Op::DeleteService {
                frontend,
                slot: *slot,
            });
        }
        if current.maglev.is_some() {
            ops.push(Op::DeleteMaglev {
                family,
                rev_nat_id: current.rev_nat_id,
            });
        }
        for range in &current.source_ranges {
            ops.push(Op::DeleteSourceRange {
                rev_nat_id: current.rev_nat_id,
                range: *range,
            });
        }
        for id in current.backends.keys() {
            ops.push(Op::DeleteBackend { family, id: *id });
        }
        if current.rev_nat.is_some() {
            ops.push(Op::DeleteRevNat {
                family,
                id: current.rev_nat_id,
            });
        }
        self.pending.touched.insert(frontend);
        self.pending.removed.push(frontend);
        self.pending
            .ops
            .extend(ops.into_iter().map(|op| (frontend, op)));
    }

    /// Updates the mirror after successful writes, all of `frontend`.
    fn record(&mut self, frontend: Frontend, ops: &[Op]) {
        let p = self.frontends.entry(frontend).or_default();
        for op in ops {
            let table = table_index(op.table());
            let (added, removed) = match op.clone() {
                Op::PutService { slot: 0, value, .. } => {
                    p.rev_nat_id = value.rev_nat_id;
                    (p.head.replace(value).is_none(), false)
                }
                Op::PutService { slot, value, .. } => {
                    (p.slots.insert(slot, value).is_none(), false)
                }
                Op::DeleteService { slot: 0, .. } => (false, p.head.take().is_some()),
                Op::DeleteService { slot, .. } => (false, p.slots.remove(&slot).is_some()),
                Op::PutBackend { id, backend } => {
                    // Allocation already marked the id used.
                    (p.backends.insert(id, backend).is_none(), false)
                }
                Op::DeleteBackend { id, .. } => {
                    let removed = p.backends.remove(&id).is_some();
                    self.used_backend_ids.remove(&id);
                    (false, removed)
                }
                Op::PutRevNat { id, frontend } => {
                    p.rev_nat_id = id;
                    (
                        p.rev_nat
                            .replace((frontend.address, frontend.port))
                            .is_none(),
                        false,
                    )
                }
                Op::DeleteRevNat { .. } => (false, p.rev_nat.take().is_some()),
                Op::PutMaglev { slots, .. } => {
                    match self.maglev_staged.remove(&frontend) {
                        Some(members) => self.maglev_inputs.insert(frontend, members),
                        None => self.maglev_inputs.remove(&frontend),
                    };
                    (p.maglev.replace(slots).is_none(), false)
                }
                Op::DeleteMaglev { .. } => {
                    self.maglev_inputs.remove(&frontend);
                    (false, p.maglev.take().is_some())
                }
                Op::PutSourceRange { range, .. } => (p.source_ranges.insert(range), false),
                Op::DeleteSourceRange { range, .. } => (false, p.source_ranges.remove(&range)),
            };
            if added {
                self.entries[table] += 1;
            }
            if removed {
                self.entries[table] = self.entries[table].saturating_sub(1);
            }
        }
    }

    /// Deletes adopted frontends no Service claimed, and orphan entries.
    fn prune(&mut self, maps: &mut impl LbMaps, report: &mut SyncReport) {
        let unowned: Vec<Frontend> = self
            .frontends
            .keys()
            .filter(|f| !self.owners.contains_key(f))
            .copied()
            .collect();
        if !unowned.is_empty() {
            info!(
                frontends = unowned.len(),
                "pruning frontends no Service claims"
            );
        }
        for frontend in unowned {
            self.remove_frontend(frontend, maps, report);
        }
        self.flush(maps, report);
        for op in std::mem::take(&mut self.orphans) {
            match maps.apply(&op) {
                Ok(()) => {
                    report.writes += 1;
                    let table = table_index(op.table());
                    self.entries[table] = self.entries[table].saturating_sub(1);
                    if let Op::DeleteBackend { id, .. } = op {
                        self.used_backend_ids.remove(&id);
                    }
                }
                Err(e) => warn!(error = %e, "pruning an orphan entry failed"),
            }
        }
    }

    fn release_unwritten(&mut self, frontend: &Frontend, ops: &[Op]) {
        let current = self.frontends.get(frontend);
        for op in ops {
            match op {
                Op::PutRevNat { id, frontend } if current.is_none_or(|c| c.rev_nat.is_none()) => {
                    self.used_rev_nat[fam(frontend.family())].remove(id);
                }
                Op::PutBackend { id, .. }
                    if current.is_none_or(|c| !c.backends.contains_key(id)) =>
                {
                    self.used_backend_ids.remove(id);
                }
                _ => {}
            }
        }
    }

    fn allocate_backend_id(&mut self) -> BackendId {
        loop {
            let id = self.next_backend_id;
            self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
            if id != 0 && self.used_backend_ids.insert(id) {
                return id;
            }
        }
    }

    fn allocate_rev_nat(&mut self, family: Family) -> Option<RevNatId> {
        let i = fam(family);
        let used = &mut self.used_rev_nat[i];
        if used.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_rev_nat[i];
            self.next_rev_nat[i] = self.next_rev_nat[i].wrapping_add(1).max(1);
            if id != 0 && used.insert(id) {
                return Some(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use fairlead_model::{Change, Kind, ModelWriter, Snapshot, decode};

    use super::Reconciler;
    use crate::status::render_contents;
    use crate::tables::{Family, LbMaps, MemoryMaps, Op, Table};

    fn changes(yaml: &str) -> Vec<Change> {
        serde_norway::Deserializer::from_str(yaml)
            .map(|doc| {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
                Change::Upsert {
                    object: decode(value).expect("object"),
                    origin: None,
                }
            })
            .collect()
    }

    fn service(name: &str, vip: &str, endpoints: &[&str]) -> String {
        let eps: String = endpoints.iter().fold(String::new(), |mut out, ip| {
            out.push_str("  - addresses: [");
            out.push_str(ip);
            out.push_str("]\n");
            out
        });
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  clusterIP: {vip}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints:\n{eps}"
        )
    }

    /// `count` Services `s0`, `s1`, ... with ClusterIPs 10.96.0.1, ... and two endpoints each.
    fn numbered_services(count: usize) -> String {
        let yaml: Vec<String> = (0..count)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &format!("10.96.0.{}", i + 1),
                    &["10.0.0.1", "10.0.0.2"],
                )
            })
            .collect();
        yaml.join("\n---\n")
    }

    fn delete_service(w: &mut ModelWriter, name: &str) {
        w.apply([Change::Delete(fairlead_model::ObjectId {
            kind: fairlead_model::Kind::Service,
            namespace: "ns".into(),
            name: name.into(),
        })]);
    }

    fn model(yaml: &str) -> (ModelWriter, Arc<Snapshot>) {
        let (mut writer, _rx) = ModelWriter::new();
        writer.replace_all(changes(yaml), Vec::new(), true);
        let snapshot = writer.snapshot();
        (writer, snapshot)
    }

    #[test]
    fn a_second_sync_writes_nothing() {
        let (_w, snapshot) = model(&service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        let first = r.sync(&snapshot, &mut maps);
        assert!(first.full && first.writes == 6, "{first:?}");
        let before = render_contents(&maps.contents().unwrap());
        let mut r2_maps = maps.clone();
        let again = r.sync(&snapshot, &mut r2_maps);
        assert_eq!((again.writes, again.services_compared), (0, 0));
        assert_eq!(render_contents(&r2_maps.contents().unwrap()), before);
    }

    /// Backends and rev-NAT before slots, slots before the count; when shrinking, the count
    /// before the slots it no longer covers, and backends last.
    #[test]
    fn writes_follow_the_documented_order() {
        let (mut w, snapshot) = model(&service("a", "10.96.0.1", &["10.0.0.1"]));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        r.sync(&snapshot, &mut maps);
        let kinds = |log: &[Op]| -> Vec<&'static str> {
            log.iter()
                .map(|op| match op {
                    Op::PutRevNat { .. } => "revnat",
                    Op::PutBackend { .. } => "backend",
                    Op::PutService { slot: 0, .. } => "count",
                    Op::PutService { .. } => "slot",
                    Op::DeleteService { slot: 0, .. } => "del-count",
                    Op::DeleteService { .. } => "del-slot",
                    Op::DeleteBackend { .. } => "del-backend",
                    Op::DeleteRevNat { .. } => "del-revnat",
                    Op::PutMaglev { .. } => "maglev",
                    Op::DeleteMaglev { .. } => "del-maglev",
                    Op::PutSourceRange { .. } => "range",
                    Op::DeleteSourceRange { .. } => "del-range",
                })
                .collect()
        };
        assert_eq!(kinds(&maps.log), ["revnat", "backend", "slot", "count"]);

        maps.log.clear();
        w.apply(changes(&service(
            "a",
            "10.96.0.1",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        )));
        r.sync(&w.snapshot(), &mut maps);
        assert_eq!(
            kinds(&maps.log),
            ["backend", "backend", "slot", "slot", "count"]
        );

        maps.log.clear();
        w.apply(changes(&service("a", "10.96.0.1", &["10.0.0.3"])));
        r.sync(&w.snapshot(), &mut maps);
        // 10.0.0.3 moves into slot 1, then the count drops, then slots 2..3 and the two
        // backends go.
        assert_eq!(
            kinds(&maps.log),
            [
                "slot",
                "count",
                "del-slot",
                "del-slot",
                "del-backend",
                "del-backend"
            ]
        );

        maps.log.clear();
        delete_service(&mut w, "a");
        r.sync(&w.snapshot(), &mut maps);
        assert_eq!(
            kinds(&maps.log),
            ["del-count", "del-slot", "del-backend", "del-revnat"]
        );
        assert_eq!(maps.contents().unwrap(), crate::tables::Contents::default());
    }

    /// Many frontends in one sync: every addition of every frontend before any backend
    /// slot, every slot before any count; when one Service goes and another shrinks in the
    /// same sync, every count before the slots and backends it stops listing.
    #[test]
    fn a_sync_applies_its_writes_phase_by_phase() {
        let (mut w, snapshot) = model(&numbered_services(20));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        r.sync(&snapshot, &mut maps);
        let phases: Vec<u8> = maps.log.iter().map(super::phase).collect();
        assert!(phases.is_sorted(), "{:?}", maps.log);
        assert_eq!(maps.log.len(), 20 * 6);
        assert!(matches!(
            maps.log[0],
            Op::PutRevNat { .. } | Op::PutBackend { .. }
        ));

        maps.log.clear();
        w.apply(changes(&service("s3", "10.96.0.4", &["10.0.0.2"])));
        delete_service(&mut w, "s5");
        r.sync(&w.snapshot(), &mut maps);
        let phases: Vec<u8> = maps.log.iter().map(super::phase).collect();
        assert!(phases.is_sorted(), "{:?}", maps.log);
        assert!(
            maps.log
                .iter()
                .any(|op| matches!(op, Op::DeleteRevNat { .. }))
        );
    }

    /// `by_phase` is a stable sort by bucket: the writes of two syncs (adds, then removals
    /// and changes), each tagged with its place, shuffled, come out as a stable sort puts
    /// them, each with its own frontend.
    #[test]
    fn by_phase_is_a_stable_sort_by_bucket() {
        let (mut w, snapshot) = model(&numbered_services(12));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        r.sync(&snapshot, &mut maps);
        w.apply(changes(&service("s3", "10.96.0.4", &["10.0.0.3"])));
        delete_service(&mut w, "s5");
        r.sync(&w.snapshot(), &mut maps);
        let mut ops: Vec<(crate::tables::Frontend, Op)> = maps
            .log
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let tag = crate::tables::Frontend {
                    address: std::net::IpAddr::from([10, 0, 0, u8::try_from(i % 250).unwrap()]),
                    port: u16::try_from(i).unwrap(),
                    protocol: 6,
                };
                (tag, op.clone())
            })
            .collect();
        assert!(ops.len() > 80, "{}", ops.len());
        // A fixed shuffle (an LCG), so that the input is in no bucket order.
        let mut x: u64 = 7;
        for i in (1..ops.len()).rev() {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ops.swap(i, usize::try_from(x >> 33).unwrap() % (i + 1));
        }
        let mut expected = ops.clone();
        expected.sort_by_key(|(_, op)| super::bucket(op));
        let (owners, plain) = super::by_phase(ops);
        let got: Vec<(crate::tables::Frontend, Op)> = owners.into_iter().zip(plain).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn ids_are_stable_and_slots_stay_put() {
        let (mut w, snapshot) = model(&service(
            "a",
            "10.96.0.1",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        ));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        r.sync(&snapshot, &mut maps);
        let before = maps.contents().unwrap();
        w.apply(changes(&service(
            "a",
            "10.96.0.1",
            &["10.0.0.1", "10.0.0.3", "10.0.0.4"],
        )));
        maps.log.clear();
        let report = r.sync(&w.snapshot(), &mut maps);
        let after = maps.contents().unwrap();
        // Slot 1 (10.0.0.1) and slot 3 (10.0.0.3) are untouched; slot 2 gets the new one.
        for slot in [1, 3] {
            let key = before.services.keys().find(|(_, s)| *s == slot).unwrap();
            assert_eq!(before.services[key], after.services[key]);
        }
        assert_eq!(report.writes, 3, "{:?}", maps.log); // backend, slot 2, delete old backend
        let rev: BTreeSet<_> = after.rev_nats.keys().collect();
        assert_eq!(rev, before.rev_nats.keys().collect());
    }

    #[test]
    fn adoption_keeps_ids_and_rewrites_nothing_then_prunes_the_rest() {
        let yaml = format!(
            "{}\n---\n{}",
            service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]),
            service("b", "10.96.0.2", &["10.0.1.1"])
        );
        let (_w, snapshot) = model(&yaml);
        let mut maps = MemoryMaps::new();
        Reconciler::new(None).sync(&snapshot, &mut maps);
        let programmed = maps.contents().unwrap();

        // A restart with the same model: nothing is written.
        let mut adopted = Reconciler::adopt(None, &maps).unwrap();
        maps.log.clear();
        let report = adopted.sync(&snapshot, &mut maps);
        assert_eq!(report.writes, 0, "{:?}", maps.log);
        assert_eq!(maps.contents().unwrap(), programmed);

        // A restart with b gone from the model: b is pruned, a untouched; a new service gets
        // ids that do not collide with the adopted ones.
        let yaml = format!(
            "{}\n---\n{}",
            service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]),
            service("c", "10.96.0.3", &["10.0.2.1"])
        );
        let (_w, snapshot) = model(&yaml);
        let mut adopted = Reconciler::adopt(None, &maps).unwrap();
        adopted.sync(&snapshot, &mut maps);
        let text = render_contents(&maps.contents().unwrap());
        assert!(!text.contains("10.96.0.2"), "{text}");
        assert!(text.contains("10.96.0.3:80/tcp  rev-nat 3"), "{text}");
        assert!(
            text.contains("10.0.2.1:8080                            active       id 4"),
            "{text}"
        );
    }

    #[test]
    fn one_changed_service_costs_one_comparison() {
        let yaml: Vec<String> = (0..500)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &format!("10.96.{}.{}", i / 250, i % 250 + 1),
                    &["10.0.0.1"],
                )
            })
            .collect();
        let (mut w, snapshot) = model(&yaml.join("\n---\n"));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        assert_eq!(r.sync(&snapshot, &mut maps).services_compared, 500);
        w.apply(changes(&service(
            "s7",
            "10.96.0.8",
            &["10.0.0.1", "10.0.0.9"],
        )));
        let report = r.sync(&w.snapshot(), &mut maps);
        assert!(!report.full);
        assert_eq!((report.services_compared, report.writes), (1, 3));
    }

    #[test]
    fn a_full_map_is_an_error_for_that_service_only() {
        let yaml = format!(
            "{}\n---\n{}",
            service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]),
            service(
                "big",
                "10.96.0.2",
                &["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"]
            )
        );
        let (mut w, snapshot) = model(&yaml);
        let mut maps = MemoryMaps::new().with_capacity(Table::Backends4, 4);
        let mut r = Reconciler::new(None);
        let report = r.sync(&snapshot, &mut maps);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].kind(), "map_full");
        let message = report.errors[0].to_string();
        assert!(
            message.contains("ns/big") && message.contains("fl_lb4_backends is full"),
            "{message}"
        );
        // One problem for the node's Event: the map, its size, the flag.
        let problems = report.node_problems("node-a");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let object = problems[0].object.as_ref().unwrap();
        assert_eq!((object.kind, object.name.as_str()), (Kind::Node, "node-a"));
        assert_eq!(
            problems[0].error.message,
            "map fl_lb4_backends is full (4 entries): Services are left unprogrammed on this \
             node (the log names them); raise --map-backends"
        );
        // a is programmed; nothing of big was written.
        let text = render_contents(&maps.contents().unwrap());
        assert!(text.contains("10.96.0.1:80/tcp"), "{text}");
        assert!(!text.contains("10.96.0.2"), "{text}");
        assert_eq!(maps.len(Table::Backends4), 2);
        // Once a shrinks, big fits at the next sync (it is retried).
        w.apply(changes(&service("a", "10.96.0.1", &[])));
        let report = r.sync(&w.snapshot(), &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.node_problems("node-a").is_empty());
        assert_eq!(maps.len(Table::Backends4), 4);
        let _ = Family::V4;
    }

    #[test]
    fn a_conflicting_service_takes_over_when_the_owner_goes() {
        let yaml = format!(
            "{}\n---\n{}",
            service("a", "10.96.0.1", &["10.0.0.1"]),
            service("b", "10.96.0.1", &["10.0.0.2"])
        );
        let (mut w, snapshot) = model(&yaml);
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        let report = r.sync(&snapshot, &mut maps);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].kind(), "conflict");
        assert!(render_contents(&maps.contents().unwrap()).contains("10.0.0.1:8080"));
        delete_service(&mut w, "a");
        let report = r.sync(&w.snapshot(), &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let text = render_contents(&maps.contents().unwrap());
        assert!(
            text.contains("10.0.0.2:8080") && !text.contains("10.0.0.1:8080"),
            "{text}"
        );
    }

    #[test]
    fn five_thousand_endpoints_fit() {
        let endpoints: Vec<String> = (0..5000)
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let refs: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let (_w, snapshot) = model(&service("huge", "10.96.0.1", &refs));
        let mut maps = MemoryMaps::new();
        let report = Reconciler::new(None).sync(&snapshot, &mut maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(maps.len(Table::Backends4), 5000);
        assert_eq!(maps.len(Table::Services4), 5001);
    }

    fn node_port_service(affinity: bool, endpoints: &[&str]) -> String {
        let affinity = if affinity {
            "  sessionAffinity: ClientIP\n"
        } else {
            ""
        };
        service("np", "10.96.0.1", endpoints)
            .replacen(
                "  clusterIP: 10.96.0.1\n",
                &format!("  type: NodePort\n{affinity}  clusterIP: 10.96.0.1\n"),
                1,
            )
            .replacen("targetPort: 8080}", "targetPort: 8080, nodePort: 30080}", 1)
    }

    /// A Maglev table is computed for external frontends only, and again only when their
    /// backends change.
    #[test]
    fn maglev_tables_are_computed_only_when_backends_change() {
        let (mut w, snapshot) = model(&format!(
            "{}\n---\n{}",
            node_port_service(false, &["10.0.0.1", "10.0.0.2"]),
            service("plain", "10.96.0.2", &["10.0.0.3"])
        ));
        let mut maps = MemoryMaps::new();
        let mut r = Reconciler::new(None);
        let first = r.sync(&snapshot, &mut maps);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        // One external frontend (the NodePort); the ClusterIPs have none.
        assert_eq!(first.maglev_tables, 1);
        assert_eq!(maps.len(Table::Maglev), 1);
        // The frontend changes (affinity), its backends do not: no table is computed.
        w.apply(changes(&node_port_service(true, &["10.0.0.1", "10.0.0.2"])));
        let report = r.sync(&w.snapshot(), &mut maps);
        assert!(
            report.writes > 0 && report.services_compared == 1,
            "{report:?}"
        );
        assert_eq!(report.maglev_tables, 0);
        // A backend goes: the table is computed and written again.
        maps.log.clear();
        w.apply(changes(&node_port_service(true, &["10.0.0.1"])));
        let report = r.sync(&w.snapshot(), &mut maps);
        assert_eq!(report.maglev_tables, 1);
        assert!(maps.log.iter().any(|op| matches!(op, Op::PutMaglev { .. })));
        // A restart adopts the table and does not rewrite it.
        let mut adopted = Reconciler::adopt(None, &maps).unwrap();
        maps.log.clear();
        let report = adopted.sync(&w.snapshot(), &mut maps);
        assert_eq!(
            (report.writes, report.maglev_tables),
            (0, 1),
            "{:?}",
            maps.log
        );
    }
}
