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
