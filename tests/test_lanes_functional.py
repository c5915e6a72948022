"""Writer lanes are processes: a lane that crashes takes only its own sessions down, tells their
clients, refuses to end them (that would drop what only its WAL holds), and a restart recovers
every frame they were acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import API_KEY
from media import encode_clip
from recording import EVENT_PATH, count_frames, fetch_recording, recording_client, start_session
from test_recovery_functional import ServerProcess, finish_in_process
from wsclient import RawClient

from api.keys import SESSIONS
from ingest.errors import CloseCode

pytestmark = pytest.mark.slow

LANE_GONE_TIMEOUT_S = 20.0


def lane_pids(server_pid: int) -> list[int]:
    """The writer lanes of a ``reelhouse serve`` process: the forkserver's children."""

    def children(pid: int) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            out += [int(x) for x in (task / "children").read_text().split()]
        return out

    lanes = []
    for child in children(server_pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"forkserver" in cmdline:
            lanes += children(child)
    return lanes


async def post_event(
    http: aiohttp.ClientSession, url: str, kind: str, sid: str = ""
) -> tuple[int, dict[str, Any]]:
    body = {"eventType": kind, **({"sessionId": sid} if sid else {})}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(url + EVENT_PATH, json={"sessionEvent": body}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_crashed_lane_stops_only_its_sessions(server_factory: Any, tmp_path: Path) -> None:
    server = await server_factory(ingest={"writer_lanes": 2})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    half = len(clip.frames) // 2
    async with aiohttp.ClientSession() as http:
        doomed, lost = await recording_client(http, server)
        kept, alive = await recording_client(http, server)
        lanes = {sid: manager.sessions[sid].recorder.lane for sid in (doomed, kept)}
        assert lanes[doomed] is not lanes[kept]  # the least busy lane: one each
        for client in (lost, alive):
            for f in clip.frames[:half]:
                await client.media(f)
            await client.wait_ack(half)

        os.kill(lanes[doomed].lane.pid, signal.SIGKILL)
        for f in clip.frames[half:]:
            await lost.media(f)
        code, reason = await lost.closed()
        assert code == CloseCode.INTERNAL_ERROR, (code, reason)
        assert manager.pool.alive == 1

        # the other lane's session records on, and a new session goes to the running lane
        for f in clip.frames[half:]:
            await alive.media(f)
        await alive.wait_ack(len(clip.frames))
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", kept)
        assert status == 200, body
        _, mp4 = await fetch_recording(server, kept, tmp_path)
        video, _ = await asyncio.to_thread(count_frames, mp4)
        assert video == clip.video_frames
        newcomer = await start_session(http, server)
        assert manager.sessions[newcomer].recorder.lane is lanes[kept]

        # ending the crashed one now would drop the frames only the lane's WAL holds
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", doomed)
        assert status == 503, body
        assert body["code"] == 14 and "restart" in body["message"]  # UNAVAILABLE


async def test_a_restart_recovers_what_crashed_lanes_held(
    server_factory: Any, tmp_path: Path
) -> None:
    """Every lane killed: clients are told, START says why it cannot, the server still shuts
    down cleanly, and the next start replays the lanes' WALs: nothing acknowledged is lost."""
    proc = ServerProcess(tmp_path / "data")
    await proc.start()
    assert proc.proc is not None
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    half = len(clip.frames) // 2
    try:
        async with aiohttp.ClientSession() as http:
            sid, client = await recording_client(http, proc)
            for f in clip.frames[:half]:
                await client.media(f)
            await client.wait_ack(half)
            pids = await asyncio.to_thread(lane_pids, proc.proc.pid)
            assert pids
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for f in clip.frames[half:]:
                await client.media(f)
            code, _ = await client.closed()
            assert code == CloseCode.INTERNAL_ERROR
            acked = client.acked
            assert acked >= half
            status, body = await post_event(http, proc.url, "EVENT_TYPE_START")
            assert status == 503, body
            assert body["code"] == 14 and "restart the server" in body["message"]
            assert await proc.stop(signal.SIGTERM) == 0

            server = await server_factory(data_dir=proc.data_dir)
            again = RawClient(http, server.url)
            await again.connect()
            welcome = await again.hello(server.api_key, session_id=sid)
            assert welcome["acked_seq"] == acked  # what was acknowledged came back
            await again.close()
            video, resumed_at, _ = await finish_in_process(server, http, sid, clip, tmp_path)
        assert resumed_at == acked
        assert video == clip.video_frames
    finally:
        if proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()


async def test_lanes_do_not_outlive_a_killed_server(tmp_path: Path) -> None:
    """A SIGKILLed server leaves no lane behind: each sees its pipe close, syncs and exits."""
    proc = ServerProcess(tmp_path / "data")
    await proc.start()
    assert proc.proc is not None
    pids = await asyncio.to_thread(lane_pids, proc.proc.pid)
    assert len(pids) == (os.cpu_count() or 1)  # one per core by default
    exits = [process_exit(os.pidfd_open(pid)) for pid in pids]  # before the kill: no reuse
    proc.proc.kill()
    await proc.proc.wait()
    async with asyncio.timeout(LANE_GONE_TIMEOUT_S):
        await asyncio.gather(*exits)


async def process_exit(pidfd: int) -> None:
    """Wait until the process behind ``pidfd`` has exited (the fd turns readable)."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await gone
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
