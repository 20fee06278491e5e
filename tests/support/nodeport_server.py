# A backend for tests/nodeport.rs: on each TCP connection sends "<name> <peer-ip>:<peer-port>\n"
# (the client address as the backend sees it) and then echoes every byte back; answers each
# UDP datagram with the same line. Listens on 0.0.0.0 for every "tcp:PORT" / "udp:PORT"
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


def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)

    def serve():
        while True:
            conn, peer = s.accept()
            threading.Thread(target=handle, args=(conn, peer), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))

    def serve():
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(greeting(peer), peer)

    threading.Thread(target=serve, daemon=True).start()


for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    (tcp if proto == "tcp" else udp)(int(port))
print("ready", flush=True)
sys.stdin.read()
