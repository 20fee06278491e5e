//! `tc` egress (TCX), IPv6: [`crate::nodeport6`]. A program of its own, after the IPv4 one.

use aya_ebpf::{macros::classifier, programs::TcContext};

/// The IPv6 egress path.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro hands the context over by value"
)]
fn fl_tc_egress6(ctx: TcContext) -> i32 {
    crate::nodeport6::egress(&ctx)
}
