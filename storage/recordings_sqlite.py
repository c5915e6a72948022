"""The SQLite half of the recordings and tenants: a mixin of ``SqliteMetaStore``, which owns
the connection and the one-transaction-at-a-time lock this code runs under."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from .errors import MetaConflict
from .recordings import RecordingPage, RecordingRow, Uuid7Source

_COLUMNS = tuple(f.name for f in dataclasses.fields(RecordingRow))
_DATETIMES = frozenset({"started_at", "ended_at", "created_at", "updated_at"})
_BOOLS = frozenset({"has_video", "has_audio"})
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM recordings"


def _time_text(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: the store only keeps aware times")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")  # fixed width: sortable


def _value(name: str, value: Any) -> Any:
    if name in _DATETIMES:
        return _time_text(value)
    if name in _BOOLS:
        return int(bool(value))
    if name == "navigations":
        return json.dumps(value, separators=(",", ":"))
    return value


def _row(values: Any) -> RecordingRow:
    out = dict(zip(_COLUMNS, values, strict=True))
    for name in _DATETIMES:
        text = out[name]
        out[name] = None if text is None else datetime.fromisoformat(text).astimezone(UTC)
    for name in _BOOLS:
        out[name] = bool(out[name])
    out["navigations"] = json.loads(out["navigations"])
    return RecordingRow(**out)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class SqliteRecordings:
    """Tenants, users and recordings in the metadata store's SQLite file."""

    _ids: Uuid7Source

    def _tx(self, *, write: bool = True) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError  # SqliteMetaStore's

    async def _seed_recording_ids(self) -> None:
        async with self._tx(write=False) as db:
            rows = list(await db.execute_fetchall("SELECT MAX(recording_id) FROM recordings"))
        self._ids.observe(rows[0][0] if rows else None)

    # tenants and users ---------------------------------------------------------------------

    async def ensure_tenant(self, ref: str) -> str:
        """The id of the tenant ``ref`` names (a UUID, or a name), created when missing."""
        now = _time_text(datetime.now(UTC))
        async with self._tx() as db:
            if _is_uuid(ref):
                tenant_id = str(uuid.UUID(ref))
                await db.execute(
                    "INSERT OR IGNORE INTO tenants (tenant_id, name, created_at)"
                    " VALUES (?, NULL, ?)",
                    (tenant_id, now),
                )
                return tenant_id
            rows = list(
                await db.execute_fetchall("SELECT tenant_id FROM tenants WHERE name = ?", (ref,))
            )
            if rows:
                return str(rows[0][0])
            tenant_id = str(uuid.uuid4())
            await db.execute(
                "INSERT INTO tenants (tenant_id, name, created_at) VALUES (?, ?, ?)",
                (tenant_id, ref, now),
            )
            return tenant_id

    async def ensure_user(self, tenant_id: str, ref: str | None) -> str:
        """The id of the user ``ref`` names in the tenant (a UUID, a name, or ``None`` for a new
        user), created when missing; ``MetaConflict`` when that UUID is another tenant's user."""
        now = _time_text(datetime.now(UTC))
        async with self._tx() as db:
            if ref is not None and not _is_uuid(ref):
                rows = list(
                    await db.execute_fetchall(
                        "SELECT user_id FROM users WHERE tenant_id = ? AND name = ?",
                        (tenant_id, ref),
                    )
                )
                if rows:
                    return str(rows[0][0])
                user_id, name = str(uuid.uuid4()), ref
            else:
                user_id, name = str(uuid.UUID(ref)) if ref else str(uuid.uuid4()), None
                rows = list(
                    await db.execute_fetchall(
                        "SELECT tenant_id FROM users WHERE user_id = ?", (user_id,)
                    )
                )
                if rows:
                    if rows[0][0] != tenant_id:
                        raise MetaConflict(f"user {user_id} belongs to another tenant")
                    return user_id
            await db.execute(
                "INSERT INTO users (user_id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
                (user_id, tenant_id, name, now),
            )
            return user_id

    # recordings ----------------------------------------------------------------------------

    def new_recording_id(self) -> str:
        """A UUIDv7 greater than every recording id made before it (the list order)."""
        return self._ids.next()

    async def create_recording(self, row: RecordingRow) -> None:
        """Insert a recording; ``MetaConflict`` if the id exists."""
        values = [_value(name, getattr(row, name)) for name in _COLUMNS]
        try:
            async with self._tx() as db:
                await db.execute(
                    f"INSERT INTO recordings ({', '.join(_COLUMNS)})"
                    f" VALUES ({', '.join('?' * len(values))})",
                    values,
                )
        except sqlite3.IntegrityError as exc:
            raise MetaConflict(f"recording {row.recording_id} already exists") from exc

    async def get_recording(self, recording_id: str, tenant_id: str | None) -> RecordingRow | None:
        """The recording, or ``None``; with ``tenant_id``, only when it is that tenant's."""
        sql, params = _SELECT + " WHERE recording_id = ?", [recording_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        async with self._tx(write=False) as db:
            rows = list(await db.execute_fetchall(sql, params))
        return _row(rows[0]) if rows else None

    async def list_recordings(
        self,
        tenant_id: str,
        limit: int,
        *,
        before: str | None = None,
        project_id: str | None = None,
        status: str | None = None,
    ) -> RecordingPage:
        """A tenant's recordings newest first, those with ids below ``before`` when given."""
        where, params = ["tenant_id = ?"], [tenant_id]
        for clause, value in (
            ("recording_id < ?", before),
            ("project_id = ?", project_id),
            ("status = ?", status),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY recording_id DESC LIMIT ?"
        async with self._tx(write=False) as db:
            rows = [_row(r) for r in await db.execute_fetchall(sql, [*params, limit + 1])]
        return RecordingPage(rows[:limit], more=len(rows) > limit)

    async def update_recording(
        self, recording_id: str, *, only_from: tuple[str, ...] = (), **changes: Any
    ) -> RecordingRow | None:
        """Set the named columns and ``updated_at``; ``None`` when there is no such recording,
        or when ``only_from`` is given and its status is not one of those (compare-and-set)."""
        unknown = set(changes) - set(_COLUMNS[1:])
        if unknown:
            raise ValueError(f"not updatable recording fields: {sorted(unknown)}")
        changes.setdefault("updated_at", datetime.now(UTC))
        names = sorted(changes)  # only validated field names are spliced into the SQL
        values = [_value(name, changes[name]) for name in names]
        sql = f"UPDATE recordings SET {', '.join(f'{n} = ?' for n in names)} WHERE recording_id = ?"
        params = [*values, recording_id]
        if only_from:
            sql += f" AND status IN ({', '.join('?' * len(only_from))})"
            params += only_from
        async with self._tx() as db:
            cursor = await db.execute(sql, params)
            if cursor.rowcount == 0:
                return None
            rows = list(
                await db.execute_fetchall(_SELECT + " WHERE recording_id = ?", (recording_id,))
            )
        return _row(rows[0])

    async def delete_recording(self, recording_id: str, tenant_id: str) -> bool:
        """Remove the tenant's recording row; whether there was one."""
        async with self._tx() as db:
            cursor = await db.execute(
                "DELETE FROM recordings WHERE recording_id = ? AND tenant_id = ?",
                (recording_id, tenant_id),
            )
            return cursor.rowcount > 0

    async def recordings_with_status(self, status: str) -> list[RecordingRow]:
        """Every recording in ``status``, oldest first (the processing job resumes these)."""
        async with self._tx(write=False) as db:
            rows = await db.execute_fetchall(
                _SELECT + " WHERE status = ? ORDER BY recording_id", (status,)
            )
        return [_row(r) for r in rows]
