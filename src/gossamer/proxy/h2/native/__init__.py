"""Where the HTTP/2 header collector's C source and built library live (see ``headers.c``),
and the prebuilt declarations module: all made by ``gossamer.proxy.h2.build_native`` and
loaded by ``gossamer.proxy.h2._ffi``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DECLARATIONS", "DECLARATIONS_MODULE", "LIBRARY", "SOURCE"]

SOURCE = Path(__file__).with_name("headers.c")
LIBRARY = Path(__file__).with_name("libgossamer_h2.so")
# The declarations of ``gossamer.proxy.h2.declarations`` as cffi's out-of-line ABI module.
DECLARATIONS_MODULE = "gossamer.proxy.h2.native.prebuilt_declarations"
DECLARATIONS = Path(__file__).with_name("prebuilt_declarations.py")
