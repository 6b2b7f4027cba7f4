"""A small synchronous client of the control plane's config API (docs/internals.md §3).

Used by the CLI and by the local runner. Expected failures become ``ControlError`` subclasses
with messages meant for people: ``ControlUnreachable``, ``Unauthorized``, ``NotFound``,
``BadDocument``, ``InvalidResources`` (with the per-field errors) and ``ApiError``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "BadDocument",
    "ControlClient",
    "ControlError",
    "ControlUnreachable",
    "FieldError",
    "InvalidResources",
    "NotFound",
    "Unauthorized",
]


APPLY_TIMEOUT = 120.0  # seconds an apply may take (parsing and storing a large file)


class ControlError(Exception):
    """An expected failure talking to the control plane."""


class ControlUnreachable(ControlError):
    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(
            f"control plane not reachable at {url} ({detail}); "
            "start it with `gossamer up` or `gossamer control`"
        )


class ControlTimeout(ControlUnreachable):
    """Connected, but no answer in time: what was sent may have been acted on."""


class Unauthorized(ControlError):
    def __init__(self, message: str) -> None:
        super().__init__(
            f"unauthorized: {message} (set GOSSAMER_TOKEN or point --data-dir at the "
            "control plane's data directory)"
        )


class NotFound(ControlError):
    pass


class BadDocument(ControlError):
    pass


class ApiError(ControlError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"control plane answered {status}: {message}")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation error of one document, as the API reports it."""

    document: int
    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"document {self.document} ({self.kind}/{self.name})"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class InvalidResources(ControlError):
    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)
    return str(body)


def _verify_context(url: str, ca_file: Path | None) -> ssl.SSLContext:
    if ca_file is None:
        raise ControlError(
            f"the config API at {url} is served over TLS and no root certificate of the mesh "
            "is known to check it: set GOSSAMER_CA_FILE to a copy of the control plane's "
            "<data-dir>/ca/root.crt"
        )
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ControlError(f"cannot read the mesh's root certificate {ca_file}: {exc}") from exc


