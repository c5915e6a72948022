"""Remux a session's MPEG-TS segments, in order, into one MP4 without re-encoding."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.stream import Stream
from av.video.stream import VideoStream

from mixer.errors import InvalidMedia
from storage.durable import fsync_dir, fsync_file

log = logging.getLogger(__name__)

MP4_OPTIONS = {"movflags": "+faststart"}
# The chain of all segments is not probed (avformat_find_stream_info): the output's streams are
# set up from a segment already, the chain only delivers packets, and probing it again was
# a third of an MP4's build (55 → 38 ms CPU for 30 s of 720p).
CHAIN_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fpsprobesize": "0"}
# The segment that sets the output's streams up is probed for 0.1 s of media: enough for the
# codec parameters (a segment starts on a keyframe with its parameter sets), not for the
# frame-rate and bitrate estimates FFmpeg's default 5 s would decode frames for (17 → 3 ms of
# a 30 s session's build of ~45). A stream left without its parameters is probed in full.
QUICK_PROBE = {"analyzeduration": "100000"}
ADTS_SYNC_MASK = 0xFFF6
ADTS_SYNC = 0xFFF0


# Added to the thread's nice value (Linux: a thread's own). An MP4 is built once its session
# ended and nobody waits on it but the upload, while the sessions still recording wait for acks:
# when many sessions end together (~45 ms of CPU each for 30 s of 720p) the builds take the
# CPU left over instead of delaying the others' ticks (50 publishers ending within a second,
# 20 s each: the ack p99 of their last second 44 ms against 50, median of 4 runs).
BUILD_NICE = 10


def _lower_priority() -> None:
    if sys.platform != "linux":  # (elsewhere the nice value is the whole process's)
        return
    try:
        os.nice(BUILD_NICE)  # (from the server's own: a server started under nice stays below)
    except OSError as exc:  # (raising one's own nice value is never refused on Linux)
        log.warning("MP4 builds run at the server's priority: %s", exc)


# builds of one process queue for one thread: builds side by side in threads contend for
# the GIL (30 s of 720p: ~45 ms of CPU built alone, ~85 ms each with six at once, as when
# many sessions end together), and two cores gain nothing from more than one
# (its thread starts with the first build)
_BUILDER = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="mp4-build", initializer=_lower_priority
)


@dataclass(frozen=True, slots=True)
class Mp4Info:
    """What was written: media length, file size and frame counts."""

    duration_s: float
    size: int
    video_frames: int
    audio_frames: int


def _adts_header_bytes(data: bytes) -> int:
    """The length of one ADTS frame's header; raises ``InvalidMedia`` when it is not ADTS."""
    if len(data) < 7 or (int.from_bytes(data[:2], "big") & ADTS_SYNC_MASK) != ADTS_SYNC:
        raise InvalidMedia("AAC in a segment is not ADTS")
    return 7 if data[1] & 1 else 9  # protection_absent=0 adds a 2-byte CRC.


def _adts_config(data: bytes) -> bytes:
    """The AudioSpecificConfig that one ADTS frame's header describes."""
    # Done here rather than with `aac_adtstoasc`: that filter hands the config over as packet
    # side data after the first packet, but the MP4 stream needs it before the header.
    _adts_header_bytes(data)
    object_type = (data[2] >> 6) + 1
    rate_index = (data[2] >> 2) & 0x0F
    channels = ((data[2] & 1) << 2) | (data[3] >> 6)
    return bytes(
        ((object_type << 3) | (rate_index >> 1), ((rate_index & 1) << 7) | (channels << 3))
    )


def _open(path: Path, options: dict[str, str] | None = None) -> InputContainer:
    try:
        return av.open(str(path), mode="r", options=options)
    except av.error.FFmpegError as exc:
        raise InvalidMedia(f"cannot read segment {path.name}: {exc}") from exc


def _described(container: InputContainer) -> bool:
    """Every stream has the parameters an MP4 header needs."""
    for stream in container.streams:
        if isinstance(stream, VideoStream):
            video = stream.codec_context
            if not (video.width and video.height and video.format):
                return False
        elif isinstance(stream, AudioStream) and not stream.codec_context.sample_rate:
            return False
    return True


def _open_probed(path: Path) -> InputContainer:
    container = _open(path, QUICK_PROBE)
    if _described(container):
        return container
    container.close()
    return _open(path)


def _add_streams(
    output: OutputContainer, segments: Sequence[Path], kinds: int = 2
) -> tuple[dict[str, Stream], bool]:
    # The MP4 header needs every stream (and the AAC config) before the first packet, and a
    # track that joined late is only in later segments: look through them all first.
    streams: dict[str, Stream] = {}
    in_first = 0  # streams the first segment holds
    for path in segments:
        with _open_probed(path) as container:
            for stream in container.streams:
                if stream.type not in ("video", "audio") or stream.type in streams:
                    continue
                added = output.add_stream_from_template(stream, opaque=True)
                if stream.type == "audio":
                    for packet in container.demux(stream):
                        if packet.size:
                            added.codec_context.extradata = _adts_config(bytes(packet))
                            break
                streams[stream.type] = added
        if path == segments[0]:
            in_first = len(streams)
        if len(streams) == kinds:
            break
    return streams, in_first == len(streams)


