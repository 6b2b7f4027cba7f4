"""Bring your own CA (issue 13, root of trust): the mesh's certificates signed by an
intermediate under the organisation's root, with real processes.

The test plays the organisation: a root it keeps to itself and an intermediate it hands to
the control plane (``gossamer control --ca-cert --ca-key --ca-bundle``). Sidecars join, get
leaves signed by the intermediate (handed out with it), trust the organisation's root, and
carry a request with the caller's identity; ``gossamer certs status`` shows that root. A key
that is not the intermediate's is refused at start with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.control_helpers import running_control_plane
from tests.org_ca import ORG, key_pem, organisation
from tests.process_harness import ROOT, Processes, wait_port, wait_ready


def test_the_mesh_runs_on_the_organisations_intermediate(tmp_path: Path) -> None:
    cert, key, bundle, intermediate = organisation(tmp_path)
    with running_control_plane(tmp_path / "cp", "--ca-cert", str(cert), "--ca-key", str(key),
                               "--ca-bundle", str(bundle)) as cp:  # fmt: skip
        # The trust bundle in the data dir (what sidecars and clients are given) is the
        # organisation's root.
        assert x509.load_pem_x509_certificate(cp.root_pem).subject.rfc4514_string() == f"CN={ORG}"
        procs = Processes(tmp_path)
        try:
            app = procs.app("catalog-app")
            wait_port(app.ports["app"])
            catalog = procs.sidecar(cp, "catalog-sidecar", "catalog", app.ports["app"])
            frontend = procs.sidecar(cp, "frontend-sidecar", "frontend", None)
            wait_ready(catalog)
            wait_ready(frontend)
            proxy = f"http://127.0.0.1:{frontend.ports['outbound']}"
            with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
                answer = client.get("http://catalog/items")
            assert answer.status_code == 200
            assert answer.json()["peer"] == "spiffe://gossamer.local/ns/default/sa/frontend"
            # The sidecar's certificate file: its leaf, signed by the intermediate, then the
            # intermediate (so peers can build the path to the organisation's root).
            chain = x509.load_pem_x509_certificates(
                (tmp_path / "proxies" / "frontend-sidecar" / "tls.crt").read_bytes())
            assert len(chain) == 2 and chain[1] == intermediate
            chain[0].verify_directly_issued_by(intermediate)
            status = subprocess.run(
                [sys.executable, "-m", "gossamer.cli", "certs", "status", "-o", "json",
                 "--control-url", cp.api_url, "--data-dir", str(cp.data_dir)],
                capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert [r["subject"] for r in json.loads(status.stdout)["roots"]] == [f"CN={ORG}"]
        finally:
            procs.stop_all()


def test_a_key_that_is_not_the_intermediates_is_refused_at_start(tmp_path: Path) -> None:
    cert, _key, bundle, _ = organisation(tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    done = subprocess.run(
        [sys.executable, "-m", "gossamer.control", "--data-dir", str(tmp_path / "cp"),
         "--api-addr", "127.0.0.1:0", "--stream-addr", "127.0.0.1:0", "--ca-cert", str(cert),
         "--ca-key", str(other), "--ca-bundle", str(bundle)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the CA key does not match the CA certificate" in done.stderr
