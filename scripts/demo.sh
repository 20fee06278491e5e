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
# Needs root. Installs what is missing first (scripts/setup.sh) and builds the
# binary, unless FAIRLEAD_BIN names one (the end-to-end test does that).
# FAIRLEAD_DEMO_PREFIX names the namespaces, cgroup and pins (default fldemo).
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

if [ -n "${FAIRLEAD_BIN:-}" ]; then
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
work="$(mktemp -d "/tmp/$p.XXXXXX")"
fairlead_pid=""

cleanup() {
    set +e
    trap - EXIT INT TERM
    if [ -n "$fairlead_pid" ]; then
        kill -TERM "$fairlead_pid" 2>/dev/null && wait "$fairlead_pid" 2>/dev/null
    fi
    if [ -d "$cg" ]; then
        echo 1 >"$cg/cgroup.kill" 2>/dev/null
        for _ in $(seq 50); do [ -s "$cg/cgroup.procs" ] || break; sleep 0.1; done
        rmdir "$cg" 2>/dev/null
    fi
    for ns in "$ext" "$node" "${pods[@]/#/$p-web-}"; do
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
    for ns in "$ext" "$node" "${pods[@]/#/$p-web-}"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ -d "$cg" ]; then echo 1 >"$cg/cgroup.kill" 2>/dev/null || true; sleep 0.2; rmdir "$cg" 2>/dev/null || true; fi
    rm -rf "$bpffs"
}
cleanup_previous
for ns in "$ext" "$node"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$node" link add eth0 type veth peer name eth0 netns "$ext"
ip -n "$node" addr add 192.168.50.10/24 dev eth0
ip -n "$node" link set eth0 up
ip -n "$ext" addr add 192.168.50.100/24 dev eth0
ip -n "$ext" link set eth0 up
ip -n "$node" link add cbr0 type bridge
ip -n "$node" addr add 10.244.1.1/24 dev cbr0
ip -n "$node" link set cbr0 up
ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
mkdir "$cg"
n=11
for pod in "${pods[@]}"; do
    ns="$p-web-$pod"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$node" link add "veth-$pod" type veth peer name eth0 netns "$ns"
    ip -n "$node" link set "veth-$pod" master cbr0 up
    ip -n "$ns" addr add "10.244.1.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.244.1.1
    # What the kubelet writes into a pod of namespace shop (`ip netns exec`
    # mounts it over /etc/resolv.conf).
    mkdir -p "/etc/netns/$ns"
    cat >"/etc/netns/$ns/resolv.conf" <<EOF
search shop.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
EOF
    n=$((n + 1))
done
ok "namespaces $ext, $node, ${pods[*]/#/$p-web-}; pod processes in cgroup $cg"

# Runs a command as a process of pod web-$1: in its network namespace and in
# the cgroup fairlead balances.
in_pod() {
    local pod="$1"
    shift
    sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" \
        ip netns exec "$p-web-$pod" "$@"
}
in_ext() { ip netns exec "$ext" "$@"; }
in_node() { nsenter --net="/run/netns/$node" "$@"; }

for pod in "${pods[@]}"; do
    in_pod "$pod" python3 scripts/demo/pod.py "web-$pod" 8080 >"$work/web-$pod.log" 2>&1 &
done
for pod in "${pods[@]}"; do
    for _ in $(seq 100); do grep -q ready "$work/web-$pod.log" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$work/web-$pod.log" || fail "pod web-$pod did not start: $(cat "$work/web-$pod.log")"
done
ok "web-a, web-b and web-c serve HTTP on :8080"

# --- fairlead node ------------------------------------------------------------
mkdir "$work/manifests"
cp -r examples/. "$work/manifests/"
start_fairlead() {
    # Not through in_node: `$!` must be fairlead itself (nsenter execs it).
    nsenter --net="/run/netns/$node" "$bin" node --manifests "$work/manifests" --node-name node-a \
        --cgroup "$cg" --bpffs "$bpffs" \
        --listen 192.168.50.10:53 \
        --telemetry-addr 127.0.0.1:9402 --lameduck 0 --drain-timeout 5 \
        >>"$work/fairlead.log" 2>&1 &
    fairlead_pid=$!
    for _ in $(seq 300); do
        if in_node curl -sf -o /dev/null http://127.0.0.1:9402/ready; then return 0; fi
        kill -0 "$fairlead_pid" 2>/dev/null || fail "fairlead node exited"
        sleep 0.1
    done
    fail "fairlead node is not ready after 30 s"
}
say "Starting fairlead node on node-a, on a copy of examples/ ($work/manifests)"
echo "   $bin node --manifests ... --node-name node-a --cgroup $cg --bpffs $bpffs"
start_fairlead
ok "ready: /ready on the node's telemetry listener answers 200"
in_node "$bin" status --bpffs "$bpffs" | sed -n '1,/^$/p' | sed 's/^/   /'

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
in_node "$bin" status --bpffs "$bpffs" | sed -n '1,/^$/p' | sed 's/^/   /'
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

say "Done: every path followed the model; cleaning up"
