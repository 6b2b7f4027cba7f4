"""Filters of an HTTPRoute rule: header edits, path rewrite, redirect, mirror, fault injection.

Each model checks its own fields; :meth:`Filters.problems` checks what spans fields (a redirect
excludes mirror and rewrite, a prefix rewrite needs prefix matches, header edits must not
contradict each other or touch message framing). :meth:`Filters.to_snapshot` gives the snapshot
form of docs/internals.md §8.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from gossamer.config.base import LabelMap, SpecModel
from gossamer.config.duration import duration_ms
from gossamer.config.traffic import (
    HeaderName,
    HeaderValue,
    Percent,
    PositiveDuration,
    ServiceRef,
    duplicates,
    qualified_name,
)
from gossamer.snapshot_schema import FaultSnapshot, FiltersSnapshot, HeaderEditsSnapshot

__all__ = [
    "FRAMING_HEADERS",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "Filters",
    "HeaderFilter",
    "Mirror",
    "PathRewrite",
    "Redirect",
    "Rewrite",
]

# Headers that frame the message or the connection: editing them would corrupt the exchange.
FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
     "trailer", "proxy-connection"}
)  # fmt: skip
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_URL_PATH = re.compile(r"^/[^\s\x00-\x1f\x7f]*$")


def _check_host(value: str) -> str:
    if not _HOST.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name")
    return value


def _check_url_path(value: str) -> str:
    if not _URL_PATH.fullmatch(value):
        raise ValueError(f"a path must start with '/' and contain no spaces (got {value!r})")
    return value


UrlPath = Annotated[str, Field(max_length=4096), AfterValidator(_check_url_path)]


class HeaderFilter(SpecModel):
    """``set`` replaces, ``add`` appends, ``remove`` drops headers (names case-insensitive)."""

    set: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    add: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)

    def problems(self, path: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        seen: dict[str, str] = {}  # lowercase name -> the part that named it first
        for part, names in (("set", list(self.set)), ("add", list(self.add)),
                            ("remove", self.remove)):  # fmt: skip

            def where(index: int, part: str = part, names: list[str] = names) -> str:
                if part == "remove":
                    return f"{path}.remove[{index}]"
                return f"{path}.{part}.{names[index]}"

            lowered = [name.lower() for name in names]
            for index, name in enumerate(names):
                if lowered[index] in FRAMING_HEADERS:
                    out.append((where(index), f"{name!r} frames the message and cannot be edited"))
                elif lowered[index] in seen:
                    out.append((where(index), f"{name!r} is also in {seen[lowered[index]]}"))
            for index, first in duplicates(lowered):
                out.append((where(index), f"{names[index]!r} repeats {names[first]!r}"))
            for name in lowered:
                seen.setdefault(name, part)
        return out

    def to_snapshot(self) -> HeaderEditsSnapshot:
        return {
            "set": {name.lower(): value for name, value in self.set.items()},
            "add": {name.lower(): value for name, value in self.add.items()},
            "remove": [name.lower() for name in self.remove],
        }


class PathRewrite(SpecModel):
    """Replace the whole path, or the part the rule's Prefix match matched."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    value: UrlPath


class Rewrite(SpecModel):
    """``rewrite``: what to change in the request before forwarding it."""

    path: PathRewrite


class Redirect(SpecModel):
    """Answer with a redirect to the request URL with these parts replaced."""

    scheme: Literal["http", "https"] | None = None
    host: Annotated[str, AfterValidator(_check_host)] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    path: UrlPath | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class Mirror(SpecModel):
    """Send a copy of ``percent`` of the requests to another backend; its answer is discarded."""

    service: ServiceRef
    subset: LabelMap = Field(default_factory=dict)
    percent: Percent = 100.0


class FaultDelay(SpecModel):
    """Hold ``percent`` of the requests for ``fixedDelay`` before forwarding them."""

    fixed_delay: PositiveDuration
    percent: Percent = 100.0


class FaultAbort(SpecModel):
    """Answer ``percent`` of the requests with ``status`` instead of forwarding them."""

    status: int = Field(ge=200, le=599)
    percent: Percent = 100.0


class Fault(SpecModel):
    """Fault injection: a delay, an abort, or both."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    def to_snapshot(self) -> FaultSnapshot:
        delay, abort = self.delay, self.abort
        return {
            "delay_ms": duration_ms(delay.fixed_delay) if delay is not None else 0,
            "delay_percent": delay.percent if delay is not None else 0.0,
            "abort_status": abort.status if abort is not None else None,
            "abort_percent": abort.percent if abort is not None else 0.0,
        }


class Filters(SpecModel):
    """``filters`` of a rule; every one is optional."""

    request_headers: HeaderFilter = Field(default_factory=HeaderFilter)
    response_headers: HeaderFilter = Field(default_factory=HeaderFilter)
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    mirror: Mirror | None = None
    fault: Fault | None = None

    def problems(self, path: str, matches: Sequence[Any]) -> list[tuple[str, str]]:
        """Cross-field problems; ``matches`` are the rule's matches (with ``.path``)."""
        out = self.request_headers.problems(f"{path}.requestHeaders")
        out += self.response_headers.problems(f"{path}.responseHeaders")
        rewrite = self.rewrite
        if (
            rewrite is not None
            and rewrite.path.type == "ReplacePrefixMatch"
            and (not matches or any(m.path is None or m.path.type != "Prefix" for m in matches))
        ):
            out.append(
                (
                    f"{path}.rewrite.path.type",
                    "ReplacePrefixMatch needs every match of the rule to have a Prefix path",
                )
            )
        redirect = self.redirect
        if redirect is not None:
            if not any((redirect.scheme, redirect.host, redirect.port, redirect.path)):
                out.append(
                    (f"{path}.redirect", "a redirect must change the scheme, host, port or path")
                )
            if self.mirror is not None:
                out.append((f"{path}.mirror", "a rule with a redirect forwards nothing to mirror"))
            if rewrite is not None:
                out.append((f"{path}.rewrite", "a rule with a redirect has nothing to rewrite"))
        if self.fault is not None and self.fault.delay is None and self.fault.abort is None:
            out.append((f"{path}.fault", "a fault needs a delay, an abort or both"))
        return out

    def to_snapshot(self, namespace: str) -> FiltersSnapshot:
        """Snapshot form; service names relative to ``namespace`` become ``name.namespace``."""
        rewrite, redirect, mirror = self.rewrite, self.redirect, self.mirror
        return {
            "request_headers": self.request_headers.to_snapshot(),
            "response_headers": self.response_headers.to_snapshot(),
            "rewrite": (
                {"type": rewrite.path.type, "value": rewrite.path.value}
                if rewrite is not None
                else None
            ),
            "redirect": (
                {
                    "scheme": redirect.scheme,
                    "host": redirect.host,
                    "port": redirect.port,
                    "path": redirect.path,
                    "status_code": redirect.status_code,
                }
                if redirect is not None
                else None
            ),
            "mirror": (
                {
                    "service": qualified_name(mirror.service, namespace),
                    "subset": dict(mirror.subset),
                    "percent": mirror.percent,
                }
                if mirror is not None
                else None
            ),
            "fault": self.fault.to_snapshot() if self.fault is not None else None,
        }
