"""The control plane's core: resources, identities, proxy sessions and snapshot pushes.

:class:`ControlPlane` ties the store, the CA and the registry together. The config API and the
stream server call into it; it never does network I/O itself. Pushes are coalesced: changes
mark proxies dirty and one background task recomputes their snapshots on the next loop turn,
sending a new version only to proxies whose snapshot content changed. Traffic resources
(HTTPRoute, TrafficPolicy, TCPRoute) are compiled once per resource change, not per proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from gossamer.config.authorization import AuthorizationPolicy
from gossamer.config.base import RESERVED_NAMESPACE, Resource, ResourceKey, check_dns_label
from gossamer.config.duration import parse_duration
from gossamer.config.egress import Egress
from gossamer.config.errors import Problem, ValidationFailed
from gossamer.config.httproute import HTTPRoute
from gossamer.config.meshconfig import AccessLogSettings, AuditSettings, TracingSettings
from gossamer.config.peerauthn import PeerAuthentication
from gossamer.config.proxyfilter import ProxyFilter
from gossamer.config.requestauthn import RequestAuthentication
from gossamer.config.tcproute import TCPRoute
from gossamer.config.traffic import service_key
from gossamer.config.trafficpolicy import TrafficPolicy
from gossamer.control.audit_store import AuditRefused, AuditStore, Sender
from gossamer.control.ca import CertificateAuthority, check_csr, leaf_expiry
from gossamer.control.jwks import JwksFetcher
from gossamer.control.registry import ProxyRecord, Registry, Session, Workload
from gossamer.control.registry_store import RegistryStore
from gossamer.control.revocation import Revocations, renewal_spacing
from gossamer.control.rotation import RootRotation
from gossamer.control.security import AuthorizationIndex, PeerAuthnIndex, RequestAuthnIndex
from gossamer.control.settings import ControlSettings
from gossamer.control.snapshots import (
    MeshView,
    ServiceInfo,
    ServiceTraffic,
    build_snapshot,
    egress_snapshot,
    normalize_service_name,
    select_services,
    traffic_index,
    with_version,
)
from gossamer.control.store import ApplyResult, Store
from gossamer.control.tap import TapHub
from gossamer.control.trust import TrustRollout
from gossamer.identity.spiffe import SpiffeId
from gossamer.snapshot_schema import (
    AccessLogSnapshot,
    AuditSnapshot,
    EgressSnapshot,
    MtlsMode,
    PortProtocol,
    SnapshotContent,
    TracingSnapshot,
)

__all__ = ["ControlPlane", "Refusal"]

log = logging.getLogger("gossamer.control")

ServiceKey = tuple[str, str]
MESH_CONFIG_KEY = ResourceKey("MeshConfig", "default", "default")
ONE_PER_SERVICE = ("TrafficPolicy", "TCPRoute")
MAX_SUBSCRIPTIONS = 1024  # names of known services one proxy may subscribe to
MAX_UNKNOWN = 256  # names answered as unknown that stay watched (for their appearance)
MAX_NAME = 253
SAVE_INTERVAL = 1.0  # seconds between two saves of the registry (registry_store)
PRUNE_INTERVAL = 300.0  # at most this long between two passes of the audit store's retention
ModelResource = (
    HTTPRoute | TrafficPolicy | TCPRoute | ProxyFilter | Egress | AuthorizationPolicy
    | RequestAuthentication | PeerAuthentication
)
_R = TypeVar(
    "_R", HTTPRoute, TrafficPolicy, TCPRoute, ProxyFilter, Egress, AuthorizationPolicy,
    RequestAuthentication, PeerAuthentication,
)


class Refusal(Exception):
    """A request on the stream is refused: ``code`` and ``message`` go back to the peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class _Security:
    """The security kinds' resources, as validated models."""

    authorization: list[AuthorizationPolicy]
    request_authn: list[RequestAuthentication]
    peer_authn: list[PeerAuthentication]


@dataclass(frozen=True, slots=True)
class _ResourceView:
    services: Mapping[ServiceKey, ServiceInfo]
    mtls_mode: MtlsMode
    cert_lifetime: timedelta | None
    traffic: Mapping[ServiceKey, ServiceTraffic]
    egress: EgressSnapshot
    authorization: AuthorizationIndex
    request_authn: RequestAuthnIndex
    peer_authn: PeerAuthnIndex
    tracing: TracingSnapshot | None
    audit: AuditSnapshot
    audit_retention: float | None  # seconds the audit store keeps a record (None: forever)
    access_log: AccessLogSnapshot | None


