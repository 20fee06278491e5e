# A backend for tests/nodeport.rs: on each TCP connection sends "<name> <peer-ip>:<peer-port>\n"
# (the client address as the backend sees it) and then echoes every byte back; answers each
# UDP datagram with the same line (a datagram over 200 bytes: the line, then the datagram
# echoed, so a large request gets a large answer). Listens on 0.0.0.0 and :: for every "tcp:PORT" / "udp:PORT"
# argument; prints "ready" once listening; exits when stdin closes.
import socket
import sys
import threading

name = sys.argv[1]


def greeting(peer):
    return ("%s %s:%d\n" % (name, peer[0], peer[1])).encode()



def handle(conn, peer):
    try:
        conn.sendall(greeting(peer))
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def tcp(family, address, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port))
    s.listen(1024)

    def serve():
        while True:
            conn, peer = s.accept()
            threading.Thread(target=handle, args=(conn, peer), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def udp(family, address, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port))

    def serve():
        while True:
            data, peer = s.recvfrom(65536)
            answer = greeting(peer)
            if len(data) > 200:
                answer += data
            s.sendto(answer, peer)

    threading.Thread(target=serve, daemon=True).start()


for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    start = tcp if proto == "tcp" else udp
    start(socket.AF_INET, "0.0.0.0", int(port))
    start(socket.AF_INET6, "::", int(port))
print("ready", flush=True)
sys.stdin.read()
