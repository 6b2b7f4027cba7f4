"""Adding up the Prometheus expositions of a multi-process sidecar's workers into one.

Each worker renders its own ``/metrics`` text (``ProxyState.render_metrics``); the supervisor
parses them and sums every sample that has the same name and labels, so a scrape of the
supervisor reads like one big process. Summing is right for every series the sidecar has:
counters and histogram buckets/sums/counts add up, and its gauges count open connections,
which add up too. Working on the text rather than on ``Metrics`` objects keeps this
independent of which families exist (HTTP, gRPC, TCP relay, and whatever comes next).

A point in time (a family named ``*_timestamp_seconds``, such as when the certificates
expire) is not added up: the workers report the same certificates, and the merge keeps the
latest.

Counters must not go backwards when a worker is restarted (a scraper would see a reset of
the whole sidecar). So the supervisor keeps, per worker, the last exposition it scraped, and
when that worker exits it folds the monotonic families (counters, histograms) of it into a
"retired" total that every later scrape adds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Exposition", "Family", "merge", "parse_exposition", "render_exposition"]

_MONOTONIC = frozenset({"counter", "histogram", "summary"})
_POINT_IN_TIME = "_timestamp_seconds"

Number = int | float


@dataclass
class Family:
    """One metric family: its ``# HELP``/``# TYPE`` lines and its samples in order."""

    name: str
    kind: str = "untyped"
    meta: list[str] = field(default_factory=list)
    samples: dict[str, Number] = field(default_factory=dict)  # 'name{labels}' -> value


Exposition = dict[str, Family]  # by family name, in order of first appearance


def _number(text: str) -> Number:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_exposition(text: str) -> Exposition:
    """Parse Prometheus text format 0.0.4 (as the sidecar renders it: no timestamps)."""
    families: Exposition = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.get(parts[2])
                if current is None:
                    current = families[parts[2]] = Family(parts[2])
                if line not in current.meta:
                    current.meta.append(line)
                if parts[1] == "TYPE" and len(parts) == 4:
                    current.kind = parts[3].strip()
            continue
        key, sep, value = line.rpartition(" ")
        if not sep:
            continue
        try:
            number = _number(value)
        except ValueError:
            continue
        name = key.split("{", 1)[0]
        if current is None or not name.startswith(current.name):
            current = families.get(name)
            if current is None:
                current = families[name] = Family(name)
        current.samples[key] = current.samples.get(key, 0) + number
    return families


def merge(parts: Iterable[Exposition], *, monotonic_only: bool = False) -> Exposition:
    """The sum of ``parts`` (families and samples in order of first appearance).

    With ``monotonic_only`` only counters and histograms are kept (what a retired worker
    leaves behind).
    """
    total: Exposition = {}
    for part in parts:
        for name, family in part.items():
            if monotonic_only and family.kind not in _MONOTONIC:
                continue
            into = total.get(name)
            if into is None:
                into = total[name] = Family(name, family.kind)
            for line in family.meta:
                if line not in into.meta:
                    into.meta.append(line)
            if into.kind == "untyped":
                into.kind = family.kind
            samples = into.samples
            latest = name.endswith(_POINT_IN_TIME)
            for key, value in family.samples.items():
                if key not in samples:
                    samples[key] = value
                else:
                    samples[key] = max(samples[key], value) if latest else samples[key] + value
    return total


def _format(value: Number) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def render_exposition(families: Exposition) -> bytes:
    """The Prometheus text of ``families``."""
    out: list[str] = []
    for family in families.values():
        out += family.meta
        out += [f"{key} {_format(value)}" for key, value in family.samples.items()]
    return ("\n".join(out) + "\n").encode() if out else b""
