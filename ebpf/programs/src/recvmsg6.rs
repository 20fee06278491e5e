//! `cgroup/recvmsg6`: a datagram from a backend reads as coming from the service address the IPv6 UDP socket sent to.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// See [`crate::sock::reverse6`].
#[cgroup_sock_addr(recvmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock_addr macro hands the context over by value"
)]
fn fl_recvmsg6(ctx: SockAddrContext) -> i32 {
    crate::sock::reverse6(&ctx)
}
