//! Program attachments that outlive the agent: every BPF link is pinned as
//! `<bpffs>/links/<stable name>`, so the kernel keeps running the programs while
//! `fairlead proxy` is stopped, killed, restarted or upgraded, and a new agent takes the
//! hooks over without a moment where a hook is empty or runs twice.
//!
//! [`PinnedLinks::install`] makes one named hook run a freshly loaded program:
//!
//! - a link pinned under that name and attached to the same target (the same cgroup, the
//!   same interface) gets the new program with `BPF_LINK_UPDATE`: the kernel swaps the
//!   program in place, so every socket operation runs either the old or the new program,
//!   exactly once;
//! - otherwise (first start, another target, a kernel refusing the update) a new link is
//!   attached and pinned in place of the old pin (an atomic rename on bpffs), which drops
//!   the old link. Between the attach and the rename both run; for the socket programs that
//!   is harmless, since the second one to run sees a backend address, which is not a
//!   service, and leaves it alone.
//!
//! Nothing detaches when the agent exits, whatever the signal. [`PinnedLinks::prune`]
//! drops the pins of hooks a run did not install (a newer build without that program);
//! [`cleanup`] removes every link and map pin, for `fairlead proxy --cleanup`.
//!
//! The API takes any aya link that converts into an [`FdLink`] (cgroup, TCX, XDP links), so
//! every attachment of the data path can go through it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkError};
use tracing::{debug, info, warn};

use crate::Error;
use crate::sys;

/// Where a link is attached, to tell whether a pinned link can simply take a new program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A cgroup v2 directory (cgroup links: socket programs, cgroup skb, ...).
    Cgroup(PathBuf),
    /// A network interface (TCX and XDP links), by index.
    Interface(u32),
}

impl Hook {
    /// The kernel's identifier of the target: the cgroup id (the directory's inode on
    /// cgroup v2) or the interface index.
    fn target_id(&self) -> io::Result<u64> {
        match self {
            Hook::Cgroup(dir) => Ok(fs::metadata(dir)?.ino()),
            Hook::Interface(ifindex) => Ok(u64::from(*ifindex)),
        }
    }

    fn link_matches(&self, info: &sys::LinkInfo) -> bool {
        let Ok(id) = self.target_id() else {
            return false;
        };
        let (link_type, target, _) = info.target_key();
        match self {
            Hook::Cgroup(_) => link_type == sys::LINK_TYPE_CGROUP && target == id,
            Hook::Interface(_) => {
                matches!(
                    link_type,
                    sys::LINK_TYPE_XDP | sys::LINK_TYPE_TCX | sys::LINK_TYPE_NETKIT
                ) && target == id
            }
        }
    }
}

/// How [`PinnedLinks::install`] put the program in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The pinned link now runs the new program (`BPF_LINK_UPDATE`); no new link.
    Updated {
        /// The kernel id of the link (unchanged).
        link_id: u32,
    },
    /// A new link was attached and pinned; the link pinned before, if any, is gone.
    Attached {
        /// The kernel id of the new link.
        link_id: u32,
        /// Whether a pinned link was replaced (another target, or the update failed).
        replaced: bool,
    },
}

impl Installed {
    /// The kernel id of the link that runs the program now.
    #[must_use]
    pub fn link_id(&self) -> u32 {
        match self {
            Installed::Updated { link_id } | Installed::Attached { link_id, .. } => *link_id,
        }
    }
}

/// The links pinned in one directory of a bpffs, each under a stable name.
#[derive(Debug)]
pub struct PinnedLinks {
    dir: PathBuf,
    installed: BTreeSet<String>,
}

/// Prefix of the pin a new link gets before it is renamed over the old one (bpffs refuses
/// names with dots).
const STAGING_PREFIX: &str = "staging-";

impl PinnedLinks {
    /// Opens (creating it if needed) the directory `dir`, which must be on a bpffs.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| Error::PinDirectory {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            installed: BTreeSet::new(),
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names pinned in the directory now, sorted.
    pub fn pinned(&self) -> Result<Vec<String>, Error> {
        pinned_names(&self.dir)
    }

