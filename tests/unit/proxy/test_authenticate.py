"""The ``authenticate`` slot and JWT checks (``pipeline/authenticate.py``,
``snapshot/jwt_rules.py``) as logic: tokens signed here with keys made here (the tests that
prove the feature use a real OpenID provider: tests/integration/test_request_authn.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gossamer.proxy.pipeline import authenticate
from gossamer.proxy.pipeline.authenticate import AUTH_NOTE, AuthenticateStage, TokenCache
from gossamer.proxy.pipeline.call import Call, Header
from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.jwt_rules import TokenError, compile_jwt_rules, verify

ISSUER = "https://idp.example.com"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _jwk(algorithm: Any, key: Any, kid: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**found, "kid": kid}


JWKS = {"keys": [_jwk(RSAAlgorithm, RSA_KEY, "r1"), _jwk(ECAlgorithm, EC_KEY, "e1"),
                 _jwk(OKPAlgorithm, ED_KEY, "d1")]}  # fmt: skip


def raw_rule(**fields: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER, "audiences": ["orders-api"],
        "from_headers": [{"name": "authorization", "prefix": "Bearer "}], "from_cookies": [],
        "output_claim_to_headers": [{"header": "x-user", "claim": "preferred_username"},
                                    {"header": "x-roles", "claim": "realm_access.roles"}],
        "forward_original_token": True, "clock_skew_ms": 60_000, "jwks": JWKS,
        "jwks_error": None, **fields,
    }  # fmt: skip


def token(alg: str = "RS256", kid: str | None = "r1", key: Any = RSA_KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "aud": "orders-api", "iat": now, "exp": now + 300,
            "preferred_username": "alice", "realm_access": {"roles": ["reader", "writer"]},
            **claims}  # fmt: skip
    headers = {"kid": kid} if kid else {}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


class FakeCall(Call):
    """The few things the stage asks of a request (a unit-test double)."""

    def __init__(self, headers: list[Header]) -> None:
        super().__init__(0)
        self.headers = headers
        self.failed: tuple[int, str, str, tuple[Header, ...]] | None = None

    def header_list(self) -> list[Header]:
        return list(self.headers)

    def set_header_list(self, headers: list[Header]) -> None:
        self.headers = headers

    def fail(self, status: int, cause: str, detail: str = "",
             extra: tuple[Header, ...] = ()) -> None:  # fmt: skip
        self.failed = (status, cause, detail, extra)


def stage(refresh: Any = None, **fields: Any) -> AuthenticateStage:
    return AuthenticateStage(compile_jwt_rules([raw_rule(**fields)], "r"), refresh)


@pytest.mark.parametrize(("alg", "kid", "key"), [
    ("RS256", "r1", RSA_KEY), ("ES256", "e1", EC_KEY), ("EdDSA", "d1", ED_KEY),
    ("ES256", None, EC_KEY),  # no kid: every key is tried
])  # fmt: skip
def test_each_algorithm_verifies(alg: str, kid: str | None, key: Any) -> None:
    rules = compile_jwt_rules([raw_rule()], "r")
    verified = verify(token(alg, kid, key), rules)
    assert verified.principal == f"{ISSUER}/alice"
    assert verified.claim("realm_access.roles") == ["reader", "writer"]


@pytest.mark.parametrize(("make", "words"), [
    (lambda: token(aud="other-api"), "audience"),
    (lambda: token(exp=int(time.time()) - 120), "expired"),
    (lambda: token(nbf=int(time.time()) + 600), "not valid yet"),
    (lambda: token(iss="https://evil.example.com"), "is not accepted"),
    (lambda: token(kid="r9"), "unknown key id"),
    (lambda: token("ES256", "r1", EC_KEY), "signature"),  # an EC signature, an RSA key
    (lambda: jwt.encode({"iss": ISSUER}, None, algorithm="none"), "algorithm 'none'"),
    (lambda: jwt.encode({"iss": ISSUER}, "s" * 32, algorithm="HS256"), "algorithm 'HS256'"),
    (lambda: "eyJ.bad", "not a JWT"),
])  # fmt: skip
def test_bad_tokens_say_why(make: Any, words: str) -> None:
    with pytest.raises(TokenError, match=words):
        verify(make(), compile_jwt_rules([raw_rule()], "r"))


def test_clock_skew_admits_a_just_expired_token() -> None:
    just_expired = token(exp=int(time.time()) - 30)
    assert verify(just_expired, compile_jwt_rules([raw_rule()], "r"))
    with pytest.raises(TokenError, match="expired"):
        verify(just_expired, compile_jwt_rules([raw_rule(clock_skew_ms=0)], "r"))


def test_no_key_set_fails_closed_with_the_reason() -> None:
    rules = compile_jwt_rules([raw_rule(jwks=None, jwks_error="idp answered 503")], "r")
    with pytest.raises(TokenError, match=r"no key set .* \(idp answered 503\)"):
        verify(token(), rules)


def test_the_stage_copies_claims_and_strips_forged_headers() -> None:
    call = FakeCall([(b"Authorization", b"Bearer " + token().encode()), (b"X-User", b"admin")])
    assert stage().on_request(call)
    headers = dict(call.headers)
    assert headers[b"x-user"] == b"alice" and headers[b"x-roles"] == b"reader,writer"
    assert b"X-User" not in headers and b"Authorization" in headers
    assert call.notes is not None and call.notes[AUTH_NOTE].principal == f"{ISSUER}/alice"


def test_no_token_passes_without_a_principal_and_forged_headers_go() -> None:
    call = FakeCall([(b"x-roles", b"admin")])
    assert stage().on_request(call)
    assert call.headers == [] and call.notes is None


def test_a_cookie_token_and_a_token_not_forwarded() -> None:
    call = FakeCall([(b"cookie", b"theme=dark; session=" + token().encode())])
    assert stage(from_headers=[], from_cookies=["session"]).on_request(call)
    assert call.notes is not None
    named = FakeCall([(b"x-token", token().encode())])
    custom = stage(from_headers=[{"name": "x-token", "prefix": ""}], forward_original_token=False)
    assert custom.on_request(named)
    assert b"x-token" not in dict(named.headers)


def test_a_refused_token_is_401_with_a_challenge_and_asks_for_keys_once() -> None:
    asked: list[str] = []
    refusing = stage(refresh=asked.append)
    for _ in range(3):
        call = FakeCall([(b"authorization", b"Bearer " + token(kid="new").encode())])
        assert not refusing.on_request(call)
        assert call.failed is not None
        status, cause, detail, extra = call.failed
        assert (status, cause) == (401, "unauthenticated") and "unknown key id" in detail
        (name, value), = extra
        assert name == b"www-authenticate" and value.startswith(b'Bearer realm="gossamer"')
    assert asked == [ISSUER]  # at most once per REFRESH_SPACING


def test_a_verified_token_is_cached_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = authenticate.verify

    def counting(text: str, rules: Any) -> Any:
        calls.append(text)
        return real(text, rules)

    monkeypatch.setattr(authenticate, "verify", counting)
    cached = stage()
    exp = int(time.time()) + 2
    good = token(exp=exp)
    for _ in range(3):
        assert cached.on_request(FakeCall([(b"authorization", b"Bearer " + good.encode())]))
    assert len(calls) == 1
    cache = TokenCache()
    verified = real(good, cached.rules)
    cache.put(good, verified, time.time())
    assert cache.get(good, exp - 1) is verified and cache.get(good, exp) is None


def test_a_claim_with_a_line_break_never_becomes_a_header() -> None:
    call = FakeCall([(b"authorization", b"Bearer " + token(preferred_username="a\r\nx-admin: 1")
                      .encode())])  # fmt: skip
    assert stage().on_request(call)
    assert b"x-user" not in dict(call.headers)


def test_a_bad_snapshot_names_the_field() -> None:
    with pytest.raises(SnapshotError, match=r"r\[0\]\.issuer"):
        compile_jwt_rules([raw_rule(issuer=3)], "r")
    with pytest.raises(SnapshotError, match=r"r\[0\]\.jwks"):
        compile_jwt_rules([raw_rule(jwks={"nokeys": []})], "r")
