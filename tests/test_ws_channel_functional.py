"""WebSocket publishers in channels: the foundation's protocol with a channel token, seen by
subscribers like a WHIP publisher, and recorded by the individual-mode recorder (H.264 and AAC
copied, nothing decoded)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from media import encode_clip
from wsclient import RawClient

from api.apps import create_app_row
from api.keys import CHANNELS, META
from ingest.individual import UidRecorder
from ingest.tokens import Role, mint
from mixer.member_writer import OutputKind
from mixer.playlist import Playlist
from mixer.sources import FileSource

pytestmark = pytest.mark.slow

WAIT_S = 30.0


@pytest.mark.parametrize("bframes", [0, 2])
async def test_ws_publisher_joins_a_channel_and_is_recorded(
    server_factory: Any, tmp_path: Path, bframes: int
) -> None:
    """Copied as sent; with B-frames too (the publisher's dts reaches the recorder)."""
    server = await server_factory()
    app = await create_app_row(server.app[META])
    registry = server.app[CHANNELS]
    watch = registry.subscribe(app.appid, "room1")
    recorder = UidRecorder(registry, app.appid, "room1", "agent-7", tmp_path / "rec")
    await recorder.start()
    clip = encode_clip("h264", duration_s=3.0, audio_codec="aac", bframes=bframes)
    if bframes:
        assert any(f.dts_us is not None and f.dts_us < f.pts_us for f in clip.frames)
    token = mint(app.certificate, app.appid, "room1", "agent-7")
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, server.url)
        await client.connect()
        welcome = await client.hello(token, appid=app.appid, cname="room1")
        assert (welcome["state"], welcome["uid"], welcome["session_id"]) == (
            "PUBLISHING",
            "agent-7",
            None,
        )
        await client.tracks("h264", "aac")
        seq = 0
        for frame in clip.frames:
            seq = await client.media(frame)
        await client.wait_ack(seq)  # acknowledged once handed to the channel
        member = registry.get(app.appid, "room1").members["agent-7"]
        assert {t.kind: t.codec for t in member.tracks.values()} == {
            "video": "h264",
            "audio": "aac",
        }
        got = 0
        async with asyncio.timeout(WAIT_S):
            while got < clip.video_frames:
                media = await watch.next_media()
                assert media is not None
                got += media.kind == "video"
        await client.send({"t": "bye"})
        code, _ = await client.closed()
        assert code == 1000
    output = await recorder.stop()
    stats = recorder.stats
    assert output is not None and stats.video_in == clip.video_frames
    assert stats.copied == len(clip.frames) and stats.undecodable == 0
    assert (stats.decoders_opened, stats.encoders_opened) == (0, 0)  # copied, not decoded
    playlist = output.playlists[OutputKind.VIDEO]
    frames = 0
    for segment in Playlist.parse(playlist.read_text()).segments:
        with av.open(str(playlist.with_name(segment.uri))) as container:
            video = container.streams.video[0]
            assert (video.width, video.height) == (320, 240)  # the member's own size
            frames += sum(1 for _ in container.decode(video))
    assert frames == clip.video_frames  # every frame sent, at the member's own rate
    assert registry.get(app.appid, "room1").members == {}  # bye: left the channel
    watch.close()


