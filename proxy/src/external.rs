//! The north-south half of the data path on a loaded [`Datapath`]: TC programs on the node's
//! interfaces (with pinned TCX links that outlive the agent), the node-address maps and
//! conntrack garbage collection. (The `post_bind` NodePort guard is installed with the
//! socket programs, [`Datapath::install_pinned`].)

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, MapData};
use std::os::fd::AsFd as _;

use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp};
use fairlead_abi::{BackendId, Be32, RevNatId, maps, programs};
use tracing::{info, warn};

use crate::conntrack::{self, GcReport, Timeouts};
use crate::links::{Hook, PinnedLinks};
use crate::nodeaddr::NodeAddress;
use crate::tables::Family;
use crate::{Datapath, Error};

impl Datapath {
    /// Attaches the TC programs ([`programs::TC_INGRESS`], [`programs::TC_EGRESS`] and their
    /// IPv6 twins) to the interface `ifname` (in this process's network namespace) as TCX
    /// links. With `links`, each link is pinned there (`tc-<ifname>-ingress`, ...) and one
    /// already pinned on that interface takes this run's program in place
    /// ([`PinnedLinks::install`]), so the interface is never without a program while the
    /// agent restarts; without, the programs detach when `self` drops.
    pub fn attach_interface(
        &mut self,
        ifname: &str,
        mut links: Option<&mut PinnedLinks>,
    ) -> Result<(), Error> {
        let ifindex = interface_index(ifname)?;
        for (name, attach_type, suffix) in [
            (programs::TC_INGRESS, TcAttachType::Ingress, "ingress"),
            (programs::TC_EGRESS, TcAttachType::Egress, "egress"),
            (programs::TC_INGRESS6, TcAttachType::Ingress, "ingress6"),
            (programs::TC_EGRESS6, TcAttachType::Egress, "egress6"),
        ] {
            let program = self.tc_program(name)?;
            match links.as_deref_mut() {
                None => {
                    attach_tcx(program, name, ifname, attach_type)?;
                }
                Some(links) => {
                    let fd = owned_fd(program.fd(), name)?;
                    links.install(
                        &format!("tc-{ifname}-{suffix}"),
                        &Hook::Interface(ifindex),
                        fd.as_fd(),
                        || {
                            let program = self.tc_program(name)?;
                            let id = attach_tcx(program, name, ifname, attach_type)?;
                            program
                                .take_link(id)
                                .map_err(|source| tc_error(name, "take the link of", source))
                        },
                    )?;
                }
            }
        }
        accept_local(ifname, ifindex);
        info!(
            interface = ifname,
            pinned = links.is_some(),
            "NodePort programs attached"
        );
        Ok(())
    }

