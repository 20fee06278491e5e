//! ICMP errors about packets of balanced flows (IPv4 and IPv6), translated back to the host that sent
//! the packet. An error quotes the packet as it was on the wire where it failed, that is
//! translated, and is addressed to the packet's (translated) source; the kernel's own
//! connection tracking does this for kube-proxy's NAT ("related" packets). Two cases:
//!
//! - the quoted packet went from this node to a backend on another node (source NAT: node
//!   address → backend), e.g. "fragmentation needed" from a router of the cluster network:
//!   the error goes to the client, quoting the packet as the client sent it (client →
//!   frontend);
//! - the quoted packet is a reply this node sent to a client (frontend → client), e.g.
//!   "fragmentation needed" from a router on the client's side: the error goes to the
//!   backend, quoting the reply as the backend sent it (backend → node address, or →
//!   client).
//!
//! The outer destination, the quoted addresses and ports, the quoted header's checksum and
//! the ICMP checksum are rewritten (the quoted L4 checksum is left: nobody checks it), and
//! the stack routes the error. Errors about other packets go on untouched.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::generated::bpf_csum_diff};
use fairlead_abi::{Be16, Be32, Ct4Key, Ct6Key, CtValue, Protocol, Reason};

use crate::{frame::Frame, lb::bump, nodeport::ct_map, nodeport6::ct_map as ct6_map};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
/// The ICMP header, right after an IPv4 header without options.
const ICMP: usize = ETH_HLEN + 20;
const ICMP_CSUM: usize = ICMP + 2;
/// The quoted IPv4 header.
const INNER: usize = ICMP + 8;

/// Translates an ICMP error about a packet of a balanced flow (see the module
/// documentation); returns the verdict (`NEXT` for anything else).
#[inline(never)]
pub(crate) fn related4<F: Frame>(ctx: &F) -> i32 {
    verdict::<F>(translate(ctx))
}

/// The verdict of a translation: to the stack when translated, on untouched when not ours,
/// dropped when a rewrite failed half-way.
#[inline(always)]
fn verdict<F: Frame>(translated: Option<bool>) -> i32 {
    match translated {
        Some(true) => {
            bump(Reason::IcmpRelated);
            F::PASS
        }
        Some(false) => F::NEXT,
        None => F::DROP,
    }
}

/// `Some(true)`: translated; `Some(false)`: not an error about a balanced flow; `None`: a
/// rewrite failed half-way.
#[inline(always)]
fn translate<F: Frame>(ctx: &F) -> Option<bool> {
    let (Some(ethertype), Some(version_ihl), Some(protocol), Some(frag), Some(icmp_type)) = (
        ctx.load::<u16>(12),
        ctx.load::<u8>(ETH_HLEN),
        ctx.load::<u8>(ETH_HLEN + 9),
        ctx.load::<u16>(ETH_HLEN + 6),
        ctx.load::<u8>(ICMP),
    ) else {
        return Some(false);
    };
    // An unfragmented IPv4 ICMP error (destination unreachable, time exceeded, parameter
    // problem), without options, quoting an IPv4 header without options and its ports.
    if u16::from_be(ethertype) != ETH_P_IP
        || version_ihl != 0x45
        || protocol != IPPROTO_ICMP
        || u16::from_be(frag) & 0x3fff != 0
        || !matches!(icmp_type, 3 | 11 | 12)
    {
        return Some(false);
    }
    let (Some(inner_version_ihl), Some(inner_protocol), Some(quoted)) = (
        ctx.load::<u8>(INNER),
        ctx.load::<u8>(INNER + 9),
        ctx.load::<[u32; 3]>(INNER + 12),
    ) else {
        return Some(false);
    };
    if inner_version_ihl != 0x45
        || (inner_protocol != Protocol::Tcp.raw() && inner_protocol != Protocol::Udp.raw())
    {
        return Some(false);
    }
    let [src, dst, ports] = quoted;
    let (src, dst) = (Be32::from_raw(src), Be32::from_raw(dst));
    let [sport_high, sport_low, dport_high, dport_low] = ports.to_ne_bytes();
    let sport = Be16::from_raw(u16::from_ne_bytes([sport_high, sport_low]));
    let dport = Be16::from_raw(u16::from_ne_bytes([dport_high, dport_low]));
    let ct = ct_map(inner_protocol);

    // One lookup: the quoted packet's tuple turned around is the key of the flow's entry
    // in the direction the error travels.
    let key = Ct4Key::new(dst, src, dport, sport, inner_protocol);
    // SAFETY: a pointer from a successful lookup points to a live LRU element.
    let Some(value) = ct.get_ptr(key).map(|entry| unsafe { *entry }) else {
        return Some(false);
    };
    let (outer_dst, new_src, new_dst) = if value.has_flag(CtValue::FLAG_REPLY) {
        // To a backend, with source NAT: its reply entry says where the flow came from.
        if !value.has_flag(CtValue::FLAG_SNAT) {
            return Some(false);
        }
        (
            value.nat_address,
            (value.nat_address, value.nat_port),
            (value.address, value.port),
        )
    } else {
        // A reply to a client: the flow's original entry names the backend.
        let to = if value.has_flag(CtValue::FLAG_SNAT) {
            (value.nat_address, value.nat_port)
        } else {
            (dst, dport)
        };
        (value.address, (value.address, value.port), to)
    };

    // The outer destination (ICMP has no pseudo-header: the ICMP checksum is unaffected).
    let old_outer: u32 = ctx.load(ETH_HLEN + 16)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, old_outer, outer_dst.raw(), 4)?;
    ctx.store(ETH_HLEN + 16, &outer_dst.raw())?;
    // The quoted addresses (quoted header checksum and ICMP checksum) and ports (ICMP
    // checksum).
    quoted_address(ctx, INNER + 12, src.raw(), new_src.0.raw())?;
    quoted_address(ctx, INNER + 16, dst.raw(), new_dst.0.raw())?;
    quoted_port(ctx, INNER + 20, sport.raw(), new_src.1.raw())?;
    quoted_port(ctx, INNER + 22, dport.raw(), new_dst.1.raw())?;
    Some(true)
}

