//! The programs of the eBPF object: their names (the function symbols, and the names the
//! kernel reports) and where they attach.

/// `cgroup/connect4`: balances `connect()` of IPv4 sockets to service addresses.
///
/// When the program refuses a connection, `connect()` fails with `ECONNREFUSED`, as if a
/// kube-proxy REJECT rule had answered.
pub const CONNECT4: &str = "fl_connect4";

/// `cgroup/connect6`: [`CONNECT4`] for IPv6 sockets (and IPv4-mapped IPv6 addresses).
pub const CONNECT6: &str = "fl_connect6";
/// `cgroup/sendmsg4`: balances each datagram an unconnected IPv4 UDP socket sends to a
/// service address, and records the reverse translation for [`RECVMSG4`].
pub const SENDMSG4: &str = "fl_sendmsg4";
/// `cgroup/sendmsg6`: [`SENDMSG4`] for IPv6.
pub const SENDMSG6: &str = "fl_sendmsg6";
/// `cgroup/recvmsg4`: shows a reply from a backend to a UDP socket as coming from the
/// service address the socket sent to.
pub const RECVMSG4: &str = "fl_recvmsg4";
/// `cgroup/recvmsg6`: [`RECVMSG4`] for IPv6.
pub const RECVMSG6: &str = "fl_recvmsg6";
/// `cgroup/getpeername4`: a balanced socket's peer is the service address, not the backend.
pub const GETPEERNAME4: &str = "fl_getpeername4";
/// `cgroup/getpeername6`: [`GETPEERNAME4`] for IPv6.
pub const GETPEERNAME6: &str = "fl_getpeername6";

/// `cgroup/post_bind4`: refuses a local bind of a port a NodePort uses (`EPERM`).
pub const POST_BIND4: &str = "fl_post_bind4";
/// `cgroup/post_bind6`: [`POST_BIND4`] for IPv6 sockets.
pub const POST_BIND6: &str = "fl_post_bind6";
/// TC ingress (TCX) on the node's external interfaces: NodePort, LoadBalancer and external
/// IP flows balanced per packet (Maglev, conntrack, DNAT, SNAT), and their replies.
pub const TC_INGRESS: &str = "fl_tc_ingress";
/// TC egress (TCX) on the node's external interfaces: replies of local backends leave with
/// the frontend's address.
pub const TC_EGRESS: &str = "fl_tc_egress";

/// [`TC_INGRESS`] for IPv6 (a program of its own; each program has 512 bytes of stack).
pub const TC_INGRESS6: &str = "fl_tc_ingress6";
/// [`TC_EGRESS`] for IPv6.
pub const TC_EGRESS6: &str = "fl_tc_egress6";
/// XDP on the node's external interfaces (`--xdp`, in place of [`TC_INGRESS`] and
/// [`TC_INGRESS6`]): the same balancing, IPv4 and IPv6, before the kernel allocates a socket
/// buffer.
pub const XDP: &str = "fl_xdp";

/// Every program attached to the cgroup: the socket-address programs and the NodePort
/// bind guard, sorted.
pub const CGROUP: [&str; 10] = [
    CONNECT4,
    CONNECT6,
    GETPEERNAME4,
    GETPEERNAME6,
    POST_BIND4,
    POST_BIND6,
    RECVMSG4,
    RECVMSG6,
    SENDMSG4,
    SENDMSG6,
];

/// The socket-address programs, attached to the cgroup.
pub const SOCK_ADDR: [&str; 8] = [
    CONNECT4,
    CONNECT6,
    GETPEERNAME4,
    GETPEERNAME6,
    RECVMSG4,
    RECVMSG6,
    SENDMSG4,
    SENDMSG6,
];

/// Every program of the object, sorted by name.
pub const ALL: [&str; 15] = [
    CONNECT4,
    CONNECT6,
    GETPEERNAME4,
    GETPEERNAME6,
    POST_BIND4,
    POST_BIND6,
    RECVMSG4,
    RECVMSG6,
    SENDMSG4,
    SENDMSG6,
    TC_EGRESS,
    TC_EGRESS6,
    TC_INGRESS,
    TC_INGRESS6,
    XDP,
];

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::maps::NAME_MAX_LEN;

    #[test]
    fn names_fit_the_kernel_and_are_sorted() {
        for name in ALL {
            assert!(name.len() <= NAME_MAX_LEN, "{name} is too long");
        }
        assert!(ALL.is_sorted());
        assert!(super::CGROUP.is_sorted());
        assert!(super::CGROUP.iter().all(|name| ALL.contains(name)));
    }
}
