//! The backend maps ([`BACKENDS4`](crate::maps::BACKENDS4), [`BACKENDS6`](crate::maps::BACKENDS6)):
//! backend id → where to send the traffic.
//!
//! Ids are allocated by user space, are never 0, and are not reused while a service slot
//! may still reference them. A backend's address and port never change under the same id:
//! a changed endpoint gets a new id, so a program never mixes two endpoints.
//!
//! A backend id belongs to exactly one service frontend (address, port, protocol): the entry
//! carries that frontend's [`RevNatId`], and the map holds exactly the backends the
//! frontend's slots list. So "the id exists and its `rev_nat_id` is the service's" means
//! "this backend may serve this service now", which is what a session-affinity entry is
//! checked against.

use core::mem::size_of;
use core::net::Ipv6Addr;

use crate::{Be16, Be32, RevNatId};

/// Key of the backend maps (host byte order; 0 is never a valid id).
pub type BackendId = u32;

/// Lifecycle of a backend, stored as a `u8`.
///
/// Service slots list the backends new connections may use, normally only
/// [`BackendState::Active`] ones; the state is what `fairlead status` shows and what the
/// per-packet path uses to keep existing flows on a backend that stopped taking new ones.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Ready: takes new connections.
    Active = 0,
    /// Shutting down (`terminating` in its EndpointSlice): serves existing connections;
    /// takes new ones only when a service has no active backend left.
    Terminating = 1,
    /// Failed a health check; takes no new connections.
    Quarantined = 2,
    /// Drained by an operator; takes no new connections.
    Maintenance = 3,
}

/// The backend runs on this node: the per-packet path sends external traffic to it without
/// source NAT (bit of [`Backend4::flags`] / [`Backend6::flags`]).
pub const BACKEND_FLAG_LOCAL: u8 = 1 << 0;

impl BackendState {
    /// The state numbered `raw`.
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Active),
            1 => Some(Self::Terminating),
            2 => Some(Self::Quarantined),
            3 => Some(Self::Maintenance),
            _ => None,
        }
    }

    /// The lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Terminating => "terminating",
            Self::Quarantined => "quarantined",
            Self::Maintenance => "maintenance",
        }
    }
}

/// Value of the IPv4 backend map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend4 {
    /// The backend address.
    pub address: Be32,
    /// The backend port.
    pub port: Be16,
    /// The transport protocol (`IPPROTO_*`).
    pub protocol: u8,
    /// The [`BackendState`] as a `u8`.
    pub state: u8,
    /// The rev-NAT id of the one service frontend this backend serves.
    pub rev_nat_id: RevNatId,
    /// `FLAG_*` bits (zero in maps written before the field existed: not local).
    pub flags: u8,
    _pad: u8,
}

impl Backend4 {
    /// A backend of the frontend whose rev-NAT id is `rev_nat_id`.
    #[must_use]
    pub const fn new(
        address: Be32,
        port: Be16,
        protocol: u8,
        state: BackendState,
        rev_nat_id: RevNatId,
    ) -> Self {
        Self {
            address,
            port,
            protocol,
            state: state as u8,
            rev_nat_id,
            flags: 0,
            _pad: 0,
        }
    }

    /// The same backend with `FLAG_*` bits.
    #[must_use]
    pub const fn with_flags(self, flags: u8) -> Self {
        Self { flags, ..self }
    }
}

/// Value of the IPv6 backend map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    /// The backend address, in network byte order (the address octets).
    pub address: [u8; 16],
    /// The backend port.
    pub port: Be16,
    /// The transport protocol (`IPPROTO_*`).
    pub protocol: u8,
    /// The [`BackendState`] as a `u8`.
    pub state: u8,
    /// The rev-NAT id of the one service frontend this backend serves.
    pub rev_nat_id: RevNatId,
    /// `FLAG_*` bits (zero in maps written before the field existed: not local).
    pub flags: u8,
    _pad: u8,
}

impl Backend6 {
    /// A backend of the frontend whose rev-NAT id is `rev_nat_id`.
    #[must_use]
    pub const fn new(
        address: [u8; 16],
        port: Be16,
        protocol: u8,
        state: BackendState,
        rev_nat_id: RevNatId,
    ) -> Self {
        Self {
            address,
            port,
            protocol,
            state: state as u8,
            rev_nat_id,
            flags: 0,
            _pad: 0,
        }
    }

    /// The same backend with `FLAG_*` bits.
    #[must_use]
    pub const fn with_flags(self, flags: u8) -> Self {
        Self { flags, ..self }
    }

    /// The backend address.
    #[must_use]
    pub const fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from_bits(u128::from_be_bytes(self.address))
    }
}

const _: () = assert!(size_of::<BackendId>() == 4);

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::{Backend4, Backend6, BackendState};
    use crate::{Be16, Be32, Protocol};

    #[test]
    fn backend4_layout() {
        assert_eq!(size_of::<Backend4>(), 12);
        assert_eq!(align_of::<Backend4>(), 4);
        assert_eq!(offset_of!(Backend4, address), 0);
        assert_eq!(offset_of!(Backend4, port), 4);
        assert_eq!(offset_of!(Backend4, protocol), 6);
        assert_eq!(offset_of!(Backend4, state), 7);
        assert_eq!(offset_of!(Backend4, rev_nat_id), 8);
        assert_eq!(offset_of!(Backend4, flags), 10);
        assert_eq!(offset_of!(Backend4, _pad), 11);
    }

    #[test]
    fn backend6_layout() {
        assert_eq!(size_of::<Backend6>(), 24);
        assert_eq!(align_of::<Backend6>(), 2);
        assert_eq!(offset_of!(Backend6, address), 0);
        assert_eq!(offset_of!(Backend6, port), 16);
        assert_eq!(offset_of!(Backend6, protocol), 18);
        assert_eq!(offset_of!(Backend6, state), 19);
        assert_eq!(offset_of!(Backend6, rev_nat_id), 20);
        assert_eq!(offset_of!(Backend6, flags), 22);
        assert_eq!(offset_of!(Backend6, _pad), 23);
    }

    #[test]
    fn backends_round_trip() {
        let b = Backend4::new(
            Be32::from_ipv4(Ipv4Addr::new(10, 0, 0, 7)),
            Be16::from_host(8080),
            Protocol::Tcp.raw(),
            BackendState::Terminating,
            3,
        );
        assert_eq!(b.rev_nat_id, 3);
        assert_eq!(b.address.to_ipv4(), Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(b.port.to_host(), 8080);
        assert_eq!(
            BackendState::from_raw(b.state),
            Some(BackendState::Terminating)
        );
        let b6 = Backend6::new(
            Ipv6Addr::LOCALHOST.octets(),
            Be16::from_host(8080),
            Protocol::Udp.raw(),
            BackendState::Active,
            4,
        );
        assert_eq!(b6.ipv6(), Ipv6Addr::LOCALHOST);
    }

    #[test]
    fn states_round_trip() {
        for state in [
            BackendState::Active,
            BackendState::Terminating,
            BackendState::Quarantined,
            BackendState::Maintenance,
        ] {
            assert_eq!(BackendState::from_raw(state as u8), Some(state));
            assert!(!state.name().is_empty());
        }
        assert_eq!(BackendState::from_raw(4), None);
    }
}
