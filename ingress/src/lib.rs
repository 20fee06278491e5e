//! The HTTP/1.1, HTTP/2 and TLS ingress gateway of fairlead (the
//! ingress-nginx job): Ingress v1 routing compiled from the shared model into
//! typed route tables, TLS by SNI from the model's certificates, and upstream
//! pools balanced over the ready endpoints of each backend Service.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod router;

#[cfg(test)]
mod test_support;
