#!/usr/bin/env bash
# The fairlead demo: the whole data plane of one node, on the example cluster
# in examples/, with real clients in network namespaces.
#
#   ext (outside client, 192.168.50.100)
#    |
#   node-a (192.168.50.10): `fairlead node` = kernel load balancer + DNS + ingress
#    |  cbr0 10.244.1.1/24
#   web-a 10.244.1.11, web-b 10.244.1.12, web-c 10.244.1.13: pods of shop/web,
#   each an HTTP server that answers with its own name.
#
# It shows a pod reaching Service `web` by its short name (glibc resolver ->
# the node's DNS via the kube-dns ClusterIP -> the ClusterIP -> a pod), the
# outside client reaching it through NodePort 30080 and through the ingress
# over HTTPS by host name; then removes web-c's endpoint from the manifests and
# shows all three paths following; then restarts fairlead under a live
# connection. Every step is checked: the script exits non-zero if one fails.
# It removes everything it created when it ends, also on Ctrl-C.
#
# At the end, `fairlead node --cleanup` removes the programs and the pins,
# and the ClusterIP stops answering.
#
# With FAIRLEAD_IMAGE=localhost/fairlead:<version> (built by scripts/image.sh)
# fairlead runs from that image instead, with podman, exactly as deploy/ runs
# it (scripts/run-pod.py reads the manifests): the node DaemonSet's container
# with its capabilities, seccomp profile, read-only root, ConfigMap settings and
# arguments, host network = node-a; the cleanup DaemonSet's init container for
# the cleanup; and also the ingress gateway Deployment's container (non-root,
# no capabilities) in a pod of its own, serving the Ingress over HTTPS.
#
# Needs root. Installs what is missing first (scripts/setup.sh) and builds the
# binary, unless FAIRLEAD_BIN names one (the end-to-end test does that) or
# FAIRLEAD_IMAGE is set. FAIRLEAD_DEMO_PREFIX names the namespaces, cgroup,
# pins and containers (default fldemo).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (it creates network namespaces and loads eBPF programs)" >&2
    exit 1
fi

say() { printf '\n== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() {
    printf '\n   FAILED: %s\n' "$*" >&2
    if [ -f "${work:-/nonexistent}/fairlead.log" ]; then
        echo "   --- last lines of the fairlead log ---" >&2
        tail -n 30 "$work/fairlead.log" >&2
    fi
    exit 1
}

image="${FAIRLEAD_IMAGE:-}"
if [ -n "$image" ]; then
    bin=""
    podman image exists "$image" 2>/dev/null ||
        fail "image $image not found: build it with scripts/image.sh"
elif [ -n "${FAIRLEAD_BIN:-}" ]; then
    bin="$FAIRLEAD_BIN"
else
    say "Installing what is missing and building fairlead"
    bash scripts/setup.sh
    cargo build --quiet --bin fairlead
    bin="$root/target/debug/fairlead"
fi

p="${FAIRLEAD_DEMO_PREFIX:-fldemo}"
node="$p-node"
ext="$p-ext"
pods=(a b c)
cgroup_root="$(findmnt -n -t cgroup2 -o TARGET | head -n 1)"
[ -n "$cgroup_root" ] || fail "no cgroup v2 hierarchy is mounted"
cg="$cgroup_root/$p"
bpffs="/sys/fs/bpf/$p"
# Where the pins land: the DaemonSet's --bpffs=/sys/fs/bpf/fairlead with this
# run's directory as the host's /sys/fs/bpf.
pins="$bpffs"
[ -z "$image" ] || pins="$bpffs/fairlead"
work="$(mktemp -d "/tmp/$p.XXXXXX")"
fairlead_pid=""
gateway_pid=""
gateway="$p-gw"

