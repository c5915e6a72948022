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
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from test_cloud_recording_schema import SEED_START_BODY
from webrtc_peer import publish_into, wait_video

from api.apps import create_app_row
from api.customers import create_customer
from api.keys import CHANNELS, META, WHIP

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


def seed_body(s3: SeaweedS3, bucket: str, cname: str) -> dict[str, Any]:
    body = json.loads(SEED_START_BODY)
    body["cname"] = cname
    body["clientRequest"]["storageConfig"] = {
        "vendor": 11,
        "region": 0,
        "bucket": bucket,
        "accessKey": ACCESS_KEY,
        "secretKey": SECRET_KEY,
        "fileNamePrefix": ["directory1", "directory2"],
        "extensionParams": {"endpoint": s3.endpoint},
    }
    return body


async def publish(server: Any, appid: str, cname: str, uid: str, rgb: tuple[int, int, int]) -> Any:
    return await publish_into(server.app[WHIP], appid, cname, uid, rgb)


async def frames_from(server: Any, appid: str, cname: str, uids: set[str], count: int) -> None:
    await wait_video(server.app[CHANNELS], appid, cname, uids, count, WAIT_S)


async def test_seed_request_records_each_uid(
    cloud: Any, s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    server, app, auth, base = cloud
    cname = "seedroom"
    body = seed_body(s3, s3_bucket, cname)
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
    client = s3.client()
    for entry in files:
        assert entry["fileName"].startswith(f"{sid}_{cname}__uid_s_{entry['uid']}__uid_e_")
        assert entry["mixedAllUser"] is False and entry["isPlayable"] is True
        key = f"directory1/directory2/{entry['fileName']}"
        data = await asyncio.to_thread(lambda k=key: client.get_object(Bucket=s3_bucket, Key=k))
        path = tmp_path / entry["fileName"]
        path.write_bytes(data["Body"].read())
        if path.suffix == ".mp4":
            with av.open(str(path)) as container:
                frame = next(iter(container.decode(video=0)))
            rgb = frame.to_ndarray(format="rgb24")[120, 160]
            expected = 0 if entry["uid"] == "123" else 2  # red, blue
            assert rgb[expected] > 180, (entry["uid"], rgb)


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
    body = seed_body(s3, s3_bucket, cname)
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
        async with http.post(start_url, json=seed_body(s3, s3_bucket, "x"), headers=auth) as resp:
            assert (await resp.json())["code"] == 1001
        acquire = {"cname": "room", "uid": "527841"}
        async with http.post(f"{base}/acquire", json=acquire, headers=auth) as resp:
            rid = (await resp.json())["resourceId"]
        body = seed_body(s3, s3_bucket, "other-room")
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=body, headers=auth
        ) as resp:
            out = await resp.json()
            assert out["code"] == 432, out
        body = seed_body(s3, s3_bucket, "room")
        body["clientRequest"]["recordingConfig"]["maxIdleTime"] = 1
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=body, headers=auth
        ) as resp:
            out = await resp.json()
            assert out["code"] == 2 and "maxIdleTime" in out["reason"], out
        body = seed_body(s3, s3_bucket, "room")
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
        statuses = []
        for _ in range(30):  # past the per-app rate limit
            async with http.get(query, headers=auth) as resp:
                statuses.append(resp.status)
        assert 429 in statuses


async def test_webhooks_tell_the_app(
    server_factory: Any, aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str
) -> None:
    from aiohttp import web

    from api.webhooks import verify_signature

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
            body = seed_body(s3, s3_bucket, "hooked")
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
