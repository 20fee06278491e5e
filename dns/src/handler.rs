//! The request handler hickory-server calls for every parsed request (and
//! the UDP loops for what the fast path does not answer):
//! cluster names from the index, everything else through the forwarder, with
//! EDNS0, the asker's case kept, address sets shuffled and UDP answers cut to
//! the asker's buffer (TC set, so the client retries over TCP).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{
    Edns, EmitAndCount, Header, HeaderCounts, LowerQuery, MessageType, Metadata, OpCode,
    ResponseCode, emit_message_parts,
};
use hickory_server::proto::rr::rdata::CNAME;
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable as _, BinEncoder, NameEncoding,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tracing::{debug, warn};

use crate::fast::{self, AnswerCache, Fast};
use crate::forward::Forwarder;
use crate::index::{AutopathQuestion, Index, Lookup};
use crate::metrics::{LoopMetrics, Metrics, Source};
use crate::names::has_upper;

/// Longest chain of CNAMEs followed inside one answer.
const MAX_CHASE: usize = 8;
/// Size of the OPT record we add (root name, type, class, TTL, rdlength).
const OPT_LEN: usize = 11;

/// Answers DNS requests from the current index and the forwarder.
#[derive(Clone, Debug)]
pub struct Handler {
    index: Arc<ArcSwap<Index>>,
    forwarder: Forwarder,
    metrics: Metrics,
    max_udp_payload: u16,
    /// The fast path's cache for [`Handler::answer_raw`] (the UDP loops
    /// have their own).
    raw_cache: Arc<Mutex<AnswerCache>>,
    /// Search-path completion: on with the host's search domains (those a
    /// pod's resolv.conf lists after the cluster's), off when `None`.
    autopath: Option<Arc<[Name]>>,
}

type Records<'a> = Vec<Cow<'a, Record>>;

/// A response being put together.
#[derive(Debug)]
struct Reply<'a> {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Records<'a>,
    authorities: Records<'a>,
    additionals: Records<'a>,
    source: Source,
}

impl Reply<'_> {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            source: Source::Error,
        }
    }
}

fn owned(records: Vec<Record>) -> Records<'static> {
    records.into_iter().map(Cow::Owned).collect()
}

impl Handler {
    /// A handler answering from `index` (swapped by the model follower) and
    /// `forwarder`. `max_udp_payload` caps the EDNS buffer size honoured.
    #[must_use]
    pub fn new(
        index: Arc<ArcSwap<Index>>,
        forwarder: Forwarder,
        metrics: Metrics,
        max_udp_payload: u16,
    ) -> Self {
        Self {
            index,
            forwarder,
            metrics,
            max_udp_payload: max_udp_payload.max(512),
            raw_cache: Arc::default(),
            autopath: None,
        }
    }

    /// The same handler completing pods' search paths (`--dns-autopath`),
    /// `search` being the host's search domains, which a pod's resolv.conf
    /// lists after `<ns>.svc.<zone> svc.<zone> <zone>`. The index must be
    /// built with [`crate::ZoneConfig::with_autopath`] to know the pods.
    #[must_use]
    pub fn with_autopath(mut self, search: Vec<Name>) -> Self {
        self.autopath = Some(search.into());
        self
    }

