"""Shipping the audit spool to the control plane: at least once, each record once stored.

``AuditShipper`` runs in the process that holds the control-plane stream (the sidecar, or
the supervisor of a multi-process sidecar). It reads every chain's spool directory under
``<workdir>/audit/`` (``observe/audit_spool.py``; a worker writes one chain each) and sends
its records in order, a batch at a time (``audit`` message: the chain, the record lines as
written, and, at most every ``CHECKPOINT_INTERVAL``, a checkpoint signed with the workload key
over the last record sent). The control plane stores a batch, then answers ``audit-ack`` with
the highest ``seq`` it holds; only then does the shipper move on, note the acknowledged
``seq`` in the chain's ``acked`` file and delete the segments wholly acknowledged. A batch
not acknowledged (the stream broke, the control plane is down or slow) is sent again from
the last acknowledged record: the control plane keeps one record per (chain, seq), so what
arrives twice is stored once (docs/internals.md §15).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossamer.audit_chain import checkpoint_payload
from gossamer.identity.signer import SignError, sign
from gossamer.proxy.observe.audit_spool import segment_start, segments
from gossamer.proxy.tasks import spawn

if TYPE_CHECKING:
    from gossamer.identity.credentials import CredentialFiles
    from gossamer.proxy.process.control_client import ControlClient

__all__ = ["AuditShipper", "start_shipping"]

log = logging.getLogger("gossamer.proxy.audit")

SHIP_INTERVAL = 0.5  # between looks at a spool with nothing left to send
MAX_BATCH = 500  # records per message
MAX_BATCH_BYTES = 4 * 1024 * 1024
ACK_TIMEOUT = 15.0
CHECKPOINT_INTERVAL = 10.0


class _Chain:
    """What the shipper knows of one spool directory."""

    def __init__(self, directory: Path, chain: str) -> None:
        self.directory = directory
        self.chain = chain
        self.acked = _read_acked(directory)
        self.last_hash = ""  # of the last record sent (what a checkpoint signs)
        self.last_seq = self.acked
        self.signed_seq = 0  # of the last checkpoint acknowledged
        self.signed_at = 0.0
        self.cursor: Cursor | None = None  # where the records after ``last_seq`` start
        self.next_cursor: Cursor | None = None  # where the batch in flight ends


def _read_acked(directory: Path) -> int:
    try:
        return int((directory / "acked").read_text(encoding="ascii").strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_acked(directory: Path, seq: int) -> None:
    temporary = directory / "acked.tmp"
    temporary.write_text(f"{seq}\n", encoding="ascii")
    os.replace(temporary, directory / "acked")


Cursor = tuple[Path, int]  # a segment and the offset of the next line to read in it


def read_after(
    directory: Path, acked: int, cursor: Cursor | None
) -> tuple[list[tuple[int, str, str]], Cursor | None]:
    """Up to a batch of whole record lines after ``acked``, as (seq, hash, line), and where
    the next batch starts. ``cursor`` (where the last batch ended) saves looking for them."""
    found: list[tuple[int, str, str]] = []
    size = 0
    files = segments(directory)
    if cursor is not None and cursor[0] in files:
        start, offset = files.index(cursor[0]), cursor[1]
    else:
        start, offset = 0, 0
        for i, path in enumerate(files):  # the last segment starting at or before acked + 1
            if segment_start(path)[0] <= acked + 1:
                start = i
    next_cursor = cursor
    for path in files[start:]:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read(MAX_BATCH_BYTES)
        end = data.rfind(b"\n") + 1  # a line being written is left for the next look
        position = 0
        while position < end:
            line_end = data.index(b"\n", position) + 1
            raw = data[position:line_end]
            position = line_end
            record = json.loads(raw)
            seq = int(record["seq"])
            if seq <= acked:
                continue
            found.append((seq, str(record["hash"]), raw[:-1].decode("ascii")))
            size += len(raw)
            if len(found) >= MAX_BATCH or size >= MAX_BATCH_BYTES:
                return found, (path, offset + position)
        next_cursor = (path, offset + end)
        if end < len(data) or len(data) >= MAX_BATCH_BYTES:
            break  # the rest of this segment is not written yet, or not read yet
        offset = 0
    return found, next_cursor


def delete_acknowledged(directory: Path, acked: int) -> None:
    """Remove each segment whose records are all acknowledged, but the newest (the writer's:
    its name holds the chain's head when it has no record yet)."""
    files = segments(directory)
    for path, after in itertools.pairwise(files):
        if segment_start(after)[0] - 1 <= acked:
            path.unlink(missing_ok=True)


class AuditShipper:
    """Sends every chain's records (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        send: Callable[[dict[str, Any]], bool],
        connected: Callable[[], bool],
        credentials: Callable[[], tuple[Path, Path]],
    ) -> None:
        self.root = root  # <workdir>/audit
        self._send = send
        self._connected = connected
        self._credentials = credentials  # () -> (certificate chain PEM path, key path)
        self._chains: dict[str, _Chain] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.shipped = 0  # records acknowledged in this process
        self.task: asyncio.Task[None] | None = None

    def on_ack(self, message: dict[str, Any]) -> None:
        """The control plane's ``audit-ack``."""
        waiter = self._waiting.pop(str(message.get("chain")), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def run(self) -> None:
        while True:
            busy = False
            if self._connected():
                for chain in self._scan():
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        busy |= await self._ship(chain)
            if not busy:
                await asyncio.sleep(SHIP_INTERVAL)

    def _scan(self) -> list[_Chain]:
        try:
            directories = [d for d in self.root.iterdir() if (d / "chain").is_file()]
        except FileNotFoundError:
            return []
        for directory in directories:
            key = str(directory)
            if key not in self._chains:
                chain = (directory / "chain").read_text(encoding="ascii").strip()
                self._chains[key] = _Chain(directory, chain)
        return list(self._chains.values())

    async def _ship(self, chain: _Chain) -> bool:
        """Send one batch of ``chain`` and wait for its ack; whether there was one to send."""
        batch, chain.next_cursor = await asyncio.to_thread(
            read_after, chain.directory, chain.acked, chain.cursor
        )
        if batch:
            chain.last_seq, chain.last_hash = batch[-1][0], batch[-1][1]
        message: dict[str, Any] = {"type": "audit", "chain": chain.chain,
                                   "records": [line for _, _, line in batch]}  # fmt: skip
        due = time.monotonic() - chain.signed_at >= CHECKPOINT_INTERVAL
        if chain.last_hash and chain.last_seq > chain.signed_seq and due:
            chain.signed_at = time.monotonic()  # tried: the next try waits its turn
            checkpoint = await self._checkpoint(chain)
            if checkpoint is not None:
                message["checkpoint"] = checkpoint
        if not batch and "checkpoint" not in message:
            return False
        reply = await self._exchange(chain, message)
        if reply is None:
            chain.cursor = None  # sent again from the last acknowledged record
            return False
        error = reply.get("error")
        if error is not None:
            log.warning("the control plane refused audit records of chain %s: %s",
                        chain.chain, error)  # fmt: skip
            chain.cursor = None
            return False
        seq = int(reply.get("seq", 0))
        if "checkpoint" in message:
            chain.signed_seq = message["checkpoint"]["seq"]
        chain.cursor = chain.next_cursor if seq == chain.last_seq else None
        if seq > chain.acked:
            self.shipped += seq - chain.acked
            chain.acked = seq
            await asyncio.to_thread(self._settle, chain.directory, seq)
        return bool(batch)

    @staticmethod
    def _settle(directory: Path, seq: int) -> None:
        """Free what the control plane holds, then note how far it holds the chain. In that
        order: on a full disk the note cannot be written before there is room, and a note
        that is lost only means records sent again (stored once)."""
        delete_acknowledged(directory, seq)
        try:
            _write_acked(directory, seq)
        except OSError as exc:
            log.warning("cannot note the acknowledged audit records in %s: %s", directory, exc)

    async def _exchange(self, chain: _Chain, message: dict[str, Any]) -> dict[str, Any] | None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[chain.chain] = waiter
        if not self._send(message):
            self._waiting.pop(chain.chain, None)
            return None
        try:
            return await asyncio.wait_for(waiter, ACK_TIMEOUT)
        except TimeoutError:
            log.info("no audit-ack for chain %s in %g s; sending again", chain.chain, ACK_TIMEOUT)
            return None
        finally:
            self._waiting.pop(chain.chain, None)

    async def _checkpoint(self, chain: _Chain) -> dict[str, Any] | None:
        """A signed checkpoint over the last record read (None when signing failed)."""
        cert_path, key_path = self._credentials()
        now = time.time()
        payload = checkpoint_payload(chain.chain, chain.last_seq, chain.last_hash, now)
        try:
            signature = await sign(key_path, payload)
            certificate = cert_path.read_text(encoding="ascii")
        except (SignError, OSError) as exc:
            log.warning("cannot sign an audit checkpoint: %s", exc)
            return None
        return {"chain": chain.chain, "seq": chain.last_seq, "head": chain.last_hash,
                "time": now, "certificate": certificate, "signature": signature}  # fmt: skip


def start_shipping(client: ControlClient, workdir: Path, files: CredentialFiles) -> AuditShipper:
    """An ``AuditShipper`` of ``<workdir>/audit`` on ``client``'s stream, running until its
    ``task`` is cancelled."""
    shipper = AuditShipper(
        workdir / "audit", client.send, lambda: client.connected,
        lambda: (files.cert_path, files.key_path),
    )  # fmt: skip
    client.handlers["audit-ack"] = shipper.on_ack
    shipper.task = spawn(shipper.run(), name="audit shipper")
    return shipper
