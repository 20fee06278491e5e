//! The per-packet load balancer for IPv6 (programs of their own, `fl_tc_ingress6` and
//! `fl_tc_egress6`: each program has 512 bytes of stack): [`crate::nodeport`]'s three steps (source-NATed
//! reply, known flow, new flow) over the IPv6 maps. IPv6 has no header checksum; the L4
//! checksum is fixed with `bpf_csum_diff` over the 16-byte addresses.
//!
//! Extension headers: up to [`MAX_EXTENSIONS`] hop-by-hop, routing, destination-options and
//! fragment headers before TCP/UDP are walked over (a bounded loop the verifier unrolls);
//! the translation rewrites the fixed header's addresses and the L4 header after them.
//! Other extension headers (ESP, AH, more of them) go on untouched. A fragmented datagram
//! is handled as IPv4's ([`crate::nodeport`]): its first fragment records its ports in
//! [`FRAG6`] under the fragment header's identification, its later fragments take them
//! from there.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::generated::bpf_csum_diff,
    maps::LruHashMap,
};
use fairlead_abi::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend6, Be16, Be32, Ct6Key, Ct6Value,
    CtValue, Frag6Key, FragPorts, MaglevKey, Protocol, Reason, Scope, Service6Key, ServiceValue,
    SourceRange6Key,
    nodeport::{SNAT_PORT_COUNT, SNAT_PORT_MIN},
    sock::FAMILY_V6,
};

use crate::{
    frame::Frame,
    lb::{bump, copy_of, now_secs, random},
    maps::{
        AFFINITY, BACKENDS6, CT6_ANY, CT6_TCP, FRAG6, IF_ADDR6, MAGLEV, NODE_ADDR6, SERVICES6,
        SOURCE_RANGES6,
    },
    nodeport::{EXTERNAL_CLIENT, SNAT_ATTEMPTS, TCP_FIN, TCP_RST, finalize, mix, no_backend},
    reject::{Icmp, icmp6},
    route::{Route, Way, apply6, route6},
};

const ETH_HLEN: usize = 14;
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;
/// The fixed header's end: the first extension header, or the L4 header.
const L3_END: usize = ETH_HLEN + 40;
const UNSPECIFIED: [u8; 16] = [0; 16];
/// How many extension headers the parser walks over before giving up.
const MAX_EXTENSIONS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// `Packet::fragment`: not fragmented; the first fragment; a later one (no L4 header).
const WHOLE: u8 = 0;
const FIRST: u8 = 1;
const LATER: u8 = 2;

#[derive(Clone, Copy, Default)]
struct Packet {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: Be16,
    dport: Be16,
    protocol: u8,
    tcp_flags: u8,
    /// [`WHOLE`], [`FIRST`] or [`LATER`].
    fragment: u8,
    /// Offset of the L4 header (after the extension headers); as u32 to keep the struct
    /// small on the IPv6 call chains' tight stack.
    l4: u32,
}

