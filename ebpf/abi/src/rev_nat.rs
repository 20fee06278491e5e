//! The reverse-NAT maps ([`REV_NAT4`](crate::maps::REV_NAT4), [`REV_NAT6`](crate::maps::REV_NAT6)):
//! rev-NAT id → the service address and port a translated flow was sent to.
//!
//! Every service address/port has one id (in every slot of its service entries); programs
//! that must show the client the service instead of the backend (`getpeername`, `recvmsg`,
//! replies on the per-packet path) look it up here.

use core::net::Ipv6Addr;

use crate::{Be16, Be32};

/// Key of the rev-NAT maps (host byte order; 0 means "none").
pub type RevNatId = u16;

/// Value of the IPv4 rev-NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    /// The service address.
    pub address: Be32,
    /// The service port.
    pub port: Be16,
    _pad: u16,
}

impl RevNat4 {
    /// A rev-NAT entry.
    #[must_use]
    pub const fn new(address: Be32, port: Be16) -> Self {
        Self {
            address,
            port,
            _pad: 0,
        }
    }
}

/// Value of the IPv6 rev-NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat6 {
    /// The service address, in network byte order (the address octets).
    pub address: [u8; 16],
    /// The service port.
    pub port: Be16,
    _pad: u16,
}

impl RevNat6 {
    /// A rev-NAT entry.
    #[must_use]
    pub const fn new(address: [u8; 16], port: Be16) -> Self {
        Self {
            address,
            port,
            _pad: 0,
        }
    }

    /// The service address.
    #[must_use]
    pub const fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from_bits(u128::from_be_bytes(self.address))
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::{RevNat4, RevNat6, RevNatId};
    use crate::{Be16, Be32};

    #[test]
    fn rev_nat4_layout() {
        assert_eq!(size_of::<RevNatId>(), 2);
        assert_eq!(size_of::<RevNat4>(), 8);
        assert_eq!(align_of::<RevNat4>(), 4);
        assert_eq!(offset_of!(RevNat4, address), 0);
        assert_eq!(offset_of!(RevNat4, port), 4);
        assert_eq!(offset_of!(RevNat4, _pad), 6);
    }

    #[test]
    fn rev_nat6_layout() {
        assert_eq!(size_of::<RevNat6>(), 20);
        assert_eq!(align_of::<RevNat6>(), 2);
        assert_eq!(offset_of!(RevNat6, address), 0);
        assert_eq!(offset_of!(RevNat6, port), 16);
        assert_eq!(offset_of!(RevNat6, _pad), 18);
    }

    #[test]
    fn entries_round_trip() {
        let v4 = RevNat4::new(
            Be32::from_ipv4(Ipv4Addr::new(10, 96, 0, 10)),
            Be16::from_host(53),
        );
        assert_eq!(
            (v4.address.to_ipv4(), v4.port.to_host()),
            (Ipv4Addr::new(10, 96, 0, 10), 53)
        );
        let v6 = RevNat6::new(Ipv6Addr::LOCALHOST.octets(), Be16::from_host(53));
        assert_eq!(v6.ipv6(), Ipv6Addr::LOCALHOST);
    }
}
