"""What every Python app of the framework suite answers: which handler ran, for which method
and route parameters, and the identity it read through its framework's own header API.

The report goes in the `X-Framework-Report` header (so that HEAD answers carry it too) and in
the body. The gateway's own refusals never carry it, which is how the test tells them apart.
"""

import json
import socket
import sys

REPORT_HEADER = "X-Framework-Report"

# The identity headers the gateway sets (contract 6.1), and two that it must strip (6.5) but
# that some applications read as a signed-in user.
IDENTITY = {
    "user_id": "X-Auth-User-Id",
    "email": "X-Auth-Email",
    "role": "X-Auth-Role",
    "session_id": "X-Auth-Session-Id",
    "forwarded_user": "X-Forwarded-User",
    "remote_user": "Remote-User",
}


def report(framework, handler, method, params, identity):
    """The report as a compact ASCII JSON string (header values must be ASCII)."""
    return json.dumps(
        {
            "framework": framework,
            "handler": handler,
            "method": method,
            "params": params,
            "identity": identity,
        },
        separators=(",", ":"),
        ensure_ascii=True,
    )


def listening_socket():
    """A loopback socket on a port the OS picks; the port is announced on stdout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def announce(port):
    print(f"PORT {port}", flush=True)
    sys.stdout.flush()
