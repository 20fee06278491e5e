//! TLS termination: certificates chosen by SNI from the Secrets the served
//! Ingresses reference (same namespace only, as the model guarantees), with
//! wildcard names and a default certificate for every other name.
//!
//! For each `spec.tls` entry, each listed host gets the entry's certificate
//! when the certificate covers that host (exactly, or by a one-label
//! wildcard); an entry without hosts serves the certificate's own names. A
//! host whose certificate is missing, invalid or does not cover it gets the
//! default certificate, as with ingress-nginx. The first Ingress (by
//! namespace/name) to claim a host wins.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fairlead_model::{Host, ObjectKey, Snapshot, TlsCertificate};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::error::Error;

/// The rustls crypto provider fairlead uses (ring).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates by server name, swapped as a whole on every change.
#[derive(Debug, Clone)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

/// Converted certificates kept between rebuilds, so an unchanged Secret is
/// not parsed again.
#[derive(Debug, Default)]
pub struct CertCache {
    entries: HashMap<ObjectKey, (Arc<TlsCertificate>, Arc<CertifiedKey>)>,
}

impl CertCache {
    fn get(&mut self, cert: &Arc<TlsCertificate>) -> Result<Arc<CertifiedKey>, String> {
        if let Some((known, key)) = self.entries.get(&cert.key)
            && Arc::ptr_eq(known, cert)
        {
            return Ok(key.clone());
        }
        let key = certified_key(cert.chain.clone(), cert.private_key.clone())?;
        self.entries
            .insert(cert.key.clone(), (cert.clone(), key.clone()));
        Ok(key)
    }
}

