"""Trace context on the wire, sans-IO: W3C Trace Context and B3, read and written.

A request's context is read from the first of these it carries, in this order:

- W3C ``traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`` (flag 01:
  sampled), with ``tracestate`` passed on untouched;
- B3 single ``b3: <trace id>-<span id>[-<sampling>[-<parent span id>]]`` (a trace id of 16 or
  32 hex; sampling ``1``, ``0`` or ``d`` for debug, which samples), or ``b3: 0`` / ``b3: 1``
  alone (a decision without ids);
- B3 multi ``x-b3-traceid``, ``x-b3-spanid``, ``x-b3-sampled`` (``1``/``0``/``true``/
  ``false``), ``x-b3-flags: 1`` (debug).

A malformed header counts as absent (W3C: "the vendor must start a new trace"). A 64-bit B3 trace
id is widened to 128 bits with leading zeros. What the sidecar sends on is always
``traceparent`` (with its own span id as the parent), plus the B3 header(s) the request came
with, rewritten the same way, so apps that speak only B3 keep working.

Sampling is parent-based: a parent's decision is followed; without one, the trace id decides
(``ratio_sampled``): its last 8 bytes as a number below ``ratio * 2**64``, the same answer at
every sidecar that sees the trace.
"""

from __future__ import annotations

import os
from binascii import b2a_hex
from collections import deque

__all__ = [
    "NAMES",
    "TraceContext",
    "Tracing",
    "new_root",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "propagate",
    "ratio_sampled",
    "read_context",
    "trace_headers",
]

Header = tuple[bytes, bytes]

_HEX = frozenset(b"0123456789abcdef")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_B3_MULTI = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
# Every header name this module reads or writes (lower case), and their lengths (a header
# of another length is skipped without lower-casing its name).
NAMES = frozenset((b"traceparent", b"tracestate", b"b3", *_B3_MULTI))
_LENGTHS = frozenset(len(name) for name in NAMES)
_HEX_DASH = b"0123456789abcdef-"  # what a traceparent is made of (deleted: nothing left)
_ODD = frozenset(b"13579bdf")  # the last hex digit of flags with bit 0 (sampled) set
_BATCH = 512  # ids drawn at a time
_pool: deque[bytes] = deque()  # random ids drawn ahead (new_trace_id)
os.register_at_fork(after_in_child=_pool.clear)  # a forked process draws its own


class TraceContext:
    """The context a request arrived with: ids as lower-case hex (trace 32, span 16)."""

    __slots__ = ("b3", "parent_id", "sampled", "trace_id")

    def __init__(
        self, trace_id: bytes, parent_id: bytes, sampled: bool | None, b3: str = ""
    ) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id  # the caller's span (empty: a decision without ids)
        self.sampled = sampled  # None: no decision came with it
        self.b3 = b3  # "", "single" or "multi": the B3 form to send on

    def __repr__(self) -> str:
        return (f"TraceContext({self.trace_id!r}, {self.parent_id!r}, {self.sampled!r}, "
                f"{self.b3!r})")  # fmt: skip


class Tracing:
    """The tracing settings of the moment (from the snapshot's ``tracing``). ``threshold``:
    a trace is sampled when the low 64 bits of its id are below it; ``threshold_hex``: the
    same as a bound for those 16 hex digits compared as bytes (lower-case hex of one width
    orders as the numbers do; ``g`` is above every digit: a ratio of 1 samples all)."""

    __slots__ = ("ratio", "threshold", "threshold_hex")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.threshold = int(ratio * (1 << 64))
        self.threshold_hex = b"%016x" % self.threshold if self.threshold < 1 << 64 else b"g"


def _is_hex(value: bytes, length: int) -> bool:
    return len(value) == length and not (set(value) - _HEX)


def parse_traceparent(value: bytes, b3: str = "") -> TraceContext | None:
    """``version-trace-parent-flags`` (lower-case hex; a later version may add ``-...``)."""
    if len(value) != 55:
        value = value.strip()
        if len(value) < 55 or (len(value) > 55 and value[55] != 45):  # 45: "-"
            return None
    head = value[:55]
    if head[2] != 45 or head[35] != 45 or head[52] != 45 or head.translate(None, _HEX_DASH):
        return None
    version = head[:2]
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    trace, span = head[3:35], head[36:52]
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return TraceContext(trace, span, head[54] in _ODD, b3)


def _b3_trace_id(value: bytes) -> bytes | None:
    if _is_hex(value, 32):
        return value if value != _ZERO_TRACE else None
    if _is_hex(value, 16) and value != _ZERO_SPAN:
        return b"0" * 16 + value
    return None


def _b3_sampling(value: bytes) -> bool | None:
    if value in (b"1", b"d", b"true"):
        return True
    if value in (b"0", b"false"):
        return False
    return None


