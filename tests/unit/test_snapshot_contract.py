"""The snapshot contract: what the control plane builds, the sidecar compiles (internals §5, §8).

A mesh that uses every traffic feature is written as YAML, parsed and validated by the config
loader, and turned into snapshots by the control plane's own functions (``traffic_index``,
``select_services``, ``build_snapshot``, ``with_version``; Service documents become
``ServiceInfo`` as the control plane reads them from its store). Each snapshot goes through
JSON, as on the wire, into the sidecar's ``compile_snapshot``, and the compiled table must show
every feature. The schema (``gossamer.snapshot_schema``) is held to both sides: every key the
builder emits is declared there with a value of its declared type (and, for this mesh, every
declared key is emitted), and every key the sidecar reads is declared there.
"""

from __future__ import annotations

import json
import random
import types
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from gossamer import snapshot_schema as schema
from gossamer.config import (
    HTTPRoute,
    MeshConfig,
    Service,
    TCPRoute,
    TrafficPolicy,
    parse_documents,
    validate_documents,
)
from gossamer.config.authorization import AuthorizationPolicy
from gossamer.config.egress import Egress
from gossamer.config.meshconfig import MtlsMode as ConfigMtlsMode
from gossamer.config.peerauthn import PeerAuthentication
from gossamer.config.proxyfilter import ProxyFilter
from gossamer.config.requestauthn import RequestAuthentication
from gossamer.config.service import PortProtocol as ConfigPortProtocol
from gossamer.config.traffic import RetryOn as ConfigRetryOn
from gossamer.control.plane import _service_info
from gossamer.control.security import AuthorizationIndex, PeerAuthnIndex, RequestAuthnIndex
from gossamer.control.snapshots import (
    EndpointInfo,
    MeshView,
    build_snapshot,
    egress_snapshot,
    traffic_index,
    with_version,
)
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.balancer import (
    ConsistentHashBalancer,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)
from gossamer.proxy.resilience.limits import ConnectionLimits
from gossamer.proxy.resilience.retry import RETRY_CONDITIONS
from gossamer.proxy.snapshot import http_rules
from gossamer.proxy.snapshot.http_rules import HttpRule
from gossamer.proxy.snapshot.service_policy import LB_TYPES
from gossamer.proxy.snapshot.table import OutboundService, RouteTable, compile_snapshot
from gossamer.proxy.snapshot.tcp_rules import TcpBackend

