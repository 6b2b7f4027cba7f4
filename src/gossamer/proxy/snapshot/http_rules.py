"""HTTP routes of one outbound service: which rule a request matches and what the rule does.

A service's ``http_routes`` (docs/internals.md §8) are compiled once per snapshot into an
``HttpRouter``: a tuple of precompiled matchers (bytes to compare, compiled regexes) in rule
order, each pointing at its ``HttpRule`` with precomputed cumulative backend weights and
filters. ``match`` walks that tuple; it indexes headers and the query string only when a rule
actually looks at them, at most once per request. Nothing here does I/O.

Matching (as the Gateway API):

- Rules are tried in order, the first match wins; a rule with several matches matches when any
  does, and inside one match every condition must hold. A rule without matches matches all.
- Paths compare on the raw request path (before ``?``): ``Exact``; ``Prefix`` is segment-aware
  (``/items`` matches ``/items``, ``/items/`` and ``/items/1`` but not ``/itemsx``; a trailing
  ``/`` in the prefix is ignored); ``RegularExpression`` must match the whole path.
- ``method`` compares exactly (upper case). Header names are case-insensitive; when a header
  appears several times, any of its values may satisfy the condition. ``Present`` only asks
  for the name. Regexes must match the whole value.
- Query parameters compare after percent-decoding (``+`` stays a plus sign); names are
  case-sensitive; any of repeated values may satisfy the condition.

Filters and backends are described on ``RouteFilters`` and ``HttpRule``.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_to_bytes

from gossamer.protocol.http1 import redirect_response
from gossamer.proxy.resilience.fields import (
    number,
    obj,
    opt_duration,
    opt_int,
    opt_obj,
    str_list,
    str_map,
    string,
)
from gossamer.proxy.resilience.retry import RetryPolicy
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = [
    "BackendRef",
    "FaultPolicy",
    "HeaderEdits",
    "HttpRouter",
    "HttpRule",
    "MirrorPolicy",
    "Redirect",
    "RouteFilters",
    "TcpRoute",
    "WeightedBackends",
]

Header = tuple[bytes, bytes]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_PATH, _EXACT, _PREFIX, _REGEX = 0, 1, 2, 3
_PATH_KINDS = {"Exact": _EXACT, "Prefix": _PREFIX, "RegularExpression": _REGEX}
_H_EXACT, _H_PREFIX, _H_REGEX, _H_PRESENT = 0, 1, 2, 3
_HEADER_KINDS = {"Exact": _H_EXACT, "Prefix": _H_PREFIX, "RegularExpression": _H_REGEX,
                 "Present": _H_PRESENT}  # fmt: skip
_QUERY_KINDS = {"Exact": _H_EXACT, "RegularExpression": _H_REGEX, "Present": _H_PRESENT}
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


# --- backends -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendRef:
    """Where a request goes: a service (``name.namespace``) or the subset of its endpoints
    whose labels include ``subset``. Equal refs have equal ``subset_key`` (sorted items), which
    is what they hash on, so a ref can key a cache of subset balancers."""

    service_key: str
    subset: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    subset_key: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, service_key: str, subset: Mapping[str, str] | None = None) -> BackendRef:
        items = dict(subset or {})
        return cls(service_key, MappingProxyType(items), tuple(sorted(items.items())))

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether an endpoint with these labels belongs to this backend's subset."""
        return all(labels.get(key) == value for key, value in self.subset_key)


def _backend_ref(d: Any, where: str) -> BackendRef:
    d = obj(d, where)
    return BackendRef.of(string(d, "service", where), str_map(d, "subset", where))


