"""The audit record of each audited request, in the ``observe`` slot (inbound).

A request is audited when an AUDIT AuthorizationPolicy of the called workload matched it (the
``authorize`` slot notes the decision: ``AUDIT_NOTE``). ``AuditStage`` is in the inbound
direction only when this workload has an AUDIT policy and the MeshConfig's ``audit`` is on, so
every other sidecar pays nothing. For an audited request it:

- on the request: with ``onSpoolFull: block`` and no room in the spool, refuses it with 503
  ``audit-unavailable`` before it reaches the app (the caller may try again; nothing happens
  unrecorded);
- on completion: appends the record to the spool (``observe.audit_spool``), whatever the
  outcome (allowed, denied by a policy, failed): time, the called workload, the caller's
  SPIFFE ID, the end user (the verified token's ``<iss>/<sub>``), method, authority, path,
  status, body bytes each way, duration, trace id, request id, the decision, the policy
  that made it and why a refused request was refused, the AUDIT policies that matched, and
  a gRPC call's status (docs/internals.md §15 lists the fields).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gossamer.proxy.observe.timestamps import utc_millis
from gossamer.proxy.pipeline.authenticate import AUTH_NOTE
from gossamer.proxy.pipeline.authorize import AUDIT_NOTE
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.snapshot.authorization import Decision
from gossamer.proxy.snapshot.jwt_rules import Verified

if TYPE_CHECKING:
    from gossamer.proxy.observe.audit_spool import AuditSpool
    from gossamer.proxy.pipeline.call import Call

__all__ = ["AuditStage", "connection_fields", "record_fields"]

def _trace_id(call: Call) -> str | None:
    """The trace the request went on in: the tracing stage's, else the caller's W3C one."""
    if call.trace_id:
        return call.trace_id.decode("ascii")
    traceparent, _ = call.trace_first_look()  # (the HTTP/1.1 scan found it: no search)
    if traceparent is not None and len(traceparent) >= 35:
        return traceparent[3:35].decode("latin-1")
    return None


def _decided(fields: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """``fields`` with the authorization decision's members set in it (no second dict)."""
    fields["decision"] = "allow" if decision.allowed else "deny"
    fields["policy"] = decision.policy or None
    fields["reason"] = decision.reason or None
    fields["audit_policies"] = list(decision.audit)
    return fields


def record_fields(call: Call, decision: Decision, workload: tuple[str, str]) -> dict[str, Any]:
    """What the record of ``call`` says (``gossamer.audit_chain`` seals it)."""
    notes = call.notes or {}
    elapsed_ns = time.monotonic_ns() - call.start_ns
    verified = notes.get(AUTH_NOTE)
    fields = {
        "time": utc_millis(time.time_ns() - elapsed_ns),
        "namespace": workload[0],
        "service": workload[1],
        "caller": call.peer.decode("latin-1") or None,
        "subject": verified.principal if isinstance(verified, Verified) else None,
        "protocol": call.protocol,
        "method": call.method.decode("latin-1"),
        "authority": call.authority.decode("latin-1"),
        "path": call.path.decode("latin-1"),
        "status": call.status,
        "request_bytes": call.request_bytes,
        "response_bytes": call.response_bytes,
        "duration_ms": round(elapsed_ns / 1e6, 3),
        "trace_id": _trace_id(call),
        "request_id": call.request_id.decode("latin-1") or None,
    }
    _decided(fields, decision)
    if call.grpc:  # the call's own outcome, beside the HTTP status it came with
        fields["grpc_status"] = getattr(call, "grpc_status", None)
    return fields


def connection_fields(
    started_ns: int, peer: str, received: int, sent: int, decision: Decision,
    workload: tuple[str, str],
) -> dict[str, Any]:  # fmt: skip
    """The record of a TCP connection (``proxy/tcp``), once it closed (or was refused): the
    same fields as a request's, protocol ``tcp``, no method, path or status."""
    return _decided({
        "time": utc_millis(started_ns), "namespace": workload[0], "service": workload[1],
        "caller": peer or None, "subject": None, "protocol": "tcp", "method": "",
        "authority": "", "path": "", "status": 0, "request_bytes": received,
        "response_bytes": sent, "duration_ms": round((time.time_ns() - started_ns) / 1e6, 3),
        "trace_id": None, "request_id": None,
    }, decision)  # fmt: skip


class AuditStage(Stage):
    """Records each audited request in the spool (see the module docstring)."""

    slot = "observe"
    name = "audit"
    sees_completions = True

    def __init__(self, spool: AuditSpool, namespace: str, service: str) -> None:
        self.spool = spool
        self.workload = (namespace, service)

    def on_request(self, call: Call) -> bool:
        notes = call.notes
        if notes is None or AUDIT_NOTE not in notes:
            return True
        spool = self.spool
        if spool.block and not spool.accepting:
            del notes[AUDIT_NOTE]  # refused before the app: nothing to record
            spool.refused()
            call.fail(503, "audit-unavailable", "the audit spool is full; try again later")
            return False
        return True

    def on_complete(self, call: Call) -> None:
        notes = call.notes
        decision = notes.get(AUDIT_NOTE) if notes is not None else None
        if isinstance(decision, Decision):
            self.spool.append(record_fields(call, decision, self.workload))
