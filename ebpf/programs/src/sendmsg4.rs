//! `cgroup/sendmsg4`: balances each datagram an unconnected IPv4 UDP socket sends to a service address, and records the reverse translation for `recvmsg4`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::forward4`].
#[cgroup_sock_addr(sendmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_sendmsg4(ctx: SockAddrContext) -> i32 {
    crate::sock::forward4(&ctx)
}
