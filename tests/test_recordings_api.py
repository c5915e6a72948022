"""The recordings API's rules on a real server: cursor pagination under concurrent inserts,
filters, tenant isolation, auth, and bad bodies answered in the seed's error shape."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from test_recordings_functional import body, tenant_headers

from api.recordings import RECORDINGS

PROJECTS = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")


async def create(http: aiohttp.ClientSession, server: Any, auth: Any, **more: Any) -> str:
    async with http.post(server.url + "/v1/recordings", json=body(**more), headers=auth) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
    return str(created["id"])


async def page_all(
    http: aiohttp.ClientSession, server: Any, auth: Any, during: Any = None, **query: Any
) -> list[str]:
    """Follow ``next_cursor`` to the end; ``during`` runs after the first page."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        async with http.get(server.url + "/v1/recordings", params=params, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        ids += [r["id"] for r in page["recordings"]]
        if during is not None:
            await during()
            during = None
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_pagination_is_stable_while_recordings_arrive(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        made = [await create(http, server, auth, project_id=PROJECTS[i % 2]) for i in range(250)]

        async def more() -> None:  # new arrivals between pages, alongside more page reads
            await asyncio.gather(
                *(create(http, server, auth, project_id=PROJECTS[0]) for _ in range(20))
            )

        seen = await page_all(http, server, auth, during=more, limit="100")
        assert len(seen) == len(set(seen))  # no duplicates
        assert set(made) <= set(seen) and len(set(seen) - set(made)) <= 20  # no gaps
        assert seen == sorted(seen, reverse=True)  # newest first
        async with http.get(server.url + "/v1/recordings", headers=auth) as resp:
            assert len((await resp.json())["recordings"]) == 25  # the default limit
        project = await page_all(http, server, auth, project_id=PROJECTS[1], limit="7")
        assert project == [r for r in seen if r in set(made[1::2])]
        everything = await page_all(http, server, auth, limit="100")
        assert len(everything) == 270 and set(seen) <= set(everything)
        assert await page_all(http, server, auth, status="ready", limit="100") == everything
        assert await page_all(http, server, auth, status="uploading") == []
        params = {"limit": "500"}  # (the seed's "max 100": a cap, as its 200-only answers say)
        async with http.get(server.url + "/v1/recordings", params=params, headers=auth) as resp:
            assert resp.status == 200 and len((await resp.json())["recordings"]) == 100
        for bad in ({"limit": "0"}, {"limit": "x"}, {"cursor": "nope"},
                    {"status": "done"}, {"project_id": "p1"}):  # fmt: skip
            async with http.get(server.url + "/v1/recordings", params=bad, headers=auth) as resp:
                assert resp.status == 400, bad
                error = (await resp.json())["error"]
                assert error["code"] == "validation_error" and error["field"] == next(iter(bad))


async def test_tenants_never_see_each_other(server: Any) -> None:
    a = await tenant_headers(server, "acme", "alice")
    b = await tenant_headers(server, "globex", "bob")
    async with aiohttp.ClientSession() as http:
        rid = await create(http, server, a, has_video=True)
        mine = await create(http, server, b)
        url = f"{server.url}/v1/recordings/{rid}"
        for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/video/confirm"),
                             ("DELETE", "")):  # fmt: skip
            async with http.request(method, url + path, headers=b) as resp:
                assert resp.status == 404, (method, path)
                assert await resp.json() == {
                    "error": {"code": "not_found", "message": "recording not found"}
                }
        assert await page_all(http, server, b) == [mine]
        async with http.get(url, headers=a) as resp:
            detail = await resp.json()
        assert detail["status"] == "uploading" and detail["video_upload_url"]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with http.get(server.url + "/v1/recordings", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(f"{server.url}/v1/recordings/not-a-uuid", headers=a) as resp:
            assert resp.status == 404
        async with http.get(f"{url}/nothing-here", headers=a) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
        async with http.put(server.url + "/v1/recordings", headers=a) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_links_live_for_the_presign_setting(server_factory: Any) -> None:
    server = await server_factory(storage={"presign_expiry_s": 120})
    auth = await tenant_headers(server, "acme")
    async with aiohttp.ClientSession() as http:
        asked_at = int(time.time())
        async with http.post(
            server.url + "/v1/recordings", json=body(has_video=True), headers=auth
        ) as resp:
            created = await resp.json()
        answered_at = int(time.time())
    expires = int(parse_qs(urlsplit(created["video_upload_url"]).query)["expires"][0])
    assert asked_at + 120 <= expires <= answered_at + 120


async def post_raw(http: aiohttp.ClientSession, server: Any, auth: Any, data: Any) -> Any:
    async with http.post(server.url + "/v1/recordings", data=data, headers=auth) as resp:
        return resp.status, await resp.json()


async def test_null_is_an_optional_field_not_given(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    optional = ("name", "ended_at", "project_id", "has_video", "has_audio", "navigations")
    payload = body(**dict.fromkeys(optional), duration_ms=None, event_count=None)
    async with aiohttp.ClientSession() as http:
        status, created = await post_raw(http, server, auth, json.dumps(payload))
        assert status == 201, created
        assert (created["status"], created["video_upload_url"]) == ("ready", None)
        async with http.get(f"{server.url}/v1/recordings/{created['id']}", headers=auth) as resp:
            detail = await resp.json()
    assert (detail["has_video"], detail["has_audio"], detail["project_id"]) == (False, False, None)


async def test_deeply_nested_json_is_a_validation_error(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    nested = b"[" * 5_000
    for field in ("events", "navigations", "name"):
        raw = b'{"started_at": "2026-05-04T10:00:00Z", "' + field.encode() + b'": ' + nested
        async with aiohttp.ClientSession() as http:
            status, answer = await post_raw(http, server, auth, raw)
        assert status == 400, answer
        assert answer["error"]["code"] == "validation_error", answer


async def test_bad_bodies_get_clear_errors(server: Any) -> None:
    auth = await tenant_headers(server, "acme")
    cases = {
        "started_at": {"events": []},
        "events": {"started_at": "2026-05-04T10:00:00Z"},
        "events[1].timestamp": body(events=[{"type": 1, "timestamp": 1}, {"type": 2}]),
        "events[0].type": body(events=[{"type": "meta", "timestamp": 1}]),
        "events[0]": body(events=[[1, 2]]),
        "has_video": body(has_video="yes"),
        "project_id": body(project_id="p-1"),
        "ended_at": body(ended_at="2026-05-04T09:00:00Z"),
        "navigations[0].url": body(navigations=[{"timestamp_ms": 0}]),
        # out of range: these were 500s (SQLite's integers, a date before year 1 in UTC)
        "event_count": body(event_count=10**23),
        "events[0].timestamp": body(events=[{"type": 1, "timestamp": 1e300}]),
    }
    async with aiohttp.ClientSession() as http:
        for field, payload in cases.items():
            status, answer = await post_raw(http, server, auth, json.dumps(payload))
            assert status == 400, field
            assert answer["error"]["code"] == "validation_error"
            assert answer["error"]["field"] == field, answer
        # JSON's 1e400 reads as infinity: stored, every GET and list of the tenant said
        # Infinity, which JSON.parse refuses
        raw = json.dumps(body(navigations=[{"url": "x", "timestamp_ms": 0}]))
        status, answer = await post_raw(http, server, auth, raw.replace('": 0}', '": 1e400}'))
        assert status == 400 and answer["error"]["field"] == "navigations[0].timestamp_ms"
        huge = body(events=[{"type": 1, "timestamp": 10**400}])  # (no float holds it)
        status, answer = await post_raw(http, server, auth, json.dumps(huge))
        assert status == 400 and answer["error"]["field"] == "events[0].timestamp", answer
        early = {**body(), "started_at": "0001-01-01T00:00:00+01:00"}  # (before UTC's year 1)
        status, answer = await post_raw(http, server, auth, json.dumps(early))
        assert status == 400 and answer["error"]["field"] == "started_at", answer
        status, answer = await post_raw(http, server, auth, '{"started_at": "x", "events": 5}')
        assert (
            status == 400 and answer["error"]["message"] == "events must be an array, not a number"
        )
        status, answer = await post_raw(http, server, auth, b"{not json")
        assert status == 400 and answer["error"]["field"] == "body"
        service = server.app[RECORDINGS]
        service.max_body_bytes = 64 * 1024
        huge = json.dumps(
            body(events=[{"type": 3, "timestamp": i, "pad": "x" * 100} for i in range(1000)])
        )

        async def chunked() -> Any:  # no Content-Length: the limit is found while reading
            for i in range(0, len(huge), 8192):
                yield huge[i : i + 8192].encode()

        for data in (huge, chunked()):
            status, answer = await post_raw(http, server, auth, data)
            assert status == 413 and answer["error"]["code"] == "payload_too_large"
        assert [p.name async for p in _tmp(server)] == []  # spooled bodies removed


async def _tmp(server: Any) -> Any:
    for path in await asyncio.to_thread(lambda: list((server.data_dir / "tmp").iterdir())):
        yield path


async def test_documented_limits_and_answers(server: Any) -> None:
    """docs/recordings.md's limits (name, navigations, one field) and the 409 of a playlist
    asked for before the video is ready."""
    auth = await tenant_headers(server, "acme")
    many = [{"url": "u", "timestamp_ms": 0}] * 10_001
    cases = {
        "name": body(name="n" * 1001),
        "navigations": body(navigations=many),
    }
    async with aiohttp.ClientSession() as http:
        for field, payload in cases.items():
            status, answer = await post_raw(http, server, auth, json.dumps(payload))
            assert status == 400 and answer["error"]["field"] == field, (field, answer)
        status, answer = await post_raw(
            http, server, auth, json.dumps(body(name="n" * 1000, navigations=many[:10_000]))
        )
        assert status == 201, answer  # (the limits themselves are taken)
        async with http.post(
            server.url + "/v1/recordings", json=body(has_video=True), headers=auth
        ) as resp:
            waiting = await resp.json()
        url = f"{server.url}/v1/recordings/{waiting['id']}/video/index.m3u8"
        async with http.get(url, headers=auth) as resp:
            error = (await resp.json())["error"]
        assert resp.status == 409 and error["code"] == "not_ready"
