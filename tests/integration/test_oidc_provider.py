"""The OpenID provider fixture (tests/oidc.py) on its own, no Gossamer involved.

A real oidc-provider on Node.js serves two issuers; each token below comes from a real
client_credentials request to the token endpoint that discovery names, is decoded without
verification to check its Keycloak-shaped claims, and is verified against the JWKS that
discovery names (with ``cryptography``: PyJWT is not a dependency here). Issuer B's keys are
rotated, retired and taken down; issuer A's are left as they started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.oidc import OidcProvider, decode_unverified, running_oidc_provider, verify_signature


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with running_oidc_provider(Path(tmp_path_factory.mktemp("oidc"))) as provider:
        yield provider


def test_discovery_and_jwks(idp: OidcProvider) -> None:
    assert idp.issuer_a != idp.issuer_b
    for issuer in (idp.issuer_a, idp.issuer_b):
        meta = idp.discovery(issuer)
        assert meta["issuer"] == issuer
        assert meta["token_endpoint"].startswith(issuer + "/")
        assert meta["jwks_uri"].startswith(issuer + "/")
        assert "client_credentials" in meta["grant_types_supported"]
        assert "client_secret_basic" in meta["token_endpoint_auth_methods_supported"]
        keys = idp.jwks(issuer)["keys"]
        assert sorted(k["alg"] for k in keys) == ["ES256", "EdDSA", "RS256"]
        assert {k["kty"] for k in keys} == {"RSA", "EC", "OKP"}
        assert all(k["use"] == "sig" and "d" not in k for k in keys)  # public halves only
    kids_a = {k["kid"] for k in idp.jwks(idp.issuer_a)["keys"]}
    assert kids_a.isdisjoint(k["kid"] for k in idp.jwks(idp.issuer_b)["keys"])


def test_access_token_claims_and_signature(idp: OidcProvider) -> None:
    token = idp.token(idp.issuer_a)
    header, claims = decode_unverified(token)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
    assert header["kid"] == idp.jwks(idp.issuer_a)["keys"][0]["kid"]
    assert claims["iss"] == idp.issuer_a
    assert claims["aud"] == "orders-api"
    assert claims["azp"] == claims["sub"] == claims["client_id"] == "storefront"
    assert claims["realm_access"] == {"roles": ["orders-reader"]}
    assert claims["preferred_username"] == "storefront-svc"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["exp"] > time.time() + 200
    assert verify_signature(token, idp.jwks(idp.issuer_a))
    assert not verify_signature(token, idp.jwks(idp.issuer_b))  # another issuer's keys
    head, _, signature = token.split(".")
    forged = f"{head}.{token.split('.')[1][:-4]}AAAA.{signature}"
    assert not verify_signature(forged, idp.jwks(idp.issuer_a))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_other_signing_algorithms(idp: OidcProvider, alg: str) -> None:
    token = idp.token(idp.issuer_a, alg=alg)
    header, claims = decode_unverified(token)
    assert header["alg"] == alg
    jwks = idp.jwks(idp.issuer_a)
    assert {k["kid"]: k["alg"] for k in jwks["keys"]}[header["kid"]] == alg
    assert claims["aud"] == "orders-api" and claims["iss"] == idp.issuer_a
    assert verify_signature(token, jwks)


def test_wrong_audience_other_client_and_refusals(idp: OidcProvider) -> None:
    _, claims = decode_unverified(idp.token(idp.issuer_a, audience="other-api"))
    assert claims["aud"] == "other-api"
    _, claims = decode_unverified(idp.token(idp.issuer_b, client="intruder"))
    assert claims["iss"] == idp.issuer_b
    assert claims["azp"] == "intruder" and claims["realm_access"] == {"roles": ["guest"]}
    assert claims["preferred_username"] == "intruder-svc"
    wrong = idp.token_response(idp.issuer_a, secret="not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    bad = idp.token_response(idp.issuer_a, audience="no spaces allowed")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_target"


def test_rotation_then_retirement(idp: OidcProvider) -> None:
    issuer = idp.issuer_b
    old = idp.token(issuer)
    old_kid = decode_unverified(old)[0]["kid"]

    kids = idp.rotate(issuer)
    new = idp.token(issuer)
    new_kid = decode_unverified(new)[0]["kid"]
    assert new_kid != old_kid and kids[:2] == [new_kid, old_kid]
    jwks = idp.jwks(issuer)
    assert [k["kid"] for k in jwks["keys"]] == kids
    assert verify_signature(old, jwks) and verify_signature(new, jwks)

    kids = idp.retire(issuer)
    jwks = idp.jwks(issuer)
    published = [k["kid"] for k in jwks["keys"]]
    assert published == kids and old_kid not in published and new_kid in published
    assert sorted(k["alg"] for k in jwks["keys"]) == ["ES256", "EdDSA", "RS256"]
    assert verify_signature(new, jwks) and not verify_signature(old, jwks)
    assert decode_unverified(idp.token(issuer))[0]["kid"] == new_kid


def test_jwks_down_and_up(idp: OidcProvider) -> None:
    issuer = idp.issuer_b
    jwks_uri = idp.discovery(issuer)["jwks_uri"]
    idp.jwks_down(issuer)
    try:
        with httpx.Client(trust_env=False) as client:
            assert client.get(jwks_uri).status_code == 503
            meta = client.get(f"{issuer}/.well-known/openid-configuration")
            assert meta.status_code == 200
        assert idp.token(issuer)  # the token endpoint still works
        assert httpx.get(f"{idp.issuer_a}/jwks", trust_env=False).status_code == 200
    finally:
        idp.jwks_up(issuer)
    assert idp.jwks(issuer)["keys"]


def test_token_ttl_is_configurable(tmp_path: Path) -> None:
    with running_oidc_provider(tmp_path, token_ttl=42) as idp:
        _, claims = decode_unverified(idp.token(idp.issuer_a))
        assert claims["exp"] - claims["iat"] == 42
