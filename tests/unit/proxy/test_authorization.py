"""AuthorizationPolicy decisions (``proxy/snapshot/authorization.py``), sans-IO: the rules
as users know them (DENY first, then ALLOW; any ALLOW policy is default deny), each field and
wildcard, TCP's stricter reading, and the principal index against a plain scan."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gossamer.proxy.pipeline.call import authority_port as request_port
from gossamer.proxy.snapshot.authorization import (
    Attributes,
    Authorization,
    compile_authorization,
    namespace_of,
)
from gossamer.proxy.snapshot.errors import SnapshotError

WEB = "spiffe://gossamer.local/ns/shop/sa/web"
BATCH = "spiffe://gossamer.local/ns/jobs/sa/batch"
ADMIN = "spiffe://gossamer.local/ns/shop/sa/admin"


def policy(name: str, action: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"shop/{name}", "action": action, "rules": list(rules)}


def source(**fields: list[str]) -> dict[str, Any]:
    return {"principals": [], "not_principals": [], "namespaces": [], "not_namespaces": [],
            **fields}  # fmt: skip


def operation(**fields: list[Any]) -> dict[str, Any]:
    base: dict[str, list[Any]] = {k: [] for k in (
        "methods", "not_methods", "paths", "not_paths", "ports", "not_ports", "hosts",
        "not_hosts")}  # fmt: skip
    return {**base, **fields}


def rule(
    sources: list[dict[str, Any]] = (),  # type: ignore[assignment]
    operations: list[dict[str, Any]] = (),  # type: ignore[assignment]
    when: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    return {"from": list(sources), "to": list(operations), "when": list(when)}


def authz(*policies: dict[str, Any]) -> Authorization:
    compiled = compile_authorization(list(policies), "authorization")
    assert compiled is not None
    return compiled


Headers = tuple[tuple[bytes, bytes], ...]


def http(principal: str = WEB, method: str = "GET", path: str = "/orders", port: int = 80,
         host: str = "orders", headers: Headers = ()) -> Attributes:  # fmt: skip
    return Attributes(principal, port, method=method, path=path, host=host, headers=headers)


def test_no_policy_compiles_to_nothing() -> None:
    assert compile_authorization(None, "a") is None
    assert compile_authorization([], "a") is None


def test_deny_is_decided_before_allow() -> None:
    a = authz(
        policy("readers", "ALLOW", rule([source(principals=[WEB, ADMIN])])),
        policy("no-admin", "DENY", rule([source(principals=[ADMIN])])),
    )
    assert a.decide(http(WEB)).allowed
    denied = a.decide(http(ADMIN))
    assert not denied.allowed and denied.policy == "shop/no-admin"
    assert denied.reason == "denied by AuthorizationPolicy shop/no-admin"


def test_any_allow_policy_makes_the_workload_default_deny() -> None:
    a = authz(policy("web-only", "ALLOW", rule([source(principals=[WEB])])),
              policy("batch-get", "ALLOW", rule([source(namespaces=["jobs"])],
                                                [operation(methods=["GET"])])))  # fmt: skip
    assert a.decide(http(WEB, "POST")).policy == "shop/web-only"
    assert a.decide(http(BATCH, "GET")).allowed
    refused = a.decide(http(BATCH, "POST"))
    assert not refused.allowed
    assert refused.reason == (
        "no ALLOW AuthorizationPolicy matched (shop/web-only, shop/batch-get)"
    )
    assert not a.decide(http("")).allowed  # plaintext


def test_rules_and_parts() -> None:
    """A policy without rules matches nothing; an empty rule matches everything; within a
    rule, from/to/when must all match; a list of sources or operations matches on any."""
    assert not authz(policy("nothing", "ALLOW")).decide(http()).allowed
    assert authz(policy("everything", "ALLOW", rule())).decide(http("")).allowed
    a = authz(policy("p", "ALLOW", rule(
        [source(principals=[ADMIN]), source(namespaces=["jobs"])],
        [operation(methods=["GET"]), operation(paths=["/health"])],
    )))  # fmt: skip
    assert a.decide(http(BATCH, "GET", "/x")).allowed
    assert a.decide(http(ADMIN, "POST", "/health")).allowed
    assert not a.decide(http(ADMIN, "POST", "/x")).allowed
    assert not a.decide(http(WEB, "GET", "/x")).allowed


@pytest.mark.parametrize(("patterns", "value", "expected"), [
    (["/orders"], "/orders", True),
    (["/orders"], "/orders/1", False),
    (["/orders/*"], "/orders/1", True),
    (["/orders/*"], "/orders", False),
    (["*.json"], "/a/b.json", True),
    (["*"], "/anything", True),
    (["*/admin"], "/x/admin", True),
])  # fmt: skip
def test_path_patterns(patterns: list[str], value: str, expected: bool) -> None:
    a = authz(policy("p", "ALLOW", rule(operations=[operation(paths=patterns)])))
    assert a.decide(http(path=value)).allowed is expected


def test_principal_and_namespace_wildcards_and_plaintext() -> None:
    any_mesh = authz(policy("mesh", "ALLOW", rule([source(principals=["*"])])))
    assert any_mesh.decide(http(WEB)).allowed and not any_mesh.decide(http("")).allowed
    plaintext = authz(policy("outside", "ALLOW", rule([source(not_principals=["*"])])))
    assert plaintext.decide(http("")).allowed and not plaintext.decide(http(WEB)).allowed
    prefix = authz(policy("shop", "ALLOW", rule(
        [source(principals=["spiffe://gossamer.local/ns/shop/*"], not_principals=[ADMIN])])))
    assert prefix.decide(http(WEB)).allowed
    assert not prefix.decide(http(ADMIN)).allowed and not prefix.decide(http(BATCH)).allowed
    suffix = authz(policy("any-batch", "ALLOW", rule([source(principals=["*/sa/batch"])])))
    assert suffix.decide(http(BATCH)).allowed and not suffix.decide(http(WEB)).allowed
    ns = authz(policy("not-jobs", "ALLOW", rule([source(not_namespaces=["jobs"])])))
    assert ns.decide(http(WEB)).allowed and not ns.decide(http(BATCH)).allowed


def test_methods_ports_and_hosts() -> None:
    a = authz(policy("p", "ALLOW", rule(operations=[operation(
        not_methods=["DELETE"], ports=[80, 8080], hosts=["orders", "*.example.com"])])))
    assert a.decide(http(method="GET", port=8080, host="orders:8080")).allowed
    assert a.decide(http(host="api.example.com")).allowed
    assert not a.decide(http(method="DELETE")).allowed
    assert not a.decide(http(port=9000, host="orders:9000")).allowed
    assert not a.decide(http(host="evil")).allowed


def test_when_conditions() -> None:
    a = authz(policy("p", "ALLOW", rule(when=[
        {"key": "request.headers[x-tenant]", "values": ["acme", "glob*"], "not_values": []},
        {"key": "source.namespace", "values": [], "not_values": ["jobs"]},
        {"key": "destination.port", "values": ["80"], "not_values": []},
    ])))  # fmt: skip
    assert a.reads_headers
    assert a.decide(http(headers=((b"X-Tenant", b"globex"),))).allowed
    assert not a.decide(http(headers=((b"x-tenant", b"initech"),))).allowed
    assert not a.decide(http()).allowed  # no such header
    assert not a.decide(http(BATCH, headers=((b"x-tenant", b"acme"),))).allowed
    assert not a.decide(http(port=81, headers=((b"x-tenant", b"acme"),))).allowed
    principal = authz(policy("p", "DENY", rule(when=[
        {"key": "source.principal", "values": [ADMIN], "not_values": []}])))
    assert not principal.reads_headers
    assert not principal.decide(http(ADMIN)).allowed and principal.decide(http(WEB)).allowed


def test_audit_marks_without_deciding() -> None:
    a = authz(policy("watch-writes", "AUDIT", rule(operations=[operation(methods=["POST"])])))
    written = a.decide(http(method="POST"))
    assert written.allowed and written.audit == ("shop/watch-writes",)
    assert a.decide(http(method="GET")).audit == ()


def test_tcp_reads_rules_the_stricter_way() -> None:
    """A TCP connection has no method or path: an ALLOW rule that needs one never matches
    it; a DENY rule that needs one matches on its other parts."""
    allow = authz(policy("gets", "ALLOW", rule([source(principals=[WEB])],
                                               [operation(methods=["GET"])])))  # fmt: skip
    assert not allow.decide(Attributes(WEB, 5432, http=False)).allowed
    by_port = authz(policy("db", "ALLOW", rule([source(principals=[WEB])],
                                               [operation(ports=[5432])])))  # fmt: skip
    assert by_port.decide(Attributes(WEB, 5432, http=False)).allowed
    assert not by_port.decide(Attributes(BATCH, 5432, http=False)).allowed
    deny = authz(policy("no-admin-writes", "DENY", rule(
        [source(principals=[ADMIN])], [operation(methods=["POST"])])))
    assert not deny.decide(Attributes(ADMIN, 5432, http=False)).allowed
    assert deny.decide(Attributes(WEB, 5432, http=False)).allowed


def test_the_per_caller_candidates_decide_as_a_plain_scan() -> None:
    """A policy remembers, per caller, the rules whose sources name it; against random
    policies and requests the decision is the one a scan of every whole rule gives, first
    asked and remembered alike."""
    rng = random.Random(15)
    names = [f"spiffe://gossamer.local/ns/{ns}/sa/{sa}" for ns in ("a", "b") for sa in "xyz"]
    pool = [*names, "spiffe://gossamer.local/ns/a/*", "*/sa/x", "*"]
    for _ in range(200):
        rules = [rule([source(principals=rng.sample(pool, rng.randint(1, 2)))],
                      [operation(methods=rng.sample(["GET", "POST"], 1))])
                 for _ in range(rng.randint(1, 6))]  # fmt: skip
        a = authz(policy("p", rng.choice(["ALLOW", "DENY"]), *rules))
        (compiled,) = a.allow or a.deny
        for _twice in range(2):
            for principal in [*names, ""]:
                request = http(principal, rng.choice(["GET", "POST"]))
                scanned = any(r.match(request) for r in compiled.rules)
                assert compiled.match(request) is scanned


def test_a_bad_snapshot_names_the_field() -> None:
    with pytest.raises(SnapshotError, match=r"a\[0\]\.action"):
        compile_authorization([{"name": "x", "action": "MAYBE", "rules": []}], "a")
    with pytest.raises(SnapshotError, match=r"a\[0\]\.rules\[0\]\.when\[0\]\.key"):
        compile_authorization([policy("x", "ALLOW", rule(when=[
            {"key": "request.body", "values": ["x"], "not_values": []}]))], "a")
    with pytest.raises(SnapshotError, match=r"a\[0\]\.rules\[0\]\.to\[0\]\.ports"):
        compile_authorization([policy("x", "ALLOW", rule(
            operations=[operation(ports=["80"])]))], "a")


def test_helpers() -> None:
    assert namespace_of(WEB) == "shop" and namespace_of("") == "" and namespace_of("x") == ""
    assert request_port(b"orders", b"http") == 80
    assert request_port(b"orders:8080", b"http") == 8080
    assert request_port(b"[::1]:9000", b"http") == 9000
    assert request_port(b"[::1]", b"https") == 443
