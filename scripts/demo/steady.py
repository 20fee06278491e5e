"""A steady client for the restart check: ONE TCP connection to HOST:PORT,
an HTTP request on it every 20 ms until the file STOP exists, every answer
checked. Exits 0 and prints "N requests on one connection, all answered by
POD" if nothing was lost; exits 1 with the reason otherwise.
Usage: steady.py HOST PORT STOP"""
import os
import socket
import sys
import time

host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def answer(sock, buffered):
    """Reads one HTTP response; returns (body, leftover bytes)."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection was closed")
        buffered += chunk
    head, rest = buffered.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection was closed mid-answer")
        rest += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError("unexpected answer: %r" % head[:40])
    return rest[:length].decode().strip(), rest[length:]


sock = socket.create_connection((host, port), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("connected", flush=True)
served_by, count, buffered = set(), 0, b""
deadline = time.monotonic() + 120
try:
    while not os.path.exists(stop) and time.monotonic() < deadline:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        body, buffered = answer(sock, buffered)
        served_by.add(body)
        count += 1
        time.sleep(0.02)
except (OSError, ConnectionError) as e:
    print("LOST after %d requests: %s" % (count, e), flush=True)
    sys.exit(1)
if len(served_by) != 1 or count == 0:
    print("unexpected: %d requests answered by %s" % (count, sorted(served_by)))
    sys.exit(1)
print("%d requests on one connection, all answered by %s" % (count, served_by.pop()))
