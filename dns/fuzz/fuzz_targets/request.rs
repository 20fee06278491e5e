//! Fuzzes the request path: raw bytes as they arrive on a socket, through
//! the UDP fast path (pre-serialised answers, cached between inputs) or
//! hickory's parser and fairlead's handler (index lookups over the test
//! fixtures, pod records, forwarding with no upstream), to the encoded
//! response. It must never panic; every response must be one well-formed
//! message carrying the request's id, within the UDP size limit; and when
//! the fast path answers, the general path (over TCP) must give the same
//! answer.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::ask_both(data, common::MAX_UDP);
});
