//! The forwarder: every name outside the cluster goes to the upstream
//! servers, over UDP with a TCP retry when the answer is truncated, through a
//! cache of positive and negative answers (TTLs capped). A cap on concurrent
//! upstream queries protects the upstreams (REFUSED beyond it); when every
//! upstream fails, an expired cache entry is served (RFC 8767); and a probe
//! at start detects upstreams that send our own queries back to us.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use tracing::{debug, error, info, warn};

use crate::metrics::{Metrics, Source, UpstreamError};

/// The top-level label of loop probes: `<random>.<random>.fairlead-loop-check.`
const LOOP_PROBE_LABEL: &[u8] = b"fairlead-loop-check";
/// TTL of a stale answer (RFC 8767 recommends 30 s).
const STALE_TTL: u32 = 30;
/// UDP payload we advertise to upstreams.
const UPSTREAM_PAYLOAD: u16 = 1232;

/// How the forwarder behaves.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Upstream servers, tried in turn.
    pub upstreams: Vec<SocketAddr>,
    /// Time to wait for one upstream.
    pub timeout: Duration,
    /// Most upstream queries in flight; more are REFUSED.
    pub max_concurrent: usize,
    /// Most cache entries.
    pub cache_size: usize,
    /// Cap on the TTL of cached positive answers, in seconds.
    pub max_ttl: u32,
    /// Cap on the TTL of cached negative answers, in seconds.
    pub max_negative_ttl: u32,
    /// How long after expiry an entry may still be served when the upstreams
    /// fail; zero disables serve-stale.
    pub stale_window: Duration,
    /// How long a client waits for the upstreams before an expired entry is
    /// served instead (the refresh carries on in the background).
    pub stale_answer_timeout: Duration,
}

/// A forwarded answer, ready to be sent.
#[derive(Debug)]
pub struct Forwarded {
    /// Response code from upstream (SERVFAIL or REFUSED when none answered).
    pub rcode: ResponseCode,
    /// Answer section, TTLs counted down.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// Additional section.
    pub additionals: Vec<Record>,
    /// Where it came from.
    pub source: Source,
}

impl Forwarded {
    fn failed(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            source: Source::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    name: LowerName,
    qtype: RecordType,
    class: DNSClass,
}

#[derive(Debug)]
struct Response {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

#[derive(Clone, Debug)]
struct Entry {
    response: Arc<Response>,
    stored: Instant,
    fresh_for: Duration,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    label: String,
    looping: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    config: ForwardConfig,
    upstreams: Vec<Upstream>,
    cache: Mutex<HashMap<Key, Entry>>,
    permits: Arc<Semaphore>,
    next: AtomicUsize,
    probes: Mutex<HashMap<LowerName, usize>>,
    metrics: Metrics,
}

/// The forwarder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records with TTLs lowered by `age` (or set to `ttl` when given).
fn aged(records: &[Record], age: u32, ttl: Option<u32>) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.ttl = ttl.unwrap_or_else(|| r.ttl.saturating_sub(age));
            r
        })
        .collect()
}

fn capped(records: Vec<Record>, cap: u32) -> Vec<Record> {
    records
        .into_iter()
        .map(|mut r| {
            r.ttl = r.ttl.min(cap);
            r
        })
        .collect()
}

/// How long a response may be cached: the smallest answer TTL for positive
/// answers, the SOA's negative TTL for NXDOMAIN and NODATA (RFC 2308); `None`
/// for what must not be cached.
fn cache_ttl(response: &Response, max_ttl: u32, max_negative_ttl: u32) -> Option<u32> {
    let positive = response.rcode == ResponseCode::NoError && !response.answers.is_empty();
    let ttl = if positive {
        response.answers.iter().map(|r| r.ttl).min()?.min(max_ttl)
    } else if matches!(
        response.rcode,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
            .min(max_negative_ttl)
    } else {
        return None;
    };
    (ttl > 0).then_some(ttl)
}

