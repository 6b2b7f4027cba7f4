"""The ``HTTPRoute`` kind: ordered rules for requests to one service (docs/internals.md §8).

A rule matches requests (path, method, headers, query parameters), sends them to weighted
backends (a service or a labelled subset of it), and may filter them (header edits, path
rewrite, redirect, mirror, fault injection) with its own timeout and retry policy. The filter
models live in :mod:`gossamer.config.httpfilters`. :meth:`HTTPRoute.snapshot_rules` compiles
the rules into the snapshot form the sidecar consumes.
"""

from __future__ import annotations

from typing import ClassVar, Literal, cast

from pydantic import Field

from gossamer.config.base import DnsLabel, LabelMap, Resource, SpecModel
from gossamer.config.duration import duration_ms
from gossamer.config.httpfilters import Filters
from gossamer.config.traffic import (
    HeaderName,
    HttpMethod,
    PositiveDuration,
    RetryPolicy,
    ServiceRef,
    Weight,
    duplicates,
    qualified_name,
    regex_problem,
    service_key,
)
from gossamer.snapshot_schema import (
    BackendSnapshot,
    HeaderMatchSnapshot,
    HttpRuleSnapshot,
    MatchSnapshot,
    QueryMatchSnapshot,
)

__all__ = [
    "BackendRef",
    "HTTPRoute",
    "HTTPRouteRule",
    "HTTPRouteSpec",
    "HeaderMatch",
    "PathMatch",
    "QueryParamMatch",
    "RouteMatch",
]

MAX_MATCH_VALUE = 4096


class PathMatch(SpecModel):
    """``path``: Exact, Prefix (default) or RegularExpression on the request path."""

    type: Literal["Exact", "Prefix", "RegularExpression"] = "Prefix"
    value: str = Field(min_length=1, max_length=MAX_MATCH_VALUE)


class HeaderMatch(SpecModel):
    """One request header condition; ``Present`` takes no value, the others need one."""

    name: HeaderName
    type: Literal["Exact", "Prefix", "RegularExpression", "Present"] = "Exact"
    value: str | None = Field(default=None, max_length=MAX_MATCH_VALUE)


class QueryParamMatch(SpecModel):
    """One query parameter condition; ``Present`` takes no value, the others need one."""

    name: str = Field(min_length=1, max_length=256)
    type: Literal["Exact", "RegularExpression", "Present"] = "Exact"
    value: str | None = Field(default=None, max_length=MAX_MATCH_VALUE)


class RouteMatch(SpecModel):
    """All of its conditions must hold (an empty match matches every request)."""

    path: PathMatch | None = None
    method: HttpMethod | None = None
    headers: list[HeaderMatch] = Field(default_factory=list)
    query_params: list[QueryParamMatch] = Field(default_factory=list)


class BackendRef(SpecModel):
    """A weighted destination: a service, or the endpoints of it whose labels match ``subset``."""

    service: ServiceRef
    subset: LabelMap = Field(default_factory=dict)
    weight: Weight = 1


class HTTPRouteRule(SpecModel):
    """One rule: the first rule (in order) with a matching ``matches`` entry handles a request."""

    name: DnsLabel | None = None
    matches: list[RouteMatch] = Field(default_factory=list)
    backends: list[BackendRef] = Field(default_factory=list)  # empty: the route's service
    filters: Filters = Field(default_factory=Filters)
    timeout: PositiveDuration | None = None
    retry: RetryPolicy | None = None


class HTTPRouteSpec(SpecModel):
    """``spec``: the service whose requests these rules handle, and the rules in order."""

    service: ServiceRef
    rules: list[HTTPRouteRule] = Field(min_length=1)


def _value_problems(
    path: str, kind: str, value: str | None, needs_slash: bool
) -> list[tuple[str, str]]:
    if kind == "Present":
        return [] if value is None else [(f"{path}.value", "type Present takes no value")]
    if value is None:
        return [(f"{path}.value", f"type {kind} needs a value")]
    if kind == "RegularExpression":
        problem = regex_problem(value)
        return [(f"{path}.value", problem)] if problem else []
    if needs_slash and not value.startswith("/"):
        return [(f"{path}.value", f"a path must start with '/' (got {value!r})")]
    return []


def _match_problems(path: str, match: RouteMatch) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if match.path is not None:
        out += _value_problems(f"{path}.path", match.path.type, match.path.value, True)
    for index, header in enumerate(match.headers):
        out += _value_problems(f"{path}.headers[{index}]", header.type, header.value, False)
    for index, param in enumerate(match.query_params):
        out += _value_problems(f"{path}.queryParams[{index}]", param.type, param.value, False)
    return out


