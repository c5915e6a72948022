"""Recording one channel member (individual mode) from a WebRTC publisher: an aiortc peer
publishes a colour and a tone over WHIP; aiortc hands over decoded frames, which are encoded
once (H.264, AAC) into separate video and audio playlists, checked by decoding them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
from media import ffprobe
from webrtc_peer import accept_answer, make_offer

from ingest.channels import ChannelRegistry
from ingest.individual import UidRecorder
from ingest.webrtc import WebRtcSettings, WhipServer
from mixer.member_writer import SEPARATE, MemberOutputs, OutputKind
from mixer.playlist import Playlist

pytestmark = pytest.mark.slow

WAIT_S = 30.0
SENT_VIDEO_FRAMES = 60  # aiortc's track paces at 30 fps: two seconds
TONE_HZ = 440.0


def decode_all(playlist: Path, kind: str) -> list[av.frame.Frame]:
    frames: list[av.frame.Frame] = []
    for segment in Playlist.parse(playlist.read_text()).segments:
        with av.open(str(playlist.with_name(segment.uri))) as container:
            assert [s.type for s in container.streams] == [kind]  # that kind only
            frames += container.decode(container.streams[0])
    return frames


async def test_webrtc_member_is_encoded_once_into_audio_and_video_playlists(
    tmp_path: Path,
) -> None:
    whip = WhipServer(ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1"))
    segments: list[tuple[OutputKind, float]] = []
    recorder = UidRecorder(
        whip.registry, "app", "room", "alice", tmp_path, MemberOutputs(SEPARATE),
        name="s_room__uid_s_alice__uid_e", segment_target_s=1.0,
        on_segment=lambda kind, info: segments.append((kind, info.duration_s)),
    )  # fmt: skip
    await recorder.start()
    watch = whip.registry.subscribe("app", "room")
    pc = await make_offer("vp8", rgb=(0, 0, 255))
    try:
        _, answer = await whip.publish("app", "room", "alice", pc.localDescription.sdp)
        await accept_answer(pc, answer)
        seen = 0
        async with asyncio.timeout(WAIT_S):
            while seen < SENT_VIDEO_FRAMES:
                frame = await watch.next_media()
                assert frame is not None
                seen += frame.kind == "video"
        output = await recorder.stop()
    finally:
        watch.close()
        await pc.close()
        await whip.aclose()
    assert output is not None and await recorder.stop() is output  # stop twice: same output
    stats = recorder.stats
    assert stats.video_in >= SENT_VIDEO_FRAMES - 5 and stats.audio_in > 50
    # decoded by aiortc already: nothing decoded here, one H.264 and one AAC encoder
    assert (stats.decoders_opened, stats.encoders_opened, stats.copied) == (0, 2, 0)
    video, audio = output.playlists[OutputKind.VIDEO], output.playlists[OutputKind.AUDIO]
    assert video.name == "s_room__uid_s_alice__uid_e_video.m3u8"
    assert "#EXT-X-ENDLIST" in video.read_text() and "#EXT-X-ENDLIST" in audio.read_text()
    assert {kind for kind, _ in segments} == {OutputKind.VIDEO, OutputKind.AUDIO}
    probe = await asyncio.to_thread(ffprobe, video, "-show_streams", "-show_format")
    assert [s["codec_name"] for s in probe["streams"]] == ["h264"]
    assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) == (320, 240)
    pictures = await asyncio.to_thread(decode_all, video, "video")
    assert len(pictures) >= SENT_VIDEO_FRAMES - 5  # the member's own 30 fps, not resampled
    rgb = pictures[len(pictures) // 2].to_ndarray(format="rgb24")[120, 160]
    assert rgb[2] > 180 and rgb[0] < 70 and rgb[1] < 70  # the blue that was sent
    sounds = await asyncio.to_thread(decode_all, audio, "audio")
    # aiortc decodes Opus to stereo: the first channel holds the tone
    samples = np.concatenate([f.to_ndarray()[0] for f in sounds]).astype(np.float64)
    assert len(samples) / 48_000 == pytest.approx(float(probe["format"]["duration"]), abs=0.5)
    levels = [float(np.sqrt(np.mean(chunk**2))) for chunk in np.array_split(samples, 10)]
    assert min(levels) > 0.05, levels  # the tone fills the recording
    spectrum = np.abs(np.fft.rfft(samples[-48000:]))
    peak_hz = np.argmax(spectrum) * 48000 / min(len(samples), 48000)
    assert abs(peak_hz - TONE_HZ) < 5
