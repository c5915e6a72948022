"""The S3 object store against a real S3 server (SeaweedFS on loopback): every operation, the
errors a wrong bucket, key or endpoint gives, and presigned URLs used by a plain HTTP client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from s3server import (
    ACCESS_KEY,
    READ_ONLY_ACCESS_KEY,
    READ_ONLY_SECRET_KEY,
    SECRET_KEY,
    WRITE_ONLY_ACCESS_KEY,
    WRITE_ONLY_SECRET_KEY,
    SeaweedS3,
    free_port_pair,
)

from storage.errors import ObjectNotFound, StoreRefused, StoreUnavailable
from storage.s3 import CHECK_KEY, MIN_PART_BYTES, S3Config, S3ObjectStore
from storage.s3_errors import map_error

NEVER_S = 20.0  # far past any deadline the test sets: a put still running then hangs


def config(s3: SeaweedS3, bucket: str, **changes: object) -> S3Config:
    base = S3Config(
        bucket=bucket,
        endpoint_url=s3.endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        addressing_style="path",
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(s3: SeaweedS3, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    st = S3ObjectStore(config(s3, s3_bucket))
    yield st
    await st.aclose()


async def test_put_head_get_list_delete(store: S3ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "seg.ts"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    info = await store.put_file("rec/a/index0.ts", src)
    assert (info.size, info.content_type) == (len(payload), "video/mp2t")
    await store.put_bytes("rec/a/index.m3u8", b"#EXTM3U\n")
    await store.put_bytes("rec/b/x.jpg", b"\xff\xd8jpeg")

    head = await store.head("rec/a/index0.ts")
    assert head is not None and head.size == len(payload) and head.content_type == "video/mp2t"
    types = {key: (await store.head(key)) for key in ("rec/a/index.m3u8", "rec/b/x.jpg")}
    assert {k: i.content_type for k, i in types.items() if i} == {
        "rec/a/index.m3u8": "application/vnd.apple.mpegurl",
        "rec/b/x.jpg": "image/jpeg",
    }
    assert await store.head("rec/a/missing.ts") is None

    assert await store.get_bytes("rec/a/index0.ts") == payload
    chunks = [c async for c in store.stream("rec/a/index0.ts", chunk_size=65536)]
    assert b"".join(chunks) == payload and len(chunks) >= 2

    assert [i.key async for i in store.list("rec/a/")] == ["rec/a/index.m3u8", "rec/a/index0.ts"]
    assert [i.key async for i in store.list("rec/")] == [
        "rec/a/index.m3u8",
        "rec/a/index0.ts",
        "rec/b/x.jpg",
    ]

    await store.delete("rec/a/index0.ts")
    await store.delete("rec/a/index0.ts")  # a missing key is not an error
    assert await store.head("rec/a/index0.ts") is None
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("rec/a/index0.ts")


async def test_a_long_key_segment_is_fine_on_s3(store: S3ObjectStore) -> None:
    """The local store's 200-byte segment limit (file names) is not S3's: a cloud recording
    whose channel name and uid make a long file name uploads (its files waited forever)."""
    key = (
        "rec/" + "n" * 64 + "__uid_s_" + "u" * 150 + "__uid_e_av.m3u8"
    )  # (235: SeaweedFS takes 255)
    await store.put_bytes(key, b"#EXTM3U\n")
    assert await store.get_bytes(key) == b"#EXTM3U\n"


async def test_multipart_upload_of_a_large_file(
    s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    cfg = config(
        s3,
        s3_bucket,
        multipart_threshold_bytes=MIN_PART_BYTES,
        multipart_part_bytes=MIN_PART_BYTES,
    )
    src = tmp_path / "big.mp4"
    payload = os.urandom(2 * MIN_PART_BYTES + 12345)  # three parts, the last one short
    src.write_bytes(payload)
    store = S3ObjectStore(cfg)
    try:
        info = await store.put_file("rec/big.mp4", src)
        assert info.size == len(payload)
        head = await store.head("rec/big.mp4")
        assert head is not None and head.content_type == "video/mp4"
        assert head.etag.endswith("-3")  # S3's mark of a three-part upload
        digest = hashlib.sha256()
        async for chunk in store.stream("rec/big.mp4"):
            digest.update(chunk)
        assert digest.digest() == hashlib.sha256(payload).digest()
        # nothing left half-done: no multipart upload is still open in the bucket
        uploads = await asyncio.to_thread(s3.client().list_multipart_uploads, Bucket=s3_bucket)
        assert not uploads.get("Uploads")
    finally:
        await store.aclose()


async def test_prefix_and_tags_are_applied(s3: SeaweedS3, s3_bucket: str) -> None:
    store = S3ObjectStore(
        config(s3, s3_bucket, prefix="directory1/directory2/", tagging="team=media&env=test")
    )
    try:
        await store.put_bytes("sid/index.m3u8", b"#EXTM3U\n")
        assert [i.key async for i in store.list("")] == ["sid/index.m3u8"]
    finally:
        await store.aclose()
    client = s3.client()
    listed = await asyncio.to_thread(client.list_objects_v2, Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["directory1/directory2/sid/index.m3u8"]
    tags = await asyncio.to_thread(
        client.get_object_tagging, Bucket=s3_bucket, Key="directory1/directory2/sid/index.m3u8"
    )
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]} == {"team": "media", "env": "test"}


async def test_presigned_get_and_put_work_without_credentials(store: S3ObjectStore) -> None:
    await store.put_bytes("rec/clip.mp4", b"mp4 bytes")
    get_url = await store.presigned_url("rec/clip.mp4", "GET", 60)
    put_url = await store.presigned_url("rec/upload.webm", "PUT", 60)
    assert get_url is not None and put_url is not None and "X-Amz-Signature=" in get_url
    async with aiohttp.ClientSession() as http:
        async with http.get(get_url) as resp:
            assert resp.status == 200 and await resp.read() == b"mp4 bytes"
        async with http.put(put_url, data=b"webm from the browser") as resp:
            assert resp.status == 200, await resp.text()
        tampered = get_url.replace("rec/clip.mp4", "rec/upload.webm")
        async with http.get(tampered) as resp:
            assert resp.status == 403
    assert await store.get_bytes("rec/upload.webm") == b"webm from the browser"


async def test_expired_presigned_url_is_refused(store: S3ObjectStore) -> None:
    await store.put_bytes("rec/a.ts", b"x")
    url = await store.presigned_url("rec/a.ts", "GET", 1)
    assert url is not None
    await asyncio.sleep(2.1)  # the URL's own clock: no event to wait on
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 403


async def test_check_passes_for_a_good_bucket(store: S3ObjectStore) -> None:
    await store.check()


async def test_check_proves_the_keys_may_write(s3: SeaweedS3, s3_bucket: str) -> None:
    """Keys that may read and list but not write are refused at the check (a listing passed
    them, and every file then waited in the spool); keys that may write but not list pass,
    leaving no probe object behind."""
    reader = S3ObjectStore(
        config(s3, s3_bucket, access_key=READ_ONLY_ACCESS_KEY, secret_key=READ_ONLY_SECRET_KEY)
    )
    writer = S3ObjectStore(
        config(s3, s3_bucket, access_key=WRITE_ONLY_ACCESS_KEY, secret_key=WRITE_ONLY_SECRET_KEY)
    )
    try:
        with pytest.raises(StoreRefused) as err:
            await reader.check()
        assert err.value.code == "AccessDenied"
        await writer.check()
        listed = await asyncio.to_thread(s3.client().list_objects_v2, Bucket=s3_bucket)
        assert CHECK_KEY not in [o["Key"] for o in listed.get("Contents", [])]
    finally:
        await reader.aclose()
        await writer.aclose()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret_key": "not-the-secret"}, "SignatureDoesNotMatch"),
        ({"access_key": "nobody"}, "InvalidAccessKeyId"),
        ({"bucket": "no-such-bucket-here"}, "NoSuchBucket"),
    ],
)
async def test_check_tells_what_is_wrong(
    s3: SeaweedS3, s3_bucket: str, change: dict[str, str], code: str
) -> None:
    store = S3ObjectStore(config(s3, change.pop("bucket", s3_bucket), **change))
    try:
        with pytest.raises(StoreRefused) as err:
            await store.check()
        assert err.value.code == code
        with pytest.raises(StoreRefused):  # an upload is refused the same way
            await store.put_bytes("rec/x.ts", b"x")
    finally:
        await store.aclose()


async def test_unreachable_endpoint_is_unavailable_not_refused(s3_bucket: str) -> None:
    port = free_port_pair()  # nothing listens there
    cfg = S3Config(
        bucket=s3_bucket,
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        addressing_style="path",
        connect_timeout_s=1.0,
        max_attempts=1,
    )
    store = S3ObjectStore(cfg)
    try:
        with pytest.raises(StoreUnavailable) as err:
            await store.check()
        assert err.value.code == "Unreachable"
    finally:
        await store.aclose()


async def test_expired_sts_token_is_refused_before_sending(s3: SeaweedS3, s3_bucket: str) -> None:
    store = S3ObjectStore(
        config(s3, s3_bucket, session_token="token", session_expiration=int(time.time()) - 1)
    )
    try:
        with pytest.raises(StoreRefused) as err:
            await store.put_bytes("rec/x.ts", b"x")
        assert err.value.code == "ExpiredToken" and "expired" in str(err.value)
    finally:
        await store.aclose()


async def test_keys_are_validated_like_the_local_store(store: S3ObjectStore) -> None:
    for bad in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(ValueError):
            await store.put_bytes(bad, b"x")


async def test_presigned_urls_name_the_public_endpoint(s3: SeaweedS3, s3_bucket: str) -> None:
    # the server reaches the store at 127.0.0.1; clients are told "localhost" (another name)
    public = s3.endpoint.replace("127.0.0.1", "localhost")
    store = S3ObjectStore(config(s3, s3_bucket, public_endpoint_url=public))
    try:
        await store.put_bytes("rec/a.ts", b"segment")
        url = await store.presigned_url("rec/a.ts", "GET", 60)
        assert url is not None and url.startswith(public + "/")
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == b"segment"
    finally:
        await store.aclose()


async def test_an_endpoint_that_never_answers_fails_a_put_in_bounded_time(tmp_path: Path) -> None:
    """An endpoint that takes the connection and never answers (a hung proxy) must not hold an
    upload for ever: botocore's Expect: 100-continue wait and body writes have no timeout of
    their own, so each request has a deadline (its timeouts, plus its body at a floor rate);
    the spool then retries it."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = S3ObjectStore(
        S3Config(
            bucket="b", endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="s",
            addressing_style="path", connect_timeout_s=0.5, read_timeout_s=0.5,
        )
    )  # fmt: skip
    src = tmp_path / "seg.ts"
    await asyncio.to_thread(src.write_bytes, os.urandom(64 * 1024))
    try:
        for put in (
            lambda: store.put_bytes("a.ts", b"x" * 1000),
            lambda: store.put_file("b.ts", src),
        ):
            with pytest.raises(StoreUnavailable):  # (the deadline here: about 2 s)
                await asyncio.wait_for(put(), NEVER_S)
    finally:
        await store.aclose()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("TooManyRequests", 429, StoreUnavailable),  # throttled: try again later
        ("429", 429, StoreUnavailable),
        ("Throttling", 400, StoreUnavailable),
        ("RequestLimitExceeded", 400, StoreUnavailable),
        ("BadDigest", 400, StoreUnavailable),  # damaged on the way: send it again
        ("SlowDown", 503, StoreUnavailable),
        ("NoSuchUpload", 404, StoreUnavailable),  # a multipart upload aborted: upload again
        ("NoSuchKey", 404, ObjectNotFound),
        ("AccessDenied", 403, StoreRefused),  # the user's bucket says no
        ("NoSuchBucket", 404, StoreRefused),
    ],
)
def test_what_a_failure_means_retry_or_refused(code: str, status: int, kind: type) -> None:
    err = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    assert isinstance(map_error(err, "put k", S3Config(bucket="b")), kind)


def test_missing_credentials_are_refused_not_retried() -> None:
    """No credentials in the chain is this server's configuration: an operator must act."""
    assert isinstance(map_error(NoCredentialsError(), "put k", S3Config(bucket="b")), StoreRefused)


async def test_stream_a_range(store: S3ObjectStore) -> None:
    """A ranged stream is a ranged GET: only the bytes asked come."""
    data = os.urandom(10_000)
    await store.put_bytes("rec/r.bin", data)

    async def read(start: int, end: int | None) -> bytes:
        return b"".join([c async for c in store.stream("rec/r.bin", start=start, end=end)])

    assert await read(0, None) == data
    assert await read(1500, 4499) == data[1500:4500]
    assert await read(9990, None) == data[9990:]
    assert await read(0, 0) == data[:1]
