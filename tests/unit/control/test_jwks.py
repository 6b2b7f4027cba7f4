"""The control plane's key fetcher (``control/jwks.py``) as logic, against an HTTP double
(httpx.MockTransport); the real provider is in tests/integration/test_request_authn.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from gossamer.control import jwks as jwks_module
from gossamer.control.jwks import JwksFetcher, JwksSource

ISSUER = "https://idp.example.com"
KEYS = {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"}]}


class Idp:
    """Answers discovery and JWKS; ``down`` makes the JWKS answer 503."""

    def __init__(self, issuer: str = ISSUER, keys: Any = KEYS) -> None:
        self.issuer = issuer
        self.keys = keys
        self.down = False
        self.fetches = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": self.issuer,
                                             "jwks_uri": f"{ISSUER}/jwks"})  # fmt: skip
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, content=json.dumps(self.keys).encode())


async def _fetcher(idp: Idp, changes: list[int]) -> JwksFetcher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(idp.handle))
    return JwksFetcher(lambda: changes.append(1), client)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_keys_come_from_discovery_and_are_kept_while_the_idp_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jwks_module, "MIN_REFETCH", 0.0)

    async def scenario() -> None:
        idp, changes = Idp(), []
        fetcher = await _fetcher(idp, changes)
        fetcher.want([JwksSource(ISSUER, None, 300.0)])
        await _settle()
        assert fetcher.keys(ISSUER, None) == (KEYS, None) and changes == [1]
        idp.down = True
        fetcher.refresh_soon(ISSUER)
        await _settle()
        assert idp.fetches == 2
        keys, error = fetcher.keys(ISSUER, None)
        assert keys == KEYS and error is not None and "503" in error  # the last good set stays
        await fetcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("idp", "words"), [
    (Idp(issuer="https://other.example.com"), "names another issuer"),
    (Idp(keys={"nope": 1}), "not a JWK set"),
    (Idp(keys={"keys": [{"kty": "EC"}] * 65}), "over 64 keys"),
    (Idp(keys={"keys": [{"kty": "EC", "pad": "x" * 300_000}]}), "over 256 KiB"),
])  # fmt: skip
def test_a_bad_provider_answer_is_an_error_with_the_reason(idp: Idp, words: str) -> None:
    async def scenario() -> tuple[Any, str | None]:
        fetcher = await _fetcher(idp, [])
        fetcher.want([JwksSource(ISSUER, None, 300.0)])
        await _settle()
        found = fetcher.keys(ISSUER, None)
        await fetcher.close()
        return found

    keys, error = asyncio.run(scenario())
    assert keys is None and error is not None and words in error


def test_a_refresh_asked_too_soon_is_not_made() -> None:
    async def scenario() -> int:
        idp = Idp()
        fetcher = await _fetcher(idp, [])
        fetcher.want([JwksSource(ISSUER, f"{ISSUER}/jwks", 300.0)])
        await _settle()
        for _ in range(5):
            fetcher.refresh_soon(ISSUER)  # within MIN_REFETCH of the first fetch
            await _settle()
        await fetcher.close()
        return idp.fetches

    assert asyncio.run(scenario()) == 1


def test_sources_no_longer_wanted_stop() -> None:
    async def scenario() -> None:
        fetcher = await _fetcher(Idp(), [])
        fetcher.want([JwksSource(ISSUER, None, 300.0)])
        await _settle()
        fetcher.want([])
        assert fetcher.keys(ISSUER, None) == (None, "not fetched yet")
        await fetcher.close()

    asyncio.run(scenario())
