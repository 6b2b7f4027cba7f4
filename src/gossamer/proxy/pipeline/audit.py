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

from gossamer.json_lines import OMIT
from gossamer.proxy.pipeline.authenticate import AUTH_NOTE
from gossamer.proxy.pipeline.authorize import AUDIT_NOTE
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.snapshot.authorization import Decision
from gossamer.proxy.snapshot.jwt_rules import Verified

if TYPE_CHECKING:
    from gossamer.proxy.observe.audit_spool import AuditSpool
    from gossamer.proxy.pipeline.call import Call

__all__ = ["AuditStage", "connection_row", "record_row"]

def record_row(call: Call, decision: Decision, workload: tuple[str, str]) -> list[Any]:
    """What the record of ``call`` says, as a row of ``RECORD_MEMBERS`` (in their sorted
    order; the spool fills chain, seq, prev and dropped_before, and seals it)."""
    notes = call.notes
    elapsed_ns = time.monotonic_ns() - call.start_ns
    verified = notes.get(AUTH_NOTE) if notes is not None else None
    return [
        decision.audit,  # audit_policies
        call.authority,
        call.peer,  # caller
        None,  # chain
        "allow" if decision.allowed else "deny",  # decision
        OMIT,  # dropped_before
        elapsed_ns,  # duration_ms
        getattr(call, "grpc_status", None) if call.grpc else OMIT,  # a gRPC call's outcome
        call.method,
        workload[0],  # namespace
        call.path,
        decision.policy,
        None,  # prev
        call.protocol,
        decision.reason,
        call.request_bytes,
        call.request_id,
        call.response_bytes,
        None,  # seq
        workload[1],  # service
        call.status,
        verified.principal if isinstance(verified, Verified) else None,  # subject
        time.time_ns() - elapsed_ns,  # time
        call.logged_trace_id(),
    ]


def connection_row(
    started_ns: int, peer: str, received: int, sent: int, decision: Decision,
    workload: tuple[str, str],
) -> list[Any]:  # fmt: skip
    """The record of a TCP connection (``proxy/tcp``), once it closed (or was refused): the
    same members as a request's, protocol ``tcp``, no method, path or status."""
    return [
        decision.audit, "", peer, None, "allow" if decision.allowed else "deny", OMIT,
        time.time_ns() - started_ns, OMIT, "", workload[0], "", decision.policy, None, "tcp",
        decision.reason, received, b"", sent, None, workload[1], 0, None, started_ns, None,
    ]  # fmt: skip


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
            self.spool.append(record_row(call, decision, self.workload))
