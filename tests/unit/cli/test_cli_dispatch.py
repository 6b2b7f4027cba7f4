"""`gossamer proxy` and `gossamer control` are handed over before typer/rich are imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys, types
fake = types.ModuleType({module!r})
seen = []
fake.main = lambda argv=None: (seen.append(argv), 7)[1]
sys.modules[{module!r}] = fake
from gossamer.cli.main import main
code = main({argv!r})
print(json.dumps({{"code": code, "argv": seen[0], "sys_argv": sys.argv[1:],
                  "loaded": [m for m in ("typer", "rich", "pydantic", "click")
                             if m in sys.modules]}}))
"""


def _probe(module: str, argv: list[str]) -> dict[str, object]:
    code = _PROBE.format(module=module, argv=argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize("argv", [["proxy"], ["proxy", "--workers", "2"]])
def test_proxy_is_dispatched_without_cli_libraries(argv: list[str]) -> None:
    """`gossamer proxy` returns the sidecar's exit code and loads no typer, rich or pydantic."""
    data = _probe("gossamer.proxy.process.main", argv)
    assert data["code"] == 7
    assert data["loaded"] == []
    assert data["sys_argv"] == argv[1:]  # the sidecar sees only its own flags


def test_control_gets_the_remaining_arguments() -> None:
    """`gossamer control ARGS` calls the control plane's main with ARGS."""
    data = _probe("gossamer.control.server", ["control", "--data-dir", "/x"])
    assert data["code"] == 7
    assert data["argv"] == ["--data-dir", "/x"]
    assert "typer" not in data["loaded"]  # type: ignore[operator]


def test_other_commands_go_to_the_typer_app() -> None:
    """Anything else is the typer application (here: --version)."""
    result = subprocess.run([sys.executable, "-m", "gossamer.cli", "--version"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("gossamer ")