async def test_ws_channel_refusals(server_factory: Any) -> None:
    server = await server_factory()
    app = await create_app_row(server.app[META])
    other = await create_app_row(server.app[META])
    forged = mint(other.certificate, app.appid, "room1", "u1")
    listener = mint(app.certificate, app.appid, "room1", "u1", Role.SUBSCRIBER)
    cases = [
        ({"appid": app.appid, "cname": "room1"}, "", 4002, "needs a channel token"),
        ({"appid": app.appid, "cname": "room1"}, forged, 4002, "signature is not valid"),
        ({"appid": app.appid, "cname": "room1"}, listener, 4002, "does not allow publishing"),
        ({"appid": "0" * 32, "cname": "room1"}, "", 4002, "not found"),
        ({"appid": app.appid}, "", 4001, "missing cname"),
    ]
    async with aiohttp.ClientSession() as http:
        for ids, token, code, reason in cases:
            client = RawClient(http, server.url)
            await client.connect()
            await client.send({"t": "hello", "v": 1, "token": token, **ids})
            got_code, text = await client.closed()
            assert got_code == code and reason in text, (ids, got_code, text)
        # media before its track, then a sequence gap
        good = mint(app.certificate, app.appid, "room1", "u1")
        clip = encode_clip("h264", duration_s=0.5, audio_codec=None)
        client = RawClient(http, server.url)
        await client.connect()
        await client.hello(good, appid=app.appid, cname="room1")
        await client.media(clip.frames[0])
        code, text = await client.closed()
        assert code == 4006 and "not announced" in text
        client = RawClient(http, server.url)
        await client.connect()
        await client.hello(good, appid=app.appid, cname="room1")
        await client.tracks("h264", None)
        await client.media(clip.frames[0], seq=2)
        code, text = await client.closed()
        assert code == 4007 and "seq 2 after 0" in text


async def test_same_uid_replaces_the_older_ws_connection(server_factory: Any) -> None:
    server = await server_factory()
    app = await create_app_row(server.app[META], token_required=False)
    async with aiohttp.ClientSession() as http:
        first = RawClient(http, server.url)
        await first.connect()
        await first.hello("", appid=app.appid, cname="room1", uid="dup")
        second = RawClient(http, server.url)
        await second.connect()
        welcome = await second.hello("", appid=app.appid, cname="room1", uid="dup")
        assert welcome["uid"] == "dup"
        code, reason = await first.closed()
        assert code == 4009 and "replaced" in reason
        members = server.app[CHANNELS].get(app.appid, "room1").members
        assert list(members) == ["dup"] and members["dup"].transport.value == "ws"


async def test_a_publisher_in_mp4_framing_is_recorded(server_factory: Any, tmp_path: Path) -> None:
    """Raw AAC with its AudioSpecificConfig, what ``reelhouse publish file.mp4`` sends: the
    channel's subscribers get it as ADTS, so it is recorded (every frame was acknowledged and
    dropped as undecodable)."""
    mp4 = tmp_path / "talk.mp4"
    await asyncio.to_thread(
        subprocess.run,
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", "2", "-c:a", "aac", str(mp4)],
        check=True,
    )  # fmt: skip
    source = FileSource(mp4)
    audio_track = source.info.track("audio")
    assert audio_track is not None and audio_track.extradata
    frames = await asyncio.to_thread(list, source)
    assert frames and not any(f.data[:2] == b"\xff\xf1" for f in frames)  # raw
    server = await server_factory()
    app = await create_app_row(server.app[META])
    registry = server.app[CHANNELS]
    recorder = UidRecorder(registry, app.appid, "room1", "talker", tmp_path / "rec")
    await recorder.start()
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, server.url)
        await client.connect()
        token = mint(app.certificate, app.appid, "room1", "talker")
        await client.hello(token, appid=app.appid, cname="room1")
        await client.send(
            {"t": "track", "id": 1, "kind": "audio", "codec": "aac",
             "extradata": audio_track.extradata}
        )  # fmt: skip
        seq = 0
        for frame in frames:
            seq += 1
            await client.send(
                {"t": "media", "seq": seq, "track": 1, "pts": frame.pts_us, "key": True,
                 "data": frame.data}
            )  # fmt: skip
        await client.wait_ack(seq)
        await client.send({"t": "bye"})
        assert (await client.closed())[0] == 1000
    output = await recorder.stop()
    assert output is not None and recorder.stats.undecodable == 0
    playlist = output.playlists[OutputKind.AUDIO]
    decoded = 0
    for segment in Playlist.parse(playlist.read_text()).segments:
        with av.open(str(playlist.with_name(segment.uri))) as container:
            decoded += sum(1 for _ in container.decode(audio=0))
    assert decoded >= len(frames) - 2  # (the encoder's priming frames aside)
