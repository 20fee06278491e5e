//! The counter map ([`COUNTERS`](crate::maps::COUNTERS)): a per-CPU array of `u64`, one
//! entry per [`Reason`]. Every translation, refusal and fallback of a program bumps one.
//!
//! User space sums the per-CPU values of an index to get the total. Indexes are part of
//! the pinned contract: new reasons are appended, never inserted or renumbered.

/// Why a program bumped a counter; the discriminant is the index in the counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A connection to a service was sent to one of its backends.
    ServiceHit = 0,
    /// A connection to an address that is not a service went on untouched.
    NotService = 1,
    /// A connection to a service without backends (`count == 0`) was refused.
    NoBackendReject = 2,
    /// The slot picked for a connection was missing from the service map; refused.
    BackendSlotMissing = 3,
    /// The backend named by a slot was missing from the backend map; refused.
    BackendMissing = 4,
    /// A socket of a protocol fairlead does not balance went on untouched.
    UnsupportedProtocol = 5,
    /// A two-scope service had no internal-scope entry; its external entry was used.
    InternalScopeMissing = 6,
    /// A slot or backend was missing (user space was updating the service); the choice was
    /// made again from a fresh read of the service, once.
    SelectionRetried = 7,
    /// A client stuck to its session-affinity backend.
    AffinityHit = 8,
    /// A session-affinity entry had expired or named a backend no longer serving the
    /// service; a new backend was chosen.
    AffinityStale = 9,
    /// Recording a session-affinity choice failed; the connection went on unrecorded.
    AffinityUpdateFailed = 10,
    /// Recording the reverse translation of a socket failed; the connection was refused
    /// (replies would otherwise come from an address the application never asked for).
    RevNatUpdateFailed = 11,
    /// A reply or peer address was shown as the service address.
    RevNatHit = 12,
    /// A reverse translation named a service that is gone or changed; the backend address
    /// was shown as is.
    RevNatStale = 13,
    /// A service with `internalTrafficPolicy: Local` and no endpoint on this node refused a
    /// connection.
    NoLocalBackendReject = 14,
    /// A new flow from outside the node to a NodePort, LoadBalancer IP or external IP was sent to a backend (Maglev, or session affinity).
    ExternalHit = 15,
    /// A packet of a new external flow to a frontend without backends was rejected: answered
    /// with ICMP port unreachable (as kube-proxy's REJECT rule does), or dropped when over
    /// the rate limit ([`Reason::RejectLimited`]) or not answerable ([`Reason::RejectFailed`]).
    ExternalNoBackend = 16,
    /// A packet of a new external flow to a frontend with `externalTrafficPolicy: Local` and no endpoint on this node was dropped.
    ExternalNoLocalBackend = 17,
    /// A packet from a client outside the frontend's `loadBalancerSourceRanges` was dropped.
    SourceRangeDrop = 18,
    /// A conntrack entry of a new external flow could not be written (map full or busy); the packet was dropped.
    CtFull = 19,
    /// A new external flow to a backend on another node found no node address or free port for source NAT; dropped.
    SnatFailed = 20,
    /// `bpf_fib_lookup` could not route a translated packet; it went through the kernel's own forwarding instead.
    FibFallback = 21,
    /// A local process was refused a bind to a port a NodePort uses (`post_bind`).
    BindRefused = 22,
    /// An external frontend had no Maglev table (user space was updating it); the packet was dropped.
    MaglevMissing = 23,
    /// A reply packet of a balanced external flow was translated back (reverse NAT).
    CtReply = 24,
    /// A conntrack entry named a backend no longer serving its frontend; the flow was balanced again.
    CtStale = 25,
    /// A translated packet was sent straight to its output interface (`bpf_fib_lookup` +
    /// redirect), past the kernel's forwarding path.
    FibRedirect = 26,
    /// An ICMP error (a reject, fragmentation needed, time exceeded) was not sent: this CPU
    /// was over its budget of
    /// [`ICMP_REJECTS_PER_SEC`](crate::nodeport::ICMP_REJECTS_PER_SEC); the packet was dropped.
    RejectLimited = 27,
    /// An ICMP error could not be built (IP options, a short packet, a failed resize); the
    /// packet was dropped.
    RejectFailed = 28,
    /// A packet too large for its route's MTU that must not be fragmented (IPv4 with DF, or
    /// IPv6) was answered with ICMP "fragmentation needed" / ICMPv6 "packet too big", from
    /// its untranslated headers (path MTU discovery works through the translation).
    TooBig = 29,
    /// A packet whose TTL (hop limit) would expire here was answered with ICMP "time
    /// exceeded".
    TtlExceeded = 30,
    /// An ICMP error about a packet of a balanced flow was translated back to the host that
    /// sent the packet (the client, or the backend).
    IcmpRelated = 31,
    /// A later fragment of a datagram (no L4 header) got the translation of its first
    /// fragment, found in the fragment map by the datagram's identification.
    FragmentTranslated = 32,
    /// A later fragment whose datagram's first fragment was not seen (it was lost, came
    /// later, or was evicted) went on untouched: the stack reassembles it if the datagram is
    /// the node's own, else drops it when reassembly times out.
    FragmentUnknown = 33,
    /// A packet the ingress program translated and sent out of an interface of the node went
    /// through the egress program there without a conntrack lookup (none could match it).
    EgressSkipped = 34,
}

