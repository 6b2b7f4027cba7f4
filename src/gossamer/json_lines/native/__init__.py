"""The JSON line encoder as a CPython extension (``encode.c``, which says what it accepts):
where its C file is and where ``python -m gossamer.build_native`` builds it. (Imported by
every process that loads the extension: it imports nothing the sidecar does not have.)"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

__all__ = ["EXTENSION", "SOURCE"]

SOURCE = Path(__file__).with_name("encode.c")
EXTENSION = Path(__file__).with_name("_encode" + importlib.machinery.EXTENSION_SUFFIXES[0])
