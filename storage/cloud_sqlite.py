"""The SQLite half of the cloud recording store: a mixin of ``SqliteMetaStore``, which owns the
connection and the one-transaction-at-a-time lock this code runs under."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from .meta import CloudResourceRow, CloudSegmentRow, CloudSessionRow, CloudWrites

_RESOURCE_COLUMNS = "resource_id, node, appid, cname, uid, acquired_at, request, sid"
_SESSION_COLUMNS = (
    "sid, resource_id, node, appid, cname, uid, mode, status, store_id, started_at, updated_at,"
    " ended_at, exit_reason, uploading_status, state"
)
_SEGMENT_COLUMNS = "sid, playlist, seq, uri, duration_s, program_date_time, discontinuity"


def _text(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: the store only keeps aware times")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")  # fixed width: sortable


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _resource(values: Any) -> CloudResourceRow:
    resource_id, node, appid, cname, uid, acquired_at, request, sid = values
    return CloudResourceRow(
        resource_id, node, appid, cname, uid, _time(acquired_at), json.loads(request), sid
    )


def _session(values: Any) -> CloudSessionRow:
    (sid, resource_id, node, appid, cname, uid, mode, status, store_id, started_at, updated_at,
     ended_at, exit_reason, uploading_status, state) = values  # fmt: skip
    return CloudSessionRow(
        sid=sid,
        resource_id=resource_id,
        node=node,
        appid=appid,
        cname=cname,
        uid=uid,
        mode=mode,
        status=status,
        store_id=store_id,
        started_at=_time(started_at),
        updated_at=_time(updated_at),
        ended_at=None if ended_at is None else _time(ended_at),
        exit_reason=exit_reason,
        uploading_status=uploading_status,
        state=json.loads(state),
    )


def _segment(values: Any) -> CloudSegmentRow:
    sid, playlist, seq, uri, duration_s, program_date_time, discontinuity = values
    return CloudSegmentRow(
        sid, playlist, seq, uri, duration_s, _time(program_date_time), bool(discontinuity)
    )


def _resource_values(r: CloudResourceRow) -> tuple[Any, ...]:
    return (r.resource_id, r.node, r.appid, r.cname, r.uid, _text(r.acquired_at),
            _json(r.request), r.sid)  # fmt: skip


def _session_values(s: CloudSessionRow) -> tuple[Any, ...]:
    ended = None if s.ended_at is None else _text(s.ended_at)
    return (s.sid, s.resource_id, s.node, s.appid, s.cname, s.uid, s.mode, s.status, s.store_id,
            _text(s.started_at), _text(s.updated_at), ended, s.exit_reason, s.uploading_status,
            _json(s.state))  # fmt: skip


def _segment_values(g: CloudSegmentRow) -> tuple[Any, ...]:
    return (g.sid, g.playlist, g.seq, g.uri, g.duration_s, _text(g.program_date_time),
            int(g.discontinuity))  # fmt: skip


class SqliteCloudRecordings:
    """The ``CloudRecordingStore`` methods of the metadata store, in its SQLite file."""

    def _tx(self, *, write: bool = True) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError  # SqliteMetaStore's

    async def write_cloud(self, writes: CloudWrites) -> None:
        """In one transaction: upsert resources then sessions, insert segments, then remove
        what is forgotten (a forgotten session takes its segments along)."""
        if not writes:
            return
        async with self._tx() as db:
            if writes.resources:
                await db.executemany(
                    f"INSERT OR REPLACE INTO cloud_resources ({_RESOURCE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [_resource_values(r) for r in writes.resources.values()],
                )
            if writes.sessions:
                await db.executemany(
                    f"INSERT OR REPLACE INTO cloud_sessions ({_SESSION_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_session_values(s) for s in writes.sessions.values()],
                )
            if writes.segments:
                await db.executemany(
                    f"INSERT OR REPLACE INTO cloud_segments ({_SEGMENT_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [_segment_values(g) for g in writes.segments],
                )
            if writes.forget_sessions:
                sids = [(sid,) for sid in writes.forget_sessions]
                await db.executemany("DELETE FROM cloud_segments WHERE sid = ?", sids)
                await db.executemany("DELETE FROM cloud_sessions WHERE sid = ?", sids)
            if writes.forget_resources:
                await db.executemany(
                    "DELETE FROM cloud_resources WHERE resource_id = ?",
                    [(rid,) for rid in writes.forget_resources],
                )

    async def list_cloud_resources(
        self, node: str, acquired_since: datetime
    ) -> list[CloudResourceRow]:
        """``node``'s resources that started a session, or were acquired since the time."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                f"SELECT {_RESOURCE_COLUMNS} FROM cloud_resources"
                " WHERE node = ? AND (sid IS NOT NULL OR acquired_at >= ?) ORDER BY acquired_at",
                (node, _text(acquired_since)),
            )
        return [_resource(r) for r in rows]

    async def list_cloud_sessions(self, node: str) -> list[CloudSessionRow]:
        """``node``'s sessions, oldest first."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                f"SELECT {_SESSION_COLUMNS} FROM cloud_sessions WHERE node = ?"
                " ORDER BY started_at, sid",
                (node,),
            )
        return [_session(r) for r in rows]

    async def list_cloud_segments(self, sid: str) -> list[CloudSegmentRow]:
        """A session's segments by playlist, then in order."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                f"SELECT {_SEGMENT_COLUMNS} FROM cloud_segments WHERE sid = ?"
                " ORDER BY playlist, seq",
                (sid,),
            )
        return [_segment(r) for r in rows]

    async def prune_cloud(
        self, node: str, resources_before: datetime, ended_before: datetime
    ) -> int:
        """Forget ``node``'s unused resources acquired before the first time and its sessions
        ended before the second (with their resources and segments); the rows removed."""
        async with self._tx() as db:
            old = [
                sid
                for (sid,) in await db.execute_fetchall(
                    "SELECT sid FROM cloud_sessions WHERE node = ? AND ended_at < ?",
                    (node, _text(ended_before)),
                )
            ]
            removed = 0
            for sid in old:
                for table in ("cloud_segments", "cloud_sessions", "cloud_resources"):
                    cursor = await db.execute(f"DELETE FROM {table} WHERE sid = ?", (sid,))
                    removed += cursor.rowcount
            cursor = await db.execute(
                "DELETE FROM cloud_resources WHERE node = ? AND sid IS NULL AND acquired_at < ?",
                (node, _text(resources_before)),
            )
            return removed + cursor.rowcount
