//! Routing of translated packets past the kernel's forwarding path: `bpf_fib_lookup` finds
//! the output interface and the next hop's MAC address in the node's routing and neighbour
//! tables, the packet gets its new Ethernet header and TTL (hop limit) and is sent out of
//! that interface. As the kernel forwards, minus its per-packet route lookup, netfilter
//! hooks and queueing into the stack.
//!
//! A packet the lookup cannot route this way goes to the stack instead (`PASS`, counted
//! as [`Reason::FibFallback`]): a destination on this node (`NOT_FWDED`), forwarding
//! disabled, a packet larger than the output MTU (the stack answers with "fragmentation
//! needed" / "packet too big"), a blackhole or unreachable route, a TTL about to expire
//! (the stack answers with "time exceeded"), and at XDP an output interface other than the
//! input one (see [`crate::frame`]). At TC, a next hop without a neighbour entry is
//! resolved by `bpf_redirect_neigh`.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
};
use fairlead_abi::Reason;

use crate::{frame::Frame, lb::bump};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Routes a translated IPv4 packet (see the module documentation); returns the verdict.
#[inline(never)]
pub(crate) fn forward4<F: Frame>(frame: &F, l4: usize) -> i32 {
    lookup4(frame, l4).unwrap_or_else(|| {
        bump(Reason::FibFallback);
        F::PASS
    })
}

#[inline(always)]
fn lookup4<F: Frame>(frame: &F, l4: usize) -> Option<i32> {
    let ttl_protocol: [u8; 2] = frame.load(ETH_HLEN + 8)?;
    let [ttl, protocol] = ttl_protocol;
    if ttl <= 1 {
        return None;
    }
    // SAFETY: `bpf_fib_lookup` is plain data (integers and unions of integers); all zeroes
    // is its "no input" value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.sport = frame.load(l4)?;
    params.dport = frame.load(l4 + 2)?;
    params.__bindgen_anon_1.tot_len = u16::from_be(frame.load(ETH_HLEN + 2)?);
    params.__bindgen_anon_2.tos = frame.load(ETH_HLEN + 1)?;
    params.__bindgen_anon_3.ipv4_src = frame.load(ETH_HLEN + 12)?;
    params.__bindgen_anon_4.ipv4_dst = frame.load(ETH_HLEN + 16)?;
    params.ifindex = frame.ingress_ifindex();
    let neighbour_known = routable(frame, &mut params)?;
    // The TTL, and the header checksum over its 16-bit word (TTL, protocol).
    let old = u16::from_ne_bytes(ttl_protocol);
    let new = u16::from_ne_bytes([ttl - 1, protocol]);
    frame.l3_csum_replace(ETH_HLEN + 10, u32::from(old), u32::from(new), 2)?;
    frame.store(ETH_HLEN + 8, &(ttl - 1))?;
    send(frame, &params, neighbour_known)
}

/// Routes a translated IPv6 packet (without extension headers); returns the verdict.
#[inline(never)]
pub(crate) fn forward6<F: Frame>(frame: &F, l4: usize) -> i32 {
    lookup6(frame, l4).unwrap_or_else(|| {
        bump(Reason::FibFallback);
        F::PASS
    })
}

#[inline(always)]
fn lookup6<F: Frame>(frame: &F, l4: usize) -> Option<i32> {
    let hop_limit: u8 = frame.load(ETH_HLEN + 7)?;
    if hop_limit <= 1 {
        return None;
    }
    // SAFETY: as in `lookup4`.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = frame.load(ETH_HLEN + 6)?;
    params.sport = frame.load(l4)?;
    params.dport = frame.load(l4 + 2)?;
    let payload = u16::from_be(frame.load(ETH_HLEN + 4)?);
    params.__bindgen_anon_1.tot_len = payload.saturating_add(40);
    // Traffic class and flow label: the first word without the version.
    let first: u32 = frame.load(ETH_HLEN)?;
    params.__bindgen_anon_2.flowinfo = first & u32::from_be(0x0fff_ffff);
    params.__bindgen_anon_3.ipv6_src = frame.load(ETH_HLEN + 8)?;
    params.__bindgen_anon_4.ipv6_dst = frame.load(ETH_HLEN + 24)?;
    params.ifindex = frame.ingress_ifindex();
    let neighbour_known = routable(frame, &mut params)?;
    frame.store(ETH_HLEN + 7, &(hop_limit - 1))?;
    send(frame, &params, neighbour_known)
}

/// Looks the route up; `Some(neighbour known)` when this hook sends the packet itself.
#[inline(always)]
fn routable<F: Frame>(frame: &F, params: &mut FibParams) -> Option<bool> {
    let rc = frame.fib_lookup(params);
    let neighbour_known = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        _ => return None,
    };
    frame
        .sends_to(params.ifindex, neighbour_known)
        .then_some(neighbour_known)
}

/// Sets the Ethernet addresses the lookup found (when it found the neighbour) and sends
/// the packet out.
#[inline(always)]
fn send<F: Frame>(frame: &F, params: &FibParams, neighbour_known: bool) -> Option<i32> {
    if neighbour_known {
        frame.store(0, &params.dmac)?;
        frame.store(6, &params.smac)?;
    }
    bump(Reason::FibRedirect);
    Some(frame.send(params.ifindex, neighbour_known))
}