class WeightedBackends:
    """A weighted choice among backends: cumulative weights, one draw, one bisect.
    Backends of weight 0 are never chosen; a single backend needs no draw."""

    __slots__ = ("_cumulative", "_only", "_total", "refs", "weights")

    def __init__(self, refs: Sequence[BackendRef], weights: Sequence[int]) -> None:
        if not refs or len(refs) != len(weights):
            raise ValueError("need one weight per backend, at least one backend")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be >= 0 and not all 0")
        self.refs = tuple(refs)
        self.weights = tuple(weights)
        cumulative: list[int] = []
        running = 0
        for w in weights:
            running += w
            cumulative.append(running)
        self._cumulative = tuple(cumulative)
        self._total = running
        live = [ref for ref, w in zip(refs, weights, strict=True) if w > 0]
        self._only = live[0] if len(live) == 1 else None

    @classmethod
    def from_snapshot(
        cls, items: Any, where: str, default_service: str | None = None
    ) -> WeightedBackends:
        """``[{"service", "subset"?, "weight"?}]`` (weight defaults to 1). An empty list means
        ``default_service`` with weight 1."""
        if items is None or items == []:
            if default_service is None:
                raise SnapshotError(f"{where}: expected at least one backend")
            return cls([BackendRef.of(default_service)], [1])
        if not isinstance(items, list):
            raise SnapshotError(f"{where}: expected a list, got {items!r}")
        refs = [_backend_ref(item, f"{where}[{i}]") for i, item in enumerate(items)]
        weights = [
            opt_int(item, "weight", f"{where}[{i}]", default=1, maximum=1_000_000)
            for i, item in enumerate(items)
        ]
        if sum(weights) == 0:
            raise SnapshotError(f"{where}: every backend has weight 0")
        return cls(refs, weights)

    def pick(self, rng: random.Random) -> BackendRef:
        only = self._only
        if only is not None:
            return only
        return self.refs[bisect_right(self._cumulative, rng.random() * self._total)]


# --- filters ------------------------------------------------------------------------------


def _header_name(name: str, where: str) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise SnapshotError(f"{where}: not a valid header name: {name!r}")
    return name.lower().encode("ascii")


def _header_value(value: str, where: str) -> bytes:
    if "\r" in value or "\n" in value or "\0" in value:
        raise SnapshotError(f"{where}: header value contains CR, LF or NUL")
    return value.encode("utf-8")


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header changes: names in ``set`` and ``remove`` are dropped (any case), then the ``set``
    entries and then the ``add`` entries are appended. Names are lower case."""

    set: tuple[Header, ...] = ()
    add: tuple[Header, ...] = ()
    drop: frozenset[bytes] = frozenset()

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> HeaderEdits | None:
        """``{"set": {}, "add": {}, "remove": []}``; None when it changes nothing."""
        d = obj(d, where)
        set_ = tuple(
            (_header_name(k, f"{where}.set"), _header_value(v, f"{where}.set.{k}"))
            for k, v in str_map(d, "set", where).items()
        )
        add = tuple(
            (_header_name(k, f"{where}.add"), _header_value(v, f"{where}.add.{k}"))
            for k, v in str_map(d, "add", where).items()
        )
        remove = {_header_name(k, f"{where}.remove") for k in str_list(d, "remove", where)}
        if not (set_ or add or remove):
            return None
        return cls(set_, add, frozenset(remove | {name for name, _ in set_}))

    def apply(self, headers: list[Header]) -> list[Header]:
        drop = self.drop
        out = [h for h in headers if h[0].lower() not in drop] if drop else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect answered by the proxy; unset parts come from the request."""

    scheme: bytes | None = None
    host: bytes | None = None
    port: int | None = None
    path: bytes | None = None
    status: int = 302

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> Redirect:
        """``{"scheme", "host", "port", "path", "status_code"}``, each optional."""
        d = obj(d, where)
        scheme = d.get("scheme")
        if scheme is not None and scheme not in ("http", "https"):
            raise SnapshotError(f"{where}.scheme: expected http or https, got {scheme!r}")
        host = d.get("host")
        if host is not None and (not isinstance(host, str) or not re.fullmatch(r"[\w.\-]+", host)):
            raise SnapshotError(f"{where}.host: not a host name: {host!r}")
        path = d.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise SnapshotError(f"{where}.path: expected a path starting with /, got {path!r}")
        status = opt_int(d, "status_code", where, default=302)
        if status not in _REDIRECT_CODES:
            raise SnapshotError(f"{where}.status_code: expected 301, 302, 303, 307 or 308")
        port = d.get("port")
        return cls(
            scheme=scheme.encode() if scheme else None,
            host=host.encode() if host else None,
            port=None
            if port is None
            else opt_int(d, "port", where, default=0, minimum=1, maximum=65535),
            path=_header_value(path, f"{where}.path") if path else None,
            status=status,
        )

    def location(self, scheme: bytes, host: bytes, target: bytes) -> bytes:
        """The ``Location`` for a request to ``scheme://host target``."""
        out_scheme = self.scheme or scheme
        req_host, req_port = _split_host(host)
        out_host = self.host or req_host
        if self.port is not None:
            port: int | None = self.port
        elif self.scheme is None and self.host is None:
            port = req_port
        else:
            port = None
        if port is not None and port == _DEFAULT_PORTS.get(out_scheme):
            port = None
        path = target
        if self.path is not None:
            q = target.find(b"?")
            keep_query = q >= 0 and b"?" not in self.path
            path = self.path + target[q:] if keep_query else self.path
        if not out_host:
            return path
        authority = out_host if port is None else b"%b:%d" % (out_host, port)
        return b"%b://%b%b" % (out_scheme, authority, path)


