"""The recordings API (seed 002) end to end on a real server: the whole flow on the local store
and on S3 (SeaweedFS), media checked by decoding it, events compared with what was sent."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import av
import pytest
from media import encode_webm
from s3server import SeaweedS3
from test_s3_recording_functional import storage_settings

from api import objects_route, recordings_jobs, recordings_video
from api.auth import create_tenant_key
from api.keys import META, STORE
from api.recordings import RECORDINGS
from mixer.errors import InvalidMedia

SETTLE_TIMEOUT_S = 60.0  # one 2 s clip transcoded on a shared 2-core machine
T0 = 1714816800000


def events(n: int, start: int = T0) -> list[dict[str, Any]]:
    """rrweb-shaped events, with unicode and nesting so a byte-level slip would show."""
    out: list[dict[str, Any]] = [
        {"type": 4, "data": {"href": "https://app.example.com/login"}, "timestamp": start}
    ]
    for i in range(1, n):
        out.append(
            {
                "type": 3,
                "data": {"source": 2, "text": f"clicked ✓ {i}", "pos": [i, i * 2.5, None]},
                "timestamp": start + i * 40,
            }
        )
    return out


def body(**more: Any) -> dict[str, Any]:
    """A create body with two events."""
    return {"started_at": "2026-05-04T10:00:00Z", "events": events(2), **more}


async def tenant_headers(server: Any, tenant: str, user: str = "u") -> dict[str, str]:
    """A bearer header for a fresh key of ``tenant``."""
    key, _ = await create_tenant_key(server.app[META], tenant, user)
    return {"Authorization": f"Bearer {key}"}


async def created_with_video(
    http: aiohttp.ClientSession, server: Any, auth: dict[str, str]
) -> dict[str, Any]:
    """A recording created with ``has_video``: its create answer (id, status, upload URL)."""
    async with http.post(
        server.url + "/v1/recordings", json=body(has_video=True), headers=auth
    ) as resp:
        assert resp.status == 201
        created: dict[str, Any] = await resp.json()
    return created


async def stored_keys(server: Any, prefix: str = "captures/") -> list[str]:
    """Every object key the server's store holds under ``prefix``."""
    return [info.key async for info in server.app[STORE].list(prefix)]