cleanup() {
    set +e
    trap - EXIT INT TERM
    for pid in "$fairlead_pid" "$gateway_pid"; do
        [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; }
    done
    [ -z "$image" ] || podman rm --force --ignore --time 0 "$p-node" "$p-gw" "$p-cleanup" >/dev/null 2>&1
    if [ -d "$cg" ]; then
        echo 1 >"$cg/cgroup.kill" 2>/dev/null
        # cgroupfs files show size 0: wait on `populated 0` instead.
        for _ in $(seq 50); do grep -q 'populated 0' "$cg/cgroup.events" && rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
    fi
    for ns in "$ext" "$node" "$gateway" "${pods[@]/#/$p-web-}"; do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$bpffs" "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted; cleaning up"; exit 130' INT TERM

# --- the topology -------------------------------------------------------------
say "Building the topology: an outside client, node-a and three pods of shop/web"
cleanup_previous() {
    # A previous run killed hard may have left its pieces.
    for ns in "$ext" "$node" "$gateway" "${pods[@]/#/$p-web-}"; do ip netns del "$ns" 2>/dev/null || true; done
    [ -z "$image" ] || podman rm --force --ignore --time 0 "$p-node" "$p-gw" "$p-cleanup" >/dev/null 2>&1 || true
    if [ -d "$cg" ]; then echo 1 >"$cg/cgroup.kill" 2>/dev/null || true; sleep 0.2; rmdir "$cg" 2>/dev/null || true; fi
    rm -rf "$bpffs"
}
cleanup_previous
# shellcheck source=scripts/demo/topology.sh
. scripts/demo/topology.sh
build_topology
mkdir "$cg"
for pod in "${pods[@]}"; do
    ns="$p-web-$pod"
    # What the kubelet writes into a pod of namespace shop (`ip netns exec`
    # mounts it over /etc/resolv.conf).
    mkdir -p "/etc/netns/$ns"
    cat >"/etc/netns/$ns/resolv.conf" <<EOF
search shop.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
EOF
done
ok "namespaces $ext, $node, ${pods[*]/#/$p-web-}; pod processes in cgroup $cg"
if [ -n "$image" ]; then
    # A pod for the ingress gateway Deployment, wired as CNI would.
    add_pod "$gateway" veth-gw 10.244.1.20
    ok "namespace $gateway (10.244.1.20): the pod of the ingress gateway Deployment"
fi

start_pods
ok "web-a, web-b and web-c serve HTTP on :8080"

# --- fairlead node ------------------------------------------------------------
mkdir "$work/manifests"
cp -r examples/. "$work/manifests/"

# The image: a container of a deploy/ workload, run by podman as the kubelet
# would run it (scripts/run-pod.py), from $image. Commands, not functions, so
# that `$!` is podman itself (run-pod.py execs it), which passes SIGTERM on.
run_pod=(python3 scripts/run-pod.py --config deploy/20-config.yaml --image "$image")
# The node DaemonSet's container: host network = node-a; this run's bpffs
# directory and cgroup stand in for the host's /sys/fs/bpf and /sys/fs/cgroup.
node_pod=("${run_pod[@]}" --manifest deploy/30-node.yaml --netns "/run/netns/$node" --netns-is-node
    --node-name node-a --host-path /sys/fs/bpf="$bpffs" --host-path /sys/fs/cgroup="$cg")
# The manifests stand in for the apiserver.
from_manifests=(--mount "$work/manifests:/run/fairlead/manifests:ro" --arg=--manifests=/run/fairlead/manifests)
# Prints what the kernel says a container's process runs with.
caps() {
    local names
    names="$(capsh --decode="$1" | sed 's/.*=//')"
    echo "${names:-none}"
}
show_security() {
    local pid
    pid="$(podman inspect --format '{{.State.Pid}}' "$1")"
    awk -v name="$1" -v root="$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo")" '
        $1 == "Uid:" { uid = $2 } $1 == "Gid:" { gid = $2 }
        $1 == "CapEff:" { eff = $2 } $1 == "CapBnd:" { bnd = $2 }
        $1 == "NoNewPrivs:" { nnp = $2 } $1 == "Seccomp:" { seccomp = $2 }
        END { printf "%s %s %s %s %s %s %s %s\n", name, uid, gid, eff, bnd, nnp, seccomp, root }' \
        "/proc/$pid/status" | while read -r name uid gid eff bnd nnp seccomp root; do
        ok "container $name runs as uid $uid gid $gid; capabilities: $(caps "$eff"); bounding set: $(caps "$bnd"); no_new_privs $nnp; seccomp mode $seccomp (2: filter); root filesystem ${root%%,*}"
    done
}
start_fairlead() {
    if [ -n "$image" ]; then
        # run-pod.py execs podman, which passes SIGTERM on to the container.
        "${node_pod[@]}" --name "$p-node" --rm "${from_manifests[@]}" >>"$work/fairlead.log" 2>&1 &
    else
        # Not through in_node: `$!` must be fairlead itself (nsenter execs it).
        nsenter --net="/run/netns/$node" "$bin" node --manifests "$work/manifests" --node-name node-a \
            --cgroup "$cg" --bpffs "$bpffs" \
            --listen 192.168.50.10:53 \
            --telemetry-addr 127.0.0.1:9402 --lameduck 0 --drain-timeout 5 \
            >>"$work/fairlead.log" 2>&1 &
    fi
    fairlead_pid=$!
    for _ in $(seq 300); do
        if in_node curl -sf -o /dev/null http://127.0.0.1:9402/ready; then return 0; fi
        kill -0 "$fairlead_pid" 2>/dev/null || fail "fairlead node exited"
        sleep 0.1
    done
    fail "fairlead node is not ready after 30 s"
}
fairlead_status() {
    if [ -n "$image" ]; then
        podman exec "$p-node" /usr/bin/fairlead status
    else
        in_node "$bin" status --bpffs "$bpffs"
    fi
}
if [ -n "$image" ]; then
    mkdir -p "$bpffs"
    say "The image $image, run as deploy/30-node.yaml's container"
    version="$("${node_pod[@]}" --name "$p-node" --rm -- --version)" || fail "fairlead --version failed in the image"
    ok "fairlead --version: $version"
    verdict="$("${node_pod[@]}" --name "$p-node" --rm -- check --kernel 2>"$work/check.log" | tail -n 1)" ||
        fail "fairlead check --kernel failed in the image: $(tail -n 5 "$work/check.log")"
    ok "fairlead check --kernel: ${verdict#kernel: }"
    say "Starting fairlead node on node-a from the image, on a copy of examples/ ($work/manifests)"
    echo "   $("${node_pod[@]}" --name "$p-node" --rm "${from_manifests[@]}" --print)"
