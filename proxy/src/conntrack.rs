//! Conntrack garbage collection for the per-packet path: the LRU maps evict under pressure,
//! but idle flows are deleted here, by pairs (a flow is idle when neither direction has
//! seen a packet for its timeout), at an interval that adapts to how much there is to
//! collect.

use std::collections::HashSet;
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use fairlead_abi::{BackendId, Ct4Key, Ct6Key, Ct6Value, CtValue, Protocol, RevNatId, maps};
use tracing::debug;

use crate::Error;
use crate::kernel::MapSet;

/// How long an idle flow is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An open TCP connection.
    pub tcp: Duration,
    /// A TCP connection that saw a FIN or RST.
    pub tcp_closing: Duration,
    /// UDP and the others.
    pub other: Duration,
}

impl Default for Timeouts {
    /// Cilium's defaults: 6 hours for TCP, 10 seconds once closing, 1 minute otherwise.
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// Whether a flow whose newest entry is `entry` (last seen at `last_seen` seconds) is
    /// idle at `now` (seconds of `CLOCK_MONOTONIC`).
    #[must_use]
    pub fn expired(&self, protocol: u8, flags: u8, last_seen: u32, now: u32) -> bool {
        let timeout = if protocol == Protocol::Tcp.raw() {
            if flags & CtValue::FLAG_CLOSING != 0 {
                self.tcp_closing
            } else {
                self.tcp
            }
        } else {
            self.other
        };
        // A time "after" now (a program raced this read) wraps to a huge age: not idle.
        let age = now.wrapping_sub(last_seen);
        age < 1 << 31 && u64::from(age) > timeout.as_secs()
    }
}

/// The GC interval after a run that scanned `scanned` entries of a map of `capacity` and
/// deleted `deleted`: shorter when much was idle or the map is filling up, longer when
/// little was, within `[min, max]`.
#[must_use]
pub fn next_interval(
    current: Duration,
    scanned: usize,
    deleted: usize,
    capacity: usize,
    (min, max): (Duration, Duration),
) -> Duration {
    let filling = capacity > 0 && scanned * 4 > capacity * 3;
    let next = if filling || deleted * 4 > scanned.max(1) {
        current / 2
    } else if deleted * 20 < scanned.max(1) {
        current * 2
    } else {
        current
    };
    next.clamp(min, max)
}

/// What one GC run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries looked at (both maps).
    pub scanned: usize,
    /// Entries deleted.
    pub deleted: usize,
    /// The larger map capacity (for [`next_interval`]).
    pub capacity: usize,
}

/// Seconds of `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
#[must_use]
pub(crate) fn now_secs() -> u32 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u32::try_from(now.tv_sec).unwrap_or(u32::MAX)
}

/// `BPF_NOEXIST`: insert only when the key is not there.
const BPF_NOEXIST: u64 = 1;

/// Deletes idle flows from the conntrack maps of both families.
pub(crate) fn collect(set: &mut impl MapSet, timeouts: &Timeouts) -> Result<GcReport, Error> {
    let now = now_secs();
    let mut report = GcReport::default();
    for name in [maps::CT4_TCP, maps::CT4_ANY] {
        collect_map::<Ct4Key, CtValue>(
            set,
            name,
            timeouts,
            now,
            &mut report,
            partner_key,
            |k, v| (k.protocol, v.last_seen_secs, v.flags),
        )?;
    }
    for name in [maps::CT6_TCP, maps::CT6_ANY] {
        collect_map::<Ct6Key, Ct6Value>(
            set,
            name,
            timeouts,
            now,
            &mut report,
            partner_key6,
            |k, v| (k.protocol, v.last_seen_secs, v.flags),
        )?;
    }
    Ok(report)
}

/// Rewrites conntrack entries adopted from a fairlead whose keys named the direction (the
/// byte after the protocol: 1 for a reply) to this layout: the key without it, the value
/// with [`CtValue::FLAG_REPLY`]. Without this, the reply entries of the flows that crossed
/// an upgrade would never match again. Returns the entries rewritten.
pub(crate) fn migrate_directions(set: &mut impl MapSet) -> Result<usize, Error> {
    let mut rewritten = 0;
    for name in [maps::CT4_TCP, maps::CT4_ANY] {
        rewritten += migrate_in::<16, 24>(set, name, 13, 22)?;
    }
    for name in [maps::CT6_TCP, maps::CT6_ANY] {
        rewritten += migrate_in::<40, 48>(set, name, 37, 46)?;
    }
    if rewritten > 0 {
        debug!(
            rewritten,
            "conntrack entries of the old key layout rewritten"
        );
    }
    Ok(rewritten)
}

