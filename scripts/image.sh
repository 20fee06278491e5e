#!/usr/bin/env bash
# Builds the fairlead container image (OCI) with buildah, from scratch: no base
# image is pulled. The image holds the stripped release binary, the shared
# libraries it links (as `ldd` lists them, with their Debian package records
# and copyright files, so image scanners see the glibc version) and nothing
# else: no shell, no package manager.
#
#   scripts/image.sh                       build localhost/fairlead:<version>
#   scripts/image.sh --archive FILE        also write a docker-archive (kind, containerd)
#   scripts/image.sh --oci-archive FILE    also write an OCI archive (skopeo, registries)
#
# The debug info stays beside the image, in <out>/fairlead.debug (the binary
# names it in its .gnu_debuglink section and carries the same build id): for
# perf, gdb or a symbolizer, not shipped. Prints the image size; --max-size
# fails the build above a size (CI checks the 30 MB goal with it).
#
# Options:
#   --binary FILE   package this fairlead binary instead of building the release
#                   one (it is stripped the same way)
#   --tag NAME      image name (default localhost/fairlead:<version of the binary>)
#   --out DIR       where the stripped binary and fairlead.debug go
#                   (default <cargo target dir>/image)
#   --max-size MB   fail when the image is larger than MB megabytes (10^6 bytes)
#   --archive FILE, --oci-archive FILE   as above
#
# Needs root (buildah's storage is the machine's, shared with podman).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'image.sh: %s\n' "$*" >&2; }

