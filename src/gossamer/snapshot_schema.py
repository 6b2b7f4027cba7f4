"""The proxy snapshot's schema: what the control plane sends and the sidecar compiles.

One ``TypedDict`` per JSON object of the snapshot (docs/internals.md §5 and §8). The control
plane's builders (``gossamer.control.snapshots`` and the ``to_snapshot``-style methods of
``gossamer.config``) are annotated to return these types and ``compile_snapshot``
(``gossamer.proxy.snapshot.table``) to take :class:`Snapshot`, so mypy checks both sides
against this one module; ``tests/unit/test_snapshot_contract.py`` checks at run time that every
key the builder emits and every key the sidecar reads is declared here.

Conventions: a key is required when the control plane always sends it; ``NotRequired`` marks a
key it may leave out; ``| None`` marks a value that may be ``null``. Names of services are
``name.namespace``; durations are integer milliseconds (``_ms``); sizes integer bytes.

The types are for static checking only. The sidecar treats what arrives as untrusted JSON: it
checks every field as it reads it (``SnapshotError`` naming the field path) and is more lenient
than this schema (it fills in defaults for most missing keys). Its compiled modules (mypyc)
read the snapshot through ``Mapping[str, Any]``, never through these types, because mypyc
turns a declared type into a run-time check that would raise ``TypeError`` before the
sidecar's own validation could name the field.

This module imports nothing from ``gossamer``: the control plane, the config model and the
sidecar may all import it, and the sidecar loads no more than ``typing`` for it.
"""

# No ``from __future__ import annotations``: on Python 3.11 ``TypedDict`` sees
# ``NotRequired`` only in evaluated annotations (``__required_keys__`` would be wrong).
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "ACCESS_LOG_FIELDS",
    "AccessLogSnapshot",
    "AuditSnapshot",
    "AuthzConditionSnapshot",
    "AuthzOperationSnapshot",
    "AuthzPolicySnapshot",
    "AuthzRuleSnapshot",
    "AuthzSourceSnapshot",
    "BackendSnapshot",
    "ClaimHeaderSnapshot",
    "ConnectionPoolSnapshot",
    "EgressEndpointSnapshot",
    "EgressHostSnapshot",
    "EgressSnapshot",
    "EndpointSnapshot",
    "FaultSnapshot",
    "FilterFailure",
    "FilterSnapshot",
    "FiltersSnapshot",
    "HeaderEditsSnapshot",
    "HeaderMatchSnapshot",
    "HeaderMatchType",
    "HttpRuleSnapshot",
    "InboundSnapshot",
    "JwtHeaderSnapshot",
    "JwtRuleSnapshot",
    "LoadBalancerSnapshot",
    "LoadBalancerType",
    "MatchSnapshot",
    "MirrorSnapshot",
    "MtlsMode",
    "OutboundSnapshot",
    "OutlierSnapshot",
    "PathMatchSnapshot",
    "PathMatchType",
    "PeerMode",
    "PolicySnapshot",
    "PortMtlsSnapshot",
    "PortProtocol",
    "PortSnapshot",
    "ProxySnapshot",
    "QueryMatchSnapshot",
    "QueryMatchType",
    "RateLimitSnapshot",
    "RedirectScheme",
    "RedirectSnapshot",
    "RedirectStatus",
    "RetryBudgetSnapshot",
    "RetryCondition",
    "RetrySnapshot",
    "RewriteSnapshot",
    "RewriteType",
    "ServiceSnapshot",
    "Snapshot",
    "SnapshotContent",
    "TcpBackendSnapshot",
    "TcpRouteSnapshot",
]

# ----------------------------------------------------------------- closed sets of values
MtlsMode = Literal["STRICT", "PERMISSIVE"]
# How a workload takes connections (PeerAuthentication): DISABLE, plaintext from callers.
PeerMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
FilterFailure = Literal["reject", "allow"]
PortProtocol = Literal["http", "http2", "grpc", "tcp"]
PathMatchType = Literal["Exact", "Prefix", "RegularExpression"]
HeaderMatchType = Literal["Exact", "Prefix", "RegularExpression", "Present"]
QueryMatchType = Literal["Exact", "RegularExpression", "Present"]
RewriteType = Literal["ReplaceFullPath", "ReplacePrefixMatch"]
RedirectScheme = Literal["http", "https"]
RedirectStatus = Literal[301, 302, 303, 307, 308]
LoadBalancerType = Literal["PeakEWMA", "RoundRobin", "LeastRequest", "ConsistentHash"]
RetryCondition = Literal[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-status-codes",
    "unavailable",
    "resource-exhausted",
    "cancelled",
    "deadline-exceeded",
    "internal",
]


