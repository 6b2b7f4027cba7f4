"""The concrete stage: which endpoint of the chosen backend takes a request.

``pick`` is the one place an endpoint is chosen, for every protocol: within the route's label
subset, skipping ejected outliers (``OutboundService.pick``), by the service's balancer or,
under ``ConsistentHash``, by the hash of the request's header or cookie (``hash_key``). A
retry or a second connect attempt passes the endpoint that failed as ``avoid`` and gets the
least busy other live endpoint of the subset when there is one (a balancer's second draw can
return the same endpoint: power of two choices over two endpoints compares the same pair).
Connection and stream limits stay with the codecs, since HTTP/1.1 counts connections and
HTTP/2 streams (docs/internals.md, "HTTP/2 and gRPC streams under traffic policy").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.pipeline.call import Call, Header
    from gossamer.proxy.snapshot.service_policy import ServicePolicy
    from gossamer.proxy.snapshot.table import OutboundService

__all__ = ["MAX_CONNECT_ATTEMPTS", "hash_key", "no_endpoint", "pick"]

# Endpoints tried for one request whose connection attempts fail (nothing was sent, so
# another endpoint may take it whatever the retry policy says).
MAX_CONNECT_ATTEMPTS = 3


def pick(
    service: OutboundService,
    subset: tuple[tuple[str, str], ...],
    call: Call | None,
    avoid: EndpointState | None = None,
) -> EndpointState | None:
    """An endpoint of ``service`` for ``call`` (None: a copy that needs no hash key),
    preferably not ``avoid``. The header list is asked for only when the policy hashes."""
    policy = service.policy
    key = None
    if call is not None and policy.lb_type == "ConsistentHash":
        key = hash_key(call.header_list(), policy)
    endpoint = service.pick(subset, key)
    if avoid is not None and endpoint is avoid:
        endpoint = _another(service, subset, avoid) or endpoint
    return endpoint


def no_endpoint(
    service: OutboundService, subset: tuple[tuple[str, str], ...]
) -> tuple[str, str]:
    """Why ``pick`` found nothing, as ``(x-gossamer-error cause, detail)``: the service has
    no healthy endpoint (``no-healthy-endpoints``), or it has some but none carries the
    route's subset labels (``no-subset-endpoints``: a route to a version not deployed)."""
    if subset and service.endpoints_all:
        labels = ",".join(f"{k}={v}" for k, v in subset)
        if not any(
            all(ep.labels.get(k) == v for k, v in subset) for ep in service.endpoints_all
        ):
            return "no-subset-endpoints", f"{service.key} has no endpoint labelled {labels}"
    return "no-healthy-endpoints", f"{service.key} has no healthy endpoints"


def hash_key(headers: Sequence[Header], policy: ServicePolicy) -> bytes | None:
    """The consistent-hash key of a request: the policy's header, else its cookie (header
    names compared case-insensitively; None when the policy does not hash or the request
    lacks both)."""
    if policy.lb_type != "ConsistentHash":
        return None
    name = policy.hash_header
    if name is not None:
        for field, value in headers:
            if field.lower() == name:
                return value
    cookie = policy.hash_cookie
    if cookie is not None:
        prefix = cookie + b"="
        for field, value in headers:
            if field.lower() == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        return part[len(prefix) :]
    return None


def _another(
    service: OutboundService, subset: tuple[tuple[str, str], ...], avoid: EndpointState
) -> EndpointState | None:
    """The least busy live endpoint of ``service`` within ``subset`` other than ``avoid``."""
    best = None
    for endpoint in service.balancer.endpoints:  # not ejected
        if endpoint is avoid or not all(endpoint.labels.get(k) == v for k, v in subset):
            continue
        if best is None or endpoint.pending < best.pending:
            best = endpoint
    return best
