"""The server's object route: a playlist fetched by its presigned link names its segments
by presigned links of theirs; any other line is left as it is."""

from __future__ import annotations

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
