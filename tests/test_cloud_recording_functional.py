"""The cloud recording API over HTTP, against a real server, aiortc publishers and the test S3
server: the seed's own start request, then query and stop; every listed object decodes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from cloud_api import start_body
from media import Clip, decode_counts, encode_clip, ffprobe
from s3server import SeaweedS3
from webrtc_peer import publish_into, wait_video
from wsclient import RawClient

from api.apps import create_app_row
from api.cloud_recording_routes import CLOUD
from api.customers import create_customer
from api.keys import CHANNELS, META, WHIP
from mixer.playlist import Playlist

pytestmark = pytest.mark.slow

WAIT_S = 30.0


@pytest.fixture
async def cloud(server_factory: Any) -> Any:
    server = await server_factory(webrtc={"host_addresses": "127.0.0.1"})
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    auth = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    base = f"{server.url}/v1/apps/{app.appid}/cloud_recording"
    return server, app, {"Authorization": auth}, base


async def publish(server: Any, appid: str, cname: str, uid: str, rgb: tuple[int, int, int]) -> Any:
    return await publish_into(server.app[WHIP], appid, cname, uid, rgb)


async def frames_from(server: Any, appid: str, cname: str, uids: set[str], count: int) -> None:
    await wait_video(server.app[CHANNELS], appid, cname, uids, count, WAIT_S)


async def test_seed_request_records_each_uid(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server, app, auth, base = cloud
    cname = "seedroom"
    body = start_body(s3, s3_bucket, cname)
    peers = [
        await publish(server, app.appid, cname, "123", (255, 0, 0)),
        await publish(server, app.appid, cname, "456", (0, 0, 255)),
        await publish(server, app.appid, cname, "789", (0, 255, 0)),  # not subscribed
    ]
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            acquire = {"cname": cname, "uid": "527841", "clientRequest": {}}
            async with http.post(f"{base}/acquire", json=acquire) as resp:
                assert resp.status == 200, await resp.text()
                rid = (await resp.json())["resourceId"]
            async with http.post(
                f"{base}/resourceid/{rid}/mode/individual/start", json=body
            ) as resp:
                started = await resp.json()
                assert resp.status == 200, started
            sid = started["sid"]
            assert (started["cname"], started["uid"], started["resourceId"]) == (
                cname,
                "527841",
                rid,
            )
            await frames_from(server, app.appid, cname, {"123", "456"}, 60)
            session_url = f"{base}/resourceid/{rid}/sid/{sid}/mode/individual"
            async with http.get(f"{session_url}/query") as resp:
                queried = await resp.json()
            assert queried["serverResponse"]["status"] == 5  # recording
            stop = {"cname": cname, "uid": "527841", "clientRequest": {}}
            async with http.post(f"{session_url}/stop", json=stop) as resp:
                stopped = await resp.json()
                assert resp.status == 200, stopped
            async with http.post(f"{session_url}/stop", json=stop) as resp:
                assert (await resp.json())["code"] == 49
    finally:
        for pc in peers:
            await pc.close()
    response = stopped["serverResponse"]
    assert response["uploadingStatus"] == "uploaded" and response["fileListMode"] == "json"
    files = response["fileList"]
    uids = {f["uid"] for f in files}
    assert uids == {"123", "456"}  # 789 was not subscribed
    assert sorted((f["uid"], f["trackType"]) for f in files) == [
        ("123", "audio"), ("123", "video"), ("456", "audio"), ("456", "video"),
    ]  # fmt: skip
    client = s3.client()
    for entry in files:
        name = entry["fileName"]
        assert name == f"{sid}_{cname}__uid_s_{entry['uid']}__uid_e_{entry['trackType']}.m3u8"
        assert entry["mixedAllUser"] is False and entry["isPlayable"] is True
        playlist = await asyncio.to_thread(fetch, client, s3_bucket, name, tmp_path)
        if entry["trackType"] != "video":
            continue
        first = Playlist.parse(playlist.read_text()).segments[0].uri
        segment = await asyncio.to_thread(fetch, client, s3_bucket, first, tmp_path)
        with av.open(str(segment)) as container:
            frame = next(iter(container.decode(video=0)))
        rgb = frame.to_ndarray(format="rgb24")[120, 160]
        expected = 0 if entry["uid"] == "123" else 2  # red, blue
        assert rgb[expected] > 180, (entry["uid"], rgb)


def fetch(client: Any, bucket: str, name: str, dest: Path) -> Path:
    """One object of the recording (under the fileNamePrefix) copied to ``dest``."""
    obj = client.get_object(Bucket=bucket, Key=f"directory1/directory2/{name}")
    path = dest / name
    path.write_bytes(obj["Body"].read())
    return path


def red(p: Any) -> bool:
    return bool(p[0] > 180 and p[1] < 80 and p[2] < 80)


def green(p: Any) -> bool:
    return bool(p[1] > 180 and p[0] < 80 and p[2] < 80)


def blue(p: Any) -> bool:
    return bool(p[2] > 180 and p[0] < 80 and p[1] < 80)


async def test_mix_mode_with_an_update_layout(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server, app, auth, base = cloud
    cname = "mixroom"
    body = start_body(s3, s3_bucket, cname)
    client_request = body["clientRequest"]
    del client_request["recordingConfig"]["subscribeUidGroup"]
    client_request["recordingConfig"]["subscribeAudioUids"] = ["#allstream#"]
    client_request["recordingConfig"]["subscribeVideoUids"] = ["#allstream#"]
    client_request["recordingFileConfig"] = {"avFileType": ["hls", "mp4"]}
    client_request["recordingConfig"]["transcodingConfig"] = {
        "width": 320,
        "height": 180,
        "mixedVideoLayout": 1,  # adaptive: red (joined first) left, green right
    }
    pcs = [
        await publish(server, app.appid, cname, "1", (255, 0, 0)),
        await publish(server, app.appid, cname, "2", (0, 255, 0)),
    ]
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            acquire = {"cname": cname, "uid": "527841", "clientRequest": {}}
            async with http.post(f"{base}/acquire", json=acquire) as resp:
                rid = (await resp.json())["resourceId"]
            async with http.post(f"{base}/resourceid/{rid}/mode/mix/start", json=body) as resp:
                started = await resp.json()
                assert resp.status == 200, started
            session_url = f"{base}/resourceid/{rid}/sid/{started['sid']}/mode/mix"
            await frames_from(server, app.appid, cname, {"1", "2"}, 45)
            # vertical, green large on the left, on blue: what the canvas shows changes
            vertical = {"mixedVideoLayout": 2, "maxResolutionUid": "2"}
            vertical["backgroundColor"] = "#0000FF"
            layout = {"cname": cname, "uid": "527841", "clientRequest": vertical}
            async with http.post(f"{session_url}/updateLayout", json=layout) as resp:
                assert resp.status == 200, await resp.text()
            bad = {"cname": cname, "uid": "527841", "clientRequest": {"mixedVideoLayout": 9}}
            async with http.post(f"{session_url}/updateLayout", json=bad) as resp:
                assert (await resp.json())["code"] == 1028
            await frames_from(server, app.appid, cname, {"1", "2"}, 45)
            stop = {"cname": cname, "uid": "527841"}
            async with http.post(f"{session_url}/stop", json=stop) as resp:
                stopped = await resp.json()
                assert resp.status == 200, stopped
    finally:
        for pc in pcs:
            await pc.close()
    files = stopped["serverResponse"]["fileList"]
    names = [f["fileName"] for f in files]
    assert names[0] == f"{started['sid']}_{cname}.m3u8" and names[1].endswith(".mp4")
    assert all(f["uid"] == "0" and f["mixedAllUser"] for f in files)
    key = f"directory1/directory2/{names[1]}"
    obj = await asyncio.to_thread(s3.client().get_object, Bucket=s3_bucket, Key=key)
    mp4 = tmp_path / names[1]
    mp4.write_bytes(obj["Body"].read())
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # before: adaptive halves; after: green fills the left, the right column below the
    # small red window shows the new blue background
    assert any(red(f[90, 80]) and green(f[90, 240]) for f in frames[: len(frames) // 2])
    last = frames[-2]
    assert green(last[90, 80]) and blue(last[150, 300]), (last[90, 80], last[150, 300])


async def test_errors_in_the_api_shape(cloud: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    _, _, auth, base = cloud
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/acquire", json={}) as resp:
            assert resp.status == 401
        async with http.post(f"{base}/acquire", data=b"{nope", headers=auth) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 8
        start_url = f"{base}/resourceid/garbage/mode/mix/start"
        async with http.post(start_url, json=start_body(s3, s3_bucket, "x"), headers=auth) as resp:
            assert (await resp.json())["code"] == 1001
        acquire = {"cname": "room", "uid": "527841"}
        async with http.post(f"{base}/acquire", json=acquire, headers=auth) as resp:
            rid = (await resp.json())["resourceId"]
        body = start_body(s3, s3_bucket, "other-room")
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=body, headers=auth
        ) as resp:
            out = await resp.json()
            assert out["code"] == 432, out
        body = start_body(s3, s3_bucket, "room")
        body["clientRequest"]["recordingConfig"]["maxIdleTime"] = 1
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=body, headers=auth
        ) as resp:
            out = await resp.json()
            assert out["code"] == 2 and "maxIdleTime" in out["reason"], out
        body = start_body(s3, s3_bucket, "room")
        body["clientRequest"]["storageConfig"]["secretKey"] = "wrong"
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=body, headers=auth
        ) as resp:
            out = await resp.json()
            assert out["code"] == 2 and "SignatureDoesNotMatch" in out["reason"], out
        async with http.post(
            f"{base}/resourceid/{rid}/mode/web/start", json=body, headers=auth
        ) as resp:
            assert (await resp.json())["code"] == 2
        query = f"{base}/resourceid/{rid}/sid/{'0' * 32}/mode/individual/query"
        async with http.get(query, headers=auth) as resp:
            assert resp.status == 404
        async with http.put(f"{base}/acquire", headers=auth) as resp:  # (RFC 9110 §15.5.6)
            assert resp.status == 405 and "POST" in resp.headers["Allow"]
        statuses, waits = [], set()
        for _ in range(30):  # past the per-app rate limit
            async with http.get(query, headers=auth) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    waits.add(resp.headers.get("Retry-After"))
        assert 429 in statuses and waits == {"1"}  # (how long to back off)


async def test_webhooks_tell_the_app(
    server_factory: Any, aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str
) -> None:
    from aiohttp import web

    from api.webhooks_wire import verify_signature

    received: list[dict[str, Any]] = []
    exited = asyncio.Event()
    secret_box: dict[str, str] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify_signature(
            secret_box["secret"], body, request.headers["X-Reelhouse-Signature"]
        )
        notice = json.loads(body)
        received.append(notice)
        if notice["eventType"] == 11:
            exited.set()
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(receiver, host="127.0.0.1", port=0)
    server = await server_factory(webrtc={"host_addresses": "127.0.0.1"})
    app = await create_app_row(
        server.app[META], token_required=False, webhook_url=str(hook_server.make_url("/hook"))
    )
    secret_box["secret"] = app.webhook_secret
    customer_id, secret = await create_customer(server.app[META])
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    }
    base = f"{server.url}/v1/apps/{app.appid}/cloud_recording"
    pc = await publish(server, app.appid, "hooked", "123", (255, 0, 0))
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(
                f"{base}/acquire", json={"cname": "hooked", "uid": "527841"}
            ) as resp:
                rid = (await resp.json())["resourceId"]
            body = start_body(s3, s3_bucket, "hooked")
            async with http.post(
                f"{base}/resourceid/{rid}/mode/individual/start", json=body
            ) as resp:
                sid = (await resp.json())["sid"]
            await frames_from(server, app.appid, "hooked", {"123"}, 30)
            stop = {"cname": "hooked", "uid": "527841"}
            async with http.post(
                f"{base}/resourceid/{rid}/sid/{sid}/mode/individual/stop", json=stop
            ) as resp:
                assert resp.status == 200
        await asyncio.wait_for(exited.wait(), WAIT_S)
    finally:
        await pc.close()
    assert [n["eventType"] for n in received] == [40, 30, 42, 41, 31, 11]
    assert [n["payload"]["sequence"] for n in received] == [0, 1, 2, 3, 4, 5]
    assert all(n["payload"]["sid"] == sid and n["payload"]["cname"] == "hooked" for n in received)
    uploaded = received[4]["payload"]["details"]
    assert {f["uid"] for f in uploaded["fileList"]} == {"123"}


# WebSocket publishers (encoded frames) recorded over the API -------------------------------

# FFmpeg's MPEG-TS muxer puts an access unit delimiter in front of every H.264 packet that has
# none (H.264 in MPEG-TS requires one); everything after it is the publisher's bytes.
AUD = b"\x00\x00\x00\x01\x09\xf0"


async def ws_publisher(
    http: aiohttp.ClientSession,
    server: Any,
    appid: str,
    cname: str,
    uid: str,
    video: str | None,
    audio: str | None,
) -> RawClient:
    """A channel member over the WebSocket protocol, its tracks announced."""
    client = RawClient(http, server.url)
    await client.connect()
    await client.hello("", appid=appid, cname=cname, uid=uid)  # an app without tokens
    await client.tracks(video, audio)
    return client


async def send_clip(client: RawClient, clip: Clip) -> None:
    """Every frame of the clip, acknowledged (handed to the channel)."""
    seq = 0
    for frame in clip.frames:
        seq = await client.media(frame)
    await client.wait_ack(seq)


async def record_over_api(
    http: aiohttp.ClientSession,
    base: str,
    cname: str,
    body: dict[str, Any],
    mode: str = "individual",
) -> tuple[str, str]:
    """acquire and start; the sid and the session's URL."""
    acquire = {"cname": cname, "uid": "527841", "clientRequest": {}}
    async with http.post(f"{base}/acquire", json=acquire) as resp:
        rid = (await resp.json())["resourceId"]
    async with http.post(f"{base}/resourceid/{rid}/mode/{mode}/start", json=body) as resp:
        started = await resp.json()
        assert resp.status == 200, started
    sid = started["sid"]
    return sid, f"{base}/resourceid/{rid}/sid/{sid}/mode/{mode}"


