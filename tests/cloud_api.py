"""Helpers for cloud recording tests that drive a real server (restarted on the same data folder
where they need to), WebSocket publishers, a real webhook receiver and the test S3 server."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from conftest import API_KEY, LOOPBACK_S3
from media import Clip, Frame
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from test_cloud_recording_schema import SEED_START_BODY
from webhook_receiver import Receiver
from wsclient import RawClient

from api.app import create_app
from api.apps import create_app_row
from api.cloud_recording_routes import CLOUD
from api.customers import create_customer
from api.keys import CHANNELS, META
from api.settings import load_settings

SEGMENT_S = 1.0  # the clips' keyframes are 1 s apart: a segment per keyframe
RECORDER_UID = "527841"
PREFIX = "directory1/directory2/"


async def serve(aiohttp_server: Any, data: Path) -> TestServer:
    """A reelhouse server on ``data`` (a second one on the same folder is its restart)."""
    settings = load_settings(
        env={},
        overrides={"data_dir": data, "auth": {"api_key": API_KEY}, **LOOPBACK_S3},
    )
    server: TestServer = await aiohttp_server(create_app(settings), host="127.0.0.1", port=0)
    server.app[CLOUD].segment_s = SEGMENT_S
    return server


async def receiver_up(aiohttp_server: Any) -> Receiver:
    """A webhook receiver on loopback that accepts everything."""
    receiver = Receiver()
    hook = await aiohttp_server(receiver.application(), host="127.0.0.1", port=0)
    receiver.url = str(hook.make_url("/hook"))
    return receiver


@dataclass
class CloudApp:
    """An app with a webhook and a customer's Basic credentials, on one server or its restart."""

    appid: str
    secret: str  # the webhook's
    headers: dict[str, str]
    url: str = ""  # the server's, set by ``on``

    def on(self, server: TestServer) -> CloudApp:
        """The same app on (another start of) the server."""
        return replace(self, url=str(server.make_url("")).rstrip("/"))

    @property
    def base(self) -> str:
        return f"{self.url}/v1/apps/{self.appid}/cloud_recording"

    def session_url(self, rid: str, sid: str, mode: str) -> str:
        return f"{self.base}/resourceid/{rid}/sid/{sid}/mode/{mode}"


async def cloud_app(server: TestServer, webhook_url: str) -> CloudApp:
    """A new app (no tokens) whose notifications go to ``webhook_url``, and a customer."""
    row = await create_app_row(server.app[META], token_required=False, webhook_url=webhook_url)
    customer_id, secret = await create_customer(server.app[META])
    auth = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    return CloudApp(row.appid, row.webhook_secret, {"Authorization": auth}).on(server)


def start_body(s3: SeaweedS3, bucket: str, cname: str, **recording: Any) -> dict[str, Any]:
    """The seed's start request, recording into the test S3 server, ``recording`` changed."""
    body: dict[str, Any] = json.loads(SEED_START_BODY)
    body["cname"] = cname
    body["clientRequest"]["recordingConfig"].update(recording)
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


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, status: int = 200
) -> dict[str, Any]:
    """One API call; its JSON answer, after checking the HTTP status."""
    async with http.request(method, url, json=body) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == status, (resp.status, out)
    return out


async def acquire(http: aiohttp.ClientSession, app: CloudApp, cname: str) -> str:
    out = await call(http, "POST", f"{app.base}/acquire", {"cname": cname, "uid": RECORDER_UID})
    return str(out["resourceId"])


async def start(
    http: aiohttp.ClientSession, app: CloudApp, rid: str, mode: str, body: dict[str, Any]
) -> str:
    out = await call(http, "POST", f"{app.base}/resourceid/{rid}/mode/{mode}/start", body)
    return str(out["sid"])


def stop_body(cname: str) -> dict[str, Any]:
    return {"cname": cname, "uid": RECORDER_UID, "clientRequest": {}}


@dataclass
class Publisher:
    """A channel member over the WebSocket protocol, H.264 and AAC announced."""

    client: RawClient
    sent_video: list[bytes] = field(default_factory=list)

    async def send(self, clip: Clip, offset_us: int = 0) -> None:
        """Every frame of ``clip`` (its times moved by ``offset_us``), acknowledged."""
        seq = 0
        for frame in clip.frames:
            moved = Frame(frame.kind, frame.codec, frame.data, frame.pts_us + offset_us,
                          None if frame.dts_us is None else frame.dts_us + offset_us,
                          frame.keyframe)  # fmt: skip
            seq = await self.client.media(moved)
            if frame.kind == "video":
                self.sent_video.append(frame.data)
        await self.client.wait_ack(seq)

    async def close(self) -> None:
        await self.client.close()


async def publisher(http: aiohttp.ClientSession, app: CloudApp, cname: str, uid: str) -> Publisher:
    client = RawClient(http, app.url)
    await client.connect()
    await client.hello("", appid=app.appid, cname=cname, uid=uid)
    await client.tracks("h264", "aac")
    return Publisher(client)


def recorder_subscribed(server: TestServer, uid: str) -> asyncio.Event:
    """Set once a recorder of ``uid`` subscribes to its media on ``server``: a publisher that
    joins a recording under way sends after that, or its first frames reach no recorder (a
    real one keeps sending; a test's clip is all it has)."""
    registry = server.app[CHANNELS]
    subscribe = registry.subscribe
    done = asyncio.Event()

    def spy(*args: Any, **kwargs: Any) -> Any:
        sub = subscribe(*args, **kwargs)
        if kwargs.get("uid") == uid:
            done.set()
        return sub

    registry.subscribe = spy  # type: ignore[method-assign]
    return done


def fetch(s3: SeaweedS3, bucket: str, name: str, dest: Path) -> Path:
    """One object of the recording (under the fileNamePrefix) copied to ``dest``."""
    obj = s3.client().get_object(Bucket=bucket, Key=PREFIX + name)
    path = dest / name
    path.write_bytes(obj["Body"].read())
    return path


async def fetched(s3: SeaweedS3, bucket: str, name: str, dest: Path) -> Path:
    return await asyncio.to_thread(fetch, s3, bucket, name, dest)


def events(receiver: Receiver, sid: str) -> list[dict[str, Any]]:
    """The notices of ``sid`` the receiver accepted, in sequence order."""
    notices = [h.json for h in receiver.accepted(sid)]
    return sorted(notices, key=lambda n: int(n["payload"]["sequence"]))


def types(notices: list[dict[str, Any]]) -> list[int]:
    return [int(n["eventType"]) for n in notices]


def details(notices: list[dict[str, Any]], event_type: int) -> list[dict[str, Any]]:
    return [n["payload"]["details"] for n in notices if n["eventType"] == event_type]