else
    say "Starting fairlead node on node-a, on a copy of examples/ ($work/manifests)"
    echo "   $bin node --manifests ... --node-name node-a --cgroup $cg --bpffs $bpffs"
fi
start_fairlead
ok "ready: /ready on the node's telemetry listener answers 200"
[ -z "$image" ] || show_security "$p-node"
fairlead_status | sed -n '1,/^$/p' | sed 's/^/   /'

# --- the three paths ------------------------------------------------------------
# Runs `$@` 30 times; prints the sorted set of pods that answered.
sample() {
    local out
    for _ in $(seq 30); do
        out="$("$@" 2>/dev/null)" || out="(failed)"
        echo "$out"
    done | sort -u | tr '\n' ' ' | sed 's/ $//'
}
expect() {
    local what="$1" want="$2" got="$3"
    [ "$got" = "$want" ] || fail "$what: answered by [$got], expected [$want]"
    ok "$what: answered by $got"
}
ca="$root/examples/shop/example-ca.crt"
check_paths() {
    local want="$1"   # the pods that must answer
                      # $2: the addresses DNS must give for web-pods
    local addr
    addr="$(in_pod a getent ahosts web | awk 'NR == 1 { print $1 }')" || true
    [ "$addr" = 10.96.10.10 ] || fail "pod web-a resolved 'web' to [$addr], expected 10.96.10.10"
    ok "pod web-a resolves the short name 'web' (glibc: search shop.svc.cluster.local, nameserver 10.96.0.10 = kube-dns -> node-a's DNS): $addr"
    local pods_dns
    pods_dns="$(in_pod a getent ahosts web-pods | awk '$2 == "STREAM" { print $1 }' | sort | tr '\n' ' ' | sed 's/ $//')" || true
    [ "$pods_dns" = "$2" ] || fail "pod web-a resolved the headless 'web-pods' to [$pods_dns], expected [$2]"
    ok "pod web-a resolves the headless Service 'web-pods' to its ready pods: $pods_dns"
    expect "pod web-a -> http://web/ (ClusterIP 10.96.10.10, balanced in the kernel at connect)" "$want" \
        "$(sample in_pod a curl -sf --max-time 2 http://web/)"
    expect "outside client -> http://192.168.50.10:30080/ (NodePort)" "$want" \
        "$(sample in_ext curl -sf --max-time 2 http://192.168.50.10:30080/)"
    expect "outside client -> https://shop.example.com/ (ingress, TLS, Ingress shop/shop -> Service web)" "$want" \
        "$(sample in_ext curl -sf --max-time 2 --cacert "$ca" --resolve shop.example.com:443:192.168.50.10 https://shop.example.com/)"
}
say "Three paths to Service shop/web, 30 requests each"
check_paths "web-a web-b web-c" "10.244.1.11 10.244.1.12 10.244.1.13"
if [ -n "${FAIRLEAD_DEMO_METRICS:-}" ]; then
    # The end-to-end test checks deploy/monitoring against what a node exports.
    in_node curl -sf http://127.0.0.1:9402/metrics >"$FAIRLEAD_DEMO_METRICS" \
        || fail "could not read the node's /metrics"
