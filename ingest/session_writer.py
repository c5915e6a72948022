"""The writing half of a session recorder: HLS muxing and WAL appends, run in a writer lane.

A ``SessionWriter`` lives in a lane process (``ingest.lanes``) beside the lane's WAL; the
``SessionRecorder`` in the server process queues frames, ships them here in ticks and gets back
an ``Outcome`` per tick: the highest sequence now safe (once the lane has fsync'd its WAL), the
segments that closed, and a media error to tell the client about. Everything that crosses the
pipe is plain data (dataclasses of ints, strings, paths), so it pickles cheaply and safely.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixer.errors import MediaError
from mixer.hls import HlsWriter, SegmentInfo
from mixer.tracks import Codec, Kind, TrackSpec

from .errors import CloseCode
from .wal import BREAK, CUT, MEDIA, TRACK, Wal

log = logging.getLogger(__name__)

US = 1_000_000
SEGMENT_NAME = "index"
KEEP_DIR = "keep"  # hard links of closed segments, for the MP4 built at END
SKIPPED = "its writer crashed on this frame: dropped, not recorded"

Cut = tuple[SegmentInfo, int]  # a closed segment and the WAL file its successor starts in


@dataclass(frozen=True, slots=True)
class WriterParams:
    """What a lane needs to open (or reopen, after a restart) a session's writer."""

    session_id: str
    live_dir: Path
    segment_target_s: float
    gap_s: float
    paused: bool
    acked_seq: int
    next_index: int  # the first segment not yet spooled
    start_s: float  # media time already in the playlist
    resumed: bool  # segments were spooled before: the next one starts with a discontinuity
    aac_coder: str  # FFmpeg's coder for Opus transcoded to AAC


@dataclass(frozen=True, slots=True)
class Opened:
    """A writer's state after opening: segments closed while replaying the WAL, the highest
    sequence the replay holds, the tracks it knows and the WAL file it needs from."""

    cuts: list[Cut]
    acked_seq: int
    tracks: dict[int, dict[str, Any]]
    wal_from: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One session's part of a tick."""

    acked: int  # the highest sequence written (safe once the tick's fsync returned)
    done: list[Cut]  # closed segments
    error: tuple[int, str] | None = None  # (close code, reason): a frame was refused
    recut: int | None = None  # an idle session's fresh cut: the WAL file it now needs
    first_arrival: float | None = None  # wall time the batch's oldest frame was received

    def __reduce__(self) -> tuple[type[Outcome], tuple[Any, ...]]:
        # one per session per tick crosses the pipe: a frozen slots dataclass otherwise
        # pickles through ``dataclasses.fields`` (about 4 us each way instead of 1)
        return Outcome, (self.acked, self.done, self.error, self.recut, self.first_arrival)


@dataclass(frozen=True, slots=True)
class Failed:
    """A session's writer failed (or its lane did): nothing of the tick may be acknowledged."""

    reason: str


# a track's pts going back this far is a clock that began again, not B-frame reordering
CLOCK_RESTART_US = 1_000_000


def track_spec(fields: dict[str, Any]) -> TrackSpec:
    """A ``mixer`` track description from a protocol ``track`` message."""
    return TrackSpec(
        track_id=fields["id"],
        kind=Kind(fields["kind"]),
        codec=Codec(fields["codec"]),
        width=fields.get("width", 0),
        height=fields.get("height", 0),
        sample_rate=fields.get("sample_rate", 48000),
        channels=fields.get("channels", 1),
        extradata=fields.get("extradata", b""),
    )


def replay_from(records: list[list[Any]], next_index: int) -> list[list[Any]]:
    """The records of the open segment: those after the cut that started ``next_index``."""
    start = 0
    for i, rec in enumerate(records):
        if rec[1] == CUT and rec[2] <= next_index:
            start = i + 1
    return records[start:]


def _segment_index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


