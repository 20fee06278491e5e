//! `cgroup/connect4`: balances `connect()` of IPv4 sockets (TCP, connected UDP, SCTP) in
//! the cgroup the program is attached to.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// Rewrites a connect to a service address to one of its backends; see [`crate::sock::forward4`].
#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_connect4(ctx: SockAddrContext) -> i32 {
    crate::sock::forward4(&ctx)
}
