"""The AuthorizationPolicies of this sidecar's workload (``snapshot.inbound.authorization``;
``gossamer.config.authorization`` says what they mean), compiled for the request path.

``Authorization.decide`` judges one request (``Attributes``: who calls, and what) the way the
policies say: DENY first, then ALLOW (none: allowed; any: one must match), AUDIT marks. It is
sans-IO and the same for HTTP/1.1, HTTP/2, gRPC and TCP; the ``authorize`` stage
(``pipeline.authorize``) and the TCP relay (``tcp.proxy``) call it.

Cost: values are compiled into sets and prefix/suffix tuples, and each policy remembers, per
caller, which of its rules have sources that name it (``Policy.candidates``), so a request
checks only those rules' operations and conditions (``bench/RESULTS.md``, "Authorization").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.jwt_rules import Verified

__all__ = ["Attributes", "Authorization", "Decision", "compile_authorization"]


class Values:
    """One list of patterns: exact values, ``x*`` prefixes, ``*x`` suffixes, or ``*`` (any
    non-empty value)."""

    __slots__ = ("any", "exact", "prefixes", "suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if "*" not in p)
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and p != "*")
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*") and p != "*")

    def match(self, value: str) -> bool:
        if value in self.exact:
            return True
        if not value:
            return False
        return self.any or value.startswith(self.prefixes) or value.endswith(self.suffixes)


class Attributes:
    """What a rule can look at in one request or connection. ``http`` is False for a TCP
    connection (then method, path, host, headers and an end-user token are unknown).
    ``auth``: the token ``pipeline.authenticate`` verified (``jwt_rules.Verified``), if any."""

    __slots__ = ("auth", "headers", "host", "http", "method", "path", "port", "principal")

    def __init__(
        self,
        principal: str,
        port: int,
        *,
        http: bool = True,
        method: str = "",
        path: str = "",
        host: str = "",
        headers: Sequence[tuple[bytes, bytes]] = (),
        auth: Verified | None = None,
    ) -> None:
        self.principal = principal  # the caller's SPIFFE ID; empty: no mesh certificate
        self.port = port
        self.http = http
        self.method = method
        self.path = path
        self.host = host  # lower case, the port kept when the caller named one
        self.headers = headers
        self.auth = auth

    @property
    def namespace(self) -> str:
        return namespace_of(self.principal)

    @property
    def request_principal(self) -> str:
        """``<iss>/<sub>`` of the verified token; empty without one."""
        return self.auth.principal if self.auth is not None else ""

    def claim_values(self, path: tuple[str, ...]) -> list[str]:
        """The verified token's claim at ``path`` as texts (a list claim: its items)."""
        if self.auth is None:
            return []
        value = self.auth.claim_at(path)
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items if isinstance(v, (str, int, float))
                and not isinstance(v, bool)]  # fmt: skip

    def header(self, name: bytes) -> list[str]:
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == name]


def namespace_of(principal: str) -> str:
    """The namespace of a SPIFFE ID ``spiffe://<td>/ns/<namespace>/sa/<name>``, else empty."""
    parts = principal.split("/", 6)
    return parts[4] if len(parts) >= 6 and parts[3] == "ns" else ""


def _both(values: Values | None, nots: Values | None, value: str) -> bool:
    """``value`` is among ``values`` (when given) and not among ``nots`` (when given)."""
    return (values is None or values.match(value)) and (nots is None or not nots.match(value))


def _values(raw: Mapping[str, Any], field: str, where: str) -> Values | None:
    found = raw.get(field, [])
    if not isinstance(found, list) or not all(isinstance(v, str) for v in found):
        raise SnapshotError(f"{where}.{field}: expected a list of strings")
    return Values(found) if found else None


def _ports(raw: Mapping[str, Any], field: str, where: str) -> frozenset[int] | None:
    found = raw.get(field, [])
    if not isinstance(found, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in found
    ):
        raise SnapshotError(f"{where}.{field}: expected a list of ports")
    return frozenset(found) if found else None


class Source:
    __slots__ = (
        "namespaces", "not_namespaces", "not_principals", "not_request_principals", "principals",
        "request_principals",
    )  # fmt: skip

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.principals = _values(raw, "principals", where)
        self.not_principals = _values(raw, "not_principals", where)
        self.namespaces = _values(raw, "namespaces", where)
        self.not_namespaces = _values(raw, "not_namespaces", where)
        self.request_principals = _values(raw, "request_principals", where)
        self.not_request_principals = _values(raw, "not_request_principals", where)

    @property
    def end_user(self) -> bool:
        """Whether it names end users (an HTTP field: a TCP connection has no token)."""
        return self.request_principals is not None or self.not_request_principals is not None

    def match(self, a: Attributes) -> bool:
        """The caller's part (principal, namespace): the same for all its requests."""
        return _both(self.principals, self.not_principals, a.principal) and _both(
            self.namespaces, self.not_namespaces, a.namespace
        )

    def match_user(self, a: Attributes) -> bool:
        """The end user's part (``requestPrincipals``): per request."""
        return _both(self.request_principals, self.not_request_principals, a.request_principal)


