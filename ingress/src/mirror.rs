//! Request mirroring (the Gateway API's `RequestMirror` filter): a copy of
//! each request goes to every mirror backend, fire and forget. The client's
//! request never waits for a mirror, and a mirror's answer is read and
//! dropped.
//!
//! A request body is teed: each frame sent to the route's backend is also
//! queued for every mirror (the bytes are shared, not copied). A mirror may
//! fall at most [`MIRROR_BUFFER`] bytes behind; one further behind is cut
//! off. A mirror whose copy cannot be complete — it fell behind, the
//! client's body broke off, or the original request was dropped before its
//! body ended — has its task aborted at once (its connection closed and
//! what was queued for it freed), never a truncated body passed off as the
//! whole one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::Error;
use crate::metrics::Metrics;
use crate::upstream::{BodyError, RequestBody, Upstream};

/// How far (in body bytes) a mirror may fall behind the original request
/// before it is cut off. It covers the mirror's connect and a slow mirror
/// backend for bodies up to this size; the memory it costs is bounded by it
/// per mirror and request.
pub const MIRROR_BUFFER: usize = 1 << 20;

/// What travels from the original body to a mirror's copy.
#[derive(Debug)]
enum Chunk {
    Frame(Frame<Bytes>),
    /// The original body ended: so does the copy, cleanly.
    End,
}

/// The sending side of one mirror's copy of a body. Dropped before the
/// body ended, it aborts the mirror's task.
#[derive(Debug)]
struct Queue {
    tx: mpsc::UnboundedSender<Chunk>,
    /// Data bytes sent and not yet taken by the mirror's connection.
    queued: Arc<AtomicUsize>,
    upstream: Arc<str>,
    task: Option<AbortHandle>,
    ended: bool,
    metrics: Option<Arc<Metrics>>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(metrics) = &self.metrics {
            metrics.upstream_error(&self.upstream, "mirror");
        }
    }
}

/// The client's request body on its way to the route's backend, copied to
/// the mirrors as it streams.
#[derive(Debug)]
pub struct Tee {
    body: Incoming,
    queues: Vec<Queue>,
}

impl Tee {
    /// Queues a copy of `frame` for each mirror still keeping up.
    fn copy(&mut self, frame: &Frame<Bytes>) {
        let len = frame.data_ref().map_or(0, Bytes::len);
        self.queues.retain(|q| {
            if q.queued.load(Ordering::Acquire) + len > MIRROR_BUFFER {
                debug!(upstream = %q.upstream, "mirror cut off: it fell more than {MIRROR_BUFFER} bytes behind");
                return false;
            }
            let copy = if let Some(data) = frame.data_ref() {
                Frame::data(data.clone())
            } else if let Some(trailers) = frame.trailers_ref() {
                Frame::trailers(trailers.clone())
            } else {
                return true;
            };
            q.queued.fetch_add(len, Ordering::AcqRel);
            // A send fails only when the mirror's request is gone already.
            q.tx.send(Chunk::Frame(copy)).is_ok()
        });
    }

