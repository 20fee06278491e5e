//! Routing of translated packets past the kernel's forwarding path: `bpf_fib_lookup` finds
//! the output interface and the next hop's MAC address in the node's routing and neighbour
//! tables, the packet gets its new Ethernet header and TTL (hop limit) and is sent out of
//! that interface. As the kernel forwards, minus its per-packet route lookup, netfilter
//! hooks and queueing into the stack.
//!
//! The route is looked up before the packet is translated ([`route4`], [`route6`]), on the
//! addresses it will carry, and applied after ([`apply4`], [`apply6`]): a packet the route
//! cannot take is answered from its original headers, so the answer reaches the client (or
//! the backend) and not the node's own source-NAT address. Too large for the route's MTU
//! and not to be fragmented (IPv4 with DF, any IPv6): [`Way::TooBig`], answered with
//! "fragmentation needed" / "packet too big"; a TTL about to expire: [`Way::Expiring`],
//! answered with "time exceeded" ([`crate::reject`]).
//!
//! What the lookup cannot route otherwise goes to the stack (`PASS`, counted as
//! [`Reason::FibFallback`]): a destination on this node (`NOT_FWDED`), forwarding disabled, a
//! blackhole or unreachable route, an IPv4 packet the stack may fragment, and at XDP an
//! output interface other than the input one (see [`crate::frame`]). At TC, a next hop
//! without a neighbour entry is resolved by `bpf_redirect_neigh`.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1, bpf_fib_lookup__bindgen_ty_2,
    bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4, bpf_fib_lookup__bindgen_ty_5,
};
use core::ptr;

use fairlead_abi::{Be16, Be32, Reason};

use crate::{frame::Frame, lb::bump};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// What becomes of a packet once translated.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Way {
    /// Out of the route's interface, sent by this hook.
    Send,
    /// To the stack.
    Stack,
    /// Larger than the route's MTU ([`Route::mtu`]), and not to be fragmented.
    TooBig,
    /// Its TTL (hop limit) would expire here.
    Expiring,
}

/// Where a packet goes once translated. (Every field always set, not an enum with data:
/// the verifier refuses a write of a register the program never set.)
#[derive(Clone, Copy)]
pub(crate) struct Route {
    pub(crate) way: Way,
    /// The route's MTU, for [`Way::TooBig`].
    pub(crate) mtu: u16,
    ifindex: u32,
    /// Whether the next hop's Ethernet address is known (`smac`, `dmac`); else the kernel
    /// resolves it.
    neighbour_known: bool,
    smac: [u8; 6],
    dmac: [u8; 6],
}

impl Route {
    /// A route without an output interface.
    pub(crate) const fn other(way: Way, mtu: u16) -> Self {
        Self {
            way,
            mtu,
            ifindex: 0,
            neighbour_known: false,
            smac: [0; 6],
            dmac: [0; 6],
        }
    }
}

