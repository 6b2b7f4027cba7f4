"""The ``MeshConfig`` kind: mesh-wide settings (mTLS mode, certificate lifetime, tracing, audit,
access logs).

There is exactly one, named ``default``. It is cluster-wide: whatever namespace a document
names, it is stored in namespace ``default`` (so ``GET /v1/resources/meshconfig/default/default``).
"""

from __future__ import annotations

import string
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from gossamer.config.base import Resource, SpecModel
from gossamer.config.duration import parse_duration
from gossamer.config.traffic import HeaderName, HeaderValue, parse_size
from gossamer.snapshot_schema import ACCESS_LOG_FIELDS

__all__ = [
    "DEFAULT_ACCESS_LOG_TEMPLATE",
    "MAX_CERT_LIFETIME",
    "MIN_CERT_LIFETIME",
    "AccessLogSettings",
    "AuditSettings",
    "CertificateSettings",
    "MeshConfig",
    "MeshConfigSpec",
    "MtlsMode",
    "MtlsSettings",
    "TracingSettings",
]

MtlsMode = Literal["STRICT", "PERMISSIVE"]
MIN_CERT_LIFETIME = timedelta(seconds=10)
MAX_CERT_LIFETIME = timedelta(days=90)
MESH_CONFIG_NAME = "default"
MESH_CONFIG_NAMESPACE = "default"


def _check_lifetime(value: str) -> str:
    lifetime = parse_duration(value)
    if not MIN_CERT_LIFETIME <= lifetime <= MAX_CERT_LIFETIME:
        raise ValueError(f"certificate lifetime {value!r} must be between 10s and 90d")
    return value


CertLifetime = Annotated[str, AfterValidator(_check_lifetime)]


class MtlsSettings(SpecModel):
    """``spec.mtls``: STRICT refuses plaintext on inbound; PERMISSIVE accepts both."""

    mode: MtlsMode = "STRICT"


class CertificateSettings(SpecModel):
    """``spec.certificates``: lifetime of workload certificates (unset: control plane default)."""

    lifetime: CertLifetime | None = None


class OutboundTrafficPolicy(SpecModel):
    """``spec.outboundTrafficPolicy``: which hosts outside the mesh its workloads may call
    (``gossamer.config.egress``): any (``ALLOW_ANY``) or those an Egress names."""

    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"


def _check_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://host[:port][/path] (OTLP/HTTP), got {value!r}")
    try:
        parts.port  # noqa: B018  # raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from exc
    return value


def _check_flush(value: str) -> str:
    if not timedelta(milliseconds=10) <= parse_duration(value) <= timedelta(seconds=60):
        raise ValueError(f"flushInterval {value!r} must be between 10ms and 60s")
    return value


# The exporter writes these itself: a header of config may not say otherwise.
_EXPORTER_HEADERS = frozenset({"host", "content-type", "content-length", "connection",
                               "transfer-encoding", "te", "upgrade"})  # fmt: skip


def _check_export_headers(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 32:
        raise ValueError("at most 32 headers")
    taken = sorted(name for name in value if name.lower() in _EXPORTER_HEADERS)
    if taken:
        raise ValueError(f"{', '.join(taken)}: set by the exporter itself")
    if len({name.lower() for name in value}) < len(value):
        raise ValueError("a header is named twice (names are not case-sensitive)")
    for name, text in value.items():
        if not (text.isascii() and text.isprintable()):
            raise ValueError(f"{name}: the value must be printable ASCII")
    return value


class TracingSettings(SpecModel):
    """``spec.tracing``: every sidecar records spans and exports them over OTLP/HTTP
    (protobuf) to ``otlpEndpoint`` (``https://`` verifies the collector's certificate with
    the sidecar's system trust store, or ``SSL_CERT_FILE``), with ``headers`` on each export
    (an API key, a tenant); ``samplingPercent`` of the traces that start at a sidecar are
    sampled (a caller's decision is followed)."""

    otlp_endpoint: Annotated[str, AfterValidator(_check_endpoint)]
    headers: Annotated[dict[HeaderName, HeaderValue], AfterValidator(_check_export_headers)] = (
        Field(default_factory=dict)
    )
    sampling_percent: float = Field(default=1.0, ge=0.0, le=100.0)
    max_queue: int = Field(default=2048, ge=1, le=1_000_000)
    batch_size: int = Field(default=512, ge=1, le=10_000)
    flush_interval: Annotated[str, AfterValidator(_check_flush)] = "1s"

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "endpoint": self.otlp_endpoint,
            "headers": sorted([name.lower(), value] for name, value in self.headers.items()),
            "ratio": self.sampling_percent / 100.0,
            "max_queue": self.max_queue,
            "batch": self.batch_size,
            "interval": parse_duration(self.flush_interval).total_seconds(),
        }


MIN_SPOOL = 4 * 1024
MAX_SPOOL = 1024**4


def _check_spool(value: int | str) -> int | str:
    size = parse_size(value)
    if not MIN_SPOOL <= size <= MAX_SPOOL:
        raise ValueError(f"spoolSize {value!r} must be between 4KiB and 1TiB")
    return value


