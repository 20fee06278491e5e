//! The north-south half of the data path on a loaded [`Datapath`]: TC programs on the node's
//! interfaces (with pinned TCX links that outlive the agent), the `post_bind4` NodePort
//! guard, the node-address maps and conntrack garbage collection.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{CgroupAttachMode, CgroupSock, LinkOrder, SchedClassifier, TcAttachType};
use fairlead_abi::{Be32, maps, programs};
use tracing::{debug, info, warn};

use crate::conntrack::{self, GcReport, Timeouts};
use crate::nodeaddr::NodeAddress;
use crate::{Datapath, Error};

impl Datapath {
    /// Attaches the TC programs ([`programs::TC_INGRESS`], [`programs::TC_EGRESS`] and their
    /// IPv6 twins) to the interface `ifname` (in this process's network namespace) as TCX
    /// links. With `links_dir`, each link is pinned there (`tc-<ifname>-ingress`, ...) and an
    /// already pinned link is switched to this run's program in place, so the interface is
    /// never without a program while the agent restarts; without, the programs detach when
    /// `self` drops.
    pub fn attach_interface(
        &mut self,
        ifname: &str,
        links_dir: Option<&Path>,
    ) -> Result<(), Error> {
        for (name, attach_type, suffix) in [
            (programs::TC_INGRESS, TcAttachType::Ingress, "ingress"),
            (programs::TC_EGRESS, TcAttachType::Egress, "egress"),
            (programs::TC_INGRESS6, TcAttachType::Ingress, "ingress6"),
            (programs::TC_EGRESS6, TcAttachType::Egress, "egress6"),
        ] {
            let program: &mut SchedClassifier = self
                .ebpf_mut()
                .program_mut(name)
                .ok_or_else(|| Error::MissingProgram {
                    name: name.to_owned(),
                })?
                .try_into()
                .map_err(|source| Error::Program {
                    name: name.to_owned(),
                    action: "open",
                    source,
                })?;
            if program.fd().is_err() {
                program.load().map_err(|source| Error::Program {
                    name: name.to_owned(),
                    action: "load",
                    source,
                })?;
            }
            let pin = links_dir.map(|dir| dir.join(format!("tc-{ifname}-{suffix}")));
            attach_tc(program, name, ifname, attach_type, pin.as_deref())?;
        }
        accept_local(ifname);
        info!(
            interface = ifname,
            pinned = links_dir.is_some(),
            "NodePort programs attached"
        );
        Ok(())
    }

    /// Attaches [`programs::POST_BIND4`] and [`programs::POST_BIND6`] to the cgroup v2
    /// directory `cgroup`: processes in it cannot bind a port a NodePort uses. Detached when
    /// `self` drops.
    pub fn attach_post_bind(&mut self, cgroup: &Path) -> Result<(), Error> {
        for name in [programs::POST_BIND4, programs::POST_BIND6] {
            self.attach_cgroup_sock(name, cgroup)?;
        }
        Ok(())
    }

    fn attach_cgroup_sock(&mut self, name: &str, cgroup: &Path) -> Result<(), Error> {
        let cgroup_dir = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let program: &mut CgroupSock = self
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram {
                name: name.to_owned(),
            })?
            .try_into()
            .map_err(|source| Error::Program {
                name: name.to_owned(),
                action: "open",
                source,
            })?;
        if program.fd().is_err() {
            program.load().map_err(|source| Error::Program {
                name: name.to_owned(),
                action: "load",
                source,
            })?;
        }
        program
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(|source| Error::Program {
                name: name.to_owned(),
                action: "attach",
                source,
            })?;
        debug!(cgroup = %cgroup.display(), program = name, "attached");
        Ok(())
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
}

/// Translated packets go through the kernel's forwarding, and a flow to a backend on another
/// node leaves with a node address as source: the stack drops such packets as martians
/// unless the interface accepts local source addresses.
fn accept_local(ifname: &str) {
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("accept_local");
    if let Err(e) = fs::write(&path, "1") {
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

/// Attaches `program` to `ifname` through a TCX link, pinned at `pin` when given. A link
/// already pinned there (an earlier run's) is switched to `program` atomically; if that
/// fails (the interface was re-created, ...), it is removed and a new link made.
///
/// This is the one place TC links are pinned: the cgroup links' pinning (`links.rs`) can
/// absorb it.
fn attach_tc(
    program: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    attach_type: TcAttachType,
    pin: Option<&Path>,
) -> Result<(), Error> {
    let program_error = |action, source| Error::Program {
        name: name.to_owned(),
        action,
        source,
    };
    if let Some(path) = pin
        && path.exists()
    {
        let replaced = PinnedLink::from_pin(path)
            .ok()
            .and_then(|old| SchedClassifierLink::try_from(FdLink::from(old)).ok())
            .and_then(|link| program.attach_to_link(link).ok());
        if let Some(id) = replaced {
            // The pin keeps the link (and so the attachment) alive; our handle can go.
            if let Ok(link) = program.take_link(id) {
                drop(link);
            }
            debug!(program = name, interface = ifname, path = %path.display(), "pinned TC link switched to this program");
            return Ok(());
        }
        warn!(program = name, interface = ifname, path = %path.display(), "pinned TC link unusable; attaching anew");
        let _ = fs::remove_file(path);
    }
    let id = program
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| program_error("attach", source))?;
    let Some(path) = pin else {
        return Ok(());
    };
    let link = program
        .take_link(id)
        .map_err(|source| program_error("take link", source))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| Error::PinLink {
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| Error::PinDirectory {
            path: dir.to_owned(),
            source,
        })?;
    }
    fd_link.pin(path).map_err(|e| Error::PinLink {
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// Where TC links are pinned under a map pin directory.
#[must_use]
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}
