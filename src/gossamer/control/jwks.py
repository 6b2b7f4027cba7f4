"""The key sets of the end-user token issuers that RequestAuthentications name, fetched by the
control plane and pushed to the sidecars in their config (``inbound.request_authentication``).

Why here and not in every sidecar: one fetch serves the whole mesh (a thousand sidecars do
not each poll the provider), sidecars need no route to the provider, and a key rotation reaches
every sidecar through the config push it already trusts. The cost is that a sidecar sees a new
key only after the control plane does: a sidecar that meets a token signed by a key id it does
not know asks for a fetch at once (``refresh_soon``, on the stream: ``jwks-refresh``), bounded
to one per issuer every ``MIN_REFETCH`` seconds.

Per source (``issuer`` and ``jwksUri``; without the latter, the issuer's OpenID discovery
document names it, and must name the same issuer): fetched when first wanted, then every
``refresh`` seconds; a failed fetch keeps the last good keys (tokens keep working while the
provider is down) and is retried with backoff (1 s doubling to the refresh interval); until
one fetch succeeded, ``keys`` is None and the error says why, and sidecars refuse tokens of
that issuer (fail closed). Bounded: documents of at most 256 KiB, at most 64 keys, each key a
JSON object with ``kty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["JwksFetcher", "JwksSource"]

log = logging.getLogger("gossamer.control")

MAX_DOCUMENT = 256 * 1024
MAX_KEYS = 64
FETCH_TIMEOUT = 5.0
MIN_REFETCH = 5.0  # seconds between two fetches sidecars asked for, per source
DISCOVERY = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True, order=True)
class JwksSource:
    """Where one issuer's keys come from (``jwks_uri`` None: from discovery)."""

    issuer: str
    jwks_uri: str | None
    refresh: float  # seconds between fetches


@dataclass
class _Entry:
    keys: dict[str, Any] | None = None  # {"keys": [...]}, the last good set
    error: str | None = "not fetched yet"
    fetched_at: float = 0.0  # monotonic time of the last attempt
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class FetchError(Exception):
    pass


class JwksFetcher:
    """The key sets of every wanted source, kept fresh (see the module docstring)."""

    def __init__(
        self,
        on_change: Callable[[], None],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._on_change = on_change
        self._client = client
        self._entries: dict[JwksSource, _Entry] = {}

    def want(self, sources: Iterable[JwksSource]) -> None:
        """Fetch these sources (from now on) and no others."""
        wanted = set(sources)
        for source in [s for s in self._entries if s not in wanted]:
            entry = self._entries.pop(source)
            if entry.task is not None:
                entry.task.cancel()
        for source in wanted - self._entries.keys():
            entry = self._entries[source] = _Entry()
            entry.task = asyncio.get_running_loop().create_task(
                self._keep(source, entry), name=f"jwks {source.issuer}"
            )

    def key_sets(self) -> dict[tuple[str, str | None], tuple[dict[str, Any] | None, str | None]]:
        """Each wanted source's last good key set and, while none, why (by issuer and
        ``jwks_uri``)."""
        return {(s.issuer, s.jwks_uri): (e.keys, e.error) for s, e in self._entries.items()}

    def keys(self, issuer: str, jwks_uri: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """The last good key set of a source and, while none, why."""
        return self.key_sets().get((issuer, jwks_uri), (None, "not fetched yet"))

    def refresh_soon(self, issuer: str) -> None:
        """A sidecar saw an unknown key id from ``issuer``: fetch again now, unless a fetch
        was made less than ``MIN_REFETCH`` seconds ago."""
        now = time.monotonic()
        for source, entry in self._entries.items():
            if source.issuer == issuer and now - entry.fetched_at >= MIN_REFETCH:
                entry.wake.set()

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.task is not None:
                entry.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.task
        self._entries.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ fetching

    async def _keep(self, source: JwksSource, entry: _Entry) -> None:
        backoff = 1.0
        while True:
            entry.wake.clear()
            entry.fetched_at = time.monotonic()
            try:
                keys = await self._fetch(source)
            except FetchError as exc:
                changed = entry.keys is None and entry.error != str(exc)
                entry.error = str(exc)
                if changed:  # sidecars say why they refuse this issuer's tokens
                    self._on_change()
                log.warning("JWKS of %s: %s (keeping %s)", source.issuer, exc,
                            "the last good keys" if entry.keys else "no keys")  # fmt: skip
                delay = backoff
                backoff = min(backoff * 2, source.refresh)
            else:
                backoff = 1.0
                entry.error = None
                if keys != entry.keys:
                    entry.keys = keys
                    log.info("JWKS of %s: %d keys", source.issuer, len(keys["keys"]))
                    self._on_change()
                delay = source.refresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.wake.wait(), delay)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        return self._client

    async def _document(self, url: str) -> Any:
        try:
            async with self._http().stream("GET", url) as response:
                if response.status_code != 200:
                    raise FetchError(f"{url} answered {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise FetchError(f"{url}: over {MAX_DOCUMENT // 1024} KiB")
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise FetchError(f"{url}: not JSON") from None

    async def _fetch(self, source: JwksSource) -> dict[str, Any]:
        uri = source.jwks_uri
        if uri is None:
            found = await self._document(source.issuer.rstrip("/") + DISCOVERY)
            if not isinstance(found, dict) or found.get("issuer") != source.issuer:
                raise FetchError(f"the discovery document of {source.issuer} names another "
                                 "issuer")  # fmt: skip
            uri = found.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
                raise FetchError(f"the discovery document of {source.issuer} has no jwks_uri")
        jwks = await self._document(uri)
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not all(
            isinstance(k, dict) and isinstance(k.get("kty"), str) for k in keys
        ):
            raise FetchError(f"{uri}: not a JWK set")
        if len(keys) > MAX_KEYS:
            raise FetchError(f"{uri}: over {MAX_KEYS} keys")
        return {"keys": keys}
