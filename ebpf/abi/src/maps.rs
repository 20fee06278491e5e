//! Every map of the eBPF object: name, kind, key and value size, default size and flags.
//!
//! The names are the map symbols in the object, the names the kernel reports, and the file
//! names under the bpffs pin directory. The kernel keeps at most [`NAME_MAX_LEN`] bytes of
//! a name, so every name fits.
//!
//! The `*_MAX_ENTRIES` constants are defaults: user space may resize a map at load time
//! (before it is created). Hash maps are created with [`BPF_F_NO_PREALLOC`]: memory grows
//! with use, and an update replaces an element under RCU, so a program that looked up the
//! old value keeps reading a consistent copy instead of one being rewritten in place. The
//! affinity and conntrack maps are LRU maps (always preallocated): they evict instead of
//! refusing. The reverse socket NAT maps are socket-local storage: an entry lives and dies
//! with its socket, and the maps have no size.

use core::mem::size_of;

use crate::nodeport::{
    Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key, Frag6Key, FragPorts, MaglevKey, MaglevTable,
    NodeAddr, SourceRange4Key, SourceRange6Key,
};
use crate::{
    AffinityKey, AffinityValue, Backend4, Backend6, BackendId, Be32, Reason, RevNat4, RevNat6,
    RevNatId, Service4Key, Service6Key, ServiceValue, SockRevNat4Table, SockRevNat6Table,
};

/// The longest map or program name the kernel keeps (`BPF_OBJ_NAME_LEN` - 1).
pub const NAME_MAX_LEN: usize = 15;

/// IPv4 services: [`Service4Key`] → [`ServiceValue`].
pub const SERVICES4: &str = "fl_lb4_services";
/// IPv4 backends: [`BackendId`] → [`Backend4`].
pub const BACKENDS4: &str = "fl_lb4_backends";
/// IPv4 reverse NAT: [`RevNatId`] → [`RevNat4`].
pub const REV_NAT4: &str = "fl_lb4_revnat";
/// IPv6 services: [`Service6Key`] → [`ServiceValue`].
pub const SERVICES6: &str = "fl_lb6_services";
/// IPv6 backends: [`BackendId`] → [`Backend6`].
pub const BACKENDS6: &str = "fl_lb6_backends";
/// IPv6 reverse NAT: [`RevNatId`] → [`RevNat6`].
pub const REV_NAT6: &str = "fl_lb6_revnat";
/// Per-CPU `u64` counters indexed by [`Reason`]. (Renamed from `fl_lb_counters` when it
/// grew to [`COUNTERS_MAX_ENTRIES`] entries, room for reasons yet to come.)
pub const COUNTERS: &str = "fl_counters";
/// IPv4 reverse socket NAT (socket-local storage): socket → [`SockRevNat4Table`]. (Was
/// `fl_lb4_skrevnat`, an LRU hash keyed by socket cookie, whose entries outlived their
/// sockets.)
pub const SOCK_REV_NAT4: &str = "fl_lb4_sknat";
/// IPv6 reverse socket NAT (socket-local storage): socket → [`SockRevNat6Table`].
pub const SOCK_REV_NAT6: &str = "fl_lb6_sknat";
/// The names of the reverse socket NAT maps before they were socket-local storage: pins
/// left by an older fairlead, removed when the maps are loaded.
pub const RETIRED: [&str; 2] = ["fl_lb4_skrevnat", "fl_lb6_skrevnat"];
/// Session affinity (LRU): [`AffinityKey`] → [`AffinityValue`].
pub const AFFINITY: &str = "fl_lb_affinity";
/// Maglev tables of external frontends: [`MaglevKey`] → [`MaglevTable`].
pub const MAGLEV: &str = "fl_lb_maglev";
/// IPv4 conntrack of TCP flows balanced per packet (LRU): [`Ct4Key`] → [`CtValue`].
pub const CT4_TCP: &str = "fl_ct4_tcp";
/// IPv4 conntrack of the other protocols (LRU): [`Ct4Key`] → [`CtValue`].
pub const CT4_ANY: &str = "fl_ct4_any";
/// The node's IPv4 addresses: [`Be32`] → [`NodeAddr`] (interface index).
pub const NODE_ADDR4: &str = "fl_node_addr4";
/// The IPv4 source address of each interface for source NAT: `u32` (ifindex) → [`Be32`].
pub const IF_ADDR4: &str = "fl_if_addr4";
/// IPv6 conntrack of TCP flows (LRU): [`Ct6Key`] → [`Ct6Value`].
pub const CT6_TCP: &str = "fl_ct6_tcp";
/// IPv6 conntrack of the other protocols (LRU): [`Ct6Key`] → [`Ct6Value`].
pub const CT6_ANY: &str = "fl_ct6_any";
/// The node's IPv6 addresses: octets → [`NodeAddr`] (interface index).
pub const NODE_ADDR6: &str = "fl_node_addr6";
/// The IPv6 source address for source NAT: `u32` (key 0) → octets.
pub const IF_ADDR6: &str = "fl_if_addr6";
/// `loadBalancerSourceRanges`, IPv6 (LPM trie): {prefix length, [`SourceRange6Key`]} → `u8`.
pub const SOURCE_RANGES6: &str = "fl_lb6_srcrange";
/// `loadBalancerSourceRanges`, IPv4 (LPM trie): {prefix length, [`SourceRange4Key`]} → `u8`.
pub const SOURCE_RANGES4: &str = "fl_lb4_srcrange";
/// Per-CPU budget of ICMP rejects (one `u64` at index 0: the second in the high half, the
/// rejects sent in it in the low half), see
/// [`ICMP_REJECTS_PER_SEC`](crate::nodeport::ICMP_REJECTS_PER_SEC).
pub const REJECT_BUDGET: &str = "fl_reject_quota";
/// IPv4 fragments (LRU): [`Frag4Key`] → [`FragPorts`], the ports of each fragmented
/// datagram's first fragment, for its later fragments.
pub const FRAG4: &str = "fl_frag4";
/// IPv6 fragments (LRU): [`Frag6Key`] → [`FragPorts`].
pub const FRAG6: &str = "fl_frag6";

