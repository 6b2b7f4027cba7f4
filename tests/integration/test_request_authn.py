"""End-user tokens from a real OpenID provider, verified by the called service's sidecar
(issue 13, RequestAuthentication), over real sockets on HTTP/1.1 and gRPC.

Real parts: ``oidc-provider`` on Node.js (``tests/oidc.py``: two issuers A and B, tokens from
their token endpoints with the client-credentials grant, Keycloak-shaped claims), a control
plane process that fetches the issuers' keys (discovery, JWKS) and pushes them, and sidecar
processes: ``orders`` (an HTTP app that echoes what it received), ``greeter`` (a gRPC app
that echoes its metadata) and ``frontend``, the caller, whose outbound port the test uses as
an app would. Each JWT failure mode of the issue is a case: bad signature, expired, wrong
``aud``, unknown ``kid`` (then accepted once the control plane fetched the new key), JWKS
down (fail closed), ``alg: none``, HS256 with the public key as the secret.
"""

from __future__ import annotations

import base64
import hmac
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane
from tests.oidc import OidcProvider, running_oidc_provider
from tests.process_harness import ROOT, Proc, Processes, wait_port, wait_ready
from tests.sidecar_harness import app_proxy_env, free_port

API = "gossamer.dev/v1alpha1"
STOREFRONT = "storefront-svc"


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def authn(*issuers: str, skew: str = "60s") -> dict[str, Any]:
    """Tokens of ``issuers`` for the orders-api audience, on every workload of default."""
    return doc("RequestAuthentication", "storefront-tokens", {"jwtRules": [
        {"issuer": issuer, "audiences": ["orders-api"], "clockSkew": skew,
         "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"},
                                  {"header": "x-roles", "claim": "realm_access.roles"}]}
        for issuer in issuers]})  # fmt: skip


# Only end users with the orders-reader role may read orders (a request without a token has
# no request principal and is refused too).
READERS = doc("AuthorizationPolicy", "orders-readers", {
    "selector": {"service": "orders"}, "action": "ALLOW",
    "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}],
               "when": [{"key": "request.auth.claims[realm_access][roles]",
                         "values": ["orders-reader"]}]}],
})  # fmt: skip


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    idp: OidcProvider
    frontend: Proc

    def get(self, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        proxy = f"http://127.0.0.1:{self.frontend.ports['outbound']}"
        with httpx.Client(proxy=proxy, timeout=10, trust_env=False) as client:
            return client.get("http://orders/orders/recent", headers=headers)

    def apply(self, *docs: dict[str, Any]) -> None:
        with self.cp.client() as api:
            for document in docs:
                response = api.post("/v1/resources", json=document)
                assert response.status_code == 200, response.text

    def grpc_meta(self, token: str | None) -> dict[str, str]:
        """Call the greeter (gRPC) with ``token`` in its metadata; its metadata as seen."""
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        with pytest.MonkeyPatch.context() as env:
            app_proxy_env(env, self.frontend.ports["outbound"])  # as `gossamer run` would
            with grpc.insecure_channel("greeter:80") as channel:
                reply = channel.unary_unary("/test.Echo/Meta")(b"", metadata=metadata,
                                                                timeout=10)  # fmt: skip
        seen: dict[str, str] = json.loads(reply)["metadata"]
        return seen


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("authn")
    with running_oidc_provider(tmp / "idp") as idp, running_control_plane(tmp / "cp") as cp:
        procs = Processes(tmp)
        try:
            mesh_ = Mesh(cp, idp, None)  # type: ignore[arg-type]
            mesh_.apply(doc("Service", "greeter", {"ports": [{"port": 80, "protocol": "grpc"}]}),
                        authn(idp.issuer_a), READERS)  # fmt: skip
            app = procs.app("orders-app")
            greeter_port = free_port()
            procs.spawn("greeter-app", [sys.executable, str(ROOT / "tests/apps/grpc_echo.py"),
                                        str(greeter_port), "greeter-1"])  # fmt: skip
            wait_port(app.ports["app"])
            wait_port(greeter_port)
            sidecars = [procs.sidecar(cp, "orders-sidecar", "orders", app.ports["app"]),
                        procs.sidecar(cp, "greeter-sidecar", "greeter", greeter_port),
                        procs.sidecar(cp, "frontend-sidecar", "frontend", None)]  # fmt: skip
            for sidecar in sidecars:
                wait_ready(sidecar)
            mesh_.frontend = sidecars[2]
            token = idp.token(idp.issuer_a)
            until(lambda: mesh_.get(token).status_code == 200, "keys of A at the orders sidecar")
            yield mesh_
        finally:
            procs.stop_all()


def _error(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, response.headers.get("x-gossamer-error")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     _b64(signature)))  # fmt: skip


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