# ----------------------------------------------------------------- shared pieces
class PortSnapshot(TypedDict):
    """One port of a service (``inbound.ports``, ``outbound.services[].ports``)."""

    port: int
    protocol: PortProtocol


class RetrySnapshot(TypedDict):
    """``retry`` of an HTTP rule or of a policy. ``attempts`` counts retries after the first
    try; ``backoff_max_ms`` is filled in (10 x base) when the resource leaves it out."""

    attempts: int
    on: list[RetryCondition]
    status_codes: list[int]
    per_try_timeout_ms: int | None
    backoff_base_ms: int
    backoff_max_ms: int
    methods: list[str]
    max_body_bytes: int


# ----------------------------------------------------------------- HTTP rules (§8)
class PathMatchSnapshot(TypedDict):
    type: PathMatchType
    value: str


class HeaderMatchSnapshot(TypedDict):
    """A header condition; the name is lower case; no ``value`` with type ``Present``."""

    name: str
    type: HeaderMatchType
    value: NotRequired[str]


class QueryMatchSnapshot(TypedDict):
    """A query parameter condition; no ``value`` with type ``Present``."""

    name: str
    type: QueryMatchType
    value: NotRequired[str]


class MatchSnapshot(TypedDict):
    """One match of a rule: every condition must hold."""

    path: PathMatchSnapshot | None
    method: str | None
    headers: list[HeaderMatchSnapshot]
    query: list[QueryMatchSnapshot]


class BackendSnapshot(TypedDict):
    """A weighted backend: a service, or the endpoints of it whose labels include ``subset``."""

    service: str
    subset: dict[str, str]
    weight: int


class HeaderEditsSnapshot(TypedDict):
    """Header edits; names lower case."""

    set: dict[str, str]
    add: dict[str, str]
    remove: list[str]


class RewriteSnapshot(TypedDict):
    type: RewriteType
    value: str


class RedirectSnapshot(TypedDict):
    """A redirect; a null part is taken from the request."""

    scheme: RedirectScheme | None
    host: str | None
    port: int | None
    path: str | None
    status_code: RedirectStatus


class MirrorSnapshot(TypedDict):
    service: str
    subset: dict[str, str]
    percent: float


class FaultSnapshot(TypedDict):
    """Fault injection; a part the resource leaves out is ``0``/``0.0``/``null``."""

    delay_ms: int
    delay_percent: float
    abort_status: int | None
    abort_percent: float


class FiltersSnapshot(TypedDict):
    request_headers: HeaderEditsSnapshot
    response_headers: HeaderEditsSnapshot
    rewrite: RewriteSnapshot | None
    redirect: RedirectSnapshot | None
    mirror: MirrorSnapshot | None
    fault: FaultSnapshot | None


class HttpRuleSnapshot(TypedDict):
    """One rule of ``http_routes``; ``name`` is ``<route>/<rule name or index>``. ``matches``
    empty: every request; ``backends`` is never empty (the route's service by default)."""

    name: str
    matches: list[MatchSnapshot]
    backends: list[BackendSnapshot]
    filters: FiltersSnapshot
    timeout_ms: int | None
    retry: RetrySnapshot | None


# ----------------------------------------------------------------- policy (§8)
class LoadBalancerSnapshot(TypedDict):
    """``hash_header`` (lower case) or ``hash_cookie`` is set with ``ConsistentHash`` only."""

    type: LoadBalancerType
    hash_header: str | None
    hash_cookie: str | None


class ConnectionPoolSnapshot(TypedDict):
    """Circuit-breaking limits per calling sidecar; 0 is unlimited."""

    max_connections: int
    max_pending: int
    max_requests_per_connection: int


class OutlierSnapshot(TypedDict):
    """Outlier detection; a threshold of 0 turns its counter off."""

    consecutive_5xx: int
    consecutive_gateway_errors: int
    consecutive_connect_failures: int
    interval_ms: int
    base_ejection_ms: int
    max_ejection_ms: int
    max_ejection_percent: float


