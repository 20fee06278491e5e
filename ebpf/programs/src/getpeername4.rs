//! `cgroup/getpeername4`: the peer of a balanced IPv4 socket is the service address, not the backend.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::reverse4`].
#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_getpeername4(ctx: SockAddrContext) -> i32 {
    crate::sock::reverse4(&ctx)
}
