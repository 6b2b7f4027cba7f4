"""Story 2, "encrypt everything", proven on the wire (issue 13): tcpdump (Debian's) captures
the loopback traffic to a sidecar's inbound port while requests and responses that carry a
marker cross the mesh; with mTLS STRICT the marker never appears in the capture, and the same
capture shows it as soon as plaintext reaches a PERMISSIVE sidecar (so a capture that sees
nothing is not why the first check passes).

Real parts: a control plane and sidecar processes (``orders``, whose app echoes each request
body in its answer, and ``frontend``, the caller), tcpdump started and stopped by PID.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps.post_echo import start_post_echo
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.process_harness import Proc, Processes, wait_ready
from tests.tools import require

API = "gossamer.dev/v1alpha1"


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    orders: Proc
    frontend: Proc
    tmp: Path

    def mtls(self, mode: str) -> None:
        with self.cp.client() as api:
            doc = {"apiVersion": API, "kind": "MeshConfig", "metadata": {"name": "default"},
                   "spec": {"mtls": {"mode": mode}}}  # fmt: skip
            assert api.post("/v1/resources", json=doc).status_code == 200

    def peer_authentication(self, spec: dict[str, Any] | None) -> None:
        """Apply orders' PeerAuthentication (None: delete it)."""
        with self.cp.client() as api:
            if spec is None:
                api.delete("/v1/resources/PeerAuthentication/default/orders")
                return
            doc = {"apiVersion": API, "kind": "PeerAuthentication",
                   "metadata": {"name": "orders"}, "spec": {"selector": {"service": "orders"},
                                                             **spec}}  # fmt: skip
            assert api.post("/v1/resources", json=doc).status_code == 200

    def through_the_mesh(self, body: bytes) -> bytes:
        proxy = f"http://127.0.0.1:{self.frontend.ports['outbound']}"
        with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
            response = client.post("http://orders/echo", content=body)
        assert response.status_code == 200, response.text
        return response.content

    def plaintext_to_inbound(self, body: bytes, host: str = "orders") -> httpx.Response:
        """As a client outside the mesh would: plain HTTP straight to orders' inbound port,
        naming ``host`` (its port is the one PeerAuthentication's portLevelMtls judges)."""
        url = f"http://127.0.0.1:{self.orders.ports['inbound']}/echo"
        return httpx.post(url, content=body, headers={"host": host}, timeout=10,
                          trust_env=False)  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require(shutil.which("tcpdump") is not None, "tcpdump (Debian package tcpdump)")
    tmp = tmp_path_factory.mktemp("capture")
    app = start_post_echo()
    with running_control_plane(tmp / "cp") as cp:
        procs = Processes(tmp)
        try:
            orders = procs.sidecar(cp, "orders-sidecar", "orders", app.server_address[1])
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
            wait_ready(orders)
            wait_ready(frontend)
            yield Mesh(cp, orders, frontend, tmp)
        finally:
            procs.stop_all()
            app.shutdown()


