//! What the load-balancer maps hold, for people: services → backends with their states,
//! map fill levels and the datapath counters — `fairlead status` (a table, or `--json`).
//! The same rendering of [`Contents`] is what the golden tests compare.

use std::fmt::{self, Write as _};

use fairlead_abi::{Protocol, Reason, ServiceValue, maps};
use serde::Serialize;

use crate::Error;
use crate::kernel::PinnedMaps;
use crate::tables::Contents;

/// One frontend and its backends, as programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendStatus {
    /// `address:port/protocol`.
    pub frontend: String,
    /// The virtual address.
    pub address: String,
    /// The port.
    pub port: u16,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
    /// Rev-NAT id.
    pub rev_nat_id: u16,
    /// Backend slots published (slot 0's count); 0 refuses connections.
    pub count: u16,
    /// Flags of slot 0 (`affinity`, `local-only`, `terminating-fallback`, `two-scopes`).
    pub flags: Vec<&'static str>,
    /// Session-affinity timeout, seconds (0 without affinity).
    pub affinity_timeout_secs: u32,
    /// The slots in order.
    pub backends: Vec<BackendStatus>,
    /// External frontends: the Maglev table (size, slots per backend id).
    pub maglev: Option<MaglevStatus>,
    /// External frontends: `loadBalancerSourceRanges` enforced (empty: everyone).
    pub source_ranges: Vec<String>,
    /// Inconsistencies (a slot without backend, ...); empty when all is well.
    pub problems: Vec<String>,
}

/// The Maglev table of an external frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MaglevStatus {
    /// Slots in the table (0: no backend takes new external flows).
    pub size: usize,
    /// Slots owned by each backend: (backend id, `address:port`, slots).
    pub shares: Vec<(u32, String, usize)>,
}

/// One backend slot of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// The slot (1-based).
    pub slot: u16,
    /// The backend id.
    pub id: u32,
    /// `address:port`.
    pub backend: String,
    /// `active`, `terminating`, ...
    pub state: &'static str,
    /// The endpoint is on this node (external flows reach it without source NAT).
    pub local: bool,
}

/// The fill level of one map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapFill {
    /// The map name.
    pub map: &'static str,
    /// Entries in it.
    pub entries: usize,
    /// Its size.
    pub max_entries: u32,
}

/// One datapath counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterStatus {
    /// The reason's name.
    pub reason: &'static str,
    /// `translated`, `untouched`, `drop`, `fallback`.
    pub kind: &'static str,
    /// Total over CPUs since the maps were created.
    pub count: u64,
    /// What it counts.
    pub description: &'static str,
}

/// Everything `fairlead status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The pin directory read.
    pub bpffs: String,
    /// Frontends, sorted.
    pub services: Vec<FrontendStatus>,
    /// Map fill levels.
    pub maps: Vec<MapFill>,
    /// Datapath counters, in reason order.
    pub counters: Vec<CounterStatus>,
}

