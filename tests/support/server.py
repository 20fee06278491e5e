# A backend pod for tests/proxy.rs: answers every TCP connection with "<name>:<port>" (then
# "pong:<name>" to every message) and every UDP datagram with "<name>:<port>", on IPv4 and
# IPv6, on the given ports ("tcp:8080", "udp:5353"; "echo:9000" echoes every byte of a TCP
# connection back). Prints "ready" once listening; exits when stdin closes.
import socket
import sys
import threading

name = sys.argv[1]


def handle(conn, port):
    try:
        conn.sendall(("%s:%d" % (name, port)).encode())
        while True:
            data = conn.recv(100)
            if not data:
                break
            conn.sendall(("pong:%s" % name).encode())
    except OSError:
        pass
    finally:
        conn.close()


def echo(conn, port):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def tcp(family, address, port, handler=handle):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port))
    s.listen(1024)

    def serve():
        while True:
            conn, _ = s.accept()
            threading.Thread(target=handler, args=(conn, port), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def udp(family, address, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port))

    def serve():
        while True:
            _, peer = s.recvfrom(100)
            s.sendto(("%s:%d" % (name, port)).encode(), peer)

    threading.Thread(target=serve, daemon=True).start()


for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    if proto == "echo":
        tcp(socket.AF_INET, "0.0.0.0", int(port), echo)
        tcp(socket.AF_INET6, "::", int(port), echo)
        continue
    start = tcp if proto == "tcp" else udp
    start(socket.AF_INET, "0.0.0.0", int(port))
    start(socket.AF_INET6, "::", int(port))
print("ready", flush=True)
sys.stdin.read()