def _split_host(host: bytes) -> tuple[bytes, int | None]:
    if host.startswith(b"["):
        end = host.find(b"]")
        name, rest = (host[: end + 1], host[end + 1 :]) if end > 0 else (host, b"")
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        name, _, port = host.partition(b":")
    return name, int(port) if port.isdigit() and len(port) <= 5 else None


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """Send a copy of ``percent`` % of requests to another backend (response discarded)."""

    service_key: str
    subset: Mapping[str, str]
    percent: float
    backend: BackendRef

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> MirrorPolicy:
        """``{"service", "subset", "percent"}`` (percent defaults to 100)."""
        ref = _backend_ref(d, where)
        percent = number(obj(d, where), "percent", where, default=100.0, maximum=100.0)
        return cls(ref.service_key, ref.subset, percent, ref)

    def should_mirror(self, rng: random.Random) -> bool:
        return rng.random() * 100.0 < self.percent


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Injected faults: a delay for ``delay_percent`` % of requests and, drawn independently,
    an abort with ``abort_status`` for ``abort_percent`` % of them."""

    delay: float = 0.0
    delay_percent: float = 0.0
    abort_status: int | None = None
    abort_percent: float = 0.0

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> FaultPolicy:
        """``{"delay_ms", "delay_percent", "abort_status", "abort_percent"}``, parts optional."""
        d = obj(d, where)
        status = d.get("abort_status")
        if status is not None:
            status = opt_int(d, "abort_status", where, default=0, minimum=200, maximum=599)
        return cls(
            delay=opt_int(d, "delay_ms", where, default=0) / 1000.0,
            delay_percent=number(d, "delay_percent", where, default=100.0, maximum=100.0),
            abort_status=status,
            abort_percent=number(d, "abort_percent", where, default=100.0, maximum=100.0),
        )

    def decide(self, rng: random.Random) -> tuple[float, int | None]:
        """(seconds to delay, status to abort with or None) for one request."""
        delay = 0.0
        if self.delay > 0.0 and rng.random() * 100.0 < self.delay_percent:
            delay = self.delay
        abort = None
        if self.abort_status is not None and rng.random() * 100.0 < self.abort_percent:
            abort = self.abort_status
        return delay, abort


class RouteFilters:
    """What a rule does to a request besides choosing a backend.

    - Header edits (``request_headers``/``response_headers``): see ``HeaderEdits``; without
      edits the same list comes back.
    - Path rewrite (``rewrite_path``), the query string kept: ``ReplaceFullPath`` replaces the
      whole path; ``ReplacePrefixMatch`` replaces the prefix the request matched (the
      ``Prefix`` of the rule's match that selected it, trailing ``/`` ignored on both sides:
      ``/foo`` → ``/xyz`` makes ``/foo/bar`` ``/xyz/bar``, ``/foo/`` ``/xyz/``, and with
      replacement ``/`` ``/foo/bar`` becomes ``/bar`` and ``/foo`` ``/``). An ``Exact`` match's
      whole path counts as the prefix; a rule matched otherwise (regex, no path) prepends.
    - Redirect (``redirect_response``): the full response bytes (no body, no
      ``x-gossamer-error``: it is configured behaviour, not an error).
    - ``mirror`` and ``fault``: decisions drawn from the caller's RNG.
    """

    __slots__ = ("_request", "_response", "_rewrite_full", "_rewrite_value", "fault", "mirror",
                 "redirect")  # fmt: skip

    def __init__(
        self,
        request: HeaderEdits | None = None,
        response: HeaderEdits | None = None,
        rewrite: tuple[str, bytes] | None = None,
        redirect: Redirect | None = None,
        mirror: MirrorPolicy | None = None,
        fault: FaultPolicy | None = None,
    ) -> None:
        self._request = request
        self._response = response
        self._rewrite_full: bool | None = None
        self._rewrite_value = b""
        if rewrite is not None:
            kind, value = rewrite
            self._rewrite_full = kind == "ReplaceFullPath"
            self._rewrite_value = value if self._rewrite_full else value.rstrip(b"/")
        self.redirect = redirect
        self.mirror = mirror
        self.fault = fault

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> RouteFilters:
        d = obj(d, where)
        request = response = rewrite = None
        if (raw := opt_obj(d, "request_headers", where)) is not None:
            request = HeaderEdits.from_snapshot(raw, f"{where}.request_headers")
        if (raw := opt_obj(d, "response_headers", where)) is not None:
            response = HeaderEdits.from_snapshot(raw, f"{where}.response_headers")
        if (raw := opt_obj(d, "rewrite", where)) is not None:
            kind = raw.get("type")
            if kind not in ("ReplaceFullPath", "ReplacePrefixMatch"):
                raise SnapshotError(
                    f"{where}.rewrite.type: expected ReplaceFullPath or ReplacePrefixMatch,"
                    f" got {kind!r}"
                )
            value = raw.get("value")
            if not isinstance(value, str) or (value and not value.startswith("/")):
                raise SnapshotError(f"{where}.rewrite.value: expected a path, got {value!r}")
            if kind == "ReplaceFullPath" and not value:
                raise SnapshotError(f"{where}.rewrite.value: ReplaceFullPath needs a path")
            rewrite = (kind, _header_value(value, f"{where}.rewrite.value"))
        redirect = mirror = fault = None
        if (raw := opt_obj(d, "redirect", where)) is not None:
            redirect = Redirect.from_snapshot(raw, f"{where}.redirect")
        if (raw := opt_obj(d, "mirror", where)) is not None:
            mirror = MirrorPolicy.from_snapshot(raw, f"{where}.mirror")
        if (raw := opt_obj(d, "fault", where)) is not None:
            fault = FaultPolicy.from_snapshot(raw, f"{where}.fault")
        return cls(request, response, rewrite, redirect, mirror, fault)

    @property
    def rewrites(self) -> bool:
        return self._rewrite_full is not None

    @property
    def edits_request(self) -> bool:
        return self._request is not None

    @property
    def edits_response(self) -> bool:
        return self._response is not None

    def rewrite_path(self, path: bytes, rule: HttpRule | None = None) -> bytes:
        """The request target (path and query) after the rule's rewrite, if any."""
        full = self._rewrite_full
        if full is None:
            return path
        q = path.find(b"?")
        bare, query = (path, b"") if q < 0 else (path[:q], path[q:])
        if full:
            return self._rewrite_value + query
        prefix = rule.matched_prefix if rule is not None else b""
        rest = bare[len(prefix) :] if prefix and bare.startswith(prefix) else bare
        new = self._rewrite_value + rest
        if not new.startswith(b"/"):
            new = b"/" + new
        return new + query

    def request_headers(self, headers: list[Header]) -> list[Header]:
        edits = self._request
        return headers if edits is None else edits.apply(headers)

    def response_headers(self, headers: list[Header]) -> list[Header]:
        edits = self._response
        return headers if edits is None else edits.apply(headers)

    def redirect_response(
        self, scheme: bytes, host: bytes, path: bytes, *, request_id: bytes | None = None
    ) -> bytes | None:
        """The full HTTP/1.1 redirect for a request to ``scheme://host path``, or None."""
        redirect = self.redirect
        if redirect is None:
            return None
        location = redirect.location(scheme, host, path)
        return redirect_response(redirect.status, location, request_id)