class _Chain(io.RawIOBase):
    """The segments as one stream: MPEG-TS concatenates, so the demuxer opens (and probes)
    once for the whole session instead of once per segment, which was most of the cost."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._file: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _inputs(segments: Sequence[Path], whole: bool) -> Iterator[InputContainer]:
    """The containers to demux in order: all segments chained into one when the first holds
    every stream (``whole``); one per segment when a track joined later."""
    if whole:
        chain = _Chain(segments)
        try:
            container = av.open(chain, mode="r", format="mpegts", options=CHAIN_OPTIONS)
        except av.error.FFmpegError as exc:
            raise InvalidMedia(f"cannot read the segments: {exc}") from exc
        with chain, container:
            yield container
        return
    for path in segments:
        with _open(path) as container:
            yield container


def build_mp4(segments: Sequence[Path], out: Path, kinds: int = 2) -> Mp4Info:
    """Remux TS segments in order into `out` (temp name, fsync, rename); return what it holds.
    ``kinds``: how many streams (video, audio) the recording has, so that looking for them
    stops once they are found (an audio-only recording's were looked for in every segment)."""
    if not segments:
        raise InvalidMedia("no segments to build an MP4 from")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        return _build(segments, out, tmp, kinds)
    except BaseException:
        tmp.unlink(missing_ok=True)  # (a failed build leaves no half file behind)
        raise


def _build(segments: Sequence[Path], out: Path, tmp: Path, kinds: int) -> Mp4Info:
    counts = {"video": 0, "audio": 0}
    first_ts: float | None = None
    last_end = 0.0
    with av.open(str(tmp), mode="w", format="mp4", options=MP4_OPTIONS) as output:
        streams, whole = _add_streams(output, segments, kinds)
        for container in _inputs(segments, whole):
            inputs = [s for s in container.streams if s.type in streams]
            # looked up once per stream, not per packet (a 30 s session has ~1900 packets)
            per: dict[int, tuple[str, Stream, Fraction, float]] = {}
            for s in inputs:
                assert s.time_base is not None  # a demuxed stream has its time base
                per[s.index] = (s.type, streams[s.type], s.time_base, float(s.time_base))
            for packet in container.demux(inputs):
                pts, dts = packet.pts, packet.dts
                if dts is None or pts is None or packet.size == 0:
                    continue
                kind, stream, tb, unit = per[packet.stream_index]
                counts[kind] += 1
                start = pts * unit
                if first_ts is None or start < first_ts:
                    first_ts = start
                end = start + (packet.duration or 0) * unit
                if end > last_end:
                    last_end = end
                if kind == "audio":
                    data = bytes(packet)
                    copy = av.Packet(data[_adts_header_bytes(data) :])
                    copy.pts, copy.dts, copy.duration = pts, dts, packet.duration
                    copy.time_base, copy.is_keyframe = tb, packet.is_keyframe
                    packet = copy
                packet.stream = stream
                output.mux(packet)
    span = max(0.0, last_end - (first_ts or 0.0))
    duration_s = _played_s(tmp, span)
    fsync_file(tmp)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return Mp4Info(
        duration_s=duration_s,
        size=out.stat().st_size,
        video_frames=counts["video"],
        audio_frames=counts["audio"],
    )


def _played_s(path: Path, span_s: float) -> float:
    """The MP4's length as players and ``ffprobe`` read it (its header, edit lists applied:
    the AAC encoder's priming frame, ~21 ms before the first sample, is not played), ~1 ms;
    ``span_s``, the packets' own span, when the header has none."""
    try:
        with av.open(str(path), mode="r", options=CHAIN_OPTIONS) as container:
            duration = container.duration
    except av.error.FFmpegError:
        return span_s
    return span_s if duration is None else duration / av.time_base


def submit_build(segments: Sequence[Path], out: Path, kinds: int = 2) -> Future[Mp4Info]:
    """``build_mp4`` in this process's one MP4 thread, for a caller on a thread of its own
    (a mix's worker goes on mixing meanwhile)."""
    return _BUILDER.submit(build_mp4, list(segments), out, kinds)


async def build_mp4_queued(segments: Sequence[Path], out: Path) -> Mp4Info:
    """``build_mp4`` off the event loop, in this process's one MP4 thread (in turn)."""
    return await asyncio.get_running_loop().run_in_executor(_BUILDER, build_mp4, segments, out)