/// [`migrate_directions`] for one map, on raw bytes: `K` and `V` bytes a key and a value,
/// the old direction at `direction` in the key, the flags at `flags` in the value.
fn migrate_in<const K: usize, const V: usize>(
    set: &mut impl MapSet,
    name: &'static str,
    direction: usize,
    flags: usize,
) -> Result<usize, Error> {
    let map = set.map_mut(name)?;
    let mut ct =
        HashMap::<&mut MapData, [u8; K], [u8; V]>::try_from(map).map_err(|source| Error::Map {
            name,
            action: "open",
            source,
        })?;
    let old: Vec<([u8; K], [u8; V])> = ct
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k[direction] != 0)
        .collect();
    for (key, value) in &old {
        let mut new_key = *key;
        new_key[direction] = 0;
        let mut new_value = *value;
        if key[direction] == 1 {
            new_value[flags] |= CtValue::FLAG_REPLY;
        }
        // A flow the programs recorded anew since wins; the old entry goes either way.
        let _ = ct.insert(new_key, new_value, BPF_NOEXIST);
        let _ = ct.remove(key);
    }
    Ok(old.len())
}

/// Deletes the flows of backends that left their external frontends: `gone` holds (backend
/// id, the frontend's rev-NAT id) per family. Both directions of a flow name its backend.
/// The programs do not look a known flow's backend up again, so without this a flow would
/// keep going to a removed backend until it is idle; after it, its next packet is balanced
/// anew over the frontend's current backends. Returns the entries deleted.
pub(crate) fn forget_backends(
    set: &mut impl MapSet,
    gone4: &HashSet<(BackendId, RevNatId)>,
    gone6: &HashSet<(BackendId, RevNatId)>,
) -> Result<usize, Error> {
    let mut deleted = 0;
    if !gone4.is_empty() {
        for name in [maps::CT4_TCP, maps::CT4_ANY] {
            deleted += forget_in::<Ct4Key, CtValue>(set, name, |v| {
                gone4.contains(&(v.backend_id, v.rev_nat_id))
            })?;
        }
    }
    if !gone6.is_empty() {
        for name in [maps::CT6_TCP, maps::CT6_ANY] {
            deleted += forget_in::<Ct6Key, Ct6Value>(set, name, |v| {
                gone6.contains(&(v.backend_id, v.rev_nat_id))
            })?;
        }
    }
    if deleted > 0 {
        debug!(deleted, "conntrack entries of removed backends deleted");
    }
    Ok(deleted)
}

/// Deletes the entries of one conntrack map whose value `doomed` picks.
fn forget_in<K, V>(
    set: &mut impl MapSet,
    name: &'static str,
    doomed: impl Fn(&V) -> bool,
) -> Result<usize, Error>
where
    K: aya::Pod,
    V: aya::Pod,
{
    let map = set.map_mut(name)?;
    let mut ct = HashMap::<&mut MapData, K, V>::try_from(map).map_err(|source| Error::Map {
        name,
        action: "open",
        source,
    })?;
    let keys: Vec<K> = ct
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| doomed(v))
        .map(|(k, _)| k)
        .collect();
    for key in &keys {
        // Gone already (LRU eviction, GC): fine.
        let _ = ct.remove(key);
    }
    Ok(keys.len())
}

