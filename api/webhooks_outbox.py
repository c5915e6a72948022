"""The webhook notifier's outbox writer: every change to the stored notices, group-committed.

Why this shape: a notice must be in the metadata store before ``Notifier.notify`` returns, and a
recording raises notices while it writes segments, so a transaction per notice would queue
behind (and hold up) the store's other writers. Instead every change (a new notice, an attempt,
a delivery, a give-up) joins the batch that is open; one task writes the open batch in one
transaction while the next one fills. A burst of N notices costs about two transactions, not N,
and the caller waits at most for the batch being written and its own.

Only a new notice is waited for. A delivery or attempt that a failed write loses is logged; the
worst it causes is a notice sent again after a restart, with the same ``noticeId``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from storage.group_commit import GroupCommit
from storage.meta import NoticeRow, NoticeStore, NoticeWrites

log = logging.getLogger(__name__)

GIVEN_UP_KEEP_S = 7 * 86400.0  # a given-up notice stays this long, for an operator to see why
# a sid's sequence counter outlives any session: a resource lasts at most 720 hours (30 days)
SEQUENCE_KEEP_S = 31 * 86400.0
PRUNE_EVERY_S = 3600.0


class OutboxWriter(GroupCommit[NoticeWrites]):
    """Writes ``NoticeWrites`` batches to a ``NoticeStore`` from one task, one at a time."""

    def __init__(self, store: NoticeStore) -> None:
        super().__init__(NoticeWrites, store.write_notices)
        self._store = store
        self._next_prune = 0.0

    async def start(self) -> None:
        """Forget what is past keeping, then start the writing task."""
        await self._prune()
        self._start_task("webhook-outbox")

    def add(self, row: NoticeRow) -> asyncio.Future[None]:
        """Store a new notice; the future is resolved when it is written (or fails with the
        store's error). Await it through ``asyncio.shield``: it is shared with the batch."""
        self._open.added.append(row)
        return self._kick()

    def attempted(self, notice_id: str, attempts: int, error: str) -> None:
        """Record a failed attempt, so a restart does not start counting again."""
        self._open.attempts[notice_id] = (attempts, error)
        self._kick()

    def delivered(self, notice_id: str) -> None:
        """Remove a notice the receiver accepted."""
        self._open.attempts.pop(notice_id, None)
        self._open.delivered.append(notice_id)
        self._kick()

    def given_up(self, notice_id: str, attempts: int, reason: str) -> None:
        """Keep a notice that will not be sent, with why, so a restart does not retry it."""
        self._open.attempts.pop(notice_id, None)
        self._open.given_up[notice_id] = (attempts, reason, datetime.now(UTC))
        self._kick()

    def _failed(self, batch: NoticeWrites, exc: Exception) -> None:
        log.error(
            "webhook outbox write failed: %d new notices refused, %d deliveries and"
            " %d give-ups not recorded (they may be sent again after a restart): %s",
            len(batch.added),
            len(batch.delivered),
            len(batch.given_up),
            exc,
        )

    async def _after_write(self) -> None:
        if time.monotonic() >= self._next_prune:
            await self._prune()

    async def _prune(self) -> None:
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        now = datetime.now(UTC)
        try:
            removed = await self._store.prune_notices(
                now - timedelta(seconds=GIVEN_UP_KEEP_S), now - timedelta(seconds=SEQUENCE_KEEP_S)
            )
        except Exception as exc:  # housekeeping: the next prune tries again
            log.warning("webhook outbox prune failed: %s", exc)
            return
        if removed:
            log.info("webhook outbox: pruned %d old given-up notices and counters", removed)
