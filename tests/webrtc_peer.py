"""An aiortc publisher for the tests: a solid colour and a tone, over WHIP or handed SDP."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
import numpy as np
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)

AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms


class ColourTrack(VideoStreamTrack):
    """Frames of one colour, paced in real time by aiortc."""

    def __init__(self, rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> None:
        super().__init__()
        image = np.zeros((height, width, 3), np.uint8)
        image[:] = rgb
        self._image = image

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self._image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """A sine tone, 20 ms frames, paced in real time by aiortc."""

    def __init__(self, hz: float = 440.0) -> None:
        super().__init__()
        self._hz = hz
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        await super().recv()  # aiortc's pacing (its silence is 8 kHz: our clock is our own)
        t = (np.arange(AUDIO_SAMPLES) + self._n) / AUDIO_RATE
        samples = (np.sin(2 * np.pi * self._hz * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._n += AUDIO_SAMPLES
        return frame


async def make_offer(
    video_codec: str | None = "vp8", audio: bool = True, rgb: tuple[int, int, int] = (255, 0, 0)
) -> RTCPeerConnection:
    """A publishing peer connection with its offer set as local description (all candidates)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video_codec is not None:
        transceiver = pc.addTransceiver(ColourTrack(rgb), direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType.lower() == f"video/{video_codec}"]
        )
    if audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def accept_answer(pc: RTCPeerConnection, answer: str) -> None:
    """Apply the server's answer."""
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))


async def publish_into(
    whip: Any, appid: str, cname: str, uid: str, rgb: tuple[int, int, int]
) -> RTCPeerConnection:
    """A VP8 colour and a tone published into ``cname`` through ``whip`` (a WhipServer)."""
    pc = await make_offer("vp8", rgb=rgb)
    _, answer = await whip.publish(appid, cname, uid, pc.localDescription.sdp)
    await accept_answer(pc, answer)
    return pc


async def wait_video(
    registry: Any, appid: str, cname: str, uids: set[str], count: int, timeout_s: float = 30.0
) -> None:
    """Until every uid's ``count``-th video frame has reached the channel."""
    watch = registry.subscribe(appid, cname)
    seen = dict.fromkeys(uids, 0)
    try:
        async with asyncio.timeout(timeout_s):
            while min(seen.values()) < count:
                frame = await watch.next_media()
                assert frame is not None
                if frame.uid in seen and frame.kind == "video":
                    seen[frame.uid] += 1
    finally:
        watch.close()
