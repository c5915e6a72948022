"""A real browser publishing: headless Chromium loads /publish with fake camera and microphone
and publishes over WHIP; the server's channel receives its video and audio."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import av
import pytest
from browser import Chromium, chromium_binary
from media import decode_counts, ffprobe

from api.apps import create_app_row
from api.keys import CHANNELS, META
from ingest.individual import UidRecorder
from ingest.tokens import mint
from mixer.member_writer import SEPARATE, MemberOutputs, OutputKind
from mixer.tracks import Kind
from mixer.webm import WebmDemuxer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed"),
]

WAIT_S = 45.0
STANDARD = MemberOutputs(SEPARATE | {OutputKind.AV})  # separate playlists and a merged one


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_chromium_publishes_camera_and_microphone(
    server_factory: Any, codec: str, tmp_path: Any
) -> None:
    server = await server_factory(webrtc={"host_addresses": "127.0.0.1"})
    app = await create_app_row(server.app[META])
    token = mint(app.certificate, app.appid, "room1", "browser-1")
    sub = server.app[CHANNELS].subscribe(app.appid, "room1")
    recorder = UidRecorder(
        server.app[CHANNELS], app.appid, "room1", "browser-1", tmp_path / "rec", STANDARD
    )
    await recorder.start()
    query = urlencode(
        {"appid": app.appid, "cname": "room1", "token": token, "codec": codec, "autostart": "1"}
    )
    async with Chromium(f"{server.url}/publish?{query}") as browser:
        video: list[av.VideoFrame] = []
        audio: list[av.AudioFrame] = []
        async with asyncio.timeout(WAIT_S):
            while len(video) < 20 or len(audio) < 20:
                frame = await sub.next_media()
                assert frame is not None and frame.uid == "browser-1"
                (video if frame.kind == "video" else audio).append(frame.data)
            state = await browser.evaluate("document.getElementById('state').dataset.state")
        assert state == "publishing"
        member = server.app[CHANNELS].get(app.appid, "room1").members["browser-1"]
        codecs = {t.kind: t.codec for t in member.tracks.values()}
        assert codecs == {"video": codec.lower(), "audio": "opus"}
        assert (video[-1].width, video[-1].height) == (640, 480)  # Chromium's fake camera
        assert audio[-1].sample_rate == 48000
        pts = [f.pts for f in video]
        assert pts == sorted(pts) and len(set(pts)) == len(pts)  # frames in order, none twice
        left = await browser.evaluate("leave().then(() => document.title)")
        assert left == "reelhouse: idle"
    async with asyncio.timeout(WAIT_S):  # the page's DELETE ended the membership
        while server.app[CHANNELS].get(app.appid, "room1").members:
            event = await sub.next_event()
            assert event is not None
    sub.close()
    output = await recorder.stop()  # and what it published was recorded
    assert output is not None
    merged = output.playlists[OutputKind.AV]
    probe = await asyncio.to_thread(ffprobe, merged, "-show_streams", "-show_format")
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 480)
    counts = await asyncio.to_thread(decode_counts, merged)
    # every video frame the channel carried while the recorder listened (it subscribed first)
    assert counts["video"] >= len(video) and counts["audio"] > 0, (counts, len(video))


async def test_publish_page_is_served(server_factory: Any) -> None:
    import aiohttp

    server = await server_factory()
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/publish") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    assert "/whip" in page and "getUserMedia" in page and "getDisplayMedia" in page


async def test_chromium_media_recorder_over_the_websocket(
    server_factory: Any, tmp_path: Any
) -> None:
    server = await server_factory()
    app = await create_app_row(server.app[META])
    token = mint(app.certificate, app.appid, "room1", "recorder-page")
    registry = server.app[CHANNELS]
    watch = registry.subscribe(app.appid, "room1")
    recorder = UidRecorder(
        registry, app.appid, "room1", "recorder-page", tmp_path / "rec", STANDARD
    )
    await recorder.start()
    query = urlencode(
        {"appid": app.appid, "cname": "room1", "token": token, "transport": "ws", "autostart": "1"}
    )
    async with Chromium(f"{server.url}/publish?{query}") as browser:
        chunks: list[bytes] = []
        async with asyncio.timeout(WAIT_S):
            while len(chunks) < 3:  # three 1 s MediaRecorder chunks
                frame = await watch.next_media()
                assert frame is not None and frame.uid == "recorder-page"
                assert frame.codec == "webm" and isinstance(frame.data, bytes)
                chunks.append(frame.data)
        assert await browser.evaluate("document.getElementById('state').dataset.state") == (
            "publishing"
        )
        assert await browser.evaluate("leave().then(() => document.title)") == "reelhouse: idle"
    output = await recorder.stop()
    watch.close()
    stats = recorder.stats
    assert output is not None and stats.undecodable == 0
    # ~3 s: the fake camera gives 20 fps, and MediaRecorder packs Opus in 60 ms frames
    assert stats.video_in >= 40 and stats.audio_in >= 35
    # VP8 and Opus from the WebM chunks: decoded and encoded once for all three playlists
    assert (stats.decoders_opened, stats.encoders_opened) == (2, 2)
    merged = output.playlists[OutputKind.AV]
    probe = await asyncio.to_thread(ffprobe, merged, "-show_streams", "-show_format")
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 480)
    assert float(probe["format"]["duration"]) >= 2.0
    await asyncio.to_thread(resumes_like_the_whole, chunks)


def resumes_like_the_whole(chunks: list[bytes]) -> None:
    """Chromium's WebM (clusters of unknown size) is followed by the scanner, and demuxed
    again from its last cluster gives the packets the whole stream gave from there (what a
    writer restarted on its log does: ``mixer.webm``)."""
    whole = WebmDemuxer()
    packets = [p for chunk in chunks for p in whole.feed(chunk)] + whole.close()
    keys = [p for p in packets if p.kind is Kind.VIDEO and p.keyframe]
    assert len(keys) >= 2  # (the page asks for one every 2 s: the log keeps less)
    scanner = whole.scanner
    assert not scanner.broken and scanner.header is not None and scanner.clusters, scanner
    at, data = scanner.clusters[-1], b"".join(chunks)
    again = WebmDemuxer()
    resumed = again.resume(scanner.header, at, data[at:]) + again.close()
    assert resumed and resumed == [p for p in packets if p.pos is not None and p.pos >= at]
