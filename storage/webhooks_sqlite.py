"""The SQLite half of the webhook outbox: a mixin of ``SqliteMetaStore``, which owns the
connection and the one-transaction-at-a-time lock this code runs under."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from .meta import NoticeRow, NoticeState, NoticeWrites

_COLUMNS = (
    "notice_id, sid, sequence, event_type, url, secret, payload, created_at, attempts, state,"
    " reason, finished_at"
)


def _time_text(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: the store only keeps aware times")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")  # fixed width: sortable


def _row(values: Any) -> NoticeRow:
    (notice_id, sid, sequence, event_type, url, secret, payload, created_at, attempts, state,
     reason, finished_at) = values  # fmt: skip
    return NoticeRow(
        notice_id=notice_id,
        sid=sid,
        sequence=sequence,
        event_type=event_type,
        url=url,
        secret=secret,
        payload=payload.encode(),
        created_at=datetime.fromisoformat(created_at).astimezone(UTC),
        attempts=attempts,
        state=NoticeState(state),
        reason=reason,
        finished_at=None if finished_at is None else datetime.fromisoformat(finished_at),
    )


class SqliteWebhookOutbox:
    """The ``NoticeStore`` methods of the metadata store, in its SQLite file."""

    def _tx(self, *, write: bool = True) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError  # SqliteMetaStore's

    async def write_notices(self, writes: NoticeWrites) -> None:
        """In one transaction: insert ``added`` (and advance each sid's last sequence), record
        attempts, delete delivered notices, mark given-up ones; ids not stored are ignored.

        A notice whose (sid, sequence) is taken raises ``sqlite3.IntegrityError`` and nothing of
        the batch is written: a sequence number is never handed out twice.
        """
        if not writes:
            return
        async with self._tx() as db:
            if writes.added:
                await db.executemany(
                    f"INSERT INTO webhook_notices ({_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.notice_id,
                            r.sid,
                            r.sequence,
                            r.event_type,
                            r.url,
                            r.secret,
                            r.payload.decode(),
                            _time_text(r.created_at),
                            r.attempts,
                            r.state.value,
                            r.reason,
                            None if r.finished_at is None else _time_text(r.finished_at),
                        )
                        for r in writes.added
                    ],
                )
                await db.executemany(
                    "INSERT INTO webhook_sequences (sid, last_sequence, updated_at)"
                    " VALUES (?, ?, ?) ON CONFLICT (sid) DO UPDATE SET"
                    " last_sequence = MAX(last_sequence, excluded.last_sequence),"
                    " updated_at = excluded.updated_at",
                    [(r.sid, r.sequence, _time_text(r.created_at)) for r in writes.added],
                )
            pending = NoticeState.PENDING.value
            if writes.attempts:
                await db.executemany(
                    "UPDATE webhook_notices SET attempts = ?, reason = ?"
                    " WHERE notice_id = ? AND state = ?",
                    [(n, why, nid, pending) for nid, (n, why) in writes.attempts.items()],
                )
            if writes.delivered:
                await db.executemany(
                    "DELETE FROM webhook_notices WHERE notice_id = ?",
                    [(nid,) for nid in writes.delivered],
                )
            if writes.given_up:
                await db.executemany(
                    "UPDATE webhook_notices SET state = ?, attempts = ?, reason = ?,"
                    " finished_at = ? WHERE notice_id = ? AND state = ?",
                    [
                        (NoticeState.GIVEN_UP.value, n, why, _time_text(at), nid, pending)
                        for nid, (n, why, at) in writes.given_up.items()
                    ],
                )

    async def list_notices(self, state: NoticeState, sid: str | None = None) -> list[NoticeRow]:
        """Notices in ``state`` (only ``sid``'s when given), oldest first, then by sequence."""
        sql = f"SELECT {_COLUMNS} FROM webhook_notices WHERE state = ?"
        params: tuple[str, ...] = (state.value,)
        if sid is not None:
            sql += " AND sid = ?"
            params = (state.value, sid)
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(sql + " ORDER BY created_at, sid, sequence", params)
        return [_row(r) for r in rows]

    async def last_notice_sequence(self, sid: str) -> int | None:
        """The highest sequence ever given to ``sid``'s notices, or ``None``."""
        async with self._tx(write=False) as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT last_sequence FROM webhook_sequences WHERE sid = ?", (sid,)
                )
            )
        return int(rows[0][0]) if rows else None

    async def prune_notices(self, given_up_before: datetime, sequences_before: datetime) -> int:
        """Forget notices given up before the first time and sequence counters untouched since
        the second (a sid with a notice still stored keeps its counter); rows removed."""
        async with self._tx() as db:
            notices = await db.execute(
                "DELETE FROM webhook_notices WHERE state = ? AND finished_at < ?",
                (NoticeState.GIVEN_UP.value, _time_text(given_up_before)),
            )
            sequences = await db.execute(
                "DELETE FROM webhook_sequences WHERE updated_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM webhook_notices n WHERE n.sid = webhook_sequences.sid)",
                (_time_text(sequences_before),),
            )
            return notices.rowcount + sequences.rowcount
