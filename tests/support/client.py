# A client for tests/proxy.rs: MODE HOST PORT N makes N attempts and prints one JSON list,
# each item {"backend": "<reply>", "peer": "<address>:<port>"} or {"errno": n, "ms": t}.
# MODE: tcp (connect, getpeername, read the greeting), udp (unconnected sendto/recvfrom:
# "peer" is where the reply came from), cudp (connected UDP), hold (one TCP connection:
# prints the greeting, then on each stdin line sends a ping and prints the answer),
# cudp-hold (one connected UDP socket: prints the first answer, then on each stdin line
# sends again and prints the answer or the error).
import json
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
