"""The spool's size cap, end to end: a session already recording keeps every acknowledged
frame while closed segments wait; a new session is refused with RESOURCE_EXHAUSTED until the
backlog drains."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media import encode_clip
from recording import (
    EVENT_PATH,
    FULL_SPOOL,
    count_frames,
    event,
    fetch_recording,
    record_into_a_full_spool,
)

pytestmark = pytest.mark.slow

WAIT_S = 30.0


async def test_full_spool_refuses_new_sessions_and_keeps_the_open_one(server_factory: Any) -> None:
    server = await server_factory(**FULL_SPOOL)
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        # the open session is acknowledged in full all the same
        _, client = await record_into_a_full_spool(http, server, clip.frames, WAIT_S)

        body = {"sessionEvent": {"eventType": "EVENT_TYPE_START", "userId": "another"}}
        async with http.post(server.url + EVENT_PATH, json=body, headers=server.auth) as resp:
            out = await resp.json()
        assert resp.status == 429, out
        assert out["code"] == 8 and "upload backlog is full" in out["message"]
        async with http.get(f"{server.url}/metrics") as resp:
            assert "reelhouse_spool_full 1" in (await resp.text()).splitlines()
        await client.close()


async def test_end_with_a_full_spool_finishes_at_once(server_factory: Any, tmp_path: Path) -> None:
    """END does not wait for uploads to make room: the session's files are on the disk already,
    so they go to the spool over its cap, and everything recorded reaches the store."""
    server = await server_factory(**FULL_SPOOL)
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, _ = await record_into_a_full_spool(http, server, clip.frames, WAIT_S)
        async with asyncio.timeout(WAIT_S):  # it used to wait for room that never came
            await event(http, server, "EVENT_TYPE_END", sid)
    playlist, mp4 = await fetch_recording(server, sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == clip.video_frames and audio > 0
    assert "#EXT-X-ENDLIST" in playlist.read_text()
