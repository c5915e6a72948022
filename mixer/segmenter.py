"""MPEG-TS segment files: one container per segment, timestamps kept across segments."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import av.error
import numpy as np
from av.container import OutputContainer

from mixer.errors import InvalidMedia
from mixer.tracks import Kind
from storage.durable import fsync_file

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_TARGET_S = 4.0
TS_FORMAT = "mpegts"
# Every segment keeps the session's timestamps (the mpegts muxer adds the same fixed delay to
# each), and libavformat must not shift a segment that starts with AAC priming below zero, or
# that one segment would drift from the others.
TS_OPTIONS = {"avoid_negative_ts": "disabled"}
TS_PACKET = 188
NULL_PID = 0x1FFF

# (PID → the continuity counter its next packet with a payload carries)
Counters = Mapping[int, int]


def continue_counters(path: Path, start: Counters) -> dict[int, int]:
    """Shift the continuity counters of the closed segment ``path`` so that each PID goes on
    from ``start`` (where the segment before left it); returns where this one leaves them.

    The muxer starts every PID at 0 in every file. A player that reads the segments back to
    back through one demuxer (FFmpeg's HLS demuxer does) would otherwise see a counter break
    at every boundary and flag the packet before it corrupt. Packets without a payload keep
    the counter of the packet before them, so one shift per PID keeps every relation. The
    counters are cosmetic next to the media: a file that cannot be read or rewritten is left
    as it is (logged), never lost."""
    try:
        with open(path, "r+b") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            if not buf or len(buf) % TS_PACKET or f.readinto(buf) != len(buf):
                return dict(start)  # not plain 188-byte packets: left as the muxer wrote it
            packets = np.frombuffer(buf, dtype=np.uint8).reshape(-1, TS_PACKET)
            if not (packets[:, 0] == 0x47).all():
                return dict(start)
            pids = ((packets[:, 1].astype(np.int32) & 0x1F) << 8) | packets[:, 2]
            flags = packets[:, 3].copy()
            shift = np.zeros(NULL_PID + 1, dtype=np.uint8)
            for pid, counter in start.items():
                shift[pid] = counter
            counters = ((flags & 0x0F) + shift[pids]) & 0x0F
            if start:
                packets[:, 3] = (flags & 0xF0) | counters
                os.pwrite(f.fileno(), buf, 0)  # (the page cache: the caller fsyncs, or the spool)
    except OSError as exc:
        log.warning("continuity counters of %s left as written: %s", path.name, exc)
        return dict(start)
    ends = dict(start)
    # the last packet with a payload of each PID: the first of each in reverse order
    reverse = np.flatnonzero(flags & 0x10)[::-1]
    found, first = np.unique(pids[reverse], return_index=True)
    for pid, at in zip(found.tolist(), reverse[first].tolist(), strict=True):
        if pid != NULL_PID:
            ends[pid] = (int(counters[at]) + 1) & 0x0F
    return ends


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

    def __init__(self, path: Path, slots: list[StreamSlot], *, restart: bool = False) -> None:
        """``restart``: the counters start again here, after others went before (a restarted
        writer's first segment): its first packets carry the discontinuity indicator, which
        tells a demuxer reading on from the segment before that the break is meant."""
        self.path = path
        self.slot_count = len(slots)
        options = {**TS_OPTIONS, "mpegts_flags": "initial_discontinuity"} if restart else TS_OPTIONS
        self._container: OutputContainer = av.open(
            str(path), mode="w", format=TS_FORMAT, options=options
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

    def close(
        self, sync: bool = True, counters: Counters | None = None
    ) -> tuple[int, dict[int, int]]:
        """Write the trailer, go on from ``counters`` (``continue_counters``), fsync the file
        (unless told not to); its size in bytes and the counters the next segment goes on
        from."""
        self._container.close()
        ends = continue_counters(self.path, counters or {})
        if sync:
            fsync_file(self.path)
        return self.path.stat().st_size, ends
