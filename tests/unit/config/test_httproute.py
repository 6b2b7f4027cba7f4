"""HTTPRoute: every refusal with its exact path, and the snapshot form of accepted rules."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import HTTPRoute, ValidationFailed, parse_documents, validate_documents
from tests.unit.config.traffic_docs import accepted, refusal, route

R0 = "spec.rules[0]"
M0 = f"{R0}.matches[0]"
F0 = f"{R0}.filters"


def compiled(*rules: dict[str, Any], **meta: Any) -> list[dict[str, Any]]:
    resource = accepted(route(*rules, **meta))
    assert isinstance(resource, HTTPRoute)
    return resource.snapshot_rules()


# Each case: (one rule, the path of the refusal, a fragment of its message).
FIELD_REFUSALS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown-rule-field": ({"backend": []}, f"{R0}.backend", "unknown field"),
    "bad-rule-name": ({"name": "Canary_1"}, f"{R0}.name", "not a DNS label"),
    "path-type": ({"matches": [{"path": {"type": "Glob", "value": "/"}}]}, f"{M0}.path.type",
                  "Exact"),
    "path-value-missing": ({"matches": [{"path": {"type": "Exact"}}]}, f"{M0}.path.value",
                           "required"),
    "lowercase-method": ({"matches": [{"method": "get"}]}, f"{M0}.method", "upper case"),
    "header-name": ({"matches": [{"headers": [{"name": "x canary", "value": "1"}]}]},
                    f"{M0}.headers[0].name", "header name"),
    "header-type": ({"matches": [{"headers": [{"name": "x", "type": "Suffix", "value": "1"}]}]},
                    f"{M0}.headers[0].type", "Present"),
    "query-prefix-not-offered": (
        {"matches": [{"queryParams": [{"name": "q", "type": "Prefix", "value": "a"}]}]},
        f"{M0}.queryParams[0].type", "Exact"),
    "weight-above-10000": ({"backends": [{"service": "catalog", "weight": 10001}]},
                           f"{R0}.backends[0].weight", "10000"),
    "negative-weight": ({"backends": [{"service": "catalog", "weight": -1}]},
                        f"{R0}.backends[0].weight", "0"),
    "backend-service-ref": ({"backends": [{"service": "a.b.c"}]}, f"{R0}.backends[0].service",
                            "not a service reference"),
    "subset-label": ({"backends": [{"service": "catalog", "subset": {"version": "v 2"}}]},
                     f"{R0}.backends[0].subset", "invalid value"),
    "timeout-unit": ({"timeout": "2x"}, f"{R0}.timeout", "invalid duration"),
    "timeout-zero": ({"timeout": "0s"}, f"{R0}.timeout", "greater than zero"),
    "timeout-number": ({"timeout": 2}, f"{R0}.timeout", "string"),
    "retry-on": ({"retry": {"on": ["5xx", "sometimes"]}}, f"{R0}.retry.on[1]", "'reset'"),
    "retry-attempts-zero": ({"retry": {"attempts": 0}}, f"{R0}.retry.attempts", "1"),
    "retry-attempts-eleven": ({"retry": {"attempts": 11}}, f"{R0}.retry.attempts", "10"),
    "retry-status-600": ({"retry": {"on": ["retriable-status-codes"], "statusCodes": [600]}},
                         f"{R0}.retry.statusCodes[0]", "599"),
    "retry-status-99": ({"retry": {"on": ["retriable-status-codes"], "statusCodes": [99]}},
                        f"{R0}.retry.statusCodes[0]", "100"),
    "retry-size-unit": ({"retry": {"maxBufferedBody": "12QB"}}, f"{R0}.retry.maxBufferedBody",
                        "invalid size"),
    "retry-size-too-big": ({"retry": {"maxBufferedBody": "65MiB"}},
                           f"{R0}.retry.maxBufferedBody", "64MiB"),
    "retry-size-negative": ({"retry": {"maxBufferedBody": -1}}, f"{R0}.retry.maxBufferedBody",
                            "negative"),
    "retry-size-bool": ({"retry": {"maxBufferedBody": True}}, f"{R0}.retry.maxBufferedBody",
                        "byte count"),
    "retry-methods-lowercase": ({"retry": {"methods": ["get"]}}, f"{R0}.retry.methods[0]",
                                "upper case"),
    "retry-per-try-timeout": ({"retry": {"perTryTimeout": "fast"}},
                              f"{R0}.retry.perTryTimeout", "invalid duration"),
    "redirect-status": ({"filters": {"redirect": {"path": "/x", "statusCode": 304}}},
                        f"{F0}.redirect.statusCode", "301, 302, 303, 307 or 308"),
    "redirect-scheme": ({"filters": {"redirect": {"scheme": "ftp"}}}, f"{F0}.redirect.scheme",
                        "'http' or 'https'"),
    "redirect-port": ({"filters": {"redirect": {"port": 0}}}, f"{F0}.redirect.port", "1"),
    "redirect-host": ({"filters": {"redirect": {"host": "a b"}}}, f"{F0}.redirect.host",
                      "host name"),
    "redirect-path": ({"filters": {"redirect": {"path": "x"}}}, f"{F0}.redirect.path",
                      "start with '/'"),
    "rewrite-path": ({"filters": {"rewrite": {"path": {"type": "ReplaceFullPath",
                                                        "value": "v2"}}}},
                     f"{F0}.rewrite.path.value", "start with '/'"),
    "rewrite-type": ({"filters": {"rewrite": {"path": {"type": "Replace", "value": "/"}}}},
                     f"{F0}.rewrite.path.type", "ReplaceFullPath"),
    "mirror-percent": ({"filters": {"mirror": {"service": "catalog", "percent": 101}}},
                       f"{F0}.mirror.percent", "100"),
    "mirror-service-missing": ({"filters": {"mirror": {"percent": 5}}}, f"{F0}.mirror.service",
                               "required"),
    "fault-abort-status": ({"filters": {"fault": {"abort": {"status": 600}}}},
                           f"{F0}.fault.abort.status", "599"),
    "fault-abort-1xx": ({"filters": {"fault": {"abort": {"status": 101}}}},
                        f"{F0}.fault.abort.status", "200"),
    "fault-delay": ({"filters": {"fault": {"delay": {"fixedDelay": "soon"}}}},
                    f"{F0}.fault.delay.fixedDelay", "invalid duration"),
    "fault-percent": ({"filters": {"fault": {"delay": {"fixedDelay": "1s", "percent": -1}}}},
                      f"{F0}.fault.delay.percent", "0"),
    "header-filter-name": ({"filters": {"requestHeaders": {"set": {"bad key": "v"}}}},
                           f"{F0}.requestHeaders.set.bad key", "header name"),
    "header-filter-value": ({"filters": {"responseHeaders": {"add": {"x-a": "1\r\nx-b: 2"}}}},
                            f"{F0}.responseHeaders.add.x-a", "CR, LF"),
    "header-filter-remove": ({"filters": {"requestHeaders": {"remove": ["a:b"]}}},
                             f"{F0}.requestHeaders.remove[0]", "header name"),
    "unknown-filter": ({"filters": {"retry": {}}}, f"{F0}.retry", "unknown field"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "path", "fragment"), FIELD_REFUSALS.values(), ids=FIELD_REFUSALS.keys()
)
def test_field_refusal_names_its_path(rule: dict[str, Any], path: str, fragment: str) -> None:
    """A bad field value is refused at its exact path, saying what is expected."""
    problem = refusal(route(rule))
    assert (problem.kind, problem.name, problem.path) == ("HTTPRoute", "catalog", path)
    assert fragment in problem.message


class TestSpecRefusals:
    def test_service_is_required(self) -> None:
        """spec.service names the service the rules are for."""
        document = route()
        del document["spec"]["service"]
        assert refusal(document).path == "spec.service"

    def test_service_with_three_parts_is_refused(self) -> None:
        """spec.service is 'name' or 'name.namespace', nothing longer."""
        assert refusal(route(service="catalog.default.svc")).path == "spec.service"

    def test_rules_cannot_be_empty(self) -> None:
        """A route needs at least one rule."""
        document = route()
        document["spec"]["rules"] = []
        assert refusal(document).path == "spec.rules"

    def test_duplicate_rule_names(self) -> None:
        """Rule names are unique within a route; the second one is refused."""
        problem = refusal(route({"name": "a"}, {"name": "b"}, {"name": "a"}))
        assert problem.path == "spec.rules[2].name"
        assert "rules[0]" in problem.message


class TestMatchRefusals:
    @pytest.mark.parametrize(
        ("match", "path"),
        [
            ({"path": {"type": "RegularExpression", "value": "/items/(["}}, f"{M0}.path.value"),
            ({"headers": [{"name": "x-v", "type": "RegularExpression", "value": "a(b"}]},
             f"{M0}.headers[0].value"),
            ({"queryParams": [{"name": "q", "type": "RegularExpression", "value": "(?<"}]},
             f"{M0}.queryParams[0].value"),
        ],
        ids=["path", "header", "query"],
    )  # fmt: skip
    def test_bad_regex_is_refused_with_its_path(self, match: dict[str, Any], path: str) -> None:
        """Regular expressions are compiled at validation; a bad one is refused where it is."""
        problem = refusal(route({"matches": [match]}))
        assert problem.path == path
        assert "invalid regular expression" in problem.message

    @pytest.mark.parametrize("kind", ["Exact", "Prefix"])
    def test_path_must_start_with_slash(self, kind: str) -> None:
        """Exact and Prefix paths start with '/'."""
        problem = refusal(route({"matches": [{"path": {"type": kind, "value": "items"}}]}))
        assert problem.path == f"{M0}.path.value"

    def test_present_takes_no_value(self) -> None:
        """A Present header match with a value is contradictory."""
        match = {"headers": [{"name": "x-a", "type": "Present", "value": "1"}]}
        problem = refusal(route({"matches": [match]}))
        assert (problem.path, problem.message) == (
            f"{M0}.headers[0].value",
            "type Present takes no value",
        )

    def test_exact_needs_a_value(self) -> None:
        """Exact (the default type) needs a value."""
        problem = refusal(route({"matches": [{}, {"queryParams": [{"name": "debug"}]}]}))
        assert problem.path == f"{R0}.matches[1].queryParams[0].value"
        assert "needs a value" in problem.message


class TestBackendRefusals:
    def test_all_weights_zero(self) -> None:
        """At least one backend of a rule must have a positive weight."""
        backends = [{"service": "catalog", "weight": 0}, {"service": "other", "weight": 0}]
        problem = refusal(route({"backends": backends}))
        assert (problem.path, problem.message) == (
            f"{R0}.backends",
            "at least one backend needs a weight above 0",
        )

    def test_same_backend_twice(self) -> None:
        """The same service and subset twice is refused, whatever the spelling of the name."""
        backends = [
            {"service": "catalog", "subset": {"version": "v1"}},
            {"service": "catalog", "subset": {"version": "v2"}},
            {"service": "catalog.default", "subset": {"version": "v1"}},
        ]
        problem = refusal(route({"backends": backends}))
        assert problem.path == f"{R0}.backends[2]"
        assert "backends[0]" in problem.message


class TestRedirectRefusals:
    @pytest.mark.parametrize(
        ("extra", "path"),
        [
            ({"backends": [{"service": "catalog"}]}, f"{R0}.backends"),
            ({"filters": {"mirror": {"service": "catalog"}}}, f"{F0}.mirror"),
            ({"filters": {"rewrite": {"path": {"type": "ReplaceFullPath", "value": "/"}}}},
             f"{F0}.rewrite"),
            ({"retry": {"attempts": 2}}, f"{R0}.retry"),
        ],
        ids=["backends", "mirror", "rewrite", "retry"],
    )  # fmt: skip
    def test_redirect_excludes_forwarding(self, extra: dict[str, Any], path: str) -> None:
        """A redirect answers the request: no backends, mirror, rewrite or retry with it."""
        rule: dict[str, Any] = {"filters": {"redirect": {"scheme": "https"}}}
        for key, value in extra.items():
            rule[key] = {**rule.get(key, {}), **value} if key == "filters" else value
        assert refusal(route(rule)).path == path

    def test_redirect_must_change_something(self) -> None:
        """A redirect to the very same URL would loop."""
        problem = refusal(route({"filters": {"redirect": {"statusCode": 301}}}))
        assert problem.path == f"{F0}.redirect"


class TestFilterRefusals:
    def test_prefix_rewrite_needs_prefix_matches(self) -> None:
        """ReplacePrefixMatch needs every match of the rule to be a Prefix path match."""
        rewrite = {"path": {"type": "ReplacePrefixMatch", "value": "/v2"}}
        matches = [{"path": {"value": "/a"}}, {"path": {"type": "Exact", "value": "/b"}}]
        problem = refusal(route({"matches": matches, "filters": {"rewrite": rewrite}}))
        assert problem.path == f"{F0}.rewrite.path.type"

    def test_prefix_rewrite_without_matches(self) -> None:
        """ReplacePrefixMatch on a rule that matches everything has no prefix to replace."""
        rewrite = {"path": {"type": "ReplacePrefixMatch", "value": "/v2"}}
        assert refusal(route({"filters": {"rewrite": rewrite}})).path == f"{F0}.rewrite.path.type"

    def test_empty_fault(self) -> None:
        """A fault needs a delay or an abort."""
        assert refusal(route({"filters": {"fault": {}}})).path == f"{F0}.fault"

    @pytest.mark.parametrize(
        ("edits", "path"),
        [
            ({"set": {"Content-Length": "0"}}, "set.Content-Length"),
            ({"add": {"transfer-encoding": "chunked"}}, "add.transfer-encoding"),
            ({"remove": ["x-a", "Connection"]}, "remove[1]"),
        ],
    )
    def test_framing_headers_cannot_be_edited(self, edits: dict[str, Any], path: str) -> None:
        """Headers that frame the message are refused in set, add and remove."""
        problem = refusal(route({"filters": {"requestHeaders": edits}}))
        assert problem.path == f"{F0}.requestHeaders.{path}"
        assert "frames the message" in problem.message

    def test_header_both_set_and_removed(self) -> None:
        """A header set and removed by one filter is contradictory (names ignore case)."""
        edits = {"set": {"X-Env": "prod"}, "remove": ["x-env"]}
        problem = refusal(route({"filters": {"responseHeaders": edits}}))
        assert problem.path == f"{F0}.responseHeaders.remove[0]"
        assert "also in set" in problem.message

    def test_header_both_set_and_added(self) -> None:
        """Setting and adding one header in the same filter is contradictory."""
        edits = {"set": {"x-env": "prod"}, "add": {"X-Env": "dev"}}
        problem = refusal(route({"filters": {"requestHeaders": edits}}))
        assert (problem.path, problem.message) == (
            f"{F0}.requestHeaders.add.X-Env",
            "'X-Env' is also in set",
        )

    def test_header_removed_twice(self) -> None:
        """The same header twice in remove is refused at the repeat."""
        edits = {"remove": ["x-a", "X-A"]}
        problem = refusal(route({"filters": {"requestHeaders": edits}}))
        assert problem.path == f"{F0}.requestHeaders.remove[1]"


class TestRetryRefusals:
    def test_retriable_status_codes_needs_codes(self) -> None:
        """'retriable-status-codes' without statusCodes would retry nothing."""
        problem = refusal(route({"retry": {"on": ["retriable-status-codes"]}}))
        assert problem.path == f"{R0}.retry.statusCodes"

    def test_codes_need_retriable_status_codes(self) -> None:
        """statusCodes without 'retriable-status-codes' in 'on' would be silently ignored."""
        problem = refusal(route({"retry": {"on": ["5xx"], "statusCodes": [409]}}))
        assert problem.path == f"{R0}.retry.statusCodes"

    def test_per_try_timeout_longer_than_timeout(self) -> None:
        """A per-try timeout longer than the rule's whole timeout could never fire."""
        problem = refusal(route({"timeout": "1s", "retry": {"perTryTimeout": "1s500ms"}}))
        assert problem.path == f"{R0}.retry.perTryTimeout"

    def test_max_interval_below_base(self) -> None:
        """Backoff maxInterval cannot be shorter than baseInterval."""
        backoff = {"baseInterval": "100ms", "maxInterval": "50ms"}
        problem = refusal(route({"retry": {"backoff": backoff}}))
        assert problem.path == f"{R0}.retry.backoff.maxInterval"

    def test_repeated_condition(self) -> None:
        """A condition listed twice is refused at the repeat."""
        problem = refusal(route({"retry": {"on": ["reset", "5xx", "reset"]}}))
        assert problem.path == f"{R0}.retry.on[2]"


