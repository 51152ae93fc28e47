#!/usr/bin/env python3
"""An HTTP/1.1 server that answers every request with what it received, as traefik/whoami
does: the hostname, the peer, the request line and each header as `Name: value`."""
import argparse
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        lines = [
            f"Hostname: {socket.gethostname()}",
            f"RemoteAddr: {self.client_address[0]}:{self.client_address[1]}",
            f"{self.command} {self.path} {self.request_version}",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        body = ("\r\n".join(lines) + "\r\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, *args):
        pass


parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=80)
port = parser.parse_args().port
server = ThreadingHTTPServer(("0.0.0.0", port), Echo)
server.daemon_threads = True
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"echo-upstream on {port}", flush=True)
server.serve_forever()
