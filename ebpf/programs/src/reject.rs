//! ICMP errors the load balancer answers a packet with, turning it in place into the error
//! from its destination to its source, quoting its IP header and first 8 bytes of L4
//! header, sent back out of the interface it came in on:
//!
//! - rejects of new external flows to a frontend without backends, as kube-proxy's REJECT
//!   rule does ("port unreachable"): clients see `ECONNREFUSED` at once, not a timeout;
//! - "fragmentation needed" / "packet too big" and "time exceeded" for packets the route
//!   of their translation cannot take ([`crate::route`]), answered from the untranslated
//!   headers so that the client (or the backend) learns, not the node's own address.
//!
//! Every CPU sends at most [`ICMP_REJECTS_PER_SEC`] errors per second (as the kernel limits its
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

/// An ICMP error the load balancer sends. (A plain pair of integers, not an enum with
/// data: every byte of an argument must be initialised for the verifier.)
#[derive(Clone, Copy)]
pub(crate) struct Icmp {
    kind: u8,
    mtu: u16,
}

impl Icmp {
    /// Destination unreachable, port unreachable: a frontend without endpoints.
    pub(crate) const PORT_UNREACHABLE: Self = Self { kind: 0, mtu: 0 };
    /// Time exceeded in transit.
    pub(crate) const TIME_EXCEEDED: Self = Self { kind: 2, mtu: 0 };

    /// Fragmentation needed (ICMPv6: packet too big), with the route's MTU.
    pub(crate) const fn too_big(mtu: u16) -> Self {
        Self { kind: 1, mtu }
    }

    /// Type, code and the header's second word for IPv4.
    fn v4(self) -> (u8, u8, [u8; 4]) {
        let [high, low] = self.mtu.to_be_bytes();
        match self.kind {
            0 => (3, 3, [0; 4]),
            1 => (3, 4, [0, 0, high, low]),
            _ => (11, 0, [0; 4]),
        }
    }

    /// Type, code and the header's second word for IPv6.
    fn v6(self) -> (u8, u8, [u8; 4]) {
        match self.kind {
            0 => (1, 4, [0; 4]),
            1 => (2, 0, u32::from(self.mtu).to_be_bytes()),
            _ => (3, 0, [0; 4]),
        }
    }

    /// The counter of a sent error.
    fn reason(self) -> Reason {
        match self.kind {
            0 => Reason::ExternalNoBackend,
            1 => Reason::TooBig,
            _ => Reason::TtlExceeded,
        }
    }
}

/// Answers an IPv4 packet (without options) with the ICMP error `kind`, from its
/// destination to its source; returns the verdict.
#[inline(never)]
pub(crate) fn icmp4<F: Frame>(ctx: &F, kind: Icmp) -> i32 {
    answered(ctx, kind, answer4)
}

/// Answers an IPv6 packet (without extension headers) with the ICMPv6 error `kind`, from
/// its destination to its source; returns the verdict. Only at TC
/// ([`Frame::SLOW_PATH`]).
#[inline(never)]
pub(crate) fn icmp6<F: Frame>(ctx: &F, kind: Icmp) -> i32 {
    answered(ctx, kind, answer6)
}

/// Takes an error from the budget, builds it with `answer`, counts the outcome.
#[inline(always)]
fn answered<F: Frame>(ctx: &F, kind: Icmp, answer: impl FnOnce(&F, Icmp) -> Option<i32>) -> i32 {
    if !take_budget() {
        bump(Reason::RejectLimited);
        return F::DROP;
    }
    let Some(verdict) = answer(ctx, kind) else {
        bump(Reason::RejectFailed);
        return F::DROP;
    };
    bump(kind.reason());
    verdict
}

