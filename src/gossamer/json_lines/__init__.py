"""Compact JSON for access-log lines and audit records, the bytes the json module writes.

``encode(document, ascii=..., sort_keys=...)`` is ``json.JSONEncoder(separators=(",", ":"),
ensure_ascii=ascii, sort_keys=sort_keys).encode(document)`` as UTF-8 bytes (a lone surrogate
written as ``?``), with one addition: a ``bytes`` value is written as its Latin-1 text (the
proxy holds header values as bytes, and a record need not decode them first).

It runs the native encoder (``native/encode.c``, built by ``python -m gossamer.build_native``)
when it is built and ``GOSSAMER_JSON_NATIVE`` does not turn it off, for documents of the
plain types it takes (dict with str keys, list, tuple, str, bytes, int, float, bool, None);
anything else, or no build, goes through the json module. Both give the same bytes
(``tests/unit/test_json_lines.py``), which matters: an audit record's hash covers them
(``gossamer.audit_chain``, whose ``seal`` ``Rows.seal`` makes for a record given as a row:
encoding and SHA-256 in one native call). The native one takes a sixth of the time
(bench/RESULTS.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gossamer.native import env_switched_off

__all__ = ["NATIVE", "OMIT", "SWITCH", "Rows", "encode", "encode_python"]

SWITCH = "GOSSAMER_JSON_NATIVE"


def _load() -> Any:
    if env_switched_off(SWITCH):
        return None
    try:
        from gossamer.json_lines.native import _encode  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _encode


_module = _load()
_native: Callable[[Any, bool, bool], bytes] | None = (
    _module.encode if _module is not None else None
)
NATIVE = _native is not None  # whether the native encoder is in use

def _latin1(value: object) -> str:
    """The json module's ``default``: a bytes value is its Latin-1 text."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODERS = {
    (ascii, sort_keys): json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=ascii, sort_keys=sort_keys, default=_latin1
    )
    for ascii in (False, True)
    for sort_keys in (False, True)
}


def encode_python(document: Any, *, ascii: bool, sort_keys: bool) -> bytes:
    """``encode`` by the json module alone."""
    return _ENCODERS[ascii, sort_keys].encode(document).encode("utf-8", "replace")


def encode(document: Any, *, ascii: bool, sort_keys: bool) -> bytes:
    """``document`` as compact JSON (see the module docstring); TypeError or ValueError as
    the json module raises them for what it cannot encode."""
    if _native is not None:
        try:
            return _native(document, ascii, sort_keys)
        except TypeError:
            pass  # a type it does not take: the json module decides
    return encode_python(document, ascii=ascii, sort_keys=sort_keys)


OMIT: Any = object()  # a row's value that leaves its member out (``Rows``)


class Rows:
    """JSON objects of one shape, made from rows of raw values (tuples or lists in the
    members' order) by the native encoder, with no dict and no key encoding per row
    (``encode_rows`` in ``native/encode.c`` says what each kind of member writes: "v" a value
    as ``encode`` writes it, "e" the same with an empty str or bytes as null, "t"
    nanoseconds since the epoch as RFC 3339 UTC text with milliseconds, "d" nanoseconds as
    milliseconds to the microsecond). A member whose value is ``OMIT`` is left out (never
    the first). Each object ends with ``suffix``: LF for lines, none for a record to seal.

    ``encode`` and ``seal`` answer None when the native encoder is not built or refuses a
    row; the caller then makes the objects itself (and its tests hold the two to the same
    bytes)."""

    __slots__ = ("_ascii", "_encode", "_seal", "kinds", "prefixes")

    def __init__(
        self, members: tuple[tuple[str, str], ...], *, ascii: bool, suffix: bytes = b"\n"
    ) -> None:
        encoded = [encode(name, ascii=ascii, sort_keys=False) for name, _ in members]
        self.prefixes = (
            *((b"{" if i == 0 else b",") + name + b":" for i, name in enumerate(encoded)),
            b"}" + suffix,
        )
        self.kinds = "".join(kind for _, kind in members).encode("ascii")
        self._ascii = ascii
        self._encode = getattr(_module, "encode_rows", None)
        self._seal = getattr(_module, "seal_row", None)

    def encode(self, rows: list[tuple[Any, ...]]) -> bytes | None:
        """The objects of ``rows``, each followed by the suffix; None: make them another way."""
        if self._encode is None:
            return None
        try:
            objects: bytes = self._encode(self.prefixes, self.kinds, rows, self._ascii, OMIT)
        except TypeError:
            return None
        return objects

    def seal(self, row: list[Any], prev: str) -> tuple[bytes, str] | None:
        """``gossamer.audit_chain.seal`` of the record ``row`` stands for (the shape's
        members sorted, ASCII, no suffix): (line, hash); None: seal the record's dict."""
        if self._seal is None:
            return None
        try:
            sealed: tuple[bytes, str] = self._seal(self.prefixes, self.kinds, row, prev, OMIT)
        except TypeError:
            return None
        return sealed
