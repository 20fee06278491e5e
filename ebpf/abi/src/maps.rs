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
//! per-socket maps are LRU maps (always preallocated): they evict instead of refusing.

use core::mem::size_of;

use crate::{
    AffinityKey, AffinityValue, Backend4, Backend6, BackendId, Reason, RevNat4, RevNat6, RevNatId,
    Service4Key, Service6Key, ServiceValue, SockRevNat4, SockRevNat4Key, SockRevNat6,
    SockRevNat6Key,
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
/// Per-CPU `u64` counters indexed by [`Reason`].
pub const COUNTERS: &str = "fl_lb_counters";
/// IPv4 reverse socket NAT (LRU): [`SockRevNat4Key`] → [`SockRevNat4`].
pub const SOCK_REV_NAT4: &str = "fl_lb4_skrevnat";
/// IPv6 reverse socket NAT (LRU): [`SockRevNat6Key`] → [`SockRevNat6`].
pub const SOCK_REV_NAT6: &str = "fl_lb6_skrevnat";
/// Session affinity (LRU): [`AffinityKey`] → [`AffinityValue`].
pub const AFFINITY: &str = "fl_lb_affinity";

/// Default size of a service map. Every service frontend takes `1 + backends` entries (one
/// per slot), so this fits 20,000 frontends of ten backends with room to spare.
pub const SERVICE_MAX_ENTRIES: u32 = 1 << 18;
/// Default size of a backend map: one entry per (frontend, endpoint).
pub const BACKEND_MAX_ENTRIES: u32 = 1 << 18;
/// Default size of a rev-NAT map: one entry per service address, and ids are `u16`.
pub const REV_NAT_MAX_ENTRIES: u32 = 1 << 16;
/// Size of the counter array: one entry per [`Reason`].
pub const COUNTERS_MAX_ENTRIES: u32 = Reason::COUNT;
/// Default size of a reverse socket NAT map: one entry per balanced socket and backend.
pub const SOCK_REV_NAT_MAX_ENTRIES: u32 = 1 << 16;
/// Default size of the session-affinity map: one entry per client and affine frontend.
pub const AFFINITY_MAX_ENTRIES: u32 = 1 << 16;

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
    /// Map flags (`BPF_F_*`).
    pub flags: u32,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "map keys and values are a few bytes; checked by the layout tests"
)]
const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

/// Every map of the object.
pub const ALL: [MapSpec; 10] = [
    MapSpec {
        name: SERVICES4,
        kind: MapKind::Hash,
        key_size: size32::<Service4Key>(),
        value_size: size32::<ServiceValue>(),
        max_entries: SERVICE_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: BACKENDS4,
        kind: MapKind::Hash,
        key_size: size32::<BackendId>(),
        value_size: size32::<Backend4>(),
        max_entries: BACKEND_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: REV_NAT4,
        kind: MapKind::Hash,
        key_size: size32::<RevNatId>(),
        value_size: size32::<RevNat4>(),
        max_entries: REV_NAT_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: SERVICES6,
        kind: MapKind::Hash,
        key_size: size32::<Service6Key>(),
        value_size: size32::<ServiceValue>(),
        max_entries: SERVICE_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: BACKENDS6,
        kind: MapKind::Hash,
        key_size: size32::<BackendId>(),
        value_size: size32::<Backend6>(),
        max_entries: BACKEND_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: REV_NAT6,
        kind: MapKind::Hash,
        key_size: size32::<RevNatId>(),
        value_size: size32::<RevNat6>(),
        max_entries: REV_NAT_MAX_ENTRIES,
        flags: HASH_MAP_FLAGS,
    },
    MapSpec {
        name: COUNTERS,
        kind: MapKind::PerCpuArray,
        key_size: size32::<u32>(),
        value_size: size32::<u64>(),
        max_entries: COUNTERS_MAX_ENTRIES,
        flags: 0,
    },
    MapSpec {
        name: SOCK_REV_NAT4,
        kind: MapKind::LruHash,
        key_size: size32::<SockRevNat4Key>(),
        value_size: size32::<SockRevNat4>(),
        max_entries: SOCK_REV_NAT_MAX_ENTRIES,
        flags: 0,
    },
    MapSpec {
        name: SOCK_REV_NAT6,
        kind: MapKind::LruHash,
        key_size: size32::<SockRevNat6Key>(),
        value_size: size32::<SockRevNat6>(),
        max_entries: SOCK_REV_NAT_MAX_ENTRIES,
        flags: 0,
    },
    MapSpec {
        name: AFFINITY,
        kind: MapKind::LruHash,
        key_size: size32::<AffinityKey>(),
        value_size: size32::<AffinityValue>(),
        max_entries: AFFINITY_MAX_ENTRIES,
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
    use super::{ALL, NAME_MAX_LEN, spec};

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
        let sizes: [(u32, u32); 10] = [
            (12, 16),
            (4, 12),
            (2, 8),
            (24, 16),
            (4, 24),
            (2, 20),
            (4, 8),
            (16, 8),
            (32, 20),
            (16, 8),
        ];
        for (map, (key, value)) in ALL.iter().zip(sizes) {
            assert_eq!((map.key_size, map.value_size), (key, value), "{}", map.name);
        }
    }
}
