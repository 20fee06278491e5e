//! Answers from the address asked. A UDP socket bound to a wildcard address
//! (`0.0.0.0`, `[::]`) takes datagrams sent to any local address, but a
//! plain `sendto` leaves with the source address the kernel picks for the
//! route back. On a node with several addresses (a secondary address, a
//! VIP, the address a kube-dns Service's traffic is DNATed to, another
//! loopback address) that may not be the address the client asked, and
//! resolvers drop such answers. So wildcard sockets ask the kernel for each
//! datagram's destination (IP_PKTINFO; IPV6_RECVPKTINFO, which on a
//! dual-stack socket reports IPv4 destinations as v4-mapped addresses) and
//! send the answer from it, as CoreDNS, Knot and Unbound do.
//!
//! The interface the query came in on is passed back only with an IPv6
//! link-local address (where the address means nothing without it): on
//! anything else it would pin the answer to that interface whatever the
//! routes say (IPv4 would then send on-link on it, IPv6 would fail when the
//! route back leaves by another interface), so the routing table picks the
//! interface, as Knot does. Destinations that are no address of ours
//! (broadcast, multicast) are not used as sources: the kernel picks, as
//! without pktinfo.
//!
//! Datagrams are received and answers sent in batches (`recvmmsg`,
//! `sendmmsg`: one system call for up to [`BATCH`] of them), as Knot does;
//! answers leaving from different addresses take one `sendmmsg` per run of
//! the same address. Everything goes through `nix`'s safe wrappers: no
//! `unsafe` here.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, RecvMsg, SockaddrStorage,
    recvmmsg, sendmmsg, sendmsg, setsockopt, sockopt,
};

/// The address a datagram was sent to, in the family of the socket that
/// got it (a v4-mapped address on a dual-stack socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Local {
    /// On an IPv4 socket.
    V4(Ipv4Addr),
    /// On an IPv6 socket; `ifindex` is 0 unless `addr` is link-local.
    V6 {
        /// The address, v4-mapped for IPv4 datagrams.
        addr: Ipv6Addr,
        /// The interface to send on, or 0 for the routing table's choice.
        ifindex: u32,
    },
}

impl Local {
    /// The address, v4-mapped ones as IPv4.
    pub(crate) fn ip(self) -> IpAddr {
        match self {
            Self::V4(addr) => IpAddr::V4(addr),
            Self::V6 { addr, .. } => addr.to_canonical(),
        }
    }
}

/// A buffer for the control messages [`recv`] asks for: an IPv4 and an
/// IPv6 packet info (a dual-stack socket gets both for IPv4 datagrams).
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo)
}

/// Asks the kernel to report each datagram's destination on `socket`
/// (an IPv6 socket: for IPv6 and, dual-stack, IPv4 datagrams).
pub(crate) fn enable(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    if ipv6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    Ok(())
}

/// Datagrams received, and answers sent, per system call.
pub(crate) const BATCH: usize = 32;
/// Room for one query. A longer datagram (no DNS query is; the large EDNS
/// sizes are for answers) arrives cut and is dropped.
pub(crate) const QUERY_MAX: usize = 4096;

/// One datagram of a batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Datagram {
    /// Its bytes in the batch's buffer `i`.
    pub(crate) len: usize,
    /// Its sender.
    pub(crate) peer: SocketAddr,
    /// The address it was sent to, on a wildcard socket, when the kernel
    /// reported one that can be a source.
    pub(crate) local: Option<Local>,
}

