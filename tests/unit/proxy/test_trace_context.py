"""Trace context on the wire (proxy/observe/trace_context.py): W3C and B3 read, malformed
headers ignored, the context sent on, and the ratio decision the same for a trace id."""

from __future__ import annotations

from gossamer.proxy.observe.trace_context import (
    Tracing,
    new_root,
    new_span_id,
    new_trace_id,
    propagate,
    ratio_sampled,
    read_context,
    trace_headers,
)

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
MINE = b"b7ad6b7169203331"


def test_w3c_traceparent_and_tracestate_are_read() -> None:
    context, state = read_context(trace_headers([(b"Traceparent", b"00-%s-%s-01" % (TRACE, SPAN)),
                                   (b"tracestate", b"vendor=x,other=y")]))  # fmt: skip
    assert context is not None
    assert (context.trace_id, context.parent_id, context.sampled) == (TRACE, SPAN, True)
    assert state == b"vendor=x,other=y"
    context, _ = read_context(trace_headers([(b"traceparent", b"00-%s-%s-00" % (TRACE, SPAN))]))
    assert context is not None and context.sampled is False


def test_malformed_w3c_headers_count_as_absent() -> None:
    for bad in (b"00-%s-%s-01-extra" % (TRACE, SPAN), b"ff-%s-%s-01" % (TRACE, SPAN),
                b"00-%s-%s-01" % (b"0" * 32, SPAN), b"00-%s-%s-01" % (TRACE, b"0" * 16),
                b"00-%s-%s-0z" % (TRACE, SPAN), b"00-xyz-%s-01" % SPAN, b"garbage"):  # fmt: skip
        context, _ = read_context(trace_headers([(b"traceparent", bad)]))
        assert context is None, bad
    # A later version may carry more fields: read the first four.
    later = b"01-%s-%s-01-more" % (TRACE, SPAN)
    context, _ = read_context(trace_headers([(b"traceparent", later)]))
    assert context is not None and context.trace_id == TRACE


def test_b3_single_and_multi_are_read_and_64_bit_ids_widened() -> None:
    context, _ = read_context(trace_headers([(b"b3", b"%s-%s-1" % (TRACE, SPAN))]))
    assert context is not None and (context.trace_id, context.sampled, context.b3) == (
        TRACE, True, "single")  # fmt: skip
    context, _ = read_context(trace_headers([(b"b3", b"a3ce929d0e0e4736-%s-d" % SPAN)]))
    assert context is not None and context.trace_id == b"0" * 16 + b"a3ce929d0e0e4736"
    assert context.sampled is True  # debug samples
    context, _ = read_context(trace_headers([(b"b3", b"0")]))
    assert context is not None and context.sampled is False and not context.trace_id
    context, _ = read_context(trace_headers([(b"X-B3-TraceId", TRACE), (b"X-B3-SpanId", SPAN),
                               (b"X-B3-Sampled", b"true")]))  # fmt: skip
    assert context is not None and (context.parent_id, context.sampled, context.b3) == (
        SPAN, True, "multi")  # fmt: skip
    context, _ = read_context(trace_headers([(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN),
                               (b"x-b3-flags", b"1")]))  # fmt: skip
    assert context is not None and context.sampled is True
    assert read_context(trace_headers([(b"x-b3-traceid", TRACE)]))[0] is None  # no span id


def test_w3c_wins_over_b3_and_the_b3_form_is_kept_for_sending_on() -> None:
    context, _ = read_context(trace_headers([(b"b3", b"%s-%s-0" % (b"1" * 32, SPAN)),
                               (b"traceparent", b"00-%s-%s-01" % (TRACE, SPAN))]))  # fmt: skip
    assert context is not None and context.trace_id == TRACE and context.b3 == "single"


