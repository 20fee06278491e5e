#!/usr/bin/env python3
"""Runs one container of a deploy/ workload with podman, the way the kubelet runs it.

Reads the workload (DaemonSet, Deployment) from its manifest and turns the pod
spec into podman flags: the pod's and the container's security context
(user, capabilities, no_new_privs, read-only root, seccomp and AppArmor
profiles, sysctls), the environment (values, ConfigMap keys, downward API),
the arguments with `$(VAR)` expanded as the kubelet does, hostPath volumes,
the memory and CPU limits, and the network (host network: the node's
namespace; else the pod's). Nothing in the container's settings comes from
this script: change the manifest and the container changes.

What stands in for the cluster is given on the command line: the network
namespace (--netns: the node's for a hostNetwork pod, else the pod's own, as
CNI would make it), the node name, where each hostPath lies on this machine
(--host-path, so a test uses its own bpffs directory and cgroup instead of the
node's), the ConfigMaps (--config), and extra mounts and arguments (the
manifest directory that stands in for the apiserver).

`RuntimeDefault` is the seccomp profile of current container runtimes:
containerd (since 1.6.9) and Docker (since 23) allow bpf(2) to a container with
CAP_BPF and perf_event_open(2) with CAP_PERFMON; recent containers-common
releases (CRI-O, podman) do the same. Older runtimes allowed both only with
CAP_SYS_ADMIN; Debian 12's podman (containers-common 0.50) is one of them. This
script therefore derives the profile from podman's own default
(/usr/share/containers/seccomp.json) and adds those two rules where the
installed profile lacks them; `--runtime-default=legacy` keeps the older rules
instead (what an older runtime would do).

    run-pod.py --manifest deploy/30-node.yaml --config deploy/20-config.yaml \
        --netns /run/netns/node --node-name node-a --rm [-- check --kernel]

prints nothing of its own and replaces itself with `podman run` (so a signal
sent to it reaches podman, which passes it to the container); `--print` shows
the command instead.
"""

import argparse
import hashlib
import json
import os
import re
import resource
import sys
import tempfile

import yaml

DEFAULT_SECCOMP = "/usr/share/containers/seccomp.json"
# (syscall, capability): the rules current runtimes add to the default profile.
CAP_RULES = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")]


def fail(message):
    sys.exit(f"run-pod.py: {message}")


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find_workload(path, name):
    workloads = [
        d for d in load_documents(path) if d.get("kind") in ("DaemonSet", "Deployment")
    ]
    if name:
        workloads = [d for d in workloads if d["metadata"]["name"] == name]
    if len(workloads) != 1:
        names = [d["metadata"]["name"] for d in workloads]
        fail(f"{path}: expected one workload{f' named {name}' if name else ''}, found {names}")
    return workloads[0]


def find_container(pod, name, init):
    containers = pod.get("initContainers" if init else "containers", [])
    if name:
        containers = [c for c in containers if c["name"] == name]
    if len(containers) != 1:
        fail(f"expected one {'init ' if init else ''}container{f' named {name}' if name else ''}")
    return containers[0]