    /// The UDP fast path: answers `raw` into `out` from `cache` when it is
    /// a plain question about a cluster name (see [`crate::fast`]).
    pub(crate) fn answer_fast(
        &self,
        cache: &mut AnswerCache,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Fast {
        let Some(query) = fast::parse(raw, self.max_udp_payload) else {
            return Fast::General;
        };
        let index = self.index.load();
        cache.answer(&index, &query, out, |qname| {
            self.forwarder.is_loop_probe(qname)
        })
    }

    /// The forwarder.
    #[must_use]
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Whether `request` is answered without waiting on an upstream (so a
    /// transport may answer it inline instead of spawning a task).
    #[must_use]
    pub fn answers_from_memory(&self, request: &Request) -> bool {
        let [query] = request.queries.queries() else {
            return true;
        };
        match self.index.load().lookup(query.name(), query.query_type()) {
            Lookup::Answer(answer) => answer.chase.is_none(),
            Lookup::NotSynced => true,
            Lookup::Forward => false,
        }
    }

    pub(crate) fn count_fast(
        &self,
        local: &mut LoopMetrics,
        qtype: RecordType,
        rcode: ResponseCode,
        elapsed: std::time::Duration,
    ) {
        self.metrics.cluster_request(local, qtype, rcode, elapsed);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn count(
        &self,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        source: Source,
        elapsed: std::time::Duration,
    ) {
        self.metrics.request(qtype, rcode, source, elapsed);
    }

    async fn reply<'a>(&self, index: &'a Index, query: &LowerQuery, src: IpAddr) -> Reply<'a> {
        let qname = query.name();
        let qtype = query.query_type();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Reply::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::error(ResponseCode::Refused);
        }
        if self.forwarder.is_loop_probe(qname) {
            return Reply::error(ResponseCode::ServFail);
        }
        let mut reply = self.resolve(index, qname, qtype, query.query_class()).await;
        if reply.rcode == ResponseCode::NXDomain
            && let Some(search) = &self.autopath
            && let Some(question) = index.autopath_question(qname)
            && index.is_pod_of(src, &question.namespace)
            && let Some(completed) = self
                .complete(index, qname, &question, search, qtype, query.query_class())
                .await
        {
            reply = completed;
        }
        // Answers keep the asker's case (0x20-randomising resolvers check).
        let original = query.original().name();
        if has_upper(original) {
            for record in &mut reply.answers {
                if record.name == *original {
                    record.to_mut().name = original.clone();
                }
            }
        }
        // Shuffle the trailing set of the asked type (after any CNAMEs).
        if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::SRV) {
            let start = reply
                .answers
                .iter()
                .rposition(|r| r.record_type() != qtype)
                .map_or(0, |i| i + 1);
            fastrand::shuffle(&mut reply.answers[start..]);
        }
        reply
    }

    /// The answer for `qname` alone: the index's, with CNAMEs (ExternalName)
    /// followed, or the forwarder's.
    async fn resolve<'a>(
        &self,
        index: &'a Index,
        qname: &LowerName,
        qtype: RecordType,
        class: DNSClass,
    ) -> Reply<'a> {
        match index.lookup(qname, qtype) {
            Lookup::NotSynced => Reply::error(ResponseCode::ServFail),
            Lookup::Forward => {
                let f = self.forwarder.resolve(qname, qtype, class).await;
                Reply {
                    rcode: f.rcode,
                    authoritative: false,
                    answers: owned(f.answers),
                    authorities: owned(f.authorities),
                    additionals: owned(f.additionals),
                    source: f.source,
                }
            }
            Lookup::Answer(answer) => {
                let mut chase = answer.chase;
                let mut reply = Reply {
                    rcode: answer.rcode,
                    authoritative: true,
                    answers: answer.answers,
                    authorities: answer.authorities,
                    additionals: answer.additionals,
                    source: Source::Cluster,
                };
                // Follow a CNAME (ExternalName) to its target's records.
                let mut hops = 0;
                while let Some(target) = chase.take() {
                    hops += 1;
                    if hops > MAX_CHASE {
                        debug!(%qname, "CNAME chain too long; answering what we have");
                        break;
                    }
                    let target = LowerName::new(target);
                    match index.lookup(&target, qtype) {
                        Lookup::Answer(next) => {
                            reply.rcode = next.rcode;
                            reply.answers.extend(next.answers);
                            reply.authorities = next.authorities;
                            reply.additionals.extend(next.additionals);
                            chase = next.chase;
                        }
                        Lookup::NotSynced => {}
                        Lookup::Forward => {
                            let f = self.forwarder.resolve(&target, qtype, class).await;
                            reply.rcode = f.rcode;
                            reply.answers.extend(owned(f.answers));
                            reply.authorities = owned(f.authorities);
                        }
                    }
                }
                reply
            }
        }
    }

    /// Search-path completion (autopath): a pod of `question.namespace`
    /// asked `<base>.<ns>.svc.<zone>` and it does not exist, so its resolver
    /// would go on with `<base>.svc.<zone>`, `<base>.<zone>`, `<base>.` each
    /// host search domain, then `<base>` itself. The first of those that
    /// exists is answered here, as a CNAME from the asked name to it followed
    /// by its records, and the resolver stops searching. `None` when none
    /// exists or one fails (the asker then gets the plain NXDOMAIN and
    /// searches on by itself, as without autopath).
    async fn complete<'a>(
        &self,
        index: &'a Index,
        qname: &LowerName,
        question: &AutopathQuestion,
        search: &[Name],
        qtype: RecordType,
        class: DNSClass,
    ) -> Option<Reply<'a>> {
        let zone = &index.config().zone;
        let svc = Name::from_labels([b"svc".as_slice()])
            .ok()
            .and_then(|svc| svc.append_domain(zone).ok());
        let domains = svc
            .into_iter()
            .chain([zone.clone()])
            .chain(search.iter().cloned())
            .chain([Name::root()]);
        for domain in domains {
            let Ok(candidate) = question.base.clone().append_domain(&domain) else {
                // Too long with this domain: the resolver skips it too.
                continue;
            };
            let candidate = LowerName::new(&candidate);
            if candidate == *qname || self.forwarder.is_loop_probe(&candidate) {
                continue;
            }
            let found = self.resolve(index, &candidate, qtype, class).await;
            match found.rcode {
                ResponseCode::NXDomain => {}
                ResponseCode::NoError => {
                    self.metrics.autopath(true);
                    let cname = Record::from_rdata(
                        Name::from(qname),
                        index.config().ttl,
                        RData::CNAME(CNAME(Name::from(&candidate))),
                    );
                    let mut answers = Vec::with_capacity(found.answers.len() + 1);
                    answers.push(Cow::Owned(cname));
                    answers.extend(found.answers);
                    return Some(Reply { answers, ..found });
                }
                _ => break,
            }
        }
        self.metrics.autopath(false);
        None
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> (ResponseInfo, Option<RecordType>, Source) {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, self.max_udp_payload));
            // RFC 3225: the DO bit of the query is copied into the response.
            ours.set_dnssec_ok(theirs.flags().dnssec_ok);
            ours
        });
        let query = match request.queries.queries() {
            [query] => Some(query),
            _ => None,
        };
        let qtype = query.map(LowerQuery::query_type);
        let index = self.index.load_full();
        let reply = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Reply::error(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Reply::error(ResponseCode::NotImp)
        } else if let Some(query) = query {
            self.reply(&index, query, request.src().ip()).await
        } else {
            Reply::error(ResponseCode::FormErr)
        };
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        let source = reply.source;
        let limit = match request.protocol() {
            Protocol::Udp => usize::from(edns.as_ref().map_or(512, Edns::max_payload)),
            _ => usize::from(u16::MAX),
        };
        let rewritten = rewritten_question(&request.queries);
        let info = send(
            rewritten.as_ref().unwrap_or(&request.queries),
            metadata,
            edns.as_ref(),
            &reply,
            limit,
            response_handle,
        )
        .await;
        (info, qtype, source)
    }
}

