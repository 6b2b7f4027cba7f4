"""The ``authenticate`` slot: end-user tokens (JWT) checked by the called service's sidecar.

Compiled from the snapshot (``snapshot.jwt_rules``) only when a RequestAuthentication applies
to this workload; a sidecar without one has no stage here and never loads PyJWT. For each
inbound request:

1. the headers the rules copy claims into are removed first (an app must not take a header
   the caller wrote for one the mesh vouches for);
2. the token is looked for where the rules say (``Authorization: Bearer`` by default, named
   headers, cookies). None: the request goes on without a request principal (an
   AuthorizationPolicy with ``requestPrincipals`` refuses it);
3. a token seen before and not yet expired is taken from the cache (``MAX_CACHED`` tokens,
   each until its ``exp``, at most ``CACHE_SECONDS``): a lookup, not a signature check;
   otherwise ``jwt_rules.verify``. A refused token: 401 ``unauthenticated`` with
   ``WWW-Authenticate: Bearer error="invalid_token"`` (gRPC ``UNAUTHENTICATED``); an unknown
   key id also asks the control plane for the issuer's keys again (``refresh``, at most once
   per issuer every ``REFRESH_SPACING`` seconds);
4. a verified token: ``Call.notes[AUTH_NOTE]`` holds it (the request principal
   ``<iss>/<sub>`` and the claims, for the ``authorize`` slot), its claims are copied into
   the rule's headers, and the token header is removed unless the rule forwards it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.snapshot.jwt_rules import JwtRule, TokenError, Verified, verify

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.call import Call, Header

__all__ = ["AUTH_NOTE", "AuthenticateStage", "TokenCache"]

AUTH_NOTE = "auth"  # Call.notes key: the Verified token of the request
MAX_CACHED = 10_000
CACHE_SECONDS = 300.0  # a token without exp is verified again after this long
REFRESH_SPACING = 5.0  # seconds between two requests for one issuer's keys


class TokenCache:
    """Verified tokens until they expire (bounded; cleared when full)."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Verified]] = {}

    def get(self, token: str, now: float) -> Verified | None:
        found = self.entries.get(token)
        if found is None:
            return None
        if now >= found[0]:
            del self.entries[token]
            return None
        return found[1]

    def put(self, token: str, verified: Verified, now: float) -> None:
        until = now + CACHE_SECONDS
        if verified.expires:
            until = min(until, verified.expires)
        if len(self.entries) >= MAX_CACHED:
            self.entries.clear()
        self.entries[token] = (until, verified)


def _claim_text(value: Any) -> str | None:
    """A claim as a header value: text and numbers as they are, lists joined with commas,
    booleans as true/false; None for objects, absent claims and anything holding a control
    character (a claim must not be able to end the header and start another)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        items = [v for v in value if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        text = ",".join(str(v) for v in items)
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        return None
    return None if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text) else text


def _claim_headers(verified: Verified) -> tuple[tuple[bytes, bytes], ...]:
    """The rule's claim headers for one token (made once per verified token)."""
    out = []
    for name, claim in verified.rule.claim_headers:
        text = _claim_text(verified.claim(claim))
        if text is not None:
            out.append((name, text.encode("latin-1", "replace")))
    return tuple(out)


class AuthenticateStage(Stage):
    """The RequestAuthentications of this workload, in the ``authenticate`` slot."""

    slot = "authenticate"
    name = "request-authentication"

    def __init__(
        self,
        rules: Sequence[JwtRule],
        refresh: Callable[[str], None] | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.refresh = refresh
        self.cache = cache if cache is not None else TokenCache()
        self.asked: dict[str, float] = {}  # issuer -> when its keys were last asked for
        self.output = frozenset(h for r in self.rules for h, _ in r.claim_headers)

    def on_request(self, call: Call) -> bool:
        headers = call.header_list()
        if self.output:
            headers = [h for h in headers if h[0].lower() not in self.output]
        found = self._token(headers)
        if found is None:
            if self.output:
                call.set_header_list(headers)
            return True
        token, header = found
        now = time.time()
        verified = self.cache.get(token, now)
        if verified is None:
            try:
                verified = verify(token, self.rules)
            except TokenError as exc:
                return self._refused(call, exc)
            self.cache.put(token, verified, now)
        notes = call.notes
        if notes is None:
            notes = call.notes = {}
        notes[AUTH_NOTE] = verified
        if not verified.rule.forward and header is not None:
            headers = [h for h in headers if h[0].lower() != header]
        extra = verified.headers
        if extra is None:
            extra = verified.headers = _claim_headers(verified)
        headers.extend(extra)
        call.set_header_list(headers)
        return True

    def _token(self, headers: list[Header]) -> tuple[str, bytes | None] | None:
        """The token and the header it came in (None for a cookie)."""
        for rule in self.rules:
            for name, prefix in rule.headers:
                for field, value in headers:
                    if field.lower() != name:
                        continue
                    text = value.decode("latin-1").strip()
                    if prefix and not text.lower().startswith(prefix.lower()):
                        continue
                    token = text[len(prefix):].strip()
                    if token:
                        return token, name
            if rule.cookies:
                for field, value in headers:
                    if field.lower() == b"cookie":
                        for part in value.decode("latin-1").split(";"):
                            key, _, token = part.strip().partition("=")
                            if key in rule.cookies and token:
                                return token, None
        return None

    def _refused(self, call: Call, exc: TokenError) -> bool:
        if exc.refetch and self.refresh is not None:
            self._ask_for_keys(exc.refetch)
        description = str(exc).replace('"', "'")
        challenge = ('Bearer realm="gossamer", error="invalid_token", '
                     f'error_description="{description}"')  # fmt: skip
        call.fail(401, "unauthenticated", str(exc),
                  ((b"www-authenticate", challenge.encode("latin-1", "replace")),))  # fmt: skip
        return False

    def _ask_for_keys(self, issuer: str) -> None:
        now = time.monotonic()
        if now - self.asked.get(issuer, -REFRESH_SPACING) >= REFRESH_SPACING:
            self.asked[issuer] = now
            assert self.refresh is not None
            self.refresh(issuer)