binary="" tag="" out="" max_size="" archive="" oci_archive=""
while (($#)); do
    case "$1" in
        --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --max-size) max_size="${2:?--max-size needs megabytes}"; shift 2 ;;
        --archive) archive="${2:?--archive needs a file}"; shift 2 ;;
        --oci-archive) oci_archive="${2:?--oci-archive needs a file}"; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root (buildah writes the machine's image storage)"
if [ -n "$max_size" ] && ! [[ "$max_size" =~ ^[0-9]+$ ]]; then
    die "--max-size $max_size: expected a whole number of megabytes"
fi

target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
if [ -z "$binary" ]; then
    bash scripts/setup.sh
    say "cargo build --release --locked --bin fairlead"
    started=$SECONDS
    cargo build --release --locked --quiet -p fairlead --bin fairlead
    say "release build: $((SECONDS - started)) s"
    binary="$target_dir/release/fairlead"
fi
[ -x "$binary" ] || die "$binary: not an executable"
for tool in buildah podman objcopy readelf ldd; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done

# The version is the binary's own (`fairlead 0.1.0`), so the tag always says
# what the image holds.
version="$("$binary" --version | awk '{ print $2 }')"
[[ "$version" =~ ^[0-9A-Za-z.+-]+$ ]] || die "$binary --version: unexpected output"
tag="${tag:-localhost/fairlead:$version}"
out="${out:-$target_dir/image}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# --- the binary and its debug info ----------------------------------------------
# The debug info (DWARF of profile.release's `debug = 1`, compressed) goes to
# fairlead.debug; the shipped binary keeps neither debug info nor symbols, only
# a .gnu_debuglink to that file and its build id (which perf and gdb look up
# under /usr/lib/debug/.build-id/).
rootfs="$(mktemp -d "$out/rootfs.XXXXXX")"
container=""
cleanup() {
    rm -rf "$rootfs"
    [ -z "$container" ] || buildah rm "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
objcopy --only-keep-debug --compress-debug-sections=zlib "$binary" "$out/fairlead.debug"
objcopy --strip-all "$binary" "$out/fairlead"
(cd "$out" && objcopy --add-gnu-debuglink=fairlead.debug fairlead)
build_id="$(readelf -n "$out/fairlead" | awk '/Build ID:/ { print $3 }')"
install -D -m 0755 "$out/fairlead" "$rootfs/usr/bin/fairlead"

# --- the libraries it links ----------------------------------------------------------
# Each at the path the dynamic loader finds it (ldd's, the ELF interpreter's),
# with the dpkg record of its package in /var/lib/dpkg/status.d/ (the layout
# distroless images use, which image scanners read) and the package's copyright.
libraries=()
interpreter="$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[ -z "$interpreter" ] || libraries+=("$interpreter")
while read -r path; do
    libraries+=("$path")
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
packages=()
for lib in "${libraries[@]}"; do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    if command -v dpkg >/dev/null; then
        pkg="$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)"
        pkg="${pkg%%:*}"
        [ -z "$pkg" ] || packages+=("$pkg")
    fi
done
if ((${#packages[@]})); then
    mkdir -p "$rootfs/var/lib/dpkg/status.d"
    for pkg in $(printf '%s\n' "${packages[@]}" | sort -u); do
        dpkg-query -s "$pkg" | sed '/^Conffiles:/,/^[^ ]/{/^Conffiles:/d; /^ /d}' \
            >"$rootfs/var/lib/dpkg/status.d/$pkg"
        if [ -e "/usr/share/doc/$pkg/copyright" ]; then
            install -D -m 0644 "$(readlink -f "/usr/share/doc/$pkg/copyright")" \
                "$rootfs/usr/share/doc/$pkg/copyright"
        fi
    done
    # Scanners match the packages against the advisories of the distribution
    # named here: the one the libraries come from.
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        mkdir -p "$rootfs/etc"
        (. /etc/os-release && printf 'PRETTY_NAME="fairlead (libraries from %s)"\nNAME="%s"\nID=%s\nVERSION_ID="%s"\nVERSION_CODENAME=%s\n' \
            "$PRETTY_NAME" "$NAME" "$ID" "${VERSION_ID:-}" "${VERSION_CODENAME:-}") \
            >"$rootfs/etc/os-release"
        chmod 0644 "$rootfs/etc/os-release"
    fi
fi

# --- the image -----------------------------------------------------------------------
# One layer, files owned by root, timestamps and the creation date from the
# last commit (SOURCE_DATE_EPOCH overrides): the same binary gives the same image.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
find "$rootfs" -exec touch -h -d "@$epoch" {} +
container="$(buildah from scratch)"
buildah copy --quiet --chown 0:0 "$container" "$rootfs/." / >/dev/null
# The node DaemonSet and the cleanup job set runAsUser: 0; anything else runs
# as a user without privileges (distroless' `nonroot`, 65532), as the gateway
# Deployment does.
buildah config \
    --entrypoint '["/usr/bin/fairlead"]' --cmd '' \
    --user 65532:65532 --workingdir / \
    --env RUST_BACKTRACE=1 \
    --label org.opencontainers.image.title=fairlead \
    --label "org.opencontainers.image.description=Kubernetes service networking for one node: eBPF load balancing, cluster DNS and ingress from one model" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.licenses=Apache-2.0 AND (MIT OR GPL-2.0-only)" \
    --label "dev.fairlead.build-id=$build_id" \
    "$container"
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
buildah commit --quiet --rm --format oci --timestamp "$epoch" --identity-label=false \
    "$container" "$tag" >/dev/null
container=""
# The image this tag named before, unless something still uses it.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi

size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "image: $tag"
echo "  size: $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }') MB, uncompressed; podman image inspect --format '{{.Size}}' $tag)"
echo "  binary: /usr/bin/fairlead ($(stat -c %s "$out/fairlead") bytes, stripped, build id $build_id)"
echo "  libraries: ${libraries[*]:-none}"
echo "  debug info: $out/fairlead.debug ($(stat -c %s "$out/fairlead.debug") bytes)"
if [ -n "$archive" ]; then
    rm -f "$archive"
    buildah push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
    echo "  docker-archive: $archive ($(stat -c %s "$archive") bytes)"
fi
if [ -n "$oci_archive" ]; then
    rm -f "$oci_archive"
    buildah push --quiet "$tag" "oci-archive:$oci_archive:$tag" >/dev/null
    echo "  oci-archive: $oci_archive ($(stat -c %s "$oci_archive") bytes)"
fi
if [ -n "$max_size" ] && ((size > max_size * 1000000)); then
    die "the image is $size bytes, above --max-size $max_size MB"
fi