/// Rewrites a quoted address, fixing the quoted header's checksum and the ICMP checksum
/// (which covers both).
#[inline(always)]
fn quoted_address<F: Frame>(ctx: &F, at: usize, old: u32, new: u32) -> Option<()> {
    if old == new {
        return Some(());
    }
    let old_sum: u16 = ctx.load(INNER + 10)?;
    ctx.l3_csum_replace(INNER + 10, old, new, 4)?;
    let new_sum: u16 = ctx.load(INNER + 10)?;
    ctx.l4_csum_replace(ICMP_CSUM, old, new, 4)?;
    ctx.l4_csum_replace(ICMP_CSUM, u32::from(old_sum), u32::from(new_sum), 2)?;
    ctx.store(at, &new)
}

/// Rewrites a quoted port, fixing the ICMP checksum.
#[inline(always)]
fn quoted_port<F: Frame>(ctx: &F, at: usize, old: u16, new: u16) -> Option<()> {
    if old == new {
        return Some(());
    }
    ctx.l4_csum_replace(ICMP_CSUM, u32::from(old), u32::from(new), 2)?;
    ctx.store(at, &new)
}

const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
/// The ICMPv6 header, right after an IPv6 header without extension headers.
const ICMP6: usize = ETH_HLEN + 40;
const ICMP6_CSUM: usize = ICMP6 + 2;
/// The quoted IPv6 header.
const INNER6: usize = ICMP6 + 8;

/// [`related4`] for ICMPv6 errors (destination unreachable, packet too big, time exceeded,
/// parameter problem) about IPv6 flows. The ICMPv6 checksum covers the outer addresses too
/// (pseudo-header); the quoted IPv6 header has no checksum of its own.
#[inline(never)]
pub(crate) fn related6<F: Frame>(ctx: &F) -> i32 {
    verdict::<F>(translate6(ctx))
}

