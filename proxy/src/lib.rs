//! User space of fairlead's kernel load balancer (the kube-proxy job, at the socket): the
//! embedded eBPF object, loading and attaching it, the reconciler from the shared model to
//! the maps, and what `fairlead status` reads back.
//!
//! - [`Datapath`] loads the object built from `ebpf/programs` ([`ebpf_object`]), creates or
//!   adopts its maps pinned on bpffs, and attaches the socket programs to a cgroup.
//! - [`desired`] turns a model Service into the frontends it should have (kube-proxy's
//!   semantics); [`Reconciler`] diffs them against what the maps hold and writes the
//!   difference in the order the programs rely on ([`tables::LbMaps`]).
//! - [`nodeaddr`] reads the node's addresses (rtnetlink); [`Datapath::attach_interface`]
//!   puts the NodePort/LoadBalancer programs on the node's interfaces, their Maglev tables
//!   come from [`maglev`], and idle flows are collected ([`Datapath::collect_conntrack`]).
//! - [`run`] wires it to the model's snapshots, metrics and readiness ([`Args`],
//!   [`Context`]); [`status`] renders what pinned maps hold.
//!
//! - [`health`] serves the `healthCheckNodePort`s of Services with `externalTrafficPolicy:
//!   Local`, answering 200/503 from the count of this node's ready endpoints.
//! - [`links`] keeps the programs attached through links pinned on bpffs, so the data path
//!   keeps serving while the agent restarts, and a new agent takes the hooks over in place.
//!
//! The map layout is the contract in [`fairlead_abi`], re-exported as [`abi`].

#![warn(missing_docs)]

mod conntrack;
mod datapath;
pub mod desired;
mod error;
mod external;
pub mod health;
mod kernel;
pub mod links;
pub mod maglev;
mod metrics;
pub mod nodeaddr;
mod object;
pub mod reconcile;
mod run;
mod stale;
pub mod status;
#[allow(dead_code, reason = "the batched map writes are not wired yet")]
#[allow(
    unsafe_code,
    reason = "bpf(2) commands aya 0.14 does not expose; every unsafe block says why it is sound"
)]
mod sys;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;

pub use conntrack::{GcReport, Timeouts, next_interval};
pub use datapath::{Counters, Datapath, LoadOptions, cgroup2_root, link_name};
pub use error::Error;
pub use external::XdpMode;
pub use fairlead_abi as abi;
pub use kernel::PinnedMaps;
pub use links::links_dir;
pub use links::{Hook, Installed, PinnedLinks};
pub use object::{ebpf_object, ebpf_object_is_placeholder};
pub use reconcile::{Reconciler, SyncError, SyncReport};
pub use run::{Args, Context, DEFAULT_BPFFS, Interfaces, Proxy};
pub use sys::release_freed_memory;
