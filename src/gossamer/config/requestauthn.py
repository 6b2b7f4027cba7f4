"""The ``RequestAuthentication`` kind: end-user tokens (JWT) from OpenID providers, verified by
the called service's own sidecars, so that no service checks tokens itself and changing the
identity provider is one ``gossamer apply``.

For the workloads of its namespace, or of one service (``selector: {service: orders}``), each
``jwtRules`` entry accepts tokens of one ``issuer``:

- keys: from ``jwksUri``, or from the issuer's OpenID discovery document
  (``<issuer>/.well-known/openid-configuration``) when it is left out. The control plane
  fetches them (never the sidecars: one fetch for the mesh, no egress from every pod to the
  provider), refreshes them every ``jwksRefresh`` and sooner when a sidecar sees a key id it
  does not know, keeps the last good set while the provider is unreachable, and pushes them in
  the sidecars' config;
- checks: a signature by one of those keys (RS256/384/512, PS256/384/512, ES256/384/512,
  EdDSA; ``none`` and HMAC are refused), ``iss``, ``aud`` against ``audiences`` (any; none
  given: not checked), ``exp`` and ``nbf`` with ``clockSkew``;
- where the token is: ``fromHeaders`` (default ``Authorization: Bearer <token>``) and
  ``fromCookies``;
- what the app gets: ``outputClaimToHeaders`` (a claim, dotted for nested ones such as
  ``realm_access.roles``, copied into a header; lists joined with commas), the token itself
  unless ``forwardOriginalToken: false``.

A request without a token passes (an AuthorizationPolicy can require ``requestPrincipals``);
one with a token that fails a check is refused 401 ``unauthenticated`` with
``WWW-Authenticate``; a verified token makes ``<iss>/<sub>`` the request principal, and its
claims visible to AuthorizationPolicy ``when`` conditions (``request.auth.claims[...]``).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.config.base import Resource, SpecModel
from gossamer.config.selector import Selector
from gossamer.config.traffic import Duration, HeaderName

__all__ = ["JwtRule", "RequestAuthentication", "RequestAuthenticationSpec"]

_URL = re.compile(r"^https?://[\x21-\x7e]{1,2040}$")
_CLAIM = re.compile(r"^[A-Za-z0-9_:-]{1,128}(?:\.[A-Za-z0-9_:-]{1,128}){0,7}$")
_COOKIE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


def _check_url(value: str) -> str:
    if not _URL.fullmatch(value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _check_claim(value: str) -> str:
    if not _CLAIM.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a claim: a name, or names joined by dots for nested claims "
            "(realm_access.roles)"
        )
    return value


def _check_cookie(value: str) -> str:
    if not _COOKIE.fullmatch(value):
        raise ValueError(f"{value!r} is not a cookie name")
    return value


Url = Annotated[str, AfterValidator(_check_url)]
Claim = Annotated[str, AfterValidator(_check_claim)]


class FromHeader(SpecModel):
    """A header that carries the token, after ``prefix`` (``Bearer `` for Authorization)."""

    name: HeaderName
    prefix: str = Field(default="", max_length=64)


class ClaimToHeader(SpecModel):
    header: HeaderName
    claim: Claim


class JwtRule(SpecModel):
    """Tokens of one issuer."""

    issuer: Annotated[str, Field(min_length=1, max_length=2048)]
    jwks_uri: Url | None = None
    audiences: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=64
    )
    from_headers: list[FromHeader] = Field(default_factory=list, max_length=16)
    from_cookies: list[Annotated[str, AfterValidator(_check_cookie)]] = Field(
        default_factory=list, max_length=16
    )
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list, max_length=64)
    forward_original_token: bool = True
    clock_skew: Duration = "60s"
    jwks_refresh: Duration = "5m"

    @model_validator(mode="after")
    def _keys_somewhere(self) -> JwtRule:
        if self.jwks_uri is None and not _URL.fullmatch(self.issuer):
            raise ValueError(
                "without jwksUri the keys come from the issuer's discovery document, so the "
                "issuer must be an http(s) URL"
            )
        return self

    @property
    def token_headers(self) -> list[tuple[str, str]]:
        """Where to look for the token: the headers given, or ``Authorization: Bearer``."""
        if not self.from_headers and not self.from_cookies:
            return [("authorization", "Bearer ")]
        return [(h.name.lower(), h.prefix) for h in self.from_headers]



class RequestAuthenticationSpec(SpecModel):
    """``spec`` of a RequestAuthentication."""

    selector: Selector | None = None
    jwt_rules: list[JwtRule] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _issuers_once(self) -> RequestAuthenticationSpec:
        issuers = [rule.issuer for rule in self.jwt_rules]
        if len(set(issuers)) != len(issuers):
            raise ValueError("an issuer is named by more than one jwtRule")
        return self


class RequestAuthentication(Resource):
    """End-user tokens accepted by the workloads of a namespace or of one service."""

    KIND: ClassVar[str] = "RequestAuthentication"
    PLURAL: ClassVar[str] = "requestauthentications"

    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec

