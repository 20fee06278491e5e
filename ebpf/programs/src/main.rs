//! fairlead's eBPF programs: one file per attach point, thin entry points over the socket
//! hooks ([`sock`]), the per-packet NodePort/LoadBalancer path on the node's interfaces
//! ([`nodeport`]), shared load-balancing logic ([`lb`]) written once for both address
//! families ([`family`]), and map declarations ([`maps`]).
//!
//! Built for `bpfel-unknown-none` by fairlead-proxy's build.rs (aya-build, nightly,
//! bpf-linker) and embedded in fairlead-proxy. A host build compiles the same code as an
//! empty executable, so `cargo check`/`clippy` lint the programs without nightly.

#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF atomic add of the counters is written as inline assembly (core has no 64-bit
// atomics for bpfel-unknown-none); the object is built with nightly anyway (build-std).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![allow(
    unsafe_code,
    reason = "eBPF programs read and write the kernel's context structures and call helpers; \
              every unsafe block carries a SAFETY comment"
)]
#![allow(
    clippy::inline_always,
    reason = "a program is kept one function: no bpf-to-bpf calls, one stack frame for the \
              verifier to track"
)]

mod connect4;
mod connect6;
mod family;
mod frame;
mod getpeername4;
mod getpeername6;
mod lb;
mod maps;
mod nodeport;
mod nodeport6;
mod post_bind4;
mod recvmsg4;
mod recvmsg6;
mod reject;
mod related;
mod route;
mod sendmsg4;
mod sendmsg6;
mod sock;
mod tc_egress;
mod tc_egress6;
mod tc_ingress;
mod tc_ingress6;
mod xdp;

/// Panics cannot happen in a verified program: code that could panic leads here, and a
/// program that can reach this loop is rejected by the verifier rather than loaded.
#[cfg(target_arch = "bpf")]
#[panic_handler]
#[expect(
    clippy::empty_loop,
    reason = "an unbounded loop makes the verifier reject any program that could panic"
)]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The host build has nothing to run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The license the kernel reads from the object. The eBPF programs are dual-licensed MIT or
/// GPL-2.0 (the rest of fairlead is Apache-2.0): the kernel lets only GPL-compatible
/// programs call helpers such as `bpf_fib_lookup` and `bpf_redirect_neigh`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