/// One conntrack map: a flow is idle when both directions are (a reply entry follows its
/// original's pair time, so one-way traffic keeps both, and the source-NAT port, alive).
fn collect_map<K, V>(
    set: &mut impl MapSet,
    name: &'static str,
    timeouts: &Timeouts,
    now: u32,
    report: &mut GcReport,
    partner: impl Fn(&K, &V) -> Option<K>,
    meta: impl Fn(&K, &V) -> (u8, u32, u8),
) -> Result<(), Error>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let capacity = crate::kernel::map_info(set, name)?.max_entries() as usize;
    report.capacity = report.capacity.max(capacity);
    let map = set.map_mut(name)?;
    let mut ct = HashMap::<&mut MapData, K, V>::try_from(map).map_err(|source| Error::Map {
        name,
        action: "open",
        source,
    })?;
    let entries: Vec<(K, V)> = ct.iter().filter_map(Result::ok).collect();
    report.scanned += entries.len();
    let lookup: std::collections::HashMap<K, (u32, u8)> = entries
        .iter()
        .map(|(k, v)| {
            let (_, seen, flags) = meta(k, v);
            (*k, (seen, flags))
        })
        .collect();
    let mut pairs: std::collections::HashMap<K, (u32, u8)> = std::collections::HashMap::new();
    for (key, value) in &entries {
        let Some(other) = partner(key, value) else {
            continue;
        };
        let (_, seen, flags) = meta(key, value);
        let pair = lookup
            .get(&other)
            .map_or((seen, flags), |(other_seen, other_flags)| {
                (newer(*other_seen, seen, now), flags | other_flags)
            });
        pairs.insert(*key, pair);
        pairs.insert(other, pair);
    }
    let mut doomed = Vec::new();
    for (key, value) in &entries {
        let (protocol, seen, flags) = meta(key, value);
        let (newest, flags) = pairs.get(key).copied().unwrap_or((seen, flags));
        if timeouts.expired(protocol, flags, newest, now) {
            doomed.push(*key);
        }
    }
    for key in &doomed {
        // Gone already (LRU eviction, or the program replaced it): fine.
        let _ = ct.remove(key);
    }
    report.deleted += doomed.len();
    debug!(
        map = name,
        scanned = entries.len(),
        deleted = doomed.len(),
        "conntrack collected"
    );
    Ok(())
}

/// [`partner_key`] for IPv6.
fn partner_key6(key: &Ct6Key, value: &Ct6Value) -> Option<Ct6Key> {
    if value.has_flag(CtValue::FLAG_REPLY) {
        return None;
    }
    let (daddr, dport) = if value.has_flag(CtValue::FLAG_SNAT) {
        (value.nat_address, value.nat_port)
    } else {
        (key.saddr, key.sport)
    };
    Some(Ct6Key::new(
        value.address,
        daddr,
        value.port,
        dport,
        key.protocol,
    ))
}

/// The key of the other direction of the flow an entry belongs to, when it can be derived
/// from the entry (the original direction names the backend and the source NAT).
fn partner_key(key: &Ct4Key, value: &CtValue) -> Option<Ct4Key> {
    if value.has_flag(CtValue::FLAG_REPLY) {
        return None;
    }
    let (daddr, dport) = if value.has_flag(CtValue::FLAG_SNAT) {
        (value.nat_address, value.nat_port)
    } else {
        (key.saddr, key.sport)
    };
    Some(Ct4Key::new(
        value.address,
        daddr,
        value.port,
        dport,
        key.protocol,
    ))
}

/// The later of two monotonic times (as seen from `now`, so wrapping compares right).
fn newer(a: u32, b: u32, now: u32) -> u32 {
    if now.wrapping_sub(a) < now.wrapping_sub(b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fairlead_abi::{CtValue, Protocol};

    use super::{Timeouts, next_interval};

    #[test]
    fn timeouts_by_protocol_and_state() {
        let t = Timeouts::default();
        let tcp = Protocol::Tcp.raw();
        let udp = Protocol::Udp.raw();
        assert!(!t.expired(tcp, 0, 1000, 1000 + 3600));
        assert!(t.expired(tcp, 0, 1000, 1000 + 6 * 3600 + 1));
        assert!(t.expired(tcp, CtValue::FLAG_CLOSING, 1000, 1011));
        assert!(!t.expired(tcp, CtValue::FLAG_CLOSING, 1000, 1010));
        assert!(t.expired(udp, 0, 1000, 1061));
        assert!(!t.expired(udp, 0, 1000, 1060));
        // Seen "after" now (a racing program): not expired.
        assert!(!t.expired(udp, 0, 1005, 1000));
    }

    #[test]
    fn interval_adapts_within_bounds() {
        let bounds = (Duration::from_secs(5), Duration::from_secs(300));
        let base = Duration::from_secs(30);
        // Much idle: halve. Little idle: double. In between: keep.
        assert_eq!(next_interval(base, 100, 50, 10_000, bounds), base / 2);
        assert_eq!(next_interval(base, 100, 1, 10_000, bounds), base * 2);
        assert_eq!(next_interval(base, 100, 10, 10_000, bounds), base);
        // Filling up: halve even if little was idle.
        assert_eq!(next_interval(base, 8_000, 1, 10_000, bounds), base / 2);
        // Clamped.
        assert_eq!(
            next_interval(Duration::from_secs(6), 100, 90, 10_000, bounds),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_interval(Duration::from_secs(300), 0, 0, 10_000, bounds),
            Duration::from_secs(300)
        );
    }
}
