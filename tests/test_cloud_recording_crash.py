"""A cloud recording outlives a crash: ``reelhouse serve`` killed (SIGKILL) in the middle of a mix
that writes MP4s, then started again on its data folder. The mix records on, and the run the
crash cut short (in the playlist, in no MP4: a run builds its MP4s when it ends) gets its MP4
too, so every segment of the playlist is in exactly one MP4, in order."""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from botocore.exceptions import ClientError
from cloud_api import (
    PREFIX,
    CloudApp,
    acquire,
    call,
    fetched,
    publisher,
    serve,
    start,
    start_body,
    stop_body,
)
from media import encode_clip
from s3server import SeaweedS3
from test_recovery_functional import SPOOLED_POLL_S, START_TIMEOUT_S, ServerProcess

from api.app import META_FILE
from api.apps import create_app_row
from api.customers import create_customer
from mixer.playlist import Playlist
from storage.meta_sqlite import SqliteMetaStore

pytestmark = pytest.mark.slow

CLIP_S = 2.0


async def app_in(data: Path) -> CloudApp:
    """An app and a customer, made in the data folder before the server first starts."""
    await asyncio.to_thread(data.mkdir, parents=True)
    meta = SqliteMetaStore(data / META_FILE)
    await meta.open()
    try:
        row = await create_app_row(meta, token_required=False)
        customer_id, secret = await create_customer(meta)
    finally:
        await meta.aclose()
    auth = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    return CloudApp(row.appid, row.webhook_secret, {"Authorization": auth})


def bucket_playlist(s3: SeaweedS3, bucket: str, name: str) -> Playlist | None:
    try:
        obj = s3.client().get_object(Bucket=bucket, Key=PREFIX + name)
    except ClientError:
        return None
    return Playlist.parse(obj["Body"].read().decode())


async def uploaded_until(s3: SeaweedS3, bucket: str, name: str, done: Any) -> None:
    """Wait until the bucket's playlist ``name`` satisfies ``done`` (the server may be another
    process: no event to await, so we poll)."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            playlist = await asyncio.to_thread(bucket_playlist, s3, bucket, name)
            if playlist is not None and done(playlist):
                return
            await asyncio.sleep(SPOOLED_POLL_S)


def video_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(video=0) if p.size)


async def test_a_mix_killed_mid_way_still_gets_the_mp4_of_its_lost_run(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app = await app_in(data)
    proc = ServerProcess(data)  # its segments are 0.7 s long (the recorder's setting)
    await proc.start()
    app.url = proc.url
    cname = "crashed"
    body = start_body(s3, s3_bucket, cname)
    del body["clientRequest"]["recordingConfig"]["subscribeUidGroup"]
    body["clientRequest"]["recordingConfig"]["transcodingConfig"] = {"width": 320, "height": 180}
    body["clientRequest"]["recordingFileConfig"] = {"avFileType": ["hls", "mp4"]}
    clip = encode_clip("h264", duration_s=CLIP_S, audio_codec="aac")
    try:
        async with aiohttp.ClientSession(headers=app.headers) as http:
            member = await publisher(http, app, cname, "123")
            rid = await acquire(http, app, cname)
            sid = await start(http, app, rid, "mix", body)
            name = f"{sid}_{cname}"
            await member.send(clip)
            await uploaded_until(s3, s3_bucket, f"{name}.m3u8", lambda p: len(p.segments) >= 2)
            assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()

    server = await serve(aiohttp_server, data)  # the restart: the recording goes on
    app = app.on(server)
    async with aiohttp.ClientSession(headers=app.headers) as http:
        member = await publisher(http, app, cname, "123")
        await member.send(clip, offset_us=int(CLIP_S * 1_000_000))

        def after_the_crash(playlist: Playlist) -> bool:
            cuts = [i for i, seg in enumerate(playlist.segments) if seg.discontinuity]
            return bool(cuts) and len(playlist.segments) > cuts[-1] + 1

        await uploaded_until(s3, s3_bucket, f"{name}.m3u8", after_the_crash)
        session_url = app.session_url(rid, sid, "mix")
        stopped = await call(http, "POST", f"{session_url}/stop", stop_body(cname))
        await member.close()
    response = stopped["serverResponse"]
    assert response["uploadingStatus"] == "uploaded"
    names = [f["fileName"] for f in response["fileList"]]
    assert names == [f"{name}.m3u8", f"{name}_000.mp4", f"{name}_001.mp4"]

    playlist = Playlist.parse((await fetched(s3, s3_bucket, names[0], tmp_path)).read_text())
    assert playlist.ended
    (cut,) = [i for i, seg in enumerate(playlist.segments) if seg.discontinuity]
    runs = (playlist.segments[:cut], playlist.segments[cut:])
    for run, mp4_name in zip(runs, names[1:], strict=True):
        segments = [await fetched(s3, s3_bucket, seg.uri, tmp_path) for seg in run]
        in_segments = sum([await asyncio.to_thread(video_packets, p) for p in segments])
        mp4 = await fetched(s3, s3_bucket, mp4_name, tmp_path)
        assert in_segments > 0
        assert await asyncio.to_thread(video_packets, mp4) == in_segments, mp4_name
