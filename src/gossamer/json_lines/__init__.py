"""Compact JSON for access-log lines and audit records, the bytes the json module writes.

``encode(document, ascii=..., sort_keys=...)`` is ``json.JSONEncoder(separators=(",", ":"),
ensure_ascii=ascii, sort_keys=sort_keys).encode(document)`` as UTF-8 bytes (a lone surrogate
written as ``?``). It runs the native encoder (``native/encode.c``, built by ``python -m
gossamer.build_native``) when it is built and ``GOSSAMER_JSON_NATIVE`` does not turn it off,
for documents of the plain types it takes (dict with str keys, list, tuple, str, int, float,
bool, None); anything else, or no build, goes through the json module. Both give the same
bytes (``tests/unit/test_json_lines.py``), which matters: an audit record's hash covers them
(``gossamer.audit_chain``). The native one takes a third of the time (bench/RESULTS.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gossamer.native import env_switched_off

__all__ = ["NATIVE", "SWITCH", "encode", "encode_python"]

SWITCH = "GOSSAMER_JSON_NATIVE"


def _load() -> Callable[[Any, bool, bool], bytes] | None:
    if env_switched_off(SWITCH):
        return None
    try:
        from gossamer.json_lines.native import _encode  # type: ignore[attr-defined]
    except ImportError:
        return None
    encoder: Callable[[Any, bool, bool], bytes] = _encode.encode
    return encoder


_native = _load()
NATIVE = _native is not None  # whether the native encoder is in use

_ENCODERS = {
    (ascii, sort_keys): json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=ascii, sort_keys=sort_keys
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
