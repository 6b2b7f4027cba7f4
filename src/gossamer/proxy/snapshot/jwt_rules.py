"""The RequestAuthentications of this sidecar's workload (``snapshot.inbound.
request_authentication``; ``gossamer.config.requestauthn`` says what they mean), compiled:
one ``JwtRule`` per accepted issuer, with the key set the control plane fetched.

``verify`` checks one token the way the rules say, with PyJWT (imported only here, and only
when a workload has such a rule: a sidecar without one never loads it): the header's ``alg``
must be an asymmetric one (``none`` and HMAC are refused whatever the key set says, so a
public key can never serve as an HMAC secret), the unverified ``iss`` picks the rule, the
header's ``kid`` picks the key (a token without one tries every key), then the signature,
``iss``, ``aud`` and ``exp``/``nbf`` (with the rule's clock skew). The outcome is a
``Verified`` (the request principal ``<iss>/<sub>`` and the claims) or a ``TokenError`` whose
message says what failed; its ``refetch`` (an unknown key id) names the issuer whose keys the
caller asks the control plane for again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["ALGORITHMS", "JwtRule", "TokenError", "Verified", "compile_jwt_rules", "verify"]

# Asymmetric algorithms only: a token naming another one (none, HS256...) is refused.
ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})  # fmt: skip


class TokenError(Exception):
    """Why a token was refused (the message goes into ``WWW-Authenticate``)."""

    def __init__(self, message: str, *, refetch: str = "") -> None:
        super().__init__(message)
        self.refetch = refetch  # an issuer whose keys to fetch again (an unknown key id)


class Verified:
    """A token that passed: ``principal`` is ``<iss>/<sub>``; ``expires`` its ``exp``
    (epoch seconds; 0: none)."""

    __slots__ = ("claims", "expires", "headers", "principal", "rule")

    def __init__(self, rule: JwtRule, claims: dict[str, Any]) -> None:
        self.rule = rule
        self.claims = claims
        # The rule's claim headers for this token, made once (``pipeline.authenticate``).
        self.headers: tuple[tuple[bytes, bytes], ...] | None = None
        self.principal = f"{claims.get('iss', '')}/{claims.get('sub', '')}"
        exp = claims.get("exp")
        self.expires = float(exp) if isinstance(exp, (int, float)) else 0.0

    def claim(self, path: str) -> Any:
        """A claim by dotted path (``realm_access.roles``), None when absent."""
        return self.claim_at(path.split("."))

    def claim_at(self, parts: Sequence[str]) -> Any:
        """A claim by its path as parts (``("realm_access", "roles")``), None when absent."""
        value: Any = self.claims
        for part in parts:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value


class JwtRule:
    """Tokens of one issuer, with its keys (by ``kid``; ``None`` until fetched)."""

    __slots__ = (
        "audiences", "claim_headers", "cookies", "forward", "headers", "issuer", "jwks_error",
        "keys", "skew",
    )  # fmt: skip

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        issuer = raw.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise SnapshotError(f"{where}.issuer: expected a string")
        self.issuer = issuer
        self.audiences = _strings(raw, "audiences", where)
        self.headers: tuple[tuple[bytes, str], ...] = tuple(
            (_text(h, "name", f"{where}.from_headers[{i}]").lower().encode("latin-1"),
             _text(h, "prefix", f"{where}.from_headers[{i}]", empty=True))
            for i, h in enumerate(_objects(raw, "from_headers", where))
        )  # fmt: skip
        self.cookies = _strings(raw, "from_cookies", where)
        self.claim_headers: tuple[tuple[bytes, str], ...] = tuple(
            (_text(o, "header", f"{where}.output_claim_to_headers[{i}]").lower().encode(),
             _text(o, "claim", f"{where}.output_claim_to_headers[{i}]"))
            for i, o in enumerate(_objects(raw, "output_claim_to_headers", where))
        )  # fmt: skip
        self.forward = raw.get("forward_original_token", True) is not False
        skew = raw.get("clock_skew_ms", 60_000)
        if not isinstance(skew, int) or skew < 0:
            raise SnapshotError(f"{where}.clock_skew_ms: expected a number of milliseconds")
        self.skew = skew / 1000
        self.jwks_error = str(raw.get("jwks_error") or "not fetched yet")
        self.keys = _keys(raw.get("jwks"), f"{where}.jwks")


def _text(raw: Mapping[str, Any], field: str, where: str, *, empty: bool = False) -> str:
    value = raw.get(field, "" if empty else None)
    if not isinstance(value, str) or (not value and not empty):
        raise SnapshotError(f"{where}.{field}: expected a string")
    return value


def _strings(raw: Mapping[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = raw.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SnapshotError(f"{where}.{field}: expected a list of strings")
    return tuple(value)


def _objects(raw: Mapping[str, Any], field: str, where: str) -> list[Mapping[str, Any]]:
    value = raw.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SnapshotError(f"{where}.{field}: expected a list of objects")
    return value


def _keys(raw: object, where: str) -> dict[str, Any] | None:
    """The key set as ``kid`` -> PyJWK (keys without ``kid`` under ``#<n>``); keys PyJWT
    cannot use (an unknown type, an HMAC secret) are left out."""
    if raw is None:
        return None
    keys = raw.get("keys") if isinstance(raw, Mapping) else None
    if not isinstance(keys, list):
        raise SnapshotError(f"{where}: expected a JWK set")
    import jwt  # here: only a workload with a RequestAuthentication loads PyJWT

    found: dict[str, Any] = {}
    for i, key in enumerate(keys):
        if not isinstance(key, Mapping) or key.get("kty") == "oct":
            continue
        try:
            parsed = jwt.PyJWK(dict(key))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        kid = key.get("kid")
        found[kid if isinstance(kid, str) and kid else f"#{i}"] = parsed
    return found


def compile_jwt_rules(raw: object, where: str) -> tuple[JwtRule, ...]:
    """``inbound.request_authentication`` (empty: no RequestAuthentication applies)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    rules = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise SnapshotError(f"{where}[{i}]: expected an object")
        rules.append(JwtRule(entry, f"{where}[{i}]"))
    return tuple(rules)


def fingerprint(raw: object) -> str:
    """A stable text of the rules (a recompiled snapshot with the same rules and keys reuses
    the verified-token cache)."""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


def verify(token: str, rules: Sequence[JwtRule]) -> Verified:
    """Check ``token`` against the rule of its issuer (see the module docstring)."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("the token is not a JWT") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise TokenError(f"algorithm {alg!r} is not accepted")
    issuer = unverified.get("iss")
    rule = next((r for r in rules if r.issuer == issuer), None)
    if rule is None:
        raise TokenError(f"issuer {issuer!r} is not accepted")
    if rule.keys is None:
        raise TokenError(f"no key set of {rule.issuer} yet ({rule.jwks_error})")
    kid = header.get("kid")
    if isinstance(kid, str) and kid:
        key = rule.keys.get(kid)
        if key is None:
            raise TokenError(f"unknown key id {kid!r}", refetch=rule.issuer)
        candidates = [key]
    else:
        candidates = list(rule.keys.values())
    last: Exception | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], issuer=rule.issuer,
                audience=list(rule.audiences) or None, leeway=rule.skew,
                options={"verify_aud": bool(rule.audiences)},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the token is not valid yet (nbf)") from None
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError):
            raise TokenError("the token is not for this audience") from None
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError,
                TypeError, ValueError) as exc:  # fmt: skip
            last = exc  # this key cannot have signed it (or is of another type)
            continue
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is invalid: {type(exc).__name__}") from None
        return Verified(rule, claims)
    raise TokenError("the signature does not verify" if last is not None else "no usable key")
