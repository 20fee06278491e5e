#!/usr/bin/env bash
# Installs what fairlead needs to build and test on a Debian machine of the
# project's kind. Idempotent: every step checks first and skips what is present.
# Needs root for apt-get; run as root (CI does).
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

# The ingress gateway's TLS (rustls on aws-lc-rs) needs only the C compiler
# Rust already needs: aws-lc-sys builds with the cc crate (no cmake, no
# clang; bindings ship pre-generated for x86_64 and aarch64 Linux).
# openssl: the s_client of the ingress TLS tests.
need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# buildah, podman, runc, binutils (objcopy), python3-yaml and libcap2-bin (capsh):
# the container image (scripts/image.sh) and its test, which runs it as
# deploy/ does (scripts/run-pod.py). podman runs with `--runtime runc`: crun,
# its default, refuses the hybrid cgroup layout of this kind of machine.
for pkg in llvm-22-dev bpftool iproute2 dnsutils knot-dnsutils curl nghttp2-client python3 iptables nftables procps util-linux iperf3 openssl \
    buildah podman runc binutils python3-yaml libcap2-bin; do
  have_pkg "$pkg" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
else
  log "Debian packages present"
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  if ! rustup component add rust-src --toolchain nightly; then
    log "ERROR: could not add rust-src to the nightly toolchain; the eBPF object cannot be built without it"
    exit 1
  fi
else
  log "nightly rust-src present"
fi

if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  log "cargo install bpf-linker 0.13.0 (against LLVM 22, about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
else
  log "bpf-linker 0.13.0 present"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "cargo install cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The DNS request path's fuzz target (dns/fuzz) runs briefly in CI.
if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  log "cargo install cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked
else
  log "cargo-fuzz present"
fi

# bpffs: pinned maps live here; not mounted at boot on this kind of machine.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  log "mount bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
