"""The registry kept across control-plane restarts (issue 12: a restart emptied every
endpoint set for seconds, failing most requests).

A fresh control plane knows the resources (the store) but not which proxies serve them; until
they reconnect, its snapshots would list no endpoints and every sidecar would drop its own.
So the proxies the registry holds are saved (coalesced: at most one transaction a second, off
the request path) and a restarted control plane starts from them: each comes back
*disconnected*, its endpoint still listed, and is dropped only if it has not reconnected
within the restore grace (``--restore-grace``, 30 s; sidecars retry every 5 s at most). It
pushes no removal it has not observed. Config versions keep growing across restarts: the
saved version, and the last one each sidecar says it applied (``hello.config_version``),
are floors for the next.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gossamer.control.registry import ProxyRecord, Registry, Workload
from gossamer.control.store import Store
from gossamer.identity.spiffe import SpiffeId

__all__ = ["RegistryStore"]

log = logging.getLogger("gossamer.control.registry")


def _encode(record: ProxyRecord) -> str:
    workload = record.workload
    return json.dumps(
        {
            "identity": record.identity.uri,
            "workload": {
                "service": workload.service,
                "namespace": workload.namespace,
                "address": workload.address,
                "inbound_port": workload.inbound_port,
                "admin_port": workload.admin_port,
                "labels": dict(workload.labels),
            },
            "healthy": record.healthy,
            "version": record.config_version,
        },
        separators=(",", ":"),
    )


def _decode(text: str) -> tuple[SpiffeId, Workload, bool, int]:
    raw: dict[str, Any] = json.loads(text)
    w = raw["workload"]
    workload = Workload(
        service=str(w["service"]), namespace=str(w["namespace"]), address=str(w["address"]),
        inbound_port=w.get("inbound_port"), admin_port=w.get("admin_port"),
        labels={str(k): str(v) for k, v in (w.get("labels") or {}).items()},
    )  # fmt: skip
    return SpiffeId.parse(raw["identity"]), workload, bool(raw["healthy"]), int(raw["version"])


class RegistryStore:
    """Which proxies changed since the last save, and the save and the load themselves."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed: set[str] = set()
        self._gone: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._gone)

    def changed(self, record: ProxyRecord) -> None:
        self._changed.add(record.proxy_id)
        self._gone.discard(record.proxy_id)

    def forgotten(self, proxy_id: str) -> None:
        self._gone.add(proxy_id)
        self._changed.discard(proxy_id)

    def save(self, registry: Registry) -> None:
        """Write what changed since the last save, in one transaction."""
        self.write(*self.take(registry))

    def take(self, registry: Registry) -> tuple[list[tuple[str, str]], list[str]]:
        """What changed since the last ``take`` (on the event loop: it reads the registry)."""
        rows = []
        for proxy_id in self._changed:
            record = registry.get(proxy_id)
            if record is not None:
                rows.append((proxy_id, _encode(record)))
        gone = list(self._gone)
        self._changed.clear()
        self._gone.clear()
        return rows, gone

    def write(self, rows: list[tuple[str, str]], gone: list[str]) -> None:
        """Store what ``take`` returned (may run in a worker thread)."""
        self._store.save_proxies(rows, gone)

    def load(self, registry: Registry) -> list[ProxyRecord]:
        """Put the saved proxies back into ``registry``, disconnected; return them."""
        restored = []
        for proxy_id, text, _seen in self._store.load_proxies():
            try:
                identity, workload, healthy, version = _decode(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring the saved proxy %s: %s", proxy_id, exc)
                self.forgotten(proxy_id)
                continue
            restored.append(registry.restore(proxy_id, identity, workload, healthy, version))
        return restored
