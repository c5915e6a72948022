"""The mix recorder: decoded tracks of many users in, one composited H.264 + AAC recording out.

:class:`~mixer.mix_config.MixConfig` holds what the cloud recording API asked for.
:class:`MixSession` is the synchronous core (compositor, audio mixer, libx264, AAC, and the
existing :class:`~mixer.hls.HlsWriter` for segments and playlist, plus MP4 parts remuxed from
those segments by :func:`~mixer.mp4.build_mp4`, on the MP4 thread). :class:`MixRecorder` runs
a session on its own worker thread for asyncio callers.

Time is driven by the timestamps callers pass (µs on any clock shared by all inputs): an
output frame at time T is painted once every input has had `latency_us` past T to arrive, so
inputs pushed slightly out of order across users still land in the right frame. Frames come
out at the configured fps whatever the input rates; a caller with no input for a while (all
users silent) calls `advance` with the wall clock to keep frames coming.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import av
from av.audio.frame import AudioFrame
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from mixer.audiomix import MIX_RATE_HZ, AacEncoder, AudioMixer, input_key
from mixer.compositor import Compositor
from mixer.hls import HlsWriter
from mixer.layout import LayoutSpec
from mixer.mix_config import FileType, MixConfig, MixStyle, fetch_style
from mixer.mp4 import Mp4Info, submit_build
from mixer.segmenter import DEFAULT_SEGMENT_TARGET_S, SegmentInfo
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.transcode import X264_PRESET

log = logging.getLogger(__name__)

US_PER_S = 1_000_000
# How long a painted frame waits for late input: covers jitter between users' pushes.
MIX_LATENCY_US = 100_000
MP4_MAX_DURATION_S = 2 * 3600.0  # "a new MP4 file ... exceeds ~2 hours or ~2 GB".
MP4_MAX_BYTES = 2 * 1024**3
X264_TUNE = "zerolatency"  # No lookahead, no B-frames: a live mix cannot wait for the future.
# AVColorSpace/AVColorPrimaries/AVColorTransferCharacteristic 6 = SMPTE 170M (BT.601), range
# 1 = limited: what the compositor's RGB to Y'CbCr matrix produces.
BT601 = 6
LIMITED_RANGE = 1
VIDEO_TRACK, AUDIO_TRACK = 1, 2
_T = TypeVar("_T")


class _H264Encoder:
    """libx264 at the mix's size, fps and bit rate; an IDR exactly every `gop` frames."""

    def __init__(self, config: MixConfig, gop: int) -> None:
        encoder = av.CodecContext.create("libx264", "w")
        assert isinstance(encoder, VideoCodecContext)  # PyAV typing only.
        encoder.width, encoder.height, encoder.pix_fmt = config.width, config.height, "yuv420p"
        encoder.time_base = Fraction(1, config.fps)
        encoder.framerate = Fraction(config.fps)
        encoder.bit_rate = config.bitrate_kbps * 1000
        encoder.gop_size = gop
        encoder.max_b_frames = 0
        encoder.thread_count = 1  # Many mixes per machine: one thread each is the cheapest.
        encoder.colorspace = encoder.color_primaries = encoder.color_trc = BT601
        encoder.color_range = LIMITED_RANGE
        kbps = config.bitrate_kbps
        encoder.options = {
            "preset": X264_PRESET,
            "tune": X264_TUNE,
            "forced-idr": "1",
            # Keyframes only where segments are cut, so every segment has the target length;
            # a VBV cap keeps the bit rate near what was asked even on a cut.
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:"
            f"vbv-maxrate={kbps}:vbv-bufsize={2 * kbps}",
        }
        self._encoder: VideoCodecContext | None = encoder
        self._gop = gop

    def encode(self, frame: VideoFrame | None, index: int = 0) -> list[av.Packet]:
        """Encode output frame number `index` (None drains the encoder)."""
        if self._encoder is None:
            return []
        if frame is not None:
            frame.pts = index
            frame.pict_type = PictureType.I if index % self._gop == 0 else PictureType.NONE
        packets = self._encoder.encode(frame)
        if frame is None:
            self._encoder = None
        return packets


