"""Traffic management of outbound HTTP/2 streams: retries, held gRPC heads, replayed bodies,
flow-control credit, deadlines and route answers, with in-memory sessions (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from gossamer.protocol.h2.session import CLOSED, DATA, HEADERS
from tests.unit.proxy.h2.plans import (
    GRPC_HEAD,
    Outbound,
    grpc_only,
    service,
    settle_loop,
)

RETRY = {"attempts": 3, "on": ["unavailable", "reset"], "backoff_base_ms": 1,
         "backoff_max_ms": 2}  # fmt: skip
PUT = [(b":method", b"PUT"), (b":scheme", b"http"), (b":authority", b"catalog"),
       (b":path", b"/items")]  # fmt: skip


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def heads(events: list[Any]) -> list[dict[bytes, bytes]]:
    return [dict(e[2]) for e in events if e[0] == HEADERS]


def test_no_plan_for_a_service_without_routes_or_policy() -> None:
    """Streams to a plain service carry no plan; a timeout alone needs one, as does a rule."""

    async def body() -> None:
        for svc, planned in (
            (service(), False),
            (service({"timeout_ms": 100}), True),
            (service(routes=[{"name": "r"}]), True),
        ):
            stream = Outbound(svc).call(svc)
            assert (stream.plan is not None) is planned

    run(body)


def test_trailers_only_unavailable_is_retried_with_the_body_replayed() -> None:
    """UNAVAILABLE in a trailers-only response is not forwarded: the next try gets the whole
    body again, and only its answer reaches the app."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        down.call(svc, body=b"payload")
        first = down.tries[0]
        assert first.body() == b"payload" and first.ended()
        first.answer(grpc_only(14))
        await settle_loop()
        assert len(down.tries) == 2
        second = down.tries[1]
        assert second.body() == b"payload" and second.ended()
        assert second.avoid is not None  # the failed endpoint is avoided
        second.answer(GRPC_HEAD, b"\0\0\0\0\0", [(b"grpc-status", b"0")])
        got = heads(down.responses())
        assert [h.get(b"grpc-status") for h in got] == [None, b"0"]

    run(body)


def test_a_replayed_body_is_credited_to_the_client_once() -> None:
    """Flow-control credit for the request body equals the bytes received, retries or not."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        down.call(svc, body=b"x" * 30000)
        down.tries[0].answer(grpc_only(14))
        await settle_loop()
        down.tries[1].answer(grpc_only(14))
        await settle_loop()
        down.tries[2].answer(grpc_only(0))
        down.responses()
        assert [t.body() for t in down.tries] == [b"x" * 30000] * 3
        assert down.credited == 30000

    run(body)


def test_held_grpc_head_goes_out_with_the_first_data_and_is_not_retried() -> None:
    """A gRPC head without status waits; DATA releases it, so later UNAVAILABLE trailers
    reach the app instead of a retry."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        stream = down.call(svc, body=b"q")
        down.tries[0].answer(GRPC_HEAD, b"\0\0\0\0\0", [(b"grpc-status", b"14")])
        await settle_loop()
        assert len(down.tries) == 1
        events = down.responses()
        assert [h.get(b"grpc-status") for h in heads(events)] == [None, b"14"]
        assert b"".join(e[2] for e in events if e[0] == DATA) == b"\0\0\0\0\0"
        assert stream.grpc_status == 14

    run(body)


def test_held_grpc_head_with_retriable_trailers_and_no_data_is_retried() -> None:
    """Head then UNAVAILABLE trailers with no message in between: retried, nothing sent."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        down.tries[0].answer(GRPC_HEAD, b"", [(b"grpc-status", b"14")])
        assert heads(down.responses()) == []
        await settle_loop()
        assert len(down.tries) == 2

    run(body)


def test_held_grpc_head_with_other_trailers_goes_out_whole() -> None:
    """Head then NOT_FOUND trailers (not in ``on``): the app gets both, no retry."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        down.tries[0].answer(GRPC_HEAD, b"", [(b"grpc-status", b"5")])
        await settle_loop()
        assert len(down.tries) == 1
        assert [h.get(b"grpc-status") for h in heads(down.responses())] == [None, b"5"]

    run(body)


def test_reset_before_the_response_is_retried_under_reset() -> None:
    """RST_STREAM from the upstream before any response: another try."""

    async def body() -> None:
        svc = service({"retry": RETRY})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        first = down.tries[0]
        first.server.reset(first.sid, 2)
        first.pump()
        await settle_loop()
        assert len(down.tries) == 2

    run(body)


def test_reset_without_the_reset_condition_answers_502() -> None:
    """With only ``unavailable`` in ``on``, a reset is answered upstream-reset (gRPC: 14)."""

    async def body() -> None:
        svc = service({"retry": {**RETRY, "on": ["unavailable"]}})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        first = down.tries[0]
        first.server.reset(first.sid, 2)
        first.pump()
        await settle_loop()
        assert len(down.tries) == 1
        (head,) = heads(down.responses())
        assert head[b"x-gossamer-error"] == b"upstream-reset"
        assert head[b"grpc-status"] == b"14"

    run(body)