/// Builds the IPv4 error in place: the quote (the IP header and 8 bytes) moves behind the
/// new headers, then the headers are written. (In place, not on the stack: the call chains
/// leave little of the 512 bytes the verifier allows.)
#[inline(always)]
fn answer4<F: Frame>(ctx: &F, kind: Icmp) -> Option<i32> {
    if ctx.load::<u8>(ETH_HLEN)? != 0x45 {
        return None;
    }
    let client: [u8; 4] = ctx.load(ETH_HLEN + 12)?;
    let frontend: [u8; 4] = ctx.load(ETH_HLEN + 16)?;
    let quote = ETH_HLEN + 28;
    let sum = move_quote::<F, QUOTE4>(ctx, 0x0800, FRAME4, quote)?;
    let mut ip = [0_u8; 20];
    ip[0] = 0x45;
    // DSCP CS6 (internetwork control), as the kernel's ICMP errors.
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&TOTAL4.to_be_bytes());
    ip[8] = HOP_LIMIT;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&frontend);
    ip[16..20].copy_from_slice(&client);
    let ip_sum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    ctx.store(ETH_HLEN, &ip)?;
    let (icmp_type, code, rest) = kind.v4();
    let sum = sum + (u32::from(icmp_type) << 8 | u32::from(code)) + sum16(&rest);
    store_icmp_header(ctx, ETH_HLEN + 20, (icmp_type, code), !fold(sum), rest)?;
    Some(ctx.send_back())
}

/// Builds the IPv6 error in place, as [`answer4`].
#[inline(always)]
fn answer6<F: Frame>(ctx: &F, kind: Icmp) -> Option<i32> {
    let client: [u8; 16] = ctx.load(ETH_HLEN + 8)?;
    let frontend: [u8; 16] = ctx.load(ETH_HLEN + 24)?;
    let mut sum = move_quote::<F, QUOTE6>(ctx, 0x86dd, FRAME6, ETH_HLEN + 48)?;
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
    // The pseudo-header (addresses, upper-layer length, next header) and the header.
    let (icmp_type, code, rest) = kind.v6();
    sum += sum16(&frontend)
        + sum16(&client)
        + u32::from(PAYLOAD6)
        + u32::from(IPPROTO_ICMPV6)
        + (u32::from(icmp_type) << 8 | u32::from(code))
        + sum16(&rest);
    store_icmp_header(ctx, ETH_HLEN + 40, (icmp_type, code), !fold(sum), rest)?;
    Some(ctx.send_back())
}

/// Resizes the packet to `frame_len`, moves its first `QUOTE` bytes after the Ethernet
/// header to `quote` (behind the new headers; the two ranges do not overlap) and writes
/// the answer's Ethernet header (the packet's addresses swapped, `ethertype`). Returns the
/// unfolded sum of the quote.
#[inline(always)]
fn move_quote<F: Frame, const QUOTE: usize>(
    ctx: &F,
    ethertype: u16,
    frame_len: usize,
    quote: usize,
) -> Option<u32> {
    let macs: [u8; 12] = ctx.load(0)?;
    // The packet holds the whole quote.
    let _: u32 = ctx.load(ETH_HLEN + QUOTE - 4)?;
    ctx.resize(frame_len)?;
    let mut sum = 0;
    let mut at = 0;
    while at + 8 <= QUOTE {
        let word: [u8; 8] = ctx.load(ETH_HLEN + at)?;
        ctx.store(quote + at, &word)?;
        sum += sum16(&word);
        at += 8;
    }
    if at + 4 <= QUOTE {
        let word: [u8; 4] = ctx.load(ETH_HLEN + at)?;
        ctx.store(quote + at, &word)?;
        sum += sum16(&word);
    }
    let mut ethernet = [0_u8; ETH_HLEN];
    ethernet[..6].copy_from_slice(&macs[6..]);
    ethernet[6..12].copy_from_slice(&macs[..6]);
    ethernet[12..].copy_from_slice(&ethertype.to_be_bytes());
    ctx.store(0, &ethernet)?;
    Some(sum)
}

/// Writes an ICMP (ICMPv6) header at `at`.
#[inline(always)]
fn store_icmp_header<F: Frame>(
    ctx: &F,
    at: usize,
    (icmp_type, code): (u8, u8),
    checksum: u16,
    rest: [u8; 4],
) -> Option<()> {
    let [high, low] = checksum.to_be_bytes();
    let [r0, r1, r2, r3] = rest;
    ctx.store(at, &[icmp_type, code, high, low, r0, r1, r2, r3])
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
