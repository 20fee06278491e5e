//! A guard in front of hyper's HTTP/1.1 parser against request smuggling.
//!
//! hyper frames requests safely but forgives what a front proxy should
//! refuse: with both `Content-Length` and `Transfer-Encoding` it drops the
//! length and closes the connection after the response; it accepts repeated
//! identical `Content-Length`s, `Transfer-Encoding: gzip, chunked` or two
//! `Transfer-Encoding: chunked` lines, and lines ended by a bare LF. Other
//! servers behind other proxies read such requests differently, which is what
//! request smuggling feeds on, so the gateway refuses them outright (like
//! nginx): 400, connection closed, nothing sent upstream.
//!
//! [`FramingGuard`] wraps an HTTP/1.1 client connection and follows the
//! framing of its requests as the bytes go by (heads; bodies by
//! `Content-Length` or chunked; upgrades). The headers hyper would hide are
//! visible there. When a head is ambiguous, the guard cuts the stream at the
//! line that showed it, replacing that line's LF by a NUL, and reads nothing
//! more but a blank line (hyper parses a head that came in several reads
//! again only once its end arrives): hyper's parser then refuses the head
//! with its 400 and closes the connection. Bytes of the head are never held back, so hyper's own limits
//! and timeouts apply unchanged.
//!
//! Refused, in a request head:
//! - `Content-Length` together with `Transfer-Encoding`;
//! - more than one `Content-Length` (even equal ones), or one that is not
//!   plain digits;
//! - more than one `Transfer-Encoding`, one whose value is not exactly
//!   `chunked`, or any in HTTP/1.0;
//! - obsolete line folding (a line starting with a space or tab);
//! - a line ended by a bare LF, a CR inside a line, NUL and other control
//!   characters (besides tab).
//!
//! Where the guard cannot follow the framing with certainty (a head larger
//! than the header limit, a malformed chunk, bytes sent after an upgrade
//! request before its answer, a protocol other than HTTP/1.x) it stops
//! judging that connection and lets hyper's parser, which refuses or
//! neutralises all of the above anyway, decide alone.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` and `Transfer-Encoding` in one request.
    LengthAndChunked,
    /// More than one `Content-Length`.
    SeveralLengths,
    /// A `Content-Length` that is not a plain decimal number.
    BadLength,
    /// More than one `Transfer-Encoding`.
    SeveralEncodings,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    NotChunked,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    EncodingInHttp10,
    /// Obsolete line folding.
    ObsFold,
    /// A line ended by LF alone.
    BareLf,
    /// A CR inside a line, NUL, or another control character.
    ControlCharacter,
}

impl Refusal {
    /// A short name, for the metrics and the access log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => "content-length-and-transfer-encoding",
            Refusal::SeveralLengths => "several-content-lengths",
            Refusal::BadLength => "bad-content-length",
            Refusal::SeveralEncodings => "several-transfer-encodings",
            Refusal::NotChunked => "transfer-encoding-not-chunked",
            Refusal::EncodingInHttp10 => "transfer-encoding-in-http10",
            Refusal::ObsFold => "obs-fold",
            Refusal::BareLf => "bare-lf",
            Refusal::ControlCharacter => "control-character",
        }
    }
}

/// Where the framing of the byte stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In a request head (or before one).
    Head,
    /// In a `Content-Length` body, with this many bytes to go.
    Body(u64),
    /// In a chunk-size line.
    ChunkSize,
    /// In chunk data, with this many bytes to go.
    ChunkData(u64),
    /// Expecting the CR after chunk data.
    ChunkCr,
    /// Expecting the LF after chunk data.
    ChunkLf,
    /// In the trailer section after the last chunk.
    Trailers,
    /// After request number `n` (counting from 1), which asked to switch
    /// protocols: waiting for its answer.
    Upgrade(u64),
    /// Not judging any more.
    Pass,
    /// A head was refused; nothing more is read.
    Refused,
}

/// What the current head says about framing.
#[derive(Debug, Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts about one head, set line by line"
)]
struct Head {
    bytes: usize,
    request_line: bool,
    http10: bool,
    upgrade: bool,
    lengths: u32,
    length: Option<u64>,
    encodings: u32,
    chunked: bool,
}

