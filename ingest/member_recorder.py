"""Recording one channel member (individual mode): its decoded WebRTC frames to HLS and MP4.

aiortc hands over decoded frames only (its depacketised frames go straight to a decoder thread
of its own, with no public hook), so the cheapest clean path is to encode once: the frames go
through the mixer as a one-user mix at the member's own size (no scaling), which is libx264 and
AAC into the same HLS/MP4 writer as everything else.

aiortc's frame timestamps come from each track's RTP clock, with a random origin per track, so
each track is placed on the recording's clock by the arrival time of its first frame and its
own timestamps after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from mixer.errors import InvalidMedia
from mixer.layout import LayoutMode, LayoutSpec
from mixer.mix import MAX_CANVAS_PIXELS, FileType, MixConfig, MixOutput, MixRecorder
from mixer.segmenter import SegmentInfo
from mixer.webm import WebmDemuxer

from .channels import ChannelRegistry, MediaFrame, Subscription

log = logging.getLogger(__name__)

US = 1_000_000
DEFAULT_FPS = 15
BITS_PER_PIXEL_FRAME = 0.1  # ~1 Mbps at 640x480 15 fps: screen text stays legible
AUDIO_ONLY_AFTER_US = 1_000_000  # audio this long with no video: record on a default canvas
TICK_S = 0.5
TICK_LAG_US = 500_000  # advance only past what late frames can no longer change


@dataclass(slots=True)
class TrackClock:
    """One track's timestamps mapped onto the recording's wall clock (µs)."""

    origin_pts_us: int | None = None
    origin_wall_us: int = 0

    def place(self, pts_us: int, now_us: int) -> int:
        if self.origin_pts_us is None:
            self.origin_pts_us, self.origin_wall_us = pts_us, now_us
        return self.origin_wall_us + pts_us - self.origin_pts_us


@dataclass(slots=True)
class MemberRecorderStats:
    """What the recorder saw."""

    video_in: int = 0
    audio_in: int = 0
    undecodable: int = 0
    clocks: dict[str, TrackClock] = field(default_factory=dict)


DECODERS = {"h264": "h264", "vp8": "vp8", "vp9": "vp9", "opus": "opus", "aac": "aac"}


class FrameDecoders:
    """Decoders for a member's encoded tracks (WebSocket publishers send encoded frames;
    WebRTC ones arrive decoded already). Used from one worker thread at a time."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str], VideoCodecContext | AudioCodecContext] = {}
        self._webm: dict[str, WebmDemuxer] = {}

    def _context(self, stream: str, codec: str) -> VideoCodecContext | AudioCodecContext:
        key = (stream, codec)
        if key not in self._contexts:
            context = av.CodecContext.create(DECODERS[codec], "r")
            assert isinstance(context, VideoCodecContext | AudioCodecContext)  # PyAV typing
            self._contexts[key] = context
        return self._contexts[key]

    def decode(self, frame: MediaFrame, codec: str) -> list[tuple[str, av.frame.Frame, int]]:
        """(kind, decoded frame, pts µs) for every frame the encoded one completes."""
        stream = f"{frame.uid}/{frame.track_id}"  # track ids repeat across publishers
        if codec == "webm":
            # one WebM stream holds both kinds, on its own timeline (µs from its start)
            demuxer = self._webm.setdefault(stream, WebmDemuxer())
            return [
                (packet.kind.value, decoded, packet.pts_us)
                for packet in demuxer.feed(bytes(frame.data))
                for decoded in self._decode(stream, packet.codec.value, packet.data)
            ]
        if codec not in DECODERS:
            return []
        return [
            (frame.kind, decoded, frame.pts_us)
            for decoded in self._decode(stream, codec, bytes(frame.data))
        ]

    async def frames_of(self, media: MediaFrame) -> list[tuple[str, av.frame.Frame, int]]:
        """The decoded frames ``media`` holds: itself when aiortc decoded it already (WebRTC),
        else decoded in a worker thread (a WebSocket publisher's encoded frames).
        ``InvalidMedia`` when they do not decode."""
        if not isinstance(media.data, bytes | bytearray | memoryview):
            return [(media.kind, media.data, media.pts_us)]
        return await asyncio.to_thread(self.decode, media, media.codec)

    def _decode(self, stream: str, codec: str, data: bytes) -> list[av.frame.Frame]:
        try:
            return list(self._context(stream, codec).decode(av.Packet(data)))
        except (av.error.FFmpegError, ValueError) as exc:
            raise InvalidMedia(f"{codec} frame did not decode: {exc}") from exc


def write_jpeg(frame: av.VideoFrame, path: Path) -> None:
    """``frame`` as a JPG at its own size (blocking: call it in a worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, VideoCodecContext)  # PyAV typing only
    encoder.width, encoder.height = frame.width - frame.width % 2, frame.height - frame.height % 2
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    image = frame.reformat(encoder.width, encoder.height, "yuvj420p")
    image.pts = 0
    data = b"".join(bytes(p) for p in encoder.encode(image)) + b"".join(
        bytes(p) for p in encoder.encode(None)
    )
    path.write_bytes(data)


def canvas_for(width: int, height: int) -> tuple[int, int]:
    """The member's own size, even, and scaled down to fit 1920x1080 pixels when larger."""
    scale = min(1.0, (MAX_CANVAS_PIXELS / max(1, width * height)) ** 0.5)
    w, h = int(width * scale), int(height * scale)
    return max(16, w - w % 2), max(16, h - h % 2)


