"""The snapshot's ``audit`` (the MeshConfig's ``spec.audit``), checked and compiled.

``compile_audit`` gives the spool's settings; the sidecar's state (``proxy/state.py``) keeps
one ``AuditSpool`` (``observe/audit_spool.py``) and puts an ``AuditStage``
(``pipeline/audit.py``) in the inbound ``observe`` slot when an AUDIT AuthorizationPolicy
applies to this workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError

__all__ = ["DEFAULT_AUDIT", "AuditConfig", "compile_audit"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    spool_bytes: int  # at most this many bytes not yet acknowledged by the control plane
    block: bool  # full: refuse new audited requests (else let them through unrecorded)


DEFAULT_AUDIT = AuditConfig(256 * 1024 * 1024, True)


def compile_audit(raw: Any) -> AuditConfig:
    """``snapshot.audit`` → ``AuditConfig`` (absent: the defaults); ``SnapshotError`` naming a
    bad field."""
    if raw is None:
        return DEFAULT_AUDIT
    if not isinstance(raw, Mapping):
        raise SnapshotError("snapshot.audit: expected an object")
    size, block = raw.get("spool_bytes"), raw.get("block")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SnapshotError(
            f"snapshot.audit.spool_bytes: expected a positive integer, got {size!r}"
        )
    if not isinstance(block, bool):
        raise SnapshotError(f"snapshot.audit.block: expected a boolean, got {block!r}")
    return AuditConfig(size, block)
