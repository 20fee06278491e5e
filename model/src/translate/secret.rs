//! `kubernetes.io/tls` Secret → [`TlsCertificate`]: PEM parsed, the key checked
//! against the leaf certificate, names and validity read.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1 as core;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::Errors;
use crate::error::FieldError;
use crate::types::TlsCertificate;

/// The Secret type that carries TLS material.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Whether a Secret is of type `kubernetes.io/tls`.
#[must_use]
pub fn is_tls_secret(object: &core::Secret) -> bool {
    object.type_.as_deref() == Some(TLS_SECRET_TYPE)
}

/// One key of the Secret: `data` (bytes), or `stringData` as written in a
/// manifest (the apiserver merges it into `data`; a manifest source must too).
fn secret_value<'a>(object: &'a core::Secret, key: &str) -> Option<&'a [u8]> {
    object
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(String::as_bytes)
        .or_else(|| {
            object
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.as_slice())
        })
}

/// Translates a `kubernetes.io/tls` Secret.
#[allow(
    clippy::too_many_lines,
    reason = "reads the object's fields top to bottom, in API order; splitting it would scatter the field paths"
)]
pub fn tls_secret(object: &core::Secret) -> Result<TlsCertificate, Vec<FieldError>> {
    let mut errors = Errors::default();
    let key = super::object_key(&object.metadata);
    if !is_tls_secret(object) {
        errors.push("type", format!("must be {TLS_SECRET_TYPE}"));
        return Err(errors.0);
    }
    let chain: Vec<CertificateDer<'static>> = match secret_value(object, "tls.crt") {
        None => {
            errors.push("data[tls.crt]", "missing");
            Vec::new()
        }
        Some(pem) => match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if chain.is_empty() => {
                errors.push("data[tls.crt]", "holds no PEM CERTIFICATE block");
                chain
            }
            Ok(chain) => chain,
            Err(e) => {
                errors.push("data[tls.crt]", format!("not valid PEM: {e}"));
                Vec::new()
            }
        },
    };
    let private_key = match secret_value(object, "tls.key") {
        None => {
            errors.push("data[tls.key]", "missing");
            None
        }
        Some(pem) => match PrivateKeyDer::from_pem_slice(pem) {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push("data[tls.key]", format!("no usable PEM private key: {e}"));
                None
            }
        },
    };
    let Some(leaf) = chain.first() else {
        return Err(errors.0);
    };
    let parsed = match X509Certificate::from_der(leaf) {
        Ok((_, cert)) => cert,
        Err(e) => {
            errors.push(
                "data[tls.crt]",
                format!("the first certificate does not parse: {e}"),
            );
            return Err(errors.0);
        }
    };
    let mut dns_names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            errors.push(
                "data[tls.crt]",
                format!("bad subjectAltName extension: {e}"),
            );
            Vec::new()
        }
    };
    if dns_names.is_empty() {
        dns_names = parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    let time = |t: i64| {
        u64::try_from(t).map_or(SystemTime::UNIX_EPOCH, |secs| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        })
    };
    let not_before = time(parsed.validity().not_before.timestamp());
    let not_after = time(parsed.validity().not_after.timestamp());

    let mut key_der = Vec::new();
    if let Some(private_key) = private_key {
        key_der = private_key.secret_der().to_vec();
        match rustls::crypto::ring::sign::any_supported_type(&private_key) {
            Err(e) => errors.push("data[tls.key]", format!("unsupported private key: {e}")),
            Ok(signer) => match CertifiedKey::new(chain.clone(), signer).keys_match() {
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                    errors.push(
                        "data[tls.key]",
                        "does not match the certificate in data[tls.crt] (public keys differ)",
                    );
                }
                Err(e) => errors.push(
                    "data[tls.crt]",
                    format!("cannot check against the key: {e}"),
                ),
            },
        }
    }
    errors.finish(TlsCertificate {
        key,
        chain: chain.into_iter().map(|c| c.to_vec()).collect(),
        private_key: key_der,
        dns_names,
        not_before,
        not_after,
    })
}
