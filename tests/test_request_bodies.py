"""Request bodies (``api.bodies``): one split across TCP segments is read whole; one that stops
coming is answered 408 in its API's error shape and its connection closed; one that keeps
coming, however slowly, is not cut off."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import pytest
from conftest import API_KEY
from multidict import CIMultiDict
from recording import EVENT_PATH
from test_recordings_functional import body, created_with_video, tenant_headers

from api.apps import create_app_row
from api.customers import create_customer
from api.keys import META, STORE

BODY_TIMEOUT_S = 0.5
ANSWER_TIMEOUT_S = 20.0


@pytest.fixture
async def server(server_factory: Any) -> Any:
    return await server_factory(http={"body_timeout_s": BODY_TIMEOUT_S})


async def stalled(server: Any, method: str, target: str, headers: dict[str, str]) -> Any:
    """Send the headers and 10 of 1000 announced body bytes, then nothing: the status line,
    the JSON answer, and whether the server closed the connection afterwards."""
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "Content-Length: 1000"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + b"{" * 10)
    await writer.drain()
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            raw = await reader.read()  # to the close: the answer, then EOF
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(payload)


async def test_a_body_in_two_segments_is_read_whole(server: Any) -> None:
    """The JSON of a START event sent in two writes, a pause apart (headers and body apart is
    what many clients do): the API took the first write for the whole body, 400 "not JSON"."""
    document = json.dumps(
        {"sessionEvent": {"eventType": "EVENT_TYPE_START", "platformCallId": "c1"}}
    )
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"POST {EVENT_PATH} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(document)}\r\n\r\n"
    )
    writer.write(head.encode() + document[:20].encode())
    await writer.drain()
    await asyncio.sleep(BODY_TIMEOUT_S / 5)  # (the network's pause between the two)
    writer.write(document[20:].encode())
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        raw = await reader.read()
    writer.close()
    head_out, _, payload = raw.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 200"), raw
    assert json.loads(payload)["sessionEvent"]["sessionId"]


async def test_a_stalled_body_is_answered_408_in_each_apis_shape(server: Any) -> None:
    """Before: each handler waited for the rest as long as the client held the connection."""
    status, answer = await stalled(
        server, "POST", EVENT_PATH, {"Authorization": f"Bearer {API_KEY}"}
    )
    assert status == "HTTP/1.1 408 Request Timeout"
    assert answer["code"] == 3 and "no byte of the request body" in answer["message"]
    status, answer = await stalled(
        server, "POST", "/v1/recordings", await tenant_headers(server, "acme")
    )
    assert status.startswith("HTTP/1.1 408") and answer["error"]["code"] == "request_timeout"
    assert "no byte of the request body" in answer["error"]["message"]
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    basic = base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    status, answer = await stalled(
        server,
        "POST",
        f"/v1/apps/{app.appid}/cloud_recording/acquire",
        {"Authorization": f"Basic {basic}"},
    )
    assert status.startswith("HTTP/1.1 408")
    assert answer["code"] == 408 and "no byte of the request body" in answer["reason"]


async def upload_url(server: Any, auth: dict[str, str]) -> SplitResult:
    """The presigned PUT URL of a new recording's tab video, split."""
    async with aiohttp.ClientSession() as http:
        created = await created_with_video(http, server, auth)
    return urlsplit(created["video_upload_url"])


async def test_a_stalled_upload_stores_nothing(server: Any) -> None:
    """A presigned PUT of a tab video that stops halfway: refused, and no object made."""
    auth = await tenant_headers(server, "acme")
    upload = await upload_url(server, auth)
    status, answer = await stalled(server, "PUT", f"{upload.path}?{upload.query}", {})
    assert status.startswith("HTTP/1.1 408") and answer["code"] == 3
    keys = [info.key async for info in server.app[STORE].list("captures/")]
    assert keys and not [key for key in keys if key.endswith("video/original")]