def _b3_single(value: bytes) -> TraceContext | None:
    parts = value.strip().lower().split(b"-")
    if len(parts) == 1:  # a decision alone: b3: 0 / 1 / d
        sampled = _b3_sampling(parts[0])
        return None if sampled is None else TraceContext(b"", b"", sampled, "single")
    trace = _b3_trace_id(parts[0])
    if trace is None or not _is_hex(parts[1], 16) or parts[1] == _ZERO_SPAN:
        return None
    sampled = _b3_sampling(parts[2]) if len(parts) > 2 else None
    return TraceContext(trace, parts[1], sampled, "single")


def _b3_multi(found: dict[bytes, bytes]) -> TraceContext | None:
    sampled = _b3_sampling(found.get(b"x-b3-sampled", b"").strip().lower())
    if found.get(b"x-b3-flags", b"").strip() == b"1":
        sampled = True
    trace_raw = found.get(b"x-b3-traceid")
    if trace_raw is None:
        return None if sampled is None else TraceContext(b"", b"", sampled, "multi")
    trace = _b3_trace_id(trace_raw.strip().lower())
    span = found.get(b"x-b3-spanid", b"").strip().lower()
    if trace is None or not _is_hex(span, 16) or span == _ZERO_SPAN:
        return None
    return TraceContext(trace, span, sampled, "multi")


def trace_headers(headers: list[Header]) -> dict[bytes, bytes]:
    """The first value of each trace header in ``headers``, by lower-case name."""
    found: dict[bytes, bytes] = {}
    lengths = _LENGTHS
    for name, value in headers:
        if len(name) in lengths and (lower := name.lower()) in NAMES and lower not in found:
            found[lower] = value
    return found


def read_context(found: dict[bytes, bytes]) -> tuple[TraceContext | None, bytes]:
    """The context that the trace headers ``found`` (``trace_headers``) carry (None without a
    valid one), and their ``tracestate``."""
    if not found:
        return None, b""
    state = found.get(b"tracestate", b"")
    parent = found.get(b"traceparent")
    if parent is not None:
        b3 = "" if len(found) == 1 else "single" if b"b3" in found else (
            "multi" if b"x-b3-traceid" in found else "")  # fmt: skip
        context = parse_traceparent(parent, b3)
        if context is not None:
            return context, state
    single = found.get(b"b3")
    if single is not None and (context := _b3_single(single)) is not None:
        return context, state
    return _b3_multi(found), state


def _refill() -> bytes:
    """Draw the next batch of ids (one ``os.urandom`` and one ``b2a_hex``) and take one."""
    digits = b2a_hex(os.urandom(16 * _BATCH))
    ids = [digits[at : at + 32] for at in range(0, 32 * _BATCH, 32)]
    # A zero half would be an invalid span id (2**-64 a draw): such an id is skipped.
    _pool.extend(i for i in ids if i[:16] != _ZERO_SPAN and i[16:] != _ZERO_SPAN)
    return _pool.popleft()


def new_trace_id() -> bytes:
    """A random trace id: 32 lower-case hex digits, from the pool of ids drawn ahead (an id
    costs one ``popleft``, atomic under the GIL: the sidecar's threads share the pool)."""
    try:
        return _pool.popleft()
    except IndexError:
        return _refill()


def new_span_id() -> bytes:
    return new_trace_id()[16:]


def new_root(tracing: Tracing) -> tuple[bytes, bool]:
    """A trace id for a trace that starts here, and the ratio's decision for it (as
    ``ratio_sampled`` would answer for that id, without reading it back)."""
    trace_id = new_trace_id()
    return trace_id, trace_id[16:] < tracing.threshold_hex


def ratio_sampled(trace_id: bytes, tracing: Tracing) -> bool:
    """The decision for a trace that starts here: by its id, the same at every sidecar."""
    return int(trace_id[16:], 16) < tracing.threshold


def propagate(
    headers: list[Header],
    trace_id: bytes,
    span_id: bytes,
    sampled: bool,
    parent: TraceContext | None,
    state: bytes,
) -> list[Header]:
    """``headers`` without any trace header, then ``traceparent`` naming ``span_id`` as the
    parent (and ``tracestate``, and the B3 form the request came with)."""
    lengths = _LENGTHS
    out = [h for h in headers if len(h[0]) not in lengths or h[0].lower() not in NAMES]
    flag = b"01" if sampled else b"00"
    out.append((b"traceparent", b"00-%s-%s-%s" % (trace_id, span_id, flag)))
    if state:
        out.append((b"tracestate", state))
    b3 = parent.b3 if parent is not None else ""
    if b3 == "single":
        out.append((b"b3", b"%s-%s-%s" % (trace_id, span_id, b"1" if sampled else b"0")))
    elif b3 == "multi":
        out += [(b"x-b3-traceid", trace_id), (b"x-b3-spanid", span_id),
                (b"x-b3-sampled", b"1" if sampled else b"0")]  # fmt: skip
        if parent is not None and parent.parent_id:
            out.append((b"x-b3-parentspanid", parent.parent_id))
    return out
