//! XDP on the node's external interfaces (`fairlead proxy --xdp`): the ingress half of
//! [`crate::nodeport`] and [`crate::nodeport6`] at the driver, before the kernel allocates a
//! socket buffer. Packets it sends back out of the same interface (source-NATed flows to
//! other nodes, their replies, rejects) never reach the stack; others go up translated
//! (see [`crate::frame`]). The TC programs stay behind it: egress for the replies of local
//! backends, ingress for what XDP passes on untouched (IPv6 rejects among them).

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

use crate::frame::Frame;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Balances new external flows, translates known ones and their source-NATed replies.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the xdp macro hands the context over by value"
)]
fn fl_xdp(ctx: XdpContext) -> u32 {
    let verdict = match Frame::load::<u16>(&ctx, 12).map(u16::from_be) {
        Some(ETH_P_IP) => ingress4(&ctx),
        Some(ETH_P_IPV6) => crate::nodeport6::ingress(&ctx),
        _ => return XDP_PASS,
    };
    u32::try_from(verdict).unwrap_or(XDP_PASS)
}

/// The IPv4 path in a function of its own: its frame stays out of the IPv6 call chain.
#[inline(never)]
fn ingress4(ctx: &XdpContext) -> i32 {
    crate::nodeport::ingress(ctx)
}
