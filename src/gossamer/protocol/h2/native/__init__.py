"""The HTTP/2 header collector as a native part (see ``gossamer.native``): its C source
(``headers.c``), the shared object built from it, and its prebuilt declarations module (which
also holds libnghttp2's declarations: one ``ffi`` serves both)."""

from __future__ import annotations

from pathlib import Path

from gossamer.native import NativePart
from gossamer.protocol.h2.declarations import DECLARED

__all__ = ["DECLARATIONS", "DECLARATIONS_MODULE", "LIBRARY", "PART", "SOURCE"]

SOURCE = Path(__file__).with_name("headers.c")
LIBRARY = Path(__file__).with_name("libgossamer_h2.so")
DECLARATIONS_MODULE = "gossamer.protocol.h2.native.prebuilt_declarations"
DECLARATIONS = Path(__file__).with_name("prebuilt_declarations.py")

PART = NativePart(
    name="HTTP/2 header collector",
    source=SOURCE,
    library=LIBRARY,
    declared=DECLARED,
    module=DECLARATIONS_MODULE,
    module_path=DECLARATIONS,
    switch="GOSSAMER_H2_NATIVE",
)
