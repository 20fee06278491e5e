//! `tc` ingress (TCX) on the node's external interfaces: NodePort, LoadBalancer and external
//! IP traffic balanced per packet; see [`crate::nodeport`].

use aya_ebpf::{macros::classifier, programs::TcContext};

/// Balances new external flows, translates known ones and their source-NATed replies.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the classifier macro hands the context over by value"
)]
fn fl_tc_ingress(ctx: TcContext) -> i32 {
    crate::nodeport::ingress(&ctx)
}
