"""The control plane's writing half of a sidecar stream: a peer that does not read is dropped
rather than buffered for (issue 11, finding 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gossamer.control import stream as stream_module
from gossamer.control.stream import StreamSession


class StuckWriter:
    """A writer whose peer never reads: drain never returns."""

    def __init__(self) -> None:
        self.written = 0
        self.aborted = False
        self.closed = False
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written += len(data)

    async def drain(self) -> None:
        await asyncio.Event().wait()

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def test_a_peer_that_does_not_read_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "MAX_QUEUED_BYTES", 10_000)

    async def scenario() -> None:
        writer = StuckWriter()
        session = StreamSession(writer)  # type: ignore[arg-type]
        big: dict[str, Any] = {"type": "snapshot", "pad": "x" * 3000}
        for _ in range(3):
            session.send(big)
        await asyncio.sleep(0)
        assert not writer.aborted  # under the bound: queued
        for _ in range(5):
            session.send(big)
        assert writer.aborted  # over it: the connection is cut, nothing more is queued
        session.send(big)
        await session.finish()

    asyncio.run(asyncio.wait_for(scenario(), 5))
