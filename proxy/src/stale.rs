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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use tracing::{debug, warn};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `TCP_ESTABLISHED`: the state of a connected UDP socket.
const ESTABLISHED: u32 = 1;
const HEADER: usize = 16;
const SOCKID: usize = 48;
const REQUEST: usize = 8 + SOCKID;

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
    let socket = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::RAW,
        Some(netlink::SOCK_DIAG),
    )?;
    let mut destroyed = 0;
    for family in [AF_INET, AF_INET6] {
        for id in dump(&socket, family)? {
            let (peer, port) = peer_of(family, &id);
            let peer = match peer {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 @ IpAddr::V4(_) => v4,
            };
            if wanted.contains(&(peer, port)) && destroy(&socket, family, &id).is_ok() {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

fn request(kind: u16, flags: u16, family: u8, id: &[u8; SOCKID]) -> Vec<u8> {
    let len = u32::try_from(HEADER + REQUEST).unwrap_or(u32::MAX);
    let mut msg = Vec::with_capacity(HEADER + REQUEST);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1_u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    msg.extend_from_slice(&(1_u32 << ESTABLISHED).to_ne_bytes());
    msg.extend_from_slice(id);
    msg
}

fn send(socket: &impl rustix::fd::AsFd, msg: &[u8]) -> io::Result<()> {
    rustix::net::sendto(
        socket,
        msg,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    Ok(())
}

/// The socket ids of the connected UDP sockets of `family`.
fn dump(socket: &impl rustix::fd::AsFd, family: u8) -> io::Result<Vec<[u8; SOCKID]>> {
    send(
        socket,
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            &[0; SOCKID],
        ),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let (n, _) = rustix::net::recv(socket, &mut buf[..], RecvFlags::empty())?;
        let mut at = 0;
        while at + HEADER <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
            if len < HEADER || at + len > n {
                return Ok(out);
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(
                        buf[at + HEADER..at + HEADER + 4]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY if len >= HEADER + 4 + SOCKID => {
                    let mut id = [0; SOCKID];
                    id.copy_from_slice(&buf[at + HEADER + 4..at + HEADER + 4 + SOCKID]);
                    out.push(id);
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

fn destroy(socket: &impl rustix::fd::AsFd, family: u8, id: &[u8; SOCKID]) -> io::Result<()> {
    send(
        socket,
        &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, id),
    )?;
    let mut buf = [0_u8; 512];
    let (n, _) = rustix::net::recv(socket, &mut buf[..], RecvFlags::empty())?;
    if n >= HEADER + 4 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

/// The peer (destination) address and port of a socket id.
fn peer_of(family: u8, id: &[u8; SOCKID]) -> (IpAddr, u16) {
    let port = u16::from_be_bytes([id[2], id[3]]);
    let dst = &id[20..36];
    let address = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        let mut octets = [0; 16];
        octets.copy_from_slice(dst);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    (address, port)
}
