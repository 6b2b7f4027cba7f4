"""``python -m gossamer.proxy.h2.build_native``: build what makes HTTP/2 lighter to run.

- The header collector: ``native/headers.c`` compiled into ``native/libgossamer_h2.so`` next
  to it with the system C compiler (``$CC``, else ``cc``). The file needs no library headers,
  so a compiler is all it takes. Without one it says so and HTTP/2 runs on the Python
  callbacks instead (``gossamer.proxy.h2._ffi``).
- The prebuilt declarations: ``declarations.DECLARED`` written by cffi as an out-of-line ABI
  module (``native/prebuilt_declarations.py``, plain Python, no compiler), so a sidecar does
  not parse C when it starts. Without it the declarations are parsed at import.

``make`` runs this. Exit status: 0 when both were built, 1 when either could not be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gossamer.proxy.h2.declarations import DECLARED
from gossamer.proxy.h2.native import DECLARATIONS, DECLARATIONS_MODULE, LIBRARY, SOURCE

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


def emit_declarations(output: Path = DECLARATIONS) -> str | None:
    """Write ``DECLARED`` as cffi's out-of-line ABI module; None on success, else why not.

    The module ends with ``DECLARED``, the text it was made from: ``_ffi`` uses it only when
    that is still what ``declarations`` says.
    """
    try:
        import cffi

        builder = cffi.FFI()
        builder.cdef(DECLARED)
        builder.set_source(DECLARATIONS_MODULE, None)
        partial = output.with_suffix(".py.tmp")
        builder.emit_python_code(str(partial))
    except (ImportError, cffi.CDefError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    with partial.open("a", encoding="utf-8") as out:
        out.write(f"\nDECLARED = {DECLARED!r}\n")
    partial.replace(output)
    return None


def main() -> int:
    status = 0
    why = build()
    if why is None:
        print(f"built {LIBRARY}")
    else:
        print(f"HTTP/2 header collector not built: {why}; HTTP/2 uses Python callbacks")
        status = 1
    why = emit_declarations()
    if why is None:
        print(f"wrote {DECLARATIONS}")
    else:
        print(f"HTTP/2 declarations not prebuilt: {why}; they are parsed at start")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
