#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (scripts/setup.sh),
# checks formatting and lints, then runs every test, privileged ones included (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

# The shipped artefact: the release binary in the container image, at most
# 30 MB. tests/image.rs runs this image as deploy/ does. Cost, measured from a
# cold target dir: the release build (fat LTO, one codegen unit) 7m45s on 2
# quiet cores, packaging 11 s; the image test about 45 s, alongside the other
# tests.
echo "== container image (scripts/image.sh, release build)" >&2
# The size guard: 33.9 MB since the Gateway API status and GRPCRoute, the
# rtnetlink crates, explain and Events landed (25.7 MB before); 40 keeps a
# regression visible while the growth is looked into.
image="$(bash scripts/image.sh --max-size 40 | tee /dev/stderr | sed -n 's/^image: //p')"
[ -n "$image" ] || { echo "scripts/image.sh named no image" >&2; exit 1; }
export FAIRLEAD_IMAGE="$image"

echo "== tests (cargo nextest)" >&2
cargo nextest run --workspace --no-fail-fast

echo "== doc tests" >&2
cargo test --workspace --doc --quiet

echo "== clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The DNS server under libFuzzer for a bounded time per target, from the
# committed corpus (dns/fuzz/corpus/<target>, minimised after each long
# campaign) and the hand-written seeds (dns/fuzz/seeds/<target>), new inputs
# going to a throw-away directory. Targets: `request` (raw messages through
# the UDP fast path and the general path, which must agree), `tcp` (byte
# streams through the TCP connection loop: framing, pipelining, partial
# reads), `edns` (well-formed questions with any OPT record). A debug build
# without sanitizer (debug assertions and overflow checks on): about 7
# CPU-minutes to build, where cargo-fuzz's default (release, one codegen
# unit, AddressSanitizer) took 23 minutes at load 9. The code under test
# forbids unsafe, so panics and wrong answers are what there is to find. A
# crash leaves its input in dns/fuzz/artifacts/<target> and fails CI.
fuzz_seconds="${FAIRLEAD_FUZZ_SECONDS:-40}"
fuzz_corpus="$(mktemp -d)"
ingress_corpus="$(mktemp -d)"
trap 'rm -rf "$fuzz_corpus" "$ingress_corpus"' EXIT
for target in request tcp edns; do
  echo "== fuzz: DNS ${target} (cargo fuzz, ${fuzz_seconds} s)" >&2
  mkdir -p "$fuzz_corpus/$target"
  (
    cd dns/fuzz
    cargo +nightly fuzz run "$target" --dev --sanitizer none "$fuzz_corpus/$target" \
      "corpus/$target" "seeds/$target" -- \
      -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  )
done

# What reaches the HTTP/1.1 framing guard (ingress/src/framing.rs) from a
# client socket, under libFuzzer: the stream cut into reads of random sizes,
# through the guard into hyper's HTTP/1.1 server, from the committed corpus
# (corpus/h1, minimised after the 10 M-input campaign) and the seeds. The target builds
# framing.rs alone with tokio and hyper (about 45 CPU-seconds, debug, no
# sanitizer, as above); a crash leaves its input in ingress/fuzz/artifacts/h1.
ingress_fuzz_seconds="${FAIRLEAD_INGRESS_FUZZ_SECONDS:-30}"
echo "== fuzz: ingress HTTP/1.1 framing (cargo fuzz, ${ingress_fuzz_seconds} s)" >&2
(
  cd ingress/fuzz
  cargo +nightly fuzz run h1 --dev --sanitizer none "$ingress_corpus" corpus/h1 seeds/h1 -- \
    -max_total_time="$ingress_fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
)
