"""MPEG-TS segment files: one container per segment, timestamps kept across segments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import av.error
from av.container import OutputContainer

from mixer.errors import InvalidMedia
from mixer.tracks import Kind
from storage.durable import fsync_file

DEFAULT_SEGMENT_TARGET_S = 4.0
TS_FORMAT = "mpegts"
# Every segment keeps the session's timestamps (the mpegts muxer adds the same fixed delay to
# each), and libavformat must not shift a segment that starts with AAC priming below zero, or
# that one segment would drift from the others.
TS_OPTIONS = {"avoid_negative_ts": "disabled"}


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A finished segment: its file (closed and fsync'd), place on the timeline and wall clock."""

    index: int
    path: Path
    uri: str
    duration_s: float
    start_s: float
    program_date_time: datetime
    discontinuity: bool
    size: int


@dataclass(frozen=True, slots=True)
class StreamSlot:
    """An output elementary stream of the segments: H.264 video, AAC (or Opus) audio."""

    kind: Kind
    width: int = 0
    height: int = 0
    sample_rate: int = 48_000
    codec: str = ""  # "": H.264 for video, AAC for audio


class TsSegment:
    """One open `.ts` segment; its streams are fixed when it opens."""

    def __init__(self, path: Path, slots: list[StreamSlot]) -> None:
        self.path = path
        self.slot_count = len(slots)
        self._container: OutputContainer = av.open(
            str(path), mode="w", format=TS_FORMAT, options=TS_OPTIONS
        )
        # Mux-only streams: packets are already encoded, so no codec is opened per segment.
        self._streams = [
            self._container.add_mux_stream("h264", width=s.width, height=s.height)
            if s.kind is Kind.VIDEO
            else self._container.add_mux_stream(s.codec or "aac", rate=s.sample_rate)
            for s in slots
        ]
        self._mux_one = self._container.mux_one  # Bound once: called for every packet.

    def mux(self, slot: int, packet: av.Packet) -> None:
        """Write one packet into the stream of `slot`."""
        packet.stream = self._streams[slot]
        try:
            self._mux_one(packet)
        except av.error.FFmpegError as exc:
            raise InvalidMedia(f"muxer refused a packet: {exc}") from exc

    def close(self, sync: bool = True) -> int:
        """Write the trailer, fsync the file (unless told not to), and return its size in bytes."""
        self._container.close()
        if sync:
            fsync_file(self.path)
        return self.path.stat().st_size