/// Default size of a service map. Every service frontend takes `1 + backends` entries (one
/// per slot), so this fits 20,000 frontends of ten backends with room to spare.
pub const SERVICE_MAX_ENTRIES: u32 = 1 << 18;
/// Default size of a backend map: one entry per (frontend, endpoint).
pub const BACKEND_MAX_ENTRIES: u32 = 1 << 18;
/// Default size of a rev-NAT map: one entry per service address, and ids are `u16`.
pub const REV_NAT_MAX_ENTRIES: u32 = 1 << 16;
/// Size of the counter array: one entry per [`Reason`], with room for reasons to come (a
/// pinned map keeps its size across upgrades).
pub const COUNTERS_MAX_ENTRIES: u32 = 64;
const _: () = assert!(Reason::COUNT <= COUNTERS_MAX_ENTRIES);
/// Default size of the session-affinity map: one entry per client and affine frontend.
pub const AFFINITY_MAX_ENTRIES: u32 = 1 << 16;

/// Default size of the Maglev map: one entry per external frontend (each 64 KiB).
pub const MAGLEV_MAX_ENTRIES: u32 = 4_096;
/// Default size of each conntrack map: two entries per flow.
pub const CT_MAX_ENTRIES: u32 = 1 << 18;
/// Default size of the node- and interface-address maps.
pub const ADDR_MAX_ENTRIES: u32 = 1_024;
/// Size of each fragment map: datagrams in flight in fragments at once (Cilium's default,
/// `bpf-fragments-map-max`, is 8192 too). Entries are needed only until the datagram's last
/// fragment went by.
pub const FRAG_MAX_ENTRIES: u32 = 8_192;
/// Default size of the source-range trie.
pub const SOURCE_RANGE_MAX_ENTRIES: u32 = 16_384;

/// `BPF_F_NO_PREALLOC`: hash map elements are allocated on update and freed under RCU.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Flags of every hash map.
pub const HASH_MAP_FLAGS: u32 = BPF_F_NO_PREALLOC;

/// The kind of a map, with the kernel's `bpf_map_type` number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray = 6,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE` (always `BPF_F_NO_PREALLOC`).
    LpmTrie = 11,
    /// `BPF_MAP_TYPE_SK_STORAGE`: one value per socket, freed with it (key: a socket fd
    /// from user space; always `BPF_F_NO_PREALLOC`, no size).
    SkStorage = 24,
}

/// Everything user space needs to check that a map (for instance one found pinned from a
/// previous run) matches this contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map name.
    pub name: &'static str,
    /// The map kind.
    pub kind: MapKind,
    /// Size of a key in bytes.
    pub key_size: u32,
    /// Size of a value in bytes (per CPU, for per-CPU maps).
    pub value_size: u32,
    /// Default maximum number of entries.
    pub max_entries: u32,
    /// Which sizing flag resizes it.
    pub sizing: Sizing,
    /// Map flags (`BPF_F_*`).
    pub flags: u32,
}

/// What sets a map's size at load time: each kind of map has one sizing flag of
/// `fairlead proxy` (`--map-ct`, ...), and the IPv4 and IPv6 maps of a kind share it.
/// Every map of [`ALL`] names its own, so a new map cannot miss its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sizing {
    /// No flag: the size is part of the contract ([`MapSpec::max_entries`]).
    Fixed,
    /// The service maps (`--map-services`).
    Services,
    /// The backend maps (`--map-backends`).
    Backends,
    /// The rev-NAT maps (`--map-rev-nat`).
    RevNat,
    /// The session-affinity map (`--map-affinity`).
    Affinity,
    /// The Maglev map (`--map-maglev`).
    Maglev,
    /// The conntrack maps (`--map-ct`).
    Conntrack,
    /// The `loadBalancerSourceRanges` tries (`--map-source-ranges`).
    SourceRanges,
}