fn certified_key(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Result<Arc<CertifiedKey>, String> {
    let key = PrivateKeyDer::try_from(key).map_err(|e| format!("private key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Whether a certificate name (possibly `*.suffix`) covers a host.
fn covers(cert_names: &[String], host: &Host) -> bool {
    cert_names
        .iter()
        .any(|name| match (name.strip_prefix("*."), host) {
            (None, Host::Exact(h)) => name == h,
            (Some(suffix), Host::Exact(h)) => h.split_once('.').is_some_and(|(_, s)| s == suffix),
            (Some(suffix), Host::Wildcard(s)) => suffix == s,
            (None, Host::Wildcard(_)) => false,
        })
}

fn parse_host(name: &str) -> Host {
    match name.strip_prefix("*.") {
        Some(suffix) => Host::Wildcard(suffix.to_owned()),
        None => Host::Exact(name.to_owned()),
    }
}

impl CertStore {
    /// Builds the store for the Ingresses of `class`.
    pub fn build(
        snapshot: &Snapshot,
        class: &str,
        default: Arc<CertifiedKey>,
        cache: &mut CertCache,
    ) -> Self {
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        };
        for ingress in snapshot.ingresses_for_class(class) {
            for tls in &ingress.tls {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                let secret_key = ObjectKey::new(ingress.key.namespace.clone(), secret.clone());
                let Some(cert) = snapshot.certificates.get(&secret_key) else {
                    warn!(ingress = %ingress.key, secret = %secret_key,
                        "TLS Secret missing or invalid; its hosts get the default certificate");
                    continue;
                };
                let key = match cache.get(cert) {
                    Ok(key) => key,
                    Err(error) => {
                        warn!(ingress = %ingress.key, secret = %secret_key, %error,
                            "TLS Secret unusable; its hosts get the default certificate");
                        continue;
                    }
                };
                let hosts: Vec<Host> = if tls.hosts.is_empty() {
                    cert.dns_names.iter().map(|n| parse_host(n)).collect()
                } else {
                    tls.hosts.clone()
                };
                for host in hosts {
                    if !covers(&cert.dns_names, &host) {
                        warn!(ingress = %ingress.key, secret = %secret_key, %host,
                            names = ?cert.dns_names,
                            "certificate does not cover the host; it gets the default certificate");
                        continue;
                    }
                    let map = match &host {
                        Host::Exact(h) => store.exact.entry(h.clone()),
                        Host::Wildcard(s) => store.wildcard.entry(s.clone()),
                    };
                    map.or_insert_with(|| key.clone());
                }
            }
        }
        cache
            .entries
            .retain(|k, _| snapshot.certificates.contains_key(k));
        store
    }

    /// A store with only the default certificate.
    #[must_use]
    pub fn with_default(default: Arc<CertifiedKey>) -> Self {
        CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// The certificate for a server name (`None`: no SNI).
    #[must_use]
    pub fn resolve(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.exact
            .get(name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard.get(suffix))
            })
            .unwrap_or(&self.default)
    }

    /// How many names have a certificate of their own.
    #[must_use]
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether no name has a certificate of its own.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rustls certificate resolver: reads the current [`CertStore`] with no
/// lock, so a certificate change applies to the next handshake.
#[derive(Debug)]
pub struct Resolver(pub Arc<ArcSwap<CertStore>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().resolve(client_hello.server_name()).clone())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1,
/// certificates from `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The default certificate: from a PEM file holding the chain and the key
/// (`--default-cert`), or a generated self-signed one.
pub fn default_certificate(path: Option<&Path>) -> Result<Arc<CertifiedKey>, Error> {
    let Some(path) = path else {
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Tls(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec!["fairlead.invalid".to_owned()])
            .map_err(|e| Error::Tls(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fairlead default certificate");
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        return certified_key(vec![cert.der().to_vec()], key.serialize_der()).map_err(Error::Tls);
    };
    let err = |message: String| Error::DefaultCert {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(err("holds no PEM CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(format!("no usable PEM private key: {e}")))?;
    let key = certified_key(chain, key.secret_der().to_vec()).map_err(err)?;
    key.keys_match()
        .map_err(|e| err(format!("key does not match the certificate: {e}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ingress, ingress_class, model, service};
    use serde_json::{Value, json};

    /// A kubernetes.io/tls Secret for `names`, self-signed.
    fn secret(namespace: &str, name: &str, names: &[&str]) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
        })
    }

    /// The DNS names of the leaf certificate.
    fn leaf_names(key: &CertifiedKey) -> Vec<String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(key.end_entity_cert().unwrap()).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn sni_picks_exact_wildcard_and_default() {
        let web = json!({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
        let mut a = web.clone();
        a["tls"] = json!([
            {"hosts": ["shop.example.com"], "secretName": "shop"},
            {"hosts": ["*.apps.example.com"], "secretName": "apps"},
            // Does not cover the host: the default certificate serves it.
            {"hosts": ["other.example.com"], "secretName": "shop"},
            // No hosts: the certificate's own names.
            {"secretName": "own"},
            // Missing Secret.
            {"hosts": ["missing.example.com"], "secretName": "missing"},
        ]);
        // Another namespace's Ingress naming a Secret it does not have.
        let mut b = web.clone();
        b["tls"] = json!([{"hosts": ["b.example.com"], "secretName": "shop"}]);
        let snapshot = model(vec![
            ingress_class("fairlead", true),
            service("a", "web", &[("http", 80)]),
            service("b", "web", &[("http", 80)]),
            ingress("a", "a", &a),
            ingress("b", "b", &b),
            secret("a", "shop", &["shop.example.com"]),
            secret("a", "apps", &["*.apps.example.com"]),
            secret("a", "own", &["own.example.com"]),
        ]);
        let default = default_certificate(None).unwrap();
        let store = CertStore::build(&snapshot, "fairlead", default, &mut CertCache::default());
        let names = |sni: Option<&str>| leaf_names(store.resolve(sni));
        assert_eq!(names(Some("shop.example.com")), ["shop.example.com"]);
        assert_eq!(names(Some("SHOP.example.com.")), ["shop.example.com"]);
        assert_eq!(names(Some("x.apps.example.com")), ["*.apps.example.com"]);
        assert_eq!(names(Some("own.example.com")), ["own.example.com"]);
        for other in [
            Some("apps.example.com"),
            Some("a.b.apps.example.com"),
            Some("other.example.com"),
            Some("missing.example.com"),
            Some("b.example.com"),
            Some("unknown.test"),
            None,
        ] {
            assert_eq!(names(other), ["fairlead.invalid"], "{other:?}");
        }
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn cache_reuses_unchanged_certificates() {
        let spec = json!({"tls": [{"hosts": ["shop.example.com"], "secretName": "shop"}],
            "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
        let snapshot = model(vec![
            ingress_class("fairlead", true),
            service("a", "web", &[("http", 80)]),
            ingress("a", "a", &spec),
            secret("a", "shop", &["shop.example.com"]),
        ]);
        let default = default_certificate(None).unwrap();
        let mut cache = CertCache::default();
        let one = CertStore::build(&snapshot, "fairlead", default.clone(), &mut cache);
        let two = CertStore::build(&snapshot, "fairlead", default, &mut cache);
        assert!(Arc::ptr_eq(
            one.resolve(Some("shop.example.com")),
            two.resolve(Some("shop.example.com"))
        ));
    }

    #[test]
    fn default_certificate_from_file() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["default.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("fairlead-default-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("default.pem");
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let loaded = default_certificate(Some(&path)).unwrap();
        assert_eq!(leaf_names(&loaded), ["default.test"]);
        // A key of another certificate is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&path, format!("{}{}", cert.pem(), other.serialize_pem())).unwrap();
        let err = default_certificate(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        std::fs::write(&path, "nothing").unwrap();
        assert!(default_certificate(Some(&path)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
