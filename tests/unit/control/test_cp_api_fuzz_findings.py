"""What fuzzing the config API against its description found (issue 11, "Beyond the list").

Each request here made the API answer 500 (or break its answer off) before; each is now refused
with a precise 4xx, invalid values with the path of the bad field, and nothing is stored. The app
runs in process over a real control plane (store, CA) in a temporary data directory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from gossamer.control.api import create_app
from gossamer.control.ca import CertificateAuthority
from gossamer.control.plane import ControlPlane
from gossamer.control.settings import ControlSettings
from gossamer.control.store import Store

AUTH = {"Authorization": "Bearer tok"}
JSON = {**AUTH, "Content-Type": "application/json"}
YAML = {**AUTH, "Content-Type": "application/yaml"}
API = "gossamer.dev/v1alpha1"

Client = httpx.AsyncClient


def with_api(tmp_path: Path, body: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``body`` with a client of the API over a started control plane."""

    async def main() -> None:
        store = Store(tmp_path / "store.db")
        ca = CertificateAuthority.load_or_create(tmp_path)
        plane = ControlPlane(ControlSettings(data_dir=tmp_path), store, ca)
        await plane.start()
        transport = httpx.ASGITransport(app=create_app(plane, "tok"), raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                await body(client)
        finally:
            await plane.stop()
            store.close()

    asyncio.run(main())


def problems(response: httpx.Response) -> list[tuple[str, str]]:
    """``(path, message)`` of a 422 answer (which must be UTF-8 JSON)."""
    assert response.status_code == 422, response.text
    body = json.loads(response.content.decode("utf-8"))
    assert body["error"] == "invalid"
    return [(problem["path"], problem["message"]) for problem in body["errors"]]


def filter_doc(config: str) -> bytes:
    """A ProxyFilter document in JSON whose ``spec.config`` is the JSON text ``config``."""
    return (
        b'{"apiVersion": "%s", "kind": "ProxyFilter", "metadata": {"name": "f"},'
        b' "spec": {"service": "web", "filter": "mod:F", "config": %s}}'
        % (API.encode(), config.encode())
    )


def test_join_token_ttl_beyond_a_float_is_refused_with_its_path(tmp_path: Path) -> None:
    """A ttl_seconds of 10**400 was an OverflowError (500) in math.isfinite."""

    async def body(client: Client) -> None:
        response = await client.post(
            "/v1/join-tokens", headers=AUTH, json={"service": "web", "ttl_seconds": 10**400}
        )
        assert [path for path, _ in problems(response)] == ["ttl_seconds"]

    with_api(tmp_path, body)


def test_small_bodies_with_text_that_cannot_be_answered_are_refused(tmp_path: Path) -> None:
    """A lone surrogate (JSON ``\\ud800``) in a key or value of a join-token or revocation
    request was echoed into the answer, whose encoding then failed (500); NaN and nesting
    past the stack too."""

    async def body(client: Client) -> None:
        cases = [
            ("/v1/join-tokens", b'{"service": "web", "\\ud800": 1}', "\\ud800"),
            ("/v1/revocations", b'{"service": "web", "reason": "\\ud800"}', "reason"),
            ("/v1/revocations", b'{"proxy_id": "\\ud800"}', "proxy_id"),
            ("/v1/join-tokens", b'{"service": "web", "ttl_seconds": NaN}', "ttl_seconds"),
        ]
        for url, content, path in cases:
            response = await client.post(url, headers=AUTH, content=content)
            assert [where for where, _ in problems(response)] == [path], content
        for url in ("/v1/join-tokens", "/v1/revocations"):
            deep = await client.post(url, headers=AUTH, content=b"[" * 30_000 + b"]" * 30_000)
            assert deep.status_code == 400 and deep.json()["error"] == "bad-document"

    with_api(tmp_path, body)


def test_documents_with_values_json_cannot_carry_are_refused_with_their_path(
    tmp_path: Path,
) -> None:
    """A lone surrogate in a kind, a name or a filter's config (stored, then every read of it
    failed), an infinite number, YAML dates and binary in a config (TypeError at apply): 422
    with the path of the value, and nothing applied."""

    async def body(client: Client) -> None:
        cases: list[tuple[dict[str, str], bytes, str]] = [
            (JSON, filter_doc('{"x": "\\ud800"}'), "spec.config.x"),
            (JSON, filter_doc('{"x": [1, Infinity]}'), "spec.config.x[1]"),
            (JSON, filter_doc('{"\\udfff": 1}'), "spec.config.\\udfff"),
            (
                JSON,
                b'{"apiVersion": "%s", "kind": "\\ud800", "metadata": {"name": "a"}}'
                % API.encode(),
                "kind",
            ),
            (
                JSON,
                b'{"apiVersion": "%s", "kind": "Service", "metadata": {"name": "\\ud800"}}'
                % API.encode(),
                "metadata.name",
            ),
        ]
        for when in ("2020-01-01", "!!binary aGVsbG8="):
            text = (
                f"apiVersion: {API}\nkind: ProxyFilter\nmetadata: {{name: f}}\n"
                f"spec: {{service: web, filter: 'mod:F', config: {{when: {when}}}}}\n"
            )
            cases.append((YAML, text.encode(), "spec.config.when"))
        for headers, content, path in cases:
            response = await client.post("/v1/resources", headers=headers, content=content)
            assert [where for where, _ in problems(response)] == [path], content
        for kind in ("proxyfilters", "services"):
            listed = await client.get(f"/v1/resources/{kind}", headers=AUTH)
            assert listed.status_code == 200 and listed.json() == {"items": []}

    with_api(tmp_path, body)


def test_a_duration_too_long_to_represent_is_refused_with_its_path(tmp_path: Path) -> None:
    """``drainTimeout: 99999999999999999999d`` was an OverflowError (500) in timedelta."""

    async def body(client: Client) -> None:
        doc = {
            "apiVersion": API,
            "kind": "TCPRoute",
            "metadata": {"name": "db"},
            "spec": {"service": "db", "backends": [{"service": "db2"}]},
        }
        for duration in ("99999999999999999999d", "1" * 5000 + "s"):
            doc["spec"]["drainTimeout"] = duration  # type: ignore[index]
            response = await client.post("/v1/resources", headers=AUTH, json=doc)
            ((path, message),) = problems(response)
            assert path == "spec.drainTimeout" and "too long" in message

    with_api(tmp_path, body)


def test_text_no_parser_can_read_is_a_bad_document(tmp_path: Path) -> None:
    """Nesting past the stack (RecursionError), an impossible YAML date or `!!int x`
    (ValueError) and an int of too many digits were 500s; now 400 bad-document."""

    async def body(client: Client) -> None:
        cases = [
            (JSON, b"[" * 100_000),
            (JSON, b"[" * 5_000 + b"]" * 5_000),
            (YAML, b"[" * 5_000 + b"]" * 5_000),
            (YAML, b"a: 2020-02-30"),
            (YAML, b"a: !!int x"),
            (JSON, b'{"a": ' + b"9" * 5000 + b"}"),
        ]
        for headers, content in cases:
            response = await client.post("/v1/resources", headers=headers, content=content)
            assert response.status_code == 400, (content[:20], response.text)
            assert response.json()["error"] == "bad-document"
            assert "Error" not in response.text

    with_api(tmp_path, body)


def test_nesting_the_parser_reads_but_the_models_would_not_is_refused_with_its_path(
    tmp_path: Path,
) -> None:
    async def body(client: Client) -> None:
        response = await client.post(
            "/v1/resources", headers=JSON, content=filter_doc("[" * 500 + "]" * 500)
        )
        ((path, message),) = problems(response)
        assert path.startswith("spec.config[0][0]") and "nested deeper than 64" in message

    with_api(tmp_path, body)


def test_watch_since_beyond_a_revision_is_a_bad_request(tmp_path: Path) -> None:
    """``since=10**30`` answered 200 and then broke the stream off (OverflowError in SQLite)."""

    async def body(client: Client) -> None:
        for since in (str(10**30), "9223372036854775808", "-1", "x"):
            params = {"since": since, "follow": "false"}
            response = await client.get("/v1/watch", headers=AUTH, params=params)
            assert response.status_code == 400 and response.json()["error"] == "bad-request"
        last = await client.get(
            "/v1/watch", headers=AUTH, params={"since": "9223372036854775807", "follow": "0"}
        )
        assert last.status_code == 200 and last.text == ""

    with_api(tmp_path, body)


def test_a_resource_path_no_resource_can_have_is_not_found(tmp_path: Path) -> None:
    """``DELETE /v1/resources/service/0.5/x`` was a ValueError (500) building the identity of
    a namespace that is no DNS label; no stored resource can have such a key."""

    async def body(client: Client) -> None:
        for namespace, name in (("0.5", "x"), ("default", "X"), ("a" * 64, "x")):
            url = f"/v1/resources/service/{namespace}/{name}"
            for method in ("GET", "DELETE"):
                response = await client.request(method, url, headers=AUTH)
                assert response.status_code == 404, (method, url, response.text)
                assert response.json()["error"] == "not-found"

    with_api(tmp_path, body)


def test_the_routers_own_answers_are_json_errors(tmp_path: Path) -> None:
    """No route (a '/' in a path parameter) or a method no route serves: the documented JSON
    error body, not Starlette's plain text."""

    async def body(client: Client) -> None:
        missing = await client.get("/v1/endpoints/a%2Fb/c", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"] == "not-found"
        wrong = await client.put("/v1/resources", headers=AUTH)
        assert wrong.status_code == 405 and wrong.json()["error"] == "method-not-allowed"
        assert wrong.headers["allow"] == "POST"

    with_api(tmp_path, body)