fi

# --- the ingress gateway Deployment ------------------------------------------------
if [ -n "$image" ]; then
    say "The ingress gateway Deployment's container (deploy/50-ingress.yaml) in pod $gateway"
    "${run_pod[@]}" --manifest deploy/50-ingress.yaml --netns "/run/netns/$gateway" --name "$p-gw" --rm \
        "${from_manifests[@]}" >>"$work/gateway.log" 2>&1 &
    gateway_pid=$!
    for _ in $(seq 300); do
        in_node curl -sf -o /dev/null http://10.244.1.20:9402/ready && break
        kill -0 "$gateway_pid" 2>/dev/null || fail "the gateway exited: $(tail -n 5 "$work/gateway.log")"
        sleep 0.1
    done
    in_node curl -sf -o /dev/null http://10.244.1.20:9402/ready || fail "the gateway is not ready after 30 s"
    ok "ready: /ready on 10.244.1.20:9402 answers 200"
    show_security "$p-gw"
    expect "pod web-a -> https://shop.example.com/ (the gateway pod 10.244.1.20, TLS, Ingress shop/shop -> Service web)" \
        "web-a web-b web-c" \
        "$(sample in_pod a curl -sf --max-time 2 --cacert "$ca" --resolve shop.example.com:443:10.244.1.20 https://shop.example.com/)"
    kill -TERM "$gateway_pid"
    wait "$gateway_pid" || fail "the gateway did not stop cleanly on SIGTERM: $(tail -n 5 "$work/gateway.log")"
    gateway_pid=""
    ok "the gateway stopped (SIGTERM)"
fi

# --- an endpoint goes away ------------------------------------------------------
status_json() { in_node curl -sf http://127.0.0.1:9402/status; }
generation_before="$(status_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_generation"])')"
say "Removing web-c's endpoint (10.244.1.13) from shop/web.yaml (Services web and web-pods)"
python3 - "$work/manifests/shop/web.yaml" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
edited = re.sub(r'  - addresses: \["10\.244\.1\.13"\]\n(    .*\n)*', "", text)
if edited == text:
    sys.exit("web-c's endpoint not found in " + path)
open(path, "w").write(edited)
EOF
started=$(date +%s%N)
for _ in $(seq 100); do
    if status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
g = s["model_generation"]
sys.exit(0 if g > int(sys.argv[1]) and all(c["generation"] == g for c in s["components"]) else 1)
' "$generation_before"; then
        break
    fi
    sleep 0.05
done
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
fairlead_status | sed -n '1,/^$/p' | sed 's/^/   /'
status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
g = s["model_generation"]
sys.exit(0 if g > int(sys.argv[1]) and all(c["generation"] == g for c in s["components"]) else 1)
' "$generation_before" || fail "the components do not all serve the new model generation"
ok "proxy, DNS and ingress all serve the new model generation (seen after ${elapsed_ms} ms)"
say "The same three paths: web-c must be gone from all of them"
check_paths "web-a web-b" "10.244.1.11 10.244.1.12"

