//! A tiny upstream DNS server for forwarding tests, on loopback UDP and TCP:
//! - `<anything>.example.test.` A → 192.0.2.1 (TTL `ttl`);
//! - `nx.example.test.` → NXDOMAIN with an SOA (negative TTL `ttl`);
//! - `big.example.test.` A → 100 addresses: truncated (TC, no answers) over
//!   UDP, complete over TCP;
//! - anything else → REFUSED.
//!
//! It counts queries per transport and stops when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) udp_queries: Arc<AtomicUsize>,
    pub(crate) tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstream {
    pub(crate) async fn start(ttl: u32) -> Self {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let counter = udp_queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = answer(&buf[..n], ttl, false) {
                    let _ = udp.send_to(&answer, peer).await;
                }
            }
        });
        let counter = tcp_queries.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).await.is_ok() {
                        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let Some(answer) = answer(&buf, ttl, true) else {
                            return;
                        };
                        let len = u16::try_from(answer.len()).unwrap().to_be_bytes();
                        if stream.write_all(&len).await.is_err()
                            || stream.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            udp_queries,
            tcp_queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    pub(crate) fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }

    /// Stops answering and closes the sockets.
    pub(crate) async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn answer(raw: &[u8], ttl: u32, tcp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    let q = query.queries.first()?.clone();
    let mut response = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(q.clone());
    let name = q.name().to_lowercase();
    let zone = Name::from_ascii("example.test.").unwrap();
    if name == Name::from_ascii("nx.example.test.").unwrap() {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(zone.clone(), zone, 1, 60, 60, 60, ttl)),
        ));
    } else if name == Name::from_ascii("big.example.test.").unwrap() {
        if tcp {
            for i in 0..100u8 {
                response.add_answer(Record::from_rdata(
                    q.name().clone(),
                    ttl,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
        } else {
            response.metadata.truncation = true;
        }
    } else if zone.zone_of(&name) && q.query_type() == RecordType::A {
        response.add_answer(Record::from_rdata(
            q.name().clone(),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
    } else if zone.zone_of(&name) {
        // NODATA
        response.add_authority(Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(zone.clone(), zone, 1, 60, 60, 60, ttl)),
        ));
    } else {
        response.metadata.response_code = ResponseCode::Refused;
    }
    response.to_vec().ok()
}