    /// Detaches what [`Datapath::attach_interface`] and [`Datapath::attach_xdp`] pinned for
    /// `ifname` (an interface that went away, or no longer carries a global address):
    /// their pins are removed from `links`. Returns the names unpinned.
    pub fn detach_interface(
        &mut self,
        ifname: &str,
        links: &mut PinnedLinks,
    ) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for name in ["ingress", "egress", "ingress6", "egress6"]
            .map(|suffix| format!("tc-{ifname}-{suffix}"))
            .into_iter()
            .chain([format!("xdp-{ifname}")])
        {
            if links.unpin(&name)? {
                removed.push(name);
            }
        }
        info!(interface = ifname, links = ?removed, "NodePort programs detached");
        Ok(removed)
    }

    /// Attaches the XDP program ([`programs::XDP`]) to `ifname`, in front of the TC programs
    /// ([`Datapath::attach_interface`], which stay: egress for the replies of local backends,
    /// ingress for what XDP passes on). With `links`, the link is pinned as `xdp-<ifname>`
    /// and taken over in place on restart, as the TC links are (a pinned link keeps the mode
    /// it was attached in; `--cleanup` first to change modes).
    pub fn attach_xdp(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        links: Option<&mut PinnedLinks>,
    ) -> Result<(), Error> {
        let flags = match mode {
            XdpMode::Off => return Ok(()),
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        };
        let ifindex = interface_index(ifname)?;
        let name = programs::XDP;
        let program = self.xdp_program()?;
        match links {
            None => {
                program
                    .attach(ifname, flags)
                    .map_err(|source| tc_error(name, "attach", source))?;
            }
            Some(links) => {
                let fd = owned_fd(program.fd(), name)?;
                links.install(
                    &format!("xdp-{ifname}"),
                    &Hook::Interface(ifindex),
                    fd.as_fd(),
                    || {
                        let program = self.xdp_program()?;
                        let id = program
                            .attach(ifname, flags)
                            .map_err(|source| tc_error(name, "attach", source))?;
                        program
                            .take_link(id)
                            .map_err(|source| tc_error(name, "take the link of", source))
                    },
                )?;
            }
        }
        info!(interface = ifname, ?mode, "XDP program attached");
        Ok(())
    }

    /// The XDP program, loaded.
    fn xdp_program(&mut self) -> Result<&mut Xdp, Error> {
        let name = programs::XDP;
        let program: &mut Xdp = self
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram {
                name: name.to_owned(),
            })?
            .try_into()
            .map_err(|source| tc_error(name, "open", source))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| tc_error(name, "load", source))?;
        }
        Ok(program)
    }

    /// The TC program `name`, loaded.
    fn tc_program(&mut self, name: &str) -> Result<&mut SchedClassifier, Error> {
        let program: &mut SchedClassifier = self
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram {
                name: name.to_owned(),
            })?
            .try_into()
            .map_err(|source| tc_error(name, "open", source))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| tc_error(name, "load", source))?;
        }
        Ok(program)
    }

    /// Writes the node's addresses ([`maps::NODE_ADDR4`], [`maps::NODE_ADDR6`]: a NodePort
    /// serves each) and the source-NAT addresses ([`maps::IF_ADDR4`], [`maps::IF_ADDR6`], key
    /// 0), removing what is no longer true.
    pub fn set_node_addresses(
        &mut self,
        addresses: &[NodeAddress],
        snat: Option<Ipv4Addr>,
        snat6: Option<Ipv6Addr>,
    ) -> Result<(), Error> {
        let wanted6: BTreeMap<[u8; 16], u32> = addresses
            .iter()
            .filter_map(|a| match a.address {
                IpAddr::V6(v6) if a.is_global() => Some((v6.octets(), a.ifindex)),
                _ => None,
            })
            .collect();
        sync_hash(self, maps::NODE_ADDR6, &wanted6)?;
        let snat6: BTreeMap<u32, [u8; 16]> = snat6.map(|a| (0, a.octets())).into_iter().collect();
        sync_hash(self, maps::IF_ADDR6, &snat6)?;
        let wanted: BTreeMap<Be32, u32> = addresses
            .iter()
            .filter_map(|a| match a.address {
                IpAddr::V4(v4) if !v4.is_loopback() => Some((Be32::from_ipv4(v4), a.ifindex)),
                _ => None,
            })
            .collect();
        sync_hash(self, maps::NODE_ADDR4, &wanted)?;
        let snat: BTreeMap<u32, Be32> = snat.map(|a| (0, Be32::from_ipv4(a))).into_iter().collect();
        sync_hash(self, maps::IF_ADDR4, &snat)
    }

    /// Deletes idle flows from the conntrack maps.
    pub fn collect_conntrack(&mut self, timeouts: &Timeouts) -> Result<GcReport, Error> {
        conntrack::collect(self, timeouts)
    }

    /// Rewrites conntrack entries adopted from an earlier fairlead whose keys named the
    /// direction (see [`CtValue::FLAG_REPLY`](crate::abi::CtValue::FLAG_REPLY)), so that
    /// flows that cross the upgrade keep their translation. Returns the entries rewritten.
    pub fn migrate_conntrack(&mut self) -> Result<usize, Error> {
        conntrack::migrate_directions(self)
    }

    /// Deletes the conntrack entries of backends removed from external frontends
    /// ([`SyncReport::removed_external_backends`](crate::SyncReport)), so that their flows
    /// are balanced anew at their next packet. Returns the entries deleted.
    pub fn forget_backends(
        &mut self,
        removed: &[(Family, BackendId, RevNatId)],
    ) -> Result<usize, Error> {
        let pick = |family: Family| -> HashSet<(BackendId, RevNatId)> {
            removed
                .iter()
                .filter(|(f, _, _)| *f == family)
                .map(|&(_, id, rev_nat)| (id, rev_nat))
                .collect()
        };
        conntrack::forget_backends(self, &pick(Family::V4), &pick(Family::V6))
    }
}

