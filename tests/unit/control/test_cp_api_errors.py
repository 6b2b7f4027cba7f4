"""What the config API tells a caller when the control plane itself fails."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from gossamer.control.api import MAX_BODY, create_app


class BrokenPlane:
    """A control plane whose every read fails with a message that must stay private."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("/secret/path/store.db is locked by pid 4242")


def test_an_internal_error_names_its_kind_not_its_text() -> None:
    """Exception text (paths, internals) is logged, never returned (issue 11, lows)."""
    app = create_app(BrokenPlane(), "tok")  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/proxies", headers={"Authorization": "Bearer tok"})
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
    with TestClient(app, raise_server_exceptions=False) as client:
        big = client.post("/v1/join-tokens", headers=auth, content=b"{" + b" " * 70_000 + b"}")
        assert big.status_code == 413 and big.json()["error"] == "too-large"
        declared = client.post(
            "/v1/resources", headers={**auth, "content-length": str(MAX_BODY + 1)}, content=b"x"
        )
        assert declared.status_code == 413
