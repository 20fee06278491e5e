//! The UDP loop. hickory-server's own UDP transport hands every datagram to a
//! new task through channels; for a server that answers most questions from
//! memory that is most of the cost. This loop first tries the fast path
//! (pre-serialised answers from its own cache, see `fast`); else it parses
//! with hickory, answers cluster names inline through the same [`Handler`]
//! (hickory's `RequestHandler`), and spawns a task only for questions that
//! wait on an upstream. Several sockets share a port with SO_REUSEPORT, one loop each.
//! On a wildcard address every answer, fast or not, leaves from the address
//! its query was sent to (see `pktinfo`). TCP has its own loop (`tcp`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::xfer::Protocol;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::debug;

use crate::Error;
use crate::fast::{AnswerCache, Fast};
use crate::handler::{Handler, Parsed};
use crate::metrics::LoopMetrics;
use crate::pktinfo::{self, BATCH, Batch, Datagram, Local};

/// Binds `count` UDP sockets sharing `addr` (SO_REUSEPORT); with port 0, the
/// port the first one got. On a wildcard address they report each
/// datagram's destination (`pktinfo`).
pub(crate) fn bind(addr: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, Error> {
    let bind_error = |source| Error::Bind {
        protocol: "udp",
        addr,
        source,
    };
    let mut sockets = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind_error)?;
        socket.set_reuse_port(true).map_err(bind_error)?;
        if at.is_ipv6() {
            // `[::]` also takes IPv4, as a plain bind would.
            let _ = socket.set_only_v6(false);
        }
        if at.ip().is_unspecified() {
            pktinfo::enable(&socket, at.is_ipv6()).map_err(bind_error)?;
        }
        socket.set_nonblocking(true).map_err(bind_error)?;
        socket.bind(&at.into()).map_err(bind_error)?;
        let socket = UdpSocket::from_std(socket.into()).map_err(bind_error)?;
        at = socket.local_addr().map_err(bind_error)?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// A socket of the loop. On a wildcard address, it receives each datagram
/// with its destination and sends the answer from it.
#[derive(Debug)]
struct Socket {
    udp: UdpSocket,
    wildcard: bool,
}

impl Socket {
    fn new(udp: UdpSocket) -> io::Result<Self> {
        let wildcard = udp.local_addr()?.ip().is_unspecified();
        Ok(Self { udp, wildcard })
    }

    /// Sends one answer to `peer`, from `local` when known.
    async fn send(&self, bytes: &[u8], peer: SocketAddr, local: Option<Local>) -> io::Result<()> {
        match local {
            None => self.udp.send_to(bytes, peer).await.map(drop),
            Some(local) => self
                .udp
                .async_io(Interest::WRITABLE, || {
                    pktinfo::send(self.udp.as_fd(), bytes, peer, local)
                })
                .await
                .map(drop),
        }
    }

    /// Sends the answers of a batch, as few system calls as possible.
    async fn send_batch(&self, answers: &[(&[u8], SocketAddr, Option<Local>)]) {
        let mut sent = 0;
        while sent < answers.len() {
            let rest = &answers[sent..];
            match self
                .udp
                .async_io(Interest::WRITABLE, || {
                    pktinfo::send_many(self.udp.as_fd(), rest)
                })
                .await
            {
                Ok(n) => sent += n.max(1),
                Err(error) => {
                    // The first answer of the call failed (an unreachable
                    // peer, say): skip it, send the rest.
                    let (_, peer, local) = rest[0];
                    debug!(%error, %peer, asked = ?local.map(Local::ip), "UDP send error");
                    sent += 1;
                }
            }
        }
    }
}

/// Serves one socket until `cancel`: receives a batch of datagrams, answers
/// each (the fast path, else the handler inline, else a task for questions
/// that wait on an upstream), and sends the batch's answers together.
pub(crate) async fn serve(
    socket: UdpSocket,
    handler: Handler,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let socket = Arc::new(
        Socket::new(socket).map_err(|e| Error::Server(format!("UDP socket failed: {e}")))?,
    );
    let mut batch = Batch::new(socket.wildcard);
    let mut cache = AnswerCache::default();
    let mut metrics = LoopMetrics::default();
    // An answer buffer per datagram of a batch, reused.
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut ready: Vec<(usize, SocketAddr, Option<Local>)> = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            received = socket.udp.async_io(Interest::READABLE, || {
                batch.receive(socket.udp.as_fd())
            }) => received,
            () = cancel.cancelled() => return Ok(()),
        };
        match received {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(Error::Server(format!("UDP socket failed: {error}")));
            }
            Err(error) => {
                debug!(%error, "UDP receive error");
                continue;
            }
        }
        ready.clear();
        for (i, out) in outs.iter_mut().enumerate().take(batch.datagrams.len()) {
            let Datagram { peer, local, .. } = batch.datagrams[i];
            // Never answer to port 0 or an unspecified address (reflection).
            if peer.port() == 0 || peer.ip().is_unspecified() {
                continue;
            }
            let raw = batch.query(i);
            let started = Instant::now();
            if let Fast::Answered { qtype, rcode } = handler.answer_fast(&mut cache, raw, out) {
                handler.count_fast(&mut metrics, qtype, rcode, started.elapsed());
                ready.push((i, peer, local));
                continue;
            }
            let answer = match Handler::parse(raw, peer, Protocol::Udp) {
                Parsed::Drop => None,
                Parsed::FormErr(header) => handler.formerr(&header, Protocol::Udp).await,
                Parsed::Request(request) if handler.answers_from_memory(&request) => {
                    handler.answer(&request).await
                }
                Parsed::Request(request) => {
                    let handler = handler.clone();
                    let socket = socket.clone();
                    tokio::spawn(
                        async move {
                            let Some(answer) = handler.answer(&request).await else {
                                return;
                            };
                            if let Err(error) = socket.send(&answer, peer, local).await {
                                debug!(%error, %peer, "UDP send error");
                            }
                        }
                        .in_current_span(),
                    );
                    None
                }
            };
            if let Some(answer) = answer {
                *out = answer;
                ready.push((i, peer, local));
            }
        }
        let answers: Vec<(&[u8], SocketAddr, Option<Local>)> = ready
            .iter()
            .map(|&(i, peer, local)| (outs[i].as_slice(), peer, local))
            .collect();
        socket.send_batch(&answers).await;
    }
}