impl Forwarder {
    /// A forwarder over `config.upstreams`.
    #[must_use]
    pub fn new(config: ForwardConfig, metrics: Metrics) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|addr| Upstream {
                addr: *addr,
                label: addr.to_string(),
                looping: AtomicBool::new(false),
            })
            .collect();
        Self(Arc::new(Inner {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            upstreams,
            cache: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            probes: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// The upstream servers.
    #[must_use]
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.0.upstreams.iter().map(|u| u.addr).collect()
    }

    fn mark_loop(&self, index: usize, how: &str) {
        let upstream = &self.0.upstreams[index];
        if !upstream.looping.swap(true, Ordering::AcqRel) {
            error!(
                upstream = %upstream.addr,
                how,
                "forwarding loop: this upstream sends our own queries back to us; not forwarding to it"
            );
            self.0.metrics.forwarding_loop();
            self.0
                .metrics
                .upstream_error(&upstream.label, UpstreamError::Loop);
        }
    }

    /// Marks upstreams that are this server itself (same port on one of the
    /// addresses it listens on, or on loopback when it listens everywhere).
    pub fn detect_static_loops(&self, listening: &[SocketAddr]) {
        for (i, upstream) in self.0.upstreams.iter().enumerate() {
            let is_self = listening.iter().any(|l| {
                l.port() == upstream.addr.port()
                    && (l.ip() == upstream.addr.ip()
                        || (l.ip().is_unspecified()
                            && (upstream.addr.ip().is_loopback()
                                || upstream.addr.ip().is_unspecified())))
            });
            if is_self {
                self.mark_loop(i, "the upstream is this server's own address");
            }
        }
    }

    /// Sends one probe query per upstream; if a probe comes back to this
    /// server ([`Forwarder::is_loop_probe`]), that upstream loops.
    pub async fn probe_loops(&self) {
        let mut probes = Vec::new();
        for (i, upstream) in self.0.upstreams.iter().enumerate() {
            if upstream.looping.load(Ordering::Acquire) {
                continue;
            }
            let labels = [
                format!("{:016x}", fastrand::u64(..)),
                format!("{:016x}", fastrand::u64(..)),
            ];
            let Ok(name) = Name::from_labels(
                labels
                    .iter()
                    .map(String::as_bytes)
                    .chain([LOOP_PROBE_LABEL]),
            ) else {
                continue;
            };
            lock(&self.0.probes).insert(LowerName::new(&name), i);
            probes.push((upstream.addr, name));
        }
        for (addr, name) in probes {
            let key = Key {
                name: LowerName::new(&name),
                qtype: RecordType::HINFO,
                class: DNSClass::IN,
            };
            // The answer does not matter; only whether the probe comes back.
            let result = exchange(addr, &key, self.0.config.timeout).await;
            debug!(upstream = %addr, ok = result.is_ok(), "loop probe answered");
        }
    }

    /// Whether `name` is one of our loop probes coming back (which marks its
    /// upstream as looping). The server answers such a query SERVFAIL.
    #[must_use]
    pub fn is_loop_probe(&self, name: &LowerName) -> bool {
        if name.iter().next_back() != Some(LOOP_PROBE_LABEL) {
            return false;
        }
        let index = lock(&self.0.probes).get(name).copied();
        match index {
            Some(i) => {
                self.mark_loop(i, "a loop probe came back");
                true
            }
            None => false,
        }
    }

    fn cached(&self, key: &Key, now: Instant) -> Option<Entry> {
        let mut cache = lock(&self.0.cache);
        let entry = cache.get(key)?;
        if now.duration_since(entry.stored) > entry.fresh_for + self.0.config.stale_window {
            cache.remove(key);
            return None;
        }
        Some(entry.clone())
    }

    fn store(&self, key: Key, response: Arc<Response>) {
        let Some(ttl) = cache_ttl(
            &response,
            self.0.config.max_ttl,
            self.0.config.max_negative_ttl,
        ) else {
            return;
        };
        let now = Instant::now();
        let stale_window = self.0.config.stale_window;
        let mut cache = lock(&self.0.cache);
        if cache.len() >= self.0.config.cache_size && !cache.contains_key(&key) {
            // Evict what is past serving among a few entries, else one of them.
            let victims: Vec<Key> = cache
                .iter()
                .take(64)
                .filter(|(_, e)| now.duration_since(e.stored) > e.fresh_for + stale_window)
                .map(|(k, _)| k.clone())
                .collect();
            if victims.is_empty() {
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            } else {
                for k in victims {
                    cache.remove(&k);
                }
            }
        }
        if self.0.config.cache_size > 0 {
            cache.insert(
                key,
                Entry {
                    response,
                    stored: now,
                    fresh_for: Duration::from_secs(u64::from(ttl)),
                },
            );
        }
        self.0.metrics.cache_entries(cache.len());
    }

    fn from_entry(entry: &Entry, now: Instant, stale: bool) -> Forwarded {
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let ttl = stale.then_some(STALE_TTL);
        Forwarded {
            rcode: entry.response.rcode,
            answers: aged(&entry.response.answers, age, ttl),
            authorities: aged(&entry.response.authorities, age, ttl),
            additionals: aged(&entry.response.additionals, age, ttl),
            source: if stale { Source::Stale } else { Source::Cache },
        }
    }

    fn stale_or(&self, entry: Option<&Entry>, rcode: ResponseCode) -> Forwarded {
        match entry {
            Some(entry) => {
                self.0.metrics.cache_stale();
                Self::from_entry(entry, Instant::now(), true)
            }
            None => Forwarded::failed(rcode),
        }
    }

    /// Answers a question from the cache or the upstreams.
    pub async fn resolve(&self, name: &LowerName, qtype: RecordType, class: DNSClass) -> Forwarded {
        let key = Key {
            name: name.clone(),
            qtype,
            class,
        };
        let now = Instant::now();
        let cached = self.cached(&key, now);
        if let Some(entry) = &cached
            && now.duration_since(entry.stored) < entry.fresh_for
        {
            self.0.metrics.cache_hit();
            return Self::from_entry(entry, now, false);
        }
        self.0.metrics.cache_miss();
        if self
            .0
            .upstreams
            .iter()
            .all(|u| u.looping.load(Ordering::Acquire))
        {
            return self.stale_or(cached.as_ref(), ResponseCode::ServFail);
        }
        let Ok(permit) = self.0.permits.clone().try_acquire_owned() else {
            self.0.metrics.overloaded();
            return self.stale_or(cached.as_ref(), ResponseCode::Refused);
        };
        let this = self.clone();
        let refresh = async move { this.query_upstreams(key, permit).await };
        let result = match &cached {
            // An expired entry exists: answer it if the upstreams are slow,
            // and let the refresh carry on in the background.
            Some(_) => {
                let task = tokio::spawn(refresh.in_current_span());
                match tokio::time::timeout(self.0.config.stale_answer_timeout, task).await {
                    Ok(Ok(result)) => result,
                    _ => None,
                }
            }
            None => refresh.await,
        };
        match result {
            Some(response) => Forwarded {
                rcode: response.rcode,
                answers: response.answers.clone(),
                authorities: response.authorities.clone(),
                additionals: response.additionals.clone(),
                source: Source::Upstream,
            },
            None => self.stale_or(cached.as_ref(), ResponseCode::ServFail),
        }
    }

    async fn query_upstreams(
        &self,
        key: Key,
        _permit: OwnedSemaphorePermit,
    ) -> Option<Arc<Response>> {
        let count = self.0.upstreams.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            let upstream = &self.0.upstreams[(start + i) % count];
            if upstream.looping.load(Ordering::Acquire) {
                continue;
            }
            match exchange(upstream.addr, &key, self.0.config.timeout).await {
                Ok(message) => {
                    let rcode = message.metadata.response_code;
                    if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
                        debug!(upstream = %upstream.addr, name = %key.name, %rcode, "upstream error answer");
                        self.0
                            .metrics
                            .upstream_error(&upstream.label, UpstreamError::Rcode);
                        continue;
                    }
                    let cap = self.0.config.max_ttl.max(self.0.config.max_negative_ttl);
                    let response = Arc::new(Response {
                        rcode,
                        answers: capped(message.answers, cap),
                        authorities: capped(message.authorities, cap),
                        additionals: capped(message.additionals, cap),
                    });
                    self.store(key, response.clone());
                    return Some(response);
                }
                Err(reason) => {
                    debug!(upstream = %upstream.addr, name = %key.name, ?reason, "upstream failed");
                    self.0.metrics.upstream_error(&upstream.label, reason);
                }
            }
        }
        None
    }
}

