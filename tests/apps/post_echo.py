"""An HTTP/1.1 app in a thread of the test process: each POST is answered with its body."""

from __future__ import annotations

import http.server
import threading
from typing import Any

__all__ = ["start_post_echo"]


class _PostEcho(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def start_post_echo() -> http.server.ThreadingHTTPServer:
    """The app, serving on a loopback port (``server_address``) until ``shutdown()``."""
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PostEcho)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    return app
