//! `cgroup/sendmsg6`: balances each datagram an unconnected IPv6 UDP socket sends to a service address, and records the reverse translation for `recvmsg6`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::forward6`].
#[cgroup_sock_addr(sendmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_sendmsg6(ctx: SockAddrContext) -> i32 {
    crate::sock::forward6(&ctx)
}