/// One exchange with one upstream: UDP, then TCP if the answer is truncated.
async fn exchange(
    addr: SocketAddr,
    key: &Key,
    timeout: Duration,
) -> Result<Message, UpstreamError> {
    let id = fastrand::u16(..);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    let mut q = Query::query(Name::from(&key.name), key.qtype);
    q.set_query_class(key.class);
    query.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|_| UpstreamError::Malformed)?;

    let deadline = tokio::time::Instant::now() + timeout;
    let answer = tokio::time::timeout_at(deadline, exchange_udp(addr, &bytes, id, &q))
        .await
        .map_err(|_| UpstreamError::Timeout)??;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    debug!(upstream = %addr, name = %key.name, "truncated answer; retrying over TCP");
    tokio::time::timeout_at(
        tokio::time::Instant::now() + timeout,
        exchange_tcp(addr, &bytes, id, &q),
    )
    .await
    .map_err(|_| UpstreamError::Timeout)?
}

fn matches(answer: &Message, id: u16, query: &Query) -> bool {
    answer.metadata.id == id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries.len() == 1
        && answer.queries[0].name() == query.name()
        && answer.queries[0].query_type() == query.query_type()
        && answer.queries[0].query_class() == query.query_class()
}

async fn exchange_udp(
    addr: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
) -> Result<Message, UpstreamError> {
    let local: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|_| UpstreamError::Network)?;
    socket
        .connect(addr)
        .await
        .map_err(|_| UpstreamError::Network)?;
    socket
        .send(bytes)
        .await
        .map_err(|_| UpstreamError::Network)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|_| UpstreamError::Network)?;
        // Anything that is not the answer to this question is ignored (a
        // late answer to an earlier query, a spoofing attempt).
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && matches(&answer, id, query)
        {
            return Ok(answer);
        }
    }
}

async fn exchange_tcp(
    addr: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
) -> Result<Message, UpstreamError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|_| UpstreamError::Network)?;
    let len = u16::try_from(bytes.len()).map_err(|_| UpstreamError::Malformed)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream
        .write_all(&framed)
        .await
        .map_err(|_| UpstreamError::Network)?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|_| UpstreamError::Network)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|_| UpstreamError::Network)?;
    let answer = Message::from_vec(&buf).map_err(|_| UpstreamError::Malformed)?;
    if matches(&answer, id, query) {
        Ok(answer)
    } else {
        Err(UpstreamError::Malformed)
    }
}

/// Logs the forwarder's setup once.
pub fn log_setup(forwarder: &Forwarder) {
    let upstreams = forwarder.upstreams();
    if upstreams.is_empty() {
        warn!("no upstream DNS servers: names outside the cluster will get SERVFAIL");
    } else {
        info!(upstreams = ?upstreams, "forwarding names outside the cluster");
    }
}
