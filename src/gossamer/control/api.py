"""The config API (docs/internals.md §3): a Starlette app over the control plane.

Owns HTTP concerns only: bearer-token auth, request parsing, status codes and JSON error
bodies. Validation is :mod:`gossamer.config`; state changes go through
:class:`~gossamer.control.plane.ControlPlane`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gossamer.config import (
    DocumentParseError,
    ResourceKey,
    ValidationFailed,
    kind_for,
    parse_documents,
    validate_documents,
)
from gossamer.config.base import Resource, check_dns_label, check_workload_namespace
from gossamer.config.loader import json_value_problems
from gossamer.control.audit_api import audit_chain, audit_chains, audit_records
from gossamer.control.plane import ControlPlane
from gossamer.control.rotation import CaRefused, RotationError
from gossamer.control.tap import tap_stream

__all__ = ["MAX_BODY", "create_app"]

log = logging.getLogger("gossamer.control.api")

MAX_BODY = 16 * 1024 * 1024
MAX_DOCUMENT = 1024 * 1024  # one resource, as stored (canonical JSON)
MAX_SMALL_BODY = 64 * 1024  # a join-token request
DEFAULT_TOKEN_TTL = 600.0
MAX_TOKEN_TTL = 7 * 86400.0
WATCH_IDLE = 15.0
MAX_REVISION = 2**63 - 1  # revisions are SQLite INTEGERs
OPENAPI_PATH = "/v1/openapi.yaml"  # the API's description (control/openapi.yaml), public

Handler = Callable[[Request], Awaitable[Response]]
PlaneHandler = Callable[[ControlPlane, Request], Awaitable[Response]]  # bound by create_app


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


def _not_found(message: str) -> JSONResponse:
    return _error(404, "not-found", message)


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def create_app(plane: ControlPlane, admin_token: str) -> Starlette:
    """The ASGI app serving the config API for ``plane``, guarded by ``admin_token``.

    Owns the route table and which routes need the admin token; each handler below serves
    one route, and is given the plane by ``_serving``.
    """
    expected = f"Bearer {admin_token}".encode()

    def public(handler: PlaneHandler) -> Handler:
        return _serving(plane, handler)

    def authed(handler: PlaneHandler) -> Handler:
        return _authed(_serving(plane, handler), expected)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route(OPENAPI_PATH, openapi_description, methods=["GET"]),
        Route("/v1/trust-bundle", public(trust_bundle), methods=["GET"]),
        Route("/v1/resources", authed(apply), methods=["POST"]),
        Route("/v1/resources/{kind}", authed(list_resources), methods=["GET"]),
        Route("/v1/resources/{kind}/{namespace}/{name}", authed(get_resource), methods=["GET"]),
        Route(
            "/v1/resources/{kind}/{namespace}/{name}",
            authed(delete_resource),
            methods=["DELETE"],
        ),
        Route("/v1/watch", authed(watch), methods=["GET"]),
        Route("/v1/proxies", authed(proxies), methods=["GET"]),
        Route("/v1/prometheus/targets", authed(prometheus_targets), methods=["GET"]),
        Route("/v1/endpoints/{namespace}/{service}", authed(endpoints), methods=["GET"]),
        Route("/v1/join-tokens", authed(join_token), methods=["POST"]),
        Route("/v1/revocations", authed(list_revocations), methods=["GET"]),
        Route("/v1/revocations", authed(revoke), methods=["POST"]),
        Route("/v1/root-rotation", authed(rotation_status), methods=["GET"]),
        Route("/v1/root-rotation", authed(start_rotation), methods=["POST"]),
        Route("/v1/audit/records", authed(audit_records), methods=["GET"]),
        Route("/v1/audit/chains", authed(audit_chains), methods=["GET"]),
        Route("/v1/audit/chains/{chain}", authed(audit_chain), methods=["GET"]),
        Route("/v1/tap/{namespace}/{service}", authed(tap_stream), methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


def _serving(plane: ControlPlane, handler: PlaneHandler) -> Handler:
    """``handler`` as a Starlette endpoint for ``plane`` (the route keeps the handler's name)."""

    async def endpoint(request: Request) -> Response:
        return await handler(plane, request)

    endpoint.__name__ = handler.__name__
    return endpoint


def _authed(handler: Handler, expected: bytes) -> Handler:
    """``handler`` behind the admin token: 401 unless the request carries ``expected``."""

    async def guarded(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "unauthorized", "missing or wrong admin bearer token")
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


_HTTP_ERRORS = {404: "not-found", 405: "method-not-allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own answers (no such route, method not allowed) in the JSON error shape."""
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, _HTTP_ERRORS.get(exc.status_code, "bad-request"), exc.detail)
    response.headers.update(exc.headers or {})
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A 500 that names the kind of failure; its text and traceback go to the log only."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal", f"internal error ({type(exc).__name__}); see the log")


