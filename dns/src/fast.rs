//! The UDP fast path: pre-serialised answers, as Knot and NSD do it.
//!
//! A plain query (one question of class IN, at most an EDNS0 OPT record,
//! nothing else) is parsed in place, and its answer is looked up in a cache
//! of wire-format responses keyed by the lower-cased name, the type, the
//! class and the EDNS buffer size. Sending one is a copy: the query's id,
//! its RD/CD flags, its EDNS DO bit and its question (in the asker's case,
//! never with a compression pointer: those take the general path) are
//! written over the template. Owner names equal to the question are
//! compression pointers to it, so they come back in the asker's case; other
//! names are written out (lower-case) and later ones point at them. Address
//! and SRV sets are shuffled at send time by permuting whole records, which
//! is safe because nothing points into the answer section. Negative answers carry the SOA
//! serial of the index that serves them, patched in at send time.
//!
//! Each UDP loop owns its cache (no locks). When the index changes, the
//! entries of the Services that changed are dropped (the index keeps a
//! short log of which Services each update touched); anything the log does
//! not cover clears the cache. Everything else — other messages, forwarded
//! names, ExternalName chains — takes the general path through hickory.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};

use crate::index::{Answer, Index};

/// Entries per cache; a full cache starts over (cheap, and bounded under
/// floods of random names).
const MAX_ENTRIES: usize = 1 << 16;
/// Longest wire name (RFC 1035).
const MAX_NAME: usize = 255;
/// Key: the name, then type, class, EDNS flag and buffer size.
const KEY_MAX: usize = MAX_NAME + 7;
/// Size of the OPT record we add.
const OPT_LEN: usize = 11;
/// EDNS option codes the general path validates (RFC 5001, RFC 7871).
const NSID: u16 = 3;
const CLIENT_SUBNET: u16 = 8;
/// Offset of the question in a message.
const QUESTION: usize = 12;

/// What an answer depends on in the model, for invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dep {
    /// Nothing but the zone configuration (names too deep, names outside
    /// the `svc` and `pod` trees).
    Static,
    /// The Service with this [`service_hash`], whether it exists or not.
    Service(u64),
    /// Anything (reverse names, namespaces, the apex): dropped on every
    /// change.
    Any,
}

/// A stable hash of a Service's namespace and name (lower-case).
pub(crate) fn service_hash(namespace: &[u8], name: &[u8]) -> u64 {
    // SipHash with fixed keys: the same in every loop and every index.
    #[allow(
        deprecated,
        reason = "SipHasher's fixed keys are the point: every index and loop must agree"
    )]
    let mut hasher = std::hash::SipHasher::new();
    namespace.hash(&mut hasher);
    name.hash(&mut hasher);
    hasher.finish()
}

/// A query the fast path can answer: parsed in place.
#[derive(Debug)]
pub(crate) struct Query<'a> {
    raw: &'a [u8],
    /// Offset just past the question.
    question_end: usize,
    /// Length of the key in `key`.
    key_len: usize,
    /// Wire length of the name (with the root label).
    name_len: usize,
    key: [u8; KEY_MAX],
    qtype: u16,
    /// The UDP payload size we honour and advertise (EDNS), if any.
    edns: Option<u16>,
    /// The query's DO bit (EDNS), copied into the answer (RFC 3225).
    dnssec_ok: bool,
}

