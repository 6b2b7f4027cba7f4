"""Users' filters (``gossamer.filters``) in the pipeline's ``filter`` slot.

``compile_filters`` turns a direction's ``filters`` list of the snapshot into ``Stage``
objects: it loads each named filter from the sidecar's own environment (``module:attribute``
or an entry point of the ``gossamer.filters`` group), makes it with its ``FilterContext``,
and wraps it in a ``UserFilter``. A filter that cannot be loaded or made refuses the whole
snapshot (``SnapshotError`` naming the entry: the sidecar NACKs and keeps its last good
config), unless it is optional (``failure: allow``): then it is left out, logged and counted
(``gossamer_filter_failures_total{phase="load"}``). A filter made for one config is kept while
a later snapshot names it with the same config, so what it holds (caches, counters) survives
unrelated config changes.

Per request, ``UserFilter`` builds the filter's ``Request`` view from the ``Call``, calls the
filter, and writes header and path edits back through the Call, so the same filter runs
unchanged on HTTP/1.1, HTTP/2 and gRPC. What the filter raises is contained here: ``Reject``
answers the request (``x-gossamer-error: filter-rejected``); anything else answers 500
``filter-failed`` (or passes the request on under ``failure: allow``), logs the traceback and
counts ``gossamer_filter_failures_total``. The caller never sees exception text.
"""

from __future__ import annotations

import importlib
import json
import logging
import site
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gossamer.filters import FilterContext, Headers, Reject, Request, Response
from gossamer.proxy.pipeline.slots import Stage, Stages
from gossamer.proxy.snapshot.errors import SnapshotError

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import Metrics
    from gossamer.proxy.pipeline.call import Call, Header

__all__ = ["ENTRY_POINT_GROUP", "UserFilter", "compile_filters"]

log = logging.getLogger("gossamer.proxy.filters")

ENTRY_POINT_GROUP = "gossamer.filters"
PROTECTED = frozenset({b"x-gossamer-peer-identity"})  # the caller's identity is the sidecar's
# Filters made for the current config, by (direction, name, reference, config as JSON).
_made: dict[tuple[str, str, str, str], UserFilter] = {}


class UserFilter(Stage):
    """One user's filter in the ``filter`` slot."""

    slot = "filter"

    def __init__(self, name: str, impl: Any, direction: str, metrics: Metrics) -> None:
        self.name = name
        self.impl = impl
        self.direction = direction
        self.fail_open = False  # failure: allow (set from each snapshot's entry)
        self.metrics = metrics
        # The filter's methods, looked up once: a filter pays only for those it defines.
        self._on_request = _method(impl, "on_request")
        self._on_response = _method(impl, "on_response")
        self._on_complete = _method(impl, "on_complete")
        self.sees_responses = self._on_response is not None
        self.sees_completions = self._on_complete is not None

    def on_request(self, call: Call) -> bool:
        handler = self._on_request
        if handler is None:
            return True
        request = self._view(call)
        original_path = request.path
        try:
            handler(request)
        except Reject as answer:
            extra = tuple(
                (k.lower().encode(), v.encode("latin-1")) for k, v in answer.headers.items()
            )
            call.fail(answer.status, "filter-rejected", f"{self.name}: {answer.message}", extra)
            return False
        except Exception as exc:
            if not self._failed("request", exc):
                call.fail(500, "filter-failed", f"filter {self.name} failed ({type(exc).__name__})")
                return False
            return True
        if request.headers.changed:
            call.set_header_list(request.headers.pairs())
        if request.path != original_path:
            call.set_path(request.path.encode("latin-1"))
        return True

    def on_response(self, call: Call, status: int, headers: list[Header]) -> list[Header]:
        handler = self._on_response
        assert handler is not None  # only called when it sees responses
        response = Response(status, Headers(headers))
        try:
            handler(self._view(call), response)
        except Exception as exc:  # the head goes out as it came: too late to answer otherwise
            self._failed("response", exc)
            return headers
        return response.headers.pairs()

    def on_complete(self, call: Call) -> None:
        handler = self._on_complete
        assert handler is not None  # only called when it sees completions
        try:
            handler(self._view(call), call.status)
        except Exception as exc:
            self._failed("complete", exc)

    def _view(self, call: Call) -> Request:
        """The filter's Request for ``call``, made once per call and filter."""
        notes = call.notes
        if notes is None:
            notes = call.notes = {}
        view = notes.get(self)
        if isinstance(view, Request):
            return view
        peer = call.peer
        view = Request(
            method=call.method.decode("latin-1"),
            scheme=call.scheme.decode("latin-1"),
            authority=call.authority.decode("latin-1"),
            path=call.path.decode("latin-1"),
            headers=Headers(call.header_list(), PROTECTED),
            protocol=call.protocol,
            grpc=call.grpc,
            direction=self.direction,
            peer_identity=peer.decode("latin-1") if peer else None,
            request_id=call.request_id.decode("latin-1"),
        )
        notes[self] = view
        return view

    def _failed(self, phase: str, exc: Exception) -> bool:
        """Log and count a filter's exception; True when the request goes on (fail open)."""
        log.error("filter %s failed in %s: %r", self.name, phase, exc, exc_info=exc)
        self.metrics.filter_failed(self.name, phase)
        return self.fail_open


