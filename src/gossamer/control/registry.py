"""Connected proxies and the endpoints they provide.

The registry holds one :class:`ProxyRecord` per ``proxy_id``. A record stays while its stream is
open and for a grace period after it closes (the caller schedules :meth:`Registry.expire`); a
reconnect within the grace resumes it. Endpoints are the records with an inbound port; only
healthy ones go into snapshots. No I/O and no asyncio here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from gossamer.control.snapshots import EndpointInfo
from gossamer.identity.spiffe import SpiffeId

__all__ = ["AckState", "ProxyRecord", "Registry", "Session", "Workload"]

AckState = Literal["ACK", "NACK", "PENDING"]
ServiceKey = tuple[str, str]


class Session(Protocol):
    """The stream a record's messages go to (implemented by the stream server)."""

    def send(self, message: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Workload:
    """What a proxy said about its workload in ``hello``."""

    service: str
    namespace: str
    address: str
    inbound_port: int | None
    admin_port: int | None
    labels: Mapping[str, str]

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.service)


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True, eq=False)
class ProxyRecord:
    """One proxy known to the control plane (mutable; owned by the registry)."""

    proxy_id: str
    identity: SpiffeId
    workload: Workload
    session: Session | None
    subscriptions: set[str] = field(default_factory=set)
    config_version: int = 0
    acked_version: int = 0
    ack_state: AckState = "PENDING"
    nack_error: str | None = None
    cert_expiry: float | None = None
    connected_since: float = field(default_factory=time.time)
    healthy: bool = True
    connected: bool = True
    epoch: int = 0
    last_content: dict[str, Any] | None = None
    watched: frozenset[ServiceKey] = frozenset()

    @property
    def is_endpoint(self) -> bool:
        return self.workload.inbound_port is not None

    def endpoint(self) -> EndpointInfo:
        port = self.workload.inbound_port
        if port is None:
            raise ValueError(f"proxy {self.proxy_id} has no inbound port")
        return EndpointInfo(self.workload.address, port, dict(self.workload.labels))

    def to_json(self) -> dict[str, Any]:
        admin = self.workload.admin_port
        return {
            "proxy_id": self.proxy_id,
            "service": self.workload.service,
            "namespace": self.workload.namespace,
            "identity": self.identity.uri,
            "address": self.workload.address,
            "inbound_port": self.workload.inbound_port,
            "admin_address": f"{self.workload.address}:{admin}" if admin is not None else None,
            "labels": dict(self.workload.labels),
            "config_version": self.config_version,
            "acked_version": self.acked_version,
            "ack_state": self.ack_state,
            "nack_error": self.nack_error,
            "cert_expiry": _rfc3339(self.cert_expiry),
            "connected_since": _rfc3339(self.connected_since),
            "healthy": self.healthy,
            "connected": self.connected,
        }


class Registry:
    """All proxy records, by ``proxy_id``."""

    def __init__(self) -> None:
        self._records: dict[str, ProxyRecord] = {}
        self._versions: dict[str, int] = {}  # survives expiry: versions only grow
        self._epochs = 0

    def __iter__(self) -> Iterator[ProxyRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, proxy_id: str) -> ProxyRecord | None:
        return self._records.get(proxy_id)

    def connect(
        self, proxy_id: str, identity: SpiffeId, workload: Workload, session: Session
    ) -> tuple[ProxyRecord, ProxyRecord | None]:
        """Register (or resume) a proxy; return (record, the record it replaced if any).

        A resumed record keeps its version counter; its snapshot is sent again in full.
        """
        self._epochs += 1
        previous = self._records.get(proxy_id)
        record = ProxyRecord(
            proxy_id=proxy_id,
            identity=identity,
            workload=workload,
            session=session,
            config_version=self._versions.get(proxy_id, 0),
            epoch=self._epochs,
        )
        if previous is not None:
            record.acked_version = previous.acked_version
        self._records[proxy_id] = record
        return record, previous

    def disconnect(self, record: ProxyRecord) -> bool:
        """Mark the stream of ``record`` closed; False if a newer connection replaced it."""
        if self._records.get(record.proxy_id) is not record:
            return False
        record.connected = False
        record.session = None
        return True

    def expire(self, proxy_id: str, epoch: int) -> ProxyRecord | None:
        """Drop a record still disconnected since ``epoch``; return it if dropped."""
        record = self._records.get(proxy_id)
        if record is None or record.connected or record.epoch != epoch:
            return None
        del self._records[proxy_id]
        return record

    def bump_version(self, record: ProxyRecord) -> int:
        record.config_version += 1
        self._versions[record.proxy_id] = record.config_version
        return record.config_version

    def workload_services(self) -> frozenset[ServiceKey]:
        return frozenset(record.workload.key for record in self._records.values())

    def healthy_endpoints(self) -> dict[ServiceKey, list[EndpointInfo]]:
        """Endpoints for snapshots: records with an inbound port that report healthy."""
        out: dict[ServiceKey, list[EndpointInfo]] = {}
        for record in self._records.values():
            if record.is_endpoint and record.healthy:
                out.setdefault(record.workload.key, []).append(record.endpoint())
        return out

    def endpoints_of(self, namespace: str, service: str) -> list[ProxyRecord]:
        """Records providing an endpoint of (namespace, service), healthy or not."""
        return sorted(
            (
                r
                for r in self._records.values()
                if r.workload.key == (namespace, service) and r.is_endpoint
            ),
            key=lambda r: r.proxy_id,
        )
