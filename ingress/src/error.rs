//! The one error type of the ingress gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can stop the gateway, or cut off a body it streams (other
/// request-level failures are HTTP responses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The default certificate file could not be read or used.
    #[error("default certificate {path}: {message}")]
    DefaultCert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate could not be generated or loaded into rustls.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The model source went away before the gateway was cancelled.
    #[error("the model source stopped")]
    ModelClosed,
    /// A body the gateway was streaming was cut off on purpose: a mirror's
    /// copy that could not be complete, or a response still streaming when
    /// its route's request timeout passed.
    #[error("body cut off: {0}")]
    BodyCut(&'static str),
}
