"""Which code this test process imports: the source, or the compiled build (``gossamer.compiled``).

Unit tests replace methods and hand test doubles to the proxy's classes, which compiled classes
refuse. So a session that may collect ``tests/unit`` imports the source in process, and any
other session imports the build (when it exists and is current), so that the integration tests
exercise what a sidecar runs. ``make test`` runs the two as separate sessions. Processes the
tests start (sidecars, control planes, the CLI) run the build either way, as users' do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

UNIT = (Path(__file__).parent / "unit").resolve()


def _may_collect_unit_tests(config: pytest.Config) -> bool:
    ignored = {Path(p).resolve() for p in config.getoption("ignore") or ()}
    if UNIT in ignored:
        return False
    for arg in config.args or [str(Path.cwd())]:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == UNIT or UNIT in path.parents or path in UNIT.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    if not _may_collect_unit_tests(config):
        return
    if "gossamer" in sys.modules:  # imported before pytest started (pytest.main in a child)
        if sys.modules["gossamer.compiled"].STATE == "compiled":
            raise pytest.UsageError("unit tests need GOSSAMER_COMPILED=off here")
        return
    chosen = os.environ.get("GOSSAMER_COMPILED")
    os.environ["GOSSAMER_COMPILED"] = "off"
    import gossamer  # noqa: F401  (installs, or here does not install, the compiled modules)

    if chosen is None:  # processes started by the tests still run the build
        del os.environ["GOSSAMER_COMPILED"]
    else:
        os.environ["GOSSAMER_COMPILED"] = chosen
