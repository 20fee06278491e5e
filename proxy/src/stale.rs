//! Stale UDP sockets. A connected UDP socket was pointed at a backend once, at `connect()`;
//! when that backend leaves the service, the socket would go on talking to it (a DNS client
//! to a dead pod, for minutes). After each sync, fairlead destroys such sockets: in every
//! network namespace of a process in the balanced cgroup, it lists the connected UDP sockets
//! (`sock_diag`, `SOCK_DIAG_BY_FAMILY`) and destroys those whose peer is a removed backend
//! (`SOCK_DESTROY`, what `ss -K` does; the kernel needs `CONFIG_INET_DIAG_DESTROY`). The
//! application's next `send`/`recv` fails with `ECONNABORTED`, and it opens a new socket,
//! which is balanced over the current backends.
//!
//! The kernel's `bpf_sock_destroy` from a socket iterator would do this without leaving
//! BPF, but aya 0.14 / aya-ebpf 0.2.1 cannot express it: aya-ebpf has no `iter` program
//! macro or context type, and aya-obj 0.3 does not relocate calls to kernel functions
//! (kfuncs such as `bpf_sock_destroy` need a `BPF_PSEUDO_KFUNC_CALL` against vmlinux BTF).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use tracing::{debug, warn};

/// Destroys the connected UDP sockets whose peer is one of `backends`, in every network
/// namespace of the processes in `cgroup` (and its descendants). Returns how many.
pub(crate) fn destroy_udp_sockets(cgroup: &Path, backends: &[(IpAddr, u16)]) -> usize {
    let wanted: BTreeSet<(IpAddr, u16)> = backends.iter().copied().collect();
    let mut destroyed = 0;
    for (ns, pid) in namespaces(cgroup) {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let wanted = wanted.clone();
        let result = std::thread::spawn(move || in_namespace(&path, &wanted)).join();
        match result {
            Ok(Ok(n)) => destroyed += n,
            Ok(Err(e)) => {
                warn!(netns = ns, pid, error = %e, "destroying stale UDP sockets failed");
            }
            Err(_) => warn!(netns = ns, pid, "the stale-socket thread panicked"),
        }
    }
    if destroyed > 0 {
        debug!(
            destroyed,
            backends = backends.len(),
            "stale UDP sockets destroyed"
        );
    }
    destroyed
}

/// One pid per network namespace (by inode) among the processes of `cgroup`.
fn namespaces(cgroup: &Path) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                    out.entry(meta.ino()).or_insert(pid);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// On this (new, short-lived) thread: enter the namespace and destroy what matches.
fn in_namespace(path: &Path, wanted: &BTreeSet<(IpAddr, u16)>) -> io::Result<usize> {
    let ns = File::open(path)?;
    rustix::thread::move_into_link_name_space(
        rustix::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    // Opened after entering: a netlink socket belongs to the namespace it was opened in.
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut destroyed = 0;
    for family in [AF_INET, AF_INET6] {
        for id in dump(&socket, family)? {
            let peer = match id.destination_address {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 @ IpAddr::V4(_) => v4,
            };
            if wanted.contains(&(peer, id.destination_port)) && destroy(&socket, family, id).is_ok()
            {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

/// A request for the connected UDP sockets of `family` matching `socket_id` (all of them for
/// a zero id, as in a dump).
fn udp_request(family: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        // A connected UDP socket is in the state TCP_ESTABLISHED.
        states: StateFlags::ESTABLISHED,
        socket_id,
    })
}

fn send<T: NetlinkSerializable>(socket: &Socket, flags: u16, payload: T) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

/// The netlink messages of one datagram from `socket`.
fn receive<T: NetlinkDeserializable>(socket: &Socket) -> io::Result<Vec<NetlinkMessage<T>>> {
    let (datagram, _) = socket.recv_from_full()?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let message = NetlinkMessage::<T>::deserialize(&datagram[at..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = message.header.length as usize;
        out.push(message);
        if len == 0 {
            break;
        }
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// The socket ids of the connected UDP sockets of `family`.
fn dump(socket: &Socket, family: u8) -> io::Result<Vec<SocketId>> {
    let any = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    send(socket, NLM_F_REQUEST | NLM_F_DUMP, udp_request(family, any))?;
    let mut out = Vec::new();
    loop {
        let messages = receive::<SockDiagMessage>(socket)?;
        if messages.is_empty() {
            return Ok(out);
        }
        for message in messages {
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    out.push(response.header.socket_id);
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                _ => {}
            }
        }
    }
}

/// `SOCK_DESTROY` of the socket `id` (what `ss -K` sends), waiting for the kernel's answer.
fn destroy(socket: &Socket, family: u8, id: SocketId) -> io::Result<()> {
    send(
        socket,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(udp_request(family, id)),
    )?;
    for message in receive::<SockDiagDestroy>(socket)? {
        if let NetlinkPayload::Error(error) = message.payload
            && error.code.is_some()
        {
            return Err(error.to_io());
        }
    }
    Ok(())
}