    /// The original body ended: every copy ends too.
    fn finish(&mut self) {
        for mut q in self.queues.drain(..) {
            q.ended = q.tx.send(Chunk::End).is_ok();
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.body).poll_frame(cx);
        match &result {
            Poll::Ready(Some(Ok(frame))) => {
                this.copy(frame);
                // hyper stops polling a body that says it has ended.
                if this.body.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            // Dropping the queues aborts the mirrors' tasks.
            Poll::Ready(Some(Err(_))) => this.queues.clear(),
            Poll::Pending => {}
        }
        result.map(|frame| frame.map(|r| r.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A mirror's copy of a request body.
#[derive(Debug)]
pub struct MirrorBody {
    rx: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
    ended: bool,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Frame(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                this.queued.fetch_sub(len, Ordering::AcqRel);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Chunk::End)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(Some(Err(Error::BodyCut(
                    "the mirrored request body could not be copied whole",
                )
                .into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Sends a copy of the request (`parts`, with the client's `body`) to each
/// of `mirrors`, and returns the body to send to the route's backend: the
/// client's own when it has none, else a [`Tee`] feeding the copies.
pub(crate) fn mirror(
    mirrors: Vec<Arc<Upstream>>,
    parts: &http::request::Parts,
    body: Incoming,
    timeout: Duration,
    metrics: &Arc<Metrics>,
) -> RequestBody {
    if body.is_end_stream() {
        for upstream in mirrors {
            spawn(
                upstream,
                parts,
                RequestBody::Empty,
                timeout,
                metrics.clone(),
            );
        }
        return RequestBody::Client(body);
    }
    let mut queues = Vec::with_capacity(mirrors.len());
    for upstream in mirrors {
        let (tx, rx) = mpsc::unbounded_channel();
        let behind = Arc::new(AtomicUsize::new(0));
        let name = upstream.name.clone();
        let copy = RequestBody::Mirror(MirrorBody {
            rx,
            queued: behind.clone(),
            ended: false,
        });
        let task = spawn(upstream, parts, copy, timeout, metrics.clone());
        queues.push(Queue {
            tx,
            queued: behind,
            upstream: name,
            task,
            ended: false,
            metrics: Some(metrics.clone()),
        });
    }
    RequestBody::Teed(Tee { body, queues })
}

/// Sends one copy of a request to `upstream` in a task of its own (its
/// handle returned); the answer is read to its end and dropped, a failure
/// counted in `upstream_errors{kind="mirror"}` and logged at debug level.
fn spawn(
    upstream: Arc<Upstream>,
    parts: &http::request::Parts,
    body: RequestBody,
    timeout: Duration,
    metrics: Arc<Metrics>,
) -> Option<AbortHandle> {
    let authority = parts.uri.authority().cloned().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    let target = parts.uri.path_and_query().cloned()?;
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.headers = parts.headers.clone();
    if matches!(body, RequestBody::Empty) {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    crate::proxy::address_upstream(&mut head, upstream.protocol, target, authority, None);
    let request = Request::from_parts(head, body);
    let task = tokio::spawn(async move {
        let Some(in_flight) = upstream.pick(&[]) else {
            debug!(upstream = %upstream.name, "mirror: no ready endpoint");
            metrics.upstream_error(&upstream.name, "mirror");
            return;
        };
        let endpoint = in_flight.endpoint().clone();
        let exchange = async {
            let (mut connection, _) = upstream.connect(&endpoint).await.ok()?;
            let response = connection.send(request).await.ok()?;
            // Read the answer to its end, then drop it.
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()
        };
        if tokio::time::timeout(timeout, exchange)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            debug!(upstream = %upstream.name, endpoint = %endpoint.addr, "mirror failed");
            metrics.upstream_error(&upstream.name, "mirror");
        }
        drop(in_flight);
    });
    Some(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn copy() -> (Queue, MirrorBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            tx,
            queued: queued.clone(),
            upstream: Arc::from("shop/mirror:80"),
            task: None,
            ended: false,
            metrics: None,
        };
        let body = MirrorBody {
            rx,
            queued,
            ended: false,
        };
        (queue, body)
    }

    #[tokio::test]
    async fn a_copy_ends_cleanly_only_when_the_original_ended() {
        let (queue, body) = copy();
        queue.queued.fetch_add(5, Ordering::AcqRel);
        queue
            .tx
            .send(Chunk::Frame(Frame::data(Bytes::from_static(b"hello"))))
            .unwrap();
        queue.tx.send(Chunk::End).unwrap();
        let whole = body.collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"hello");
        assert_eq!(queue.queued.load(Ordering::Acquire), 0);

        // The original dropped before its end: the copy is an error, not
        // a shorter body.
        let (queue, body) = copy();
        queue
            .tx
            .send(Chunk::Frame(Frame::data(Bytes::from_static(b"hel"))))
            .unwrap();
        drop(queue);
        let error = body.collect().await.unwrap_err();
        assert!(
            error.to_string().contains("could not be copied whole"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_copy_that_cannot_be_whole_aborts_the_mirror_task() {
        let stuck = || tokio::spawn(std::future::pending::<()>());
        let (mut queue, _body) = copy();
        let task = stuck();
        queue.task = Some(task.abort_handle());
        drop(queue);
        assert!(task.await.unwrap_err().is_cancelled());

        // A copy that ended cleanly leaves the task to finish.
        let (mut queue, _body) = copy();
        let task = stuck();
        queue.task = Some(task.abort_handle());
        queue.ended = true;
        drop(queue);
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        task.abort();
    }
}
