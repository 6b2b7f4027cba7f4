"""The kind registry: every resource kind the API accepts, and lookup by any spelling.

Adding a kind = one module with a :class:`~gossamer.config.base.Resource` subclass + one entry
in :data:`KINDS`.
"""

from __future__ import annotations

from gossamer.config.authorization import AuthorizationPolicy
from gossamer.config.base import Resource
from gossamer.config.egress import Egress
from gossamer.config.httproute import HTTPRoute
from gossamer.config.meshconfig import MeshConfig
from gossamer.config.peerauthn import PeerAuthentication
from gossamer.config.proxyfilter import ProxyFilter
from gossamer.config.requestauthn import RequestAuthentication
from gossamer.config.service import Service
from gossamer.config.tcproute import TCPRoute
from gossamer.config.trafficpolicy import TrafficPolicy

__all__ = ["KINDS", "kind_for"]

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (
        Service,
        MeshConfig,
        HTTPRoute,
        TrafficPolicy,
        TCPRoute,
        ProxyFilter,
        Egress,
        AuthorizationPolicy,
        RequestAuthentication,
        PeerAuthentication,
    )
}

_SPELLINGS: dict[str, type[Resource]] = {}
for _cls in KINDS.values():
    _SPELLINGS[_cls.KIND.lower()] = _cls
    _SPELLINGS[_cls.PLURAL.lower()] = _cls


def kind_for(spelling: str) -> type[Resource] | None:
    """The kind for ``Service``, ``service``, ``services`` (case-insensitive), else None."""
    return _SPELLINGS.get(spelling.lower())
