//! Builds the eBPF object (`ebpf/programs`) for bpfel-unknown-none with aya-build and leaves
//! it in `OUT_DIR/fairlead-programs`, where `src/object.rs` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (or `true`) nothing is built: an empty placeholder object is
//! written instead, so `cargo check`, `clippy` and unit tests work without nightly or
//! bpf-linker. A binary built that way refuses to load programs (`Error::PlaceholderObject`).

use std::{env, fs, path::PathBuf};

use aya_build::{Package, Toolchain};

/// The program package, and the name of its binary (the object file aya-build copies).
const PROGRAMS: &str = "fairlead-programs";
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join(PROGRAMS);

    if skip_requested() {
        // Overwrite, so an object built earlier in this OUT_DIR is not embedded by mistake.
        fs::write(&object, [])?;
        println!(
            "cargo:warning={SKIP} is set: embedding an EMPTY eBPF object; this build of \
             fairlead-proxy cannot load programs"
        );
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let programs_dir = manifest_dir.join("..").join("ebpf").join("programs");
    let programs_dir = programs_dir
        .to_str()
        .expect("the workspace path is UTF-8")
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: PROGRAMS,
            root_dir: &programs_dir,
            ..Package::default()
        }],
        Toolchain::default(),
    )?;
    if !object.is_file() {
        let missing = format!("aya-build did not produce {}", object.display());
        return Err(std::io::Error::other(missing).into());
    }
    Ok(())
}

/// The same test aya-build applies: `1` or `true` (any case).
fn skip_requested() -> bool {
    env::var_os(SKIP).is_some_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
}
