"""Nothing acknowledged is lost: a killed or stopped server replays its write-ahead log, and
the client resends what was not acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from conftest import API_KEY, Server
from media import Clip, encode_clip, encode_webm
from recording import (
    FULL_SPOOL,
    count_frames,
    event,
    fetch_recording,
    record_into_a_full_spool,
    recording_client,
    start_session,
    synced_rows,
)
from wsclient import RawClient

from api.keys import SESSIONS, SPOOL, STORE
from ingest.sessions import SessionManager

START_TIMEOUT_S = 30.0
LUMA_ERROR_LIMIT = 12.0  # mean |Δluma| per frame: x264 stays far below it, garbage far above
SPOOLED_POLL_S = 0.05  # the child's spool is in another process: no event to await, so we poll
OPUS_FRAME, AAC_FRAME = 960, 1024  # samples per frame at 48 kHz
AAC_FRAMES_SLACK = 2  # encoder priming and the partial last frame
SEGMENT_S = 0.7  # not a multiple of the clips' 1 s GOP: cuts must still land on input keyframes

pytestmark = pytest.mark.slow


class ServerProcess:
    """``reelhouse serve`` as a child process on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.api_key = API_KEY
        self.auth = {"Authorization": f"Bearer {API_KEY}"}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(self.data_dir), "--api-key", API_KEY,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={
                **os.environ,
                "REELHOUSE_RECORDER__SEGMENT_TARGET_S": str(SEGMENT_S),
                "REELHOUSE_STORAGE__PRIVATE_ENDPOINTS": "true",  # (the test S3 server's loopback)
            },
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        assert line.startswith(b"reelhouse listening on "), line
        self.url = line.decode().split()[-1]

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), START_TIMEOUT_S)


@pytest.fixture
async def proc(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    p = ServerProcess(tmp_path / "data")
    await p.start()
    yield p
    if p.proc is not None and p.proc.returncode is None:
        p.proc.kill()
        await p.proc.wait()


async def finish_in_process(
    server: Server,
    http: aiohttp.ClientSession,
    sid: str,
    clip: Clip,
    tmp_path: Path,
    codec: str = "h264",
) -> tuple[int, int, str]:
    """Reconnect to the restarted server, resend above acked_seq, END, decode the MP4."""
    client = RawClient(http, server.url)
    await client.connect()
    welcome = await client.hello(server.api_key, session_id=sid)
    await client.tracks(codec)
    client.seq = welcome["acked_seq"]
    for f in clip.frames[welcome["acked_seq"] :]:
        await client.media(f)
    await client.wait_ack(len(clip.frames))
    await event(http, server, "EVENT_TYPE_END", sid)
    playlist, mp4 = await fetch_recording(server, sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert audio > 0
    return video, welcome["acked_seq"], playlist.read_text()


async def spooled_segments(
    http: aiohttp.ClientSession, proc: ServerProcess, sid: str, count: int
) -> None:
    """Wait until the child server has spooled ``count`` segments of the session."""
    url = f"{proc.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}"
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            async with http.get(url, headers=proc.auth) as resp:
                files = (await resp.json())["files"]
            if sum(f["kind"] == "segment" for f in files) >= count:
                return
            await asyncio.sleep(SPOOLED_POLL_S)


def worst_luma_error(clip: Clip, mp4: Path) -> float:
    """The largest mean absolute luma difference between a clip's frames and the recording's."""
    decoder = av.CodecContext.create(clip_codec(clip), "r")
    sent = []
    for f in clip.frames:
        if f.kind == "video":
            for frame in decoder.decode(av.Packet(f.data)):
                sent.append(frame.to_ndarray(format="gray").astype(np.int16))
    with av.open(str(mp4)) as container:
        got = [
            frame.to_ndarray(format="gray").astype(np.int16) for frame in container.decode(video=0)
        ]
    return max(float(np.abs(a - b).mean()) for a, b in zip(sent, got, strict=True))


def clip_codec(clip: Clip) -> str:
    return next(f.codec for f in clip.frames if f.kind == "video")


async def stream_until_acked(
    http: aiohttp.ClientSession, url: str, sid: str, frames: list[Any], codec: str = "h264"
) -> int:
    client = RawClient(http, url)
    await client.connect()
    await client.hello(API_KEY, session_id=sid)
    await client.tracks(codec)
    for f in frames:
        await client.media(f)
    await client.wait_ack(len(frames))
    return client.acked


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_killed_server_replays_its_log(
    proc: ServerProcess, server_factory: Any, tmp_path: Path, codec: str
) -> None:
    clip = encode_clip(codec, duration_s=5.0, audio_codec="opus")
    cut = len(clip.frames) * 3 // 5
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, proc)
        acked = await stream_until_acked(http, proc.url, sid, clip.frames[:cut], codec)
        assert acked == cut
        await spooled_segments(http, proc, sid, 2)  # so the replay starts mid-stream
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL  # no chance to close anything
        server = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        video, resumed_at, playlist = await finish_in_process(
            server, http, sid, clip, tmp_path, codec
        )
    assert resumed_at == cut  # every acknowledged frame survived the kill
    assert video == clip.video_frames
    # and each came back right: a replay that began without its reference frames decodes
    # into garbage (transcoded video must cut segments on input keyframes for this)
    worst = await asyncio.to_thread(worst_luma_error, clip, tmp_path / f"{sid}.mp4")
    assert worst < LUMA_ERROR_LIMIT, worst
    # segments were spooled before the kill (waited for above): a discontinuity marks the
    # restart, since the rebuilt segment's continuity counters start again
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1


async def test_stopped_server_resumes_its_open_segment(
    proc: ServerProcess, server_factory: Any, tmp_path: Path
) -> None:
    clip = encode_clip("h264", duration_s=5.0, audio_codec="opus")
    cut = len(clip.frames) // 2
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, proc)
        client = RawClient(http, proc.url)
        await client.connect()
        await client.hello(API_KEY, session_id=sid)
        await client.tracks()
        for f in clip.frames[:cut]:
            await client.media(f)
        await client.wait_ack(cut)
        closed = asyncio.create_task(client.closed())  # a live client reads all the time
        assert await proc.stop(signal.SIGTERM) == 0
        code, reason = await closed
        assert code == 1001 and "shutting down" in reason
        server = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        spool = server.app[SPOOL]  # type: ignore[index]
        assert await spool.wait_idle(30.0)
        store = server.app[STORE]  # type: ignore[index]
        before = [
            i.key
            async for i in store.list(f"recordings/acme/support/{sid}/")
            if i.key.endswith(".ts")
        ]
        assert before  # segments finished before the shutdown were uploaded
        video, resumed_at, playlist = await finish_in_process(server, http, sid, clip, tmp_path)
    assert resumed_at == cut
    assert video == clip.video_frames
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1