async def test_a_slow_body_that_keeps_coming_is_taken(server: Any) -> None:
    """Bytes every fifth of the timeout, for four timeouts: no deadline is met."""
    document = json.dumps(body()).encode()
    steps = 40
    piece = -(-len(document) // steps)

    async def trickle() -> Any:
        for i in range(0, len(document), piece):
            yield document[i : i + piece]
            await asyncio.sleep(BODY_TIMEOUT_S / 5)  # (the slow client under test)

    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/recordings",
            data=trickle(),
            headers={**auth, "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 201, await resp.text()


async def test_a_body_that_cannot_be_decoded_is_a_400_in_each_apis_shape(server: Any) -> None:
    """``Content-Encoding: gzip`` on bytes that are not gzip: aiohttp cannot read the body.
    Each API answered 500 and logged a traceback (any client could fill the log)."""
    garbage = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    tenant = await tenant_headers(server, "acme")
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    basic = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    async with aiohttp.ClientSession() as http:
        answers = {}
        for name, url, auth in (
            ("screen", server.url + EVENT_PATH, f"Bearer {API_KEY}"),
            ("recordings", server.url + "/v1/recordings", tenant["Authorization"]),
            ("cloud", f"{server.url}/v1/apps/{app.appid}/cloud_recording/acquire", basic),
        ):
            async with http.post(
                url, data=b"not gzip at all", headers={**garbage, "Authorization": auth}
            ) as resp:
                answers[name] = (resp.status, await resp.json())
        async with http.put(server.url + "/v1/recordings", headers=tenant) as resp:
            allowed = resp.status, resp.headers.get("Allow", "")
    assert answers["screen"][0] == 400 and answers["screen"][1]["code"] == 3
    assert "cannot be read" in answers["screen"][1]["message"]
    assert answers["recordings"][0] == 400
    assert answers["recordings"][1]["error"]["code"] == "validation_error"
    assert answers["cloud"][0] == 400 and answers["cloud"][1]["code"] == 8
    assert allowed[0] == 405 and "POST" in allowed[1]  # (RFC 9110: a 405 says what is)


async def test_a_coding_not_decoded_here_is_a_415_in_each_apis_shape(server: Any) -> None:
    """``Content-Encoding: compress`` (or any coding aiohttp does not decode): aiohttp read the
    body as if it were plain, so the API judged compressed bytes ("not valid JSON") or stored
    them as they came. Now 415, naming the codings taken; a gzip body is still read."""
    document = json.dumps({"sessionEvent": {"eventType": "EVENT_TYPE_START"}}).encode()
    tenant = await tenant_headers(server, "acme")
    app = await create_app_row(server.app[META], token_required=False)
    customer_id, secret = await create_customer(server.app[META])
    basic = "Basic " + base64.b64encode(f"{customer_id}:{secret}".encode()).decode()
    coded = {"Content-Encoding": "compress", "Content-Type": "application/json"}
    answers = {}
    async with aiohttp.ClientSession() as http:
        for name, url, auth in (
            ("screen", server.url + EVENT_PATH, f"Bearer {API_KEY}"),
            ("recordings", server.url + "/v1/recordings", tenant["Authorization"]),
            ("cloud", f"{server.url}/v1/apps/{app.appid}/cloud_recording/acquire", basic),
        ):
            async with http.post(
                url, data=document, headers={**coded, "Authorization": auth}
            ) as resp:
                answers[name] = (
                    resp.status,
                    resp.headers.get("Accept-Encoding"),
                    await resp.json(),
                )
        zipped = {"Content-Encoding": "gzip", "Authorization": f"Bearer {API_KEY}"}
        async with http.post(
            server.url + EVENT_PATH, data=gzip.compress(document), headers=zipped
        ) as resp:
            started = resp.status, await resp.json()
    status, accepted, screen = answers["screen"]
    assert (status, accepted, screen["code"]) == (415, "gzip, deflate", 3)
    assert "'compress' is not supported" in screen["message"]
    status, accepted, recordings = answers["recordings"]
    assert (status, accepted) == (415, "gzip, deflate")
    assert recordings["error"]["code"] == "unsupported_media_type"
    assert answers["cloud"][0] == 400 and answers["cloud"][2]["code"] == 8
    assert "'compress' is not supported" in answers["cloud"][2]["reason"]
    assert started[0] == 200 and started[1]["sessionEvent"]["sessionId"], started


async def expect_continue(server: Any, method: str, target: str, headers: dict[str, str]) -> bytes:
    """Send a request's headers with ``Expect: 100-continue`` and no body: the first answer."""
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "Expect: 100-continue"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_a_large_upload_is_refused_before_its_body_is_sent(server: Any) -> None:
    """``Expect: 100-continue``: the refusal (bad signature, over the size, no key) comes
    before the client sends the body. aiohttp said 100 Continue first, so a client began to
    send 4 GiB only to be refused; an upload that may come still hears 100 Continue."""
    auth = await tenant_headers(server, "acme")
    upload = await upload_url(server, auth)
    target = f"{upload.path}?{upload.query}"
    forged = target.replace("signature=", "signature=0")
    huge = {"Content-Length": str(5 * 1024**3)}
    fine = {"Content-Length": "1000"}
    assert (await expect_continue(server, "PUT", forged, fine)).startswith(b"HTTP/1.1 403")
    assert (await expect_continue(server, "PUT", target, huge)).startswith(b"HTTP/1.1 413")
    assert (await expect_continue(server, "PUT", target, fine)).startswith(b"HTTP/1.1 100")
    too_big = {**auth, "Content-Length": str(10 * 1024**3)}
    refused = await expect_continue(server, "POST", "/v1/recordings", too_big)
    assert refused.startswith(b"HTTP/1.1 413")
    nobody = await expect_continue(server, "POST", "/v1/recordings", fine)
    assert nobody.startswith(b"HTTP/1.1 401")
    welcome = await expect_continue(server, "POST", "/v1/recordings", {**auth, **fine})
    assert welcome.startswith(b"HTTP/1.1 100")


async def test_two_coding_lines_and_uploads_that_wait_for_100_are_refused(server: Any) -> None:
    """Two ``Content-Encoding`` lines are a list (RFC 9110 5.3), of which aiohttp decodes one
    at most: a gzip body sent with ``gzip`` and ``identity`` lines was stored still coded.
    And an upload that waits for ``100 Continue`` hears the 415 before it sends its body."""
    auth = await tenant_headers(server, "acme")
    upload = await upload_url(server, auth)
    coded = gzip.compress(b"webm bytes")
    two = CIMultiDict([("Content-Encoding", "gzip"), ("Content-Encoding", "identity")])
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.put(upload.geturl(), data=coded, headers=two) as resp:
            assert (resp.status, resp.headers["Accept-Encoding"]) == (415, "gzip, deflate")
            assert "'gzip, identity' is not supported" in (await resp.json())["message"]
    keys = [info.key async for info in server.app[STORE].list("captures/")]
    assert not [key for key in keys if key.endswith("video/original")]

    target = f"{upload.path}?{upload.query}"
    compress = {"Content-Length": "1000", "Content-Encoding": "compress"}
    refused = await expect_continue(server, "PUT", target, compress)
    assert refused.startswith(b"HTTP/1.1 415") and b"\r\nAccept-Encoding: gzip, deflate" in refused
    create = await expect_continue(server, "POST", "/v1/recordings", {**auth, **compress})
    assert create.startswith(b"HTTP/1.1 415")
