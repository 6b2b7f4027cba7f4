"""The plain HTTP/1.1 message scanner as a native part (see ``gossamer.native``): its C
source (``scan.c``, which documents what it accepts), the shared object and the CPython
extension built from it, its cffi declarations and prebuilt declarations module, and the
layout of its results."""

from __future__ import annotations

from pathlib import Path

from gossamer.native import NativePart

__all__ = ["DECLARED", "PART", "RESULT_COUNT"]

# Indexes into the uint32_t results array, as ``scan.c`` fills it.
HEAD_END, KEEP_ALIVE, STATUS, TARGET_END = 0, 1, 2, 3
CUT1_START, CUT1_END, CUT2_START, CUT2_END = 4, 5, 6, 7
HOST_START, HOST_END, RID_START, RID_END = 8, 9, 10, 11
TRACE_START, TRACE_END, B3 = 12, 13, 14
USER_AGENT_START, USER_AGENT_END = 15, 16
RESULT_COUNT = 17

DECLARED = """
int gossamer_plain_request(const char *data, size_t len, uint32_t *results);
int gossamer_plain_response(const char *data, size_t len, uint32_t *results);
"""

PART = NativePart(
    name="HTTP/1.1 plain-message scanner",
    source=Path(__file__).with_name("scan.c"),
    library=Path(__file__).with_name("libgossamer_http1.so"),
    declared=DECLARED,
    module="gossamer.protocol.native.prebuilt_declarations",
    module_path=Path(__file__).with_name("prebuilt_declarations.py"),
    switch="GOSSAMER_HTTP1_NATIVE",
    extension="gossamer.protocol.native.scan_extension",
)
