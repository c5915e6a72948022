"""Media sources for publishers: a live test pattern with a tone, and any file FFmpeg reads.

Both yield :class:`EncodedFrame` objects in time order, ready for the ingest protocol:
H.264 as Annex B access units (parameter sets in band before each keyframe), VP8/VP9 and
Opus as their raw frames, AAC as raw frames with the AudioSpecificConfig in the track's
``extradata`` (or as ADTS frames with empty ``extradata`` when the file carries ADTS).
Iterating is CPU work (demuxing, encoding): run it in a worker thread when used from asyncio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.bitstream import BitStreamFilterContext
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

log = logging.getLogger(__name__)

US_PER_S = 1_000_000
KEYFRAME_INTERVAL_S = 2.0  # a reconnecting viewer or a resumed recording waits at most this
AUDIO_RATE_HZ = 48_000
OPUS_FRAME_SAMPLES = 960  # 20 ms, what WebRTC clients send
OPUS_BITRATE = 64_000
TONE_AMPLITUDE = 0.3
VIDEO_BITRATE_PER_PIXEL_FPS = 0.1  # bits; 1280x720 at 15 fps ≈ 1.4 Mb/s
PASSTHROUGH_VIDEO = frozenset({"h264", "vp8", "vp9"})
PASSTHROUGH_AUDIO = frozenset({"opus", "aac"})
_ADTS_SYNC = 0xFFF0


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame of one track, as the ingest protocol carries it (times in µs)."""

    kind: str  # "video" or "audio"
    codec: str  # h264 (Annex B), vp8, vp9, opus, aac
    data: bytes
    pts_us: int
    dts_us: int
    keyframe: bool


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a ``track`` message announces about one track of a source."""

    kind: str
    codec: str
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    extradata: bytes = b""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """The tracks of a source: at most one video and one audio track."""

    tracks: tuple[TrackInfo, ...]

    def track(self, kind: str) -> TrackInfo | None:
        """The track of this kind, if the source has one."""
        return next((t for t in self.tracks if t.kind == kind), None)


class MediaSource(Protocol):
    """What a publisher needs of a source."""

    info: SourceInfo

    def __iter__(self) -> Iterator[EncodedFrame]: ...

    def force_keyframe(self) -> None: ...

    def close(self) -> None: ...


def _x264(width: int, height: int, fps: Fraction, time_base: Fraction) -> VideoCodecContext:
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, VideoCodecContext)
    keyint = max(1, round(KEYFRAME_INTERVAL_S * fps))
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = time_base, fps
    enc.gop_size = keyint
    enc.max_b_frames = 0
    enc.thread_count = 1  # many publishers share a process; one core each is plenty
    enc.bit_rate = int(width * height * float(fps) * VIDEO_BITRATE_PER_PIXEL_FPS)
    enc.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "forced-idr": "1",  # a forced keyframe (resume) is an IDR, not a recovery point
        "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
    }
    return enc


def _vp8(width: int, height: int, fps: Fraction, time_base: Fraction) -> VideoCodecContext:
    enc = av.CodecContext.create("libvpx", "w")
    assert isinstance(enc, VideoCodecContext)
    keyint = max(1, round(KEYFRAME_INTERVAL_S * fps))
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = time_base, fps
    enc.gop_size = keyint
    enc.thread_count = 1
    enc.bit_rate = int(width * height * float(fps) * VIDEO_BITRATE_PER_PIXEL_FPS)
    enc.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "keyint_min": str(keyint),
    }
    return enc


def _opus(channels: int) -> AudioCodecContext:
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, AudioCodecContext)
    enc.sample_rate = AUDIO_RATE_HZ
    enc.layout = "mono" if channels == 1 else "stereo"
    enc.format = "flt"
    enc.time_base = Fraction(1, AUDIO_RATE_HZ)
    enc.bit_rate = OPUS_BITRATE
    return enc


def _us(value: int | None, time_base: Fraction | None) -> int | None:
    if value is None or time_base is None:
        return None
    return int(value * time_base.numerator * US_PER_S // time_base.denominator)


class TestPattern:
    """A live moving test pattern (colour bars, a moving block, a frame counter) and a tone.

    Video is H.264 (libx264 ultrafast/zerolatency, no B-frames, Annex B) or VP8 (libvpx
    realtime), a keyframe every :data:`KEYFRAME_INTERVAL_S`; audio is a mono 48 kHz sine in
    20 ms Opus frames. Runs for ``duration_s`` of media, or forever when it is ``None``.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        fps: int = 15,
        codec: str = "h264",
        tone_hz: float | None = 440.0,
        duration_s: float | None = None,
    ) -> None:
        if codec not in ("h264", "vp8"):
            raise ValueError(f"test pattern codec must be h264 or vp8, not {codec!r}")
        if width % 2 or height % 2 or width < 64 or height < 64:
            raise ValueError("test pattern size must be even and at least 64x64")
        self.width, self.height, self.fps, self.codec = width, height, fps, codec
        self.tone_hz = tone_hz
        self.duration_s = duration_s
        self._force_key = False
        self._closed = False
        tracks = [TrackInfo("video", codec, width=width, height=height)]
        if tone_hz is not None:
            tracks.append(TrackInfo("audio", "opus", sample_rate=AUDIO_RATE_HZ, channels=1))
        self.info = SourceInfo(tuple(tracks))

    def force_keyframe(self) -> None:
        """Make the next video frame a keyframe (IDR); safe to call from another thread."""
        self._force_key = True

    def close(self) -> None:
        """Stop producing frames (the iterator ends at its next step)."""
        self._closed = True

    def _base_planes(self) -> np.ndarray:
        # SMPTE-like bars in limited-range BT.601 YUV: white, yellow, cyan, green, magenta,
        # red, blue, black
        bars = [(180, 128, 128), (168, 44, 136), (145, 147, 44), (133, 63, 52),
                (63, 193, 204), (51, 109, 212), (28, 212, 120), (16, 128, 128)]  # fmt: skip
        w, h = self.width, self.height
        yuv = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y, u, v = yuv[:h], yuv[h : h + h // 4], yuv[h + h // 4 :]
        u2, v2 = u.reshape(h // 2, w // 2), v.reshape(h // 2, w // 2)
        for i, (cy, cu, cv) in enumerate(bars):
            x0, x1 = i * w // len(bars), (i + 1) * w // len(bars)
            y[:, x0:x1] = cy
            u2[:, x0 // 2 : x1 // 2] = cu
            v2[:, x0 // 2 : x1 // 2] = cv
        return yuv

    def _draw(self, canvas: np.ndarray, base: np.ndarray, index: int) -> None:
        np.copyto(canvas, base)
        w, h = self.width, self.height
        y = canvas[:h]
        block = max(16, (h // 8) & ~1)
        span = max(1, w - block)
        x0 = (index * 8) % (2 * span)
        x0 = x0 if x0 < span else 2 * span - x0  # bounce
        y0 = (h - block) // 2
        y[y0 : y0 + block, x0 : x0 + block] = 235
        # the frame counter: 16 bits as black/white squares along the bottom edge
        cell = max(4, h // 45)
        for bit in range(16):
            lit = (index >> bit) & 1
            y[h - cell :, bit * cell : (bit + 1) * cell] = 235 if lit else 16

    def __iter__(self) -> Iterator[EncodedFrame]:
        fps = Fraction(self.fps)
        make = _x264 if self.codec == "h264" else _vp8
        venc = make(self.width, self.height, fps, Fraction(1, self.fps))
        aenc = _opus(1) if self.tone_hz is not None else None
        base = self._base_planes()
        canvas = np.empty_like(base)
        v_index = 0
        a_index = 0
        total_us = None if self.duration_s is None else round(self.duration_s * US_PER_S)
        step = 2 * math.pi * (self.tone_hz or 0.0) / AUDIO_RATE_HZ
        while not self._closed:
            v_us = v_index * US_PER_S // self.fps
            a_us = a_index * OPUS_FRAME_SAMPLES * US_PER_S // AUDIO_RATE_HZ
            if aenc is None:
                a_us = v_us + 1
            next_us = min(v_us, a_us)
            if total_us is not None and next_us >= total_us:
                break
            if v_us <= a_us:
                self._draw(canvas, base, v_index)
                frame = VideoFrame.from_ndarray(canvas, format="yuv420p")
                frame.pts = v_index
                if self._force_key:
                    self._force_key = False
                    frame.pict_type = PictureType.I
                v_index += 1
                for p in venc.encode(frame):
                    pts = _us(p.pts, venc.time_base) or 0
                    dts = _us(p.dts, venc.time_base)
                    yield EncodedFrame(
                        "video",
                        self.codec,
                        bytes(p),
                        pts,
                        pts if dts is None else dts,
                        p.is_keyframe,
                    )
            else:
                assert aenc is not None
                n0 = a_index * OPUS_FRAME_SAMPLES
                t = np.arange(n0, n0 + OPUS_FRAME_SAMPLES, dtype=np.float64) * step
                samples = (TONE_AMPLITUDE * np.sin(t)).astype(np.float32).reshape(1, -1)
                aframe = AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                aframe.sample_rate, aframe.pts = AUDIO_RATE_HZ, n0
                a_index += 1
                for p in aenc.encode(aframe):
                    # libopus shifts pts back by its pre-skip; the frame's content starts at n0
                    yield EncodedFrame("audio", "opus", bytes(p), a_us, a_us, True)


def _is_adts(data: bytes) -> bool:
    return len(data) > 7 and (data[0] << 8 | data[1]) & 0xFFF6 == _ADTS_SYNC


class FileSource:
    """Demuxes any file FFmpeg reads into protocol frames (best video and audio stream).

    H.264 comes out as Annex B (``h264_mp4toannexb`` when the file holds avcC); VP8, VP9,
    Opus and AAC pass through untouched (AAC raw with the AudioSpecificConfig as
    ``extradata``, or ADTS as the file has it). Other video is re-encoded to H.264 and other
    audio to Opus. With ``loop=True`` the file repeats forever and timestamps keep growing.
    Timestamps start at zero.
    """

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        self._closed = False
        with av.open(str(self.path)) as container:
            self.info, self._plan = self._probe(container)
        if not self.info.tracks:
            raise ValueError(f"{self.path}: no audio or video stream")

    def force_keyframe(self) -> None:
        """Nothing to do for a file: a publisher skips video until the next keyframe."""

    def close(self) -> None:
        """Stop producing frames (the iterator ends at its next step)."""
        self._closed = True

    @staticmethod
    def _probe(container: Any) -> tuple[SourceInfo, dict[str, str]]:
        tracks: list[TrackInfo] = []
        plan: dict[str, str] = {}  # kind → "copy" or "encode"
        if container.streams.video:
            s = container.streams.video[0]
            name = s.codec_context.name
            copy = name in PASSTHROUGH_VIDEO
            plan["video"] = "copy" if copy else "encode"
            w, h = s.codec_context.width, s.codec_context.height
            if not copy:
                w, h = w & ~1, h & ~1
            tracks.append(
                TrackInfo("video", name if copy else "h264", width=w or None, height=h or None)
            )
        if container.streams.audio:
            s = container.streams.audio[0]
            name = s.codec_context.name
            copy = name in PASSTHROUGH_AUDIO
            plan["audio"] = "copy" if copy else "encode"
            channels = s.codec_context.channels or 1
            extradata = bytes(s.codec_context.extradata or b"") if name == "aac" else b""
            if copy:
                tracks.append(
                    TrackInfo(
                        "audio",
                        name,
                        sample_rate=s.codec_context.sample_rate or None,
                        channels=channels,
                        extradata=extradata,
                    )
                )
            else:
                tracks.append(
                    TrackInfo("audio", "opus", sample_rate=AUDIO_RATE_HZ, channels=min(channels, 2))
                )
        return SourceInfo(tuple(tracks)), plan

    def __iter__(self) -> Iterator[EncodedFrame]:
        offset_us = 0
        while not self._closed:
            end_us = yield from self._one_pass(offset_us)
            if not self.loop or end_us <= offset_us:
                return
            offset_us = end_us

    def _one_pass(self, offset_us: int) -> Generator[EncodedFrame, None, int]:
        """Yield one pass over the file; returns the time just after its last frame."""
        end_us = offset_us
        with av.open(str(self.path)) as container:
            streams = []
            handlers: dict[int, _StreamHandler] = {}
            for kind, stream_list in (
                ("video", container.streams.video),
                ("audio", container.streams.audio),
            ):
                if kind not in self._plan:
                    continue
                stream = stream_list[0]
                track = self.info.track(kind)
                assert track is not None
                handlers[stream.index] = _StreamHandler(stream, kind, track, self._plan[kind])
                streams.append(stream)
            first_us: int | None = None
            for packet in container.demux(*streams):
                if self._closed:
                    return end_us
                handler = handlers[packet.stream.index]
                for frame in handler.push(packet):
                    if first_us is None:
                        first_us = min(frame.dts_us, frame.pts_us)
                    out = _shift(frame, offset_us - first_us)
                    end_us = max(end_us, out.pts_us + handler.frame_us)
                    yield out
            for handler in handlers.values():
                for frame in handler.push(None):
                    if first_us is None:
                        first_us = min(frame.dts_us, frame.pts_us)
                    out = _shift(frame, offset_us - first_us)
                    end_us = max(end_us, out.pts_us + handler.frame_us)
                    yield out
        return end_us


def _shift(frame: EncodedFrame, by_us: int) -> EncodedFrame:
    return EncodedFrame(
        frame.kind,
        frame.codec,
        frame.data,
        frame.pts_us + by_us,
        frame.dts_us + by_us,
        frame.keyframe,
    )


class _StreamHandler:
    """Turns one stream's packets into protocol frames: copy (with Annex B) or re-encode."""

    def __init__(self, stream: Any, kind: str, track: TrackInfo, mode: str) -> None:
        self.kind, self.track, self.mode = kind, track, mode
        self.time_base: Fraction = stream.time_base
        self.bsf: BitStreamFilterContext | None = None
        self.strip_adts = False
        self.decoder: Any = None
        self.encoder: Any = None
        self.frame_us = 0
        ctx = stream.codec_context
        if kind == "video":
            rate = stream.average_rate or stream.guessed_rate or Fraction(30)
            self.frame_us = int(US_PER_S / rate)
        else:
            self.frame_us = 20_000
        if mode == "copy":
            extradata = bytes(ctx.extradata or b"")
            if track.codec == "h264" and extradata[:1] == b"\x01":  # avcC: length-prefixed
                self.bsf = BitStreamFilterContext("h264_mp4toannexb", stream)
            self.strip_adts = track.codec == "aac" and bool(track.extradata)
            if track.codec == "aac" and ctx.frame_size and ctx.sample_rate:
                self.frame_us = ctx.frame_size * US_PER_S // ctx.sample_rate
            return
        self.decoder = av.CodecContext.create(ctx.name, "r")
        self.decoder.extradata = ctx.extradata
        if kind == "video":
            fps = Fraction(rate).limit_denominator(1001)
            self.encoder = _x264(
                track.width or ctx.width, track.height or ctx.height, fps, self.time_base
            )
        else:
            self.decoder.sample_rate = ctx.sample_rate
            self.decoder.layout = ctx.layout
            self.decoder.format = ctx.format
            self.encoder = _opus(track.channels or 1)

    def push(self, packet: av.Packet | None) -> Iterator[EncodedFrame]:
        """Frames for one packet (``None`` flushes)."""
        if packet is not None and packet.size == 0:
            return  # the demuxer's end-of-stream marker: we flush explicitly afterwards
        if self.mode == "copy":
            yield from self._copy(packet)
        else:
            yield from self._encode(packet)

    def _copy(self, packet: av.Packet | None) -> Iterator[EncodedFrame]:
        if self.bsf is not None:
            packets = self.bsf.filter(packet)
        elif packet is None:
            return
        else:
            packets = [packet]
        for p in packets:
            if p.size == 0 or (p.pts is None and p.dts is None):
                continue
            data = bytes(p)
            if self.strip_adts and _is_adts(data):
                header = 7 if data[1] & 1 else 9  # protection_absent → no CRC
                data = data[header:]
            pts = _us(p.pts if p.pts is not None else p.dts, self.time_base) or 0
            dts = _us(p.dts, self.time_base)
            key = p.is_keyframe or self.kind == "audio"
            yield EncodedFrame(
                self.kind, self.track.codec, data, pts, pts if dts is None else dts, key
            )

    def _encode(self, packet: av.Packet | None) -> Iterator[EncodedFrame]:
        frames = self.decoder.decode(packet)
        if packet is None:
            frames = [*frames, None]
        for frame in frames:
            if frame is not None and self.kind == "video":
                if frame.width != self.encoder.width or frame.format.name != "yuv420p":
                    frame = frame.reformat(self.encoder.width, self.encoder.height, "yuv420p")
                frame.pict_type = PictureType.NONE
            for p in self.encoder.encode(frame):
                pts = _us(p.pts, p.time_base or self.encoder.time_base) or 0
                dts = _us(p.dts, p.time_base or self.encoder.time_base)
                key = p.is_keyframe or self.kind == "audio"
                yield EncodedFrame(
                    self.kind, self.track.codec, bytes(p), pts, pts if dts is None else dts, key
                )


class MemoryClip:
    """A file's frames demuxed once and held in memory, for many publishers of the same clip.

    :meth:`source` gives each publisher its own :class:`MemorySource` over the shared frames
    (no demuxing, no copies), so a load generator spends its CPU on sending, not reading.
    """

    def __init__(self, path: str | Path) -> None:
        src = FileSource(path, loop=False)
        self.info = src.info
        frames: list[EncodedFrame] = []
        gen = src._one_pass(0)
        while True:
            try:
                frames.append(next(gen))
            except StopIteration as stop:
                self.period_us: int = stop.value
                break
        if not frames or self.period_us <= 0:
            raise ValueError(f"{path}: no frames")
        self.frames = tuple(frames)

    def source(self, *, loop: bool = True) -> MemorySource:
        """A fresh source replaying the clip from its start (forever when ``loop``)."""
        return MemorySource(self, loop=loop)


class MemorySource:
    """One publisher's replay of a :class:`MemoryClip`; cheap enough to iterate on the loop."""

    in_memory = True  # a publisher reads it inline instead of in a worker thread

    def __init__(self, clip: MemoryClip, *, loop: bool = True) -> None:
        self.info = clip.info
        self._clip = clip
        self._loop = loop
        self._closed = False

    def force_keyframe(self) -> None:
        """Nothing to do for a recorded clip: a publisher skips video until the next keyframe."""

    def close(self) -> None:
        """Stop producing frames (the iterator ends at its next step)."""
        self._closed = True

    def __iter__(self) -> Iterator[EncodedFrame]:
        offset = 0
        frames, period = self._clip.frames, self._clip.period_us
        while not self._closed:
            for f in frames:
                if self._closed:
                    return
                if offset:
                    f = _shift(f, offset)
                yield f
            if not self._loop:
                return
            offset += period


def open_source(
    source: str | Path, *, codec: str = "h264", duration_s: float | None = None, loop: bool = False
) -> TestPattern | FileSource:
    """A :class:`TestPattern` for the literal ``"testsrc"``, else a :class:`FileSource`."""
    if str(source) == "testsrc":
        return TestPattern(codec=codec, duration_s=duration_s)
    return FileSource(source, loop=loop)
