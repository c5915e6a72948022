"""The SQLite metadata store on a real file: migrations, CRUD for every method, aware UTC times."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from recording import synced_rows

from storage.errors import MetaConflict
from storage.meta import ApiKeyRow, FileRow, SessionRow
from storage.meta_sqlite import MIGRATIONS_DIR, SqliteMetaStore

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def _session(session_id: str, created_at: datetime = T0, state: str = "recording") -> SessionRow:
    return SessionRow(
        session_id=session_id,
        customer_id="cust",
        profile_id="prof",
        platform_call_id="call",
        agent_platform_id="agent",
        user_id="user",
        state=state,
        created_at=created_at,
        updated_at=created_at,
    )


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    store = SqliteMetaStore(tmp_path / "db" / "meta.sqlite3")
    await store.open()
    yield store
    await store.aclose()


def _migration_count() -> int:
    return len(list(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")))


async def test_migrations_apply_once_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite3"
    store = SqliteMetaStore(path)
    await store.open()
    assert await store.schema_version() == _migration_count() >= 1
    await store.create_session(_session("s1"))
    await store.aclose()
    await store.aclose()  # twice is harmless

    again = SqliteMetaStore(path)
    await again.open()
    await again.open()  # already open: nothing happens
    assert await again.schema_version() == _migration_count()
    assert (await again.get_session("s1")) is not None
    await again.aclose()

    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, _migration_count() + 1))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"sessions", "session_events", "files", "api_keys", "schema_version"} <= tables
    db.close()


async def test_new_migration_applies_on_reopen_and_failed_one_rolls_back(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for src in MIGRATIONS_DIR.glob("*.sql"):
        (migrations / src.name).write_text(src.read_text())
    path = tmp_path / "meta.sqlite3"
    n = _migration_count()
    store = SqliteMetaStore(path, migrations)
    await store.open()
    await store.aclose()

    (migrations / f"{n + 1:04d}_extra.sql").write_text("CREATE TABLE extra_t (x INTEGER);")
    (migrations / f"{n + 2:04d}_broken.sql").write_text("CREATE TABLE broken_t (x);\nNOT SQL;")
    store = SqliteMetaStore(path, migrations)
    with pytest.raises(sqlite3.OperationalError):
        await store.open()
    await store.aclose()
    with sqlite3.connect(path) as db:
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    db.close()
    assert "extra_t" in tables and "broken_t" not in tables
    assert version == n + 1

    (migrations / f"{n + 2:04d}_broken.sql").unlink()
    store = SqliteMetaStore(path, migrations)
    await store.open()
    assert await store.schema_version() == n + 1
    await store.aclose()


async def test_misnumbered_migrations_are_refused(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0002_skip.sql").write_text("CREATE TABLE t (x);")
    store = SqliteMetaStore(tmp_path / "m.sqlite3", migrations)
    with pytest.raises(RuntimeError):
        await store.open()


async def test_closed_store_refuses(tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "m.sqlite3")
    with pytest.raises(RuntimeError):
        await store.get_session("x")


async def test_make_durable_puts_what_was_committed_beyond_a_power_cut(tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    try:
        await store.create_session(_session("a"))
        # committed, in the WAL only: not synced, so a power cut could take it
        sql = "SELECT session_id FROM sessions"
        assert await asyncio.to_thread(synced_rows, store.path, tmp_path, sql) == []
        await store.make_durable()
        assert await asyncio.to_thread(synced_rows, store.path, tmp_path, sql) == [("a",)]
    finally:
        await store.aclose()


async def test_session_crud_and_datetimes(meta: SqliteMetaStore) -> None:
    row = _session("s1", created_at=T0.astimezone(PLUS_TWO))
    row = dataclasses.replace(row, extra={"a": [1, 2], "b": "é"})
    await meta.create_session(row)
    with pytest.raises(MetaConflict):
        await meta.create_session(row)
    got = await meta.get_session("s1")
    assert got is not None
    assert got.created_at == T0 and got.created_at.tzinfo == UTC
    assert got.extra == {"a": [1, 2], "b": "é"}
    assert got.ended_at is None and got.acked_seq == 0
    assert await meta.get_session("nope") is None

    ended = T0 + timedelta(minutes=5)
    updated = await meta.update_session(
        "s1", state="ended", ended_at=ended, acked_seq=7, recorded_ms=1234, extra={"z": 1}
    )
    assert (updated.state, updated.acked_seq, updated.recorded_ms) == ("ended", 7, 1234)
    assert updated.ended_at == ended and updated.ended_at.tzinfo == UTC
    assert updated.extra == {"z": 1}
    assert updated.updated_at > T0 and updated.updated_at.tzinfo == UTC
    assert await meta.get_session("s1") == updated

    pinned = T0 + timedelta(hours=1)
    assert (await meta.update_session("s1", updated_at=pinned)).updated_at == pinned
    with pytest.raises(KeyError):
        await meta.update_session("nope", state="x")
    with pytest.raises(TypeError):  # the id is the first argument, so it cannot be a change
        await meta.update_session("s1", session_id="other")  # type: ignore[misc]
    with pytest.raises(ValueError):
        await meta.update_session("s1", colour="red")
    with pytest.raises(ValueError):
        await meta.update_session("s1", ended_at=datetime(2024, 1, 1))  # naive
    assert (await meta.get_session("s1")) is not None


async def test_list_sessions_oldest_first_and_by_state(meta: SqliteMetaStore) -> None:
    await meta.create_session(_session("late", T0 + timedelta(seconds=2), "ended"))
    await meta.create_session(_session("early", T0, "recording"))
    await meta.create_session(_session("mid", T0 + timedelta(seconds=1), "paused"))
    assert [s.session_id for s in await meta.list_sessions()] == ["early", "mid", "late"]
    open_ = await meta.list_sessions(("recording", "paused"))
    assert [s.session_id for s in open_] == ["early", "mid"]
    assert await meta.list_sessions(()) == []
    assert await meta.list_sessions(("unknown",)) == []


async def test_events(meta: SqliteMetaStore) -> None:
    await meta.create_session(_session("s1"))
    await meta.create_session(_session("s2"))
    e1 = await meta.add_event("s1", "start", T0)
    e2 = await meta.add_event("s1", "pause", T0 + timedelta(seconds=1))
    await meta.add_event("s2", "start", T0)
    assert e2.event_id > e1.event_id
    assert e1.created_at == T0 and e1.acked_at is None
    with pytest.raises(KeyError):
        await meta.add_event("nope", "start", T0)
    acked = T0.astimezone(PLUS_TWO) + timedelta(seconds=3)
    await meta.ack_event(e1.event_id, acked)
    with pytest.raises(KeyError):
        await meta.ack_event(99999, T0)
    events = await meta.list_events("s1")
    assert [(e.event_id, e.event_type) for e in events] == [
        (e1.event_id, "start"),
        (e2.event_id, "pause"),
    ]
    assert events[0].acked_at == acked and events[0].acked_at.tzinfo == UTC
    assert events[1].acked_at is None
    assert await meta.list_events("nope") == []


async def test_files(meta: SqliteMetaStore) -> None:
    await meta.create_session(_session("s1"))
    pdt = T0 + timedelta(seconds=4)

    def seg(seq: int, **kw: object) -> FileRow:
        return FileRow(
            **{  # type: ignore[arg-type]
                "session_id": "s1",
                "key": f"s1/seg{seq}.ts",
                "kind": "segment",
                "size": 100 + seq,
                "created_at": T0,
                "duration_ms": 4000,
                "seq": seq,
                **kw,
            }
        )

    await meta.add_file(seg(2))
    await meta.add_file(seg(1, discontinuity=True, program_date_time=pdt))
    playlist = FileRow("s1", "s1/index.m3u8", "playlist", 50, T0)
    await meta.add_file(playlist)
    with pytest.raises(KeyError):
        await meta.add_file(FileRow("nope", "x.ts", "segment", 1, T0))

    files = await meta.list_files("s1")
    assert [f.key for f in files] == ["s1/index.m3u8", "s1/seg1.ts", "s1/seg2.ts"]
    assert files[1].discontinuity is True and files[1].program_date_time == pdt
    assert files[2].discontinuity is False and files[2].program_date_time is None
    assert [f.seq for f in await meta.list_files("s1", kind="segment")] == [1, 2]
    assert await meta.list_files("s1", kind="mp4") == []

    up = T0 + timedelta(seconds=9)
    await meta.mark_uploaded("s1/index.m3u8", up)
    await meta.mark_uploaded("not/recorded.ts", up)  # no row: ignored
    [pl] = await meta.list_files("s1", kind="playlist")
    assert pl.uploaded_at == up and pl.uploaded_at.tzinfo == UTC

    # replacing by key is a new version of the file: not uploaded until confirmed again
    await meta.add_file(FileRow("s1", "s1/index.m3u8", "playlist", 80, T0, duration_ms=8000))
    [pl] = await meta.list_files("s1", kind="playlist")
    assert (pl.size, pl.duration_ms, pl.uploaded_at) == (80, 8000, None)


async def test_api_keys(meta: SqliteMetaStore) -> None:
    row = ApiKeyRow("h" * 64, "ci", "tenant", "user", T0.astimezone(PLUS_TWO))
    await meta.add_api_key(row)
    with pytest.raises(MetaConflict):
        await meta.add_api_key(row)
    found = await meta.find_api_key("h" * 64)
    assert found is not None and found.created_at == T0 and found.created_at.tzinfo == UTC
    assert (found.name, found.tenant_id, found.user_id) == ("ci", "tenant", "user")
    assert await meta.find_api_key("other") is None


async def test_concurrent_writes_do_not_interleave_transactions(meta: SqliteMetaStore) -> None:
    await meta.create_session(_session("s1"))
    await asyncio.gather(*(meta.add_event("s1", f"e{i}", T0) for i in range(50)))
    await asyncio.gather(*(meta.update_session("s1", acked_seq=i) for i in range(20)))
    assert len(await meta.list_events("s1")) == 50


@pytest.mark.parametrize("step", ["begin", "body", "commit"])
async def test_a_cancelled_transaction_leaves_the_store_usable(
    meta: SqliteMetaStore, step: str
) -> None:
    """A caller cancelled while its BEGIN, its body or its COMMIT is still queued in the
    connection's thread (a client that went away mid-request) ends that transaction: the next
    one neither finds it open nor waits on it, and a cancelled write is all or nothing."""
    await meta.create_session(_session("kept"))
    # the task runs until it awaits the step's statement in the connection's thread
    yields = {"begin": 1, "body": 2, "commit": 3}[step]

    async def write() -> None:
        async with meta._tx() as db:
            await db.execute("UPDATE sessions SET state = 'ended' WHERE session_id = 'kept'")

    task = asyncio.create_task(write())
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await meta.get_session("kept")  # raised "cannot start a transaction within a ..."
    assert row is not None and row.state in ("recording", "ended")
    await meta.create_session(_session("after"))
    assert await meta.get_session("after") is not None
