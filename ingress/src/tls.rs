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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fairlead_model::{Host, ObjectKey, Snapshot, TlsCertificate};
use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::error::Error;

/// The rustls crypto provider fairlead serves TLS with: aws-lc-rs, which
/// signs with RSA keys about twice as fast as ring and does X25519 and the
/// TLS 1.3 key schedule a little faster (`cargo xtask bench ingress`
/// measures the handshakes). Made once.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Every signature scheme a server key could sign handshakes with.
const SCHEMES: [SignatureScheme; 10] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// A certificate with its key loaded, and the signature schemes that key
/// signs with: found once, when the certificate is loaded, so that picking
/// a certificate for a handshake is a comparison of two short lists.
#[derive(Debug, Clone)]
pub struct Served {
    key: Arc<CertifiedKey>,
    schemes: Arc<[SignatureScheme]>,
    ecdsa: bool,
}

impl Served {
    fn new(key: Arc<CertifiedKey>) -> Self {
        let schemes: Arc<[SignatureScheme]> = SCHEMES
            .into_iter()
            .filter(|s| key.key.choose_scheme(&[*s]).is_some())
            .collect();
        let ecdsa = key.key.algorithm() == rustls::SignatureAlgorithm::ECDSA;
        Served {
            key,
            schemes,
            ecdsa,
        }
    }

    /// The certificate chain and key.
    #[must_use]
    pub fn key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    fn signs_any(&self, offered: &[SignatureScheme]) -> bool {
        self.schemes.iter().any(|s| offered.contains(s))
    }
}

/// The certificates of one server name: at most one per key type (an
/// ECDSA and an RSA one, say), ECDSA first.
#[derive(Debug, Clone)]
struct Choice {
    first: Served,
    more: Vec<Served>,
}

