//! Makes a bpf build depend on the `bpf-linker` binary; host builds need nothing.

use std::{env, path::PathBuf};

/// Cargo links the bpf object with `bpf-linker`, a binary cargo knows nothing about: rebuild
/// when it changes, and fail early and clearly when it is missing. Host builds (this crate
/// is a build-dependency of fairlead-proxy, and `cargo clippy --workspace` lints it for the
/// host) do not link an object and need no linker.
fn main() {
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    let Some(linker) = find_in_path("bpf-linker") else {
        panic!(
            "bpf-linker not found in PATH; it links the eBPF object. Install it with \
             scripts/setup.sh (see ../shared/TOOLCHAIN.md), or set AYA_BUILD_SKIP=1 to \
             build fairlead-proxy without the eBPF object"
        );
    };
    println!("cargo:rerun-if-changed={}", linker.display());
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