@dataclass(slots=True)
class MixOutput:
    """What a finished mix wrote."""

    playlist: Path
    segments: list[SegmentInfo]
    mp4s: list[tuple[Path, Mp4Info]]
    video_frames: int
    dropped_video_frames: int = 0
    # MP4 parts whose build failed: the file it would have been, its segments (in the
    # playlist all the same) and why
    failed_mp4s: list[tuple[Path, list[SegmentInfo], str]] = field(default_factory=list)


class MixSession:
    """The mix, synchronous: push decoded frames with times, get finished segments back.

    Not thread-safe: one thread at a time (MixRecorder gives it a worker thread of its own).
    """

    def __init__(
        self,
        config: MixConfig,
        directory: Path,
        *,
        name: str = "mix",
        segment_target_s: float = DEFAULT_SEGMENT_TARGET_S,
        latency_us: int = MIX_LATENCY_US,
        origin_us: int | None = None,
        mp4_max_duration_s: float = MP4_MAX_DURATION_S,
        mp4_max_bytes: int = MP4_MAX_BYTES,
        utc_segment_names: bool = False,
    ) -> None:
        self.config = config
        self._dir = Path(directory)
        self._name = name
        self._latency_us = latency_us
        self.compositor = Compositor(
            config.width, config.height, config.layout, background_color=config.background_color
        )
        self._mixer = AudioMixer(config.audio_profile)
        self._aac = AacEncoder(config.audio_profile)
        gop = max(1, round(config.fps * segment_target_s))
        # (an audio-only mix has no frames to paint: audio cuts its segments, HlsWriter)
        self._h264 = _H264Encoder(config, gop) if config.video else None
        self._writer = HlsWriter(
            self._dir, target_segment_s=segment_target_s, name=name, utc_names=utc_segment_names
        )
        if config.video:
            self._writer.add_track(
                TrackSpec(VIDEO_TRACK, Kind.VIDEO, Codec.H264, config.width, config.height)
            )
        if config.audio:
            self._writer.add_track(
                TrackSpec(
                    AUDIO_TRACK,
                    Kind.AUDIO,
                    Codec.AAC,
                    sample_rate=MIX_RATE_HZ,
                    channels=config.audio_profile.channels,
                )
            )
        self._origin_us = origin_us
        if origin_us is not None:
            self._mixer.origin_us = origin_us
        self._clock_us: int | None = None
        self._latest_us: int | None = None  # the latest frame's time, past the clock maybe
        self._frames = 0  # Output frames painted so far (the next one's index).
        # Joins, leaves and layout changes, applied at their time on the output timeline.
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._event_seq = itertools.count()
        self._ranks: dict[str, int] = {}  # uid → place in the join order
        self._joins: dict[str, int] = {}  # uid → calls of join() so far
        self._rank_seq = itertools.count()
        self._mp4_max_s, self._mp4_max_bytes = mp4_max_duration_s, mp4_max_bytes
        self._mp4_part: list[SegmentInfo] = []
        self.segments: list[SegmentInfo] = []
        self.mp4s: list[tuple[Path, Mp4Info]] = []
        # handed to the MP4 thread: the part's file, its segments, the build
        self._mp4_builds: list[tuple[Path, list[SegmentInfo], Future[Mp4Info]]] = []
        # parts whose build failed (logged; the segments stay): see MixOutput.failed_mp4s
        self.failed_mp4s: list[tuple[Path, list[SegmentInfo], str]] = []
        self._finished = False

    @property
    def video_frames(self) -> int:
        """Output frames painted so far."""
        return self._frames

    def frame_time_us(self, index: int) -> int:
        """Input-clock time of output frame `index`."""
        assert self._origin_us is not None  # Only asked once something was pushed.
        return self._origin_us + index * US_PER_S // self.config.fps

    def _start(self, t_us: int) -> None:
        if self._origin_us is None:
            self._origin_us = t_us
            self._mixer.origin_us = t_us

    def push_video(
        self, uid: str, frame: VideoFrame, t_us: int, now_us: int | None = None
    ) -> list[SegmentInfo]:
        """A decoded video frame of `uid`, shown from `t_us`; returns the segments finished.
        ``now_us``: when it arrived, which the mix's clock does not pass (``advance``). (An
        audio-only mix keeps the time and the member's place, and not the frame.)"""
        self._check_open()
        self._start(t_us)
        self.compositor.join(uid, t_us, self._rank(uid))  # in its place if it is new
        if self._h264 is not None:
            self.compositor.push_video(uid, frame, t_us)
        self._latest_us = t_us if self._latest_us is None else max(self._latest_us, t_us)
        return self.advance(t_us if now_us is None else min(t_us, now_us))

    def push_audio(
        self,
        uid: str,
        frame: AudioFrame,
        t_us: int,
        now_us: int | None = None,
        track: str = "",
        window: bool = True,
    ) -> list[SegmentInfo]:
        """A decoded audio frame of `uid` starting at `t_us` (any rate and layout); a frame
        placed ahead of its arrival ``now_us`` (a sender's fast clock) does not carry the
        mix's clock ahead with it, which would leave every other member's audio late. Each
        ``track`` of a member is mixed in with the others (a microphone and system audio).
        ``window``: the member has one (an audio-only member does; one whose video is not
        recorded does not)."""
        self._check_open()
        self._start(t_us)
        if window:
            self.compositor.join(uid, t_us, self._rank(uid))
        if self.config.audio:  # (a video-only mix keeps the time, not the sound)
            self._mixer.push(input_key(uid, track), frame, t_us)
        self._latest_us = t_us if self._latest_us is None else max(self._latest_us, t_us)
        return self.advance(t_us if now_us is None else min(t_us, now_us))

    def join(self, uid: str, t_us: int) -> list[SegmentInfo]:
        """`uid` joins at `t_us` (pushing a frame joins too; this fixes the join order)."""
        self._check_open()
        self._start(t_us)
        rank = self._rank(uid)  # taken now: the join order is the order of these calls
        self._joins[uid] = self._joins.get(uid, 0) + 1
        self._at(t_us, lambda: self.compositor.join(uid, t_us, rank))
        return self.advance(t_us)

    def hear(self, uid: str) -> None:
        """`uid`, heard without a window, is in (again): a leave not yet applied (a
        reconnect) keeps the audio its new connection sends, as for :meth:`join`."""
        self._joins[uid] = self._joins.get(uid, 0) + 1

    def _still_out(self, uid: str, joins: int) -> bool:
        """Whether ``uid`` has not joined again since a leave (or hide) that saw ``joins``:
        one back before its leave is applied (a reconnect: the mix applies it ``latency``
        later) keeps its place, its window and the audio its new connection sent meanwhile,
        which the leave used to drop (~130 ms of silence at each reconnect)."""
        return self._joins.get(uid, 0) == joins

    def leave(self, uid: str, t_us: int) -> list[SegmentInfo]:
        """`uid` leaves at `t_us`: their window goes and the others are laid out again."""
        return self._take_out(uid, t_us, heard=False)

    def hide(self, uid: str, t_us: int) -> list[SegmentInfo]:
        """`uid` keeps being heard but has no window from `t_us` on (its video is no longer
        recorded); `join` gives it one again."""
        return self._take_out(uid, t_us, heard=True)

    def _take_out(self, uid: str, t_us: int, *, heard: bool) -> list[SegmentInfo]:
        """At `t_us`, unless `uid` joined again before: its window goes (and its place: joining
        again goes to the end), and its audio too unless it is still `heard`."""
        self._check_open()
        self._start(t_us)
        joins = self._joins.get(uid, 0)

        def apply() -> None:
            if self._still_out(uid, joins):
                self.compositor.leave(uid)
                self._ranks.pop(uid, None)
                if not heard:
                    self._mixer.remove(uid)

        self._at(t_us, apply)
        return self.advance(t_us)

    def update_layout(
        self, layout: LayoutSpec, t_us: int, style: MixStyle | None = None
    ) -> list[SegmentInfo]:
        """Switch layout from `t_us` on (updateLayout); `style` replaces colour and images."""
        self._check_open()
        self._start(t_us)

        def apply() -> None:
            self.compositor.set_layout(layout)
            if style is not None:
                self.apply_style(style)

        self._at(t_us, apply)
        return self.advance(t_us)

    def apply_style(self, style: MixStyle) -> None:
        """Background colour and images, all replaced now (the images fetched already)."""
        compositor = self.compositor
        compositor.set_background_color(style.background_color)
        compositor.set_background_image(style.background_image)
        compositor.set_default_user_background(style.default_user_background)
        compositor.clear_user_backgrounds()
        for uid, image, mode in style.user_backgrounds:
            compositor.set_user_background(uid, image, mode)

    def _rank(self, uid: str) -> int:
        """``uid``'s place in the join order: taken at its first join or frame."""
        if uid not in self._ranks:
            self._ranks[uid] = next(self._rank_seq)
        return self._ranks[uid]

    def _at(self, t_us: int, apply: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t_us, next(self._event_seq), apply))

    def advance(self, t_us: int) -> list[SegmentInfo]:
        """Say the input clock reached `t_us`; frames and audio up to `t_us - latency` go out."""
        self._check_open()
        self._start(t_us)
        self._clock_us = t_us if self._clock_us is None else max(self._clock_us, t_us)
        return self._produce(self._clock_us - self._latency_us)

    def _produce(self, until_us: int) -> list[SegmentInfo]:
        """Paint and encode every frame due at or before `until_us`, with the audio up to it."""
        done: list[SegmentInfo] = []
        h264 = self._h264
        while True:
            frame_us = self.frame_time_us(self._frames) if h264 is not None else None
            event_us = self._events[0][0] if self._events else None
            due = until_us if frame_us is None else min(frame_us, until_us)
            if event_us is not None and event_us <= due:
                done += self._mix_audio(event_us)
                heapq.heappop(self._events)[2]()
                continue
            if h264 is None or frame_us is None or frame_us > until_us:
                break
            done += self._mix_audio(frame_us)
            frame = self.compositor.render(frame_us)
            done += self._write_video(h264.encode(frame, self._frames))
            self._frames += 1
        done += self._mix_audio(until_us)
        return done

    def _mix_audio(self, until_us: int) -> list[SegmentInfo]:
        done: list[SegmentInfo] = []
        if not self.config.audio:
            return done
        position = self._mixer.position
        for chunk in self._mixer.mix_until(until_us):
            for data, pts in self._aac.encode(chunk, position):
                done += self._write(AUDIO_TRACK, data, pts * US_PER_S // MIX_RATE_HZ, True)
            position += chunk.shape[1]
        return done

    def _write_video(self, packets: list[av.Packet]) -> list[SegmentInfo]:
        done: list[SegmentInfo] = []
        for packet in packets:
            pts_us = (packet.pts or 0) * US_PER_S // self.config.fps
            done += self._write(VIDEO_TRACK, bytes(packet), pts_us, packet.is_keyframe)
        return done

    def _write(self, track: int, data: bytes, rel_us: int, keyframe: bool) -> list[SegmentInfo]:
        assert self._origin_us is not None  # Set before anything is produced.
        finished = self._writer.write(track, data, self._origin_us + rel_us, keyframe=keyframe)
        self._collect(finished)
        return finished

    def _collect(self, finished: list[SegmentInfo]) -> None:
        self.segments += finished
        if FileType.MP4 not in self.config.file_types:
            return
        for info in finished:
            self._mp4_part.append(info)
            duration = sum(s.duration_s for s in self._mp4_part)
            size = sum(s.size for s in self._mp4_part)
            if duration >= self._mp4_max_s or size >= self._mp4_max_bytes:
                self._build_mp4()

    def _build_mp4(self) -> None:
        """Hand the part to the MP4 thread: built inline, a 2-hour part held the mix's thread
        for seconds, and every member's media backed up and was dropped meanwhile."""
        if not self._mp4_part:
            return
        path = self._dir / f"{self._name}_{len(self._mp4_builds):03d}.mp4"
        part, self._mp4_part = self._mp4_part, []
        kinds = self.config.video + self.config.audio
        self._mp4_builds.append((path, part, submit_build([s.path for s in part], path, kinds)))

    def _built_mp4s(self) -> None:
        """Wait for the parts handed over (``finish``): each built one is listed; one that
        failed is logged and left out (its segments are in the playlist all the same), so the
        recording made so far is still handed over whole."""
        builds, self._mp4_builds = self._mp4_builds, []
        for path, part, build in builds:
            try:
                self.mp4s.append((path, build.result()))
            except Exception as exc:
                said = str(exc).replace(f"{self._dir}{os.sep}", "")  # (no server paths)
                self.failed_mp4s.append((path, part, said))
                log.error("building %s failed: its segments stay, no MP4 of them: %s", path, exc)

    def finish(self) -> MixOutput:
        """Paint up to the last time seen, drain the encoders, close the playlist and MP4s."""
        if not self._finished:
            self._finished = True
            if self._clock_us is not None:
                try:  # (every frame it was given: those placed past the clock too)
                    self._produce(max(self._clock_us, self._latest_us or self._clock_us))
                except Exception:  # the recording made so far is closed and kept all the same
                    log.exception("painting the mix's last frames failed: closed without them")
            if self._h264 is not None:
                self._write_video(self._h264.encode(None))
            if self.config.audio:
                for data, pts in self._aac.encode(None):
                    self._write(AUDIO_TRACK, data, pts * US_PER_S // MIX_RATE_HZ, True)
            self._collect(self._writer.finish())
            self._build_mp4()
            self._built_mp4s()
        dropped = sum(self.compositor.dropped_frames(u) for u in self.compositor.users)
        return MixOutput(
            self._dir / f"{self._name}.m3u8",
            list(self.segments),
            list(self.mp4s),
            self._frames,
            dropped,
            list(self.failed_mp4s),
        )

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the mix is finished")


class MixRecorder:
    """A :class:`MixSession` on a worker thread of its own, for asyncio callers.

    Calls run in the order made (one thread, FIFO), so a frame never overtakes a join. At most
    `max_pending` calls wait for the thread: past that, video frames are dropped (counted)
    while audio and control calls wait their turn, so audio is never dropped.
    """

    def __init__(
        self,
        config: MixConfig,
        directory: Path,
        *,
        name: str = "mix",
        segment_target_s: float = DEFAULT_SEGMENT_TARGET_S,
        latency_us: int = MIX_LATENCY_US,
        max_pending: int = 64,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        **session_options: Any,
    ) -> None:
        self.config = config
        self._args = (config, Path(directory))
        self._kwargs = dict(
            name=name, segment_target_s=segment_target_s, latency_us=latency_us, **session_options
        )
        self._session: MixSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(max_pending)
        self._on_segment = on_segment
        self._output: MixOutput | None = None
        self.dropped_video_frames = 0
        self._reported = 0  # segments told to on_segment so far

    async def __aenter__(self) -> MixRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, http: aiohttp.ClientSession | None = None) -> None:
        """Open the encoders and writer on the worker thread, then fetch background images.

        Images that cannot be fetched are logged and left out (the colour shows instead).
        """
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mix")
        self._session = await self._call(lambda: MixSession(*self._args, **self._kwargs))
        config = self.config
        if not (
            config.background_image
            or config.default_user_background_image
            or config.user_backgrounds
        ):
            return
        style = await fetch_style(
            config.background_color,
            config.background_image,
            config.default_user_background_image,
            config.user_backgrounds,
            http,
            paint=config.video,
        )
        await self._call(lambda: self._open().apply_style(style))

    def _open(self) -> MixSession:
        if self._session is None:
            raise RuntimeError("the mix recorder is not started")
        return self._session

    async def _call(self, fn: Callable[[], _T]) -> _T:
        if self._executor is None:
            raise RuntimeError("the mix recorder is not started")
        loop = asyncio.get_running_loop()
        async with self._slots:
            return await loop.run_in_executor(self._executor, fn)

    async def _produce(self, fn: Callable[[], list[SegmentInfo]]) -> None:
        try:
            await self._call(fn)
        finally:
            if self._session is not None:
                self._report(self._session.segments)

    def _report(self, segments: list[SegmentInfo]) -> None:
        """Tell ``on_segment`` of the segments cut since the last report, in order. Counted,
        not taken from a call's result: a call whose waiter was cancelled (the ticker at
        stop) still cuts its segment on the thread, which the next report then tells."""
        new = segments[self._reported :]
        self._reported += len(new)
        if self._on_segment is not None:
            for info in new:
                self._on_segment(info)

    async def push_video(
        self, uid: str, frame: VideoFrame, t_us: int, now_us: int | None = None
    ) -> bool:
        """Queue a decoded video frame; False if it was dropped because the mix is behind."""
        if self._slots.locked():
            self.dropped_video_frames += 1
            return False
        await self._produce(lambda: self._open().push_video(uid, frame, t_us, now_us))
        return True

    async def push_audio(
        self,
        uid: str,
        frame: AudioFrame,
        t_us: int,
        now_us: int | None = None,
        track: str = "",
        window: bool = True,
    ) -> None:
        """Queue a decoded audio frame (waits for room rather than dropping)."""
        await self._produce(
            lambda: self._open().push_audio(uid, frame, t_us, now_us, track, window)
        )

    async def join(self, uid: str, t_us: int) -> None:
        """`uid` joins at `t_us`."""
        await self._produce(lambda: self._open().join(uid, t_us))

    async def leave(self, uid: str, t_us: int) -> None:
        """`uid` leaves at `t_us`."""
        await self._produce(lambda: self._open().leave(uid, t_us))

    async def hide(self, uid: str, t_us: int) -> None:
        """`uid` is heard without a window from `t_us` on."""
        await self._produce(lambda: self._open().hide(uid, t_us))

    async def hear(self, uid: str) -> None:
        """`uid` joins to be heard only (:meth:`MixSession.hear`)."""
        await self._call(lambda: self._open().hear(uid))

    async def update_layout(
        self, layout: LayoutSpec, t_us: int, style: MixStyle | None = None
    ) -> None:
        """updateLayout: a new layout (and, with `style`, colour and images) from `t_us` on."""
        await self._produce(lambda: self._open().update_layout(layout, t_us, style))

    async def advance(self, t_us: int) -> None:
        """The input clock reached `t_us` (call it on a timer when inputs may all be silent)."""
        await self._produce(lambda: self._open().advance(t_us))

    async def aclose(self) -> MixOutput | None:
        """Finish the recording (playlist ended, MP4s built) and stop the thread; idempotent."""
        if self._executor is None or self._output is not None:
            return self._output
        session = self._open()
        try:
            self._output = await self._call(session.finish)
        except BaseException:
            self._executor.shutdown(wait=False)  # a failed finish must not leave the thread
            self._executor = None
            raise
        self._report(self._output.segments)
        self._output.dropped_video_frames += self.dropped_video_frames
        self._executor.shutdown(wait=False)
        return self._output
