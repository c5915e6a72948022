"""The server's object route: a playlist fetched by its presigned link names its segments
by presigned links of theirs; any other line is left as it is."""

from __future__ import annotations

from typing import Any

import aiohttp
from conftest import Server

from api.objects_route import STORE

PLAYLIST = """#EXTM3U
#EXT-X-TARGETDURATION:4
#EXTINF:4.000,
index_00000.ts
#EXTINF:4.000,
../other-session/index_00000.ts
#EXTINF:4.000,
https://cdn.example/index_00002.ts
#EXT-X-ENDLIST
"""


async def test_a_playlist_link_signs_its_own_segments_only(server: Server) -> None:
    store = server.app[STORE]
    await store.put_bytes("rec/s1/index.m3u8", PLAYLIST.encode())
    await store.put_bytes("rec/s1/index_00000.ts", b"segment bytes")
    url = await store.presigned_url("rec/s1/index.m3u8", expires_s=60)
    assert url is not None and url.startswith("/v1/objects/")  # the route's own, relative
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + url) as resp:
            assert resp.status == 200
            lines = (await resp.text()).splitlines()
        segment = lines[3]
        assert segment.startswith(f"{server.url}/v1/objects/rec/s1/index_00000.ts?")
        async with http.get(segment) as resp:  # the signed line plays without a credential
            assert (resp.status, await resp.read()) == (200, b"segment bytes")
    # a path out of the playlist's folder and a URL are not signed: left as they were
    assert lines[5] == "../other-session/index_00000.ts"
    assert lines[7] == "https://cdn.example/index_00002.ts"


async def test_a_range_is_served_as_players_ask_for_it(server: Server) -> None:
    """Safari and other players fetch an MP4 by byte ranges, and give up on a server that
    answers each with the whole file (the route ignored Range). 206 with the bytes asked,
    416 past the end, the whole object for a range it does not take or a changed one."""
    store = server.app[STORE]
    data = bytes(range(256)) * 40  # 10 240 bytes, each position telling its byte
    info = await store.put_bytes("rec/s1/whole.mp4", data)
    url = server.url + str(await store.presigned_url("rec/s1/whole.mp4", expires_s=60))
    cases = {
        "bytes=0-1": (206, data[0:2], "bytes 0-1/10240"),
        "bytes=100-4195": (206, data[100:4196], "bytes 100-4195/10240"),
        "bytes=10000-": (206, data[10000:], "bytes 10000-10239/10240"),
        "bytes=-24": (206, data[-24:], "bytes 10216-10239/10240"),
        "bytes=10000-99999": (206, data[10000:], "bytes 10000-10239/10240"),
        "bytes=0-1,5-6": (200, data, None),  # several: the whole object
        "items=0-1": (200, data, None),
        "bytes=10240-": (416, b"", "bytes */10240"),
    }
    async with aiohttp.ClientSession() as http:
        for asked, (status, body, content_range) in cases.items():
            async with http.get(url, headers={"Range": asked}) as resp:
                got = (resp.status, await resp.read(), resp.headers.get("Content-Range"))
                assert got == (status, body, content_range), asked
                if status != 416:
                    assert resp.headers["Accept-Ranges"] == "bytes"
                    assert resp.headers["X-Content-Type-Options"] == "nosniff"
        changed = {"Range": "bytes=0-1", "If-Range": '"not-its-etag"'}
        async with http.get(url, headers=changed) as resp:
            assert (resp.status, len(await resp.read())) == (200, len(data))
        same = {"Range": "bytes=0-1", "If-Range": f'"{info.etag}"'}
        async with http.get(url, headers=same) as resp:
            assert (resp.status, await resp.read()) == (206, data[:2])
        streamed: list[str] = []
        stream = store.stream

        def watched(key: str, *args: Any, **kwargs: Any) -> Any:
            streamed.append(key)
            return stream(key, *args, **kwargs)

        store.stream = watched
        try:
            async with http.head(url, headers={"Range": "bytes=0-1"}) as resp:
                assert (resp.status, resp.headers["Content-Length"]) == (206, "2")
            async with http.head(url) as resp:
                assert (resp.status, resp.headers["Content-Length"]) == (200, str(len(data)))
        finally:
            del store.stream
        assert streamed == []  # a HEAD reads nothing (it read a 2 GB MP4 through, unsent)


async def test_a_page_of_another_origin_may_play_a_link(server: Server) -> None:
    """hls.js on a page of another origin fetches the playlist, the segments and, for an MP4,
    byte ranges: each answer (errors too) allows any origin and shows the headers a player
    reads; a ranged fetch's preflight is answered without a signature."""
    store = server.app[STORE]
    await store.put_bytes("rec/s2/index.m3u8", PLAYLIST.encode())
    await store.put_bytes("rec/s2/whole.mp4", b"0123456789")
    playlist = server.url + str(await store.presigned_url("rec/s2/index.m3u8", expires_s=60))
    mp4 = server.url + str(await store.presigned_url("rec/s2/whole.mp4", expires_s=60))
    page = {"Origin": "https://player.example"}
    async with aiohttp.ClientSession() as http:
        asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
        async with http.options(mp4, headers={**page, **asks}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "Range" in resp.headers["Access-Control-Allow-Headers"]
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        async with http.get(mp4, headers={**page, "Range": "bytes=2-3"}) as resp:
            assert (resp.status, await resp.read()) == (206, b"23")
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            exposed = resp.headers["Access-Control-Expose-Headers"]
            assert "Content-Range" in exposed and "Content-Length" in exposed
        async with http.get(playlist, headers=page) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(mp4.replace("signature=", "signature=0"), headers=page) as resp:
            assert resp.status == 403 and resp.headers["Access-Control-Allow-Origin"] == "*"
        # (the APIs that take the server's key are not for pages of other origins)
        async with http.get(f"{server.url}/v1/recordings", headers=page) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_cache_revalidates_an_object_without_fetching_it(server: Server) -> None:
    """An object's answer carries its ETag and Last-Modified; a request naming them again
    (``If-None-Match``, or else ``If-Modified-Since``) gets 304 and no body, one naming
    another version the object."""
    store = server.app[STORE]
    await store.put_bytes("rec/s3/index_00000.ts", b"segment bytes")
    url = server.url + str(await store.presigned_url("rec/s3/index_00000.ts", expires_s=60))
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-cache"
            etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
        cases = {
            (etag, None): 304,
            (f'W/{etag}, "other"', None): 304,  # (If-None-Match compares weakly)
            ("*", None): 304,
            ('"other"', None): 200,
            (None, modified): 304,
            (None, "Mon, 01 Jan 2001 00:00:00 GMT"): 200,
            (None, "Fri, 01 Jan 2100 00:00:00 GMT"): 200,  # (a date in the future: ignored)
            ('"other"', modified): 200,  # (If-None-Match decides when both are sent)
        }
        for (tags, since), status in cases.items():
            headers = {"If-None-Match": tags} if tags else {}
            headers |= {"If-Modified-Since": since} if since else {}
            async with http.get(url, headers=headers) as resp:
                body = await resp.read()
                assert (resp.status, len(body) if status == 304 else body) == (
                    status,
                    0 if status == 304 else b"segment bytes",
                ), (tags, since)
                assert resp.headers["ETag"] == etag
