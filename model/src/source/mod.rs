//! Sources of Kubernetes objects. Each hands [`crate::Change`]s to the
//! [`crate::ModelWriter`]; none translates anything itself.

pub mod files;

pub use files::ManifestDir;