impl Status {
    /// Reads the maps pinned under `maps.dir()`.
    pub fn read(pinned: &PinnedMaps) -> Result<Self, Error> {
        use crate::tables::LbMaps as _;
        let contents = pinned.contents()?;
        let mut fills = Vec::new();
        for spec in &maps::ALL {
            let (entries, max_entries) = pinned.fill(spec.name)?;
            fills.push(MapFill {
                map: spec.name,
                entries,
                max_entries,
            });
        }
        let counters = pinned.counters()?;
        Ok(Self {
            bpffs: pinned.dir().display().to_string(),
            services: frontends(&contents),
            maps: fills,
            counters: Reason::ALL
                .iter()
                .map(|r| CounterStatus {
                    reason: r.name(),
                    kind: r.kind().name(),
                    count: counters.get(*r),
                    description: r.description(),
                })
                .collect(),
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "maps pinned under {}", self.bpffs)?;
        writeln!(f)?;
        writeln!(f, "SERVICES ({} frontends)", self.services.len())?;
        f.write_str(&render_frontends(&self.services))?;
        writeln!(f)?;
        writeln!(f, "MAPS")?;
        writeln!(
            f,
            "  {:<18} {:>9} {:>9} {:>6}",
            "map", "entries", "size", "fill"
        )?;
        for m in &self.maps {
            #[expect(clippy::cast_precision_loss, reason = "a percentage for people")]
            let fill = if m.max_entries == 0 {
                0.0
            } else {
                m.entries as f64 * 100.0 / f64::from(m.max_entries)
            };
            writeln!(
                f,
                "  {:<18} {:>9} {:>9} {:>5.1}%",
                m.map, m.entries, m.max_entries, fill
            )?;
        }
        writeln!(f)?;
        writeln!(f, "DATAPATH COUNTERS")?;
        writeln!(f, "  {:<24} {:<10} {:>12}  what", "reason", "kind", "count")?;
        for c in &self.counters {
            writeln!(
                f,
                "  {:<24} {:<10} {:>12}  {}",
                c.reason, c.kind, c.count, c.description
            )?;
        }
        Ok(())
    }
}

/// The frontends in `contents`, with their slots resolved to backends.
#[must_use]
pub fn frontends(contents: &Contents) -> Vec<FrontendStatus> {
    let mut out = Vec::new();
    for ((frontend, slot), head) in &contents.services {
        if *slot != 0 {
            continue;
        }
        let family = frontend.family();
        let mut problems = Vec::new();
        let mut backends = Vec::new();
        for slot in 1..=head.count {
            let Some(value) = contents.services.get(&(*frontend, slot)) else {
                problems.push(format!("slot {slot} missing"));
                continue;
            };
            match contents.backends.get(&(family, value.backend_id)) {
                Some(b) => backends.push(BackendStatus {
                    slot,
                    id: value.backend_id,
                    backend: b.to_string(),
                    state: b.state_name(),
                    local: b.flags & fairlead_abi::BACKEND_FLAG_LOCAL != 0,
                }),
                None => problems.push(format!("slot {slot}: backend {} missing", value.backend_id)),
            }
        }
        if contents.rev_nats.get(&(family, head.rev_nat_id))
            != Some(&(frontend.address, frontend.port))
        {
            problems.push(format!("rev-NAT {} missing or wrong", head.rev_nat_id));
        }
        let mut flags = Vec::new();
        for (bit, name) in [
            (ServiceValue::FLAG_SESSION_AFFINITY, "affinity"),
            (ServiceValue::FLAG_LOCAL_ONLY, "local-only"),
            (
                ServiceValue::FLAG_TERMINATING_FALLBACK,
                "terminating-fallback",
            ),
            (ServiceValue::FLAG_TWO_SCOPES, "two-scopes"),
            (ServiceValue::FLAG_NODEPORT, "nodeport"),
            (ServiceValue::FLAG_EXTERNAL, "external"),
            (ServiceValue::FLAG_EXTERNAL_LOCAL, "external-local"),
            (ServiceValue::FLAG_SOURCE_RANGES, "source-ranges"),
        ] {
            if head.has_flag(bit) {
                flags.push(name);
            }
        }
        let maglev = contents
            .maglev
            .get(&(family, head.rev_nat_id))
            .map(|slots| {
                let mut counts: std::collections::BTreeMap<u32, usize> =
                    std::collections::BTreeMap::new();
                for id in slots.iter() {
                    *counts.entry(*id).or_default() += 1;
                }
                let shares = counts
                    .into_iter()
                    .map(|(id, n)| {
                        let name = contents
                            .backends
                            .get(&(family, id))
                            .map_or_else(|| "missing".to_owned(), ToString::to_string);
                        (id, name, n)
                    })
                    .collect();
                MaglevStatus {
                    size: slots.len(),
                    shares,
                }
            });
        if head.has_flag(ServiceValue::FLAG_EXTERNAL) && maglev.is_none() {
            problems.push("external frontend without a Maglev table".to_owned());
        }
        let source_ranges = contents
            .source_ranges
            .iter()
            .filter(|(id, range)| {
                *id == head.rev_nat_id && crate::tables::Family::of(&range.addr()) == family
            })
            .map(|(_, range)| range.to_string())
            .collect();
        out.push(FrontendStatus {
            frontend: frontend.to_string(),
            address: frontend.address.to_string(),
            port: frontend.port,
            protocol: Protocol::from_raw(frontend.protocol)
                .map_or_else(|| frontend.protocol.to_string(), |p| p.name().to_owned()),
            rev_nat_id: head.rev_nat_id,
            count: head.count,
            flags,
            affinity_timeout_secs: head.affinity_timeout_secs,
            backends,
            maglev,
            source_ranges,
            problems,
        });
    }
    out
}

/// The frontends as a table.
#[must_use]
pub fn render_frontends(frontends: &[FrontendStatus]) -> String {
    let mut out = String::new();
    for fe in frontends {
        let mut line = format!(
            "  {}  rev-nat {}  backends {}",
            fe.frontend, fe.rev_nat_id, fe.count
        );
        if fe.count == 0 {
            line.push_str("  (refuses connections)");
        }
        for flag in &fe.flags {
            let _ = write!(line, "  {flag}");
            if *flag == "affinity" {
                let _ = write!(line, "={}s", fe.affinity_timeout_secs);
            }
        }
        let _ = writeln!(out, "{line}");
        for b in &fe.backends {
            let _ = writeln!(
                out,
                "    {:>3}. {:<40} {:<12} id {}{}",
                b.slot,
                b.backend,
                b.state,
                b.id,
                if b.local { "  local" } else { "" }
            );
        }
        if let Some(maglev) = &fe.maglev {
            let mut line = format!("    maglev {} slots:", maglev.size);
            for (id, backend, n) in &maglev.shares {
                let _ = write!(line, " {backend} (id {id}) {n}");
            }
            let _ = writeln!(out, "{line}");
        }
        if !fe.source_ranges.is_empty() {
            let _ = writeln!(out, "    source ranges: {}", fe.source_ranges.join(", "));
        }
        for p in &fe.problems {
            let _ = writeln!(out, "    ! {p}");
        }
    }
    out
}

/// Every table of `contents`, rendered for golden tests: frontends with their slots, then
/// entries no frontend references.
#[must_use]
pub fn render_contents(contents: &Contents) -> String {
    let fes = frontends(contents);
    let mut out = render_frontends(&fes);
    let referenced: std::collections::BTreeSet<_> = contents
        .services
        .iter()
        .filter(|((_, slot), _)| *slot != 0)
        .map(|((f, _), v)| (f.family(), v.backend_id))
        .collect();
    for (key, b) in &contents.backends {
        if !referenced.contains(key) {
            let _ = writeln!(out, "  unreferenced backend {} {b}", key.1);
        }
    }
    out
}