/// The question section a response carries when it cannot be the asker's
/// bytes (`None`: it can be). A compression pointer in a question is legal
/// (RFC 1035 4.1.4), but it holds an offset into the *query*: copied into a
/// response, whose header bytes differ, it points at garbage (the flags
/// byte, say) and the answer no longer parses. Such questions are written
/// out again from their decoded form, in the asker's case, as CoreDNS does
/// (Knot refuses them with FORMERR; answering is the more useful choice).
fn rewritten_question(queries: &Queries) -> Option<Queries> {
    if !has_pointer(queries.as_bytes(), queries.len()) {
        return None;
    }
    let mut bytes = Vec::with_capacity(queries.as_bytes().len() + 64);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    let written = queries
        .queries()
        .iter()
        .try_for_each(|query| query.original().emit(&mut encoder));
    let rewritten = written
        .ok()
        .and_then(|()| Queries::read(&mut BinDecoder::new(&bytes), queries.len()).ok());
    // Writing out decoded names cannot fail; if it ever did, an empty
    // question section still makes a message that parses.
    rewritten.or_else(|| Queries::read(&mut BinDecoder::new(&[]), 0).ok())
}

/// Whether the `count` questions in `bytes` (as read from a query) use a
/// compression pointer anywhere in their names.
fn has_pointer(bytes: &[u8], count: usize) -> bool {
    let mut at = 0;
    for _ in 0..count {
        loop {
            let Some(&len) = bytes.get(at) else {
                return false;
            };
            if len & 0xC0 != 0 {
                // A pointer (or an extended label type, which hickory
                // refuses to read in the first place).
                return true;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        // Type and class.
        at += 4;
    }
    false
}

/// The question section exactly as a response carries it (see
/// [`rewritten_question`]), with one compression pointer to it. A trial encoding
/// must compress the same way to predict the real size.
struct RawQueries<'q>(&'q Queries);

impl EmitAndCount for RawQueries<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        let start = encoder.offset();
        let bytes = self.0.as_bytes();
        encoder.emit_vec(bytes)?;
        if matches!(encoder.name_encoding(), NameEncoding::Compressed) && !self.0.is_empty() {
            encoder.store_label_pointer(start, start + bytes.len());
        }
        Ok(self.0.len())
    }
}

