"""Webhook notices through the real server: a cloud recording's notices, raised while the app's
receiver is down, survive the server being stopped and started again on the same data folder
and reach the receiver afterwards, in order, signed, with their noticeIds."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import LOOPBACK_S3
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from webhook_receiver import DownReceiver

from api.app import create_app
from api.apps import create_app_row
from api.customers import create_customer
from api.keys import META, NOTIFIER
from api.settings import load_settings
from api.webhooks_wire import SIGNATURE_HEADER, verify_signature
from storage.meta import NoticeState
from storage.meta_sqlite import SqliteMetaStore

API_KEY = "test-key-0123456789"
CNAME = "hooked"


def start_body(s3: SeaweedS3, bucket: str) -> dict[str, Any]:
    """An individual-mode start (the seed's shape) recording into the test S3 server."""
    return {
        "cname": CNAME,
        "uid": "527841",
        "clientRequest": {
            "recordingConfig": {
                "channelType": 1,
                "streamTypes": 2,
                "maxIdleTime": 300,
                "subscribeUidGroup": 0,
            },
            "recordingFileConfig": {"avFileType": ["hls"]},
            "storageConfig": {
                "vendor": 11,
                "region": 0,
                "bucket": bucket,
                "accessKey": ACCESS_KEY,
                "secretKey": SECRET_KEY,
                "extensionParams": {"endpoint": s3.endpoint},
            },
        },
    }


@pytest.fixture
async def down() -> AsyncIterator[DownReceiver]:
    receiver = DownReceiver()
    yield receiver
    await receiver.aclose()


async def test_notices_outlive_a_server_restart(
    aiohttp_server: Any, s3: SeaweedS3, s3_bucket: str, down: DownReceiver, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings = load_settings(
        env={},
        overrides={"data_dir": data, "auth": {"api_key": API_KEY}, **LOOPBACK_S3},
    )

    first: TestServer = await aiohttp_server(create_app(settings), host="127.0.0.1", port=0)
    meta = first.app[META]
    app_row = await create_app_row(meta, token_required=False, webhook_url=down.receiver.url)
    customer_id, secret = await create_customer(meta)
    basic = base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    base = str(first.make_url(f"/v1/apps/{app_row.appid}/cloud_recording"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as http:
        async with http.post(f"{base}/acquire", json={"cname": CNAME, "uid": "527841"}) as resp:
            assert resp.status == 200, await resp.text()
            rid = (await resp.json())["resourceId"]
        async with http.post(
            f"{base}/resourceid/{rid}/mode/individual/start", json=start_body(s3, s3_bucket)
        ) as resp:
            assert resp.status == 200, await resp.text()
            sid = (await resp.json())["sid"]
    # the server stops with the recording running: it is suspended, to go on after the restart
    await first.close()
    assert down.receiver.hits == []

    store = SqliteMetaStore(data / "meta.sqlite3")
    await store.open()
    try:
        stored = await store.list_notices(NoticeState.PENDING, sid)
        assert await store.list_notices(NoticeState.GIVEN_UP) == []
    finally:
        await store.aclose()
    stored.sort(key=lambda row: row.sequence)
    assert [row.sequence for row in stored] == list(range(len(stored)))
    assert [row.event_type for row in stored] == [40, 30]  # recorder and uploader started

    receiver = await down.up()
    second: TestServer = await aiohttp_server(create_app(settings), host="127.0.0.1", port=0)
    try:
        # the stored notices, then the resumed recording's warning, which goes on numbering
        await receiver.wait_for(lambda: len(receiver.accepted()) == len(stored) + 1)
        *hits, resumed = receiver.accepted()
        assert resumed.sequence == len(stored) and resumed.json["eventType"] == 2
        assert resumed.json["payload"]["details"]["warnCode"] == 102
        assert [h.notice_id for h in hits] == [row.notice_id for row in stored]
        assert [h.sequence for h in hits] == [row.sequence for row in stored]
        for hit, row in zip(hits, stored, strict=True):
            assert verify_signature(app_row.webhook_secret, hit.body, hit.headers[SIGNATURE_HEADER])
            assert hit.json["eventType"] == row.event_type
            assert hit.json["payload"]["sid"] == sid and hit.json["payload"]["cname"] == CNAME
        assert len(receiver.hits) == len(stored) + 1  # each once: none was sent before

        notifier = second.app[NOTIFIER]
        await notifier.join()
        assert notifier.stats.resumed == len(stored) and notifier.pending == 0
        async with aiohttp.ClientSession() as plain, plain.get(second.make_url("/metrics")) as resp:
            text = await resp.text()
        assert f"reelhouse_webhooks_sent_total {len(stored) + 1}" in text
        assert "reelhouse_webhooks_pending 0" in text
        assert await second.app[META].list_notices(NoticeState.PENDING) == []
    finally:
        await second.close()
