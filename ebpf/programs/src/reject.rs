//! Rejects of new external flows to a frontend without backends, as kube-proxy's REJECT
//! rule does: the first packet is turned, in place, into an ICMP (ICMPv6) "port
//! unreachable" error from the frontend to the client, quoting the packet's IP header and
//! first 8 bytes of L4 header, and sent back out of the interface it came in on. Clients
//! see `ECONNREFUSED` at once instead of a timeout.
//!
//! Every CPU sends at most [`ICMP_REJECTS_PER_SEC`] per second (as the kernel limits its
//! own errors); beyond that, and for packets that cannot be quoted (IPv4 options, a packet
//! shorter than the quote), the packet is dropped and counted.

use fairlead_abi::{Reason, nodeport::ICMP_REJECTS_PER_SEC};

use crate::{
    frame::Frame,
    lb::{bump, now_secs},
    maps::REJECT_BUDGET,
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
pub(crate) fn reject4<F: Frame>(ctx: &F) -> i32 {
    if !take_budget() {
        bump(Reason::RejectLimited);
        return F::DROP;
    }
    // The quote: the IPv4 header, which must have no options, and 8 bytes of L4 header.
    let mut frame = [0_u8; FRAME4];
    let loaded = <&mut [u8; QUOTE4]>::try_from(&mut frame[ETH_HLEN + 28..])
        .ok()
        .and_then(|slot| ctx.load_into(ETH_HLEN, slot));
    if loaded.is_none() || frame[ETH_HLEN + 28] != 0x45 {
        bump(Reason::RejectFailed);
        return F::DROP;
    }
    if !swap_ethernet(ctx, &mut frame, 0x0800) {
        bump(Reason::RejectFailed);
        return F::DROP;
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
/// unreachable, port unreachable (type 1, code 4); returns the verdict.
///
/// Built in place (the quote moved behind the new headers), not on the stack: the IPv6
/// call chains leave little of the 512 bytes the verifier allows. Only at TC
/// ([`Frame::REJECTS_IPV6`]).
#[inline(never)]
pub(crate) fn reject6<F: Frame>(ctx: &F) -> i32 {
    if !take_budget() {
        bump(Reason::RejectLimited);
        return F::DROP;
    }
    let Some(verdict) = answer6(ctx) else {
        bump(Reason::RejectFailed);
        return F::DROP;
    };
    bump(Reason::ExternalNoBackend);
    verdict
}

#[inline(always)]
fn answer6<F: Frame>(ctx: &F) -> Option<i32> {
    let macs: [u8; 12] = ctx.load(0)?;
    let client: [u8; 16] = ctx.load(ETH_HLEN + 8)?;
    let frontend: [u8; 16] = ctx.load(ETH_HLEN + 24)?;
    // The packet holds the whole quote.
    let _: u64 = ctx.load(ETH_HLEN + QUOTE6 - 8)?;
    ctx.resize(FRAME6)?;
    // The quote (the IPv6 header and 8 bytes) moves behind the new headers (the two ranges
    // do not overlap), summed on the way.
    let quote = ETH_HLEN + 48;
    let mut sum = 0_u32;
    let mut at = 0;
    while at < QUOTE6 {
        let word: [u8; 8] = ctx.load(ETH_HLEN + at)?;
        ctx.store(quote + at, &word)?;
        sum += sum16(&word);
        at += 8;
    }
    let mut ethernet = [0_u8; ETH_HLEN];
    ethernet[..6].copy_from_slice(&macs[6..]);
    ethernet[6..12].copy_from_slice(&macs[..6]);
    ethernet[12..].copy_from_slice(&0x86dd_u16.to_be_bytes());
    ctx.store(0, &ethernet)?;
    let [length_high, length_low] = PAYLOAD6.to_be_bytes();
    let fixed = [
        0x60,
        0,
        0,
        0,
        length_high,
        length_low,
        IPPROTO_ICMPV6,
        HOP_LIMIT,
    ];
    ctx.store(ETH_HLEN, &fixed)?;
    // From the frontend to the client.
    ctx.store(ETH_HLEN + 8, &frontend)?;
    ctx.store(ETH_HLEN + 24, &client)?;
    // The pseudo-header (addresses, upper-layer length, next header), type and code.
    sum += sum16(&frontend)
        + sum16(&client)
        + u32::from(PAYLOAD6)
        + u32::from(IPPROTO_ICMPV6)
        + (1 << 8 | 4);
    let [sum_high, sum_low] = (!fold(sum)).to_be_bytes();
    ctx.store(ETH_HLEN + 40, &[1_u8, 4, sum_high, sum_low, 0, 0, 0, 0])?;
    Some(ctx.send_back())
}

/// Writes the answer's Ethernet header into `frame`: the packet's addresses swapped.
#[inline(always)]
fn swap_ethernet<F: Frame>(ctx: &F, frame: &mut [u8], ethertype: u16) -> bool {
    let Some(macs) = ctx.load::<[u8; 12]>(0) else {
        return false;
    };
    frame[..6].copy_from_slice(&macs[6..]);
    frame[6..12].copy_from_slice(&macs[..6]);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
    true
}

/// Sends `frame` back out in place of the packet.
#[inline(always)]
fn send<F: Frame, const N: usize>(ctx: &F, frame: &[u8; N]) -> i32 {
    if ctx.resize(N).is_none() || ctx.store_bytes(0, frame).is_none() {
        bump(Reason::RejectFailed);
        return F::DROP;
    }
    bump(Reason::ExternalNoBackend);
    ctx.send_back()
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
    !fold(sum)
}

/// The one's-complement sum of `data`'s 16-bit big-endian words, unfolded.
#[inline(always)]
fn sum16<const N: usize>(data: &[u8; N]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    sum
}

/// `sum` folded to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    folded
}