class SessionWriter:
    """Writes one session's frames to HLS and its lane's WAL (blocking; one lane's thread)."""

    def __init__(self, params: WriterParams, wal: Wal) -> None:
        self.params = params
        self.session_id = params.session_id
        self._wal = wal
        self.paused = params.paused
        self._tracks: dict[int, dict[str, Any]] = {}
        self._last_pts: dict[int, int] = {}
        self._cuts: list[Cut] = []
        self._writer: HlsWriter | None = None

    def open(self, records: list[list[Any]]) -> Opened:
        """Open the HLS writer, replaying what the WAL held of the open segment."""
        p = self.params
        keep_dir = p.live_dir / KEEP_DIR
        keep_dir.mkdir(parents=True, exist_ok=True)
        for path in [*p.live_dir.glob("*.ts"), *keep_dir.glob("*.ts")]:
            if path.parent == p.live_dir or _segment_index(path) >= p.next_index:
                path.unlink()  # segments not yet spooled are rebuilt from the WAL
        replaying = replay_from(records, p.next_index)
        self._writer = HlsWriter(
            p.live_dir,
            target_segment_s=p.segment_target_s,
            name=SEGMENT_NAME,
            start_index=p.next_index,
            start_s=p.start_s,
            discontinuity_first=p.resumed or bool(replaying),
            durable=False,  # the WAL holds the frames until the spool holds the segment
            aac_coder=p.aac_coder,
        )
        sid = self.session_id
        wal_from = self._wal.append([sid, CUT, p.next_index])
        self._cuts = []
        acked = p.acked_seq
        last_seq = 0
        for rec in replaying:  # written again: the old WAL files go once recovery is done
            tag = rec[1]
            if tag == TRACK:
                self._add_track(rec[2])
            elif tag == BREAK:
                self._break()
            elif tag == MEDIA and rec[2] > last_seq:
                last_seq = rec[2]
                acked = max(acked, last_seq)
                try:
                    self._media(*rec[2:])
                except MediaError as exc:  # one bad frame must not keep the session down
                    log.warning("replay: seq %d: %s", last_seq, exc, extra={"session_id": sid})
                    continue
            else:
                continue  # cuts (the writer makes its own) and resent duplicates
            self._wal.append(rec)
        return Opened(self._cuts, acked, dict(self._tracks), wal_from)

    def process(self, batch: list[tuple[Any, ...]]) -> Outcome:
        """Write a batch and append it to the WAL (the lane fsyncs it after the tick)."""
        self._cuts = []
        acked = 0
        error: tuple[int, str] | None = None
        recut: int | None = None
        first_arrival: float | None = None
        wal, sid = self._wal, self.session_id
        for item in batch:
            kind = item[0]
            if kind == "media":
                _, seq, track, pts, dts, key, arrival, data = item
                acked = seq
                if first_arrival is None:
                    first_arrival = arrival
                if self.paused:
                    continue
                try:
                    self._media(seq, track, pts, dts, key, arrival, data)
                except MediaError as exc:
                    # discarded and acknowledged, so a resend cannot loop; the client is told
                    log.warning("seq %d: %s", seq, exc, extra={"session_id": sid})
                    error = error or (int(CloseCode.INVALID_MEDIA), f"seq {seq}: {exc}")
                else:
                    wal.append([sid, MEDIA, seq, track, pts, dts, key, arrival, data])
            elif kind == "skip":  # its lane died writing this frame: acknowledged, dropped
                seq = item[1]
                acked = seq
                log.warning("seq %d: %s", seq, SKIPPED, extra={"session_id": sid})
                error = error or (int(CloseCode.INVALID_MEDIA), f"seq {seq}: {SKIPPED}")
            elif kind == "track":
                self._add_track(item[1])
                wal.append([sid, TRACK, item[1]])
            elif kind == "pause":
                if not self.paused:
                    self._break()
                    wal.append([sid, BREAK])
                self.paused = True
            elif kind == "resume":
                self.paused = False
            elif kind == "recut" and self._writer is not None and self._writer.idle:
                # nothing of the open segment is in the WAL yet: start it again in the newest
                # file, so an idle or paused session does not hold older files forever
                recut = wal.append([sid, CUT, self._writer.next_index])
                for fields in self._tracks.values():
                    wal.append([sid, TRACK, fields])
        return Outcome(acked, self._cuts, error, recut, first_arrival)

    def finish(self) -> list[Cut]:
        """END: close the last segment."""
        assert self._writer is not None
        self._cuts = []
        self._cut(self._writer.finish())
        return self._cuts

    def close(self) -> None:
        """Release the open segment's files without closing it: the WAL rebuilds it."""
        if self._writer is not None:
            self._writer.finish()

    def _add_track(self, fields: dict[str, Any]) -> None:
        assert self._writer is not None
        if fields["id"] not in self._tracks:  # a replay may repeat announcements
            self._tracks[fields["id"]] = fields
            self._writer.add_track(track_spec(fields))

    def _break(self) -> None:
        assert self._writer is not None
        self._cut(self._writer.discontinuity())
        self._last_pts.clear()

    def _media(
        self, seq: int, track: int, pts: int, dts: int, key: bool, arrival: float, data: bytes
    ) -> None:
        assert self._writer is not None
        last = self._last_pts.get(track)
        if last is not None and (
            pts - last > self.params.gap_s * US or last - pts > CLOCK_RESTART_US
        ):
            # the client was away (do not record the hole), or its clock began again (a new
            # publisher process): a new discontinuity, rather than frames dropped as late
            self._break()
        self._last_pts[track] = pts
        self._cut(self._writer.write(track, data, pts, keyframe=key, dts_us=dts, arrival=arrival))

    def _cut(self, done: list[SegmentInfo]) -> None:
        """Mark in the WAL where the next segment starts, with the tracks it needs to replay."""
        if not done:
            return
        wal_file = self._wal.append([self.session_id, CUT, done[-1].index + 1])
        for fields in self._tracks.values():
            self._wal.append([self.session_id, TRACK, fields])
        self._cuts.extend((seg, wal_file) for seg in done)
