//! The per-packet load balancer (north-south) for IPv4: NodePort, LoadBalancer IPs and
//! external IPs, on the node's interfaces (TC ingress and egress).
//!
//! Ingress, for each IPv4 TCP/UDP packet:
//!
//! 1. a packet of a **known flow** (conntrack, original direction): translate it as its
//!    first packet was;
//! 2. a **reply** of a balanced flow whose source was translated to a node address (the
//!    backend is on another node): restore the frontend as source and the client as
//!    destination, then route it;
//! 3. a **new flow** to an external frontend: check `loadBalancerSourceRanges`, pick a
//!    backend (session affinity, else the frontend's Maglev table indexed by a hash of the
//!    5-tuple), translate the destination, and the source to a node address when the backend
//!    is on another node; record both directions in conntrack. A frontend without any
//!    endpoint answers with ICMP port unreachable ([`crate::reject`]).
//!
//! Cases 1 and 2 take one conntrack lookup: the keys are the packet's tuple without a
//! direction, and the entry says which direction it describes ([`CtValue::FLAG_REPLY`]).
//! A known flow's entry holds all its translation needs (no backend lookup per packet);
//! user space deletes the entries of a backend that leaves its frontend.
//!
//! Translated packets are routed by [`crate::route`] (FIB lookup and redirect).
//!
//! Egress: a reply of a local backend leaving towards the client gets the frontend as
//! source back (flows to local backends keep the client's address, so their replies do
//! not come back to a node address).
//!
//! Fragments: a datagram's first fragment is balanced as a whole packet and records its
//! ports in [`FRAG4`] under the datagram's identification (source, destination, protocol,
//! IP id); its later fragments, which carry no L4 header, take the ports from there and so
//! find the same conntrack entry: the same backend, source NAT and reverse translation
//! (Cilium's fragment map). A later fragment whose first was not seen goes on untouched
//! (see [`parse`]).
//!
//! Everything else goes on untouched (`TC_ACT_UNSPEC`: the next program, or the stack).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    maps::LruHashMap,
};
use fairlead_abi::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend4, Be16, Be32, Ct4Key, CtValue,
    Frag4Key, FragPorts, MaglevKey, Protocol, Reason, Scope, Service4Key, ServiceValue,
    SourceRange4Key,
    nodeport::{SNAT_PORT_COUNT, SNAT_PORT_MIN},
    sock::FAMILY_V4,
};

use crate::{
    frame::Frame,
    lb::{bump, copy_of, now_secs, random},
    maps::{
        AFFINITY, BACKENDS4, CT4_ANY, CT4_TCP, FRAG4, IF_ADDR4, MAGLEV, NODE_ADDR4, SERVICES4,
        SOURCE_RANGES4,
    },
    reject::{Icmp, icmp4},
    route::{Route, Way, apply4, route4},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_RST: u8 = 0x04;
/// Marks an affinity key's client as an IPv4 address (socket clients are netns cookies,
/// which never have the top bit set).
pub(crate) const EXTERNAL_CLIENT: u64 = 1 << 63;
/// How many ports source NAT tries before giving up on a flow.
pub(crate) const SNAT_ATTEMPTS: u32 = 4;

/// Whether a packet is a whole datagram or which fragment of one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment (offset 0, more to come): it carries the L4 header.
    First,
    /// A later fragment: no L4 header; its ports are the first fragment's, from
    /// [`FRAG4`].
    Later,
}

/// The fields of an IPv4 TCP/UDP packet the load balancer reads.
#[derive(Clone, Copy)]
struct Packet {
    saddr: Be32,
    daddr: Be32,
    sport: Be16,
    dport: Be16,
    protocol: u8,
    /// Offset of the L4 header.
    l4: usize,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
    fragment: Fragment,
}

impl Packet {
    fn key(&self) -> Ct4Key {
        Ct4Key::new(
            self.saddr,
            self.daddr,
            self.sport,
            self.dport,
            self.protocol,
        )
    }

