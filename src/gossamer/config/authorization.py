"""The ``AuthorizationPolicy`` kind: who may call what, enforced by the called service's own
sidecars, on HTTP/1.1, HTTP/2 and gRPC alike, and on TCP where a rule can apply.

A policy applies to the workloads of its namespace, or to one service of it (``selector:
{service: orders}``). Its ``action`` says what a match does:

- ``DENY``: the request is refused (403 ``forbidden``, the policy's name in the body; gRPC
  ``PERMISSION_DENIED``; a TCP connection is closed before any byte reaches the app);
- ``ALLOW``: once any ALLOW policy applies to a workload, only requests that match one of them
  are let through (the others are refused naming the policies that did not match); a workload
  without ALLOW policies allows every request no DENY policy refuses;
- ``AUDIT``: the request is marked for the audit log and counted; it decides nothing.

DENY is decided first, then ALLOW. A policy matches a request when any of its ``rules``
matches (a policy without rules matches nothing: an ALLOW policy without rules denies all).
A rule matches when each of its parts does: ``from`` (any of its sources), ``to`` (any of its
operations) and every condition in ``when``; a part left out matches every request. Inside a
source or an operation every field given must match (any of its values; and none of the
``not`` values).

Values with ``*`` match as prefix (``/api/*``), suffix (``*.json``) or presence (``*``).

- source: ``principals`` (the caller's SPIFFE ID, ``spiffe://gossamer.local/ns/shop/sa/web``;
  ``*`` is any caller with a mesh certificate, so ``notPrincipals: ["*"]`` is a plaintext
  caller under PERMISSIVE), ``namespaces`` (the caller's namespace);
- operation: ``methods``, ``paths`` (without the query), ``ports`` (the port the caller asked
  for in its authority; 80 when it named none, the ``tcp`` port for TCP), ``hosts``
  (the authority, with or without its port);
- ``when``: ``request.headers[<name>]``, ``source.principal``, ``source.namespace``,
  ``destination.port``, with ``values`` and/or ``notValues``.

TCP connections are judged by their source and their port: a rule that needs an HTTP field
(methods, paths, hosts, a header) never matches one in an ALLOW policy, and in a DENY policy
matches on its other parts alone (either way the stricter reading).

End-user fields come from a token a ``RequestAuthentication`` verified: ``requestPrincipals``
(``<iss>/<sub>``; ``*`` is any verified token, so ``requestPrincipals: ["*"]`` requires one)
and the ``when`` keys ``request.auth.principal``, ``request.auth.audiences``,
``request.auth.presenter`` (``azp``) and ``request.auth.claims[<name>]`` (nested:
``request.auth.claims[realm_access][roles]``; a list claim matches when one of its items
does). A request without a verified token has none of them. They are HTTP fields: TCP
connections carry no token.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from gossamer.config.base import Resource, SpecModel
from gossamer.config.selector import Selector
from gossamer.snapshot_schema import (
    AuthzConditionSnapshot,
    AuthzOperationSnapshot,
    AuthzPolicySnapshot,
    AuthzRuleSnapshot,
    AuthzSourceSnapshot,
)

__all__ = ["AuthorizationPolicy", "AuthorizationPolicySpec"]

MAX_VALUES = 256  # values in one list of a rule
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,512}$")  # visible ASCII, no spaces
_WHEN_KEY = re.compile(
    r"^(?:request\.headers\[[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\]|source\.principal|"
    r"source\.namespace|destination\.port|request\.auth\.principal|"
    r"request\.auth\.audiences|request\.auth\.presenter|"
    r"request\.auth\.claims(?:\[[A-Za-z0-9_:.-]{1,128}\]){1,8})$"
)


def _check_pattern(value: str) -> str:
    """A value to match: visible ASCII, ``*`` only at one end (or alone)."""
    if not _PRINTABLE.fullmatch(value):
        raise ValueError(f"{value!r}: a value is visible ASCII without spaces (1-512 characters)")
    inner = value[1:-1] if len(value) > 1 else ""
    if "*" in inner or (value.startswith("*") and value.endswith("*") and value != "*"):
        raise ValueError(f"{value!r}: '*' may stand only at the start or the end, or alone")
    return value


Pattern = Annotated[str, AfterValidator(_check_pattern)]
Patterns = Annotated[list[Pattern], Field(max_length=MAX_VALUES)]
Ports = Annotated[list[Annotated[int, Field(ge=1, le=65535)]], Field(max_length=MAX_VALUES)]
Method = Annotated[str, Field(pattern=r"^[A-Z]{1,20}$|^\*$")]


def _check_when_key(value: str) -> str:
    if not _WHEN_KEY.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a condition key: use request.headers[<name>], source.principal, "
            "source.namespace, destination.port, request.auth.principal, "
            "request.auth.audiences, request.auth.presenter or request.auth.claims[<name>]..."
        )
    return value


class Source(SpecModel):
    """Who calls: every field given must match."""

    principals: Patterns = Field(default_factory=list)
    not_principals: Patterns = Field(default_factory=list)
    namespaces: Patterns = Field(default_factory=list)
    not_namespaces: Patterns = Field(default_factory=list)
    request_principals: Patterns = Field(default_factory=list)
    not_request_principals: Patterns = Field(default_factory=list)

    def to_snapshot(self) -> AuthzSourceSnapshot:
        return {
            "principals": list(self.principals),
            "not_principals": list(self.not_principals),
            "namespaces": list(self.namespaces),
            "not_namespaces": list(self.not_namespaces),
            "request_principals": list(self.request_principals),
            "not_request_principals": list(self.not_request_principals),
        }


class Operation(SpecModel):
    """What is called: every field given must match."""

    methods: Annotated[list[Method], Field(max_length=MAX_VALUES)] = Field(default_factory=list)
    not_methods: Annotated[list[Method], Field(max_length=MAX_VALUES)] = Field(
        default_factory=list
    )
    paths: Patterns = Field(default_factory=list)
    not_paths: Patterns = Field(default_factory=list)
    ports: Ports = Field(default_factory=list)
    not_ports: Ports = Field(default_factory=list)
    hosts: Patterns = Field(default_factory=list)
    not_hosts: Patterns = Field(default_factory=list)

    def to_snapshot(self) -> AuthzOperationSnapshot:
        return {
            "methods": list(self.methods),
            "not_methods": list(self.not_methods),
            "paths": list(self.paths),
            "not_paths": list(self.not_paths),
            "ports": list(self.ports),
            "not_ports": list(self.not_ports),
            "hosts": [h.lower() for h in self.hosts],
            "not_hosts": [h.lower() for h in self.not_hosts],
        }


class From(SpecModel):
    source: Source


class To(SpecModel):
    operation: Operation


class Condition(SpecModel):
    """``key`` must have one of ``values`` (when given) and none of ``notValues``."""

    key: Annotated[str, AfterValidator(_check_when_key)]
    values: Patterns = Field(default_factory=list)
    not_values: Patterns = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_values(self) -> Condition:
        if not self.values and not self.not_values:
            raise ValueError("a condition needs values or notValues")
        return self

    def to_snapshot(self) -> AuthzConditionSnapshot:
        key = self.key
        if key.startswith("request.headers["):  # header names match in any case
            key = "request.headers[" + key[len("request.headers[") : -1].lower() + "]"
        return {"key": key, "values": list(self.values), "not_values": list(self.not_values)}


class Rule(SpecModel):
    from_: list[From] = Field(default_factory=list, alias="from", max_length=MAX_VALUES)
    to: list[To] = Field(default_factory=list, max_length=MAX_VALUES)
    when: list[Condition] = Field(default_factory=list, max_length=MAX_VALUES)

    def to_snapshot(self) -> AuthzRuleSnapshot:
        return {
            "from": [f.source.to_snapshot() for f in self.from_],
            "to": [t.operation.to_snapshot() for t in self.to],
            "when": [c.to_snapshot() for c in self.when],
        }



class AuthorizationPolicySpec(SpecModel):
    """``spec`` of an AuthorizationPolicy."""

    selector: Selector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    rules: list[Rule] = Field(default_factory=list, max_length=1024)


class AuthorizationPolicy(Resource):
    """Who may call what, for the workloads of a namespace or of one service."""

    KIND: ClassVar[str] = "AuthorizationPolicy"
    PLURAL: ClassVar[str] = "authorizationpolicies"

    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec


    def to_snapshot(self) -> AuthzPolicySnapshot:
        return {
            "name": f"{self.metadata.namespace}/{self.metadata.name}",
            "action": self.spec.action,
            "rules": [rule.to_snapshot() for rule in self.spec.rules],
        }
