"""The config API fuzzed against its own description (issue 11, "Beyond the list").

A real control plane process (as the other integration tests start it) is called over HTTP with
cases that schemathesis draws from ``src/gossamer/control/openapi.yaml``: valid and invalid
documents, parameters and bodies, a bounded number per operation with derandomized generation,
so a run is repeatable. With the admin token, every answer must be below 500, carry no traceback
text and conform to the description (status code, media type, body schema), and invalid input
must be refused with a 4xx. Without a token, every request that reaches a route other than the
public ones must be answered 401. Afterwards the process must still be healthy and have logged
no failure.

``GET /v1/watch`` is always called with ``follow=false``: a followed stream only ends when the
server stops.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

import gossamer.control
from tests.integration.control_helpers import ControlPlaneProcess, running_control_plane

DESCRIPTION = Path(gossamer.control.__file__).with_name("openapi.yaml")
PUBLIC = {("GET", "/healthz"), ("GET", "/v1/trust-bundle"), ("GET", "/v1/openapi.yaml")}
EXAMPLES = 30  # drawn per operation with the token (plus the coverage phase's cases)
APPLY_EXAMPLES = 200  # drawn documents for POST /v1/resources
EXAMPLES_WITHOUT_TOKEN = 10
REQUEST_TIMEOUT = 10.0

# Invalid input must be refused with a 4xx; schemathesis' own list leaves out 413, which is
# how a drawn document too large to store is refused (before it is read as a resource).
_config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                          "428", "429", "5XX"]}}})  # fmt: skip
# Unknown query parameters are ignored (as HTTP APIs do), not refused; the token is the test's.
_config.projects.default.generation.update(
    allow_extra_parameters=False, with_security_parameters=False
)
schema = schemathesis.openapi.from_path(DESCRIPTION, config=_config)
# Schemathesis' coverage phase (boundary values of every field, deterministic) is run for every
# operation but the apply, whose documents have so many fields that it would send ~5,000
# requests; the apply gets more drawn examples instead.
APPLY = "applyResources"

# Exception class names (KeyError, ValidationError, ...) and traceback lines: internals that no
# answer may carry, whatever its status.
_EXCEPTION_NAMES = sorted(
    {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and name.endswith(("Error", "Exception", "Exit", "Interrupt"))
    }
    | {"ValidationError", "YAMLError", "JSONDecodeError", "ScannerError", "ConstructorError"}
)
INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+|\b(?:"
    + "|".join(_EXCEPTION_NAMES)
    + r")\b"
)

WITH_TOKEN_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]
WITHOUT_TOKEN_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
FUZZ_SETTINGS = {
    "derandomize": True,  # a fixed sequence of cases: a failure reproduces on every run
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    data_dir = tmp_path_factory.mktemp("api-schema") / "data"
    with running_control_plane(data_dir) as process:
        yield process
        with process.client() as client:
            assert client.get("/healthz").text == "ok", "the control plane is unhealthy"
            assert client.get("/v1/resources/services").status_code == 200
        log = process.log()
        assert " failed" not in log and "Traceback" not in log, log[-4000:]


def _bounded(case: Any) -> None:
    """A watch that ends after the backlog (a followed one would never answer whole)."""
    if case.path == "/v1/watch":
        case.query = {**(case.query or {}), "follow": "false"}


def _assert_no_internals(response: Any) -> None:
    text = response.content.decode("utf-8", "replace")
    found = INTERNALS.search(text)
    request = response.request
    body = request.body[:1000] if isinstance(request.body, bytes | str) else request.body
    assert found is None, (
        f"{request.method} {request.url} {body!r} -> {response.status_code} carries "
        f"{found.group(0)!r}: {text[:500]}"
    )


def _reaches_route(case: Any, response: Any) -> bool:
    """Whether the path as the server saw it (decoded) matches the operation's route: a path
    parameter holding '/' or '..' ends elsewhere (the router's own 404)."""
    pattern = re.sub(r"\{[^/}]+\}", "[^/]+", case.path)
    sent = unquote(urlsplit(response.request.url).path)
    return re.fullmatch(pattern, sent) is not None


@schema.exclude(operation_id=APPLY).parametrize()
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
def test_with_the_token(case: Any, cp: ControlPlaneProcess) -> None:
    """No 5xx, no internals, answers as described, invalid input refused with a 4xx."""
    _call_with_the_token(case, cp)


@schema.include(operation_id=APPLY).parametrize()
@settings(max_examples=APPLY_EXAMPLES, phases=[Phase.generate], **FUZZ_SETTINGS)
def test_applying_documents(case: Any, cp: ControlPlaneProcess) -> None:
    """The same for POST /v1/resources, with drawn documents only (valid and invalid)."""
    _call_with_the_token(case, cp)


def _call_with_the_token(case: Any, cp: ControlPlaneProcess) -> None:
    _bounded(case)
    auth = {"Authorization": f"Bearer {cp.token}"}
    response = case.call(base_url=cp.api_url, headers=auth, timeout=REQUEST_TIMEOUT)
    _assert_no_internals(response)
    case.validate_response(
        response,
        checks=WITH_TOKEN_CHECKS,
        headers=auth,
        transport_kwargs={"base_url": cp.api_url, "headers": auth},
    )


@schema.parametrize()
@settings(max_examples=EXAMPLES_WITHOUT_TOKEN, phases=[Phase.generate], **FUZZ_SETTINGS)
def test_without_the_token(case: Any, cp: ControlPlaneProcess) -> None:
    """Every route but the public ones answers 401 to a request without the admin token."""
    _bounded(case)
    wrong = f"Bearer {cp.token[:-1]}{'A' if cp.token[-1] != 'A' else 'B'}"
    for headers in ({}, {"Authorization": wrong}):
        response = case.call(base_url=cp.api_url, headers=headers, timeout=REQUEST_TIMEOUT)
        _assert_no_internals(response)
        case.validate_response(
            response,
            checks=WITHOUT_TOKEN_CHECKS,
            headers=headers,
            transport_kwargs={"base_url": cp.api_url, "headers": headers},
        )
        _assert_refused(case, response)


def _assert_refused(case: Any, response: Any) -> None:
    """401 for a request that reaches a route needing the token; the router's own 405 or 404
    for a method or a path that no route serves; an answer for a public route."""
    method = case.method.upper()
    served = {name.upper() for name in schema.raw_schema["paths"][case.path]} - {"PARAMETERS"}
    served |= {"HEAD"} if "GET" in served else set()  # Starlette answers HEAD for a GET
    status, error = response.status_code, _error_code(response)
    if method not in served:
        assert (status, error) == (405, "method-not-allowed"), response.text
    elif ("GET" if method == "HEAD" else method, case.path) in PUBLIC:
        assert status < 400, response.text
    elif _reaches_route(case, response):
        assert status == 401 and error in ("unauthorized", None), response.text
    else:
        assert (status, error) == (404, "not-found"), response.text


def _error_code(response: Any) -> str | None:
    """The ``error`` of a JSON error body (None for any other, or none, as to HEAD)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return str(body.get("error")) if isinstance(body, dict) else None


KINDS = ["services", "meshconfigs", "httproutes", "trafficpolicies", "tcproutes", "proxyfilters"]
KNOWN_GOOD = [
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service", "metadata": {"name": "rt-web"},
     "spec": {"ports": [{"port": 8080}]}},
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "MeshConfig",
     "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}},
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "HTTPRoute", "metadata": {"name": "rt-web"},
     "spec": {"service": "rt-web", "rules": [{"timeout": "2s"}]}},
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "TrafficPolicy",
     "metadata": {"name": "rt-web"}, "spec": {"service": "rt-web"}},
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "TCPRoute", "metadata": {"name": "rt-db"},
     "spec": {"service": "rt-db", "backends": [{"service": "rt-db2"}]}},
    {"apiVersion": "gossamer.dev/v1alpha1", "kind": "ProxyFilter",
     "metadata": {"name": "rt-web"}, "spec": {"service": "rt-web", "filter": "mod:Filter"}},
]  # fmt: skip


def _validated(operation: str, cp: ControlPlaneProcess, **parts: Any) -> Any:
    """Call one operation (``"GET /path"``) with the token; check its answer as the fuzz does."""
    method, path = operation.split(" ", 1)
    case = schema[path][method].Case(**parts)
    auth = {"Authorization": f"Bearer {cp.token}"}
    response = case.call(base_url=cp.api_url, headers=auth, timeout=REQUEST_TIMEOUT)
    _assert_no_internals(response)
    case.validate_response(response, checks=WITH_TOKEN_CHECKS, headers=auth)
    return response


def test_stored_resources_read_and_delete_as_described(cp: ControlPlaneProcess) -> None:
    """Every resource stored (the fuzz's and one of each kind) reads back, lists, watches and
    deletes with answers as described: the fuzz itself rarely names a stored resource."""
    applied = _validated("POST /v1/resources", cp, body=KNOWN_GOOD, media_type="application/json")
    assert applied.status_code == 200, applied.text
    stored = []
    for kind in KINDS:
        listing = _validated("GET /v1/resources/{kind}", cp, path_parameters={"kind": kind})
        stored += [(kind, item["metadata"]) for item in listing.json()["items"]]
    assert any(kind == "services" for kind, _ in stored)
    watch = _validated("GET /v1/watch", cp, query={"since": 0, "follow": "false"})
    changes = [json.loads(line) for line in watch.text.splitlines()]
    assert changes and all(set(change) == {"revision", "type", "resource"} for change in changes)
    for kind, metadata in stored:
        where = {"kind": kind, "namespace": metadata["namespace"], "name": metadata["name"]}
        got = _validated("GET /v1/resources/{kind}/{namespace}/{name}", cp, path_parameters=where)
        assert got.status_code == 200 and got.json()["metadata"] == metadata
        gone = _validated(
            "DELETE /v1/resources/{kind}/{namespace}/{name}", cp, path_parameters=where
        )
        assert gone.status_code == 200, gone.text
        again = _validated("GET /v1/resources/{kind}/{namespace}/{name}", cp, path_parameters=where)
        assert again.status_code == 404


def test_the_description_is_served(cp: ControlPlaneProcess) -> None:
    """GET /v1/openapi.yaml answers the committed file, without a token."""
    response = httpx.get(f"{cp.api_url}/v1/openapi.yaml", timeout=REQUEST_TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.content == DESCRIPTION.read_bytes()