async def one_lane(server_factory: Any) -> tuple[Server, Any, Path]:
    """A server whose sessions share one lane's log, rotated every 16 kB: (the server, its
    session manager, the log's directory)."""
    server = await server_factory(
        ingest={"wal_rotate_bytes": 16_000, "writer_lanes": 1}, recorder={"segment_target_s": 1.0}
    )
    return server, server.app[SESSIONS], server.data_dir / "wal" / "lane-0"


async def test_an_idle_session_does_not_hold_old_log_files(
    server_factory: Any, tmp_path: Path
) -> None:
    """One session records while another sits idle: the log still lets its old files go."""
    server, manager, wal_dir = await one_lane(server_factory)
    clip = encode_clip("h264", duration_s=4.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        await start_session(http, server)  # never sends anything
        sid = await start_session(http, server)
        acked = await stream_until_acked(http, server.url, sid, clip.frames)
        assert acked == len(clip.frames)
        assert manager.pool.wal_index > 3  # the log rotated several times

        def oldest() -> int:
            return min(int(p.stem.split("-")[1]) for p in wal_dir.glob("wal-*.bin"))

        # the first file holds the idle session's start: it must go all the same
        while await asyncio.to_thread(oldest) == 1:  # each release wakes us; else the timeout
            await asyncio.wait_for(manager.pool.wait_released(), timeout=20)
    # and only once the rows of what went into segments were synced (a power cut's view)
    sql = f"SELECT count(*) FROM files WHERE session_id = '{sid}' AND kind = 'segment'"
    synced = await asyncio.to_thread(synced_rows, server.data_dir / "meta.sqlite3", tmp_path, sql)
    assert synced[0][0] >= 1


async def test_metadata_that_cannot_be_made_durable_keeps_the_log_and_the_lane_ticking(
    server_factory: Any,
) -> None:
    """A WAL release waits for the metadata to be durable; when that fails (the metadata's
    disk), the files stay and the lane goes on acknowledging (it tries again later)."""
    server, manager, wal_dir = await one_lane(server_factory)
    failures = 0

    async def failing() -> None:
        nonlocal failures
        failures += 1
        raise OSError("no space left on the metadata's disk")

    manager.pool.before_release = failing
    clip = encode_clip("h264", duration_s=4.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        acked = await stream_until_acked(http, server.url, sid, clip.frames)
    assert acked == len(clip.frames) and failures > 0
    indices = [
        int(p.stem.split("-")[1]) for p in await asyncio.to_thread(wal_dir.glob, "wal-*.bin")
    ]
    assert min(indices) == 1 and manager.pool.restarts == 0  # nothing deleted, nothing killed


async def test_a_session_closed_first_keeps_the_log_files_of_its_open_segment(
    server_factory: Any,
) -> None:
    """A graceful stop closes sessions one by one, leaving each open segment to the WAL, while
    the lane's other sessions still tick and spool: what they let go of must not include the
    files the closed session's open segment is in (the next start replays it from them)."""
    server, manager, wal_dir = await one_lane(server_factory)
    clip = encode_clip("h264", duration_s=4.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        first = await start_session(http, server)
        await stream_until_acked(http, server.url, first, clip.frames[: len(clip.frames) // 2])
        closed = manager.sessions[first].recorder
        await closed.aclose()  # as the stop does, this session first
        other = await start_session(http, server)
        await stream_until_acked(http, server.url, other, clip.frames)
        needed = closed.wal_from  # (segments its close wrote out are spooled by now)
        lane = manager.pool.lanes[0]
        recorder = manager.sessions[other].recorder
        while recorder.wal_from <= needed:  # its segments spooled past the closed one's files
            await asyncio.wait_for(manager.pool.wait_released(), timeout=20)
        await lane.release()  # what the other session's next tick or spooled segment does

    def indices() -> set[int]:
        return {int(p.stem.split("-")[1]) for p in wal_dir.glob("wal-*.bin")}

    kept = await asyncio.to_thread(indices)
    assert set(range(needed, lane.wal_index + 1)) <= kept


async def test_a_session_that_fails_to_reopen_keeps_its_log_for_the_next_start(
    proc: ServerProcess, server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that cannot reopen a session (a bug, a disk error) must not drop its WAL with
    the other sessions' old files: the next start reopens it with every acknowledged frame."""
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    cut = len(clip.frames) * 2 // 3
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, proc)
        assert await stream_until_acked(http, proc.url, sid, clip.frames[:cut]) == cut
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        opened = SessionManager._open

        async def fails(self: SessionManager, row: Any, records: Any = None) -> Any:
            raise OSError(f"cannot reopen {row.session_id}")

        monkeypatch.setattr(SessionManager, "_open", fails)
        broken = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        assert sid not in broken.app[SESSIONS].sessions  # type: ignore[index]
        await broken.stop()
        monkeypatch.setattr(SessionManager, "_open", opened)
        server = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        video, resumed_at, _ = await finish_in_process(server, http, sid, clip, tmp_path)
    assert resumed_at == cut  # every acknowledged frame came through both starts
    assert video == clip.video_frames


async def test_a_segment_whose_file_a_power_cut_took_is_written_again_from_the_log(
    server_factory: Any, tmp_path: Path
) -> None:
    """A closed segment's row is written before the file enters the spool, and its hard link
    in keep/ is not fsync'd: a power cut in between leaves a row whose file is gone. The WAL
    still holds its frames (it lets go of them once the spooling is done): the next start
    writes the segment again from it, rather than skip it."""
    first = await server_factory(**FULL_SPOOL)  # the first segment's spooling waits
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, client = await record_into_a_full_spool(http, first, clip.frames, START_TIMEOUT_S)
        await client.close()
        await first.stop()  # the segment is left where it was written, its row stays
        rows = await asyncio.to_thread(segment_rows, first.data_dir, sid)
        assert rows and all(uploaded is None for _, uploaded in rows)
        keep = first.data_dir / "live" / sid / "keep"
        for path in await asyncio.to_thread(lambda: list(keep.glob("*.ts"))):
            path.unlink()  # what the power cut took
        server = await server_factory(data_dir=first.data_dir, recorder={"segment_target_s": 1.0})
        video, resumed_at, _ = await finish_in_process(server, http, sid, clip, tmp_path)
    assert resumed_at == len(clip.frames)
    assert video == clip.video_frames  # the segment came back whole


def segment_rows(data_dir: Path, sid: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(data_dir / "meta.sqlite3") as db:
        return list(
            db.execute(
                "SELECT key, uploaded_at FROM files WHERE session_id = ? AND kind = 'segment'",
                (sid,),
            )
        )


async def test_a_webm_session_is_replayed_whole_after_a_crash(
    proc: ServerProcess, server_factory: Any, tmp_path: Path
) -> None:
    """WebM chunks are pieces of one byte stream: after a crash mid-segment, the stream is
    demuxed again from the cluster its open segment needs (the stream's header kept with the
    cut), so the recording holds every frame that was acknowledged."""
    data, video_frames, audio_frames = await asyncio.to_thread(encode_webm, 4.0)
    chunks = [data[i : i + 3_000] for i in range(0, len(data), 3_000)]  # cut mid-cluster
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, proc)
        client = RawClient(http, proc.url)
        await client.connect()
        await client.hello(API_KEY, session_id=sid)
        await client.send({"t": "track", "id": 0, "kind": "video", "codec": "webm"})
        for i, chunk in enumerate(chunks, 1):
            await client.send(
                {"t": "media", "seq": i, "track": 0, "pts": i * 1000, "key": i == 1, "data": chunk}
            )
        await client.wait_ack(len(chunks))
        await spooled_segments(http, proc, sid, 2)  # the replay starts after a cut: mid-stream
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        server = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        assert sid in server.app[SESSIONS].sessions  # type: ignore[index]
        await event(http, server, "EVENT_TYPE_END", sid)
        _, mp4 = await fetch_recording(server, sid, tmp_path)
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert abs(video - video_frames) <= 1  # transcoded: the encoder may hold the last frame
    expected_audio = audio_frames * OPUS_FRAME / AAC_FRAME
    assert abs(audio - expected_audio) <= 2 * AAC_FRAMES_SLACK, (audio, expected_audio)


async def test_a_segment_whose_spooling_a_crash_cut_short_is_spooled_again(
    proc: ServerProcess, server_factory: Any, tmp_path: Path
) -> None:
    """A closed segment's row is written before the file enters the spool (so the upload can
    mark it); a crash between the two left a segment listed, never uploaded, and skipped by
    the replay. The state that crash leaves is made here by hand, after a clean stop: the row
    says not uploaded, the spool does not hold it, the object is not in the store."""
    clip = encode_clip("h264", duration_s=5.0, audio_codec="opus")
    cut = len(clip.frames) // 2
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, proc)
        for f in clip.frames[:cut]:
            await client.media(f)
        await client.wait_ack(cut)
        await spooled_segments(http, proc, sid, 2)
        assert await proc.stop(signal.SIGTERM) == 0
        lost = await asyncio.to_thread(forget_last_upload, proc.data_dir, sid)
        server = await server_factory(
            data_dir=proc.data_dir, recorder={"segment_target_s": SEGMENT_S}
        )
        assert await server.app[SPOOL].wait_idle(30.0)  # type: ignore[index]
        store = server.app[STORE]  # type: ignore[index]
        assert await store.head(lost) is not None  # uploaded again from its kept link
        video, resumed_at, _ = await finish_in_process(server, http, sid, clip, tmp_path)
    assert resumed_at == cut
    assert video == clip.video_frames  # the whole recording, that segment included


def forget_last_upload(data_dir: Path, sid: str) -> str:
    """Undo the last segment's upload: its row unmarked, its object deleted; returns its key."""
    with sqlite3.connect(data_dir / "meta.sqlite3") as db:
        (key,) = db.execute(
            "SELECT key FROM files WHERE session_id = ? AND kind = 'segment' "
            "ORDER BY seq DESC LIMIT 1",
            (sid,),
        ).fetchone()
        db.execute("UPDATE files SET uploaded_at = NULL WHERE key = ?", (key,))
    (data_dir / "objects" / key).unlink()
    return str(key)


async def test_a_second_server_on_the_data_directory_is_refused(proc: ServerProcess) -> None:
    """A second ``serve`` on a running server's data directory (by hand, a restart overlapping
    a slow stop) exits at once, before it reads anything: it used to replay and delete the
    running server's write-ahead log. Its port taken, a server says so and exits too."""
    wal_dir = proc.data_dir / "wal"
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, proc)
        clip = encode_clip("h264", duration_s=1.0, audio_codec="opus")
        await stream_until_acked(http, proc.url, sid, clip.frames, "h264")
        before = sorted((p.name, p.stat().st_ino) for p in wal_dir.rglob("wal-*.bin"))
        assert before
        port = proc.url.rsplit(":", 1)[1]
        for args in (["--data-dir", str(proc.data_dir)], ["--port", port]):
            other = proc.data_dir.parent / "other"
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                "--data-dir", str(other), "--api-key", API_KEY, *args,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(second.communicate(), START_TIMEOUT_S)
            assert second.returncode == 2, err
            expected = "is in use by another process" if "--data-dir" in args else "cannot listen"
            said = err.decode().splitlines()[-1]  # (after the logs)
            assert said.startswith("reelhouse: cannot start: ") and expected in said
        assert sorted((p.name, p.stat().st_ino) for p in wal_dir.rglob("wal-*.bin")) == before
        await event(http, proc, "EVENT_TYPE_END", sid)  # the first one is as it was