async def stop_over_api(http: aiohttp.ClientSession, session_url: str, cname: str) -> Any:
    stop = {"cname": cname, "uid": "527841", "clientRequest": {}}
    async with http.post(f"{session_url}/stop", json=stop) as resp:
        stopped = await resp.json()
        assert resp.status == 200, stopped
    return stopped["serverResponse"]


def packets_of(client: Any, bucket: str, playlist: Path, kind: str) -> list[bytes]:
    """The packets of ``kind`` in the playlist's segments (fetched from the bucket), in order."""
    out: list[bytes] = []
    for segment in Playlist.parse(playlist.read_text()).segments:
        path = fetch(client, bucket, segment.uri, playlist.parent)
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type == kind]
            out += [bytes(p) for p in container.demux(streams) if p.size]
    return out


def stream_types(client: Any, bucket: str, playlist: Path) -> set[str]:
    first = Playlist.parse(playlist.read_text()).segments[0].uri
    with av.open(str(fetch(client, bucket, first, playlist.parent))) as container:
        return {s.type for s in container.streams}


async def test_ws_h264_and_aac_are_copied_into_standard_mode_files(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server, app, auth, base = cloud
    cname = "wsroom"
    body = start_body(s3, s3_bucket, cname)
    body["clientRequest"]["recordingConfig"]["streamMode"] = "standard"
    clip = encode_clip("h264", duration_s=3.0, audio_codec="aac")
    async with aiohttp.ClientSession(headers=auth) as http:
        publisher = await ws_publisher(http, server, app.appid, cname, "123", "h264", "aac")
        sid, session_url = await record_over_api(http, base, cname, body)
        await send_clip(publisher, clip)
        response = await stop_over_api(http, session_url, cname)
        await publisher.close()
    stats = server.app[CLOUD].sessions[sid].members["123"].stats
    assert (stats.decoders_opened, stats.encoders_opened, stats.frames_decoded) == (0, 0, 0)
    assert stats.copied == len(clip.frames)
    assert response["uploadingStatus"] == "uploaded" and response["fileListMode"] == "json"
    files = {f["trackType"]: f for f in response["fileList"]}
    stem = f"{sid}_{cname}__uid_s_123__uid_e"
    assert {t: f["fileName"] for t, f in files.items()} == {
        "audio": f"{stem}_audio.m3u8",
        "video": f"{stem}_video.m3u8",
        "audio_and_video": f"{stem}_av.m3u8",
    }
    assert all(f["uid"] == "123" and f["isPlayable"] for f in files.values())
    client = s3.client()
    playlists = {
        t: await asyncio.to_thread(fetch, client, s3_bucket, f["fileName"], tmp_path)
        for t, f in files.items()
    }
    sent_video = [f.data for f in clip.of("video")]
    sent_audio = b"".join(f.data for f in clip.of("audio"))
    video = await asyncio.to_thread(packets_of, client, s3_bucket, playlists["video"], "video")
    assert [p.removeprefix(AUD) for p in video] == sent_video  # the same bytes, every frame
    audio = await asyncio.to_thread(packets_of, client, s3_bucket, playlists["audio"], "audio")
    assert b"".join(audio) == sent_audio
    for kind, streams in (("video", {"video"}), ("audio", {"audio"}),
                          ("audio_and_video", {"audio", "video"})):  # fmt: skip
        got = await asyncio.to_thread(stream_types, client, s3_bucket, playlists[kind])
        assert got == streams, kind
        info = await asyncio.to_thread(ffprobe, playlists[kind], "-show_format")
        assert float(info["format"]["duration"]) == pytest.approx(3.0, abs=0.1), kind


async def test_original_mode_keeps_the_opus_as_sent(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server, app, auth, base = cloud
    cname = "opusroom"
    body = start_body(s3, s3_bucket, cname)
    recording = body["clientRequest"]["recordingConfig"]
    recording.update(streamTypes=0, streamMode="original")
    del recording["subscribeVideoUids"]  # audio only
    clip = encode_clip(None, duration_s=2.0, audio_codec="opus")
    async with aiohttp.ClientSession(headers=auth) as http:
        publisher = await ws_publisher(http, server, app.appid, cname, "123", None, "opus")
        sid, session_url = await record_over_api(http, base, cname, body)
        await send_clip(publisher, clip)
        response = await stop_over_api(http, session_url, cname)
        await publisher.close()
    stats = server.app[CLOUD].sessions[sid].members["123"].stats
    assert (stats.decoders_opened, stats.encoders_opened, stats.copied) == (0, 0, len(clip.frames))
    (entry,) = response["fileList"]
    assert (entry["trackType"], entry["uid"]) == ("audio", "123")
    client = s3.client()
    playlist = await asyncio.to_thread(fetch, client, s3_bucket, entry["fileName"], tmp_path)
    got = await asyncio.to_thread(packets_of, client, s3_bucket, playlist, "audio")
    assert got == [f.data for f in clip.frames]  # Opus as received, packet for packet
    info = await asyncio.to_thread(ffprobe, playlist, "-show_streams", "-show_format")
    assert [s["codec_name"] for s in info["streams"]] == ["opus"]
    assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.1)


async def test_subscribe_uid_group_caps_the_recorded_uids(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    server, app, auth, base = cloud
    cname = "capped"
    body = start_body(s3, s3_bucket, cname)
    recording = body["clientRequest"]["recordingConfig"]
    recording.update(subscribeAudioUids=["#allstream#"], subscribeVideoUids=["#allstream#"])
    assert recording["subscribeUidGroup"] == 0  # 1-2 uids
    clip = encode_clip("h264", duration_s=1.0, audio_codec="aac")
    async with aiohttp.ClientSession(headers=auth) as http:
        publishers = [
            await ws_publisher(http, server, app.appid, cname, uid, "h264", "aac")
            for uid in ("1", "2", "3")
        ]
        sid, session_url = await record_over_api(http, base, cname, body)
        for publisher in publishers:
            await send_clip(publisher, clip)
        response = await stop_over_api(http, session_url, cname)
        for publisher in publishers:
            await publisher.close()
    assert {f["uid"] for f in response["fileList"]} == {"1", "2"}  # joined first
    assert set(server.app[CLOUD].sessions[sid].members) == {"1", "2"}
    assert "uid 3 is not recorded: subscribeUidGroup allows 2 uids" in caplog.text


@pytest.mark.parametrize(("types", "kinds"), [(0, {"audio"}), (1, {"video"})])
async def test_a_mix_records_only_the_kinds_of_its_stream_types(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path, types: int, kinds: set[str]
) -> None:
    """``streamTypes`` 0 mixes the audio only: the files hold no video (nothing is painted),
    and the fileList says ``audio``; 1, the video only. The publisher sends both kinds."""
    server, app, auth, base = cloud
    cname = f"mixkinds{types}"
    body = start_body(s3, s3_bucket, cname, streamTypes=types)
    recording = body["clientRequest"]["recordingConfig"]
    del recording["subscribeUidGroup"]
    del recording["subscribeVideoUids" if types == 0 else "subscribeAudioUids"]
    recording["transcodingConfig"] = {"width": 320, "height": 180}
    body["clientRequest"]["recordingFileConfig"] = {"avFileType": ["hls", "mp4"]}
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    async with aiohttp.ClientSession(headers=auth) as http:
        publisher = await ws_publisher(http, server, app.appid, cname, "123", "h264", "opus")
        _, session_url = await record_over_api(http, base, cname, body, mode="mix")
        await send_clip(publisher, clip)
        response = await stop_over_api(http, session_url, cname)
        await publisher.close()
    files = response["fileList"]
    track_type = "audio" if types == 0 else "video"
    assert [f["trackType"] for f in files] == [track_type, track_type], files
    client = s3.client()
    playlist = await asyncio.to_thread(fetch, client, s3_bucket, files[0]["fileName"], tmp_path)
    assert await asyncio.to_thread(stream_types, client, s3_bucket, playlist) == kinds
    mp4 = await asyncio.to_thread(fetch, client, s3_bucket, files[1]["fileName"], tmp_path)
    info = await asyncio.to_thread(ffprobe, mp4, "-show_streams", "-show_format")
    assert {s["codec_type"] for s in info["streams"]} == kinds
    assert float(info["format"]["duration"]) >= 2.0  # (the mix runs on the wall clock)
    counts = await asyncio.to_thread(decode_counts, mp4)
    assert (counts["video"] > 0, counts["audio"] > 0) == ("video" in kinds, "audio" in kinds)
