"""The writer pool: every open session's queued frames are written in ticks. One tick takes
what all sessions queued, writes it in a few worker threads (decode, mux and WAL append happen
there, off the event loop), fsyncs the shared WAL once, then acknowledges. Per-frame cost is
a list append on the loop; per-tick cost is a thread hop per worker and one fsync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from typing import Any, Protocol

from .wal import Wal

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.01  # the shortest tick: bounds fsyncs per second; acks wait at most this


class Writable(Protocol):
    """What the pool needs of a recorder."""

    wal_from: int  # the oldest WAL file this session still needs

    def take(self) -> list[tuple[Any, ...]]:
        """Hand over the queued items (the loop side)."""
        ...

    def process(self, items: list[tuple[Any, ...]]) -> Any:
        """Write items (in a worker thread)."""
        ...

    async def written(self, outcome: Any) -> None:
        """Acknowledge what the tick made durable (the loop side)."""
        ...


def _process_chunk(
    chunk: list[tuple[Writable, list[tuple[Any, ...]]]],
) -> list[tuple[Writable, Any]]:
    out: list[tuple[Writable, Any]] = []
    for rec, items in chunk:
        try:
            out.append((rec, rec.process(items)))
        except Exception as exc:  # one session's failure is that session's alone
            out.append((rec, exc))
    return out


class WriterPool:
    """Schedules recorders' writes in ticks on ``threads`` workers of ``executor``."""

    def __init__(
        self, wal: Wal, executor: Executor, *, threads: int, tick_s: float = DEFAULT_TICK_S
    ) -> None:
        self._wal = wal
        self._executor = executor
        self._threads = max(1, threads)
        self._tick_s = tick_s
        self._ready: dict[Writable, None] = {}
        self._members: set[Writable] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._released_below = 0
        self.ticks = 0

    def register(self, rec: Writable) -> None:
        """Count a recorder's WAL needs from now on."""
        self._members.add(rec)

    def unregister(self, rec: Writable) -> None:
        """Forget a recorder (ended or closed)."""
        self._members.discard(rec)
        self._ready.pop(rec, None)

    def schedule(self, rec: Writable) -> None:
        """A recorder has items queued: write them in the next tick."""
        self._ready[rec] = None
        self._wake.set()

    def start(self) -> None:
        """Start ticking."""
        self._task = asyncio.create_task(self._run(), name="writer-pool")

    async def aclose(self) -> None:
        """Stop ticking; harmless twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = loop.time()
            ready, self._ready = self._ready, {}
            work = [(rec, items) for rec in ready if (items := rec.take())]
            if work:
                await self._tick(loop, work)
            rest = self._tick_s - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)  # group more frames per fsync

    async def _tick(
        self, loop: asyncio.AbstractEventLoop, work: list[tuple[Writable, list[tuple[Any, ...]]]]
    ) -> None:
        self.ticks += 1
        chunks: list[list[tuple[Writable, list[tuple[Any, ...]]]]] = [
            [] for _ in range(self._threads)
        ]
        loads = [0] * self._threads
        for rec, items in sorted(work, key=lambda w: -len(w[1])):
            i = loads.index(min(loads))  # the least loaded worker
            chunks[i].append((rec, items))
            loads[i] += len(items)
        results = await asyncio.gather(
            *(loop.run_in_executor(self._executor, _process_chunk, c) for c in chunks if c)
        )
        try:
            await loop.run_in_executor(self._executor, self._wal.sync)
        except OSError as exc:  # the disk failed: nothing of this tick may be acknowledged
            log.critical("WAL sync failed: %s", exc)
            outcomes: list[tuple[Writable, Any]] = [(rec, exc) for rec, _ in work]
        else:
            outcomes = [pair for part in results for pair in part]
        for rec, outcome in outcomes:
            await rec.written(outcome)
        await self._release(loop)

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        oldest = min((m.wal_from for m in self._members), default=self._wal.index)
        if oldest > self._released_below:
            self._released_below = oldest
            await loop.run_in_executor(self._executor, self._wal.release, [oldest])
