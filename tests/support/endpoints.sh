#!/usr/bin/env bash
# End-to-end: the three paths of one Service (ClusterIP from a pod, NodePort from
# outside, the ingress over HTTP) always reach the same pods, because all of them ask
# the model which endpoints serve (tests/endpoints.rs runs this as root).
#
#   ext 192.168.50.100 -- node-a 192.168.50.10 (`fairlead node`, zone-1)
#                           | cbr0 10.244.1.1/24
#                           web-a .11, web-b .12, web-c .13 (answer with their name)
#
# Steps, each checked on all three paths and on the headless Service's DNS:
#   rollout  web-a ready, web-b serving and terminating -> web-a; DNS: web-a
#            only web-b, serving and terminating        -> web-b; DNS: NXDOMAIN
#            (the DNS specification publishes ready endpoints only)
#   topology zone hints: web-a and web-c for zone-1 (this node's), web-b for
#            zone-2                                      -> web-a web-c
#            hints removed                               -> web-a web-b web-c
#
# Env: FAIRLEAD_BIN (the binary), E2E_PREFIX (namespaces, cgroup, pins).
# Prints one "ok:" line per check; exits non-zero on the first that fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bin="${FAIRLEAD_BIN:?FAIRLEAD_BIN names the fairlead binary}"
p="${E2E_PREFIX:-fle2e}"
node="$p-node"
ext="$p-ext"
pods=(a b c)
cgroup_root="$(findmnt -n -t cgroup2 -o TARGET | head -n 1)"
cg="$cgroup_root/$p"
bpffs="/sys/fs/bpf/$p"
work="$(mktemp -d "/tmp/$p.XXXXXX")"
fairlead_pid=""

fail() {
    printf 'FAILED: %s\n' "$*" >&2
    tail -n 30 "$work/fairlead.log" >&2 2>/dev/null || true
    exit 1
}
ok() { printf 'ok: %s\n' "$*"; }

cleanup() {
    set +e
    trap - EXIT
    if [ -n "$fairlead_pid" ]; then
        kill -TERM "$fairlead_pid" 2>/dev/null && wait "$fairlead_pid" 2>/dev/null
    fi
    if [ -d "$cg" ]; then
        echo 1 >"$cg/cgroup.kill" 2>/dev/null
        for _ in $(seq 50); do [ -s "$cg/cgroup.procs" ] || break; sleep 0.1; done
        rmdir "$cg" 2>/dev/null
    fi
    for ns in "$ext" "$node" "${pods[@]/#/$p-web-}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$bpffs" "$work"
}
trap cleanup EXIT
cleanup_previous() {
    for ns in "$ext" "$node" "${pods[@]/#/$p-web-}"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ -d "$cg" ]; then echo 1 >"$cg/cgroup.kill" 2>/dev/null || true; sleep 0.2; rmdir "$cg" 2>/dev/null || true; fi
    rm -rf "$bpffs"
}
cleanup_previous

# --- topology ---------------------------------------------------------------------
# shellcheck source=scripts/demo/topology.sh
. scripts/demo/topology.sh
build_topology
mkdir "$cg"
start_pods

# --- manifests ----------------------------------------------------------------------
m="$work/manifests"
mkdir "$m"
cat >"$m/cluster.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: zone-1}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: fairlead
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: fairlead.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  rules:
    - host: web.test
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.10.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-pods, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: http, port: 8080}]
EOF
# Writes the EndpointSlices of web and web-pods: one line per endpoint,
# "<pod>|<conditions>[|<zone hint>]".
endpoints() {
    local out="$work/endpoints.yaml.tmp" service pod conditions hint
    : >"$out"
    for service in web web-pods; do
        cat >>"$out" <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $service-1
  namespace: shop
  labels: {kubernetes.io/service-name: $service}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
EOF
        while IFS='|' read -r pod conditions hint; do
            [ -n "$pod" ] || continue
            local ip=$((10 + $(printf '%d' "'$pod") - 96))
            cat >>"$out" <<EOF
  - addresses: ["10.244.1.$ip"]
    conditions: $conditions
    nodeName: node-a
    targetRef: {kind: Pod, namespace: shop, name: web-$pod}
EOF
            if [ -n "$hint" ]; then
                echo "    hints: {forZones: [{name: $hint}]}" >>"$out"
            fi
        done <<<"$1"
    done
    mv "$out" "$m/endpoints.yaml"
}
ready='{ready: true, serving: true, terminating: false}'
leaving='{ready: false, serving: true, terminating: true}'