# --------------------------------------------------------------------------- HTTP/1.1


def test_a_valid_token_reaches_the_app_with_its_claims_as_headers(mesh: Mesh) -> None:
    """The app gets the end user as headers its sidecar vouches for (forged ones removed),
    and the token itself (forwardOriginalToken defaults to true)."""
    token = mesh.idp.token(mesh.idp.issuer_a)
    response = mesh.get(token, **{"x-user": "admin", "x-roles": "everything"})
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert seen["x-user"] == STOREFRONT and seen["x-roles"] == "orders-reader"
    assert seen["authorization"] == f"Bearer {token}"


def test_policies_see_the_end_user(mesh: Mesh) -> None:
    """No token: no request principal, refused by the ALLOW policy; a valid token without
    the role: refused (both 403, not 401: the token, if any, was fine)."""
    assert _error(mesh.get()) == (403, "forbidden")
    intruder = mesh.idp.token(mesh.idp.issuer_a, client="intruder")
    refused = mesh.get(intruder)
    assert _error(refused) == (403, "forbidden")
    assert "default/orders-readers" in refused.text


@pytest.mark.parametrize("case", ["wrong-audience", "bad-signature", "alg-none", "hs256-public",
                                  "other-issuer", "not-a-jwt"])  # fmt: skip
def test_a_bad_token_is_401_with_a_challenge(mesh: Mesh, case: str) -> None:
    idp = mesh.idp
    good = idp.token(idp.issuer_a)
    claims = _claims(good)
    if case == "wrong-audience":
        token, reason = idp.token(idp.issuer_a, audience="other-api"), "audience"
    elif case == "bad-signature":
        head, _body, signature = good.split(".")
        token = ".".join((head, _b64(json.dumps({**claims, "sub": "admin"}).encode()), signature))
        reason = "signature"
    elif case == "alg-none":
        token, reason = _forged({"alg": "none"}, claims), "algorithm 'none'"
    elif case == "hs256-public":  # the issuer's public key (PEM) used as an HMAC secret
        token, reason = _hs256_with_public_key(idp, claims), "algorithm 'HS256'"
    elif case == "other-issuer":
        token, reason = idp.token(idp.issuer_b), "is not accepted"
    else:
        token, reason = "not.a.jwt", "not a JWT"
    response = mesh.get(token)
    assert _error(response) == (401, "unauthenticated"), response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="gossamer", error="invalid_token"')
    assert reason in challenge and reason in response.text


def _hs256_with_public_key(idp: OidcProvider, claims: dict[str, Any]) -> str:
    key = next(k for k in idp.jwks(idp.issuer_a)["keys"] if k["kty"] == "RSA")
    public = RSAAlgorithm.from_jwk(json.dumps(key)).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing = f"{_b64(json.dumps({'alg': 'HS256'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(hmac.new(public, signing.encode(), 'sha256').digest())}"