def test_all_problems_of_a_route_come_together() -> None:
    """Cross-field problems of several rules are reported in one answer."""
    rules = [{"backends": [{"service": "a", "weight": 0}]}, {"filters": {"fault": {}}}]
    document = route(*rules)
    with pytest.raises(ValidationFailed) as caught:
        validate_documents([document])
    paths = [p.path for p in caught.value.problems]
    assert paths == ["spec.rules[0].backends", "spec.rules[1].filters.fault"]


SECTION_8_YAML = """
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: catalog}
spec:
  service: catalog
  rules:
    - name: canary
      matches:
        - path: {type: Prefix, value: /items}
          method: GET
          headers: [{name: X-Canary, type: Exact, value: "1"}]
          queryParams: [{name: debug, type: Present}]
      backends:
        - {service: catalog, subset: {version: v2}, weight: 10}
      filters:
        requestHeaders: {set: {x-env: prod}, add: {x-trace: "on"}, remove: [x-debug]}
        rewrite: {path: {type: ReplacePrefixMatch, value: /v2}}
        mirror: {service: catalog, subset: {version: v2}, percent: 10}
        fault: {delay: {fixedDelay: 100ms, percent: 10}, abort: {status: 503, percent: 5}}
      timeout: 2s
      retry: {attempts: 3, on: [5xx, gateway-error, retriable-status-codes],
              statusCodes: [409], perTryTimeout: 500ms,
              backoff: {baseInterval: 25ms, maxInterval: 250ms},
              methods: [GET, HEAD, OPTIONS, PUT, DELETE], maxBufferedBody: 64KiB}
"""


