"""Notifications 1 (error) and 2 (warning) of cloud recordings, provoked for real: a uid past
subscribeUidGroup's bound, a bucket that fails (the files backed up), a uid's recorder and the
mix recorder losing their folder, a start that fails half-way, a full spool, a stop whose files
nobody confirms. Received by a real webhook receiver where a server is cheap enough."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloud_api import (
    acquire,
    call,
    cloud_app,
    details,
    events,
    fetched,
    publisher,
    receiver_up,
    serve,
    start,
    start_body,
    stop_body,
    types,
)
from cloud_rig import Rig, delete_bucket, storage
from media import encode_clip
from s3server import SeaweedS3
from test_cloud_recording_functional import AUD, packets_of

from api.cloud_recording import CloudFailure, Status
from api.cloud_recording_notices import ErrorCode, ErrorLevel, NoticeModule, WarnCode
from api.cloud_recording_routes import CLOUD, start_options
from api.cloud_recording_schema import parse_start
from api.keys import SPOOL, STORE
from mixer.playlist import Playlist

RMTREE_TRIES = 50  # (a recorder writes a file a second at most)

pytestmark = pytest.mark.slow

CLIP_US = 2_000_000
EVERYONE = {"subscribeAudioUids": ["#allstream#"], "subscribeVideoUids": ["#allstream#"]}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "data")


def warning(notices: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = details(notices, 2)
    return found


def error(notices: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = details(notices, 1)
    return found


async def test_a_uid_past_subscribe_uid_group_is_a_warning(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    receiver = await receiver_up(aiohttp_server)
    server = await serve(aiohttp_server, tmp_path / "data")
    app = await cloud_app(server, receiver.url)
    body = start_body(s3, s3_bucket, "capped", **EVERYONE)  # subscribeUidGroup 0: 2 uids
    async with aiohttp.ClientSession(headers=app.headers) as http:
        members = [await publisher(http, app, "capped", uid) for uid in ("1", "2", "3")]
        rid = await acquire(http, app, "capped")
        sid = await start(http, app, rid, "individual", body)
        await receiver.wait_for(lambda: 2 in types(events(receiver, sid)))
        for member in members:
            await member.close()
    notices = events(receiver, sid)
    assert types(notices) == [40, 30, 2]  # told after the start, not before
    assert warning(notices) == {
        "msgName": "cloud_recording_warning",
        "module": NoticeModule.RECORDER,
        "warnCode": WarnCode.UID_GROUP_FULL,
        "uid": "3",
        "maxUids": 2,
    }


async def test_a_failing_bucket_is_backed_up_with_a_warning(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    receiver = await receiver_up(aiohttp_server)
    server = await serve(aiohttp_server, tmp_path / "data")
    server.app[CLOUD].stop_upload_timeout_s = 1.0
    app = await cloud_app(server, receiver.url)
    clip = encode_clip("h264", duration_s=2.0, audio_codec="aac")
    async with aiohttp.ClientSession(headers=app.headers) as http:
        member = await publisher(http, app, "backed", "123")
        rid = await acquire(http, app, "backed")
        sid = await start(http, app, rid, "individual", start_body(s3, s3_bucket, "backed"))
        await asyncio.to_thread(delete_bucket, s3, s3_bucket)  # checked at start, gone now
        await member.send(clip)
        stop_url = f"{app.session_url(rid, sid, 'individual')}/stop"
        stopped = await call(http, "POST", stop_url, stop_body("backed"))
        await member.close()
    assert stopped["serverResponse"]["uploadingStatus"] == "backuped"
    await receiver.wait_for(lambda: 11 in types(events(receiver, sid)))
    notices = events(receiver, sid)
    assert types(notices) == [40, 30, 42, 41, 2, 31, 11]
    assert warning(notices) == {
        "msgName": "cloud_recording_warning",
        "module": NoticeModule.UPLOADER,
        "warnCode": WarnCode.BACKUPED,
        "uploadingStatus": "backuped",
    }
    backup = [i.key async for i in server.app[STORE].list(f"backup/{app.appid}/{sid}/")]
    names = {key.rsplit("/", 1)[1] for key in backup}
    assert {f["fileName"] for f in stopped["serverResponse"]["fileList"]} <= names
    assert sum(name.endswith(".ts") for name in names) >= 4  # audio and video, 2 s each


def remove_tree(path: Path) -> None:
    """``rmtree`` of a folder a recorder may still be writing a file into: again until it is
    gone (a file made between the listing and the ``rmdir`` leaves it not empty)."""
    for _ in range(RMTREE_TRIES):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
    raise AssertionError(f"{path} kept coming back")


async def test_a_failing_uid_recorder_is_an_error_and_the_others_go_on(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    receiver = await receiver_up(aiohttp_server)
    server = await serve(aiohttp_server, data)
    app = await cloud_app(server, receiver.url)
    clip = encode_clip("h264", duration_s=2.0, audio_codec="aac")
    async with aiohttp.ClientSession(headers=app.headers) as http:
        broken, fine = [await publisher(http, app, "split", uid) for uid in ("123", "456")]
        rid = await acquire(http, app, "split")
        sid = await start(http, app, rid, "individual", start_body(s3, s3_bucket, "split"))
        await broken.send(clip)
        await fine.send(clip)
        await receiver.wait_for(lambda: types(events(receiver, sid)).count(42) == 2)
        # uid 123's working folder goes (a disk failing under it): its next segment fails
        await asyncio.to_thread(remove_tree, data / "cloud" / sid / "123")
        await broken.send(clip, offset_us=CLIP_US)
        await fine.send(clip, offset_us=CLIP_US)
        await receiver.wait_for(lambda: 1 in types(events(receiver, sid)))
        stop_url = f"{app.session_url(rid, sid, 'individual')}/stop"
        stopped = await call(http, "POST", stop_url, stop_body("split"))
        await broken.close()
        await fine.close()
    response = stopped["serverResponse"]
    assert response["uploadingStatus"] == "uploaded"
    assert {f["uid"] for f in response["fileList"]} == {"123", "456"}  # 123's first part too
    await receiver.wait_for(lambda: 11 in types(events(receiver, sid)))
    notices = events(receiver, sid)
    assert sorted(t for t in types(notices) if t != 1) == [11, 30, 31, 40, 41, 42, 42]
    errors = details(notices, 1)
    (failure,) = [e for e in errors if e["errorCode"] == ErrorCode.UID_RECORDER_FAILED]
    for lost in errors:  # what 123 had written and not yet handed over went with its folder
        assert lost is failure or (
            lost["errorCode"] == ErrorCode.FILE_NOT_SPOOLED and "uid_s_123_" in lost["fileName"]
        )
    assert failure.pop("errorMsg").startswith("the recorder of uid 123 failed")
    assert failure == {
        "msgName": "cloud_recording_error",
        "module": NoticeModule.RECORDER,
        "errorLevel": ErrorLevel.MAJOR,
        "errorCode": ErrorCode.UID_RECORDER_FAILED,
        "stat": 0,
        "uid": "123",
    }
    # 456 was recorded throughout: its video is both clips, byte for byte
    video = await fetched(s3, s3_bucket, f"{sid}_split__uid_s_456__uid_e_video.m3u8", tmp_path)
    packets = await asyncio.to_thread(packets_of, s3.client(), s3_bucket, video, "video")
    assert [p.removeprefix(AUD) for p in packets] == [f.data for f in clip.of("video")] * 2


async def test_a_failing_mix_ends_the_session_abnormally(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    receiver = await receiver_up(aiohttp_server)
    server = await serve(aiohttp_server, data)
    server.app[CLOUD].segment_s = 0.5
    app = await cloud_app(server, receiver.url)
    body = start_body(s3, s3_bucket, "mixfail", **EVERYONE)
    del body["clientRequest"]["recordingConfig"]["subscribeUidGroup"]
    body["clientRequest"]["recordingConfig"]["transcodingConfig"] = {"width": 320, "height": 180}
    async with aiohttp.ClientSession(headers=app.headers) as http:
        rid = await acquire(http, app, "mixfail")
        sid = await start(http, app, rid, "mix", body)
        await receiver.wait_for(lambda: 42 in types(events(receiver, sid)))
        await asyncio.to_thread(remove_tree, data / "cloud" / sid)  # the mix's folder goes
        await receiver.wait_for(lambda: 11 in types(events(receiver, sid)))
        session_url = app.session_url(rid, sid, "mix")
        queried = (await call(http, "GET", f"{session_url}/query"))["serverResponse"]
        out = await call(http, "POST", f"{session_url}/stop", stop_body("mixfail"), status=400)
    assert queried["status"] == Status.EXITED_ABNORMALLY == 20
    assert out["code"] == 49
    notices = events(receiver, sid)
    assert types(notices) == [40, 30, 42, 1, 41, 31, 11]
    failure = error(notices)
    assert failure["errorMsg"].startswith("the mix recorder failed")
    assert (failure["module"], failure["errorLevel"], failure["errorCode"]) == (
        NoticeModule.RECORDER, ErrorLevel.FATAL, ErrorCode.MIX_RECORDER_FAILED,
    )  # fmt: skip
    (leave,) = details(notices, 41)
    (exit_,) = details(notices, 11)
    assert (leave["leaveCode"], exit_["exitStatus"]) == (4, 1)
    # what was recorded before the failure is in the bucket, its playlist ended
    assert await server.app[SPOOL].wait_group(sid, 10)
    assert queried["fileListMode"] == "string"
    playlist = await fetched(s3, s3_bucket, queried["fileList"], tmp_path)
    parsed = Playlist.parse(playlist.read_text())
    assert parsed.ended and parsed.segments


# the service on its own -------------------------------------------------------------------


async def test_a_start_that_fails_half_way_frees_its_resource(
    rig: Rig, s3: SeaweedS3, s3_bucket: str
) -> None:
    body = start_body(s3, s3_bucket, "room", **EVERYONE)
    del body["clientRequest"]["recordingConfig"]["subscribeUidGroup"]
    req = parse_start(body, "mix")
    service = await rig.open()
    work = rig.data / "work"
    await asyncio.to_thread(work.write_bytes, b"not a folder")  # the mix cannot make its own
    res = await service.acquire("app", "room", "527841")
    args = ("app", res.resource_id, "mix", "room", "527841", req.config.storage)
    options = start_options(req.config)
    with pytest.raises(CloudFailure) as err:
        await service.start(*args, **options)
    assert (err.value.code, err.value.http_status) == (500, 500)
    assert "may be started again" in err.value.reason
    assert service.sessions == {} and res.sid is None
    await asyncio.to_thread(work.unlink)
    session = await service.start(*args, **options)  # the same resource, once more
    assert session.status == Status.RECORDING and rig.of(session.sid) == [40, 30]
    kept = await rig.meta.list_cloud_resources("n1", datetime.fromtimestamp(0, UTC))
    assert [r.sid for r in kept] == [session.sid]
    assert [s.sid for s in await rig.meta.list_cloud_sessions("n1")] == [session.sid]
    await rig.close()


async def test_a_full_spool_is_one_warning(rig: Rig, s3: SeaweedS3, s3_bucket: str) -> None:
    service = await rig.open()
    res = await service.acquire("app", "room", "527841")
    member = await rig.join("room", "7")
    session = await service.start(
        "app", res.resource_id, "individual", "room", "527841", storage(s3, s3_bucket)
    )
    room = rig.spool.max_bytes
    rig.spool.max_bytes = 1  # nothing fits: every file waits
    rig.send("room", member, 2.0)
    await rig.wait_for(session.sid, 2)
    rig.spool.max_bytes = room  # room again: the files go in, in order
    assert await service.stop(session) == "uploaded"
    notices = [(e, d) for s, e, d in rig.notices if s == session.sid]
    warnings = [d for e, d in notices if e == 2]
    assert len(warnings) == 1  # however many files waited
    assert (warnings[0]["module"], warnings[0]["warnCode"]) == (
        NoticeModule.UPLOADER, WarnCode.SPOOL_FULL,
    )  # fmt: skip
    assert [e for e, _ in notices][-3:] == [41, 31, 11]
    # and every file that waited is in the bucket: each playlist's segments all there, 2 s
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    playlists = [k for k in keys if session.sid in k and k.endswith(".m3u8")]
    assert playlists
    for key in playlists:
        text = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
        listed = Playlist.parse(text).segments
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        assert listed and all(folder + seg.uri in keys for seg in listed), (key, keys)
        assert sum(seg.duration_s for seg in listed) == pytest.approx(2.0, abs=0.1)
    await rig.close()


async def test_files_nobody_confirms_are_an_error(rig: Rig, s3: SeaweedS3, s3_bucket: str) -> None:
    service = await rig.open()
    service.stop_upload_timeout_s = 0.3
    objects = rig.data / "objects"  # the server's own store fails too: no backup
    await asyncio.to_thread(shutil.rmtree, objects, True)
    await asyncio.to_thread(objects.write_bytes, b"not a folder")
    res = await service.acquire("app", "room", "527841")
    member = await rig.join("room", "7")
    session = await service.start(
        "app", res.resource_id, "individual", "room", "527841", storage(s3, s3_bucket)
    )
    await asyncio.to_thread(delete_bucket, s3, s3_bucket)
    rig.send("room", member, 2.0)
    assert await service.stop(session) == "unknown"
    assert rig.of(session.sid)[-4:] == [41, 1, 31, 11]
    (failure,) = [d for s, e, d in rig.notices if s == session.sid and e == 1]
    assert (failure["module"], failure["errorLevel"], failure["errorCode"]) == (
        NoticeModule.UPLOADER, ErrorLevel.MEDIUM, ErrorCode.UPLOAD_UNCONFIRMED,
    )  # fmt: skip
    assert failure["uploadingStatus"] == "unknown"
    await rig.close()