def _access_log(spec: Mapping[str, Any]) -> AccessLogSnapshot | None:
    """The stored MeshConfig's ``spec.accessLog`` in snapshot form (None: off by default)."""
    raw = spec.get("accessLog")
    if raw is None:
        return None
    return cast(AccessLogSnapshot, AccessLogSettings.model_validate(raw).to_snapshot())


def _audit(spec: Mapping[str, Any]) -> tuple[AuditSnapshot, float | None]:
    """The stored MeshConfig's ``spec.audit`` (defaults when absent): the sidecars' part in
    snapshot form, and the store's retention in seconds."""
    settings = AuditSettings.model_validate(spec.get("audit") or {})
    return cast(AuditSnapshot, settings.to_snapshot()), settings.retention_seconds()


def _tracing(spec: Mapping[str, Any]) -> TracingSnapshot | None:
    """The stored MeshConfig's ``spec.tracing`` in snapshot form (None: off)."""
    raw = spec.get("tracing")
    if raw is None:
        return None
    return cast(TracingSnapshot, TracingSettings.model_validate(raw).to_snapshot())


def _service_info(document: Mapping[str, Any]) -> ServiceInfo:
    metadata, spec = document["metadata"], document.get("spec") or {}
    ports = spec.get("ports") or [{"port": 80}]
    return ServiceInfo(
        name=metadata["name"],
        namespace=metadata["namespace"],
        service_account=spec.get("serviceAccount") or metadata["name"],
        protocol=ports[0].get("protocol", "http"),
        calls=tuple(spec.get("calls") or ()),
        access_log=spec.get("accessLog"),
        sampling_percent=(spec.get("tracing") or {}).get("samplingPercent"),
        ports=tuple(  # stored documents were validated: the protocol is a PortProtocol
            (int(p["port"]), cast(PortProtocol, str(p.get("protocol", "http")))) for p in ports
        ),
    )


