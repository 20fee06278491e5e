//! Free loopback ports for the end-to-end tests, shared by the test
//! binaries that include this file (`#[path]`).

use std::sync::atomic::{AtomicU16, Ordering};

/// The ports handed out: 20000..30000, below both the kernel's ephemeral
/// range and the NodePort range (30000-32767) the kernel tests serve.
const FIRST: u16 = 20_000;
const RANGE: u16 = 10_000;

/// A free TCP port on 127.0.0.1, for a listener whose port must be known
/// before the process under test starts (Gateway listeners name theirs).
pub(crate) fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768-60999 by default), so no
    // socket bound to port 0 meanwhile (the gateway's own telemetry
    // listener, another test's client) can be handed the same port between
    // this probe and the gateway's bind; spread by process so parallel test
    // processes start far apart.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = u16::try_from(std::process::id() % 500).unwrap_or(0) * 24;
    for _ in 0..RANGE {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % RANGE;
        let port = FIRST + (start + offset) % RANGE;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + RANGE);
}
