"""A channel member's frames as recorders take them: decoded where a recorder needs pictures
(:class:`FrameDecoders`) and placed on the recording's clock (:class:`TrackClock`).

aiortc's frame timestamps come from each track's RTP clock, with a random origin per track, so
a track is placed on the recording's clock by the arrival time of its first frame and its own
timestamps after that. A WebSocket publisher's tracks share the publisher's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from dataclasses import dataclass
from fractions import Fraction

import av
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from mixer.errors import InvalidMedia
from mixer.webm import WebmDemuxer

from .channels import MediaFrame

# A track whose timestamps step back this far, or would land this far ahead of the wall
# clock, is placed anew from its arrival (a publisher that reconnected and restarted its
# clock); smaller steps are reordering and jitter, left to the writers.
RESYNC_BACK_US = 1_000_000
RESYNC_AHEAD_US = 60_000_000


# A mix's tracks follow their arrival (``follow_arrival``): a sender's clock runs some ppm
# off the server's (100 ppm is 100 ms in 17 minutes). A track whose every arrival of a window
# of ``DRIFT_WINDOW_US`` (wall time) came more than ``LATE_US`` after its place moves on by
# the least of those delays (a slow clock: its audio would come too late to be mixed); one
# whose every arrival came more than ``AHEAD_US`` before its place moves back by the least of
# those leads (a fast clock: it would be heard later and later). Only a whole window counts:
# jitter, and a burst sent faster than real time, pass. The mix waits 100 ms for late input,
# so a few tens of ms of drift plus the network's jitter stay within it; the audio mixer
# places a track anew at such a step (audiomix.RESYNC_SAMPLES is smaller). Frames that arrive
# together (the frames of one WebM chunk) count as one arrival, by the earliest placed of them:
# the later ones sit up to a chunk ahead of it, so their lead hid a slow clock until its drift
# passed the chunk's length, and the start of every chunk came too late to be mixed.
AHEAD_US = 20_000
LATE_US = 20_000
DRIFT_WINDOW_US = 2_000_000


@dataclass(slots=True)
class TrackClock:
    """One track's timestamps mapped onto the recording's wall clock (µs)."""

    follow_arrival: bool = False
    origin_pts_us: int | None = None
    origin_wall_us: int = 0
    last_pts_us: int = 0
    window_start_us: int = 0
    window_lags: tuple[int, int] | None = None  # the least and most delay in this window
    batch_now_us: int | None = None  # the arrival time of the frames being placed now
    batch_lag: int = 0  # ... and the delay of the earliest placed of them

    def place(self, pts_us: int, now_us: int) -> int:
        """``pts_us`` on the recording's clock, the frame having arrived at ``now_us``."""
        if (
            self.origin_pts_us is None
            or pts_us < self.last_pts_us - RESYNC_BACK_US
            or self.origin_wall_us + pts_us - self.origin_pts_us > now_us + RESYNC_AHEAD_US
        ):
            self.origin_pts_us, self.origin_wall_us = pts_us, now_us
            self.window_start_us, self.window_lags, self.batch_now_us = now_us, None, None
        self.last_pts_us = pts_us
        placed = self.origin_wall_us + pts_us - self.origin_pts_us
        if self.follow_arrival:
            self._follow(now_us - placed, now_us)
        return placed

    def _follow(self, lag: int, now_us: int) -> None:
        if now_us == self.batch_now_us:  # (another frame of the same arrival)
            self.batch_lag = max(self.batch_lag, lag)
            return
        if self.batch_now_us is not None:  # the previous arrival is whole: it counts now
            least, most = self.window_lags or (self.batch_lag, self.batch_lag)
            self.window_lags = (min(least, self.batch_lag), max(most, self.batch_lag))
        self.batch_now_us, self.batch_lag = now_us, lag
        if now_us - self.window_start_us < DRIFT_WINDOW_US or self.window_lags is None:
            return
        least, most = self.window_lags
        step = 0
        if least > LATE_US:  # late all along: the sender's clock is slow
            step = least
        elif most < -AHEAD_US:  # early all along: it is fast
            step = most
        self.origin_wall_us += step
        self.batch_lag -= step  # (this arrival's frames are placed by the new origin)
        self.window_start_us, self.window_lags = now_us, None


