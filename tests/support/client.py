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
# or N seconds pass; prints {"ok": n, "backends": {...}, "failures": [...]}).
import json
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
