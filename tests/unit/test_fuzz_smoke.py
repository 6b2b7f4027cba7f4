"""The fuzz smoke run: each fuzz target (``fuzz/``, docs/fuzzing.md) fuzzes for a few seconds
with a fixed seed, in its own process, as ``make fuzz`` runs it for an hour.

It must start (the target imports and instruments what it owns, its seeds load), run inputs,
and end when its time is up with no crash. A crash here is a real finding (or a target broken
by a change): the test prints where libFuzzer wrote the input; ``python -m fuzz.fuzz_<target>
<file>`` replays it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fuzz.run import TARGETS, run_target

from gossamer.protocol import scanner
from tests.tools import require

SECONDS = 5
SEED = 20261206


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", TARGETS)
def test_the_target_fuzzes_cleanly_for_a_few_seconds(target: str, tmp_path: Path) -> None:
    require(importlib.util.find_spec("atheris") is not None, "atheris (the dev extra has it)")
    if target == "http1":
        require(scanner.HOW != "python", "the native HTTP/1.1 scanner (make builds it)")
    result = run_target(target, SECONDS, tmp_path, seed=SEED)
    log = (tmp_path / target / "log").read_text(errors="replace")
    crashes = sorted(p.name for p in (tmp_path / target / "crashes").iterdir())
    assert result.crashes == 0 and not crashes, f"{target} crashed: {crashes}\n{log[-4000:]}"
    assert result.exit == 0, f"{target} exited {result.exit}\n{log[-4000:]}"
    assert result.executions > 0, f"{target} ran no input\n{log[-4000:]}"
