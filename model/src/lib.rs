//! The shared service model of fairlead: typed Services, endpoints, Ingresses
//! and TLS material, translated once from Kubernetes objects and published as
//! immutable snapshots to every data plane (kernel load balancer, DNS, ingress).
//!
//! Data flows one way: a source ([`source::ManifestDir`], or the apiserver)
//! produces [`Change`]s of [`KubeObject`]s; the one [`ModelWriter`] translates
//! them ([`translate`]), keeps the last good version of every object, and
//! publishes an `Arc<`[`Snapshot`]`>` through a `tokio::sync::watch` channel.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dump;
pub mod error;
pub mod gateway_api;
pub mod gateway_status;
pub mod gateway_types;
pub mod health;
pub mod object;
pub mod select;
pub mod snapshot;
pub mod source;
pub mod translate;
pub mod types;
pub mod units;
mod writer;

pub use error::{Error, FieldError, Origin, Problem, Severity};
pub use gateway_types::*;
pub use health::Ready;
pub use object::{KubeObject, decode};
pub use select::{Locality, Purpose, Selection, Tier, Topology};
pub use snapshot::{ChangeLog, Changes, ServiceChange, Snapshot};
pub use types::*;
pub use units::{parse_duration, parse_gateway_duration};
pub use writer::{Change, ModelWriter};
