"""What the config API tells a caller when the control plane itself fails."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gossamer.control.api import MAX_BODY, create_app


def call(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to the ASGI app, in process."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(run())


class BrokenPlane:
    """A control plane whose every read fails with a message that must stay private."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("/secret/path/store.db is locked by pid 4242")


def test_an_internal_error_names_its_kind_not_its_text() -> None:
    """Exception text (paths, internals) is logged, never returned (issue 11, lows)."""
    app = create_app(BrokenPlane(), "tok")  # type: ignore[arg-type]
    response = call(app, "GET", "/v1/proxies", headers={"Authorization": "Bearer tok"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal" and "RuntimeError" in body["message"]
    assert "secret" not in response.text and "4242" not in response.text


class QuietPlane:
    """A control plane the size checks must answer before ever reaching."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the plane was reached ({name})")


def test_bodies_over_the_limits_are_refused_with_413() -> None:
    """The limit is checked on Content-Length, then while reading, never after reading the
    whole body; a join-token request has a small limit of its own (issue 11, lows)."""
    app = create_app(QuietPlane(), "tok")  # type: ignore[arg-type]
    auth = {"Authorization": "Bearer tok"}
    big = call(app, "POST", "/v1/join-tokens", headers=auth, content=b"{" + b" " * 70_000 + b"}")
    assert big.status_code == 413 and big.json()["error"] == "too-large"
    too_long = {**auth, "content-length": str(MAX_BODY + 1)}
    declared = call(app, "POST", "/v1/resources", headers=too_long, content=b"x")
    assert declared.status_code == 413
