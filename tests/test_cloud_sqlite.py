"""The cloud recording part of the SQLite metadata store on a real file, and its group-committing
writer: rows come back as written, upserts replace, forgetting and pruning remove what they say
and nothing else, and a burst of changes costs a couple of transactions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.cloud_recording_state import CloudStateWriter
from storage.meta import CloudResourceRow, CloudSegmentRow, CloudSessionRow, CloudWrites
from storage.meta_sqlite import SqliteMetaStore

T0 = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.open()
    yield store
    await store.aclose()


def resource(
    rid: str, sid: str | None = None, at: datetime = T0, node: str = "n1"
) -> CloudResourceRow:
    return CloudResourceRow(rid, node, "app", "room", "527841", at, {"cname": "room"}, sid)


def session(sid: str, rid: str, ended: datetime | None = None, node: str = "n1") -> CloudSessionRow:
    return CloudSessionRow(
        sid=sid,
        resource_id=rid,
        node=node,
        appid="app",
        cname="room",
        uid="527841",
        mode="individual",
        status=5 if ended is None else 8,
        store_id="sc-1",
        started_at=T0,
        updated_at=T0,
        ended_at=ended,
        state={"playlists": [{"fileName": "a.m3u8"}], "snapshots": 2},
    )


def segment(sid: str, seq: int, playlist: str = "a.m3u8") -> CloudSegmentRow:
    return CloudSegmentRow(
        sid, playlist, seq, f"a_{seq}.ts", 4.0, T0 + timedelta(seconds=4 * seq), seq == 3
    )


async def test_rows_come_back_as_written(meta: SqliteMetaStore) -> None:
    writes = CloudWrites(
        resources={"r1": resource("r1", "s1"), "r2": resource("r2")},
        sessions={"s1": session("s1", "r1")},
        segments=[segment("s1", i) for i in range(4)] + [segment("s1", 0, "b.m3u8")],
    )
    await meta.write_cloud(writes)
    assert await meta.list_cloud_resources("n1", T0) == [resource("r1", "s1"), resource("r2")]
    assert await meta.list_cloud_sessions("n1") == [session("s1", "r1")]
    rows = await meta.list_cloud_segments("s1")
    assert rows == [segment("s1", i) for i in range(4)] + [segment("s1", 0, "b.m3u8")]
    assert [r.discontinuity for r in rows] == [False, False, False, True, False]
    # an upsert replaces the row; another node's rows are not this node's
    stopped = session("s1", "r1", ended=T0 + timedelta(minutes=1))
    await meta.write_cloud(CloudWrites(sessions={"s1": stopped}, resources={
        "r9": resource("r9", node="n2")}))  # fmt: skip
    assert await meta.list_cloud_sessions("n1") == [stopped]
    assert [r.resource_id for r in await meta.list_cloud_resources("n2", T0)] == ["r9"]


async def test_forget_and_prune(meta: SqliteMetaStore) -> None:
    old = T0 - timedelta(hours=1)
    await meta.write_cloud(
        CloudWrites(
            resources={
                "kept": resource("kept", "s-live"),
                "ended": resource("ended", "s-ended"),
                "fresh": resource("fresh"),
                "stale": resource("stale", at=old),
                "other-node": resource("other-node", at=old, node="n2"),
            },
            sessions={
                "s-live": session("s-live", "kept"),
                "s-ended": session("s-ended", "ended", ended=old),
            },
            segments=[segment("s-live", 0), segment("s-ended", 0)],
        )
    )
    # unused resources acquired before T0, sessions ended before T0 - 30 min, on n1 only
    removed = await meta.prune_cloud("n1", T0, T0 - timedelta(minutes=30))
    assert removed == 4  # s-ended, its segment and resource; the stale resource
    assert [s.sid for s in await meta.list_cloud_sessions("n1")] == ["s-live"]
    assert await meta.list_cloud_segments("s-ended") == []
    everything = datetime.fromtimestamp(0, UTC)
    assert {r.resource_id for r in await meta.list_cloud_resources("n1", everything)} == {
        "kept",
        "fresh",
    }
    assert len(await meta.list_cloud_resources("n2", everything)) == 1
    await meta.write_cloud(CloudWrites(forget_sessions=["s-live"], forget_resources=["kept"]))
    assert await meta.list_cloud_sessions("n1") == []
    assert await meta.list_cloud_segments("s-live") == []
    assert [r.resource_id for r in await meta.list_cloud_resources("n1", everything)] == ["fresh"]


async def test_the_writer_group_commits(meta: SqliteMetaStore) -> None:
    writer = CloudStateWriter(meta)
    writer.start()
    await asyncio.shield(writer.session(session("s1", "r1")))
    before = writer.batches
    futures = [writer.segment(segment("s1", i)) for i in range(200)]
    futures.append(writer.session(session("s1", "r1", ended=T0)))  # the latest row wins
    await asyncio.gather(*(asyncio.shield(f) for f in futures))
    assert writer.batches - before == 1  # all queued while none was being written: one batch
    assert len(await meta.list_cloud_segments("s1")) == 200
    assert (await meta.list_cloud_sessions("n1"))[0].ended_at == T0
    # a failing write fails the futures of its batch, and the writer goes on
    await meta.aclose()
    with pytest.raises(RuntimeError):
        await asyncio.shield(writer.segment(segment("s1", 200)))
    assert writer.errors == 1
    await meta.open()
    await asyncio.shield(writer.segment(segment("s1", 201)))
    await writer.aclose()
    await writer.aclose()  # twice is harmless
    assert [r.seq for r in await meta.list_cloud_segments("s1")][-1] == 201
