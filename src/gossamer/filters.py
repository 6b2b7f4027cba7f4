"""The public filter API: extend the sidecar in Python, for every protocol it proxies.

A filter is a class (or any callable) installed in the sidecar's Python environment and named
in a ``ProxyFilter`` resource, never code sent over the wire::

    apiVersion: gossamer.dev/v1alpha1
    kind: ProxyFilter
    metadata: {name: tenants}
    spec:
      service: catalog          # the workload whose sidecars run it
      direction: inbound        # inbound: requests to it; outbound: requests it makes
      filter: tenant_filter:TenantFilter   # module:attribute, or an entry point name in the
                                           # "gossamer.filters" group of an installed package
      config: {header: x-tenant}          # any JSON object, given to the filter
      failure: reject           # an exception: 500 filter-failed (reject) or pass on (allow)

The sidecar calls the named object once per config change with a ``FilterContext`` and uses
what it returns for every request until the next change. Only the methods a filter defines
are called (a filter without ``on_response`` costs nothing on responses):

- ``on_request(request)``: read and edit the request (``request.headers``, ``request.path``);
  raise ``Reject`` to answer it yourself (``x-gossamer-error: filter-rejected``);
- ``on_response(request, response)``: read ``response.status``, edit ``response.headers``;
- ``on_complete(request, status)``: the request is over (status 0: the caller went away).

The same ``Request`` comes for HTTP/1.1, HTTP/2 and gRPC (``request.protocol``, ``request.grpc``
tell them apart). Header names are case-insensitive and values are ``str`` (latin-1, as
on the wire); header edits a protocol forbids (``connection`` on HTTP/2) are dropped after
the filter. Filters run on the sidecar's event loop: keep them fast and never block (no
network calls, no sleeps); do lookups against memory you filled at construction.

A filter that raises anything other than ``Reject`` never crashes the sidecar: the request
is answered ``500`` with ``x-gossamer-error: filter-failed`` naming the filter (or passed on
under ``failure: allow``), and ``gossamer_filter_failures_total`` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Filter",
    "FilterContext",
    "Headers",
    "Reject",
    "Request",
    "Response",
]


class Reject(Exception):
    """Raise from ``on_request`` to answer the request yourself with ``status`` (4xx or 5xx)
    and ``message`` in the body; ``headers`` are added to the answer."""

    def __init__(
        self, status: int, message: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"Reject needs a 4xx or 5xx status, not {status}")
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            _name(name)
            _value(value)


class Headers:
    """A header list as a filter edits it: case-insensitive names, ``str`` values, order and
    repeats kept. Edits change the request or response that is forwarded."""

    __slots__ = ("_pairs", "_protected", "changed")

    def __init__(
        self, pairs: list[tuple[bytes, bytes]], protected: frozenset[bytes] = frozenset()
    ) -> None:
        self._pairs = pairs
        self._protected = protected  # names only the sidecar may set (the caller's identity)
        self.changed = False

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, else ``default``."""
        key = _name(name)
        for field_name, value in self._pairs:
            if field_name.lower() == key:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = _name(name)
        return [v.decode("latin-1") for n, v in self._pairs if n.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """``(name, value)`` pairs, pseudo-header fields (HTTP/2 ``:path`` ...) left out."""
        for n, v in self._pairs:
            if not n.startswith(b":"):
                yield n.decode("latin-1"), v.decode("latin-1")

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field with one holding ``value``."""
        self.remove(name)
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        key = self._editable(name)
        self._pairs.append((key, _value(value)))
        self.changed = True

    def remove(self, name: str) -> None:
        key = self._editable(name)
        kept = [(n, v) for n, v in self._pairs if n.lower() != key]
        if len(kept) != len(self._pairs):
            self._pairs[:] = kept
            self.changed = True

    def _editable(self, name: str) -> bytes:
        key = _name(name)
        if key in self._protected:
            raise ValueError(f"{name} is set by the sidecar; filters cannot change it")
        return key

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The list as forwarded (bytes)."""
        return self._pairs


@dataclass
class Request:
    """One request as a filter sees it."""

    method: str
    scheme: str
    authority: str
    path: str  # origin form with the query; assign to forward the request elsewhere
    headers: Headers
    protocol: str  # "HTTP/1.1" or "HTTP/2"
    grpc: bool
    direction: str  # "inbound" (to this workload) or "outbound" (from it)
    peer_identity: str | None  # the caller's SPIFFE ID (inbound over mTLS), else None
    request_id: str
    # Anything a filter wants to keep from on_request to on_response/on_complete.
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    """A response head as a filter sees it."""

    status: int
    headers: Headers


class FilterContext:
    """What a filter gets when it is made: its config and a way to count things.

    ``count(event)`` adds to ``gossamer_filter_events_total{filter="ns/name",event=...}`` on
    the sidecar's ``/metrics`` (keep event names few: each is a time series)."""

    def __init__(
        self,
        *,
        name: str,
        config: Mapping[str, Any],
        service: str,
        namespace: str,
        direction: str,
        counter: Callable[[str, int], None],
    ) -> None:
        self.name = name  # "namespace/name" of the ProxyFilter
        self.config = config
        self.service = service  # the workload this sidecar serves
        self.namespace = namespace
        self.direction = direction
        self.log = logging.getLogger(f"gossamer.filter.{name}")
        self._counter = counter

    def count(self, event: str, n: int = 1) -> None:
        self._counter(event, n)


class Filter(Protocol):
    """The shape of a filter (every method is optional; define those you need)."""

    def on_request(self, request: Request) -> None: ...


def _name(name: str) -> bytes:
    raw = name.strip().lower().encode("latin-1")
    if not raw or any(c <= 32 or c >= 127 or c in b'()<>@,;:\\"/[]?={}' for c in raw):
        raise ValueError(f"not a header name: {name!r}")
    return raw


def _value(value: str) -> bytes:
    raw = value.encode("latin-1")
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        raise ValueError("a header value may not contain CR, LF or NUL")
    return raw
