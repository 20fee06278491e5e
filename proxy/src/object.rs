//! The eBPF object built by build.rs, embedded in the binary.

/// The eBPF object (an ELF file for bpfel-unknown-none), 8-byte aligned as aya requires.
///
/// Empty when this crate was built with `AYA_BUILD_SKIP=1`; see
/// [`ebpf_object_is_placeholder`].
#[must_use]
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fairlead-programs"))
}

/// Whether the embedded object is the empty placeholder of an `AYA_BUILD_SKIP=1` build,
/// which cannot be loaded.
#[must_use]
pub fn ebpf_object_is_placeholder() -> bool {
    ebpf_object().is_empty()
}
