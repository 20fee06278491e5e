//! `cgroup/getpeername6`: the peer of a balanced IPv6 socket is the service address, not the backend.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::reverse6`].
#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_getpeername6(ctx: SockAddrContext) -> i32 {
    crate::sock::reverse6(&ctx)
}
