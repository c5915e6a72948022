"""Cloud recordings outlive a server restart: the same sid records again, its playlists go on
after an EXT-X-DISCONTINUITY, notifications keep their sequence; resources, stopped sessions and
stops the restart interrupted are kept. Real servers on one data folder, WebSocket publishers,
a real webhook receiver and the test S3 server; the playlists are read back and decoded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from cloud_api import (
    PREFIX,
    RECORDER_UID,
    acquire,
    call,
    cloud_app,
    details,
    events,
    fetched,
    publisher,
    receiver_up,
    recorder_subscribed,
    serve,
    start,
    start_body,
    stop_body,
    types,
)
from cloud_rig import Rig, delete_bucket, read, read_bytes, storage
from media import encode_clip, ffprobe
from s3server import SeaweedS3
from test_cloud_recording_functional import AUD, green, packets_of

from api.cloud_recording import Status
from api.cloud_recording_routes import start_options
from api.cloud_recording_schema import parse_start, parse_update_layout
from api.keys import SPOOL
from api.webhooks_wire import SIGNATURE_HEADER, verify_signature
from mixer import mp4
from mixer.mix_config import MixStyle
from mixer.playlist import Playlist

pytestmark = pytest.mark.slow

CLIP_S = 2.0
CLIP_US = int(CLIP_S * 1_000_000)
DURATION_TOLERANCE_S = 0.1  # ffprobe's sum of segment lengths vs. the clips sent
DURATION_MS = 50  # a segment's wall-clock start vs. its place after the ones before it


async def test_a_recording_goes_on_after_a_restart(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    receiver = await receiver_up(aiohttp_server)
    first = await serve(aiohttp_server, data)
    app = await cloud_app(first, receiver.url)
    cname = "restarted"
    clip = encode_clip("h264", duration_s=CLIP_S, audio_codec="aac")
    async with aiohttp.ClientSession(headers=app.headers) as http:
        member = await publisher(http, app, cname, "123")  # there when the recording starts
        rid = await acquire(http, app, cname)
        sid = await start(http, app, rid, "individual", start_body(s3, s3_bucket, cname))
        await member.send(clip)
        await receiver.wait_for(lambda: 42 in types(events(receiver, sid)))
        await first.close()  # the recording is suspended: files finished, playlists not ended

        stem = f"{sid}_{cname}__uid_s_123__uid_e"
        video_name, audio_name = f"{stem}_video.m3u8", f"{stem}_audio.m3u8"
        second = await serve(aiohttp_server, data)
        app = app.on(second)
        # what the first run left in the spool goes up first: the playlist, not ended
        assert await second.app[SPOOL].wait_group(sid, 10)
        before = await fetched(s3, s3_bucket, video_name, tmp_path)
        earlier = Playlist.parse(before.read_text())
        assert not earlier.ended and len(earlier.segments) >= 2

        session_url = app.session_url(rid, sid, "individual")
        queried = (await call(http, "GET", f"{session_url}/query"))["serverResponse"]
        assert queried["status"] == Status.RECORDING
        assert {f["fileName"] for f in queried["fileList"]} == {video_name, audio_name}
        assert queried["sliceStartTime"] > 0

        recording = recorder_subscribed(second, "123")
        member = await publisher(http, app, cname, "123")  # the publisher reconnects
        await asyncio.wait_for(recording.wait(), 10)
        await member.send(clip, offset_us=CLIP_US)
        stopped = await call(http, "POST", f"{session_url}/stop", stop_body(cname))
        await member.close()
    response = stopped["serverResponse"]
    assert response["uploadingStatus"] == "uploaded"
    assert {f["fileName"] for f in response["fileList"]} == {video_name, audio_name}

    video = await fetched(s3, s3_bucket, video_name, tmp_path)
    playlist = Playlist.parse(video.read_text())
    assert playlist.ended
    assert playlist.segments[: len(earlier.segments)] == earlier.segments  # kept as they were
    after = playlist.segments[len(earlier.segments) :]
    assert after and after[0].discontinuity and not any(s.discontinuity for s in after[1:])
    assert video.read_text().count("#EXT-X-DISCONTINUITY") == 1
    # every segment is in the bucket, and the H.264 is the publisher's, both times
    packets = await asyncio.to_thread(packets_of, s3.client(), s3_bucket, video, "video")
    assert [p.removeprefix(AUD) for p in packets] == [f.data for f in clip.of("video")] * 2
    audio = await fetched(s3, s3_bucket, audio_name, tmp_path)
    sounds = await asyncio.to_thread(packets_of, s3.client(), s3_bucket, audio, "audio")
    assert b"".join(sounds) == b"".join(f.data for f in clip.of("audio")) * 2
    for path in (video, audio):
        info = await asyncio.to_thread(ffprobe, path, "-show_format")
        seconds = float(info["format"]["duration"])
        assert seconds == pytest.approx(2 * CLIP_S, abs=DURATION_TOLERANCE_S), path.name

    # notifications: one sequence across the restart, signed, a resume warning between
    await receiver.wait_for(lambda: 11 in types(events(receiver, sid)))
    notices = events(receiver, sid)
    assert [n["payload"]["sequence"] for n in notices] == list(range(len(notices)))
    assert types(notices) == [40, 30, 42, 2, 42, 41, 31, 11]
    for hit in receiver.accepted(sid):
        assert verify_signature(app.secret, hit.body, hit.headers[SIGNATURE_HEADER])
    (resumed,) = details(notices, 2)
    assert (resumed["module"], resumed["warnCode"]) == (0, 102)
    first_slice, second_slice = details(notices, 42)
    assert "discontinueUtcMs" not in first_slice
    began = earlier.segments[0].program_date_time  # the end of what was recorded before:
    assert began is not None  # the earlier segments' length after the first one's time
    ended_ms = (began.timestamp() + earlier.duration_s) * 1000
    assert second_slice["discontinueUtcMs"] == pytest.approx(ended_ms, abs=DURATION_MS)
    assert first_slice["startUtcMs"] < second_slice["discontinueUtcMs"]
    assert second_slice["discontinueUtcMs"] == resumed["discontinueUtcMs"]
    assert {f["fileName"] for f in details(notices, 31)[0]["fileList"]} == {
        video_name,
        audio_name,
    }


async def test_resources_and_stopped_sessions_are_kept(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await serve(aiohttp_server, data)
    app = await cloud_app(first, "http://127.0.0.1:9/hook")  # nobody listens: not waited for
    async with aiohttp.ClientSession(headers=app.headers) as http:
        stopped_rid = await acquire(http, app, "gone")
        sid = await start(http, app, stopped_rid, "individual", start_body(s3, s3_bucket, "gone"))
        stop_url = f"{app.session_url(stopped_rid, sid, 'individual')}/stop"
        out = await call(http, "POST", stop_url, stop_body("gone"), status=400)
        assert out["code"] == 435  # nobody published; the session exited all the same
        fresh_rid = await acquire(http, app, "later")
        await first.close()

        second = await serve(aiohttp_server, data)
        app = app.on(second)
        query = f"{app.session_url(stopped_rid, sid, 'individual')}/query"
        queried = await call(http, "GET", query)
        assert queried["serverResponse"]["status"] == Status.EXITED
        assert queried["serverResponse"]["fileList"] == []
        stop_url = f"{app.session_url(stopped_rid, sid, 'individual')}/stop"
        out = await call(http, "POST", stop_url, stop_body("gone"), status=400)
        assert out["code"] == 49  # stop repeated, across the restart
        # a resource acquired before the restart starts within its 5 minutes, once
        body = start_body(s3, s3_bucket, "later")
        later_sid = await start(http, app, fresh_rid, "individual", body)
        out = await call(http, "POST", f"{app.base}/resourceid/{fresh_rid}/mode/individual/start",
                         body, status=400)  # fmt: skip
        assert out["code"] == 7
        query = f"{app.session_url(fresh_rid, later_sid, 'individual')}/query"
        assert (await call(http, "GET", query))["serverResponse"]["status"] == Status.RECORDING


# the service on its own, with its store: faster to restart ---------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "data")


async def test_nobody_back_within_max_idle_time_ends_it(
    rig: Rig, s3: SeaweedS3, s3_bucket: str
) -> None:
    service = await rig.open()
    res = await service.acquire("app", "room", RECORDER_UID)
    member = await rig.join("room", "7")  # stays in the channel until the restart
    session = await service.start(
        "app", res.resource_id, "individual", "room", RECORDER_UID, storage(s3, s3_bucket),
        max_idle_s=0.5,
    )  # fmt: skip
    sid = session.sid
    rig.send("room", member, 2.0)
    await rig.wait_for(sid, 42)
    assert session.upload_tail is not None
    await session.upload_tail  # the first segment is in the spool, and its row stored
    rows = await rig.meta.list_cloud_segments(sid)  # written as they went, not at shutdown
    assert rows and {r.playlist for r in rows} <= set(session.playlists)
    await rig.close()

    service = await rig.open()  # nobody comes back: maxIdleTime counts from the restart
    resumed = service.sessions[sid]
    assert resumed.status == Status.RECORDING and resumed.idle_task is not None
    await asyncio.wait_for(resumed.idle_task, 10)
    assert resumed.status == Status.EXITED and resumed.exit_reason == "idle"
    assert rig.of(sid) == [40, 30, 42, 2, 41, 31, 11]
    leave = [d for s, e, d in rig.notices if s == sid and e == 41]
    assert leave == [{"msgName": "recorder_leave", "leaveCode": 2}]
    assert await service.spool.wait_group(sid, 10)
    video = f"{sid}_room__uid_s_7__uid_e_video.m3u8"
    text = await asyncio.to_thread(read, s3, s3_bucket, video)
    playlist = Playlist.parse(text)
    kept = [r.uri for r in await rig.meta.list_cloud_segments(sid) if r.playlist == video]
    assert playlist.ended and [s.uri for s in playlist.segments] == kept and len(kept) >= 2
    assert "#EXT-X-DISCONTINUITY" not in text  # nothing was recorded after the restart
    await rig.close()


async def test_a_stop_cut_short_by_a_restart_is_finished(
    rig: Rig, s3: SeaweedS3, s3_bucket: str
) -> None:
    service = await rig.open()
    res = await service.acquire("app", "room", RECORDER_UID)
    member = await rig.join("room", "7")
    session = await service.start(
        "app", res.resource_id, "individual", "room", RECORDER_UID, storage(s3, s3_bucket)
    )
    sid = session.sid
    rig.send("room", member, 2.0)
    await rig.wait_for(sid, 42)
    # the bucket goes away: the stop waits for its files, and the server stops meanwhile
    await asyncio.to_thread(delete_bucket, s3, s3_bucket)
    stopping = asyncio.create_task(service.stop(session))
    assert await service.spool.wait_until(lambda: session.status == Status.STOPPED, 10)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await rig.close()  # a session being stopped is not suspended
    assert rig.of(sid) == [40, 30, 42, 41]

    await asyncio.to_thread(s3.create_bucket, s3_bucket)  # back: the spool's recovery uploads
    service = await rig.open()
    finished = service.sessions[sid]
    assert finished.status == Status.EXITED and finished.uploading_status == "unknown"
    assert rig.of(sid) == [40, 30, 42, 41, 31, 11]  # 41 not twice
    assert await service.spool.wait_group(sid, 10)
    video = f"{sid}_room__uid_s_7__uid_e_video.m3u8"
    playlist = Playlist.parse(await asyncio.to_thread(read, s3, s3_bucket, video))
    assert playlist.ended and len(playlist.segments) >= 2
    for segment in playlist.segments:  # every listed segment reached the bucket
        await asyncio.to_thread(read_bytes, s3, s3_bucket, segment.uri)
    await rig.close()


async def start_mix(rig: Rig, s3: SeaweedS3, bucket: str, cname: str) -> tuple[Any, Any]:
    """The service opened on ``rig`` and a mix of ``cname`` started on it: 320x180, HLS and
    MP4, half-second segments (kept with the session: a resumed mix cuts the same)."""
    body = start_body(s3, bucket, cname)
    del body["clientRequest"]["recordingConfig"]["subscribeUidGroup"]
    body["clientRequest"]["recordingConfig"]["transcodingConfig"] = {"width": 320, "height": 180}
    body["clientRequest"]["recordingFileConfig"] = {"avFileType": ["hls", "mp4"]}
    req = parse_start(body, "mix")
    service = await rig.open()
    service.segment_s = 0.5
    res = await service.acquire("app", cname, RECORDER_UID)
    session = await service.start(
        "app", res.resource_id, "mix", cname, RECORDER_UID, req.config.storage,
        **start_options(req.config), request=body["clientRequest"], config=req.config,
    )  # fmt: skip
    return service, session


async def test_a_mix_goes_on_with_its_layout_and_mp4s_numbered_on(
    rig: Rig, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    service, session = await start_mix(rig, s3, s3_bucket, "mixed")
    sid = session.sid
    await rig.wait_for(sid, 42)  # black, the start's background
    on_green = {"mixedVideoLayout": 1, "backgroundColor": "#00FF00"}
    request = {"cname": "mixed", "uid": RECORDER_UID, "clientRequest": on_green}
    layout = parse_update_layout(request)
    style = MixStyle(layout.background_color)
    await service.update_layout(session, layout.layout, style, on_green)
    await rig.close()
    assert [e.name for e in session.mp4s] == [f"{sid}_mixed_000.mp4"]

    service = await rig.open()
    resumed = service.sessions[sid]
    assert resumed.layout_request == on_green and resumed.mix is not None
    await rig.wait_for_count(sid, 42, 2)  # a segment after the restart
    assert await service.stop(resumed) == "uploaded"
    _, files = resumed.file_list()
    names = [f["fileName"] for f in files]  # type: ignore[index]
    assert names == [f"{sid}_mixed.m3u8", f"{sid}_mixed_000.mp4", f"{sid}_mixed_001.mp4"]
    await rig.close()
    playlist = await asyncio.to_thread(fetch_from, s3, s3_bucket, names[0], tmp_path)
    parsed = Playlist.parse(playlist.read_text())
    assert parsed.ended
    (cut,) = [i for i, seg in enumerate(parsed.segments) if seg.discontinuity]
    segment = await asyncio.to_thread(fetch_from, s3, s3_bucket, parsed.segments[cut].uri,
                                      tmp_path)  # fmt: skip
    with av.open(str(segment)) as container:
        picture = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")
    assert green(picture[90, 160]), picture[90, 160]  # the layout of before the restart
    for name in names[1:]:
        mp4 = await asyncio.to_thread(fetch_from, s3, s3_bucket, name, tmp_path)
        with av.open(str(mp4)) as container:
            assert sum(1 for _ in container.decode(video=0)) > 0, name


def fetch_from(s3: SeaweedS3, bucket: str, name: str, dest: Path) -> Path:
    path = dest / name
    path.write_bytes(read_bytes(s3, bucket, PREFIX + name))
    return path


async def test_a_mix_mp4_that_fails_to_build_is_told_and_built_after_the_restart(
    rig: Rig, s3: SeaweedS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's MP4 fails to build at the suspend (a full disk): error 1 (201) says so and
    the restart builds it from its segments. It used to be silent, and its segments were
    noted as in an MP4, so no restart ever built it."""
    build = mp4.build_mp4

    def full_disk(*args: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mp4, "build_mp4", full_disk)
    service, session = await start_mix(rig, s3, s3_bucket, "failing")
    sid = session.sid
    await rig.wait_for(sid, 42)  # a segment is out
    await rig.close()
    errors = [d for s, e, d in rig.notices if s == sid and e == 1]
    assert [(d["module"], d["errorCode"], d["errorLevel"]) for d in errors] == [(1, 201, 4)]
    assert "could not be built" in errors[0]["errorMsg"] and session.mp4s == []
    assert "/" not in errors[0]["errorMsg"]  # (no server paths in a customer's notice)

    monkeypatch.setattr(mp4, "build_mp4", build)
    service = await rig.open()
    resumed = service.sessions[sid]
    assert await service.stop(resumed) == "uploaded"
    _, files = resumed.file_list()
    names = [f["fileName"] for f in files]  # type: ignore[index]
    assert f"{sid}_failing_000.mp4" in names, names
    await rig.close()
    rebuilt = await asyncio.to_thread(fetch_from, s3, s3_bucket, f"{sid}_failing_000.mp4", tmp_path)
    with av.open(str(rebuilt)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
