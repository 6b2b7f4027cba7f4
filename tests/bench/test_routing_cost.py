"""The routing-cost benchmark runs (tiny) and produces its row; it asserts no speed."""

from __future__ import annotations

from pathlib import Path

from bench.routing import measure, render, write_section


def test_routing_cost_rows_are_produced(tmp_path: Path) -> None:
    """Every route table is measured through the real outbound path and reported."""
    result = measure(rounds=1, requests=200)
    cases = [row["case"] for row in result["rows"]]
    assert cases == ["none", "100 rules, first matches", "100 rules, last matches"]
    assert all(row["us_per_request"] > 0 for row in result["rows"])
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n")
    write_section(out, render(result))
    write_section(out, render(result))  # replaced in place, not appended twice
    text = out.read_text()
    assert text.count("Routing cost per request") == 1
    assert "100 rules, last matches" in text
