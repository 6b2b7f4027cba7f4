"""The security resources of each workload in snapshot form: the AuthorizationPolicies and
RequestAuthentications that apply to it (a namespace's workloads, or one service of it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gossamer.config.authorization import AuthorizationPolicy
from gossamer.config.duration import duration_ms
from gossamer.config.peerauthn import PeerAuthentication
from gossamer.config.requestauthn import JwtRule, RequestAuthentication
from gossamer.config.selector import selected_service
from gossamer.control.jwks import JwksSource
from gossamer.snapshot_schema import (
    AuthzPolicySnapshot,
    JwtRuleSnapshot,
    PeerMode,
    PortMtlsSnapshot,
)

__all__ = ["AuthorizationIndex", "Jwks", "PeerAuthnIndex", "RequestAuthnIndex"]

ServiceKey = tuple[str, str]  # (namespace, name)
Jwks = Mapping[tuple[str, str | None], tuple[dict[str, Any] | None, str | None]]


Secured = AuthorizationPolicy | RequestAuthentication | PeerAuthentication


def _selected(resource: Secured) -> ServiceKey | None:
    return selected_service(resource.spec.selector, resource.metadata.namespace)


def _by_name(resource: Secured) -> tuple[str, str]:
    return (resource.metadata.name, resource.metadata.namespace)


_R = TypeVar("_R", AuthorizationPolicy, RequestAuthentication, PeerAuthentication)
_T = TypeVar("_T")


def _by_selection(
    resources: Iterable[_R], items: Callable[[_R], Iterable[_T]]
) -> tuple[dict[str, tuple[_T, ...]], dict[ServiceKey, tuple[_T, ...]]]:
    """Each resource's ``items``, gathered by what it selects: its namespace's workloads, or
    one service (resources in name order, then namespace)."""
    by_namespace: dict[str, list[_T]] = {}
    by_service: dict[ServiceKey, list[_T]] = {}
    for resource in sorted(resources, key=_by_name):
        key = _selected(resource)
        if key is None:
            by_namespace.setdefault(resource.metadata.namespace, []).extend(items(resource))
        else:
            by_service.setdefault(key, []).extend(items(resource))
    return (
        {ns: tuple(found) for ns, found in by_namespace.items()},
        {key: tuple(found) for key, found in by_service.items()},
    )


@dataclass(frozen=True, slots=True)
class AuthorizationIndex:
    """The AuthorizationPolicies in snapshot form, by what they select: a namespace's
    workloads, or one service (each in name order, then namespace)."""

    by_namespace: Mapping[str, tuple[AuthzPolicySnapshot, ...]] = field(default_factory=dict)
    by_service: Mapping[ServiceKey, tuple[AuthzPolicySnapshot, ...]] = field(
        default_factory=dict
    )

    @classmethod
    def of(cls, policies: Iterable[AuthorizationPolicy]) -> AuthorizationIndex:
        return cls(*_by_selection(policies, lambda policy: [policy.to_snapshot()]))

    def of_workload(self, key: ServiceKey) -> list[AuthzPolicySnapshot]:
        """The policies of the workloads of service ``key`` (``(namespace, name)``)."""
        return [*self.by_namespace.get(key[0], ()), *self.by_service.get(key, ())]




def _rule_snapshot(rule: JwtRule, keys: dict[str, Any] | None,
                   error: str | None) -> JwtRuleSnapshot:  # fmt: skip
    return {
        "issuer": rule.issuer,
        "audiences": list(rule.audiences),
        "from_headers": [{"name": n, "prefix": p} for n, p in rule.token_headers],
        "from_cookies": list(rule.from_cookies),
        "output_claim_to_headers": [
            {"header": o.header.lower(), "claim": o.claim} for o in rule.output_claim_to_headers
        ],
        "forward_original_token": rule.forward_original_token,
        "clock_skew_ms": duration_ms(rule.clock_skew),
        "jwks": keys,
        "jwks_error": None if keys is not None else error or "not fetched yet",
    }


@dataclass(frozen=True, slots=True)
class RequestAuthnIndex:
    """The JWT rules of the RequestAuthentications, by what they select (each issuer once
    per workload: the first resource in name order that names it)."""

    by_namespace: Mapping[str, tuple[JwtRule, ...]] = field(default_factory=dict)
    by_service: Mapping[ServiceKey, tuple[JwtRule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: Iterable[RequestAuthentication]) -> RequestAuthnIndex:
        return cls(*_by_selection(resources, lambda resource: resource.spec.jwt_rules))

    def sources(self) -> set[JwksSource]:
        """Every key source the rules need."""
        return {
            JwksSource(rule.issuer, rule.jwks_uri, duration_ms(rule.jwks_refresh) / 1000)
            for rules in (*self.by_namespace.values(), *self.by_service.values())
            for rule in rules
        }

    def of_workload(self, key: ServiceKey, jwks: Jwks) -> list[JwtRuleSnapshot]:
        """The rules of the workloads of service ``key``, with the keys fetched so far."""
        out: list[JwtRuleSnapshot] = []
        seen: set[str] = set()
        for rule in (*self.by_service.get(key, ()), *self.by_namespace.get(key[0], ())):
            if rule.issuer in seen:
                continue
            seen.add(rule.issuer)
            keys, error = jwks.get((rule.issuer, rule.jwks_uri), (None, "not fetched yet"))
            out.append(_rule_snapshot(rule, keys, error))
        return out


@dataclass(frozen=True, slots=True)
class PeerAuthnIndex:
    """The PeerAuthentications by level (the first in name order at each): a namespace's mode,
    and a service's mode and port modes (``UNSET``: the level above decides)."""

    by_namespace: Mapping[str, str] = field(default_factory=dict)
    by_service: Mapping[ServiceKey, tuple[str, Mapping[int, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: Iterable[PeerAuthentication]) -> PeerAuthnIndex:
        namespaces, services = _by_selection(resources, lambda resource: [resource.spec])
        return cls(
            {ns: specs[0].mtls.mode for ns, specs in namespaces.items()},
            {key: (specs[0].mtls.mode,
                   {int(p): m.mode for p, m in specs[0].port_level_mtls.items()})
             for key, specs in services.items()},
        )  # fmt: skip

    def modes(self, key: ServiceKey, mesh: str) -> tuple[PeerMode, list[PortMtlsSnapshot]]:
        """The mode of the workloads of service ``key``, and their ports' where they differ."""
        mode = mesh
        for level in (self.by_namespace.get(key[0]), self.by_service.get(key, ("UNSET",))[0]):
            if level is not None and level != "UNSET":
                mode = level
        ports = self.by_service.get(key, ("UNSET", {}))[1]
        return _mode(mode), [
            {"port": port, "mode": _mode(m)}
            for port, m in sorted(ports.items()) if m not in ("UNSET", mode)
        ]  # fmt: skip


def _mode(value: str) -> PeerMode:
    if value == "PERMISSIVE":
        return "PERMISSIVE"
    return "DISABLE" if value == "DISABLE" else "STRICT"
