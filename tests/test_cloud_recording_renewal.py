"""An update's ``storageConfig`` renews a recording's credentials (the seed renews an STS token
this way every hour): checked first, then used for every file still to upload, the ones already
waiting in the spool included, across a restart; the old keys leave the disk. A real server,
a WebSocket publisher, the test S3 server whose bucket goes away after the start and comes
back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloud_api import (
    PREFIX,
    RECORDER_UID,
    acquire,
    call,
    cloud_app,
    fetched,
    publisher,
    receiver_up,
    recorder_subscribed,
    serve,
    start,
    start_body,
    stop_body,
)
from media import encode_clip
from s3server import (
    ACCESS_KEY,
    READ_ONLY_ACCESS_KEY,
    READ_ONLY_SECRET_KEY,
    RENEWED_ACCESS_KEY,
    RENEWED_SECRET_KEY,
    SeaweedS3,
)
from test_cloud_recording_functional import AUD, packets_of

from api.cloud_recording_routes import CLOUD
from api.keys import SPOOL

pytestmark = pytest.mark.slow

CLIP_S = 2.0
WAIT_S = 10.0


def kept_keys(data: Path) -> list[str]:
    """The access keys of the storage configs the server keeps on disk."""
    return sorted(
        json.loads(p.read_text())["accessKey"] for p in (data / "stores").glob("sc-*.json")
    )


def bucket_keys(s3: SeaweedS3, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=PREFIX)
    return [obj["Key"] for obj in listed.get("Contents", [])]


async def test_an_update_renews_the_credentials_of_waiting_and_later_files(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    receiver = await receiver_up(aiohttp_server)
    first = await serve(aiohttp_server, data)
    app = await cloud_app(first, receiver.url)
    cname = "renewed"
    clip = encode_clip("h264", duration_s=CLIP_S, audio_codec="aac")
    body = start_body(s3, s3_bucket, cname)
    writer_keys = body["clientRequest"]["storageConfig"]
    renewed_keys = {
        **writer_keys, "accessKey": RENEWED_ACCESS_KEY, "secretKey": RENEWED_SECRET_KEY
    }  # fmt: skip
    async with aiohttp.ClientSession(headers=app.headers) as http:
        member = await publisher(http, app, cname, "123")
        rid = await acquire(http, app, cname)
        sid = await start(http, app, rid, "individual", body)
        session_url = app.session_url(rid, sid, "individual")
        # the start's keys stop working (the hour is up; here the bucket goes away and comes
        # back): every upload fails, and waits
        await asyncio.to_thread(s3.client().delete_bucket, Bucket=s3_bucket)
        await member.send(clip)
        spool = first.app[SPOOL]
        assert await spool.wait_until(lambda: spool.upload_failures_total > 0, WAIT_S)
        assert spool.depth > 0
        assert kept_keys(data) == [ACCESS_KEY]

        def update(storage: dict[str, Any]) -> dict[str, Any]:
            return {"cname": cname, "uid": RECORDER_UID,
                    "clientRequest": {"storageConfig": storage}}  # fmt: skip

        await asyncio.to_thread(s3.client().create_bucket, Bucket=s3_bucket)
        # keys the bucket refuses: the API's error, and nothing changes
        wrong = {**renewed_keys, "secretKey": RENEWED_SECRET_KEY + "-wrong"}
        refused = await call(http, "POST", f"{session_url}/update", update(wrong), status=400)
        assert refused["code"] == 2 and refused["reason"].startswith("storageConfig:"), refused
        assert kept_keys(data) == [ACCESS_KEY]
        # keys that may read but not write: refused too (a listing passed them once)
        reader = {**writer_keys, "accessKey": READ_ONLY_ACCESS_KEY,
                  "secretKey": READ_ONLY_SECRET_KEY}  # fmt: skip
        refused = await call(http, "POST", f"{session_url}/update", update(reader), status=400)
        assert refused["code"] == 2 and "AccessDenied" in refused["reason"], refused

        await call(http, "POST", f"{session_url}/update", update(renewed_keys))
        assert await spool.wait_group(sid, WAIT_S)  # what waited went up with the new keys
        assert await asyncio.to_thread(bucket_keys, s3, s3_bucket)
        assert kept_keys(data) == [RENEWED_ACCESS_KEY]  # the old keys left the disk

        await first.close()  # a restart records on with the renewed keys
        second = await serve(aiohttp_server, data)
        app = app.on(second)
        session_url = app.session_url(rid, sid, "individual")
        recording = recorder_subscribed(second, "123")
        member = await publisher(http, app, cname, "123")
        await asyncio.wait_for(recording.wait(), WAIT_S)
        await member.send(clip, offset_us=int(CLIP_S * 1_000_000))
        stopped = await call(http, "POST", f"{session_url}/stop", stop_body(cname))
        await member.close()
    response = stopped["serverResponse"]
    assert response["uploadingStatus"] == "uploaded"
    assert kept_keys(data) == []  # ended and uploaded: no keys left behind
    (video_name,) = [f["fileName"] for f in response["fileList"] if "video" in f["fileName"]]
    video = await fetched(s3, s3_bucket, video_name, tmp_path)
    packets = await asyncio.to_thread(packets_of, s3.client(), s3_bucket, video, "video")
    assert [p.removeprefix(AUD) for p in packets] == [f.data for f in clip.of("video")] * 2


async def test_keys_leave_the_disk_once_a_finished_recordings_files_are_sent(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    """An async stop hands the files to the spool and ends: its keys stay only as long as
    files wait for them, and leave the disk when the last one is in the bucket, with no other
    call to the server."""
    data = tmp_path / "data"
    receiver = await receiver_up(aiohttp_server)
    server = await serve(aiohttp_server, data)
    app = await cloud_app(server, receiver.url)
    cname = "drained"
    clip = encode_clip("h264", duration_s=CLIP_S, audio_codec="aac")
    async with aiohttp.ClientSession(headers=app.headers) as http:
        member = await publisher(http, app, cname, "123")
        rid = await acquire(http, app, cname)
        sid = await start(http, app, rid, "individual", start_body(s3, s3_bucket, cname))
        # the bucket goes away after the start's check: every upload fails, and waits
        await asyncio.to_thread(s3.client().delete_bucket, Bucket=s3_bucket)
        await member.send(clip)
        body = stop_body(cname)
        body["clientRequest"]["async_stop"] = True
        session_url = app.session_url(rid, sid, "individual")
        stopped = await call(http, "POST", f"{session_url}/stop", body)
        await member.close()
    assert stopped["serverResponse"]["uploadingStatus"] == "unknown"
    spool = server.app[SPOOL]
    assert spool.depth > 0 and kept_keys(data) == [ACCESS_KEY]  # the waiting files need them
    await asyncio.to_thread(s3.client().create_bucket, Bucket=s3_bucket)
    assert await spool.wait_group(sid, WAIT_S * 3)  # sent, at the spool's next attempts
    await asyncio.wait_for(server.app[CLOUD].wait_released(), WAIT_S)
    assert kept_keys(data) == []
    assert any(key.endswith(".m3u8") for key in await asyncio.to_thread(bucket_keys, s3, s3_bucket))
