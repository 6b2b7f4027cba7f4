"""The API's OpenAPI description (control/openapi.yaml) and the app cannot drift apart.

Every route and method of ``create_app`` is described, and every described operation is a route;
an operation described as public (``security: []``) answers without the admin token and every
other one answers 401 without it. The app serves the description itself.
"""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import httpx
import yaml
from starlette.routing import Route

from gossamer.control.api import OPENAPI_PATH, create_app

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class PublicOnlyPlane:
    """Enough of a control plane for the public routes; anything else it refuses to serve."""

    bundle = b"-----BEGIN CERTIFICATE-----\n"  # the trust bundle

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a request without the token reached the plane ({name})")


def description() -> dict[str, Any]:
    text = resources.files("gossamer.control").joinpath("openapi.yaml").read_text("utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def described_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in description()["paths"].items()
        for method in item
        if method in METHODS
    }


def app_operations() -> set[tuple[str, str]]:
    app = create_app(PublicOnlyPlane(), "tok")  # type: ignore[arg-type]
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route
        found |= {(method, route.path) for method in methods}
    return found


def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    app = create_app(PublicOnlyPlane(), "tok")  # type: ignore[arg-type]

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(run())


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    """Adding a route without describing it (or the reverse) fails here."""
    described, served = described_operations(), app_operations()
    assert served - described == set(), "routes missing from control/openapi.yaml"
    assert described - served == set(), "operations in control/openapi.yaml that no route serves"


def test_public_and_guarded_operations_are_described_as_they_are() -> None:
    """``security: []`` exactly on the operations that answer without the admin token."""
    spec = description()
    assert spec["security"] == [{"adminToken": []}]
    scheme = spec["components"]["securitySchemes"]["adminToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path in sorted(described_operations()):
        operation = spec["paths"][path][method.lower()]
        public = operation.get("security") == []
        response = call(method, re.sub(r"\{[^}]+\}", "x", path), content=b"{}")
        if public:
            assert response.status_code == 200, (method, path, response.text)
        else:
            assert response.status_code == 401, (method, path, response.text)
            assert "401" in operation["responses"], (method, path)


def test_path_parameters_are_described() -> None:
    """Each ``{name}`` of a path is a required path parameter of its operations."""
    spec = description()
    parameters = spec["components"]["parameters"]
    for path, item in spec["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method in set(item) & METHODS:
            declared = [
                parameters[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
                for p in [*item.get("parameters", []), *item[method].get("parameters", [])]
            ]
            in_path = {p["name"] for p in declared if p["in"] == "path" and p["required"]}
            assert in_path == names, (method, path)


def test_the_app_serves_its_description_without_the_token() -> None:
    response = call("GET", OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(response.text) == description()
