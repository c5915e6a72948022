"""Recording into a real S3 server (SeaweedFS): every object read back with an independent
client; the store killed mid-recording and started again with nothing lost; a wrong key or
a missing bucket stop the server's start with the service's own error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from media import encode_clip
from recording import PREFIX, count_frames, event, recording_client
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

from api.keys import SPOOL
from storage.errors import StoreRefused

pytestmark = pytest.mark.slow

SEGMENT_S = 1.0
UPLOAD_TIMEOUT_S = 60.0
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".mp4": "video/mp4"}


def storage_settings(s3: SeaweedS3, bucket: str, **more: object) -> dict[str, object]:
    return {
        "backend": "s3",
        "bucket": bucket,
        "endpoint_url": s3.endpoint,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "addressing_style": "path",
        "connect_timeout_s": 1.0,
        "read_timeout_s": 5.0,
        **more,
    }


async def download_all(s3: SeaweedS3, bucket: str, prefix: str, dest: Path) -> dict[str, str]:
    """Every object under ``prefix``, fetched with a plain boto3 client; name → content type."""

    def fetch() -> dict[str, str]:
        client = s3.client()
        found: dict[str, str] = {}
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        for entry in listing.get("Contents", []):
            obj = client.get_object(Bucket=bucket, Key=entry["Key"])
            name = entry["Key"].rsplit("/", 1)[-1]
            (dest / name).write_bytes(obj["Body"].read())
            found[name] = obj["ContentType"]
        return found

    return await asyncio.to_thread(fetch)


async def record(
    http: aiohttp.ClientSession,
    server: Any,
    clip_frames: list[Any],
    split_at_s: float,
    between: Callable[[], Any] | None = None,
) -> str:
    """START, stream the clip (calling ``between`` at ``split_at_s``), END; the session id."""
    sid, client = await recording_client(http, server)
    seq = 0
    called = False
    for frame in clip_frames:
        if between is not None and not called and frame.pts_us >= split_at_s * 1e6:
            await client.wait_ack(seq)
            await between()
            called = True
        seq = await client.media(frame)
    await client.wait_ack(seq)  # every frame acknowledged, whatever the store is doing
    await event(http, server, "EVENT_TYPE_END", sid)
    assert (await client.closed())[0] == 1000
    return sid


def check_recording(dest: Path, sid: str, types: dict[str, str], video_frames: int) -> None:
    """The playlist is whole, every file it names arrived, the MP4 holds every frame."""
    for name, ctype in types.items():
        assert ctype == CONTENT_TYPES[Path(name).suffix], name
    playlist = (dest / "index.m3u8").read_text()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    named = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    segments = sorted(n for n in types if n.endswith(".ts"))
    assert sorted(named) == segments and len(segments) >= 4
    mp4_video, mp4_audio = count_frames(dest / f"{sid}.mp4")
    assert mp4_video == video_frames and mp4_audio > 0
    hls_video = sum(count_frames(dest / name)[0] for name in segments)
    assert hls_video == video_frames


async def test_recording_lands_in_the_bucket(
    server_factory: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server = await server_factory(
        recorder={"segment_target_s": SEGMENT_S}, storage=storage_settings(s3, s3_bucket)
    )
    clip = encode_clip("h264", duration_s=5.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid = await record(http, server, clip.frames, 0)
        assert await server.app[SPOOL].wait_idle(UPLOAD_TIMEOUT_S)
        async with http.get(
            f"{server.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}",
            headers=server.auth,
        ) as resp:
            session = await resp.json()
        mp4_entry = next(f for f in session["files"] if f["key"].endswith(".mp4"))
        assert mp4_entry["url"].startswith(s3.endpoint + "/" + s3_bucket + "/")
        async with http.get(mp4_entry["url"]) as resp:  # presigned by S3 itself
            assert resp.status == 200
            via_url = await resp.read()
        # the playlist's link is the server's, and names each segment by S3's presigned URL
        playlist_url = next(f["url"] for f in session["files"] if f["kind"] == "playlist")
        assert playlist_url.startswith(server.url + "/v1/objects/")
        played = await asyncio.to_thread(count_frames, playlist_url)
        async with http.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
    types = await download_all(s3, s3_bucket, f"{PREFIX}/{sid}/", tmp_path)
    check_recording(tmp_path, sid, types, clip.video_frames)
    assert via_url == (tmp_path / f"{sid}.mp4").read_bytes()
    assert played == count_frames(tmp_path / "index.m3u8") and played[0] == clip.video_frames
    # one latency observation per confirmed upload, by kind: each segment and the MP4 once
    segments = sum(1 for name in types if name.endswith(".ts"))
    count = "reelhouse_upload_latency_seconds_count"
    assert int(_metric(metrics, count + '{kind="segment"}')) == segments
    assert int(_metric(metrics, count + '{kind="mp4"}')) == 1
    assert int(_metric(metrics, count + '{kind="playlist"}')) >= 1  # rewritten per segment
    assert _metric(metrics, "reelhouse_upload_queue_depth") == "0"


def _metric(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + " "))


@pytest.fixture
async def own_s3(tmp_path: Path) -> AsyncIterator[SeaweedS3]:
    """A SeaweedFS of this test's own, to stop and start."""
    server = SeaweedS3(tmp_path / "weed")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)


