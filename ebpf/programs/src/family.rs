//! What differs between IPv4 and IPv6: the map types and maps of each family. The
//! balancing logic ([`crate::lb`]) and the socket hooks ([`crate::sock`]) are written once,
//! generic over [`Family`], and monomorphised into each program.

use aya_ebpf::{btf_maps::SkStorage, maps::HashMap};
use fairlead_abi::{
    Backend4, Backend6, BackendId, Be16, Be32, RevNat4, RevNat6, RevNatId, Scope, Service4Key,
    Service6Key, ServiceValue, SockRevNat4, SockRevNat4Table, SockRevNat6, SockRevNat6Table,
    sock::{FAMILY_V4, FAMILY_V6, SockRevNatTable},
};

use crate::maps::{
    BACKENDS4, BACKENDS6, REV_NAT4, REV_NAT6, SERVICES4, SERVICES6, SOCK_REV_NAT4, SOCK_REV_NAT6,
};

/// One address family's maps and types.
pub(crate) trait Family {
    /// An address, in network byte order.
    type Addr: Copy + PartialEq + 'static;
    /// Key of the service map.
    type ServiceKey: Copy + 'static;
    /// Value of the backend map.
    type Backend: Copy + 'static;
    /// Value of the rev-NAT map.
    type RevNat: Copy + 'static;
    /// What a socket's reverse NAT table records per backend: the service.
    type SockVal: Copy + PartialEq + 'static;

    /// The family byte of affinity keys.
    const FAMILY: u8;

    fn services() -> &'static HashMap<Self::ServiceKey, ServiceValue>;
    fn backends() -> &'static HashMap<BackendId, Self::Backend>;
    fn rev_nats() -> &'static HashMap<RevNatId, Self::RevNat>;
    fn sock_rev_nats() -> &'static SkStorage<SockRevNatTable<Self::Addr, Self::SockVal>>;

    fn with_slot(key: Self::ServiceKey, slot: u16) -> Self::ServiceKey;
    fn with_scope(key: Self::ServiceKey, scope: Scope) -> Self::ServiceKey;

    fn backend_address(backend: &Self::Backend) -> (Self::Addr, Be16);
    fn backend_rev_nat(backend: &Self::Backend) -> RevNatId;

    fn rev_nat_address(rev_nat: &Self::RevNat) -> (Self::Addr, Be16);
    fn is_unspecified(address: &Self::Addr) -> bool;

    fn sock_val(address: Self::Addr, port: Be16, rev_nat_id: RevNatId) -> Self::SockVal;
    fn sock_val_parts(value: &Self::SockVal) -> (Self::Addr, Be16, RevNatId);
}

/// IPv4.
pub(crate) struct V4;

impl Family for V4 {
    type Addr = Be32;
    type ServiceKey = Service4Key;
    type Backend = Backend4;
    type RevNat = RevNat4;
    type SockVal = SockRevNat4;

    const FAMILY: u8 = FAMILY_V4;

    #[inline(always)]
    fn services() -> &'static HashMap<Service4Key, ServiceValue> {
        &SERVICES4
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<BackendId, Backend4> {
        &BACKENDS4
    }
    #[inline(always)]
    fn rev_nats() -> &'static HashMap<RevNatId, RevNat4> {
        &REV_NAT4
    }
    #[inline(always)]
    fn sock_rev_nats() -> &'static SkStorage<SockRevNat4Table> {
        &SOCK_REV_NAT4
    }
    #[inline(always)]
    fn with_slot(key: Service4Key, slot: u16) -> Service4Key {
        key.with_slot(slot)
    }
    #[inline(always)]
    fn with_scope(key: Service4Key, scope: Scope) -> Service4Key {
        key.with_scope(scope)
    }
    #[inline(always)]
    fn backend_address(backend: &Backend4) -> (Be32, Be16) {
        (backend.address, backend.port)
    }
    #[inline(always)]
    fn backend_rev_nat(backend: &Backend4) -> RevNatId {
        backend.rev_nat_id
    }
    #[inline(always)]
    fn rev_nat_address(rev_nat: &RevNat4) -> (Be32, Be16) {
        (rev_nat.address, rev_nat.port)
    }
    #[inline(always)]
    fn is_unspecified(address: &Be32) -> bool {
        address.raw() == 0
    }
    #[inline(always)]
    fn sock_val(address: Be32, port: Be16, rev_nat_id: RevNatId) -> SockRevNat4 {
        SockRevNat4::new(address, port, rev_nat_id)
    }
    #[inline(always)]
    fn sock_val_parts(value: &SockRevNat4) -> (Be32, Be16, RevNatId) {
        (value.address, value.port, value.rev_nat_id)
    }
}

/// IPv6.
pub(crate) struct V6;

impl Family for V6 {
    type Addr = [u8; 16];
    type ServiceKey = Service6Key;
    type Backend = Backend6;
    type RevNat = RevNat6;
    type SockVal = SockRevNat6;

    const FAMILY: u8 = FAMILY_V6;

    #[inline(always)]
    fn services() -> &'static HashMap<Service6Key, ServiceValue> {
        &SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<BackendId, Backend6> {
        &BACKENDS6
    }
    #[inline(always)]
    fn rev_nats() -> &'static HashMap<RevNatId, RevNat6> {
        &REV_NAT6
    }
    #[inline(always)]
    fn sock_rev_nats() -> &'static SkStorage<SockRevNat6Table> {
        &SOCK_REV_NAT6
    }
    #[inline(always)]
    fn with_slot(key: Service6Key, slot: u16) -> Service6Key {
        key.with_slot(slot)
    }
    #[inline(always)]
    fn with_scope(key: Service6Key, scope: Scope) -> Service6Key {
        key.with_scope(scope)
    }
    #[inline(always)]
    fn backend_address(backend: &Backend6) -> ([u8; 16], Be16) {
        (backend.address, backend.port)
    }
    #[inline(always)]
    fn backend_rev_nat(backend: &Backend6) -> RevNatId {
        backend.rev_nat_id
    }
    #[inline(always)]
    fn rev_nat_address(rev_nat: &RevNat6) -> ([u8; 16], Be16) {
        (rev_nat.address, rev_nat.port)
    }
    #[inline(always)]
    fn is_unspecified(address: &[u8; 16]) -> bool {
        u128::from_ne_bytes(*address) == 0
    }
    #[inline(always)]
    fn sock_val(address: [u8; 16], port: Be16, rev_nat_id: RevNatId) -> SockRevNat6 {
        SockRevNat6::new(address, port, rev_nat_id)
    }
    #[inline(always)]
    fn sock_val_parts(value: &SockRevNat6) -> ([u8; 16], Be16, RevNatId) {
        (value.address, value.port, value.rev_nat_id)
    }
}
