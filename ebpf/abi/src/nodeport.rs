//! The per-packet (north-south) load balancer's maps: NodePort, LoadBalancer and external IP
//! frontends balanced by the TC programs on the node's interfaces.
//!
//! - **Maglev** ([`MAGLEV`](crate::maps::MAGLEV)): {rev-NAT id, family} → a Maglev lookup
//!   table of backend ids, computed in user space. A packet of a new flow picks
//!   `table[hash(5-tuple) % size]`; when a backend goes, only the flows it served move.
//! - **Conntrack** ([`CT4_TCP`](crate::maps::CT4_TCP), [`CT4_ANY`](crate::maps::CT4_ANY)):
//!   LRU maps, TCP apart from the other protocols so a UDP flood cannot evict TCP
//!   connections. Every balanced flow has two entries: the *original* direction (client →
//!   frontend), which names the backend and the source NAT, and the *reply* direction
//!   (backend → client or node), which names what to restore. User space deletes idle
//!   entries ([`CtValue::last_seen_secs`]).
//! - **Node addresses** ([`NODE_ADDR4`](crate::maps::NODE_ADDR4)): every IPv4 address of
//!   the node → the interface that carries it. A NodePort frontend is stored once, with the
//!   unspecified address (`0.0.0.0:nodePort`), and serves every node address.
//! - **Interface addresses** ([`IF_ADDR4`](crate::maps::IF_ADDR4)): interface index → the
//!   address the node uses as source when it sends a balanced flow out of that interface
//!   to a backend on another node (SNAT).
//! - **Source ranges** ([`SOURCE_RANGES4`](crate::maps::SOURCE_RANGES4)): an LPM trie of
//!   {rev-NAT id, client prefix}: `loadBalancerSourceRanges` of frontends that carry
//!   [`ServiceValue::FLAG_SOURCE_RANGES`](crate::ServiceValue::FLAG_SOURCE_RANGES).

use crate::{BackendId, Be16, Be32, RevNatId};

/// The largest Maglev table: the value of the Maglev map holds this many slots. A prime.
pub const MAGLEV_MAX_SIZE: usize = 16_381;

/// Table sizes user space may choose (primes; Maglev needs a prime size). The default is
/// [`MAGLEV_DEFAULT_SIZE`].
pub const MAGLEV_SIZES: [u32; 7] = [251, 509, 1_021, 2_039, 4_093, 8_191, 16_381];

/// The default Maglev table size: each backend of a frontend of up to 100 backends gets
/// about 1 % of the flows within ±10 % of its share.
pub const MAGLEV_DEFAULT_SIZE: u32 = 16_381;

/// Key of the Maglev map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    /// The frontend's rev-NAT id.
    pub rev_nat_id: RevNatId,
    /// [`FAMILY_V4`](crate::sock::FAMILY_V4) or [`FAMILY_V6`](crate::sock::FAMILY_V6).
    pub family: u8,
    _pad: u8,
}

impl MaglevKey {
    /// A key.
    #[must_use]
    pub const fn new(rev_nat_id: RevNatId, family: u8) -> Self {
        Self {
            rev_nat_id,
            family,
            _pad: 0,
        }
    }
}

/// Value of the Maglev map: `size` slots of backend ids, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    /// Slots in use (a prime of [`MAGLEV_SIZES`]); 0: no backend may take new flows.
    pub size: u32,
    /// Backend ids; slot `i < size` is never 0 when `size > 0`.
    pub slots: [BackendId; MAGLEV_MAX_SIZE],
}

/// How many ICMP port unreachable answers (rejects of flows to frontends without backends)
/// each CPU sends per second at most; more are dropped. The kernel's own ICMP errors are
/// limited alike (`net.ipv4.icmp_msgs_per_sec`, 1000 by default).
pub const ICMP_REJECTS_PER_SEC: u32 = 1_000;