# --- restart under a live connection ----------------------------------------------
say "Restarting fairlead node while pod web-a holds a connection to the ClusterIP"
in_pod a python3 scripts/demo/steady.py 10.96.10.10 80 "$work/stop" >"$work/steady.log" 2>&1 &
steady_pid=$!
for _ in $(seq 50); do grep -q connected "$work/steady.log" 2>/dev/null && break; sleep 0.1; done
grep -q connected "$work/steady.log" || fail "the steady client did not connect: $(cat "$work/steady.log")"
sleep 0.5
kill -TERM "$fairlead_pid"
wait "$fairlead_pid" || fail "fairlead node did not stop cleanly on SIGTERM"
fairlead_pid=""
ok "fairlead node stopped (SIGTERM); the kernel maps stay pinned"
sleep 0.5
start_fairlead
ok "fairlead node is back and ready"
sleep 0.5
touch "$work/stop"
wait "$steady_pid" || fail "the live connection broke: $(cat "$work/steady.log")"
ok "the live connection: $(tail -n 1 "$work/steady.log")"
expect "after the restart, pod web-a -> http://web/" "web-a web-b" \
    "$(sample in_pod a curl -sf --max-time 2 http://web/)"

# --- cleanup --------------------------------------------------------------------------
say "Removing fairlead from node-a: stop it, then fairlead node --cleanup"
kill -TERM "$fairlead_pid"
wait "$fairlead_pid" || fail "fairlead node did not stop cleanly on SIGTERM"
fairlead_pid=""
if [ -n "$image" ]; then
    # The init container of deploy/uninstall/cleanup.yaml.
    removed="$("${run_pod[@]}" --manifest deploy/uninstall/cleanup.yaml --init --container cleanup \
        --netns "/run/netns/$node" --netns-is-node --host-path /sys/fs/bpf="$bpffs" \
        --name "$p-cleanup" --rm 2>&1 | tail -n 1)" || fail "the cleanup failed: $removed"
else
    removed="$(in_node "$bin" node --cleanup --bpffs "$bpffs" 2>&1 | tail -n 1)" || fail "the cleanup failed: $removed"
fi
ok "${removed#fairlead: }"
if [ -e "$pins" ]; then
    fail "pins left under $pins: $(find "$pins" -mindepth 1 | tr '\n' ' ')"
fi
ok "no pins left under $pins"
attached="$(bpftool cgroup show "$cg" | tail -n +2)"
[ -z "$attached" ] || fail "programs still attached to $cg: $attached"
ok "no program attached to cgroup $cg (bpftool cgroup show)"
# The kernel detaches a program once the last reference to its link is gone,
# from a work queue: allow it a moment.
answers_until() {
    local what="$1"
    shift
    for _ in $(seq 50); do
        "$@" curl -sf --max-time 1 -o /dev/null "$what" || return 0
        sleep 0.1
    done
    return 1
}
answers_until http://10.96.10.10/ in_pod a || fail "the ClusterIP still answers after the cleanup"
ok "pod web-a -> http://10.96.10.10/ (ClusterIP): no answer any more"
answers_until http://192.168.50.10:30080/ in_ext || fail "the NodePort still answers after the cleanup"
ok "outside client -> http://192.168.50.10:30080/ (NodePort): no answer any more"

logs=("$work/fairlead.log")
[ -z "$image" ] || logs+=("$work/gateway.log")
# Expected, and left out: the gateway Deployment asks to publish the Ingress
# status, which needs the apiserver the manifests stand in for here.
warnings="$(grep -hE '"level":"(WARN|ERROR)"|^[^ ]+ +(WARN|ERROR) ' "${logs[@]}" |
    grep -v -- '--ingress-status-\* ignored: the model comes from --manifests' || true)"
[ -z "$warnings" ] || fail "fairlead logged warnings or errors:
$warnings"
ok "fairlead logged no warning and no error ($(cat "${logs[@]}" | wc -l) lines of log)"

say "Done: every path followed the model; cleaning up"
