"""``python -m gossamer.proxy.h2.build_native``: compile the HTTP/2 header collector.

Builds ``native/headers.c`` into ``native/libgossamer_h2.so`` next to it with the system C
compiler (``$CC``, else ``cc``). The file needs no library headers, so a compiler is all it
takes. ``make`` runs this once (and again when the source changes); without a compiler it
says so and HTTP/2 runs on the Python callbacks instead (``gossamer.proxy.h2._ffi``).
Exit status: 0 when built, 1 when it could not be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gossamer.proxy.h2.native import LIBRARY, SOURCE

FLAGS = ("-O2", "-Wall", "-Wextra", "-shared", "-fPIC")


def build(output: Path = LIBRARY) -> str | None:
    """Compile the collector into ``output``; None on success, else why it was not built."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (install the Debian package gcc)"
    partial = output.with_suffix(".so.tmp")
    try:
        result = subprocess.run(
            [compiler, *FLAGS, "-o", str(partial), str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return f"cannot run {compiler}: {exc.strerror or exc}"
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        return f"{compiler} failed: {result.stderr.strip() or result.returncode}"
    partial.replace(output)  # never leave a half-written library where it is loaded from
    return None


def main() -> int:
    why = build()
    if why is not None:
        print(f"HTTP/2 header collector not built: {why}; HTTP/2 uses Python callbacks")
        return 1
    print(f"built {LIBRARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
