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

# The DNS request path under libFuzzer for a bounded time, from the checked-in
# seeds (dns/fuzz/seeds/request) into a throw-away corpus. A debug build
# without sanitizer (debug assertions and overflow checks on): about 7
# CPU-minutes to build, where cargo-fuzz's default (release, one codegen unit,
# AddressSanitizer) took 23 minutes at load 9. The code under test forbids
# unsafe, so panics and wrong answers are what there is to find; the target
# also checks that the UDP fast path answers like the general path. A crash
# leaves its input in dns/fuzz/artifacts/request and fails CI.
fuzz_seconds="${FAIRLEAD_FUZZ_SECONDS:-60}"
echo "== fuzz: DNS request path (cargo fuzz, ${fuzz_seconds} s)" >&2
fuzz_corpus="$(mktemp -d)"
ingress_corpus="$(mktemp -d)"
trap 'rm -rf "$fuzz_corpus" "$ingress_corpus"' EXIT
(
  cd dns/fuzz
  cargo +nightly fuzz run request --dev --sanitizer none "$fuzz_corpus" seeds/request -- \
    -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
)

# What reaches the HTTP/1.1 framing guard (ingress/src/framing.rs) from a
# client socket, under libFuzzer: the stream cut into reads of random sizes,
# through the guard into hyper's HTTP/1.1 server. The target builds
# framing.rs alone with tokio and hyper (about 45 CPU-seconds, debug, no
# sanitizer, as above); a crash leaves its input in ingress/fuzz/artifacts/h1.
ingress_fuzz_seconds="${FAIRLEAD_INGRESS_FUZZ_SECONDS:-30}"
echo "== fuzz: ingress HTTP/1.1 framing (cargo fuzz, ${ingress_fuzz_seconds} s)" >&2
(
  cd ingress/fuzz
  cargo +nightly fuzz run h1 --dev --sanitizer none "$ingress_corpus" seeds/h1 -- \
    -max_total_time="$ingress_fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
)
