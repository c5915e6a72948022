"""Snapshots: JPGs of a video stream at an interval, decoding as little as the input allows.

Decoded frames (WebRTC, or a stream decoded anyway to be transcoded) cost only the JPG. An
encoded stream that is only stored (H.264 copied) or not recorded at all (snapshots only) is
not decoded frame by frame: once a snapshot is due, the next keyframe is decoded alone, on a
decoder that sees nothing else. The price is lateness: a snapshot waits for the next keyframe,
so a publisher that sends keyframes every N seconds gets snapshots up to N seconds late (and
none more often than its keyframes); decoding every frame would take one at the exact time but
cost a full decode of the stream.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.video.codeccontext import VideoCodecContext

from mixer.errors import InvalidMedia

US_PER_S = 1_000_000
JPEG_TIME_BASE = Fraction(1, 25)  # any: one still image
SNAPSHOT_DECODERS = {"h264": "h264", "vp8": "vp8", "vp9": "vp9"}


def write_jpeg(frame: av.VideoFrame, path: Path) -> None:
    """``frame`` as a JPG at its own size (blocking: call it in a worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, VideoCodecContext)  # PyAV typing only
    encoder.width, encoder.height = frame.width - frame.width % 2, frame.height - frame.height % 2
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = JPEG_TIME_BASE
    image = frame.reformat(encoder.width, encoder.height, "yuvj420p")
    image.pts = 0
    data = b"".join(bytes(p) for p in encoder.encode(image)) + b"".join(
        bytes(p) for p in encoder.encode(None)
    )
    path.write_bytes(data)


def utc_stamp(t_us: int) -> str:
    """``YYYYMMDDhhmmssSSS`` in UTC, as the cloud recording API stamps its files."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t_us // US_PER_S)) + (
        f"{t_us // 1000 % 1000:03d}"
    )


class SnapshotSchedule:
    """When snapshots are due: the first at once, then on a grid ``interval`` apart (a late
    one, waiting for a keyframe, does not shift the ones after it)."""

    def __init__(self, interval_s: float) -> None:
        self._interval_us = max(1, round(interval_s * US_PER_S))
        self._next_us: int | None = None

    def due(self, t_us: int) -> bool:
        """Whether a snapshot at ``t_us`` is due."""
        return self._next_us is None or t_us >= self._next_us

    def taken(self, t_us: int) -> None:
        """A snapshot was taken at ``t_us``: the next is due at the next grid point after it."""
        if self._next_us is None:
            self._next_us = t_us
        while self._next_us <= t_us:
            self._next_us += self._interval_us


class KeyframeDecoder:
    """Decodes the keyframes it is given, and only those (snapshots of an encoded stream).

    One decoder per stream, kept: an H.264 publisher that sends its parameter sets only once
    still decodes later keyframes. Blocking: call it in a worker thread.
    """

    def __init__(self, codec: str) -> None:
        if codec not in SNAPSHOT_DECODERS:
            raise InvalidMedia(f"no snapshot decoder for {codec!r}")
        self._codec = codec
        self._decoder: VideoCodecContext | None = None
        self.opened = 0
        self.frames = 0

    def decode(self, data: bytes) -> av.VideoFrame | None:
        """The picture of one keyframe; ``None`` when it does not decode."""
        if self._decoder is None:
            decoder = av.CodecContext.create(SNAPSHOT_DECODERS[self._codec], "r")
            assert isinstance(decoder, VideoCodecContext)  # PyAV typing only
            self._decoder = decoder
            self.opened += 1
        decoder = self._decoder
        try:
            frames = decoder.decode(av.Packet(data))
            if not frames:  # a decoder that holds frames back (reordering): drain it
                frames = decoder.decode(None)
                decoder.flush_buffers()
        except av.error.FFmpegError:
            self._decoder = None  # start clean at the next keyframe
            return None
        self.frames += 1
        return frames[-1] if frames else None
