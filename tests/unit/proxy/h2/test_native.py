"""The native header collector: built by ``make``, loaded by the binding, and optional.

With it, nghttp2's per-field callbacks run in C and a header block reaches Python as one
buffer; the rest of the suite runs on it. Without it (no compiler, or
``GOSSAMER_H2_NATIVE=off``) the Python callbacks do the same work: the session tests are run
again that way here, in a child process.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gossamer.build_native import build
from gossamer.protocol.h2 import binding, native
from gossamer.protocol.h2.session import H2Session
from tests.tools import require

ROOT = Path(__file__).resolve().parents[4]


def test_the_collector_is_built_and_in_use() -> None:
    require(native.LIBRARY.exists(), "the built HTTP/2 header collector (make builds it)")
    assert binding.native is not None
    assert H2Session(client=True)._ctx is not None


def test_build_compiles_a_library_with_every_declared_symbol(tmp_path: Path) -> None:
    require(shutil.which("cc") is not None, "a C compiler")
    out = tmp_path / "libgossamer_h2.so"
    assert build(native.PART, out) is None
    library = ctypes.CDLL(str(out))
    declared = [
        line.split("(")[0].split()[-1].lstrip("*")
        for line in binding.NATIVE_CDEF.split(";")
        if "(" in line
    ]
    assert len(declared) == 11
    for name in declared:
        assert hasattr(library, name), name
    assert not out.with_suffix(".so.tmp").exists()


def test_build_says_why_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    why = build(native.PART, tmp_path / "lib.so")
    assert why is not None and "no-such-cc" in why
    assert not (tmp_path / "lib.so").exists()


def test_sessions_work_on_the_python_callbacks_too() -> None:
    """The whole session suite, in a child process with the collector switched off."""
    env = {**os.environ, "GOSSAMER_H2_NATIVE": "off", "GOSSAMER_COMPILED": "off"}
    code = (
        "import sys, pytest; from gossamer.protocol.h2 import binding, session;"
        "assert binding.native is None and session.H2Session(client=True)._ctx is None;"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
        "'tests/unit/proxy/h2/test_session.py', 'tests/unit/proxy/h2/test_fuzz.py']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
