"""The writing half of a session recorder: WAL appends and HLS muxing, run in a writer lane.

A ``SessionWriter`` lives in a lane process (``ingest.lanes``) beside the lane's WAL; the
``SessionRecorder`` in the server process queues frames, ships them here in ticks and gets back
an ``Outcome`` per tick: the highest sequence now safe (once the lane has fsync'd its WAL), the
segments that closed, and a media error to tell the client about. Everything that crosses the
pipe is plain data (dataclasses of ints, strings, paths), so it pickles cheaply and safely.

WAL first: a tick only appends its frames to the WAL (``process``); they are acknowledged once
the lane's fsync returns, and written into HLS later, in batches (``write_backlog``, when the
lane has a moment: ``ingest.lanes``). A segment that closes in such a batch, or a frame that
turns out not to decode, is reported with the session's next outcome. Control items (a track,
a pause, a resume) act in order: the frames before them are written first.

A cut's WAL record names the first frame of the new segment (``from_seq``) and the tracks it
needs, since that frame may have been logged before the cut was known; a replay starts there
(``replay_from``).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from mixer.errors import MediaError
from mixer.hls import HlsWriter, SegmentInfo, WebmPoint
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.webm import WebmDemuxer

from .errors import CloseCode
from .wal import BREAK, CUT, MEDIA, PRIME, SKIM, TRACK, WEBM, Wal

log = logging.getLogger(__name__)

US = 1_000_000
SEGMENT_NAME = "index"
KEEP_DIR = "keep"  # hard links of closed segments, for the MP4 built at END
SKIPPED = "its writer crashed on this frame: dropped, not recorded"

# a `webm` track's chunks kept to find where a point's cluster begins (``_webm_points``)
MAX_WEBM_CHUNKS = 1 << 16  # (18 h of 1 s chunks with no keyframe)
Cut = tuple[SegmentInfo, int]  # a closed segment and the WAL file its successor starts in
# told (session id, sequence, payload) before each frame is written into HLS, so that a lane
# dying in a codec can name the frame (``ingest.lanes``)
Mark = Callable[[str, int, bytes], None]


def _unmarked(sid: str, seq: int, data: bytes) -> None:
    return None


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
    # frames its lane died writing, twice: the replay drops them (acknowledged, not recorded)
    skip: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Opened:
    """A writer's state after opening: segments closed while replaying the WAL, the highest
    sequence the replay holds, the tracks it knows and the WAL file it needs from."""

    cuts: list[Cut]
    acked_seq: int
    tracks: dict[int, dict[str, Any]]
    wal_from: int
    refused: tuple[int, str] | None = None  # (close code, reason): a frame the replay dropped


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
    """The records of the open segment (one session's, in WAL order), led by the tracks it
    needs: from the last cut at or before segment ``next_index`` on. A cut made while a batch
    of logged frames was written (``from_seq`` set) starts at that frame's record, which came
    before the cut's own; one made in order (``from_seq`` 0, and the older three-item records
    that TRACK records follow) starts right after the cut's record."""
    start, from_seq, tracks, extra = 0, 0, list[Any](), dict[str, Any]()
    for i, rec in enumerate(records):
        if rec[1] == CUT and rec[2] <= next_index:
            start = i + 1
            from_seq = rec[3] if len(rec) > 3 else 0
            tracks = rec[4] if len(rec) > 4 else []
            extra = rec[5] if len(rec) > 5 else {}
    if from_seq:
        start = next(
            (i for i, rec in enumerate(records) if rec[1] == MEDIA and rec[2] >= from_seq), start
        )
    leading = [[rec[0], TRACK, fields] for rec in records[:1] for fields in tracks]
    leading += [[rec[0], WEBM, *point] for rec in records[:1] for point in extra.get("webm", [])]
    held_from, held = extra.get("held", (0, []))
    priming = {track: (first, end) for track, first, end in extra.get("prime", [])}

    def primes(rec: list[Any]) -> bool:  # (a paused `webm` chunk is replayed as it was)
        span = priming.get(rec[3]) if rec[1] in (MEDIA, SKIM) else None
        return span is not None and span[0] <= rec[2] < span[1]

    # before the cut's frame: a late track's frames held for this segment (written), and a
    # transcoded track's frames from its last input keyframe on (only decoded: ``PRIME``)
    early = [
        rec
        for rec in records[:start]
        if primes(rec) or (rec[1] == MEDIA and rec[3] in held and rec[2] >= held_from)
    ]
    return [
        [rec[0], PRIME, *rec[2:]] if rec[1] == MEDIA and primes(rec) else rec
        for rec in [*leading, *early, *records[start:]]
    ]


