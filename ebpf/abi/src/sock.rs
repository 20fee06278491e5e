//! The per-socket LRU maps of the socket load balancer.
//!
//! - **Reverse socket NAT** ([`SOCK_REV_NAT4`](crate::maps::SOCK_REV_NAT4),
//!   [`SOCK_REV_NAT6`](crate::maps::SOCK_REV_NAT6)): when a program sends a socket to a
//!   backend, it records {socket cookie, backend address, backend port} → {service address,
//!   service port, rev-NAT id}. `recvmsg` (replies to unconnected UDP sockets) and
//!   `getpeername` look the backend up there and show the application the service address
//!   instead. An entry is used only while the rev-NAT map still maps its id to the same
//!   service address, so a deleted (or re-created) service is never shown by mistake.
//! - **Session affinity** ([`AFFINITY`](crate::maps::AFFINITY)): {client, rev-NAT id, family}
//!   → {backend id, last use}. At the socket the source address is not known yet when a
//!   connection is balanced, so the client is the network namespace of the socket (its
//!   cookie): one pod, as kube-proxy's `ClientIP` is one pod address.
//!
//! Both are LRU maps: the kernel evicts the least recently used entries when full, so they
//! never refuse an update for lack of room.

use crate::{BackendId, Be16, Be32, RevNatId};

/// Key of the IPv4 reverse socket NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNat4Key {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// The backend address the socket was sent to.
    pub address: Be32,
    /// The backend port.
    pub port: Be16,
    _pad: u16,
}

impl SockRevNat4Key {
    /// A key.
    #[must_use]
    pub const fn new(cookie: u64, address: Be32, port: Be16) -> Self {
        Self {
            cookie,
            address,
            port,
            _pad: 0,
        }
    }
}

/// Value of the IPv4 reverse socket NAT map: the service the socket asked for.
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

/// Key of the IPv6 reverse socket NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNat6Key {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// The backend address (octets).
    pub address: [u8; 16],
    /// The backend port.
    pub port: Be16,
    _pad: [u8; 6],
}

impl SockRevNat6Key {
    /// A key.
    #[must_use]
    pub const fn new(cookie: u64, address: [u8; 16], port: Be16) -> Self {
        Self {
            cookie,
            address,
            port,
            _pad: [0; 6],
        }
    }
}

/// Value of the IPv6 reverse socket NAT map.
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
        AffinityKey, AffinityValue, SockRevNat4, SockRevNat4Key, SockRevNat6, SockRevNat6Key,
    };

    #[test]
    fn layouts() {
        assert_eq!(size_of::<SockRevNat4Key>(), 16);
        assert_eq!(align_of::<SockRevNat4Key>(), 8);
        assert_eq!(offset_of!(SockRevNat4Key, address), 8);
        assert_eq!(offset_of!(SockRevNat4Key, port), 12);
        assert_eq!(offset_of!(SockRevNat4Key, _pad), 14);
        assert_eq!(size_of::<SockRevNat4>(), 8);
        assert_eq!(offset_of!(SockRevNat4, rev_nat_id), 6);
        assert_eq!(size_of::<SockRevNat6Key>(), 32);
        assert_eq!(offset_of!(SockRevNat6Key, address), 8);
        assert_eq!(offset_of!(SockRevNat6Key, port), 24);
        assert_eq!(offset_of!(SockRevNat6Key, _pad), 26);
        assert_eq!(size_of::<SockRevNat6>(), 20);
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
}
