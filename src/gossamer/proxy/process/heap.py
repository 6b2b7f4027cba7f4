"""How a data-plane process uses CPython's cyclic garbage collector.

Reference counting frees almost everything the data path allocates the moment it is done with:
requests, exchanges and closed connections leave no reference cycles behind (the connection
classes break the cycles their parsers and relay ends form when they close; the integration
tests hold them to it). What remains for the cyclic collector is rare (asyncio tasks that end
in an exception, the admin server's streams), so it runs with the interpreter's usual
thresholds, which keeps any such garbage young and small. What exists once start-up is done
lives as long as the process: it is frozen out of every later scan.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Collect what start-up left, then freeze the survivors out of later collections."""
    gc.collect()
    gc.freeze()
