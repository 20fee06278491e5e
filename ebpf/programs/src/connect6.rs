//! `cgroup/connect6`: balances `connect()` of IPv6 sockets (TCP, connected UDP, SCTP; IPv4-mapped addresses over the IPv4 maps) in the cgroup the program is attached to.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::forward6`].
#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_connect6(ctx: SockAddrContext) -> i32 {
    crate::sock::forward6(&ctx)
}
