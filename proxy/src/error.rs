//! The one error type of this crate.

use std::{io, path::PathBuf};

use aya::{
    EbpfError,
    maps::MapError,
    programs::{ProgramError, links::LinkError},
};

/// What went wrong while loading, attaching or using the data path.
///
/// Messages name the program, map or path involved; the kernel's reason (a verifier log, an
/// errno) is in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This binary embeds the empty placeholder object of an `AYA_BUILD_SKIP=1` build.
    #[error(
        "the embedded eBPF object is empty: fairlead-proxy was built with AYA_BUILD_SKIP=1; \
         rebuild without it (needs nightly rust-src and bpf-linker: scripts/setup.sh) to load \
         the data path"
    )]
    PlaceholderObject,

    /// The object could not be parsed, or its maps could not be created or adopted.
    #[error("loading the eBPF object into the kernel failed")]
    Load(#[source] EbpfError),

    /// The pin directory could not be created.
    #[error("cannot create the map pin directory {path}")]
    PinDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A pinned map could not be inspected.
    #[error("cannot inspect the pinned map {path}")]
    InspectPin {
        /// The pinned map.
        path: PathBuf,
        /// Why.
        #[source]
        source: MapError,
    },

    /// A map pinned by an earlier run has another layout than this build expects; adopting
    /// it would make programs and user space disagree on every entry.
    #[error(
        "the pinned map {path} does not match this build ({field}: pinned {pinned}, expected \
         {expected}); remove it to let fairlead create it again (this drops its entries)"
    )]
    IncompatiblePin {
        /// The pinned map.
        path: PathBuf,
        /// What differs (`map type`, `key size`, `value size`, `flags`).
        field: &'static str,
        /// The pinned map's value.
        pinned: String,
        /// This build's value.
        expected: String,
    },

    /// The object has no program of that name.
    #[error("the eBPF object has no program {name}")]
    MissingProgram {
        /// The program.
        name: String,
    },

    /// Loading (verifying) or attaching a program failed.
    #[error("program {name}: {action} failed")]
    Program {
        /// The program.
        name: String,
        /// `load`, `attach`, ...
        action: &'static str,
        /// The kernel's answer; for `load`, it carries the verifier log.
        #[source]
        source: ProgramError,
    },

    /// The object holds a kind of program that needs an attach target to be loaded, which
    /// this crate does not know how to provide.
    #[error("program {name} is a {kind} program; fairlead-proxy does not know how to load it")]
    UnsupportedProgram {
        /// The program.
        name: String,
        /// Its kind.
        kind: &'static str,
    },

    /// The object has no map of that name.
    #[error("the eBPF object has no map {name}")]
    MissingMap {
        /// The map.
        name: &'static str,
    },

    /// A map is not of the kind `fairlead_abi::maps` declares.
    #[error("map {name} is not of the kind fairlead_abi declares")]
    UnexpectedMapKind {
        /// The map.
        name: &'static str,
    },

    /// A map operation failed, or the map is not of the expected kind.
    #[error("map {name}: {action} failed")]
    Map {
        /// The map.
        name: &'static str,
        /// `open`, `read`, ...
        action: &'static str,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },

    /// The cgroup to attach to could not be opened.
    #[error("cannot open the cgroup {path}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A link name for [`crate::PinnedLinks::install`] that is not a plain file name.
    #[error(
        "invalid link name {name:?}: a file name without '/' or '.', not starting with staging-"
    )]
    LinkName {
        /// The name.
        name: String,
    },

    /// A new link could not be turned into a pinnable fd link.
    #[error("link {name}: not a BPF link that can be pinned")]
    Link {
        /// The link's name.
        name: String,
        /// aya's answer.
        #[source]
        source: LinkError,
    },

    /// A link could not be pinned, renamed or unpinned.
    #[error("cannot pin or unpin the link {path}")]
    PinLink {
        /// The pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A flag has a value fairlead cannot use.
    #[error("invalid --{flag}: {reason}")]
    InvalidArgument {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },

    /// A network interface named on the command line does not exist (here).
    #[error("no interface {name} in this network namespace")]
    Interface {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// The node's addresses could not be read (rtnetlink).
    #[error("cannot read the node's addresses (rtnetlink)")]
    NodeAddresses(#[source] io::Error),

    /// A bug: something that cannot happen did.
    #[error("internal error: {0}")]
    Internal(&'static str),
}
