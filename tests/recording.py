"""Helpers the end-to-end tests share: driving sessions over the API and reading back what
the server recorded."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
from wsclient import RawClient

from api.keys import SPOOL, STORE

EVENT_PATH = "/v1/customers/acme/profiles/support:processScreenRecordingSessionEvent"
PREFIX = "recordings/acme/support"
UPLOAD_TIMEOUT_S = 30.0


class HasUrl(Protocol):
    """A running server: in-process or a child process."""

    url: str

    @property
    def auth(self) -> dict[str, str]: ...


async def event(
    http: aiohttp.ClientSession, server: HasUrl, kind: str, sid: str = "", **fields: str
) -> dict[str, Any]:
    """POST one session event; asserts it was accepted and returns the response body."""
    body = {"eventType": kind, **({"sessionId": sid} if sid else {}), **fields}
    url = server.url + EVENT_PATH
    async with http.post(url, json={"sessionEvent": body}, headers=server.auth) as resp:
        out = await resp.json()
        assert resp.status == 200, out
        return out


async def start_session(http: aiohttp.ClientSession, server: HasUrl, **fields: str) -> str:
    """START a session and return its id."""
    out = await event(http, server, "EVENT_TYPE_START", **fields)
    return str(out["sessionEvent"]["sessionId"])


async def recording_client(
    http: aiohttp.ClientSession,
    server: Any,
    video: str | None = "h264",
    audio: str | None = "opus",
) -> tuple[str, RawClient]:
    """START a session and connect a protocol client to it, ready for media: the session id
    and the client (hello sent, the start control acknowledged, the tracks announced)."""
    sid = await start_session(http, server, userId="agent")
    client = RawClient(http, server.url)
    await client.connect()
    await client.hello(server.api_key, session_id=sid)
    start = await client.wait_control("start")
    await client.send({"t": "ack", "id": start["id"]})
    await client.tracks(video, audio)
    return sid, client


# a server whose spool is smaller than any segment: every closed segment is refused and waits
# where it was written (``server_factory(**FULL_SPOOL)``)
FULL_SPOOL: dict[str, Any] = {"recorder": {"segment_target_s": 1.0}, "spool": {"max_bytes": 2000}}


async def record_into_a_full_spool(
    http: aiohttp.ClientSession, server: Any, frames: list[Any], timeout_s: float
) -> tuple[str, RawClient]:
    """Record ``frames`` into a new session of a ``FULL_SPOOL`` server: all acknowledged, the
    spool full of its waiting segments. The session id and its client."""
    sid, client = await recording_client(http, server)
    seq = 0
    for frame in frames:
        seq = await client.media(frame)
    await client.wait_ack(seq)  # (acknowledged in full all the same)
    spool = server.app[SPOOL]
    assert await spool.wait_until(lambda: bool(spool.full), timeout_s)
    return sid, client


async def fetch_recording(server: Any, sid: str, dest: Path) -> tuple[Path, Path]:
    """Wait until the spool is empty, then copy the session's objects to ``dest``; returns the
    playlist and MP4 paths."""
    assert await server.app[SPOOL].wait_idle(UPLOAD_TIMEOUT_S)
    store = server.app[STORE]
    async for info in store.list(f"{PREFIX}/{sid}/"):
        data = await store.get_bytes(info.key)
        await asyncio.to_thread((dest / info.key.rsplit("/", 1)[-1]).write_bytes, data)
    return dest / "index.m3u8", dest / f"{sid}.mp4"


def count_frames(path: Path | str) -> tuple[int, int]:
    """Decoded video frames and decoded audio frames of a media file (or a URL FFmpeg reads)."""
    video = audio = 0
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                video += 1
            else:
                audio += 1
    return video, audio


def synced_rows(database: Path, tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    """What ``sql`` reads from the database file alone: a copy without its WAL, which holds
    the transactions committed and not yet synced (a power cut's view)."""
    copy = tmp_path / "after-power-cut.sqlite3"
    shutil.copyfile(database, copy)
    with sqlite3.connect(copy) as db:
        try:
            return list(db.execute(sql))
        except sqlite3.OperationalError:  # (not even the schema is in the file yet)
            return []