/// An upper bound of the wire size of `records` without compression, or
/// `None` for record types whose size is not cheap to bound.
fn upper_bound<'r>(records: impl Iterator<Item = &'r Record>) -> Option<usize> {
    let name = |n: &Name| n.len() + 1;
    records
        .map(|r| {
            let rdata = match &r.data {
                RData::A(_) => 4,
                RData::AAAA(_) => 16,
                RData::CNAME(t) => name(&t.0),
                RData::PTR(t) => name(&t.0),
                RData::NS(t) => name(&t.0),
                RData::SRV(srv) => 6 + name(&srv.target),
                RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
                _ => return None,
            };
            Some(name(&r.name) + 10 + rdata)
        })
        .sum()
}

/// How many records of each section fit in `limit` bytes, leaving room for
/// the OPT record, and whether the answer is truncated. Only answers and the
/// authority section force TC; additional records are simply left out.
/// (hickory's encoder, when it runs out of room itself, leaves the partial
/// record's bytes in the message; sending only what fits avoids that.)
fn fit(
    queries: &Queries,
    metadata: &Metadata,
    reply: &Reply<'_>,
    limit: usize,
    with_opt: bool,
) -> (usize, usize, usize, bool) {
    let all = (
        reply.answers.len(),
        reply.authorities.len(),
        reply.additionals.len(),
        false,
    );
    let room =
        limit.saturating_sub(12 + queries.as_bytes().len() + if with_opt { OPT_LEN } else { 0 });
    let records = reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(&reply.additionals)
        .map(AsRef::as_ref);
    // Small answers always fit; do not pay for a trial encoding.
    if upper_bound(records).is_some_and(|bound| bound <= room) {
        return all;
    }
    let mut buffer = Vec::with_capacity(limit);
    let mut encoder = BinEncoder::new(&mut buffer);
    encoder.set_max_size(
        u16::try_from(limit - if with_opt { OPT_LEN } else { 0 }).unwrap_or(u16::MAX),
    );
    let header = emit_message_parts(
        metadata,
        &mut RawQueries(queries),
        &mut reply.answers.iter().map(AsRef::as_ref),
        &mut reply.authorities.iter().map(AsRef::as_ref),
        &mut reply.additionals.iter().map(AsRef::as_ref),
        None,
        None,
        &mut encoder,
    );
    let Ok(header) = header else {
        return all;
    };
    let counts = header.counts;
    if usize::from(counts.answers) < all.0 {
        (usize::from(counts.answers), 0, 0, true)
    } else if usize::from(counts.authorities) < all.1 {
        (all.0, usize::from(counts.authorities), 0, true)
    } else {
        (
            all.0,
            all.1,
            usize::from(counts.additionals).min(all.2),
            false,
        )
    }
}