/// Buffers for receiving [`BATCH`] datagrams at once (`recvmmsg`) and
/// sending as many answers (`sendmmsg`), allocated once per socket. (The
/// message headers are made per call: nix's hold raw pointers, which a
/// task that moves between threads cannot keep.)
pub(crate) struct Batch {
    buffers: Box<[u8]>,
    /// Whether to ask for (and send with) each datagram's destination.
    pktinfo: bool,
    /// What the last receive got, in order.
    pub(crate) datagrams: Vec<Datagram>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("datagrams", &self.datagrams.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// Room for a batch; `pktinfo`: with space for the destination of each
    /// datagram (wildcard sockets).
    pub(crate) fn new(pktinfo: bool) -> Self {
        Self {
            buffers: vec![0; BATCH * QUERY_MAX].into_boxed_slice(),
            pktinfo,
            datagrams: Vec::with_capacity(BATCH),
        }
    }

    /// The bytes of datagram `i` of the last receive.
    pub(crate) fn query(&self, i: usize) -> &[u8] {
        let at = i * QUERY_MAX;
        &self.buffers[at..at + self.datagrams[i].len]
    }

    /// Receives up to [`BATCH`] datagrams waiting on `socket` (non-blocking:
    /// `WouldBlock` when there are none) into [`Batch::datagrams`]; datagrams
    /// without an IP sender or cut short are left out.
    pub(crate) fn receive(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        self.datagrams.clear();
        let (received, kept) = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                .buffers
                .chunks_exact_mut(QUERY_MAX)
                .map(|chunk| [IoSliceMut::new(chunk)])
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                BATCH,
                self.pktinfo.then(control_buffer),
            );
            let results = recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )?;
            let mut received = 0;
            let mut kept = [None; BATCH];
            for (slot, message) in kept.iter_mut().zip(results) {
                received += 1;
                let peer = message.address.as_ref().and_then(socket_addr);
                let cut = message.flags.contains(MsgFlags::MSG_TRUNC);
                *slot = peer.filter(|_| !cut).map(|peer| Datagram {
                    len: message.bytes,
                    peer,
                    local: destination(&message, peer),
                });
            }
            (received, kept)
        };
        // Keep buffer `i` for datagram `i`: drop the unusable ones by
        // moving the later ones' bytes down.
        for (i, datagram) in kept.into_iter().take(received).enumerate() {
            let Some(datagram) = datagram else { continue };
            let slot = self.datagrams.len();
            if slot != i {
                self.buffers.copy_within(
                    i * QUERY_MAX..i * QUERY_MAX + datagram.len,
                    slot * QUERY_MAX,
                );
            }
            self.datagrams.push(datagram);
        }
        Ok(received)
    }
}

/// Sends `answers` (bytes, peer, source address) with as few
/// `sendmmsg` calls as their source addresses allow (non-blocking):
/// how many were sent from the front, or `WouldBlock` if none could be.
pub(crate) fn send_many(
    socket: BorrowedFd<'_>,
    answers: &[(&[u8], SocketAddr, Option<Local>)],
) -> io::Result<usize> {
    let Some(&(_, _, local)) = answers.first() else {
        return Ok(0);
    };
    // One call takes answers from one source address (the control
    // message is shared by the whole call).
    let run = answers
        .iter()
        .take(BATCH)
        .take_while(|(_, _, l)| *l == local)
        .count();
    let slices: Vec<[IoSlice<'_>; 1]> = answers[..run]
        .iter()
        .map(|(bytes, _, _)| [IoSlice::new(bytes)])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = answers[..run]
        .iter()
        .map(|(_, peer, _)| Some(SockaddrStorage::from(*peer)))
        .collect();
    let (info4, info6, v4, v6);
    let control: &[ControlMessage<'_>] = match local {
        None => &[],
        Some(Local::V4(addr)) => {
            info4 = in_pktinfo(addr);
            v4 = [ControlMessage::Ipv4PacketInfo(&info4)];
            &v4
        }
        Some(Local::V6 { addr, ifindex }) => {
            info6 = in6_pktinfo(addr, ifindex);
            v6 = [ControlMessage::Ipv6PacketInfo(&info6)];
            &v6
        }
    };
    // Room for exactly the one control message sent: nix passes the
    // whole room as its length, and the kernel refuses a zeroed one
    // after it (EINVAL).
    let room = match local {
        None => None,
        Some(Local::V4(_)) => Some(nix::cmsg_space!(libc::in_pktinfo)),
        Some(Local::V6 { .. }) => Some(nix::cmsg_space!(libc::in6_pktinfo)),
    };
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(run, room);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices,
        &addrs,
        control,
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(sent.count())
}

/// The destination of a received datagram, when the kernel reported one
/// that can be a source.
fn destination(message: &RecvMsg<'_, '_, SockaddrStorage>, peer: SocketAddr) -> Option<Local> {
    let (mut v4, mut v6) = (None, None);
    // Truncated control data (ENOBUFS) leaves the kernel to pick.
    if let Ok(messages) = message.cmsgs() {
        for control in messages {
            match control {
                ControlMessageOwned::Ipv4PacketInfo(info) => v4 = Some(info),
                ControlMessageOwned::Ipv6PacketInfo(info) => v6 = Some(info),
                _ => {}
            }
        }
    }
    match (v4, v6) {
        (Some(info), _) => destination_v4(&info).map(|addr| match peer {
            SocketAddr::V4(_) => Local::V4(addr),
            // An IPv4 datagram on a dual-stack socket.
            SocketAddr::V6(_) => Local::V6 {
                addr: addr.to_ipv6_mapped(),
                ifindex: 0,
            },
        }),
        (None, Some(info)) => destination_v6(&info),
        (None, None) => None,
    }
}

/// Sends `bytes` to `peer` from `local` (non-blocking).
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    peer: SocketAddr,
    local: Local,
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let to = SockaddrStorage::from(peer);
    let (v4, v6);
    let control = match local {
        Local::V4(addr) => {
            v4 = in_pktinfo(addr);
            ControlMessage::Ipv4PacketInfo(&v4)
        }
        Local::V6 { addr, ifindex } => {
            v6 = in6_pktinfo(addr, ifindex);
            ControlMessage::Ipv6PacketInfo(&v6)
        }
    };
    Ok(sendmsg(
        socket.as_raw_fd(),
        &iov,
        &[control],
        MsgFlags::empty(),
        Some(&to),
    )?)
}