class RetryBudgetSnapshot(TypedDict):
    ratio: float
    min_per_second: int
    window_ms: int


class PolicySnapshot(TypedDict):
    """How callers treat a service (the defaults when it has no TrafficPolicy)."""

    load_balancer: LoadBalancerSnapshot
    connection_pool: ConnectionPoolSnapshot
    outlier: OutlierSnapshot | None
    timeout_ms: int | None
    retry: RetrySnapshot | None
    retry_budget: RetryBudgetSnapshot


class RateLimitSnapshot(TypedDict):
    """The local rate limit at the service's own sidecars (``inbound.rate_limit``)."""

    requests_per_second: float
    burst: int
    per_identity: bool


# ----------------------------------------------------------------- TCP (§8)
class TcpBackendSnapshot(TypedDict):
    service: str
    weight: int


class TcpRouteSnapshot(TypedDict):
    backends: list[TcpBackendSnapshot]
    drain_ms: int


# ----------------------------------------------------------------- the snapshot (§5)
class EndpointSnapshot(TypedDict):
    """A healthy endpoint: the destination sidecar's inbound (mTLS) address."""

    address: str
    port: int
    labels: dict[str, str]


class PortMtlsSnapshot(TypedDict):
    """A port of a workload whose mode differs from its own (PeerAuthentication)."""

    port: int
    mode: PeerMode


class ServiceSnapshot(TypedDict):
    """One entry of ``outbound.services``."""

    name: str
    namespace: str
    identity: str  # a SPIFFE ID
    protocol: PortProtocol
    endpoints: list[EndpointSnapshot]
    ports: list[PortSnapshot]
    http_routes: list[HttpRuleSnapshot]
    policy: PolicySnapshot
    tcp_route: TcpRouteSnapshot | None
    # How its workloads take connections: DISABLE (service or port) means send plaintext.
    mtls: PeerMode
    port_mtls: list[PortMtlsSnapshot]


class ProxySnapshot(TypedDict):
    """The proxy the snapshot is for."""

    service: str
    namespace: str
    identity: str  # a SPIFFE ID


class FilterSnapshot(TypedDict):
    """One user's filter (``ProxyFilter``) a direction runs, in the order they run."""

    name: str  # "namespace/name" of the ProxyFilter
    filter: str  # module:attribute, or an entry point name of the gossamer.filters group
    config: dict[str, Any]
    failure: FilterFailure


class AuthzSourceSnapshot(TypedDict):
    """``from[].source`` of an authorization rule (values: exact, ``x*``, ``*x`` or ``*``)."""

    principals: list[str]
    not_principals: list[str]
    namespaces: list[str]
    not_namespaces: list[str]
    request_principals: list[str]  # <iss>/<sub> of a token RequestAuthentication verified
    not_request_principals: list[str]


class AuthzOperationSnapshot(TypedDict):
    """``to[].operation`` of an authorization rule (hosts lower-cased)."""

    methods: list[str]
    not_methods: list[str]
    paths: list[str]
    not_paths: list[str]
    ports: list[int]
    not_ports: list[int]
    hosts: list[str]
    not_hosts: list[str]


class AuthzConditionSnapshot(TypedDict):
    """``when[]``: ``request.headers[<lower-case name>]``, ``source.principal``,
    ``source.namespace``, ``destination.port``, ``request.auth.principal``,
    ``request.auth.audiences``, ``request.auth.presenter`` or ``request.auth.claims[a][b]``."""

    key: str
    values: list[str]
    not_values: list[str]


# ``from`` is a Python keyword: the functional form names it.
AuthzRuleSnapshot = TypedDict(
    "AuthzRuleSnapshot",
    {
        "from": list[AuthzSourceSnapshot],
        "to": list[AuthzOperationSnapshot],
        "when": list[AuthzConditionSnapshot],
    },
)


class AuthzPolicySnapshot(TypedDict):
    """One ``AuthorizationPolicy`` that applies to this proxy's workload."""

    name: str  # namespace/name
    action: Literal["ALLOW", "DENY", "AUDIT"]
    rules: list[AuthzRuleSnapshot]


class JwtHeaderSnapshot(TypedDict):
    """A header that carries the token (lower-case name), after ``prefix``."""

    name: str
    prefix: str


class ClaimHeaderSnapshot(TypedDict):
    """A claim (dotted for nested ones) copied into a header for the app."""

    header: str
    claim: str


