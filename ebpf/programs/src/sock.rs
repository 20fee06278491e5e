//! Socket-address hooks (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`): reading and rewriting the
//! address the application passed to `connect()` / `sendmsg()`, or gets back from
//! `recvmsg()` / `getpeername()`.
//!
//! - forward ([`forward4`], [`forward6`]): `connect` (TCP, connected UDP, SCTP) and
//!   `sendmsg` (each datagram of an unconnected UDP socket) to a service address go to a
//!   backend; the reverse translation is recorded in the socket's own storage.
//! - reverse ([`reverse4`], [`reverse6`]): `recvmsg` (UDP replies) and `getpeername` show
//!   the service address instead of the backend.
//!
//! IPv6 sockets that use IPv4-mapped addresses (`::ffff:10.96.0.1`, dual-stack sockets of
//! Java and friends) are balanced over the IPv4 maps.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    cty::c_void,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, generated::bpf_set_retval},
    programs::SockAddrContext,
};
use fairlead_abi::{Be16, Be32, Protocol, Reason};

use crate::{
    family::{Family as _, V4, V6},
    lb::{self, Client, Verdict},
};

/// Return value of a `sock_addr` program: let the call go on (with the possibly rewritten
/// address).
const PROCEED: i32 = 1;
/// Return value of a `sock_addr` program: fail the call with the errno set by
/// `bpf_set_retval` (`EPERM` if none was set).
const DENY: i32 = 0;
/// `ECONNREFUSED`: what a refused connect returns, as after kube-proxy's REJECT rule.
const ECONNREFUSED: i32 = 111;
/// `IPPROTO_MPTCP`: a multipath TCP socket, balanced like TCP.
const IPPROTO_MPTCP: u32 = 262;

/// `connect4` / `sendmsg4`: when the destination is a service, rewrite it to a backend;
/// when the service cannot serve, fail with `ECONNREFUSED`; otherwise leave it.
#[inline(always)]
pub(crate) fn forward4(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some(protocol) = protocol_of(load(addr, Field::Protocol)) else {
        lb::bump(Reason::UnsupportedProtocol);
        return PROCEED;
    };
    let service_address = Be32::from_raw(load(addr, Field::UserIp4));
    let service_port = user_port(load(addr, Field::UserPort));
    let cookie = socket_cookie(addr);
    let key = lb::frontend_key4(service_address, service_port, protocol.raw());
    match lb::balance::<V4>(key, client(addr, protocol, cookie)) {
        Verdict::Pass => PROCEED,
        Verdict::Reject => refuse(),
        Verdict::Translate {
            backend,
            rev_nat_id,
        } => {
            let service = V4::sock_val(service_address, service_port, rev_nat_id);
            if lb::record_rev_nat::<V4>(ctx, &backend, service).is_err() {
                lb::bump(Reason::RevNatUpdateFailed);
                return refuse();
            }
            store(addr, Field::UserIp4, backend.address.raw());
            store(addr, Field::UserPort, u32::from(backend.port.raw()));
            PROCEED
        }
    }
}

/// `recvmsg4` / `getpeername4`: a backend address this socket was sent to reads as the
/// service address. These hooks cannot fail the call.
#[inline(always)]
pub(crate) fn reverse4(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let address = Be32::from_raw(load(addr, Field::UserIp4));
    let port = user_port(load(addr, Field::UserPort));
    if let Some((service_address, service_port)) = lb::reverse::<V4>(ctx, address, port) {
        store(addr, Field::UserIp4, service_address.raw());
        store(addr, Field::UserPort, u32::from(service_port.raw()));
    }
    PROCEED
}

/// `connect6` / `sendmsg6`: [`forward4`] for IPv6, and for IPv4-mapped addresses over the
/// IPv4 maps.
#[inline(always)]
pub(crate) fn forward6(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some(protocol) = protocol_of(load(addr, Field::Protocol)) else {
        lb::bump(Reason::UnsupportedProtocol);
        return PROCEED;
    };
    let service_address = load_ip6(addr);
    let service_port = user_port(load(addr, Field::UserPort));
    let cookie = socket_cookie(addr);
    let client = client(addr, protocol, cookie);
    if let Some(v4) = v4_mapped(&service_address) {
        let key = lb::frontend_key4(v4, service_port, protocol.raw());
        return match lb::balance::<V4>(key, client) {
            Verdict::Pass => PROCEED,
            Verdict::Reject => refuse(),
            Verdict::Translate {
                backend,
                rev_nat_id,
            } => {
                let service = V4::sock_val(v4, service_port, rev_nat_id);
                if lb::record_rev_nat::<V4>(ctx, &backend, service).is_err() {
                    lb::bump(Reason::RevNatUpdateFailed);
                    return refuse();
                }
                store(addr, Field::UserIp6(3), backend.address.raw());
                store(addr, Field::UserPort, u32::from(backend.port.raw()));
                PROCEED
            }
        };
    }
    let key = lb::frontend_key6(service_address, service_port, protocol.raw());
    match lb::balance::<V6>(key, client) {
        Verdict::Pass => PROCEED,
        Verdict::Reject => refuse(),
        Verdict::Translate {
            backend,
            rev_nat_id,
        } => {
            let service = V6::sock_val(service_address, service_port, rev_nat_id);
            if lb::record_rev_nat::<V6>(ctx, &backend, service).is_err() {
                lb::bump(Reason::RevNatUpdateFailed);
                return refuse();
            }
            store_ip6(addr, &backend.address);
            store(addr, Field::UserPort, u32::from(backend.port.raw()));
            PROCEED
        }
    }
}

