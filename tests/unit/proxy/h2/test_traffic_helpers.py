"""Sans-IO pieces of HTTP/2 traffic management: gRPC status mappings, header block edits,
and the per-service stream account behind connection limits."""

from __future__ import annotations

from typing import Any

from gossamer.proxy.h2.headers import (
    error_headers,
    grpc_code_for_error,
    http_status_for_grpc,
    pseudo_fields,
    replace_path,
    strip_connection_fields,
)
from gossamer.proxy.h2.limits import ADMITTED, OVERFLOW, QUEUED, StreamAccount
from gossamer.proxy.resilience.limits import ConnectionLimits
from gossamer.proxy.resilience.outlier import classify


class Waiting:
    """A stream as the account sees it: wanted or not, and rerouted when its turn comes."""

    def __init__(self, wanted: bool = True) -> None:
        self.plan: Any = type("Plan", (), {"queued": True})()
        self._wanted = wanted
        self.down = self
        self.started: list[Waiting] = []

    def wanted(self) -> bool:
        return self._wanted

    def reroute(self, stream: Waiting) -> None:
        stream.started.append(stream)


def test_a_proxy_enforced_deadline_is_deadline_exceeded_for_grpc() -> None:
    """upstream-timeout maps to DEADLINE_EXCEEDED (4); other causes follow the HTTP status."""
    assert grpc_code_for_error(504, "upstream-timeout") == 4
    assert grpc_code_for_error(503, "overflow") == 14
    headers = dict(error_headers(504, "upstream-timeout", "", request_id=None, grpc=True))
    assert headers[b"grpc-status"] == b"4"


def test_grpc_codes_classify_as_outlier_outcomes_like_their_http_statuses() -> None:
    """UNAVAILABLE and DEADLINE_EXCEEDED are gateway errors, INTERNAL a 5xx, NOT_FOUND ok."""
    assert classify(http_status_for_grpc(14)) == "gateway-error"
    assert classify(http_status_for_grpc(4)) == "gateway-error"
    assert classify(http_status_for_grpc(13)) == "error-5xx"
    assert classify(http_status_for_grpc(5)) == "ok"
    assert classify(http_status_for_grpc(0)) == "ok"
    assert http_status_for_grpc(99) == 500


def test_pseudo_fields_and_path_replacement() -> None:
    """Method, path and scheme come from the pseudo-fields; only :path is replaced."""
    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a?b"),
               (b":authority", b"x"), (b"x-path", b":path")]  # fmt: skip
    assert pseudo_fields(headers) == (b"GET", b"/a?b", b"http")
    assert replace_path(headers, b"/z")[2] == (b":path", b"/z")
    assert replace_path(headers, b"/z")[4] == (b"x-path", b":path")


def test_connection_specific_fields_are_stripped_but_te_trailers_stays() -> None:
    """Fields HTTP/2 forbids are dropped after header edits; ``te: trailers`` is allowed."""
    headers = [(b"connection", b"close"), (b"te", b"trailers"), (b"te", b"gzip"),
               (b"upgrade", b"h2c"), (b"x-ok", b"1")]  # fmt: skip
    assert strip_connection_fields(headers) == [(b"te", b"trailers"), (b"x-ok", b"1")]


def test_account_admits_up_to_the_limit_then_queues_then_overflows() -> None:
    """max_connections streams in flight, max_pending waiting, the next one overflows."""
    account = StreamAccount()
    limits = ConnectionLimits(max_connections=2, max_pending=1)
    verdicts = [account.admit(Waiting(), limits) for _ in range(4)]  # type: ignore[arg-type]
    assert verdicts == [ADMITTED, ADMITTED, QUEUED, OVERFLOW]
    assert account.active == 2 and len(account.pending) == 1


def test_a_freed_slot_goes_to_the_oldest_stream_still_wanted() -> None:
    """A stream that gave up while waiting is skipped; the next one starts."""
    account = StreamAccount()
    limits = ConnectionLimits(max_connections=1)
    first, gone, next_ = Waiting(), Waiting(wanted=False), Waiting()
    for stream in (first, gone, next_):
        account.admit(stream, limits)  # type: ignore[arg-type]
    account.leave(first, False)  # type: ignore[arg-type]
    assert next_.started == [next_] and gone.started == []
    assert account.active == 1 and not account.pending
    assert next_.plan.queued is False


def test_a_queued_stream_that_finishes_leaves_the_queue() -> None:
    """A waiting stream that is done (timeout, client reset) frees its place at once."""
    account = StreamAccount()
    limits = ConnectionLimits(max_connections=1, max_pending=1)
    first, waiting = Waiting(), Waiting()
    account.admit(first, limits)  # type: ignore[arg-type]
    account.admit(waiting, limits)  # type: ignore[arg-type]
    account.leave(waiting, True)  # type: ignore[arg-type]
    assert not account.pending and account.active == 1
    assert account.admit(Waiting(), limits) == QUEUED  # type: ignore[arg-type]


def test_a_mirror_takes_a_free_slot_but_never_jumps_the_queue() -> None:
    """``take`` succeeds only with a free slot and nobody waiting."""
    account = StreamAccount()
    limits = ConnectionLimits(max_connections=1, max_pending=5)
    assert account.take(limits)
    assert not account.take(limits)
    account.admit(Waiting(), limits)  # type: ignore[arg-type]
    account.active = 0
    assert not account.take(limits)