    fn closing(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    /// Whether the packet carries the L4 header (ports and checksum).
    fn has_l4(&self) -> bool {
        self.fragment != Fragment::Later
    }

    /// Offset of the L4 checksum.
    fn csum_offset(&self) -> usize {
        if self.protocol == Protocol::Tcp.raw() {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    /// Counts a later fragment translated.
    #[inline(always)]
    fn count_fragment(&self) {
        if !self.has_l4() {
            bump(Reason::FragmentTranslated);
        }
    }
}

/// IPv4 "more fragments" and the fragment offset, in the flags word.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Reads the headers of an IPv4 TCP/UDP packet, fragments included: the first fragment of a
/// datagram records its ports in [`FRAG4`] under the datagram's identification, a later
/// fragment takes them from there. A later fragment whose first was not seen is left alone
/// (`None`, counted): Cilium drops it, but here it may be a fragment of the node's own
/// traffic, which the stack must still reassemble, and a fragment of a balanced datagram
/// whose first went elsewhere is dropped by the stack's reassembly timeout all the same.
#[inline(always)]
fn parse<F: Frame>(ctx: &F) -> Option<Packet> {
    let ethertype: u16 = ctx.load(12)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let flags_offset = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
    let protocol: u8 = ctx.load(ETH_HLEN + 9)?;
    if protocol != Protocol::Tcp.raw() && protocol != Protocol::Udp.raw() {
        return None;
    }
    let saddr = Be32::from_raw(ctx.load(IP_SRC)?);
    let daddr = Be32::from_raw(ctx.load(IP_DST)?);
    let l4 = ETH_HLEN + ihl;
    let mut packet = Packet {
        saddr,
        daddr,
        sport: Be16::from_raw(0),
        dport: Be16::from_raw(0),
        protocol,
        l4,
        tcp_flags: 0,
        fragment: Fragment::Whole,
    };
    if flags_offset & (IP_MF | IP_OFFSET) != 0 {
        let id = Be16::from_raw(ctx.load(ETH_HLEN + 4)?);
        let key = Frag4Key::new(saddr, daddr, id, protocol);
        if flags_offset & IP_OFFSET != 0 {
            let Some(ports) = copy_of(FRAG4.get_ptr(key)) else {
                bump(Reason::FragmentUnknown);
                return None;
            };
            packet.sport = ports.sport;
            packet.dport = ports.dport;
            packet.fragment = Fragment::Later;
            return Some(packet);
        }
        packet.fragment = Fragment::First;
        packet.sport = Be16::from_raw(ctx.load(l4)?);
        packet.dport = Be16::from_raw(ctx.load(l4 + 2)?);
        let ports = FragPorts {
            sport: packet.sport,
            dport: packet.dport,
        };
        // Recorded before anything else: the later fragments may be on other CPUs already.
        let _ = FRAG4.insert(key, ports, 0);
    } else {
        packet.sport = Be16::from_raw(ctx.load(l4)?);
        packet.dport = Be16::from_raw(ctx.load(l4 + 2)?);
    }
    if protocol == Protocol::Tcp.raw() {
        packet.tcp_flags = ctx.load::<u8>(l4 + 13)?;
    }
    Some(packet)
}

pub(crate) fn ct_map(protocol: u8) -> &'static LruHashMap<Ct4Key, CtValue> {
    if protocol == Protocol::Tcp.raw() {
        &CT4_TCP
    } else {
        &CT4_ANY
    }
}

/// TC ingress on an external interface (IPv4; IPv6 in [`crate::nodeport6`]).
#[inline(always)]
pub(crate) fn ingress<F: Frame>(ctx: &F) -> i32 {
    let Some(packet) = parse(ctx) else {
        // Not TCP or UDP: perhaps an ICMP error about a balanced flow.
        return if F::SLOW_PATH {
            crate::related::related4(ctx)
        } else {
            F::NEXT
        };
    };
    let ct = ct_map(packet.protocol);
    let now = now_secs();

    // One lookup finds a known flow in either direction (the entry says which).
    if let Some(entry) = ct.get_ptr_mut(packet.key()) {
        // SAFETY: a pointer from a successful lookup points to a live LRU element, valid
        // until the program returns; racing writers store whole small fields.
        let value = unsafe { touch(entry, now, &packet) };
        // 1. The original direction: translate it as its first packet was (the entry holds
        // the backend's address; user space deletes the entries of a removed backend).
        if !value.has_flag(CtValue::FLAG_REPLY) {
            return translate(ctx, &packet, &value);
        }
        // 2. A reply to a node address (source-NATed flow).
        if value.has_flag(CtValue::FLAG_SNAT) {
            let route = match routed(
                ctx,
                (value.address, value.port),
                (value.nat_address, value.nat_port),
            ) {
                Ok(route) => route,
                Err(verdict) => return verdict,
            };
            if rewrite_both(
                ctx,
                &packet,
                (value.address, value.port),
                (value.nat_address, value.nat_port),
            )
            .is_err()
            {
                return F::DROP;
            }
            bump(Reason::CtReply);
            packet.count_fragment();
            ctx.mark_translated();
            return apply4(ctx, &route);
        }
        // A reply of a local backend arriving here (it is routed out of this interface
        // after the stack): the egress program translates it.
        return F::NEXT;
    }

    // 3. A new flow, opened by a packet with ports (a later fragment whose first fragment
    // opened no flow is not balanced: it goes where the rest of its datagram went).
    if !packet.has_l4() {
        return F::NEXT;
    }
    let Some((service_key, service)) = external_service(&packet) else {
        return F::NEXT;
    };
    if service.has_flag(ServiceValue::FLAG_SOURCE_RANGES) {
        let key = aya_ebpf::maps::lpm_trie::Key::new(
            SourceRange4Key::prefix_len(32),
            SourceRange4Key::new(service.rev_nat_id, packet.saddr),
        );
        if SOURCE_RANGES4.get(&key).is_none() {
            bump(Reason::SourceRangeDrop);
            return F::DROP;
        }
    }
    let _ = service_key;
    let (backend_id, backend) = match choose(&packet, &service, now) {
        Ok(chosen) => chosen,
        Err(Reason::ExternalNoBackend) => return icmp4(ctx, Icmp::PORT_UNREACHABLE),
        Err(reason) => {
            bump(reason);
            return F::DROP;
        }
    };
    let Some(value) = open_flow(&packet, &service, backend_id, &backend, now) else {
        return F::DROP;
    };
    bump(Reason::ExternalHit);
    translate(ctx, &packet, &value)
}

/// TC egress on an external interface: replies of local backends get the frontend back as
/// source.
#[inline(always)]
pub(crate) fn egress<F: Frame>(ctx: &F) -> i32 {
    // Translated by the ingress program (and redirected or forwarded out here): no reply
    // entry can match it.
    if ctx.take_translated() {
        bump(Reason::EgressSkipped);
        return F::NEXT;
    }
    let Some(packet) = parse(ctx) else {
        return F::NEXT;
    };
    let ct = ct_map(packet.protocol);
    let Some(entry) = ct.get_ptr_mut(packet.key()) else {
        return F::NEXT;
    };
    // SAFETY: as in `ingress`.
    let value = unsafe { touch(entry, now_secs(), &packet) };
    if !value.has_flag(CtValue::FLAG_REPLY) || value.has_flag(CtValue::FLAG_SNAT) {
        return F::NEXT;
    }
    if rewrite(ctx, &packet, Side::Source, value.address, value.port).is_err() {
        return F::DROP;
    }
    bump(Reason::CtReply);
    packet.count_fragment();
    F::PASS
}

/// Refreshes a conntrack entry (time, closing and reply flags) and returns a copy.
///
/// # Safety
///
/// `entry` must come from a successful lookup in a conntrack map, in this program run.
#[inline(always)]
unsafe fn touch(entry: *mut CtValue, now: u32, packet: &Packet) -> CtValue {
    // SAFETY: the caller's contract.
    let mut value = unsafe { entry.read() };
    let mut flags = value.flags;
    if packet.closing() {
        flags |= CtValue::FLAG_CLOSING;
    }
    if value.last_seen_secs != now || flags != value.flags {
        value.last_seen_secs = now;
        value.flags = flags;
        // SAFETY: the caller's contract; a racing program stores the same kind of values.
        unsafe {
            (*entry).last_seen_secs = now;
            (*entry).flags = flags;
        }
    }
    value
}

/// The external frontend a packet is addressed to: the exact address and port, or the
/// NodePort when the destination is a node address.
#[inline(always)]
fn external_service(packet: &Packet) -> Option<(Service4Key, ServiceValue)> {
    let exact = Service4Key::new(
        packet.daddr,
        packet.dport,
        packet.protocol,
        Scope::External,
        0,
    );
    let (key, service) = if let Some(service) = copy_of(SERVICES4.get_ptr(exact)) {
        (exact, service)
    } else {
        NODE_ADDR4.get_ptr(packet.daddr)?;
        let wildcard = Service4Key::new(
            Be32::from_raw(0),
            packet.dport,
            packet.protocol,
            Scope::External,
            0,
        );
        (wildcard, copy_of(SERVICES4.get_ptr(wildcard))?)
    };
    if service.has_flag(ServiceValue::FLAG_EXTERNAL) {
        Some((key, service))
    } else {
        None
    }
}

/// The backend of a new flow: the client's affine backend, else the Maglev slot of the
/// flow's hash.
#[inline(always)]
fn choose(packet: &Packet, service: &ServiceValue, now: u32) -> Result<(u32, Backend4), Reason> {
    let local_only = service.has_flag(ServiceValue::FLAG_EXTERNAL_LOCAL);
    let affine = service.has_flag(ServiceValue::FLAG_SESSION_AFFINITY);
    let affinity_key = AffinityKey::new(
        EXTERNAL_CLIENT | u64::from(packet.saddr.raw()),
        service.rev_nat_id,
        FAMILY_V4,
    );
    if affine && let Some(entry) = copy_of(AFFINITY.get_ptr(affinity_key)) {
        if entry.is_fresh(now, service.affinity_timeout_secs)
            && let Some(backend) = copy_of(BACKENDS4.get_ptr(entry.backend_id))
            && backend.rev_nat_id == service.rev_nat_id
            && (!local_only || backend.flags & BACKEND_FLAG_LOCAL != 0)
        {
            if entry.last_used_secs != now {
                let _ = AFFINITY.insert(affinity_key, AffinityValue::new(entry.backend_id, now), 0);
            }
            bump(Reason::AffinityHit);
            return Ok((entry.backend_id, backend));
        }
        bump(Reason::AffinityStale);
    }
    if service.count == 0 {
        return Err(no_backend(local_only));
    }
    let Some(table) = MAGLEV.get_ptr(MaglevKey::new(service.rev_nat_id, FAMILY_V4)) else {
        return Err(Reason::MaglevMissing);
    };
    // SAFETY: a pointer from a successful lookup points to a live element (RCU).
    let size = unsafe { (*table).size };
    if size == 0 {
        return Err(no_backend(local_only));
    }
    let index = flow_hash(packet) % size;
    let Ok(index) = usize::try_from(index) else {
        return Err(Reason::BackendSlotMissing);
    };
    // SAFETY: as above; `get` bounds the index by the array's length.
    let Some(backend_id) = (unsafe { (*table).slots.get(index).copied() }) else {
        return Err(Reason::BackendSlotMissing);
    };
    let Some(backend) = copy_of(BACKENDS4.get_ptr(backend_id)) else {
        return Err(Reason::BackendMissing);
    };
    if affine
        && AFFINITY
            .insert(affinity_key, AffinityValue::new(backend_id, now), 0)
            .is_err()
    {
        bump(Reason::AffinityUpdateFailed);
    }
    Ok((backend_id, backend))
}

/// Why a frontend takes no new flow: no endpoint at all (rejected, as kube-proxy does), or
/// none on this node under `externalTrafficPolicy: Local` (dropped, as kube-proxy does, so
/// that load balancers' health checks steer clients away).
#[inline(always)]
pub(crate) fn no_backend(local_only: bool) -> Reason {
    if local_only {
        Reason::ExternalNoLocalBackend
    } else {
        Reason::ExternalNoBackend
    }
}

/// Records a new flow in conntrack (both directions), choosing the source NAT when the
/// backend is on another node. Returns the original-direction entry.
#[inline(always)]
fn open_flow(
    packet: &Packet,
    service: &ServiceValue,
    backend_id: u32,
    backend: &Backend4,
    now: u32,
) -> Option<CtValue> {
    let ct = ct_map(packet.protocol);
    let snat = backend.flags & BACKEND_FLAG_LOCAL == 0
        && !service.has_flag(ServiceValue::FLAG_EXTERNAL_LOCAL);
    let mut closing = 0;
    if packet.closing() {
        closing = CtValue::FLAG_CLOSING;
    }
    let (nat_address, nat_port) = if snat {
        let Some(address) = snat_address(packet) else {
            bump(Reason::SnatFailed);
            return None;
        };
        let reply = CtValue::new(
            packet.daddr,
            packet.dport,
            packet.saddr,
            packet.sport,
            backend_id,
            service.rev_nat_id,
            CtValue::FLAG_REPLY | CtValue::FLAG_SNAT | closing,
            now,
        );
        let mut port = packet.sport;
        let mut found = false;
        for attempt in 0..SNAT_ATTEMPTS {
            if attempt > 0 {
                let offset = random() % u32::from(SNAT_PORT_COUNT);
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "offset < SNAT_PORT_COUNT, and MIN + COUNT fits u16"
                )]
                let candidate = SNAT_PORT_MIN + offset as u16;
                port = Be16::from_host(candidate);
            }
            let key = Ct4Key::new(
                backend.address,
                address,
                backend.port,
                port,
                packet.protocol,
            );
            if ct.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok() {
                found = true;
                break;
            }
        }
        if !found {
            bump(Reason::SnatFailed);
            return None;
        }
        (address, port)
    } else {
        let reply = CtValue::new(
            packet.daddr,
            packet.dport,
            Be32::from_raw(0),
            Be16::from_raw(0),
            backend_id,
            service.rev_nat_id,
            CtValue::FLAG_REPLY | closing,
            now,
        );
        let key = Ct4Key::new(
            backend.address,
            packet.saddr,
            backend.port,
            packet.sport,
            packet.protocol,
        );
        if ct.insert(key, reply, 0).is_err() {
            bump(Reason::CtFull);
            return None;
        }
        (Be32::from_raw(0), Be16::from_raw(0))
    };
    let value = CtValue::new(
        backend.address,
        backend.port,
        nat_address,
        nat_port,
        backend_id,
        service.rev_nat_id,
        if snat { CtValue::FLAG_SNAT } else { 0 } | closing,
        now,
    );
    if ct.insert(packet.key(), value, 0).is_err() {
        bump(Reason::CtFull);
        return None;
    }
    Some(value)
}

