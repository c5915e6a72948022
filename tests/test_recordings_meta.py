"""Recordings, tenants and users in the SQLite metadata store: ids in insert order, filters,
compare-and-set status changes, and a user id that cannot cross tenants."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.errors import MetaConflict
from storage.meta_sqlite import SqliteMetaStore
from storage.recordings import RecordingRow

T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    yield store
    await store.aclose()


def _row(meta: SqliteMetaStore, tenant: str, **more: object) -> RecordingRow:
    rid = meta.new_recording_id()
    return RecordingRow(rid, tenant, "u", "ready", T0, T0, T0, f"captures/{tenant}/{rid}/e", **more)  # type: ignore[arg-type]


async def test_listing_filters_and_pages(meta: SqliteMetaStore) -> None:
    rows = [_row(meta, "a", project_id="p" if i % 3 == 0 else None) for i in range(10)]
    rows.append(_row(meta, "b"))
    for row in rows:
        await meta.create_recording(row)
    page = await meta.list_recordings("a", 4)
    assert [r.recording_id for r in page.rows] == [r.recording_id for r in rows[9:5:-1]]
    assert page.more
    rest = await meta.list_recordings("a", 100, before=page.rows[-1].recording_id)
    assert len(rest.rows) == 6 and not rest.more
    project = await meta.list_recordings("a", 100, project_id="p")
    assert [r.recording_id for r in project.rows] == [r.recording_id for r in rows[9::-3]]
    assert (await meta.list_recordings("b", 100)).rows == [rows[10]]
    assert await meta.get_recording(rows[10].recording_id, "a") is None
    assert await meta.get_recording(rows[10].recording_id, None) == rows[10]


async def test_status_changes_are_compare_and_set(meta: SqliteMetaStore) -> None:
    row = dataclasses.replace(_row(meta, "a"), status="uploading", navigations=[{"url": "u"}])
    await meta.create_recording(row)
    with pytest.raises(MetaConflict):
        await meta.create_recording(row)
    assert await meta.update_recording(row.recording_id, only_from=("ready",), status="x") is None
    moved = await meta.update_recording(
        row.recording_id, only_from=("uploading",), status="processing"
    )
    assert (
        moved is not None and moved.status == "processing" and moved.navigations == [{"url": "u"}]
    )
    assert [r.recording_id for r in await meta.recordings_with_status("processing")] == [
        row.recording_id
    ]
    assert await meta.delete_recording(row.recording_id, "other") is False
    assert await meta.delete_recording(row.recording_id, "a") is True
    assert await meta.update_recording(row.recording_id, status="ready") is None


async def test_ids_continue_after_a_restart(meta: SqliteMetaStore, tmp_path: Path) -> None:
    row = _row(meta, "a")
    await meta.create_recording(row)
    await meta.aclose()
    again = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await again.open()
    try:
        assert again.new_recording_id() > row.recording_id
    finally:
        await again.aclose()


async def test_tenants_and_users(meta: SqliteMetaStore) -> None:
    acme = await meta.ensure_tenant("acme")
    assert await meta.ensure_tenant("acme") == acme
    other = await meta.ensure_tenant("00000000-0000-4000-8000-0000000000AA")
    assert other == "00000000-0000-4000-8000-0000000000aa"  # canonical form
    alice = await meta.ensure_user(acme, "alice")
    assert await meta.ensure_user(acme, "alice") == alice
    assert await meta.ensure_user(other, "alice") != alice  # names are per tenant
    assert await meta.ensure_user(acme, None) != alice
    with pytest.raises(MetaConflict):
        await meta.ensure_user(other, alice)