class ControlClient:
    """Calls the config API at ``base_url`` with the admin ``token``. An ``https://`` API is
    verified against the mesh's root certificate ``ca_file`` (required then)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 10.0,
        ca_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.last_warnings: list[FieldError] = []  # of the last apply
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = False
        if self.base_url.startswith("https://"):
            verify = _verify_context(self.base_url, ca_file)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, trust_env=False,
            verify=verify,
        )  # fmt: skip

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method, path, content=content, json=json, params=params, headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )  # fmt: skip
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ControlError(
                    f"the config API at {self.base_url} presented a certificate the mesh's root "
                    f"does not vouch for ({exc}); refusing to send the admin token"
                ) from exc
            raise ControlUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            raise ControlUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise ControlTimeout(self.base_url, str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise ControlUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        if response.status_code == 401:
            raise Unauthorized(_error_message(response))
        return response

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code == 404:
            raise NotFound(_error_message(response))
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_message(response))
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(response.status_code, "answer is not JSON") from exc

    def healthy(self) -> bool:
        """True when ``GET /healthz`` answers 200; never raises."""
        try:
            return self._http.get("/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def apply(self, text: str, *, content_type: str) -> list[dict[str, Any]]:
        """POST documents; return the ``applied`` entries. A large apply may take a while:
        it waits ``APPLY_TIMEOUT``, and without an answer says that the outcome is unknown
        (it was sent, it may have been stored) and how to check."""
        try:
            response = self._request(
                "POST", "/v1/resources", content=text, headers={"Content-Type": content_type},
                timeout=APPLY_TIMEOUT,
            )  # fmt: skip
        except ControlTimeout as exc:
            raise ControlError(
                f"the control plane at {self.base_url} did not answer within "
                f"{APPLY_TIMEOUT:.0f} s: the documents were sent and may or may not have been "
                "applied (all or none); check with `gossamer get <kind>`"
            ) from exc
        if response.status_code == 400:
            raise BadDocument(f"bad document: {_error_message(response)}")
        if response.status_code == 422:
            raise InvalidResources(_field_errors(response))
        answer = self._json(response)
        self.last_warnings = [FieldError(
            document=int(w.get("document", 0)), kind=str(w.get("kind") or "?"),
            name=str(w.get("name") or "?"), path=str(w.get("path", "")),
            message=str(w.get("message", "")),
        ) for w in answer.get("warnings", [])]  # fmt: skip
        return list(answer.get("applied", []))

    def list_resources(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else None
        response = self._request("GET", f"/v1/resources/{kind}", params=params)
        return list(self._json(response).get("items", []))

    def get_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        response = self._request("GET", f"/v1/resources/{kind}/{namespace}/{name}")
        return dict(self._json(response))

    def delete_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        response = self._request("DELETE", f"/v1/resources/{kind}/{namespace}/{name}")
        return dict(self._json(response).get("deleted") or {})

    def proxies(self) -> list[dict[str, Any]]:
        return list(self._json(self._request("GET", "/v1/proxies")).get("items", []))

    def endpoints(self, namespace: str, service: str) -> list[dict[str, Any]]:
        response = self._request("GET", f"/v1/endpoints/{namespace}/{service}")
        return list(self._json(response).get("items", []))

    def join_token(self, service: str, namespace: str = "default") -> str:
        """A single-use join token for one sidecar of ``service``."""
        body = {"service": service, "namespace": namespace}
        answer = self._json(self._request("POST", "/v1/join-tokens", json=body))
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(200, "join-token answer has no token")
        return token

    def revoke(self, *, reason: str, proxy_id: str | None = None,
               service: str | None = None, namespace: str = "default") -> dict[str, Any]:
        """Revoke a proxy's certificates, or every certificate of a service's identity."""
        body: dict[str, Any] = {"reason": reason}
        if proxy_id is not None:
            body["proxy_id"] = proxy_id
        else:
            body.update(service=service, namespace=namespace)
        answer = self._json(self._request("POST", "/v1/revocations", json=body))
        return answer if isinstance(answer, dict) else {}

    def trust_bundle(self) -> bytes:
        """The roots sidecars trust (PEM), as the control plane serves them."""
        response = self._request("GET", "/v1/trust-bundle")
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_message(response))
        return response.content

    def revocations(self) -> list[dict[str, Any]]:
        """The revoked certificates that have not expired yet."""
        return list(self._json(self._request("GET", "/v1/revocations")).get("items", []))

    def root_rotation(self) -> dict[str, Any]:
        """The root rotation's state: its phase (None when none is under way), who lags."""
        answer = self._json(self._request("GET", "/v1/root-rotation"))
        return answer if isinstance(answer, dict) else {}

    def start_root_rotation(self, brought: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a root rotation, to a new root of the control plane's own or to the
        operator's intermediate (``brought``: ``ca_cert``, ``ca_key``, ``ca_bundle`` PEM);
        ``ApiError`` 409 when one is under way, 422 when the intermediate is refused."""
        answer = self._json(self._request("POST", "/v1/root-rotation", json=brought or {}))
        return answer if isinstance(answer, dict) else {}

    def tap(self, namespace: str, service: str, params: Mapping[str, str],
            seconds: float) -> Iterator[dict[str, Any]]:  # fmt: skip
        """``GET /v1/tap/{namespace}/{service}``: each line of the stream as it comes."""
        url = f"/v1/tap/{namespace}/{service}"
        try:
            with self._http.stream("GET", url, params=params, timeout=seconds + 15) as answer:
                if answer.status_code == 401:
                    answer.read()
                    raise Unauthorized(_error_message(answer))
                if answer.status_code >= 400:
                    answer.read()
                    self._json(answer)  # raises NotFound / ApiError with the message
                for line in answer.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise ControlUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc

    def audit_records(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """``GET /v1/audit/records`` with a query's parameters."""
        items: list[dict[str, Any]] = self._json(
            self._request("GET", "/v1/audit/records", params=params)
        )["items"]
        return items

    def audit_chains(self) -> dict[str, Any]:
        """``GET /v1/audit/chains``: the chains and the roots (current and retired)."""
        answer: dict[str, Any] = self._json(self._request("GET", "/v1/audit/chains"))
        return answer

    def audit_chain(self, chain: str, after: int, limit: int) -> dict[str, Any]:
        """``GET /v1/audit/chains/{chain}``: a page of records as stored, and checkpoints."""
        answer: dict[str, Any] = self._json(self._request(
            "GET", f"/v1/audit/chains/{chain}", params={"after": str(after), "limit": str(limit)}
        ))  # fmt: skip
        return answer


def _field_errors(response: httpx.Response) -> list[FieldError]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    raw = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not raw:
        return [FieldError(0, "?", "?", "", _error_message(response))]
    return [
        FieldError(
            document=int(item.get("document", 0)),
            kind=str(item.get("kind") or "?"),
            name=str(item.get("name") or "?"),
            path=str(item.get("path") or ""),
            message=str(item.get("message") or ""),
        )
        for item in raw
        if isinstance(item, dict)
    ]

