//! Sources of Kubernetes objects. Each hands [`crate::Change`]s to the
//! [`crate::ModelWriter`]; none translates anything itself.

pub mod files;
pub mod kube;

pub use self::kube::KubeSource;
pub use files::ManifestDir;