def test_propagate_replaces_every_trace_header_and_names_this_hop() -> None:
    headers = [(b"host", b"orders"), (b"X-B3-TraceId", TRACE), (b"X-B3-SpanId", SPAN),
               (b"x-b3-sampled", b"1"), (b"tracestate", b"a=b")]  # fmt: skip
    parent, state = read_context(trace_headers(headers))
    out = propagate(headers, TRACE, MINE, True, parent, state)
    assert out[0] == (b"host", b"orders")
    names = [name.lower() for name, _ in out]
    assert names.count(b"x-b3-spanid") == 1 and names.count(b"traceparent") == 1
    sent = dict(out)
    assert sent[b"traceparent"] == b"00-%s-%s-01" % (TRACE, MINE)
    assert sent[b"tracestate"] == b"a=b"
    assert sent[b"x-b3-spanid"] == MINE and sent[b"x-b3-parentspanid"] == SPAN
    unsampled = dict(propagate([], TRACE, MINE, False, None, b""))
    assert unsampled == {b"traceparent": b"00-%s-%s-00" % (TRACE, MINE)}


def test_the_ratio_decides_by_trace_id_alike_everywhere() -> None:
    ids = [new_trace_id() for _ in range(4000)]
    tenth = Tracing(0.1)
    chosen = [trace for trace in ids if ratio_sampled(trace, tenth)]
    assert 250 < len(chosen) < 550  # about 10 % (bounds far outside chance)
    assert chosen == [trace for trace in ids if ratio_sampled(trace, Tracing(0.1))]
    assert not any(ratio_sampled(trace, Tracing(0.0)) for trace in ids)
    assert all(ratio_sampled(trace, Tracing(1.0)) for trace in ids[:100])


def test_a_root_is_decided_as_the_ratio_decides_its_id() -> None:
    """``new_root`` answers without reading its id back: the same answer as ``ratio_sampled``
    for that id, at every ratio, including 0 (none) and 1 (all); ids are 32 lower-case hex
    digits, none repeated, none with a zero half."""
    for ratio in (0.0, 0.01, 0.5, 1.0):
        tracing = Tracing(ratio)
        roots = [new_root(tracing) for _ in range(3000)]
        assert all(sampled == ratio_sampled(trace, tracing) for trace, sampled in roots)
        share = sum(sampled for _, sampled in roots) / len(roots)
        assert abs(share - ratio) < 0.05, (ratio, share)
    ids = [new_trace_id() for _ in range(3000)] + [new_span_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) in (32, 16) and i == i.lower() and int(i, 16) for i in ids)
    assert all(int(i[:16], 16) and int(i[16:], 16) for i in ids if len(i) == 32)


def test_the_scan_of_a_plain_request_answers_the_first_look() -> None:
    """What the HTTP/1.1 scan found (the first traceparent, whether B3 came) answers
    ``trace_first_look`` while the lines are those scanned; after an edit, a search does."""
    from bench.tracing import _exchange

    parent = b"00-%s-%s-01" % (TRACE, SPAN)
    ex = _exchange(b"\r\nHost: orders\r\ntraceparent: %s\r\nX-B3-Sampled: 1" % parent)
    assert (ex.scanned_traceparent, ex.scanned_b3) == (parent, True)
    assert ex.trace_first_look() == (parent, True)
    ex.scanned_traceparent = b"stale"  # the lines edited since: the scan no longer counts
    ex.add_header(b"x-edited", b"1")
    assert ex.trace_first_look() == (parent, True)
    ex.set_header_list([(b"host", b"orders")])
    assert ex.trace_first_look() == (None, False)


def test_a_codec_answers_the_trace_headers_without_parsing_the_head() -> None:
    """HTTP/1.1 reads header values from the unparsed plain lines (a search), with the same
    answer as from the parsed list, and adds ``traceparent`` to the lines."""
    from bench.tracing import _exchange

    plain = (b"\r\nHost: orders\r\nTraceParent:  00-%s-%s-01 \r\nX-B3-Sampled: 1"
             b"\r\naccept: */*" % (TRACE, SPAN))  # fmt: skip
    ex = _exchange(plain)
    names = (b"traceparent", b"b3", b"x-b3-sampled")
    searched = ex.header_values(names)
    assert ex.plain == plain  # not parsed
    parsed = trace_headers(ex.header_list())
    assert searched == [parsed.get(name) for name in names] == [
        b"00-%s-%s-01" % (TRACE, SPAN), None, b"1"]  # fmt: skip
    fresh = _exchange(b"\r\nHost: orders")
    fresh.add_header(b"traceparent", b"00-%s-%s-00" % (TRACE, MINE))
    assert fresh.header_list() == [(b"Host", b"orders"),
                                   (b"traceparent", b"00-%s-%s-00" % (TRACE, MINE))]  # fmt: skip
