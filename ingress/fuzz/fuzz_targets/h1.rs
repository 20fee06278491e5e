//! Fuzzes what reaches the HTTP/1.1 framing guard (`ingress/src/framing.rs`)
//! from a client socket: a byte stream, cut into reads of random sizes,
//! through the guard into hyper's HTTP/1.1 server set up as the gateway's
//! (the same header limits, upgrades on), with a service that reads every
//! body and answers 200. The first input byte seeds the read sizes; the rest
//! is what the client sends; then it waits (a paused clock ends the
//! connection once nothing more can happen). Checked:
//! - nothing panics;
//! - however the stream is cut, the same requests reach the service (the
//!   same method, target, body), as when it arrives in one read;
//! - the guard refuses a head only where a scanner fed the whole stream at
//!   once refuses it, for the same reason; while that scanner judges the
//!   whole stream, no request with ambiguous framing reaches the service
//!   (Content-Length with Transfer-Encoding, two Content-Lengths, a
//!   Transfer-Encoding other than one `chunked`, or any in HTTP/1.0);
//! - a refused head and what follows never reach the service, and the last
//!   answer on the connection is then a 4xx (unless hyper closed the
//!   connection before: asked to, or after a body it could not read).

#![no_main]

#[path = "../../src/framing.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the gateway's module, built alone: not everything is used here"
)]
mod framing;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use framing::{Answers, FramingGuard, Refusal, Scanner, Verdict};
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Head limits, smaller than the gateway's defaults (100 headers, 64 KiB)
/// so that inputs reach them.
const MAX_HEADERS: usize = 16;
const MAX_HEAD: usize = 1024;

/// A client socket: reads come in the given sizes, then nothing more;
/// writes are kept.
struct Client {
    reads: VecDeque<Vec<u8>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // After its last byte the client waits, its side open, as real
        // clients do (hyper drops pipelined requests after a half-close).
        let Some(front) = self.reads.front_mut() else {
            return Poll::Pending;
        };
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        front.drain(..n);
        if front.is_empty() {
            self.reads.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What reached the service of one request.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    /// The body, or `None` when it could not be read to its end.
    body: Option<Vec<u8>>,
    /// Why its framing is ambiguous, if it is.
    ambiguous: Option<&'static str>,
    /// Whether the connection ends after it (HTTP/1.0 without keep-alive,
    /// `Connection: close`).
    closes: bool,
}

fn closes<B>(request: &Request<B>) -> bool {
    let has = |token: &str| {
        request
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                })
            })
    };
    if request.version() == hyper::Version::HTTP_10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

fn ambiguity<B>(request: &Request<B>) -> Option<&'static str> {
    let headers = request.headers();
    let lengths = headers.get_all(hyper::header::CONTENT_LENGTH).iter().count();
    let encodings: Vec<_> = headers
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if lengths > 0 && !encodings.is_empty() {
        Some("content-length with transfer-encoding")
    } else if lengths > 1 {
        Some("two content-lengths")
    } else if encodings.len() > 1 {
        Some("two transfer-encodings")
    } else if encodings
        .first()
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        Some("transfer-encoding not chunked")
    } else if !encodings.is_empty() && request.version() == hyper::Version::HTTP_10 {
        Some("transfer-encoding in HTTP/1.0")
    } else {
        None
    }
}

/// What one connection did.
#[derive(Debug)]
struct Outcome {
    seen: Vec<Seen>,
    refusal: Option<Refusal>,
    written: Vec<u8>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // A paused clock: once the connection only waits for the client,
        // time jumps ahead and the timeout below ends it at once.
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

/// Serves `reads` as one client connection.
fn serve(reads: VecDeque<Vec<u8>>) -> Outcome {
    let written = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refusal = Arc::new(Mutex::new(None));
    let answers = Arc::new(Answers::default());
    let client = Client {
        reads,
        written: written.clone(),
    };
    let refused = refusal.clone();
    let io = FramingGuard::new(client, MAX_HEAD, answers.clone(), move |r: Refusal| {
        *refused.lock().unwrap() = Some(r);
    });
    let log = seen.clone();
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let (log, answers) = (log.clone(), answers.clone());
        async move {
            let method = request.method().to_string();
            let target = request.uri().to_string();
            let ambiguous = ambiguity(&request);
            let closes = closes(&request);
            let body = request
                .into_body()
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes().to_vec());
            log.lock().unwrap().push(Seen {
                method,
                target,
                body,
                ambiguous,
                closes,
            });
            answers.answered(false);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD)
        .header_read_timeout(None);
    runtime().block_on(async {
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let _ = tokio::time::timeout(Duration::from_secs(3600), conn).await;
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let refusal = *refusal.lock().unwrap();
    let written = std::mem::take(&mut *written.lock().unwrap());
    Outcome {
        seen,
        refusal,
        written,
    }
}

/// The status code of the last response written.
fn last_status(written: &[u8]) -> Option<u16> {
    let at = written
        .windows(9)
        .rposition(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")?;
    std::str::from_utf8(written.get(at + 9..at + 12)?)
        .ok()?
        .parse()
        .ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // Read sizes from 1 to 64 bytes (xorshift; never 0).
    let mut state = u32::from(seed) | 0x100;
    let mut reads = VecDeque::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let take = (1 + state as usize % 64).min(rest.len());
        reads.push_back(rest[..take].to_vec());
        rest = &rest[take..];
    }
    let cut = serve(reads);
    let whole = serve(VecDeque::from([stream.to_vec()]));

    // The reference: a scanner fed the whole stream at once. When it stops
    // judging (an upgrade request, an oversized head, not HTTP/1.x), the
    // guard's judgement may depend on where reads end, by design.
    let mut scanner = Scanner::new(MAX_HEAD);
    let reference = match scanner.feed(stream) {
        Verdict::Refuse { reason, .. } => Some(reason),
        Verdict::Fine => None,
    };
    let judging = scanner.judging();
    if judging {
        assert_eq!(cut.seen, whole.seen, "the same requests however the stream is cut");
    }
    for outcome in [&cut, &whole] {
        if let Some(refusal) = outcome.refusal {
            if judging {
                assert_eq!(Some(refusal), reference, "refused where the reference refuses");
                // The refused head and what follows never reach the service.
                assert!(
                    outcome.seen.len() as u64 <= scanner.heads(),
                    "{} requests served, {} heads let through: {outcome:?}",
                    outcome.seen.len(),
                    scanner.heads()
                );
            }
            // hyper refuses the cut head with a 4xx, unless it closed the
            // connection before reading that far (asked to, or after a body
            // it could not read).
            let status = last_status(&outcome.written);
            assert!(
                status.is_some_and(|s| (400..500).contains(&s))
                    || outcome.seen.last().is_some_and(|s| s.closes || s.body.is_none()),
                "a refused head gets a 4xx last, not {status:?}: {outcome:?}"
            );
        }
        if judging {
            for seen in &outcome.seen {
                assert_eq!(seen.ambiguous, None, "{seen:?} reached the service");
            }
        }
    }
});