MICROSECONDS = Fraction(1, 1_000_000)
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

    def decode(
        self, frame: MediaFrame, codec: str, kinds: Container[str] = ("video", "audio")
    ) -> list[tuple[str, av.frame.Frame, int]]:
        """(kind, decoded frame, pts µs) for every frame the encoded one completes; of a WebM
        stream, only its frames of ``kinds`` are decoded (an audio-only mix decodes no video)."""
        stream = f"{frame.uid}/{frame.track_id}"  # track ids repeat across publishers
        if codec == "webm":
            # one WebM stream holds both kinds, on its own timeline (µs from its start); a
            # frame that does not decode (video taken up again between keyframes) costs only
            # itself, not the chunk's other frames
            demuxer = self._webm.setdefault(stream, WebmDemuxer())
            found: list[tuple[str, av.frame.Frame, int]] = []
            failed: InvalidMedia | None = None
            for packet in demuxer.feed(bytes(frame.data)):
                if packet.kind.value not in kinds:
                    continue
                try:
                    frames = self._decode(stream, packet.codec.value, packet.data)
                except InvalidMedia as exc:
                    failed = exc
                    continue
                found += [(packet.kind.value, f, packet.pts_us) for f in frames]
            if failed is not None and not found:
                raise failed
            return found
        if codec not in DECODERS:
            return []
        if frame.kind != "video":
            return [
                (frame.kind, decoded, frame.pts_us)
                for decoded in self._decode(stream, codec, bytes(frame.data))
            ]
        # a picture comes out in display order, maybe packets after its own (B-frames): it
        # keeps its own time, carried through the decoder, not the packet's that released it
        out = []
        for decoded in self._decode(stream, codec, bytes(frame.data), frame.pts_us, frame.dts_us):
            pts = frame.pts_us if decoded.pts is None else int(decoded.pts)
            out.append((frame.kind, decoded, pts))
        return out

    async def frames_of(
        self, media: MediaFrame, kinds: Container[str] = ("video", "audio")
    ) -> list[tuple[str, av.frame.Frame, int]]:
        """The decoded frames ``media`` holds: itself when aiortc decoded it already (WebRTC),
        else decoded in a worker thread (a WebSocket publisher's encoded frames; of WebM,
        those of ``kinds``). ``InvalidMedia`` when they do not decode."""
        if not isinstance(media.data, bytes | bytearray | memoryview):
            return [(media.kind, media.data, media.pts_us)]
        return await asyncio.to_thread(self.decode, media, media.codec, kinds)

    def forget(self, uid: str | None = None) -> None:
        """Drop a member's decoders (``uid`` left; all of them when None): a member that
        comes back starts afresh, and one that does not holds nothing (a WebM demuxer's
        reader thread is ended: blocking, run it where the decoding runs)."""
        prefix = "" if uid is None else f"{uid}/"
        for key in [k for k in self._contexts if k[0].startswith(prefix)]:
            del self._contexts[key]
        for stream in [s for s in self._webm if s.startswith(prefix)]:
            self._webm.pop(stream).close()

    def _decode(
        self,
        stream: str,
        codec: str,
        data: bytes,
        pts_us: int | None = None,
        dts_us: int | None = None,
    ) -> list[av.frame.Frame]:
        packet = av.Packet(data)
        if pts_us is not None:
            packet.pts, packet.dts = pts_us, pts_us if dts_us is None else dts_us
            packet.time_base = MICROSECONDS
        try:
            return list(self._context(stream, codec).decode(packet))
        except (av.error.FFmpegError, ValueError) as exc:
            raise InvalidMedia(f"{codec} frame did not decode: {exc}") from exc
