"""Gossamer's native parts: what each is made of, and loading it.

A native part is one small, self-contained C file (no Python or library headers) built into a
shared object by ``python -m gossamer.build_native`` (``make`` runs it), plus the cffi
declarations of what Python calls. Both are optional at run time: without the shared object
(no compiler, or switched off with the part's environment variable) the same work is done in
Python; without the prebuilt declarations module (cffi's out-of-line ABI mode: plain Python,
also written by ``build_native``) the declarations are parsed at import, which costs pycparser
and about 2.5 MiB of resident memory for the life of the process.

A part called on every message can also be built as a CPython extension from the same C file
(cffi's API mode: the interpreter calls it directly, about 0.2 us less per call than through
libffi). That needs the Python headers; without them the shared object is used.

The parts: the HTTP/2 header collector (``gossamer.protocol.h2.native``) and the plain HTTP/1.1
message scanner (``gossamer.protocol.native``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "NativePart",
    "declared_ffi",
    "env_switched_off",
    "load_extension",
    "open_library",
    "switched_off",
]


class NativePart(NamedTuple):
    name: str  # for messages, e.g. "HTTP/2 header collector"
    source: Path  # the C file
    library: Path  # the shared object built from it
    declared: str  # the cffi declarations (cdef text) Python uses it through
    module: str  # the prebuilt declarations module, e.g. "gossamer.x.native.prebuilt_..."
    module_path: Path  # where that module is written
    switch: str  # the environment variable that turns the library off ("off", "0", "no")
    extension: str | None = None  # the API-mode extension module built from it, if any


def declared_ffi(part: NativePart) -> tuple[Any, bool]:
    """An ``ffi`` holding ``part.declared``, and whether it came prebuilt.

    The prebuilt module is used only when it was made from exactly these declarations (it
    ends with the text it was made from); otherwise (not built, or stale) they are parsed.
    """
    try:
        prebuilt = importlib.import_module(part.module)
    except ImportError:
        prebuilt = None
    if prebuilt is not None and getattr(prebuilt, "DECLARED", None) == part.declared:
        return prebuilt.ffi, True
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(part.declared)
    return ffi, False


def switched_off(part: NativePart) -> bool:
    return env_switched_off(part.switch)


def env_switched_off(variable: str) -> bool:
    """Whether the environment turns an optional accelerated part off ("off", "0", "no")."""
    return os.environ.get(variable, "on").lower() in ("off", "0", "no")


def load_extension(part: NativePart) -> tuple[Any, Any] | None:
    """``(ffi, lib)`` of the part's API-mode extension; None when there is none, it is not
    built, or the part is switched off."""
    if part.extension is None or switched_off(part):
        return None
    try:
        module = importlib.import_module(part.extension)
    except ImportError:
        return None
    return module.ffi, module.lib


def open_library(part: NativePart, ffi: Any) -> Any | None:
    """The part's shared object opened on ``ffi``; None when it is not built, cannot be
    opened, or is switched off."""
    if switched_off(part):
        return None
    if not part.library.exists():
        return None
    try:
        return ffi.dlopen(str(part.library))
    except OSError:
        return None
