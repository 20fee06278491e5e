# The demo topology, shared by scripts/demo.sh and tests/support/endpoints.sh
# (sourced; uses their variables p, ext, node, pods, cg and work and their
# fail function, and runs as root):
# an outside client $ext and node-a $node joined by a veth (192.168.50.100 and
# .10), a bridge cbr0 (10.244.1.1/24) on the node with forwarding on, and one
# pod namespace $p-web-<pod> per name in pods, at 10.244.1.11, .12, ...

# add_pod NS VETH ADDR: a pod namespace wired to the node's bridge as CNI
# would: eth0 with ADDR/24, the default route via the bridge, the node's end
# of the veth named VETH.
add_pod() {
    local ns="$1" veth="$2" addr="$3"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$node" link add "$veth" type veth peer name eth0 netns "$ns"
    ip -n "$node" link set "$veth" master cbr0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.244.1.1
}

build_topology() {
    local ns pod n=11
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
    for pod in "${pods[@]}"; do
        add_pod "$p-web-$pod" "veth-$pod" "10.244.1.$n"
        n=$((n + 1))
    done
}

# Runs a command as a process of pod web-$1: in its network namespace and in
# the cgroup $cg that fairlead balances.
in_pod() {
    local pod="$1"
    shift
    sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" \
        ip netns exec "$p-web-$pod" "$@"
}
in_ext() { ip netns exec "$ext" "$@"; }
in_node() { nsenter --net="/run/netns/$node" "$@"; }

# start_pods: each pod serves HTTP on :8080, answering with its name (logs in
# $work/web-<pod>.log); returns once all say ready, else calls fail.
start_pods() {
    local pod
    for pod in "${pods[@]}"; do
        in_pod "$pod" python3 scripts/demo/pod.py "web-$pod" 8080 >"$work/web-$pod.log" 2>&1 &
    done
    for pod in "${pods[@]}"; do
        for _ in $(seq 100); do grep -q ready "$work/web-$pod.log" 2>/dev/null && break; sleep 0.1; done
        grep -q ready "$work/web-$pod.log" || fail "pod web-$pod did not start: $(cat "$work/web-$pod.log")"
    done
}
