"""Writer lanes are processes: a lane that crashes takes only its own sessions down, tells their
clients, refuses to end them (that would drop what only its WAL holds), and a restart recovers
every frame they were acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import API_KEY
from media import encode_clip
from recording import EVENT_PATH, count_frames, fetch_recording, recording_client, start_session
from test_recovery_functional import ServerProcess
from wsclient import RawClient

from api.keys import SESSIONS
from ingest import lanes, writer
from ingest.errors import CloseCode
from ingest.lanes import FAILPOINT_CRASH
from ingest.recorder import SessionRecorder
from ingest.writer import WriterLane, WriterPool

pytestmark = pytest.mark.slow

LANE_GONE_TIMEOUT_S = 20.0
RECOVERY_TIMEOUT_S = 30.0
DOWN_RETRY_TEST_S = 2.0  # a crash-looping lane is tried again after this (not a minute)
# how long frames go unacknowledged to show they are held (ticks come every 25 ms)
UNACKED_WAIT_S = 0.5


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


async def test_sessions_fill_a_lane_before_the_next_is_used(server_factory: Any) -> None:
    """Few sessions share one lane (each lane's tick costs a round trip and an fsync); past
    ``lane_fill`` the next lane is used, then the least busy, and an ended session's place
    is taken again."""
    server = await server_factory(ingest={"writer_lanes": 2, "lane_fill": 2})
    manager = server.app[SESSIONS]
    async with aiohttp.ClientSession() as http:
        sids = [await start_session(http, server) for _ in range(5)]
        lanes = [manager.sessions[sid].recorder.lane for sid in sids]
        first, second = lanes[0], lanes[2]
        assert first is not second
        assert lanes == [first, first, second, second, first]  # both full: the least busy
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", sids[2])
        assert status == 200, body
        newcomer = await start_session(http, server)
        assert manager.sessions[newcomer].recorder.lane is second  # below its fill again


async def test_a_crashed_lane_restarts_and_its_sessions_go_on(
    server_factory: Any, tmp_path: Path
) -> None:
    """A lane killed mid-recording: its session's client is closed, the lane restarts and
    replays its WAL, the client reconnects and resends from the acknowledged sequence, and
    the recording is whole; the other lane's session never noticed."""
    server = await server_factory(ingest={"writer_lanes": 2, "lane_fill": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    half = len(clip.frames) // 2
    async with aiohttp.ClientSession() as http:
        doomed, lost = await recording_client(http, server)
        kept, alive = await recording_client(http, server)
        lanes = {sid: manager.sessions[sid].recorder.lane for sid in (doomed, kept)}
        assert lanes[doomed] is not lanes[kept]  # a lane fills with 1: one each
        for client in (lost, alive):
            for f in clip.frames[:half]:
                await client.media(f)
            await client.wait_ack(half)

        recovered = asyncio.create_task(manager.pool.wait_recovered())
        os.kill(lanes[doomed].lane.pid, signal.SIGKILL)
        for f in clip.frames[half:]:
            await lost.media(f)
        code, reason = await lost.closed()
        assert code == CloseCode.INTERNAL_ERROR, (code, reason)
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            await recovered
        assert (manager.pool.alive, manager.pool.restarts) == (2, 1)

        again = RawClient(http, server.url)
        await again.connect()
        welcome = await again.hello(server.api_key, session_id=doomed)
        assert welcome["acked_seq"] >= lost.acked >= half  # nothing acknowledged was lost
        await again.tracks()
        again.seq = welcome["acked_seq"]
        for f in clip.frames[welcome["acked_seq"] :]:
            await again.media(f)
        await again.wait_ack(len(clip.frames))
        for f in clip.frames[half:]:
            await alive.media(f)
        await alive.wait_ack(len(clip.frames))
        for sid in (doomed, kept):
            status, body = await post_event(http, server.url, "EVENT_TYPE_END", sid)
            assert status == 200, body
            _, mp4 = await fetch_recording(server, sid, tmp_path)
            video, audio = await asyncio.to_thread(count_frames, mp4)
            assert video == clip.video_frames and audio > 0, sid


async def test_a_failed_tick_restarts_its_lane_rather_than_lose_frames(
    server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick that fails on the server's side (a bug: here, once, before the lane writes)
    must not leave its frames unwritten under a later cumulative ack: the lane restarts as
    after a crash, the client resends from the WAL's acked_seq, and the recording is whole."""
    server = await server_factory(ingest={"writer_lanes": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    frames = list(clip.frames)
    half = len(frames) // 2
    call = WriterLane.call
    failed = asyncio.Event()

    async def buggy_call(self: WriterLane, op: str, *args: Any) -> Any:
        if op == "tick" and not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in the tick")
        return await call(self, op, *args)

    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        for f in frames[:half]:
            await client.media(f)
        await client.wait_ack(half)
        monkeypatch.setattr(WriterLane, "call", buggy_call)
        recovered = asyncio.create_task(manager.pool.wait_recovered())
        with contextlib.suppress(ConnectionError):
            for f in frames[half:]:
                await client.media(f)
        code, _ = await client.closed()
        assert failed.is_set() and code == CloseCode.INTERNAL_ERROR
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            await recovered
        assert manager.pool.restarts == 1
        assert await resend(http, server, sid, frames) == (None, "")
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", sid)
        assert status == 200, body
        _, mp4 = await fetch_recording(server, sid, tmp_path)
        video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == clip.video_frames and audio > 0


async def kill_its_lane(manager: Any, sid: str, client: RawClient) -> asyncio.Task[None]:
    """SIGKILL the session's lane; its client is closed with 1011. Returns a task that ends
    with the lane's restart."""
    recovered = asyncio.create_task(manager.pool.wait_recovered())
    os.kill(manager.sessions[sid].recorder.lane.lane.pid, signal.SIGKILL)
    code, _ = await client.closed()
    assert code == CloseCode.INTERNAL_ERROR
    return recovered


async def test_no_client_binds_while_its_session_is_replayed(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until a restarted lane has replayed a session, a hello for it is answered 1011: a
    welcome then would carry the acked_seq of the metadata (older than the WAL's), and the
    resend from there would collide with the replay."""
    server = await server_factory(ingest={"writer_lanes": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    replaying, go_on = asyncio.Event(), asyncio.Event()
    start = SessionRecorder.start

    async def held_start(self: SessionRecorder, records: Any = None) -> None:
        replaying.set()
        await go_on.wait()
        await start(self, records)

    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        for f in clip.frames:
            await client.media(f)
        await client.wait_ack(len(clip.frames))
        monkeypatch.setattr(SessionRecorder, "start", held_start)
        recovered = await kill_its_lane(manager, sid, client)
        await replaying.wait()
        early = RawClient(http, server.url)
        await early.connect()
        with pytest.raises(ConnectionError) as refused:
            await early.hello(server.api_key, session_id=sid)
        assert refused.value.args[0] == CloseCode.INTERNAL_ERROR
        go_on.set()
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            await recovered
        again = RawClient(http, server.url)
        await again.connect()
        welcome = await again.hello(server.api_key, session_id=sid)
        assert welcome["acked_seq"] == len(clip.frames)  # what the WAL holds
        await again.close()


async def test_nothing_is_acknowledged_on_a_lane_until_its_restart_has_replayed(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames a reopened session's client sends while its lane's restart is still replaying
    go to a WAL file that a restart cut short would drop: they are acknowledged only once the
    replay is done (then they are safe), not before."""
    server = await server_factory(ingest={"writer_lanes": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    half = len(clip.frames) // 2
    replayed, go_on = asyncio.Event(), asyncio.Event()
    finish = WriterPool.finish_restart

    async def held_finish(self: WriterPool, lane: Any) -> None:
        replayed.set()  # every session of the lane is reopened; its WAL not yet marked done
        await go_on.wait()
        await finish(self, lane)

    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        for f in clip.frames[:half]:
            await client.media(f)
        await client.wait_ack(half)
        monkeypatch.setattr(WriterPool, "finish_restart", held_finish)
        recovered = await kill_its_lane(manager, sid, client)
        await replayed.wait()
        again = RawClient(http, server.url)
        await again.connect()
        welcome = await again.hello(server.api_key, session_id=sid)
        assert welcome["acked_seq"] == half
        again.seq = half
        for f in clip.frames[half:]:
            await again.media(f)
        with pytest.raises(TimeoutError):  # (an absence: nothing to await but a bound)
            await asyncio.wait_for(again.wait_ack(half + 1), UNACKED_WAIT_S)
        go_on.set()
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            await recovered
            await again.wait_ack(len(clip.frames))


async def test_a_frame_waiting_for_room_gives_way_when_its_recorder_is_abandoned(
    server_factory: Any,
) -> None:
    """A lane restart abandons its sessions' recorders. A client frame waiting for room in
    such a queue (the lane takes nothing while it replays) is refused with 1011, so that the
    client reconnects, rather than wait for ever (and hold up a stop, which waits for every
    connection's handler)."""
    server = await server_factory(ingest={"writer_lanes": 1, "queue_frames": 4})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        recorder = manager.sessions[sid].recorder
        lane = recorder.lane
        lane.replayed.clear()  # as while a restart replays: nothing is taken from the queue
        try:
            for f in clip.frames[:8]:  # twice what the queue holds: the handler waits for room
                await client.media(f)
            await recorder.abandon()
            code, _ = await asyncio.wait_for(client.closed(), RECOVERY_TIMEOUT_S)
        finally:
            lane.replayed.set()
    assert code == CloseCode.INTERNAL_ERROR


async def resend(
    http: aiohttp.ClientSession, server: Any, sid: str, frames: list[Any]
) -> tuple[int | None, str]:
    """Reconnect to ``sid`` and send ``frames`` above the welcome's ``acked_seq``: (None, "")
    once all are acknowledged, else the code and reason the server closed with."""
    client = RawClient(http, server.url)
    await client.connect()
    welcome = await client.hello(server.api_key, session_id=sid)
    await client.tracks()
    client.seq = welcome["acked_seq"]
    with contextlib.suppress(ConnectionError):  # closed while sending: its code comes next
        for f in frames[client.seq :]:
            await client.media(f)
    try:
        await client.wait_ack(len(frames))
    except ConnectionError as exc:
        return exc.args[0], str(exc.args[1] or "")
    await client.close()
    return None, ""


async def test_a_frame_its_lane_dies_on_is_dropped_and_the_lane_goes_on(
    server_factory: Any, tmp_path: Path
) -> None:
    """A frame its writer dies on (a failpoint stands in for a crashing codec) after it was
    acknowledged: the restarted lane dies again replaying it, which names it; the next restart
    skips it, instead of leaving the lane down, and the client is told (4011) when it comes
    back. Both sessions sharing the lane record everything else."""
    server = await server_factory(ingest={"writer_lanes": 1, "failpoints": True})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    frames = list(clip.frames)
    half = len(frames) // 2
    at = next(i for i in range(half + 5, len(frames)) if frames[i].kind == "audio")
    poisoned = [
        *frames[:at],
        dataclasses.replace(frames[at], data=FAILPOINT_CRASH),
        *frames[at + 1 :],
    ]
    async with aiohttp.ClientSession() as http:
        doomed, lost = await recording_client(http, server)
        kept, alive = await recording_client(http, server)
        for client in (lost, alive):
            for f in frames[:half]:
                await client.media(f)
            await client.wait_ack(half)

        # 1: the lane dies writing the frame, and again replaying it: both sessions' clients
        # are told to come back, and the lane restarts twice instead of being left down
        recovered = asyncio.create_task(manager.pool.wait_recovered())
        with contextlib.suppress(ConnectionError):
            for f in poisoned[half:]:
                await lost.media(f)
        for client in (lost, alive):
            code, reason = await client.closed()
            assert code == CloseCode.INTERNAL_ERROR, (code, reason)
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            await recovered
        assert (manager.pool.alive, manager.pool.restarts) == (1, 2)
        assert manager.sessions[doomed].recorder.skip == {at + 1}

        # 2: the frame was acknowledged and is dropped: the client is told so on its return
        client = RawClient(http, server.url)
        await client.connect()
        welcome = await client.hello(server.api_key, session_id=doomed)
        assert welcome["acked_seq"] >= at + 1
        code, reason = await client.closed()
        assert code == CloseCode.INVALID_MEDIA and f"seq {at + 1}" in reason, (code, reason)
        assert await resend(http, server, doomed, poisoned) == (None, "")
        assert await resend(http, server, kept, frames) == (None, "")
        counts = {}
        for sid in (doomed, kept):
            status, body = await post_event(http, server.url, "EVENT_TYPE_END", sid)
            assert status == 200, body
            _, mp4 = await fetch_recording(server, sid, tmp_path)
            counts[sid] = await asyncio.to_thread(count_frames, mp4)
    assert counts[kept][0] == counts[doomed][0] == clip.video_frames
    # one 20 ms Opus frame fewer: one 1024-sample AAC frame fewer
    assert counts[doomed][1] == counts[kept][1] - 1, counts


async def test_a_lane_crashing_again_at_once_is_left_down_a_while(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash loop (a lane dying again right after its restart) is not restarted at once:
    its sessions say UNAVAILABLE and new ones go to the running lane, until a later restart
    (after ``DOWN_RETRY_S``) brings them back without the server restarting."""
    monkeypatch.setattr(writer, "DOWN_RETRY_S", DOWN_RETRY_TEST_S)
    server = await server_factory(ingest={"writer_lanes": 2, "lane_fill": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        doomed, client = await recording_client(http, server)
        other = await start_session(http, server)
        lane = manager.sessions[doomed].recorder.lane
        assert manager.sessions[other].recorder.lane is not lane
        for attempt in range(2):
            recovered = asyncio.create_task(manager.pool.wait_recovered())
            os.kill(lane.lane.pid, signal.SIGKILL)
            for f in clip.frames:
                await client.media(f)
            code, _ = await client.closed()
            assert code == CloseCode.INTERNAL_ERROR
            if attempt == 0:
                async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                    await recovered
                client = RawClient(http, server.url)
                await client.connect()
                welcome = await client.hello(server.api_key, session_id=doomed)
                await client.tracks()
                client.seq = welcome["acked_seq"]
        assert (manager.pool.alive, manager.pool.restarts) == (1, 1)
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", doomed)
        assert status == 503, body
        assert body["code"] == 14 and "restart" in body["message"]  # UNAVAILABLE
        newcomer = await start_session(http, server)
        assert manager.sessions[newcomer].recorder.lane is not lane
        async with asyncio.timeout(DOWN_RETRY_TEST_S + RECOVERY_TIMEOUT_S):
            await recovered  # the later restart
        assert (manager.pool.alive, manager.pool.restarts) == (2, 2)
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", doomed)
        assert status == 200, body


async def test_every_lane_killed_the_server_heals_itself(tmp_path: Path) -> None:
    """``reelhouse serve`` with all its lanes SIGKILLed from outside: the lanes come back,
    the client reconnects and resends, and the recording holds every frame."""
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
            running = f"reelhouse_writer_lanes_running {len(pids)}"
            async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                while True:  # another process: no event to await, so /metrics is polled
                    async with http.get(f"{proc.url}/metrics") as resp:
                        if running in (await resp.text()).splitlines():
                            break
                    await asyncio.sleep(0.05)
            again = RawClient(http, proc.url)
            async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                while True:  # the session is reopened once its lane has replayed the WAL
                    await again.connect()
                    try:
                        welcome = await again.hello(API_KEY, session_id=sid)
                        break
                    except (AssertionError, ConnectionError):
                        await asyncio.sleep(0.05)
            assert welcome["acked_seq"] >= half
            await again.tracks()
            again.seq = welcome["acked_seq"]
            for f in clip.frames[welcome["acked_seq"] :]:
                await again.media(f)
            await again.wait_ack(len(clip.frames))
            status, body = await post_event(http, proc.url, "EVENT_TYPE_END", sid)
            assert status == 200, body
            assert await proc.stop(signal.SIGTERM) == 0
        mp4 = tmp_path / "data" / "objects" / "recordings" / "acme" / "support" / sid / f"{sid}.mp4"
        video, audio = await asyncio.to_thread(count_frames, mp4)
        assert video == clip.video_frames and audio > 0
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


async def test_segments_closed_after_their_ack_are_reported_without_another_frame(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane writes frames into HLS a little after it acknowledged them: the segments they
    close reach the session all the same when no further frame (no tick) brings the news."""
    server = await server_factory(ingest={"writer_lanes": 1}, recorder={"segment_target_s": 1.0})
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    reported: list[int] = []
    arrived = asyncio.Event()
    queue = SessionRecorder._queue_segments

    def spy(self: SessionRecorder, done: list[Any]) -> None:
        if done:
            reported.extend(seg.index for seg, _ in done)
            arrived.set()
        queue(self, done)

    monkeypatch.setattr(SessionRecorder, "_queue_segments", spy)
    async with aiohttp.ClientSession() as http:
        _, client = await recording_client(http, server)
        for f in clip.frames:
            await client.media(f)
        await client.wait_ack(len(clip.frames))
        told = len(reported)
        arrived.clear()
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            while len(reported) < 2:  # 3 s in 1 s segments: the first two close before END
                await arrived.wait()
                arrived.clear()
        await client.close()
    assert told < 2 and reported[:2] == [0, 1], (told, reported)


async def test_a_drop_with_frames_in_flight_loses_and_repeats_nothing(
    server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket drops while the server holds frames it has not made durable (its lane's
    tick is held): the welcome names only what is durable, and the frames resent from there,
    those it holds already among them, are taken once each and all acknowledged."""
    server = await server_factory(ingest={"writer_lanes": 1})
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    frames = list(clip.frames)
    call = WriterLane.call
    held, release = asyncio.Event(), asyncio.Event()

    async def held_tick(self: WriterLane, op: str, *args: Any) -> Any:
        if op == "tick" and not release.is_set():
            held.set()
            await release.wait()
        return await call(self, op, *args)

    async with aiohttp.ClientSession() as http:
        sid, first = await recording_client(http, server)
        acked_before = first.acked
        monkeypatch.setattr(WriterLane, "call", held_tick)
        for f in frames[:40]:
            await first.media(f)
        await held.wait()  # (a tick holds some of them: none is durable yet)
        transport = first.ws._conn.transport  # type: ignore[union-attr]
        transport.abort()  # the network fails: no close handshake
        second = RawClient(http, server.url)
        await second.connect()
        welcome = await second.hello(server.api_key, session_id=sid)
        assert welcome["acked_seq"] == acked_before == 0  # only what is durable
        await second.tracks()
        for f in frames[:40]:  # held already: taken once, not a "seq skipped" close
            await second.media(f)
        release.set()
        for f in frames[40:]:
            last = await second.media(f)
        await second.wait_ack(last)
        assert last == len(frames)
        status, body = await post_event(http, server.url, "EVENT_TYPE_END", sid)
        assert status == 200, body
        _, mp4 = await fetch_recording(server, sid, tmp_path)
        async with http.get(server.url + "/metrics") as resp:
            metrics = dict(
                line.split(" ", 1) for line in (await resp.text()).splitlines() if line[:1] != "#"
            )
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == clip.video_frames
    assert abs(audio - clip.audio_frames * 960 / 1024) <= 2  # (Opus 960 → AAC 1024 samples)
    assert int(metrics["reelhouse_frames_in_total"]) == len(frames)  # each counted once


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [(None, 2), ("max 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("x", 2)],
)
def test_lanes_follow_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, expected: int
) -> None:
    """One lane per usable core: the affinity mask (here 2 of the host's 64), capped by a
    cgroup CPU quota (1.5 CPUs: 2 lanes; half a CPU: 1), not the host's count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert writer.usable_cpus(path) == expected


async def test_health_says_degraded_while_no_lane_runs(
    server_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its only lane in a crash loop, the server can record nothing: /healthz answers 503
    (a container's health check sees it), and 200 again once the lane is back."""
    monkeypatch.setattr(writer, "DOWN_RETRY_S", DOWN_RETRY_TEST_S)
    server = await server_factory(ingest={"writer_lanes": 1})
    manager = server.app[SESSIONS]
    clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        lane = manager.sessions[sid].recorder.lane
        for attempt in range(2):
            recovered = asyncio.create_task(manager.pool.wait_recovered())
            os.kill(lane.lane.pid, signal.SIGKILL)
            with contextlib.suppress(ConnectionError):
                for f in clip.frames:
                    await client.media(f)
            code, _ = await client.closed()
            assert code == CloseCode.INTERNAL_ERROR
            if attempt == 0:
                async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                    await recovered
                client = RawClient(http, server.url)
                await client.connect()
                welcome = await client.hello(server.api_key, session_id=sid)
                await client.tracks()
                client.seq = welcome["acked_seq"]
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 503
            health = await resp.json()
        assert health["status"] == "degraded"
        assert health["writerLanes"] == {"running": 0, "configured": 1}
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):  # (tried again after DOWN_RETRY_S)
            await recovered
        async with http.get(server.url + "/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


def test_a_lanes_records_name_the_session_being_written(tmp_path: Path) -> None:
    """The media code a lane calls knows no session: its warnings (a frame dropped back in
    time, a bad frame) now say whose, from the frame the lane is writing."""
    marker = lanes._Marker(tmp_path, failpoints=False)
    named = lanes._SessionOfRecords()

    def record() -> logging.LogRecord:
        out = logging.LogRecord("mixer.hls", logging.WARNING, "hls.py", 1, "dropped", (), None)
        assert named.filter(out)
        return out

    marker("s-42", 7, b"frame")
    assert record().session_id == "s-42"  # type: ignore[attr-defined]
    marker.clear()
    assert not hasattr(record(), "session_id")
