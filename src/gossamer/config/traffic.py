"""Value types shared by the traffic kinds (HTTPRoute, TrafficPolicy, TCPRoute).

Field types with their checks (durations, sizes, percents, weights, status codes, header names,
methods, regular expressions), service references and their ``name.namespace`` form, and the
retry policy that both HTTPRoute rules and TrafficPolicy carry. Cross-field checks return
``(path, message)`` pairs so the loader can report them with exact paths.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator, WithJsonSchema, model_validator

from gossamer.config.base import SpecModel
from gossamer.config.duration import duration_ms, parse_duration
from gossamer.config.service import ServiceRef
from gossamer.snapshot_schema import RetryCondition, RetrySnapshot

__all__ = [
    "DEFAULT_RETRY_METHODS",
    "DEFAULT_RETRY_ON",
    "Backoff",
    "Duration",
    "HeaderName",
    "HeaderValue",
    "HttpMethod",
    "Percent",
    "PositiveDuration",
    "RetryOn",
    "RetryPolicy",
    "ServiceRef",
    "Size",
    "StatusCode",
    "Weight",
    "check_header_name",
    "duplicates",
    "parse_size",
    "qualified_name",
    "regex_problem",
    "service_key",
]

MAX_BUFFERED_BODY = 64 * 1024 * 1024
_SIZE = re.compile(r"^(\d{1,20})\s*(B|K|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB)?$")
_UNITS = {
    None: 1, "B": 1,
    "K": 1000, "KB": 1000, "Ki": 1024, "KiB": 1024,
    "M": 1000**2, "MB": 1000**2, "Mi": 1024**2, "MiB": 1024**2,
    "G": 1000**3, "GB": 1000**3, "Gi": 1024**3, "GiB": 1024**3,
}  # fmt: skip
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$")
_METHOD = re.compile(r"^[A-Z]{1,32}$")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")


# ----------------------------------------------------------------- field types
def _check_positive_duration(value: str) -> str:
    if parse_duration(value).total_seconds() <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return value


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def parse_size(value: int | str) -> int:
    """A byte count from ``65536``, ``"64KiB"``, ``"1MB"``, ``"2Mi"``; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a size must be a byte count or a string like '64KiB' (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative (got {value})")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"invalid size {value!r}: expected a number with an optional unit "
            "B, KB, KiB, MB, MiB, GB or GiB (like 64KiB)"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def _check_size(value: Any) -> int | str:
    size = parse_size(value)
    if size > MAX_BUFFERED_BODY:
        raise ValueError(f"size {value!r} is larger than the limit of 64MiB")
    return value  # type: ignore[no-any-return]  # checked by parse_size


def check_header_name(value: str) -> str:
    """Accept an HTTP header name (an RFC 9110 token, at most 256 characters)."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def _check_header_value(value: str) -> str:
    if _BAD_VALUE_CHARS.search(value):
        raise ValueError("header values cannot contain CR, LF or NUL")
    return value


def _check_method(value: str) -> str:
    if not _METHOD.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP method in upper case (like GET or POST)")
    return value


PositiveDuration = Annotated[str, AfterValidator(_check_positive_duration)]
Duration = Annotated[str, AfterValidator(_check_duration)]  # zero allowed
Size = Annotated[
    int | str,
    PlainValidator(_check_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]
Percent = Annotated[float, Field(ge=0, le=100)]
Weight = Annotated[int, Field(ge=0, le=10000)]
StatusCode = Annotated[int, Field(ge=100, le=599)]
HeaderName = Annotated[str, AfterValidator(check_header_name)]
HeaderValue = Annotated[str, Field(max_length=8192), AfterValidator(_check_header_value)]
HttpMethod = Annotated[str, AfterValidator(_check_method)]


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable regular expression (text or bytes), or None."""
    try:
        re.compile(pattern)
        re.compile(pattern.encode())
    except re.error as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


def duplicates(values: Sequence[Hashable]) -> list[tuple[int, int]]:
    """``(index, index of the first equal value)`` for every repeated value."""
    first: dict[Hashable, int] = {}
    out: list[tuple[int, int]] = []
    for index, value in enumerate(values):
        if value in first:
            out.append((index, first[value]))
        else:
            first[value] = index
    return out


# ----------------------------------------------------------------- service names
def service_key(ref: str, namespace: str) -> tuple[str, str]:
    """``name`` or ``name.namespace`` (relative to ``namespace``) → ``(namespace, name)``."""
    name, _, ns = ref.partition(".")
    return (ns or namespace, name)


def qualified_name(ref: str, namespace: str) -> str:
    """``name`` or ``name.namespace`` → ``name.namespace`` (the snapshot form)."""
    ns, name = service_key(ref, namespace)
    return f"{name}.{ns}"


# ----------------------------------------------------------------- retries
RetryOn = RetryCondition  # the snapshot schema's list: one spelling of the conditions
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("5xx", "connect-failure", "reset")
DEFAULT_RETRY_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
DEFAULT_BACKOFF_BASE = "25ms"
BACKOFF_MAX_FACTOR = 10


class Backoff(SpecModel):
    """Exponential backoff between tries: ``baseInterval`` doubling up to ``maxInterval``."""

    base_interval: PositiveDuration = DEFAULT_BACKOFF_BASE
    max_interval: PositiveDuration | None = None  # unset: 10 x baseInterval


class RetryPolicy(SpecModel):
    """When and how often a failed request is tried again (HTTPRoute rule or TrafficPolicy)."""

    attempts: int = Field(default=2, ge=1, le=10)
    on: list[RetryOn] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON), min_length=1)
    status_codes: list[StatusCode] = Field(default_factory=list)
    per_try_timeout: PositiveDuration | None = None
    backoff: Backoff = Field(default_factory=Backoff)
    methods: list[HttpMethod] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_METHODS), min_length=1
    )
    max_buffered_body: Size = "64KiB"

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `on:` key as the boolean true (and JSON made from that
        # says "true"); take either as `on` so `retry: {on: [5xx]}` works as written.
        if isinstance(data, dict) and "on" not in data:
            aliases = [k for k in data if k is True or k == "true"]
            if len(aliases) == 1:
                data = {("on" if k is aliases[0] else k): v for k, v in data.items()}
        return data

    def problems(self, path: str, timeout: str | None) -> list[tuple[str, str]]:
        """Cross-field problems under ``path``; ``timeout`` is the enclosing total timeout."""
        out: list[tuple[str, str]] = []
        for field, values in (
            ("on", self.on),
            ("methods", self.methods),
            ("statusCodes", self.status_codes),
        ):
            for index, first in duplicates(values):
                out.append(
                    (f"{path}.{field}[{index}]", f"{values[index]!r} repeats {field}[{first}]")
                )
        if "retriable-status-codes" in self.on and not self.status_codes:
            out.append(
                (f"{path}.statusCodes", "'retriable-status-codes' in 'on' needs statusCodes")
            )
        if self.status_codes and "retriable-status-codes" not in self.on:
            out.append(
                (
                    f"{path}.statusCodes",
                    "statusCodes are only retried with 'retriable-status-codes' in 'on'",
                )
            )
        if (
            self.per_try_timeout is not None
            and timeout is not None
            and parse_duration(self.per_try_timeout) > parse_duration(timeout)
        ):
            out.append(
                (
                    f"{path}.perTryTimeout",
                    f"perTryTimeout {self.per_try_timeout} is longer than the timeout {timeout} "
                    "of the whole request",
                )
            )
        backoff = self.backoff
        if backoff.max_interval is not None and parse_duration(
            backoff.max_interval
        ) < parse_duration(backoff.base_interval):
            out.append(
                (
                    f"{path}.backoff.maxInterval",
                    f"maxInterval {backoff.max_interval} is shorter than baseInterval "
                    f"{backoff.base_interval}",
                )
            )
        return out

    def to_snapshot(self) -> RetrySnapshot:
        """The snapshot form (docs/internals.md §8): durations in ms, size in bytes."""
        base = duration_ms(self.backoff.base_interval)
        maximum = self.backoff.max_interval
        return {
            "attempts": self.attempts,
            "on": list(self.on),
            "status_codes": list(self.status_codes),
            "per_try_timeout_ms": (
                duration_ms(self.per_try_timeout) if self.per_try_timeout is not None else None
            ),
            "backoff_base_ms": base,
            "backoff_max_ms": (
                duration_ms(maximum) if maximum is not None else base * BACKOFF_MAX_FACTOR
            ),
            "methods": list(self.methods),
            "max_body_bytes": parse_size(self.max_buffered_body),
        }
