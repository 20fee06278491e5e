//! The one error type of the DNS component.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong starting or running the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--zone` is not a valid domain name.
    #[error("invalid zone {zone:?}: {reason}")]
    Zone {
        /// The value given.
        zone: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A listening socket could not be bound.
    #[error("binding {protocol} {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The system error.
        source: std::io::Error,
    },
    /// `--upstream` is not an address.
    #[error("invalid upstream {value:?}: expected IP or IP:PORT")]
    Upstream {
        /// The value given.
        value: String,
    },
    /// The resolver configuration could not be read.
    #[error("reading {}: {source}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// The server stopped on its own (a socket failed).
    #[error("DNS server failed: {0}")]
    Server(String),
}
