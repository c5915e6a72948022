"""The SQLite metadata store: the embedded default, on aiosqlite's own worker thread."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .cloud_sqlite import SqliteCloudRecordings
from .errors import MetaConflict
from .meta import ApiKeyRow, AppRow, CustomerRow, FileRow, SessionEventRow, SessionRow
from .recordings import Uuid7Source
from .recordings_sqlite import SqliteRecordings
from .webhooks_sqlite import SqliteWebhookOutbox

BUSY_TIMEOUT_MS = 5000  # how long a write waits for another connection's lock
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_SESSION_COLUMNS = tuple(f.name for f in dataclasses.fields(SessionRow))
_SESSION_DATETIMES = frozenset({"created_at", "updated_at", "ended_at"})
_EVENT_COLUMNS = "event_id, session_id, event_type, created_at, acked_at"
_FILE_COLUMNS = tuple(f.name for f in dataclasses.fields(FileRow))
_API_KEY_COLUMNS = tuple(f.name for f in dataclasses.fields(ApiKeyRow))


def _to_text(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: the store only keeps aware times")
    # fixed width (always microseconds, always +00:00) so text order is time order
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _from_text(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def _req(text: str) -> datetime:
    dt = _from_text(text)
    assert dt is not None  # NOT NULL columns; an internal invariant, not input
    return dt


def _session_from(row: Iterable[Any]) -> SessionRow:
    values = dict(zip(_SESSION_COLUMNS, row, strict=True))
    for name in _SESSION_DATETIMES:
        values[name] = _from_text(values[name])
    values["extra"] = json.loads(values["extra"])
    return SessionRow(**values)


def _session_value(name: str, value: Any) -> Any:
    if name in _SESSION_DATETIMES:
        return _to_text(value)
    if name == "extra":
        return json.dumps(value, separators=(",", ":"))
    return value


def _file_from(row: Iterable[Any]) -> FileRow:
    values = dict(zip(_FILE_COLUMNS, row, strict=True))
    values["created_at"] = _req(values["created_at"])
    values["program_date_time"] = _from_text(values["program_date_time"])
    values["uploaded_at"] = _from_text(values["uploaded_at"])
    values["discontinuity"] = bool(values["discontinuity"])
    return FileRow(**values)


def _event_from(row: Iterable[Any]) -> SessionEventRow:
    event_id, session_id, event_type, created_at, acked_at = row
    return SessionEventRow(event_id, session_id, event_type, _req(created_at), _from_text(acked_at))


def _read_migrations(directory: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path.read_text(encoding="utf-8")))
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations in {directory} are not numbered 1..n: {numbers}")
    return found


class SqliteMetaStore(SqliteRecordings, SqliteWebhookOutbox, SqliteCloudRecordings):
    """A ``MetaStore`` in one SQLite file (WAL mode), migrated on ``open``."""

    def __init__(self, path: Path, migrations_dir: Path = MIGRATIONS_DIR) -> None:
        self.path = path
        self._migrations_dir = migrations_dir
        self._db: aiosqlite.Connection | None = None
        # one connection, so transactions from different coroutines must not interleave
        self._lock = asyncio.Lock()
        self._ids = Uuid7Source()

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations."""
        if self._db is not None:
            return
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per method
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives app crashes
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        await self._seed_recording_ids()

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        migrations = await asyncio.to_thread(_read_migrations, self._migrations_dir)
        current = await self._version(db)
        for number, sql in migrations:
            if number <= current:
                continue
            applied_at = _to_text(datetime.now(UTC))
            script = (
                f"BEGIN IMMEDIATE;\n{sql}\n;"
                "INSERT INTO schema_version (version, applied_at)"
                f" VALUES ({number}, '{applied_at}');"
                "\nCOMMIT;"
            )
            try:
                await db.executescript(script)
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    @staticmethod
    async def _version(db: aiosqlite.Connection) -> int:
        rows = list(await db.execute_fetchall("SELECT MAX(version) FROM schema_version"))
        return int(rows[0][0] or 0)

    async def aclose(self) -> None:
        """Close the connection; calling it twice is harmless."""
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def _open_db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("metadata store is not open")
        return self._db

    @asynccontextmanager
    async def _tx(self, *, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        db = self._open_db()
        async with self._lock:
            try:
                # IMMEDIATE takes the write lock up front, so a read-then-write cannot deadlock
                await db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # (a cancelled caller too: its BEGIN or COMMIT still runs in the thread)
                await asyncio.shield(self._rollback(db))
                raise

    @staticmethod
    async def _rollback(db: aiosqlite.Connection) -> None:
        """End the transaction a failed or cancelled ``_tx`` left. Statements run in order in
        the connection's thread, so this runs after whatever the caller had queued (a BEGIN or
        COMMIT that its cancellation did not stop), before the next caller's BEGIN."""
        try:
            await db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # none was open: BEGIN failed, or COMMIT went through

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Cursor:
        """One statement on its own: SQLite makes it a transaction of its own (autocommit),
        one trip to the connection's thread instead of three (BEGIN, it, COMMIT). Taken under
        the lock, so it never runs inside another caller's open transaction."""
        db = self._open_db()
        async with self._lock:
            return await db.execute(sql, params)

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one statement (a query, or a write ``RETURNING`` them), as ``_one``
        runs it: a transaction of its own, one snapshot."""
        db = self._open_db()
        async with self._lock:
            return list(await db.execute_fetchall(sql, params))

    async def schema_version(self) -> int:
        """The migration number the database is at."""
        async with self._tx(write=False) as db:
            return await self._version(db)

    async def make_durable(self) -> None:
        """Every transaction committed so far survives a power cut from now on: WAL with
        synchronous=NORMAL fsyncs no commit, and a checkpoint syncs the WAL first ("the WAL
        file is synced before each checkpoint", SQLite's WAL documentation). Asked for where a
        row must outlive what it lets go: a session before frames are acknowledged for it,
        segment rows before the writer's WAL deletes their frames."""
        db = self._open_db()
        async with self._lock:
            await db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # sessions ----------------------------------------------------------------------------

    async def create_session(self, row: SessionRow) -> None:
        """Insert a new session; ``MetaConflict`` if the id exists."""
        values = [_session_value(name, getattr(row, name)) for name in _SESSION_COLUMNS]
        marks = ", ".join("?" * len(values))
        try:
            await self._one(
                f"INSERT INTO sessions ({', '.join(_SESSION_COLUMNS)}) VALUES ({marks})", values
            )
        except sqlite3.IntegrityError as exc:
            raise MetaConflict(f"session {row.session_id} already exists") from exc

    async def get_session(self, session_id: str) -> SessionRow | None:
        """The session, or ``None``."""
        rows = await self._rows(
            f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions WHERE session_id = ?",
            (session_id,),
        )
        return _session_from(rows[0]) if rows else None

    async def update_session(self, session_id: str, **changes: Any) -> SessionRow:
        """Set the named columns and ``updated_at``; ``KeyError`` for an unknown session.

        ``ValueError`` when a name is not a ``SessionRow`` field or is ``session_id``.
        """
        unknown = set(changes) - set(_SESSION_COLUMNS[1:])
        if unknown:
            raise ValueError(f"not updatable session fields: {sorted(unknown)}")
        changes.setdefault("updated_at", datetime.now(UTC))
        names = sorted(changes)  # only validated field names are spliced into the SQL
        values = [_session_value(name, changes[name]) for name in names]
        assignments = ", ".join(f"{name} = ?" for name in names)
        rows = await self._rows(
            f"UPDATE sessions SET {assignments} WHERE session_id = ?"
            f" RETURNING {', '.join(_SESSION_COLUMNS)}",
            [*values, session_id],
        )
        if not rows:
            raise KeyError(session_id)
        return _session_from(rows[0])

    async def list_sessions(self, states: tuple[str, ...] | None = None) -> list[SessionRow]:
        """Sessions, optionally only those in ``states``, oldest first."""
        sql = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions"
        params: tuple[str, ...] = ()
        if states is not None:
            if not states:
                return []
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            params = states
        rows = await self._rows(sql + " ORDER BY created_at, session_id", params)
        return [_session_from(row) for row in rows]

    # events ------------------------------------------------------------------------------

    async def add_event(self, session_id: str, event_type: str, at: datetime) -> SessionEventRow:
        """Record a processed event; ``KeyError`` when the session is unknown."""
        try:
            cursor = await self._one(
                "INSERT INTO session_events (session_id, event_type, created_at) VALUES (?, ?, ?)",
                (session_id, event_type, _to_text(at)),
            )
            event_id = cursor.lastrowid
        except sqlite3.IntegrityError as exc:
            raise KeyError(session_id) from exc
        assert event_id is not None  # set by every successful INSERT
        return SessionEventRow(event_id, session_id, event_type, at.astimezone(UTC))

    async def ack_event(self, event_id: int, at: datetime) -> None:
        """Mark an event acked by the recording app; ``KeyError`` when there is no such event."""
        cursor = await self._one(
            "UPDATE session_events SET acked_at = ? WHERE event_id = ?", (_to_text(at), event_id)
        )
        if cursor.rowcount == 0:
            raise KeyError(event_id)

    async def list_events(self, session_id: str) -> list[SessionEventRow]:
        """A session's events in order."""
        rows = await self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM session_events WHERE session_id = ? ORDER BY event_id",
            (session_id,),
        )
        return [_event_from(row) for row in rows]

    # files -------------------------------------------------------------------------------

    async def add_file(self, row: FileRow) -> None:
        """Record a produced file, replacing any row with its key; ``KeyError`` if no session.

        A replaced row is a new version of the file: it takes the new row's ``uploaded_at``
        (usually none yet). Callers add the row before handing the file to the spool.
        """
        values = [
            row.session_id,
            row.key,
            row.kind,
            row.size,
            _to_text(row.created_at),
            row.duration_ms,
            row.seq,
            int(row.discontinuity),
            _to_text(row.program_date_time),
            _to_text(row.uploaded_at),
        ]
        updates = ", ".join(f"{name} = excluded.{name}" for name in _FILE_COLUMNS if name != "key")
        try:
            await self._one(
                f"INSERT INTO files ({', '.join(_FILE_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(values))})"
                f" ON CONFLICT (key) DO UPDATE SET {updates}",
                values,
            )
        except sqlite3.IntegrityError as exc:
            raise KeyError(row.session_id) from exc

    async def mark_uploaded(self, key: str, at: datetime) -> None:
        """Record that the object store confirmed ``key``; a key with no file row is ignored."""
        await self._one("UPDATE files SET uploaded_at = ? WHERE key = ?", (_to_text(at), key))

    async def list_files(self, session_id: str, kind: str | None = None) -> list[FileRow]:
        """A session's files ordered by kind then seq."""
        sql = f"SELECT {', '.join(_FILE_COLUMNS)} FROM files WHERE session_id = ?"
        params: tuple[str, ...] = (session_id,)
        if kind is not None:
            sql += " AND kind = ?"
            params = (session_id, kind)
        rows = await self._rows(sql + " ORDER BY kind, seq, key", params)
        return [_file_from(row) for row in rows]

    # API keys ----------------------------------------------------------------------------

    async def add_api_key(self, row: ApiKeyRow) -> None:
        """Store a key hash; ``MetaConflict`` when the hash is already stored."""
        try:
            await self._one(
                f"INSERT INTO api_keys ({', '.join(_API_KEY_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                (row.key_hash, row.name, row.tenant_id, row.user_id, _to_text(row.created_at)),
            )
        except sqlite3.IntegrityError as exc:
            raise MetaConflict("API key already stored") from exc

    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, or ``None``."""
        rows = await self._rows(
            f"SELECT {', '.join(_API_KEY_COLUMNS)} FROM api_keys WHERE key_hash = ?", (key_hash,)
        )
        if not rows:
            return None
        key_hash, name, tenant_id, user_id, created_at = rows[0]
        return ApiKeyRow(key_hash, name, tenant_id, user_id, _req(created_at))

    # apps --------------------------------------------------------------------------------

    async def add_app(self, row: AppRow) -> None:
        """Store an app; ``MetaConflict`` when the appid is taken."""
        try:
            await self._one(
                "INSERT INTO apps (appid, certificate, token_required, created_at,"
                " webhook_url, webhook_secret) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    row.appid,
                    row.certificate,
                    int(row.token_required),
                    _to_text(row.created_at),
                    row.webhook_url,
                    row.webhook_secret,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise MetaConflict(f"app {row.appid} already exists") from exc

    async def get_app(self, appid: str) -> AppRow | None:
        """The app, or ``None``."""
        rows = await self._rows(
            "SELECT appid, certificate, token_required, created_at, webhook_url,"
            " webhook_secret FROM apps WHERE appid = ?",
            (appid,),
        )
        if not rows:
            return None
        appid, certificate, token_required, created_at, url, secret = rows[0]
        return AppRow(appid, certificate, bool(token_required), _req(created_at), url, secret)

    # customers ---------------------------------------------------------------------------

    async def add_customer(self, row: CustomerRow) -> None:
        """Store a customer; ``MetaConflict`` when the id is taken."""
        try:
            await self._one(
                "INSERT INTO customers (customer_id, secret_hash, created_at) VALUES (?, ?, ?)",
                (row.customer_id, row.secret_hash, _to_text(row.created_at)),
            )
        except sqlite3.IntegrityError as exc:
            raise MetaConflict(f"customer {row.customer_id} already exists") from exc

    async def get_customer(self, customer_id: str) -> CustomerRow | None:
        """The customer, or ``None``."""
        rows = await self._rows(
            "SELECT customer_id, secret_hash, created_at FROM customers WHERE customer_id = ?",
            (customer_id,),
        )
        if not rows:
            return None
        customer_id, secret_hash, created_at = rows[0]
        return CustomerRow(customer_id, secret_hash, _req(created_at))
