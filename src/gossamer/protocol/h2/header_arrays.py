"""Header blocks handed to nghttp2: ``(name, value)`` pairs as an ``nghttp2_nv[]``.

This module owns the one place where Python bytes become C pointers for nghttp2. The array
and the names and values it points to live in one buffer, which the returned cdata owns: as
long as the caller passes that object to the nghttp2 call, nothing it points to can be freed
before the call returns (nghttp2 copies names and values; no NO_COPY flags). One owner
matters because compiled code (``gossamer.compiled``) releases a local as soon as it is last
used, so a separate keep-alive object would not survive to the call. On the usual 64-bit
layout (checked here at import against the declarations) the entries are packed with one
``struct`` call; elsewhere they are filled field by field. Credentials-like fields are marked
never-indexed for HPACK.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from gossamer.protocol.h2.binding import backend, ffi

__all__ = ["Header", "nv_array"]

Header = tuple[bytes, bytes]

_SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_NV_FLAG_NO_INDEX = 0x01

_cast = backend.cast
_from_buffer = backend.from_buffer
_NV_SIZE = ffi.sizeof("nghttp2_nv")
_UINT8_P = ffi.typeof("uint8_t *")
_UINTPTR = ffi.typeof("uintptr_t")
_NV_ARRAY = ffi.typeof("nghttp2_nv[]")
_NV_LAYOUT_OK = (
    _NV_SIZE == 40
    and ffi.offsetof("nghttp2_nv", "name") == 0
    and ffi.offsetof("nghttp2_nv", "value") == 8
    and ffi.offsetof("nghttp2_nv", "namelen") == 16
    and ffi.offsetof("nghttp2_nv", "valuelen") == 24
    and ffi.offsetof("nghttp2_nv", "flags") == 32
    and ffi.sizeof("void *") == 8
)
_NV_STRUCTS: dict[int, struct.Struct] = {}


def _nv_struct(n: int) -> struct.Struct:
    st = _NV_STRUCTS.get(n)
    if st is None:
        st = _NV_STRUCTS[n] = struct.Struct("=" + "QQQQB7x" * n)
    return st


def nv_array(headers: Sequence[Header]) -> Any:
    """An ``nghttp2_nv[]`` for ``headers`` that owns the names and values it points to.

    Pass the returned object itself to the nghttp2 call (with ``len(headers)`` entries): it
    keeps the one buffer holding the entries, then the names and values, alive.
    """
    count = len(headers)
    entries = count * _NV_SIZE
    buffer = bytearray(entries)
    buffer += b"".join([part for pair in headers for part in pair])
    nva = _from_buffer(_NV_ARRAY, buffer, True)
    addr = int(_cast(_UINTPTR, nva)) + entries
    if _NV_LAYOUT_OK:
        fields: list[int] = []
        for name, value in headers:
            ln = len(name)
            lv = len(value)
            fields += (addr, addr + ln, ln, lv, _NV_FLAG_NO_INDEX if name in _SENSITIVE else 0)
            addr += ln + lv
        _nv_struct(count).pack_into(buffer, 0, *fields)
        return nva
    for i, (name, value) in enumerate(headers):
        nv = nva[i]
        nv.name = _cast(_UINT8_P, addr)
        nv.value = _cast(_UINT8_P, addr + len(name))
        nv.namelen = len(name)
        nv.valuelen = len(value)
        nv.flags = _NV_FLAG_NO_INDEX if name in _SENSITIVE else 0
        addr += len(name) + len(value)
    return nva
