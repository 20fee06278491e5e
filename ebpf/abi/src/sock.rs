//! The per-socket maps of the socket load balancer.
//!
//! - **Reverse socket NAT** ([`SOCK_REV_NAT4`](crate::maps::SOCK_REV_NAT4),
//!   [`SOCK_REV_NAT6`](crate::maps::SOCK_REV_NAT6)): socket-local storage
//!   (`BPF_MAP_TYPE_SK_STORAGE`), one [`SockRevNatTable`] per balanced socket, created by
//!   the first `connect`/`sendmsg` the programs send to a backend and freed by the kernel
//!   with the socket. Each slot records {backend address, backend port} → {service
//!   address, service port, rev-NAT id}. `recvmsg` (replies to unconnected UDP sockets)
//!   and `getpeername` look the backend up there and show the application the service
//!   address instead. A slot is used only while the rev-NAT map still maps its id to the
//!   same service address, so a deleted (or re-created) service is never shown by mistake.
//!   A socket sent to more than [`SOCK_REV_NAT_SLOTS`] backends at once (an unconnected
//!   UDP socket talking to that many Services) reuses its oldest slot.
//! - **Session affinity** ([`AFFINITY`](crate::maps::AFFINITY)): {client, rev-NAT id, family}
//!   → {backend id, last use}. At the socket the source address is not known yet when a
//!   connection is balanced, so the client is the network namespace of the socket (its
//!   cookie): one pod, as kube-proxy's `ClientIP` is one pod address. An LRU map: the
//!   kernel evicts the least recently used entries when full, so it never refuses an
//!   update for lack of room.

use crate::{BackendId, Be16, Be32, RevNatId};

/// Slots of a socket's reverse NAT table: backends (of distinct Services, or of one
/// Service re-balanced) a socket can be sent to at once and still be shown the Service.
pub const SOCK_REV_NAT_SLOTS: usize = 8;

/// The service a socket asked for (IPv4): what it is shown instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNat4 {
    /// The service address.
    pub address: Be32,
    /// The service port.
    pub port: Be16,
    /// The service frontend's rev-NAT id.
    pub rev_nat_id: RevNatId,
}

impl SockRevNat4 {
    /// A value.
    #[must_use]
    pub const fn new(address: Be32, port: Be16, rev_nat_id: RevNatId) -> Self {
        Self {
            address,
            port,
            rev_nat_id,
        }
    }
}

/// The service a socket asked for (IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNat6 {
    /// The service address (octets).
    pub address: [u8; 16],
    /// The service port.
    pub port: Be16,
    /// The service frontend's rev-NAT id.
    pub rev_nat_id: RevNatId,
}

impl SockRevNat6 {
    /// A value.
    #[must_use]
    pub const fn new(address: [u8; 16], port: Be16, rev_nat_id: RevNatId) -> Self {
        Self {
            address,
            port,
            rev_nat_id,
        }
    }
}

/// One slot of a socket's reverse NAT table: the backend it was sent to, and the service.
/// An all-zero slot (port 0) is empty: no backend has port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatSlot<A, S> {
    /// The backend address the socket was sent to.
    pub backend_address: A,
    /// The backend port.
    pub backend_port: Be16,
    _pad: u16,
    /// The service it asked for.
    pub service: S,
}

/// A slot of an IPv4 socket's table (16 bytes).
pub type SockRevNat4Slot = SockRevNatSlot<Be32, SockRevNat4>;
/// A slot of an IPv6 socket's table (40 bytes).
pub type SockRevNat6Slot = SockRevNatSlot<[u8; 16], SockRevNat6>;

/// The value of a reverse socket NAT map: one socket's slots, filled in turn.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatTable<A, S> {
    /// The slots.
    pub slots: [SockRevNatSlot<A, S>; SOCK_REV_NAT_SLOTS],
    /// How many slots were ever written; the next new backend goes to `next % SLOTS`.
    pub next: u32,
    _pad: u32,
}