def test_body_over_max_body_bytes_is_not_retried() -> None:
    """A body larger than the replay buffer limit is forwarded but never replayed."""

    async def body() -> None:
        svc = service({"retry": {**RETRY, "max_body_bytes": 100}})
        down = Outbound(svc)
        down.call(svc, body=b"y" * 500)
        down.tries[0].answer(grpc_only(14))
        await settle_loop()
        assert len(down.tries) == 1
        assert heads(down.responses())[0][b"grpc-status"] == b"14"
        assert down.credited == 500

    run(body)


def test_exhausted_budget_stops_retries() -> None:
    """No budget (ratio 0, no floor): the retriable answer goes to the app as is."""

    async def body() -> None:
        svc = service({"retry": RETRY, "retry_budget": {"ratio": 0.0, "min_per_second": 0}})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        down.tries[0].answer(grpc_only(14))
        await settle_loop()
        assert len(down.tries) == 1
        assert heads(down.responses())[0][b"grpc-status"] == b"14"

    run(body)


def test_methods_outside_the_policy_are_not_retried_but_grpc_calls_are() -> None:
    """A plain POST is not retried by default; a gRPC call (also POST) is."""

    async def body() -> None:
        svc = service({"retry": {**RETRY, "on": ["5xx"]}})
        down = Outbound(svc)
        post = [(b":method", b"POST"), *PUT[1:]]
        down.call(svc, post, b"q")
        down.tries[0].answer([(b":status", b"503")])
        await settle_loop()
        assert len(down.tries) == 1
        down.call(svc, body=b"q")
        down.tries[1].answer([(b":status", b"503"), (b"content-type", b"application/grpc")])
        await settle_loop()
        assert len(down.tries) == 3

    run(body)


def test_route_timeout_answers_deadline_exceeded_and_cancels_upstream() -> None:
    """No answer within the timeout: a trailers-only DEADLINE_EXCEEDED for the gRPC caller,
    RST_STREAM CANCEL upstream."""

    async def body() -> None:
        svc = service({"timeout_ms": 30})
        down = Outbound(svc)
        stream = down.call(svc, body=b"q")
        await settle_loop(0.06)
        (head,) = heads(down.responses())
        assert head[b"grpc-status"] == b"4"
        assert head[b"x-gossamer-error"] == b"upstream-timeout"
        first = down.tries[0]
        first.pump()
        assert any(e[0] == CLOSED and e[2] == 8 for e in first.events)
        assert stream.done and stream.status == 504

    run(body)


def test_timeout_after_the_response_started_ends_grpc_with_deadline_trailers() -> None:
    """A forwarded gRPC response cut by the deadline ends with DEADLINE_EXCEEDED trailers."""

    async def body() -> None:
        svc = service({"timeout_ms": 30})
        down = Outbound(svc)
        down.call(svc, body=b"q")
        first = down.tries[0]
        first.server.submit_response(first.sid, GRPC_HEAD, end_stream=False)
        first.server.send_data(first.sid, b"\0\0\0\0\0")
        first.pump()
        await settle_loop(0.06)
        got = heads(down.responses())
        assert [h.get(b"grpc-status") for h in got] == [None, b"4"]

    run(body)


def test_redirect_rule_answers_with_location() -> None:
    """A redirect rule answers itself: no upstream try."""

    async def body() -> None:
        svc = service(routes=[{"name": "moved", "filters": {"redirect": {
            "host": "new.example", "status_code": 308}}}])  # fmt: skip
        down = Outbound(svc)
        down.call(svc, PUT)
        (head,) = heads(down.responses())
        assert head[b":status"] == b"308"
        assert head[b"location"] == b"http://new.example/items"
        assert down.tries == []

    run(body)


def test_subset_backend_and_request_edits_reach_the_upstream() -> None:
    """The rule's subset picks the v2 endpoint; set/remove edits and the rewrite apply,
    connection-specific fields an edit would add are dropped."""

    async def body() -> None:
        svc = service(routes=[{
            "name": "v2", "backends": [{"service": "catalog.default",
                                        "subset": {"version": "v2"}}],
            "filters": {"request_headers": {"set": {"x-v": "2", "connection": "close"}},
                        "rewrite": {"type": "ReplaceFullPath", "value": "/new"}},
        }])  # fmt: skip
        down = Outbound(svc)
        stream = down.call(svc, PUT)
        sent = dict(down.tries[0].events[0][2])
        assert sent[b":path"] == b"/new"
        assert sent[b"x-v"] == b"2"
        assert b"connection" not in sent
        assert stream.endpoint is not None and stream.endpoint.labels == {"version": "v2"}

    run(body)


def test_overflow_beyond_max_pending_is_a_fast_503() -> None:
    """One slot, one waiting place: the third stream is refused with overflow at once; the
    waiting one starts when the first finishes."""

    async def body() -> None:
        svc = service({"connection_pool": {"max_connections": 1, "max_pending": 1}})
        down = Outbound(svc)
        first = down.call(svc, PUT)
        second = down.call(svc, PUT)
        third = down.call(svc, PUT)
        assert len(down.tries) == 1
        assert third.done and third.status == 503
        down.tries[0].answer([(b":status", b"200")])
        assert first.done
        assert len(down.tries) == 2 and not second.done
        overflow = [h for h in heads(down.responses()) if h.get(b"x-gossamer-error")]
        assert [h[b"x-gossamer-error"] for h in overflow] == [b"overflow"]

    run(body)