/// The node address a flow to a backend on another node leaves with: the node's address for
/// source NAT (its InternalIP, [`IF_ADDR4`] at key 0), else the node address the client
/// asked for.
#[inline(always)]
fn snat_address(packet: &Packet) -> Option<Be32> {
    if let Some(address) = copy_of(IF_ADDR4.get_ptr(0)) {
        return Some(address);
    }
    NODE_ADDR4.get_ptr(packet.daddr).map(|_| packet.daddr)
}

/// The route of the packet once translated to `src` and `dst`, or the verdict of the ICMP
/// error that answers it when the route cannot take it.
#[inline(always)]
fn routed<F: Frame>(ctx: &F, src: (Be32, Be16), dst: (Be32, Be16)) -> Result<Route, i32> {
    let mut route = Route::other(Way::Stack, 0);
    let mtu = route4(ctx, &(src, dst), &mut route);
    match route.way {
        Way::TooBig => Err(icmp4(ctx, Icmp::too_big(mtu))),
        Way::Expiring => Err(icmp4(ctx, Icmp::TIME_EXCEEDED)),
        Way::Send | Way::Stack => Ok(route),
    }
}

/// Translates a packet of a flow's original direction as its conntrack entry says, then
/// routes it (the route found first, see [`crate::route`]).
#[inline(always)]
fn translate<F: Frame>(ctx: &F, packet: &Packet, value: &CtValue) -> i32 {
    let snat = value.has_flag(CtValue::FLAG_SNAT);
    let src = if snat {
        (value.nat_address, value.nat_port)
    } else {
        (packet.saddr, packet.sport)
    };
    let route = match routed(ctx, src, (value.address, value.port)) {
        Ok(route) => route,
        Err(verdict) => return verdict,
    };
    let rewritten = if snat {
        rewrite_both(ctx, packet, src, (value.address, value.port))
    } else {
        rewrite(ctx, packet, Side::Destination, value.address, value.port)
    };
    if rewritten.is_err() {
        return F::DROP;
    }
    packet.count_fragment();
    ctx.mark_translated();
    apply4(ctx, &route)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port, fixing the IP and L4 checksums. A
/// later fragment has neither ports nor L4 checksum (the datagram's, in its first fragment,
/// covers the addresses as the first fragment rewrote them): only the address changes.
#[inline(always)]
fn rewrite<F: Frame>(
    ctx: &F,
    packet: &Packet,
    side: Side,
    address: Be32,
    port: Be16,
) -> Result<(), ()> {
    let (addr_offset, port_offset) = match side {
        Side::Source => (IP_SRC, packet.l4),
        Side::Destination => (IP_DST, packet.l4 + 2),
    };
    let old_address: u32 = ctx.load(addr_offset).ok_or(())?;
    let new_address = address.raw();
    if !packet.has_l4() {
        if old_address != new_address {
            ctx.l3_csum_replace(IP_CSUM, old_address, new_address, 4)
                .ok_or(())?;
            ctx.store(addr_offset, &new_address).ok_or(())?;
        }
        return Ok(());
    }
    let old_port: u16 = ctx.load(port_offset).ok_or(())?;
    let new_port = port.raw();
    let csum = packet.csum_offset();
    let udp = packet.protocol == Protocol::Udp.raw();
    // A UDP checksum of 0 means "none": leave it so (BPF_F_MARK_MANGLED_0 keeps a computed 0
    // from turning into "none").
    let skip_l4 = udp && ctx.load::<u16>(csum).ok_or(())? == 0;
    let mangled = if udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_address != new_address {
        if !skip_l4 {
            ctx.l4_csum_replace(
                csum,
                old_address,
                new_address,
                u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
            )
            .ok_or(())?;
        }
        ctx.l3_csum_replace(IP_CSUM, old_address, new_address, 4)
            .ok_or(())?;
        ctx.store(addr_offset, &new_address).ok_or(())?;
    }
    if old_port != new_port {
        if !skip_l4 {
            ctx.l4_csum_replace(csum, u32::from(old_port), u32::from(new_port), mangled | 2)
                .ok_or(())?;
        }
        ctx.store(port_offset, &new_port).ok_or(())?;
    }
    Ok(())
}

/// Rewrites both addresses and both ports (source NAT with destination NAT, or the reply
/// of a source-NATed flow) with one checksum update per checksum and kind: the IPv4
/// header's and the pseudo-header's by the ones'-complement difference of the two
/// addresses, the L4 checksum's for the ports as one 32-bit word; one store each for the
/// addresses and the ports. (Four helper calls at TC where two [`rewrite`]s make ten.)
#[inline(always)]
fn rewrite_both<F: Frame>(
    ctx: &F,
    packet: &Packet,
    (saddr, sport): (Be32, Be16),
    (daddr, dport): (Be32, Be16),
) -> Result<(), ()> {
    let old_addresses: [u32; 2] = ctx.load(IP_SRC).ok_or(())?;
    let new_addresses = [saddr.raw(), daddr.raw()];
    let addresses_change = old_addresses != new_addresses;
    let diff = csum_diff8(old_addresses, new_addresses);
    if packet.has_l4() {
        let old_ports: u32 = ctx.load(packet.l4).ok_or(())?;
        let [s0, s1] = sport.raw().to_ne_bytes();
        let [d0, d1] = dport.raw().to_ne_bytes();
        let new_ports = u32::from_ne_bytes([s0, s1, d0, d1]);
        let csum = packet.csum_offset();
        let udp = packet.protocol == Protocol::Udp.raw();
        // A UDP checksum of 0 means "none": leave it so.
        let skip_l4 = udp && ctx.load::<u16>(csum).ok_or(())? == 0;
        let mangled = if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if !skip_l4 && addresses_change {
            ctx.l4_csum_replace(csum, 0, diff, u64::from(BPF_F_PSEUDO_HDR) | mangled)
                .ok_or(())?;
        }
        if old_ports != new_ports {
            if !skip_l4 {
                ctx.l4_csum_replace(csum, old_ports, new_ports, mangled | 4)
                    .ok_or(())?;
            }
            ctx.store(packet.l4, &new_ports).ok_or(())?;
        }
    }
    if addresses_change {
        ctx.l3_csum_replace(IP_CSUM, 0, diff, 0).ok_or(())?;
        ctx.store(IP_SRC, &new_addresses).ok_or(())?;
    }
    Ok(())
}

/// The ones'-complement difference (a 32-bit partial sum, as `bpf_csum_diff` returns) of
/// replacing the two words `old` with `new`, computed here rather than by the helper.
#[inline(always)]
fn csum_diff8(old: [u32; 2], new: [u32; 2]) -> u32 {
    let mut sum = u64::from(!old[0]) + u64::from(!old[1]) + u64::from(new[0]) + u64::from(new[1]);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 32 bits")]
    let folded = sum as u32;
    folded
}

/// A hash of the 5-tuple, the same on every node and across restarts (Maglev and the
/// flows' backends do not depend on a per-boot seed).
#[inline(always)]
fn flow_hash(packet: &Packet) -> u32 {
    let ports = (u32::from(packet.sport.to_host()) << 16) | u32::from(packet.dport.to_host());
    let mut h = mix(
        0x9747_b28c ^ u32::from(packet.protocol),
        packet.saddr.to_host(),
    );
    h = mix(h, packet.daddr.to_host());
    h = mix(h, ports);
    finalize(h)
}

/// One round of MurmurHash3's block mix.
#[inline(always)]
pub(crate) fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser.
#[inline(always)]
pub(crate) fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
