//! Errors and problems: what went wrong, on which object, in which field.

use std::fmt;
use std::path::PathBuf;

use crate::types::ObjectId;

/// Where an object came from in a manifest directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The file, relative to the manifest directory.
    pub file: PathBuf,
    /// The document in the file, counting from 1 (items of a `kind: List`
    /// count as their own documents: `2.3` is item 3 of document 2).
    pub document: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// A problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[1].port`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object (or file) was not taken; the last good version stays in force.
    Error,
    /// The object was taken, but something about it deserves attention
    /// (an expired certificate, a slice without its Service, …).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem reported to the operator: a file that does not parse, an object
/// that does not translate, a reference that does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// File and document, when the object came from a manifest directory.
    pub origin: Option<Origin>,
    /// The object, when known.
    pub object: Option<ObjectId>,
    /// The field and what is wrong.
    pub error: FieldError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        write!(f, "{}", self.error)
    }
}

/// The error type of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest directory could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("watching {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The watcher's error.
        #[source]
        source: notify::Error,
    },
    /// The apiserver client could not be configured (kubeconfig, in-cluster
    /// service account, TLS).
    #[error("configuring the apiserver client{}: {message}", .kubeconfig.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    KubeConfig {
        /// The kubeconfig file, when one was given.
        kubeconfig: Option<PathBuf>,
        /// What went wrong (kube-rs's errors already name their causes).
        message: String,
    },
    /// A setting of the apiserver source is invalid.
    #[error("{setting}: {message}")]
    InvalidSetting {
        /// The setting (a flag name).
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A request to the apiserver failed.
    #[error("apiserver: {0}")]
    Kube(#[from] ::kube::Error),
}
