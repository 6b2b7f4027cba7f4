"""Header blocks handed to nghttp2: ``(name, value)`` pairs as an ``nghttp2_nv[]``.

This module owns the one place where Python bytes become C pointers for nghttp2. On the
usual 64-bit layout (checked here at import against the declarations) the array is packed
with one ``struct`` call over one joined blob of all names and values; elsewhere it is filled
field by field. The caller keeps the returned keep-alive tuple referenced until the nghttp2
call that reads the array has returned (nghttp2 copies names and values; no NO_COPY flags).
Credentials-like fields are marked never-indexed for HPACK.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from gossamer.proxy.h2._ffi import backend, ffi

__all__ = ["Header", "nv_array"]

Header = tuple[bytes, bytes]

_SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_NV_FLAG_NO_INDEX = 0x01

_cast = backend.cast
_from_buffer = backend.from_buffer
_NV_SIZE = ffi.sizeof("nghttp2_nv")
_CHAR_ARRAY = ffi.typeof("char[]")
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


def nv_array(headers: Sequence[Header]) -> tuple[Any, tuple[Any, ...]]:
    """An ``nghttp2_nv[]`` for ``headers`` and the objects that must outlive its use.

    On the usual 64-bit layout (checked at import) the array is packed in one ``struct`` call
    over one joined blob; elsewhere it is filled field by field.
    """
    if _NV_LAYOUT_OK:
        blob = b"".join([part for pair in headers for part in pair])
        base = _from_buffer(_CHAR_ARRAY, blob, False)
        addr = int(_cast(_UINTPTR, base))
        fields: list[int] = []
        for name, value in headers:
            ln = len(name)
            lv = len(value)
            fields += (addr, addr + ln, ln, lv, _NV_FLAG_NO_INDEX if name in _SENSITIVE else 0)
            addr += ln + lv
        packed = _nv_struct(len(headers)).pack(*fields)
        return _from_buffer(_NV_ARRAY, packed, False), (blob, base, packed)
    nva = ffi.new("nghttp2_nv[]", len(headers))
    keep: list[Any] = [nva]
    for i, (name, value) in enumerate(headers):
        cname = ffi.from_buffer("uint8_t[]", name)
        cvalue = ffi.from_buffer("uint8_t[]", value)
        keep += (cname, cvalue)
        nv = nva[i]
        nv.name = cname
        nv.value = cvalue
        nv.namelen = len(name)
        nv.valuelen = len(value)
        nv.flags = _NV_FLAG_NO_INDEX if name in _SENSITIVE else 0
    return nva, tuple(keep)
