"""The native JSON line encoder against the json module: the same bytes for every document.

An audit record's hash covers these bytes (``gossamer.audit_chain``), and a record sealed by
a sidecar with the native encoder is verified by a CLI that may have none: one differing
byte would make a true record look edited. So the property is byte equality, in all four
modes, on generated documents whose strings reach every escape (controls, quote, backslash,
DEL, non-ASCII, astral characters, lone surrogates) and whose numbers reach the float and
big-int corners; and what it does not take falls back to the json module, errors included.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import json_lines
from tests.tools import require

_native = json_lines._native

_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates included
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT
    | st.binary(max_size=20)  # written as its Latin-1 text
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5)
    | st.lists(inner, max_size=5).map(tuple)
    | st.dictionaries(_TEXT, inner, max_size=6),
    max_leaves=30,
)
_MODES = [(ascii, sort_keys) for ascii in (True, False) for sort_keys in (True, False)]


@pytest.fixture
def native() -> Any:
    require(_native is not None, "the native JSON line encoder (make builds it)")
    return _native


@settings(max_examples=400, deadline=None)
@given(document=_DOCUMENTS)
def test_the_native_encoder_writes_the_bytes_json_writes(document: Any) -> None:
    require(_native is not None, "the native JSON line encoder (make builds it)")
    assert _native is not None
    for ascii, sort_keys in _MODES:
        expected = json_lines.encode_python(document, ascii=ascii, sort_keys=sort_keys)
        assert _native(document, ascii, sort_keys) == expected, (ascii, sort_keys)


@pytest.mark.parametrize(("ascii", "sort_keys"), _MODES)
def test_each_escape_and_number_form(native: Any, ascii: bool, sort_keys: bool) -> None:
    document = {
        "z": "\x00\x01\x1f \"\\/\b\f\n\r\t\x7f\x80\xe9\u2028\uffff\U0001f600\ud800x\udfff",
        "a": [0, -1, 2**63, -(2**64), 0.1, -0.0, 1e16, 1.5e-7, math.inf, -math.inf, math.nan],
        "ms": [0.0, 0.067, 1.25, 10.5, 1.001, 999999999999.999, 1e12, 123456789.123, -2.5,
               0.0005, 1.2345, 0.1 + 0.2, 1 / 3],  # thousandths (and not) near the fast path
        "m": {"b": None, "a": True, "c": False, "": [], "d": {}},
        "t": ("tuple", 1),
        "b": b"\x00\x1f \"\\\x7f\x80\xe9\xff plain",
    }
    expected = json_lines.encode_python(document, ascii=ascii, sort_keys=sort_keys)
    assert native(document, ascii, sort_keys) == expected


def test_a_record_as_the_sidecar_makes_it_is_json_that_reads_back(native: Any) -> None:
    record = {"status": 200, "path": "/items?q=é", "duration_ms": 1.25, "caller": None}
    line = json_lines.encode(record, ascii=True, sort_keys=True)
    assert line == b'{"caller":null,"duration_ms":1.25,"path":"/items?q=\\u00e9","status":200}'
    assert json.loads(line) == record


@pytest.mark.parametrize(
    "document",
    [OrderedDict(a=1), {1: "int key"}, {"a": object()}, True.__class__, [bytearray(b"x")]],
    ids=["dict subclass", "int key", "object", "type", "bytearray"],
)
def test_what_it_does_not_take_goes_to_the_json_module(native: Any, document: Any) -> None:
    """The native encoder refuses (TypeError) and ``encode`` answers what json answers: the
    same bytes, or json's own error."""
    with pytest.raises(TypeError):
        native(document, True, True)
    try:
        expected: bytes | type[Exception] = json_lines.encode_python(
            document, ascii=True, sort_keys=True
        )
    except TypeError:
        expected = TypeError
    if expected is TypeError:
        with pytest.raises(TypeError):
            json_lines.encode(document, ascii=True, sort_keys=True)
    else:
        assert json_lines.encode(document, ascii=True, sort_keys=True) == expected


def test_a_cycle_is_json_modules_value_error(native: Any) -> None:
    """Nested past its depth limit the native encoder gives up; json names the cycle."""
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        json_lines.encode(cycle, ascii=True, sort_keys=False)


def test_deep_but_finite_documents_are_encoded_whole(native: Any) -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = {"k": [deep]}
    expected = json_lines.encode_python(deep, ascii=True, sort_keys=True)
    assert json_lines.encode(deep, ascii=True, sort_keys=True) == expected


def test_the_sidecar_loads_it_without_sysconfig(native: Any) -> None:
    """The sidecar loads the encoder (its audit and log lines use it) and nothing more for it:
    the extension's file name comes from ``importlib.machinery``, not ``sysconfig`` (about
    0.3 MiB the sidecar does not otherwise load)."""
    code = (
        "import sys\n"
        "import gossamer.proxy.process.main, gossamer.audit_chain\n"
        "assert 'gossamer.json_lines.native._encode' in sys.modules, 'not loaded'\n"
        "assert 'sysconfig' not in sys.modules, 'sysconfig loaded'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
