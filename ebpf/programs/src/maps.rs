//! The maps of the object, as declared in `fairlead_abi::maps` (names, kinds, sizes, flags).
//!
//! The `#[map]` names must be literals; fairlead-proxy's kernel test checks that the object
//! holds exactly the maps of `fairlead_abi::maps::ALL`.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use fairlead_abi::{
    AffinityKey, AffinityValue, Backend4, Backend6, BackendId, Be32, RevNat4, RevNat6, RevNatId,
    Service4Key, Service6Key, ServiceValue, SockRevNat4Table, SockRevNat6Table,
    maps::{
        ADDR_MAX_ENTRIES, AFFINITY_MAX_ENTRIES, BACKEND_MAX_ENTRIES, BPF_F_NO_PREALLOC,
        COUNTERS_MAX_ENTRIES, CT_MAX_ENTRIES, FRAG_MAX_ENTRIES, HASH_MAP_FLAGS, MAGLEV_MAX_ENTRIES,
        REV_NAT_MAX_ENTRIES, SERVICE_MAX_ENTRIES, SOURCE_RANGE_MAX_ENTRIES,
    },
    nodeport::{
        Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key, Frag6Key, FragPorts, MaglevKey, MaglevTable,
        NodeAddr, SourceRange4Key, SourceRange6Key,
    },
};

/// `fairlead_abi::maps::SERVICES4`.
#[map(name = "fl_lb4_services")]
pub(crate) static SERVICES4: HashMap<Service4Key, ServiceValue> =
    HashMap::with_max_entries(SERVICE_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::BACKENDS4`.
#[map(name = "fl_lb4_backends")]
pub(crate) static BACKENDS4: HashMap<BackendId, Backend4> =
    HashMap::with_max_entries(BACKEND_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::REV_NAT4`.
#[map(name = "fl_lb4_revnat")]
pub(crate) static REV_NAT4: HashMap<RevNatId, RevNat4> =
    HashMap::with_max_entries(REV_NAT_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::SERVICES6`.
#[map(name = "fl_lb6_services")]
pub(crate) static SERVICES6: HashMap<Service6Key, ServiceValue> =
    HashMap::with_max_entries(SERVICE_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::BACKENDS6`.
#[map(name = "fl_lb6_backends")]
pub(crate) static BACKENDS6: HashMap<BackendId, Backend6> =
    HashMap::with_max_entries(BACKEND_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::REV_NAT6`.
#[map(name = "fl_lb6_revnat")]
pub(crate) static REV_NAT6: HashMap<RevNatId, RevNat6> =
    HashMap::with_max_entries(REV_NAT_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::COUNTERS`.
#[map(name = "fl_counters")]
pub(crate) static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(COUNTERS_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::SOCK_REV_NAT4` (socket-local storage: a BTF map, as the kernel
/// requires).
#[btf_map(name = "fl_lb4_sknat")]
pub(crate) static SOCK_REV_NAT4: SkStorage<SockRevNat4Table> = SkStorage::new();

/// `fairlead_abi::maps::SOCK_REV_NAT6`.
#[btf_map(name = "fl_lb6_sknat")]
pub(crate) static SOCK_REV_NAT6: SkStorage<SockRevNat6Table> = SkStorage::new();

/// `fairlead_abi::maps::AFFINITY`.
#[map(name = "fl_lb_affinity")]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::MAGLEV`.
#[map(name = "fl_lb_maglev")]
pub(crate) static MAGLEV: HashMap<MaglevKey, MaglevTable> =
    HashMap::with_max_entries(MAGLEV_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::CT4_TCP`.
#[map(name = "fl_ct4_tcp")]
pub(crate) static CT4_TCP: LruHashMap<Ct4Key, CtValue> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::CT4_ANY`.
#[map(name = "fl_ct4_any")]
pub(crate) static CT4_ANY: LruHashMap<Ct4Key, CtValue> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::NODE_ADDR4`.
#[map(name = "fl_node_addr4")]
pub(crate) static NODE_ADDR4: HashMap<Be32, NodeAddr> =
    HashMap::with_max_entries(ADDR_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::IF_ADDR4`.
#[map(name = "fl_if_addr4")]
pub(crate) static IF_ADDR4: HashMap<u32, Be32> =
    HashMap::with_max_entries(ADDR_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::SOURCE_RANGES4`.
#[map(name = "fl_lb4_srcrange")]
pub(crate) static SOURCE_RANGES4: LpmTrie<SourceRange4Key, u8> =
    LpmTrie::with_max_entries(SOURCE_RANGE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `fairlead_abi::maps::REJECT_BUDGET`.
#[map(name = "fl_reject_quota")]
pub(crate) static REJECT_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `fairlead_abi::maps::CT6_TCP`.
#[map(name = "fl_ct6_tcp")]
pub(crate) static CT6_TCP: LruHashMap<Ct6Key, Ct6Value> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::CT6_ANY`.
#[map(name = "fl_ct6_any")]
pub(crate) static CT6_ANY: LruHashMap<Ct6Key, Ct6Value> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::NODE_ADDR6`.
#[map(name = "fl_node_addr6")]
pub(crate) static NODE_ADDR6: HashMap<[u8; 16], NodeAddr> =
    HashMap::with_max_entries(ADDR_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::IF_ADDR6`.
#[map(name = "fl_if_addr6")]
pub(crate) static IF_ADDR6: HashMap<u32, [u8; 16]> =
    HashMap::with_max_entries(ADDR_MAX_ENTRIES, HASH_MAP_FLAGS);

/// `fairlead_abi::maps::SOURCE_RANGES6`.
#[map(name = "fl_lb6_srcrange")]
pub(crate) static SOURCE_RANGES6: LpmTrie<SourceRange6Key, u8> =
    LpmTrie::with_max_entries(SOURCE_RANGE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `fairlead_abi::maps::FRAG4`.
#[map(name = "fl_frag4")]
pub(crate) static FRAG4: LruHashMap<Frag4Key, FragPorts> =
    LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);

/// `fairlead_abi::maps::FRAG6`.
#[map(name = "fl_frag6")]
pub(crate) static FRAG6: LruHashMap<Frag6Key, FragPorts> =
    LruHashMap::with_max_entries(FRAG_MAX_ENTRIES, 0);