/// An IPv4 socket's table (136 bytes).
pub type SockRevNat4Table = SockRevNatTable<Be32, SockRevNat4>;
/// An IPv6 socket's table (328 bytes).
pub type SockRevNat6Table = SockRevNatTable<[u8; 16], SockRevNat6>;

impl<A: Copy + Default, S: Copy + Default> Default for SockRevNatTable<A, S> {
    fn default() -> Self {
        Self {
            slots: [SockRevNatSlot::default(); SOCK_REV_NAT_SLOTS],
            next: 0,
            _pad: 0,
        }
    }
}

#[expect(
    clippy::inline_always,
    reason = "called from the eBPF programs, where a call with a map value pointer is best \
              avoided"
)]
impl<A: Copy + PartialEq, S: Copy + PartialEq> SockRevNatTable<A, S> {
    /// Records that the socket, sent to `address:port`, asked for `service`: in the slot of
    /// that backend if there is one (written only when it differs), else in the next slot
    /// in turn (the oldest).
    #[inline(always)]
    pub fn record(&mut self, address: A, port: Be16, service: S) {
        let mut i = 0;
        while i < SOCK_REV_NAT_SLOTS {
            let slot = &mut self.slots[i];
            if slot.backend_port == port && slot.backend_address == address {
                if slot.service != service {
                    slot.service = service;
                }
                return;
            }
            i += 1;
        }
        let at = self.next as usize % SOCK_REV_NAT_SLOTS;
        self.slots[at] = SockRevNatSlot {
            backend_address: address,
            backend_port: port,
            _pad: 0,
            service,
        };
        self.next = self.next.wrapping_add(1);
    }

    /// The service recorded for the backend `address:port`, if any.
    #[inline(always)]
    #[must_use]
    pub fn lookup(&self, address: A, port: Be16) -> Option<S> {
        if port.raw() == 0 {
            return None;
        }
        let mut i = 0;
        while i < SOCK_REV_NAT_SLOTS {
            let slot = &self.slots[i];
            if slot.backend_port == port && slot.backend_address == address {
                return Some(slot.service);
            }
            i += 1;
        }
        None
    }
}

/// `AF_INET`, the family byte of an IPv4 [`AffinityKey`].
pub const FAMILY_V4: u8 = 4;
/// The family byte of an IPv6 [`AffinityKey`].
pub const FAMILY_V6: u8 = 6;

/// Key of the session-affinity map: which client, which service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie` of the client socket: its network namespace.
    pub client: u64,
    /// The service frontend (rev-NAT ids are per family, hence [`AffinityKey::family`]).
    pub rev_nat_id: RevNatId,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    _pad: [u8; 5],
}

impl AffinityKey {
    /// A key.
    #[must_use]
    pub const fn new(client: u64, rev_nat_id: RevNatId, family: u8) -> Self {
        Self {
            client,
            rev_nat_id,
            family,
            _pad: [0; 5],
        }
    }
}

/// Value of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The backend the client sticks to.
    pub backend_id: BackendId,
    /// When the client last opened a connection to the service, in seconds of
    /// `CLOCK_MONOTONIC` (`bpf_ktime_get_ns() / 10^9`).
    pub last_used_secs: u32,
}

impl AffinityValue {
    /// A value.
    #[must_use]
    pub const fn new(backend_id: BackendId, last_used_secs: u32) -> Self {
        Self {
            backend_id,
            last_used_secs,
        }
    }

