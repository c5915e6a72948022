"""Group commit for metadata writes that come in bursts: each change joins the open batch, and
one task writes a batch at a time, in one transaction, while the next one fills.

A burst of N changes costs about two transactions, not N, and a caller that needs its change
durable waits at most for the batch being written and its own. Used by the webhook outbox
(``api.webhooks_outbox``) and the cloud recording state (``api.cloud_recording_state``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

B = TypeVar("B")


class GroupCommit(Generic[B]):
    """Writes batches of type ``B`` with ``write`` from one task, one at a time, in order.

    Subclasses add to ``self._open`` (the batch filling) and call ``_kick``, which returns the
    future of that batch: resolved once it is written, or failed with the store's error.
    Await it through ``asyncio.shield`` (it is shared), or let it go: a failure nobody awaits
    is reported by ``_failed``.
    """

    def __init__(self, new_batch: Callable[[], B], write: Callable[[B], Awaitable[None]]) -> None:
        self._new_batch = new_batch
        self._write = write
        self._open: B = new_batch()
        self._open_done: asyncio.Future[None] | None = None  # resolved when it is written
        self._writing: asyncio.Future[None] | None = None  # the batch being written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written
        self.errors = 0  # transactions that failed

    def _start_task(self, name: str) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    @property
    def started(self) -> bool:
        """The writing task runs."""
        return self._task is not None

    async def flush(self) -> None:
        """Wait until every change made so far is written (or has failed)."""
        waiting = self._open_done or self._writing  # batches are written in order
        if waiting is not None:
            await asyncio.wait([waiting])

    async def aclose(self) -> None:
        """Write what is pending, then stop; calling it twice is harmless."""
        if self._task is None:
            return
        await self.flush()
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _kick(self) -> asyncio.Future[None]:
        if self._open_done is None:
            self._open_done = asyncio.get_running_loop().create_future()
            self._open_done.add_done_callback(_consume)  # a failure nobody awaits: see _failed
            self._wake.set()
        return self._open_done

    def _failed(self, batch: B, exc: Exception) -> None:
        """A batch could not be written (log what it held and what that means)."""

    async def _after_write(self) -> None:
        """Called after each batch, written or not (housekeeping)."""

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, done = self._open, self._open_done
            self._open, self._open_done = self._new_batch(), None
            if done is None:
                continue
            self._writing = done
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                done.cancel()
                raise
            except Exception as exc:
                self.errors += 1
                self._failed(batch, exc)
                done.set_exception(exc)
            else:
                self.batches += 1
                done.set_result(None)
            finally:
                self._writing = None
            await self._after_write()


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: asyncio would otherwise log it once more at collection
