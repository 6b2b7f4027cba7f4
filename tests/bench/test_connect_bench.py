"""The CONNECT benchmark (bench/connect.py) runs, tiny, and measures both paths; it asserts
no speed, only that every call of both paths went through and was counted."""

from __future__ import annotations

import shutil

from bench.connect import measure, render

from tests.tools import require


def test_both_paths_are_measured() -> None:
    require(shutil.which("node") is not None, "Node.js (scripts/ensure-node-clients)")
    results = measure(rounds=1, seconds=1.0, concurrency=4)
    for variant in ("direct", "connect"):
        row = results[variant]
        assert row["errors"] == [0], row
        assert row["rps"][0] > 0 and row["caller_us"][0] > 0 and row["callee_us"][0] > 0
    table = render(results)
    assert "| connect / direct |" in table