/// What [`Scanner::feed`] found in a slice of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to refuse.
    Fine,
    /// Refuse the head whose line ends (with LF) at this index of the slice.
    Refuse {
        /// Index of the LF.
        at: usize,
        /// Why.
        reason: Refusal,
    },
}

/// Follows the framing of a client's HTTP/1.1 byte stream.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// The unfinished line (head, chunk size or trailer) from earlier reads.
    line: Vec<u8>,
    head: Head,
    max_head: usize,
    /// Complete heads seen and not refused.
    heads: u64,
}

/// Longest chunk-size line followed; longer ones stop the guard (hyper
/// limits chunk extensions itself).
const MAX_CHUNK_LINE: usize = 4096;

impl Scanner {
    /// A scanner for a new connection; heads over `max_head` bytes are left
    /// to hyper (which answers 431).
    pub(crate) fn new(max_head: usize) -> Self {
        Scanner {
            state: State::Head,
            line: Vec::new(),
            head: Head::default(),
            max_head,
            heads: 0,
        }
    }

    /// Whether the scanner still judges the stream: it has not left it to
    /// hyper alone and is not waiting for the answer to an upgrade request.
    #[allow(
        dead_code,
        reason = "read by the fuzz target (ingress/fuzz), which builds this file on its own"
    )]
    pub(crate) fn judging(&self) -> bool {
        !matches!(self.state, State::Pass | State::Upgrade(_))
    }

    /// How many complete heads were let through.
    #[allow(
        dead_code,
        reason = "read by the fuzz target (ingress/fuzz), which builds this file on its own"
    )]
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Pass | State::Refused => return Verdict::Fine,
                State::Upgrade(_) => {
                    // Bytes sent before the answer to an upgrade request:
                    // tunnel data or a pipelined request, no way to know.
                    self.state = State::Pass;
                    return Verdict::Fine;
                }
                State::Body(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += take;
                    let left = left - take as u64;
                    if left == 0 {
                        self.end_of_message();
                    } else {
                        self.state = State::Body(left);
                    }
                }
                State::ChunkData(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::ChunkCr
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkCr | State::ChunkLf => {
                    let expected = if self.state == State::ChunkCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if bytes[at] != expected {
                        self.state = State::Pass;
                        return Verdict::Fine;
                    }
                    at += 1;
                    self.state = if expected == b'\r' {
                        State::ChunkLf
                    } else {
                        State::ChunkSize
                    };
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    let rest = &bytes[at..];
                    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                        self.partial_line(rest);
                        return Verdict::Fine;
                    };
                    let end = at + lf;
                    let verdict = if self.line.is_empty() {
                        self.line_ended(&bytes[at..end])
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&bytes[at..end]);
                        let verdict = self.line_ended(&line);
                        line.clear();
                        self.line = line;
                        verdict
                    };
                    if let Some(reason) = verdict {
                        self.state = State::Refused;
                        return Verdict::Refuse { at: end, reason };
                    }
                    at = end + 1;
                }
            }
        }
        Verdict::Fine
    }

    /// Bytes of a line whose end has not come yet.
    fn partial_line(&mut self, bytes: &[u8]) {
        let (used, limit) = match self.state {
            State::ChunkSize => (0, MAX_CHUNK_LINE),
            State::Head => (self.head.bytes, self.max_head),
            _ => (0, self.max_head),
        };
        if used + self.line.len() + bytes.len() > limit {
            self.state = State::Pass;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// A whole line (without its LF) in the current state.
    fn line_ended(&mut self, line: &[u8]) -> Option<Refusal> {
        match self.state {
            State::Head => self.head_line(line),
            State::ChunkSize => {
                self.chunk_size_line(line);
                None
            }
            State::Trailers => {
                match line {
                    b"\r" => self.end_of_message(),
                    [body @ .., b'\r'] if !body.iter().any(|&b| is_control(b)) => {}
                    _ => self.state = State::Pass,
                }
                None
            }
            _ => None,
        }
    }

    fn head_line(&mut self, line: &[u8]) -> Option<Refusal> {
        self.head.bytes += line.len() + 1;
        if self.head.bytes > self.max_head {
            self.state = State::Pass;
            return None;
        }
        let Some((&b'\r', line)) = line.split_last() else {
            if line.is_empty() && !self.head.request_line {
                // An empty line before the request line is ignored, as
                // RFC 9112 §2.2 allows (and hyper does).
                self.head.bytes = 0;
                return None;
            }
            return Some(Refusal::BareLf);
        };
        if line.iter().any(|&b| is_control(b)) {
            return Some(Refusal::ControlCharacter);
        }
        if !self.head.request_line {
            if line.is_empty() {
                self.head.bytes = 0;
                return None;
            }
            self.head.request_line = true;
            match line.rsplit(|&b| b == b' ').next() {
                Some(b"HTTP/1.1") => {}
                Some(b"HTTP/1.0") => self.head.http10 = true,
                // Not HTTP/1.x (or malformed): hyper decides.
                _ => self.state = State::Pass,
            }
            if line.starts_with(b"CONNECT ") {
                self.head.upgrade = true;
            }
            return None;
        }
        if line.is_empty() {
            return self.end_of_head();
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Some(Refusal::ObsFold);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // Not a header line: hyper refuses it.
            return None;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            self.head.lengths += 1;
            self.head.length = parse_length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.encodings += 1;
            self.head.chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") && !self.head.http10 {
            self.head.upgrade = true;
        }
        None
    }

    /// The head is complete: judge it and follow its body.
    fn end_of_head(&mut self) -> Option<Refusal> {
        let head = &self.head;
        let refusal = if head.encodings > 0 && head.lengths > 0 {
            Some(Refusal::LengthAndChunked)
        } else if head.lengths > 1 {
            Some(Refusal::SeveralLengths)
        } else if head.lengths == 1 && head.length.is_none() {
            Some(Refusal::BadLength)
        } else if head.encodings > 1 {
            Some(Refusal::SeveralEncodings)
        } else if head.encodings == 1 && head.http10 {
            Some(Refusal::EncodingInHttp10)
        } else if head.encodings == 1 && !head.chunked {
            Some(Refusal::NotChunked)
        } else {
            None
        };
        if refusal.is_some() {
            return refusal;
        }
        self.heads += 1;
        if head.chunked {
            self.state = State::ChunkSize;
        } else {
            match head.length {
                Some(n) if n > 0 => self.state = State::Body(n),
                _ => self.end_of_message(),
            }
        }
        None
    }

    fn chunk_size_line(&mut self, line: &[u8]) {
        let Some((&b'\r', line)) = line.split_last() else {
            self.state = State::Pass;
            return;
        };
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let rest = &line[digits..];
        let size = std::str::from_utf8(&line[..digits])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        let well_formed = digits > 0
            && digits <= 16
            && !line.contains(&b'\r')
            && (rest.is_empty() || matches!(rest[0], b' ' | b'\t' | b';'));
        match size {
            Some(0) if well_formed => self.state = State::Trailers,
            Some(n) if well_formed => self.state = State::ChunkData(n),
            _ => self.state = State::Pass,
        }
    }

    /// The request's body is over.
    fn end_of_message(&mut self) {
        self.state = if self.head.upgrade {
            State::Upgrade(self.heads)
        } else {
            State::Head
        };
        self.head = Head::default();
    }
}

fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The answers given on a connection, which the guard waits for after a
/// request that asked to switch protocols: after a 101 the stream is a
/// tunnel, otherwise HTTP/1.1 goes on.
#[derive(Debug, Default)]
pub struct Answers {
    answered: AtomicU64,
    upgraded: AtomicBool,
    waiting: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Answers {
    /// Records that a request on the connection was answered.
    pub fn answered(&self, switching_protocols: bool) {
        if switching_protocols {
            self.upgraded.store(true, Ordering::Release);
        }
        self.answered.fetch_add(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire)
            && let Some(waker) = self.waker.lock().ok().and_then(|mut w| w.take())
        {
            waker.wake();
        }
    }

    /// Whether request number `n` switched protocols, once answered.
    fn poll_answer(&self, n: u64, cx: &Context<'_>) -> Poll<bool> {
        if self.answered.load(Ordering::Acquire) < n {
            if let Ok(mut w) = self.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            self.waiting.store(true, Ordering::Release);
            if self.answered.load(Ordering::Acquire) < n {
                return Poll::Pending;
            }
        }
        self.waiting.store(false, Ordering::Release);
        Poll::Ready(self.upgraded.load(Ordering::Acquire))
    }
}

/// An HTTP/1.1 client stream with the smuggling guard; see the module docs.
#[derive(Debug)]
pub struct FramingGuard<T, F> {
    inner: T,
    scanner: Scanner,
    answers: std::sync::Arc<Answers>,
    on_refusal: Option<F>,
    /// Whether the blank line after a refused head was given to hyper.
    ended: bool,
}

/// What a refused stream ends with: a blank line, so that hyper parses the
/// cut head and answers 400 even when the head came in several reads
/// (hyper parses a partial head again only when the end of a head arrives;
/// without one it would close the connection without an answer).
const END_OF_REFUSED_HEAD: &[u8] = b"\r\n\r\n";

impl<T, F: FnOnce(Refusal)> FramingGuard<T, F> {
    /// Guards `inner`: heads longer than `max_head` are left to hyper;
    /// `answers` tells how upgrade requests were answered; `on_refusal` is
    /// called when a head is refused.
    pub fn new(inner: T, max_head: usize, answers: std::sync::Arc<Answers>, on_refusal: F) -> Self {
        FramingGuard {
            inner,
            scanner: Scanner::new(max_head),
            answers,
            on_refusal: Some(on_refusal),
            ended: false,
        }
    }
}

impl<T: AsyncRead + Unpin, F: FnOnce(Refusal) + Unpin> AsyncRead for FramingGuard<T, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.scanner.state {
            State::Refused => {
                if !this.ended {
                    this.ended = true;
                    let n = END_OF_REFUSED_HEAD.len().min(buf.remaining());
                    buf.put_slice(&END_OF_REFUSED_HEAD[..n]);
                }
                return Poll::Ready(Ok(()));
            }
            State::Upgrade(n) => match this.answers.poll_answer(n, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => this.scanner.state = State::Pass,
                Poll::Ready(false) => this.scanner.state = State::Head,
            },
            _ => {}
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.scanner.state == State::Pass {
            return Poll::Ready(Ok(()));
        }
        let new = &mut buf.filled_mut()[before..];
        if let Verdict::Refuse { at, reason } = this.scanner.feed(new) {
            new[at] = 0;
            buf.set_filled(before + at + 1);
            if let Some(f) = this.on_refusal.take() {
                f(reason);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin, F: Unpin> AsyncWrite for FramingGuard<T, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` split at `cuts`; returns the refusal and the index of
    /// its LF in the whole stream.
    fn scan(stream: &[u8], cuts: &[usize]) -> Option<(usize, Refusal)> {
        let mut scanner = Scanner::new(1024);
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            if let Verdict::Refuse { at, reason } = scanner.feed(&stream[start..end]) {
                return Some((start + at, reason));
            }
            start = end;
        }
        None
    }

    /// The verdict, checked to be the same however the stream is split in
    /// two or three reads.
    fn verdict(stream: &[u8]) -> Option<Refusal> {
        let whole = scan(stream, &[]);
        for i in 0..=stream.len() {
            assert_eq!(scan(stream, &[i]), whole, "split at {i}");
            for j in i..=stream.len().min(i + 7) {
                assert_eq!(scan(stream, &[i, j]), whole, "split at {i} and {j}");
            }
        }
        if let Some((at, _)) = whole {
            assert_eq!(stream[at], b'\n', "refused at a LF");
        }
        whole.map(|(_, r)| r)
    }

    const OK_GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn well_formed_requests_pass() {
        for stream in [
            OK_GET.to_vec(),
            b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab\ncdGET / HTTP/1.1\r\n\r\n"
                .to_vec(),
            b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n3;x=y\r\na\nb\r\n0\r\nT: 1\r\n\r\n"
                .to_vec(),
            b"GET / HTTP/1.0\r\nContent-Length: 0\r\nX: a\tb\r\n\r\n".to_vec(),
            b"POST / HTTP/1.1\r\ncontent-length:  7 \r\n\r\n\n\n\0\r\n\x01 GET / HTTP/1.1\r\n\r\n"
                .to_vec(),
        ] {
            assert_eq!(verdict(&stream), None, "{}", String::from_utf8_lossy(&stream));
        }
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        let cases: &[(&[u8], Refusal)] = &[
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::LengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                Refusal::LengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                Refusal::SeveralLengths,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
                Refusal::BadLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                Refusal::BadLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::SeveralEncodings,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Refusal::NotChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                Refusal::NotChunked,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::EncodingInHttp10,
            ),
            (
                b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
                Refusal::ObsFold,
            ),
            (b"GET / HTTP/1.1\nHost: x\n\n", Refusal::BareLf),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", Refusal::BareLf),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\n", Refusal::BareLf),
            (b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", Refusal::ControlCharacter),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", Refusal::ControlCharacter),
            (b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", Refusal::ControlCharacter),
            (b"GET /\x0b HTTP/1.1\r\n\r\n", Refusal::ControlCharacter),
        ];
        for (stream, reason) in cases {
            assert_eq!(
                verdict(stream),
                Some(*reason),
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn later_requests_are_judged_after_bodies() {
        let bad = b"GET /s HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        for first in [
            OK_GET.to_vec(),
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              1e\r\nTransfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ] {
            // The first request's body looks like a bad head, but is a body.
            assert_eq!(verdict(&first), None);
            let mut stream = first.clone();
            stream.extend_from_slice(bad);
            assert_eq!(verdict(&stream), Some(Refusal::SeveralLengths));
        }
    }

    #[test]
    fn what_cannot_be_followed_is_left_to_hyper() {
        // A malformed chunk: the guard stops judging.
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(verdict(&stream), None);
        // An oversize head.
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\nA: b\n\n", "a".repeat(2000));
        assert_eq!(verdict(big.as_bytes()), None);
        // HTTP/2 prior knowledge.
        assert_eq!(
            verdict(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"),
            None
        );
        // Bytes after an upgrade request before its answer.
        let mut stream =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec();
        stream.extend_from_slice(b"\x81\x85\n\n\0");
        assert_eq!(verdict(&stream), None);
    }

    /// A client whose bytes come in the given reads; what is written to it
    /// is kept.
    struct Reads {
        reads: std::collections::VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl AsyncRead for Reads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(read) = self.reads.pop_front() {
                buf.put_slice(&read);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Reads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What hyper answers, behind the guard, to a stream in these reads.
    fn answer(reads: &[&[u8]]) -> String {
        let client = Reads {
            reads: reads.iter().map(|r| r.to_vec()).collect(),
            written: Vec::new(),
        };
        let mut guard = FramingGuard::new(client, 1024, std::sync::Arc::default(), |_: Refusal| {});
        let service = hyper::service::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok\n")))
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let io = hyper_util::rt::TokioIo::new(&mut guard);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        String::from_utf8_lossy(&guard.inner.written).into_owned()
    }

    #[test]
    fn a_refused_head_gets_400_however_it_was_read() {
        let stream: &[u8] =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\nX: y\r\n\r\n";
        for cut in 1..stream.len() {
            let answer = answer(&[&stream[..cut], &stream[cut..]]);
            let statuses: Vec<&str> = answer
                .lines()
                .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
                .collect();
            assert_eq!(statuses, ["200 OK", "400 Bad Request"], "cut at {cut}");
        }
        // In three reads, the bad line's LF alone in the last one.
        let at = stream.windows(3).position(|w| w == b"x\nX").unwrap() + 1;
        let answer = answer(&[&stream[..40], &stream[40..at], &stream[at..]]);
        assert!(answer.ends_with("\r\n\r\n") && answer.contains("400 Bad Request"));
    }

    #[test]
    fn upgrade_waits_for_the_answer() {
        let mut scanner = Scanner::new(1024);
        let head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(scanner.feed(head), Verdict::Fine);
        assert_eq!(scanner.state, State::Upgrade(1));
        let answers = Answers::default();
        let waker = Waker::noop();
        let cx = Context::from_waker(waker);
        assert_eq!(answers.poll_answer(1, &cx), Poll::Pending);
        answers.answered(false);
        assert_eq!(answers.poll_answer(1, &cx), Poll::Ready(false));
        // Refused upgrade: HTTP/1.1 goes on and is judged.
        scanner.state = State::Head;
        assert!(matches!(
            scanner.feed(b"GET / HTTP/1.1\nHost: x\n\n"),
            Verdict::Refuse {
                reason: Refusal::BareLf,
                ..
            }
        ));
        let answers = Answers::default();
        answers.answered(true);
        assert_eq!(answers.poll_answer(1, &cx), Poll::Ready(true));
    }
}
