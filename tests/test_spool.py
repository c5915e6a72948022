"""The durable spool on real files: durability, recovery after a crash, ordering, the size cap."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from storage import durable
from storage.errors import SpoolFull, StoreRefused, StoreUnavailable
from storage.objects import ObjectInfo
from storage.objects_local import LocalObjectStore
from storage.spool import Spool, SpoolItem

FAST_RETRY = {"retry_base_s": 0.001, "retry_max_s": 0.005}
MakeSpool = Callable[..., Spool]
WAIT_S = 10.0  # generous bound on any wait; the tests finish far sooner when things work


class FlakyStore(LocalObjectStore):
    """A real local store that fails uploads while told to, and records what it accepted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.refuse = False
        self.fail_keys: set[str] = set()
        self.gate: asyncio.Event | None = None  # when set up, uploads wait for it
        self.entered = asyncio.Event()  # an upload has begun
        self.uploaded: list[str] = []
        self.failures = 0
        self._changed = asyncio.Condition()

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down or key in self.fail_keys:
            async with self._changed:
                self.failures += 1
                self._changed.notify_all()
            raise (StoreRefused if self.refuse else StoreUnavailable)(key)
        info = await super().put_file(key, path, content_type)
        self.uploaded.append(key)
        return info

    async def wait_failures(self, n: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.failures >= n), WAIT_S)


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "objects")


@pytest.fixture
async def make_spool(tmp_path: Path) -> AsyncIterator[Callable[..., Spool]]:
    opened: list[Spool] = []

    def make(store: LocalObjectStore, **kw: object) -> Spool:
        spool = Spool(tmp_path / "spool", lambda store_id: store, **{**FAST_RETRY, **kw})  # type: ignore[arg-type]
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        await spool.aclose(drain_timeout=0)


def _spool_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "spool").iterdir())


