"""Retry policy of a route or service: which failures are retried, how often, and how long to wait.

Compiled once per snapshot from the ``retry`` object of docs/internals.md §8 into frozensets,
so the per-response questions are set lookups.

Semantics (following Envoy's retry conditions, which Istio exposes):

- ``attempts`` is the number of *retries* after the first try (as Istio's ``attempts``), so a
  request is tried at most ``attempts + 1`` times (``max_tries``).
- Responses: ``5xx`` retries 500-599; ``gateway-error`` retries 502, 503 and 504;
  ``status_codes`` (the list) are retried whenever the list is non-empty (naming
  ``retriable-status-codes`` in ``on`` is accepted and adds nothing else). gRPC conditions
  (``cancelled`` 1, ``deadline-exceeded`` 4, ``resource-exhausted`` 8, ``internal`` 13,
  ``unavailable`` 14) are checked against the response's ``grpc-status``.
- Causes (no response): ``connect-failed`` is retried under ``connect-failure``, ``reset``,
  ``5xx`` and ``gateway-error``; ``upstream-reset`` and ``upstream-timeout`` (a per-try
  timeout) under ``reset``, ``5xx`` and ``gateway-error``. The overall route timeout is not a
  retry cause: the caller stops there.
- Methods: by default only idempotent ones (GET HEAD OPTIONS PUT DELETE TRACE).
- Backoff before retry number ``attempt`` (0 for the first retry): a uniform draw in
  ``[0, min(max, base * 2**attempt)]`` (exponential backoff with full jitter).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gossamer.proxy.resilience.fields import number, obj, opt_duration, opt_int, str_list
from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["DEFAULT_METHODS", "GRPC_CODES", "RETRY_CONDITIONS", "RetryPolicy"]

DEFAULT_METHODS: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"}
)
GRPC_CODES: Mapping[str, int] = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_STATUS_CONDITIONS: Mapping[str, frozenset[int]] = {
    "5xx": frozenset(range(500, 600)),
    "gateway-error": frozenset({502, 503, 504}),
    "retriable-status-codes": frozenset(),
}
_CAUSE_CONDITIONS: Mapping[str, frozenset[str]] = {
    "5xx": frozenset({"connect-failed", "upstream-reset", "upstream-timeout"}),
    "gateway-error": frozenset({"connect-failed", "upstream-reset", "upstream-timeout"}),
    "reset": frozenset({"connect-failed", "upstream-reset", "upstream-timeout"}),
    "connect-failure": frozenset({"connect-failed"}),
}
RETRY_CONDITIONS: frozenset[str] = frozenset({*_STATUS_CONDITIONS, *_CAUSE_CONDITIONS, *GRPC_CODES})
DEFAULT_ATTEMPTS = 2  # as Istio
DEFAULT_BACKOFF_BASE = 0.025
DEFAULT_MAX_BODY_BYTES = 64 * 1024
_MAX_EXPONENT = 30  # 2**30 * base is beyond any sane cap; avoids huge floats


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A compiled retry policy; see the module docstring for the meaning of each condition."""

    attempts: int
    statuses: frozenset[int]
    grpc_statuses: frozenset[int]
    causes: frozenset[str]
    methods: frozenset[bytes] = DEFAULT_METHODS
    per_try_timeout: float | None = None
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_BASE * 10
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def build(
        cls,
        attempts: int,
        on: Iterable[str],
        *,
        status_codes: Iterable[int] = (),
        methods: Iterable[str] | None = None,
        per_try_timeout: float | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> RetryPolicy:
        """A policy from condition names (raises ``ValueError`` for an unknown one)."""
        statuses: set[int] = set(status_codes)
        grpc: set[int] = set()
        causes: set[str] = set()
        for condition in on:
            if condition not in RETRY_CONDITIONS:
                raise ValueError(f"unknown retry condition {condition!r}")
            statuses |= _STATUS_CONDITIONS.get(condition, frozenset())
            causes |= _CAUSE_CONDITIONS.get(condition, frozenset())
            if condition in GRPC_CODES:
                grpc.add(GRPC_CODES[condition])
        return cls(
            attempts=attempts,
            statuses=frozenset(statuses),
            grpc_statuses=frozenset(grpc),
            causes=frozenset(causes),
            methods=(
                DEFAULT_METHODS
                if methods is None
                else frozenset(m.upper().encode("ascii") for m in methods)
            ),
            per_try_timeout=per_try_timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_base * 10 if backoff_max is None else backoff_max,
            max_body_bytes=max_body_bytes,
        )

    @classmethod
    def from_snapshot(cls, d: Any, where: str) -> RetryPolicy:
        """Compile the snapshot's ``retry`` object; ``SnapshotError`` names a bad field."""
        d = obj(d, where)
        attempts = opt_int(d, "attempts", where, default=DEFAULT_ATTEMPTS, maximum=100)
        on = str_list(d, "on", where)
        for i, condition in enumerate(on):
            if condition not in RETRY_CONDITIONS:
                known = ", ".join(sorted(RETRY_CONDITIONS))
                raise SnapshotError(f"{where}.on[{i}]: unknown condition {condition!r} ({known})")
        codes = d.get("status_codes") or []
        if not isinstance(codes, list):
            raise SnapshotError(f"{where}.status_codes: expected a list, got {codes!r}")
        for i, code in enumerate(codes):
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise SnapshotError(f"{where}.status_codes[{i}]: not an HTTP status: {code!r}")
        methods = str_list(d, "methods", where) if d.get("methods") is not None else None
        for i, method in enumerate(methods or ()):
            if not method.isascii() or not method.isalpha():
                raise SnapshotError(f"{where}.methods[{i}]: not an HTTP method: {method!r}")
        base = number(d, "backoff_base_ms", where, default=DEFAULT_BACKOFF_BASE * 1000) / 1000
        cap = number(d, "backoff_max_ms", where, default=base * 10 * 1000) / 1000
        if cap < base:
            raise SnapshotError(f"{where}.backoff_max_ms: smaller than backoff_base_ms")
        return cls.build(
            attempts,
            on,
            status_codes=codes,
            methods=methods,
            per_try_timeout=opt_duration(d, "per_try_timeout_ms", where),
            backoff_base=base,
            backoff_max=cap,
            max_body_bytes=opt_int(d, "max_body_bytes", where, default=DEFAULT_MAX_BODY_BYTES),
        )

    @property
    def max_tries(self) -> int:
        """The first try plus the retries."""
        return self.attempts + 1

    def allows_method(self, method: bytes) -> bool:
        """Whether requests with this method may be retried at all."""
        return method in self.methods

    def retriable_status(self, status: int, grpc_status: int | None = None) -> bool:
        """Whether a response with this status (and ``grpc-status``, if any) is retried."""
        return status in self.statuses or (
            grpc_status is not None and grpc_status in self.grpc_statuses
        )

    def retriable_cause(self, cause: str) -> bool:
        """Whether a failure without a response (``connect-failed``, ``upstream-reset``,
        ``upstream-timeout`` for a per-try timeout) is retried."""
        return cause in self.causes

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): full jitter."""
        ceiling = self.backoff_base * (1 << min(max(attempt, 0), _MAX_EXPONENT))
        return rng.random() * min(self.backoff_max, ceiling)
