"""The named slots where request features plug into the pipeline, and what runs in them.

Every request of a direction passes the same slots, in this order, whatever its protocol:

=============  ================================================================  ==========
slot           what plugs in                                                     phase
=============  ================================================================  ==========
trace          trace context: accept W3C/B3 headers, start a span                request
authenticate   end-user credentials (JWT): verify, copy claims to headers        request
authorize      who may call what: allow, deny, audit                             request
filter         the user's own filters (``gossamer.filters``)                      all three
observe        access log, audit record, tap                                     complete
=============  ================================================================  ==========

A slot holds ``Stage`` objects. A direction whose config puts nothing in any slot has no
``Stages`` at all (``RouteTable.inbound_stages`` / ``outbound_stages`` are None), so an
unconfigured sidecar pays one attribute test per request and nothing else. With stages:

- ``request(call)`` runs each stage's ``on_request`` in slot order; a stage that answers the
  request itself (``call.fail``) returns False and the rest do not run;
- ``response(call, status, headers)`` runs the stages that asked to see responses, in the
  reverse order (the last to see the request is the first to see its response), each
  returning the (possibly edited) header list to forward;
- ``complete(call)`` tells every stage that observes completions how the request ended
  (``call.status``; 0 when the caller went away first).

The inbound direction runs its slots after the caller's identity is known (``call.peer``) and
before the local rate limit and the app; the outbound direction after discovery and before the
logical stage (``pipeline.outbound``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossamer.proxy.pipeline.call import Call, Header

__all__ = ["SLOTS", "Stage", "Stages"]

SLOTS = ("trace", "authenticate", "authorize", "filter", "observe")


class Stage:
    """One thing that runs in a slot. Subclasses override what they need and say so with
    ``sees_responses`` / ``sees_completions`` (a stage that does not is never called there)."""

    slot = "filter"
    name = ""
    sees_responses = False
    sees_completions = False

    def on_request(self, call: Call) -> bool:
        """Look at (and edit) the request; False when the stage answered it itself."""
        return True

    def on_response(self, call: Call, status: int, headers: list[Header]) -> list[Header]:
        """The response head on its way to the caller: the header list to forward."""
        return headers

    def on_complete(self, call: Call) -> None:
        """The request is over (``call.status`` says how)."""


class Stages:
    """The stages of one direction, in slot order."""

    __slots__ = ("all", "completes", "responses")

    def __init__(self, stages: Sequence[Stage]) -> None:
        order = {slot: i for i, slot in enumerate(SLOTS)}
        self.all = tuple(sorted(stages, key=lambda stage: order[stage.slot]))  # stable
        self.responses = tuple(s for s in reversed(self.all) if s.sees_responses)
        self.completes = tuple(s for s in self.all if s.sees_completions)

    def request(self, call: Call) -> bool:
        """Run the request phase; False when a stage answered the request."""
        if self.responses or self.completes:
            call.stages = self
        return all(stage.on_request(call) for stage in self.all)

    def response(self, call: Call, status: int, headers: list[Header]) -> list[Header]:
        for stage in self.responses:
            headers = stage.on_response(call, status, headers)
        return headers

    def complete(self, call: Call) -> None:
        for stage in self.completes:
            stage.on_complete(call)
