"""The endpoint stage's retry decisions, for every protocol.

A failed try is retried when all of these hold (docs/internals.md §8):

- the route's (else the service's) ``RetryPolicy`` applies to the request: its method is one
  the policy allows, or it is a gRPC call (gRPC names what is safe to retry by status code);
- fewer than ``max_tries`` tries have started, nothing of the response has reached the
  caller, and the request arrived whole with a body copy that fits ``max_body_bytes``
  (``Call.replayable``);
- the failure is one the policy retries on: a response ``status`` (or gRPC status), or a
  ``cause`` without a response (``connect-failed``, ``upstream-reset``, ``upstream-timeout``);
- the retry budget of the service the caller named allows one more (withdrawn when it does).

Inbound, with no policy: a request whose local app closed the connection before any of the
response is sent to the app once more (``may_resend_to_app``) when the connection was reused
(it may have been closed while idle) or the request is safe (RFC 9110 §9.2.1: GET, HEAD,
OPTIONS, TRACE) and has no body. An app that died is then not reachable, and the caller's
sidecar takes the request elsewhere (``app-unreachable``, below); a restarted one answers.

Outbound, with no policy: a safe request without a body whose destination closed the
connection (HTTP/2: reset the stream, or lost the connection) before any of the response goes
to another endpoint, once, within the retry budget (``may_resend_elsewhere``): its app died
while answering, and a safe request may be sent again (RFC 9110 §9.2.2).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from gossamer.proxy.pipeline.concrete import MAX_CONNECT_ATTEMPTS

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.balancer import EndpointState
    from gossamer.proxy.pipeline.call import Call
    from gossamer.proxy.resilience.retry import RetryPolicy
    from gossamer.proxy.snapshot.table import OutboundService

__all__ = [
    "SAFE_METHODS",
    "UNPROCESSED",
    "applies",
    "backoff",
    "may_reroute",
    "may_resend_elsewhere",
    "may_resend_to_app",
    "may_retry",
]

# ``x-gossamer-error`` causes with which a destination's sidecar answers a request that no app
# saw (its app cannot be reached, it has none, or it has no config yet). The caller's sidecar
# takes such a request to another endpoint by default, like a failed connection; sidecars
# remove the header from what apps answer, so an app cannot claim it.
UNPROCESSED = frozenset({b"app-unreachable", b"no-local-app", b"proxy-not-ready"})
ERROR_HEADER = b"x-gossamer-error"

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
RESENT_TO_APP = 2  # ``Call.tries`` of an inbound request sent to its app a second time

_rng = random.Random()


def may_resend_to_app(call: Call, *, reused: bool, has_body: bool) -> bool:
    """Inbound: the app's connection closed before any of ``call``'s response; whether to
    send it to the app once more (see the module docstring). Marks it sent again when so."""
    if call.tries >= RESENT_TO_APP or has_body or not (reused or call.method in SAFE_METHODS):
        return False
    call.tries = RESENT_TO_APP
    return True


def may_resend_elsewhere(call: Call, service: OutboundService, tries: int) -> bool:
    """Outbound: ``call``'s destination dropped it before any of the response; whether to send
    it to another endpoint now (see the module docstring): a safe request that may be
    repeated, on its first try, another endpoint to go to, and the retry budget allows it
    (withdrawn then). The caller knows it has no body."""
    if tries > 1 or call.method not in SAFE_METHODS or not call.may_repeat():
        return False
    if len(service.balancer.endpoints) < 2:
        return False
    logical = call.logical or call.service
    return logical is not None and logical.policy.budget.try_retry(time.monotonic())


def applies(call: Call, retry: RetryPolicy) -> bool:
    """Whether ``retry`` may retry ``call`` at all (by method, or as a gRPC call)."""
    return (call.grpc or retry.allows_method(call.method)) and call.may_repeat()


def may_retry(
    call: Call, *, status: int = 0, grpc_code: int | None = None, cause: str = ""
) -> bool:
    """Whether another try is allowed now; withdraws it from the budget when it is."""
    retry = call.retry
    if retry is None or call.tries >= retry.max_tries:
        return False
    if not call.replayable(retry.max_body_bytes):
        return False
    if status and not retry.retriable_status(status, grpc_code):
        return False
    if cause and not retry.retriable_cause(cause):
        return False
    logical = call.logical or call.service
    if logical is None:
        return False
    return logical.policy.budget.try_retry(time.monotonic())


def may_reroute(
    call: Call, service: OutboundService, endpoint: EndpointState, tries: int, resendable: bool
) -> bool:
    """The destination's sidecar answered that no app saw ``call`` (``UNPROCESSED``): eject
    ``endpoint`` for a while (outlier detection hears a connect failure), and say whether the
    request may go to another endpoint now: the codec can send it again (``resendable``),
    fewer than ``MAX_CONNECT_ATTEMPTS`` tries started, another endpoint exists, and the retry
    budget allows it (withdrawn then)."""
    endpoint.penalise(time.monotonic_ns())
    service.record_outcome(endpoint, "connect-failure")
    if not resendable or tries >= MAX_CONNECT_ATTEMPTS or len(service.balancer.endpoints) < 2:
        return False
    logical = call.logical or call.service
    return logical is not None and logical.policy.budget.try_retry(time.monotonic())


def backoff(call: Call) -> float:
    """How long to wait before the next try (the policy's exponential backoff, full jitter)."""
    retry = call.retry
    assert retry is not None
    return retry.backoff(call.tries - 1, _rng)