/// Whether, and how, the XDP program runs on the external interfaces (`--xdp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// TC programs only.
    #[default]
    Off,
    /// In the driver (`XDP_FLAGS_DRV_MODE`): the fast one; the attach fails on a driver
    /// without XDP support.
    Native,
    /// In the kernel's generic path (`XDP_FLAGS_SKB_MODE`): works on any interface, after
    /// the socket buffer is allocated; for tests and drivers without XDP.
    Generic,
}

/// Translated packets go through the kernel's forwarding, and a flow to a backend on another
/// node leaves with a node address as source: the stack drops such packets as martians
/// unless the interface accepts local source addresses.
fn accept_local(ifname: &str, ifindex: u32) {
    if let Err(e) = crate::nodeaddr::set_accept_local(ifindex) {
        warn!(interface = ifname, error = %e, "cannot set accept_local; source-NATed NodePort flows will be dropped");
    }
}

/// Makes the hash map `name` hold exactly `wanted`.
fn sync_hash<K, V>(
    datapath: &mut Datapath,
    name: &'static str,
    wanted: &BTreeMap<K, V>,
) -> Result<(), Error>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let map = datapath
        .ebpf_mut()
        .map_mut(name)
        .ok_or(Error::MissingMap { name })?;
    let mut hash = HashMap::<&mut MapData, K, V>::try_from(map).map_err(|source| Error::Map {
        name,
        action: "open",
        source,
    })?;
    let current: Vec<(K, V)> = hash.iter().filter_map(Result::ok).collect();
    for (key, _) in &current {
        if !wanted.contains_key(key) {
            let _ = hash.remove(key);
        }
    }
    for (key, value) in wanted {
        if !current.iter().any(|(k, v)| k == key && v == value) {
            hash.insert(key, value, 0).map_err(|source| Error::Map {
                name,
                action: "write",
                source,
            })?;
        }
    }
    Ok(())
}

/// Attaches `program` to `ifname` as a TCX link (after the links already there).
fn attach_tcx(
    program: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    attach_type: TcAttachType,
) -> Result<aya::programs::tc::SchedClassifierLinkId, Error> {
    program
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| tc_error(name, "attach", source))
}

/// A descriptor of its own for the loaded program `name` (which the datapath keeps).
fn owned_fd(
    fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    name: &str,
) -> Result<std::os::fd::OwnedFd, Error> {
    fd.and_then(|fd| {
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(aya::programs::ProgramError::IOError)
    })
    .map_err(|source| tc_error(name, "open", source))
}

fn tc_error(name: &str, action: &'static str, source: aya::programs::ProgramError) -> Error {
    Error::Program {
        name: name.to_owned(),
        action,
        source,
    }
}

/// The index of the interface `ifname` in this process's network namespace.
fn interface_index(ifname: &str) -> Result<u32, Error> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|e| Error::Interface {
        name: ifname.to_owned(),
        source: e.into(),
    })?;
    rustix::net::netdevice::name_to_index(&socket, ifname).map_err(|e| Error::Interface {
        name: ifname.to_owned(),
        source: e.into(),
    })
}
