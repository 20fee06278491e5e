//! The few `bpf(2)` commands aya 0.14 does not expose: replacing the program of a link
//! (`BPF_LINK_UPDATE`, public in aya only for XDP and TC links), reading what a link is
//! attached to (`BPF_OBJ_GET_INFO_BY_FD` on a link: aya's `LinkInfo` hides the target), and
//! batched map writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), and detaching a
//! link at once whoever holds it (`BPF_LINK_DETACH`).
//!
//! Each `bpf_attr` variant used here is declared as its own `#[repr(C)]` struct with the
//! kernel's layout (`include/uapi/linux/bpf.h`); the kernel zero-fills the part of
//! `union bpf_attr` beyond the size passed, so a smaller struct is a valid argument.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_CGROUP`.
pub(crate) const LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_LINK_TYPE_XDP`.
pub(crate) const LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
pub(crate) const LINK_TYPE_TCX: u32 = 11;
/// `BPF_LINK_TYPE_NETKIT`.
pub(crate) const LINK_TYPE_NETKIT: u32 = 13;

/// `attr.link_update`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `attr.link_detach`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// `attr.obj` (`BPF_OBJ_GET`).
#[repr(C, align(8))]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `attr.info`.
#[repr(C, align(8))]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `attr.batch`.
#[repr(C, align(8))]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The head of `struct bpf_link_info`: type, id, program id, then the type-specific union
/// (8-byte aligned) of which the first 16 bytes cover every target this crate reads.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    target: [u32; 4],
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub(crate) link_type: u32,
    /// The link's id (what `bpftool link` shows).
    pub(crate) id: u32,
    /// The id of the program it runs.
    pub(crate) prog_id: u32,
    /// The first 16 bytes of the type-specific part: for cgroup links the cgroup id (u64)
    /// then the attach type; for XDP the ifindex; for TCX and netkit the ifindex then the
    /// attach type.
    pub(crate) target: [u32; 4],
}

impl LinkInfo {
    /// What the link is attached to, comparable between two links of the same type.
    pub(crate) fn target_key(&self) -> (u32, u64, u32) {
        let [a, b, c, _] = self.target;
        match self.link_type {
            LINK_TYPE_CGROUP => (self.link_type, u64::from(a) | (u64::from(b) << 32), c),
            LINK_TYPE_XDP => (self.link_type, u64::from(a), 0),
            LINK_TYPE_TCX | LINK_TYPE_NETKIT => (self.link_type, u64::from(a), b),
            // Other kinds are never compared as "the same hook": they are replaced.
            other => (other, u64::from(self.id), u32::MAX),
        }
    }
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct laid out like the
    // member of `union bpf_attr` that `cmd` reads, and `size` is its exact size, so the
    // kernel reads (and, for INFO, writes) only memory we own. Pointers inside it were set
    // by the callers to buffers that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Open file descriptors are never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Opens the object pinned at `path` (a link, a map, a program): `BPF_OBJ_GET`.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `link` run `program` instead of its current program, atomically: at no moment is
/// the hook empty or running both (`BPF_LINK_UPDATE`, Linux 5.7 for cgroup links).
pub(crate) fn link_update(link: impl AsFd, program: impl AsFd) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link.as_fd()),
        new_prog_fd: fd_u32(program.as_fd()),
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches `link` from its hook now (`BPF_LINK_DETACH`, Linux 5.9 for cgroup links, 6.6
/// for TCX). Unpinning alone detaches only when the last reference goes, which the kernel
/// does later (the bpffs inode is freed after an RCU grace period).
pub(crate) fn link_detach(link: impl AsFd) -> io::Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: fd_u32(link.as_fd()),
    };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// The kernel's description of `link`.
pub(crate) fn link_info(link: impl AsFd) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(link.as_fd()),
        info_len: u32::try_from(size_of::<RawLinkInfo>()).map_err(io::Error::other)?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        target: info.target,
    })
}

/// `BPF_MAP_UPDATE_BATCH`: writes `keys[i]` → `values[i]` for every `i`, in order, in one
/// syscall. Returns how many were written; on an error, the entries before the failing one
/// are written (the count says how many) and the error is the failing entry's.
///
/// `K` and `V` must be the map's exact key and value types (plain `#[repr(C)]` data); for
/// per-CPU maps this is not usable (values are per CPU).
pub(crate) fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, io::Result<()>) {
    debug_assert_eq!(keys.len(), values.len());
    let n = keys.len().min(values.len());
    batch(
        BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr().cast(),
        values.as_ptr().cast(),
        n,
    )
}

/// `BPF_MAP_DELETE_BATCH`: deletes `keys`, in order, in one syscall. A missing key stops
/// the batch with `ENOENT` (the count says how many were deleted before it).
pub(crate) fn map_delete_batch<K: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
) -> (usize, io::Result<()>) {
    batch(
        BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr().cast(),
        std::ptr::null(),
        keys.len(),
    )
}

fn batch(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    n: usize,
) -> (usize, io::Result<()>) {
    if n == 0 {
        return (0, Ok(()));
    }
    let Ok(count) = u32::try_from(n) else {
        return (0, Err(io::Error::from_raw_os_error(libc::E2BIG)));
    };
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys as u64,
        values: values as u64,
        count,
        map_fd: fd_u32(map),
        elem_flags: 0,
        flags: 0,
    };
    let result = sys_bpf(cmd, &mut attr).map(drop);
    // The kernel writes back how many elements it processed, also on errors.
    let done = usize::try_from(attr.count).unwrap_or(0).min(n);
    match result {
        Ok(()) => (n, Ok(())),
        Err(e) => (done, Err(e)),
    }
}

/// Hands the allocator's free memory back to the kernel (`malloc_trim`). glibc keeps what
/// it freed in its arenas: after the first full sync at 10k Services that was most of the
/// process's RSS (the manifests' JSON values, the sync's plans), never used again. The
/// binary calls it too, once every component serves its first model.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers; it only returns free pages of the allocator's
    // own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::{BatchAttr, InfoAttr, LinkUpdateAttr, ObjAttr, RawLinkInfo};

    /// The layouts of `include/uapi/linux/bpf.h`.
    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(size_of::<LinkUpdateAttr>(), 16);
        assert_eq!(size_of::<InfoAttr>(), 16);
        assert_eq!(offset_of!(InfoAttr, info), 8);
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(offset_of!(BatchAttr, count), 32);
        assert_eq!(offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(offset_of!(BatchAttr, elem_flags), 40);
        assert_eq!(offset_of!(RawLinkInfo, target), 16);
        assert_eq!(size_of::<ObjAttr>(), 16);
    }
}