/// Key of the IPv4 conntrack maps: a packet's addresses and ports as seen on the wire.
///
/// The key does not say which direction of its flow an entry describes: the value does
/// ([`CtValue::FLAG_REPLY`]), so that one lookup finds a packet's entry whichever way it
/// goes. The two directions of one flow never share a tuple (the reply's source is the
/// backend, the original's destination a frontend); a new flow whose reply tuple is taken
/// gets another source-NAT port (`BPF_NOEXIST`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    /// Source address.
    pub saddr: Be32,
    /// Destination address.
    pub daddr: Be32,
    /// Source port (ICMP: 0).
    pub sport: Be16,
    /// Destination port.
    pub dport: Be16,
    /// `IPPROTO_*`.
    pub protocol: u8,
    _pad: [u8; 3],
}

impl Ct4Key {
    /// A key.
    #[must_use]
    pub const fn new(saddr: Be32, daddr: Be32, sport: Be16, dport: Be16, protocol: u8) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of the IPv4 conntrack maps.
///
/// Original direction: `address:port` is the backend (the new destination), `nat_address:
/// nat_port` the source the node substituted ([`CtValue::FLAG_SNAT`]; else zero).
/// Reply direction ([`CtValue::FLAG_REPLY`]): `address:port` is the frontend (the new
/// source of replies), `nat_address:nat_port` the client (the new destination, with
/// [`CtValue::FLAG_SNAT`]).
///
/// An entry holds everything its packets' translation needs: the programs do not look the
/// backend up again for a known flow. When a backend leaves its frontend, user space
/// deletes the entries that name it, so that their flows are balanced anew.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// See the type's documentation.
    pub address: Be32,
    /// See the type's documentation.
    pub nat_address: Be32,
    /// See the type's documentation.
    pub port: Be16,
    /// See the type's documentation.
    pub nat_port: Be16,
    /// Last packet, seconds of `CLOCK_MONOTONIC`.
    pub last_seen_secs: u32,
    /// The backend (original direction).
    pub backend_id: BackendId,
    /// The frontend.
    pub rev_nat_id: RevNatId,
    /// `FLAG_*` bits.
    pub flags: u8,
    _pad: u8,
}

impl CtValue {
    /// The source was translated to a node address (the backend is on another node).
    pub const FLAG_SNAT: u8 = 1 << 0;
    /// A FIN or RST was seen: the entry expires after the short timeout.
    pub const FLAG_CLOSING: u8 = 1 << 1;
    /// A reply was seen.
    pub const FLAG_SEEN_REPLY: u8 = 1 << 2;
    /// The entry describes the reply direction of its flow (backend → client, or backend →
    /// node after source NAT); without it, the original direction (client → frontend).
    pub const FLAG_REPLY: u8 = 1 << 3;

    /// An entry.
    #[must_use]
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of a plain map value"
    )]
    pub const fn new(
        address: Be32,
        port: Be16,
        nat_address: Be32,
        nat_port: Be16,
        backend_id: BackendId,
        rev_nat_id: RevNatId,
        flags: u8,
        last_seen_secs: u32,
    ) -> Self {
        Self {
            address,
            nat_address,
            port,
            nat_port,
            last_seen_secs,
            backend_id,
            rev_nat_id,
            flags,
            _pad: 0,
        }
    }

    /// Whether every bit of `flag` is set.
    #[must_use]
    pub const fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// Key of the IPv6 conntrack maps; see [`Ct4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct6Key {
    /// Source address (octets).
    pub saddr: [u8; 16],
    /// Destination address (octets).
    pub daddr: [u8; 16],
    /// Source port.
    pub sport: Be16,
    /// Destination port.
    pub dport: Be16,
    /// `IPPROTO_*`.
    pub protocol: u8,
    _pad: [u8; 3],
}

