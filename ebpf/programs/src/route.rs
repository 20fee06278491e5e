//! Routing of translated packets past the kernel's forwarding path: `bpf_fib_lookup` finds
//! the output interface and the next hop's MAC address in the node's routing and neighbour
//! tables, the packet gets its new Ethernet header and TTL (hop limit) and is redirected to
//! that interface's egress. As the kernel forwards, minus its per-packet route lookup,
//! netfilter hooks and queueing into the stack.
//!
//! A packet the lookup cannot route this way goes to the stack instead (`PASS`, counted
//! as [`Reason::FibFallback`]): a destination on this node (`NOT_FWDED`), forwarding
//! disabled, a packet larger than the output MTU (the stack answers with "fragmentation
//! needed" / "packet too big"), a blackhole or unreachable route, a TTL about to expire
//! (the stack answers with "time exceeded"). A next hop without a neighbour entry is
//! resolved by `bpf_redirect_neigh`.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    cty::c_void,
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use fairlead_abi::Reason;

use crate::{lb::bump, nodeport::PASS};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `sizeof(struct bpf_fib_lookup)`, as the helper wants it.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the struct is 64 bytes"
)]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

/// Routes a translated IPv4 packet (see the module documentation); returns the TC verdict.
#[inline(never)]
pub(crate) fn forward4(ctx: &TcContext, l4: usize) -> i32 {
    lookup4(ctx, l4).unwrap_or_else(|| {
        bump(Reason::FibFallback);
        PASS
    })
}

#[inline(always)]
fn lookup4(ctx: &TcContext, l4: usize) -> Option<i32> {
    let ttl_protocol: [u8; 2] = ctx.load(ETH_HLEN + 8).ok()?;
    let [ttl, protocol] = ttl_protocol;
    if ttl <= 1 {
        return None;
    }
    // SAFETY: `bpf_fib_lookup` is plain data (integers and unions of integers); all zeroes
    // is its "no input" value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.sport = ctx.load(l4).ok()?;
    params.dport = ctx.load(l4 + 2).ok()?;
    params.__bindgen_anon_1.tot_len = u16::from_be(ctx.load(ETH_HLEN + 2).ok()?);
    params.__bindgen_anon_2.tos = ctx.load(ETH_HLEN + 1).ok()?;
    params.__bindgen_anon_3.ipv4_src = ctx.load(ETH_HLEN + 12).ok()?;
    params.__bindgen_anon_4.ipv4_dst = ctx.load(ETH_HLEN + 16).ok()?;
    params.ifindex = ingress_ifindex(ctx);
    let rc = lookup(ctx, &mut params);
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return None;
    }
    // The TTL, and the header checksum over its 16-bit word (TTL, protocol).
    let old = u16::from_ne_bytes(ttl_protocol);
    let new = u16::from_ne_bytes([ttl - 1, protocol]);
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 2)
        .ok()?;
    ctx.store(ETH_HLEN + 8, &(ttl - 1), 0).ok()?;
    Some(redirect(ctx, &params, rc))
}

/// Routes a translated IPv6 packet (without extension headers); returns the TC verdict.
#[inline(never)]
pub(crate) fn forward6(ctx: &TcContext, l4: usize) -> i32 {
    lookup6(ctx, l4).unwrap_or_else(|| {
        bump(Reason::FibFallback);
        PASS
    })
}

#[inline(always)]
fn lookup6(ctx: &TcContext, l4: usize) -> Option<i32> {
    let hop_limit: u8 = ctx.load(ETH_HLEN + 7).ok()?;
    if hop_limit <= 1 {
        return None;
    }
    // SAFETY: as in `lookup4`.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = ctx.load(ETH_HLEN + 6).ok()?;
    params.sport = ctx.load(l4).ok()?;
    params.dport = ctx.load(l4 + 2).ok()?;
    let payload = u16::from_be(ctx.load(ETH_HLEN + 4).ok()?);
    params.__bindgen_anon_1.tot_len = payload.saturating_add(40);
    // Traffic class and flow label: the first word without the version.
    let first: u32 = ctx.load(ETH_HLEN).ok()?;
    params.__bindgen_anon_2.flowinfo = first & u32::from_be(0x0fff_ffff);
    params.__bindgen_anon_3.ipv6_src = ctx.load(ETH_HLEN + 8).ok()?;
    params.__bindgen_anon_4.ipv6_dst = ctx.load(ETH_HLEN + 24).ok()?;
    params.ifindex = ingress_ifindex(ctx);
    let rc = lookup(ctx, &mut params);
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return None;
    }
    ctx.store(ETH_HLEN + 7, &(hop_limit - 1), 0).ok()?;
    Some(redirect(ctx, &params, rc))
}

/// The interface the packet arrived on.
#[inline(always)]
pub(crate) fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the program's context pointer, valid for the whole run; reading
    // `ifindex` is a context access the verifier rewrites to the device's index.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn lookup(ctx: &TcContext, params: &mut FibParams) -> u32 {
    // SAFETY: the context pointer of this run and a stack struct of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast::<c_void>(),
            ptr::from_mut(params),
            FIB_PARAMS_LEN,
            0,
        )
    };
    u32::try_from(rc).unwrap_or(u32::MAX)
}

/// Sets the Ethernet addresses the lookup found and redirects to its interface; without a
/// neighbour entry, lets `bpf_redirect_neigh` resolve the next hop (from the packet's
/// destination, as the stack would).
#[inline(always)]
fn redirect(ctx: &TcContext, params: &FibParams, rc: u32) -> i32 {
    let verdict = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
            bump(Reason::FibFallback);
            return PASS;
        }
        // SAFETY: plain helper call with an interface index and no flags.
        unsafe { bpf_redirect(params.ifindex, 0) }
    } else {
        // SAFETY: a null parameter block (and its length 0) asks the kernel to find the
        // next hop itself.
        unsafe { bpf_redirect_neigh(params.ifindex, ptr::null_mut(), 0, 0) }
    };
    bump(Reason::FibRedirect);
    i32::try_from(verdict).unwrap_or(PASS)
}
