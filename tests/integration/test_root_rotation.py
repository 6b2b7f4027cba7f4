"""Root rotation under load (issue 13, story 2): ``gossamer certs rotate`` puts a new root in
every bundle, has every leaf issued again under it and takes the old root out, while requests
cross the mesh; none fails. Afterwards a sidecar refuses a new handshake from a leaf of the old
root (it accepted one before) and accepts one from the new root, on every worker of a
multi-process sidecar.

Real parts: a control plane and sidecar processes (``orders`` with two worker processes, whose
app echoes each body, and ``frontend``, the caller), the CLI as a user runs it.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
from cryptography import x509

from gossamer.control.ca import CertificateAuthority
from gossamer.identity.spiffe import SpiffeId
from tests.apps.post_echo import start_post_echo
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.org_ca import ORG, organisation
from tests.process_harness import ROOT, Processes, wait_ready

LOAD_THREADS = 4
LOAD_SECONDS_MAX = 60.0  # the load stops at the latest after this (bounded)


class Load:
    """Threads sending echo requests through the frontend's sidecar until stopped; every
    tenth request on a new client connection."""

    def __init__(self, outbound_port: int) -> None:
        self.proxy = f"http://127.0.0.1:{outbound_port}"
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + LOAD_SECONDS_MAX
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(LOAD_THREADS)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        sent = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with httpx.Client(proxy=self.proxy, timeout=10, trust_env=False) as client:
                for _ in range(10):
                    body = b"rotation %d %d" % (index, sent)
                    sent += 1
                    try:
                        answer = client.post("http://orders/echo", content=body)
                        ok = answer.status_code == 200 and answer.content == body
                        outcome = "ok" if ok else f"{answer.status_code} " + answer.headers.get(
                            "x-gossamer-error", "")  # fmt: skip
                    except httpx.HTTPError as exc:
                        outcome = type(exc).__name__
                    self.outcomes[outcome] += 1
                    if outcome != "ok":
                        self.failures.append(outcome)

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(LOAD_SECONDS_MAX)
        return self.outcomes


def _cli(cp: ControlPlaneProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossamer.cli", *args, "--control-url", cp.api_url,
         "--data-dir", str(cp.data_dir)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


def _caller(ca: CertificateAuthority, trusted: bytes, tmp: Path) -> ssl.SSLContext:
    """An mTLS client as another sidecar would be: a leaf of ``ca`` for ``frontend``."""
    cert, key = ca.issue_keypair(SpiffeId("gossamer.local", "default", "frontend"),
                                 timedelta(minutes=10))  # fmt: skip
    name = format(ca.issuer.serial_number, "x")
    (tmp / f"{name}.crt").write_bytes(cert)
    (tmp / f"{name}.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trusted.decode())
    context.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    return context


def _accepted(context: ssl.SSLContext, port: int) -> bool:
    """Whether the inbound port completes a handshake and answers a request over it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:  # fmt: skip
            tls.sendall(b"POST /echo HTTP/1.1\r\nhost: orders\r\ncontent-length: 2\r\n"
                        b"connection: close\r\n\r\nhi")  # fmt: skip
            return tls.recv(100).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, OSError):
        return False


def _rotate_under_load(cp: ControlPlaneProcess, outbound_port: int, *args: str) -> None:
    """`gossamer certs rotate ARGS` while requests cross the mesh; none may fail."""
    load = Load(outbound_port)
    time.sleep(1.0)
    rotated = _cli(cp, "certs", "rotate", "--timeout", "60", *args)
    time.sleep(1.5)  # traffic after the rotation, on the new contexts
    outcomes = load.stop()
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "root rotation done" in rotated.stdout
    assert not load.failures, outcomes
    assert outcomes["ok"] > 100, outcomes


