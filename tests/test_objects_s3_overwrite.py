"""Overwriting a key on S3 (a playlist goes up again after every segment) with requests that
may land late: against a real S3 server (SeaweedFS on loopback).

A request the store gave up on (a timeout, an answer lost with the connection) can still be
carried out by the service afterwards. SeaweedFS does exactly that for a PUT that waited for
a volume while it restarted: the bucket's playlist went back to the version from before an
outage. Every write is therefore conditional on what the key held when it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from s3server import (
    ACCESS_KEY,
    READ_ONLY_ACCESS_KEY,
    READ_ONLY_SECRET_KEY,
    SECRET_KEY,
    WRITE_ONLY_ACCESS_KEY,
    WRITE_ONLY_SECRET_KEY,
    SeaweedS3,
)
from test_objects_s3 import config

from storage.errors import StoreRefused, StoreUnavailable
from storage.s3 import S3ObjectStore

KEY = "rec/s/index.m3u8"


@pytest.fixture
async def store(s3: SeaweedS3, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    st = S3ObjectStore(config(s3, s3_bucket))
    yield st
    await st.aclose()


class Sent:
    """The PUT requests a store's client sends, as signed, to be sent again later."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def watch(self, store: S3ObjectStore) -> None:
        client = await store._get_client()
        client.meta.events.register("before-send.s3.PutObject", self._keep)

    def _keep(self, request: Any, **_: Any) -> None:
        body = request.body  # (botocore wraps bytes in a BytesIO: read it without moving it)
        data = body.getvalue() if hasattr(body, "getvalue") else bytes(body)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        self.requests.append((request.url, headers, data))

    async def replay(self, index: int) -> int:
        """Send request ``index`` again, byte for byte: a late arrival. Its HTTP status."""
        url, headers, body = self.requests[index]
        headers = {k: v for k, v in headers.items() if k.lower() != "expect"}
        async with aiohttp.ClientSession() as http, http.put(url, headers=headers, data=body) as r:
            await r.read()
            return r.status


async def plain_get(s3: SeaweedS3, bucket: str) -> bytes:
    """The key's bytes, read by a plain boto3 client (in a thread: it blocks)."""

    def get() -> bytes:
        body: bytes = s3.client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
        return body

    return await asyncio.to_thread(get)


async def plain_put(s3: SeaweedS3, bucket: str, body: bytes) -> None:
    """Write the key as another process would."""
    await asyncio.to_thread(lambda: s3.client().put_object(Bucket=bucket, Key=KEY, Body=body))


async def test_a_late_request_cannot_bring_back_an_old_version(
    store: S3ObjectStore, s3: SeaweedS3, s3_bucket: str
) -> None:
    """The first and the second version's requests, arriving again after the third went up,
    are refused (412): the key keeps the newest version."""
    sent = Sent()
    await sent.watch(store)
    for n in (1, 2, 3):
        await store.put_bytes(KEY, b"#EXTM3U\n#version %d\n" % n)
    assert len(sent.requests) == 3
    assert [await sent.replay(i) for i in (0, 1)] == [412, 412]
    assert await plain_get(s3, s3_bucket) == b"#EXTM3U\n#version 3\n"


async def test_an_attempt_that_landed_is_taken_as_done(
    store: S3ObjectStore, s3: SeaweedS3, s3_bucket: str
) -> None:
    """An attempt whose answer was lost, and that landed: the next attempt of the same write
    meets the key changed (412), finds these very bytes there and is done, sending no more."""
    await store.put_bytes(KEY, b"v1")
    # what the lost attempt did: v2 went up under the store's nose
    await plain_put(s3, s3_bucket, b"v2")
    sent = Sent()
    await sent.watch(store)
    info = await store.put_bytes(KEY, b"v2")
    assert len(sent.requests) == 1 and "If-Match" in sent.requests[0][1]
    assert info.etag == hashlib.md5(b"v2").hexdigest()
    assert await plain_get(s3, s3_bucket) == b"v2"
    # and the store now knows the key holds v2: the next version is one request
    await store.put_bytes(KEY, b"v3")
    assert len(sent.requests) == 2 and await plain_get(s3, s3_bucket) == b"v3"


async def test_an_object_from_before_is_replaced(s3: SeaweedS3, s3_bucket: str) -> None:
    """A key this store has not written that holds an object (from before a restart, or
    another writer) is overwritten: the refused first try tells what is there."""
    await plain_put(s3, s3_bucket, b"from the last run")
    store = S3ObjectStore(config(s3, s3_bucket))
    try:
        await store.put_bytes(KEY, b"this run")
    finally:
        await store.aclose()
    assert await plain_get(s3, s3_bucket) == b"this run"


