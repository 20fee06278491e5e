//! `aya::Pod` for every map key and value type, so user space can read and write the maps,
//! and constructors that only user space needs.

#![expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait: implementing it asserts the layout rules below; \
              the Maglev table is allocated zeroed on the heap"
)]

use alloc::boxed::Box;
use core::alloc::Layout;

use crate::nodeport::MAGLEV_MAX_SIZE;

use crate::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct6Key, Ct6Value, CtValue, Frag4Key,
    Frag6Key, FragPorts, MaglevKey, MaglevTable, RevNat4, RevNat6, Service4Key, Service6Key,
    ServiceValue, SockRevNat4Table, SockRevNat6Table, SourceRange4Key, SourceRange6Key,
};

// SAFETY: `repr(transparent)` over `u32`: every bit pattern valid, no padding.
unsafe impl aya::Pod for crate::Be32 {}
// SAFETY: `#[repr(C)]`, integer and byte-array fields with explicit `_pad` (layout tests in
// `nodeport`), every bit pattern valid.
unsafe impl aya::Pod for Frag4Key {}
// SAFETY: as for `Frag4Key`.
unsafe impl aya::Pod for Frag6Key {}
// SAFETY: `#[repr(C)]`, two `Be16`: no padding, every bit pattern valid.
unsafe impl aya::Pod for FragPorts {}

// SAFETY: `repr(transparent)` over `u16`: every bit pattern valid, no padding.
unsafe impl aya::Pod for crate::Be16 {}

// SAFETY: `Service4Key` is `#[repr(C)]`, `Copy` and `'static`; its fields are integers
// (`Be32`/`Be16` are `repr(transparent)` integers) laid out without implicit padding (the
// explicit `_pad` field fills the tail, checked by the layout tests), so every byte is
// initialised and every bit pattern is a valid value.
unsafe impl aya::Pod for Service4Key {}

// SAFETY: as for `Service4Key`: `#[repr(C)]`, integer and byte-array fields only, no
// implicit padding (layout tests), every bit pattern valid.
unsafe impl aya::Pod for Service6Key {}

// SAFETY: `#[repr(C)]`, integer fields only, the tail filled by the explicit `_pad` bytes
// (layout tests), every bit pattern valid.
unsafe impl aya::Pod for ServiceValue {}

// SAFETY: `#[repr(C)]`, integer fields only that fill all 8 bytes (layout tests), every
// bit pattern valid (the state is a raw `u8`, not an enum).
unsafe impl aya::Pod for Backend4 {}

// SAFETY: `#[repr(C)]`, a byte array and integer fields that fill all 20 bytes (layout
// tests), every bit pattern valid.
unsafe impl aya::Pod for Backend6 {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad`, no implicit padding (layout
// tests), every bit pattern valid.
unsafe impl aya::Pod for RevNat4 {}

// SAFETY: `#[repr(C)]`, a byte array and integer fields with explicit `_pad`, no implicit
// padding (layout tests), every bit pattern valid.
unsafe impl aya::Pod for RevNat6 {}

// SAFETY: `#[repr(C)]`, slots of integer fields with explicit `_pad` and a `u32` count
// with explicit `_pad`, no implicit padding (layout tests in `sock`), every bit pattern
// valid.
unsafe impl aya::Pod for SockRevNat4Table {}

// SAFETY: `#[repr(C)]`, slots of byte-array and integer fields with explicit `_pad`, no
// implicit padding (layout tests in `sock`), every bit pattern valid.
unsafe impl aya::Pod for SockRevNat6Table {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad` (layout tests), every bit
// pattern valid.
unsafe impl aya::Pod for AffinityKey {}

// SAFETY: `#[repr(C)]`, two `u32` (layout tests), every bit pattern valid.
unsafe impl aya::Pod for AffinityValue {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad` (layout tests in `nodeport`),
// every bit pattern valid.
unsafe impl aya::Pod for MaglevKey {}

// SAFETY: `#[repr(C)]`, a `u32` and an array of `u32`: no padding, every bit pattern valid.
unsafe impl aya::Pod for MaglevTable {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad` (layout tests), every bit
// pattern valid.
unsafe impl aya::Pod for Ct4Key {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad` filling 24 bytes (layout tests),
// every bit pattern valid.
unsafe impl aya::Pod for CtValue {}

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad` filling 8 bytes (layout tests),
// every bit pattern valid.
unsafe impl aya::Pod for SourceRange4Key {}

// SAFETY: `#[repr(C)]`, byte arrays and integers with explicit `_pad` (layout tests), every
// bit pattern valid.
unsafe impl aya::Pod for Ct6Key {}

// SAFETY: as for `Ct6Key` (48 bytes, no implicit padding).
unsafe impl aya::Pod for Ct6Value {}

// SAFETY: as for `SourceRange4Key` (20 bytes, no implicit padding).
unsafe impl aya::Pod for SourceRange6Key {}

impl MaglevTable {
    /// A table of `slots.len()` slots (at most [`MAGLEV_MAX_SIZE`]; more are cut), allocated
    /// on the heap (it is 64 KiB).
    #[must_use]
    pub fn boxed(slots: &[crate::BackendId]) -> Box<Self> {
        let layout = Layout::new::<Self>();
        // SAFETY: the layout has a non-zero size; all zeroes is a valid `MaglevTable`
        // (integers only), so the allocation is an initialised value that `Box` may own.
        let mut table = unsafe {
            #[expect(
                clippy::cast_ptr_alignment,
                reason = "allocated with the layout of `Self`, so aligned for it"
            )]
            let ptr = alloc::alloc::alloc_zeroed(layout).cast::<Self>();
            if ptr.is_null() {
                alloc::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(ptr)
        };
        let n = slots.len().min(MAGLEV_MAX_SIZE);
        table.slots[..n].copy_from_slice(&slots[..n]);
        table.size = u32::try_from(n).unwrap_or(0);
        table
    }
}