impl Query<'_> {
    fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// The lower-case question name in wire format.
    fn name_wire(&self) -> &[u8] {
        &self.key[..self.name_len]
    }

    /// The asked type.
    pub(crate) fn qtype(&self) -> RecordType {
        RecordType::from(self.qtype)
    }

    fn limit(&self) -> usize {
        self.edns
            .map_or(512, |payload| usize::from(payload) - OPT_LEN)
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Parses a standard query the fast path answers: QR clear, opcode QUERY,
/// exactly one question of class IN that is not a zone transfer, no
/// answer or authority records, and at most one well-formed EDNS0 (version
/// 0) OPT record, nothing after it. Anything else is `None` (the general
/// path decides: FORMERR, BADVERS, NOTIMP, REFUSED or a drop).
pub(crate) fn parse(raw: &[u8], max_udp_payload: u16) -> Option<Query<'_>> {
    let flags = be16(raw, 2)?;
    if flags & 0x8000 != 0 || (flags >> 11) & 0xF != 0 {
        return None;
    }
    if be16(raw, 4)? != 1 || be16(raw, 6)? != 0 || be16(raw, 8)? != 0 {
        return None;
    }
    let additional = be16(raw, 10)?;
    if additional > 1 {
        return None;
    }
    let mut key = [0u8; KEY_MAX];
    let mut at = QUESTION;
    loop {
        let len = usize::from(*raw.get(at)?);
        if len == 0 {
            break;
        }
        // Pointers and extended label types never start a question name.
        if len > 63 {
            return None;
        }
        let label = raw.get(at + 1..at + 1 + len)?;
        // Room for this label and the root.
        if at + 1 + len + 1 - QUESTION > MAX_NAME {
            return None;
        }
        let k = at - QUESTION;
        key[k] = raw[at];
        for (slot, byte) in key[k + 1..k + 1 + len].iter_mut().zip(label) {
            *slot = byte.to_ascii_lowercase();
        }
        at += 1 + len;
    }
    let name_len = at + 1 - QUESTION;
    at += 1;
    let qtype = be16(raw, at)?;
    let qclass = be16(raw, at + 2)?;
    if qclass != u16::from(DNSClass::IN)
        || matches!(
            RecordType::from(qtype),
            RecordType::AXFR | RecordType::IXFR | RecordType::OPT
        )
    {
        return None;
    }
    at += 4;
    let question_end = at;
    let mut edns = None;
    let mut dnssec_ok = false;
    if additional == 1 {
        let opt = raw.get(at..at + OPT_LEN)?;
        if opt[0] != 0 || be16(opt, 1)? != u16::from(RecordType::OPT) {
            return None;
        }
        // Extended rcode and version 0 only (others get BADVERS there).
        if opt[5] != 0 || opt[6] != 0 {
            return None;
        }
        let payload = be16(opt, 3)?;
        dnssec_ok = opt[7] & 0x80 != 0;
        let rdlen = usize::from(be16(opt, 9)?);
        at += OPT_LEN;
        let options = raw.get(at..at + rdlen)?;
        let mut o = 0;
        while o < options.len() {
            // NSID and client subnet have contents to validate (a malformed
            // one is FORMERR, RFC 7871 7.1.1): the general path reads them.
            if matches!(be16(options, o)?, NSID | CLIENT_SUBNET) {
                return None;
            }
            o += 4 + usize::from(be16(options, o + 2)?);
        }
        if o != options.len() {
            return None;
        }
        at += rdlen;
        edns = Some(payload.clamp(512, max_udp_payload.max(512)));
    }
    if at != raw.len() {
        return None;
    }
    let mut key_len = name_len;
    for byte in qtype
        .to_be_bytes()
        .into_iter()
        .chain(qclass.to_be_bytes())
        .chain([u8::from(edns.is_some())])
        .chain(edns.unwrap_or(0).to_be_bytes())
    {
        key[key_len] = byte;
        key_len += 1;
    }
    Some(Query {
        raw,
        question_end,
        key_len,
        name_len,
        key,
        qtype,
        edns,
        dnssec_ok,
    })
}

/// A response in wire format, waiting for a query's id and question.
#[derive(Debug)]
struct Template {
    bytes: Box<[u8]>,
    rcode: ResponseCode,
    /// Where the SOA serial sits, if there is one.
    serial_at: Option<usize>,
    /// Start offsets of the records to shuffle, then the end of the last.
    shuffle: Box<[usize]>,
}

#[derive(Debug)]
enum Kind {
    /// Answered from the template.
    Answer(Template),
    /// The general path answers this question (forwarded, chained).
    General,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    dep: Dep,
}

/// What the fast path did with a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    /// The response is in the output buffer.
    Answered {
        /// The asked type.
        qtype: RecordType,
        /// The response code sent.
        rcode: ResponseCode,
    },
    /// Not for the fast path: answer it the general way.
    General,
}

