//! `cgroup/post_bind4` and `post_bind6`: a local process may not bind a port a NodePort uses (TCP or UDP):
//! the bind fails with `EPERM`, as kube-proxy's port holders make it fail with
//! `EADDRINUSE`.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use fairlead_abi::{Be16, Be32, Reason, Scope, Service4Key, Service6Key, ServiceValue};

use crate::{
    lb::{bump, copy_of},
    maps::{SERVICES4, SERVICES6},
};

/// Refuses a bind to a NodePort's port and protocol.
#[cgroup_sock(post_bind4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock macro hands the context over by value"
)]
fn fl_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: `sock` is the context the kernel passed; post_bind4 may read src_port (host
    // byte order) and protocol with 4-byte loads.
    let (port, protocol) = unsafe {
        (
            (&raw const (*ctx.sock).src_port).read_volatile(),
            (&raw const (*ctx.sock).protocol).read_volatile(),
        )
    };
    let (Ok(port), Ok(protocol)) = (u16::try_from(port), u8::try_from(protocol)) else {
        return 1;
    };
    let key = Service4Key::new(
        Be32::from_raw(0),
        Be16::from_host(port),
        protocol,
        Scope::External,
        0,
    );
    if copy_of(SERVICES4.get_ptr(key)).is_some_and(|s| s.has_flag(ServiceValue::FLAG_NODEPORT)) {
        bump(Reason::BindRefused);
        return 0;
    }
    1
}

/// `cgroup/post_bind6`: [`fl_post_bind4`] for IPv6 sockets (IPv6 NodePorts, and IPv4
/// NodePorts for dual-stack sockets bound to `::`).
#[cgroup_sock(post_bind6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the cgroup_sock macro hands the context over by value"
)]
fn fl_post_bind6(ctx: SockContext) -> i32 {
    // SAFETY: as in `fl_post_bind4`.
    let (port, protocol) = unsafe {
        (
            (&raw const (*ctx.sock).src_port).read_volatile(),
            (&raw const (*ctx.sock).protocol).read_volatile(),
        )
    };
    let (Ok(port), Ok(protocol)) = (u16::try_from(port), u8::try_from(protocol)) else {
        return 1;
    };
    let port = Be16::from_host(port);
    let v6 = Service6Key::new([0; 16], port, protocol, Scope::External, 0);
    let v4 = Service4Key::new(Be32::from_raw(0), port, protocol, Scope::External, 0);
    let nodeport = |s: ServiceValue| s.has_flag(ServiceValue::FLAG_NODEPORT);
    if copy_of(SERVICES6.get_ptr(v6)).is_some_and(nodeport)
        || copy_of(SERVICES4.get_ptr(v4)).is_some_and(nodeport)
    {
        bump(Reason::BindRefused);
        return 0;
    }
    1
}
