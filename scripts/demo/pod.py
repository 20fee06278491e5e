"""A demo pod: an HTTP/1.1 server (keep-alive) that answers every request with
its pod name, so that a client sees which pod served it. Usage: pod.py NAME PORT.
Prints "ready" once listening."""
import http.server
import sys

NAME = sys.argv[1]
PORT = int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (NAME + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
