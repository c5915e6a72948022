"""The writer pool: every open session's queued frames are written in ticks. Sessions are
shared out among a few lanes; each lane's tick takes what its sessions queued, writes it in a
worker thread (decode, mux and WAL append happen there, off the event loop), fsyncs the
shared WAL once, then acknowledges. Lanes tick side by side. Per-frame cost is a list append
on the loop; per-tick cost is one thread hop and one fsync per lane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from typing import Any, Protocol

from .wal import Wal

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.025  # the shortest tick: bounds fsyncs per second; acks wait at most this


class Writable(Protocol):
    """What the pool needs of a recorder."""

    wal_from: int  # the oldest WAL file this session still needs

    def refresh_wal(self) -> None:
        """The WAL moved to a new file: re-anchor if nothing older is needed (the loop side)."""
        ...

    def take(self) -> list[tuple[Any, ...]]:
        """Hand over the queued items (the loop side)."""
        ...

    def process(self, items: list[tuple[Any, ...]]) -> Any:
        """Write items (in a worker thread)."""
        ...

    async def written(self, outcome: Any) -> None:
        """Acknowledge what the tick made durable (the loop side)."""
        ...


def _process_and_sync(wal: Wal, work: list[tuple[Writable, list[tuple[Any, ...]]]]) -> list[Any]:
    """One lane's tick in its worker thread: write every session's items, then fsync the WAL."""
    out: list[Any] = []
    for rec, items in work:
        try:
            out.append(rec.process(items))
        except Exception as exc:  # one session's failure is that session's alone
            out.append(exc)
    try:
        wal.sync()
    except OSError as exc:  # the disk failed: nothing of this tick may be acknowledged
        log.critical("WAL sync failed: %s", exc)
        return [exc] * len(work)
    return out


class _Lane:
    """A share of the sessions, ticking on its own: lanes run side by side, so one lane's
    loop-side work (acks, spooling) overlaps another's thread work and both cores stay busy."""

    def __init__(self, pool: WriterPool, number: int) -> None:
        self.pool = pool
        self.members: set[Writable] = set()
        self.ready: dict[Writable, None] = {}
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"writer-lane-{number}")

    async def _tick(
        self, loop: asyncio.AbstractEventLoop, work: list[tuple[Writable, list[tuple[Any, ...]]]]
    ) -> None:
        pool = self.pool
        pool.ticks += 1
        outcomes = await loop.run_in_executor(pool.executor, _process_and_sync, pool.wal, work)
        for (rec, _), outcome in zip(work, outcomes, strict=True):
            await rec.written(outcome)
        await pool.release(loop)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self.pool
        while True:
            await self.wake.wait()
            self.wake.clear()
            started = loop.time()
            ready, self.ready = self.ready, {}
            work = [(rec, items) for rec in ready if (items := rec.take())]
            if work:
                try:
                    await self._tick(loop, work)
                except Exception:  # a bug: log it loudly, but keep this lane's sessions going
                    log.exception("writer lane tick failed")
            rest = pool.tick_s - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)  # group more frames per fsync


class WriterPool:
    """Schedules recorders' writes in ticks on ``lanes`` workers of ``executor``."""

    def __init__(
        self, wal: Wal, executor: Executor, *, threads: int, tick_s: float = DEFAULT_TICK_S
    ) -> None:
        self.wal = wal
        self.executor = executor
        self.tick_s = tick_s
        self._lane_count = max(1, threads)
        self._lanes: list[_Lane] = []
        self._lane_of: dict[Writable, _Lane] = {}
        self._released_below = 0
        self._seen_index = 0
        self._released = asyncio.Event()
        self._release_task: asyncio.Task[None] | None = None
        self.ticks = 0

    def start(self) -> None:
        """Start ticking (once; registering a recorder starts it too)."""
        if not self._lanes:
            self._lanes = [_Lane(self, i) for i in range(self._lane_count)]

    def register(self, rec: Writable) -> None:
        """Give a recorder a lane (the least busy) and count its WAL needs from now on."""
        if not self._lanes:
            self.start()
        lane = min(self._lanes, key=lambda lane: len(lane.members))
        lane.members.add(rec)
        self._lane_of[rec] = lane

    def unregister(self, rec: Writable) -> None:
        """Forget a recorder (ended or closed)."""
        lane = self._lane_of.pop(rec, None)
        if lane is not None:
            lane.members.discard(rec)
            lane.ready.pop(rec, None)

    def schedule(self, rec: Writable) -> None:
        """A recorder has items queued: write them in its lane's next tick."""
        lane = self._lane_of.get(rec)
        if lane is not None:
            lane.ready[rec] = None
            lane.wake.set()

    async def aclose(self) -> None:
        """Stop ticking; harmless twice."""
        if self._release_task is not None:
            with contextlib.suppress(Exception):
                await self._release_task
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.task.cancel()
        for lane in lanes:
            with contextlib.suppress(asyncio.CancelledError):
                await lane.task

    async def release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Delete WAL files no open session needs any more."""
        if self.wal.index != self._seen_index:  # rotated: idle sessions may let go of old files
            self._seen_index = self.wal.index
            for rec in list(self._lane_of):
                rec.refresh_wal()
        oldest = min((rec.wal_from for rec in self._lane_of), default=self.wal.index)
        if oldest > self._released_below:
            self._released_below = oldest
            await loop.run_in_executor(self.executor, self.wal.release, [oldest])
            self._released.set()
            self._released = asyncio.Event()

    def release_soon(self) -> None:
        """A session let go of old WAL files outside a tick (its segment reached the spool)."""
        if self._release_task is None or self._release_task.done():
            loop = asyncio.get_running_loop()
            self._release_task = loop.create_task(self.release(loop), name="wal-release")

    async def wait_released(self) -> None:
        """Wait until the next time old WAL files are deleted."""
        await self._released.wait()
