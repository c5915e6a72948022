"""Recording a WebRTC channel member (individual mode): an aiortc peer publishes a colour and a
tone over WHIP; the recorder's HLS and MP4 are decoded and checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
from webrtc_peer import accept_answer, make_offer

from ingest.channels import ChannelRegistry
from ingest.member_recorder import MemberRecorder, canvas_for
from ingest.webrtc import WebRtcSettings, WhipServer

pytestmark = pytest.mark.slow

WAIT_S = 30.0
SENT_VIDEO_FRAMES = 60  # aiortc's track paces at 30 fps: two seconds
TONE_HZ = 440.0


async def test_member_is_recorded_to_hls_and_mp4(tmp_path: Path) -> None:
    whip = WhipServer(ChannelRegistry(), WebRtcSettings(host_addresses="127.0.0.1"))
    recorder = MemberRecorder(whip.registry, "app", "room", "alice", tmp_path, segment_target_s=1.0)
    recorder.start()
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
        await pc.close()
        await whip.aclose()
    assert output is not None and recorder.stats.video_in >= SENT_VIDEO_FRAMES - 5
    assert recorder.stats.audio_in > 50

    playlist = output.playlist.read_text()
    assert "#EXT-X-ENDLIST" in playlist and len(output.segments) >= 2
    assert len(output.mp4s) == 1
    mp4_path, _ = output.mp4s[0]
    with av.open(str(mp4_path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 320, 240)
        frames = list(container.decode(video=0))
    duration_s = len(frames) / 15
    assert 1.5 <= duration_s <= 4.0  # ~2 s sent, at the recording's 15 fps
    rgb = frames[len(frames) // 2].to_ndarray(format="rgb24")[120, 160]
    assert rgb[2] > 180 and rgb[0] < 70 and rgb[1] < 70  # the blue that was sent
    with av.open(str(mp4_path)) as container:
        samples = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        ).astype(np.float64)
    # the tone fills the recording: every tenth of it is loud, none silent
    levels = [float(np.sqrt(np.mean(chunk**2))) for chunk in np.array_split(samples, 10)]
    assert min(levels) > 0.05, levels
    spectrum = np.abs(np.fft.rfft(samples[-48000:]))
    peak_hz = np.argmax(spectrum) * 48000 / min(len(samples), 48000)
    assert abs(peak_hz - TONE_HZ) < 5  # the tone arrived in the recording


def test_canvas_keeps_size_and_fits_large_inputs() -> None:
    assert canvas_for(640, 480) == (640, 480)
    assert canvas_for(641, 361) == (640, 360)
    w, h = canvas_for(3840, 2160)
    assert w * h <= 1920 * 1080 and abs(w / h - 16 / 9) < 0.01
