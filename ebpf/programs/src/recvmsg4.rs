//! `cgroup/recvmsg4`: a datagram from a backend reads as coming from the service address the IPv4 UDP socket sent to.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::reverse4`].
#[cgroup_sock_addr(recvmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_recvmsg4(ctx: SockAddrContext) -> i32 {
    crate::sock::reverse4(&ctx)
}