impl Packet {
    fn key(&self) -> Ct6Key {
        Ct6Key::new(
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

    fn l4(&self) -> usize {
        self.l4 as usize
    }

    /// Whether the packet carries the L4 header (not a later fragment).
    fn has_l4(&self) -> bool {
        self.fragment != LATER
    }

    fn csum_offset(&self) -> usize {
        if self.protocol == Protocol::Tcp.raw() {
            self.l4() + 16
        } else {
            self.l4() + 6
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

/// Reads the headers of an IPv6 TCP/UDP packet into `out` (not inlined: its temporaries
/// stay out of the callers' frames).
#[inline(never)]
fn parse_into<F: Frame>(ctx: &F, out: &mut Packet) -> bool {
    let Some(packet) = parse(ctx) else {
        return false;
    };
    *out = packet;
    true
}

#[inline(always)]
fn parse<F: Frame>(ctx: &F) -> Option<Packet> {
    let version: u8 = ctx.load(ETH_HLEN)?;
    if version >> 4 != 6 {
        return None;
    }
    let mut next: u8 = ctx.load(ETH_HLEN + 6)?;
    let mut offset = L3_END;
    let mut fragment = WHOLE;
    let mut id = 0_u32;
    for _ in 0..MAX_EXTENSIONS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let [following, length]: [u8; 2] = ctx.load(offset)?;
                next = following;
                offset += (usize::from(length) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                // Next header, reserved, offset (13 bits) | 2 reserved | M, identification.
                let [following, _]: [u8; 2] = ctx.load(offset)?;
                let offset_flags = u16::from_be(ctx.load::<u16>(offset + 2)?);
                id = ctx.load(offset + 4)?;
                next = following;
                offset += 8;
                if offset_flags & 0xfff8 != 0 {
                    fragment = LATER;
                } else if offset_flags & 1 != 0 {
                    fragment = FIRST;
                }
            }
            _ => break,
        }
    }
    let protocol = next;
    if protocol != Protocol::Tcp.raw() && protocol != Protocol::Udp.raw() {
        return None;
    }
    let saddr: [u8; 16] = ctx.load(IP6_SRC)?;
    let daddr: [u8; 16] = ctx.load(IP6_DST)?;
    let l4 = u32::try_from(offset).ok()?;
    if fragment != WHOLE {
        let key = Frag6Key::new(saddr, daddr, Be32::from_raw(id), protocol);
        if fragment == LATER {
            let Some(ports) = copy_of(FRAG6.get_ptr(key)) else {
                bump(Reason::FragmentUnknown);
                return None;
            };
            return Some(Packet {
                saddr,
                daddr,
                sport: ports.sport,
                dport: ports.dport,
                protocol,
                tcp_flags: 0,
                fragment,
                l4,
            });
        }
        let ports = FragPorts {
            sport: Be16::from_raw(ctx.load(offset)?),
            dport: Be16::from_raw(ctx.load(offset + 2)?),
        };
        let _ = FRAG6.insert(key, ports, 0);
    }
    let sport: u16 = ctx.load(offset)?;
    let dport: u16 = ctx.load(offset + 2)?;
    let tcp_flags = if protocol == Protocol::Tcp.raw() {
        ctx.load::<u8>(offset + 13)?
    } else {
        0
    };
    Some(Packet {
        saddr,
        daddr,
        sport: Be16::from_raw(sport),
        dport: Be16::from_raw(dport),
        protocol,
        tcp_flags,
        fragment,
        l4,
    })
}

pub(crate) fn ct_map(protocol: u8) -> &'static LruHashMap<Ct6Key, Ct6Value> {
    if protocol == Protocol::Tcp.raw() {
        &CT6_TCP
    } else {
        &CT6_ANY
    }
}

/// TC ingress, IPv6.
#[inline(always)]
pub(crate) fn ingress<F: Frame>(ctx: &F) -> i32 {
    let mut packet = Packet::default();
    if !parse_into(ctx, &mut packet) {
        // Not TCP or UDP: perhaps an ICMPv6 error about a balanced flow.
        return if F::SLOW_PATH {
            crate::related::related6(ctx)
        } else {
            F::NEXT
        };
    }
    // Each step in a function of its own: a call chain has 512 bytes of stack, and IPv6
    // keys and entries are large.
    let verdict = known_flow(ctx, &packet);
    if verdict != NO_ENTRY {
        return verdict;
    }
    new_flow(ctx, &packet)
}

/// Returned by [`known_flow`] when conntrack does not know the flow.
const NO_ENTRY: i32 = i32::MIN;

/// Steps 1 and 2 of [`ingress`]: a packet of a known flow, or a source-NATed reply;
/// [`NO_ENTRY`] when conntrack has neither.
#[inline(never)]
fn known_flow<F: Frame>(ctx: &F, packet: &Packet) -> i32 {
    let ct = ct_map(packet.protocol);
    let now = now_secs();
    // One lookup finds a known flow in either direction (the entry says which).
    if let Some(entry) = ct.get_ptr_mut(packet.key()) {
        // SAFETY: a pointer from a successful lookup points to a live LRU element, valid
        // until the program returns; the references below only read it.
        let value = unsafe {
            touch(entry, now, packet);
            &*entry
        };
        // The original direction: the entry holds the backend (user space deletes the
        // entries of a removed backend).
        if !value.has_flag(CtValue::FLAG_REPLY) {
            return translate(ctx, packet, value);
        }
        if value.has_flag(CtValue::FLAG_SNAT) {
            let route = match routed(
                ctx,
                (&value.address, value.port),
                (&value.nat_address, value.nat_port),
            ) {
                Ok(route) => route,
                Err(verdict) => return verdict,
            };
            if rewrite(ctx, packet, Side::Source, &value.address, value.port).is_err()
                || rewrite(
                    ctx,
                    packet,
                    Side::Destination,
                    &value.nat_address,
                    value.nat_port,
                )
                .is_err()
            {
                return F::DROP;
            }
            bump(Reason::CtReply);
            packet.count_fragment();
            ctx.mark_translated();
            return apply6(ctx, &route);
        }
        return F::NEXT;
    }

    NO_ENTRY
}

/// Step 3 of [`ingress`]: a new flow.
#[inline(never)]
fn new_flow<F: Frame>(ctx: &F, packet: &Packet) -> i32 {
    // A later fragment whose first fragment opened no flow is not balanced.
    if !packet.has_l4() {
        return F::NEXT;
    }
    let now = now_secs();
    let Some(service) = external_service(packet) else {
        return F::NEXT;
    };
    if service.has_flag(ServiceValue::FLAG_SOURCE_RANGES) {
        let key = aya_ebpf::maps::lpm_trie::Key::new(
            SourceRange6Key::prefix_len(128),
            SourceRange6Key::new(service.rev_nat_id, packet.saddr),
        );
        if SOURCE_RANGES6.get(&key).is_none() {
            bump(Reason::SourceRangeDrop);
            return F::DROP;
        }
    }
    let (backend_id, backend) = match choose(packet, &service, now) {
        Ok(chosen) => chosen,
        Err(Reason::ExternalNoBackend) if F::SLOW_PATH => {
            return icmp6(ctx, Icmp::PORT_UNREACHABLE);
        }
        Err(Reason::ExternalNoBackend) => return F::NEXT,
        Err(reason) => {
            bump(reason);
            return F::DROP;
        }
    };
    let mut value = Ct6Value::default();
    if !open_flow(packet, &service, backend_id, &backend, &mut value) {
        return F::DROP;
    }
    bump(Reason::ExternalHit);
    translate(ctx, packet, &value)
}

/// TC egress, IPv6: replies of local backends get the frontend back as source.
#[inline(always)]
pub(crate) fn egress<F: Frame>(ctx: &F) -> i32 {
    // Translated by the ingress program: no reply entry can match it.
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
    let value = unsafe {
        touch(entry, now_secs(), &packet);
        &*entry
    };
    if !value.has_flag(CtValue::FLAG_REPLY) || value.has_flag(CtValue::FLAG_SNAT) {
        return F::NEXT;
    }
    if rewrite(ctx, &packet, Side::Source, &value.address, value.port).is_err() {
        return F::DROP;
    }
    bump(Reason::CtReply);
    packet.count_fragment();
    F::PASS
}

/// Refreshes a conntrack entry in place (time, closing flag).
///
/// # Safety
///
/// `entry` must come from a successful lookup in a conntrack map, in this program run.
#[inline(always)]
unsafe fn touch(entry: *mut Ct6Value, now: u32, packet: &Packet) {
    // SAFETY: the caller's contract; racing programs store the same kind of values.
    unsafe {
        let mut flags = (*entry).flags;
        if packet.closing() {
            flags |= CtValue::FLAG_CLOSING;
        }
        if (*entry).last_seen_secs != now || flags != (*entry).flags {
            (*entry).last_seen_secs = now;
            (*entry).flags = flags;
        }
    }
}

#[inline(never)]
fn external_service(packet: &Packet) -> Option<ServiceValue> {
    let exact = Service6Key::new(
        packet.daddr,
        packet.dport,
        packet.protocol,
        Scope::External,
        0,
    );
    let service = if let Some(service) = copy_of(SERVICES6.get_ptr(exact)) {
        service
    } else {
        NODE_ADDR6.get_ptr(packet.daddr)?;
        let wildcard = Service6Key::new(
            UNSPECIFIED,
            packet.dport,
            packet.protocol,
            Scope::External,
            0,
        );
        copy_of(SERVICES6.get_ptr(wildcard))?
    };
    service
        .has_flag(ServiceValue::FLAG_EXTERNAL)
        .then_some(service)
}

#[inline(never)]
fn choose(packet: &Packet, service: &ServiceValue, now: u32) -> Result<(u32, Backend6), Reason> {
    let local_only = service.has_flag(ServiceValue::FLAG_EXTERNAL_LOCAL);
    let affine = service.has_flag(ServiceValue::FLAG_SESSION_AFFINITY);
    let client = address_hash(&packet.saddr);
    let affinity_key = AffinityKey::new(
        EXTERNAL_CLIENT | u64::from(client),
        service.rev_nat_id,
        FAMILY_V6,
    );
    if affine && let Some(entry) = copy_of(AFFINITY.get_ptr(affinity_key)) {
        if entry.is_fresh(now, service.affinity_timeout_secs)
            && let Some(backend) = copy_of(BACKENDS6.get_ptr(entry.backend_id))
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
    let Some(table) = MAGLEV.get_ptr(MaglevKey::new(service.rev_nat_id, FAMILY_V6)) else {
        return Err(Reason::MaglevMissing);
    };
    // SAFETY: a pointer from a successful lookup points to a live element (RCU).
    let size = unsafe { (*table).size };
    if size == 0 {
        return Err(no_backend(local_only));
    }
    let Ok(index) = usize::try_from(flow_hash(packet) % size) else {
        return Err(Reason::BackendSlotMissing);
    };
    // SAFETY: as above; `get` bounds the index.
    let Some(backend_id) = (unsafe { (*table).slots.get(index).copied() }) else {
        return Err(Reason::BackendSlotMissing);
    };
    let Some(backend) = copy_of(BACKENDS6.get_ptr(backend_id)) else {
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

#[inline(never)]
fn open_flow(
    packet: &Packet,
    service: &ServiceValue,
    backend_id: u32,
    backend: &Backend6,
    out: &mut Ct6Value,
) -> bool {
    let now = now_secs();
    let ct = ct_map(packet.protocol);
    let snat = backend.flags & BACKEND_FLAG_LOCAL == 0
        && !service.has_flag(ServiceValue::FLAG_EXTERNAL_LOCAL);
    let closing = if packet.closing() {
        CtValue::FLAG_CLOSING
    } else {
        0
    };
    let (nat_address, nat_port) = if snat {
        let Some(address) = copy_of(IF_ADDR6.get_ptr(0))
            .or_else(|| NODE_ADDR6.get_ptr(packet.daddr).map(|_| packet.daddr))
        else {
            bump(Reason::SnatFailed);
            return false;
        };
        let reply = Ct6Value::new(
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
            let key = Ct6Key::new(
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
            return false;
        }
        (address, port)
    } else {
        let reply = Ct6Value::new(
            packet.daddr,
            packet.dport,
            UNSPECIFIED,
            Be16::from_raw(0),
            backend_id,
            service.rev_nat_id,
            CtValue::FLAG_REPLY | closing,
            now,
        );
        let key = Ct6Key::new(
            backend.address,
            packet.saddr,
            backend.port,
            packet.sport,
            packet.protocol,
        );
        if ct.insert(key, reply, 0).is_err() {
            bump(Reason::CtFull);
            return false;
        }
        (UNSPECIFIED, Be16::from_raw(0))
    };
    *out = Ct6Value::new(
        backend.address,
        backend.port,
        nat_address,
        nat_port,
        backend_id,
        service.rev_nat_id,
        if snat { CtValue::FLAG_SNAT } else { 0 } | closing,
        now,
    );
    if ct.insert(packet.key(), *out, 0).is_err() {
        bump(Reason::CtFull);
        return false;
    }
    true
}

/// The route of the packet once translated to `src` and `dst`, or the verdict of the
/// ICMPv6 error that answers it when the route cannot take it (at XDP: left to TC,
/// untouched).
#[inline(always)]
fn routed<F: Frame>(ctx: &F, src: (&[u8; 16], Be16), dst: (&[u8; 16], Be16)) -> Result<Route, i32> {
    let mut route = Route::other(Way::Stack, 0);
    let mtu = route6(ctx, &(src, dst), &mut route);
    let error = match route.way {
        Way::TooBig => Icmp::too_big(mtu),
        Way::Expiring => Icmp::TIME_EXCEEDED,
        Way::Send | Way::Stack => return Ok(route),
    };
    if F::SLOW_PATH {
        Err(icmp6(ctx, error))
    } else {
        Err(F::NEXT)
    }
}

#[inline(always)]
fn translate<F: Frame>(ctx: &F, packet: &Packet, value: &Ct6Value) -> i32 {
    let snat = value.has_flag(CtValue::FLAG_SNAT);
    let src = if snat {
        (&value.nat_address, value.nat_port)
    } else {
        (&packet.saddr, packet.sport)
    };
    let route = match routed(ctx, src, (&value.address, value.port)) {
        Ok(route) => route,
        Err(verdict) => return verdict,
    };
    if rewrite(ctx, packet, Side::Destination, &value.address, value.port).is_err() {
        return F::DROP;
    }
    if snat
        && rewrite(
            ctx,
            packet,
            Side::Source,
            &value.nat_address,
            value.nat_port,
        )
        .is_err()
    {
        return F::DROP;
    }
    packet.count_fragment();
    ctx.mark_translated();
    apply6(ctx, &route)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port, fixing the L4 checksum.
#[inline(never)]
fn rewrite<F: Frame>(
    ctx: &F,
    packet: &Packet,
    side: Side,
    address: &[u8; 16],
    port: Be16,
) -> Result<(), ()> {
    let (addr_offset, port_offset) = match side {
        Side::Source => (IP6_SRC, packet.l4()),
        Side::Destination => (IP6_DST, packet.l4() + 2),
    };
    let old_address: [u32; 4] = ctx.load(addr_offset).ok_or(())?;
    let mut new_address = [0_u32; 4];
    for (i, word) in new_address.iter_mut().enumerate() {
        let at = i * 4;
        *word = u32::from_ne_bytes([
            address[at],
            address[at + 1],
            address[at + 2],
            address[at + 3],
        ]);
    }
    if !packet.has_l4() {
        // A later fragment: no ports, no checksum (the first fragment's covers the
        // datagram); IPv6 has no header checksum.
        if old_address != new_address {
            ctx.store(addr_offset, &new_address).ok_or(())?;
        }
        return Ok(());
    }
    let old_port: u16 = ctx.load(port_offset).ok_or(())?;
    let csum = packet.csum_offset();
    let mangled = if packet.protocol == Protocol::Udp.raw() {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_address != new_address {
        let mut from = old_address;
        let mut to = new_address;
        // SAFETY: both buffers are 16-byte stack arrays of u32, the sizes passed.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        // The helper's 32-bit sum (the kernel's `__wsum`), or a negative error.
        let Ok(diff) = u32::try_from(diff) else {
            return Err(());
        };
        ctx.l4_csum_replace(csum, 0, diff, u64::from(BPF_F_PSEUDO_HDR) | mangled)
            .ok_or(())?;
        ctx.store(addr_offset, &new_address).ok_or(())?;
    }
    let new_port = port.raw();
    if old_port != new_port {
        ctx.l4_csum_replace(csum, u32::from(old_port), u32::from(new_port), mangled | 2)
            .ok_or(())?;
        ctx.store(port_offset, &new_port).ok_or(())?;
    }
    Ok(())
}

/// A 32-bit digest of an IPv6 address (affinity key, flow hash).
#[inline(always)]
fn address_hash(address: &[u8; 16]) -> u32 {
    let mut h = 0x9747_b28c_u32;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_be_bytes([address[i], address[i + 1], address[i + 2], address[i + 3]]),
        );
        i += 4;
    }
    finalize(h)
}

#[inline(always)]
fn flow_hash(packet: &Packet) -> u32 {
    let ports = (u32::from(packet.sport.to_host()) << 16) | u32::from(packet.dport.to_host());
    let mut h = mix(u32::from(packet.protocol), address_hash(&packet.saddr));
    h = mix(h, address_hash(&packet.daddr));
    h = mix(h, ports);
    finalize(h)
}