MIN_RETENTION = timedelta(seconds=1)


def _check_retention(value: str) -> str:
    if value != "forever" and parse_duration(value) < MIN_RETENTION:
        raise ValueError(f"retention {value!r} must be at least 1s (or forever)")
    return value


class AuditSettings(SpecModel):
    """``spec.audit``: how each sidecar keeps the records of the requests an AUDIT
    AuthorizationPolicy selects until the control plane has them (docs/internals.md §15):
    at most ``spoolSize`` bytes on its disk; when full, ``block`` refuses new audited
    requests (503 ``audit-unavailable``), ``drop`` lets them through unrecorded (counted, and
    the gap noted in the chain). The control plane keeps the records it received for
    ``retention`` (a duration, or ``forever``), then removes them up to a signed checkpoint
    (``gossamer audit verify`` still verifies what remains, and says what was removed)."""

    spool_size: Annotated[int | str, AfterValidator(_check_spool)] = "256Mi"
    on_spool_full: Literal["block", "drop"] = "block"
    retention: Annotated[str, AfterValidator(_check_retention)] = "90d"

    def to_snapshot(self) -> dict[str, Any]:
        return {"spool_bytes": parse_size(self.spool_size), "block": self.on_spool_full == "block"}

    def retention_seconds(self) -> float | None:
        """How long the control plane keeps a record (None: forever)."""
        if self.retention == "forever":
            return None
        return parse_duration(self.retention).total_seconds()


DEFAULT_ACCESS_LOG_TEMPLATE = (
    '[{time}] {direction} "{method} {path} {protocol}" {status} {error} {request_bytes} '
    '{response_bytes} {duration_ms} "{user_agent}" "{request_id}" "{authority}" '
    '"{upstream}" {service} {peer} {trace_id}'
)


def _check_template(value: str) -> str:
    try:
        parts = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value)
                 if name is not None]  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    if any(spec or conv for _, spec, conv in parts):
        raise ValueError("a field is named alone: {status}, not {status:>3} or {status!r}")
    names = [name for name, _, _ in parts]
    unknown = sorted({n for n in names if n not in ACCESS_LOG_FIELDS})
    if unknown or "" in names:
        bad = unknown[0] if unknown else "{}"
        raise ValueError(f"unknown field {bad!r}; the fields are {', '.join(ACCESS_LOG_FIELDS)}")
    return value


def _check_log_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"expected an absolute path (or /dev/stdout), got {value!r}")
    return value


class AccessLogSettings(SpecModel):
    """``spec.accessLog``: every sidecar writes one line per request, in both directions, to
    ``path`` (a file, appended to, or ``/dev/stdout``), as JSON or as a ``text`` line made from
    ``template`` (``{field}`` placeholders); a Service with ``accessLog: false`` has none.
    Without this section, only Services with ``accessLog: true`` log (with these defaults)."""

    format: Literal["json", "text"] = "json"
    template: Annotated[str, AfterValidator(_check_template)] = DEFAULT_ACCESS_LOG_TEMPLATE
    path: Annotated[str, AfterValidator(_check_log_path)] = "/dev/stdout"

    def to_snapshot(self) -> dict[str, Any]:
        return {"format": self.format, "template": self.template, "path": self.path}


class MeshConfigSpec(SpecModel):
    """``spec`` of the MeshConfig."""

    mtls: MtlsSettings = Field(default_factory=MtlsSettings)
    tracing: TracingSettings | None = None
    audit: AuditSettings = Field(default_factory=AuditSettings)
    access_log: AccessLogSettings | None = None
    certificates: CertificateSettings = Field(default_factory=CertificateSettings)
    outbound_traffic_policy: OutboundTrafficPolicy = Field(default_factory=OutboundTrafficPolicy)


class MeshConfig(Resource):
    """The mesh-wide configuration (only ``metadata.name: default``)."""

    KIND: ClassVar[str] = "MeshConfig"
    PLURAL: ClassVar[str] = "meshconfigs"
    FIXED_NAMESPACE: ClassVar[str | None] = MESH_CONFIG_NAMESPACE

    kind: Literal["MeshConfig"]
    spec: MeshConfigSpec = Field(default_factory=MeshConfigSpec)

    @model_validator(mode="before")
    @classmethod
    def _force_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            metadata = dict(data["metadata"])
            metadata["namespace"] = MESH_CONFIG_NAMESPACE
            data = {**data, "metadata": metadata}
        return data

    @property
    def certificate_lifetime(self) -> timedelta | None:
        lifetime = self.spec.certificates.lifetime
        return parse_duration(lifetime) if lifetime is not None else None

    def semantic_problems(self) -> list[tuple[str, str]]:
        if self.metadata.name != MESH_CONFIG_NAME:
            return [
                (
                    "metadata.name",
                    f"the MeshConfig must be named {MESH_CONFIG_NAME!r} "
                    f"(got {self.metadata.name!r})",
                )
            ]
        return []
