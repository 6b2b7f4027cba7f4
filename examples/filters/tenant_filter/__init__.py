"""An example Gossamer filter: which plan a tenant is on, decided once, in the sidecar.

Every request names its tenant in a header (``x-tenant`` by default). The filter looks the
tenant up in the table its config gives, adds the plan to the request for the app
(``x-tenant-plan``) and to the response for the caller, answers 403 for a suspended tenant,
and counts requests per plan in the sidecar's metrics. Config::

    header: x-tenant                    # where the tenant is named
    plans: {acme: gold, globex: silver} # tenant -> plan
    default: free                       # the plan of tenants not in the table
    suspended: [initech]                # tenants that are refused
"""

from __future__ import annotations

from gossamer.filters import FilterContext, Reject, Request, Response

__all__ = ["TenantFilter"]


class TenantFilter:
    def __init__(self, context: FilterContext) -> None:
        config = context.config
        self.context = context
        self.header = str(config.get("header", "x-tenant"))
        self.plans = {str(k): str(v) for k, v in dict(config.get("plans", {})).items()}
        self.default = str(config.get("default", "free"))
        self.suspended = frozenset(str(t) for t in config.get("suspended", []))

    def on_request(self, request: Request) -> None:
        tenant = request.headers.get(self.header, "")
        if tenant in self.suspended:
            self.context.count("suspended")
            raise Reject(403, f"tenant {tenant} is suspended", {"x-tenant-plan": "suspended"})
        plan = self.plans.get(tenant, self.default)
        request.headers.set("x-tenant-plan", plan)
        request.state["plan"] = plan
        self.context.count(plan)

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("x-tenant-plan", request.state.get("plan", self.default))