def _field(message: Mapping[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refusal("bad-request", f"field {name!r} is missing or has the wrong type")
    return value


def _optional_port(workload: Mapping[str, Any], name: str) -> int | None:
    value = workload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise Refusal("bad-request", f"workload.{name} must be a port number or null")
    return value


def _names(values: Any, what: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(
        isinstance(v, str) and 0 < len(v) <= MAX_NAME for v in values
    ):
        raise Refusal("bad-request", f"{what} must be a list of service names")
    if len(values) > 4 * MAX_SUBSCRIPTIONS:
        raise Refusal("bad-request", f"{what}: at most {4 * MAX_SUBSCRIPTIONS} names")
    return list(values)


def _add_subscriptions(record: ProxyRecord, names: Sequence[str]) -> list[str]:
    """Add ``names`` to what ``record`` subscribes to, within ``MAX_SUBSCRIPTIONS``; the
    names that did not fit (names answered as unknown leave the set, so only names of real
    services fill it)."""
    subscriptions = record.subscriptions
    left: list[str] = []
    for name in names:
        if name in subscriptions:
            continue
        if len(subscriptions) - len(record.unknown) >= MAX_SUBSCRIPTIONS:
            left.append(name)
        else:
            subscriptions.add(name)
    return left


def _bound_unknown(record: ProxyRecord, view: MeshView) -> None:
    """Keep the most recent ``MAX_UNKNOWN`` of ``record``'s subscribed names that are no
    known service (watched, so a service created later is pushed at once); forget older ones
    (a sidecar asks again after its negative TTL). Made-up names cannot fill the cap."""
    namespace = record.workload.namespace
    unknown = record.unknown
    for name in record.subscriptions:
        key = normalize_service_name(name, namespace)
        if key is not None and view.is_known(key):
            unknown.pop(name, None)
        elif name not in unknown:
            unknown[name] = None
    for name in [n for n in unknown if n not in record.subscriptions]:
        del unknown[name]
    while len(unknown) > MAX_UNKNOWN:
        oldest = next(iter(unknown))
        del unknown[oldest]
        record.subscriptions.discard(oldest)


def _parse_workload(message: Mapping[str, Any]) -> Workload:
    raw = _field(message, "workload", dict)
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise Refusal("bad-request", "workload.labels must map strings to strings")
    try:
        service = check_dns_label(_field(raw, "service", str))
        namespace = check_dns_label(raw.get("namespace") or "default")
    except ValueError as exc:
        raise Refusal("bad-request", f"workload: {exc}") from exc
    address = raw.get("address") or "127.0.0.1"
    if not isinstance(address, str) or len(address) > MAX_NAME:
        raise Refusal("bad-request", "workload.address must be a host address")
    return Workload(
        service=service,
        namespace=namespace,
        address=address,
        inbound_port=_optional_port(raw, "inbound_port"),
        admin_port=_optional_port(raw, "admin_port"),
        labels=dict(labels),
    )


def _optional_time(message: Mapping[str, Any], name: str) -> float | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Refusal("bad-request", f"{name} must be unix seconds")
    return float(value)


class ControlPlane:
    """State and behaviour of one control plane process (one event loop)."""

    def __init__(self, settings: ControlSettings, store: Store, ca: CertificateAuthority) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry()
        # The CA that signs and the bundle in force, moved through a root rotation.
        self.trust = TrustRollout(
            RootRotation(settings.data_dir, ca), self.registry, self._trust_changed
        )
        self.on_trust_change: Callable[[], None] | None = None  # set by the server (TLS)
        self.revocations = Revocations(store)
        self.audit = AuditStore(settings.data_dir / "audit.db")  # the sidecars' audit records
        self.tap = TapHub()  # live taps under way (control/tap.py)
        # Validated traffic resources by (kind, namespace, name), with their store revision.
        self._models: dict[tuple[str, str, str], tuple[int | None, ModelResource]] = {}
        # Keys of the token issuers RequestAuthentications name (fetched once started).
        self.jwks = JwksFetcher(self._keys_changed)
        self._view = self._read_resources()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._push_task: asyncio.Task[None] | None = None
        self._saved = RegistryStore(store)
        self.apply_lock = asyncio.Lock()  # one apply at a time (api.apply)
        self._save_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._retention_changed = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start from the proxies the last control plane knew (``registry_store``), then
        push and save in the background."""
        loop = asyncio.get_running_loop()
        restored = self._saved.load(self.registry)
        for record in restored:
            self._timers[record.proxy_id] = loop.call_later(
                self.settings.restore_grace, self._expire, record.proxy_id, record.epoch
            )
        if restored:
            log.info("restored %d proxies from the store; each has %.0f s to reconnect",
                     len(restored), self.settings.restore_grace)  # fmt: skip
        self._push_task = asyncio.create_task(self._push_loop(), name="control-push")
        self._save_task = asyncio.create_task(self._save_loop(), name="control-save")
        self._prune_task = asyncio.create_task(self._prune_loop(), name="control-audit-prune")
        self.jwks.want(self._view.request_authn.sources())

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in (self._save_task, self._prune_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._saved.pending:
            self._saved.save(self.registry)
        if self._push_task is not None:
            self._push_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._push_task
        await self.jwks.close()
        self.audit.close()

    # ----------------------------------------------------------------- resources
    def _load(self, model: type[_R]) -> list[_R]:
        """Every stored resource of ``model``'s kind, validated (reused while unchanged)."""
        out: list[_R] = []
        for document in self.store.list_resources(model.KIND):
            metadata = document["metadata"]
            key = (model.KIND, metadata["namespace"], metadata["name"])
            revision = metadata.get("revision")
            cached = self._models.get(key)
            if cached is not None and cached[0] == revision and isinstance(cached[1], model):
                out.append(cached[1])
                continue
            try:
                resource = model.model_validate(document)
            except ValidationError as exc:  # stored by an older version with other rules
                log.error("ignoring stored %s %s/%s: %s", model.KIND, key[1], key[2], exc)
                continue
            self._models[key] = (revision, resource)
            out.append(resource)
        return out

    def _read_models(
        self,
    ) -> tuple[dict[ServiceKey, ServiceTraffic], list[Egress], _Security]:
        """The kinds kept as validated models: traffic (compiled per service), egress and
        the security kinds; models of deleted resources are forgotten."""
        http_routes = self._load(HTTPRoute)
        policies = self._load(TrafficPolicy)
        tcp_routes = self._load(TCPRoute)
        proxy_filters = self._load(ProxyFilter)
        egresses = self._load(Egress)
        authorization = self._load(AuthorizationPolicy)
        authn = self._load(RequestAuthentication)
        peers = self._load(PeerAuthentication)
        live = {
            r.key
            for r in (*http_routes, *policies, *tcp_routes, *proxy_filters, *egresses,
                      *authorization, *authn, *peers)
        }  # fmt: skip
        for key in [k for k in self._models if ResourceKey(*k) not in live]:
            del self._models[key]
        traffic = traffic_index(http_routes, policies, tcp_routes, proxy_filters)
        security = _Security(authorization, authn, peers)
        return traffic, egresses, security

    def _read_resources(self) -> _ResourceView:
        services = {
            (info.namespace, info.name): info
            for info in map(_service_info, self.store.list_resources("Service"))
        }
        mesh = self.store.get(MESH_CONFIG_KEY) or {}
        spec = mesh.get("spec") or {}
        lifetime = (spec.get("certificates") or {}).get("lifetime")
        mode = (spec.get("outboundTrafficPolicy") or {}).get("mode", "ALLOW_ANY")
        traffic, egresses, security = self._read_models()
        audit, retention = _audit(spec)
        return _ResourceView(
            services=services,
            mtls_mode=(spec.get("mtls") or {}).get("mode", "STRICT"),
            cert_lifetime=parse_duration(lifetime) if lifetime else None,
            traffic=traffic,
            egress=egress_snapshot(mode, egresses),
            authorization=AuthorizationIndex.of(security.authorization),
            request_authn=RequestAuthnIndex.of(security.request_authn),
            peer_authn=PeerAuthnIndex.of(security.peer_authn),
            tracing=_tracing(spec),
            audit=audit,
            audit_retention=retention,
            access_log=_access_log(spec),
        )

    def _keys_changed(self) -> None:
        """A token issuer's key set changed: every proxy's config may hold it."""
        self._dirty.update(self.registry.proxy_ids())
        self._wake.set()

    def _resources_changed(self) -> None:
        retention = self._view.audit_retention
        self._view = self._read_resources()
        if self._view.audit_retention != retention:
            self._retention_changed.set()  # the prune loop starts over with the new one
        if self._push_task is not None:  # started: a running loop fetches keys
            self.jwks.want(self._view.request_authn.sources())
        self._dirty.update(self.registry.proxy_ids())
        self._wake.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def apply(self, resources: Sequence[Resource]) -> list[ApplyResult]:
        """Store all resources in one transaction and push what changed.

        Raises ``ValidationFailed`` (nothing stored) when a kind that may exist once per
        service (TrafficPolicy, TCPRoute) would get a second one for the same service.
        """
        results = self.store_resources(resources)
        self.resources_stored(results)
        return results

    def store_resources(self, resources: Sequence[Resource]) -> list[ApplyResult]:
        """The part of ``apply`` that may run in a worker thread (the store has its own lock;
        the caller holds ``apply_lock`` so that the one-per-service check and the write are
        one step)."""
        problems = self._one_per_service(resources)
        if problems:
            raise ValidationFailed(problems)
        return self.store.apply(resources)

    def resources_stored(self, results: Sequence[ApplyResult]) -> None:
        """On the event loop, after ``store_resources``: recompute and push what changed."""
        if any(result.action != "unchanged" for result in results):
            self._resources_changed()

    def route_warnings(self, resources: Sequence[Resource]) -> list[Problem]:
        """What an applied HTTPRoute sends to that nothing serves now (applied anyway: it may
        be deployed next): a backend service the mesh does not know (requests get 503
        ``unknown-backend``), or a subset no registered endpoint of it carries (503
        ``no-subset-endpoints``)."""
        warnings: list[Problem] = []
        known = set(self._view.services) | set(self.registry.workload_services())
        for index, resource in enumerate(resources):
            if not isinstance(resource, HTTPRoute):
                continue
            namespace, name = resource.metadata.namespace, resource.metadata.name
            for i, rule in enumerate(resource.spec.rules):
                for j, backend in enumerate(rule.backends):
                    key = service_key(backend.service, namespace)
                    where = f"spec.rules[{i}].backends[{j}]"
                    if key not in known:
                        warnings.append(Problem(index, resource.kind, name, f"{where}.service",
                                                f"no service {key[1]}.{key[0]} is known yet"))
                        continue
                    subset = backend.subset
                    records = self.registry.endpoints_of(*key)
                    if subset and records and not any(
                        all(r.workload.labels.get(k) == v for k, v in subset.items())
                        for r in records
                    ):
                        labels = ",".join(f"{k}={v}" for k, v in subset.items())
                        warnings.append(Problem(index, resource.kind, name, f"{where}.subset",
                                                f"no endpoint of {key[1]} is labelled {labels}"))
        return warnings

    def _one_per_service(self, resources: Sequence[Resource]) -> list[Problem]:
        """Problems for TrafficPolicies/TCPRoutes that target a service another one of the same
        kind (stored under a different name, or earlier in this batch) already targets."""
        problems: list[Problem] = []
        claimed: dict[tuple[str, tuple[str, str]], str] = {}
        batch = {r.key for r in resources}
        for kind in ONE_PER_SERVICE:
            for doc in self.store.list_resources(kind, None):
                meta = doc["metadata"]
                if ResourceKey(kind, meta["namespace"], meta["name"]) in batch:
                    continue  # being replaced by this apply
                target = service_key(doc["spec"]["service"], meta["namespace"])
                claimed[(kind, target)] = f"{meta['namespace']}/{meta['name']}"
        for index, resource in enumerate(resources):
            if not isinstance(resource, (TrafficPolicy, TCPRoute)):
                continue
            target = service_key(resource.spec.service, resource.metadata.namespace)
            owner = claimed.get((resource.kind, target))
            here = f"{resource.metadata.namespace}/{resource.metadata.name}"
            if owner is not None and owner != here:
                problems.append(
                    Problem(
                        index, resource.kind, resource.metadata.name, "spec.service",
                        f"{resource.kind} {owner} already applies to service "
                        f"{target[1]}.{target[0]}; there can be one per service",
                    )
                )
            else:
                claimed[(resource.kind, target)] = here
        return problems

    def delete(self, key: ResourceKey) -> dict[str, Any] | None:
        """Delete one resource. Deleting the last Service with an identity revokes that
        identity's certificates (revocation.py): its proxies are out of the mesh."""
        identity = None
        if key.kind == "Service":
            try:
                identity = self.identity_for(key.namespace, key.name)
            except ValueError:  # not a name a Service can have: nothing to revoke
                identity = None
        deleted = self.store.delete(key)
        if deleted is not None:
            self._resources_changed()
            if identity is not None and not any(
                self.identity_for(*other) == identity for other in self._view.services
            ):
                self.revoke(identity=identity, reason=f"service {key.namespace}/{key.name} deleted")
        return deleted

    def revoke(
        self, *, reason: str, proxy_id: str | None = None, identity: SpiffeId | None = None
    ) -> list[str]:
        """Revoke a proxy's or an identity's certificates: their streams are closed, their
        endpoints removed at once, and every proxy is pushed the new list. Returns the serials
        revoked."""
        serials = self.revocations.revoke(
            reason=reason, proxy_id=proxy_id,
            identity=identity.uri if identity is not None else None,
        )  # fmt: skip
        revoked = set(serials)
        for record in list(self.registry):
            if record.proxy_id == proxy_id or record.identity == identity or (
                record.serial in revoked
            ):
                self._cut_off(record, reason)
        log.warning("revoked %d certificates (%s)", len(serials), reason)
        self._dirty.update(self.registry.proxy_ids())
        self._wake.set()
        return serials

    def _cut_off(self, record: ProxyRecord, reason: str) -> None:
        """End a revoked proxy's stream and drop its endpoint without the grace period."""
        session = record.session
        if session is not None:
            session.send(Refusal("revoked", f"certificate revoked: {reason}").to_json())
            session.close()
        if self.registry.disconnect(record):
            timer = self._timers.pop(record.proxy_id, None)
            if timer is not None:
                timer.cancel()
        self._expire(record.proxy_id, record.epoch)

    async def wait_for_change(self, timeout: float) -> None:
        """Return after the next resource change, on stop, or after ``timeout`` seconds."""
        changed = asyncio.ensure_future(self._changed.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {changed, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            changed.cancel()
            stopping.cancel()

    # ----------------------------------------------------------------- identity
    @property
    def ca(self) -> CertificateAuthority:
        """The CA that signs certificates now (the new root from a rotation's reissue on)."""
        return self.trust.rotation.signer

    @property
    def bundle(self) -> bytes:
        """The trust bundle every proxy is to hold now."""
        return self.trust.rotation.bundle

    def _trust_changed(self) -> None:
        if self.on_trust_change is not None:
            self.on_trust_change()

    def service_account(self, namespace: str, service: str) -> str:
        info = self._view.services.get((namespace, service))
        return info.service_account if info is not None else service

    def identity_for(self, namespace: str, service: str) -> SpiffeId:
        return SpiffeId(self.ca.trust_domain, namespace, self.service_account(namespace, service))

    def cert_lifetime(self) -> timedelta:
        return self._view.cert_lifetime or self.settings.cert_lifetime

    def _certificate_message(
        self, csr_pem: bytes, identity: SpiffeId, proxy_id: str | None = None
    ) -> dict[str, Any]:
        if identity.namespace == RESERVED_NAMESPACE:  # the control plane's own identity
            raise Refusal("bad-request", f"namespace {identity.namespace} is reserved")
        try:
            cert = self.ca.sign_csr(csr_pem, identity, self.cert_lifetime())
        except ValueError as exc:
            raise Refusal("bad-csr", str(exc)) from exc
        self.revocations.issued(cert, identity.uri, proxy_id)
        return {
            "type": "certificate",
            "certificate": cert.decode(),
            "ca": self.bundle.decode(),
            "expires": int(leaf_expiry(cert).timestamp()),
        }

    def create_join_token(self, service: str, namespace: str, ttl: float) -> tuple[str, float]:
        return self.store.create_join_token(service, namespace, ttl)

    def join(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Handle a ``join``: check the CSR, use the token once, sign for its identity."""
        token = _field(message, "token", str)
        csr = _field(message, "csr", str).encode()
        try:
            check_csr(csr)
        except ValueError as exc:
            raise Refusal("bad-csr", str(exc)) from exc
        grant = self.store.consume_join_token(token)
        if grant is None:
            raise Refusal("invalid-token", "join token is unknown, expired or already used")
        identity = self.identity_for(grant.namespace, grant.service)
        log.info("joined %s", identity)
        return self._certificate_message(csr, identity)

    # ----------------------------------------------------------------- sessions
    def hello(
        self,
        session: Session,
        peer: SpiffeId | None,
        message: Mapping[str, Any],
        certificate: tuple[str, float] | None = None,
        leaf_key_id: bytes | None = None,
    ) -> ProxyRecord:
        """Register a proxy after checking its certificate (``certificate``: serial and
        expiry; ``leaf_key_id``: the key id of the CA that signed it) is not revoked and its
        identity matches its workload."""
        if peer is None:
            raise Refusal("unauthenticated", "hello needs a client certificate from join")
        serial = certificate[0] if certificate is not None else None
        if self.revocations.is_revoked(serial):
            raise Refusal("revoked", "this certificate was revoked; join with a new token")
        proxy_id = _field(message, "proxy_id", str)
        if not 0 < len(proxy_id) <= MAX_NAME:
            raise Refusal("bad-request", "proxy_id must be 1 to 253 characters")
        workload = _parse_workload(message)
        subscriptions = _names(message.get("subscriptions"), "subscriptions")
        expected = self.identity_for(workload.namespace, workload.service)
        if peer != expected:
            raise Refusal(
                "identity-mismatch",
                f"certificate identity {peer} does not match workload "
                f"{workload.namespace}/{workload.service} (expected {expected})",
            )
        existing = self.registry.get(proxy_id)
        if existing is not None and existing.connected and existing.identity != peer:
            raise Refusal("proxy-id-conflict", f"proxy_id {proxy_id!r} is in use by another")
        floor = message.get("config_version")
        floor = floor if isinstance(floor, int) and not isinstance(floor, bool) else 0
        record, previous = self.registry.connect(proxy_id, peer, workload, session, floor)
        self._saved.changed(record)
        if certificate is not None:
            record.serial = serial
            self.revocations.presented(certificate[0], peer.uri, certificate[1], proxy_id)
        left = _add_subscriptions(record, subscriptions)
        if left:  # served with what fits rather than refused: a refusal would cut it off
            log.warning("proxy %s: %d subscriptions over the cap of %d left out",
                        proxy_id, len(left), MAX_SUBSCRIPTIONS)  # fmt: skip
        record.cert_expiry = _optional_time(message, "cert_expiry")
        timer = self._timers.pop(proxy_id, None)
        if timer is not None:
            timer.cancel()
        if previous is not None and previous.session is not None:
            previous.session.close()
        self._mark_service(workload.key)
        if previous is not None:
            self._mark_service(previous.workload.key)
        self._dirty.add(proxy_id)
        self._wake.set()
        log.info("proxy %s connected as %s", proxy_id, peer)
        digest = message.get("bundle_digest")
        self.trust.hello(record, digest if isinstance(digest, str) else None, leaf_key_id)
        self.tap.joined(record)  # a live tap of its service takes it in
        return record

    def handle(self, record: ProxyRecord, message: Mapping[str, Any]) -> None:
        """One message on an established stream (after hello)."""
        kind = message.get("type")
        if kind == "ack":
            version = _field(message, "version", int)
            record.acked_version = max(record.acked_version, version)
            if version == record.config_version:
                record.ack_state, record.nack_error = "ACK", None
        elif kind == "nack":
            version = _field(message, "version", int)
            if version == record.config_version:
                error = message.get("error")
                record.ack_state = "NACK"
                record.nack_error = str(error)[:4096] if error is not None else "unspecified"
                log.warning(
                    "proxy %s refused version %d: %s", record.proxy_id, version, record.nack_error
                )
        elif kind == "subscribe":
            names = _names(message.get("services"), "services")
            left = _add_subscriptions(record, names)
            if left:
                raise Refusal(
                    "too-many-subscriptions",
                    f"{len(left)} names left out: at most {MAX_SUBSCRIPTIONS} services",
                )
            if not self._push(record, self._mesh_view()) and record.last_content is not None:
                self._send_snapshot(record, record.last_content)  # answer even if unchanged
        elif kind == "leave":  # shutting down: no new requests, gone when its stream closes
            record.leaving = True
            self._set_healthy(record, False)
        elif kind == "health":
            self._set_healthy(record, _field(message, "healthy", bool))
        elif kind == "status":  # sent once a renewed certificate is in force
            record.cert_expiry = _optional_time(message, "cert_expiry")
            self.trust.installed(record)
        elif kind == "bundle-applied":
            digest = message.get("digest")
            self.trust.bundle_applied(record, digest if isinstance(digest, str) else None)
        elif kind == "audit":
            self._receive_audit(record, message)
        elif kind == "tap-event":
            self.tap.events(record, dict(message))
        elif kind == "jwks-refresh":  # the sidecar met a token signed by a key it lacks
            self.jwks.refresh_soon(_field(message, "issuer", str))
        elif kind == "csr":
            self._check_renewal(record)
            csr = _field(message, "csr", str).encode()
            reply = self._certificate_message(csr, record.identity, record.proxy_id)
            record.renewed_at = time.monotonic()
            record.cert_expiry = float(reply["expires"])
            if record.session is not None:
                record.session.send(reply)
            self.trust.signed(record)
        else:
            raise Refusal("bad-request", f"unknown message type {kind!r}")

    def _set_healthy(self, record: ProxyRecord, healthy: bool) -> None:
        """Record a proxy's health (a leaving one stays out of its callers' endpoints, whatever
        its app's probe says while it drains) and push it to those callers when it changed."""
        if self.registry.set_healthy(record, healthy and not record.leaving):
            self._saved.changed(record)
            self._mark_service(record.workload.key)

    def _receive_audit(self, record: ProxyRecord, message: Mapping[str, Any]) -> None:
        """Store a batch of audit records; acknowledged only once committed (or refused)."""
        workload = record.workload
        sender = Sender(workload.namespace, workload.service, str(record.identity),
                        record.proxy_id)  # fmt: skip
        try:
            chain, seq = self.audit.receive(message, sender)
            reply: dict[str, Any] = {"type": "audit-ack", "chain": chain, "seq": seq}
        except AuditRefused as exc:
            log.warning("refused audit records from %s: %s", record.proxy_id, exc)
            reply = {"type": "audit-ack", "chain": str(message.get("chain")), "error": str(exc)}
        if record.session is not None:
            record.session.send(reply)

    def _check_renewal(self, record: ProxyRecord) -> None:
        """Refuse a renewal for a revoked proxy, or sooner than its lifetime warrants."""
        if self.revocations.is_revoked(record.serial):
            raise Refusal("revoked", "this certificate was revoked; join with a new token")
        if record.renewed_at is not None and not record.renew_asked:
            wait = record.renewed_at + renewal_spacing(self.cert_lifetime()) - time.monotonic()
            if wait > 0:
                raise Refusal("rate-limited", f"renewed recently; try again in {wait:.0f} s")

    def closed(self, record: ProxyRecord) -> None:
        """The stream of ``record`` ended; its endpoint stays for the grace period, unless it
        said it was leaving: then it is forgotten now (and is not restored by a restart)."""
        if not self.registry.disconnect(record):
            return
        self.trust.closed()
        if record.leaving:
            log.info("proxy %s left", record.proxy_id)
            self._expire(record.proxy_id, record.epoch)
            return
        log.info("proxy %s disconnected", record.proxy_id)
        loop = asyncio.get_running_loop()
        self._timers[record.proxy_id] = loop.call_later(
            self.settings.endpoint_grace, self._expire, record.proxy_id, record.epoch
        )

    async def _save_loop(self) -> None:
        """Save the registry's changes at most once a second (one transaction each)."""
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            if self._saved.pending:
                rows, gone = self._saved.take(self.registry)
                try:  # off the loop: the store may be busy with a large apply
                    await asyncio.to_thread(self._saved.write, rows, gone)
                except Exception:
                    log.exception("saving the registry failed")

    async def _prune_loop(self) -> None:
        """Apply the audit store's retention (MeshConfig ``spec.audit.retention``): at start,
        then every tenth of the retention, at least every second and at most every
        ``PRUNE_INTERVAL``, and at once when the retention changes. Records go only up to a
        signed checkpoint (``AuditStore.prune``)."""
        while True:
            self._retention_changed.clear()
            retention = self._view.audit_retention
            if retention is not None:
                try:  # off the loop: a large prune is many deletes
                    pruned = await asyncio.to_thread(self.audit.prune, time.time() - retention)
                except Exception:
                    log.exception("pruning the audit store failed")
                else:
                    if pruned.records or pruned.checkpoints:
                        log.info("audit retention removed %d records and %d checkpoints "
                                 "of %d chains", pruned.records, pruned.checkpoints,
                                 pruned.chains)  # fmt: skip
            interval = PRUNE_INTERVAL if retention is None else retention / 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retention_changed.wait(),
                                       min(max(interval, 1.0), PRUNE_INTERVAL))  # fmt: skip

    def _expire(self, proxy_id: str, epoch: int) -> None:
        self._timers.pop(proxy_id, None)
        record = self.registry.expire(proxy_id, epoch)
        if record is not None:
            self._saved.forgotten(proxy_id)
            log.info("proxy %s expired", proxy_id)
            self._mark_service(record.workload.key)

    # ----------------------------------------------------------------- pushes
    def _mark_service(self, key: ServiceKey) -> None:
        self._dirty.update(self.registry.watchers(key))
        self._wake.set()

    def _mesh_view(self) -> MeshView:
        return MeshView(
            trust_domain=self.ca.trust_domain,
            mtls_mode=self._view.mtls_mode,
            services=self._view.services,
            endpoints=self.registry.healthy_endpoints(),
            workload_services=self.registry.workload_services(),
            traffic=self._view.traffic,
            revoked_serials=self.revocations.serials,
            egress=self._view.egress,
            authorization=self._view.authorization,
            request_authn=self._view.request_authn,
            peer_authn=self._view.peer_authn,
            jwks=self.jwks.key_sets(),
            tracing=self._view.tracing,
            audit=self._view.audit,
            access_log=self._view.access_log,
        )

    def _send_snapshot(self, record: ProxyRecord, content: SnapshotContent) -> None:
        if record.session is not None:
            record.session.send(
                {
                    "type": "snapshot",
                    "version": record.config_version,
                    "snapshot": with_version(content, record.config_version),
                }
            )

    def _push(self, record: ProxyRecord, view: MeshView) -> bool:
        """Recompute one proxy's snapshot; send it if it changed. True if sent."""
        if not record.connected or record.session is None:
            return False
        workload = record.workload
        selection = select_services(
            workload.namespace, workload.service, record.subscriptions, view
        )
        self.registry.set_watched(record, selection.watched)
        content = build_snapshot(
            workload.namespace, workload.service, record.subscriptions, view, selection
        )
        if selection.unknown or record.unknown:  # else every name is a known service
            _bound_unknown(record, view)
        if content == record.last_content:
            return False
        record.last_content = content
        self.registry.bump_version(record)
        record.ack_state, record.nack_error = "PENDING", None
        self._send_snapshot(record, content)
        return True

    async def _push_loop(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if not dirty:
                continue
            view = self._mesh_view()
            started = time.perf_counter()
            for proxy_id in dirty:
                record = self.registry.get(proxy_id)
                if record is not None:
                    try:
                        self._push(record, view)
                    except Exception:
                        log.exception("building the snapshot of %s failed", proxy_id)
            log.debug(
                "recomputed %d snapshots in %.1f ms",
                len(dirty),
                (time.perf_counter() - started) * 1000,
            )
