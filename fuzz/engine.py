"""What every fuzz target shares: coverage instrumentation of the code it owns, and handing
its one-input function to libFuzzer (through atheris).

A target module imports the code under test inside ``instrumented(...)`` (atheris rewrites
the bytecode of those modules so that libFuzzer sees which branches an input reached) and
ends with ``if __name__ == "__main__": fuzz(one_input)``. Run as
``python -m fuzz.<target> [libFuzzer flags] [corpus dirs or files]``: with directories it
fuzzes, with files it runs each file once (the way to reproduce a crash).

The targets run the source of the data plane, never its mypyc build (``gossamer.compiled``):
atheris sees Python bytecode only, and the targets subclass the connection classes.
``instrumented`` turns the build off for the process (``GOSSAMER_COMPILED=off``, before
``gossamer`` is first imported); the build does what the source says, so what the source does
is what is fuzzed.

A crash is any exception escaping ``one_input`` (the targets raise ``FuzzFinding`` for a broken
oracle); atheris prints its traceback and libFuzzer writes the input that caused it to
``<artifact_prefix>crash-<sha1>``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CORPUS", "ROOT", "FuzzFinding", "fuzz", "instrumented", "load_copy"]

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"  # the committed seeds, one folder a target

try:
    import atheris as _atheris
except ImportError:  # pragma: no cover - the dev and fuzz extras install it
    _atheris = None


class FuzzFinding(AssertionError):
    """An oracle a target checks did not hold (the message says which, with the values)."""


@contextlib.contextmanager
def instrumented(*packages: str) -> Iterator[None]:
    """Instrument, for coverage, the modules under ``packages`` imported inside the block
    (nothing when atheris is missing: the targets still run their inputs, unguided). The
    data plane imported here is its source (see above)."""
    os.environ["GOSSAMER_COMPILED"] = "off"
    compiled = sys.modules.get("gossamer.compiled")
    if compiled is not None and any(
        isinstance(finder, compiled.CompiledFinder) for finder in sys.meta_path
    ):
        raise RuntimeError("gossamer was imported with its compiled build before the target")
    if _atheris is None:
        yield
        return
    with _atheris.instrument_imports(include=list(packages)):
        yield


def load_copy(module: str, name: str) -> types.ModuleType:
    """A second, instrumented copy of ``module`` (its source run again as module ``name``),
    for a target that needs the module built twice under different conditions."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no source for {module}")
    code = compile(Path(spec.origin).read_bytes(), spec.origin, "exec")
    if _atheris is not None:
        code = _atheris.patch_code(code, False)
    copy = types.ModuleType(name)
    copy.__file__ = spec.origin
    sys.modules[name] = copy
    exec(code, copy.__dict__)
    return copy


def fuzz(one_input: Callable[[bytes], Any]) -> NoReturn:
    """Hand ``one_input`` to libFuzzer with this process's arguments; never returns."""
    if _atheris is None:
        sys.exit("atheris is not installed: pip install -e '.[fuzz]' (make fuzz does)")
    _atheris.Setup(sys.argv, one_input)
    _atheris.Fuzz()
    raise SystemExit(0)  # not reached: libFuzzer exits the process