async def test_keys_that_may_not_read_still_overwrite(s3: SeaweedS3, s3_bucket: str) -> None:
    """Least-privilege keys (write, no read) cannot ask what the key holds after a refusal:
    that write goes up unconditionally, as it always could."""
    await plain_put(s3, s3_bucket, b"old")
    store = S3ObjectStore(
        config(
            s3,
            s3_bucket,
            access_key=WRITE_ONLY_ACCESS_KEY,
            secret_key=WRITE_ONLY_SECRET_KEY,
        )
    )
    try:
        await store.put_bytes(KEY, b"new")
    finally:
        await store.aclose()
    assert await plain_get(s3, s3_bucket) == b"new"


@dataclass
class Service:
    """How the proxy answers conditional PUTs where another S3 service differs from
    SeaweedFS (the rest passes through): Amazon S3's rules, as its conditional-writes guide
    states them, or a service with no conditional writes at all."""

    none: bool = False  # any conditional PUT: 501 NotImplemented
    no_read: set[str] = field(default_factory=set)  # keys without s3:GetObject: If-Match is 403
    gone_is_404: bool = False  # If-Match on a key that does not exist: 404 NoSuchKey (not 412)
    conflicts: int = 0  # this many conditional PUTs: 409 ConditionalRequestConflict
    seen: list[str] = field(default_factory=list)  # "PUT If-Match", "PUT plain", ...


def s3_error(status: int, code: str) -> web.Response:
    return web.Response(
        status=status,
        content_type="application/xml",
        text=f"<Error><Code>{code}</Code><Message>{code}</Message></Error>",
    )


@pytest.fixture
async def service(s3: SeaweedS3) -> AsyncIterator[tuple[str, Service]]:
    """A proxy to the S3 server that answers as :class:`Service` says: its endpoint."""
    rules = Service()
    hop = {"host", "content-length", "transfer-encoding", "expect", "connection"}

    def exists(path: str) -> bool:
        bucket, _, key = path.lstrip("/").partition("/")
        try:
            s3.client().head_object(Bucket=bucket, Key=key)
        except ClientError:
            return False
        return True

    def answer(request: web.Request) -> web.Response | None:
        if_match = request.headers.get("If-Match")
        kind = (
            "If-Match"
            if if_match
            else "If-None-Match"
            if "If-None-Match" in request.headers
            else "plain"
        )
        rules.seen.append(f"{request.method} {kind}")
        if request.method != "PUT" or kind == "plain":
            return None
        if rules.none:
            return s3_error(501, "NotImplemented")
        if rules.conflicts:
            rules.conflicts -= 1
            return s3_error(409, "ConditionalRequestConflict")
        signer = re.search(r"Credential=([^/]+)/", request.headers.get("Authorization", ""))
        if if_match and signer and signer.group(1) in rules.no_read:
            return s3_error(403, "AccessDenied")
        if if_match and rules.gone_is_404 and not exists(request.path):
            return s3_error(404, "NoSuchKey")
        return None

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if (refused := await asyncio.to_thread(answer, request)) is not None:
            return refused
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        headers["Host"] = request.headers["Host"]  # signed by the client: passed unchanged
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.request(
                request.method,
                s3.endpoint + request.path_qs,
                headers=headers,
                data=body,
                skip_auto_headers=("Content-Type",),
            ) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in hop}
                return web.Response(status=resp.status, body=payload, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", rules
    await runner.cleanup()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("service_is", "keys", "refused"),
    [
        # a service with no conditional writes: the first one says so
        ("without conditions", (ACCESS_KEY, SECRET_KEY), ["PUT If-None-Match"]),
        # Amazon S3 wants s3:GetObject for If-Match: keys that may only write (they pass the
        # start's check) were refused the playlist's second version for ever, and everything
        # the session spooled after it waited behind it
        (
            "amazon",
            (WRITE_ONLY_ACCESS_KEY, WRITE_ONLY_SECRET_KEY),
            ["PUT If-None-Match", "PUT If-Match"],
        ),
    ],
)
async def test_a_refused_condition_is_dropped_once_a_plain_write_passes(
    service: tuple[str, Service],
    s3: SeaweedS3,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    service_is: str,
    keys: tuple[str, str],
    refused: list[str],
) -> None:
    """501 NotImplemented, or 403 to If-Match: the write is tried plainly; it passes, so the
    store writes plainly from then on, said once in the log."""
    endpoint, rules = service
    rules.none = service_is == "without conditions"
    rules.no_read.add(WRITE_ONLY_ACCESS_KEY)
    store = S3ObjectStore(
        config(s3, s3_bucket, endpoint_url=endpoint, access_key=keys[0], secret_key=keys[1])
    )
    try:
        with caplog.at_level(logging.WARNING, logger="storage.s3"):
            for n in (1, 2, 3):
                await store.put_bytes(KEY, b"v%d" % n)
    finally:
        await store.aclose()
    assert rules.seen == [*refused, "PUT plain", "PUT plain", "PUT plain"][:4]
    assert await plain_get(s3, s3_bucket) == b"v3"
    (warning,) = warnings_of(caplog)
    code = "NotImplemented" if rules.none else "AccessDenied"
    assert f"refuses conditional writes ({code})" in warning


