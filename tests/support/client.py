# A client for tests/proxy.rs: MODE HOST PORT N makes N attempts and prints one JSON list,
# each item {"backend": "<reply>", "peer": "<address>:<port>"} or {"errno": n, "ms": t}.
# MODE: tcp (connect, getpeername, read the greeting), udp (unconnected sendto/recvfrom:
# "peer" is where the reply came from), cudp (connected UDP), hold (one TCP connection:
# prints the greeting, then on each stdin line sends a ping and prints the answer),
# cudp-hold (one connected UDP socket: prints the first answer, then on each stdin line
# sends again and prints the answer or the error), stream (one TCP connection to an echo
# server: sends a numbered byte stream and checks every byte comes back, in order, until a
# line arrives on stdin or N seconds pass; prints {"bytes": n, "error": null or text}),
# tcp-loop (connects again and again, reading each greeting, until a line arrives on stdin
# or N seconds pass; prints {"ok": n, "backends": {...}, "failures": [...]}), churn (one
# unconnected UDP socket sends to HOST:PORT; then N UDP sockets connect to it and close, and
# N/100 TCP connections to HOST:TCP_PORT (argv[5]) come and go; then the first socket reads
# its answer; prints {"backend", "peer", "held", "sampled", "churned", "seconds"}: "held"
# is the first socket's reverse NAT table as read from the pinned map at argv[6] with the
# socket as key, "sampled" how many churned sockets had a table while open; started
# outside the client network namespace, it enters the one at argv[7] itself).
import ctypes
import json
import os
import struct
import select
import socket
import sys
import time

mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET


def peer_text(peer):
    return "%s:%d" % (peer[0], peer[1])


if mode == "hold":
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
    print(json.dumps({"backend": s.recv(100).decode(), "peer": peer_text(s.getpeername())}), flush=True)
    for line in sys.stdin:
        s.sendall(b"ping")
        print(json.dumps({"answer": s.recv(100).decode()}), flush=True)
    sys.exit(0)

if mode == "cudp-hold":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, port))
    s.send(b"hi")
    print(json.dumps({"backend": s.recv(100).decode(), "peer": peer_text(s.getpeername())}), flush=True)
    for line in sys.stdin:
        try:
            s.send(b"hi")
            print(json.dumps({"backend": s.recv(100).decode()}), flush=True)
        except OSError as e:
            print(json.dumps({"errno": e.errno or 0}), flush=True)
    sys.exit(0)

def stdin_ready():
    return bool(select.select([sys.stdin], [], [], 0)[0])


if mode == "stream":
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
    print(json.dumps({"connected": peer_text(s.getpeername())}), flush=True)
    sent = 0
    error = None
    deadline = time.monotonic() + n
    try:
        while not stdin_ready() and time.monotonic() < deadline:
            chunk = bytes((sent + i) % 251 for i in range(4096))
            s.sendall(chunk)
            got = b""
            while len(got) < len(chunk):
                data = s.recv(len(chunk) - len(got))
                if not data:
                    raise OSError("connection closed after %d bytes" % (sent + len(got)))
                got += data
            if got != chunk:
                raise OSError("bytes %d..%d came back altered" % (sent, sent + len(chunk)))
            sent += len(chunk)
    except OSError as e:
        error = str(e)
    print(json.dumps({"bytes": sent, "error": error}), flush=True)
    sys.exit(0)

if mode == "tcp-loop":
    ok = 0
    backends = {}
    failures = []
    deadline = time.monotonic() + n
    print(json.dumps({"started": True}), flush=True)
    while not stdin_ready() and time.monotonic() < deadline:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            data = s.recv(100).decode()
            if not data:
                raise OSError("empty greeting")
            backends[data] = backends.get(data, 0) + 1
            ok += 1
        except OSError as e:
            failures.append({"errno": e.errno or 0, "error": str(e), "after": ok})
        finally:
            s.close()
    print(json.dumps({"ok": ok, "backends": backends, "failures": failures}), flush=True)
    sys.exit(0)

SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_ELEM, BPF_OBJ_GET = 1, 7
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    ret = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf, ctypes.c_long(128))
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def pinned_map(path):
    name = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, struct.pack("=Q", ctypes.addressof(name)))


def socket_table(map_fd, sock, slots=8):
    """The IPv4 reverse NAT table of `sock` (socket-local storage: the key is the socket's
    fd), as ["backend ip:port -> service ip:port", ...], or None when it has none."""
    key = ctypes.c_int(sock.fileno())
    value = ctypes.create_string_buffer(16 * slots + 8)
    attr = struct.pack("=IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except OSError as e:
        if e.errno == 2:
            return None
        raise
    out = []
    for i in range(slots):
        backend, bport, _, service, sport, _ = struct.unpack_from("=4sHH4sHH", value.raw, 16 * i)
        if bport:
            out.append("%s:%d -> %s:%d" % (socket.inet_ntoa(backend), socket.ntohs(bport),
                                           socket.inet_ntoa(service), socket.ntohs(sport)))
    return out


if mode == "churn":
    # Started in the host's namespaces (`ip netns exec` would mount another /sys, hiding
    # bpffs): the map first, then into the client netns (argv[7]).
    tcp_port, map_path, netns = int(sys.argv[5]), sys.argv[6], sys.argv[7]
    try:
        map_fd = pinned_map(map_path)
    except FileNotFoundError:
        map_fd = None  # (a fairlead without socket-local storage)
    with open(netns) as ns:
        if libc.setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    table = lambda s: None if map_fd is None else socket_table(map_fd, s)
    started = time.monotonic()
    held = socket.socket(family, socket.SOCK_DGRAM)
    held.settimeout(5)
    held.sendto(b"hi", (host, port))
    sampled = 0
    for i in range(n):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((host, port))
        if i % 1000 == 0:
            sampled += table(s) is not None
        s.close()
        if i % 100 == 0:
            t = socket.socket(family, socket.SOCK_STREAM)
            t.settimeout(5)
            t.connect((host, tcp_port))
            t.recv(100)
            t.close()
    data, peer = held.recvfrom(100)
    print(json.dumps({
        "backend": data.decode(),
        "peer": peer_text(peer),
        "held": table(held),
        "sampled": sampled,
        "churned": n,
        "seconds": time.monotonic() - started,
    }))
    sys.exit(0)

out = []
for _ in range(n):
    started = time.monotonic()
    s = socket.socket(family, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        if mode == "tcp":
            s.connect((host, port))
            peer = s.getpeername()
            data = s.recv(100)
        elif mode == "udp":
            s.sendto(b"hi", (host, port))
            data, peer = s.recvfrom(100)
        else:
            s.connect((host, port))
            s.send(b"hi")
            data = s.recv(100)
            peer = s.getpeername()
        out.append({"backend": data.decode(), "peer": peer_text(peer)})
    except OSError as e:
        out.append({"errno": e.errno or 0, "ms": (time.monotonic() - started) * 1000})
    finally:
        s.close()
print(json.dumps(out))
