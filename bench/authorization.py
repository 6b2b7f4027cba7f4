"""``python -m bench.authorization``: what AuthorizationPolicies cost per request (issue 13).

The ``authorize`` stage (``proxy/pipeline/authorize.py``) runs once per inbound request: it
reads the caller, method, path and authority off the request and asks the compiled policies
(``proxy/snapshot/authorization.py``). This times that call on a real HTTP/1.1 ``Exchange``
(the compiled build when there is one), for policies of 100 rules, and the ``authenticate``
stage (``proxy/pipeline/authenticate.py``) with a cached token:

- ``100 rules, exact principals``: one ALLOW policy, each rule naming one caller, methods and
  a path prefix; the request's caller is named by the last rule (the principal index finds it);
- ``100 rules, wildcard principals``: the same with ``*/sa/<name>`` patterns, which the index
  cannot hold: every rule is tried, the matching one last (the worst case);
- ``100 rules + DENY on a header``: the exact case plus a DENY policy with a header condition
  (the request's headers are read);
- ``no policy``: no stage at all, by construction 0 (a sidecar without policies has none);
- ``cached JWT``: the ``authenticate`` stage (RequestAuthentication) with a valid RS256 token
  it verified before (a cache lookup, no signature check), copying two claims into headers;
- ``cached JWT + 100 rules on its claims``: both stages, the rules requiring a request
  principal and a role claim.

Interleaved rounds, medians; the section is written into bench/RESULTS.md between markers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.routing import _state, compiled_section_main, cost_lines, median_row
from gossamer.proxy.http1.exchange import Exchange
from gossamer.proxy.http1.outbound import OutboundConnection
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.authenticate import AuthenticateStage
from gossamer.proxy.pipeline.authorize import AuthorizeStage
from gossamer.proxy.pipeline.slots import Stage
from gossamer.proxy.snapshot.authorization import compile_authorization
from gossamer.proxy.snapshot.jwt_rules import compile_jwt_rules

BEGIN = "<!-- authorization-cost:begin -->"
END = "<!-- authorization-cost:end -->"
CALLER = "spiffe://gossamer.local/ns/default/sa/caller99"


def _rules(wildcard: bool) -> list[dict[str, Any]]:
    rules = []
    for i in range(100):
        principal = f"*/sa/caller{i}" if wildcard else f"spiffe://gossamer.local/ns/default/sa/caller{i}"
        rules.append({
            "from": [{"principals": [principal], "not_principals": [], "namespaces": [],
                      "not_namespaces": []}],
            "to": [{"methods": ["GET", "HEAD"], "not_methods": [], "paths": [f"/r{i}/*"],
                    "not_paths": [], "ports": [], "not_ports": [], "hosts": [], "not_hosts": []}],
            "when": [],
        })  # fmt: skip
    return rules


def _stage(wildcard: bool, deny_header: bool) -> AuthorizeStage:
    policies: list[dict[str, Any]] = [
        {"name": "default/callers", "action": "ALLOW", "rules": _rules(wildcard)}
    ]
    if deny_header:
        policies.append({"name": "default/suspended", "action": "DENY", "rules": [
            {"from": [], "to": [], "when": [
                {"key": "request.headers[x-tenant]", "values": ["initech"], "not_values": []}]}]})
    compiled = compile_authorization(policies, "bench")
    assert compiled is not None
    return AuthorizeStage(compiled, Metrics("orders", "default"))


def _exchange(token: bytes = b"") -> Exchange:
    down = OutboundConnection(_state([]))
    ex = Exchange(time.monotonic_ns(), down)
    ex.method, ex.path, ex.authority = b"GET", b"/r99/items?page=2", b"orders"
    ex.peer = CALLER.encode()
    ex.plain = PLAIN + (b"\r\nauthorization: Bearer " + token if token else b"")
    return ex


PLAIN = b"\r\nHost: orders\r\nx-tenant: acme"
ISSUER = "https://idp.example.com"


def _cost(stages: Sequence[Stage], ex: Exchange, plain: bytes, requests: int) -> float:
    """Microseconds per request through ``stages`` (every request allowed). Stages that read
    headers get them fresh each time, as each request would (the plain lines parsed on first
    use): the loop's resets count against them."""
    fresh = any(
        isinstance(s, AuthenticateStage) or s.authorization.reads_headers  # type: ignore[attr-defined]
        for s in stages
    )
    started = time.perf_counter()
    for _ in range(requests):
        if fresh:
            ex.plain = plain
            ex.headers = []
            ex.notes = None
        for stage in stages:
            if not stage.on_request(ex):
                raise RuntimeError("the benchmark's request was refused")
    return (time.perf_counter() - started) / requests * 1e6