class Operation:
    __slots__ = (
        "hosts", "methods", "not_hosts", "not_methods", "not_paths", "not_ports", "paths",
        "ports",
    )  # fmt: skip

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.methods = _values(raw, "methods", where)
        self.not_methods = _values(raw, "not_methods", where)
        self.paths = _values(raw, "paths", where)
        self.not_paths = _values(raw, "not_paths", where)
        self.hosts = _values(raw, "hosts", where)
        self.not_hosts = _values(raw, "not_hosts", where)
        self.ports = _ports(raw, "ports", where)
        self.not_ports = _ports(raw, "not_ports", where)

    @property
    def http_only(self) -> bool:
        return any(v is not None for v in (self.methods, self.not_methods, self.paths,
                                           self.not_paths, self.hosts, self.not_hosts))  # fmt: skip

    def match(self, a: Attributes) -> bool:
        if self.ports is not None and a.port not in self.ports:
            return False
        if self.not_ports is not None and a.port in self.not_ports:
            return False
        if not a.http:
            return True  # the HTTP parts are judged by the caller of match (Rule.match)
        return (
            _both(self.methods, self.not_methods, a.method)
            and _both(self.paths, self.not_paths, a.path)
            and self._host(a.host)
        )

    def _host(self, host: str) -> bool:
        if self.hosts is None and self.not_hosts is None:
            return True
        bare = host.rsplit(":", 1)[0] if host.rpartition(":")[2].isdigit() else host
        named = (self.hosts is None or self.hosts.match(host) or self.hosts.match(bare))
        excluded = self.not_hosts is not None and (
            self.not_hosts.match(host) or self.not_hosts.match(bare)
        )
        return named and not excluded


_AUTH_KEYS = {
    "request.auth.principal": None,
    "request.auth.audiences": ("aud",),
    "request.auth.presenter": ("azp",),
}


class Condition:
    __slots__ = ("claim", "header", "key", "not_values", "values")

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        key = raw.get("key")
        if not isinstance(key, str):
            raise SnapshotError(f"{where}.key: expected a string")
        self.key = key
        self.header: bytes | None = None
        self.claim: tuple[str, ...] | None = None  # a claim's path (request.auth.*)
        if key.startswith("request.headers[") and key.endswith("]"):
            self.header = key[len("request.headers[") : -1].lower().encode("latin-1")
        elif key.startswith("request.auth.claims[") and key.endswith("]"):
            self.claim = tuple(key[len("request.auth.claims[") : -1].split("]["))
        elif key in _AUTH_KEYS:
            self.claim = _AUTH_KEYS[key] or ()
        elif key not in ("source.principal", "source.namespace", "destination.port"):
            raise SnapshotError(f"{where}.key: unknown condition key {key!r}")
        self.values = _values(raw, "values", where)
        self.not_values = _values(raw, "not_values", where)

    @property
    def http_only(self) -> bool:
        return self.header is not None or self.claim is not None

    def match(self, a: Attributes) -> bool:
        if self.header is not None:
            found = a.header(self.header)
        elif self.claim is not None:
            if self.claim:
                found = a.claim_values(self.claim)
            else:
                found = [a.request_principal] if a.auth is not None else []
        elif self.key == "source.principal":
            found = [a.principal]
        elif self.key == "source.namespace":
            found = [a.namespace]
        else:
            found = [str(a.port)]
        if self.values is not None and not any(self.values.match(v) for v in found):
            return False
        nots = self.not_values
        return nots is None or not any(nots.match(v) for v in found)


class Rule:
    __slots__ = ("conditions", "http_only", "operations", "sources", "users")

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.sources = tuple(_each(raw, "from", where, Source))
        self.operations = tuple(_each(raw, "to", where, Operation))
        self.conditions = tuple(_each(raw, "when", where, Condition))
        # Needs what only HTTP has: on TCP, an ALLOW rule never matches, a DENY rule matches
        # on its other parts.
        # Whether a source names end users (``Policy.candidates`` then keys on them too).
        self.users = any(s.end_user for s in self.sources)
        self.http_only = (
            self.users
            or any(o.http_only for o in self.operations)
            or any(c.http_only for c in self.conditions)
        )

    def match(self, a: Attributes) -> bool:
        """Whether the whole rule matches (its sources too)."""
        if self.sources and not any(s.match(a) and s.match_user(a) for s in self.sources):
            return False
        return self.match_request(a)

    def match_request(self, a: Attributes) -> bool:
        """Whether it matches, its sources known to match the caller and end user
        (``Policy.candidates``): its operations and conditions."""
        if self.operations and not any(o.match(a) for o in self.operations):
            return False
        if not a.http:
            return all(c.match(a) for c in self.conditions if not c.http_only)
        return all(c.match(a) for c in self.conditions)