# Health and trust: no token needed.


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def trust_bundle(plane: ControlPlane, request: Request) -> Response:
    return Response(plane.bundle, media_type="application/x-pem-file")


@functools.cache
def _openapi_text() -> bytes:
    return resources.files("gossamer.control").joinpath("openapi.yaml").read_bytes()


async def openapi_description(request: Request) -> Response:
    """The OpenAPI 3.1 description of this API (no token needed, like the trust bundle)."""
    return Response(_openapi_text(), media_type="application/yaml")


# Resources: apply, list, get and delete (validation is gossamer.config's).


def _invalid(exc: ValidationFailed) -> Response:
    return JSONResponse(
        {
            "error": "invalid",
            "message": f"{len(exc.problems)} problem(s); nothing was applied",
            "errors": [problem.to_json() for problem in exc.problems],
        },
        status_code=422,
    )


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``_TooLarge``) as soon as it is known to exceed ``limit``:
    by its Content-Length, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Response:
    return _error(413, "too-large", f"request body is limited to {limit} bytes")


async def apply(plane: ControlPlane, request: Request) -> Response:
    """Parse, validate and store off the event loop (a large apply must not stall the
    sidecars' streams); one apply at a time; then push on the loop."""
    try:
        body = await _read_body(request, MAX_BODY)
    except _TooLarge:
        return _too_large(MAX_BODY)
    content_type = request.headers.get("content-type", "application/yaml")
    try:
        resources = await asyncio.to_thread(_resources_of, body, content_type)
    except _Refused as refused:
        return refused.response
    except ValidationFailed as exc:
        return _invalid(exc)
    async with plane.apply_lock:
        try:
            results = await asyncio.to_thread(plane.store_resources, resources)
        except ValidationFailed as exc:
            return _invalid(exc)
        plane.resources_stored(results)
    answer: dict[str, Any] = {"applied": [result.to_json() for result in results]}
    warnings = plane.route_warnings(resources)
    if warnings:
        answer["warnings"] = [problem.to_json() for problem in warnings]
    return JSONResponse(answer)


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _resources_of(body: bytes, content_type: str) -> list[Resource]:
    """The body's documents, each within ``MAX_DOCUMENT``, validated (in a worker thread)."""
    try:
        docs = parse_documents(body.decode("utf-8"), content_type)
    except UnicodeDecodeError as exc:
        raise _Refused(_error(400, "bad-document", f"body is not UTF-8: {exc}")) from None
    except DocumentParseError as exc:
        raise _Refused(_error(400, "bad-document", str(exc))) from None
    for index, doc in enumerate(docs):
        try:
            size = len(json.dumps(doc, separators=(",", ":"), default=str))
        except (ValueError, TypeError, RecursionError):
            continue  # validation names what is wrong with it
        if size > MAX_DOCUMENT:
            raise _Refused(_error(
                413, "too-large", f"document {index} is {size} bytes as stored; a resource "
                f"is limited to {MAX_DOCUMENT} bytes",
            ))  # fmt: skip
    return validate_documents(docs)


def _resource_kind(request: Request) -> type[Resource] | None:
    return kind_for(str(request.path_params["kind"]))


def _key_of(request: Request) -> ResourceKey | None:
    """The key the path names, or None when no resource can have it (unknown kind, or a
    namespace or name that is no DNS label: validation never stores such a key)."""
    kind = _resource_kind(request)
    if kind is None:
        return None
    namespace = kind.FIXED_NAMESPACE or str(request.path_params["namespace"])
    name = str(request.path_params["name"])
    try:
        check_dns_label(namespace)
        check_dns_label(name)
    except ValueError:
        return None
    return ResourceKey(kind.KIND, namespace, name)


async def list_resources(plane: ControlPlane, request: Request) -> Response:
    kind = _resource_kind(request)
    if kind is None:
        return _not_found(f"unknown kind {request.path_params['kind']!r}")
    namespace = request.query_params.get("namespace") or None
    return JSONResponse({"items": plane.store.list_resources(kind.KIND, namespace)})


async def get_resource(plane: ControlPlane, request: Request) -> Response:
    key = _key_of(request)
    document = plane.store.get(key) if key is not None else None
    if document is None:
        return _not_found(f"no such resource: {request.url.path}")
    return JSONResponse(document)


async def delete_resource(plane: ControlPlane, request: Request) -> Response:
    key = _key_of(request)
    document = plane.delete(key) if key is not None else None
    if document is None:
        return _not_found(f"no such resource: {request.url.path}")
    return JSONResponse({"deleted": document})


# The mesh as it runs: changes to watch, connected proxies, endpoints, join tokens.