impl Choice {
    fn one(served: Served) -> Self {
        Choice {
            first: served,
            more: Vec::new(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Served> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// Adds a certificate of a key type the name has none of yet.
    fn add(&mut self, served: Served) {
        let algorithm = served.key.key.algorithm();
        if self.all().any(|s| s.key.key.algorithm() == algorithm) {
            return;
        }
        if served.ecdsa {
            let second = std::mem::replace(&mut self.first, served);
            self.more.insert(0, second);
        } else {
            self.more.push(served);
        }
    }

    /// The first certificate whose key signs with a scheme the client
    /// offered; the first one when none does (the handshake then fails in
    /// rustls, with the alert the client should see).
    fn pick(&self, offered: &[SignatureScheme]) -> &Served {
        self.all()
            .find(|s| s.signs_any(offered))
            .unwrap_or(&self.first)
    }
}

/// Certificates by server name, swapped as a whole on every change.
#[derive(Debug, Clone)]
pub struct CertStore {
    exact: HashMap<String, Choice>,
    wildcard: HashMap<String, Choice>,
    default: Choice,
}

/// Converted certificates kept between rebuilds, so an unchanged Secret is
/// not parsed again.
#[derive(Debug, Default)]
pub struct CertCache {
    entries: HashMap<ObjectKey, (Arc<TlsCertificate>, Served)>,
}

impl CertCache {
    fn get(&mut self, cert: &Arc<TlsCertificate>) -> Result<Served, String> {
        if let Some((known, served)) = self.entries.get(&cert.key)
            && Arc::ptr_eq(known, cert)
        {
            return Ok(served.clone());
        }
        let served = Served::new(certified_key(cert.chain.clone(), cert.private_key.clone())?);
        self.entries
            .insert(cert.key.clone(), (cert.clone(), served.clone()));
        Ok(served)
    }
}

fn certified_key(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Result<Arc<CertifiedKey>, String> {
    let key = PrivateKeyDer::try_from(key).map_err(|e| format!("private key: {e}"))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
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
    /// Builds the store for the Ingresses of `class`. The first Ingress (by
    /// namespace/name) to claim a host owns it; its `spec.tls` entries may
    /// give the host one certificate per key type (an ECDSA and an RSA
    /// one), and each handshake gets the one its client can verify, ECDSA
    /// when it can do both.
    pub fn build(
        snapshot: &Snapshot,
        class: &str,
        default: Arc<CertifiedKey>,
        cache: &mut CertCache,
    ) -> Self {
        let mut store = CertStore::with_default(default);
        let mut owners: HashMap<Host, &ObjectKey> = HashMap::new();
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
                let served = match cache.get(cert) {
                    Ok(served) => served,
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
                    let owner = *owners.entry(host.clone()).or_insert(&ingress.key);
                    if owner != &ingress.key {
                        continue;
                    }
                    let map = match &host {
                        Host::Exact(h) => store.exact.entry(h.clone()),
                        Host::Wildcard(s) => store.wildcard.entry(s.clone()),
                    };
                    match map {
                        Entry::Vacant(v) => {
                            v.insert(Choice::one(served.clone()));
                        }
                        Entry::Occupied(mut o) => o.get_mut().add(served.clone()),
                    }
                }
            }
        }
        cache
            .entries
            .retain(|k, _| snapshot.certificates.contains_key(k));
        store
    }

    /// Adds the certificates of the HTTPS listeners this gateway serves
    /// (programmed listeners of accepted Gateways) for the
    /// hosts no Ingress claimed: the listener's hostname, or every name of
    /// its certificates when it has none. Listeners in Gateway order
    /// (namespace/name), first claim wins.
    pub fn add_gateway_listeners(
        &mut self,
        snapshot: &Snapshot,
        selection: &crate::gateway_api::Selection,
        cache: &mut CertCache,
    ) {
        let ingress_hosts: std::collections::HashSet<Host> = self
            .exact
            .keys()
            .map(|h| Host::Exact(h.clone()))
            .chain(self.wildcard.keys().map(|s| Host::Wildcard(s.clone())))
            .collect();
        let mut owners: HashMap<Host, (&ObjectKey, &str)> = HashMap::new();
        for gateway in fairlead_model::gateway_status::served_gateways(snapshot, selection) {
            for listener in &gateway.listeners {
                // Served HTTPS listeners only (the model's rule: not
                // conflicted, certificates resolved).
                if listener.protocol != fairlead_model::ListenerProtocol::Https
                    || !fairlead_model::gateway_status::listener_model_state(
                        snapshot, gateway, listener, selection,
                    )
                    .programmed()
                {
                    continue;
                }
                let Ok(certs) =
                    crate::gateway_api::listener_certificates(snapshot, gateway, listener)
                else {
                    continue;
                };
                for cert in certs {
                    let served = match cache.get(cert) {
                        Ok(served) => served,
                        Err(error) => {
                            warn!(gateway = %gateway.key, listener = %listener.name, secret = %cert.key, %error,
                                "TLS Secret unusable; the listener's hosts get the default certificate");
                            continue;
                        }
                    };
                    let hosts: Vec<Host> = match &listener.hostname {
                        Some(fairlead_model::Hostname::Exact(h)) => vec![Host::Exact(h.clone())],
                        Some(fairlead_model::Hostname::Wildcard(s)) => {
                            vec![Host::Wildcard(s.clone())]
                        }
                        None => cert.dns_names.iter().map(|n| parse_host(n)).collect(),
                    };
                    for host in hosts {
                        if ingress_hosts.contains(&host) {
                            continue;
                        }
                        let owner = *owners
                            .entry(host.clone())
                            .or_insert((&gateway.key, &listener.name));
                        if owner != (&gateway.key, listener.name.as_str()) {
                            continue;
                        }
                        let map = match &host {
                            Host::Exact(h) => self.exact.entry(h.clone()),
                            Host::Wildcard(s) => self.wildcard.entry(s.clone()),
                        };
                        match map {
                            Entry::Vacant(v) => {
                                v.insert(Choice::one(served.clone()));
                            }
                            Entry::Occupied(mut o) => o.get_mut().add(served.clone()),
                        }
                    }
                }
            }
        }
    }

    /// A store with only the default certificate.
    #[must_use]
    pub fn with_default(default: Arc<CertifiedKey>) -> Self {
        CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: Choice::one(Served::new(default)),
        }
    }

    /// The certificates of a server name (`None`: no SNI).
    fn choice(&self, server_name: Option<&str>) -> &Choice {
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

    /// The preferred certificate for a server name (`None`: no SNI).
    #[must_use]
    pub fn resolve(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        self.resolve_for(server_name, &SCHEMES)
    }

    /// The certificate for a server name whose key signs with one of the
    /// schemes a client offered (its ECDSA one if it has one and the client
    /// takes ECDSA).
    #[must_use]
    pub fn resolve_for(
        &self,
        server_name: Option<&str>,
        offered: &[SignatureScheme],
    ) -> &Arc<CertifiedKey> {
        &self.choice(server_name).pick(offered).key
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
        Some(
            self.0
                .load()
                .resolve_for(client_hello.server_name(), client_hello.signature_schemes())
                .clone(),
        )
    }
}

/// TLS session resumption: how long a session may be resumed, and how many
/// TLS 1.2 sessions without tickets are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// How long after its full handshake a session may be resumed (zero:
    /// resumption off). Tickets are also refused once their key is dropped
    /// (two rotation periods after it was made), whatever this says.
    pub lifetime: Duration,
    /// TLS 1.2 sessions kept for clients that resume by session id.
    pub cache_size: usize,
    /// How often the ticket key is replaced; the previous key still
    /// decrypts for as long again, then it is dropped.
    pub rotate_keys_every: Duration,
}

impl Default for Resumption {
    fn default() -> Self {
        Resumption {
            lifetime: Duration::from_secs(2 * 60 * 60),
            cache_size: 20_000,
            rotate_keys_every: Duration::from_secs(6 * 60 * 60),
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prefixes session state with the time it was made.
fn stamped(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&unix_now().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The session state of a stamped value, if it is younger than `lifetime`
/// seconds.
fn fresh(mut value: Vec<u8>, lifetime: u64) -> Option<Vec<u8>> {
    let (made, _) = value.split_first_chunk::<8>()?;
    let age = unix_now().saturating_sub(u64::from_be_bytes(*made));
    if age > lifetime {
        return None;
    }
    value.drain(..8);
    Some(value)
}

/// Session tickets (TLS 1.3, and TLS 1.2 for clients that ask) that expire:
/// the time of the full handshake travels inside the encrypted ticket, and
/// a ticket older than the lifetime is refused (a full handshake follows).
#[derive(Debug)]
struct ExpiringTickets {
    keys: Arc<dyn ProducesTickets>,
    lifetime: u32,
}

impl ProducesTickets for ExpiringTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.encrypt(&stamped(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        fresh(self.keys.decrypt(cipher)?, u64::from(self.lifetime))
    }
}

/// One ticket key: aws-lc-rs' RFC 5077 ticketer (AES-256-CBC and
/// HMAC-SHA256), which [`ticket_keys`] replaces before its own rotation.
#[derive(Debug)]
struct TicketKey(Arc<dyn ProducesTickets>);

impl ProducesTickets for TicketKey {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

fn new_ticket_key() -> Result<Box<dyn ProducesTickets>, rustls::crypto::GetRandomFailed> {
    let key =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|_| rustls::crypto::GetRandomFailed)?;
    Ok(Box::new(TicketKey(key)))
}

/// Ticket keys that rotate: a new key every `every` (at least a second),
/// the previous one still decrypting until the next rotation.
fn ticket_keys(every: Duration) -> Result<Arc<dyn ProducesTickets>, Error> {
    let seconds = u32::try_from(every.as_secs().max(1)).unwrap_or(u32::MAX);
    let keys = rustls::TicketRotator::new(seconds, new_ticket_key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(keys))
}

/// The TLS 1.2 session cache (session ids), whose entries expire: at most
/// `limit` sessions, the oldest forgotten first. It grows with the sessions
/// stored (rustls' memory cache reserves room for all of them up front:
/// 2 MiB for the default 20,000, before the first handshake).
#[derive(Debug)]
struct ExpiringSessions {
    cache: Mutex<SessionCache>,
    limit: usize,
    lifetime: u64,
}

/// Sessions by id, each with the number of its `put`; `order` lists the
/// puts oldest first (an entry taken or replaced since is skipped when its
/// turn comes).
#[derive(Debug, Default)]
struct SessionCache {
    sessions: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    order: VecDeque<(Vec<u8>, u64)>,
    puts: u64,
}

impl ExpiringSessions {
    fn new(limit: usize, lifetime: u64) -> Self {
        ExpiringSessions {
            cache: Mutex::new(SessionCache::default()),
            limit: limit.max(1),
            lifetime,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StoresServerSessions for ExpiringSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut cache = self.lock();
        cache.puts += 1;
        let put = cache.puts;
        cache.order.push_back((key.clone(), put));
        cache.sessions.insert(key, (stamped(&value), put));
        while cache.order.len() > self.limit {
            let Some((old, n)) = cache.order.pop_front() else {
                break;
            };
            if cache.sessions.get(&old).is_some_and(|(_, m)| *m == n) {
                cache.sessions.remove(&old);
            }
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.lock().sessions.get(key)?.0.clone();
        fresh(value, self.lifetime)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (value, _) = self.lock().sessions.remove(key)?;
        fresh(value, self.lifetime)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1,
/// certificates from `resolver`, sessions resumed as `resumption` says
/// (TLS 1.3 and TLS 1.2 tickets, and a TLS 1.2 session cache).
pub fn server_config(
    resolver: Arc<Resolver>,
    resumption: Resumption,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resumption.lifetime.is_zero() {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    } else {
        let lifetime = u32::try_from(resumption.lifetime.as_secs()).unwrap_or(u32::MAX);
        config.ticketer = Arc::new(ExpiringTickets {
            keys: ticket_keys(resumption.rotate_keys_every)?,
            lifetime,
        });
        config.session_storage = Arc::new(ExpiringSessions::new(
            resumption.cache_size,
            u64::from(lifetime),
        ));
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::test_support::{ingress, ingress_class, model, service};
    use serde_json::{Value, json};

    /// A kubernetes.io/tls Secret for `names`, self-signed (ECDSA P-256).
    pub(crate) fn secret(namespace: &str, name: &str, names: &[&str]) -> Value {
        secret_with(namespace, name, names, &rcgen::KeyPair::generate().unwrap())
    }

    /// An RSA-2048 key pair.
    fn rsa_key() -> rcgen::KeyPair {
        use aws_lc_rs::encoding::AsDer;
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = key.as_der().unwrap();
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_ref()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap()
    }

    /// A kubernetes.io/tls Secret for `names` with `key`, self-signed.
    fn secret_with(namespace: &str, name: &str, names: &[&str], key: &rcgen::KeyPair) -> Value {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(key).unwrap();
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
    fn gateway_https_listeners_serve_their_certificates_beside_the_ingresses() {
        let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "fl"}, "spec": {"controllerName": fairlead_model::DEFAULT_GATEWAY_CONTROLLER}});
        let listener = |name: &str, host: &str, refs: Value| {
            json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
                   "tls": {"certificateRefs": refs}})
        };
        let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "infra"},
        "spec": {"gatewayClassName": "fl", "listeners": [
            listener("own", "own.example.com", json!([{"name": "own"}])),
            listener("wild", "*.apps.example.com", json!([{"name": "apps"}])),
            listener("granted", "granted.example.com", json!([{"name": "granted", "namespace": "certs"}])),
            listener("denied", "denied.example.com", json!([{"name": "denied", "namespace": "certs"}])),
            listener("taken", "shop.example.com", json!([{"name": "own"}])),
            listener("missing", "missing.example.com", json!([{"name": "nope"}])),
        ]}});
        let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "gateways", "namespace": "certs"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra"}],
                     "to": [{"group": "", "kind": "Secret", "name": "granted"}]}});
        let spec = json!({"tls": [{"hosts": ["shop.example.com"], "secretName": "shop"}],
            "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
        let snapshot = model(vec![
            ingress_class("fairlead", true),
            service("a", "web", &[("http", 80)]),
            ingress("a", "a", &spec),
            secret("a", "shop", &["shop.example.com"]),
            class,
            gateway,
            grant,
            secret("infra", "own", &["own.example.com", "shop.example.com"]),
            secret("infra", "apps", &["*.apps.example.com"]),
            secret("certs", "granted", &["granted.example.com"]),
            secret("certs", "denied", &["denied.example.com"]),
        ]);
        let default = default_certificate(None).unwrap();
        let mut cache = CertCache::default();
        let mut store = CertStore::build(&snapshot, "fairlead", default, &mut cache);
        store.add_gateway_listeners(
            &snapshot,
            &crate::gateway_api::Selection::default(),
            &mut cache,
        );
        let names = |sni: Option<&str>| leaf_names(store.resolve(sni));
        assert_eq!(
            names(Some("own.example.com")),
            ["own.example.com", "shop.example.com"]
        );
        assert_eq!(names(Some("x.apps.example.com")), ["*.apps.example.com"]);
        assert_eq!(names(Some("granted.example.com")), ["granted.example.com"]);
        // The Ingress claimed shop.example.com first.
        assert_eq!(names(Some("shop.example.com")), ["shop.example.com"]);
        // No grant for this Secret; a Secret that does not exist.
        assert_eq!(names(Some("denied.example.com")), ["fairlead.invalid"]);
        assert_eq!(names(Some("missing.example.com")), ["fairlead.invalid"]);
        let reason = |name: &str| {
            let gateway = snapshot.gateways.values().next().unwrap();
            let listener = gateway.listeners.iter().find(|l| l.name == name).unwrap();
            crate::gateway_api::listener_certificates(&snapshot, gateway, listener)
                .err()
                .unwrap_or_default()
        };
        assert!(
            reason("denied").starts_with("RefNotPermitted"),
            "{}",
            reason("denied")
        );
        assert!(
            reason("missing").starts_with("InvalidCertificateRef"),
            "{}",
            reason("missing")
        );
        assert_eq!(reason("granted"), "");
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

    /// The leaf certificate (DER) in a Secret of the snapshot.
    fn secret_leaf(snapshot: &Snapshot, namespace: &str, name: &str) -> Vec<u8> {
        snapshot.certificates[&ObjectKey::new(namespace.to_owned(), name.to_owned())].chain[0]
            .clone()
    }

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn one_host_with_ecdsa_and_rsa_serves_what_the_client_verifies() {
        let rule = json!({"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}});
        let a = json!({"rules": [rule], "tls": [
            {"hosts": ["both.example.com", "rsa.example.com"], "secretName": "rsa"},
            {"hosts": ["both.example.com", "ec.example.com"], "secretName": "ec"},
            // A second RSA certificate for the host: the first one stays.
            {"hosts": ["both.example.com"], "secretName": "rsa2"},
        ]});
        // A later Ingress cannot add a certificate to a host another owns.
        let b = json!({"rules": [rule], "tls": [
            {"hosts": ["both.example.com", "rsa.example.com"], "secretName": "ec"},
        ]});
        let rsa = rsa_key();
        let snapshot = model(vec![
            ingress_class("fairlead", true),
            service("a", "web", &[("http", 80)]),
            service("b", "web", &[("http", 80)]),
            ingress("a", "a", &a),
            ingress("b", "b", &b),
            secret_with("a", "rsa", &["both.example.com", "rsa.example.com"], &rsa),
            secret_with("a", "rsa2", &["both.example.com"], &rsa),
            secret("a", "ec", &["both.example.com", "ec.example.com"]),
            secret("b", "ec", &["both.example.com", "rsa.example.com"]),
        ]);
        let default = default_certificate(None).unwrap();
        let store = CertStore::build(&snapshot, "fairlead", default, &mut CertCache::default());
        let (rsa_leaf, ec_leaf) = (
            secret_leaf(&snapshot, "a", "rsa"),
            secret_leaf(&snapshot, "a", "ec"),
        );
        let ecdsa = [SignatureScheme::ECDSA_NISTP256_SHA256];
        let rsa_pss = [
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ];
        let browser = [
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ];
        let pick =
            |name: &str, offered: &[SignatureScheme]| leaf(store.resolve_for(Some(name), offered));
        // Both: ECDSA to clients that take it, RSA to the others.
        assert_eq!(pick("both.example.com", &browser), ec_leaf);
        assert_eq!(pick("both.example.com", &ecdsa), ec_leaf);
        assert_eq!(pick("both.example.com", &rsa_pss), rsa_leaf);
        assert_eq!(leaf(store.resolve(Some("both.example.com"))), ec_leaf);
        // One key type: served to everyone (a client that cannot verify it
        // fails the handshake, as with any server).
        assert_eq!(pick("rsa.example.com", &ecdsa), rsa_leaf);
        assert_eq!(pick("rsa.example.com", &browser), rsa_leaf);
        assert_eq!(pick("ec.example.com", &rsa_pss), ec_leaf);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn session_state_expires() {
        let lifetime = 60;
        let state = b"session".to_vec();
        assert_eq!(fresh(stamped(&state), lifetime), Some(state.clone()));
        let mut old = (unix_now() - 61).to_be_bytes().to_vec();
        old.extend_from_slice(&state);
        assert_eq!(fresh(old.clone(), lifetime), None);
        assert_eq!(fresh(old, 61), Some(state));
        assert_eq!(
            fresh(vec![1, 2, 3], lifetime),
            None,
            "too short to be stamped"
        );

        let tickets = ExpiringTickets {
            keys: rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
            lifetime: 60,
        };
        let ticket = tickets.encrypt(b"state").unwrap();
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert!(tickets.decrypt(b"not a ticket").is_none());
        let expired = ExpiringTickets {
            keys: rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
            lifetime: 0,
        };
        let mut plain = (unix_now() - 5).to_be_bytes().to_vec();
        plain.extend_from_slice(b"state");
        let ticket = expired.keys.encrypt(&plain).unwrap();
        assert!(expired.decrypt(&ticket).is_none());
    }

    #[test]
    fn ticket_keys_rotate_and_the_previous_key_is_kept_one_period() {
        // Rotation is checked against the clock in whole seconds: with a
        // one-second period a key is replaced within 2 s.
        let keys = ticket_keys(Duration::from_secs(1)).unwrap();
        let first = keys.encrypt(b"first").unwrap();
        assert_eq!(keys.decrypt(&first).as_deref(), Some(&b"first"[..]));
        std::thread::sleep(Duration::from_millis(2100));
        // A new key encrypts; the previous one still decrypts.
        let second = keys.encrypt(b"second").unwrap();
        assert_eq!(keys.decrypt(&first).as_deref(), Some(&b"first"[..]));
        std::thread::sleep(Duration::from_millis(2100));
        let third = keys.encrypt(b"third").unwrap();
        // Two rotations later the first key is gone; the second is the
        // previous one now.
        assert!(keys.decrypt(&first).is_none(), "the first key was dropped");
        assert_eq!(keys.decrypt(&second).as_deref(), Some(&b"second"[..]));
        assert_eq!(keys.decrypt(&third).as_deref(), Some(&b"third"[..]));
        // Another gateway's keys decrypt none of these.
        let other = ticket_keys(Duration::from_secs(1)).unwrap();
        assert!(other.decrypt(&third).is_none());
        // The server configuration uses the period it is given.
        let default = default_certificate(None).unwrap();
        let resolver = Arc::new(Resolver(Arc::new(ArcSwap::from_pointee(
            CertStore::with_default(default),
        ))));
        let config = server_config(resolver, Resumption::default()).unwrap();
        assert!(config.ticketer.enabled());
        assert_eq!(config.ticketer.lifetime(), 2 * 60 * 60);
    }

    /// Accepts any certificate, but checks the handshake signatures.
    #[derive(Debug)]
    struct AnyCert(Arc<CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Runs a handshake in memory (and reads what the server sends after
    /// it: TLS 1.3 tickets); returns its kind as the server saw it.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> rustls::HandshakeKind {
        let name = rustls_pki_types::ServerName::try_from("shop.example.com").unwrap();
        let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let mut from_client = wire.as_slice();
            while !from_client.is_empty() {
                s.read_tls(&mut from_client).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            let mut from_server = wire.as_slice();
            while !from_server.is_empty() {
                c.read_tls(&mut from_server).unwrap();
                c.process_new_packets().unwrap();
            }
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                break;
            }
        }
        assert!(!s.is_handshaking(), "the handshake completes");
        assert_eq!(c.handshake_kind(), s.handshake_kind());
        s.handshake_kind().unwrap()
    }

    #[test]
    fn sessions_are_resumed_by_ticket_and_by_session_id() {
        use rustls::HandshakeKind::{Full, Resumed};
        let default = default_certificate(None).unwrap();
        let resolver = Arc::new(Resolver(Arc::new(ArcSwap::from_pointee(
            CertStore::with_default(default),
        ))));
        let server = server_config(resolver.clone(), Resumption::default()).unwrap();
        let off = server_config(
            resolver,
            Resumption {
                lifetime: Duration::ZERO,
                ..Resumption::default()
            },
        )
        .unwrap();
        let client = |version: &'static rustls::SupportedProtocolVersion,
                      tls12: rustls::client::Tls12Resumption| {
            let provider = provider();
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            config.resumption =
                rustls::client::Resumption::in_memory_sessions(16).tls12_resumption(tls12);
            Arc::new(config)
        };
        for (version, tls12) in [
            (
                &rustls::version::TLS13,
                rustls::client::Tls12Resumption::SessionIdOrTickets,
            ),
            (
                &rustls::version::TLS12,
                rustls::client::Tls12Resumption::SessionIdOrTickets,
            ),
            (
                &rustls::version::TLS12,
                rustls::client::Tls12Resumption::SessionIdOnly,
            ),
        ] {
            let what = format!("{version:?} {tls12:?}");
            let client = client(version, tls12);
            assert_eq!(handshake(&client, &server), Full, "{what}");
            assert_eq!(handshake(&client, &server), Resumed, "{what}");
            assert_eq!(handshake(&client, &server), Resumed, "{what}");
            // Resumption off: every handshake is a full one.
            assert_eq!(handshake(&client, &off), Full, "{what}");
            assert_eq!(handshake(&client, &off), Full, "{what}");
        }
    }

    #[test]
    fn session_cache_keeps_the_newest_sessions_and_grows_as_needed() {
        let cache = ExpiringSessions::new(3, 3600);
        assert_eq!(
            cache.lock().sessions.capacity(),
            0,
            "nothing reserved up front"
        );
        for i in 0..5u8 {
            assert!(cache.put(vec![i], vec![i, i]));
        }
        // The oldest two are forgotten.
        assert_eq!(cache.get(&[0]), None);
        assert_eq!(cache.get(&[1]), None);
        assert_eq!(cache.get(&[4]), Some(vec![4, 4]));
        // Replacing a session makes it the newest: it outlives older ones.
        assert!(cache.put(vec![2], vec![9]));
        assert!(cache.put(vec![5], vec![5]));
        assert!(cache.put(vec![6], vec![6]));
        assert_eq!(cache.get(&[2]), Some(vec![9]));
        assert_eq!(cache.get(&[3]), None);
        assert_eq!(cache.get(&[4]), None);
        // Taken once, then gone.
        assert_eq!(cache.take(&[6]), Some(vec![6]));
        assert_eq!(cache.take(&[6]), None);
        assert!(cache.lock().order.len() <= 3);
        // Expired sessions are not resumed.
        let expired = ExpiringSessions::new(3, 0);
        expired.put(vec![1], vec![1]);
        expired.lock().sessions.get_mut(&[1][..]).unwrap().0[..8]
            .copy_from_slice(&(unix_now() - 5).to_be_bytes());
        assert_eq!(expired.get(&[1]), None);
    }
}
