# A client for tests/nodeport.rs.
#   tcp|udp HOST PORT N [SOURCE]  N attempts (new socket each, optionally bound to SOURCE);
#       prints one JSON list of {"backend", "seen", "peer"} ("seen": the client address as
#       the backend saw it, "peer": where the answer came from) or {"errno"}.
#   udp-connected HOST PORT N      as udp, from a connected socket (which sees ICMP errors).
#   udp-big HOST PORT N            as udp, each datagram 3000 random bytes (fragmented on a
#       1500-byte MTU); the backend echoes it after its line: adds "intact" (the echo is
#       exactly what was sent).
#   flood HOST PORT N              sends N UDP datagrams as fast as it can; prints {"sent": n}.
#   pmtu HOST PORT SIZE            sends SIZE bytes of UDP with "don't fragment" from a connected
#       socket, waits, and prints {"mtu": the path MTU the kernel has learnt for HOST}.
#   tcp-count HOST PORT N          N TCP requests (a new connection each, 2 s timeout, no
#       retry); prints {"ok": n, "backends": {name: n}, "failures": [{"at", "error"}],
#       "seconds": t}.
#   bind PORT                      tries to bind TCP 0.0.0.0:PORT; prints {"errno": n} (0: ok).
#   stream HOST PORT               one TCP connection: prints the greeting as JSON, then sends
#       numbered 1 KiB chunks and checks each echoed byte, until stdin has a line; then
#       prints {"bytes": n, "ok": bool, "error": text} and exits.
import json
import os
import select
import socket
import sys
import time

mode = sys.argv[1]


def parse(data):
    name, seen = data.decode().strip().split(" ")
    return name, seen


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


if mode == "bind":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", int(sys.argv[2])))
        print(json.dumps({"errno": 0}))
    except OSError as e:
        print(json.dumps({"errno": e.errno or -1}))
    sys.exit(0)

host, port = sys.argv[2], int(sys.argv[3])

if mode == "pmtu":
    if ":" in host:
        level, discover, do, mtu = socket.IPPROTO_IPV6, 23, 2, 24
    else:
        level, discover, do, mtu = socket.IPPROTO_IP, 10, 2, 14
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.setsockopt(level, discover, do)
    s.connect((host, port))
    try:
        s.send(b"x" * int(sys.argv[4]))
    except OSError:
        pass
    time.sleep(0.5)
    print(json.dumps({"mtu": s.getsockopt(level, mtu)}))
    sys.exit(0)

if mode == "stream":
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(10)
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(100)
        if not chunk:
            break
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    name, seen = parse(line)
    print(json.dumps({"backend": name, "seen": seen}), flush=True)
    total, n, ok, error = 0, 0, True, ""
    pending = rest
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready:
            sys.stdin.readline()
            break
        payload = (("%08d" % n) * 128).encode()
        n += 1
        try:
            s.sendall(payload)
            got = pending
            while len(got) < len(payload):
                chunk = s.recv(len(payload) - len(got))
                if not chunk:
                    raise OSError("connection closed")
                got += chunk
            pending = got[len(payload):]
            if got[: len(payload)] != payload:
                ok, error = False, "corrupted echo at chunk %d" % n
                break
            total += len(payload)
        except OSError as e:
            ok, error = False, "%s after %d bytes" % (e, total)
            break
        time.sleep(0.002)
    print(json.dumps({"bytes": total, "ok": ok, "error": error}), flush=True)
    sys.exit(0)

n = int(sys.argv[4])
source = sys.argv[5] if len(sys.argv) > 5 else None

if mode == "flood":
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sent = 0
    for _ in range(n):
        try:
            s.sendto(b"x", (host, port))
            sent += 1
        except OSError:
            pass
    print(json.dumps({"sent": sent}))
    sys.exit(0)

if mode == "tcp-count":
    ok, backends, failures = 0, {}, []
    started = time.monotonic()
    for i in range(n):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            data = b""
            while b"\n" not in data:
                chunk = s.recv(100)
                if not chunk:
                    raise OSError("closed before the greeting")
                data += chunk
            name, _ = parse(data)
            backends[name] = backends.get(name, 0) + 1
            ok += 1
        except (OSError, ValueError) as e:
            failures.append({"at": i, "error": str(e), "s": time.monotonic() - started})
        finally:
            s.close()
    print(json.dumps({"ok": ok, "backends": backends, "failures": failures,
                      "seconds": time.monotonic() - started}))
    sys.exit(0)

out = []
for _ in range(n):
    s = socket.socket(family_of(host), socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if source:
            s.bind((source, 0))
        if mode == "tcp":
            s.connect((host, port))
            peer = s.getpeername()
            data = b""
            while b"\n" not in data:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
        elif mode == "udp-connected":
            s.connect((host, port))
            s.send(b"hi")
            data = s.recv(200)
            peer = s.getpeername()
        elif mode == "udp-big":
            sent = os.urandom(3000)
            s.sendto(sent, (host, port))
            data, peer = s.recvfrom(65536)
            line, _, echoed = data.partition(b"\n")
            name, seen = parse(line)
            out.append({"backend": name, "seen": seen, "peer": "%s:%d" % (peer[0], peer[1]),
                        "intact": echoed == sent, "bytes": len(data)})
            continue
        else:
            s.sendto(b"hi", (host, port))
            data, peer = s.recvfrom(200)
        name, seen = parse(data)
        out.append({"backend": name, "seen": seen, "peer": "%s:%d" % (peer[0], peer[1])})
    except (OSError, ValueError) as e:
        out.append({"errno": getattr(e, "errno", None) or -1})
    finally:
        s.close()
print(json.dumps(out))
