"""Which hosts leave the mesh (``proxy/snapshot/egress.py``; issue 12, item 6)."""

from __future__ import annotations

import pytest

from gossamer.proxy.snapshot.egress import EgressPolicy, external_host
from gossamer.proxy.snapshot.errors import SnapshotError


@pytest.mark.parametrize(("authority", "expected"), [
    ("api.example.com", ("api.example.com", 80)),
    ("API.Example.com:8443", ("api.example.com", 8443)),
    ("10.1.2.3:9000", ("10.1.2.3", 9000)),
    ("[::1]:8080", ("::1", 8080)),
    ("catalog", None),  # no dot: only a mesh service can be meant
    ("catalog.default.svc", None),  # a mesh service's long form
    ("catalog.default.svc.cluster.local:80", None),
    ("example.com:http", None),
    ("example.com:70000", None),
])  # fmt: skip
def test_external_hosts(authority: str, expected: tuple[str, int] | None) -> None:
    assert external_host(authority) == expected


def test_registry_only_allows_named_hosts_and_ports() -> None:
    policy = EgressPolicy.from_snapshot({"mode": "REGISTRY_ONLY", "hosts": [
        {"host": "api.partner.example", "ports": [80]},
        {"host": "*.payments.example", "ports": []},
        {"host": "10.0.0.7", "ports": []},
    ]}, "egress")  # fmt: skip
    assert policy.allows("api.partner.example", 80)
    assert not policy.allows("api.partner.example", 8080)
    assert policy.allows("eu.payments.example", 1234)
    assert not policy.allows("payments.example", 80)  # *. is every name below, not itself
    assert policy.allows("10.0.0.7", 80)
    assert not policy.allows("www.example.com", 80)
    assert EgressPolicy.from_snapshot(None, "egress").allows("anything.example", 1)


def test_a_bad_egress_snapshot_names_the_field() -> None:
    with pytest.raises(SnapshotError, match=r"egress\.hosts\[0\]"):
        EgressPolicy.from_snapshot({"mode": "ALLOW_ANY", "hosts": [{"host": 3}]}, "egress")
    with pytest.raises(SnapshotError, match=r"egress\.mode"):
        EgressPolicy.from_snapshot({"mode": "SOMETIMES"}, "egress")


def test_egress_endpoints_say_where_a_host_is_served() -> None:
    """An Egress with endpoints: calls to its hosts connect there (the endpoint's port, or
    the one asked for), in either mode; a host without: at its own name."""
    hosts = [
        {"host": "api.partner.example", "ports": [443],
         "endpoints": [{"address": "10.0.0.9", "port": 8443}, {"address": "10.0.0.10"}]},
        {"host": "*.eu.partner.example", "ports": [], "endpoints": [{"address": "10.0.1.1"}]},
        {"host": "*.partner.example", "ports": [], "endpoints": []},
    ]  # fmt: skip
    for mode in ("REGISTRY_ONLY", "ALLOW_ANY"):
        policy = EgressPolicy.from_snapshot({"mode": mode, "hosts": hosts}, "egress")
        assert policy.where("api.partner.example", 443) == (("10.0.0.9", 8443),
                                                           ("10.0.0.10", 443))  # fmt: skip
        assert policy.where("db.eu.partner.example", 5432) == (("10.0.1.1", 5432),)
        assert policy.where("www.partner.example", 80) == (("www.partner.example", 80),)
    registry_only = EgressPolicy.from_snapshot({"mode": "REGISTRY_ONLY", "hosts": hosts}, "e")
    # Not the exact entry's port: the wildcard entry takes it, at the host's own name.
    assert registry_only.where("api.partner.example", 80) == (("api.partner.example", 80),)
    assert registry_only.where("other.example", 80) is None
    exact_only = EgressPolicy.from_snapshot({"mode": "REGISTRY_ONLY", "hosts": hosts[:1]}, "e")
    assert exact_only.where("api.partner.example", 80) is None


def test_a_bad_egress_endpoint_names_the_field() -> None:
    bad = {"mode": "ALLOW_ANY", "hosts": [
        {"host": "a.example", "ports": [], "endpoints": [{"address": "10.0.0.1", "port": 0}]}]}
    with pytest.raises(SnapshotError, match=r"egress\.hosts\[0\]\.endpoints\[0\]"):
        EgressPolicy.from_snapshot(bad, "egress")
