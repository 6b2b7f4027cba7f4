"""Writes the seed corpora in ``fuzz/corpus/<target>/`` (committed; rerun after changing).

``python -m fuzz.seeds``. Seeds are real traffic and real documents: requests as wrk, curl,
python-requests, browsers and proxies send them, responses as nginx and uvicorn send them;
HTTP/2 client traffic made by the proxy's own client session; the documents in
``examples/``. Each file is named after what it holds.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable

import yaml

from fuzz.engine import CORPUS, ROOT

__all__ = ["config_seeds", "h2_seeds", "http1_seeds", "main"]

HTTP1: dict[str, bytes] = {
    "wrk": b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n",
    "curl": (
        b"GET /items?id=7 HTTP/1.1\r\nHost: catalog:8080\r\nUser-Agent: curl/7.88.1\r\n"
        b"Accept: */*\r\nConnection: close\r\nX-Request-Id: abc-1\r\n\r\n"
    ),
    "requests": (
        b"GET /a?b=1 HTTP/1.1\r\nHost: edge\r\nUser-Agent: python-requests/2.31\r\n"
        b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
    ),
    "browser": (
        b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: shop.example:443\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
        b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
        b'Accept-Language: en-US,en;q=0.5\r\nCookie: a=1; b="x y"\r\n'
        b"Cache-Control: max-age=0\r\nTE: trailers\r\n\r\n"
    ),
    "absolute-form": b"GET http://user@catalog.default:8080/items#x HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10": b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "post-length": b"POST /orders HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\n\r\nhello",
    "post-chunked": (
        b"POST /up HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    ),
    "websocket": (
        b"GET /ws HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ),
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    "peer-identity": (
        b"DELETE /x HTTP/1.1\r\nhost: a\r\nx-gossamer-peer-identity: spiffe://x/ns/a/sa/b\r\n"
        b"CONNECTION: CLOSE\r\n\r\n"
    ),
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "connect": b"CONNECT catalog:443 HTTP/1.1\r\nHost: catalog:443\r\n\r\n",
    "proxy-headers": (
        b"PATCH /p HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\r\n"
    ),
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "folded": b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    "response-nginx": (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 22:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
        b'Connection: keep-alive\r\nETag: "x"\r\n\r\nabc'
    ),
    "response-uvicorn": b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nserver: uvicorn\r\n\r\n",
    "response-204": b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    "response-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
}


def http1_seeds() -> dict[str, bytes]:
    return dict(HTTP1)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def h2_seeds() -> dict[str, bytes]:
    """Client traffic after the connection preface (the target adds the preface)."""
    from gossamer.protocol.h2.session import H2Session
    from gossamer.proxy.h2 import H2_PREFACE

    def client_wire(requests: Iterable[tuple[list[tuple[bytes, bytes]], bytes | None]]) -> bytes:
        client = H2Session(client=True, settings=[(3, 100), (4, 65535)])
        try:
            for headers, body in requests:
                sid, _ = client.submit_request(headers, end_stream=body is None)
                if body is not None:
                    client.send_data(sid, body)
                    trailers = [(b"grpc-status", b"0")] if b"grpc" in headers[-1][1] else None
                    client.end_stream(sid, trailers)
            wire = client.data_to_send()
        finally:
            client.close()
        assert wire.startswith(H2_PREFACE)
        return wire[len(H2_PREFACE) :]

    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"catalog"),
           (b":path", b"/items?id=7"), (b"user-agent", b"curl/8")]  # fmt: skip
    post = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"orders"),
            (b":path", b"/orders"), (b"content-type", b"application/json")]  # fmt: skip
    grpc = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"catalog:50051"),
            (b":path", b"/shop.Catalog/Get"), (b"te", b"trailers"),
            (b"content-type", b"application/grpc")]  # fmt: skip
    big = [*get[:4], (b"x-big", b"v" * 20000)]  # CONTINUATION frames
    ping = _frame(6, 0, 0, b"12345678")
    window = _frame(8, 0, 0, struct.pack(">I", 1 << 20)) + _frame(8, 0, 1, struct.pack(">I", 1))
    return {
        "get": client_wire([(get, None)]),
        "post-body": client_wire([(post, b'{"item": 7}')]),
        "grpc-trailers": client_wire([(grpc, b"\x00\x00\x00\x00\x02\x08\x07")]),
        "three-streams": client_wire([(get, None), (post, b"x" * 100), (get, None)]),
        "continuation": client_wire([(big, None)]),
        "ping-window": client_wire([(get, None)]) + ping + window,
        "rst-goaway": client_wire([(post, b"abc")])
        + _frame(3, 0, 1, struct.pack(">I", 8))
        + _frame(7, 0, 0, struct.pack(">II", 1, 0) + b"bye"),
        "priority-settings-ack": _frame(4, 0, 0, b"")
        + _frame(4, 1, 0, b"")
        + _frame(2, 0, 3, struct.pack(">IB", 0, 15)),
    }


def config_seeds() -> dict[str, bytes]:
    """The example documents as YAML text (mode byte 0), as JSON (1), each document alone,
    and as structure-aware starting points (2: a document index to mutate)."""
    seeds: dict[str, bytes] = {}
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        text = path.read_text()
        name = path.relative_to(ROOT / "examples").with_suffix("").as_posix().replace("/", "-")
        seeds[f"{name}.yaml"] = b"\x00" + text.encode()
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        seeds[f"{name}.json"] = b"\x01" + json.dumps(docs, separators=(",", ":")).encode()
    seeds["mutate-first"] = b"\x02\x00\x00\x00\x00"
    seeds["mutate-set"] = b"\x02\x03\x01\x05\x02\x07"
    return seeds


def _write(target: str, seeds: dict[str, bytes]) -> None:
    folder = CORPUS / target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    print(f"{folder.relative_to(ROOT)}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} B")


def main() -> None:
    _write("http1", http1_seeds())
    _write("h2", h2_seeds())
    _write("config", config_seeds())


if __name__ == "__main__":
    main()