async def check_media(http: aiohttp.ClientSession, detail: dict[str, Any], auth: Any) -> None:
    """The HLS playlist plays (every frame decodes) and the thumbnail is a JPG picture."""
    async with http.get(detail["hls_url"], headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        playlist = await resp.text()
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert segments and "#EXT-X-ENDLIST" in playlist
    counts = {"video": 0, "audio": 0}
    for url in segments:
        async with http.get(url) as resp:
            assert resp.status == 200
            data = await resp.read()
        with av.open(io.BytesIO(data), format="mpegts") as ts:
            assert ts.streams.video[0].codec_context.name == "h264"
            for frame in ts.decode(*ts.streams):
                counts[frame.__class__.__name__.removesuffix("Frame").lower()] += 1
    assert counts["video"] >= 25 and counts["audio"] > 0  # 2 s at 15 fps, and the tone
    async with http.get(detail["thumbnail_url"]) as resp:
        assert resp.status == 200
        jpg = await resp.read()
    with av.open(io.BytesIO(jpg)) as image:
        frame = next(image.decode(video=0))
        assert (frame.width, frame.height) == (320, 240)


async def run_flow(server: Any) -> None:
    """Create with video, 409 before the PUT, PUT, confirm, ready, events back, delete."""
    auth = await tenant_headers(server, "acme")
    sent = events(500)
    video, _, _ = encode_webm(2.0)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/recordings",
            json={
                "name": "Login flow",
                "started_at": "2026-05-04T10:00:00Z",
                "events": sent,
                "has_video": True,
                "has_audio": True,
                "navigations": [{"url": "https://app.example.com/login", "timestamp_ms": 0}],
            },
            headers=auth,
        ) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        rid = created["id"]
        assert created["status"] == "uploading" and created["video_upload_url"]
        confirm = f"{server.url}/v1/recordings/{rid}/video/confirm"
        async with http.post(confirm, headers=auth) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["code"] == "video_not_uploaded"
        async with http.put(created["video_upload_url"], data=video) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(confirm, headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "processing"
        row = await asyncio.wait_for(
            server.app[RECORDINGS].processor.wait_settled(rid), SETTLE_TIMEOUT_S
        )
        assert row is not None and row.status == "ready", row
        async with http.get(f"{server.url}/v1/recordings/{rid}", headers=auth) as resp:
            detail = await resp.json()
        assert detail["status"] == "ready" and detail["event_count"] == 500
        assert detail["duration_ms"] == 499 * 40  # derived from the timestamps
        assert abs(detail["video_duration_ms"] - 2000) <= 100
        assert detail["navigations"] == [
            {"url": "https://app.example.com/login", "timestamp_ms": 0}
        ]
        await check_media(http, detail, auth)
        async with http.head(f"{server.url}/v1/recordings/{rid}/events", headers=auth) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
        async with http.get(f"{server.url}/v1/recordings/{rid}/events", headers=auth) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            assert await resp.json() == sent  # (on the HEAD's connection: it sent no body)
        prefix = f"captures/{detail['tenant_id']}/{rid}/"
        keys = await stored_keys(server, prefix)
        assert {
            prefix + "events.json.zst",
            prefix + "video/original",
            prefix + "thumbnail.jpg",
        } <= set(keys)
        assert any(k.endswith(".ts") for k in keys) and prefix + "hls/index.m3u8" in keys
        async with http.delete(f"{server.url}/v1/recordings/{rid}", headers=auth) as resp:
            assert resp.status == 204
        assert await stored_keys(server, prefix) == []
        async with http.get(f"{server.url}/v1/recordings/{rid}", headers=auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"


async def test_flow_on_local_store(server_factory: Any) -> None:
    await run_flow(await server_factory())


@pytest.mark.slow
async def test_flow_on_s3(server_factory: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    await run_flow(await server_factory(storage=storage_settings(s3, s3_bucket)))


async def test_without_video_is_ready_and_keeps_given_counts(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/recordings", json=body(), headers=auth) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created == {"id": created["id"], "status": "ready", "video_upload_url": None}
        async with http.post(
            server.url + "/v1/recordings",
            json=body(duration_ms=150000, event_count=1247, ended_at="2026-05-04T10:02:30Z"),
            headers=auth,
        ) as resp:
            given = await resp.json()
        async with http.get(f"{server.url}/v1/recordings/{given['id']}", headers=auth) as resp:
            detail = await resp.json()
        assert (detail["duration_ms"], detail["event_count"]) == (150000, 1247)
        assert detail["ended_at"] == "2026-05-04T10:02:30Z" and detail["journey_id"] is None
        async with http.post(
            f"{server.url}/v1/recordings/{given['id']}/video/confirm", headers=auth
        ) as resp:
            assert resp.status == 409  # no video was announced


async def processed(server: Any, video: bytes) -> dict[str, Any]:
    """Create a recording with ``video``, confirm it and wait for its processing: its GET."""
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        created = await created_with_video(http, server, auth)
        async with http.put(created["video_upload_url"], data=video) as resp:
            assert resp.status == 200
        url = f"{server.url}/v1/recordings/{created['id']}"
        async with http.post(url + "/video/confirm", headers=auth) as resp:
            assert resp.status == 200
        await asyncio.wait_for(
            server.app[RECORDINGS].processor.wait_settled(created["id"]), SETTLE_TIMEOUT_S
        )
        async with http.get(url, headers=auth) as resp:
            detail: dict[str, Any] = await resp.json()
    return detail


async def test_undecodable_video_fails_with_a_reason(server: Any) -> None:
    detail = await processed(server, b"not a video" * 1000)
    assert detail["status"] == "failed" and "decoded" in detail["failure_reason"]
    assert "/" not in detail["failure_reason"]  # (FFmpeg's message named the server's path)


def test_a_mux_refusal_is_said_without_the_path() -> None:
    """The segmenter quotes PyAV's error, which names the output file: the tenant's
    ``failure_reason`` says what went wrong, not where the server keeps its files."""
    cause = av.error.ArgumentError(22, "Invalid argument", "/srv/data/tmp/out/index_00003.ts")
    try:
        raise InvalidMedia(f"muxer refused a packet: {cause}") from cause
    except InvalidMedia as exc:
        said = recordings_video._said(exc)
    assert said == "muxer refused a packet: Invalid argument"


@pytest.mark.parametrize(
    ("limit", "value", "words"),
    [
        ("MAX_VIDEO_S", 1, "longer than 1 s"),
        ("MAX_VIDEO_FPS", 5, "more than 5 frames a second"),
        ("MAX_VIDEO_PIXELS", 320 * 239, "at most"),
    ],
)
async def test_a_video_past_the_limits_fails_saying_which(
    server: Any, monkeypatch: pytest.MonkeyPatch, limit: str, value: int, words: str
) -> None:
    """One job at a time serves every tenant: a file too long, too dense or too large fails
    rather than holding the others up for hours (limits lowered for a 2 s 15 fps clip)."""
    monkeypatch.setattr(recordings_video, limit, value)
    video, _, _ = encode_webm(2.0)
    detail = await processed(server, video)
    assert detail["status"] == "failed" and words in detail["failure_reason"], detail


async def test_processing_resumes_after_a_restart(server_factory: Any) -> None:
    first = await server_factory()
    auth = await tenant_headers(first, "acme")
    video, _, _ = encode_webm(1.0)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            first.url + "/v1/recordings", json=body(has_video=True), headers=auth
        ) as resp:
            created = await resp.json()
        async with http.put(created["video_upload_url"], data=video) as resp:
            assert resp.status == 200
    # a crash right after confirm: the row says processing, no job ran
    await first.app[META].update_recording(created["id"], status="processing")
    second = await server_factory(data_dir=first.data_dir)
    row = await asyncio.wait_for(
        second.app[RECORDINGS].processor.wait_settled(created["id"]), SETTLE_TIMEOUT_S
    )
    assert row is not None and row.status == "ready" and row.attempts == 1


async def test_delete_while_processing_leaves_nothing(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    video, _, _ = encode_webm(4.0)
    async with aiohttp.ClientSession() as http:
        created = await created_with_video(http, server, auth)
        async with http.put(created["video_upload_url"], data=video) as resp:
            assert resp.status == 200
        url = f"{server.url}/v1/recordings/{created['id']}"
        async with http.post(url + "/video/confirm", headers=auth) as resp:
            assert (await resp.json())["status"] == "processing"
        async with http.delete(url, headers=auth) as resp:
            assert resp.status == 204  # the job was stopped and awaited first
    assert await server.app[RECORDINGS].processor.wait_settled(created["id"]) is None
    assert await stored_keys(server) == []
    work = server.data_dir / "recordings-work"
    assert await asyncio.to_thread(lambda: list(work.iterdir())) == []


async def test_presigned_put_checks_signature_and_size(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        upload = (await created_with_video(http, server, auth))["video_upload_url"]
        forged = upload.replace("signature=", "signature=0")
        for bad in (forged, upload.replace("method=PUT", "method=GET")):
            async with http.put(bad, data=b"x") as resp:
                assert resp.status == 403
        monkeypatch.setattr(objects_route, "MAX_PUT_BYTES", 1000)
        async with http.put(upload, data=b"x" * 1001) as resp:
            assert resp.status == 413
        async with http.put(
            upload, data=b"y" * 1000, headers={"Content-Type": "video/webm"}
        ) as resp:
            assert resp.status == 200
    infos = [info async for info in server.app[STORE].list("captures/")]
    video = [i for i in infos if i.key.endswith("video/original")]
    assert [(i.size, i.content_type) for i in video] == [(1000, "video/webm")]


async def test_an_upload_url_lands_only_while_its_recording_waits_for_it(server: Any) -> None:
    """The PUT URL outlives a delete (and the video's processing): a PUT after a delete used
    to leave an orphan nothing lists, one after ``ready`` replaced the original. Refused now,
    also when the delete comes while the body is on its way."""
    auth = await tenant_headers(server, "acme")
    video, _, _ = await asyncio.to_thread(encode_webm, 1.0)
    async with aiohttp.ClientSession() as http:
        made = []
        for _ in range(2):
            async with http.post(
                server.url + "/v1/recordings", json=body(has_video=True), headers=auth
            ) as resp:
                made.append(await resp.json())
        gone, ready = made
        async with http.delete(f"{server.url}/v1/recordings/{gone['id']}", headers=auth) as resp:
            assert resp.status == 204
        async with http.put(gone["video_upload_url"], data=video) as resp:
            refused = await resp.json()
            assert resp.status == 400 and refused["code"] == 9  # FAILED_PRECONDITION
            assert "no recording waits" in refused["message"]

        async def delete_while_it_comes() -> Any:  # the delete lands mid-body
            yield video[:1000]
            async with http.delete(f"{server.url}/v1/recordings/{late['id']}", headers=auth):
                pass
            yield video[1000:]

        late = await created_with_video(http, server, auth)
        async with http.put(late["video_upload_url"], data=delete_while_it_comes()) as resp:
            assert resp.status == 400
        url = f"{server.url}/v1/recordings/{ready['id']}"
        async with http.put(ready["video_upload_url"], data=video) as resp:
            assert resp.status == 200
        async with http.post(url + "/video/confirm", headers=auth) as resp:
            assert resp.status == 200
        await asyncio.wait_for(
            server.app[RECORDINGS].processor.wait_settled(ready["id"]), SETTLE_TIMEOUT_S
        )
        async with http.put(ready["video_upload_url"], data=b"something else") as resp:
            assert resp.status == 400 and "in already" in (await resp.json())["message"]
    keys = [info.key async for info in server.app[STORE].list("captures/")]
    assert keys and all(f"/{ready['id']}/" in key for key in keys)  # no orphan of the others
    original = next(k for k in keys if k.endswith("video/original"))
    assert await server.app[STORE].get_bytes(original) == video


async def test_an_upload_overtaken_by_a_confirm_leaves_the_original_in_use(server: Any) -> None:
    """Two PUTs of one video: the slow one's body is still coming when the fast one lands and
    is confirmed. The slow one is refused before it is stored; it used to replace the original
    and then delete it, under the job processing it."""
    auth = await tenant_headers(server, "acme")
    video, _, _ = await asyncio.to_thread(encode_webm, 1.0)
    halfway, go_on = asyncio.Event(), asyncio.Event()

    async def slow_body() -> Any:
        yield b"\x1a" * 1000
        halfway.set()
        await go_on.wait()
        yield b"\x1a" * 1000

    async with aiohttp.ClientSession() as http:
        made = await created_with_video(http, server, auth)
        url = f"{server.url}/v1/recordings/{made['id']}"

        async def slow_put() -> tuple[int, Any]:
            async with http.put(made["video_upload_url"], data=slow_body()) as resp:
                return resp.status, await resp.json()

        slow = asyncio.create_task(slow_put())
        await halfway.wait()
        async with http.put(made["video_upload_url"], data=video) as resp:
            assert resp.status == 200
        async with http.post(url + "/video/confirm", headers=auth) as resp:
            assert resp.status == 200
        go_on.set()
        status, refused = await slow
        assert status == 400 and "in already" in refused["message"]
        await asyncio.wait_for(
            server.app[RECORDINGS].processor.wait_settled(made["id"]), SETTLE_TIMEOUT_S
        )
        async with http.get(url, headers=auth) as resp:
            assert (await resp.json())["status"] == "ready"
    keys = [info.key async for info in server.app[STORE].list("captures/")]
    original = next(k for k in keys if k.endswith("video/original"))
    assert await server.app[STORE].get_bytes(original) == video


def h264_with_aac_at(rate: int, seconds: float = 2.0) -> bytes:
    """An MP4 of H.264 (320x240, 15 fps) and AAC at ``rate`` Hz."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=15)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * 15)):
            frame = av.VideoFrame(320, 240, "yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        samples = int(seconds * rate)
        for start in range(0, samples, 1024):
            pcm = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            pcm.sample_rate, pcm.pts = rate, start
            for plane in pcm.planes:
                plane.update(bytes(plane.buffer_size))
            out.mux(audio.encode(pcm))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return buf.getvalue()


async def test_audio_the_writer_cannot_take_is_left_out(server: Any) -> None:
    """H.264 with 96 kHz AAC: the video is made playable without its audio (the job used to
    crash on the audio, leaving the recording ``processing`` for ever)."""
    video = await asyncio.to_thread(h264_with_aac_at, 96_000)
    detail = await processed(server, video)
    assert detail["status"] == "ready", detail
    assert 1500 <= detail["video_duration_ms"] <= 2500


async def test_a_job_that_fails_unexpectedly_ends_failed(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong in a job, the recording ends ``failed`` with a reason (a bug's
    details stay in the server's log), never ``processing`` for ever."""

    def broken(*args: Any) -> None:
        raise RuntimeError("/srv/reelhouse/work/x: a bug")

    monkeypatch.setattr(recordings_jobs, "process_video", broken)
    detail = await processed(server, b"anything")
    assert detail["status"] == "failed", detail
    assert "internal error" in detail["failure_reason"]
    assert "/srv" not in detail["failure_reason"]


async def test_a_new_upload_after_failures_gets_its_own_runs(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``failed``, a new upload confirmed again is processed: the runs the bad uploads
    used are not held against it (it failed at once with "too many times")."""
    monkeypatch.setattr(recordings_jobs, "MAX_ATTEMPTS", 1)
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        created = await created_with_video(http, server, auth)
        url = f"{server.url}/v1/recordings/{created['id']}"
        good, _, _ = await asyncio.to_thread(encode_webm, 2.0)
        for video, status in ((b"not a video" * 1000, "failed"), (good, "ready")):
            async with http.put(created["video_upload_url"], data=video) as resp:
                assert resp.status == 200
            async with http.post(url + "/video/confirm", headers=auth) as resp:
                assert resp.status == 200
            await asyncio.wait_for(
                server.app[RECORDINGS].processor.wait_settled(created["id"]), SETTLE_TIMEOUT_S
            )
            async with http.get(url, headers=auth) as resp:
                detail = await resp.json()
            assert detail["status"] == status, detail
