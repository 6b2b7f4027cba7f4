"""The cffi declarations: library version, symbols, and struct layouts against the header."""

from __future__ import annotations

import ctypes.util
import gc
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gossamer.build_native import emit_declarations
from gossamer.native import declared_ffi
from gossamer.protocol.h2 import binding, declarations, native
from tests.tools import require

HEADER = Path("/usr/include/nghttp2/nghttp2.h")

# (type, field) pairs the binding reads or writes; checked against the real header.
FIELDS = [
    ("nghttp2_nv", "name"), ("nghttp2_nv", "value"), ("nghttp2_nv", "namelen"),
    ("nghttp2_nv", "valuelen"), ("nghttp2_nv", "flags"),
    ("nghttp2_frame_hd", "length"), ("nghttp2_frame_hd", "stream_id"),
    ("nghttp2_frame_hd", "type"), ("nghttp2_frame_hd", "flags"),
    ("nghttp2_headers", "cat"), ("nghttp2_goaway", "last_stream_id"),
    ("nghttp2_goaway", "error_code"), ("nghttp2_rst_stream", "error_code"),
    ("nghttp2_data_provider", "read_callback"), ("nghttp2_info", "version_num"),
    ("nghttp2_info", "version_str"), ("nghttp2_settings_entry", "value"),
]  # fmt: skip
TYPES = sorted({t for t, _ in FIELDS} | {"nghttp2_frame", "nghttp2_data_source"})


def test_installed_library_is_at_least_the_declared_version() -> None:
    """The loaded libnghttp2 reports a version no older than the declarations."""
    assert binding.version >= binding.MIN_VERSION


def test_every_declared_function_resolves() -> None:
    """Each declared function exists in the loaded library."""
    for name in binding.FUNCTIONS:
        assert getattr(binding.lib, name) is not None


def test_an_older_library_is_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the minimum version, loading fails naming both versions and the package."""
    monkeypatch.setattr(binding, "MIN_VERSION", (99, 0, 0))
    with pytest.raises(binding.NghttpUnavailable, match=r"older than the 99\.0\.0.*libnghttp2-14"):
        binding._load()


def test_a_missing_library_is_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """When no candidate shared object opens, the error says what to install."""
    monkeypatch.setattr(binding, "LIBRARY_NAMES", ("libnghttp2-does-not-exist.so.99",))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(binding.NghttpUnavailable, match="install the Debian package"):
        binding._load()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.52.0", (1, 52, 0)), ("1.64.0-DEV", (1, 64, 0)), ("2.0", (2, 0, 0))],
)
def test_version_strings_parse(text: str, expected: tuple[int, int, int]) -> None:
    """Version strings with a suffix or fewer parts parse to three numbers."""
    assert binding._parse_version(text) == expected


def test_struct_layouts_match_the_installed_header(tmp_path: Path) -> None:
    """sizeof and offsetof of every struct the binding touches agree with the C compiler."""
    require(
        HEADER.exists() and shutil.which("cc") is not None,
        "nghttp2.h (Debian libnghttp2-dev) with a C compiler",
    )
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <nghttp2/nghttp2.h>",
             "int main(void) {"]  # fmt: skip
    for t in TYPES:
        lines.append(f'  printf("{t} %zu\\n", sizeof({t}));')
    for t, f in FIELDS:
        lines.append(f'  printf("{t}.{f} %zu\\n", offsetof({t}, {f}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    measured = dict(line.rsplit(" ", 1) for line in out.splitlines())
    ffi = binding.ffi
    for t in TYPES:
        assert int(measured[t]) == ffi.sizeof(t), t
    for t, f in FIELDS:
        assert int(measured[f"{t}.{f}"]) == ffi.offsetof(t, f), f"{t}.{f}"


def test_self_check_passes_against_the_loaded_library() -> None:
    """The in-memory exchange reads back every field it sent (raises if not)."""
    from gossamer.protocol.h2.selfcheck import self_check

    self_check()


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "field-by-field"])
def test_header_block_owns_the_names_and_values(
    packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either way of filling the nghttp2_nv[] gives the same pointers, lengths and flags, and
    the returned object alone keeps the names and values alive (compiled code releases other
    locals before the C call)."""
    from gossamer.protocol.h2 import header_arrays as _nv

    monkeypatch.setattr(_nv, "_NV_LAYOUT_OK", packed and _nv._NV_LAYOUT_OK)
    headers = [(b":status", b"200"), (b"authorization", b"secret"), (b"x", b"")]
    nva = _nv.nv_array([(bytes(name), bytes(value)) for name, value in headers])
    gc.collect()
    churn = [bytes([i % 251]) * 64 for i in range(2000)]  # reuse any freed memory
    for i, (name, value) in enumerate(headers):
        nv = nva[i]
        assert binding.ffi.unpack(binding.ffi.cast("char *", nv.name), nv.namelen) == name
        assert binding.ffi.unpack(binding.ffi.cast("char *", nv.value), nv.valuelen) == value
        assert nv.flags == (1 if name == b"authorization" else 0)
    assert len(churn) == 2000


def _parsed_ffi() -> Any:
    import cffi

    parsed = cffi.FFI()
    parsed.cdef(declarations.DECLARED)
    return parsed


def test_prebuilt_declarations_match_the_parsed_ones(tmp_path: Path) -> None:
    """The module ``build_native`` writes declares every type with the same layout as
    parsing the declarations does, and records the text it was made from."""
    out = tmp_path / "prebuilt_declarations.py"
    assert emit_declarations(native.PART, out) is None
    spec = importlib.util.spec_from_file_location(native.DECLARATIONS_MODULE, out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DECLARED == declarations.DECLARED
    prebuilt, parsed = module.ffi, _parsed_ffi()
    for t in TYPES:
        assert prebuilt.sizeof(t) == parsed.sizeof(t), t
    for t, f in FIELDS:
        assert prebuilt.offsetof(t, f) == parsed.offsetof(t, f), (t, f)
    ours, theirs = prebuilt.dlopen("libnghttp2.so.14"), parsed.dlopen("libnghttp2.so.14")
    for name in binding.FUNCTIONS:
        mine = prebuilt.typeof(getattr(ours, name)).cname.replace("struct ", "")
        assert mine == parsed.typeof(getattr(theirs, name)).cname.replace("struct ", ""), name


def test_the_sidecar_uses_the_prebuilt_declarations_when_they_are_current() -> None:
    """After ``make`` (``build_native``), loading the binding parses no C: pycparser is not
    even imported. A stale module is ignored and the declarations are parsed instead."""
    require(native.DECLARATIONS.exists(), "the prebuilt declarations (make runs build_native)")
    code = (
        "import sys; from gossamer.protocol.h2 import binding;"
        "from gossamer.native import declared_ffi;"
        "print(declared_ffi(binding.native_files.PART)[1], 'pycparser' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False"]


def test_stale_prebuilt_declarations_are_not_used() -> None:
    stale = native.PART._replace(declared=declarations.DECLARED + "\nint gossamer_new(void);")
    ffi_, prebuilt = declared_ffi(stale)
    assert not prebuilt
    assert ffi_.sizeof("nghttp2_nv") == binding.ffi.sizeof("nghttp2_nv")
