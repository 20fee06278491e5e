//! Socket-address hooks (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`): reading and rewriting the
//! destination the application passed to `connect()` / `sendmsg()`.

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_set_retval, programs::SockAddrContext,
};
use fairlead_abi::{Be16, Be32, Protocol, Reason, Scope, Service4Key};

use crate::lb::{self, Verdict4};

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

/// `connect()` of an IPv4 socket: when the destination is a service, rewrite it to a
/// backend; when the service has no backend, fail with `ECONNREFUSED`; otherwise leave it.
#[inline(always)]
pub(crate) fn connect4(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    let Some(protocol) = protocol_of(load(addr, Field::Protocol)) else {
        lb::bump(Reason::UnsupportedProtocol);
        return PROCEED;
    };
    let key = Service4Key::new(
        Be32::from_raw(load(addr, Field::UserIp4)),
        user_port(load(addr, Field::UserPort)),
        protocol.raw(),
        Scope::External,
        0,
    );
    match lb::balance4(key) {
        Verdict4::Pass => PROCEED,
        Verdict4::Translate(backend) => {
            store(addr, Field::UserIp4, backend.address.raw());
            store(addr, Field::UserPort, u32::from(backend.port.raw()));
            PROCEED
        }
        Verdict4::Reject => {
            // SAFETY: bpf_set_retval only records the errno the hook returns; connect4
            // programs may call it (kernel 5.18+).
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            DENY
        }
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
    UserPort,
    Protocol,
}

/// Points at `field` of the context.
#[inline(always)]
fn field_ptr(addr: *mut bpf_sock_addr, field: Field) -> *mut u32 {
    // SAFETY: `addr` is the context the kernel passed to the program; `&raw mut` only
    // computes the field's address, it reads nothing.
    unsafe {
        match field {
            Field::UserIp4 => &raw mut (*addr).user_ip4,
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
    // SAFETY: connect4 programs may write user_ip4 and user_port with 4-byte stores; the
    // kernel applies them to the address passed to connect().
    unsafe { field_ptr(addr, field).write_volatile(value) }
}
