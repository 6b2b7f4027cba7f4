"""Where the HTTP/2 header collector's C source and built library live (see ``headers.c``;
built by ``gossamer.proxy.h2.build_native``, loaded by ``gossamer.proxy.h2._ffi``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["LIBRARY", "SOURCE"]

SOURCE = Path(__file__).with_name("headers.c")
LIBRARY = Path(__file__).with_name("libgossamer_h2.so")
