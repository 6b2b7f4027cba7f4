"""Test helpers for the control plane: run it as a real process and speak its protocols.

Reusable by other tests: :func:`running_control_plane` starts ``python -m gossamer.control``
on free ports and stops it by PID; :func:`join` gets a workload certificate with a join token
over real TLS; :class:`StreamClient` is a blocking client of the sidecar stream (§4 of
docs/internals.md) with bounded waits everywhere.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gossamer.control.ca import generate_csr

__all__ = [
    "ControlPlaneProcess",
    "Credentials",
    "StreamClient",
    "client_ssl_context",
    "connect_proxy",
    "join",
    "running_control_plane",
    "start_control_plane",
]

READY = re.compile(
    r"gossamer control plane ready api=(https://)?(\S+):(\d+) stream=(\S+):(\d+)"
)
START_TIMEOUT = 20.0


@dataclass
class ControlPlaneProcess:
    """A running control plane subprocess and how to reach it."""

    proc: subprocess.Popen[str]
    data_dir: Path
    api_url: str
    stream_host: str
    stream_port: int
    log_path: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def root_pem(self) -> bytes:
        return (self.data_dir / "ca" / "root.crt").read_bytes()

    def client(self, authenticated: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if authenticated else {}
        verify: ssl.SSLContext | bool = True
        if self.api_url.startswith("https://"):
            verify = ssl.create_default_context(cafile=str(self.data_dir / "ca" / "root.crt"))
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=10.0, verify=verify)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_control_plane(data_dir: Path, *extra_args: str) -> ControlPlaneProcess:
    """Start ``python -m gossamer.control`` on free ports; return once it printed ready."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-control-{time.monotonic_ns()}.log"
    log_file = log_path.open("w")
    args = [
        sys.executable, "-m", "gossamer.control",
        "--data-dir", str(data_dir),
        "--api-addr", "127.0.0.1:0",
        "--stream-addr", "127.0.0.1:0",
        *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log_file, text=True, env={**os.environ}
    )
    log_file.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    buffer = ""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        buffer += line
        match = READY.search(line)
        if match:
            return ControlPlaneProcess(
                proc,
                data_dir,
                f"{match.group(1) or 'http://'}{match.group(2)}:{match.group(3)}",
                match.group(4),
                int(match.group(5)),
                log_path,
            )
        if not line:
            break
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(
        f"control plane did not start: stdout={buffer!r}\n{log_path.read_text(errors='replace')}"
    )


@contextmanager
def running_control_plane(data_dir: Path, *extra_args: str) -> Iterator[ControlPlaneProcess]:
    """A control plane for the duration of the block, stopped by PID afterwards."""
    cp = start_control_plane(data_dir, *extra_args)
    try:
        yield cp
    finally:
        cp.stop()


@dataclass(frozen=True)
class Credentials:
    """A workload's key, certificate and the trust bundle (PEM)."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    expires: int


def client_ssl_context(
    root_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """TLS client context trusting ``root_pem``, optionally presenting a client cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=root_pem.decode())
    if cert_pem is not None and key_pem is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            context.load_cert_chain(cert_path, key_path)
    return context


class StreamClient:
    """A blocking client of the sidecar stream: one JSON object per line, bounded waits."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0):
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self._buffer = b""
        self.closed = False

    def send(self, message: Mapping[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next message (answering pings on the way); None when the server closed."""
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message: dict[str, Any] = json.loads(line)
                if message.get("type") == "ping":
                    self.send({"type": "pong"})
                    continue
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from the control plane in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk

    def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of type ``kind`` (others are skipped); TimeoutError if none."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise ConnectionError(f"stream closed while waiting for {kind!r}")
            if message.get("type") == kind:
                return message

    def close(self) -> None:
        self.closed = True
        with suppress(OSError):
            self.sock.close()


def join(cp: ControlPlaneProcess, service: str, namespace: str = "default") -> Credentials:
    """Get a join token over the API and a certificate for it over the stream."""
    with cp.client() as client:
        response = client.post("/v1/join-tokens", json={"service": service, "namespace": namespace})
        response.raise_for_status()
        token = response.json()["token"]
    reply = join_with_token(cp, token)
    if reply.get("type") != "certificate":
        raise RuntimeError(f"join refused: {reply}")
    return Credentials(
        reply["_key_pem"].encode(), reply["certificate"].encode(), reply["ca"].encode(),
        int(reply["expires"]),
    )  # fmt: skip


def join_with_token(cp: ControlPlaneProcess, token: str) -> dict[str, Any]:
    """Send one ``join`` without a client cert; the reply (with ``_key_pem`` added)."""
    key_pem, csr_pem = generate_csr("ignored-hint")
    client = StreamClient(cp.stream_host, cp.stream_port, client_ssl_context(cp.root_pem))
    try:
        client.send({"type": "join", "token": token, "csr": csr_pem.decode()})
        reply = client.recv()
        assert reply is not None, "control plane closed the join without answering"
        reply["_key_pem"] = key_pem.decode()
        return reply
    finally:
        client.close()


def connect_proxy(
    cp: ControlPlaneProcess,
    creds: Credentials,
    proxy_id: str,
    service: str,
    *,
    namespace: str = "default",
    inbound_port: int | None = None,
    subscriptions: list[str] | None = None,
    labels: dict[str, str] | None = None,
) -> StreamClient:
    """Open a stream with the workload's cert and send ``hello``."""
    context = client_ssl_context(cp.root_pem, creds.cert_pem, creds.key_pem)
    client = StreamClient(cp.stream_host, cp.stream_port, context)
    client.send(
        {
            "type": "hello",
            "proxy_id": proxy_id,
            "workload": {
                "service": service,
                "namespace": namespace,
                "address": "127.0.0.1",
                "inbound_port": inbound_port,
                "admin_port": None,
                "labels": labels or {},
            },
            "subscriptions": subscriptions or [],
            "cert_expiry": creds.expires,
        }
    )
    return client
