//! HTTP/2 with prior knowledge (h2c, RFC 9113 section 3.3) on the plain
//! listener, beside HTTP/1.1: a connection that opens with the HTTP/2
//! connection preface speaks HTTP/2, any other speaks HTTP/1.1. The first
//! bytes are only peeked at (`MSG_PEEK`), never consumed, so whichever
//! protocol serves the connection reads the stream exactly as the client
//! sent it, in the same segments: the HTTP/1.1 framing guard and parser see
//! what they saw before h2c existed.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// The client connection preface of HTTP/2 (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pause before peeking again when only part of the preface has arrived.
const PARTIAL_PREFACE_PAUSE: Duration = Duration::from_millis(5);

/// What a plain connection's first bytes say it speaks.
#[derive(Debug)]
pub(crate) enum Sniffed {
    /// HTTP/1.1 (or something hyper's HTTP/1.1 parser will refuse).
    Http1(TcpStream),
    /// HTTP/2 with prior knowledge: the whole preface arrived.
    H2c(TcpStream),
    /// Closed, or silent (or half a preface) for `timeout`: nothing to serve.
    Nothing,
}

/// Peeks at the first bytes of `stream` until they differ from the HTTP/2
/// preface (HTTP/1.1: usually the first or second byte) or match all of it
/// (h2c), for at most `timeout` (the header timeout: a client that sends
/// nothing is closed as HTTP/1.1's header-read timeout would).
pub(crate) async fn sniff(stream: TcpStream, timeout: Duration) -> io::Result<Sniffed> {
    let peek = async {
        let mut head = [0u8; PREFACE.len()];
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut head).await?;
            if n == 0 {
                return Ok::<_, io::Error>(None);
            }
            if head[..n] != PREFACE[..n] {
                return Ok(Some(false));
            }
            if n == PREFACE.len() {
                return Ok(Some(true));
            }
            // A proper prefix of the preface: peek returns at once while
            // those bytes wait, so wait for more before looking again.
            if n == seen {
                tokio::time::sleep(PARTIAL_PREFACE_PAUSE).await;
            }
            seen = n;
        }
    };
    Ok(match tokio::time::timeout(timeout, peek).await {
        Ok(Ok(Some(true))) => Sniffed::H2c(stream),
        Ok(Ok(Some(false))) => Sniffed::Http1(stream),
        Ok(Ok(None)) | Err(_) => Sniffed::Nothing,
        Ok(Err(e)) => return Err(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Sends `chunks` (with a pause between them) and sniffs; returns the
    /// verdict and everything the stream then reads.
    async fn sniffed(chunks: &[&[u8]]) -> (&'static str, Vec<u8>) {
        let (mut client, server) = pair().await;
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"|rest").await.unwrap();
            client
        });
        let verdict = sniff(server, Duration::from_secs(5)).await.unwrap();
        let (kind, mut stream) = match verdict {
            Sniffed::Http1(s) => ("http1", s),
            Sniffed::H2c(s) => ("h2c", s),
            Sniffed::Nothing => return ("nothing", Vec::new()),
        };
        let _client = writer.await.unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 7];
        while !all.ends_with(b"|rest") {
            let n = stream.read(&mut buf).await.unwrap();
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
        let (_client, server) = pair().await;
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
        drop(client);
        let (client, server) = pair().await;
        drop(client);
        let verdict = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert!(matches!(verdict, Sniffed::Nothing));
    }
}
