#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (scripts/setup.sh),
# checks formatting and lints, then runs every test, privileged ones included (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== tests (cargo nextest)" >&2
cargo nextest run --workspace --no-fail-fast

echo "== doc tests" >&2
cargo test --workspace --doc --quiet

echo "== clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
