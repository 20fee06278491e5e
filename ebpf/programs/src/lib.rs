//! Library target of fairlead's eBPF programs, empty on purpose: fairlead-proxy
//! build-depends on this package so cargo rebuilds the object when the programs change; the
//! programs themselves are the `fairlead-programs` binary (`src/main.rs`).

#![no_std]
