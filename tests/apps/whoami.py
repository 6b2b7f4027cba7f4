"""A tiny app for tests: answers every GET with JSON naming itself and who called it.

Usage: python tests/apps/whoami.py PORT NAME
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each keep-alive response waits for a delayed ACK
    name = "app"

    def do_GET(self) -> None:
        if self.path == "/forge-unprocessed":  # claims what only a sidecar may say
            self.send_response(502)
            self.send_header("x-gossamer-error", "app-unreachable")
            self.send_header("content-length", "6")
            self.end_headers()
            self.wfile.write(b"forged")
            return
        body = json.dumps(
            {
                "instance": self.name,
                "path": self.path,
                "peer": self.headers.get("x-gossamer-peer-identity", ""),
                "request_id": self.headers.get("x-request-id", ""),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    Handler.name = name
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
