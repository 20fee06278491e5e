//! The kernel/user contract of fairlead's eBPF data path: map names, map sizes and the `#[repr(C)]` key and value types, compiled into both the eBPF programs and user space.
//!
//! Everything the kernel and user space must agree on is declared here, once:
//!
//! - [`maps`]: the name, kind, default size and flags of every map;
//! - [`service`], [`backend`], [`rev_nat`]: the socket load balancer's tables, modelled on
//!   Cilium's `lb4_key` / `lb4_service` / `lb4_backend` / `lb4_reverse_nat` split;
//! - [`sock`]: the per-socket LRU maps (reverse socket NAT, session affinity);
//! - [`nodeport`]: the per-packet load balancer's maps (Maglev, conntrack, node addresses,
//!   source ranges);
//! - [`counters`]: the per-CPU counter array and the reason behind every index;
//! - [`programs`]: the names of the programs in the eBPF object.
//!
//! # Layout rules
//!
//! Every map type is `#[repr(C)]`, has explicit (private, always zero) padding fields so
//! that no byte of a hash key is left undefined, and is pinned by size and alignment tests.
//! Addresses and ports are stored in network byte order through [`Be16`] and [`Be32`], so a
//! byte-order mistake is a type error rather than a silent mismatch. Identifiers (backend
//! ids, rev-NAT ids, slots) never leave the node and are stored in host byte order.
//!
//! Maps are pinned and adopted across restarts, so a layout change is an incompatible
//! change: append, never reorder, and change a map's name when its layout changes.
//!
//! With the `user` feature every key and value type implements `aya::Pod`.

#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "user")]
extern crate alloc;

pub mod backend;
pub mod counters;
pub mod maps;
pub mod nodeport;
pub mod programs;
pub mod rev_nat;
pub mod service;
pub mod sock;

mod byte_order;
#[cfg(feature = "user")]
mod user;

pub use backend::{BACKEND_FLAG_LOCAL, Backend4, Backend6, BackendId, BackendState};
pub use byte_order::{Be16, Be32};
pub use counters::{Reason, ReasonKind};
pub use nodeport::{
    Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key, Frag6Key, FragPorts, MaglevKey, MaglevTable,
    SourceRange4Key, SourceRange6Key,
};
pub use rev_nat::{RevNat4, RevNat6, RevNatId};
pub use service::{Scope, Service4Key, Service6Key, ServiceValue};
pub use sock::{
    AffinityKey, AffinityValue, SOCK_REV_NAT_SLOTS, SockRevNat4, SockRevNat4Slot, SockRevNat4Table,
    SockRevNat6, SockRevNat6Slot, SockRevNat6Table,
};

/// A transport protocol as the kernel numbers it (`IPPROTO_*`), stored as a `u8` in map keys.
///
/// Map types hold the raw `u8` (a value written by the kernel may be any byte); use
/// [`Protocol::from_raw`] to interpret it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `IPPROTO_TCP`.
    Tcp = 6,
    /// `IPPROTO_UDP`.
    Udp = 17,
    /// `IPPROTO_SCTP`.
    Sctp = 132,
}

impl Protocol {
    /// The protocol numbered `raw`, if fairlead balances it.
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The `IPPROTO_*` number.
    #[must_use]
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// The lower-case name (`tcp`, `udp`, `sctp`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn protocol_round_trips() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_raw(p.raw()), Some(p));
        }
        assert_eq!(Protocol::from_raw(1), None);
        assert_eq!(Protocol::Sctp.raw(), 132);
    }
}