def _method(impl: Any, name: str) -> Callable[..., Any] | None:
    method = getattr(impl, name, None)
    return method if callable(method) else None


def compile_filters(
    raw: object, where: str, direction: str, *, metrics: Metrics, service: str, namespace: str
) -> Stages | None:
    """The ``filters`` list of one direction as stages (None when there are none)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    stages: list[Stage] = []
    made: dict[tuple[str, str, str, str], UserFilter] = {}
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise SnapshotError(f"{at}: expected an object")
        name, ref, config = entry.get("name"), entry.get("filter"), entry.get("config", {})
        failure = entry.get("failure", "reject")
        if not isinstance(name, str) or not name:
            raise SnapshotError(f"{at}.name: expected a string")
        if not isinstance(ref, str) or not ref:
            raise SnapshotError(f"{at}.filter: expected a string")
        if not isinstance(config, Mapping):
            raise SnapshotError(f"{at}.config: expected an object")
        if failure not in ("reject", "allow"):
            raise SnapshotError(f"{at}.failure: expected reject or allow, got {failure!r}")
        key = (direction, name, ref, json.dumps(config, sort_keys=True))
        stage = _made.get(key)
        if stage is None:
            try:
                impl = _make(ref, name, config, direction, metrics, service, namespace, at)
            except SnapshotError as exc:
                if failure != "allow":
                    raise
                # An optional filter (failure: allow) that cannot run is left out, not fatal.
                log.error("leaving out filter %s: %s", name, exc)
                metrics.filter_failed(name, "load")
                continue
            stage = UserFilter(name, impl, direction, metrics)
        stage.fail_open = failure == "allow"
        made[key] = stage
        stages.append(stage)
    for old in [k for k in _made if k[0] == direction]:
        del _made[old]
    _made.update(made)
    return Stages(stages) if stages else None


def _make(
    ref: str,
    name: str,
    config: Mapping[str, Any],
    direction: str,
    metrics: Metrics,
    service: str,
    namespace: str,
    where: str,
) -> Any:
    factory = load_filter(ref, where)
    context = FilterContext(
        name=name,
        config=config,
        service=service,
        namespace=namespace,
        direction=direction,
        counter=lambda event, n: metrics.filter_event(name, event, n),
    )
    try:
        impl = factory(context)
    except Exception as exc:
        log.error("filter %s (%s) could not be made: %r", name, ref, exc, exc_info=exc)
        raise SnapshotError(f"{where}.filter: {ref} could not be made: {exc!r}") from None
    if not any(_method(impl, m) for m in ("on_request", "on_response", "on_complete")):
        raise SnapshotError(
            f"{where}.filter: {ref} made an object with none of on_request, on_response, "
            "on_complete"
        )
    return impl


def load_filter(ref: str, where: str = "filter") -> Callable[[FilterContext], Any]:
    """The object ``ref`` names: ``module:attribute`` (importable in this environment) or an
    entry point of the ``gossamer.filters`` group."""
    try:
        try:
            target = _resolve(ref)
        except (ImportError, LookupError):
            # Installed after this sidecar started? Pick up new paths (.pth files of an
            # editable install) and directory contents, then look once more.
            _refresh_paths()
            target = _resolve(ref)
    except Exception as exc:
        raise SnapshotError(
            f"{where}.filter: cannot load {ref!r} in this sidecar's environment: {exc!r}"
        ) from None
    if not callable(target):
        raise SnapshotError(f"{where}.filter: {ref!r} is not callable")
    return target  # type: ignore[no-any-return]


def _resolve(ref: str) -> Any:
    if ":" in ref:
        module_name, _, attribute = ref.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target
    from importlib import metadata  # only here: it pulls in email, zipfile, csv (~2 MiB)

    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=ref)
    if not found:
        raise LookupError(f"no entry point {ref!r} in group {ENTRY_POINT_GROUP!r}")
    return next(iter(found)).load()


def _refresh_paths() -> None:
    for entry in list(sys.path):
        if entry.endswith(("site-packages", "dist-packages")):
            site.addsitedir(entry)  # runs .pth files added since start-up; known paths stay
    importlib.invalidate_caches()