def test_an_expired_token_is_refused(tmp_path: Path, mesh: Mesh) -> None:
    """A provider whose tokens live 1 s, accepted with no clock skew: fine at once, 401
    once it expired."""
    with running_oidc_provider(tmp_path / "short", token_ttl=1) as short:
        mesh.apply(authn(mesh.idp.issuer_a, short.issuer_a, skew="0s"))
        try:
            fresh: list[str] = []

            def accepted() -> bool:  # a new token each try: one lives 1 s, and the keys may
                fresh.append(short.token(short.issuer_a))  # take longer than that to arrive
                return mesh.get(fresh[-1]).status_code == 200

            until(accepted, "the short-lived issuer's keys", timeout=10)
            token = fresh[-1]
            time.sleep(max(0.0, _claims(token)["exp"] - time.time()) + 0.2)
            response = mesh.get(token)
            assert _error(response) == (401, "unauthenticated")
            assert "expired" in response.headers["www-authenticate"]
        finally:
            mesh.apply(authn(mesh.idp.issuer_a))


def test_an_unknown_key_id_makes_the_control_plane_fetch_the_keys_again(mesh: Mesh) -> None:
    """The provider rotates its signing key: the first token with the new kid is refused
    (the sidecar does not know it), asks the control plane for the issuer's keys, and is
    accepted once they arrived; tokens of the old key keep working."""
    idp = mesh.idp
    old = idp.token(idp.issuer_a)
    idp.rotate(idp.issuer_a)
    new = idp.token(idp.issuer_a)
    first = mesh.get(new)
    assert _error(first) == (401, "unauthenticated")
    assert "unknown key id" in first.headers["www-authenticate"]
    until(lambda: mesh.get(new).status_code == 200, "the rotated key at the orders sidecar")
    assert mesh.get(old).status_code == 200


def test_no_key_set_yet_fails_closed(tmp_path: Path, mesh: Mesh) -> None:
    """An issuer whose JWKS is down since before the first fetch: its tokens are refused
    with the reason; once it is up, accepted."""
    with running_oidc_provider(tmp_path / "down") as down:
        down.jwks_down(down.issuer_a)
        mesh.apply(authn(mesh.idp.issuer_a, down.issuer_a))
        try:
            token = down.token(down.issuer_a)
            until(lambda: "no key set" in mesh.get(token).headers.get("www-authenticate", ""),
                  "the refusal for want of keys")  # fmt: skip
            assert "503" in mesh.get(token).text
            down.jwks_up(down.issuer_a)
            until(lambda: mesh.get(token).status_code == 200, "keys after the JWKS came back",
                  timeout=30)  # fmt: skip
        finally:
            mesh.apply(authn(mesh.idp.issuer_a))


# --------------------------------------------------------------------------- gRPC


def test_grpc_calls_are_judged_the_same_way(mesh: Mesh) -> None:
    """On gRPC: a valid token's claims reach the app as metadata; a bad one ends the call
    UNAUTHENTICATED; the greeter has no policy, so no token is fine."""
    idp = mesh.idp
    seen = mesh.grpc_meta(idp.token(idp.issuer_a, alg="ES256"))
    assert seen["x-user"] == STOREFRONT and seen["x-roles"] == "orders-reader"
    assert "x-user" not in mesh.grpc_meta(None)
    with pytest.raises(grpc.RpcError) as caught:
        mesh.grpc_meta(idp.token(idp.issuer_a, audience="other-api", alg="EdDSA"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "audience" in (caught.value.details() or "")


# --------------------------------------------------------------------------- story 1


def test_switching_the_identity_provider_is_one_apply(mesh: Mesh) -> None:
    """Accept A and B during the move, then B only: no app change, no restart; A's tokens
    work until the policy says otherwise."""
    idp = mesh.idp
    a, b = idp.token(idp.issuer_a), idp.token(idp.issuer_b)
    try:
        mesh.apply(authn(idp.issuer_a, idp.issuer_b))
        until(lambda: mesh.get(b).status_code == 200, "B accepted beside A")
        assert mesh.get(a).status_code == 200
        mesh.apply(authn(idp.issuer_b))
        until(lambda: mesh.get(a).status_code == 401, "A refused once only B is accepted")
        assert mesh.get(b).status_code == 200
    finally:
        mesh.apply(authn(idp.issuer_a))
