"""What the config API tells a caller when the control plane itself fails."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from gossamer.control.api import create_app


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
