//! The node's own addresses, read with rtnetlink (`RTM_GETADDR` dump; messages built and
//! parsed by the `netlink-packet-route` crate), for the NodePort path: which destinations are "this node" (a NodePort serves every one of them), which
//! interfaces to attach to by default, and the address source NAT uses. Also the one
//! interface setting that path needs, written with rtnetlink too ([`set_accept_local`]).

use std::io;
use std::net::IpAddr;

use futures::StreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rtnetlink::MulticastGroup;

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

/// Every address of every interface in this network namespace (an `RTM_GETADDR` dump).
pub fn node_addresses() -> io::Result<Vec<NodeAddress>> {
    let mut out = Vec::new();
    request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        |message| {
            if let RouteNetlinkMessage::NewAddress(address) = message
                && let Some(address) = NodeAddress::from_message(&address)
            {
                out.push(address);
            }
        },
    )?;
    Ok(out)
}

/// Sets `net.ipv4.conf.<interface>.accept_local = 1` on the interface `ifindex` of this
/// network namespace, through rtnetlink (`RTM_SETLINK` with `IFLA_AF_SPEC` /
/// `AF_INET` / `IFLA_INET_CONF`, only that one setting) rather than /proc/sys: a
/// container has /proc/sys mounted read-only, and CAP_NET_ADMIN is all this needs.
pub fn set_accept_local(ifindex: u32) -> io::Result<()> {
    let mut conf = InetDevConf::default();
    conf.accept_local = 1;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    request(
        RouteNetlinkMessage::SetLink(link),
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    )
}

/// Sends one request on a new rtnetlink socket and hands every message of the answer to
/// `each`, until the dump ends (`NLMSG_DONE`) or the request is acknowledged; an error
/// answer is the error.
fn request(
    message: RouteNetlinkMessage,
    flags: u16,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let invalid = |e: netlink_packet_core::DecodeError| {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    };
    // A dump ends with NLMSG_DONE, an acknowledgement is one NLMSG_ERROR; bound the loop
    // anyway.
    for _ in 0..100_000 {
        let (data, _) = socket.recv_from_full()?;
        if data.is_empty() {
            break;
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let answer =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(invalid)?;
            let len = usize::try_from(answer.header.length).unwrap_or(0);
            match answer.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
                NetlinkPayload::InnerMessage(message) => each(message),
                _ => {}
            }
            // Messages are 4-byte aligned within a datagram.
            rest = rest.get(len.max(1).next_multiple_of(4)..).unwrap_or(&[]);
        }
    }
    Ok(())
}

impl NodeAddress {
    /// The address an `RTM_NEWADDR`/`RTM_DELADDR` message describes (`None` without one).
    /// For IPv4 `IFA_LOCAL` is the interface's own address (`IFA_ADDRESS` is the peer's on
    /// point-to-point links); IPv6 has only `IFA_ADDRESS`.
    #[must_use]
    pub fn from_message(message: &AddressMessage) -> Option<Self> {
        let (mut local, mut address, mut label) = (None, None, None);
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                _ => {}
            }
        }
        Some(Self {
            ifindex: message.header.index,
            ifname: label.unwrap_or_default(),
            address: local.or(address)?,
            prefix_len: message.header.prefix_len,
            scope: u8::from(message.header.scope),
        })
    }
}

/// Link and address changes of this network namespace as rtnetlink announces them
/// (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`), through the `rtnetlink`
/// crate. An event says only that something changed: the caller reads the addresses again
/// ([`node_addresses`]) and reconciles, so a lost event (a full socket buffer) costs at most
/// the next one's delay, never a wrong state.
#[derive(Debug)]
pub struct NodeEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
    _handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl NodeEvents {
    /// Subscribes, on the current tokio runtime.
    pub fn subscribe() -> io::Result<Self> {
        let (connection, handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])?;
        Ok(Self {
            messages,
            _handle: handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Waits for the next link or address change; `None` once the subscription is gone.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            let (message, _) = self.messages.next().await?;
            if let NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::NewAddress(_)
                | RouteNetlinkMessage::DelAddress(_),
            ) = message.payload
            {
                return Some(());
            }
        }
    }
}

impl Drop for NodeEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
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
