"""The JSON line encoder as a CPython extension (``encode.c``, which says what it accepts):
where its C file is and where ``python -m gossamer.build_native`` builds it."""

from __future__ import annotations

import sysconfig
from pathlib import Path

__all__ = ["EXTENSION", "SOURCE"]

SOURCE = Path(__file__).with_name("encode.c")
EXTENSION = Path(__file__).with_name("_encode" + str(sysconfig.get_config_var("EXT_SUFFIX")))
