//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): each message is preceded by its
//! length in two bytes. A client may send several queries without waiting
//! (pipelining); they are answered as they are ready, possibly out of order,
//! so one slow forwarded question does not hold up the cluster names asked
//! after it on the same connection. Cluster names are answered inline;
//! questions that wait on an upstream run as tasks, at most
//! [`MAX_IN_FLIGHT`] per connection (reading pauses beyond that).
//!
//! A connection is closed when it has sent no complete message and has
//! nothing in flight for the idle timeout (bytes that never complete a
//! message do not keep it open), when the client closes its side and every
//! answer is written, and at shutdown. At most `max_connections` are served
//! per listener; beyond that new ones are closed at once.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufWriter};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, debug_span, warn};

use crate::handler::{Handler, Parsed};

/// Questions of one connection waiting on an upstream at once.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Largest DNS message (the length prefix is 16 bits).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// Limits of the TCP transport.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// A connection without a complete message or an answer for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections served at once per listener.
    pub max_connections: usize,
}

/// Accepts connections on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: Handler,
    limits: TcpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => {
                debug!(%error, "TCP accept error");
                continue;
            }
            Err(error) if is_resource_shortage(&error) => {
                // Out of descriptors or memory: let connections end first.
                warn!(%error, "TCP accept failed; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        if connections.len() >= limits.max_connections {
            debug!(%peer, max = limits.max_connections, "too many DNS TCP connections; closing");
            drop(stream);
            handler.metrics().tcp_refused();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        let open = handler.metrics().tcp_connection();
        connections.spawn(
            async move {
                connection(stream, peer, handler, limits.idle_timeout, stop).await;
                drop(open);
            }
            .instrument(debug_span!("dns_tcp", %peer)),
        );
    }
}

/// Accept errors that concern one connection, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// Accept errors that pass when some connections close.
fn is_resource_shortage(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().map(Errno::from_raw).is_some_and(|e| {
        matches!(
            e,
            Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS
        )
    })
}

/// Serves one connection (any byte stream: a socket, or a test's pipe)
/// until the client closes it, it idles, or `stop`. Errors end it quietly.
pub async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    handler: Handler,
    idle_timeout: Duration,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::with_capacity(16 * 1024, writer);
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    // Where the unread bytes of `input` start.
    let mut start = 0;
    let mut in_flight: JoinSet<Option<Vec<u8>>> = JoinSet::new();
    let mut eof = false;
    let mut deadline = Instant::now() + idle_timeout;
    loop {
        // Answer every complete message already read (inline when it is
        // about cluster names, else as a task), as long as there is room.
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(message) = next_message(&input[start..]) else {
                break;
            };
            let len = message.len();
            let answer = match Handler::parse(message, peer, Protocol::Tcp) {
                Parsed::Drop => None,
                Parsed::FormErr(header) => handler.formerr(&header, Protocol::Tcp).await,
                Parsed::Request(request) if handler.answers_from_memory(&request) => {
                    handler.answer(&request).await
                }
                Parsed::Request(request) => {
                    let handler = handler.clone();
                    in_flight
                        .spawn(async move { handler.answer(&request).await }.in_current_span());
                    None
                }
            };
            start += 2 + len;
            deadline = Instant::now() + idle_timeout;
            if let Some(answer) = answer
                && write_message(&mut writer, &answer).await.is_err()
            {
                return;
            }
        }
        if start > 0 && (start == input.len() || start >= 32 * 1024) {
            input.drain(..start);
            start = 0;
        }
        if eof && in_flight.is_empty() {
            // Whatever is left is an incomplete message the client gave up on.
            break;
        }
        // Everything answerable now is written: send it before waiting.
        if !writer.buffer().is_empty() && writer.flush().await.is_err() {
            return;
        }
        let can_read = !eof && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                deadline = Instant::now() + idle_timeout;
                if let Ok(Some(answer)) = done
                    && write_message(&mut writer, &answer).await.is_err()
                {
                    return;
                }
            }
            read = read_more(&mut reader, &mut input), if can_read => match read {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "DNS TCP read error");
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline), if in_flight.is_empty() => {
                debug!("DNS TCP connection idle; closing");
                break;
            }
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// The next complete message at the front of `input`, without its length.
fn next_message(input: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*input.first()?, *input.get(1)?]));
    input.get(2..2 + len)
}

/// Reads what the client sent so far (at least one byte, or 0 at its end).
async fn read_more<R: AsyncRead + Unpin>(reader: &mut R, input: &mut Vec<u8>) -> io::Result<usize> {
    // Room for a whole largest message beyond what is buffered.
    input.reserve(MAX_MESSAGE.min(16 * 1024));
    reader.read_buf(input).await
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    message: &[u8],
) -> io::Result<()> {
    let Ok(len) = u16::try_from(message.len()) else {
        // Answers are encoded within 65,535 bytes; never send a wrong prefix.
        return Ok(());
    };
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_their_length() {
        assert_eq!(next_message(&[]), None);
        assert_eq!(next_message(&[0]), None);
        assert_eq!(next_message(&[0, 3, 1, 2]), None);
        assert_eq!(next_message(&[0, 3, 1, 2, 3, 4]), Some(&[1, 2, 3][..]));
        assert_eq!(next_message(&[0, 0, 9]), Some(&[][..]));
    }
}