async def test_store_down_mid_recording_then_back(
    server_factory: Any, own_s3: SeaweedS3, tmp_path: Path
) -> None:
    bucket = await asyncio.to_thread(own_s3.create_bucket, "outage")
    server = await server_factory(
        recorder={"segment_target_s": SEGMENT_S},
        spool={"retry_base_s": 0.05, "retry_max_s": 0.5},
        storage=storage_settings(own_s3, bucket),
    )
    spool = server.app[SPOOL]
    clip = encode_clip("h264", duration_s=6.0, audio_codec="opus")

    async def kill_store() -> None:
        # the first segment went up before the store goes
        assert await spool.wait_until(lambda: spool.uploaded_total > 0, UPLOAD_TIMEOUT_S)
        await asyncio.to_thread(own_s3.kill)

    async with aiohttp.ClientSession() as http:
        sid = await record(http, server, clip.frames, 2.5, kill_store)
        # with the store down, the rest of the recording waits in the spool
        failures_before = spool.upload_failures_total
        assert await spool.wait_until(
            lambda: spool.upload_failures_total >= failures_before + 3, UPLOAD_TIMEOUT_S
        )
        assert spool.depth > 0
        async with http.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
        assert int(_metric(metrics, "reelhouse_upload_queue_depth")) == spool.depth
        assert float(_metric(metrics, "reelhouse_upload_oldest_pending_seconds")) > 0
        # the playlists written meanwhile wait as one (the newest), not one per segment
        assert int(_metric(metrics, "reelhouse_uploads_superseded_total")) >= 1

        await asyncio.to_thread(own_s3.start)  # same ports, same data
        assert await spool.wait_idle(UPLOAD_TIMEOUT_S)

    dest = tmp_path / "out"
    dest.mkdir()
    types = await download_all(own_s3, bucket, f"{PREFIX}/{sid}/", dest)
    try:
        check_recording(dest, sid, types, clip.video_frames)
    except AssertionError as exc:  # (failed once in CI, not since: say what the store held)
        raise AssertionError(f"{exc}\n{await store_state(own_s3, bucket, sid)}") from exc


async def store_state(s3: SeaweedS3, bucket: str, sid: str) -> str:
    """The playlist object's metadata and the end of SeaweedFS's log, for a failure."""

    def read() -> str:
        key = f"{PREFIX}/{sid}/index.m3u8"
        head = s3.client().head_object(Bucket=bucket, Key=key)
        facts = {k: head.get(k) for k in ("ETag", "LastModified", "ContentLength")}
        log_tail = (s3.directory / "weed.log").read_text(errors="replace")[-6000:]
        return f"{key}: {facts}\nweed.log, last lines:\n{log_tail}"

    return await asyncio.to_thread(read)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret_key": "wrong-secret"}, "SignatureDoesNotMatch"),
        ({"bucket": "absent"}, "NoSuchBucket"),
    ],
)
async def test_wrong_key_or_missing_bucket_stops_the_start(
    server_factory: Any, s3: SeaweedS3, s3_bucket: str, change: dict[str, str], code: str
) -> None:
    with pytest.raises(StoreRefused) as err:
        await server_factory(storage={**storage_settings(s3, s3_bucket), **change})
    assert err.value.code == code


def test_cli_says_why_it_cannot_start(s3: SeaweedS3, s3_bucket: str, tmp_path: Path) -> None:
    env = {
        "REELHOUSE_STORAGE__BACKEND": "s3",
        "REELHOUSE_STORAGE__BUCKET": "absent",
        "REELHOUSE_STORAGE__ENDPOINT_URL": s3.endpoint,
        "REELHOUSE_STORAGE__ACCESS_KEY": ACCESS_KEY,
        "REELHOUSE_STORAGE__SECRET_KEY": SECRET_KEY,
        "REELHOUSE_STORAGE__ADDRESSING_STYLE": "path",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 2
    assert "cannot start" in done.stderr and "NoSuchBucket" in done.stderr
    assert "Traceback" not in done.stderr
