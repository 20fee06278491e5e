//! `tc` egress (TCX) on the node's external interfaces: replies of local backends to
//! external clients leave with the frontend's address; see [`crate::nodeport`].

use aya_ebpf::{macros::classifier, programs::TcContext};

/// Restores the frontend as the source of replies from local backends.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro hands the context over by value"
)]
fn fl_tc_egress(ctx: TcContext) -> i32 {
    crate::nodeport::egress(&ctx)
}
