//! The UDP loop. hickory-server's own UDP transport hands every datagram to a
//! new task through channels; for a server that answers most questions from
//! memory that is most of the cost. This loop first tries the fast path
//! (pre-serialised answers from its own cache, see `fast`); else it parses
//! with hickory, answers cluster names inline through the same [`Handler`]
//! (hickory's `RequestHandler`), and spawns a task only for questions that
//! wait on an upstream. Several sockets share a port with SO_REUSEPORT, one loop each.
//! On a wildcard address every answer, fast or not, leaves from the address
//! its query was sent to (see `pktinfo`). TCP stays on hickory-server's
//! transport.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::{debug, warn};

use crate::Error;
use crate::fast::{AnswerCache, Fast};
use crate::handler::{Handler, Parsed};
use crate::metrics::LoopMetrics;
use crate::pktinfo::{self, Local};

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

    /// The next datagram: length, sender and (wildcard sockets) destination.
    async fn recv(
        &self,
        buf: &mut [u8],
        control: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<Local>)> {
        if !self.wildcard {
            let (len, peer) = self.udp.recv_from(buf).await?;
            return Ok((len, peer, None));
        }
        self.udp
            .async_io(Interest::READABLE, || {
                pktinfo::recv(self.udp.as_fd(), buf, control)
            })
            .await
    }

    /// Sends `bytes` to `peer`, from `local` when known.
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
}

/// Sends a response straight on the socket it came in on, from the address
/// it was sent to.
#[derive(Clone, Debug)]
struct Reply {
    socket: Arc<Socket>,
    peer: SocketAddr,
    local: Option<Local>,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
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
        let limit = response.edns().map_or(512, Edns::max_payload);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = response.destructive_emit(&mut encoder)?;
        self.socket.send(&bytes, self.peer, self.local).await?;
        Ok(info)
    }
}

/// Serves one socket until `cancel`.
pub(crate) async fn serve(
    socket: UdpSocket,
    handler: Handler,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let socket = Arc::new(
        Socket::new(socket).map_err(|e| Error::Server(format!("UDP socket failed: {e}")))?,
    );
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut control = pktinfo::control_buffer();
    let mut cache = AnswerCache::default();
    let mut local = LoopMetrics::default();
    let mut out = Vec::with_capacity(1232);
    loop {
        let received = tokio::select! {
            received = socket.recv(&mut buf, &mut control) => received,
            () = cancel.cancelled() => return Ok(()),
        };
        let (len, peer, asked) = match received {
            Ok(r) => r,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotConnected | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(Error::Server(format!("UDP socket failed: {error}")));
            }
            Err(error) => {
                debug!(%error, "UDP receive error");
                continue;
            }
        };
        // Never answer to port 0 or an unspecified address (reflection).
        if peer.port() == 0 || peer.ip().is_unspecified() {
            continue;
        }
        let raw = &buf[..len];
        let started = Instant::now();
        if let Fast::Answered { qtype, rcode } = handler.answer_fast(&mut cache, raw, &mut out) {
            if let Err(error) = socket.send(&out, peer, asked).await {
                debug!(%error, %peer, asked = ?asked.map(Local::ip), "UDP send error");
            }
            handler.count_fast(&mut local, qtype, rcode, started.elapsed());
            continue;
        }
        let reply = Reply {
            socket: socket.clone(),
            peer,
            local: asked,
        };
        let request = match Handler::parse(raw, peer, Protocol::Udp) {
            Parsed::Drop => continue,
            Parsed::FormErr(header) => {
                formerr(&handler, &header, reply).await;
                continue;
            }
            Parsed::Request(request) => request,
        };
        if handler.answers_from_memory(&request) {
            RequestHandler::handle_request::<_, TokioTime>(&handler, &request, reply).await;
        } else {
            let handler = handler.clone();
            tokio::spawn(
                async move {
                    RequestHandler::handle_request::<_, TokioTime>(&handler, &request, reply).await;
                }
                .in_current_span(),
            );
        }
    }
}

async fn formerr(handler: &Handler, header: &Header, reply: Reply) {
    let Some(bytes) = handler.formerr(header, Protocol::Udp).await else {
        return;
    };
    if let Err(error) = reply.socket.send(&bytes, reply.peer, reply.local).await {
        warn!(%error, "failed to send FORMERR");
    }
}