class JwtRuleSnapshot(TypedDict):
    """Tokens of one issuer a RequestAuthentication of this workload accepts, with the keys
    the control plane fetched (``jwks``: ``{"keys": [...]}`` as the provider serves it; None
    until a fetch succeeded, then ``jwks_error`` says why)."""

    issuer: str
    audiences: list[str]
    from_headers: list[JwtHeaderSnapshot]
    from_cookies: list[str]
    output_claim_to_headers: list[ClaimHeaderSnapshot]
    forward_original_token: bool
    clock_skew_ms: int
    jwks: dict[str, Any] | None
    jwks_error: str | None


class InboundSnapshot(TypedDict):
    mtls: PeerMode  # this workload's mode; port_mtls: its ports' where they differ
    port_mtls: list[PortMtlsSnapshot]
    ports: list[PortSnapshot]
    rate_limit: RateLimitSnapshot | None
    filters: list[FilterSnapshot]  # on requests to this workload
    authorization: list[AuthzPolicySnapshot]  # AuthorizationPolicies of this workload
    request_authentication: list[JwtRuleSnapshot]  # RequestAuthentications of this workload


class EgressEndpointSnapshot(TypedDict):
    """Where an ``Egress``'s hosts are served, instead of the host's own name."""

    address: str  # an IP address or a DNS name
    port: int | None  # None: the port the call asked for


class EgressHostSnapshot(TypedDict):
    """A host outside the mesh an ``Egress`` names (``*.`` prefix: any name below it)."""

    host: str
    ports: list[int]  # empty: any port
    endpoints: list[EgressEndpointSnapshot]  # empty: the host itself (DNS)


class EgressSnapshot(TypedDict):
    """Calls to hosts that are no mesh service: any (``ALLOW_ANY``), or the hosts listed."""

    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"]
    hosts: list[EgressHostSnapshot]


class OutboundSnapshot(TypedDict):
    """The services this proxy may call, and the names it asked for that are not known."""

    services: list[ServiceSnapshot]
    unknown: list[str]
    filters: list[FilterSnapshot]  # on requests this workload makes
    egress: EgressSnapshot


class TracingSnapshot(TypedDict):
    """Where and how much the sidecars trace (the MeshConfig's ``spec.tracing``)."""

    endpoint: str  # OTLP/HTTP: http(s)://host[:port][/path] (path default /v1/traces)
    headers: list[list[str]]  # [name (lower case), value] sent with every export
    ratio: float  # 0..1: traces started here that are sampled (a parent's decision wins)
    max_queue: int  # spans waiting for export; beyond, dropped and counted
    batch: int  # spans per export request
    interval: float  # seconds between exports when no batch fills


ACCESS_LOG_FIELDS = (
    "time", "direction", "protocol", "method", "authority", "path", "status", "error",
    "request_bytes", "response_bytes", "duration_ms", "service", "upstream", "peer",
    "request_id", "trace_id", "user_agent",
)  # fmt: skip


class AccessLogSnapshot(TypedDict):
    """This workload's access log (the MeshConfig's ``spec.accessLog``, unless its Service
    turns it off): one line per request, in both directions."""

    format: Literal["json", "text"]
    template: str  # text: ``{field}`` of ACCESS_LOG_FIELDS; json: unused
    path: str  # an absolute file path, /dev/stdout or /dev/stderr


class AuditSnapshot(TypedDict):
    """How the sidecar spools audit records (the MeshConfig's ``spec.audit``)."""

    spool_bytes: int  # bytes not yet acknowledged by the control plane, at most
    block: bool  # full: refuse new audited requests (True) or let them through unrecorded


class SnapshotContent(TypedDict):
    """What ``build_snapshot`` returns: the snapshot without its ``version``."""

    trust_domain: str
    tracing: TracingSnapshot | None  # None: no tracing
    audit: AuditSnapshot
    access_log: AccessLogSnapshot | None  # None: no access log for this workload
    # Serials (upper-case hex, no leading zeros) of revoked certificates that have not
    # expired: refused on every listener and as an upstream.
    revoked_serials: list[str]
    proxy: ProxySnapshot
    inbound: InboundSnapshot
    outbound: OutboundSnapshot


class Snapshot(SnapshotContent):
    """The snapshot as sent (``with_version``): ``version`` grows per proxy."""

    version: int
