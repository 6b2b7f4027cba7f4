"""The ``authorize`` slot: the workload's AuthorizationPolicies judge each inbound request.

Compiled from the snapshot (``snapshot.authorization``) only when a policy applies to this
workload, so a sidecar without one has no stage here and pays nothing. For each request the
stage reads who calls (``Call.peer``: the SPIFFE ID its certificate proved) and what (method,
path without the query, the authority and its port, headers when a condition names one),
then:

- the end user: the token the ``authenticate`` slot verified (``AUTH_NOTE``), for
  ``requestPrincipals`` and ``request.auth.*`` conditions;
- refused: 403 ``forbidden`` (gRPC ``PERMISSION_DENIED``), the policy's name in the body,
  before the request reaches the app;
- when an AUDIT policy matched, the decision is noted on the call (``AUDIT_NOTE``) for the
  audit log (``pipeline.audit``);
- each decision is counted in ``gossamer_authz_decisions_total{policy, decision}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from gossamer.proxy.pipeline.authenticate import AUTH_NOTE
from gossamer.proxy.pipeline.call import authority_port
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.snapshot.authorization import Attributes, Authorization

if TYPE_CHECKING:
    from gossamer.proxy.observe.metrics import Metrics
    from gossamer.proxy.pipeline.call import Call
    from gossamer.proxy.snapshot.jwt_rules import Verified

__all__ = ["AUDIT_NOTE", "AuthorizeStage"]

AUDIT_NOTE = "audit"  # Call.notes key: the Decision of a request an AUDIT policy matched


class AuthorizeStage(Stage):
    """The AuthorizationPolicies of this workload, in the ``authorize`` slot (inbound)."""

    slot = "authorize"
    name = "authorization"

    def __init__(self, authorization: Authorization, metrics: Metrics) -> None:
        self.authorization = authorization
        self.metrics = metrics

    def on_request(self, call: Call) -> bool:
        path = call.path
        cut = path.find(b"?")
        if cut >= 0:
            path = path[:cut]
        notes = call.notes
        attributes = Attributes(
            call.peer.decode("latin-1"),
            authority_port(call.authority, call.scheme),
            method=call.method.decode("latin-1"),
            path=path.decode("latin-1"),
            host=call.authority.decode("latin-1").lower(),
            headers=call.header_list() if self.authorization.reads_headers else (),
            auth=cast("Verified | None", notes.get(AUTH_NOTE)) if notes is not None else None,
        )
        decision = self.authorization.decide(attributes)
        self.metrics.authz(decision)
        if decision.audit:
            if notes is None:
                notes = call.notes = {}
            notes[AUDIT_NOTE] = decision
        if decision.allowed:
            return True
        call.fail(403, "forbidden", decision.reason)
        return False
