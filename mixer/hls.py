"""HLS writer: the facade that turns client frames into MPEG-TS segments and a media playlist."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av

from mixer.errors import InvalidMedia, MediaError
from mixer.playlist import Playlist, PlaylistSegment
from mixer.segmenter import (
    DEFAULT_SEGMENT_TARGET_S,
    SegmentInfo,
    StreamSlot,
    TsSegment,
)
from mixer.throttle import LogThrottle
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.transcode import (
    AAC_CODER,
    KEYFRAME_SLACK_TICKS,
    TICKS_PER_S,
    AudioTranscoder,
    Normaliser,
    OpusPassthrough,
    VideoTranscoder,
    create_normaliser,
)
from mixer.webm import WebmDemuxer, WebmPacket
from storage.durable import write_atomic

log = logging.getLogger(__name__)

US_PER_S = 1_000_000
# A frame may step back this far (jitter, rounding in the client) and is nudged forward; a
# larger step back is dropped.
BACKWARDS_TOLERANCE_US = 5_000
# A frame that lands this far before the start of the timeline (a late track's backlog) is
# dropped rather than written before the first segment.
EARLY_TOLERANCE_TICKS = TICKS_PER_S // 2
DEFAULT_FRAME_TICKS = TICKS_PER_S // 30  # Video frame length until two frames are seen.
# Packets of a track added while a segment is open wait for the next segment; this bounds them.
MAX_PENDING_PACKETS = 2_000


@dataclass(slots=True)
class _Track:
    """State of one input stream (a `webm` track has one per demuxed kind)."""

    kind: Kind
    slot: int
    normaliser: Normaliser | None
    need_keyframe: bool = True
    last_dts_us: int | None = None
    webm: WebmDemuxer | None = None
    webm_base_us: int = 0
    subs: dict[Kind, _Track] = field(default_factory=dict)
    # a `webm` track's place in its stream (offsets in bytes): the last packet taken, the
    # last video keyframe, packets below ``prime_below`` only decoded (a resumed stream), the
    # open segment's first packet and keyframe, and a stream to resume at the next chunk
    last_pos: int = -1
    key_pos: int | None = None
    prime_below: int = 0
    seg_from: int = 0
    seg_key: int | None = None
    lost_pos: bool = False  # a packet came without its offset: no resume point
    resume: WebmPoint | None = None


@dataclass(frozen=True, slots=True)
class WebmPoint:
    """Where a `webm` track's open segment can be demuxed again from: the stream's header,
    its time base, the cluster to start at and the first packet of the segment (those before
    it are only decoded). ``HlsWriter.webm_point`` gives it; ``resume_webm`` takes it."""

    header: bytes
    base_us: int
    cluster: int
    first: int


def _us_to_ticks(us: int) -> int:
    return (us * 9 + 50) // 100  # 90 kHz ticks = µs * 9 / 100, rounded.


class HlsWriter:
    """Writes one session's tracks as HLS: `.ts` segments cut on keyframes plus a playlist.

    Synchronous and not thread-safe: one writer per session, called from one worker thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        target_segment_s: float = DEFAULT_SEGMENT_TARGET_S,
        name: str = "index",
        start_index: int = 0,
        start_s: float = 0.0,
        discontinuity_first: bool = False,
        durable: bool = True,
        utc_names: bool = False,
        aac_coder: str = AAC_CODER,
    ) -> None:
        """``durable=False``: the caller keeps the frames safe elsewhere (a write-ahead log) and
        its own playlist, so segments are not fsync'd and no playlist file is written.
        ``aac_coder``: FFmpeg's coder for Opus transcoded to AAC (``AAC_CODERS``)."""
        if target_segment_s <= 0:
            raise ValueError("target_segment_s must be positive")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._drop_log = LogThrottle()  # (a client sending frames out of time sends many)
        self._durable = durable
        self._utc_names = utc_names
        self._aac_coder = aac_coder
        self._name = name
        self._target_s = target_segment_s
        self._target_ticks = round(target_segment_s * TICKS_PER_S)
        self._index = start_index
        self._start_ticks = round(start_s * TICKS_PER_S)
        self._playlist_path = self._dir / f"{name}.m3u8"
        self._playlist = Playlist()
        if start_index > 0 and self._playlist_path.exists():
            # A restart continues the playlist that the previous writer left.
            self._playlist = Playlist.parse(self._playlist_path.read_text())
            self._playlist.ended = False
        self._tracks: dict[int, _Track] = {}
        self._slots: list[StreamSlot] = []
        self._frame_ticks: list[int] = []
        self._last_pts: list[int | None] = []
        self._lead_slot: int | None = None  # The video stream whose keyframes cut segments.
        self._offset_us: int | None = None  # Session-wide input µs minus output µs.
        self._resume_ticks = self._start_ticks
        self._end_ticks = self._start_ticks
        self._segment: TsSegment | None = None
        # continuity counters go on from segment to segment; a writer's first segment starts
        # them at 0, with the discontinuity indicator set when it restarts a playlist
        self._counters: dict[int, int] = {}
        self._seg_start = 0
        self._seg_date = datetime.now(UTC)
        # a segment that goes on from the one before starts when that one ended, on the media's
        # clock (as the playlist, which dates only discontinuities, says): not when its first
        # packet arrived, which after a reconnect's resend is seconds late
        self._next_date: datetime | None = None
        self._seg_discontinuity = discontinuity_first
        self._slots_before: int | None = None  # the streams of the segment before
        self._next_discontinuity = discontinuity_first
        self._pending: list[tuple[int, av.Packet, float | None]] = []
        self._cut_asap = False
        self._finished = False

    @property
    def playlist(self) -> Playlist:
        """The playlist of segments finished so far."""
        return self._playlist

    @property
    def idle(self) -> bool:
        """No segment is open and no packet waits for one (e.g. paused, or nothing sent yet)."""
        return self._segment is None and not self._pending

    @property
    def next_index(self) -> int:
        """The index the next segment will have."""
        return self._index

    def transcodes(self, track_id: int) -> bool:
        """The track's video is decoded and encoded again: a segment may begin past an input
        keyframe (one forced when the input's are far apart), and decoding its first frame
        again needs the frames from that keyframe on (``prime``)."""
        track = self._tracks.get(track_id)
        return track is not None and isinstance(track.normaliser, VideoTranscoder)

    def webm_fed(self, track_id: int) -> int:
        """The stream offset the next chunk of a `webm` track goes on from (unless it begins a
        new stream)."""
        track = self._tracks[track_id]
        assert track.webm is not None
        return track.webm.scanner.fed if track.resume is None else track.resume.cluster

    def webm_point(self, track_id: int) -> WebmPoint | None:
        """Where the open segment of a `webm` track can be demuxed again from; None when the
        stream cannot be resumed (no header yet, or a stream the scanner cannot follow). The
        stream's clusters before that point are forgotten."""
        track = self._tracks[track_id]
        assert track.webm is not None
        scanner = track.webm.scanner
        if scanner.header is None or scanner.broken or track.lost_pos:
            return None
        key = track.seg_key if track.seg_key is not None else track.seg_from
        cluster = scanner.cluster_at(min(key, track.seg_from))
        if cluster is None and scanner.clusters and track.seg_from < scanner.clusters[0]:
            cluster = scanner.clusters[0]  # a stream begun since: from its first cluster
        if cluster is None:
            return None
        scanner.forget_before(cluster)
        return WebmPoint(scanner.header, track.webm_base_us, cluster, track.seg_from)

    def resume_webm(self, track_id: int, point: WebmPoint) -> None:
        """Demux the next chunk of a `webm` track as the stream's bytes from ``point.cluster``
        on (a writer started again on its log): packets before ``point.first`` are only
        decoded, the ones after it written."""
        track = self._tracks[track_id]
        assert track.webm is not None
        track.resume = point

    def skim(self, track_id: int, data: bytes, pts_us: int) -> None:
        """A chunk of a `webm` track sent while paused: demuxed (the chunks after it go on
        from it), its video decoded (the frames after the pause decode at once), nothing
        written."""
        track = self._tracks.get(track_id)
        if track is None or track.webm is None:
            raise InvalidMedia(f"track {track_id} is not a webm track")
        self._write_webm(track, data, pts_us, None, skim=True)

    def prime(self, track_id: int, data: bytes, keyframe: bool) -> None:
        """Feed a frame to a transcoded track's decoder only: nothing is written, and the
        frames after it decode (from an input keyframe on)."""
        track = self._tracks.get(track_id)
        if track is None:
            raise InvalidMedia(f"track {track_id} was not added")
        self._prime(track, data, keyframe)

    def _prime(self, track: _Track, data: bytes, keyframe: bool) -> None:
        if not isinstance(track.normaliser, VideoTranscoder):
            return
        if track.need_keyframe and not keyframe:
            return  # (nothing to decode it from)
        try:
            track.normaliser.prime(data)
        except MediaError:
            track.need_keyframe = True
            raise
        track.need_keyframe = False

    @property
    def held(self) -> int:
        """Packets of a track added after the open segment began, waiting for the next one
        (they go into it when it opens, before the frame that cuts it)."""
        return len(self._pending)

    @property
    def duration_s(self) -> float:
        """Media time this writer has written (finished segments and the open one)."""
        return (self._end_ticks - self._start_ticks) / TICKS_PER_S

    def _fit_webm_slots(self, track: _Track, kinds: frozenset[Kind]) -> None:
        """A `webm` track has a stream of each kind from when it is added (a segment opened
        by another track then has them); once its header says which it has, a kind it does
        not have is dropped if nothing has been written yet (an audio-only stream: no empty
        video stream), and one it has and was dropped comes back (late: the next segment)."""
        for kind in (Kind.VIDEO, Kind.AUDIO):
            sub = track.subs.get(kind)
            if kind in kinds and sub is None:
                track.subs[kind] = _Track(kind, self._new_slot(StreamSlot(kind)), None)
            elif kinds and kind not in kinds and sub is not None and self._untouched():
                del track.subs[kind]
                self._drop_slot(sub.slot)

    def _untouched(self) -> bool:
        """No packet was ever written (so no segment opened, none held): the slots may still
        change."""
        return all(last is None for last in self._last_pts)

    def _drop_slot(self, index: int) -> None:
        for slots in (self._slots, self._frame_ticks, self._last_pts):
            del slots[index]
        for track in self._tracks.values():
            for t in (track, *track.subs.values()):
                if t.slot > index:
                    t.slot -= 1

    def _new_slot(self, slot: StreamSlot) -> int:
        self._slots.append(slot)
        self._frame_ticks.append(DEFAULT_FRAME_TICKS)
        self._last_pts.append(None)
        return len(self._slots) - 1

    def add_track(self, spec: TrackSpec) -> None:
        """Register an input track; allowed before or after the first write."""
        if spec.track_id in self._tracks:
            raise InvalidMedia(f"track {spec.track_id} is already added")
        if spec.codec is Codec.WEBM:  # (both kinds, until its header says which it has)
            track = _Track(Kind.VIDEO, -1, None, webm=WebmDemuxer())
            for kind in (Kind.VIDEO, Kind.AUDIO):
                track.subs[kind] = _Track(kind, self._new_slot(StreamSlot(kind)), None)
        else:
            normaliser = create_normaliser(spec, self._target_s, self._aac_coder)
            slot = StreamSlot(spec.kind, spec.width, spec.height, spec.sample_rate)
            if spec.kind is Kind.AUDIO and isinstance(normaliser, AudioTranscoder):
                slot = StreamSlot(Kind.AUDIO)
            elif isinstance(normaliser, OpusPassthrough):
                slot = StreamSlot(Kind.AUDIO, codec=str(Codec.OPUS))
            track = _Track(spec.kind, self._new_slot(slot), normaliser)
        self._tracks[spec.track_id] = track

    def write(
        self,
        track_id: int,
        data: bytes,
        pts_us: int,
        *,
        keyframe: bool,
        dts_us: int | None = None,
        arrival: float | None = None,
    ) -> list[SegmentInfo]:
        """Write one frame; return the segments it finished (closed; fsync'd when durable)."""
        if self._finished:
            raise RuntimeError("the writer is finished")
        track = self._tracks.get(track_id)
        if track is None:
            raise InvalidMedia(f"track {track_id} was not added")
        if track.webm is None:
            return self._write_frame(track, data, pts_us, dts_us, keyframe, arrival)
        return self._write_webm(track, data, pts_us, arrival)

    def _write_webm(
        self, track: _Track, data: bytes, pts_us: int, arrival: float | None, *, skim: bool = False
    ) -> list[SegmentInfo]:
        assert track.webm is not None  # narrowed for mypy.
        point, track.resume = track.resume, None
        if point is not None:
            track.webm_base_us, track.prime_below = point.base_us, point.first
            track.last_pos, track.key_pos, track.lost_pos = point.first - 1, None, False
            track.seg_from, track.seg_key = point.first, point.cluster
            packets = track.webm.resume(point.header, point.cluster, data)
        else:
            if WebmDemuxer.starts_stream(data):
                # WebM times start at 0 with each recorder; the chunk's own time anchors them.
                track.webm_base_us = pts_us
                track.last_pos, track.key_pos, track.prime_below = -1, None, 0
                track.seg_from, track.seg_key, track.lost_pos = 0, None, False
            packets = track.webm.feed(data)
        return self._write_webm_packets(track, packets, arrival, strict=True, skim=skim)

    def _write_webm_packets(
        self,
        track: _Track,
        packets: list[WebmPacket],
        arrival: float | None,
        *,
        strict: bool,
        skim: bool = False,
    ) -> list[SegmentInfo]:
        assert track.webm is not None  # narrowed for mypy.
        self._fit_webm_slots(track, track.webm.kinds)
        finished: list[SegmentInfo] = []
        for packet in packets:
            sub = track.subs.get(packet.kind)
            if sub is None:  # (not announced: a header the demuxer read past)
                sub = track.subs[packet.kind] = _Track(
                    packet.kind, self._new_slot(StreamSlot(packet.kind)), None
                )
            if sub.normaliser is None:
                spec = TrackSpec(-1, packet.kind, packet.codec, channels=packet.channels)
                sub.normaliser = create_normaliser(spec, self._target_s, self._aac_coder)
            pos = packet.pos
            if pos is None:
                track.lost_pos = True
            elif packet.kind is Kind.VIDEO and packet.keyframe:
                track.key_pos = pos
            try:
                # (skimmed, or written before the restart)
                if skim or (pos is not None and pos < track.prime_below):
                    if packet.kind is Kind.VIDEO:
                        self._prime(sub, packet.data, packet.keyframe)
                else:
                    pts = track.webm_base_us + packet.pts_us
                    finished += self._write_frame(
                        sub, packet.data, pts, None, packet.keyframe, arrival
                    )
            except MediaError as exc:
                if strict:
                    raise
                log.warning("dropped a bad frame at the end of a WebM stream: %s", exc)
            if pos is not None:
                track.last_pos = pos
        return finished

    def _write_frame(
        self,
        track: _Track,
        data: bytes,
        pts_us: int,
        dts_us: int | None,
        keyframe: bool,
        arrival: float | None,
    ) -> list[SegmentInfo]:
        if not data:
            raise InvalidMedia("empty frame")
        video = track.kind is Kind.VIDEO
        if video and track.need_keyframe and not keyframe:
            return []  # Undecodable without the keyframe it refers to.
        dts = pts_us if dts_us is None else dts_us
        if track.last_dts_us is not None and dts < track.last_dts_us:
            if track.last_dts_us - dts > BACKWARDS_TOLERANCE_US:
                if (held := self._drop_log.allow("back")) is not None:
                    log.warning(
                        "dropped a frame %d µs back in time (and %d since the last warning)",
                        track.last_dts_us - dts, held,
                    )  # fmt: skip
                return []
        if self._offset_us is None:
            # One offset for all tracks keeps A/V sync; after a pause the timeline resumes
            # right where it stopped.
            self._offset_us = dts - self._resume_ticks * 100 // 9
        dts_t = _us_to_ticks(dts - self._offset_us)
        if dts_t < self._resume_ticks - EARLY_TOLERANCE_TICKS:
            if (held := self._drop_log.allow("early")) is not None:
                log.warning(
                    "dropped a frame %d ticks before the timeline start (and %d since the "
                    "last warning)", dts_t, held,
                )  # fmt: skip
            return []
        pts_t = _us_to_ticks(pts_us - self._offset_us)
        assert track.normaliser is not None  # set for every non-webm track.
        try:
            packets = track.normaliser.push(data, pts_t, dts_t, keyframe)
        except MediaError:
            if video:
                track.need_keyframe = True  # A decoder may be confused until the next one.
            raise
        track.last_dts_us = max(dts, track.last_dts_us or dts)
        if video:
            track.need_keyframe = False
        finished: list[SegmentInfo] = []
        for packet in packets:
            finished += self._emit(track.slot, packet, arrival)
        return finished

    def _emit(self, slot: int, packet: av.Packet, arrival: float | None) -> list[SegmentInfo]:
        pts = packet.pts if packet.pts is not None else 0
        dts = packet.dts if packet.dts is not None else pts
        last = self._last_pts[slot]
        kind = self._slots[slot].kind
        if kind is Kind.VIDEO:
            if last is not None and pts > last:
                self._frame_ticks[slot] = pts - last
            if self._lead_slot is None:
                self._lead_slot = slot
        if last is not None and dts <= last and kind is Kind.AUDIO:
            dts = pts = last + 1  # Nudged within tolerance: the muxer needs rising times.
            packet.pts = packet.dts = pts
        self._last_pts[slot] = max(pts, last or pts)
        duration = packet.duration or self._frame_ticks[slot]
        finished: list[SegmentInfo] = []
        if self._segment is None:
            self._open(self._resume_ticks, arrival)
        elif self._is_cut(slot, kind, packet, dts):
            finished.append(self._close(dts))
            self._open(dts, arrival)
        assert self._segment is not None  # opened above.
        if slot >= self._segment.slot_count:
            self._hold(slot, packet, arrival)
        else:
            self._segment.mux(slot, packet)
        self._end_ticks = max(self._end_ticks, pts + duration)
        return finished

    def _is_cut(self, slot: int, kind: Kind, packet: av.Packet, dts: int) -> bool:
        if self._lead_slot is None:
            at_boundary = kind is Kind.AUDIO
        else:
            at_boundary = slot == self._lead_slot and packet.is_keyframe
        if not at_boundary:
            return False
        return self._cut_asap or dts - self._seg_start >= self._target_ticks - KEYFRAME_SLACK_TICKS

    def _hold(self, slot: int, packet: av.Packet, arrival: float | None) -> None:
        # A segment's streams are fixed when it opens: a late track waits for the next one,
        # which is cut at the next keyframe rather than at the target.
        self._cut_asap = True
        self._pending.append((slot, packet, arrival))
        if len(self._pending) > MAX_PENDING_PACKETS:
            if (held := self._drop_log.allow("late")) is not None:
                log.warning(
                    "dropped a packet of a late track: no keyframe came to cut on (and %d "
                    "since the last warning)", held,
                )  # fmt: skip
            del self._pending[0]

    def _open(self, start: int, arrival: float | None) -> None:
        if self._next_date is not None and not self._next_discontinuity:
            self._seg_date = self._next_date
        else:
            self._seg_date = datetime.fromtimestamp(
                time.time() if arrival is None else arrival, UTC
            )
        if self._utc_names:  # <name>_<UTC YYYYMMDDhhmmssSSS>.ts, as cloud recordings name them
            stamp = (
                self._seg_date.strftime("%Y%m%d%H%M%S")
                + f"{self._seg_date.microsecond // 1000:03d}"
            )
            path = self._dir / f"{self._name}_{stamp}.ts"
            if path.exists():  # two cuts in one millisecond: keep both
                path = self._dir / f"{self._name}_{stamp}{self._index:05d}.ts"
        else:
            path = self._dir / f"{self._name}_{self._index:05d}.ts"
        # a restarted writer (it starts with a discontinuity) starts the counters again
        restart = self._next_discontinuity and not self._counters
        self._segment = TsSegment(path, list(self._slots), restart=restart)
        self._seg_start = start
        # (a track added since the segment before: RFC 8216 4.3.2.3, a change in the number
        # of tracks needs a discontinuity, or a player keeps the streams it had)
        grown = self._slots_before is not None and len(self._slots) > self._slots_before
        self._slots_before = len(self._slots)
        self._seg_discontinuity = self._next_discontinuity or grown
        self._next_discontinuity = False
        self._cut_asap = False
        self._mark_webm_starts()
        pending, self._pending = self._pending, []
        for slot, packet, _ in pending:
            self._segment.mux(slot, packet)

    def _mark_webm_starts(self) -> None:
        """A segment begins: each `webm` track's next packet is its first (``webm_point``)."""
        for track in self._tracks.values():
            if track.webm is not None:
                track.seg_from, track.seg_key = track.last_pos + 1, track.key_pos

    def _close(self, end: int) -> SegmentInfo:
        assert self._segment is not None  # only called with a segment open.
        segment, self._segment = self._segment, None
        size, self._counters = segment.close(sync=self._durable, counters=self._counters)
        info = SegmentInfo(
            index=self._index,
            path=segment.path,
            uri=segment.path.name,
            duration_s=max(0, end - self._seg_start) / TICKS_PER_S,
            start_s=self._seg_start / TICKS_PER_S,
            program_date_time=self._seg_date,
            discontinuity=self._seg_discontinuity,
            size=size,
        )
        self._index += 1
        self._next_date = self._seg_date + timedelta(seconds=info.duration_s)
        self._playlist.append(
            PlaylistSegment(info.uri, info.duration_s, info.program_date_time, info.discontinuity)
        )
        self._write_playlist(end=False)
        return info

    def _write_playlist(self, *, end: bool) -> None:
        if not self._durable:
            return
        write_atomic(self._playlist_path, self._playlist.render(end=end).encode())

    def discontinuity(self) -> list[SegmentInfo]:
        """Close the open segment now; the next one is flagged and continues the timeline."""
        if self._finished:
            raise RuntimeError("the writer is finished")
        finished: list[SegmentInfo] = []
        if self._segment is not None:
            finished.append(self._close(self._end_ticks))
            self._next_discontinuity = True
        self._resume_ticks = self._end_ticks
        self._offset_us = None
        self._mark_webm_starts()
        for track in self._tracks.values():
            for t in (track, *track.subs.values()):
                if track.webm is None:  # (a `webm` stream goes on: skimmed while paused)
                    t.need_keyframe = True
                t.last_dts_us = None
                if t.normaliser is not None:
                    t.normaliser.reset()
        return finished

    def finish(self) -> list[SegmentInfo]:
        """Flush the encoders, close the last segment and end the playlist."""
        if self._finished:
            return []
        finished: list[SegmentInfo] = []
        for track in self._tracks.values():
            if track.webm is not None:
                finished += self._drain_webm(track)
            for t in (track, *track.subs.values()):
                if t.normaliser is not None:
                    for packet in t.normaliser.flush():
                        finished += self._emit(t.slot, packet, None)
        if self._segment is not None:
            finished.append(self._close(self._end_ticks))
        self._finished = True
        self._playlist.ended = True
        self._write_playlist(end=True)
        return finished

    def _drain_webm(self, track: _Track) -> list[SegmentInfo]:
        assert track.webm is not None  # narrowed for mypy.
        return self._write_webm_packets(track, track.webm.close(), None, strict=False)
