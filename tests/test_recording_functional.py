"""Screen recording end to end: a real server, a protocol client, and the HLS and MP4 it
writes decoded by ffprobe and PyAV."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import av
import pytest
from media import Clip, encode_clip, encode_webm, ffprobe
from recording import count_frames, event, fetch_recording, recording_client, start_session
from wsclient import RawClient

from mixer.tracks import Codec, Kind, TrackSpec
from mixer.transcode import AAC_CODERS, ADTS_HEADER_BYTES, AudioTranscoder

SEGMENT_S = 1.0  # short segments keep the clips short
DURATION_TOLERANCE_S = (
    SEGMENT_S  # the bound: media sent minus paused time, within one segment
)

OPUS_FRAME, AAC_FRAME = 960, 1024  # samples per frame at 48 kHz
AAC_FRAMES_SLACK = 2  # encoder priming and the partial last frame
PAUSED_UNTIL_S = 4.0  # media sent while paused: from 2 s to this
LINK_EXPIRY_S = 900  # not the default hour: the setting must reach every link

pytestmark = pytest.mark.slow


async def publish_frames(client: RawClient, frames: list[Any]) -> int:
    seq = 0
    for f in frames:
        seq = await client.media(f)
    await client.wait_ack(seq)
    return seq


def split(clip: Clip, start_s: float, end_s: float) -> list[Any]:
    return [f for f in clip.frames if start_s * 1e6 <= f.pts_us < end_s * 1e6]


@pytest.mark.parametrize("video_codec", ["h264", "vp8"])
async def test_start_pause_resume_end(
    server_factory: Any, tmp_path: Path, video_codec: str
) -> None:
    server = await server_factory(
        recorder={"segment_target_s": SEGMENT_S}, storage={"presign_expiry_s": LINK_EXPIRY_S}
    )
    # paused for 2 s, twice the duration's tolerance: a recording that kept the paused time
    # (or the media sent meanwhile) is 2 s long too long, not just past the bound
    clip = encode_clip(video_codec, duration_s=7.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid = (await event(http, server, "EVENT_TYPE_START", userId="agent"))["sessionEvent"][
            "sessionId"
        ]
        client = RawClient(http, server.url)
        await client.connect()
        welcome = await client.hello(server.api_key, session_id=sid)
        assert (welcome["session_id"], welcome["state"], welcome["acked_seq"]) == (
            sid,
            "RECORDING",
            0,
        )
        start = await client.wait_control("start")
        await client.send({"t": "ack", "id": start["id"]})
        await client.tracks(video_codec, "opus")
        await publish_frames(client, split(clip, 0, 2.0))

        paused = await event(http, server, "EVENT_TYPE_PAUSE", sid)
        pause = await client.wait_control("pause")
        await client.send({"t": "ack", "id": pause["id"]})
        await publish_frames(client, split(clip, 2.0, PAUSED_UNTIL_S))  # acked, not recorded
        await event(http, server, "EVENT_TYPE_RESUME", sid)
        await client.wait_control("resume")
        await publish_frames(client, split(clip, PAUSED_UNTIL_S, 7.1))
        await event(http, server, "EVENT_TYPE_END", sid)
        code, reason = await client.closed()
        assert (code, reason) == (1000, "session ended")

        playlist, mp4 = await fetch_recording(server, sid, tmp_path)
        asked_at = int(time.time())
        async with http.get(
            f"{server.url}/v1/customers/acme/profiles/support/screenRecordingSessions/{sid}",
            headers=server.auth,
        ) as resp:
            session = await resp.json()
        answered_at = int(time.time())

    text = playlist.read_text()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and lines[-1] == "#EXT-X-ENDLIST"
    assert "#EXT-X-PROGRAM-DATE-TIME:" in text
    durations = [
        float(line.split(":")[1].rstrip(",")) for line in lines if line.startswith("#EXTINF")
    ]
    uris = [line for line in lines if line and not line.startswith("#")]
    # the discontinuity sits where the pause was: after the segments holding the first 2 s
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    before = text.split("#EXT-X-DISCONTINUITY\n")[0]
    before_s = sum(
        float(line.split(":")[1].rstrip(","))
        for line in before.splitlines()
        if line.startswith("#EXTINF")
    )
    assert before_s == pytest.approx(2.0, abs=0.15)
    # PAUSE answers with what was recorded up to it: the segments before the discontinuity
    assert float(paused["session"]["recordedDuration"].rstrip("s")) == pytest.approx(before_s)
    recorded_s = 2.0 + 3.0  # 7 s of media minus the 2 s sent while paused
    assert sum(durations) == pytest.approx(recorded_s, abs=DURATION_TOLERANCE_S)

    probe = await asyncio.to_thread(
        ffprobe, playlist, "-show_entries", "stream=codec_type,codec_name"
    )
    kinds = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert kinds == {"video": "h264", "audio": "aac"}

    video, audio = await asyncio.to_thread(count_frames, mp4)
    recorded = split(clip, 0, 2.0) + split(clip, PAUSED_UNTIL_S, 7.1)
    sent_video = sum(1 for f in recorded if f.kind == "video")
    assert abs(video - sent_video) <= 1
    # the audio of both periods, all of it (Opus's 960 samples a frame become AAC's 1024)
    sent_audio = sum(1 for f in recorded if f.kind == "audio")
    assert abs(audio - sent_audio * OPUS_FRAME / AAC_FRAME) <= 2 * AAC_FRAMES_SLACK, audio
    mp4_probe = await asyncio.to_thread(
        ffprobe, mp4, "-show_entries", "format=duration:stream=codec_type"
    )
    assert float(mp4_probe["format"]["duration"]) == pytest.approx(
        recorded_s, abs=DURATION_TOLERANCE_S
    )
    assert {s["codec_type"] for s in mp4_probe["streams"]} == {"video", "audio"}
    assert len(uris) == len(durations) >= 4

    assert session["state"] == "ENDED"
    kinds_stored = {f["kind"] for f in session["files"]}
    assert kinds_stored == {"segment", "playlist", "mp4"}
    assert all(f["uploaded"] for f in session["files"])
    for entry in session["files"]:  # each link lives for [storage] presign_expiry_s
        expires = int(parse_qs(urlsplit(entry["url"]).query)["expires"][0])
        assert asked_at + LINK_EXPIRY_S <= expires <= answered_at + LINK_EXPIRY_S
    mp4_entry = next(f for f in session["files"] if f["kind"] == "mp4")
    async with aiohttp.ClientSession() as http, http.get(mp4_entry["url"]) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
        assert await resp.read() == await asyncio.to_thread(mp4.read_bytes)
    async with aiohttp.ClientSession() as http, http.get(mp4_entry["url"] + "0") as resp:
        assert resp.status == 403  # a changed signature
    # the playlist's link plays as it is: FFmpeg follows it to every segment, no credential
    playlist_url = next(f["url"] for f in session["files"] if f["kind"] == "playlist")
    played = await asyncio.to_thread(count_frames, playlist_url)
    assert played == await asyncio.to_thread(count_frames, playlist) and played[0] == video
    acked = {e["eventType"]: e["acked"] for e in session["events"]}
    assert acked["EVENT_TYPE_START"] and acked["EVENT_TYPE_PAUSE"]


async def test_reconnect_loses_no_frame(server_factory: Any, tmp_path: Path) -> None:
    """Drop the socket with frames unacked, resend above acked_seq: frames in = frames out."""
    server = await server_factory(recorder={"segment_target_s": SEGMENT_S})
    clip = encode_clip("h264", duration_s=4.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        first = RawClient(http, server.url)
        await first.connect()
        await first.hello(server.api_key, session_id=sid)
        await first.tracks()
        half = len(clip.frames) // 2
        for f in clip.frames[:half]:
            await first.media(f)
        await first.wait_ack(half // 2)  # some acked, the rest maybe in flight
        await first.ws.close()  # type: ignore[union-attr]  # the drop

        second = RawClient(http, server.url)
        await second.connect()
        welcome = await second.hello(server.api_key, session_id=sid)
        acked = welcome["acked_seq"]
        assert half // 2 <= acked <= half
        await second.tracks()
        second.seq = acked
        last = 0
        for f in clip.frames[acked:]:  # resend everything above acked_seq, then go on
            last = await second.media(f)
        await second.wait_ack(last)
        assert last == len(clip.frames)
        await event(http, server, "EVENT_TYPE_RECONNECT", sid)
        await event(http, server, "EVENT_TYPE_END", sid)
        playlist, mp4 = await fetch_recording(server, sid, tmp_path)
        async with http.get(server.url + "/metrics") as resp:
            metrics = dict(
                line.split(" ", 1) for line in (await resp.text()).splitlines() if line[:1] != "#"
            )
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == clip.video_frames
    # Opus→AAC re-frames the audio: 960-sample frames in, 1024-sample frames out
    assert abs(audio - clip.audio_frames * OPUS_FRAME / AAC_FRAME) <= AAC_FRAMES_SLACK
    # every frame counted once though many were sent twice
    assert int(metrics["reelhouse_frames_in_total"]) == len(clip.frames)
    assert int(metrics["reelhouse_bytes_in_total"]) == sum(len(f.data) for f in clip.frames)
    segments = playlist.read_text().count("#EXTINF")
    assert int(metrics["reelhouse_segments_written_total"]) == segments


async def test_a_publisher_whose_clock_starts_again_loses_nothing(
    server_factory: Any, tmp_path: Path
) -> None:
    """A second publisher process in the same session starts its timestamps at 0 again: the
    recording goes on after a discontinuity, every acknowledged frame in it."""
    server = await server_factory(recorder={"segment_target_s": SEGMENT_S})
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        for f in clip.frames:
            await client.media(f)
        for f in clip.frames:  # the same times again, sequence numbers going on
            last = await client.media(f)
        await client.wait_ack(last)
        await event(http, server, "EVENT_TYPE_END", sid)
        playlist, mp4 = await fetch_recording(server, sid, tmp_path)
    assert playlist.read_text().count("#EXT-X-DISCONTINUITY\n") == 1
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert video == 2 * clip.video_frames
    # the second run's audio too (its times are earlier than the first's last ones)
    expected = 2 * clip.audio_frames * OPUS_FRAME / AAC_FRAME
    assert abs(audio - expected) <= 2 * AAC_FRAMES_SLACK, (audio, expected)


async def test_webm_chunks_over_the_socket(server_factory: Any, tmp_path: Path) -> None:
    """MediaRecorder-style WebM chunks (VP8 + Opus) become H.264 + AAC HLS and an MP4."""
    server = await server_factory(recorder={"segment_target_s": SEGMENT_S})
    data, video_frames, _ = await asyncio.to_thread(encode_webm, 3.0)
    chunk_bytes = 8_000  # cuts fall mid-cluster, as a 1 s timeslice does
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    async with aiohttp.ClientSession() as http:
        sid = await start_session(http, server)
        client = RawClient(http, server.url)
        await client.connect()
        await client.hello(server.api_key, session_id=sid)
        await client.send({"t": "track", "id": 0, "kind": "video", "codec": "webm"})
        for i, chunk in enumerate(chunks, 1):
            msg = {
                "t": "media",
                "seq": i,
                "track": 0,
                "pts": i * 1000,
                "key": i == 1,
                "data": chunk,
            }
            await client.send(msg)
        await client.wait_ack(len(chunks))
        await event(http, server, "EVENT_TYPE_END", sid)
        playlist, mp4 = await fetch_recording(server, sid, tmp_path)
    probe = await asyncio.to_thread(ffprobe, playlist, "-show_entries", "stream=codec_name")
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    video, audio = await asyncio.to_thread(count_frames, mp4)
    assert abs(video - video_frames) <= 1  # transcoded: the encoder may hold the last frame
    assert audio > 0


def _aac_payloads(packets: list[Any]) -> list[bytes]:
    return [bytes(p)[ADTS_HEADER_BYTES:] for p in packets]


@pytest.mark.parametrize("coder", ["fast", "twoloop"])
async def test_the_recording_uses_the_aac_coder_of_the_settings(
    server_factory: Any, tmp_path: Path, coder: str
) -> None:
    """``[recorder] aac_coder`` reaches the writer: the MP4's AAC frames are, byte for byte,
    the ones that coder makes of the Opus that was sent (and not the other coder's)."""
    server = await server_factory(recorder={"segment_target_s": SEGMENT_S, "aac_coder": coder})
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    expected = {}
    for name in AAC_CODERS:
        transcoder = AudioTranscoder(TrackSpec(1, Kind.AUDIO, Codec.OPUS), aac_coder=name)
        packets = []
        for f in clip.frames:
            if f.kind == "audio":
                ticks = f.pts_us * 9 // 100
                packets += transcoder.push(f.data, ticks, ticks, True)
        expected[name] = _aac_payloads([*packets, *transcoder.flush()])
    assert expected["fast"] != expected["twoloop"]
    async with aiohttp.ClientSession() as http:
        sid, client = await recording_client(http, server)
        await publish_frames(client, list(clip.frames))
        await event(http, server, "EVENT_TYPE_END", sid)
    _, mp4 = await fetch_recording(server, sid, tmp_path)
    with av.open(str(mp4)) as container:
        recorded = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert recorded == expected[coder]
