//! The node's own addresses, read with rtnetlink (`RTM_GETADDR` dump), for the NodePort
//! path: which destinations are "this node" (a NodePort serves every one of them), which
//! interfaces to attach to by default, and the address source NAT uses. Also the one
//! interface setting that path needs, written with rtnetlink too ([`set_accept_local`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketType, netlink::SocketAddrNetlink, recv, sendto,
    socket,
};

/// One address of one interface of the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddress {
    /// The interface index.
    pub ifindex: u32,
    /// The interface name (IPv4 addresses carry it; empty for IPv6).
    pub ifname: String,
    /// The address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
    /// `RT_SCOPE_*` (0: global, 253: link, 254: host).
    pub scope: u8,
}

impl NodeAddress {
    /// A global (or site) address, not loopback: what external traffic is sent to.
    #[must_use]
    pub fn is_global(&self) -> bool {
        self.scope < 200 && !self.address.is_loopback()
    }
}

const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET_CONF: u16 = 1;
/// `IPV4_DEVCONF_ACCEPT_LOCAL` (`include/uapi/linux/ip.h`).
const IPV4_DEVCONF_ACCEPT_LOCAL: u16 = 23;
const AF_INET: u16 = 2;
const IFINFOMSG_LEN: usize = 16;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// Every address of every interface in this network namespace.
pub fn node_addresses() -> io::Result<Vec<NodeAddress>> {
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + IFADDRMSG_LEN);
    let len = u32::try_from(NLMSG_HDRLEN + IFADDRMSG_LEN).unwrap_or(24);
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1_u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel assigns
    request.extend_from_slice(&[0; IFADDRMSG_LEN]); // AF_UNSPEC: every family
    sendto(
        &fd,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    // A dump ends with NLMSG_DONE; bound the loop anyway.
    for _ in 0..10_000 {
        let (n, _) = recv(&fd, &mut buf[..], RecvFlags::empty())?;
        if n == 0 {
            break;
        }
        if parse_messages(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
    Ok(out)
}

/// Sets `net.ipv4.conf.<interface>.accept_local = 1` on the interface `ifindex` of this
/// network namespace, through rtnetlink (`RTM_SETLINK` with `IFLA_AF_SPEC` /
/// `AF_INET` / `IFLA_INET_CONF`) rather than /proc/sys: a container has /proc/sys
/// mounted read-only, and CAP_NET_ADMIN is all this needs.
pub fn set_accept_local(ifindex: u32) -> io::Result<()> {
    // The attributes, innermost first: one u32 setting, in IFLA_INET_CONF, in AF_INET,
    // in IFLA_AF_SPEC (each header: length and type, u16 each; lengths include it).
    let setting = [
        &8_u16.to_ne_bytes()[..],
        &IPV4_DEVCONF_ACCEPT_LOCAL.to_ne_bytes(),
        &1_u32.to_ne_bytes(),
    ]
    .concat();
    let nest = |kind: u16, inner: &[u8]| {
        let len = u16::try_from(4 + inner.len()).unwrap_or(u16::MAX);
        [&len.to_ne_bytes()[..], &kind.to_ne_bytes(), inner].concat()
    };
    let attributes = nest(
        IFLA_AF_SPEC,
        &nest(AF_INET, &nest(IFLA_INET_CONF, &setting)),
    );
    let len = u32::try_from(NLMSG_HDRLEN + IFINFOMSG_LEN + attributes.len()).unwrap_or(u32::MAX);
    let mut request = Vec::with_capacity(len as usize);
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    request.extend_from_slice(&1_u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel assigns
    // struct ifinfomsg: family, pad, type, index, flags, change.
    request.extend_from_slice(&[0; 4]);
    request.extend_from_slice(&ifindex.to_ne_bytes());
    request.extend_from_slice(&[0; 8]);
    request.extend_from_slice(&attributes);
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    sendto(
        &fd,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = vec![0_u8; 4096];
    let (n, _) = recv(&fd, &mut buf[..], RecvFlags::empty())?;
    // The answer is the acknowledgement: an NLMSG_ERROR with errno 0, or the error.
    parse_messages(&buf[..n], &mut Vec::new()).map(|_| ())
}

/// Parses one datagram of the dump into `out`; `Ok(true)` at the end of the dump.
fn parse_messages(mut data: &[u8], out: &mut Vec<NodeAddress>) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            RTM_NEWADDR => {
                if let Some(address) = parse_address(body) {
                    out.push(address);
                }
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        data = data.get(aligned..).unwrap_or(&[]);
    }
    Ok(false)
}

fn parse_address(body: &[u8]) -> Option<NodeAddress> {
    let header = body.get(..IFADDRMSG_LEN)?;
    let family = header[0];
    let prefix_len = header[1];
    let scope = header[3];
    let ifindex = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let mut attrs = &body[IFADDRMSG_LEN..];
    let (mut local, mut address, mut label) = (None, None, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        let ip = match (family, value.len()) {
            (2, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                value[0], value[1], value[2], value[3],
            ))),
            (10, 16) => {
                let mut octets = [0; 16];
                octets.copy_from_slice(value);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        };
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            IFA_LABEL => label = Some(value),
            _ => {}
        }
        let aligned = (len + 3) & !3;
        attrs = attrs.get(aligned..).unwrap_or(&[]);
    }
    // For IPv4 `IFA_LOCAL` is the interface's own address (`IFA_ADDRESS` is the peer's on
    // point-to-point links); IPv6 has only `IFA_ADDRESS`.
    Some(NodeAddress {
        ifindex,
        ifname: label.map_or_else(String::new, |l| {
            String::from_utf8_lossy(l).trim_end_matches('\0').to_owned()
        }),
        address: local.or(address)?,
        prefix_len,
        scope,
    })
}

/// The interfaces to attach to by default: those carrying a global IPv4 address, sorted.
#[must_use]
pub fn default_interfaces(addresses: &[NodeAddress]) -> Vec<String> {
    let mut names: Vec<String> = addresses
        .iter()
        .filter(|a| a.address.is_ipv4() && a.is_global() && !a.ifname.is_empty())
        .map(|a| a.ifname.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::{NodeAddress, default_interfaces, node_addresses};

    #[test]
    fn loopback_is_listed_and_not_a_default_interface() {
        let addresses = node_addresses().expect("RTM_GETADDR dump");
        let lo = addresses
            .iter()
            .find(|a| a.address == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("127.0.0.1 on lo");
        assert_eq!(lo.ifname, "lo");
        assert_eq!(lo.prefix_len, 8);
        assert!(!lo.is_global());
        assert!(!default_interfaces(&addresses).contains(&"lo".to_owned()));
    }

    #[test]
    fn defaults_are_global_ipv4_interfaces() {
        let a = |name: &str, ip: [u8; 4], scope| NodeAddress {
            ifindex: 2,
            ifname: name.to_owned(),
            address: IpAddr::V4(Ipv4Addr::from(ip)),
            prefix_len: 24,
            scope,
        };
        let list = [
            a("eth1", [10, 0, 0, 1], 0),
            a("eth0", [192, 168, 1, 1], 0),
            a("eth0", [192, 168, 2, 1], 0),
            a("lo", [127, 0, 0, 1], 254),
            a("cni0", [169, 254, 0, 1], 253),
        ];
        assert_eq!(default_interfaces(&list), ["eth0", "eth1"]);
    }

    /// Through rtnetlink, as fairlead does in a container (where /proc/sys is read-only),
    /// on an interface of a throw-away namespace; read back through /proc/sys.
    #[cfg(feature = "testing")]
    #[test]
    fn accept_local_is_set_through_rtnetlink() {
        use crate::testing::{TestNetns, privileged};
        if !privileged("accept_local_is_set_through_rtnetlink") {
            return;
        }
        let ns = TestNetns::new("acl").expect("netns");
        let peer = TestNetns::new("acl").expect("netns");
        let (dev, _) = ns.link(&["10.1.0.1/24"], &peer, &[]).expect("veth");
        let read = || {
            let out = ns
                .command("sysctl")
                .args(["-n", &format!("net.ipv4.conf.{dev}.accept_local")])
                .output()
                .expect("sysctl");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(read(), "0");
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter().expect("enter the namespace");
                let index = super::node_addresses()
                    .expect("RTM_GETADDR dump")
                    .into_iter()
                    .find(|a| a.ifname == dev)
                    .expect("the veth's address")
                    .ifindex;
                super::set_accept_local(index)
            })
            .join()
            .expect("the thread")
        });
        result.expect("RTM_SETLINK");
        assert_eq!(read(), "1");
        // An interface that does not exist is an error, not a silent success.
        let missing = std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter().expect("enter the namespace");
                super::set_accept_local(999_999)
            })
            .join()
            .expect("the thread")
        });
        assert!(missing.is_err(), "{missing:?}");
    }
}
