"""The reference client against a real server: waiting for START, a dropped socket mid-stream,
and the ``reelhouse publish`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Server
from recording import count_frames, event, fetch_recording, start_session
from wsclient import RawClient

from api.apps import create_app_row
from api.keys import CHANNELS, META
from ingest.publisher import Channel, Publisher
from ingest.tokens import mint
from mixer.sources import EncodedFrame, SourceInfo, TestPattern

DROP_AFTER_FRAMES = 40
CLI_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


class Tapped:
    """A source that counts what it yields and flags when ``DROP_AFTER_FRAMES`` have gone by."""

    def __init__(self, inner: TestPattern, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.info: SourceInfo = inner.info
        self.video_frames = 0
        self.passed = asyncio.Event()
        self._loop = loop

    def __iter__(self) -> Iterator[EncodedFrame]:
        for n, frame in enumerate(self.inner, 1):
            self.video_frames += frame.kind == "video"
            if n == DROP_AFTER_FRAMES:
                self._loop.call_soon_threadsafe(self.passed.set)
            yield frame

    def force_keyframe(self) -> None:
        self.inner.force_keyframe()

    def close(self) -> None:
        self.inner.close()


async def test_publisher_waits_for_start_survives_a_drop_and_loses_nothing(
    server_factory: Any, tmp_path: Path
) -> None:
    server = await server_factory(recorder={"segment_target_s": 1.0})
    source = Tapped(TestPattern(width=320, height=240, duration_s=4.0), asyncio.get_running_loop())
    welcomed = asyncio.Event()
    events: list[str] = []

    def on_event(name: str, info: dict[str, Any]) -> None:
        events.append(name)
        if name == "welcome":
            welcomed.set()

    async with aiohttp.ClientSession() as http:
        publisher = Publisher(
            source, server=server.url, api_key=server.api_key, platform_call_id="call-9",
            realtime=False, on_event=on_event, session=http,
        )  # fmt: skip
        task = asyncio.create_task(publisher.publish())
        await welcomed.wait()
        sid = (await event(http, server, "EVENT_TYPE_START", platformCallId="call-9"))[
            "sessionEvent"
        ]["sessionId"]
        await source.passed.wait()
        await publisher.drop_connection()
        result = await task
        assert result.session_id == sid
        assert result.reconnects == 1
        assert result.frames_acked == result.frames_sent == result.last_seq
        await event(http, server, "EVENT_TYPE_END", sessionId=sid)
        _, mp4 = await fetch_recording(server, sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == source.video_frames
    assert audio > 0
    assert events.count("reconnect") == 1


async def test_publisher_into_a_channel_goes_on_live_after_a_drop(server: Server) -> None:
    """The reference client publishes into a channel with a token: the channel's subscriber
    gets every frame it acknowledged; after a dropped socket it joins again, numbers from 1,
    resends nothing, and the media goes on to the end of the source."""
    app = await create_app_row(server.app[META])
    token = mint(app.certificate, app.appid, "room1", "agent-7")
    watch = server.app[CHANNELS].subscribe(app.appid, "room1")
    received: list[Any] = []

    async def consume() -> None:
        while (media := await watch.next_media()) is not None:
            received.append(media)

    consumer = asyncio.create_task(consume())
    source = Tapped(TestPattern(width=320, height=240, duration_s=3.0), asyncio.get_running_loop())
    events: list[dict[str, Any]] = []
    publisher = Publisher(
        source, server=server.url, api_key="", on_event=lambda n, i: events.append({"n": n, **i}),
        channel=Channel(app.appid, "room1", "agent-7", token),
    )  # fmt: skip
    task = asyncio.create_task(publisher.publish())
    await source.passed.wait()
    await publisher.drop_connection()
    result = await task
    watch.close()
    await consumer
    welcomes = [e for e in events if e["n"] == "welcome"]
    assert [(e["state"], e["uid"]) for e in welcomes] == [("PUBLISHING", "agent-7")] * 2
    assert result.reconnects == 1 and result.last_seq < result.frames_sent  # numbered from 1
    assert result.uid == "agent-7"
    assert {m.uid for m in received} == {"agent-7"}
    assert result.frames_acked <= len(received) <= result.frames_sent  # what was acked arrived
    video = [m for m in received if m.kind == "video"]
    assert video[0].keyframe and video[-1].pts_us >= video[0].pts_us + 2_500_000  # to the end


async def publish_testsrc(server: Server, sid: str) -> dict[str, Any]:
    """``reelhouse publish testsrc --duration 2 --fast`` into ``sid``: its last (done) line,
    after checking it exited 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "publish", "testsrc", "--server", server.url,
        "--api-key", server.api_key, "--session", sid, "--duration", "2", "--fast",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode == 0
    done: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return done