    /// Makes the hook `name` run `program`, which must be loaded, with no gap (see the
    /// module documentation): a link pinned as `name` on `hook` takes the program in place;
    /// otherwise `attach` attaches it (returning the aya link) and the new link is pinned
    /// as `name`, replacing the old pin.
    ///
    /// `name` is a plain file name (no `/`, no `.`: bpffs reserves dots; not starting with
    /// `staging-`), stable across versions for the same hook.
    pub fn install<L>(
        &mut self,
        name: &str,
        hook: &Hook,
        program: BorrowedFd<'_>,
        attach: impl FnOnce() -> Result<L, Error>,
    ) -> Result<Installed, Error>
    where
        L: TryInto<FdLink, Error = LinkError>,
    {
        if name.is_empty()
            || name.contains('/')
            || name.starts_with(STAGING_PREFIX)
            || name.contains('.')
        {
            return Err(Error::LinkName {
                name: name.to_owned(),
            });
        }
        let path = self.dir.join(name);
        let mut replaced = false;
        if path.exists() {
            match sys::obj_get(&path).and_then(|fd| Ok((sys::link_info(&fd)?, fd))) {
                Ok((info, fd)) if hook.link_matches(&info) => {
                    match sys::link_update(&fd, program) {
                        Ok(()) => {
                            debug!(
                                link = name,
                                link_id = info.id,
                                old_prog_id = info.prog_id,
                                "the pinned link takes the new program"
                            );
                            self.installed.insert(name.to_owned());
                            return Ok(Installed::Updated { link_id: info.id });
                        }
                        Err(e) => {
                            warn!(link = name, error = %e, "updating the pinned link failed; attaching a new one");
                        }
                    }
                }
                Ok((info, _)) => {
                    info!(
                        link = name,
                        link_id = info.id,
                        ?hook,
                        "the pinned link is attached elsewhere; replacing it"
                    );
                }
                Err(e) => {
                    warn!(link = name, error = %e, "cannot open the pinned link; replacing it");
                }
            }
            replaced = true;
        }
        let link: FdLink = attach()?.try_into().map_err(|source| Error::Link {
            name: name.to_owned(),
            source,
        })?;
        // Pin beside, then rename over the old pin: the old link is dropped (and detaches)
        // only once the new one is attached and pinned.
        let staging = self.dir.join(format!("{STAGING_PREFIX}{name}"));
        let _ = fs::remove_file(&staging);
        let pinned = link.pin(&staging).map_err(|source| Error::PinLink {
            path: staging.clone(),
            source: match source {
                aya::pin::PinError::SyscallError(e) => e.io_error,
                other => io::Error::other(other),
            },
        })?;
        let link_id = sys::obj_get(&staging)
            .and_then(sys::link_info)
            .map(|i| i.id)
            .unwrap_or_default();
        fs::rename(&staging, &path).map_err(|source| Error::PinLink {
            path: path.clone(),
            source,
        })?;
        drop(pinned);
        self.installed.insert(name.to_owned());
        debug!(
            link = name,
            link_id, replaced, "new link attached and pinned"
        );
        Ok(Installed::Attached { link_id, replaced })
    }

    /// Unpins the link `name` (it detaches, unless something else holds it), if pinned.
    /// Returns whether it was.
    pub fn unpin(&mut self, name: &str) -> Result<bool, Error> {
        self.installed.remove(name);
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::PinLink { path, source }),
        }
    }

    /// Unpins every link of the directory that this run did not install (hooks a newer
    /// build no longer has, leftovers of an interrupted install): they detach. Returns
    /// their names.
    pub fn prune(&mut self) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        for name in self.pinned()? {
            if !self.installed.contains(&name) {
                let path = self.dir.join(&name);
                fs::remove_file(&path).map_err(|source| Error::PinLink { path, source })?;
                info!(link = name, "unpinned a link no hook of this build uses");
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

fn pinned_names(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::PinDirectory {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::PinDirectory {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_file())
            && let Some(name) = entry.file_name().to_str()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Link pins removed (their programs detached).
    pub links: Vec<String>,
    /// Map pins removed (the maps are freed once no program uses them).
    pub maps: Vec<String>,
}

/// Removes everything `fairlead proxy --bpffs dir` leaves behind: every link pinned under
/// `dir/links` (detached at once, then unpinned) and every map of [`fairlead_abi::maps::ALL`] pinned
/// under `dir`, then the directories if empty. Idempotent; what is not there is skipped.
pub fn cleanup(dir: &Path) -> Result<Cleanup, Error> {
    let mut done = Cleanup::default();
    let links_dir = links_dir(dir);
    for name in pinned_names(&links_dir)? {
        let path = links_dir.join(&name);
        // Detach first: removing the pin alone lets the program run until the kernel
        // frees the pin's inode, after `--cleanup` has returned.
        match sys::obj_get(&path).and_then(sys::link_detach) {
            Ok(()) => {}
            Err(error) => {
                debug!(pin = %path.display(), %error, "not detached; unpinning it detaches it later");
            }
        }
        remove_pin(&path)?;
        done.links.push(name);
    }
    remove_empty_dir(&links_dir)?;
    let names = fairlead_abi::maps::ALL.iter().map(|spec| spec.name);
    // And the maps older versions pinned that this one no longer has.
    for name in names.chain(fairlead_abi::maps::RETIRED) {
        let path = dir.join(name);
        if path.exists() {
            remove_pin(&path)?;
            done.maps.push(name.to_owned());
        }
    }
    remove_empty_dir(dir)?;
    info!(
        bpffs = %dir.display(),
        links = done.links.len(),
        maps = done.maps.len(),
        "removed fairlead's pinned links and maps"
    );
    Ok(done)
}

/// The directory links are pinned in, under the `--bpffs` directory.
#[must_use]
pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

fn remove_pin(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::PinLink {
            path: path.to_owned(),
            source,
        }),
    }
}

fn remove_empty_dir(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(Error::PinDirectory {
            path: dir.to_owned(),
            source,
        }),
    }
}