async def test_add_uploads_then_removes_copy(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    seen: list[tuple[SpoolItem, ObjectInfo, float]] = []

    async def uploaded(item: SpoolItem, info: ObjectInfo, latency_s: float) -> None:
        seen.append((item, info, latency_s))

    spool = make_spool(store, on_uploaded=uploaded)
    await spool.start()
    assert await spool.wait_idle(0) is True  # nothing pending: true at once
    src = tmp_path / "seg0.ts"
    src.write_bytes(b"T" * 500)
    item = await spool.add("s1/seg0.ts", src, group="s1")
    assert not src.exists()  # moved in
    assert item.size == 500 and item.group == "s1" and item.store_id == "default"
    item2 = await spool.add_bytes("s1/index.m3u8", b"#EXTM3U\n", group="s1", content_type="x/y")
    assert item2.item_id > item.item_id
    assert await spool.wait_idle(WAIT_S)
    assert await store.get_bytes("s1/seg0.ts") == b"T" * 500
    info = await store.head("s1/index.m3u8")
    assert info is not None and info.content_type == "x/y"
    assert [(i.key, i.attempts) for i, _, _ in seen] == [("s1/seg0.ts", 1), ("s1/index.m3u8", 1)]
    assert all(lat >= 0 for _, _, lat in seen) and seen[0][1].size == 500
    assert (spool.depth, spool.bytes, spool.uploaded_total, spool.upload_failures_total) == (
        0,
        0,
        2,
        0,
    )
    assert _spool_files(tmp_path) == []


async def test_copy_mode_leaves_source(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    spool = make_spool(store)
    await spool.start()
    src = tmp_path / "keep.mp4"
    src.write_bytes(b"M" * 64)
    await spool.add("s/keep.mp4", src, group="s", move=False)
    assert await spool.wait_group("s", WAIT_S)
    assert src.read_bytes() == b"M" * 64
    assert await store.get_bytes("s/keep.mp4") == b"M" * 64


async def test_only_confirmed_upload_removes_spool_copy(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    store.down = True
    spool = make_spool(store)
    await spool.start()
    await spool.add_bytes("k/a.ts", b"abc", group="g")
    await store.wait_failures(3)
    assert _spool_files(tmp_path) == ["00000000000000000001.data", "00000000000000000001.json"]
    assert (spool.depth, spool.bytes, spool.uploaded_total) == (1, 3, 0)
    assert spool.upload_failures_total >= 3
    assert await spool.wait_idle(0.01) is False
    assert await spool.wait_group("g", 0.01) is False
    store.down = False
    assert await spool.wait_idle(WAIT_S)
    assert _spool_files(tmp_path) == []
    assert store.uploaded == ["k/a.ts"]


async def test_recovery_after_crash(tmp_path: Path, make_spool: MakeSpool) -> None:
    down = FlakyStore(tmp_path / "objects")
    down.down = True
    first = make_spool(down)
    await first.start()
    expected: dict[str, bytes] = {}
    for i in range(3):
        for group in ("g1", "g2"):
            key = f"{group}/seg{i}.ts"
            expected[key] = f"{key} payload".encode()
            await first.add_bytes(key, expected[key], group=group)
    await down.wait_failures(2)
    await first.aclose(drain_timeout=0)
    assert len(_spool_files(tmp_path)) == 12  # every item's data and manifest survived
    # leftovers of a crash in the middle of add(): a bare data file and a temp manifest
    (tmp_path / "spool" / "00000000000000000099.data").write_bytes(b"never acknowledged")
    (tmp_path / "spool" / ".tmp-00000000000000000099.json.abc").write_bytes(b"{")

    up = FlakyStore(tmp_path / "objects")
    arrived: list[SpoolItem] = []

    async def uploaded(item: SpoolItem, info: ObjectInfo, latency_s: float) -> None:
        arrived.append(item)

    second = make_spool(up, on_uploaded=uploaded)
    await second.start()
    assert await second.wait_idle(WAIT_S)
    for key, data in expected.items():
        assert await up.get_bytes(key) == data
    assert {i.key for i in arrived} == set(expected)
    for group in ("g1", "g2"):
        assert [k for k in up.uploaded if k.startswith(group)] == [
            f"{group}/seg{i}.ts" for i in range(3)
        ]
    assert _spool_files(tmp_path) == []
    later = await second.add_bytes("g1/seg3.ts", b"x", group="g1")
    assert later.item_id > max(i.item_id for i in arrived)


async def test_size_cap_raises_spool_full(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    spool = make_spool(store, max_bytes=100)
    await spool.start()
    await spool.add_bytes("a.ts", b"x" * 60, group="g")
    src = tmp_path / "big.ts"
    src.write_bytes(b"y" * 50)
    with caplog.at_level(logging.ERROR, logger="storage.spool"):
        with pytest.raises(SpoolFull):
            await spool.add("b.ts", src, group="g")
        with pytest.raises(SpoolFull):
            await spool.add_bytes("c.ts", b"z" * 41, group="h")
    assert src.read_bytes() == b"y" * 50  # not taken
    assert (
        len([r for r in caplog.records if "spool full" in r.getMessage()]) == 1
    )  # once per episode
    assert (spool.bytes, spool.depth) == (60, 1)
    await spool.add_bytes("d.ts", b"w" * 40, group="g")  # exactly at the cap is fine
    store.down = False
    assert await spool.wait_idle(WAIT_S)
    await spool.add("b.ts", src, group="g")
    assert await spool.wait_idle(WAIT_S)
    assert store.uploaded == ["a.ts", "d.ts", "b.ts"]


async def test_group_order_under_failures(store: FlakyStore, make_spool: MakeSpool) -> None:
    store.fail_keys = {"g1/0"}
    spool = make_spool(store, workers=4)
    await spool.start()
    for i in range(3):
        await spool.add_bytes(f"g1/{i}", b"1", group="g1")
        await spool.add_bytes(f"g2/{i}", b"2", group="g2")
    assert await spool.wait_group("g2", WAIT_S)  # g2 does not wait for g1's trouble
    await store.wait_failures(2)
    assert not any(k.startswith("g1/") for k in store.uploaded)  # g1/1 waits for g1/0
    assert spool.depth == 3
    store.fail_keys.clear()
    assert await spool.wait_group("g1", WAIT_S)
    assert [k for k in store.uploaded if k.startswith("g1/")] == ["g1/0", "g1/1", "g1/2"]


async def test_a_file_that_never_uploads_holds_up_its_own_group_only(
    store: FlakyStore, make_spool: MakeSpool
) -> None:
    """A worker waits out a failed upload's backoff serving other groups: with one worker, a
    file its store refuses for good does not stop every other session's uploads."""
    store.fail_keys = {"bad/0"}
    spool = make_spool(store, workers=1)
    await spool.start()
    await spool.add_bytes("bad/0", b"1", group="bad")
    await store.wait_failures(1)
    for i in range(3):
        await spool.add_bytes(f"good/{i}", b"2", group="good")
    assert await spool.wait_group("good", WAIT_S)
    assert store.uploaded == ["good/0", "good/1", "good/2"]
    assert spool.holds("bad", "bad/0") and spool.depth == 1
    await store.wait_failures(store.failures + 1)  # and it is still being tried


class FirstTryFails(FlakyStore):
    """Fails every key's first attempt, so retries interleave across groups."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tried: set[str] = set()

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        if key not in self.tried:
            self.tried.add(key)
            raise StoreUnavailable(key)
        return await super().put_file(key, path, content_type)


async def test_many_groups_keep_order_with_concurrent_adds(
    tmp_path: Path, make_spool: MakeSpool
) -> None:
    store = FirstTryFails(tmp_path / "objects")
    spool = make_spool(store, workers=3)
    await spool.start()
    groups = [f"s{n}" for n in range(6)]
    items = await asyncio.gather(
        *(spool.add_bytes(f"{g}/{i:02d}", b"d", group=g) for i in range(8) for g in groups)
    )
    assert await spool.wait_idle(WAIT_S)
    for g in groups:
        ids = [it.key for it in sorted(items, key=lambda it: it.item_id) if it.group == g]
        assert [k for k in store.uploaded if k.startswith(g + "/")] == ids
    assert spool.upload_failures_total == len(items)
    assert spool.uploaded_total == len(items)


async def test_refused_is_retried_and_logged_as_error(
    store: FlakyStore, make_spool: MakeSpool, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = store.refuse = True
    spool = make_spool(store)
    await spool.start()
    with caplog.at_level(logging.WARNING, logger="storage.spool"):
        await spool.add_bytes("r/k.ts", b"x", group="sess-1")
        await store.wait_failures(2)
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert refused and refused[0].__dict__["key"] == "r/k.ts"
    assert refused[0].__dict__["session_id"] == "sess-1"
    store.down = False
    assert await spool.wait_idle(WAIT_S)


async def test_unavailable_logged_as_warning_with_attempt(
    store: FlakyStore, make_spool: MakeSpool, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    spool = make_spool(store)
    await spool.start()
    with caplog.at_level(logging.WARNING, logger="storage.spool"):
        await spool.add_bytes("w/k.ts", b"x", group="g")
        await store.wait_failures(2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.__dict__["attempt"] for r in warnings[:2]] == [1, 2]
    assert all(r.__dict__["key"] == "w/k.ts" for r in warnings)


async def test_hook_failure_still_confirms(
    store: FlakyStore, make_spool: MakeSpool, tmp_path: Path
) -> None:
    async def broken(item: SpoolItem, info: ObjectInfo, latency_s: float) -> None:
        raise RuntimeError("metadata down")

    spool = make_spool(store, on_uploaded=broken)
    await spool.start()
    await spool.add_bytes("h/k.ts", b"x", group="g")
    assert await spool.wait_idle(WAIT_S)
    assert _spool_files(tmp_path) == []


async def test_aclose_drains_in_flight_upload(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    store.gate = asyncio.Event()
    spool = make_spool(store)
    await spool.start()
    await spool.add_bytes("d/k.ts", b"x", group="g")
    await asyncio.wait_for(store.entered.wait(), WAIT_S)
    # opens the gate once aclose has begun waiting for the in-flight upload
    asyncio.get_running_loop().call_soon(store.gate.set)
    await asyncio.wait_for(spool.aclose(drain_timeout=WAIT_S), WAIT_S)
    with pytest.raises(RuntimeError):
        await spool.add_bytes("d/late.ts", b"x", group="g")
    assert store.uploaded == ["d/k.ts"]
    assert _spool_files(tmp_path) == []
    await spool.aclose()  # twice is harmless


async def test_aclose_gives_up_after_drain_timeout(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    store.gate = asyncio.Event()  # never set: the upload hangs
    spool = make_spool(store)
    await spool.start()
    await spool.add_bytes("d/k.ts", b"x", group="g")
    await asyncio.wait_for(store.entered.wait(), WAIT_S)
    await asyncio.wait_for(spool.aclose(drain_timeout=0.01), WAIT_S)
    assert await spool.wait_idle() is False  # closed: answers at once instead of hanging
    assert len(_spool_files(tmp_path)) == 2  # left for the next start
    with pytest.raises(RuntimeError):
        await spool.start()


async def test_add_before_start_and_bad_settings(tmp_path: Path, store: FlakyStore) -> None:
    spool = Spool(tmp_path / "spool", lambda _: store)
    with pytest.raises(RuntimeError):
        await spool.add_bytes("k", b"x", group="g")
    await spool.aclose()
    with pytest.raises(ValueError):
        Spool(tmp_path / "spool", lambda _: store, workers=0)
    with pytest.raises(ValueError):
        Spool(tmp_path / "spool", lambda _: store, retry_base_s=2, retry_max_s=1)


async def test_store_id_routes_to_its_store(tmp_path: Path) -> None:
    stores = {"a": FlakyStore(tmp_path / "a"), "b": FlakyStore(tmp_path / "b")}
    spool = Spool(tmp_path / "spool", stores.__getitem__, **FAST_RETRY)  # type: ignore[arg-type]
    await spool.start()
    try:
        await spool.add_bytes("x.ts", b"1", group="g", store_id="a")
        await spool.add_bytes("y.ts", b"2", group="g", store_id="b")
        assert await spool.wait_idle(WAIT_S)
        assert (stores["a"].uploaded, stores["b"].uploaded) == (["x.ts"], ["y.ts"])
    finally:
        await spool.aclose()


async def test_retarget_sends_waiting_files_to_the_new_store(tmp_path: Path) -> None:
    """Renewed credentials: a group's files waiting for a store that refuses them go to the new
    one, in order; another group waiting for the old store stays; a restart keeps the move."""
    old, new = FlakyStore(tmp_path / "old"), FlakyStore(tmp_path / "new")
    old.down = old.refuse = True
    stores = {"old": old, "new": new}
    first = Spool(tmp_path / "spool", stores.__getitem__, **FAST_RETRY)  # type: ignore[arg-type]
    await first.start()
    for i in range(3):
        await first.add_bytes(f"g/{i}.ts", b"g%d" % i, group="g", store_id="old")
    await first.add_bytes("h/0.ts", b"h", group="h", store_id="old")
    await old.wait_failures(2)
    assert await first.retarget("g", "old", "new") == 3
    assert await first.wait_group("g", WAIT_S)
    assert new.uploaded == ["g/0.ts", "g/1.ts", "g/2.ts"]
    assert await new.get_bytes("g/2.ts") == b"g2"
    assert first.store_ids() == {"old"}  # h still waits for the old store
    assert await first.retarget("nothing", "old", "new") == 0

    new.down = True  # moved, then the server stops before they went up
    await first.add_bytes("k/0.ts", b"k", group="k", store_id="old")
    assert await first.retarget("k", "old", "new") == 1
    await first.aclose(drain_timeout=0)
    new.down = False
    second = Spool(tmp_path / "spool", stores.__getitem__, **FAST_RETRY)  # type: ignore[arg-type]
    await second.start()
    try:
        assert await second.wait_group("k", WAIT_S)
        assert new.uploaded[-1] == "k/0.ts" and old.uploaded == []
        assert second.store_ids() == {"old"}
    finally:
        await second.aclose(drain_timeout=0)


async def test_retarget_reaches_an_add_under_way(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    spool = make_spool(store)
    await spool.start()
    adding = asyncio.ensure_future(spool.add_bytes("g/0.ts", b"0", group="g", store_id="old"))
    await asyncio.sleep(0)  # one turn of the loop: the add is writing, as "old"
    assert await spool.retarget("g", "old", "new") == 0  # nothing queued yet
    item = await adding
    assert item.store_id == "new"
    manifest = tmp_path / "spool" / f"{item.item_id:020d}.json"
    assert json.loads(manifest.read_text())["store_id"] == "new"


async def test_move_across_filesystems_copies_then_removes_source(
    tmp_path: Path,
    store: FlakyStore,
    make_spool: MakeSpool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_replace = durable.os.replace
    src = tmp_path / "elsewhere.ts"

    def replace(a: object, b: object) -> None:
        if Path(str(a)) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(durable.os, "replace", replace)
    store.down = True
    spool = make_spool(store)
    await spool.start()
    src.write_bytes(b"E" * 32)
    await spool.add("e/x.ts", src, group="g")
    assert not src.exists()
    assert (tmp_path / "spool" / "00000000000000000001.data").read_bytes() == b"E" * 32
    store.down = False
    assert await spool.wait_idle(WAIT_S)
    assert await store.get_bytes("e/x.ts") == b"E" * 32


async def test_a_file_written_again_replaces_its_queued_copies(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool
) -> None:
    """A session's playlist goes into the spool after every segment: through an outage the
    backlog kept every version, each sent when the store came back. Queued replaceable copies
    of a key are dropped for the newest one; the copy already being tried stays (that attempt
    may land), the order of what is sent is kept, and a file not marked replaceable (a
    segment: a playlist queued before its copy may name it) is never dropped."""
    store.down = True
    spool = make_spool(store)
    await spool.start()
    await spool.add_bytes("s/seg0.ts", b"0", group="s")
    await store.wait_failures(1)  # the head is being tried (it waits for its retry)
    for n in range(1, 4):
        await spool.add_bytes("s/index.m3u8", b"v%d" % n, group="s", replaceable=True)
        await spool.add_bytes(f"s/seg{n}.ts", b"%d" % n, group="s")
    await spool.add_bytes("s/index.m3u8", b"v4", group="s", replaceable=True)
    await spool.add_bytes("t/index.m3u8", b"other group", group="t", replaceable=True)
    await spool.add_bytes("s/seg3.ts", b"3", group="s")  # not replaceable: both copies go
    assert (spool.depth, spool.superseded_total) == (7, 3)
    assert spool.bytes == 1 + 3 + 2 + len(b"other group") + 1
    assert len(_spool_files(tmp_path)) == 14  # the dropped ones' files are gone
    store.down = False
    assert await spool.wait_idle(WAIT_S)
    assert [k for k in store.uploaded if k.startswith("s/")] == [
        "s/seg0.ts", "s/seg1.ts", "s/seg2.ts", "s/seg3.ts", "s/index.m3u8", "s/seg3.ts",
    ]  # fmt: skip
    assert await store.get_bytes("s/index.m3u8") == b"v4"
    assert _spool_files(tmp_path) == []


async def test_the_copy_being_sent_stays_and_recovery_supersedes_too(
    tmp_path: Path, make_spool: MakeSpool
) -> None:
    """A key whose copy is being uploaded gets the newer one after it; and copies the last run
    left behind are superseded when the spool starts again."""
    down = FlakyStore(tmp_path / "objects")
    down.down = True
    first = make_spool(down)
    await first.start()
    await first.add_bytes("s/index.m3u8", b"v1", group="s", replaceable=True)
    await down.wait_failures(1)
    await first.add_bytes(
        "s/index.m3u8", b"v2", group="s", replaceable=True
    )  # v1 is the head: both stay
    assert (first.depth, first.superseded_total) == (2, 0)
    await first.aclose(drain_timeout=0)
    for name, data in (("00000000000000000003", b"v3"), ("00000000000000000004", b"v4")):
        # as a run that crashed after adding them (each durable: manifest written last)
        (tmp_path / "spool" / f"{name}.data").write_bytes(data)
        manifest = json.loads((tmp_path / "spool" / "00000000000000000002.json").read_bytes())
        manifest.update(item_id=int(name), size=len(data))  # (replaceable, as v2 was)
        (tmp_path / "spool" / f"{name}.json").write_text(json.dumps(manifest))

    up = FlakyStore(tmp_path / "objects")
    second = make_spool(up)
    await second.start()
    assert second.superseded_total == 3  # (recovered: nothing is in flight yet)
    assert await second.wait_idle(WAIT_S)
    assert up.uploaded == ["s/index.m3u8"]
    assert await up.get_bytes("s/index.m3u8") == b"v4"
    assert _spool_files(tmp_path) == []


async def test_a_superseded_copy_left_on_disk_never_outlives_its_replacement(
    tmp_path: Path, store: FlakyStore, make_spool: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dropped copy whose files could not be removed (EIO, a cancelled add, a crash) was
    uploaded at the next start, over the newer copy that had gone up meanwhile: a final
    playlist went back to a live one. The newer copy keeps its files until the older are
    gone, so a restart supersedes the older again."""
    store.down = True
    spool = make_spool(store)
    await spool.start()
    await spool.add_bytes("s/seg0.ts", b"0", group="s")
    await store.wait_failures(1)  # the head waits for its retry
    old = await spool.add_bytes("s/index.m3u8", b"live", group="s", replaceable=True)
    real_remove = Spool._remove_sync

    def failing(self: Spool, *item_ids: int) -> None:
        if old.item_id in item_ids:
            raise OSError(errno.EIO, "Input/output error")
        real_remove(self, *item_ids)

    monkeypatch.setattr(Spool, "_remove_sync", failing)
    await spool.add_bytes(
        "s/index.m3u8", b"final", group="s", replaceable=True
    )  # supersedes "live"
    store.down = False
    assert await spool.wait_idle(WAIT_S)
    assert await store.get_bytes("s/index.m3u8") == b"final"
    await spool.aclose(drain_timeout=0)
    monkeypatch.setattr(Spool, "_remove_sync", real_remove)

    again = make_spool(store)  # the next start
    await again.start()
    assert await again.wait_idle(WAIT_S)
    assert await store.get_bytes("s/index.m3u8") == b"final"
    assert again.superseded_total == 1 and _spool_files(tmp_path) == []