impl Sizing {
    /// The `fairlead proxy` flag that sets this size (`None` for [`Sizing::Fixed`]).
    #[must_use]
    pub const fn flag(self) -> Option<&'static str> {
        match self {
            Sizing::Fixed => None,
            Sizing::Services => Some("--map-services"),
            Sizing::Backends => Some("--map-backends"),
            Sizing::RevNat => Some("--map-rev-nat"),
            Sizing::Affinity => Some("--map-affinity"),
            Sizing::Maglev => Some("--map-maglev"),
            Sizing::Conntrack => Some("--map-ct"),
            Sizing::SourceRanges => Some("--map-source-ranges"),
        }
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "map keys and values are a few bytes; checked by the layout tests"
)]
const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

/// Every map of the object.
pub const ALL: [MapSpec; 24] = [
    MapSpec {
        name: SERVICES4,
        kind: MapKind::Hash,
        key_size: size32::<Service4Key>(),
        value_size: size32::<ServiceValue>(),
        max_entries: SERVICE_MAX_ENTRIES,
        sizing: Sizing::Services,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: BACKENDS4,
        kind: MapKind::Hash,
        key_size: size32::<BackendId>(),
        value_size: size32::<Backend4>(),
        max_entries: BACKEND_MAX_ENTRIES,
        sizing: Sizing::Backends,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: REV_NAT4,
        kind: MapKind::Hash,
        key_size: size32::<RevNatId>(),
        value_size: size32::<RevNat4>(),
        max_entries: REV_NAT_MAX_ENTRIES,
        sizing: Sizing::RevNat,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: SERVICES6,
        kind: MapKind::Hash,
        key_size: size32::<Service6Key>(),
        value_size: size32::<ServiceValue>(),
        max_entries: SERVICE_MAX_ENTRIES,
        sizing: Sizing::Services,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: BACKENDS6,
        kind: MapKind::Hash,
        key_size: size32::<BackendId>(),
        value_size: size32::<Backend6>(),
        max_entries: BACKEND_MAX_ENTRIES,
        sizing: Sizing::Backends,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: REV_NAT6,
        kind: MapKind::Hash,
        key_size: size32::<RevNatId>(),
        value_size: size32::<RevNat6>(),
        max_entries: REV_NAT_MAX_ENTRIES,
        sizing: Sizing::RevNat,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: COUNTERS,
        kind: MapKind::PerCpuArray,
        key_size: size32::<u32>(),
        value_size: size32::<u64>(),
        max_entries: COUNTERS_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: 0,
    },
    MapSpec {
        name: SOCK_REV_NAT4,
        kind: MapKind::SkStorage,
        key_size: size32::<i32>(),
        value_size: size32::<SockRevNat4Table>(),
        max_entries: 0,
        sizing: Sizing::Fixed,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: SOCK_REV_NAT6,
        kind: MapKind::SkStorage,
        key_size: size32::<i32>(),
        value_size: size32::<SockRevNat6Table>(),
        max_entries: 0,
        sizing: Sizing::Fixed,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: AFFINITY,
        kind: MapKind::LruHash,
        key_size: size32::<AffinityKey>(),
        value_size: size32::<AffinityValue>(),
        max_entries: AFFINITY_MAX_ENTRIES,
        sizing: Sizing::Affinity,
        flags: 0,
    },
    MapSpec {
        name: MAGLEV,
        kind: MapKind::Hash,
        key_size: size32::<MaglevKey>(),
        value_size: size32::<MaglevTable>(),
        max_entries: MAGLEV_MAX_ENTRIES,
        sizing: Sizing::Maglev,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: CT4_TCP,
        kind: MapKind::LruHash,
        key_size: size32::<Ct4Key>(),
        value_size: size32::<CtValue>(),
        max_entries: CT_MAX_ENTRIES,
        sizing: Sizing::Conntrack,
        flags: 0,
    },
    MapSpec {
        name: CT4_ANY,
        kind: MapKind::LruHash,
        key_size: size32::<Ct4Key>(),
        value_size: size32::<CtValue>(),
        max_entries: CT_MAX_ENTRIES,
        sizing: Sizing::Conntrack,
        flags: 0,
    },
    MapSpec {
        name: NODE_ADDR4,
        kind: MapKind::Hash,
        key_size: size32::<Be32>(),
        value_size: size32::<NodeAddr>(),
        max_entries: ADDR_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: IF_ADDR4,
        kind: MapKind::Hash,
        key_size: size32::<u32>(),
        value_size: size32::<Be32>(),
        max_entries: ADDR_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: SOURCE_RANGES4,
        kind: MapKind::LpmTrie,
        key_size: 4 + size32::<SourceRange4Key>(),
        value_size: size32::<u8>(),
        max_entries: SOURCE_RANGE_MAX_ENTRIES,
        sizing: Sizing::SourceRanges,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: CT6_TCP,
        kind: MapKind::LruHash,
        key_size: size32::<Ct6Key>(),
        value_size: size32::<Ct6Value>(),
        max_entries: CT_MAX_ENTRIES,
        sizing: Sizing::Conntrack,
        flags: 0,
    },
    MapSpec {
        name: CT6_ANY,
        kind: MapKind::LruHash,
        key_size: size32::<Ct6Key>(),
        value_size: size32::<Ct6Value>(),
        max_entries: CT_MAX_ENTRIES,
        sizing: Sizing::Conntrack,
        flags: 0,
    },
    MapSpec {
        name: NODE_ADDR6,
        kind: MapKind::Hash,
        key_size: 16,
        value_size: size32::<NodeAddr>(),
        max_entries: ADDR_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: IF_ADDR6,
        kind: MapKind::Hash,
        key_size: size32::<u32>(),
        value_size: 16,
        max_entries: ADDR_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: SOURCE_RANGES6,
        kind: MapKind::LpmTrie,
        key_size: 4 + size32::<SourceRange6Key>(),
        value_size: size32::<u8>(),
        max_entries: SOURCE_RANGE_MAX_ENTRIES,
        sizing: Sizing::SourceRanges,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: REJECT_BUDGET,
        kind: MapKind::PerCpuArray,
        key_size: size32::<u32>(),
        value_size: size32::<u64>(),
        max_entries: 1,
        sizing: Sizing::Fixed,
        flags: 0,
    },
    MapSpec {
        name: FRAG4,
        kind: MapKind::LruHash,
        key_size: size32::<Frag4Key>(),
        value_size: size32::<FragPorts>(),
        max_entries: FRAG_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: 0,
    },
    MapSpec {
        name: FRAG6,
        kind: MapKind::LruHash,
        key_size: size32::<Frag6Key>(),
        value_size: size32::<FragPorts>(),
        max_entries: FRAG_MAX_ENTRIES,
        sizing: Sizing::Fixed,
        flags: 0,
    },
];