/// The addresses and ports a packet will carry: ((source, port), (destination, port)).
/// (By reference: a BPF function takes at most five arguments.)
pub(crate) type Flow4 = ((Be32, Be16), (Be32, Be16));
/// [`Flow4`] for IPv6.
pub(crate) type Flow6<'a> = ((&'a [u8; 16], Be16), (&'a [u8; 16], Be16));

/// The route of an IPv4 packet once it carries `flow`; the packet is not changed.
/// Written to `out`; returns the MTU of a [`Way::TooBig`] (else 0). (A BPF function may
/// not return a pointer into its caller's frame, which returning a struct, or nothing, can
/// leave in the return register.)
#[inline(never)]
pub(crate) fn route4<F: Frame>(frame: &F, flow: &Flow4, out: &mut Route) -> u16 {
    *out = find4(frame, flow);
    too_big_mtu(out)
}

#[inline(always)]
fn too_big_mtu(route: &Route) -> u16 {
    if route.way == Way::TooBig {
        route.mtu
    } else {
        0
    }
}

#[inline(always)]
fn find4<F: Frame>(frame: &F, flow: &Flow4) -> Route {
    let ((src, sport), (dst, dport)) = *flow;
    let Some(ttl_protocol) = frame.load::<[u8; 2]>(ETH_HLEN + 8) else {
        return Route::other(Way::Stack, 0);
    };
    let [ttl, protocol] = ttl_protocol;
    if ttl <= 1 {
        return Route::other(Way::Expiring, 0);
    }
    let (Some(version_ihl), Some(tot_len), Some(tos), Some(frag)) = (
        frame.load::<u8>(ETH_HLEN),
        frame.load::<u16>(ETH_HLEN + 2),
        frame.load::<u8>(ETH_HLEN + 1),
        frame.load::<u16>(ETH_HLEN + 6),
    ) else {
        return Route::other(Way::Stack, 0);
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    let mut params = fib_params(
        frame,
        (AF_INET, protocol),
        (sport, dport),
        checked_length(frame, u16::from_be(tot_len), ETH_HLEN + ihl, protocol),
        // The TOS byte is the union's first byte (little-endian BPF).
        u32::from(tos),
        ([src.raw(), 0, 0, 0], [dst.raw(), 0, 0, 0]),
    );
    let may_fragment = u16::from_be(frag) & IP_DF == 0;
    decide(frame, &mut params, may_fragment)
}

/// The route of an IPv6 packet (without extension headers) once it carries `flow`; the
/// packet is not changed. (Written to `out`, returning the MTU, as [`route4`].)
#[inline(never)]
pub(crate) fn route6<F: Frame>(frame: &F, flow: &Flow6<'_>, out: &mut Route) -> u16 {
    *out = find6(frame, flow);
    too_big_mtu(out)
}

#[inline(always)]
fn find6<F: Frame>(frame: &F, flow: &Flow6<'_>) -> Route {
    let ((src, sport), (dst, dport)) = *flow;
    let (Some(hop_limit), Some(protocol), Some(payload), Some(first)) = (
        frame.load::<u8>(ETH_HLEN + 7),
        frame.load::<u8>(ETH_HLEN + 6),
        frame.load::<u16>(ETH_HLEN + 4),
        frame.load::<u32>(ETH_HLEN),
    ) else {
        return Route::other(Way::Stack, 0);
    };
    if hop_limit <= 1 {
        return Route::other(Way::Expiring, 0);
    }
    let mut params = fib_params(
        frame,
        (AF_INET6, protocol),
        (sport, dport),
        checked_length(
            frame,
            u16::from_be(payload).saturating_add(40),
            ETH_HLEN + 40,
            protocol,
        ),
        // Traffic class and flow label: the first word without the version.
        first & u32::from_be(0x0fff_ffff),
        ([0; 4], [0; 4]),
    );
    // Byte by byte into place (a copy through integers would spill every byte to the
    // stack, which the IPv6 call chains cannot spare).
    // SAFETY: 16 bytes into each 16-byte union member of a struct on this frame.
    unsafe {
        ptr::copy_nonoverlapping(
            src.as_ptr(),
            (&raw mut params.__bindgen_anon_3).cast::<u8>(),
            16,
        );
        ptr::copy_nonoverlapping(
            dst.as_ptr(),
            (&raw mut params.__bindgen_anon_4).cast::<u8>(),
            16,
        );
    }
    decide(frame, &mut params, false)
}

/// The length the lookup checks against the route's MTU: the packet's IP length, or for a
/// GRO/GSO packet the length of the segments it leaves as (headers and segment size).
#[inline(always)]
fn checked_length<F: Frame>(frame: &F, ip_len: u16, l4: usize, protocol: u8) -> u16 {
    let segment = frame.gso_size();
    if segment == 0 {
        return ip_len;
    }
    let l4_header = if protocol == IPPROTO_TCP {
        frame
            .load::<u8>(l4 + 12)
            .map_or(20, |offset| u16::from(offset >> 4) * 4)
    } else {
        8
    };
    #[expect(clippy::cast_possible_truncation, reason = "header offsets are small")]
    let ip_header = (l4 - ETH_HLEN) as u16;
    segment.saturating_add(ip_header).saturating_add(l4_header)
}

/// The lookup's parameters, every byte written (the helper reads them all, and the
/// verifier wants them initialised).
#[inline(always)]
fn fib_params<F: Frame>(
    frame: &F,
    (family, l4_protocol): (u8, u8),
    (sport, dport): (Be16, Be16),
    tot_len: u16,
    flow_or_tos: u32,
    (src, dst): ([u32; 4], [u32; 4]),
) -> FibParams {
    FibParams {
        family,
        l4_protocol,
        sport: sport.raw(),
        dport: dport.raw(),
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
        ifindex: frame.ingress_ifindex(),
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 {
            flowinfo: flow_or_tos,
        },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 { ipv6_src: src },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: dst },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    }
}

/// Looks the route up and decides.
#[inline(always)]
fn decide<F: Frame>(frame: &F, params: &mut FibParams, may_fragment: bool) -> Route {
    let neighbour_known = match frame.fib_lookup(params) {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED if !may_fragment => {
            // SAFETY: the helper wrote the MTU into this union member.
            return Route::other(Way::TooBig, unsafe { params.__bindgen_anon_1.mtu_result });
        }
        _ => return Route::other(Way::Stack, 0),
    };
    if !frame.sends_to(params.ifindex, neighbour_known) {
        return Route::other(Way::Stack, 0);
    }
    Route {
        way: Way::Send,
        mtu: 0,
        ifindex: params.ifindex,
        neighbour_known,
        smac: params.smac,
        dmac: params.dmac,
    }
}

/// Sends a translated IPv4 packet on its route (found by [`route4`]): TTL and Ethernet
/// header, then out; returns the verdict. ([`Way::TooBig`] and [`Way::Expiring`] are the
/// caller's to answer; here they go to the stack.)
#[inline(never)]
pub(crate) fn apply4<F: Frame>(frame: &F, route: &Route) -> i32 {
    if route.way != Way::Send {
        bump(Reason::FibFallback);
        return F::PASS;
    }
    let decremented = frame
        .load::<[u8; 2]>(ETH_HLEN + 8)
        .and_then(|[ttl, protocol]| {
            // The TTL, and the header checksum over its 16-bit word (TTL, protocol).
            let new_ttl = ttl.checked_sub(1)?;
            let old = u16::from_ne_bytes([ttl, protocol]);
            let new = u16::from_ne_bytes([new_ttl, protocol]);
            frame.l3_csum_replace(ETH_HLEN + 10, u32::from(old), u32::from(new), 2)?;
            frame.store(ETH_HLEN + 8, &new_ttl)
        });
    send(frame, route, decremented)
}

/// [`apply4`] for IPv6 (the hop limit).
#[inline(never)]
pub(crate) fn apply6<F: Frame>(frame: &F, route: &Route) -> i32 {
    if route.way != Way::Send {
        bump(Reason::FibFallback);
        return F::PASS;
    }
    let decremented = frame
        .load::<u8>(ETH_HLEN + 7)
        .and_then(|hop_limit| frame.store(ETH_HLEN + 7, &hop_limit.checked_sub(1)?));
    send(frame, route, decremented)
}

/// Sets the Ethernet addresses (when known) and sends the packet out.
#[inline(always)]
fn send<F: Frame>(frame: &F, route: &Route, decremented: Option<()>) -> i32 {
    let addressed = decremented.and_then(|()| {
        if route.neighbour_known {
            frame.store(0, &route.dmac)?;
            frame.store(6, &route.smac)?;
        }
        Some(())
    });
    if addressed.is_none() {
        bump(Reason::FibFallback);
        return F::PASS;
    }
    bump(Reason::FibRedirect);
    frame.send(route.ifindex, route.neighbour_known)
}
