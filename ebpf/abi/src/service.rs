//! The service maps ([`SERVICES4`](crate::maps::SERVICES4), [`SERVICES6`](crate::maps::SERVICES6)):
//! one entry per (service address, port, protocol, scope, slot).
//!
//! A service with `n` backends takes `n + 1` entries that share address, port, protocol and
//! scope and differ by slot:
//!
//! - **slot 0** describes the service: [`ServiceValue::count`] backends, [`ServiceValue::flags`],
//!   [`ServiceValue::rev_nat_id`] and the session-affinity timeout;
//! - **slots `1..=count`** each name one backend: [`ServiceValue::backend_id`] is a key of the
//!   backend map.
//!
//! A program looks up slot 0, picks a slot in `1..=count`, looks that slot up and then the
//! backend. No entry at slot 0 means "not a service": the connection goes on untouched.
//! `count == 0` means "a service without endpoints": the connection is refused, like
//! kube-proxy's REJECT rule.
//!
//! # Update order: write slots first, publish the count last
//!
//! Programs read slot 0 and then the other slots without a lock, so writers order their
//! updates so that every `count` a program can read is backed by slots that exist:
//!
//! 1. **Add or grow**: write the backends (backend map), then the rev-NAT entry, then slots
//!    `1..=n`, and only then slot 0 with `count = n`.
//! 2. **Shrink**: write slot 0 with the smaller count first, then delete the slots above it.
//! 3. **Change backends in place**: overwrite a slot with another backend id (each update
//!    of one entry is atomic), then the count if it changed, as above.
//! 4. **Delete**: delete slot 0 first (new connections now pass untouched), then the slots,
//!    then rev-NAT and backends that nothing references any more.
//!
//! Backend ids are never reused while a slot may still reference them. A program that
//! still finds a missing slot or backend (a race with a writer that broke these rules, or a
//! full map) counts [`Reason::BackendSlotMissing`](crate::Reason::BackendSlotMissing) or
//! [`Reason::BackendMissing`](crate::Reason::BackendMissing).

use core::net::Ipv6Addr;

use crate::{BackendId, Be16, Be32, RevNatId};

/// Which view of a service an entry is: the one for traffic from outside the node, or the
/// one for traffic from the node itself.
///
/// A service normally has only [`Scope::External`] entries, used by all traffic. When its
/// view depends on the source (for instance `externalTrafficPolicy: Local` keeps external
/// traffic on local endpoints while pods on the node may use all of them), slot 0 of the
/// external entry carries [`ServiceValue::FLAG_TWO_SCOPES`] and a second set of entries
/// with [`Scope::Internal`] serves traffic that originates on the node. Socket programs
/// (`connect4`, ...) only see traffic from the node, so they follow the flag.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The default entry, and the one for traffic from outside the node.
    External = 0,
    /// The entry for traffic from the node, when the service has two scopes.
    Internal = 1,
}

impl Scope {
    /// The scope numbered `raw`.
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::External),
            1 => Some(Self::Internal),
            _ => None,
        }
    }
}

/// Key of the IPv4 service map: a service address, port and protocol, a scope and a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Service4Key {
    /// The service (virtual) address.
    pub address: Be32,
    /// The service port.
    pub port: Be16,
    /// The transport protocol (`IPPROTO_*`, see [`Protocol`](crate::Protocol)).
    pub protocol: u8,
    /// The [`Scope`] as a `u8`.
    pub scope: u8,
    /// 0 for the service entry, `1..=count` for its backends.
    pub slot: u16,
    _pad: u16,
}

impl Service4Key {
    /// The key of `slot` of a service.
    #[must_use]
    pub const fn new(address: Be32, port: Be16, protocol: u8, scope: Scope, slot: u16) -> Self {
        Self {
            address,
            port,
            protocol,
            scope: scope as u8,
            slot,
            _pad: 0,
        }
    }

    /// The same service and scope, another slot.
    #[must_use]
    pub const fn with_slot(self, slot: u16) -> Self {
        Self { slot, ..self }
    }

    /// The same service and slot, another scope.
    #[must_use]
    pub const fn with_scope(self, scope: Scope) -> Self {
        Self {
            scope: scope as u8,
            ..self
        }
    }
}