def test_certs_rotate_under_load_fails_no_request(tmp_path: Path) -> None:
    app = start_post_echo()
    with running_control_plane(tmp_path / "cp") as cp:
        procs = Processes(tmp_path)
        try:
            orders = procs.sidecar(cp, "orders-sidecar", "orders", app.server_address[1],
                                   extra_env={"GOSSAMER_PROXY_WORKERS": "2"})  # fmt: skip
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
            wait_ready(orders)
            wait_ready(frontend)
            kept = tmp_path / "old-ca"
            kept.mkdir()
            for name in ("root.key", "root.crt"):
                shutil.copy(cp.data_dir / "ca" / name, kept / name)
            old = CertificateAuthority.load_or_create_root(kept, "gossamer.local")
            inbound = orders.ports["inbound"]
            assert all(_accepted(_caller(old, old.root_pem, tmp_path), inbound) for _ in range(4))

            _rotate_under_load(cp, frontend.ports["outbound"])

            new = CertificateAuthority.load_or_create(cp.data_dir, "gossamer.local")
            assert new.issuer != old.issuer
            assert cp.data_dir.joinpath("ca", "root.crt").read_bytes() == new.root_pem
            # Eight handshakes: the kernel spreads them over both of orders' workers.
            from_old = _caller(old, old.root_pem + new.root_pem, tmp_path)
            from_new = _caller(new, new.root_pem, tmp_path)
            assert not any(_accepted(from_old, inbound) for _ in range(8))
            assert all(_accepted(from_new, inbound) for _ in range(8))

            status = _cli(cp, "certs", "status", "-o", "json")
            assert status.returncode == 0, status.stderr
            report = json.loads(status.stdout)
            assert [r["serial"] for r in report["roots"]] == [format(new.issuer.serial_number, "X")]
            assert report["rotation"]["phase"] is None
            assert {p["signed_by"] for p in report["proxies"]} == {new.key_id.hex()}
            for sidecar in ("orders-sidecar", "frontend-sidecar"):
                workdir = tmp_path / "proxies" / sidecar
                bundle = x509.load_pem_x509_certificates((workdir / "bundle.pem").read_bytes())
                assert bundle == [new.issuer]
                leaf = x509.load_pem_x509_certificate((workdir / "tls.crt").read_bytes())
                leaf.verify_directly_issued_by(new.issuer)
            metrics = httpx.get(f"http://127.0.0.1:{orders.ports['admin']}/metrics").text
            roots = [line for line in metrics.splitlines()
                     if line.startswith('gossamer_certificate_expiry_timestamp_seconds{certificate="root"')]  # noqa: E501  # fmt: skip
            assert len(roots) == 1, roots
        finally:
            procs.stop_all()
            app.shutdown()


def test_a_running_mesh_moves_onto_the_organisations_intermediate(tmp_path: Path) -> None:
    """`certs rotate --ca-cert --ca-key --ca-bundle`: from the built-in root to an
    intermediate under the organisation's root, under load; the sidecars then hold leaves of
    the intermediate (handed out with it) and trust the organisation's root alone."""
    cert, key, roots, intermediate = organisation(tmp_path)
    app = start_post_echo()
    with running_control_plane(tmp_path / "cp") as cp:
        procs = Processes(tmp_path)
        try:
            orders = procs.sidecar(cp, "orders-sidecar", "orders", app.server_address[1])
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
            wait_ready(orders)
            wait_ready(frontend)
            _rotate_under_load(cp, frontend.ports["outbound"], "--ca-cert", str(cert),
                               "--ca-key", str(key), "--ca-bundle", str(roots))  # fmt: skip
            for sidecar in ("orders-sidecar", "frontend-sidecar"):
                workdir = tmp_path / "proxies" / sidecar
                chain = x509.load_pem_x509_certificates((workdir / "tls.crt").read_bytes())
                assert chain[1:] == [intermediate]
                chain[0].verify_directly_issued_by(intermediate)
                assert (workdir / "bundle.pem").read_bytes() == roots.read_bytes()
            assert not (cp.data_dir / "ca" / "root.key").exists()  # the built-in key is gone
            status = json.loads(_cli(cp, "certs", "status", "-o", "json").stdout)
            assert [r["subject"] for r in status["roots"]] == [f"CN={ORG}"]
        finally:
            procs.stop_all()
            app.shutdown()