    /// Whether the entry still holds at `now_secs` for a service whose timeout is
    /// `timeout_secs`: kube-proxy's `recent --rcheck --seconds` semantics (a client that
    /// came back within the timeout sticks).
    #[must_use]
    pub const fn is_fresh(&self, now_secs: u32, timeout_secs: u32) -> bool {
        now_secs.wrapping_sub(self.last_used_secs) <= timeout_secs
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::{
        AffinityKey, AffinityValue, SOCK_REV_NAT_SLOTS, SockRevNat4, SockRevNat4Slot,
        SockRevNat4Table, SockRevNat6, SockRevNat6Slot, SockRevNat6Table,
    };
    use crate::{Be16, Be32};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<SockRevNat4>(), 8);
        assert_eq!(offset_of!(SockRevNat4, rev_nat_id), 6);
        assert_eq!(size_of::<SockRevNat4Slot>(), 16);
        assert_eq!(offset_of!(SockRevNat4Slot, backend_port), 4);
        assert_eq!(offset_of!(SockRevNat4Slot, _pad), 6);
        assert_eq!(offset_of!(SockRevNat4Slot, service), 8);
        assert_eq!(size_of::<SockRevNat4Table>(), 16 * SOCK_REV_NAT_SLOTS + 8);
        assert_eq!(offset_of!(SockRevNat4Table, next), 16 * SOCK_REV_NAT_SLOTS);
        assert_eq!(size_of::<SockRevNat6>(), 20);
        assert_eq!(size_of::<SockRevNat6Slot>(), 40);
        assert_eq!(offset_of!(SockRevNat6Slot, backend_port), 16);
        assert_eq!(offset_of!(SockRevNat6Slot, _pad), 18);
        assert_eq!(offset_of!(SockRevNat6Slot, service), 20);
        assert_eq!(size_of::<SockRevNat6Table>(), 40 * SOCK_REV_NAT_SLOTS + 8);
        assert_eq!(offset_of!(SockRevNat6Table, next), 40 * SOCK_REV_NAT_SLOTS);
        assert_eq!(align_of::<SockRevNat6Table>(), 4);
        assert_eq!(offset_of!(SockRevNat6, rev_nat_id), 18);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(offset_of!(AffinityKey, rev_nat_id), 8);
        assert_eq!(offset_of!(AffinityKey, family), 10);
        assert_eq!(offset_of!(AffinityKey, _pad), 11);
        assert_eq!(size_of::<AffinityValue>(), 8);
    }

    #[test]
    fn affinity_freshness_follows_the_timeout() {
        let entry = AffinityValue::new(7, 100);
        assert!(entry.is_fresh(100, 10));
        assert!(entry.is_fresh(110, 10));
        assert!(!entry.is_fresh(111, 10));
        // The clock wrapping around u32 seconds (136 years) does not make entries eternal.
        assert!(AffinityValue::new(7, u32::MAX).is_fresh(3, 10));
    }

    /// A table keeps one slot per backend, rewrites it in place, and past
    /// [`SOCK_REV_NAT_SLOTS`] backends reuses the oldest slot; an empty slot matches
    /// nothing.
    #[test]
    fn a_table_keeps_the_latest_backends() {
        let addr = |n: u8| Be32::from_raw(u32::from_ne_bytes([10, 0, 0, n]));
        let port = Be16::from_raw(8080u16.to_be());
        let service = |n: u16| SockRevNat4::new(addr(200), Be16::from_raw(n.to_be()), n);
        let mut table = SockRevNat4Table::default();
        assert_eq!(table.lookup(Be32::from_raw(0), Be16::from_raw(0)), None);
        table.record(addr(1), port, service(53));
        assert_eq!(table.lookup(addr(1), port), Some(service(53)));
        assert_eq!(table.lookup(addr(2), port), None);
        // The same backend again: the same slot, the newer service.
        table.record(addr(1), port, service(54));
        assert_eq!(table.next, 1);
        assert_eq!(table.lookup(addr(1), port), Some(service(54)));
        // More backends than slots: the oldest goes.
        let slots = u8::try_from(SOCK_REV_NAT_SLOTS).unwrap();
        for n in 2..=slots + 1 {
            table.record(addr(n), port, service(u16::from(n)));
        }
        assert_eq!(table.lookup(addr(1), port), None);
        for n in 2..=slots + 1 {
            assert_eq!(table.lookup(addr(n), port), Some(service(u16::from(n))));
        }
        let mut table6 = SockRevNat6Table::default();
        let service6 = SockRevNat6::new([0xfd; 16], port, 7);
        table6.record([1; 16], port, service6);
        assert_eq!(table6.lookup([1; 16], port), Some(service6));
        assert_eq!(table6.lookup([2; 16], port), None);
    }
}
