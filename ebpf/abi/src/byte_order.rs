//! Network-byte-order wrappers for the address and port fields of map types.

use core::net::Ipv4Addr;

/// A 16-bit value (a port) stored in network byte order.
///
/// The wrapped `u16` is the raw value whose bytes in memory are big-endian: exactly what
/// `sin_port` holds and what a BPF program reads from `bpf_sock_addr::user_port`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Be16(u16);

impl Be16 {
    /// Converts a host-order value (e.g. port `80`).
    #[must_use]
    pub const fn from_host(value: u16) -> Self {
        Self(value.to_be())
    }

    /// Wraps a value that is already in network byte order (e.g. read from a socket address).
    #[must_use]
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }

    /// The value in host byte order.
    #[must_use]
    pub const fn to_host(self) -> u16 {
        u16::from_be(self.0)
    }

    /// The value in network byte order, as stored (e.g. to write into a socket address).
    #[must_use]
    pub const fn raw(self) -> u16 {
        self.0
    }
}

/// A 32-bit value (an IPv4 address) stored in network byte order.
///
/// The wrapped `u32` is the raw value whose bytes in memory are the address octets: exactly
/// what `sin_addr` holds and what a BPF program reads from `bpf_sock_addr::user_ip4`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Be32(u32);

impl Be32 {
    /// Converts a host-order value.
    #[must_use]
    pub const fn from_host(value: u32) -> Self {
        Self(value.to_be())
    }

    /// Wraps a value that is already in network byte order.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// An IPv4 address.
    #[must_use]
    pub const fn from_ipv4(addr: Ipv4Addr) -> Self {
        Self(u32::from_ne_bytes(addr.octets()))
    }

    /// The value in host byte order.
    #[must_use]
    pub const fn to_host(self) -> u32 {
        u32::from_be(self.0)
    }

    /// The value as an IPv4 address.
    #[must_use]
    pub const fn to_ipv4(self) -> Ipv4Addr {
        let [a, b, c, d] = self.0.to_ne_bytes();
        Ipv4Addr::new(a, b, c, d)
    }

    /// The value in network byte order, as stored.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl From<Ipv4Addr> for Be32 {
    fn from(addr: Ipv4Addr) -> Self {
        Self::from_ipv4(addr)
    }
}

impl From<Be32> for Ipv4Addr {
    fn from(value: Be32) -> Self {
        value.to_ipv4()
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::{Be16, Be32};

    #[test]
    fn port_bytes_are_big_endian_in_memory() {
        let port = Be16::from_host(0x1f90); // 8080
        assert_eq!(port.raw().to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port.to_host(), 8080);
        assert_eq!(Be16::from_raw(port.raw()), port);
    }

    #[test]
    fn address_bytes_are_the_octets() {
        let addr = Be32::from_ipv4(Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(addr.raw().to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(addr.to_host(), 0x0a60_0001);
        assert_eq!(addr.to_ipv4(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(Be32::from_host(0x0a60_0001), addr);
        assert_eq!(
            Ipv4Addr::from(Be32::from(Ipv4Addr::LOCALHOST)),
            Ipv4Addr::LOCALHOST
        );
    }
}