def _each(raw: Mapping[str, Any], field: str, where: str, kind: Any) -> list[Any]:
    found = raw.get(field, [])
    if not isinstance(found, list):
        raise SnapshotError(f"{where}.{field}: expected a list")
    out = []
    for i, item in enumerate(found):
        if not isinstance(item, Mapping):
            raise SnapshotError(f"{where}.{field}[{i}]: expected an object")
        out.append(kind(item, f"{where}.{field}[{i}]"))
    return out


MAX_CALLERS = 4096  # callers whose candidate rules a policy remembers (then it starts over)


class Policy:
    """One policy's rules. Which rules can match depends, for their sources, on the caller
    alone (its SPIFFE ID and namespace), so a policy works that out once per caller and keeps
    it (``candidates``): a request then checks only the operations and conditions of the
    rules whose sources named its caller."""

    __slots__ = ("action", "allowed", "callers", "denied", "name", "rules", "users")

    def __init__(self, name: str, action: str, rules: Sequence[Rule]) -> None:
        self.name = name
        self.action = action
        self.rules = tuple(rules)
        # Whether a source names end users: then the candidates depend on the end user too.
        self.users = any(rule.users for rule in self.rules)
        self.callers: dict[str, tuple[Rule, ...]] = {}
        # The decisions this policy gives when no AUDIT policy matched (made once).
        self.allowed = Decision(True, name, "", ())
        self.denied = Decision(False, name, f"denied by AuthorizationPolicy {name}", ())

    def candidates(self, a: Attributes) -> tuple[Rule, ...]:
        """The rules whose sources match the caller (and, when sources name end users and
        the request is HTTP, its end user), worked out once per caller (and end user)."""
        users = self.users and a.http
        key = f"{a.principal}\n{a.request_principal}" if users else a.principal
        found = self.callers.get(key)
        if found is None:
            found = tuple(
                r for r in self.rules
                if not r.sources or any(s.match(a) and (not users or s.match_user(a))
                                        for s in r.sources)
            )  # fmt: skip
            if len(self.callers) >= MAX_CALLERS:
                self.callers.clear()
            self.callers[key] = found
        return found

    def match(self, a: Attributes) -> bool:
        skip_http = not a.http and self.action != "DENY"
        for rule in self.candidates(a):
            if skip_http and rule.http_only:
                continue  # an ALLOW (or AUDIT) rule that needs HTTP never matches TCP
            if rule.match_request(a):
                return True
        return False


class Decision:
    """What the policies said: ``allowed``; ``policy``: the DENY policy that matched, or the
    ALLOW policy that let the request through (empty: none, or no ALLOW policy applies);
    ``reason``: why a refused request was refused; ``audit``: the AUDIT policies that
    matched."""

    __slots__ = ("allowed", "audit", "counted", "policy", "reason")

    def __init__(self, allowed: bool, policy: str, reason: str, audit: tuple[str, ...]) -> None:
        self.allowed = allowed
        self.policy = policy
        self.reason = reason
        self.audit = audit
        # The (policy, decision) counter it adds to (None: allowed with no policy to name).
        self.counted: tuple[str, str] | None = (
            (policy or "none", "allow" if allowed else "deny") if policy or not allowed else None
        )

    def with_audit(self, audit: tuple[str, ...]) -> Decision:
        return self if not audit else Decision(self.allowed, self.policy, self.reason, audit)


_NO_POLICY = Decision(True, "", "", ())


class Authorization:
    """The compiled policies of one workload, by action."""

    __slots__ = ("allow", "audit", "deny", "no_match", "reads_headers")

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.deny = tuple(p for p in policies if p.action == "DENY")
        self.allow = tuple(p for p in policies if p.action == "ALLOW")
        self.audit = tuple(p for p in policies if p.action == "AUDIT")
        names = ", ".join(p.name for p in self.allow)
        self.no_match = Decision(
            False, "", f"no ALLOW AuthorizationPolicy matched ({names})", ()
        )
        # Whether a condition names a header (else a request's headers are never gathered).
        self.reads_headers = any(
            c.header is not None for p in policies for rule in p.rules for c in rule.conditions
        )

    def decide(self, a: Attributes) -> Decision:
        audit = tuple(p.name for p in self.audit if p.match(a)) if self.audit else ()
        for policy in self.deny:
            if policy.match(a):
                return policy.denied.with_audit(audit)
        if not self.allow:
            return _NO_POLICY.with_audit(audit)
        for policy in self.allow:
            if policy.match(a):
                return policy.allowed.with_audit(audit)
        return self.no_match.with_audit(audit)


def compile_authorization(raw: object, where: str) -> Authorization | None:
    """``inbound.authorization``; None when no policy applies to this workload."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise SnapshotError(f"{where}: expected a list")
    policies = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise SnapshotError(f"{at}: expected an object")
        name, action = entry.get("name"), entry.get("action")
        if not isinstance(name, str) or not name:
            raise SnapshotError(f"{at}.name: expected a string")
        if action not in ("ALLOW", "DENY", "AUDIT"):
            raise SnapshotError(f"{at}.action: expected ALLOW, DENY or AUDIT")
        rules = _each(entry, "rules", at, Rule)
        policies.append(Policy(name, str(action), rules))
    return Authorization(policies) if policies else None