class Capture:
    """tcpdump on the loopback interface for one TCP port, into a pcap file."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["tcpdump", "--immediate-mode", "-i", "lo", "-U", "-s", "0", "-w", str(path),
             "tcp", "port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()  # "tcpdump: listening on lo, ..."
        assert "listening on lo" in line, line + self.proc.stderr.read().decode()
        # Capturing for real only once a packet shows up: open and close a connection to the
        # port until the file grows past its header (bounded). ``--immediate-mode``: every
        # packet is handed to tcpdump at once (else the last ones wait in the kernel's ring
        # and are lost when it stops).
        deadline = time.monotonic() + 5
        while not path.exists() or path.stat().st_size <= 24:
            assert time.monotonic() < deadline, "tcpdump captured nothing"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                pass
            time.sleep(0.05)

    def stop(self) -> bytes:
        """Stop it; the capture, once tcpdump says the kernel dropped none."""
        time.sleep(0.3)  # the last packets reach the capture
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.stderr is not None
        report = self.proc.stderr.read().decode()
        assert re.search(r"\b0 packets dropped by kernel", report), report
        return self.path.read_bytes()


def test_strict_mtls_leaves_no_marker_on_the_wire(mesh: Mesh) -> None:
    """Every request and response body carries a marker; none of it is in the capture of
    the traffic to orders' sidecar, which does hold the TLS handshakes (the SNI the caller's
    sidecar sends is in the clear) and as many bytes as the bodies and more."""
    mesh.mtls("STRICT")
    marker = f"MARKER-{uuid.uuid4().hex}".encode()
    capture = Capture(mesh.tmp / "strict.pcap", mesh.orders.ports["inbound"])
    try:
        for i in range(20):
            body = marker + b" request %d " % i + b"x" * 200
            assert mesh.through_the_mesh(body) == body  # the response carries it back
    finally:
        seen = capture.stop()
    assert marker not in seen
    assert b"orders.default.svc" in seen  # the ClientHello: the capture saw this traffic
    assert len(seen) > 20 * 2 * 200


def test_the_same_capture_shows_plaintext_under_permissive(mesh: Mesh) -> None:
    """With PERMISSIVE a client outside the mesh may send plaintext to the inbound port: the
    marker is then in the capture (mesh traffic stays mTLS even so)."""
    marker = f"MARKER-{uuid.uuid4().hex}".encode()
    mesh.mtls("PERMISSIVE")
    try:
        deadline = time.monotonic() + 20
        while mesh.plaintext_to_inbound(b"probe").status_code != 200:
            assert time.monotonic() < deadline, "PERMISSIVE did not reach the orders sidecar"
            time.sleep(0.2)
        capture = Capture(mesh.tmp / "permissive.pcap", mesh.orders.ports["inbound"])
        try:
            assert mesh.plaintext_to_inbound(marker).content == marker
            mesh_marker = f"MESH-{uuid.uuid4().hex}".encode()
            assert mesh.through_the_mesh(mesh_marker) == mesh_marker
        finally:
            seen = capture.stop()
        assert marker in seen
        assert mesh_marker not in seen
    finally:
        mesh.mtls("STRICT")
    deadline = time.monotonic() + 20
    while mesh.plaintext_to_inbound(b"probe").status_code != 400:
        assert time.monotonic() < deadline, "STRICT did not come back"
        time.sleep(0.2)
    assert mesh.plaintext_to_inbound(b"probe").headers["x-gossamer-error"] == "mtls-required"


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_port_of_a_strict_workload_can_take_plaintext(mesh: Mesh) -> None:
    """PeerAuthentication portLevelMtls: with the mesh STRICT, orders' port 8080 takes
    plaintext (PERMISSIVE) while its other ports keep refusing it."""
    mesh.mtls("STRICT")
    mesh.peer_authentication({"mtls": {"mode": "STRICT"},
                              "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}})  # fmt: skip
    try:
        _until(lambda: mesh.plaintext_to_inbound(b"x", "orders:8080").status_code == 200,
               "port 8080 taking plaintext")  # fmt: skip
        refused = mesh.plaintext_to_inbound(b"x", "orders")
        assert (refused.status_code, refused.headers["x-gossamer-error"]) == (400,
                                                                              "mtls-required")
        assert mesh.through_the_mesh(b"still mTLS") == b"still mTLS"
    finally:
        mesh.peer_authentication(None)


def test_a_disable_workload_is_called_in_plaintext(mesh: Mesh) -> None:
    """PeerAuthentication DISABLE for orders: the caller's sidecar sends it plain HTTP (the
    marker is in the capture), for an app that must be reached as if the mesh were not there;
    deleting it brings mTLS back (the marker gone again)."""
    mesh.mtls("STRICT")
    mesh.peer_authentication({"mtls": {"mode": "DISABLE"}})
    try:
        marker = f"PLAIN-{uuid.uuid4().hex}".encode()

        def plain_on_the_wire() -> bool:
            capture = Capture(mesh.tmp / "disable.pcap", mesh.orders.ports["inbound"])
            try:
                answered = mesh.through_the_mesh(marker) == marker
            except AssertionError:  # the two sidecars between configs: try again
                answered = False
            finally:
                seen = capture.stop()
            return answered and marker in seen

        _until(plain_on_the_wire, "the caller's sidecar sending plaintext to orders")
    finally:
        mesh.peer_authentication(None)
    secret = f"TLS-{uuid.uuid4().hex}".encode()

    def encrypted_again() -> bool:
        capture = Capture(mesh.tmp / "again.pcap", mesh.orders.ports["inbound"])
        try:
            answered = mesh.through_the_mesh(secret) == secret
        except AssertionError:
            answered = False
        finally:
            seen = capture.stop()
        return answered and secret not in seen

    _until(encrypted_again, "mTLS back once the PeerAuthentication is gone")