impl Ct6Key {
    /// A key.
    #[must_use]
    pub const fn new(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: Be16,
        dport: Be16,
        protocol: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of the IPv6 conntrack maps; the fields mean what [`CtValue`]'s do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct6Value {
    /// See [`CtValue`].
    pub address: [u8; 16],
    /// See [`CtValue`].
    pub nat_address: [u8; 16],
    /// See [`CtValue`].
    pub port: Be16,
    /// See [`CtValue`].
    pub nat_port: Be16,
    /// Last packet, seconds of `CLOCK_MONOTONIC`.
    pub last_seen_secs: u32,
    /// The backend (original direction).
    pub backend_id: BackendId,
    /// The frontend.
    pub rev_nat_id: RevNatId,
    /// `CtValue::FLAG_*` bits.
    pub flags: u8,
    _pad: u8,
}

impl Ct6Value {
    /// An entry.
    #[must_use]
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of a plain map value"
    )]
    pub const fn new(
        address: [u8; 16],
        port: Be16,
        nat_address: [u8; 16],
        nat_port: Be16,
        backend_id: BackendId,
        rev_nat_id: RevNatId,
        flags: u8,
        last_seen_secs: u32,
    ) -> Self {
        Self {
            address,
            nat_address,
            port,
            nat_port,
            last_seen_secs,
            backend_id,
            rev_nat_id,
            flags,
            _pad: 0,
        }
    }

    /// Whether every bit of `flag` is set.
    #[must_use]
    pub const fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// The data of a key of the IPv6 source-range trie; see [`SourceRange4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRange6Key {
    /// The frontend, big-endian.
    pub rev_nat_id: Be16,
    _pad: u16,
    /// The client address or prefix (octets).
    pub address: [u8; 16],
}

impl SourceRange6Key {
    /// The key data of `address` of the frontend `rev_nat_id`.
    #[must_use]
    pub const fn new(rev_nat_id: RevNatId, address: [u8; 16]) -> Self {
        Self {
            rev_nat_id: Be16::from_host(rev_nat_id),
            _pad: 0,
            address,
        }
    }

    /// The trie prefix length of a client prefix of `len` bits.
    #[must_use]
    pub const fn prefix_len(len: u8) -> u32 {
        32 + len as u32
    }
}

/// Value of the node-address map: the interface that carries the address.
pub type NodeAddr = u32;

/// The data of a key of the IPv4 source-range LPM trie (the trie's key is `{prefix_len:
/// u32, data: SourceRange4Key}`, 12 bytes). The prefix length counts the 32 bits of
/// `rev_nat_id` and `_pad`, then the client prefix: see [`SourceRange4Key::prefix_len`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRange4Key {
    /// The frontend, big-endian so that it is matched bit for bit before the address.
    pub rev_nat_id: Be16,
    _pad: u16,
    /// The client address or prefix.
    pub address: Be32,
}

impl SourceRange4Key {
    /// The key data of `address` (a prefix or a client) of the frontend `rev_nat_id`.
    #[must_use]
    pub const fn new(rev_nat_id: RevNatId, address: Be32) -> Self {
        Self {
            rev_nat_id: Be16::from_host(rev_nat_id),
            _pad: 0,
            address,
        }
    }

    /// The trie prefix length of a client prefix of `len` bits.
    #[must_use]
    pub const fn prefix_len(len: u8) -> u32 {
        32 + len as u32
    }
}

/// Key of the IPv4 fragment map ([`FRAG4`](crate::maps::FRAG4)): what identifies the
/// fragments of one datagram on the wire (RFC 791: source, destination, protocol and IP
/// identification).
///
/// Only the first fragment of a datagram carries the L4 header. The programs record its
/// ports under this key ([`FragPorts`]); a later fragment (no L4 header) takes them from
/// here and goes through the same conntrack entry, so every fragment of a datagram gets
/// the translation of the first: the same backend, the same source NAT (as Cilium's
/// `IPV4_FRAG_DATAGRAMS` map). An LRU map: entries age out with use, nobody deletes them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frag4Key {
    /// Source address.
    pub saddr: Be32,
    /// Destination address.
    pub daddr: Be32,
    /// The IP identification, as on the wire.
    pub id: Be16,
    /// `IPPROTO_*`.
    pub protocol: u8,
    _pad: u8,
}