NO_FILTERS = RouteFilters()


# --- rules and matching -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class HttpRule:
    """One compiled rule. ``match`` may return a per-match copy of a rule that differs only in
    ``matched_prefix`` (what ``ReplacePrefixMatch`` replaces); ``name`` is shared."""

    name: str
    backends: WeightedBackends
    filters: RouteFilters = NO_FILTERS
    timeout: float | None = None
    retry: RetryPolicy | None = None
    matched_prefix: bytes = b""

    def pick_backend(self, rng: random.Random) -> BackendRef:
        return self.backends.pick(rng)


class _Match:
    """One precompiled match: every condition must hold."""

    __slots__ = ("headers", "method", "path", "path_kind", "path_re", "query")

    def __init__(self) -> None:
        self.method: bytes | None = None
        self.path_kind = _NO_PATH
        self.path = b""
        self.path_re: re.Pattern[bytes] | None = None
        self.headers: tuple[tuple[bytes, int, bytes, re.Pattern[bytes] | None], ...] = ()
        self.query: tuple[tuple[str, int, str, re.Pattern[str] | None], ...] = ()

    @property
    def rewrite_prefix(self) -> bytes:
        return self.path if self.path_kind in (_EXACT, _PREFIX) else b""

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> _Match:
        d = obj(d, where)
        m = cls()
        if (path := opt_obj(d, "path", where)) is not None:
            pwhere = f"{where}.path"
            kind = path.get("type", "Prefix")
            if kind not in _PATH_KINDS:
                raise SnapshotError(f"{pwhere}.type: expected one of {sorted(_PATH_KINDS)}")
            value = string(path, "value", pwhere)
            raw = _header_value(value, f"{pwhere}.value")
            m.path_kind = _PATH_KINDS[kind]
            if m.path_kind == _REGEX:
                m.path_re = _compile(raw, f"{pwhere}.value")
            elif not raw.startswith(b"/"):
                raise SnapshotError(f"{pwhere}.value: must start with /: {value!r}")
            elif m.path_kind == _PREFIX:
                raw = raw.rstrip(b"/")
                if not raw:
                    m.path_kind = _NO_PATH  # prefix "/" matches every path
            m.path = raw
        if (method := d.get("method")) is not None:
            if not isinstance(method, str) or not _TOKEN.fullmatch(method):
                raise SnapshotError(f"{where}.method: not an HTTP method: {method!r}")
            m.method = method.upper().encode("ascii")
        m.headers = tuple(_header_match(h, f"{where}.headers[{i}]")
                          for i, h in enumerate(_list(d, "headers", where)))  # fmt: skip
        m.query = tuple(_query_match(q, f"{where}.query[{i}]")
                        for i, q in enumerate(_list(d, "query", where)))  # fmt: skip
        return m


