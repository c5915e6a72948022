"""Encoded test media made with PyAV: short clips as the frames a client would send."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from mixer.transcode import adts_header

US_PER_S = 1_000_000
AUDIO_RATE_HZ = 48_000
OPUS_FRAME_SAMPLES = 960  # 20 ms, what WebRTC clients send.
TONE_AMPLITUDE = 0.3


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded frame as the protocol carries it."""

    kind: str
    codec: str
    data: bytes
    pts_us: int
    dts_us: int | None
    keyframe: bool


@dataclass(frozen=True, slots=True)
class Clip:
    """Frames of a clip, interleaved by time, and what went in."""

    frames: list[Frame]
    video_frames: int
    audio_frames: int
    aac_config: bytes = b""

    def of(self, kind: str) -> list[Frame]:
        """The frames of one kind."""
        return [f for f in self.frames if f.kind == kind]


def _video_frame(i: int, width: int, height: int) -> VideoFrame:
    # A moving bar on a grey field: cheap to make and not trivially compressible.
    y = np.full((height, width), 100, dtype=np.uint8)
    x0 = (i * 8) % width
    y[:, x0 : x0 + 16] = 235
    uv = np.full((height // 2, width), 128, dtype=np.uint8)
    return VideoFrame.from_ndarray(np.concatenate([y, uv]), format="yuv420p")


def encode_video(
    codec: str,
    width: int,
    height: int,
    fps: int,
    duration_s: float,
    bframes: int = 0,
    gop: int | None = None,
) -> list[Frame]:
    """Encode a moving pattern; H.264 comes out as Annex B with a keyframe every second, or
    every ``gop`` frames (``bframes``: H.264 with B-frames, so frames come in decode order with
    dts before pts)."""
    encoder = av.CodecContext.create("libx264" if codec == "h264" else "libvpx", "w")
    if codec == "vp9":
        encoder = av.CodecContext.create("libvpx-vp9", "w")
    assert isinstance(encoder, av.video.codeccontext.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps)
    encoder.gop_size = gop or fps
    encoder.max_b_frames = bframes
    encoder.thread_count = 1
    if codec == "h264" and bframes:
        encoder.options = {"preset": "veryfast", "bframes": str(bframes)}
    elif codec == "h264":
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
    else:
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        if gop:  # (no keyframe of libvpx's own choosing either)
            encoder.options |= {"kf-max-dist": str(gop), "kf-min-dist": str(gop)}
    frames: list[Frame] = []
    count = round(duration_s * fps)
    for i in range(count + 1):
        src = None
        if i < count:
            src = _video_frame(i, width, height)
            src.pts = i
        for p in encoder.encode(src):
            assert p.pts is not None
            pts_us = p.pts * US_PER_S // fps
            dts_us = None if p.dts is None else p.dts * US_PER_S // fps
            frames.append(Frame("video", codec, bytes(p), pts_us, dts_us, p.is_keyframe))
    return frames


def encode_audio(
    codec: str, duration_s: float, tone_hz: float, *, adts: bool = True
) -> tuple[list[Frame], bytes]:
    """Encode a sine tone (mono 48 kHz); AAC as ADTS unless `adts` is false (then raw + config)."""
    encoder = av.CodecContext.create("libopus" if codec == "opus" else "aac", "w")
    assert isinstance(encoder, av.audio.codeccontext.AudioCodecContext)
    encoder.sample_rate, encoder.layout = AUDIO_RATE_HZ, "mono"
    encoder.format = "flt" if codec == "opus" else "fltp"
    encoder.time_base = Fraction(1, AUDIO_RATE_HZ)
    encoder.bit_rate = 64_000
    chunk = OPUS_FRAME_SAMPLES if codec == "opus" else 1024
    total = round(duration_s * AUDIO_RATE_HZ)
    frames: list[Frame] = []
    packets = []
    for start in range(0, total + chunk, chunk):
        src = None
        if start < total:
            t = (np.arange(start, start + chunk) / AUDIO_RATE_HZ).astype(np.float32)
            samples = (TONE_AMPLITUDE * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            src = AudioFrame.from_ndarray(
                samples.reshape(1, -1), format=encoder.format.name, layout="mono"
            )
            src.sample_rate, src.pts = AUDIO_RATE_HZ, start
        packets += encoder.encode(src)
    config = bytes(encoder.extradata or b"")
    for p in packets:
        data = bytes(p)
        if codec == "aac" and adts:
            data = adts_header(len(data), AUDIO_RATE_HZ, 1) + data
        pts_us = ((p.pts or 0) - (packets[0].pts or 0)) * US_PER_S // AUDIO_RATE_HZ
        frames.append(Frame("audio", codec, data, pts_us, None, True))
    return frames, config


def encode_clip(
    video_codec: str | None = "h264",
    width: int = 320,
    height: int = 240,
    fps: int = 15,
    duration_s: float = 2.0,
    audio_codec: str | None = "opus",
    tone_hz: float = 440.0,
    *,
    adts: bool = True,
    bframes: int = 0,
    gop: int | None = None,
) -> Clip:
    """Encode a clip and interleave its frames by time, as a client would send them."""
    video = (
        encode_video(video_codec, width, height, fps, duration_s, bframes, gop)
        if video_codec
        else []
    )
    audio, config = (
        encode_audio(audio_codec, duration_s, tone_hz, adts=adts) if audio_codec else ([], b"")
    )
    # in decode order, as a client sends them (with B-frames, dts runs ahead of pts)
    frames = sorted(
        video + audio, key=lambda f: (f.pts_us if f.dts_us is None else f.dts_us, f.kind)
    )
    return Clip(frames, len(video), len(audio), config)


def ffprobe(path: Path, *args: str) -> dict[str, Any]:
    """Run Debian's ffprobe and return its JSON."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def decode_counts(path: Path) -> dict[str, int]:
    """Decode every frame of a file (or playlist) with PyAV and count them per kind."""
    counts = {"video": 0, "audio": 0}
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type in counts]
        for frame in container.decode(*streams):
            counts["audio" if isinstance(frame, AudioFrame) else "video"] += 1
    return counts


def encode_webm(
    duration_s: float, fps: int = 15, gop: int | None = None, *, video: bool = True
) -> tuple[bytes, int, int]:
    """A VP8 + Opus WebM stream as MediaRecorder makes one: bytes, video and audio frame counts
    (a keyframe a second, or every ``gop`` frames: MediaRecorder sends one, at the start;
    ``video`` false: Opus alone, as ``audio/webm``)."""
    codec = "vp8" if video else None
    clip = encode_clip(codec, fps=fps, duration_s=duration_s, audio_codec="opus", gop=gop)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as out:
        v = out.add_mux_stream("vp8", width=320, height=240) if video else None
        a = out.add_mux_stream("opus", rate=48_000)
        a.time_base = Fraction(1, 1000)
        if v is not None:
            v.time_base = Fraction(1, 1000)
        for f in clip.frames:
            p = av.Packet(f.data)
            p.pts = p.dts = f.pts_us // 1000
            p.time_base = Fraction(1, 1000)
            p.is_keyframe = f.keyframe
            p.stream = v if f.kind == "video" else a
            out.mux(p)
    return buf.getvalue(), clip.video_frames, clip.audio_frames


def unknown_size_clusters(data: bytes) -> bytes:
    """The same WebM stream with each cluster's size unknown, as MediaRecorder writes them
    (a cluster then ends where the next level-1 element begins)."""
    from mixer.webm import ClusterScanner

    scanner = ClusterScanner()
    scanner.feed(data)
    assert scanner.header is not None and not scanner.broken
    starts = [*scanner.clusters, len(data)]
    out = bytearray(scanner.header)
    for start, end in itertools.pairwise(starts):
        size_len = 9 - data[start + 4].bit_length()  # (the 4-byte cluster ID, then its size)
        out += data[start : start + 4] + b"\x01\xff\xff\xff\xff\xff\xff\xff"
        out += data[start + 4 + size_len : end]
    return bytes(out)