# A public EC P-256 key as an identity provider would publish it.
JWKS = {"keys": [{
    "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}]}  # fmt: skip

MESH = """
apiVersion: gossamer.dev/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}, outboundTrafficPolicy: {mode: REGISTRY_ONLY},
       tracing: {otlpEndpoint: "http://127.0.0.1:4318", samplingPercent: 10.0},
       audit: {spoolSize: 64Mi, onSpoolFull: drop},
       accessLog: {format: text, template: "{method} {path} {status}", path: /dev/null}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Egress
metadata: {name: apis}
spec: {hosts: [api.example.com, "*.example.org"], ports: [443]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Egress
metadata: {name: partner}
spec:
  hosts: [api.partner.example]
  endpoints: [{address: 10.0.0.9, port: 8443}, {address: 10.0.0.10}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 8080}, {name: admin, port: 9000, protocol: tcp}]
  calls: [catalog, orders.shop, db, nosuch]
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec: {serviceAccount: catalog-sa, ports: [{name: web, port: 80, protocol: http}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec: {ports: [{port: 50051, protocol: grpc}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-callers}
spec:
  selector: {service: web}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: [spiffe://gossamer.local/ns/default/sa/frontend, "*/sa/ops"]
            notPrincipals: [spiffe://gossamer.local/ns/default/sa/old]
            namespaces: [default]
            notNamespaces: [legacy]
            requestPrincipals: ["https://idp.example.com/*"]
            notRequestPrincipals: [https://idp.example.com/blocked]
      to:
        - operation:
            methods: [GET]
            notMethods: [DELETE]
            paths: ["/api/*"]
            notPaths: [/api/admin]
            ports: [8080]
            notPorts: [9000]
            hosts: [web, "*.example.com"]
            notHosts: [evil.example.com]
      when:
        - {key: "request.headers[X-Tenant]", values: [acme], notValues: [initech]}
        - {key: "request.auth.claims[realm_access][roles]", values: [orders-reader]}
---
apiVersion: gossamer.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: web-tokens}
spec:
  selector: {service: web}
  jwtRules:
    - issuer: https://idp.example.com
      audiences: [web-api]
      fromHeaders: [{name: X-Token, prefix: ""}]
      fromCookies: [session]
      outputClaimToHeaders: [{header: X-User, claim: preferred_username}]
      forwardOriginalToken: false
      clockSkew: 30s
    - issuer: https://old-idp.example.com
      jwksUri: https://old-idp.example.com/keys
---
apiVersion: gossamer.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: web-ports}
spec:
  selector: {service: web}
  mtls: {mode: UNSET}
  portLevelMtls: {"9000": {mode: DISABLE}, "8080": {mode: STRICT}}
---
apiVersion: gossamer.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: catalog-plain}
spec:
  selector: {service: catalog}
  mtls: {mode: DISABLE}
---
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-legacy}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec: {ports: [{port: 8443, protocol: http2}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db-blue}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: db-green}
spec: {ports: [{port: 5432, protocol: tcp}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: catalog}
spec:
  service: catalog
  rules:
    - name: health
      matches:
        - path: {type: Exact, value: /healthz}
          method: GET
      backends: [{service: catalog, subset: {version: v1}}]
      filters:
        requestHeaders: {set: {X-Env: prod}, add: {X-Trace: "on"}, remove: [X-Debug]}
        responseHeaders: {set: {Cache-Control: no-store}, remove: [Server]}
      timeout: 2s
      retry:
        attempts: 3
        on: [5xx, gateway-error, reset, connect-failure, retriable-status-codes, unavailable,
             resource-exhausted, cancelled, deadline-exceeded, internal]
        statusCodes: [409]
        perTryTimeout: 500ms
        backoff: {baseInterval: 10ms, maxInterval: 200ms}
        methods: [GET, POST]
        maxBufferedBody: 1MiB
    - name: canary
      matches:
        - headers:
            - {name: X-Canary, type: Exact, value: "1"}
            - {name: X-Debug, type: Present}
            - {name: X-User, type: Prefix, value: beta-}
            - {name: X-Region, type: RegularExpression, value: "eu-[a-z]+"}
          queryParams:
            - {name: lang, type: Exact, value: en}
            - {name: trace, type: Present}
            - {name: id, type: RegularExpression, value: "[0-9]+"}
      backends: [{service: catalog, subset: {version: v2}}]
      filters:
        mirror: {service: payments.shop, subset: {version: v1}, percent: 25}
        fault: {delay: {fixedDelay: 150ms, percent: 10}, abort: {status: 503, percent: 5}}
    - name: api
      matches: [{path: {type: Prefix, value: /api/v2}}, {path: {value: /v2-api}}]
      backends:
        - {service: catalog, subset: {version: v1}, weight: 90}
        - {service: catalog, subset: {version: v2}, weight: 10}
      filters: {rewrite: {path: {type: ReplacePrefixMatch, value: /v2}}}
    - name: items
      matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
      backends: [{service: orders.shop}]
      filters: {rewrite: {path: {type: ReplaceFullPath, value: /item}}}
    - name: moved
      matches: [{path: {type: Prefix, value: /old}}]
      filters:
        redirect: {scheme: https, host: new.example.com, port: 8443, path: /new, statusCode: 301}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: catalog-late}
spec:
  service: catalog
  rules:
    - name: deletes
      matches: [{method: DELETE}]
      backends: [{service: catalog, subset: {version: v1}}]
    - {}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  service: orders
  rules:
    - matches: [{path: {value: /legacy}}]
      backends: [{service: legacy}]
      timeout: 1s
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: catalog}
spec:
  service: catalog
  loadBalancer: {type: ConsistentHash, hashOn: {header: X-User}}
  connectionPool: {maxConnections: 100, maxPendingRequests: 50, maxRequestsPerConnection: 1000}
  outlierDetection:
    consecutive5xx: 7
    consecutiveGatewayErrors: 4
    consecutiveConnectFailures: 3
    interval: 5s
    baseEjectionTime: 15s
    maxEjectionTime: 2m
    maxEjectionPercent: 50
  timeout: 15s
  retry: {attempts: 2, "on": [gateway-error], perTryTimeout: 3s}
  retryBudget: {ratio: 0.5, minRetriesPerSecond: 3, window: 20s}
  rateLimit: {requestsPerSecond: 50, burst: 80, perIdentity: true}
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: orders, namespace: shop}
spec:
  service: orders
  loadBalancer: {type: ConsistentHash, hashOn: {cookie: session}}
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: payments, namespace: shop}
spec: {service: payments, loadBalancer: {type: RoundRobin}}
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: db-green}
spec: {service: db-green, loadBalancer: {type: LeastRequest}}
---
apiVersion: gossamer.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web}
spec: {service: web, rateLimit: {requestsPerSecond: 2.5}}
---
apiVersion: gossamer.dev/v1alpha1
kind: TCPRoute
metadata: {name: db}
spec:
  service: db
  backends: [{service: db-blue, weight: 90}, {service: db-green, weight: 10}]
  drainTimeout: 5s
---
apiVersion: gossamer.dev/v1alpha1
kind: ProxyFilter
metadata: {name: tag-in}
spec:
  service: web
  filter: "tests.apps.filters:Tagging"
  config: {tag: in}
  priority: 5
---
apiVersion: gossamer.dev/v1alpha1
kind: ProxyFilter
metadata: {name: pass-in}
spec: {service: web, filter: "tests.apps.filters:Passthrough", failure: allow}
---
apiVersion: gossamer.dev/v1alpha1
kind: ProxyFilter
metadata: {name: tag-out}
spec: {service: web, direction: outbound, filter: "tests.apps.filters:Tagging"}
"""

ServiceKey = tuple[str, str]
ENDPOINTS: dict[ServiceKey, list[EndpointInfo]] = {
    ("default", "catalog"): [
        EndpointInfo("10.0.0.2", 4002, {"version": "v2"}),
        EndpointInfo("10.0.0.1", 4001, {"version": "v1"}),
    ],
    ("shop", "orders"): [EndpointInfo("10.0.1.1", 5001)],
    ("shop", "payments"): [EndpointInfo("10.0.1.2", 5002, {"version": "v1"})],
    ("shop", "legacy"): [EndpointInfo("10.0.1.3", 5003)],
    ("default", "db-blue"): [EndpointInfo("10.0.2.1", 6001)],
    ("default", "db-green"): [EndpointInfo("10.0.2.2", 6002)],
}
WORKLOAD_ONLY = frozenset({("shop", "legacy")})  # known by a registered workload, no Service
ON_DEMAND = ["ghost.shop", "Not A Name!"]  # subscriptions at run time
VERSION = 7


def mesh_view() -> MeshView:
    """The view the control plane would build from MESH, as ``ControlPlane._mesh_view`` does."""
    resources = validate_documents(parse_documents(MESH))
    (mesh,) = [r for r in resources if isinstance(r, MeshConfig)]
    infos = [_service_info(r.to_document()) for r in resources if isinstance(r, Service)]
    return MeshView(
        trust_domain="gossamer.local",
        mtls_mode=mesh.spec.mtls.mode,
        tracing=cast(schema.TracingSnapshot, mesh.spec.tracing.to_snapshot())
        if mesh.spec.tracing is not None else None,
        audit=cast(schema.AuditSnapshot, mesh.spec.audit.to_snapshot()),
        access_log=cast(schema.AccessLogSnapshot, mesh.spec.access_log.to_snapshot())
        if mesh.spec.access_log is not None else None,
        services={(info.namespace, info.name): info for info in infos},
        endpoints=ENDPOINTS,
        workload_services=WORKLOAD_ONLY,
        traffic=traffic_index(
            [r for r in resources if isinstance(r, HTTPRoute)],
            [r for r in resources if isinstance(r, TrafficPolicy)],
            [r for r in resources if isinstance(r, TCPRoute)],
            [r for r in resources if isinstance(r, ProxyFilter)],
        ),
        egress=egress_snapshot(mesh.spec.outbound_traffic_policy.mode,
                               [r for r in resources if isinstance(r, Egress)]),
        authorization=AuthorizationIndex.of(
            [r for r in resources if isinstance(r, AuthorizationPolicy)]
        ),
        request_authn=RequestAuthnIndex.of(
            [r for r in resources if isinstance(r, RequestAuthentication)]
        ),
        peer_authn=PeerAuthnIndex.of([r for r in resources if isinstance(r, PeerAuthentication)]),
        jwks={("https://idp.example.com", None): (JWKS, None),
              ("https://old-idp.example.com", "https://old-idp.example.com/keys"):
                  (None, "https://old-idp.example.com/keys answered 503")},
    )


def built(service: str = "web", on_demand: list[str] | None = None) -> schema.Snapshot:
    """The snapshot the control plane sends to a proxy of ``service`` (namespace default)."""
    content = build_snapshot("default", service, ON_DEMAND if on_demand is None else on_demand,
                             mesh_view())  # fmt: skip
    return with_version(content, VERSION)


def wire(snapshot: schema.Snapshot) -> Any:
    """The snapshot as the sidecar receives it."""
    return json.loads(json.dumps(snapshot))


def compiled(service: str = "web", previous: RouteTable | None = None) -> RouteTable:
    return compile_snapshot(
        wire(built(service)), metrics=Metrics(service, "default"), previous=previous
    )


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return compiled()


def outbound(table: RouteTable, key: str) -> OutboundService:
    return table.services[key]


def rule_for(
    service: OutboundService, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> HttpRule | None:
    assert service.router is not None
    return service.router.match(method, target, headers)


# ----------------------------------------------------------------- the whole table


def test_the_snapshot_survives_json_unchanged() -> None:
    """The builder's output is plain JSON: the wire changes nothing."""
    snapshot = built()
    assert wire(snapshot) == snapshot


def test_table_has_the_proxy_inbound_and_services(table: RouteTable) -> None:
    """Version, namespace, mTLS mode from MeshConfig, known services across namespaces (routes'
    backends and mirrors included), and unknown names as sent."""
    assert table.version == VERSION
    assert table.namespace == "default"
    assert table.mtls == "PERMISSIVE"
    assert set(table.services) == {
        "catalog.default", "orders.shop", "payments.shop", "legacy.shop",
        "db.default", "db-blue.default", "db-green.default",
    }  # fmt: skip
    assert table.unknown == frozenset({"nosuch.default", "ghost.shop", "Not A Name!"})


def test_service_identity_protocol_and_endpoints(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    assert catalog.identity == "spiffe://gossamer.local/ns/default/sa/catalog-sa"
    assert catalog.protocol == "http"
    assert [(ep.addr.host, ep.addr.port, ep.labels) for ep in catalog.endpoints_all] == [
        ("10.0.0.1", 4001, {"version": "v1"}),
        ("10.0.0.2", 4002, {"version": "v2"}),
    ]
    assert outbound(table, "orders.shop").protocol == "grpc"
    assert outbound(table, "payments.shop").protocol == "http2"
    assert outbound(table, "db.default").protocol == "tcp"
    legacy = outbound(table, "legacy.shop")  # known by its workload only: the defaults
    assert (legacy.identity, legacy.protocol) == ("spiffe://gossamer.local/ns/shop/sa/legacy",
                                                  "http")  # fmt: skip
    assert [ep.addr.port for ep in legacy.endpoints_all] == [5003]


def test_inbound_rate_limit_of_the_proxys_own_service(table: RouteTable) -> None:
    """web's own TrafficPolicy limits its inbound (burst defaults to one second's worth);
    catalog's proxy gets catalog's per-identity limit."""
    limiter = table.rate_limiter
    assert limiter is not None
    assert (limiter.rps, limiter.burst, limiter.per_identity) == (2.5, 3.0, False)
    own = compiled("catalog")
    assert own.rate_limiter is not None
    assert (own.rate_limiter.rps, own.rate_limiter.burst, own.rate_limiter.per_identity) == (
        50.0, 80.0, True,
    )  # fmt: skip
    assert own.services == {}  # catalog calls nothing


def test_recompiling_the_same_snapshot_keeps_the_rate_limiter(table: RouteTable) -> None:
    """The sidecar compares the rate limit as received: an unchanged one keeps its buckets."""
    again = compiled(previous=table)
    assert again.rate_limiter is table.rate_limiter


# ----------------------------------------------------------------- HTTP routes


def test_rules_are_merged_in_route_name_order(table: RouteTable) -> None:
    router = outbound(table, "catalog.default").router
    assert router is not None
    assert [rule.name for rule in router.rules] == [
        "catalog/health", "catalog/canary", "catalog/api", "catalog/items", "catalog/moved",
        "catalog-late/deletes", "catalog-late/1",
    ]  # fmt: skip


def test_exact_path_and_method_with_header_filters_timeout_and_retry(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    rule = rule_for(catalog, b"GET", b"/healthz", [])
    assert rule is not None and rule.name == "catalog/health"
    other = rule_for(catalog, b"POST", b"/healthz", [])
    assert other is not None and other.name == "catalog-late/1"
    assert rule.pick_backend(random.Random(0)).subset_key == (("version", "v1"),)
    assert rule.filters.request_headers(
        [(b"x-debug", b"1"), (b"X-Env", b"dev"), (b"accept", b"*/*")]
    ) == [(b"accept", b"*/*"), (b"x-env", b"prod"), (b"x-trace", b"on")]
    assert rule.filters.response_headers([(b"server", b"app"), (b"etag", b"1")]) == [
        (b"etag", b"1"), (b"cache-control", b"no-store"),
    ]  # fmt: skip
    assert rule.timeout == 2.0
    retry = rule.retry
    assert retry is not None
    assert (retry.attempts, retry.max_tries, retry.per_try_timeout) == (3, 4, 0.5)
    assert (retry.backoff_base, retry.backoff_max) == (0.01, 0.2)
    assert retry.methods == frozenset({b"GET", b"POST"})
    assert retry.max_body_bytes == 1024 * 1024
    assert retry.retriable_status(409) and retry.retriable_status(500)
    assert not retry.retriable_status(404)
    assert retry.grpc_statuses == frozenset({1, 4, 8, 13, 14})
    for cause in ("connect-failed", "upstream-reset", "upstream-timeout"):
        assert retry.retriable_cause(cause)


def test_header_and_query_matches_with_mirror_and_fault(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    headers = [(b"X-Canary", b"1"), (b"x-debug", b""), (b"x-user", b"beta-7"),
               (b"x-region", b"eu-west")]  # fmt: skip
    target = b"/anything?lang=en&trace&id=42"
    rule = rule_for(catalog, b"GET", target, headers)
    assert rule is not None and rule.name == "catalog/canary"
    for changed_headers, changed_target in [
        (headers[1:], target),  # no x-canary
        (headers[:1] + headers[2:], target),  # x-debug absent
        ([*headers[:2], (b"x-user", b"alpha"), headers[3]], target),  # wrong prefix
        ([*headers[:3], (b"x-region", b"us-east")], target),  # regex fails
        (headers, b"/anything?lang=de&trace&id=42"),
        (headers, b"/anything?lang=en&id=42"),  # trace absent
        (headers, b"/anything?lang=en&trace&id=x"),
    ]:
        miss = rule_for(catalog, b"GET", changed_target, changed_headers)
        assert miss is not None and miss.name == "catalog-late/1"
    assert rule.pick_backend(random.Random(0)).subset_key == (("version", "v2"),)
    mirror = rule.filters.mirror
    assert mirror is not None
    assert (mirror.service_key, dict(mirror.subset), mirror.percent) == (
        "payments.shop", {"version": "v1"}, 25.0,
    )  # fmt: skip
    fault = rule.filters.fault
    assert fault is not None
    assert (fault.delay, fault.delay_percent, fault.abort_status, fault.abort_percent) == (
        0.15, 10.0, 503, 5.0,
    )  # fmt: skip


def test_prefix_matches_weighted_backends_and_prefix_rewrite(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    rule = rule_for(catalog, b"GET", b"/api/v2/items?x=1", [])
    assert rule is not None and rule.name == "catalog/api"
    assert rule.filters.rewrite_path(b"/api/v2/items?x=1", rule) == b"/v2/items?x=1"
    other = rule_for(catalog, b"GET", b"/v2-api/items", [])  # the second match (default Prefix)
    assert other is not None and other.name == "catalog/api"
    assert other.filters.rewrite_path(b"/v2-api/items", other) == b"/v2/items"
    miss = rule_for(catalog, b"GET", b"/api/v2x", [])  # prefixes match whole segments
    assert miss is not None and miss.name == "catalog-late/1"
    backends = rule.backends
    assert [ref.subset_key for ref in backends.refs] == [(("version", "v1"),),
                                                         (("version", "v2"),)]  # fmt: skip
    assert backends.weights == (90, 10)
    assert {ref.service_key for ref in backends.refs} == {"catalog.default"}


def test_regex_path_full_rewrite_and_a_backend_in_another_namespace(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    rule = rule_for(catalog, b"GET", b"/items/42?full=1", [])
    assert rule is not None and rule.name == "catalog/items"
    assert rule.filters.rewrite_path(b"/items/42?full=1", rule) == b"/item?full=1"
    assert rule.pick_backend(random.Random(0)).service_key == "orders.shop"
    miss = rule_for(catalog, b"GET", b"/items/abc", [])  # the regex must match the whole path
    assert miss is not None and miss.name == "catalog-late/1"


def test_redirect(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    rule = rule_for(catalog, b"GET", b"/old/page?q=1", [])
    assert rule is not None and rule.name == "catalog/moved"
    redirect = rule.filters.redirect
    assert redirect is not None and redirect.status == 301
    assert redirect.location(b"http", b"catalog", b"/old/page?q=1") == (
        b"https://new.example.com:8443/new?q=1"
    )
    response = rule.filters.redirect_response(b"http", b"catalog", b"/old/page?q=1")
    assert response is not None and response.startswith(b"HTTP/1.1 301 ")


def test_method_match_and_catch_all_of_a_second_route(table: RouteTable) -> None:
    """No timeout or retry on the rule: the service policy's apply (see the policy test)."""
    catalog = outbound(table, "catalog.default")
    rule = rule_for(catalog, b"DELETE", b"/things/7", [])
    assert rule is not None and rule.name == "catalog-late/deletes"
    fallback = rule_for(catalog, b"PATCH", b"/", [])
    assert fallback is not None and fallback.name == "catalog-late/1"
    assert fallback.pick_backend(random.Random(0)).service_key == "catalog.default"
    assert fallback.pick_backend(random.Random(0)).subset_key == ()
    assert (fallback.timeout, fallback.retry) == (None, None)


def test_route_of_a_service_in_another_namespace(table: RouteTable) -> None:
    orders = outbound(table, "orders.shop")
    rule = rule_for(orders, b"GET", b"/legacy/x", [])
    assert rule is not None and rule.name == "orders/0"
    assert rule.pick_backend(random.Random(0)).service_key == "legacy.shop"
    assert rule.timeout == 1.0
    assert rule_for(orders, b"GET", b"/new", []) is None  # no rule: the service's endpoints


# ----------------------------------------------------------------- policies and TCP


def test_traffic_policy_with_every_field(table: RouteTable) -> None:
    catalog = outbound(table, "catalog.default")
    policy = catalog.policy
    assert (policy.lb_type, policy.hash_header, policy.hash_cookie) == (
        "ConsistentHash", b"x-user", None,
    )  # fmt: skip
    assert isinstance(catalog.balancer, ConsistentHashBalancer)
    assert policy.limits == ConnectionLimits(100, 50, 1000)
    assert catalog.account.limits == policy.limits
    outlier = policy.outlier
    assert outlier is not None
    assert (
        outlier.consecutive_5xx,
        outlier.consecutive_gateway_errors,
        outlier.consecutive_connect_failures,
    ) == (7, 4, 3)
    assert (outlier.interval, outlier.base_ejection, outlier.max_ejection) == (5.0, 15.0, 120.0)
    assert outlier.max_ejection_percent == 50.0
    assert policy.timeout == 15.0
    retry = policy.retry
    assert retry is not None
    assert (retry.attempts, retry.per_try_timeout) == (2, 3.0)
    assert retry.retriable_status(502) and not retry.retriable_status(500)
    budget = policy.budget
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.5, 3.0, 20.0)


def test_load_balancer_types_and_default_policy(table: RouteTable) -> None:
    orders = outbound(table, "orders.shop")
    assert (orders.policy.lb_type, orders.policy.hash_cookie) == ("ConsistentHash", b"session")
    assert isinstance(orders.balancer, ConsistentHashBalancer)
    assert outbound(table, "payments.shop").policy.lb_type == "RoundRobin"
    assert isinstance(outbound(table, "payments.shop").balancer, RoundRobinBalancer)
    assert outbound(table, "db-green.default").policy.lb_type == "LeastRequest"
    default = outbound(table, "legacy.shop")  # no TrafficPolicy: the control plane's defaults
    assert isinstance(default.balancer, PeakEwmaBalancer)
    policy = default.policy
    assert (policy.lb_type, policy.outlier, policy.timeout, policy.retry) == (
        "PeakEWMA", None, None, None,
    )  # fmt: skip
    assert policy.limits.unlimited
    assert (policy.budget.ratio, policy.budget.min_per_second, policy.budget.window) == (
        0.2, 10.0, 10.0,
    )  # fmt: skip
    assert default.router is None and default.tcp_route is None


def test_filters_in_priority_order_per_direction(table: RouteTable) -> None:
    inbound = table.inbound_stages
    outbound = table.outbound_stages
    assert inbound is not None and outbound is not None
    filters = [s.name for s in inbound.all if s.slot == "filter"]
    assert filters == ["default/pass-in", "default/tag-in"]
    assert [s.name for s in outbound.all] == ["default/tag-out"]
    assert [s.name for s in inbound.responses] == ["default/tag-in"]
    catalog = compiled("catalog").inbound_stages  # no ProxyFilter for catalog
    assert catalog is not None and [s.slot for s in catalog.all] == ["authorize"]


def test_tcp_route(table: RouteTable) -> None:
    db = outbound(table, "db.default")
    route = db.tcp_route
    assert route is not None
    assert route.backends == (TcpBackend("db-blue.default", 90), TcpBackend("db-green.default", 10))
    assert route.drain == 5.0
    assert db.router is None
    assert outbound(table, "db-blue.default").tcp_route is None


# ----------------------------------------------------------------- the schema


def _typeddicts(root: type) -> dict[str, type]:
    """Every TypedDict reachable from ``root``, by name."""
    found: dict[str, type] = {}

    def visit(hint: Any) -> None:
        if is_typeddict(hint) and hint.__name__ not in found:
            found[hint.__name__] = hint
            for value in get_type_hints(hint).values():
                visit(value)
        for arg in get_args(hint):
            visit(arg)

    visit(root)
    return found


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _problems(value: Any, hint: Any, path: str, seen: set[tuple[str, str]]) -> list[str]:
    """Where ``value`` does not have the type ``hint`` (a schema annotation); records every
    ``(TypedDict name, key)`` met in ``seen``."""
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({hint.__name__}), got {value!r}"]
        hints = get_type_hints(hint)
        out = [f"{path}: {key!r} missing" for key in hint.__required_keys__ - value.keys()]
        for key, item in value.items():
            if key not in hints:
                out.append(f"{path}.{key}: not declared in {hint.__name__}")
                continue
            seen.add((hint.__name__, key))
            out += _problems(item, hints[key], f"{path}.{key}", seen)
        return out
    if _is_union(hint):
        attempts = [_problems(value, arg, path, seen) for arg in get_args(hint)]
        return [] if any(not found for found in attempts) else min(attempts, key=len)
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        (item_hint,) = get_args(hint)
        return [
            p for i, v in enumerate(value) for p in _problems(v, item_hint, f"{path}[{i}]", seen)
        ]
    if origin is dict:
        key_hint, item_hint = get_args(hint)
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {value!r}"]
        return [p for k, v in value.items()
                for p in _problems(k, key_hint, f"{path} key", seen)
                + _problems(v, item_hint, f"{path}.{k}", seen)]  # fmt: skip
    if origin is Literal:
        return [] if value in get_args(hint) else [f"{path}: {value!r} not in {get_args(hint)}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null, got {value!r}"]
    if hint is Any:  # a user's filter config: any JSON value
        return []
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return [] if ok else [f"{path}: expected {hint.__name__}, got {value!r}"]


def _all_keys(root: type) -> set[tuple[str, str]]:
    return {(name, key) for name, td in _typeddicts(root).items() for key in get_type_hints(td)}


def test_the_builder_emits_only_what_the_schema_declares() -> None:
    """Every key of both proxies' snapshots is declared, with a value of its declared type, and
    every required key is there; this mesh uses every feature, so every declared key of every
    object appears (a key the builder stopped emitting would be left over)."""
    seen: set[tuple[str, str]] = set()
    for service in ("web", "catalog"):
        assert _problems(built(service), schema.Snapshot, "snapshot", seen) == []
    assert _all_keys(schema.Snapshot) - seen == set()


def test_the_walk_finds_undeclared_and_mistyped_keys() -> None:
    """A guard for the test above: the walk does see drift."""
    snapshot: Any = built()
    snapshot["outbound"]["services"][0]["policy"]["retry_budget"]["jitter"] = 1
    snapshot["inbound"]["mtls"] = "OFF"
    del snapshot["trust_domain"]
    problems = _problems(snapshot, schema.Snapshot, "snapshot", set())
    assert sorted(problems) == [
        "snapshot.inbound.mtls: 'OFF' not in ('STRICT', 'PERMISSIVE', 'DISABLE')",
        "snapshot.outbound.services[0].policy.retry_budget.jitter: not declared in "
        "RetryBudgetSnapshot",
        "snapshot: 'trust_domain' missing",
    ]


class _Recording(dict[str, Any]):
    """A JSON object of the given TypedDict that records every key looked up in it (a dict, so
    that the compiled sidecar takes it too); what it hands out is recorded likewise."""

    def __init__(self, data: dict[str, Any], hint: type, reads: set[tuple[str, str]]) -> None:
        super().__init__(data)
        self._hint, self._reads = hint, reads

    def __contains__(self, key: object) -> bool:
        self._reads.add((self._hint.__name__, str(key)))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self._reads.add((self._hint.__name__, key))
        value = super().__getitem__(key)
        hints = get_type_hints(self._hint)
        return _recording(value, hints[key], self._reads) if key in hints else value

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]


def _recording(value: Any, hint: Any, reads: set[tuple[str, str]]) -> Any:
    if is_typeddict(hint) and isinstance(value, dict):
        return _Recording(value, hint, reads)
    if _is_union(hint):
        for arg in get_args(hint):
            if (is_typeddict(arg) and isinstance(value, dict)) or (
                get_origin(arg) is list and isinstance(value, list)
            ):
                return _recording(value, arg, reads)
    if get_origin(hint) is list and isinstance(value, list):
        (item_hint,) = get_args(hint)
        return [_recording(item, item_hint, reads) for item in value]
    return value


# Keys the sidecar's compile_snapshot does not read, each for a reason.
UNREAD = {
    ("Snapshot", "trust_domain"),  # identities arrive whole, as SPIFFE IDs
    ("ProxySnapshot", "identity"),  # the sidecar's own identity is its certificate's
    ("InboundSnapshot", "ports"),  # read from the raw snapshot by the TCP proxy (tcp/proxy.py)
}


def test_the_sidecar_reads_only_what_the_schema_declares() -> None:
    """Every key compile_snapshot reads (present or not) is declared where it looks for it, and
    it reads every declared key but the few listed in UNREAD."""
    reads: set[tuple[str, str]] = set()
    for service in ("web", "catalog"):
        recorded = _recording(wire(built(service)), schema.Snapshot, reads)
        compile_snapshot(recorded, metrics=Metrics(service, "default"), previous=None)
    declared = _all_keys(schema.Snapshot)
    assert reads - declared == set()
    assert declared - reads == UNREAD


def test_closed_value_sets_agree_with_both_sides() -> None:
    """The values the schema allows are the ones the config model accepts and the sidecar
    compiles."""
    assert set(get_args(ConfigRetryOn)) == set(get_args(schema.RetryCondition)) == RETRY_CONDITIONS
    assert set(get_args(ConfigPortProtocol)) == set(get_args(schema.PortProtocol))
    assert set(get_args(ConfigMtlsMode)) == set(get_args(schema.MtlsMode))
    assert set(get_args(schema.LoadBalancerType)) == LB_TYPES
    assert set(get_args(schema.PathMatchType)) == set(http_rules._PATH_KINDS)
    assert set(get_args(schema.HeaderMatchType)) == set(http_rules._HEADER_KINDS)
    assert set(get_args(schema.QueryMatchType)) == set(http_rules._QUERY_KINDS)
    assert set(get_args(schema.RedirectStatus)) == http_rules._REDIRECT_CODES


def test_authorization_policies_of_the_workload(table: RouteTable) -> None:
    """The web proxy gets its own policy and the namespace-wide one, catalog only the
    latter; both compile into the inbound authorize stage."""
    assert table.authorization is not None and table.inbound_stages is not None
    assert [p.name for p in table.authorization.allow] == ["default/web-callers"]
    assert [p.name for p in table.authorization.deny] == ["default/no-legacy"]
    assert table.authorization.reads_headers
    assert "authorize" in [stage.slot for stage in table.inbound_stages.all]
    catalog = compiled("catalog")
    assert catalog.authorization is not None
    assert [p.name for p in catalog.authorization.allow] == []
    assert [p.name for p in catalog.authorization.deny] == ["default/no-legacy"]


def test_request_authentication_of_the_workload(table: RouteTable) -> None:
    """web accepts tokens of both issuers: the fetched keys of one, and for the other no
    key set yet with the control plane's reason (its tokens are refused: fail closed)."""
    assert table.inbound_stages is not None
    (stage,) = [s for s in table.inbound_stages.all if s.slot == "authenticate"]
    rules = {rule.issuer: rule for rule in stage.rules}  # type: ignore[attr-defined]
    new, old = rules["https://idp.example.com"], rules["https://old-idp.example.com"]
    assert new.audiences == ("web-api",) and new.cookies == ("session",)
    assert new.headers == ((b"x-token", ""),) and not new.forward and new.skew == 30
    assert new.claim_headers == ((b"x-user", "preferred_username"),)
    assert new.keys is not None and list(new.keys) == ["k1"]
    assert old.keys is None and "503" in old.jwks_error
    assert old.headers == ((b"authorization", "Bearer "),) and old.forward
    slots = [s.slot for s in table.inbound_stages.all]
    assert slots.index("authenticate") < slots.index("authorize")


def test_peer_authentication_modes(table: RouteTable) -> None:
    """The mesh is PERMISSIVE (MeshConfig); web's own port 9000 takes plaintext from callers'
    sidecars (DISABLE) and 8080 only mTLS; catalog's workloads take plaintext: its callers
    send it so, on any port."""
    assert table.mtls == "PERMISSIVE" and table.port_mtls == {9000: "DISABLE", 8080: "STRICT"}
    assert table.plaintext_ok and table.strict_for(8080) and not table.strict_for(80)
    catalog = outbound(table, "catalog.default")
    assert catalog.plaintext(b"catalog", b"http") and catalog.plaintext(b"catalog:9000", b"http")
    web_mode, web_ports = mesh_view().peer_authn.modes(("default", "web"), "STRICT")
    assert web_mode == "STRICT"  # UNSET: the level above (here a STRICT mesh) decides
    assert web_ports == [{"port": 9000, "mode": "DISABLE"}]  # 8080 is the mode already