/// Key of the IPv6 service map; see [`Service4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Service6Key {
    /// The service (virtual) address, in network byte order (the address octets).
    pub address: [u8; 16],
    /// The service port.
    pub port: Be16,
    /// The transport protocol (`IPPROTO_*`, see [`Protocol`](crate::Protocol)).
    pub protocol: u8,
    /// The [`Scope`] as a `u8`.
    pub scope: u8,
    /// 0 for the service entry, `1..=count` for its backends.
    pub slot: u16,
    _pad: u16,
}

impl Service6Key {
    /// The key of `slot` of a service.
    #[must_use]
    pub const fn new(address: [u8; 16], port: Be16, protocol: u8, scope: Scope, slot: u16) -> Self {
        Self {
            address,
            port,
            protocol,
            scope: scope as u8,
            slot,
            _pad: 0,
        }
    }

    /// The service address.
    #[must_use]
    pub const fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from_bits(u128::from_be_bytes(self.address))
    }

    /// The same service and scope, another slot.
    #[must_use]
    pub const fn with_slot(self, slot: u16) -> Self {
        Self { slot, ..self }
    }

    /// The same service and slot, another scope.
    #[must_use]
    pub const fn with_scope(self, scope: Scope) -> Self {
        Self {
            scope: scope as u8,
            ..self
        }
    }
}

/// Value of both service maps. Which fields mean something depends on the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slots `1..=count`: the backend. Slot 0: 0.
    pub backend_id: BackendId,
    /// Slot 0: how long (seconds) a client sticks to its backend when
    /// [`ServiceValue::FLAG_SESSION_AFFINITY`] is set. Other slots: 0.
    pub affinity_timeout_secs: u32,
    /// Slot 0: number of backend slots; 0 refuses connections. Other slots: 0.
    pub count: u16,
    /// Every slot: the rev-NAT entry of the service (0: none).
    pub rev_nat_id: RevNatId,
    /// Slot 0: `FLAG_*` bits. Other slots: 0.
    pub flags: u8,
    _pad: [u8; 3],
}

impl ServiceValue {
    /// Clients stick to one backend for [`ServiceValue::affinity_timeout_secs`] after their
    /// last new connection (`sessionAffinity: ClientIP`). At the socket a client is a network
    /// namespace (a pod), see [`AffinityKey`](crate::AffinityKey).
    pub const FLAG_SESSION_AFFINITY: u8 = 1 << 0;
    /// Traffic from the node uses the [`Scope::Internal`] entries of this service.
    pub const FLAG_TWO_SCOPES: u8 = 1 << 1;
    /// The slots list only endpoints on this node (`internalTrafficPolicy: Local`); with
    /// `count == 0` a refusal is counted as
    /// [`Reason::NoLocalBackendReject`](crate::Reason::NoLocalBackendReject).
    pub const FLAG_LOCAL_ONLY: u8 = 1 << 2;
    /// No endpoint is ready, so the slots list terminating endpoints that still serve
    /// (kube-proxy's fallback, KEP-1669). Informational: programs treat slots alike.
    pub const FLAG_TERMINATING_FALLBACK: u8 = 1 << 3;
    /// Traffic arriving on the node's interfaces (NodePort, LoadBalancer IP, external IP) is
    /// balanced per packet by the TC programs with this frontend's Maglev table.
    pub const FLAG_EXTERNAL: u8 = 1 << 4;
    /// The frontend's `loadBalancerSourceRanges` are enforced: a client outside them is
    /// dropped (source-range trie).
    pub const FLAG_SOURCE_RANGES: u8 = 1 << 5;
    /// A NodePort: stored with the unspecified address, serves every node address.
    pub const FLAG_NODEPORT: u8 = 1 << 6;
    /// `externalTrafficPolicy: Local`: the Maglev table lists only local endpoints, and
    /// the client's address is kept.
    pub const FLAG_EXTERNAL_LOCAL: u8 = 1 << 7;

