"""The cloud recording API's error codes that need a running service to provoke, over HTTP:
53 (that cname/uid is recording already), 109 and 110 (the recorder's token), 433 (a
resource past its 5 minutes) and 1013 (a bad cname), each in the API's own shape."""

from __future__ import annotations

import base64
import time
from typing import Any

import aiohttp
import pytest
from cloud_api import start_body
from s3server import SeaweedS3

from api.apps import create_app_row
from api.cloud_recording import RESOURCE_TTL_S
from api.cloud_recording_routes import CLOUD
from api.customers import create_customer
from api.keys import META
from ingest.tokens import Role, mint

pytestmark = pytest.mark.slow


@pytest.fixture
async def api(server_factory: Any) -> Any:
    """A server, an app whose channels need tokens, and a customer's Basic credentials."""
    server = await server_factory(webrtc={"host_addresses": "127.0.0.1"})
    app = await create_app_row(server.app[META], token_required=True)
    customer_id, secret = await create_customer(server.app[META])
    auth = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    return server, app, {"Authorization": auth}, f"{server.url}/v1/apps/{app.appid}/cloud_recording"


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, auth: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=auth) as resp:
        return resp.status, await resp.json()


async def acquire(http: aiohttp.ClientSession, base: str, auth: dict[str, str], cname: str) -> str:
    status, out = await post(http, f"{base}/acquire", {"cname": cname, "uid": "527841"}, auth)
    assert status == 200, out
    return str(out["resourceId"])


async def test_token_errors_and_already_recording(api: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    _, app, auth, base = api
    async with aiohttp.ClientSession() as http:
        rid = await acquire(http, base, auth, "room")
        start = f"{base}/resourceid/{rid}/mode/individual/start"
        body = start_body(s3, s3_bucket, "room")
        body["clientRequest"].pop("token", None)
        status, out = await post(http, start, body, auth)
        assert (status, out["code"]) == (400, 110) and "needs a token" in out["reason"], out
        body["clientRequest"]["token"] = "not-a-token"
        status, out = await post(http, start, body, auth)
        assert (status, out["code"]) == (400, 110), out
        long_ago = time.time() - 3600
        body["clientRequest"]["token"] = mint(
            app.certificate, app.appid, "room", "527841", Role.SUBSCRIBER, ttl_s=60, now=long_ago
        )
        status, out = await post(http, start, body, auth)
        assert (status, out["code"]) == (400, 109) and "expired" in out["reason"], out

        body["clientRequest"]["token"] = mint(
            app.certificate, app.appid, "room", "527841", Role.SUBSCRIBER
        )
        status, out = await post(http, start, body, auth)
        assert status == 200, out
        sid = out["sid"]
        again = await acquire(http, base, auth, "room")  # a second resource, same cname/uid
        status, out = await post(
            http, f"{base}/resourceid/{again}/mode/individual/start", body, auth
        )
        assert (status, out["code"]) == (400, 53), out
        stop = f"{base}/resourceid/{rid}/sid/{sid}/mode/individual/stop"
        status, out = await post(
            http, stop, {"cname": "room", "uid": "527841", "clientRequest": {}}, auth
        )
        assert (status, out["code"]) == (400, 435), out  # nobody published: no file


async def test_an_expired_resource_and_a_bad_cname(api: Any, s3: SeaweedS3, s3_bucket: str) -> None:
    server, _, auth, base = api
    async with aiohttp.ClientSession() as http:
        status, out = await post(http, f"{base}/acquire", {"cname": "room/1", "uid": "1"}, auth)
        assert (status, out["code"]) == (400, 1013), out
        rid = await acquire(http, base, auth, "room")
        service = server.app[CLOUD]
        real_clock = service._clock
        # five minutes and a second later (the service's clock is its only notion of time)
        service._clock = lambda: real_clock() + RESOURCE_TTL_S + 1
        status, out = await post(
            http, f"{base}/resourceid/{rid}/mode/mix/start", start_body(s3, s3_bucket, "room"), auth
        )
        assert (status, out["code"]) == (400, 433) and "expired" in out["reason"], out


async def test_an_internal_error_is_answered_in_the_apis_shape(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _, auth, base = api

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.app[CLOUD], "acquire", broken)
    async with aiohttp.ClientSession() as http:
        status, out = await post(http, f"{base}/acquire", {"cname": "room", "uid": "527841"}, auth)
    assert (status, out) == (500, {"code": 500, "reason": "internal error"})


async def test_acquire_for_an_app_this_server_does_not_have_is_code_2(api: Any) -> None:
    server, _, auth, base = api
    other = base.replace(base.split("/")[-2], "0" * 32)
    async with aiohttp.ClientSession() as http:
        status, out = await post(http, f"{other}/acquire", {"cname": "room", "uid": "1"}, auth)
    assert (status, out["code"]) == (400, 2) and "not an app of this server" in out["reason"]
    assert not server.app[CLOUD].resources  # nothing kept for it


async def test_a_storage_endpoint_on_the_servers_own_network_is_code_2(
    server_factory: Any, s3: SeaweedS3, s3_bucket: str
) -> None:
    """By default a customer's S3-compatible endpoint must be a public address: the test S3
    server is on loopback, so a server that does not allow private endpoints refuses it."""
    server = await server_factory(storage={"private_endpoints": False})
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    basic = base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    base = f"{server.url}/v1/apps/{app.appid}/cloud_recording"
    start = start_body(s3, s3_bucket, "room")
    async with aiohttp.ClientSession() as http:
        rid = await acquire(http, base, auth, "room")
        url = f"{base}/resourceid/{rid}/mode/individual/start"
        status, out = await post(http, url, start, auth)
    assert (status, out["code"]) == (400, 2), out
    assert "extensionParams.endpoint" in out["reason"] and "not a public address" in out["reason"]