def config_maps(paths):
    maps = {}
    for path in paths:
        for doc in load_documents(path):
            if doc.get("kind") == "ConfigMap":
                key = (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"])
                maps[key] = doc.get("data") or {}
    return maps


VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value, env):
    """The kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` is
    a literal `$`, anything else stays as written."""

    def one(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return VAR.sub(one, value)


def environment(container, namespace, maps, node_name, pod_name):
    env = {}
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = expand(var["value"], env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            # The podman container stands in for the pod: its name is the pod's.
            fields = {"metadata.namespace": namespace, "metadata.name": pod_name, "spec.nodeName": node_name}
            if field not in fields or fields[field] is None:
                fail(f"env {name}: fieldRef {field} is not known here (give --node-name for spec.nodeName)")
            env[name] = fields[field]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = maps.get((namespace, ref["name"]))
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                fail(f"env {name}: ConfigMap {namespace}/{ref['name']} has no key {ref['key']} (give it with --config)")
            env[name] = str(data[ref["key"]])
        else:
            fail(f"env {name}: {sorted(source)} is not supported")
    return env


def merged_security(pod, container):
    """The container's security context over the pod's, field by field."""
    merged = {}
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "appArmorProfile"):
        if key in (pod.get("securityContext") or {}):
            merged[key] = pod["securityContext"][key]
    merged.update(container.get("securityContext") or {})
    return merged


def installed_seccomp():
    with open(DEFAULT_SECCOMP, encoding="utf-8") as f:
        return json.load(f)


def runtime_default_profile(variant):
    """podman's default profile with bpf and perf_event_open allowed for
    CAP_BPF and CAP_PERFMON, as current runtimes do (`current`), or for
    CAP_SYS_ADMIN only, as older ones did (`legacy`)."""
    profile = installed_seccomp()
    gated = {syscall for syscall, _ in CAP_RULES}
    rules = []
    for rule in profile["syscalls"]:
        if "CAP_SYS_ADMIN" in ((rule.get("includes") or {}).get("caps") or []):
            rules.append(rule)
            continue
        # Every other rule naming them (the EPERM rule for containers without
        # CAP_SYS_ADMIN, a newer profile's own CAP_BPF rules) gives way to ours.
        names = [n for n in rule["names"] if n not in gated]
        if names:
            rules.append(dict(rule, names=names))
    if variant == "current":
        for syscall, cap in CAP_RULES:
            rules.append({"names": [syscall], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}})
    else:
        rules.append({
            "names": sorted(gated), "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        })
    profile["syscalls"] = rules
    return profile


def seccomp_option(profile, variant):
    # The kubelet runs a container that names no profile unconfined (unless
    # its --seccomp-default is on).
    kind = (profile or {}).get("type", "Unconfined")
    if kind == "Unconfined":
        return "seccomp=unconfined"
    if kind != "RuntimeDefault":
        fail(f"seccompProfile {kind} is not supported")
    # Named by its content, so repeated runs share one file in /tmp.
    text = json.dumps(runtime_default_profile(variant), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"fairlead-seccomp-{variant}-{digest}.json")
    if not os.path.exists(path):
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False, encoding="utf-8") as f:
            f.write(text)
        os.replace(f.name, path)
    return f"seccomp={path}"


def memory(quantity):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    if not m:
        fail(f"memory limit {quantity}: not understood")
    return int(m.group(1)) * units.get(m.group(2), 1)


def cpus(quantity):
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def podman_command(a):
    workload = find_workload(a.manifest, a.workload)
    namespace = workload["metadata"].get("namespace", "default")
    pod = workload["spec"]["template"]["spec"]
    container = find_container(pod, a.container, a.init)
    maps = config_maps(a.config)
    host_paths = dict(h.split("=", 1) for h in a.host_path)

    cmd = ["podman", "--runtime", a.runtime, "run", "--name", a.name or container["name"]]
    # podman sets RLIMIT_NOFILE and RLIMIT_NPROC to 1048576 by default; the
    # kubelet sets none (the container inherits the runtime's). Without
    # CAP_SYS_RESOURCE podman cannot raise them: pass this process's RLIMIT_NOFILE
    # and --nproc (podman 4.3 lowers its own RLIMIT_NPROC to 32768 and cannot
    # give a container more).
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cmd += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={a.nproc}:{a.nproc}"]
    for key in ("hostPID", "hostIPC"):
        if pod.get(key):
            fail(f"{key} is not supported")
    cmd += ["--network", f"ns:{a.netns}"]
    if not pod.get("hostNetwork") and a.netns_is_node:
        fail("the pod does not use the host network: give it a namespace of its own")

    sc = merged_security(pod, container)
    unknown = set(sc) - {
        "runAsUser", "runAsGroup", "runAsNonRoot", "allowPrivilegeEscalation",
        "readOnlyRootFilesystem", "capabilities", "seccompProfile", "appArmorProfile",
        "privileged",
    }
    if unknown:
        fail(f"securityContext fields {sorted(unknown)} are not supported")
    if sc.get("privileged"):
        cmd.append("--privileged")
    if "runAsUser" in sc:
        user = str(sc["runAsUser"])
        if "runAsGroup" in sc:
            user += f":{sc['runAsGroup']}"
        cmd += ["--user", user]
    if sc.get("runAsNonRoot") and str(sc.get("runAsUser", "")) in ("", "0"):
        fail("runAsNonRoot without a non-zero runAsUser: the kubelet would check the image's user")
    if sc.get("allowPrivilegeEscalation") is False:
        cmd += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        # The kubelet mounts no tmpfs on /tmp, /run, /var/tmp; podman would.
        cmd += ["--read-only", "--read-only-tmpfs=false"]
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop", []):
        cmd += ["--cap-drop", cap]
    if caps.get("add") and str(sc.get("runAsUser", "")) != "0":
        # Not root (without runAsUser: the image's user, 65532). podman would
        # make them ambient; the kubelet sets no ambient capabilities, so a
        # non-root process loses them at execve.
        fail(f"capabilities {caps['add']} added to a non-root container: the kubelet would not make them effective")
    for cap in caps.get("add", []):
        cmd += ["--cap-add", cap]
    cmd += ["--security-opt", seccomp_option(sc.get("seccompProfile"), a.runtime_default)]
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        cmd += ["--security-opt", "apparmor=unconfined"]
    for sysctl in (pod.get("securityContext") or {}).get("sysctls", []):
        cmd += ["--sysctl", f"{sysctl['name']}={sysctl['value']}"]

    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        cmd += ["--memory", str(memory(limits["memory"]))]
    if "cpu" in limits:
        cmd += ["--cpus", str(cpus(limits["cpu"]))]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "hostPath" not in volume:
            fail(f"volume {mount['name']}: only hostPath volumes are supported")
        source = host_paths.get(volume["hostPath"]["path"], volume["hostPath"]["path"])
        kind = volume["hostPath"].get("type", "")
        if kind == "Directory" and not os.path.isdir(source):
            fail(f"volume {mount['name']}: {source} is not a directory (hostPath type Directory)")
        options = "ro" if mount.get("readOnly") else "rw"
        cmd += ["--volume", f"{source}:{mount['mountPath']}:{options}"]
    for extra in a.mount:
        cmd += ["--volume", extra]

    env = environment(container, namespace, maps, a.node_name, a.name or container["name"])
    for name, value in env.items():
        cmd += ["--env", f"{name}={value}"]
    if "command" in container:
        cmd += ["--entrypoint", json.dumps([expand(c, env) for c in container["command"]])]
    if a.rm:
        cmd.append("--rm")
    args = a.args if a.args else [expand(x, env) for x in container.get("args", [])]
    cmd += [a.image or container["image"]] + args + a.arg
    return cmd


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="the workload's manifest (deploy/30-node.yaml)")
    p.add_argument("--workload", help="its name, when the file holds several")
    p.add_argument("--container", help="the container's name, when the pod has several")
    p.add_argument("--init", action="store_true", help="an init container")
    p.add_argument("--config", action="append", default=[], help="a file of ConfigMaps (deploy/20-config.yaml)")
    p.add_argument("--netns", required=True, help="the pod's network namespace (the node's for host network)")
    p.add_argument("--netns-is-node", action="store_true", help="--netns is the node's: refuse a pod without host network")
    p.add_argument("--node-name", help="spec.nodeName")
    p.add_argument("--host-path", action="append", default=[], metavar="PATH=HERE", help="hostPath PATH is HERE on this machine")
    p.add_argument("--mount", action="append", default=[], metavar="SRC:DST[:ro]", help="an extra bind mount")
    p.add_argument("--arg", action="append", default=[], help="an argument appended to the container's")
    p.add_argument("--image", help="the image (default: the manifest's)")
    p.add_argument("--name", help="the container's name in podman (default: the manifest's)")
    p.add_argument("--runtime", default="runc", help="podman's OCI runtime (default runc)")
    p.add_argument("--runtime-default", choices=["current", "legacy"], default="current",
                   help="what seccomp RuntimeDefault means (see above)")
    p.add_argument("--nproc", type=int, default=32768, help="RLIMIT_NPROC for the container")
    p.add_argument("--print", action="store_true", help="print the podman command instead of running it")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("args", nargs="*", help="after --: arguments replacing the container's (a one-off command)")
    a = p.parse_args()
    cmd = podman_command(a)
    if a.print:
        print(" ".join(cmd))
        return
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