/// The spec of the map called `name`.
#[must_use]
pub fn spec(name: &str) -> Option<&'static MapSpec> {
    ALL.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::{ALL, NAME_MAX_LEN, Sizing, spec};

    #[test]
    fn the_ipv4_and_ipv6_maps_of_a_kind_are_sized_alike() {
        let mut pairs = 0;
        for map in &ALL {
            let Some(v6) = map.name.contains('4').then(|| map.name.replace('4', "6")) else {
                continue;
            };
            let other = spec(&v6).unwrap_or_else(|| panic!("{} has no IPv6 twin", map.name));
            assert_eq!(map.sizing, other.sizing, "{} and {}", map.name, other.name);
            assert_eq!(
                map.max_entries, other.max_entries,
                "{} and {}",
                map.name, other.name
            );
            pairs += 1;
        }
        assert_eq!(pairs, 10);
        assert!(ALL.iter().filter(|m| m.sizing == Sizing::Conntrack).count() == 4);
    }

    #[test]
    fn names_fit_the_kernel_and_are_unique() {
        for (i, map) in ALL.iter().enumerate() {
            assert!(map.name.len() <= NAME_MAX_LEN, "{} is too long", map.name);
            assert!(
                map.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{} has a character the kernel rejects",
                map.name
            );
            assert!(
                ALL[i + 1..].iter().all(|other| other.name != map.name),
                "{} is declared twice",
                map.name
            );
            assert_eq!(spec(map.name), Some(map));
        }
        assert_eq!(spec("nope"), None);
    }

    #[test]
    fn sizes_are_what_the_kernel_is_told() {
        let sizes: [(u32, u32); 24] = [
            (12, 16),
            (4, 12),
            (2, 8),
            (24, 16),
            (4, 24),
            (2, 20),
            (4, 8),
            (4, 136),
            (4, 328),
            (16, 8),
            (4, 65_528),
            (16, 24),
            (16, 24),
            (4, 4),
            (4, 4),
            (12, 1),
            (40, 48),
            (40, 48),
            (16, 4),
            (4, 16),
            (24, 1),
            (4, 8),
            (12, 4),
            (40, 4),
        ];
        for (map, (key, value)) in ALL.iter().zip(sizes) {
            assert_eq!((map.key_size, map.value_size), (key, value), "{}", map.name);
        }
    }
}