async def watch(plane: ControlPlane, request: Request) -> Response:
    try:
        since = int(request.query_params.get("since", "0"))
    except ValueError:
        since = -1
    if not 0 <= since <= MAX_REVISION:
        message = f"since must be a revision, an integer in 0..{MAX_REVISION}"
        return _error(400, "bad-request", message)
    follow = request.query_params.get("follow", "true").lower() not in ("0", "false", "no")

    async def lines() -> AsyncIterator[bytes]:
        revision = since
        while not plane.stopping.is_set():
            changes = plane.store.changes_since(revision)
            for change in changes:
                revision = change.revision
                yield json.dumps(change.to_json()).encode() + b"\n"
            if changes:
                continue
            if not follow:
                return
            await plane.wait_for_change(WATCH_IDLE)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def proxies(plane: ControlPlane, request: Request) -> Response:
    items = sorted((r.to_json() for r in plane.registry), key=lambda r: r["proxy_id"])
    return JSONResponse({"items": items})


async def prometheus_targets(plane: ControlPlane, request: Request) -> Response:
    """Prometheus HTTP service discovery (``http_sd_configs``): one target group per
    connected proxy with an admin port, its metrics endpoint and who it is."""
    groups = []
    for record in sorted(plane.registry, key=lambda r: r.proxy_id):
        workload = record.workload
        if not record.connected or workload.admin_port is None:
            continue
        host = workload.address if ":" not in workload.address else f"[{workload.address}]"
        groups.append({
            "targets": [f"{host}:{workload.admin_port}"],
            "labels": {
                "__metrics_path__": "/metrics",
                "namespace": workload.namespace,
                "service": workload.service,
                "proxy_id": record.proxy_id,
                "identity": record.identity.uri,
                **{f"__meta_gossamer_label_{_label_name(k)}": v
                   for k, v in workload.labels.items()},
            },
        })  # fmt: skip
    return JSONResponse(groups)


def _label_name(key: str) -> str:
    """A workload label's key as a Prometheus label name (other characters become ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


async def endpoints(plane: ControlPlane, request: Request) -> Response:
    records = plane.registry.endpoints_of(
        str(request.path_params["namespace"]), str(request.path_params["service"])
    )
    items = [
        {
            "address": r.workload.address,
            "port": r.workload.inbound_port,
            "labels": dict(r.workload.labels),
            "healthy": r.healthy,
            "proxy_id": r.proxy_id,
        }
        for r in records
    ]
    return JSONResponse({"items": items})


def _workload_problems(service: Any, namespace: Any) -> list[dict[str, str]]:
    """What is wrong with a request's ``service`` and ``namespace`` (a workload's names)."""
    problems: list[dict[str, str]] = []
    for field, value, check in (("service", service, check_dns_label),
                                ("namespace", namespace, check_workload_namespace)):  # fmt: skip
        try:
            if not isinstance(value, str):
                raise ValueError("required, must be a string")
            check(value)
        except ValueError as exc:
            problems.append({"path": field, "message": str(exc)})
    return problems


def _join_token_problems(body: dict[str, Any]) -> list[dict[str, str]]:
    """What is wrong with a join-token request's fields (empty when it is valid)."""
    ttl = body.get("ttl_seconds", DEFAULT_TOKEN_TTL)
    problems = _workload_problems(body.get("service"), body.get("namespace", "default"))
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TOKEN_TTL:
        problems.append(
            {"path": "ttl_seconds", "message": f"must be a number in 1..{MAX_TOKEN_TTL:.0f}"}
        )
    unknown = sorted(set(body) - {"service", "namespace", "ttl_seconds"})
    problems += [{"path": name, "message": "unknown field"} for name in unknown]
    return problems


async def _small_json_object(request: Request) -> dict[str, Any] | Response:
    """The body of a small request (join token, revocation) as a JSON object, or the answer
    refusing it: 413 over the limit, 400 when it is no JSON object, 422 with the path of any
    value that cannot be answered back (lone surrogates, NaN, nesting deeper than 64)."""
    try:
        body = json.loads(await _read_body(request, MAX_SMALL_BODY))
    except _TooLarge:
        return _too_large(MAX_SMALL_BODY)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, "bad-document", f"invalid JSON: {exc}")
    except (ValueError, RecursionError):  # a number of too many digits, or deep nesting
        return _error(400, "bad-document", "invalid JSON: a number too long or nesting too deep")
    if not isinstance(body, dict):
        return _error(400, "bad-document", "expected a JSON object")
    problems = [{"path": path, "message": text} for path, text in json_value_problems(body)]
    if problems:
        return _error(422, "invalid", "invalid request", errors=problems)
    return body