/// One loop's cache of pre-serialised answers.
#[derive(Default)]
pub(crate) struct AnswerCache {
    generation: u64,
    synced: bool,
    entries: HashMap<Box<[u8]>, Entry>,
    order: Vec<usize>,
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache")
            .field("generation", &self.generation)
            .field("synced", &self.synced)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl AnswerCache {
    /// Catches up with `index`: drops what the changes since the cached
    /// generation touched (everything when that is not known).
    fn follow(&mut self, index: &Index) {
        if self.generation == index.generation() && self.synced == index.synced() {
            return;
        }
        let changed = (self.synced == index.synced())
            .then(|| index.changed_since(self.generation))
            .flatten();
        match changed {
            Some(changed) => self.entries.retain(|_, entry| match entry.dep {
                Dep::Static => true,
                Dep::Service(hash) => !changed.contains(&hash),
                Dep::Any => false,
            }),
            None => self.entries.clear(),
        }
        self.generation = index.generation();
        self.synced = index.synced();
    }

    /// Answers `query` from the cache, building the entry from `index` on
    /// a miss. `general` tells whether the general path must answer
    /// (forwarded names, CNAME chains; the entry remembers it).
    pub(crate) fn answer(
        &mut self,
        index: &Index,
        query: &Query<'_>,
        out: &mut Vec<u8>,
        general: impl FnOnce(&LowerName) -> bool,
    ) -> Fast {
        self.follow(index);
        let Self { entries, order, .. } = self;
        if let Some(entry) = entries.get(query.key()) {
            return send(entry, index, query, out, order);
        }
        let Some(entry) = build(index, query, general) else {
            return Fast::General;
        };
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        let entry = entries.entry(query.key().into()).or_insert(entry);
        send(entry, index, query, out, order)
    }
}

/// The cache entry for `query`: `None` when nothing may be cached (the
/// model has not synced, a loop probe).
fn build(
    index: &Index,
    query: &Query<'_>,
    general: impl FnOnce(&LowerName) -> bool,
) -> Option<Entry> {
    let name = Name::read(&mut BinDecoder::new(query.name_wire())).ok()?;
    let qname = LowerName::new(&name);
    if general(&qname) {
        return None;
    }
    let dep = index.dependency(&qname);
    let lookup = index.lookup(&qname, query.qtype());
    let kind = match lookup {
        crate::index::Lookup::NotSynced => return None,
        crate::index::Lookup::Forward => Kind::General,
        crate::index::Lookup::Answer(answer) if answer.chase.is_some() => Kind::General,
        // With autopath, who asks decides the answer (a pod of the namespace
        // gets its search completed): not something one template can hold.
        crate::index::Lookup::Answer(answer)
            if answer.rcode == ResponseCode::NXDomain
                && index.autopath_question(&qname).is_some() =>
        {
            Kind::General
        }
        crate::index::Lookup::Answer(answer) => {
            encode(query, &answer).map_or(Kind::General, Kind::Answer)
        }
    };
    let dep = match kind {
        Kind::General => Dep::Any,
        Kind::Answer(_) => dep,
    };
    Some(Entry { kind, dep })
}

/// Answers `query` from `entry`, if it holds a template.
fn send(
    entry: &Entry,
    index: &Index,
    query: &Query<'_>,
    out: &mut Vec<u8>,
    order: &mut Vec<usize>,
) -> Fast {
    let Kind::Answer(template) = &entry.kind else {
        return Fast::General;
    };
    write(template, query, index.serial(), out, order);
    Fast::Answered {
        qtype: query.qtype(),
        rcode: template.rcode,
    }
}

/// Writes the response to `query` from `template`.
fn write(
    template: &Template,
    query: &Query<'_>,
    serial: u32,
    out: &mut Vec<u8>,
    order: &mut Vec<usize>,
) {
    let bytes = &template.bytes;
    out.clear();
    out.extend_from_slice(bytes);
    out[..2].copy_from_slice(&query.raw[..2]);
    // RD and CD come from the query.
    out[2] |= query.raw[2] & 0x01;
    out[3] |= query.raw[3] & 0x10;
    out[QUESTION..query.question_end].copy_from_slice(&query.raw[QUESTION..query.question_end]);
    if let Some(at) = template.serial_at {
        out[at..at + 4].copy_from_slice(&serial.to_be_bytes());
    }
    // The OPT record ends the template when the query had one; the high
    // byte of its flags (TTL byte 3) holds DO.
    if query.edns.is_some() && query.dnssec_ok {
        let flags = out.len() - OPT_LEN + 7;
        out[flags] |= 0x80;
    }
    let records = template.shuffle.len().saturating_sub(1);
    if records > 1 {
        order.clear();
        order.extend(0..records);
        fastrand::shuffle(order);
        let mut at = template.shuffle[0];
        for &i in order.iter() {
            let (start, end) = (template.shuffle[i], template.shuffle[i + 1]);
            out[at..at + end - start].copy_from_slice(&bytes[start..end]);
            at += end - start;
        }
    }
}

/// Lower-case labels of `name`, most specific first.
fn labels(name: &Name) -> Vec<Vec<u8>> {
    name.iter().map(<[u8]>::to_ascii_lowercase).collect()
}

/// The wire form of `labels` (with the root).
fn wire(labels: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        out.push(u8::try_from(label.len()).unwrap_or(0));
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Encodes a message the way the general path would send it over UDP.
struct Encoder<'q> {
    buf: Vec<u8>,
    /// The question name (lower-case wire).
    qname: &'q [u8],
    /// Names written at fixed places: (offset, lower-case wire from there).
    names: Vec<(usize, Vec<u8>)>,
    limit: usize,
    serial_at: Option<usize>,
}

impl Encoder<'_> {
    /// Writes `name`: a pointer to the question when it is the question
    /// (the asker's case comes back), else its labels up to the longest
    /// suffix already written at a fixed place. Names written at `fixed`
    /// places may be pointed at later.
    fn name(&mut self, name: &Name, compress: bool, fixed: bool) {
        let labels = labels(name);
        if compress && wire(&labels) == self.qname {
            self.buf.extend_from_slice(&[0xC0, 0x0C]);
            return;
        }
        for i in 0..=labels.len() {
            let suffix = wire(&labels[i..]);
            let target = if !compress || suffix.len() == 1 {
                None
            } else {
                self.names
                    .iter()
                    .find(|(_, n)| *n == suffix)
                    .map(|(at, _)| *at)
            };
            if let Some(target) = target.and_then(|t| u16::try_from(t).ok())
                && target < 0x3FFF
            {
                self.buf.extend_from_slice(&(0xC000 | target).to_be_bytes());
                return;
            }
            if i == labels.len() {
                self.buf.push(0);
                return;
            }
            if fixed && suffix.len() > 1 {
                self.names.push((self.buf.len(), suffix));
            }
            self.buf.push(u8::try_from(labels[i].len()).unwrap_or(0));
            self.buf.extend_from_slice(&labels[i]);
        }
    }