def _list(d: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = d.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SnapshotError(f"{where}.{name}: expected a list, got {value!r}")
    return value


def _compile(pattern: bytes, where: str) -> re.Pattern[bytes]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SnapshotError(f"{where}: bad regular expression: {exc}") from None


def _header_match(d: Any, where: str) -> tuple[bytes, int, bytes, re.Pattern[bytes] | None]:
    d = obj(d, where)
    name = _header_name(string(d, "name", where), f"{where}.name")
    kind = _HEADER_KINDS.get(d.get("type", "Exact"), -1)
    if kind < 0:
        raise SnapshotError(f"{where}.type: expected one of {sorted(_HEADER_KINDS)}")
    if kind == _H_PRESENT:
        return name, kind, b"", None
    value = d.get("value")
    if not isinstance(value, str):
        raise SnapshotError(f"{where}.value: expected a string, got {value!r}")
    raw = _header_value(value, f"{where}.value")
    return name, kind, raw, _compile(raw, f"{where}.value") if kind == _H_REGEX else None


def _query_match(d: Any, where: str) -> tuple[str, int, str, re.Pattern[str] | None]:
    d = obj(d, where)
    name = string(d, "name", where)
    kind = _QUERY_KINDS.get(d.get("type", "Exact"), -1)
    if kind < 0:
        raise SnapshotError(f"{where}.type: expected one of {sorted(_QUERY_KINDS)}")
    if kind == _H_PRESENT:
        return name, kind, "", None
    value = d.get("value")
    if not isinstance(value, str):
        raise SnapshotError(f"{where}.value: expected a string, got {value!r}")
    if kind != _H_REGEX:
        return name, kind, value, None
    try:
        return name, kind, value, re.compile(value)
    except re.error as exc:
        raise SnapshotError(f"{where}.value: bad regular expression: {exc}") from None


def _index_headers(headers: Sequence[Header]) -> dict[bytes, list[bytes]]:
    index: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        index.setdefault(name.lower(), []).append(value)
    return index


def _decode(part: bytes) -> str:
    if b"%" in part:
        part = unquote_to_bytes(part)
    return part.decode("utf-8", "replace")


def _index_query(query: bytes) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for pair in query.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            index.setdefault(_decode(name), []).append(_decode(value))
    return index


def _values_match(
    values: list[Any] | None, kind: int, value: Any, pattern: re.Pattern[Any] | None
) -> bool:
    if values is None:
        return False
    if kind == _H_PRESENT:
        return True
    if kind == _H_EXACT:
        return value in values
    if kind == _H_PREFIX:
        return any(v.startswith(value) for v in values)
    assert pattern is not None
    return any(pattern.fullmatch(v) is not None for v in values)


class HttpRouter:
    """The compiled ``http_routes`` of one service; ``match`` finds a request's rule."""

    __slots__ = ("_entries", "rules", "uses_headers")

    def __init__(self, entries: Sequence[tuple[_Match, HttpRule]], rules: Sequence[HttpRule]):
        self._entries = tuple(entries)
        self.rules = tuple(rules)
        self.uses_headers = any(m.headers for m, _rule in self._entries)

    @classmethod
    def from_snapshot(
        cls, rules: Any, where: str, *, default_service: str | None = None
    ) -> HttpRouter:
        """Compile a service's ``http_routes`` list (None gives an empty router).
        ``default_service`` stands in for a rule without backends."""
        if rules is None:
            return cls((), ())
        if not isinstance(rules, list):
            raise SnapshotError(f"{where}: expected a list, got {rules!r}")
        entries: list[tuple[_Match, HttpRule]] = []
        compiled: list[HttpRule] = []
        for i, raw in enumerate(rules):
            rwhere = f"{where}[{i}]"
            raw = obj(raw, rwhere)
            retry = raw.get("retry")
            filters = raw.get("filters")
            rule = HttpRule(
                name=string(raw, "name", rwhere, default=str(i)),
                backends=WeightedBackends.from_snapshot(
                    raw.get("backends"), f"{rwhere}.backends", default_service
                ),
                filters=(
                    NO_FILTERS
                    if filters is None
                    else RouteFilters.from_snapshot(filters, f"{rwhere}.filters")
                ),
                timeout=opt_duration(raw, "timeout_ms", rwhere),
                retry=None
                if retry is None
                else RetryPolicy.from_snapshot(retry, f"{rwhere}.retry"),
            )
            matches = [
                _Match.from_snapshot(m, f"{rwhere}.matches[{j}]")
                for j, m in enumerate(_list(raw, "matches", rwhere))
            ] or [_Match()]
            rule = replace(rule, matched_prefix=matches[0].rewrite_prefix)
            compiled.append(rule)
            for m in matches:
                view = rule
                if m.rewrite_prefix != rule.matched_prefix:
                    view = replace(rule, matched_prefix=m.rewrite_prefix)
                entries.append((m, view))
        return cls(entries, compiled)

    def match(self, method: bytes, target: bytes, headers: Sequence[Header]) -> HttpRule | None:
        """The first rule matching the request, or None (the service's default backend)."""
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        hindex: dict[bytes, list[bytes]] | None = None
        qindex: dict[str, list[str]] | None = None
        for m, rule in self._entries:
            if m.method is not None and m.method != method:
                continue
            kind = m.path_kind
            if kind == _PREFIX:
                prefix = m.path
                if not path.startswith(prefix) or (
                    len(path) != len(prefix) and path[len(prefix)] != 0x2F
                ):
                    continue
            elif kind == _EXACT:
                if path != m.path:
                    continue
            elif kind == _REGEX:
                assert m.path_re is not None
                if m.path_re.fullmatch(path) is None:
                    continue
            if m.headers:
                if hindex is None:
                    hindex = _index_headers(headers)
                if not all(_values_match(hindex.get(name), k, v, p) for name, k, v, p in m.headers):
                    continue
            if m.query:
                if qindex is None:
                    qindex = _index_query(target[q + 1 :] if q >= 0 else b"")
                if not all(_values_match(qindex.get(name), k, v, p) for name, k, v, p in m.query):
                    continue
            return rule
        return None


# --- TCP ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """Weighted backends for new TCP connections; on a route change, existing connections are
    closed ``drain`` seconds later (0: at once; None, when ``drain_ms`` is absent or null: they
    are left to close on their own)."""

    backends: WeightedBackends
    drain: float | None = None

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> TcpRoute:
        """``{"backends": [...], "drain_ms": 30000}``."""
        d = obj(d, where)
        drain_ms = d.get("drain_ms")
        return cls(
            WeightedBackends.from_snapshot(d.get("backends"), f"{where}.backends"),
            None if drain_ms is None else opt_int(d, "drain_ms", where, default=0) / 1000.0,
        )

    def pick_backend(self, rng: random.Random) -> BackendRef:
        return self.backends.pick(rng)
