//! HTTP/2 with prior knowledge (h2c, RFC 9113 section 3.3) on the plain
//! listener, beside HTTP/1.1: a connection that opens with the HTTP/2
//! connection preface speaks HTTP/2, any other speaks HTTP/1.1. The bytes
//! read to tell them apart are handed back to whichever protocol serves the
//! connection ([`Replay`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2 (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection's first bytes say it speaks.
#[derive(Debug)]
pub(crate) enum Sniffed<I> {
    /// HTTP/1.1 (or something hyper's HTTP/1.1 parser will refuse).
    Http1(Replay<I>),
    /// HTTP/2 with prior knowledge: the whole preface arrived.
    H2c(Replay<I>),
    /// Closed, or silent (or half a preface) for `timeout`: nothing to serve.
    Nothing,
}

/// Reads the first bytes of `io` until they differ from the HTTP/2 preface
/// (HTTP/1.1: usually the first or second byte) or match all of it (h2c),
/// for at most `timeout` (the header timeout: a client that sends nothing
/// is closed as HTTP/1.1's header-read timeout would).
pub(crate) async fn sniff<I>(mut io: I, timeout: Duration) -> io::Result<Sniffed<I>>
where
    I: AsyncRead + Unpin,
{
    let mut head = [0u8; PREFACE.len()];
    let mut len = 0;
    let read = async {
        loop {
            let n = io.read(&mut head[len..]).await?;
            len += n;
            if n == 0 || head[..len] != PREFACE[..len] {
                return Ok::<_, io::Error>(false);
            }
            if len == PREFACE.len() {
                return Ok(true);
            }
        }
    };
    let h2 = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) => return Ok(Sniffed::Nothing),
    };
    if len == 0 {
        return Ok(Sniffed::Nothing);
    }
    let replay = Replay {
        head,
        len,
        pos: 0,
        inner: io,
    };
    Ok(if h2 {
        Sniffed::H2c(replay)
    } else {
        Sniffed::Http1(replay)
    })
}

/// A stream whose first bytes were already read: reads return them again
/// first, then what the stream brings. Writes go straight through.
#[derive(Debug)]
pub(crate) struct Replay<I> {
    head: [u8; PREFACE.len()],
    len: usize,
    pos: usize,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let n = (this.len - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
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
    use tokio::io::AsyncWriteExt as _;

    /// Sends `chunks` (with a pause between them) and sniffs; returns the
    /// verdict and everything the replaying stream then reads.
    async fn sniffed(chunks: &[&[u8]]) -> (&'static str, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"|rest").await.unwrap();
        });
        let verdict = sniff(server, Duration::from_secs(5)).await.unwrap();
        let (kind, mut replay) = match verdict {
            Sniffed::Http1(r) => ("http1", r),
            Sniffed::H2c(r) => ("h2c", r),
            Sniffed::Nothing => return ("nothing", Vec::new()),
        };
        writer.await.unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 7];
        while !all.ends_with(b"|rest") {
            let n = replay.read(&mut buf).await.unwrap();
            assert!(n > 0);
            all.extend_from_slice(&buf[..n]);
        }
        (kind, all)
    }

    #[tokio::test]
    async fn the_preface_means_h2c_anything_else_http1_and_no_byte_is_lost() {
        let (kind, bytes) = sniffed(&[b"GET / HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(
            (kind, &bytes[..]),
            ("http1", &b"GET / HTTP/1.1\r\n\r\n|rest"[..])
        );
        // POST and PUT share a first byte with the preface.
        let (kind, bytes) = sniffed(&[b"P", b"OST / HTTP/1.1\r\n"]).await;
        assert_eq!(
            (kind, &bytes[..]),
            ("http1", &b"POST / HTTP/1.1\r\n|rest"[..])
        );
        let (kind, bytes) = sniffed(&[b"PRI * HTTP/1.1\r\n"]).await;
        assert_eq!(
            (kind, &bytes[..]),
            ("http1", &b"PRI * HTTP/1.1\r\n|rest"[..])
        );
        // The preface in pieces, and what follows it in the same segment.
        let (kind, bytes) = sniffed(&[b"PRI * HTTP/2", b".0\r\n\r\nSM\r\n\r\n\0\0\0\x04"]).await;
        let mut want = PREFACE.to_vec();
        want.extend_from_slice(b"\0\0\0\x04|rest");
        assert_eq!((kind, bytes), ("h2c", want));
    }

    #[tokio::test]
    async fn silence_or_half_a_preface_is_nothing() {
        let (_client, server) = tokio::io::duplex(64);
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
        drop(client);
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
    }
}
