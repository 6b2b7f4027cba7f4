"""The compiled data plane is what runs outside the unit tests (``gossamer.compiled``)."""

from __future__ import annotations

import gossamer.proxy.http1.downstream
from gossamer import compiled
from tests.tools import require


def test_the_build_is_current_and_loaded_in_this_session() -> None:
    """``make test`` builds it first, so here (a session without unit tests) it is in use."""
    require(
        (compiled.BUILD_DIR / compiled.MANIFEST).exists(),
        "the compiled data plane (python -m gossamer.build_native)",
    )
    assert compiled.STATE == "compiled"
    loaded = gossamer.proxy.http1.downstream.__file__
    assert loaded is not None and loaded.startswith(str(compiled.BUILD_DIR))
