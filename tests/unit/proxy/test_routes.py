"""HTTP route compilation and matching, weighted backends, and route filters (sans-IO)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.http_rules import (
    BackendRef,
    FaultPolicy,
    HttpRouter,
    HttpRule,
    MirrorPolicy,
    TcpRoute,
)

SVC = "catalog.default"


def rule(name: str = "r", **extra: Any) -> dict[str, Any]:
    """A rule in snapshot form sending to the v1 subset unless ``extra`` says otherwise."""
    base: dict[str, Any] = {
        "name": name,
        "matches": [],
        "backends": [{"service": SVC, "subset": {"version": "v1"}, "weight": 1}],
    }
    base.update(extra)
    return base


def router(*rules: dict[str, Any]) -> HttpRouter:
    return HttpRouter.from_snapshot(list(rules), "routes")


def path_rule(kind: str, value: str, name: str = "r") -> dict[str, Any]:
    return rule(name, matches=[{"path": {"type": kind, "value": value}}])


def matched(r: HttpRouter, target: bytes, method: bytes = b"GET", headers: Any = ()) -> str | None:
    found = r.match(method, target, list(headers))
    return None if found is None else found.name


class TestPathMatch:
    def test_exact_path_matches_only_that_path(self) -> None:
        """Exact compares the whole path (the query string is not part of it)."""
        r = router(path_rule("Exact", "/items"))
        assert matched(r, b"/items") == "r"
        assert matched(r, b"/items?x=1") == "r"
        assert matched(r, b"/items/") is None
        assert matched(r, b"/items/1") is None

    def test_prefix_is_segment_aware(self) -> None:
        """Prefix /items matches /items, /items/ and /items/1 but not /itemsx."""
        r = router(path_rule("Prefix", "/items"))
        for target in (b"/items", b"/items/", b"/items/1", b"/items/1/2?q=1", b"/items?q"):
            assert matched(r, target) == "r", target
        for target in (b"/itemsx", b"/item", b"/", b"/other/items"):
            assert matched(r, target) is None, target

    def test_prefix_trailing_slash_is_ignored(self) -> None:
        """A prefix written /items/ behaves as /items (Gateway API)."""
        r = router(path_rule("Prefix", "/items/"))
        assert matched(r, b"/items") == "r"
        assert matched(r, b"/items/3") == "r"
        assert matched(r, b"/itemsx") is None

    def test_root_prefix_matches_everything(self) -> None:
        """Prefix / matches every path."""
        r = router(path_rule("Prefix", "/"))
        assert matched(r, b"/") == "r"
        assert matched(r, b"/anything/at/all?x") == "r"

    def test_regex_must_match_the_whole_path(self) -> None:
        """RegularExpression is a full match, not a search."""
        r = router(path_rule("RegularExpression", r"/items/\d+"))
        assert matched(r, b"/items/42") == "r"
        assert matched(r, b"/items/42/detail") is None
        assert matched(r, b"/x/items/42") is None


class TestConditions:
    def test_method_must_match(self) -> None:
        """A match with a method only takes requests with that method."""
        r = router(rule(matches=[{"method": "POST"}]))
        assert matched(r, b"/", b"POST") == "r"
        assert matched(r, b"/", b"GET") is None

    def test_header_names_are_case_insensitive(self) -> None:
        """Header names compare case-insensitively, values exactly."""
        r = router(
            rule(matches=[{"headers": [{"name": "X-Canary", "type": "Exact", "value": "1"}]}])
        )
        assert matched(r, b"/", headers=[(b"x-CANARY", b"1")]) == "r"
        assert matched(r, b"/", headers=[(b"x-canary", b"2")]) is None
        assert matched(r, b"/", headers=[]) is None

    def test_any_value_of_a_repeated_header_may_match(self) -> None:
        """With the same header several times, one matching value is enough."""
        r = router(rule(matches=[{"headers": [{"name": "x-tag", "type": "Exact", "value": "b"}]}]))
        assert matched(r, b"/", headers=[(b"x-tag", b"a"), (b"X-Tag", b"b")]) == "r"

    def test_header_prefix_regex_and_present(self) -> None:
        """Prefix, full-match RegularExpression and Present conditions on headers."""
        r = router(
            rule(
                "prefix",
                matches=[{"headers": [{"name": "ua", "type": "Prefix", "value": "curl/"}]}],
            ),
            rule(
                "regex",
                matches=[
                    {"headers": [{"name": "v", "type": "RegularExpression", "value": "v[0-9]"}]}
                ],
            ),
            rule("present", matches=[{"headers": [{"name": "x-debug", "type": "Present"}]}]),
        )
        assert matched(r, b"/", headers=[(b"UA", b"curl/8.0")]) == "prefix"
        assert matched(r, b"/", headers=[(b"v", b"v2")]) == "regex"
        assert matched(r, b"/", headers=[(b"v", b"v22")]) is None
        assert matched(r, b"/", headers=[(b"x-debug", b"")]) == "present"

    def test_query_params_are_percent_decoded(self) -> None:
        """Query values compare after percent-decoding; '+' stays a plus sign."""
        r = router(
            rule("exact", matches=[{"query": [{"name": "q", "type": "Exact", "value": "a b/ü"}]}]),
            rule("plus", matches=[{"query": [{"name": "p", "type": "Exact", "value": "1+1"}]}]),
        )
        assert matched(r, b"/s?q=a%20b%2F%C3%BC") == "exact"
        assert matched(r, b"/s?p=1+1") == "plus"
        assert matched(r, b"/s?q=a+b") is None

    def test_query_regex_present_and_repeated_values(self) -> None:
        """RegularExpression (full), Present, and any of repeated values."""
        r = router(
            rule(
                "regex",
                matches=[
                    {"query": [{"name": "id", "type": "RegularExpression", "value": "[0-9]+"}]}
                ],
            ),
            rule("present", matches=[{"query": [{"name": "debug", "type": "Present"}]}]),
        )
        assert matched(r, b"/?id=x&id=12") == "regex"
        assert matched(r, b"/?id=12x") is None
        assert matched(r, b"/?debug") == "present"
        assert matched(r, b"/?debug=") == "present"
        assert matched(r, b"/?nodebug=1") is None

    def test_conditions_inside_a_match_are_all_required(self) -> None:
        """Path, method, header and query in one match must all hold."""
        m = {
            "path": {"type": "Prefix", "value": "/a"},
            "method": "GET",
            "headers": [{"name": "x", "type": "Exact", "value": "1"}],
            "query": [{"name": "y", "type": "Present"}],
        }
        r = router(rule(matches=[m]))
        assert matched(r, b"/a/b?y", headers=[(b"x", b"1")]) == "r"
        assert matched(r, b"/a/b", headers=[(b"x", b"1")]) is None
        assert matched(r, b"/a/b?y", headers=[(b"x", b"2")]) is None
        assert matched(r, b"/a/b?y", b"PUT", headers=[(b"x", b"1")]) is None

    def test_matches_of_a_rule_are_alternatives(self) -> None:
        """A rule with several matches takes a request that satisfies any of them."""
        r = router(rule(matches=[{"path": {"type": "Exact", "value": "/a"}}, {"method": "DELETE"}]))
        assert matched(r, b"/a") == "r"
        assert matched(r, b"/b", b"DELETE") == "r"
        assert matched(r, b"/b") is None

    def test_first_matching_rule_wins_and_empty_matches_take_all(self) -> None:
        """Rules are tried in order; a rule without matches is a catch-all."""
        r = router(path_rule("Prefix", "/api", "api"), rule("all"), path_rule("Prefix", "/x", "x"))
        assert matched(r, b"/api/1") == "api"
        assert matched(r, b"/x") == "all"

    def test_no_rule_matches_gives_none(self) -> None:
        """A request no rule takes gets None (the service's default backend)."""
        assert matched(router(path_rule("Exact", "/a")), b"/b") is None
        assert matched(HttpRouter.from_snapshot(None, "routes"), b"/") is None


class TestBackends:
    def test_ninety_ten_split_within_one_and_a_half_points(self) -> None:
        """A 90/10 split over 10,000 picks lands within ±1.5 points (seeded)."""
        r = router(
            rule(
                backends=[
                    {"service": SVC, "subset": {"version": "v1"}, "weight": 90},
                    {"service": SVC, "subset": {"version": "v2"}, "weight": 10},
                ]
            )
        )
        found = r.match(b"GET", b"/", [])
        assert found is not None
        rng = random.Random(7)
        counts = Counter(found.pick_backend(rng).subset["version"] for _ in range(10_000))
        assert abs(counts["v2"] / 10_000 - 0.10) <= 0.015
        assert counts["v1"] + counts["v2"] == 10_000

    def test_zero_weight_backend_is_never_chosen(self) -> None:
        """A backend of weight 0 gets no request, wherever it sits in the list."""
        r = router(
            rule(
                backends=[
                    {"service": "a.default", "weight": 0},
                    {"service": "b.default", "weight": 3},
                    {"service": "c.default", "weight": 0},
                    {"service": "d.default", "weight": 1},
                    {"service": "e.default", "weight": 0},
                ]
            )
        )
        found = r.rules[0]
        rng = random.Random(1)
        chosen = {found.pick_backend(rng).service_key for _ in range(5_000)}
        assert chosen == {"b.default", "d.default"}

    def test_single_live_backend_needs_no_random_draw(self) -> None:
        """With one backend of weight > 0 the RNG is not consulted."""

        class NoRandom(random.Random):
            def random(self) -> float:
                raise AssertionError("drawn")

        r = router(rule(backends=[{"service": "a.default", "weight": 0}, {"service": "b.default"}]))
        assert r.rules[0].pick_backend(NoRandom()).service_key == "b.default"

    def test_empty_backends_use_the_default_service(self) -> None:
        """A rule without backends goes to ``default_service`` when one is given."""
        r = HttpRouter.from_snapshot([rule(backends=[])], "routes", default_service=SVC)
        assert r.rules[0].pick_backend(random.Random()) == BackendRef.of(SVC)
        with pytest.raises(SnapshotError, match=r"routes\[0\]\.backends"):
            HttpRouter.from_snapshot([rule(backends=[])], "routes")

    def test_all_zero_weights_are_refused(self) -> None:
        """Every backend at weight 0 is a snapshot error naming the backends."""
        with pytest.raises(
            SnapshotError, match=r"routes\[0\]\.backends: every backend has weight 0"
        ):
            router(rule(backends=[{"service": SVC, "weight": 0}]))

    def test_backend_refs_compare_by_subset_contents(self) -> None:
        """Refs with equal subsets are equal and hash alike; ``selects`` checks labels."""
        a = BackendRef.of(SVC, {"version": "v2", "zone": "a"})
        b = BackendRef.of(SVC, {"zone": "a", "version": "v2"})
        assert a == b and hash(a) == hash(b)
        assert a.selects({"version": "v2", "zone": "a", "extra": "x"})
        assert not a.selects({"version": "v1", "zone": "a"})


class TestRuleFields:
    def test_timeout_and_retry_are_compiled(self) -> None:
        """timeout_ms becomes seconds; a retry object becomes a RetryPolicy."""
        r = router(rule(timeout_ms=2000, retry={"attempts": 3, "on": ["5xx"]}))
        compiled: HttpRule = r.rules[0]
        assert compiled.timeout == 2.0
        assert compiled.retry is not None and compiled.retry.attempts == 3
        assert router(rule()).rules[0].timeout is None

    def test_errors_name_the_field(self) -> None:
        """Bad input raises SnapshotError naming the path of the bad field."""
        cases: list[tuple[dict[str, Any], str]] = [
            (
                path_rule("RegularExpression", "(unclosed"),
                r"routes\[0\]\.matches\[0\]\.path\.value",
            ),
            (path_rule("Suffix", "/a"), r"routes\[0\]\.matches\[0\]\.path\.type"),
            (path_rule("Prefix", "no-slash"), r"routes\[0\]\.matches\[0\]\.path\.value"),
            (
                rule(matches=[{"headers": [{"name": "bad name", "value": "1"}]}]),
                r"headers\[0\]\.name",
            ),
            (
                rule(matches=[{"query": [{"name": "q", "type": "Prefix", "value": "1"}]}]),
                r"query\[0\]\.type",
            ),
            (rule(retry={"on": ["sometimes"]}), r"routes\[0\]\.retry\.on\[0\]"),
            (rule(timeout_ms=-1), r"routes\[0\]\.timeout_ms"),
            (
                rule(filters={"request_headers": {"set": {"x": "a\r\nb"}}}),
                r"request_headers\.set\.x",
            ),
            (rule(filters={"redirect": {"status_code": 200}}), r"filters\.redirect\.status_code"),
            (
                rule(filters={"mirror": {"service": SVC, "percent": 101}}),
                r"filters\.mirror\.percent",
            ),
            (
                rule(filters={"rewrite": {"type": "Replace", "value": "/"}}),
                r"filters\.rewrite\.type",
            ),
        ]
        for raw, where in cases:
            with pytest.raises(SnapshotError, match=where):
                router(raw)
        with pytest.raises(SnapshotError, match="routes: expected a list"):
            HttpRouter.from_snapshot({"not": "a list"}, "routes")


class TestHeaderFilters:
    def test_set_replaces_in_any_case_add_appends_remove_drops(self) -> None:
        """set drops every same-named header (any case) then adds one; add appends; remove drops."""
        r = router(
            rule(
                filters={
                    "request_headers": {
                        "set": {"X-Env": "prod"},
                        "add": {"x-trace": "t2"},
                        "remove": ["X-Secret"],
                    }
                }
            )
        )
        headers = [(b"x-ENV", b"dev"), (b"x-trace", b"t1"), (b"x-secret", b"s"), (b"host", b"h")]
        out = r.rules[0].filters.request_headers(headers)
        assert out == [
            (b"x-trace", b"t1"),
            (b"host", b"h"),
            (b"x-env", b"prod"),
            (b"x-trace", b"t2"),
        ]

    def test_response_filters_apply_to_responses_only(self) -> None:
        """response_headers edits are separate from request_headers edits."""
        filters = (
            router(rule(filters={"response_headers": {"set": {"x-served-by": "v2"}}}))
            .rules[0]
            .filters
        )
        headers = [(b"content-length", b"0")]
        assert filters.request_headers(headers) is headers
        assert filters.response_headers(headers) == [
            (b"content-length", b"0"),
            (b"x-served-by", b"v2"),
        ]

    def test_no_edits_return_the_same_list(self) -> None:
        """Without header edits the caller's list comes back untouched (no copy)."""
        filters = (
            router(rule(filters={"request_headers": {"set": {}, "add": {}, "remove": []}}))
            .rules[0]
            .filters
        )
        headers = [(b"a", b"1")]
        assert filters.request_headers(headers) is headers


class TestRewrite:
    @pytest.mark.parametrize(
        ("prefix", "replacement", "path", "expected"),
        [
            ("/foo", "/xyz", b"/foo/bar", b"/xyz/bar"),
            ("/foo", "/xyz/", b"/foo/bar", b"/xyz/bar"),
            ("/foo/", "/xyz", b"/foo/bar", b"/xyz/bar"),
            ("/foo/", "/xyz/", b"/foo/bar", b"/xyz/bar"),
            ("/foo", "/xyz", b"/foo", b"/xyz"),
            ("/foo", "/xyz", b"/foo/", b"/xyz/"),
            ("/foo", "/", b"/foo/bar", b"/bar"),
            ("/foo", "/", b"/foo", b"/"),
            ("/foo", "/", b"/foo/", b"/"),
            ("/foo", "", b"/foo/bar", b"/bar"),
            ("/", "/v2", b"/a/b", b"/v2/a/b"),
            ("/foo", "/xyz", b"/foo/bar?q=1&r=%20", b"/xyz/bar?q=1&r=%20"),
        ],
    )
    def test_replace_prefix_match(
        self, prefix: str, replacement: str, path: bytes, expected: bytes
    ) -> None:
        """ReplacePrefixMatch follows the Gateway API table (trailing slashes included) and
        keeps the query."""
        r = router(
            rule(
                matches=[{"path": {"type": "Prefix", "value": prefix}}],
                filters={"rewrite": {"type": "ReplacePrefixMatch", "value": replacement}},
            )
        )
        found = r.match(b"GET", path, [])
        assert found is not None
        assert found.filters.rewrite_path(path, found) == expected

    def test_each_match_rewrites_its_own_prefix(self) -> None:
        """With several Prefix matches, the one that selected the request is replaced."""
        r = router(
            rule(
                matches=[
                    {
                        "path": {"type": "Prefix", "value": "/old"},
                        "headers": [{"name": "x", "type": "Present"}],
                    },
                    {"path": {"type": "Prefix", "value": "/old/api"}},
                ],
                filters={"rewrite": {"type": "ReplacePrefixMatch", "value": "/new"}},
            )
        )
        with_header = r.match(b"GET", b"/old/api/1", [(b"x", b"")])
        without = r.match(b"GET", b"/old/api/1", [])
        assert with_header is not None and without is not None
        assert with_header.name == without.name
        assert with_header.filters.rewrite_path(b"/old/api/1", with_header) == b"/new/api/1"
        assert without.filters.rewrite_path(b"/old/api/1", without) == b"/new/1"

    def test_replace_full_path_keeps_query(self) -> None:
        """ReplaceFullPath swaps the path and keeps the query string."""
        r = router(rule(filters={"rewrite": {"type": "ReplaceFullPath", "value": "/v2/items"}}))
        found = r.rules[0]
        assert found.filters.rewrite_path(b"/items/7?x=1", found) == b"/v2/items?x=1"
        assert found.filters.rewrite_path(b"/items", found) == b"/v2/items"

    def test_no_rewrite_returns_the_target(self) -> None:
        """Without a rewrite filter the target is returned as is."""
        found = router(rule()).rules[0]
        assert found.filters.rewrite_path(b"/a?b", found) == b"/a?b"


class TestRedirect:
    def redirect(self, **spec: Any) -> Any:
        return router(rule(filters={"redirect": spec})).rules[0].filters

    def test_redirect_builds_a_full_response_without_error_header(self) -> None:
        """A redirect is a complete HTTP/1.1 response: Location, content-length 0, no error tag."""
        filters = self.redirect(scheme="https", status_code=301)
        raw = filters.redirect_response(b"http", b"shop.example:8080", b"/cart?id=1")
        assert raw is not None
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 301 Moved Permanently"
        assert b"location: https://shop.example/cart?id=1" in lines
        assert b"content-length: 0" in lines
        assert b"x-gossamer-error" not in raw.lower()
        assert body == b""

    def test_path_only_redirect_keeps_host_port_and_query(self) -> None:
        """Changing only the path keeps the request's scheme, host, port and query."""
        filters = self.redirect(path="/new")
        raw = filters.redirect_response(b"http", b"h:8080", b"/old?q=1", request_id=b"rid")
        assert raw is not None
        assert b"location: http://h:8080/new?q=1\r\n" in raw
        assert raw.startswith(b"HTTP/1.1 302 Found\r\n")
        assert b"x-request-id: rid\r\n" in raw

    def test_explicit_port_and_default_port_elision(self) -> None:
        """An explicit port is written unless it is the scheme's default; IPv6 hosts stay
        bracketed."""
        assert b"location: https://h:8443/p\r\n" in (
            self.redirect(scheme="https", port=8443).redirect_response(b"http", b"h", b"/p") or b""
        )
        assert b"location: http://h/p\r\n" in (
            self.redirect(port=80).redirect_response(b"http", b"h:9000", b"/p") or b""
        )
        assert b"location: http://[::1]:9000/n\r\n" in (
            self.redirect(path="/n").redirect_response(b"http", b"[::1]:9000", b"/p") or b""
        )

    def test_host_redirect_replaces_host_and_drops_old_port(self) -> None:
        """A new host does not inherit the old host's port."""
        raw = self.redirect(host="other.example", status_code=308).redirect_response(
            b"http", b"h:9000", b"/p"
        )
        assert raw is not None
        assert b"location: http://other.example/p\r\n" in raw
        assert raw.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")

    def test_no_redirect_gives_none(self) -> None:
        """A rule without a redirect answers None."""
        assert router(rule()).rules[0].filters.redirect_response(b"http", b"h", b"/") is None


class TestMirrorAndFault:
    def test_mirror_percent_is_honoured(self) -> None:
        """A 10% mirror fires for 10% of 10,000 draws within ±1.5 points; 0 and 100 are exact."""
        rng = random.Random(3)
        mirror = MirrorPolicy.from_snapshot(
            {"service": "shadow.default", "subset": {"v": "2"}, "percent": 10.0}, "m"
        )
        hits = sum(mirror.should_mirror(rng) for _ in range(10_000))
        assert abs(hits / 10_000 - 0.10) <= 0.015
        assert mirror.service_key == "shadow.default" and mirror.subset == {"v": "2"}
        never = MirrorPolicy.from_snapshot({"service": "s.d", "percent": 0}, "m")
        always = MirrorPolicy.from_snapshot({"service": "s.d", "percent": 100}, "m")
        assert not any(never.should_mirror(rng) for _ in range(1000))
        assert all(always.should_mirror(rng) for _ in range(1000))

    def test_fault_delay_and_abort_are_independent_draws(self) -> None:
        """Delay 20% and abort 30% over 20,000 draws: each within ±1.5 points, and both at once
        about 6% (independent), within ±1 point."""
        fault = FaultPolicy.from_snapshot(
            {"delay_ms": 100, "delay_percent": 20.0, "abort_status": 503, "abort_percent": 30.0},
            "f",
        )
        rng = random.Random(11)
        n = 20_000
        decisions = [fault.decide(rng) for _ in range(n)]
        delayed = sum(1 for d, _ in decisions if d == 0.1)
        aborted = sum(1 for _, a in decisions if a == 503)
        both = sum(1 for d, a in decisions if d and a)
        assert abs(delayed / n - 0.20) <= 0.015
        assert abs(aborted / n - 0.30) <= 0.015
        assert abs(both / n - 0.06) <= 0.01
        assert {d for d, _ in decisions} == {0.0, 0.1}

    def test_fault_parts_can_be_absent(self) -> None:
        """The control plane's form for 'abort only' (delay 0, status set) never delays."""
        fault = FaultPolicy.from_snapshot(
            {"delay_ms": 0, "delay_percent": 0.0, "abort_status": 418, "abort_percent": 100.0}, "f"
        )
        assert fault.decide(random.Random(1)) == (0.0, 418)

    def test_rule_filters_expose_mirror_and_fault(self) -> None:
        """Compiled rule filters carry the mirror and fault policies."""
        filters = (
            router(
                rule(
                    filters={
                        "mirror": {"service": "s.d", "subset": {}, "percent": 50.0},
                        "fault": {
                            "delay_ms": 5,
                            "delay_percent": 100.0,
                            "abort_status": None,
                            "abort_percent": 0.0,
                        },
                    }
                )
            )
            .rules[0]
            .filters
        )
        assert filters.mirror is not None and filters.mirror.percent == 50.0
        assert filters.fault is not None and filters.fault.decide(random.Random(0)) == (0.005, None)


class TestTcpRoute:
    def test_tcp_route_weights_and_drain(self) -> None:
        """A TCP route picks among weighted backends; drain_ms becomes seconds."""
        route = TcpRoute.from_snapshot(
            {
                "backends": [
                    {"service": "db-blue.default", "weight": 0},
                    {"service": "db-green.default", "weight": 100},
                ],
                "drain_ms": 30000,
            },
            "tcp_route",
        )
        assert route.drain == 30.0
        assert route.pick_backend(random.Random(0)).service_key == "db-green.default"
        assert TcpRoute.from_snapshot({"backends": [{"service": "a.b"}]}, "t").drain is None
        with pytest.raises(SnapshotError, match=r"tcp_route\.backends"):
            TcpRoute.from_snapshot({"backends": []}, "tcp_route")
