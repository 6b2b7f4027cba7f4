"""Tests that need a real external tool (PostgreSQL, h2load, a C compiler, HAProxy...).

``make test`` installs every such tool, so in CI (``CI`` set) a missing tool is a failure:
a story test must never be silently skipped there. Elsewhere it is a skip naming the tool.
"""

from __future__ import annotations

import os

import pytest


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when ``what`` is not available."""
    if available:
        return
    message = f"{what} is not available"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; `make test` should have installed it")
    pytest.skip(message)
