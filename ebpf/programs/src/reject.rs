//! Rejects of new external flows to a frontend without backends, as kube-proxy's REJECT
//! rule does: the first packet is turned, in place, into an ICMP (ICMPv6) "port
//! unreachable" error from the frontend to the client, quoting the packet's IP header and
//! first 8 bytes of L4 header, and sent back out of the interface it came in on. Clients
//! see `ECONNREFUSED` at once instead of a timeout.
//!
//! Every CPU sends at most [`ICMP_REJECTS_PER_SEC`] per second (as the kernel limits its
//! own errors); beyond that, and for packets that cannot be quoted (IPv4 options, a packet
//! shorter than the quote), the packet is dropped and counted.

use aya_ebpf::{
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use fairlead_abi::{Reason, nodeport::ICMP_REJECTS_PER_SEC};

use crate::{
    lb::{bump, now_secs},
    maps::REJECT_BUDGET,
    nodeport::DROP,
    route::ingress_ifindex,
};

const ETH_HLEN: usize = 14;
/// IPv4 header (no options) + 8 bytes of L4 header.
const QUOTE4: usize = 28;
/// Ethernet + IPv4 + ICMP header + quote.
const FRAME4: usize = ETH_HLEN + 20 + 8 + QUOTE4;
/// The IPv4 total length of the answer.
const TOTAL4: u16 = 20 + 8 + 28;
const _: () = assert!(TOTAL4 as usize == FRAME4 - ETH_HLEN);
/// IPv6 header + 8 bytes of L4 header.
const QUOTE6: usize = 48;
/// Ethernet + IPv6 + ICMPv6 header + quote.
const FRAME6: usize = ETH_HLEN + 40 + 8 + QUOTE6;
/// The IPv6 payload length of the answer.
const PAYLOAD6: u16 = 8 + 48;
const _: () = assert!(PAYLOAD6 as usize == FRAME6 - ETH_HLEN - 40);
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// TTL / hop limit of the errors.
const HOP_LIMIT: u8 = 64;

/// Answers an IPv4 packet with ICMP destination unreachable, port unreachable (type 3,
/// code 3); returns the TC verdict.
#[inline(never)]
pub(crate) fn reject4(ctx: &TcContext) -> i32 {
    if !take_budget() {
        bump(Reason::RejectLimited);
        return DROP;
    }
    // The quote: the IPv4 header, which must have no options, and 8 bytes of L4 header.
    let Ok(original) = ctx.load::<[u8; QUOTE4]>(ETH_HLEN) else {
        bump(Reason::RejectFailed);
        return DROP;
    };
    if original[0] != 0x45 {
        bump(Reason::RejectFailed);
        return DROP;
    }
    let mut frame = [0_u8; FRAME4];
    frame[ETH_HLEN + 28..].copy_from_slice(&original);
    if !swap_ethernet(ctx, &mut frame, 0x0800) {
        bump(Reason::RejectFailed);
        return DROP;
    }
    let quote = ETH_HLEN + 28;
    let ip = ETH_HLEN;
    frame[ip] = 0x45;
    // DSCP CS6 (internetwork control), as the kernel's ICMP errors.
    frame[ip + 1] = 0xc0;
    frame[ip + 2..ip + 4].copy_from_slice(&TOTAL4.to_be_bytes());
    frame[ip + 8] = HOP_LIMIT;
    frame[ip + 9] = IPPROTO_ICMP;
    // From the frontend (the quoted destination) to the client (the quoted source).
    let mut i = 0;
    while i < 4 {
        frame[ip + 12 + i] = frame[quote + 16 + i];
        frame[ip + 16 + i] = frame[quote + 12 + i];
        i += 1;
    }
    let ip_sum = checksum(0, &frame[ip..ip + 20]);
    frame[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp = ETH_HLEN + 20;
    frame[icmp] = 3;
    frame[icmp + 1] = 3;
    let icmp_sum = checksum(0, &frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    send(ctx, &frame)
}

/// Answers an IPv6 packet (without extension headers) with ICMPv6 destination
/// unreachable, port unreachable (type 1, code 4); returns the TC verdict.
#[inline(never)]
pub(crate) fn reject6(ctx: &TcContext) -> i32 {
    if !take_budget() {
        bump(Reason::RejectLimited);
        return DROP;
    }
    let Ok(original) = ctx.load::<[u8; QUOTE6]>(ETH_HLEN) else {
        bump(Reason::RejectFailed);
        return DROP;
    };
    let mut frame = [0_u8; FRAME6];
    let quote = ETH_HLEN + 48;
    frame[quote..].copy_from_slice(&original);
    if !swap_ethernet(ctx, &mut frame, 0x86dd) {
        bump(Reason::RejectFailed);
        return DROP;
    }
    let ip = ETH_HLEN;
    frame[ip] = 0x60;
    frame[ip + 4..ip + 6].copy_from_slice(&PAYLOAD6.to_be_bytes());
    frame[ip + 6] = IPPROTO_ICMPV6;
    frame[ip + 7] = HOP_LIMIT;
    let mut i = 0;
    while i < 16 {
        frame[ip + 8 + i] = frame[quote + 24 + i];
        frame[ip + 24 + i] = frame[quote + 8 + i];
        i += 1;
    }
    let icmp = ETH_HLEN + 40;
    frame[icmp] = 1;
    frame[icmp + 1] = 4;
    // The pseudo-header: both addresses, the upper-layer length and the next header.
    let pseudo = u32::from(PAYLOAD6) + u32::from(IPPROTO_ICMPV6);
    let sum = checksum(pseudo, &frame[ip + 8..ip + 40]);
    let sum = checksum(u32::from(!sum), &frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    send(ctx, &frame)
}

/// Writes the answer's Ethernet header into `frame`: the packet's addresses swapped.
#[inline(always)]
fn swap_ethernet(ctx: &TcContext, frame: &mut [u8], ethertype: u16) -> bool {
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return false;
    };
    frame[..6].copy_from_slice(&macs[6..]);
    frame[6..12].copy_from_slice(&macs[..6]);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
    true
}

/// Resizes the packet to `frame`, writes it and sends it back out of its interface.
#[inline(always)]
fn send<const N: usize>(ctx: &TcContext, frame: &[u8; N]) -> i32 {
    #[expect(clippy::cast_possible_truncation, reason = "frames are ~100 bytes")]
    let len = N as u32;
    // SAFETY: the context pointer of this run; the helper only resizes the packet (the
    // loads and stores below are checked against its new length).
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 || ctx.store(0, frame, 0).is_err() {
        bump(Reason::RejectFailed);
        return DROP;
    }
    bump(Reason::ExternalNoBackend);
    // SAFETY: plain helper call with an interface index and no flags.
    let verdict = unsafe { bpf_redirect(ingress_ifindex(ctx), 0) };
    i32::try_from(verdict).unwrap_or(DROP)
}

/// Takes one reject from this CPU's budget of the current second.
#[inline(always)]
fn take_budget() -> bool {
    let Some(slot) = REJECT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let now = u64::from(now_secs());
    // SAFETY: a per-CPU array element of this CPU, valid for the run; no other program
    // runs on this CPU meanwhile (the programs are not preempted).
    let value = unsafe { *slot };
    let (second, sent) = (value >> 32, value & 0xffff_ffff);
    let sent = if second == now { sent } else { 0 };
    if sent >= u64::from(ICMP_REJECTS_PER_SEC) {
        return false;
    }
    // SAFETY: as above.
    unsafe { *slot = (now << 32) | (sent + 1) };
    true
}

/// The Internet checksum of `data` (even length) added to `seed`, folded and inverted.
#[inline(always)]
fn checksum(seed: u32, data: &[u8]) -> u16 {
    let mut sum = seed;
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    !folded
}