async fn send<R: ResponseHandler>(
    queries: &Queries,
    mut metadata: Metadata,
    edns: Option<&Edns>,
    reply: &Reply<'_>,
    limit: usize,
    mut response_handle: R,
) -> ResponseInfo {
    let (answers, authorities, additionals, truncated) =
        fit(queries, &metadata, reply, limit, edns.is_some());
    metadata.truncation |= truncated;
    let mut builder = MessageResponseBuilder::new(queries, None);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        reply.answers[..answers].iter().map(AsRef::as_ref),
        reply.authorities[..authorities].iter().map(AsRef::as_ref),
        std::iter::empty(),
        reply.additionals[..additionals].iter().map(AsRef::as_ref),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "failed to send a DNS response");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let (info, qtype, source) = self.respond(request, response_handle).await;
        self.metrics
            .request(qtype, info.response_code, source, started.elapsed());
        info
    }
}

/// A response handler that keeps the encoded response instead of sending it.
#[derive(Clone, Debug)]
struct Capture {
    protocol: Protocol,
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Capture {
    fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            bytes: Arc::default(),
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let limit = match self.protocol {
            Protocol::Udp => response.edns().map_or(512, Edns::max_payload),
            _ => u16::MAX,
        };
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = response.destructive_emit(&mut encoder)?;
        *self.bytes.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}

/// A raw message, read.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Nothing is sent back: shorter than a header, or not a query
    /// (answering responses would reflect).
    Drop,
    /// The header reads, the rest does not: FORMERR.
    FormErr(Header),
    /// A request for the handler.
    Request(Box<Request>),
}

impl Handler {
    /// Reads one raw message as it arrived on a socket.
    pub(crate) fn parse(raw: &[u8], src: SocketAddr, protocol: Protocol) -> Parsed {
        let Ok(header) = Header::read(&mut BinDecoder::new(raw)) else {
            return Parsed::Drop;
        };
        match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(request) if request.metadata.message_type == MessageType::Response => Parsed::Drop,
            Ok(request) => Parsed::Request(Box::new(request)),
            Err(_) => Parsed::FormErr(header),
        }
    }

    /// The FORMERR answer to a message with `header` (no question: the
    /// rest did not parse), counted.
    pub(crate) async fn formerr(&self, header: &Header, protocol: Protocol) -> Option<Vec<u8>> {
        let started = Instant::now();
        let empty = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
        let mut metadata = Metadata::response_from_request(&header.metadata);
        metadata.response_code = ResponseCode::FormErr;
        let response = MessageResponseBuilder::new(&empty, None).build_no_records(metadata);
        let mut capture = Capture::new(protocol);
        capture.send_response(response).await.ok()?;
        self.count(
            None,
            ResponseCode::FormErr,
            Source::Error,
            started.elapsed(),
        );
        capture.take()
    }

    /// The encoded answer to `request` (counted like every answer).
    pub(crate) async fn answer(&self, request: &Request) -> Option<Vec<u8>> {
        let capture = Capture::new(request.protocol());
        RequestHandler::handle_request::<_, hickory_server::net::runtime::TokioTime>(
            self,
            request,
            capture.clone(),
        )
        .await;
        capture.take()
    }

    /// Answers one raw DNS message the way the server does on a socket:
    /// `None` when nothing would be sent (shorter than a header, or not a
    /// query), FORMERR when it does not parse, else the handler's response.
    /// For tests, fuzzing and benchmarks of the request path without sockets.
    pub async fn answer_raw(
        &self,
        raw: &[u8],
        src: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        if protocol == Protocol::Udp {
            let started = Instant::now();
            let mut out = Vec::new();
            let fast = {
                let mut cache = self
                    .raw_cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.answer_fast(&mut cache, raw, &mut out)
            };
            if let Fast::Answered { qtype, rcode } = fast {
                self.count(Some(qtype), rcode, Source::Cluster, started.elapsed());
                return Some(out);
            }
        }
        match Self::parse(raw, src, protocol) {
            Parsed::Drop => None,
            Parsed::FormErr(header) => self.formerr(&header, protocol).await,
            Parsed::Request(request) => self.answer(&request).await,
        }
    }
}