def _jwt_stage() -> tuple[AuthenticateStage, bytes]:
    """The authenticate stage with a locally made RS256 key, and a token it accepts."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1"}
    rules = compile_jwt_rules([{
        "issuer": ISSUER, "audiences": ["orders-api"],
        "from_headers": [{"name": "authorization", "prefix": "Bearer "}], "from_cookies": [],
        "output_claim_to_headers": [{"header": "x-user", "claim": "preferred_username"},
                                    {"header": "x-roles", "claim": "realm_access.roles"}],
        "forward_original_token": True, "clock_skew_ms": 60_000, "jwks": {"keys": [jwk]},
        "jwks_error": None,
    }], "bench")  # fmt: skip
    claims = {"iss": ISSUER, "sub": "caller99", "aud": "orders-api",
              "exp": int(time.time()) + 3600, "preferred_username": "alice",
              "realm_access": {"roles": ["orders-reader"]}}  # fmt: skip
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    return AuthenticateStage(rules), token.encode()


def _claims_stage() -> AuthorizeStage:
    when = [{"key": "request.auth.claims[realm_access][roles]", "values": ["orders-reader"],
             "not_values": []}]  # fmt: skip
    rules = [{"from": [{"principals": [], "not_principals": [], "namespaces": [],
                        "not_namespaces": [], "request_principals": [f"{ISSUER}/caller{i}"],
                        "not_request_principals": []}], "to": [], "when": when}
             for i in range(100)]  # fmt: skip
    compiled = compile_authorization(
        [{"name": "default/readers", "action": "ALLOW", "rules": rules}], "bench"
    )
    assert compiled is not None
    return AuthorizeStage(compiled, Metrics("orders", "default"))


def measure(rounds: int = 7, requests: int = 20_000) -> dict[str, Any]:
    authenticate, token = _jwt_stage()
    cases: dict[str, tuple[Sequence[Stage], Exchange]] = {
        "100 rules, exact principals": ([_stage(False, False)], _exchange()),
        "100 rules, wildcard principals": ([_stage(True, False)], _exchange()),
        "100 rules + DENY on a header": ([_stage(False, True)], _exchange()),
        "cached JWT": ([authenticate], _exchange(token)),
        "cached JWT + 100 rules on its claims": ([authenticate, _claims_stage()],
                                                 _exchange(token)),
    }  # fmt: skip
    plains = {name: ex.plain for name, (_, ex) in cases.items()}
    for name, (stages, ex) in cases.items():
        _cost(stages, ex, plains[name], 2_000)  # warm up (a token verified once, then cached)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (stages, ex) in cases.items():
            samples[name].append(_cost(stages, ex, plains[name], requests))
    rows = [median_row("no policy", [0.0])]
    rows += [median_row(name, values) for name, values in samples.items()]
    return {"rounds": rounds, "requests": requests, "rows": rows}


def render(result: dict[str, Any], code: str) -> str:
    lines = [
        BEGIN,
        "## Authorization: cost per request (issue 13)",
        "",
        "`python -m bench.authorization` (" + code + "): the `authorize` stage on a real",
        "HTTP/1.1 `Exchange`, median of " + str(result["rounds"]) + " interleaved rounds of "
        + str(result["requests"]) + " requests (± half the range); targets: <= 3 us for",
        "authorization, <= 5 us for a cached token.",
        "",
        "| policies | us/request |",
        "|---|---|",
    ]
    lines += [*cost_lines(result["rows"]), "", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return compiled_section_main(argv, "python -m bench.authorization", __doc__, measure,
                                 render, rounds=7)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