class MemberRecorder:
    """Subscribes to a channel and records one uid's audio and video until :meth:`stop`."""

    def __init__(
        self,
        registry: ChannelRegistry,
        appid: str,
        cname: str,
        uid: str,
        directory: Path,
        *,
        fps: int = DEFAULT_FPS,
        segment_target_s: float = 4.0,
        mp4: bool = True,
        name: str = "index",
        snapshot_every_s: float | None = None,
        on_snapshot: Callable[[Path, int], Awaitable[None]] | None = None,
        utc_segment_names: bool = False,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.uid = uid
        self._registry, self._appid, self._cname = registry, appid, cname
        self._directory = directory
        self._fps, self._segment_s, self._mp4 = fps, segment_target_s, mp4
        self._on_segment = on_segment
        self._clock = clock
        self._name = name
        self._snapshot_every_us = int(snapshot_every_s * US) if snapshot_every_s else 0
        self._on_snapshot = on_snapshot
        self._utc_names = utc_segment_names
        self._next_snapshot_us: int | None = None
        self.snapshots = 0
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._mix: MixRecorder | None = None
        self.stats = MemberRecorderStats()
        self._decoders = FrameDecoders()

    def start(self) -> None:
        """Subscribe now: frames published from here on are recorded."""
        self._sub = self._registry.subscribe(self._appid, self._cname)
        self._task = asyncio.create_task(self._run(self._sub), name=f"record-{self.uid}")
        self._ticker = asyncio.create_task(self._tick(), name=f"record-tick-{self.uid}")

    async def _open(
        self, frame: av.VideoFrame | None, pending: list[tuple[av.AudioFrame, int]]
    ) -> MixRecorder:
        """The mix at ``frame``'s size (a default one without), fed the audio held so far."""
        width, height = canvas_for(frame.width, frame.height) if frame else (640, 360)
        bitrate = max(200, int(width * height * self._fps * BITS_PER_PIXEL_FRAME / 1000))
        config = MixConfig(
            width=width,
            height=height,
            fps=self._fps,
            bitrate_kbps=bitrate,
            layout=LayoutSpec(LayoutMode.FLOATING),  # the first (only) user fills the canvas
            file_types=frozenset({FileType.HLS, FileType.MP4} if self._mp4 else {FileType.HLS}),
        )
        mix = MixRecorder(
            config,
            self._directory,
            name=self._name,
            segment_target_s=self._segment_s,
            utc_segment_names=self._utc_names,
            on_segment=self._on_segment,
        )
        await mix.start()
        await mix.join(self.uid, self._now_us())
        for audio, at in pending:
            await mix.push_audio(self.uid, audio, at)
        pending.clear()
        return mix

    def _now_us(self) -> int:
        return int(self._clock() * US)

    async def _frames(self, frame: MediaFrame) -> list[tuple[str, av.frame.Frame, int]]:
        """The decoded frames in ``frame`` (an undecodable one is counted and logged)."""
        try:
            return await self._decoders.frames_of(frame)
        except InvalidMedia as exc:
            self.stats.undecodable += 1
            log.warning("recording %s: %s", self.uid, exc)
            return []

    async def _run(self, sub: Subscription) -> None:
        pending: list[tuple[av.AudioFrame, int]] = []  # audio before the canvas has a size
        first_audio_us: int | None = None
        while (media := await sub.next_media()) is not None:
            if media.uid != self.uid:
                continue
            now_us = self._now_us()
            clock = self.stats.clocks.setdefault(media.track_id, TrackClock())
            for _, data, pts_us in await self._frames(media):
                t_us = clock.place(pts_us, now_us)
                if isinstance(data, av.VideoFrame):
                    self.stats.video_in += 1
                    await self._maybe_snapshot(data, t_us)
                    if self._mix is None:
                        self._mix = await self._open(data, pending)
                    await self._mix.push_video(self.uid, data, t_us)
                    continue
                if not isinstance(data, av.AudioFrame):
                    continue
                self.stats.audio_in += 1
                if self._mix is None:  # wait a little for the first video frame's size
                    first_audio_us = first_audio_us or now_us
                    pending.append((data, t_us))
                    if now_us - first_audio_us >= AUDIO_ONLY_AFTER_US:
                        self._mix = await self._open(None, pending)  # audio only: default canvas
                    continue
                await self._mix.push_audio(self.uid, data, t_us)

    async def _maybe_snapshot(self, frame: av.VideoFrame, t_us: int) -> None:
        """A JPG of this frame when the capture interval has come round (the first at once)."""
        if not self._snapshot_every_us or self._on_snapshot is None:
            return
        if self._next_snapshot_us is not None and t_us < self._next_snapshot_us:
            return
        self._next_snapshot_us = t_us + self._snapshot_every_us
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t_us / US)) + f"{t_us // 1000 % 1000:03d}"
        path = self._directory / f"{self._name.rsplit('_', 1)[0]}_video_{stamp}.jpg"
        await asyncio.to_thread(write_jpeg, frame, path)
        self.snapshots += 1
        await self._on_snapshot(path, t_us // 1000)

    async def _tick(self) -> None:
        """Keep output frames coming while the member sends nothing (muted, frozen)."""
        while True:
            await asyncio.sleep(TICK_S)
            if self._mix is not None:
                await self._mix.advance(self._now_us() - TICK_LAG_US)

    async def stop(self) -> MixOutput | None:
        """Stop recording: the playlist is ended and the MP4 built; ``None`` if nothing came."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._sub is not None:
            self._sub.close()  # the reader drains what is queued, then ends
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._mix is None:
            return None
        output = await self._mix.aclose()
        log.info(
            "recorded %s: %d video and %d audio frames in",
            self.uid,
            self.stats.video_in,
            self.stats.audio_in,
        )
        return output