impl Reason {
    /// Number of reasons, and so of entries in the counter array.
    pub const COUNT: u32 = 35;

    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::ServiceHit,
        Self::NotService,
        Self::NoBackendReject,
        Self::BackendSlotMissing,
        Self::BackendMissing,
        Self::UnsupportedProtocol,
        Self::InternalScopeMissing,
        Self::SelectionRetried,
        Self::AffinityHit,
        Self::AffinityStale,
        Self::AffinityUpdateFailed,
        Self::RevNatUpdateFailed,
        Self::RevNatHit,
        Self::RevNatStale,
        Self::NoLocalBackendReject,
        Self::ExternalHit,
        Self::ExternalNoBackend,
        Self::ExternalNoLocalBackend,
        Self::SourceRangeDrop,
        Self::CtFull,
        Self::SnatFailed,
        Self::FibFallback,
        Self::BindRefused,
        Self::MaglevMissing,
        Self::CtReply,
        Self::CtStale,
        Self::FibRedirect,
        Self::RejectLimited,
        Self::RejectFailed,
        Self::TooBig,
        Self::TtlExceeded,
        Self::IcmpRelated,
        Self::FragmentTranslated,
        Self::FragmentUnknown,
        Self::EgressSkipped,
    ];

    /// The index of this reason in the counter array.
    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The reason at `index` of the counter array.
    #[must_use]
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }

    /// A stable `snake_case` name, for `fairlead status` and metrics labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ServiceHit => "service_hit",
            Self::NotService => "not_service",
            Self::NoBackendReject => "no_backend_reject",
            Self::BackendSlotMissing => "backend_slot_missing",
            Self::BackendMissing => "backend_missing",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::InternalScopeMissing => "internal_scope_missing",
            Self::SelectionRetried => "selection_retried",
            Self::AffinityHit => "affinity_hit",
            Self::AffinityStale => "affinity_stale",
            Self::AffinityUpdateFailed => "affinity_update_failed",
            Self::RevNatUpdateFailed => "rev_nat_update_failed",
            Self::RevNatHit => "rev_nat_hit",
            Self::RevNatStale => "rev_nat_stale",
            Self::NoLocalBackendReject => "no_local_backend_reject",
            Self::ExternalHit => "external_hit",
            Self::ExternalNoBackend => "external_no_backend",
            Self::ExternalNoLocalBackend => "external_no_local_backend",
            Self::SourceRangeDrop => "source_range_drop",
            Self::CtFull => "ct_full",
            Self::SnatFailed => "snat_failed",
            Self::FibFallback => "fib_fallback",
            Self::BindRefused => "bind_refused",
            Self::MaglevMissing => "maglev_missing",
            Self::CtReply => "ct_reply",
            Self::CtStale => "ct_stale",
            Self::FibRedirect => "fib_redirect",
            Self::RejectLimited => "reject_limited",
            Self::RejectFailed => "reject_failed",
            Self::TooBig => "too_big",
            Self::TtlExceeded => "ttl_exceeded",
            Self::IcmpRelated => "icmp_related",
            Self::FragmentTranslated => "fragment_translated",
            Self::FragmentUnknown => "fragment_unknown",
            Self::EgressSkipped => "egress_skipped",
        }
    }

    /// One line for humans.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::ServiceHit => "connections to a service sent to a backend",
            Self::NotService => "connections to other addresses, untouched",
            Self::NoBackendReject => "connections refused: service has no backends",
            Self::BackendSlotMissing => "connections refused: backend slot missing",
            Self::BackendMissing => "connections refused: backend missing",
            Self::UnsupportedProtocol => "sockets of an unbalanced protocol, untouched",
            Self::InternalScopeMissing => {
                "two-scope services without an internal entry (external used)"
            }
            Self::SelectionRetried => "backend choices made again during a service update",
            Self::AffinityHit => "connections sent to the client's affine backend",
            Self::AffinityStale => "expired or outdated affinity entries, rebalanced",
            Self::AffinityUpdateFailed => "affinity choices that could not be recorded",
            Self::RevNatUpdateFailed => {
                "connections refused: reverse translation could not be recorded"
            }
            Self::RevNatHit => "replies and peers shown as the service address",
            Self::RevNatStale => "reverse translations of a gone service, not applied",
            Self::NoLocalBackendReject => {
                "connections refused: internalTrafficPolicy Local, no local endpoint"
            }
            Self::ExternalHit => {
                "new external flows (NodePort, LoadBalancer, externalIP) sent to a backend by Maglev"
            }
            Self::ExternalNoBackend => {
                "external packets rejected (ICMP port unreachable): service has no backends"
            }
            Self::ExternalNoLocalBackend => {
                "external packets dropped: externalTrafficPolicy Local, no local endpoint"
            }
            Self::SourceRangeDrop => {
                "external packets dropped: source outside loadBalancerSourceRanges"
            }
            Self::CtFull => "external packets dropped: a conntrack entry could not be written",
            Self::SnatFailed => "external packets dropped: no source address or port for SNAT",
            Self::FibFallback => "translated packets handed to the kernel stack (no FIB result)",
            Self::BindRefused => "binds refused: the port is a NodePort",
            Self::MaglevMissing => "external packets dropped: Maglev table missing",
            Self::CtReply => "reply packets of external flows translated back",
            Self::CtStale => "external flows whose backend was gone, balanced again",
            Self::FibRedirect => "translated packets redirected to their output interface (FIB)",
            Self::RejectLimited => "ICMP errors not sent: over the per-CPU rate limit",
            Self::RejectFailed => "ICMP errors not sent: packet could not be answered",
            Self::TooBig => "packets too big for their route, answered (fragmentation needed)",
            Self::TtlExceeded => "packets whose TTL expired, answered (time exceeded)",
            Self::IcmpRelated => "ICMP errors about balanced flows, translated back",
            Self::FragmentTranslated => {
                "later fragments translated as their datagram's first fragment was"
            }
            Self::FragmentUnknown => "later fragments whose first fragment was not seen, untouched",
            Self::EgressSkipped => "translated packets leaving without an egress conntrack lookup",
        }
    }

    /// What the event is, for `fairlead status` and metrics: a successful translation, a
    /// connection left alone, a refusal (drop) or a fallback.
    #[must_use]
    pub const fn kind(self) -> ReasonKind {
        match self {
            Self::ServiceHit
            | Self::AffinityHit
            | Self::RevNatHit
            | Self::ExternalHit
            | Self::CtReply
            | Self::FibRedirect
            | Self::IcmpRelated
            | Self::FragmentTranslated
            | Self::EgressSkipped => ReasonKind::Translated,
            Self::NotService | Self::UnsupportedProtocol | Self::FragmentUnknown => {
                ReasonKind::Untouched
            }
            Self::NoBackendReject
            | Self::BackendSlotMissing
            | Self::BackendMissing
            | Self::RevNatUpdateFailed
            | Self::NoLocalBackendReject
            | Self::ExternalNoBackend
            | Self::ExternalNoLocalBackend
            | Self::SourceRangeDrop
            | Self::CtFull
            | Self::SnatFailed
            | Self::BindRefused
            | Self::MaglevMissing
            | Self::RejectLimited
            | Self::RejectFailed
            | Self::TooBig
            | Self::TtlExceeded => ReasonKind::Drop,
            Self::InternalScopeMissing
            | Self::SelectionRetried
            | Self::AffinityStale
            | Self::AffinityUpdateFailed
            | Self::RevNatStale
            | Self::FibFallback
            | Self::CtStale => ReasonKind::Fallback,
        }
    }
}

