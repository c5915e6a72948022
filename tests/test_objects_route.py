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