#[inline(always)]
fn translate6<F: Frame>(ctx: &F) -> Option<bool> {
    let (Some(ethertype), Some(next_header), Some(icmp_type), Some(inner_next)) = (
        ctx.load::<u16>(12),
        ctx.load::<u8>(ETH_HLEN + 6),
        ctx.load::<u8>(ICMP6),
        ctx.load::<u8>(INNER6 + 6),
    ) else {
        return Some(false);
    };
    if u16::from_be(ethertype) != ETH_P_IPV6
        || next_header != IPPROTO_ICMPV6
        || !matches!(icmp_type, 1..=4)
        || (inner_next != Protocol::Tcp.raw() && inner_next != Protocol::Udp.raw())
    {
        return Some(false);
    }
    let (Some(src), Some(dst), Some(sport), Some(dport)) = (
        ctx.load::<[u8; 16]>(INNER6 + 8),
        ctx.load::<[u8; 16]>(INNER6 + 24),
        ctx.load::<u16>(INNER6 + 40),
        ctx.load::<u16>(INNER6 + 42),
    ) else {
        return Some(false);
    };
    let (sport, dport) = (Be16::from_raw(sport), Be16::from_raw(dport));
    let ct = ct6_map(inner_next);
    let key = Ct6Key::new(dst, src, dport, sport, inner_next);
    let mut to = Rewrite6 {
        from_src: (src, sport),
        from_dst: (dst, dport),
        ..Rewrite6::default()
    };
    // Not about a balanced flow: on untouched (the node's own traffic gets its errors).
    let Some(entry) = ct.get_ptr(key) else {
        return Some(false);
    };
    // SAFETY: a pointer from a successful lookup points to a live LRU element.
    let value = unsafe { &*entry };
    if value.has_flag(CtValue::FLAG_REPLY) {
        if !value.has_flag(CtValue::FLAG_SNAT) {
            return Some(false);
        }
        // To a backend, with source NAT: back to the client, as it sent the packet.
        to.outer = value.nat_address;
        to.src = (value.nat_address, value.nat_port);
        to.dst = (value.address, value.port);
    } else {
        // A reply to a client: to the backend, as it sent the reply.
        to.outer = value.address;
        to.src = (value.address, value.port);
        to.dst = if value.has_flag(CtValue::FLAG_SNAT) {
            (value.nat_address, value.nat_port)
        } else {
            (dst, dport)
        };
    }
    rewrite6(ctx, &to).map(|()| true)
}

/// Where an ICMPv6 error goes, and what it quotes, once translated (and what it quotes
/// now). One struct: a BPF function takes at most five arguments.
#[derive(Default)]
struct Rewrite6 {
    outer: [u8; 16],
    src: ([u8; 16], Be16),
    dst: ([u8; 16], Be16),
    from_src: ([u8; 16], Be16),
    from_dst: ([u8; 16], Be16),
}

/// Applies `to` (the outer destination, the quoted addresses and ports), fixing the ICMPv6
/// checksum. `None` when a step failed (the packet is then half-translated: dropped).
#[inline(never)]
fn rewrite6<F: Frame>(ctx: &F, to: &Rewrite6) -> Option<()> {
    let outer: [u8; 16] = ctx.load(ETH_HLEN + 24)?;
    address6(ctx, ETH_HLEN + 24, &outer, &to.outer, true)?;
    address6(ctx, INNER6 + 8, &to.from_src.0, &to.src.0, false)?;
    address6(ctx, INNER6 + 24, &to.from_dst.0, &to.dst.0, false)?;
    port6(ctx, INNER6 + 40, to.from_src.1, to.src.1)?;
    port6(ctx, INNER6 + 42, to.from_dst.1, to.dst.1)
}

#[inline(always)]
fn address6<F: Frame>(
    ctx: &F,
    at: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    pseudo_header: bool,
) -> Option<()> {
    if old == new {
        return Some(());
    }
    let mut from = [0_u32; 4];
    let mut to = [0_u32; 4];
    for i in 0..4 {
        from[i] = u32::from_ne_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]);
        to[i] = u32::from_ne_bytes([new[i * 4], new[i * 4 + 1], new[i * 4 + 2], new[i * 4 + 3]]);
    }
    // SAFETY: both buffers are 16-byte stack arrays of u32, the sizes passed.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    let diff = u32::try_from(diff).ok()?;
    let flags = if pseudo_header {
        u64::from(BPF_F_PSEUDO_HDR)
    } else {
        0
    };
    ctx.l4_csum_replace(ICMP6_CSUM, 0, diff, flags)?;
    ctx.store(at, new)
}

#[inline(always)]
fn port6<F: Frame>(ctx: &F, at: usize, old: Be16, new: Be16) -> Option<()> {
    if old == new {
        return Some(());
    }
    ctx.l4_csum_replace(ICMP6_CSUM, u32::from(old.raw()), u32::from(new.raw()), 2)?;
    ctx.store(at, &new.raw())
}
