//! `aya::Pod` for every map key and value type, so user space can read and write the maps.

#![expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait: implementing it asserts the layout rules below"
)]

use crate::{
    Ct4Key, CtValue, MaglevKey, MaglevTable, SourceRange4Key,
    AffinityKey, AffinityValue, Backend4, Backend6, RevNat4, RevNat6, Service4Key, Service6Key,
    ServiceValue, SockRevNat4, SockRevNat4Key, SockRevNat6, SockRevNat6Key,
};

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

// SAFETY: `#[repr(C)]`, integer fields with explicit `_pad`, no implicit padding (layout
// tests in `sock`), every bit pattern valid.
unsafe impl aya::Pod for SockRevNat4Key {}

// SAFETY: `#[repr(C)]`, integer fields filling all 8 bytes (layout tests), every bit
// pattern valid.
unsafe impl aya::Pod for SockRevNat4 {}

// SAFETY: `#[repr(C)]`, integer and byte-array fields with explicit `_pad` (layout tests),
// every bit pattern valid.
unsafe impl aya::Pod for SockRevNat6Key {}

// SAFETY: `#[repr(C)]`, a byte array and integer fields filling all 20 bytes (layout
// tests), every bit pattern valid.
unsafe impl aya::Pod for SockRevNat6 {}

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
