"""A real OpenID provider for the tests: oidc-provider on Node.js, two issuers, one process.

``running_oidc_provider(tmp_path)`` starts ``tests/clients/node/oidc_provider.js`` (installed by
``scripts/ensure-node-clients``) on two free loopback ports and stops it by PID on exit. Every
token comes from a real ``client_credentials`` request to the token endpoint that discovery
names; the test never mints one. What the issuers serve (clients, claims, resource indicators,
keys, admin endpoints) is described at the top of ``oidc_provider.js``.

    with running_oidc_provider(tmp_path) as idp:
        token = idp.token(idp.issuer_a)                       # aud orders-api, RS256
        token = idp.token(idp.issuer_a, audience="other-api")  # the wrong audience
        token = idp.token(idp.issuer_b, client="intruder", alg="EdDSA")
        idp.rotate(idp.issuer_a)   # a new RS256 kid signs from now on; the old one stays
        idp.retire(idp.issuer_a)   # only the newest RS256 key is left
        idp.jwks_down(idp.issuer_a); idp.jwks_up(idp.issuer_a)

``decode_unverified`` and ``verify_signature`` (RS256, ES256, EdDSA through ``cryptography``)
let a test look inside a token without PyJWT.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.sidecar_harness import free_port
from tests.tools import require

NODE_DIR = Path(__file__).resolve().parent / "clients" / "node"
SCRIPT = NODE_DIR / "oidc_provider.js"

# The confidential clients that oidc_provider.js registers on both issuers.
CLIENT_SECRETS = {"storefront": "storefront-secret", "intruder": "intruder-secret"}
ALGS = ("RS256", "ES256", "EdDSA")
READY_TIMEOUT = 30.0


@dataclass
class OidcProvider:
    """The running provider: two issuers, plain HTTP on 127.0.0.1."""

    issuer_a: str
    issuer_b: str
    state_dir: Path
    log_path: Path
    _discovery: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def _issuer(self, issuer: str) -> str:
        if issuer in ("A", "a"):
            return self.issuer_a
        if issuer in ("B", "b"):
            return self.issuer_b
        if issuer not in (self.issuer_a, self.issuer_b):
            raise ValueError(f"unknown issuer {issuer!r}")
        return issuer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def discovery(self, issuer: str) -> dict[str, Any]:
        """The issuer's ``/.well-known/openid-configuration`` (fetched once)."""
        issuer = self._issuer(issuer)
        if issuer not in self._discovery:
            r = _request("GET", f"{issuer}/.well-known/openid-configuration")
            r.raise_for_status()
            self._discovery[issuer] = r.json()
        return self._discovery[issuer]

    def jwks(self, issuer: str) -> dict[str, Any]:
        """The JWKS the issuer publishes now, from the ``jwks_uri`` that discovery names."""
        r = _request("GET", self.discovery(issuer)["jwks_uri"])
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def token_response(
        self,
        issuer: str,
        client: str = "storefront",
        audience: str = "orders-api",
        alg: str = "RS256",
        *,
        secret: str | None = None,
        scope: str | None = None,
    ) -> httpx.Response:
        """The raw answer of a client_credentials request (client_secret_basic), for error
        cases: ``secret`` replaces the client's own, ``scope`` is sent when given."""
        if alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}")
        resource = f"urn:gossamer:{audience}" + ("" if alg == "RS256" else f":{alg}")
        data = {"grant_type": "client_credentials", "resource": resource}
        if scope is not None:
            data["scope"] = scope
        password = CLIENT_SECRETS.get(client, "") if secret is None else secret
        endpoint = self.discovery(issuer)["token_endpoint"]
        return _request("POST", endpoint, data=data, auth=(client, password))

    def token(
        self,
        issuer: str,
        client: str = "storefront",
        audience: str = "orders-api",
        alg: str = "RS256",
    ) -> str:
        """A JWT access token (``typ`` at+jwt) from ``issuer`` for ``client``, with ``aud``
        ``audience``, signed with ``alg`` (RS256, ES256 or EdDSA) by the issuer's current key."""
        r = self.token_response(issuer, client, audience, alg)
        if r.status_code != 200:
            raise AssertionError(f"token request failed: {r.status_code} {r.text}")
        token: str = r.json()["access_token"]
        return token

    def _admin(self, issuer: str, action: str) -> list[str]:
        r = _request("POST", f"{self._issuer(issuer)}/_admin/{action}")
        r.raise_for_status()
        kids: list[str] = r.json()["kids"]
        return kids

    def kids(self, issuer: str) -> list[str]:
        """The issuer's key ids, in JWKS order (even while its JWKS endpoint is down)."""
        r = _request("GET", f"{self._issuer(issuer)}/_admin/keys")
        r.raise_for_status()
        kids: list[str] = r.json()["kids"]
        return kids

    def rotate(self, issuer: str) -> list[str]:
        """A new RS256 key with a new kid signs from now on; the old keys stay published."""
        return self._admin(issuer, "rotate")

    def retire(self, issuer: str) -> list[str]:
        """Drop every RS256 key but the newest (the ES256 and EdDSA keys stay)."""
        return self._admin(issuer, "retire")

    def jwks_down(self, issuer: str) -> None:
        """The issuer's JWKS endpoint answers 503 until ``jwks_up``."""
        self._admin(issuer, "down")

    def jwks_up(self, issuer: str) -> None:
        self._admin(issuer, "up")