impl Frag4Key {
    /// A key.
    #[must_use]
    pub const fn new(saddr: Be32, daddr: Be32, id: Be16, protocol: u8) -> Self {
        Self {
            saddr,
            daddr,
            id,
            protocol,
            _pad: 0,
        }
    }
}

/// Key of the IPv6 fragment map ([`FRAG6`](crate::maps::FRAG6)): the addresses, the
/// identification of the fragment header (RFC 8200) and the upper-layer protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frag6Key {
    /// Source address (octets).
    pub saddr: [u8; 16],
    /// Destination address (octets).
    pub daddr: [u8; 16],
    /// The fragment header's identification, as on the wire.
    pub id: Be32,
    /// `IPPROTO_*` of the upper-layer header.
    pub protocol: u8,
    _pad: [u8; 3],
}

impl Frag6Key {
    /// A key.
    #[must_use]
    pub const fn new(saddr: [u8; 16], daddr: [u8; 16], id: Be32, protocol: u8) -> Self {
        Self {
            saddr,
            daddr,
            id,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of the fragment maps: the ports of a datagram's first fragment, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    /// Source port.
    pub sport: Be16,
    /// Destination port.
    pub dport: Be16,
}

/// The low port of the range source NAT picks from when a client's own port is taken.
pub const SNAT_PORT_MIN: u16 = 32_768;
/// The number of ports in the source NAT range.
pub const SNAT_PORT_COUNT: u16 = 28_232;

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::{
        Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key, Frag6Key, FragPorts, MAGLEV_MAX_SIZE,
        MAGLEV_SIZES, MaglevKey, SourceRange4Key, SourceRange6Key,
    };

    #[test]
    fn layouts() {
        assert_eq!(size_of::<MaglevKey>(), 4);
        assert_eq!(size_of::<Ct4Key>(), 16);
        assert_eq!(align_of::<Ct4Key>(), 4);
        assert_eq!(offset_of!(Ct4Key, protocol), 12);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(offset_of!(CtValue, last_seen_secs), 12);
        assert_eq!(offset_of!(CtValue, backend_id), 16);
        assert_eq!(offset_of!(CtValue, rev_nat_id), 20);
        assert_eq!(offset_of!(CtValue, flags), 22);
        assert_eq!(size_of::<SourceRange4Key>(), 8);
        assert_eq!(offset_of!(SourceRange4Key, address), 4);
        assert_eq!(size_of::<Ct6Key>(), 40);
        assert_eq!(offset_of!(Ct6Key, protocol), 36);
        assert_eq!(size_of::<Ct6Value>(), 48);
        assert_eq!(offset_of!(Ct6Value, last_seen_secs), 36);
        assert_eq!(offset_of!(Ct6Value, flags), 46);
        assert_eq!(size_of::<SourceRange6Key>(), 20);
        assert_eq!(size_of::<Frag4Key>(), 12);
        assert_eq!(offset_of!(Frag4Key, protocol), 10);
        assert_eq!(size_of::<Frag6Key>(), 40);
        assert_eq!(offset_of!(Frag6Key, protocol), 36);
        assert_eq!(size_of::<FragPorts>(), 4);
    }

    #[test]
    fn maglev_sizes_are_primes_that_fit() {
        for size in MAGLEV_SIZES {
            assert!(size as usize <= MAGLEV_MAX_SIZE);
            assert!(
                (2..size)
                    .take_while(|d| d * d <= size)
                    .all(|d| size % d != 0)
            );
        }
        assert_eq!(*MAGLEV_SIZES.last().unwrap() as usize, MAGLEV_MAX_SIZE);
    }
}