async def test_publish_command(server: Server, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        done = await publish_testsrc(server, sid)
        assert done["event"] == "done" and done["session_id"] == sid
        assert done["frames_sent"] == done["frames_acked"] > 0
        await event(http, server, "EVENT_TYPE_END", sessionId=sid)
        _, mp4 = await fetch_recording(server, sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == 30  # 2 s of the 15 fps pattern
    assert audio > 0


async def test_a_second_publisher_process_numbers_on_and_loses_nothing(
    server: Server, tmp_path: Path
) -> None:
    """Two ``reelhouse publish`` runs, one after the other, into one session (an app that
    restarted): the second numbers on from the welcome's acked_seq, so its frames are
    recorded, not taken for resent ones; both runs are in the MP4, a discontinuity between."""
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        results = []
        for _ in range(2):
            results.append(await publish_testsrc(server, sid))
        await event(http, server, "EVENT_TYPE_END", sessionId=sid)
        playlist, mp4 = await fetch_recording(server, sid, tmp_path)
    assert results[0]["frames_sent"] == results[1]["frames_sent"] > 0
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == 2 * 30  # 2 s of the 15 fps pattern, twice
    assert playlist.read_text().count("#EXT-X-DISCONTINUITY") == 1
    opus = sum(r["frames_sent"] - 30 for r in results)  # both runs' audio (960 samples each)
    assert abs(audio - opus * 960 / 1024) <= 4, (audio, opus)  # as AAC (1024 each), both


@pytest.mark.parametrize(
    ("source", "key", "session", "says"),
    [
        ("testsrc", "wrong", "sid", "4002 invalid token"),
        ("testsrc", "right", "no-such-session", "4003 session no-such-session not found"),
        ("missing.mp4", "right", "sid", "No such file or directory"),
        ("testsrc", "right", "ended", "has ended"),
    ],
)
async def test_publish_command_fails_in_one_line(
    server: Server, tmp_path: Path, source: str, key: str, session: str, says: str
) -> None:
    """A refusal (a wrong key, an unknown or ended session) or an unreadable source ends
    ``reelhouse publish`` with exit status 2 and one line on stderr that says why, not a
    traceback; the session it was given records on."""
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        source = source if source == "testsrc" else str(tmp_path / source)
        key = server.api_key if key == "right" else key
        if session == "ended":
            session = await start_session(http, server)
            await event(http, server, "EVENT_TYPE_END", sessionId=session)
        session = sid if session == "sid" else session
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "publish", source, "--server", server.url,
            "--api-key", key, "--session", session, "--duration", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode == 2
        assert err.decode().splitlines() == [err.decode().strip()]  # one line
        assert err.decode().startswith("reelhouse: publish: ") and says in err.decode()
        assert b"Traceback" not in out + err
        async with http.get(
            f"{server.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}",
            headers=server.auth,
        ) as resp:
            assert (await resp.json())["state"] == "RECORDING"


async def test_readme_example_runs(server: Server) -> None:
    """examples/record_session.py, as README shows it, against a real server."""
    example = Path(__file__).parent.parent / "examples" / "record_session.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(example), "--server", server.url, "--api-key", server.api_key,
        "--seconds", "2", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode == 0
    summary = json.loads(out)
    assert summary["framesSent"] == summary["framesAcked"] > 0
    assert float(summary["recordedDuration"].rstrip("s")) == pytest.approx(2.0, abs=0.2)
    assert set(summary["files"]) == {"playlist", "mp4"}
    assert all(url.startswith(server.url + "/v1/objects/") for url in summary["files"].values())


class _HeldPublisher(Publisher):
    """A publisher that counts the video frames it sends and holds its sender at a count."""

    def __init__(self, *args: Any, hold_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.video_sent = 0
        self.held, self.go = asyncio.Event(), asyncio.Event()
        self._hold_at = hold_at

    async def _send_frame(self, ws: Any, frame: EncodedFrame) -> None:
        await super()._send_frame(ws, frame)
        if frame.kind == "video":
            self.video_sent += 1
            if self.video_sent == self._hold_at:
                self.held.set()
                await self.go.wait()


async def test_the_publisher_resumes_on_a_keyframe(server: Server, tmp_path: Path) -> None:
    """After RESUME the reference client starts again on a keyframe (it forces one): P-frames
    first would be dropped by the server, which waits for a keyframe after a pause, so up to
    a keyframe interval (2 s) of sent video would not be recorded."""
    controls: list[str] = []
    paused = asyncio.Event()

    def on_event(name: str, info: dict[str, Any]) -> None:
        if name == "control":
            controls.append(info["action"])
            if info["action"] == "pause":
                paused.set()

    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        source = TestPattern(width=320, height=240, duration_s=4.0)
        pub = _HeldPublisher(
            source, server=server.url, api_key=server.api_key, session_id=sid,
            realtime=False, on_event=on_event, session=http, hold_at=20,
        )  # fmt: skip
        publishing = asyncio.create_task(pub.publish())
        await asyncio.wait_for(pub.held.wait(), 30)  # (frame 20: no keyframe comes till 30)
        await event(http, server, "EVENT_TYPE_PAUSE", sessionId=sid)
        await asyncio.wait_for(paused.wait(), 30)
        pub.go.set()
        await event(http, server, "EVENT_TYPE_RESUME", sessionId=sid)
        result = await asyncio.wait_for(publishing, 60)
        await event(http, server, "EVENT_TYPE_END", sessionId=sid)
        _, mp4 = await fetch_recording(server, sid, tmp_path)
    assert "resume" in controls and result.frames_sent == result.frames_acked
    video, _ = await asyncio.to_thread(count_frames, mp4)
    assert video == pub.video_sent and video > 20


async def test_a_full_server_is_tried_again_no_sooner_than_it_asks(server_factory: Any) -> None:
    """At ``[ingest] max_connections`` (plus as many in their hello) the upgrade is answered
    503 with Retry-After: 5; the client's next try waits that long, not its own 0.1 s."""
    server = await server_factory(ingest={"max_connections": 1})
    retried = asyncio.get_running_loop().create_future()

    def on_event(name: str, info: dict[str, Any]) -> None:
        if name == "reconnect" and not retried.done():
            retried.set_result(info)

    async with aiohttp.ClientSession() as http:
        holders = [RawClient(http, server.url) for _ in range(2)]
        for holder in holders:
            await holder.connect()
        publisher = Publisher(
            TestPattern(width=320, height=240, duration_s=1.0), server=server.url,
            api_key=server.api_key, platform_call_id="full", realtime=False, on_event=on_event,
            session=http,
        )  # fmt: skip
        task = asyncio.create_task(publisher.publish())
        try:
            info = await asyncio.wait_for(retried, CLI_TIMEOUT_S)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert info["delay_s"] >= 5.0 and "server busy (503), retry after 5 s" in info["reason"]
