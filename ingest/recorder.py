"""The session recorder: takes a session's frames in order, logs them to the shared WAL,
writes HLS through ``mixer.hls.HlsWriter``, hands finished segments to the spool and
acknowledges.

Frames are queued on the loop (a list append) and written by the ``WriterPool`` in ticks, in
a worker thread, so the event loop only moves bytes. A frame is acknowledged once the tick
that wrote it has fsync'd the WAL; after a crash the WAL rebuilds the open segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixer.hls import SegmentInfo
from mixer.mp4 import build_mp4_queued
from mixer.playlist import Playlist, PlaylistSegment
from storage.errors import SpoolFull
from storage.meta import FileRow, MetaStore
from storage.spool import Spool

from .config import IngestSettings, RecorderSettings
from .errors import CloseCode, ProtocolError
from .lanes import LaneError
from .session_writer import KEEP_DIR, Cut, Failed, Opened, Outcome, WriterParams
from .writer import WriterLane, WriterPool

log = logging.getLogger(__name__)

US = 1_000_000
PLAYLIST_NAME = "index.m3u8"
SPOOL_FULL_RETRY_MIN_S = 0.5
SPOOL_FULL_RETRY_MAX_S = 10.0
ABANDON_SPOOL_WAIT_S = 5.0  # a crashed lane's sessions: how long spooling may finish first
# PAUSE answers once the segment it closes is counted (recordedDuration), or after this long
# (a writer behind a full spool or a restarting lane): the pause itself is queued either way
PAUSE_SETTLE_S = 2.0


class _LeftToWal(Exception):
    """A closed segment could not be spooled before the server stopped; the WAL keeps it."""


@dataclass(slots=True)
class RecorderStats:
    """Counters the metrics endpoint reads."""

    frames_in: int = 0
    bytes_in: int = 0
    segments: int = 0


def _replaced() -> ProtocolError:
    """What a client still talking to a recorder its lane's restart abandoned is told: the
    session goes on in a new recorder, from the acknowledged sequence its next welcome names."""
    return ProtocolError(CloseCode.INTERNAL_ERROR, "the writer restarted: reconnect")


class SessionRecorder:
    """Records one session; lives as long as the session is open, across connections."""

    def __init__(
        self,
        session_id: str,
        *,
        live_dir: Path,
        key_prefix: str,
        settings: RecorderSettings,
        ingest: IngestSettings,
        meta: MetaStore,
        spool: Spool,
        pool: WriterPool,
        paused: bool = False,
        acked_seq: int = 0,
    ) -> None:
        self.session_id = session_id
        self.live_dir = live_dir
        self.key_prefix = key_prefix.rstrip("/") + "/"
        self._settings = settings
        self._ingest = ingest
        self._meta = meta
        self._spool = spool
        self._pool = pool
        self.paused = paused
        self.stats = RecorderStats()
        self.on_ack: Callable[[int], Awaitable[None]] | None = None
        self.on_error: Callable[[ProtocolError], Awaitable[None]] | None = None
        self.acked_seq = acked_seq  # durable high-water mark (what the client may forget)
        self.received_seq = acked_seq  # highest seq queued (dedupe and gap detection)
        self.wal_from = 0  # the oldest file of its lane's WAL holding the open segment
        # frames its lane died on twice (``WriterPool._recover``): acknowledged, not recorded
        self.skip: set[int] = set()
        self._notice: ProtocolError | None = None  # for the next client: a frame was dropped
        self._tracks: dict[int, dict[str, Any]] = {}  # announced
        self._pending: list[tuple[Any, ...]] = []
        self._pending_bytes = 0  # media bytes queued
        self._space = asyncio.Event()  # set while the queue has room
        self._space.set()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._lane: WriterLane | None = None  # where the session's writer lives, once open
        self._playlist = Playlist()
        self._failed: BaseException | None = None
        self._to_spool_queue: list[Cut] = []
        self._spooler: asyncio.Task[None] | None = None
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False
        self._finished = False  # END's last segments and playlist are spooled
        self._closing = asyncio.Event()  # the server stops: a spool-full retry gives up
        self._ending = False  # END: the last files go to the spool over its cap
        self._retry = asyncio.Event()  # wakes a spool-full retry (stopping or END)
        self._abandoned = False  # its lane crashed; a new recorder took over

    @property
    def lane(self) -> WriterLane | None:
        """The writer lane the session is placed on (once started)."""
        return self._lane

    @property
    def writer_lost(self) -> bool:
        """The session's writer lane crashed: this recorder records no more (the session is
        reopened on the restarted lane, or at the next start)."""
        return self._abandoned or (self._lane is not None and self._lane.lane.dead)

    async def abandon(self) -> None:
        """Its lane crashed: take nothing more, let spooling finish (briefly) and step aside
        for a new recorder replaying the lane's WAL. A segment cut short here is spooled
        again or rebuilt by that replay (``_respool_lost``, the WAL)."""
        self._abandoned = True
        self._closed = True
        self._closing.set()
        self._retry.set()
        self._idle.set()
        self._space.set()  # a frame waiting for room is refused now: nothing takes any more
        self._pool.unregister(self)
        spooler = self._spooler
        if spooler is not None and not spooler.done():
            try:
                await asyncio.wait_for(asyncio.shield(spooler), ABANDON_SPOOL_WAIT_S)
            except (TimeoutError, _LeftToWal):
                spooler.cancel()
                with contextlib.suppress(asyncio.CancelledError, _LeftToWal):
                    await spooler

    def take_notice(self) -> ProtocolError | None:
        """What the replay has to tell the client (once): an acknowledged frame it dropped."""
        notice, self._notice = self._notice, None
        return notice

    @property
    def key_playlist(self) -> str:
        """Object key of the session's playlist."""
        return self.key_prefix + PLAYLIST_NAME

    @property
    def key_mp4(self) -> str:
        """Object key of the session's MP4."""
        return f"{self.key_prefix}{self.session_id}.mp4"

    # lifecycle -------------------------------------------------------------------------

    async def start(self, records: list[list[Any]] | None = None) -> None:
        """Open the writer, replaying the WAL records a previous run left, and take frames."""
        rows = await self._meta.list_files(self.session_id, kind="segment")
        rows = await self._respool_lost(rows)
        self._playlist = Playlist(
            [
                PlaylistSegment(
                    uri=row.key.rsplit("/", 1)[-1],
                    duration_s=row.duration_ms / 1000,
                    program_date_time=row.program_date_time,
                    discontinuity=row.discontinuity,
                )
                for row in rows
            ]
        )
        params = WriterParams(
            session_id=self.session_id,
            live_dir=self.live_dir,
            segment_target_s=self._settings.segment_target_s,
            gap_s=self._ingest.gap_s,
            paused=self.paused,
            acked_seq=self.acked_seq,
            next_index=(rows[-1].seq + 1) if rows else 0,
            start_s=self._playlist.duration_s,
            resumed=bool(rows),
            aac_coder=self._settings.aac_coder,
            skip=frozenset(self.skip),
        )
        lane = self._pool.register(self)
        try:
            opened: Opened = await lane.call("open", params, records or [])
        except BaseException:
            self._pool.unregister(self)
            raise
        self._lane = lane
        self.acked_seq = self.received_seq = opened.acked_seq
        self.wal_from = opened.wal_from
        self._tracks.update(opened.tracks)  # a client may go on without re-announcing
        self._queue_segments(opened.cuts)  # closed while replaying
        if opened.refused is not None:
            self._notice = ProtocolError(CloseCode(opened.refused[0]), opened.refused[1])

    async def _respool_lost(self, rows: list[FileRow]) -> list[FileRow]:
        """Spool again a closed segment whose row was written but whose spooling a crash cut
        short (the row goes first, so the upload can mark it): it is neither uploaded nor in
        the spool, but its hard link in ``keep/`` is whole. Returns the rows the playlist
        goes on from: segments at the end whose link is gone or torn (a power cut: the link
        and its directory were never fsync'd) are left out, to be written again from the WAL,
        which keeps a segment's frames until its spooling is done."""
        lost: list[FileRow] = []  # since the last segment that is safe
        for row in rows:
            safe = row.uploaded_at is not None or self._spool.holds(self.session_id, row.key)
            keep = self.live_dir / KEEP_DIR / row.key.rsplit("/", 1)[-1]
            whole = safe or await asyncio.to_thread(_size, keep) == row.size
            if not whole:
                lost.append(row)
                continue
            for gone in lost:  # (the WAL went on past them: nothing rebuilds them now)
                log.error(
                    "segment %s was never uploaded and its file is gone",
                    gone.key,
                    extra={"session_id": self.session_id},
                )
            lost = []
            if safe:
                continue
            log.warning(
                "spooling %s again: a crash cut its spooling short",
                row.key,
                extra={"session_id": self.session_id},
            )
            await self._spool.add(row.key, keep, group=self.session_id, move=False, over_cap=True)
        for row in lost:
            log.warning(
                "segment %s was never spooled and its file is gone: written again from the WAL",
                row.key,
                extra={"session_id": self.session_id},
            )
        return rows[: len(rows) - len(lost)]

    async def aclose(self) -> None:
        """Stop taking frames and leave the open segment to the WAL (graceful shutdown).

        Closing the open segment here would cut a GOP in two, and the frames a client resends
        after the restart would then wait for the next keyframe: lost. Replaying the WAL at the
        next start rebuilds the open segment whole instead, as after a crash.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._retry.set()
        self._flush_logged()
        await self._drain()
        # still registered: the lane's other sessions tick on while the server stops, and
        # its WAL must keep the files this session's open segment is in (``wal_from``)
        if self._lane is not None:
            with contextlib.suppress(LaneError):  # a lane that is gone has its WAL on disk
                await self._lane.call("close", self.session_id)  # the WAL has it all

    def _flush_logged(self) -> None:
        """Have the lane write the frames it logged (it writes them a little later: see
        ``ingest.lanes``), so that the segments they close are reported, in order, before
        END's last one, or spooled before the server stops."""
        if self._lane is not None and self._failed is None and not self.writer_lost:
            self._queue(("flush",))

    async def _drain(self) -> None:
        """Wait until everything queued is written and closed segments are spooled."""
        await self._idle.wait()
        spooler = self._spooler
        if spooler is not None:
            # (not ``await spooler``: one cancelled by ``abandon`` would cancel this caller,
            # an END or the stop, which nobody cancelled)
            await asyncio.wait([spooler])
            if not spooler.cancelled() and (exc := spooler.exception()) is not None:
                raise exc

    # the loop side -----------------------------------------------------------------------

    def _queue(self, item: tuple[Any, ...]) -> None:
        self._pending.append(item)
        self._idle.clear()
        self._pool.schedule(self)

    async def add_track(self, fields: dict[str, Any]) -> None:
        """Accept a track announcement; re-announcing the same codec is fine, another is not."""
        if self._abandoned:
            raise _replaced()
        if self._closed:
            raise ProtocolError(CloseCode.SESSION_STATE, "the session is not recording")
        known = self._tracks.get(fields["id"])
        if known is not None:
            if (known["kind"], known["codec"]) != (fields["kind"], fields["codec"]):
                raise ProtocolError(
                    CloseCode.SCHEMA, f"track {fields['id']} already announced as {known['codec']}"
                )
            return
        clean = {k: v for k, v in fields.items() if k != "t"}
        self._tracks[fields["id"]] = clean
        self._queue(("track", clean))

    async def submit(self, msg: dict[str, Any]) -> None:
        """Queue one media frame in order; waits while the session's queue is full."""
        while not self.take_now(msg):
            self._refuse(msg)  # a rule broken: raised; otherwise the queue is full
            await self._space.wait()

    def take_now(self, msg: dict[str, Any]) -> bool:
        """Queue one media frame if it may go now (a resend of what we hold is taken as
        done); false, with nothing changed, when it breaks a rule (``_refuse`` says which) or
        the queue is full. The WebSocket's fast path calls it straight from the socket."""
        if self._failed is not None or self._closed:
            return False
        seq = msg["seq"]
        if seq <= self.received_seq:
            return True  # a resend of what we already hold
        if seq != self.received_seq + 1 or msg["track"] not in self._tracks:
            return False
        if not self._space.is_set():
            return False
        self._accept(msg)
        return True

    def _refuse(self, msg: dict[str, Any]) -> None:
        """Raise the error of a frame ``take_now`` declined, unless only room was lacking."""
        if self._failed is not None:
            raise ProtocolError(CloseCode.INTERNAL_ERROR, "recorder failed; reconnect later")
        if self._abandoned:
            raise _replaced()
        if self._closed:  # (also a session that ended while the frame waited for room)
            raise ProtocolError(CloseCode.SESSION_STATE, "the session is not recording")
        seq, track = msg["seq"], msg["track"]
        if seq != self.received_seq + 1:
            raise ProtocolError(
                CloseCode.SEQUENCE, f"expected seq {self.received_seq + 1}, got {seq}"
            )
        if track not in self._tracks:
            raise ProtocolError(CloseCode.UNKNOWN_TRACK, f"media for unannounced track {track}")

    def _accept(self, msg: dict[str, Any]) -> None:
        seq = msg["seq"]
        self.received_seq = seq
        if seq in self.skip:  # its lane died writing it: acknowledged, not written again
            self._queue(("skip", seq))
            return
        data = msg["data"]
        self.stats.frames_in += 1
        self.stats.bytes_in += len(data)
        pts = msg["pts"]
        item = ("media", seq, msg["track"], pts, msg.get("dts", pts), msg["key"], time.time(), data)
        self._queue(item)
        self._pending_bytes += len(data)
        ingest = self._ingest
        if len(self._pending) >= ingest.queue_frames or self._pending_bytes >= ingest.queue_bytes:
            self._space.clear()

    def take(self) -> list[tuple[Any, ...]]:
        """Hand the queued items to the writer pool."""
        items, self._pending = self._pending, []
        self._pending_bytes = 0
        self._space.set()
        return items

    async def wait_acked(self, seq: int, timeout: float | None = None) -> None:
        """Wait until every frame up to ``seq`` is safe."""
        if self.acked_seq >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((seq, fut))
        await asyncio.wait_for(fut, timeout)

    def _wake_ack_waiters(self) -> None:
        keep = []
        for seq, fut in self._ack_waiters:
            if seq <= self.acked_seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._ack_waiters = keep

    def refresh_wal(self) -> None:
        """The WAL moved to a new file: if this session holds an older one, let it go if it can."""
        lane = self._lane
        if lane is None or self._closed or self._failed is not None:
            return
        if self.wal_from < lane.wal_index:
            self._queue(("recut",))

    async def pause(self) -> None:
        """Stop recording: close the current segment; frames that arrive are acked, not kept
        (a `webm` track's chunks are logged and demuxed, not recorded: its stream goes on).
        Returns once the closed segment is in the session's row (or after ``PAUSE_SETTLE_S``)."""
        self._queue(("pause",))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain()), PAUSE_SETTLE_S)

    async def resume(self) -> None:
        """Record again; the next segment starts with a discontinuity."""
        self._queue(("resume",))

    async def finish(self) -> None:
        """END: close the last segment, write the final playlist and the MP4, spool them all.

        A full spool does not hold END up: the session's files are on this disk already, so
        they are taken over the cap (new sessions are still refused until uploads catch up).
        Once done, done: an END sent again (its answer was lost) finds nothing to do."""
        if self._finished:
            return
        self._closed = True
        self._ending = True
        self._retry.set()
        self._space.set()  # a frame waiting for room is refused now (the session ends)
        self._flush_logged()
        await self._drain()
        if self._lane is None:
            self._pool.unregister(self)
            return
        try:
            await self._finish(self._lane)
        except LaneError:
            raise  # still registered: the WAL keeps its frames for the next start to replay
        except BaseException:
            self._pool.unregister(self)  # END ends all the same (the live folder stays)
            raise

    async def written(self, outcome: Outcome | Failed) -> None:
        """The pool's report on a tick: acknowledge, queue closed segments for the spool."""
        if not self._pending:
            self._idle.set()
        if isinstance(outcome, Failed):
            log.error("recorder failed: %s", outcome.reason, extra={"session_id": self.session_id})
            self._failed = RuntimeError(outcome.reason)
            self._idle.set()
            if self.on_error is not None:
                await self.on_error(ProtocolError(CloseCode.INTERNAL_ERROR, "recorder failed"))
            return
        self._queue_segments(outcome.done)
        if outcome.recut is not None and not self._to_spool_queue:
            self.wal_from = max(self.wal_from, outcome.recut)
        if outcome.acked > self.acked_seq:
            self.acked_seq = outcome.acked
            self._wake_ack_waiters()
            if self.on_ack is not None:
                await self.on_ack(outcome.acked)
            if outcome.first_arrival is not None and self._pool.observe is not None:
                self._pool.observe(time.time() - outcome.first_arrival, "ack")
        if outcome.error is not None and self.on_error is not None:
            code, reason = outcome.error
            await self.on_error(ProtocolError(CloseCode(code), reason))

    def _queue_segments(self, done: list[Cut]) -> None:
        if not done:
            return
        self._to_spool_queue.extend(done)
        if self._spooler is None or self._spooler.done():
            self._spooler = asyncio.create_task(
                self._spool_queued(), name=f"spool-{self.session_id}"
            )

    async def _spool_queued(self) -> None:
        while self._to_spool_queue:
            seg, wal_file = self._to_spool_queue[0]
            try:
                await self._spool_segment(seg)
            except _LeftToWal:
                log.warning(
                    "stopping with the spool full: %d closed segments left to the WAL, "
                    "rebuilt and spooled at the next start",
                    len(self._to_spool_queue),
                    extra={"session_id": self.session_id},
                )
                return
            self._to_spool_queue.pop(0)
            self.wal_from = wal_file  # the WAL before this segment's successor is redundant
            self._pool.release_soon(self)

    # spooling --------------------------------------------------------------------

    async def _spool_segment(self, seg: SegmentInfo) -> None:
        """Record, spool and list one closed segment, then the playlist that names it."""
        keep = self.live_dir / KEEP_DIR / seg.path.name
        await asyncio.to_thread(_link, seg.path, keep)
        key = self.key_prefix + seg.path.name
        self._playlist.append(
            PlaylistSegment(seg.uri, seg.duration_s, seg.program_date_time, seg.discontinuity)
        )
        self.stats.segments += 1
        # the row first: the upload may be confirmed before add() returns
        await self._meta.add_file(
            FileRow(
                session_id=self.session_id,
                key=key,
                kind="segment",
                size=seg.size,
                created_at=datetime.now(UTC),
                duration_ms=round(seg.duration_s * 1000),
                seq=seg.index,
                discontinuity=seg.discontinuity,
                program_date_time=seg.program_date_time,
            )
        )
        await self._to_spool(self._spool.add, key, seg.path, group=self.session_id, move=True)
        await self._spool_playlist(end=False)
        await self._meta.update_session(
            self.session_id,
            acked_seq=self.acked_seq,
            recorded_ms=round(self._playlist.duration_s * 1000),
        )

    async def _to_spool(self, add: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> None:
        """Hand a file to the spool; while the spool is full, wait and retry (logged).

        The file stays where it is, safe on disk, and so do the WAL files behind it; frames
        are still acknowledged, so disk use grows past the spool's cap until uploads free
        room, while new sessions are refused (``StorageBacklogFull``). A server stopping
        meanwhile raises ``_LeftToWal``: the WAL rebuilds the file at the next start. From END
        on the files are taken over the cap: finishing never waits for uploads.
        """
        delay = SPOOL_FULL_RETRY_MIN_S
        while True:
            try:
                await add(*args, over_cap=self._ending, **kw)
                return
            except SpoolFull:
                log.error(
                    "spool full: holding %s and the session's frames until uploads free space",
                    args[0],
                    extra={"session_id": self.session_id},
                )
            if self._closing.is_set():
                raise _LeftToWal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), delay)
            delay = min(delay * 2, SPOOL_FULL_RETRY_MAX_S)

    async def _spool_playlist(self, *, end: bool) -> None:
        text = self._playlist.render(end=end).encode()
        await self._meta.add_file(
            FileRow(
                session_id=self.session_id,
                key=self.key_playlist,
                kind="playlist",
                size=len(text),
                created_at=datetime.now(UTC),
                duration_ms=round(self._playlist.duration_s * 1000),
            )
        )
        await self._to_spool(
            self._spool.add_bytes, self.key_playlist, text, group=self.session_id, replaceable=True
        )

    async def _finish(self, lane: WriterLane) -> None:
        for seg, _ in await lane.call("finish", self.session_id):
            await self._spool_segment(seg)
        await self._spool_playlist(end=True)
        # only now may the lane's WAL let go of this session's last frames: they are spooled
        self._pool.unregister(self)
        self._finished = True
        keep = await asyncio.to_thread(lambda: sorted((self.live_dir / KEEP_DIR).glob("*.ts")))
        if keep:
            mp4 = self.live_dir / f"{self.session_id}.mp4"
            info = await build_mp4_queued(keep, mp4)
            await self._meta.add_file(
                FileRow(
                    session_id=self.session_id,
                    key=self.key_mp4,
                    kind="mp4",
                    size=info.size,
                    created_at=datetime.now(UTC),
                    duration_ms=round(info.duration_s * 1000),
                )
            )
            await self._to_spool(
                self._spool.add, self.key_mp4, mp4, group=self.session_id, move=True
            )
        await asyncio.to_thread(shutil.rmtree, self.live_dir, True)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:
        shutil.copy2(src, dst)