status_json() { in_node curl -sf http://127.0.0.1:9402/status; }
generation() { status_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_generation"])'; }
# Waits until the model moved past $1 and every component serves its generation.
wait_served() {
    for _ in $(seq 200); do
        if status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
g = s["model_generation"]
sys.exit(0 if g > int(sys.argv[1]) and all(c["generation"] == g for c in s["components"]) else 1)
' "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    fail "the components do not all serve a model generation after $1"
}

endpoints "a|$ready
b|$leaving"
# Not through in_node: `$!` must be fairlead itself (nsenter execs it).
nsenter --net="/run/netns/$node" "$bin" node --manifests "$m" --node-name node-a \
    --cgroup "$cg" --bpffs "$bpffs" --listen 192.168.50.10:53 \
    --telemetry-addr 127.0.0.1:9402 --lameduck 0 --drain-timeout 1 \
    >>"$work/fairlead.log" 2>&1 &
fairlead_pid=$!
for _ in $(seq 300); do
    in_node curl -sf -o /dev/null http://127.0.0.1:9402/ready && break
    kill -0 "$fairlead_pid" 2>/dev/null || fail "fairlead node exited"
    sleep 0.1
done
in_node curl -sf -o /dev/null http://127.0.0.1:9402/ready || fail "fairlead node is not ready"

# --- checks -------------------------------------------------------------------------
# Runs `$@` 24 times; prints the sorted set of pods that answered.
sample() {
    local out
    for _ in $(seq 24); do
        out="$("$@" 2>/dev/null)" || out="(failed)"
        echo "$out"
    done | sort -u | tr '\n' ' ' | sed 's/ $//'
}
expect() {
    local what="$1" want="$2" got="$3"
    [ "$got" = "$want" ] || fail "$what: answered by [$got], expected [$want]"
    ok "$what: $got"
}
# The headless Service's A records, sorted, or the response code when not NOERROR.
headless() {
    local out
    out="$(in_ext dig +time=2 +tries=1 @192.168.50.10 web-pods.shop.svc.cluster.local A)"
    local status
    status="$(sed -n 's/.*status: \([A-Z]*\).*/\1/p' <<<"$out")"
    if [ "$status" != NOERROR ]; then
        echo "$status"
        return
    fi
    in_ext dig +short +time=2 +tries=1 @192.168.50.10 web-pods.shop.svc.cluster.local A |
        sort | tr '\n' ' ' | sed 's/ $//'
}
check() {
    local step="$1" want="$2" dns="$3"
    expect "$step: ClusterIP (pod web-c -> 10.96.10.10:80)" "$want" \
        "$(sample in_pod c curl -sf --max-time 2 http://10.96.10.10/)"
    expect "$step: NodePort (outside -> 192.168.50.10:30080)" "$want" \
        "$(sample in_ext curl -sf --max-time 2 http://192.168.50.10:30080/)"
    expect "$step: ingress (outside -> http://web.test/)" "$want" \
        "$(sample in_ext curl -sf --max-time 2 --resolve web.test:80:192.168.50.10 http://web.test/)"
    if [ -n "$dns" ]; then
        local got
        got="$(headless)"
        [ "$got" = "$dns" ] || fail "$step: headless DNS answered [$got], expected [$dns]"
        ok "$step: headless DNS web-pods: $got"
    fi
}
step() {
    local before
    before="$(generation)"
    endpoints "$1"
    wait_served "$before"
}

check "rollout, web-a ready and web-b terminating" "web-a" "10.244.1.11"
step "b|$leaving"
check "rollout, only web-b left, serving and terminating" "web-b" "NXDOMAIN"
step "a|$ready|zone-1
b|$ready|zone-2
c|$ready|zone-1"
check "topology, hints for zone-1 (this node) on web-a and web-c" "web-a web-c" ""
step "a|$ready
b|$ready
c|$ready"
check "topology, hints removed" "web-a web-b web-c" \
    "10.244.1.11 10.244.1.12 10.244.1.13"

kill -TERM "$fairlead_pid"
wait "$fairlead_pid" || fail "fairlead node did not stop cleanly"
fairlead_pid=""
echo "done"
