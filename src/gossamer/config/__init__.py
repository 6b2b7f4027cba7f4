"""The Gossamer resource model: documents, kinds, validation.

Public entry points: :func:`parse_documents` (text → plain dicts), :func:`validate_documents`
(dicts → typed resources, or one :class:`ValidationFailed` carrying every problem), the kind
registry (:func:`kind_for`, :data:`KINDS`) and the resource classes themselves: Service,
MeshConfig, and the traffic kinds HTTPRoute, TrafficPolicy and TCPRoute (docs/internals.md §8).
"""

from gossamer.config.base import API_VERSION, Metadata, Resource, ResourceKey
from gossamer.config.duration import duration_ms, format_duration, parse_duration
from gossamer.config.errors import DocumentParseError, Problem, ValidationFailed
from gossamer.config.httproute import HTTPRoute, HTTPRouteSpec
from gossamer.config.kinds import KINDS, kind_for
from gossamer.config.loader import parse_documents, validate_documents
from gossamer.config.meshconfig import MeshConfig, MeshConfigSpec, MtlsMode
from gossamer.config.service import Service, ServicePort, ServiceSpec
from gossamer.config.tcproute import TCPRoute, TCPRouteSpec
from gossamer.config.trafficpolicy import TrafficPolicy, TrafficPolicySpec, default_policy_snapshot

__all__ = [
    "API_VERSION",
    "KINDS",
    "DocumentParseError",
    "HTTPRoute",
    "HTTPRouteSpec",
    "MeshConfig",
    "MeshConfigSpec",
    "Metadata",
    "MtlsMode",
    "Problem",
    "Resource",
    "ResourceKey",
    "Service",
    "ServicePort",
    "ServiceSpec",
    "TCPRoute",
    "TCPRouteSpec",
    "TrafficPolicy",
    "TrafficPolicySpec",
    "ValidationFailed",
    "default_policy_snapshot",
    "duration_ms",
    "format_duration",
    "kind_for",
    "parse_documents",
    "parse_duration",
    "validate_documents",
]
