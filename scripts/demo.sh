#!/usr/bin/env bash
# Runs fairlead on the embedded default: the example cluster in examples/.
# Installs what is missing first (scripts/setup.sh). Today that means checking
# the eBPF programs against this kernel and printing the model the manifests
# make; each data plane joins this demo as it lands.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --quiet --bin fairlead
bin=target/debug/fairlead

echo "== fairlead check --kernel: does this kernel accept fairlead's eBPF programs?" >&2
"$bin" check --kernel
echo >&2
echo "== fairlead check --manifests examples/: the model of the example cluster" >&2
"$bin" check --manifests examples
