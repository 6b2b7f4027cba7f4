"""The cffi (ABI mode) binding to the system's libnghttp2: loading, checks, constants.

The C declarations themselves are in ``gossamer.protocol.h2.declarations`` (copied by hand from
``nghttp2.h`` of libnghttp2 1.52, Debian ``libnghttp2-14``); they are read from the prebuilt
declarations module when ``build_native`` has written one (``gossamer.native``). No compiler is
needed at run time. Three checks stand between the declarations and a library they do not
describe:

- the shared object is opened by its ABI name (``libnghttp2.so.14``: nghttp2 keeps its ABI
  stable within a soname), and ``nghttp2_version()`` must report at least ``MIN_VERSION``;
- every declared function is looked up at import, so a missing symbol fails here, with its
  name, rather than later on the data path;
- ``selfcheck.self_check`` runs an in-memory client/server exchange that reads back every
  struct field the binding relies on, once, when the protocol classes are imported; ``_nv``
  checks the ``nghttp2_nv`` layout it packs; and a unit test compares ``sizeof``/``offsetof``
  with the installed header when one is present.

``native`` is Gossamer's own header collector (``native/headers.c``, built by
``python -m gossamer.build_native`` when a C compiler is present; ``make`` does it):
C callbacks that gather each header block into one buffer, declared here on the same ``ffi``
so their function pointers can be handed to nghttp2. Without it (not built, or
``GOSSAMER_H2_NATIVE=off``) the same work is done by Python callbacks, one call per field.
"""

from __future__ import annotations

from typing import Any

import gossamer.native
from gossamer.protocol.h2 import native as native_files
from gossamer.protocol.h2.declarations import CDEF, FUNCTIONS, NATIVE_CDEF

__all__ = [
    "CDEF",
    "FUNCTIONS",
    "LIBRARY_NAMES",
    "MIN_VERSION",
    "NATIVE_CDEF",
    "NghttpUnavailable",
    "backend",
    "ffi",
    "lib",
    "native",
    "version",
]

MIN_VERSION = (1, 52, 0)
LIBRARY_NAMES = ("libnghttp2.so.14", "nghttp2")


class NghttpUnavailable(ImportError):
    """libnghttp2 is missing, too old, or does not match the declarations."""


def _open(ffi_: Any) -> Any:
    errors: list[str] = []
    for name in LIBRARY_NAMES:
        try:
            return ffi_.dlopen(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    import ctypes.util  # only now: the ABI names above are what a Debian system has

    found = ctypes.util.find_library("nghttp2")
    if found and found not in LIBRARY_NAMES:
        try:
            return ffi_.dlopen(found)
        except OSError as exc:
            errors.append(f"{found}: {exc}")
    raise NghttpUnavailable(
        "libnghttp2 not found (install the Debian package libnghttp2-14): " + "; ".join(errors)
    )


def _parse_version(text: str) -> tuple[int, int, int]:
    parts = [*text.split("-")[0].split("."), "0", "0", "0"][:3]
    try:
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise NghttpUnavailable(f"libnghttp2 reports an unreadable version {text!r}") from None


def _load() -> tuple[Any, Any, tuple[int, int, int]]:
    ffi_ = gossamer.native.declared_ffi(native_files.PART)[0]
    lib_ = _open(ffi_)
    info = lib_.nghttp2_version(0)
    if info == ffi_.NULL:
        raise NghttpUnavailable("nghttp2_version() returned NULL")
    found = _parse_version(ffi_.string(info.version_str).decode("ascii", "replace"))
    packed = info.version_num
    if packed != (found[0] << 16 | found[1] << 8 | found[2]):
        raise NghttpUnavailable(
            f"libnghttp2 version fields disagree ({found} vs 0x{packed:06x}): "
            "the nghttp2_info declaration does not match this library"
        )
    if found < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        raise NghttpUnavailable(
            f"libnghttp2 {'.'.join(map(str, found))} is older than the {want} this binding "
            "was declared against; install a newer libnghttp2-14"
        )
    least = MIN_VERSION[0] << 16 | MIN_VERSION[1] << 8 | MIN_VERSION[2]
    if lib_.nghttp2_version(least) == ffi_.NULL:
        raise NghttpUnavailable("libnghttp2 refuses the minimum version check")
    missing = []
    for name in FUNCTIONS:
        try:
            getattr(lib_, name)
        except AttributeError:
            missing.append(name)
    if missing:
        raise NghttpUnavailable("libnghttp2 lacks declared functions: " + ", ".join(missing))
    return ffi_, lib_, found




_loaded = _load()
# Typed as Any on purpose: cdata attribute access is checked by ``self_check`` and the tests,
# not by mypy, which cannot see the C declarations.
ffi: Any = _loaded[0]
lib: Any = _loaded[1]
version: tuple[int, int, int] = _loaded[2]
native: Any | None = gossamer.native.open_library(native_files.PART, ffi)
# Where ``cast``, ``from_buffer``, ``from_handle`` and ``unpack`` are C functions with no Python
# wrapper on the way: the prebuilt ``ffi`` itself, or the backend behind a parsed one.
backend: Any = getattr(ffi, "_backend", ffi)

# Constants from nghttp2.h (stable protocol and API values).
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521
ERR_CALLBACK_FAILURE = -902
ERR_FLOODED = -904  # libnghttp2's own guard (PING/SETTINGS acks piling up, and the like)
DATA_FLAG_EOF = 0x01
DATA_FLAG_NO_END_STREAM = 0x02
FLAG_NONE = 0
FLAG_END_STREAM = 0x01
FLAG_ACK = 0x01
HCAT_REQUEST = 0
HCAT_RESPONSE = 1
HCAT_HEADERS = 3
FRAME_DATA = 0
FRAME_HEADERS = 1
FRAME_RST_STREAM = 3
FRAME_SETTINGS = 4
FRAME_PING = 6
FRAME_GOAWAY = 7
SETTINGS_ENABLE_PUSH = 2
SETTINGS_MAX_CONCURRENT_STREAMS = 3
SETTINGS_INITIAL_WINDOW_SIZE = 4
SETTINGS_MAX_HEADER_LIST_SIZE = 6