async def test_a_real_refusal_is_not_taken_for_the_condition(
    service: tuple[str, Service], s3: SeaweedS3, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Read-only keys: the conditional PUT is refused (403), and so is the plain one. That
    refusal is the answer, and the store keeps its conditions."""
    endpoint, rules = service
    store = S3ObjectStore(
        config(
            s3,
            s3_bucket,
            endpoint_url=endpoint,
            access_key=READ_ONLY_ACCESS_KEY,
            secret_key=READ_ONLY_SECRET_KEY,
        )
    )
    try:
        with pytest.raises(StoreRefused) as refused:
            await store.put_bytes(KEY, b"v1")
    finally:
        await store.aclose()
    assert refused.value.code == "AccessDenied"
    assert rules.seen == ["PUT If-None-Match", "PUT plain"] and store._conditional
    assert not warnings_of(caplog)


async def test_a_key_deleted_behind_the_store_is_written_again(
    service: tuple[str, Service], s3: SeaweedS3, s3_bucket: str
) -> None:
    """Amazon S3 answers If-Match on a key that is gone with 404, not 412: a playlist deleted
    by someone else (or by a delete whose answer was lost) could never be written again."""
    endpoint, rules = service
    rules.gone_is_404 = True
    store = S3ObjectStore(config(s3, s3_bucket, endpoint_url=endpoint))
    try:
        await store.put_bytes(KEY, b"v1")
        await asyncio.to_thread(s3.client().delete_object, Bucket=s3_bucket, Key=KEY)
        await store.put_bytes(KEY, b"v2")
    finally:
        await store.aclose()
    assert rules.seen == ["PUT If-None-Match", "PUT If-Match", "PUT If-None-Match"]
    assert await plain_get(s3, s3_bucket) == b"v2"


async def test_a_delete_forgets_the_key_even_when_its_answer_is_lost(
    service: tuple[str, Service], s3: SeaweedS3, s3_bucket: str
) -> None:
    """A delete that was done but whose answer was lost: the next write of the key is a
    write of a new key (If-None-Match), not If-Match a version that is gone."""
    endpoint, rules = service
    rules.gone_is_404 = True
    store = S3ObjectStore(config(s3, s3_bucket, endpoint_url=endpoint))
    client = await store._get_client()

    def lose_answer(**_: object) -> None:
        raise TimeoutError("the answer was lost")

    try:
        await store.put_bytes(KEY, b"v1")
        client.meta.events.register("after-call.s3.DeleteObject", lose_answer)
        with pytest.raises(StoreUnavailable):
            await store.delete(KEY)
        client.meta.events.unregister("after-call.s3.DeleteObject", lose_answer)
        await store.put_bytes(KEY, b"v2")
    finally:
        await store.aclose()
    assert rules.seen == ["PUT If-None-Match", "DELETE plain", "PUT If-None-Match"]
    assert await plain_get(s3, s3_bucket) == b"v2"


async def test_a_conflicting_write_is_tried_again(
    service: tuple[str, Service], s3: SeaweedS3, s3_bucket: str
) -> None:
    """Amazon S3's 409 ConditionalRequestConflict (another write of the key at the same
    time) means: read the ETag and try again. It was taken as a refusal."""
    endpoint, rules = service
    rules.conflicts = 1
    store = S3ObjectStore(config(s3, s3_bucket, endpoint_url=endpoint))
    try:
        await store.put_bytes(KEY, b"v1")
    finally:
        await store.aclose()
    assert rules.seen == ["PUT If-None-Match", "HEAD plain", "PUT If-None-Match"]
    assert await plain_get(s3, s3_bucket) == b"v1"