/// `recvmsg6` / `getpeername6`: [`reverse4`] for IPv6 (and IPv4-mapped addresses).
#[inline(always)]
pub(crate) fn reverse6(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let address = load_ip6(addr);
    let port = user_port(load(addr, Field::UserPort));
    if let Some(v4) = v4_mapped(&address) {
        if let Some((service_address, service_port)) = lb::reverse::<V4>(ctx, v4, port) {
            store(addr, Field::UserIp6(3), service_address.raw());
            store(addr, Field::UserPort, u32::from(service_port.raw()));
        }
        return PROCEED;
    }
    if let Some((service_address, service_port)) = lb::reverse::<V6>(ctx, address, port) {
        store_ip6(addr, &service_address);
        store(addr, Field::UserPort, u32::from(service_port.raw()));
    }
    PROCEED
}

/// Fails the call with `ECONNREFUSED`.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval only records the errno the hook returns; sock_addr programs
    // may call it (kernel 5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// The client of a socket, for affinity and backend choice.
#[inline(always)]
fn client(addr: *mut bpf_sock_addr, protocol: Protocol, cookie: u64) -> Client {
    // SAFETY: bpf_get_netns_cookie reads the netns of the context's socket; sock_addr
    // programs may call it (5.7+).
    let netns = unsafe { bpf_get_netns_cookie(addr.cast::<c_void>()) };
    let selector = if protocol == Protocol::Udp {
        lb::hash_cookie(cookie)
    } else {
        lb::random()
    };
    Client { netns, selector }
}

/// The socket's cookie (created on first use; unique for the life of the system).
#[inline(always)]
fn socket_cookie(addr: *mut bpf_sock_addr) -> u64 {
    // SAFETY: bpf_get_socket_cookie takes the sock_addr context the kernel passed.
    unsafe { bpf_get_socket_cookie(addr.cast::<c_void>()) }
}

/// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
fn v4_mapped(address: &[u8; 16]) -> Option<Be32> {
    let prefix = u128::from_be_bytes(*address) >> 32;
    if prefix == 0xffff {
        Some(Be32::from_raw(u32::from_ne_bytes([
            address[12],
            address[13],
            address[14],
            address[15],
        ])))
    } else {
        None
    }
}

/// The balanced protocol of a socket, from `bpf_sock_addr::protocol` (the socket's
/// `sk_protocol`, resolved by the kernel even when the application passed 0).
#[inline(always)]
fn protocol_of(raw: u32) -> Option<Protocol> {
    if raw == IPPROTO_MPTCP {
        return Some(Protocol::Tcp);
    }
    Protocol::from_raw(u8::try_from(raw).ok()?)
}

/// `user_port` holds `sin_port` (network byte order) in its low 16 bits.
#[inline(always)]
fn user_port(raw: u32) -> Be16 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel zero-extends the 16-bit sin_port into user_port"
    )]
    Be16::from_raw(raw as u16)
}

/// The `bpf_sock_addr` fields the hooks use.
#[derive(Clone, Copy)]
enum Field {
    UserIp4,
    UserIp6(usize),
    UserPort,
    Protocol,
}

/// Points at `field` of the context.
#[inline(always)]
fn field_ptr(addr: *mut bpf_sock_addr, field: Field) -> *mut u32 {
    // SAFETY: `addr` is the context the kernel passed to the program; `&raw mut` only
    // computes the field's address, it reads nothing. `UserIp6` indexes are 0..4.
    unsafe {
        match field {
            Field::UserIp4 => &raw mut (*addr).user_ip4,
            Field::UserIp6(i) => (&raw mut (*addr).user_ip6).cast::<u32>().add(i & 3),
            Field::UserPort => &raw mut (*addr).user_port,
            Field::Protocol => &raw mut (*addr).protocol,
        }
    }
}

/// Reads a context field with one 32-bit load: the verifier accepts only full-width loads of
/// some fields (`protocol`), so keep the compiler from narrowing them.
#[inline(always)]
fn load(addr: *mut bpf_sock_addr, field: Field) -> u32 {
    // SAFETY: the verifier allows 4-byte reads of these fields of a sock_addr context,
    // which is valid for the whole program run.
    unsafe { field_ptr(addr, field).read_volatile() }
}

/// Writes a context field with one 32-bit store (the only width the kernel accepts).
#[inline(always)]
fn store(addr: *mut bpf_sock_addr, field: Field, value: u32) {
    // SAFETY: the hooks that call this may write user_ip4, user_ip6 and user_port with
    // 4-byte stores; the kernel applies them to the socket address of the call.
    unsafe { field_ptr(addr, field).write_volatile(value) }
}

/// `user_ip6` as octets (each word holds four octets in network order).
#[inline(always)]
fn load_ip6(addr: *mut bpf_sock_addr) -> [u8; 16] {
    let words = [
        load(addr, Field::UserIp6(0)),
        load(addr, Field::UserIp6(1)),
        load(addr, Field::UserIp6(2)),
        load(addr, Field::UserIp6(3)),
    ];
    let mut out = [0; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Writes octets into `user_ip6`.
#[inline(always)]
fn store_ip6(addr: *mut bpf_sock_addr, address: &[u8; 16]) {
    store(addr, Field::UserIp6(0), word(address, 0));
    store(addr, Field::UserIp6(1), word(address, 4));
    store(addr, Field::UserIp6(2), word(address, 8));
    store(addr, Field::UserIp6(3), word(address, 12));
}

#[inline(always)]
fn word(address: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([
        address[at],
        address[at + 1],
        address[at + 2],
        address[at + 3],
    ])
}
