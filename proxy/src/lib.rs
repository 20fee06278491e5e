//! User space of fairlead's kernel load balancer: the embedded eBPF object, loading its maps
//! and programs into the kernel, attaching them, and typed access to the maps.
//!
//! The object is built from `ebpf/programs` by this crate's build.rs and embedded
//! ([`ebpf_object`]). [`Datapath::load`] creates (or adopts pinned) maps;
//! [`Datapath::load_all_programs`] puts every program through the verifier;
//! [`Datapath::attach_connect4`] balances `ClusterIP` connects of one cgroup. The map layout
//! is the contract in [`fairlead_abi`], re-exported as [`abi`].

#![forbid(unsafe_code)]

mod datapath;
mod error;
mod object;
#[cfg(feature = "testing")]
pub mod testing;

pub use datapath::{Counters, Datapath, LoadOptions};
pub use error::Error;
pub use fairlead_abi as abi;
pub use object::{ebpf_object, ebpf_object_is_placeholder};