/// The class of a [`Reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKind {
    /// The load balancer did its job.
    Translated,
    /// Not the load balancer's business.
    Untouched,
    /// A connection or datagram was refused.
    Drop,
    /// Something unusual happened and a fallback was taken.
    Fallback,
}

impl ReasonKind {
    /// A stable lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Translated => "translated",
            Self::Untouched => "untouched",
            Self::Drop => "drop",
            Self::Fallback => "fallback",
        }
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::Reason;

    #[test]
    fn reason_layout() {
        assert_eq!(size_of::<Reason>(), 4);
        assert_eq!(align_of::<Reason>(), 4);
    }

    #[test]
    fn indexes_are_dense_and_names_unique() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index() as usize, i);
            assert_eq!(Reason::from_index(reason.index()), Some(*reason));
            assert!(!reason.description().is_empty());
            let name = reason.name();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(
                Reason::ALL[i + 1..]
                    .iter()
                    .all(|other| other.name() != name)
            );
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
    }

    #[test]
    fn indexes_are_stable() {
        // Pinned maps outlive a binary: these numbers are a contract.
        assert_eq!(Reason::ServiceHit.index(), 0);
        assert_eq!(Reason::NoBackendReject.index(), 2);
        assert_eq!(Reason::InternalScopeMissing.index(), 6);
        assert_eq!(Reason::NoLocalBackendReject.index(), 14);
    }
}
