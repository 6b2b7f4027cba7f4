"""The outbound pipeline: a request from the local app to a mesh service, for every protocol.

The codec (HTTP/1.1 ``proxy.http1.outbound``, HTTP/2 ``proxy.h2.downstream``) parses the
request into a ``Call`` and hands it to ``start``. From there the stages run in this order,
after linkerd2-proxy's logical -> concrete -> endpoint:

1. ready: no config from the control plane yet answers 503 ``proxy-not-ready``;
2. discover: the service from the authority (``catalog``, ``catalog.default``,
   ``catalog.default.svc``), asked of the control plane on first use (404 ``unknown-service``,
   503 ``discovery-timeout``);
3. the request slots (``pipeline.slots``): authentication, authorization, the user's filters,
   each a no-op costing one attribute test when no config uses it;
4. logical (``route``): the first matching HTTP rule: redirect, fault injection, header and
   path edits, a weighted backend and label subset, mirroring, timeout and retry policy;
5. concrete and endpoint (``Call.forward``, the codec's connections): the limits, an
   endpoint by ``pipeline.concrete.pick``, a pooled mTLS connection checked to carry the
   backend's SPIFFE ID, retries decided by ``pipeline.retries``.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from gossamer.protocol.http1 import ProxyError
from gossamer.proxy.pipeline import retries
from gossamer.proxy.snapshot.egress import external_host
from gossamer.proxy.snapshot.table import service_key
from gossamer.proxy.tasks import spawn

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.call import Call, Header
    from gossamer.proxy.snapshot.http_rules import MirrorPolicy
    from gossamer.proxy.snapshot.table import OutboundService, RouteTable
    from gossamer.proxy.state import ProxyState

__all__ = [
    "MAX_MIRROR_BODY", "destination", "leave_mesh", "outside_refusal", "route", "start",
]

# The largest request body a mirror copies (larger ones are not mirrored).
MAX_MIRROR_BODY = 64 * 1024
_rng = random.Random()
_NO_HEADERS: tuple[Header, ...] = ()  # for routers that match on no header


def start(call: Call, proxy: ProxyState) -> None:
    """Run the outbound pipeline for ``call``, to a service named by its authority."""
    table = proxy.table
    if table is None:
        call.fail(503, "proxy-not-ready", "no configuration from the control plane yet")
        return
    service = table.resolve(call.authority)
    if service is not None:
        admit(call, table, service)
        return
    host = call.authority.decode("latin-1")
    key = service_key(host, table.namespace)
    if key is None or (key in table.unknown and proxy.known_unknown(key)):
        leave_mesh(call, table, host)
        return
    spawn(_discover(call, proxy, key), name=f"discover {key}")


def leave_mesh(call: Call, table: RouteTable, host: str) -> None:
    """A host that is no mesh service: out of the mesh if it names a host outside it and
    the egress policy allows it (``snapshot.egress``), else why not."""
    make = table.make_external
    external = table.egress.service(call.authority, make) if make is not None else None
    if external is not None:
        admit(call, table, external)
    else:
        refusal = outside_refusal(host)
        call.fail(refusal.status, refusal.cause, refusal.detail)


def outside_refusal(host: str) -> ProxyError:
    """Why a call to ``host`` (no mesh service) may not leave the mesh: it names no host
    outside it (404 ``unknown-service``), or the egress policy refuses it (403)."""
    if external_host(host) is None:
        return ProxyError(404, "unknown-service", f"{host} is not a mesh service")
    return ProxyError(403, "egress-denied", f"{host} is outside the mesh and no Egress names "
                      "it (outboundTrafficPolicy REGISTRY_ONLY)")  # fmt: skip


async def destination(proxy: ProxyState, authority: bytes) -> OutboundService | None:
    """The mesh service ``authority`` names, asked of the control plane on first use (as
    ``start`` does), or None when it names none; ``ProxyError`` when the sidecar cannot tell
    (503 ``proxy-not-ready``, ``discovery-timeout``). For CONNECT tunnels, which are not
    requests: what a tunnel carries goes through ``start`` like any other request."""
    table = proxy.table
    if table is None:
        raise ProxyError(503, "proxy-not-ready", "no configuration from the control plane yet")
    service = table.resolve(authority)
    if service is not None:
        return service
    key = service_key(authority.decode("latin-1"), table.namespace)
    if key is None or (key in table.unknown and proxy.known_unknown(key)):
        return None
    return await proxy.discover(key)


async def _discover(call: Call, proxy: ProxyState, key: str) -> None:
    try:
        service = await proxy.discover(key)
    except ProxyError as exc:
        call.fail(exc.status, exc.cause, exc.detail)
        return
    if not call.wanted():
        return
    table = proxy.table
    if table is None:
        call.fail(503, "proxy-not-ready", "no configuration from the control plane")
    elif service is None:
        leave_mesh(call, table, call.authority.decode("latin-1"))
    else:
        admit(call, table, service)


def admit(call: Call, table: RouteTable, service: OutboundService) -> None:
    """The request slots, then the logical stage."""
    stages = table.outbound_stages
    if stages is not None and not stages.request(call):
        return  # a stage answered
    route(call, table, service)


def route(call: Call, table: RouteTable, service: OutboundService) -> None:
    """The logical stage: apply ``service``'s matching rule (or its defaults) to ``call``."""
    policy = service.policy
    call.logical = service
    call.service = service
    retry = policy.retry
    router = service.router
    rule = None
    if router is not None:
        headers = call.header_list() if router.uses_headers else _NO_HEADERS
        rule = router.match(call.method, call.path, headers)
    delay = 0.0
    if rule is not None:
        call.rule = rule
        filters = rule.filters
        redirect = filters.redirect
        if redirect is not None:
            location = redirect.location(call.scheme, call.authority, call.path)
            call.redirect(redirect.status, location)
            return
        if filters.fault is not None:
            delay, abort = filters.fault.decide(_rng)
            if abort is not None:
                call.fail(abort, "fault-injected", f"route {rule.name}")
                return
        ref = rule.pick_backend(_rng)
        backend = table.services.get(ref.service_key)
        if backend is None:
            call.fail(503, "unknown-backend", f"the route's backend {ref.service_key} is not a "
                      "mesh service")  # fmt: skip
            return
        call.service = backend
        call.subset = ref.subset_key
        if rule.retry is not None:
            retry = rule.retry
    keep = 0
    if retry is not None and retries.applies(call, retry):
        call.retry = retry
        keep = retry.max_body_bytes
    mirror = rule.filters.mirror if rule is not None else None
    if mirror is not None:
        if mirror.should_mirror(_rng):
            keep = max(keep, MAX_MIRROR_BODY)
        else:
            mirror = None
    if keep:
        call.keep_body(keep)
    under_retry = retry is not None
    if delay > 0:
        asyncio.get_running_loop().call_later(delay, _after_delay, call, under_retry, mirror)
    else:
        _go(call, under_retry, mirror)


def _after_delay(call: Call, under_retry: bool, mirror: MirrorPolicy | None) -> None:
    if call.wanted():
        _go(call, under_retry, mirror)


def _go(call: Call, under_retry: bool, mirror: MirrorPolicy | None) -> None:
    """After any fault delay: the rule's edits, the budget, a mirror copy, then the concrete
    stage."""
    logical = call.logical
    assert logical is not None
    policy = logical.policy
    timeout = policy.timeout
    rule = call.rule
    if rule is not None:
        filters = rule.filters
        if filters.edits_request:
            call.set_header_list(filters.request_headers(call.header_list()))
        if filters.rewrites:
            call.set_path(filters.rewrite_path(call.path, rule))
        if rule.timeout is not None:
            timeout = rule.timeout
    if under_retry:  # every request under a retry policy counts toward the budget's ratio
        policy.budget.record_request(time.monotonic())
    if mirror is not None:
        call.mirror(mirror)
    call.forward(timeout)