    /// The value of slot 0.
    #[must_use]
    pub const fn service(
        count: u16,
        rev_nat_id: RevNatId,
        flags: u8,
        affinity_timeout_secs: u32,
    ) -> Self {
        Self {
            backend_id: 0,
            affinity_timeout_secs,
            count,
            rev_nat_id,
            flags,
            _pad: [0; 3],
        }
    }

    /// The value of a backend slot.
    #[must_use]
    pub const fn backend(backend_id: BackendId, rev_nat_id: RevNatId) -> Self {
        Self {
            backend_id,
            affinity_timeout_secs: 0,
            count: 0,
            rev_nat_id,
            flags: 0,
            _pad: [0; 3],
        }
    }

    /// Whether every bit of `flag` is set.
    #[must_use]
    pub const fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::{Scope, Service4Key, Service6Key, ServiceValue};
    use crate::{Be16, Be32, Protocol};

    #[test]
    fn service4_key_layout() {
        assert_eq!(size_of::<Service4Key>(), 12);
        assert_eq!(align_of::<Service4Key>(), 4);
        assert_eq!(offset_of!(Service4Key, address), 0);
        assert_eq!(offset_of!(Service4Key, port), 4);
        assert_eq!(offset_of!(Service4Key, protocol), 6);
        assert_eq!(offset_of!(Service4Key, scope), 7);
        assert_eq!(offset_of!(Service4Key, slot), 8);
        assert_eq!(offset_of!(Service4Key, _pad), 10);
    }

    #[test]
    fn service6_key_layout() {
        assert_eq!(size_of::<Service6Key>(), 24);
        assert_eq!(align_of::<Service6Key>(), 2);
        assert_eq!(offset_of!(Service6Key, address), 0);
        assert_eq!(offset_of!(Service6Key, port), 16);
        assert_eq!(offset_of!(Service6Key, protocol), 18);
        assert_eq!(offset_of!(Service6Key, scope), 19);
        assert_eq!(offset_of!(Service6Key, slot), 20);
        assert_eq!(offset_of!(Service6Key, _pad), 22);
    }

    #[test]
    fn service_value_layout() {
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(align_of::<ServiceValue>(), 4);
        assert_eq!(offset_of!(ServiceValue, backend_id), 0);
        assert_eq!(offset_of!(ServiceValue, affinity_timeout_secs), 4);
        assert_eq!(offset_of!(ServiceValue, count), 8);
        assert_eq!(offset_of!(ServiceValue, rev_nat_id), 10);
        assert_eq!(offset_of!(ServiceValue, flags), 12);
        assert_eq!(offset_of!(ServiceValue, _pad), 13);
    }

    #[test]
    fn keys_differ_only_by_slot_and_scope() {
        let head = Service4Key::new(
            Be32::from_ipv4(Ipv4Addr::new(10, 96, 0, 1)),
            Be16::from_host(80),
            Protocol::Tcp.raw(),
            Scope::External,
            0,
        );
        let slot = head.with_slot(3);
        assert_eq!(slot.slot, 3);
        assert_eq!(slot.with_slot(0), head);
        assert_eq!(head.with_scope(Scope::Internal).scope, 1);
        assert_eq!(Scope::from_raw(head.scope), Some(Scope::External));
        assert_eq!(Scope::from_raw(2), None);

        let v6 = Service6Key::new(
            Ipv6Addr::LOCALHOST.octets(),
            Be16::from_host(53),
            Protocol::Udp.raw(),
            Scope::Internal,
            0,
        );
        assert_eq!(v6.ipv6(), Ipv6Addr::LOCALHOST);
        assert_eq!(v6.with_slot(1).with_scope(Scope::External).slot, 1);
    }

    #[test]
    fn values_carry_only_their_slot_fields() {
        let head = ServiceValue::service(2, 7, ServiceValue::FLAG_SESSION_AFFINITY, 10_800);
        assert!(head.has_flag(ServiceValue::FLAG_SESSION_AFFINITY));
        assert!(!head.has_flag(ServiceValue::FLAG_TWO_SCOPES));
        assert_eq!((head.count, head.backend_id), (2, 0));
        let slot = ServiceValue::backend(42, 7);
        assert_eq!((slot.count, slot.backend_id, slot.rev_nat_id), (0, 42, 7));
    }
}