fn in_pktinfo(addr: Ipv4Addr) -> libc::in_pktinfo {
    libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    }
}

fn in6_pktinfo(addr: Ipv6Addr, ifindex: u32) -> libc::in6_pktinfo {
    libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ipi6_ifindex: ifindex,
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// An IPv4 destination, if it is one of our addresses: the kernel reports
/// the header's destination (`ipi_addr`) and the local address it would
/// answer from (`ipi_spec_dst`); they agree for a unicast address of ours
/// and differ for broadcasts and multicasts.
fn destination_v4(info: &libc::in_pktinfo) -> Option<Ipv4Addr> {
    let addr = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
    let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
    (addr == spec && !addr.is_unspecified()).then_some(addr)
}

/// An IPv6 destination (or a v4-mapped one) that can be a source.
fn destination_v6(info: &libc::in6_pktinfo) -> Option<Local> {
    let addr = Ipv6Addr::from(info.ipi6_addr.s6_addr);
    let usable = match addr.to_ipv4_mapped() {
        Some(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        None => !(addr.is_unspecified() || addr.is_multicast()),
    };
    usable.then(|| Local::V6 {
        addr,
        ifindex: if addr.is_unicast_link_local() {
            info.ipi6_ifindex
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(addr: [u8; 4], spec: [u8; 4]) -> libc::in_pktinfo {
        libc::in_pktinfo {
            ipi_ifindex: 2,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::from(spec)).to_be(),
            },
            ipi_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::from(addr)).to_be(),
            },
        }
    }

    fn v6(addr: &str, ifindex: u32) -> libc::in6_pktinfo {
        libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: addr.parse::<Ipv6Addr>().unwrap().octets(),
            },
            ipi6_ifindex: ifindex,
        }
    }

    #[test]
    fn only_addresses_of_ours_become_sources() {
        assert_eq!(
            destination_v4(&v4([10, 0, 0, 2], [10, 0, 0, 2])),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        // A subnet broadcast: the kernel would answer from 10.0.0.1.
        assert_eq!(destination_v4(&v4([10, 0, 0, 255], [10, 0, 0, 1])), None);
        // No route information: nothing reported.
        assert_eq!(destination_v4(&v4([10, 0, 0, 2], [0, 0, 0, 0])), None);
        assert_eq!(destination_v6(&v6("ff02::fb", 2)), None);
        assert_eq!(destination_v6(&v6("::ffff:255.255.255.255", 2)), None);
        assert_eq!(
            destination_v6(&v6("::ffff:10.0.0.2", 2)).map(Local::ip),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
    }

    #[test]
    fn the_interface_is_kept_for_link_local_addresses_only() {
        assert_eq!(
            destination_v6(&v6("fd00::53", 3)),
            Some(Local::V6 {
                addr: "fd00::53".parse().unwrap(),
                ifindex: 0
            })
        );
        assert_eq!(
            destination_v6(&v6("fe80::1", 3)),
            Some(Local::V6 {
                addr: "fe80::1".parse().unwrap(),
                ifindex: 3
            })
        );
    }
}