def _rule_problems(path: str, rule: HTTPRouteRule, namespace: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for index, match in enumerate(rule.matches):
        out += _match_problems(f"{path}.matches[{index}]", match)
    if rule.backends and not any(backend.weight > 0 for backend in rule.backends):
        out.append((f"{path}.backends", "at least one backend needs a weight above 0"))
    refs = [
        (service_key(b.service, namespace), tuple(sorted(b.subset.items()))) for b in rule.backends
    ]
    for index, first in duplicates(refs):
        out.append(
            (f"{path}.backends[{index}]", f"the same service and subset as backends[{first}]")
        )
    out += rule.filters.problems(f"{path}.filters", rule.matches)
    if rule.filters.redirect is not None:
        if rule.backends:
            out.append((f"{path}.backends", "a rule with a redirect cannot have backends"))
        if rule.retry is not None:
            out.append((f"{path}.retry", "a rule with a redirect forwards nothing to retry"))
    if rule.retry is not None:
        out += rule.retry.problems(f"{path}.retry", rule.timeout)
    return out


def _header_condition(header: HeaderMatch) -> HeaderMatchSnapshot:
    out: HeaderMatchSnapshot = {"name": header.name.lower(), "type": header.type}
    if header.type != "Present":
        out["value"] = cast(str, header.value)  # checked by _value_problems: not None here
    return out


def _query_condition(param: QueryParamMatch) -> QueryMatchSnapshot:
    out: QueryMatchSnapshot = {"name": param.name, "type": param.type}
    if param.type != "Present":
        out["value"] = cast(str, param.value)  # checked by _value_problems: not None here
    return out


def _match_snapshot(match: RouteMatch) -> MatchSnapshot:
    return {
        "path": (
            {"type": match.path.type, "value": match.path.value} if match.path is not None else None
        ),
        "method": match.method,
        "headers": [_header_condition(h) for h in match.headers],
        "query": [_query_condition(q) for q in match.query_params],
    }


class HTTPRoute(Resource):
    """Routing rules for one service, merged with its other HTTPRoutes in name order."""

    KIND: ClassVar[str] = "HTTPRoute"
    PLURAL: ClassVar[str] = "httproutes"

    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec

    @property
    def service_key(self) -> tuple[str, str]:
        """``(namespace, name)`` of the service these rules are for."""
        return service_key(self.spec.service, self.metadata.namespace)

    def references(self) -> set[tuple[str, str]]:
        """Every service a rule sends to or mirrors to, as ``(namespace, name)``."""
        namespace = self.metadata.namespace
        keys = {self.service_key}
        for rule in self.spec.rules:
            keys.update(service_key(b.service, namespace) for b in rule.backends)
            if rule.filters.mirror is not None:
                keys.add(service_key(rule.filters.mirror.service, namespace))
        return keys

    def semantic_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        names = [rule.name for rule in self.spec.rules]
        for index, first in duplicates(names):
            if names[index] is not None:
                out.append(
                    (f"spec.rules[{index}].name", f"{names[index]!r} already names rules[{first}]")
                )
        for index, rule in enumerate(self.spec.rules):
            out += _rule_problems(f"spec.rules[{index}]", rule, self.metadata.namespace)
        return out

    def snapshot_rules(self) -> list[HttpRuleSnapshot]:
        """The rules in snapshot form: names qualified, durations in ms, defaults filled in."""
        namespace = self.metadata.namespace
        own = qualified_name(self.spec.service, namespace)
        rules: list[HttpRuleSnapshot] = []
        for index, rule in enumerate(self.spec.rules):
            backends: list[BackendSnapshot] = [
                {
                    "service": qualified_name(b.service, namespace),
                    "subset": dict(b.subset),
                    "weight": b.weight,
                }
                for b in rule.backends
            ]
            rules.append(
                {
                    "name": f"{self.metadata.name}/{rule.name if rule.name else index}",
                    "matches": [_match_snapshot(match) for match in rule.matches],
                    "backends": backends or [{"service": own, "subset": {}, "weight": 1}],
                    "filters": rule.filters.to_snapshot(namespace),
                    "timeout_ms": duration_ms(rule.timeout) if rule.timeout else None,
                    "retry": rule.retry.to_snapshot() if rule.retry is not None else None,
                }
            )
        return rules