async def join_token(plane: ControlPlane, request: Request) -> Response:
    body = await _small_json_object(request)
    if isinstance(body, Response):
        return body
    problems = _join_token_problems(body)
    if problems:
        return _error(422, "invalid", "invalid join-token request", errors=problems)
    service, namespace = body.get("service"), body.get("namespace", "default")
    ttl = body.get("ttl_seconds", DEFAULT_TOKEN_TTL)
    assert isinstance(service, str) and isinstance(namespace, str)
    token, expires = plane.create_join_token(service, namespace, float(ttl))
    return JSONResponse(
        {
            "token": token,
            "service": service,
            "namespace": namespace,
            "expires": _rfc3339(expires),
        }
    )


# Revocation (docs/internals.md §11): cut a proxy or a service's identity out of the mesh.


async def list_revocations(plane: ControlPlane, request: Request) -> Response:
    items = [cert.to_json() for cert in plane.revocations.listed()]
    return JSONResponse({"items": items})


def _revocation_problems(body: dict[str, Any]) -> list[dict[str, str]]:
    """What is wrong with a revocation request (empty when valid): exactly one of
    ``proxy_id`` or ``service`` (with an optional ``namespace``), and a ``reason``."""
    problems: list[dict[str, str]] = []
    unknown = sorted(set(body) - {"proxy_id", "service", "namespace", "reason"})
    problems += [{"path": name, "message": "unknown field"} for name in unknown]
    if ("proxy_id" in body) == ("service" in body):
        problems.append({"path": "proxy_id", "message": "give proxy_id or service, not both"})
    proxy_id = body.get("proxy_id")
    if "proxy_id" in body and (not isinstance(proxy_id, str) or not 0 < len(proxy_id) <= 253):
        problems.append({"path": "proxy_id", "message": "must be a string of 1 to 253 chars"})
    if "service" in body:
        problems += _workload_problems(body["service"], body.get("namespace", "default"))
    reason = body.get("reason", "revoked by the operator")
    if not isinstance(reason, str) or len(reason) > 256:
        problems.append({"path": "reason", "message": "must be a string of at most 256 chars"})
    return problems


async def revoke(plane: ControlPlane, request: Request) -> Response:
    body = await _small_json_object(request)
    if isinstance(body, Response):
        return body
    problems = _revocation_problems(body)
    if problems:
        return _error(422, "invalid", "invalid revocation request", errors=problems)
    reason = str(body.get("reason", "revoked by the operator"))
    proxy_id = body.get("proxy_id")
    if isinstance(proxy_id, str):
        if plane.registry.get(proxy_id) is None and not plane.revocations.known_proxy(proxy_id):
            return _error(404, "not-found", f"no proxy {proxy_id!r} is known")
        serials = plane.revoke(proxy_id=proxy_id, reason=reason)
        target = f"proxy {proxy_id}"
    else:
        namespace = str(body.get("namespace", "default"))
        identity = plane.identity_for(namespace, str(body["service"]))
        serials = plane.revoke(identity=identity, reason=reason)
        target = identity.uri
    return JSONResponse({"revoked": serials, "target": target, "reason": reason})


# Root rotation (control/rotation.py): a new root everywhere, leaves re-issued, the old one out.


async def rotation_status(plane: ControlPlane, request: Request) -> Response:
    return JSONResponse(plane.trust.status())


_CA_FIELDS = ("ca_cert", "ca_key", "ca_bundle")


def _rotation_problems(body: dict[str, Any]) -> list[dict[str, str]]:
    """What is wrong with a root-rotation request: nothing (a new root of our own), or all
    of ``ca_cert``, ``ca_key`` and ``ca_bundle`` as PEM text (the operator's intermediate)."""
    problems = [{"path": name, "message": "unknown field"}
                for name in sorted(set(body) - set(_CA_FIELDS))]  # fmt: skip
    given = [name for name in _CA_FIELDS if name in body]
    if given and len(given) != len(_CA_FIELDS):
        problems += [{"path": name, "message": "ca_cert, ca_key and ca_bundle go together"}
                     for name in _CA_FIELDS if name not in body]  # fmt: skip
    problems += [{"path": name, "message": "must be PEM text"} for name in given
                 if not isinstance(body[name], str) or "-----BEGIN" not in body[name]]  # fmt: skip
    return problems


async def start_rotation(plane: ControlPlane, request: Request) -> Response:
    body: dict[str, Any] = {}
    headers = request.headers
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        parsed = await _small_json_object(request)  # no body: a new root of our own
        if isinstance(parsed, Response):
            return parsed
        body = parsed
    problems = _rotation_problems(body)
    if problems:
        return _error(422, "invalid", "invalid root-rotation request", errors=problems)
    cert, key, bundle = (str(body.get(name, "")).encode() for name in _CA_FIELDS)
    try:
        plane.trust.begin((cert, key, bundle) if body else None)
    except CaRefused as exc:
        return _error(422, "invalid", str(exc))
    except RotationError as exc:
        return _error(409, "conflict", str(exc))
    return JSONResponse(plane.trust.status(), status_code=202)
