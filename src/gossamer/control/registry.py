"""Connected proxies and the endpoints they provide.

The registry holds one :class:`ProxyRecord` per ``proxy_id``. A record stays while its stream is
open and for a grace period after it closes (the caller schedules :meth:`Registry.expire`); a
reconnect within the grace resumes it. Endpoints are the records with an inbound port; only
healthy ones go into snapshots. No I/O and no asyncio here.

The registry keeps its indexes incremental, so pushes never walk every record: records by
service key (whose healthy endpoints are re-listed only for keys that changed since the last
read), and current records by the service keys their snapshot watches (set with
:meth:`Registry.set_watched`). Health changes go through :meth:`Registry.set_healthy`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from gossamer.control.snapshots import EndpointInfo
from gossamer.identity.spiffe import SpiffeId
from gossamer.snapshot_schema import SnapshotContent

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
    # Subscribed names that are no known service, oldest first (bounded: see plane.py).
    unknown: dict[str, None] = field(default_factory=dict)
    config_version: int = 0
    acked_version: int = 0
    ack_state: AckState = "PENDING"
    nack_error: str | None = None
    cert_expiry: float | None = None
    serial: str | None = None  # of the certificate it said hello with (revocation.py)
    renewed_at: float | None = None  # monotonic time of its last renewal
    bundle_digest: str | None = None  # the trust bundle it holds (control/trust.py)
    leaf_key_id: bytes | None = None  # the key id of the CA that signed its certificate
    signed_key_id: bytes | None = None  # of the one signed last, until it says it installed it
    renew_asked: bool = False  # asked to renew now by a root rotation (not yet renewed)
    connected_since: float = field(default_factory=time.time)
    healthy: bool = True
    connected: bool = True
    leaving: bool = False  # said it is shutting down: forgotten as soon as its stream closes
    epoch: int = 0
    last_content: SnapshotContent | None = None
    watched: frozenset[ServiceKey] = frozenset()
    endpoint_info: EndpointInfo | None = field(default=None, init=False)  # from the workload

    def __post_init__(self) -> None:
        workload = self.workload
        if workload.inbound_port is not None:
            self.endpoint_info = EndpointInfo(
                workload.address, workload.inbound_port, dict(workload.labels)
            )

    @property
    def is_endpoint(self) -> bool:
        return self.workload.inbound_port is not None

    def endpoint(self) -> EndpointInfo:
        if self.endpoint_info is None:
            raise ValueError(f"proxy {self.proxy_id} has no inbound port")
        return self.endpoint_info

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
            "bundle_digest": self.bundle_digest,
            "signed_by": self.leaf_key_id.hex() if self.leaf_key_id is not None else None,
            "connected_since": _rfc3339(self.connected_since),
            "healthy": self.healthy,
            "connected": self.connected,
        }


class Registry:
    """All proxy records, by ``proxy_id``, with indexes by service and by watched service."""

    def __init__(self) -> None:
        self._records: dict[str, ProxyRecord] = {}
        self._versions: dict[str, int] = {}  # survives expiry: versions only grow
        self._epochs = 0
        # Position of each proxy_id in ``_records`` (a reconnect keeps it); orders endpoints.
        self._positions: dict[str, int] = {}
        self._next_position = 0
        # Current records by workload key, each in ``_records`` order.
        self._by_service: dict[ServiceKey, dict[str, ProxyRecord]] = {}
        self._services: frozenset[ServiceKey] | None = frozenset()  # None: recompute
        # Healthy endpoints per key; keys in ``_stale`` are re-listed on the next read.
        self._endpoints: dict[ServiceKey, tuple[EndpointInfo, ...]] = {}
        self._stale: set[ServiceKey] = set()
        # proxy_ids of current records by the keys they watch.
        self._watchers: dict[ServiceKey, set[str]] = {}

    def __iter__(self) -> Iterator[ProxyRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def proxy_ids(self) -> list[str]:
        return list(self._records)

    def get(self, proxy_id: str) -> ProxyRecord | None:
        return self._records.get(proxy_id)

    def _is_current(self, record: ProxyRecord) -> bool:
        return self._records.get(record.proxy_id) is record

    def connect(
        self,
        proxy_id: str,
        identity: SpiffeId,
        workload: Workload,
        session: Session | None,
        version_floor: int = 0,
    ) -> tuple[ProxyRecord, ProxyRecord | None]:
        """Register (or resume) a proxy; return (record, the record it replaced if any).

        A resumed record keeps its version counter, never below ``version_floor`` (the last
        version the proxy applied, which a restarted control plane did not know); its snapshot
        is sent again in full.
        """
        self._epochs += 1
        previous = self._records.get(proxy_id)
        record = ProxyRecord(
            proxy_id=proxy_id,
            identity=identity,
            workload=workload,
            session=session,
            config_version=max(self._versions.get(proxy_id, 0), version_floor),
            epoch=self._epochs,
        )
        if previous is not None:
            record.acked_version = previous.acked_version
            self._unindex(previous)
        else:
            self._positions[proxy_id] = self._next_position
            self._next_position += 1
        self._records[proxy_id] = record
        self._index(record)
        return record, previous

    def restore(
        self, proxy_id: str, identity: SpiffeId, workload: Workload, healthy: bool, version: int
    ) -> ProxyRecord:
        """A proxy a previous control plane had registered, not connected here (yet): its
        endpoint counts until it reconnects or its grace period ends (``registry_store``)."""
        record, _ = self.connect(proxy_id, identity, workload, None, version)
        self._versions[proxy_id] = record.config_version
        record.connected = False
        record.healthy = healthy
        if record.is_endpoint:
            self._stale.add(workload.key)
        return record

    def disconnect(self, record: ProxyRecord) -> bool:
        """Mark the stream of ``record`` closed; False if a newer connection replaced it."""
        if not self._is_current(record):
            return False
        record.connected = False
        record.session = None
        return True

    def expire(self, proxy_id: str, epoch: int) -> ProxyRecord | None:
        """Drop a record still disconnected since ``epoch``; return it if dropped."""
        record = self._records.get(proxy_id)
        if record is None or record.connected or record.epoch != epoch:
            return None
        self._unindex(record)
        del self._records[proxy_id]
        del self._positions[proxy_id]
        return record

    def bump_version(self, record: ProxyRecord) -> int:
        record.config_version += 1
        self._versions[record.proxy_id] = record.config_version
        return record.config_version

    def set_healthy(self, record: ProxyRecord, healthy: bool) -> bool:
        """Record a health report; True if it changed the record."""
        if record.healthy == healthy:
            return False
        record.healthy = healthy
        if record.is_endpoint and self._is_current(record):
            self._stale.add(record.workload.key)
        return True

    def set_watched(self, record: ProxyRecord, watched: frozenset[ServiceKey]) -> None:
        """Record the keys whose changes would change ``record``'s snapshot."""
        old = record.watched
        record.watched = watched
        if old == watched or not self._is_current(record):
            return
        for key in old - watched:
            self._unwatch(key, record.proxy_id)
        for key in watched - old:
            self._watchers.setdefault(key, set()).add(record.proxy_id)

    def watchers(self, key: ServiceKey) -> frozenset[str]:
        """proxy_ids of the current records whose snapshot watches ``key``."""
        return frozenset(self._watchers.get(key, ()))

    def workload_services(self) -> frozenset[ServiceKey]:
        if self._services is None:
            self._services = frozenset(self._by_service)
        return self._services

    def healthy_endpoints(self) -> Mapping[ServiceKey, Sequence[EndpointInfo]]:
        """Endpoints for snapshots: records with an inbound port that report healthy.

        Keys with no healthy endpoint are absent; each key lists its endpoints in registry
        order. The mapping returned is not changed afterwards (a change makes a new one).
        """
        if self._stale:
            endpoints = dict(self._endpoints)
            for key in self._stale:
                members = self._by_service.get(key, {})
                listed = tuple(
                    [
                        r.endpoint_info
                        for r in members.values()
                        if r.healthy and r.endpoint_info is not None
                    ]
                )
                if listed:
                    endpoints[key] = listed
                else:
                    endpoints.pop(key, None)
            self._stale.clear()
            self._endpoints = endpoints
        return self._endpoints

    def endpoints_of(self, namespace: str, service: str) -> list[ProxyRecord]:
        """Records providing an endpoint of (namespace, service), healthy or not."""
        members = self._by_service.get((namespace, service), {})
        return sorted((r for r in members.values() if r.is_endpoint), key=lambda r: r.proxy_id)

    # ----------------------------------------------------------------- indexes
    def _index(self, record: ProxyRecord) -> None:
        key = record.workload.key
        members = self._by_service.get(key)
        if members is None:
            members = self._by_service[key] = {}
            self._services = None
        position = self._positions[record.proxy_id]
        last = next(reversed(members.values()), None)
        members[record.proxy_id] = record
        if last is not None and self._positions[last.proxy_id] > position:
            ordered = sorted(members.values(), key=lambda r: self._positions[r.proxy_id])
            members.clear()
            members.update((r.proxy_id, r) for r in ordered)
        if record.is_endpoint:
            self._stale.add(key)
        for watched in record.watched:
            self._watchers.setdefault(watched, set()).add(record.proxy_id)

    def _unindex(self, record: ProxyRecord) -> None:
        key = record.workload.key
        members = self._by_service[key]
        del members[record.proxy_id]
        if not members:
            del self._by_service[key]
            self._services = None
        if record.is_endpoint:
            self._stale.add(key)
        for watched in record.watched:
            self._unwatch(watched, record.proxy_id)

    def _unwatch(self, key: ServiceKey, proxy_id: str) -> None:
        ids = self._watchers.get(key)
        if ids is not None:
            ids.discard(proxy_id)
            if not ids:
                del self._watchers[key]