def _request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        return client.request(method, url, **kwargs)


def available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules/oidc-provider").is_dir()


@contextmanager
def running_oidc_provider(tmp_path: Path, token_ttl: int = 300) -> Iterator[OidcProvider]:
    """Start the two issuers (skip, or fail in CI, when node or oidc-provider is missing),
    wait for them (at most 30 s), and stop the process by PID on exit."""
    require(available(), "node with tests/clients/node/node_modules/oidc-provider "
            "(scripts/ensure-node-clients)")
    state_dir = tmp_path / "oidc"
    state_dir.mkdir(parents=True, exist_ok=True)
    out_path, log_path = state_dir / "stdout", state_dir / "provider.log"
    port_a, port_b = free_port(), free_port()
    with open(out_path, "wb") as out, open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["node", str(SCRIPT), str(port_a), str(port_b), str(state_dir)],
            stdout=out, stderr=log, stdin=subprocess.DEVNULL, cwd=NODE_DIR,
            env={**os.environ, "OIDC_ACCESS_TOKEN_TTL": str(token_ttl)},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        ready = ""
        while not ready:
            line = out_path.read_text(errors="replace").partition("\n")
            if line[1] and line[0].startswith("ready "):
                ready = line[0]
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"oidc_provider.js exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"oidc_provider.js not ready after {READY_TIMEOUT}s:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        fields = dict(part.split("=", 1) for part in ready.split()[1:])
        yield OidcProvider(fields["A"], fields["B"], state_dir, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JOSE header and the claims of a compact JWS, signature NOT checked."""
    header, payload, _ = token.split(".")
    return json.loads(_b64decode(header)), json.loads(_b64decode(payload))


def _int(value: str) -> int:
    return int.from_bytes(_b64decode(value), "big")


def verify_signature(token: str, jwks: dict[str, Any]) -> bool:
    """Whether the key of ``jwks`` named by the token's ``kid`` signed it (RS256, ES256 or
    EdDSA/Ed25519); False when no such key exists or the signature is wrong."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_b64decode(header_b64))
    signed = f"{header_b64}.{payload_b64}".encode()
    signature = _b64decode(signature_b64)
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        return False
    jwk, alg = keys[0], header.get("alg")
    try:
        if alg == "RS256" and jwk["kty"] == "RSA":
            rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key().verify(
                signature, signed, padding.PKCS1v15(), hashes.SHA256()
            )
        elif alg == "ES256" and jwk["kty"] == "EC" and jwk["crv"] == "P-256":
            if len(signature) != 64:
                return False
            point = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), ec.SECP256R1())
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            point.public_key().verify(der, signed, ec.ECDSA(hashes.SHA256()))
        elif alg == "EdDSA" and jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(_b64decode(jwk["x"])).verify(
                signature, signed
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True