def _segment_index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


class SessionWriter:
    """Writes one session's frames to HLS and its lane's WAL (blocking; one lane's thread)."""

    def __init__(self, params: WriterParams, wal: Wal, mark: Mark = _unmarked) -> None:
        self.params = params
        self.session_id = params.session_id
        self._wal = wal
        self._mark = mark
        self.paused = params.paused
        self._tracks: dict[int, dict[str, Any]] = {}
        self._last_pts: dict[int, int] = {}
        self._writer: HlsWriter | None = None
        # frames logged and acknowledged, not yet written: (the WAL file of each, its item)
        self._backlog: list[tuple[int, tuple[Any, ...]]] = []
        self.backlog_since: float | None = None  # monotonic time the oldest of them came
        self.backlog_bytes = 0
        # what the next outcome reports: segments closed, the first frame refused
        self._cuts: list[Cut] = []
        self._error: tuple[int, str] | None = None
        # frames of a track added mid-segment, held for the next segment (``HlsWriter.held``):
        # the first one's sequence and WAL file, and the tracks held. They come before the
        # frame that cuts that segment, so its CUT record names them too (``replay_from``).
        self._held: tuple[int, int | None, set[int]] | None = None
        # each transcoded video track's last input keyframe (sequence, WAL file): a segment
        # that begins past it replays from it (``HlsWriter.prime``)
        self._keys: dict[int, tuple[int, int | None]] = {}
        # each `webm` track's chunks from the one its open segment is demuxed again from
        # (``HlsWriter.webm_point``) on: (sequence, WAL file, stream offset of its data)
        self._webm: dict[int, list[tuple[int, int | None, int]]] = {}
        self._logged = 0  # the highest sequence logged
        self._webm_lost: set[int] = set()  # tracks told their resume point was lost

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
        # written again below, and a replay of this replay must prime from them again
        spans: dict[int, list[int]] = {}
        for rec in replaying:
            if rec[1] == PRIME:
                span = spans.setdefault(rec[3], [rec[2], rec[2] + 1])
                span[1] = rec[2] + 1
        # (and a `webm` track's stream is demuxed again from the same place)
        resumes = {rec[2]: rec[2:] for rec in replaying if rec[1] == WEBM}
        extra: dict[str, Any] = {}
        if spans:
            extra["prime"] = [[t, first, end] for t, (first, end) in spans.items()]
        if resumes:
            extra["webm"] = list(resumes.values())
        wal_from = self._wal.append([sid, CUT, p.next_index, 0, [], *([extra] if extra else [])])
        self._cuts = []
        acked = p.acked_seq
        last_seq = 0
        for rec in replaying:  # written again: the old WAL files go once recovery is done
            tag = rec[1]
            if tag == TRACK:
                self._add_track(rec[2])
            elif tag == BREAK:
                self._break()
            elif tag in (PRIME, MEDIA, SKIM) and rec[3] in self._webm and rec[2] > last_seq:
                # a `webm` chunk: demuxed from the resume point on, and written from the
                # segment's first packet on (``HlsWriter.resume_webm``); or skimmed (paused)
                last_seq = seq = rec[2]
                if tag != PRIME:
                    acked = max(acked, seq)
                if seq in p.skip:  # (as any frame; a hole in its stream, too)
                    if tag == MEDIA:
                        self._refuse(seq, SKIPPED)
                    self._webm_hole(resumes, rec[3], seq, len(rec[8]))
                    continue
                rec = [sid, SKIM if tag == SKIM else MEDIA, *rec[2:]]
                skip = self._resume_webm(resumes, rec[3], seq, rec[8])
                if skip is not None:
                    self._mark(sid, seq, rec[8])
                    try:
                        self._media(*rec[2:], skip=skip, skim=tag == SKIM)
                    except MediaError as exc:
                        log.warning("replay: seq %d: %s", seq, exc, extra={"session_id": sid})
            elif tag == PRIME and rec[2] > last_seq:
                last_seq = rec[2]
                rec = [sid, MEDIA, *rec[2:]]  # (logged again as it came)
                if rec[2] not in p.skip:
                    self._mark(sid, rec[2], rec[8])
                    try:
                        self._writer.prime(rec[3], rec[8], rec[6])
                    except MediaError as exc:
                        log.warning("replay: seq %d: %s", rec[2], exc, extra={"session_id": sid})
            elif tag == MEDIA and rec[2] > last_seq:
                last_seq = seq = rec[2]
                acked = max(acked, seq)
                if seq in p.skip:
                    self._refuse(seq, SKIPPED)
                    continue
                self._mark(sid, seq, rec[8])
                try:
                    self._media(*rec[2:])
                except MediaError as exc:  # one bad frame must not keep the session down
                    log.warning("replay: seq %d: %s", seq, exc, extra={"session_id": sid})
                    continue
            else:
                continue  # cuts (the writer makes its own) and resent duplicates
            self._wal.append(rec)
            if rec[1] in (MEDIA, SKIM):
                self._logged = max(self._logged, rec[2])
        cuts, self._cuts = self._cuts, []
        refused, self._error = self._error, None
        return Opened(cuts, acked, dict(self._tracks), wal_from, refused)

    def process(self, batch: list[tuple[Any, ...]]) -> Outcome:
        """Append a batch to the WAL (the lane fsyncs it after the tick); its frames join the
        backlog, written later (``write_backlog``), and control items act in order."""
        acked = 0
        recut: int | None = None
        first_arrival: float | None = None
        wal, sid = self._wal, self.session_id
        for item in batch:
            kind = item[0]
            if kind == "media":
                acked = item[1]
                if first_arrival is None:
                    first_arrival = item[6]
                tag = MEDIA
                if self.paused:
                    if item[2] not in self._webm:
                        continue
                    # a `webm` chunk: its stream goes on, demuxed and not recorded
                    tag, item = SKIM, ("skim", *item[1:])
                if not self._backlog:
                    self.backlog_since = time.monotonic()
                self._backlog.append((wal.append([sid, tag, *item[1:]]), item))
                self._logged = item[1]
                self.backlog_bytes += len(item[7])
                continue
            elif kind == "skip":  # its lane died writing this frame: acknowledged, dropped
                acked = item[1]
                self._refuse(acked, SKIPPED)  # (a `webm` chunk's hole: the demuxer reads past)
                continue
            self.write_backlog()  # what follows acts after the frames before it ("flush":
            # only that, for END and a server stop: their segments are reported in order)
            if kind == "track":
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
                recut = self._log_cut(self._writer.next_index, 0, None, prime=False)
        return self._outcome(acked, recut, first_arrival)

    def write_backlog(self) -> None:
        """Write the frames logged so far into HLS. One that does not decode is dropped (it
        was acknowledged: a resend cannot loop) and the client is told with the next outcome."""
        if not self._backlog:
            return
        backlog, self._backlog = self._backlog, []
        self.backlog_since, self.backlog_bytes = None, 0
        mark, sid = self._mark, self.session_id
        for wal_file, (kind, seq, track, pts, dts, key, arrival, data) in backlog:
            mark(sid, seq, data)
            try:
                self._media(seq, track, pts, dts, key, arrival, data, wal_file, skim=kind == "skim")
            except MediaError as exc:
                self._refuse(seq, str(exc))

    def _refuse(self, seq: int, reason: str) -> None:
        """A frame acknowledged and not recorded: the next outcome tells the client (the
        first such frame of the outcome)."""
        log.warning("seq %d: %s", seq, reason, extra={"session_id": self.session_id})
        self._error = self._error or (int(CloseCode.INVALID_MEDIA), f"seq {seq}: {reason}")

    def news(self) -> Outcome | None:
        """What the next outcome would report besides acknowledgements, taken now (None: no
        segment closed, no frame refused)."""
        if not self._cuts and self._error is None:
            return None
        return self._outcome(0, None, None)

    def _outcome(self, acked: int, recut: int | None, first_arrival: float | None) -> Outcome:
        cuts, self._cuts = self._cuts, []
        error, self._error = self._error, None
        return Outcome(acked, cuts, error, recut, first_arrival)

    def finish(self) -> list[Cut]:
        """END: write the backlog and close the last segment; every closed segment not yet
        reported."""
        assert self._writer is not None
        self.write_backlog()
        self._cut(self._writer.finish())
        cuts, self._cuts = self._cuts, []
        return cuts

    def close(self) -> None:
        """Release the open segment's files without closing it: the WAL rebuilds it."""
        if self._writer is not None:
            self._writer.finish()

    def _add_track(self, fields: dict[str, Any]) -> None:
        assert self._writer is not None
        if fields["id"] not in self._tracks:  # a replay may repeat announcements
            self._tracks[fields["id"]] = fields
            self._writer.add_track(track_spec(fields))
            if fields["codec"] == Codec.WEBM:
                self._webm.setdefault(fields["id"], [])

    def _webm_points(self) -> list[list[Any]]:
        """Where each `webm` track's open segment is demuxed again from, as a CUT record
        names it; a track's chunks before that one are forgotten, and its frames from that
        one on are the "prime" span before the segment's first frame (``_keys``)."""
        assert self._writer is not None
        points = []
        for track, chunks in self._webm.items():
            point = self._writer.webm_point(track)
            at = bisect_right(chunks, point.cluster, key=itemgetter(2)) - 1 if point else -1
            if point is None or at < 0:
                if chunks and chunks[0][2] == 0:  # (a stream begun, its header not all in:
                    self._keys[track] = chunks[0][:2]  # a replay reads it from its start)
                else:
                    self._keys.pop(track, None)
                continue
            del chunks[:at]
            seq, wal_file, start = chunks[0]
            self._keys[track] = (seq, wal_file)
            points.append(
                [track, point.header, point.base_us, point.cluster, point.first, seq,
                 point.cluster - start]
            )  # fmt: skip
        return points

    def _break(self, from_seq: int = 0, wal_file: int | None = None) -> None:
        assert self._writer is not None
        # (no priming: after a discontinuity the writer waits for an input keyframe anyway)
        self._cut(self._writer.discontinuity(), from_seq, wal_file, prime=False)
        self._last_pts.clear()

    def _webm_hole(self, resumes: dict[int, list[Any]], track: int, seq: int, size: int) -> None:
        """A `webm` chunk its lane died on twice is left out of the replay. Its stream goes
        on after the hole: the demuxer reads past it (libavformat resyncs on the next
        element it knows); one that was to be resumed in that chunk is resumed in the next,
        behind the stream's header, from the next cluster."""
        resume = resumes.get(track)
        if resume is not None and resume[5] == seq:
            _, header, base_us, cluster, first, _, offset = resume
            resumes[track] = [track, header, base_us, cluster - offset + size, first, -1, 0]

    def _resume_webm(
        self, resumes: dict[int, list[Any]], track: int, seq: int, data: bytes
    ) -> int | None:
        """A replayed chunk of a `webm` track: the bytes of its data before its resume
        point's cluster (the point's own chunk: the stream is resumed there), 0 (the chunks
        after it, or a track with no point), or None (one before it: not written)."""
        if track not in resumes:
            return 0
        _, header, base_us, cluster, first, point_seq, offset = resumes[track]
        assert self._writer is not None
        if seq < point_seq:
            return None
        del resumes[track]
        if seq > point_seq >= 0:  # its chunk is not in the log (a new stream needs none)
            if not WebmDemuxer.starts_stream(data):
                log.warning("replay: the WebM stream of track %d cannot be resumed", track,
                            extra={"session_id": self.session_id})  # fmt: skip
            return 0
        self._writer.resume_webm(track, WebmPoint(header, base_us, cluster, first))
        return int(offset)

    def _media(
        self,
        seq: int,
        track: int,
        pts: int,
        dts: int,
        key: bool,
        arrival: float,
        data: bytes,
        wal_file: int | None = None,
        *,
        skip: int = 0,
        skim: bool = False,
    ) -> None:
        """Write one frame; ``wal_file``: the WAL file its record went to, when it was logged
        before (a backlog's frame: a segment it starts starts there). ``skip``: the bytes of
        a replayed `webm` chunk before its resume point; ``skim``: a `webm` chunk sent while
        paused (demuxed, its video decoded, nothing written)."""
        assert self._writer is not None
        if skim:
            self._skim(seq, track, pts, data, wal_file, skip)
            return
        last = self._last_pts.get(track)
        if last is not None and (
            pts - last > self.params.gap_s * US or last - pts > CLOCK_RESTART_US
        ):
            # the client was away (do not record the hole), or its clock began again (a new
            # publisher process): a new discontinuity, rather than frames dropped as late
            self._break(seq, wal_file)
        self._last_pts[track] = pts
        writer = self._writer
        held_before = writer.held
        chunks = self._webm.get(track)
        if chunks is not None:
            start = self._chunk_start(track, chunks, data, skip)
            data = data[skip:] if skip else data
        try:
            done = writer.write(track, data, pts, keyframe=key, dts_us=dts, arrival=arrival)
        finally:  # (a chunk that did not decode was read all the same: its bytes count)
            if chunks is not None:
                self._chunk_fed(track, seq, wal_file, start)
        if key and writer.transcodes(track):
            self._keys[track] = (seq, self._logged_in(wal_file))
        self._cut(done, seq, wal_file)
        if writer.held > (0 if done else held_before):  # this frame's packets wait too
            if self._held is None:
                self._held = (seq, wal_file, {track})
            else:
                self._held[2].add(track)

    def _skim(
        self, seq: int, track: int, pts: int, data: bytes, wal_file: int | None, skip: int
    ) -> None:
        assert self._writer is not None
        chunks = self._webm[track]
        start = self._chunk_start(track, chunks, data, skip)
        try:
            self._writer.skim(track, data[skip:] if skip else data, pts)
        finally:
            self._chunk_fed(track, seq, wal_file, start)

    def _chunk_start(
        self, track: int, chunks: list[tuple[int, int | None, int]], data: bytes, skip: int
    ) -> int:
        """The stream offset a `webm` chunk's data begins at (a new stream: 0)."""
        assert self._writer is not None
        if not skip and WebmDemuxer.starts_stream(data):
            chunks.clear()
            return 0
        return self._writer.webm_fed(track) - skip

    def _logged_in(self, wal_file: int | None) -> int:
        """The WAL file a frame's record is in: ``wal_file``, or for a replayed frame (logged
        again after it is written) the current one. A cut that needs the frame keeps it."""
        return self._wal.index if wal_file is None else wal_file

    def _chunk_fed(self, track: int, seq: int, wal_file: int | None, start: int) -> None:
        chunks = self._webm[track]
        chunks.append((seq, self._logged_in(wal_file), start))
        if len(chunks) > MAX_WEBM_CHUNKS:  # no keyframe for that long: the point is lost
            del chunks[0]
            if track not in self._webm_lost:
                self._webm_lost.add(track)
                log.warning(
                    "track %d: no video keyframe in %d WebM chunks: a crash would lose its "
                    "open segment", track, MAX_WEBM_CHUNKS, extra={"session_id": self.session_id},
                )  # fmt: skip
        self._webm_points()  # (forgets the chunks no point needs)

    def _track_list(self) -> list[dict[str, Any]]:
        return list(self._tracks.values())

    def _cut(
        self,
        done: list[SegmentInfo],
        from_seq: int = 0,
        wal_file: int | None = None,
        *,
        prime: bool = True,
    ) -> None:
        """Mark in the WAL where the next segment starts (at frame ``from_seq``, logged in
        ``wal_file``; 0: at the next frame logged), with the tracks it needs to replay, the
        frames held for it, and (``prime``) those a transcoded track's decoder needs first."""
        if done:
            start = self._log_cut(done[-1].index + 1, from_seq, wal_file, prime=prime)
            self._cuts.extend((seg, start) for seg in done)

    def _log_cut(
        self, index: int, from_seq: int, wal_file: int | None, *, prime: bool = True
    ) -> int:
        """Log the CUT record of segment ``index`` (``_cut``); returns the oldest WAL file
        its replay needs."""
        first = from_seq  # the segment's first frame (0: unknown, the next one logged)
        if wal_file is None:
            from_seq = 0
        extra: dict[str, Any] = {}
        files = [wal_file]
        if webm := self._webm_points():
            extra["webm"] = webm
        held, self._held = self._held, None
        if held is not None:  # (they go into the segment this cut opens)
            extra["held"] = [held[0], sorted(held[2])]
            files.append(held[1])
        # a transcoded track whose last input keyframe came before the segment's first frame,
        # and a `webm` track's chunks from its resume point on, whatever the cut (up to the
        # next one logged: ``_webm_points``)
        primes = []
        for track, (seq, key_file) in self._keys.items():
            end = (first or self._logged + 1) if track in self._webm else first if prime else 0
            if seq < end:
                primes.append([track, seq, end])
                files.append(key_file)
        if primes:
            extra["prime"] = primes
        record = [self.session_id, CUT, index, from_seq, self._track_list()]
        cut_file = self._wal.append([*record, extra] if extra else record)
        return min(f for f in [cut_file, *files] if f is not None)
