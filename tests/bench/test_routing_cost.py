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


def test_each_section_is_replaced_between_its_own_markers(tmp_path: Path) -> None:
    """Another bench's section (its own markers) replaces itself, not the routing one, and
    is not appended again on the next run (it was, before the markers came from the
    section)."""
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n")
    routing = "<!-- routing-cost:begin -->\nrouting\n<!-- routing-cost:end -->"
    for figure in ("1.0", "2.0", "3.0"):
        write_section(out, routing)
        write_section(out, f"<!-- tracing-cost:begin -->\n{figure}\n<!-- tracing-cost:end -->")
    text = out.read_text()
    assert text.count("tracing-cost:begin") == 1 and text.count("routing-cost:begin") == 1
    assert "3.0" in text and "1.0" not in text and "routing" in text
