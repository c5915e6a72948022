"""The local-disk object store on real files: atomic writes, sidecar types, listing, keys."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from storage import durable
from storage.errors import ObjectNotFound, StoreRefused
from storage.objects_local import MAX_KEY_BYTES, MAX_KEY_SEGMENT_BYTES, LocalObjectStore
from storage.presign import UrlSigner


@pytest.fixture
async def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


async def test_put_bytes_head_get(store: LocalObjectStore) -> None:
    info = await store.put_bytes("s1/index.m3u8", b"#EXTM3U\n")
    assert (info.key, info.size, info.content_type) == (
        "s1/index.m3u8",
        8,
        "application/vnd.apple.mpegurl",
    )
    assert info.modified.tzinfo is not None
    assert await store.get_bytes("s1/index.m3u8") == b"#EXTM3U\n"
    head = await store.head("s1/index.m3u8")
    assert head == info
    assert await store.head("s1/missing.ts") is None
    assert await store.head("s1/index.m3u8/deeper") is None


async def test_explicit_content_type_survives_in_sidecar(store: LocalObjectStore) -> None:
    await store.put_bytes("a/blob", b"x", content_type="text/x-custom")
    info = await store.head("a/blob")
    assert info is not None and info.content_type == "text/x-custom"
    assert (await store.head("a/blob")) == info
    # the object file holds exactly the bytes, nothing else
    assert (store.root / "a" / "blob").read_bytes() == b"x"


async def test_the_extension_type_needs_no_sidecar(store: LocalObjectStore) -> None:
    """The usual case writes one file (no sidecar to fsync); replacing an object that had a
    custom type with one of the extension's type drops the old sidecar."""
    await store.put_bytes("s/index.m3u8", b"#EXTM3U\n")
    assert not list(store.root.rglob("*.m3u8.*"))  # no sidecar beside or under .meta
    await store.put_bytes("s/index.m3u8", b"#EXTM3U\n", content_type="text/plain")
    head = await store.head("s/index.m3u8")
    assert head is not None and head.content_type == "text/plain"
    await store.put_bytes("s/index.m3u8", b"#EXTM3U\n")
    head = await store.head("s/index.m3u8")
    assert head is not None and head.content_type == "application/vnd.apple.mpegurl"


