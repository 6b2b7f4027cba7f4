"""The snapshot's ``tracing`` compiled in the sidecar (proxy/snapshot/tracing.py): the export
headers become single header lines or the snapshot is refused naming the pair; https is an
endpoint the exporter takes (with TLS)."""

from __future__ import annotations

import pytest

from gossamer.proxy.observe.otlp import parse_endpoint
from gossamer.proxy.snapshot.errors import SnapshotError
from gossamer.proxy.snapshot.tracing import compile_tracing

BASE = {"endpoint": "https://collector:4318", "ratio": 0.5, "max_queue": 10, "batch": 5,
        "interval": 1.0}  # fmt: skip


def test_headers_and_https_compile() -> None:
    config = compile_tracing({**BASE, "headers": [["x-api-key", "k 1"], ["x-tenant", "acme"]]})
    assert config is not None
    assert config.headers == ((b"x-api-key", b"k 1"), (b"x-tenant", b"acme"))
    assert config.export[1] == config.headers  # a new key makes a new exporter
    assert compile_tracing(BASE) is not None  # from a control plane that sends none
    assert parse_endpoint("https://collector") == (True, "collector", 4318, "/v1/traces")
    assert parse_endpoint("http://[::1]:9/t") == (False, "::1", 9, "/t")


@pytest.mark.parametrize(
    "headers",
    [
        [["x-api-key", "a\r\nx-evil: 1"]],
        [["X-Api-Key", "1"]],  # the control plane sends names in lower case
        [["bad name", "1"]],
        [["x", "caf\u00e9"]],
        [["x"]],
        "x-api-key: 1",
        [["x-{i}", "1"]] * 33,
    ],
)
def test_a_header_that_is_not_one_line_is_refused(headers: object) -> None:
    with pytest.raises(SnapshotError, match=r"snapshot\.tracing\.headers"):
        compile_tracing({**BASE, "headers": headers})