class TestSnapshotForm:
    def test_section_8_example(self) -> None:
        """The §8 example compiles to exactly the §8 snapshot form (YAML `on:` included)."""
        (resource,) = validate_documents(parse_documents(SECTION_8_YAML))
        assert isinstance(resource, HTTPRoute)
        assert resource.snapshot_rules() == [
            {
                "name": "catalog/canary",
                "matches": [
                    {
                        "path": {"type": "Prefix", "value": "/items"},
                        "method": "GET",
                        "headers": [{"name": "x-canary", "type": "Exact", "value": "1"}],
                        "query": [{"name": "debug", "type": "Present"}],
                    }
                ],
                "backends": [
                    {"service": "catalog.default", "subset": {"version": "v2"}, "weight": 10}
                ],
                "filters": {
                    "request_headers": {
                        "set": {"x-env": "prod"},
                        "add": {"x-trace": "on"},
                        "remove": ["x-debug"],
                    },
                    "response_headers": {"set": {}, "add": {}, "remove": []},
                    "rewrite": {"type": "ReplacePrefixMatch", "value": "/v2"},
                    "redirect": None,
                    "mirror": {
                        "service": "catalog.default",
                        "subset": {"version": "v2"},
                        "percent": 10.0,
                    },
                    "fault": {
                        "delay_ms": 100,
                        "delay_percent": 10.0,
                        "abort_status": 503,
                        "abort_percent": 5.0,
                    },
                },
                "timeout_ms": 2000,
                "retry": {
                    "attempts": 3,
                    "on": ["5xx", "gateway-error", "retriable-status-codes"],
                    "status_codes": [409],
                    "per_try_timeout_ms": 500,
                    "backoff_base_ms": 25,
                    "backoff_max_ms": 250,
                    "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
                    "max_body_bytes": 65536,
                },
            }
        ]

    def test_bare_rule_defaults(self) -> None:
        """A rule with nothing: named by index, matches all, sends to the route's service."""
        (rule,) = compiled({})
        assert rule == {
            "name": "catalog/0",
            "matches": [],
            "backends": [{"service": "catalog.default", "subset": {}, "weight": 1}],
            "filters": {
                "request_headers": {"set": {}, "add": {}, "remove": []},
                "response_headers": {"set": {}, "add": {}, "remove": []},
                "rewrite": None,
                "redirect": None,
                "mirror": None,
                "fault": None,
            },
            "timeout_ms": None,
            "retry": None,
        }

    def test_retry_defaults(self) -> None:
        """An empty retry gets 2 attempts on 5xx/connect-failure/reset, idempotent methods,
        25 ms base backoff capped at 10x, and 64 KiB of buffered body."""
        (rule,) = compiled({"retry": {}})
        assert rule["retry"] == {
            "attempts": 2,
            "on": ["5xx", "connect-failure", "reset"],
            "status_codes": [],
            "per_try_timeout_ms": None,
            "backoff_base_ms": 25,
            "backoff_max_ms": 250,
            "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
            "max_body_bytes": 65536,
        }

    def test_names_are_qualified_relative_to_the_route_namespace(self) -> None:
        """Backends and mirrors become name.namespace, defaulting to the route's namespace."""
        rule = {
            "backends": [{"service": "catalog"}, {"service": "catalog.legacy", "weight": 3}],
            "filters": {"mirror": {"service": "shadow"}},
        }
        (out,) = compiled(rule, service="catalog", namespace="shop")
        assert [b["service"] for b in out["backends"]] == ["catalog.shop", "catalog.legacy"]
        assert out["filters"]["mirror"] == {"service": "shadow.shop", "subset": {},
                                            "percent": 100.0}  # fmt: skip

    def test_redirect_form(self) -> None:
        """A redirect keeps unset parts as null and defaults to 302."""
        (rule,) = compiled({"filters": {"redirect": {"scheme": "https", "port": 8443}}})
        assert rule["filters"]["redirect"] == {
            "scheme": "https",
            "host": None,
            "port": 8443,
            "path": None,
            "status_code": 302,
        }

    def test_fault_with_abort_only(self) -> None:
        """A fault without a delay has delay 0 ms at 0 %."""
        (rule,) = compiled({"filters": {"fault": {"abort": {"status": 503}}}})
        assert rule["filters"]["fault"] == {
            "delay_ms": 0,
            "delay_percent": 0.0,
            "abort_status": 503,
            "abort_percent": 100.0,
        }

    @pytest.mark.parametrize(
        ("size", "expected"),
        [(1024, 1024), ("64KiB", 65536), ("1MB", 1_000_000), ("2Mi", 2_097_152), ("0", 0)],
    )
    def test_sizes(self, size: int | str, expected: int) -> None:
        """maxBufferedBody takes a byte count or a number with a unit."""
        (rule,) = compiled({"retry": {"maxBufferedBody": size}})
        assert rule["retry"]["max_body_bytes"] == expected

    def test_weight_zero_backend_is_kept(self) -> None:
        """A weight-0 backend next to a positive one is accepted (a drained canary)."""
        backends = [{"service": "catalog", "subset": {"version": "v2"}, "weight": 0},
                    {"service": "catalog", "subset": {"version": "v1"}, "weight": 100}]  # fmt: skip
        (rule,) = compiled({"backends": backends})
        assert [b["weight"] for b in rule["backends"]] == [0, 100]

    def test_references_include_backends_and_mirrors(self) -> None:
        """references() lists the route's own service, its backends and its mirrors."""
        resource = accepted(
            route({"backends": [{"service": "v2.other"}], "filters": {"mirror": {"service": "m"}}})
        )
        assert isinstance(resource, HTTPRoute)
        assert resource.references() == {
            ("default", "catalog"),
            ("other", "v2"),
            ("default", "m"),
        }

    def test_stored_document_validates_again(self) -> None:
        """The canonical stored form (defaults filled in, durations as text) re-validates."""
        (resource,) = validate_documents(parse_documents(SECTION_8_YAML))
        assert isinstance(resource, HTTPRoute)
        stored = resource.to_document()
        assert stored["spec"]["rules"][0]["retry"]["on"][0] == "5xx"
        again = accepted(stored)
        assert isinstance(again, HTTPRoute)
        assert again.snapshot_rules() == resource.snapshot_rules()