async def test_put_file_leaves_source_and_replaces(store: LocalObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "seg.ts"
    src.write_bytes(b"A" * 1000)
    info = await store.put_file("s/seg0.ts", src)
    assert info.size == 1000 and info.content_type == "video/mp2t"
    assert src.read_bytes() == b"A" * 1000
    src2 = tmp_path / "seg2.ts"
    src2.write_bytes(b"B" * 10)
    await store.put_file("s/seg0.ts", src2, content_type="video/other")
    assert await store.get_bytes("s/seg0.ts") == b"B" * 10
    head = await store.head("s/seg0.ts")
    assert head is not None and head.content_type == "video/other"
    # no temporary files left behind
    leftovers = [p.name for p in (store.root / "s").iterdir()]
    assert leftovers == ["seg0.ts"]


async def test_put_file_missing_source_is_refused(store: LocalObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StoreRefused):
        await store.put_file("k.ts", tmp_path / "nope.ts")


async def test_stream_in_chunks(store: LocalObjectStore) -> None:
    data = os.urandom(10_000)
    await store.put_bytes("big.bin", data)
    chunks = [c async for c in store.stream("big.bin", chunk_size=4096)]
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert b"".join(chunks) == data
    with pytest.raises(ObjectNotFound):
        async for _ in store.stream("absent.bin"):
            pass
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("absent.bin")


async def test_stream_keeps_the_object_it_began_with(store: LocalObjectStore) -> None:
    """An object replaced, then deleted, while a reader streams it: the reader still gets the
    whole old object, not a mix of two (a playlist rewritten while it downloads) nor a cut."""
    old, new = os.urandom(10_000), os.urandom(10_000)
    await store.put_bytes("live.bin", old)
    got = b""
    async with contextlib.aclosing(store.stream("live.bin", chunk_size=4096)) as chunks:
        async for chunk in chunks:
            if not got:
                await store.put_bytes("live.bin", new)
            elif len(got) == 4096:
                await store.delete("live.bin")
            got += chunk
    assert got == old
    assert await store.head("live.bin") is None
    await store.put_bytes("dir/inner.bin", b"x")
    with pytest.raises(ObjectNotFound):  # a directory is no object
        async for _ in store.stream("dir"):
            pass


async def test_a_stream_cancelled_while_opening_closes_its_file(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open runs in a thread that a cancel does not stop: the descriptor it returns late
    is closed (it leaked, one per recording deleted while its job began to download)."""
    await store.put_bytes("big.bin", b"x" * 100)
    loop = asyncio.get_running_loop()
    opening, release, closed = asyncio.Event(), threading.Event(), asyncio.Event()
    opened: list[int] = []
    real_open, real_close = os.open, os.close

    def slow_open(path: Any, flags: int, *args: Any) -> int:
        if not str(path).endswith("big.bin"):
            return real_open(path, flags, *args)
        loop.call_soon_threadsafe(opening.set)
        release.wait(10)
        opened.append(fd := real_open(path, flags, *args))
        return fd

    def watched_close(fd: int) -> None:
        real_close(fd)
        if fd in opened:
            loop.call_soon_threadsafe(closed.set)

    monkeypatch.setattr(os, "open", slow_open)
    monkeypatch.setattr(os, "close", watched_close)

    async def read() -> None:
        async for _ in store.stream("big.bin"):
            pass

    reader = asyncio.create_task(read())
    await opening.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    release.set()
    await asyncio.wait_for(closed.wait(), 10)


async def test_list_in_key_order_with_prefix(store: LocalObjectStore) -> None:
    keys = ["b/2.ts", "a/10.ts", "a/1.ts", "a/sub/x.ts", "ab.ts", "c.json"]
    for key in keys:
        await store.put_bytes(key, key.encode())
    assert [i.key async for i in store.list()] == sorted(keys)
    assert [i.key async for i in store.list("a/")] == ["a/1.ts", "a/10.ts", "a/sub/x.ts"]
    assert [i.key async for i in store.list("a")] == ["a/1.ts", "a/10.ts", "a/sub/x.ts", "ab.ts"]
    assert [i.key async for i in store.list("a/1")] == ["a/1.ts", "a/10.ts"]
    assert [i.key async for i in store.list("zzz/")] == []
    sizes = {i.key: i.size async for i in store.list()}
    assert sizes["a/sub/x.ts"] == len(b"a/sub/x.ts")


async def test_list_on_empty_store(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "never-created")
    assert [i async for i in store.list()] == []


async def test_delete(store: LocalObjectStore) -> None:
    await store.put_bytes("d/x.ts", b"1")
    await store.delete("d/x.ts")
    assert await store.head("d/x.ts") is None
    await store.delete("d/x.ts")  # missing is fine
    await store.delete("d")  # a "directory" is not an object
    assert [i async for i in store.list()] == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a//b",
        "a/../b",
        "..",
        "./a",
        "a/",
        ".meta/x",
        "a\\b",
        "nul\x00",
        "x" * (MAX_KEY_BYTES + 1),
        "a/" + "x" * (MAX_KEY_SEGMENT_BYTES + 1),
    ],
)
async def test_bad_keys_raise_value_error(store: LocalObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        await store.head(key)
    with pytest.raises(ValueError):
        await store.delete(key)


async def test_longest_key_is_accepted(store: LocalObjectStore) -> None:
    key = "/".join(["d" * (MAX_KEY_SEGMENT_BYTES - 1)] * 6)[: MAX_KEY_BYTES - 3] + ".ts"
    assert len(key.encode()) == MAX_KEY_BYTES
    await store.put_bytes(key, b"ok", "video/mp2t")  # (its sidecar's name is longer still)
    assert await store.get_bytes(key) == b"ok"
    longest = "e" * (MAX_KEY_SEGMENT_BYTES - 3) + ".ts"
    await store.put_bytes(longest, b"ok", "video/mp2t")
    assert await store.get_bytes(longest) == b"ok"


async def test_file_where_directory_needed_is_refused(store: LocalObjectStore) -> None:
    await store.put_bytes("a", b"x")
    with pytest.raises(StoreRefused):
        await store.put_bytes("a/b", b"y")


async def test_presigned_url(tmp_path: Path) -> None:
    assert await LocalObjectStore(tmp_path).presigned_url("k.ts") is None
    signer = UrlSigner(b"s" * 32, "http://127.0.0.1:1")
    store = LocalObjectStore(tmp_path, signer)
    url = await store.presigned_url("rec/k.ts", expires_s=30)
    assert url is not None and url.startswith("http://127.0.0.1:1/v1/objects/rec/k.ts?method=GET&")
    await store.aclose()
    await store.aclose()


async def test_put_file_links_on_same_filesystem(store: LocalObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "linked.ts"
    src.write_bytes(b"L" * 10)
    await store.put_file("l/linked.ts", src)
    assert src.stat().st_nlink == 2  # one inode, no copy
    assert (store.root / "l" / "linked.ts").stat().st_ino == src.stat().st_ino


async def test_put_file_copies_across_filesystems(
    store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(durable.os, "link", cross_device)
    src = tmp_path / "copied.ts"
    src.write_bytes(b"C" * 10)
    await store.put_file("c/copied.ts", src)
    assert src.stat().st_nlink == 1 and src.read_bytes() == b"C" * 10
    assert await store.get_bytes("c/copied.ts") == b"C" * 10


async def test_stream_a_range(store: LocalObjectStore) -> None:
    data = os.urandom(10_000)
    await store.put_bytes("r.bin", data)

    async def read(start: int, end: int | None) -> bytes:
        return b"".join([c async for c in store.stream("r.bin", 1000, start=start, end=end)])

    assert await read(0, None) == data
    assert await read(1500, 4499) == data[1500:4500]
    assert await read(9990, None) == data[9990:]
    assert await read(9990, 20_000) == data[9990:]
    assert await read(7, 7) == data[7:8]