    /// Appends `record`; `false` (nothing appended) when it does not fit
    /// or its type is not one the index serves.
    fn record(&mut self, record: &Record, fixed: bool) -> Option<bool> {
        let start = self.buf.len();
        let names = self.names.len();
        self.name(&record.name, true, fixed);
        self.buf
            .extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        self.buf
            .extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
        self.buf.extend_from_slice(&record.ttl.to_be_bytes());
        let rdlen_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        let mut serial_at = None;
        match &record.data {
            RData::A(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::AAAA(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::CNAME(t) => self.name(&t.0, true, fixed),
            RData::PTR(t) => self.name(&t.0, true, fixed),
            RData::NS(t) => self.name(&t.0, true, fixed),
            // RFC 2782: no compression of the target.
            RData::SRV(srv) => {
                for v in [srv.priority, srv.weight, srv.port] {
                    self.buf.extend_from_slice(&v.to_be_bytes());
                }
                self.name(&srv.target, false, false);
            }
            RData::SOA(soa) => {
                self.name(&soa.mname, true, fixed);
                self.name(&soa.rname, true, fixed);
                serial_at = Some(self.buf.len());
                self.buf.extend_from_slice(&soa.serial.to_be_bytes());
                for v in [soa.refresh, soa.retry, soa.expire] {
                    self.buf.extend_from_slice(&v.to_be_bytes());
                }
                self.buf.extend_from_slice(&soa.minimum.to_be_bytes());
            }
            RData::TXT(txt) => {
                for s in &txt.txt_data {
                    self.buf.push(u8::try_from(s.len()).ok()?);
                    self.buf.extend_from_slice(s);
                }
            }
            _ => return None,
        }
        let rdlen = u16::try_from(self.buf.len() - rdlen_at - 2).ok()?;
        self.buf[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        if self.buf.len() > self.limit {
            self.buf.truncate(start);
            self.names.truncate(names);
            return Some(false);
        }
        if self.serial_at.is_none() {
            self.serial_at = serial_at;
        }
        Some(true)
    }
}

/// The template of the answer to `query`; `None` for record types the
/// fast path does not encode.
fn encode(query: &Query<'_>, answer: &Answer<'_>) -> Option<Template> {
    let mut e = Encoder {
        buf: Vec::with_capacity(512),
        qname: query.name_wire(),
        names: Vec::new(),
        limit: query.limit(),
        serial_at: None,
    };
    e.buf.extend_from_slice(&[0; QUESTION]);
    e.buf
        .extend_from_slice(&query.raw[QUESTION..query.question_end]);
    let qtype = query.qtype();
    let shuffled = matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::SRV)
        && answer.answers.len() > 1;
    let mut truncated = false;
    let mut counts = [0u16; 3];
    let mut starts = Vec::new();
    for record in &answer.answers {
        starts.push(e.buf.len());
        if !e.record(record, !shuffled)? {
            starts.pop();
            truncated = true;
            break;
        }
        counts[0] += 1;
    }
    if shuffled {
        starts.push(e.buf.len());
    } else {
        starts.clear();
    }
    if !truncated {
        for record in &answer.authorities {
            if !e.record(record, true)? {
                truncated = true;
                break;
            }
            counts[1] += 1;
        }
    }
    if !truncated {
        for record in &answer.additionals {
            if !e.record(record, true)? {
                break;
            }
            counts[2] += 1;
        }
    }
    let mut additional = counts[2];
    if let Some(payload) = query.edns {
        e.buf.push(0);
        e.buf
            .extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
        e.buf.extend_from_slice(&payload.to_be_bytes());
        e.buf.extend_from_slice(&[0; 6]);
        additional += 1;
    }
    let rcode = answer.rcode;
    let mut header = [0u8; QUESTION];
    // QR, opcode QUERY, AA, TC; RA and the rcode.
    header[2] = 0x80 | 0x04 | if truncated { 0x02 } else { 0 };
    header[3] = 0x80 | u8::try_from(u16::from(rcode) & 0x0F).unwrap_or(0);
    header[4..6].copy_from_slice(&1u16.to_be_bytes());
    header[6..8].copy_from_slice(&counts[0].to_be_bytes());
    header[8..10].copy_from_slice(&counts[1].to_be_bytes());
    header[10..12].copy_from_slice(&additional.to_be_bytes());
    e.buf[..QUESTION].copy_from_slice(&header);
    Some(Template {
        bytes: e.buf.into_boxed_slice(),
        rcode,
        serial_at: e.serial_at,
        shuffle: starts.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `www.Example.` A IN, id 0x1234, RD, with an OPT record when `edns`.
    fn query(edns: Option<(u16, u8)>) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03www\x07Example\x00\x00\x01\x00\x01");
        if let Some((payload, version)) = edns {
            q[11] = 1;
            q.push(0);
            q.extend_from_slice(&41u16.to_be_bytes());
            q.extend_from_slice(&payload.to_be_bytes());
            q.extend_from_slice(&[0, version, 0, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn plain_queries_parse_with_a_lower_case_key() {
        let raw = query(None);
        let plain = parse(&raw, 1232).expect("parses");
        assert_eq!(plain.name_wire(), b"\x03www\x07example\x00");
        assert_eq!(plain.qtype(), RecordType::A);
        assert_eq!(plain.edns, None);
        assert_eq!(plain.limit(), 512);
        assert_eq!(plain.question_end, raw.len());
        for (payload, honoured) in [(4096, 1232), (1232, 1232), (1000, 1000), (100, 512)] {
            let raw = query(Some((payload, 0)));
            let with_edns = parse(&raw, 1232).expect("parses");
            assert_eq!(with_edns.edns, Some(honoured), "{payload}");
            assert_eq!(with_edns.limit(), usize::from(honoured) - OPT_LEN);
        }
        // Different buffer sizes are different keys; different case is not.
        let small = query(Some((1232, 0)));
        let big = query(Some((4096, 0)));
        let plain = query(None);
        let mut upper = query(Some((1232, 0)));
        upper[13..16].copy_from_slice(b"WwW");
        let key = |raw: &[u8]| parse(raw, 1232).unwrap().key().to_vec();
        assert_eq!(key(&small), key(&big));
        assert_ne!(key(&small), key(&plain));
        assert_eq!(key(&small), key(&upper));
    }

    #[test]
    fn anything_unusual_takes_the_general_path() {
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let base = query(Some((1232, 0)));
        let edits: Vec<(&str, Edit)> = vec![
            ("a response", Box::new(|q| q[2] |= 0x80)),
            ("opcode NOTIFY", Box::new(|q| q[2] |= 4 << 3)),
            ("two questions", Box::new(|q| q[5] = 2)),
            ("an answer record", Box::new(|q| q[7] = 1)),
            ("an authority record", Box::new(|q| q[9] = 1)),
            ("two additional records", Box::new(|q| q[11] = 2)),
            ("a pointer in the name", Box::new(|q| q[12] = 0xC0)),
            ("a trailing byte", Box::new(|q| q.push(0))),
            ("a truncated OPT", Box::new(|q| q.truncate(q.len() - 1))),
            (
                "EDNS version 1",
                Box::new(|q| {
                    let n = q.len();
                    q[n - 5] = 1;
                }),
            ),
            ("class CH", Box::new(|q| q[28] = 3)),
            (
                "AXFR",
                Box::new(|q| {
                    q[25] = 0;
                    q[26] = 252;
                }),
            ),
            ("an OPT that is not root", Box::new(|q| q[29] = 1)),
            (
                "a client subnet option (validated there)",
                Box::new(|q| {
                    let n = q.len();
                    q[n - 1] = 4;
                    q.extend_from_slice(&[0, 8, 0, 0]);
                }),
            ),
            (
                "an option longer than the OPT",
                Box::new(|q| {
                    let n = q.len();
                    q[n - 1] = 4;
                    q.extend_from_slice(&[0, 10, 0, 9]);
                }),
            ),
        ];
        assert!(parse(&base, 1232).is_some());
        for (what, edit) in edits {
            let mut q = base.clone();
            edit(&mut q);
            assert!(parse(&q, 1232).is_none(), "{what}");
        }
        for len in 0..base.len() {
            assert!(parse(&base[..len], 1232).is_none(), "{len} bytes");
        }
        // A name of 255 bytes parses; one byte more does not.
        let long = |labels: usize, last: usize| {
            let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for _ in 0..labels {
                q.push(63);
                q.extend_from_slice(&[b'a'; 63]);
            }
            q.push(u8::try_from(last).unwrap());
            q.extend(std::iter::repeat_n(b'b', last));
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            q
        };
        assert!(parse(&long(3, 61), 1232).is_some());
        assert!(parse(&long(3, 62), 1232).is_none());
    }

    #[test]
    fn service_hashes_are_stable_and_distinct() {
        assert_eq!(service_hash(b"ns", b"web"), service_hash(b"ns", b"web"));
        assert_ne!(service_hash(b"ns", b"web"), service_hash(b"nsw", b"eb"));
        assert_ne!(service_hash(b"a", b"b"), service_hash(b"b", b"a"));
    }
}
