"""The session recorder: takes a session's frames in order, journals them, writes HLS
through ``mixer.hls.HlsWriter``, hands finished segments to the spool and acknowledges.

All media work for one session runs in a worker thread, one batch at a time, so the event
loop only moves bytes. A batch is every item queued while the previous batch ran: the more
load, the larger the batches, the fewer fsyncs per frame (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixer.errors import MediaError
from mixer.hls import HlsWriter, SegmentInfo
from mixer.mp4 import build_mp4
from mixer.playlist import Playlist, PlaylistSegment
from mixer.tracks import Codec, Kind, TrackSpec
from storage.errors import SpoolFull
from storage.meta import FileRow, MetaStore
from storage.spool import Spool

from .config import IngestSettings, RecorderSettings
from .errors import CloseCode, ProtocolError
from .journal import BREAK, JOURNAL_GLOB, MEDIA, TRACK, Journal, journal_index, replay, sync_dir

log = logging.getLogger(__name__)

US = 1_000_000
PLAYLIST_NAME = "index.m3u8"
SEGMENT_NAME = "index"
KEEP_DIR = "keep"  # hard links of closed segments, for the MP4 built at END
REPLAY_SUFFIX = ".replay"
SPOOL_FULL_RETRY_MIN_S = 0.5
SPOOL_FULL_RETRY_MAX_S = 10.0
MAX_BATCH_ITEMS = 4096  # one worker call; bounds the time between acks under load


@dataclass(slots=True)
class RecorderStats:
    """Counters the metrics endpoint reads."""

    frames_in: int = 0
    bytes_in: int = 0
    segments: int = 0
    dropped_paused: int = 0


@dataclass(slots=True)
class _Batch:
    items: list[tuple[Any, ...]] = field(default_factory=list)


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
        executor: Executor,
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
        self._executor = executor
        self.paused = paused
        self.stats = RecorderStats()
        self.on_ack: Callable[[int], Awaitable[None]] | None = None
        self.on_error: Callable[[ProtocolError], Awaitable[None]] | None = None
        self.acked_seq = acked_seq  # durable high-water mark (what the client may forget)
        self.received_seq = acked_seq  # highest seq queued (dedupe and gap detection on the loop)
        self._tracks: dict[int, dict[str, Any]] = {}
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(ingest.queue_frames)
        self._task: asyncio.Task[None] | None = None
        self._writer: HlsWriter | None = None
        self._journal: Journal | None = None
        self._playlist = Playlist()
        self._last_pts: dict[int, int] = {}
        self._failed: BaseException | None = None
        self._pending_segments: list[SegmentInfo] = []
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False

    @property
    def key_playlist(self) -> str:
        """Object key of the session's playlist."""
        return self.key_prefix + PLAYLIST_NAME

    @property
    def key_mp4(self) -> str:
        """Object key of the session's MP4."""
        return f"{self.key_prefix}{self.session_id}.mp4"

    @property
    def duration_s(self) -> float:
        """Media time in closed segments, paused time excluded."""
        return self._playlist.duration_s

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the writer, replaying journals left by a previous run, and start taking frames."""
        rows = await self._meta.list_files(self.session_id, kind="segment")
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
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open, rows)
        self.received_seq = self.acked_seq
        await self._spool_segments(self._pending_segments)  # closed while replaying
        self._task = asyncio.create_task(self._run(), name=f"recorder-{self.session_id}")

    def _open(self, rows: list[FileRow]) -> None:
        keep_dir = self.live_dir / KEEP_DIR
        keep_dir.mkdir(parents=True, exist_ok=True)
        next_index = (rows[-1].seq + 1) if rows else 0
        if any(self.live_dir.glob(JOURNAL_GLOB + REPLAY_SUFFIX)):
            # a replay was cut short: what it wrote is partial, the originals are whole
            for path in self.live_dir.glob(JOURNAL_GLOB):
                path.unlink()
            for path in self.live_dir.glob(JOURNAL_GLOB + REPLAY_SUFFIX):
                path.rename(path.with_suffix(""))
        journals = sorted(self.live_dir.glob(JOURNAL_GLOB), key=journal_index)
        replaying = []
        for path in journals:
            if journal_index(path) < next_index:
                path.unlink()  # its segment is already in the spool
            else:
                replaying.append(path.rename(path.with_name(path.name + REPLAY_SUFFIX)))
        for path in [*self.live_dir.glob("*.ts"), *keep_dir.glob("*.ts")]:
            if path.parent == self.live_dir or _segment_index(path) >= next_index:
                path.unlink()  # segments not yet spooled are rebuilt from the journals
        self._writer = HlsWriter(
            self.live_dir,
            target_segment_s=self._settings.segment_target_s,
            name=SEGMENT_NAME,
            start_index=next_index,
            start_s=self._playlist.duration_s,
            discontinuity_first=bool(rows) or bool(replaying),
        )
        self._journal = Journal(self.live_dir, next_index)
        self._pending_segments = []
        for path in replaying:
            for rec in replay(path):
                self._apply_replayed(rec)
        self._journal.sync()
        for path in replaying:
            path.unlink()
        sync_dir(self.live_dir)

    def _apply_replayed(self, rec: list[Any]) -> None:
        tag = rec[0]
        if tag == TRACK:
            self._add_track_sync(rec[1])
            self._journal.track(rec[1])  # type: ignore[union-attr]
        elif tag == BREAK:
            self._break_sync()
            self._journal.brk()  # type: ignore[union-attr]
        elif tag == MEDIA:
            _, seq, track, pts, dts, key, arrival, data = rec
            self._media_sync(seq, track, pts, dts, key, arrival, data)
            self._journal.media(seq, track, pts, dts, key, arrival, data)  # type: ignore[union-attr]
            self.acked_seq = max(self.acked_seq, seq)

    async def aclose(self) -> None:
        """Stop taking frames and leave the open segment to its journal (graceful shutdown).

        Closing the open segment here would cut a GOP in two, and the frames a client resends
        after the restart would then wait for the next keyframe: lost. Replaying the journal
        at the next start rebuilds the open segment whole instead, as after a crash.
        """
        if self._closed:
            return
        self._closed = True
        await self._stop_task()
        if self._writer is not None:
            await self._in_thread(self._suspend_sync)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            await self._queue.put(("stop",))  # space comes: the run is still taking items
        await task

    # the loop side -----------------------------------------------------------------------

    async def add_track(self, fields: dict[str, Any]) -> None:
        """Accept a track announcement; re-announcing the same codec is fine, another is not."""
        known = self._tracks.get(fields["id"])
        if known is not None:
            if (known["kind"], known["codec"]) != (fields["kind"], fields["codec"]):
                raise ProtocolError(
                    CloseCode.SCHEMA, f"track {fields['id']} already announced as {known['codec']}"
                )
            return
        clean = {k: v for k, v in fields.items() if k != "t"}
        self._tracks[fields["id"]] = clean
        await self._queue.put(("track", clean))

    def knows_track(self, track_id: int) -> bool:
        """Whether a track id was announced in this session."""
        return track_id in self._tracks

    async def submit(self, msg: dict[str, Any]) -> None:
        """Queue one media frame in order; waits when the session's queue is full."""
        if self._failed is not None:
            raise ProtocolError(CloseCode.INTERNAL_ERROR, "recorder failed; reconnect later")
        if self._closed:
            raise ProtocolError(CloseCode.SESSION_STATE, "the session is not recording")
        seq = msg["seq"]
        if seq <= self.received_seq:
            return  # a resend of what we already hold
        if seq != self.received_seq + 1:
            raise ProtocolError(
                CloseCode.SEQUENCE, f"expected seq {self.received_seq + 1}, got {seq}"
            )
        if msg["track"] not in self._tracks:
            raise ProtocolError(
                CloseCode.UNKNOWN_TRACK, f"media for unannounced track {msg['track']}"
            )
        self.received_seq = seq
        self.stats.frames_in += 1
        self.stats.bytes_in += len(msg["data"])
        await self._queue.put(
            (
                "media",
                seq,
                msg["track"],
                msg["pts"],
                msg.get("dts", msg["pts"]),
                msg["key"],
                datetime.now(UTC).timestamp(),
                msg["data"],
            )
        )

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

    async def pause(self) -> None:
        """Stop recording: close the current segment; frames that arrive are acked, not kept."""
        await self._queue.put(("pause",))

    async def resume(self) -> None:
        """Record again; the next segment starts with a discontinuity."""
        await self._queue.put(("resume",))

    async def finish(self) -> None:
        """END: close the last segment, write the final playlist and the MP4, spool them all."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._queue.put(("finish", fut))  # after every frame already queued
            try:
                await fut
            finally:
                await task
        elif self._writer is not None:
            await self._finish()  # the run stopped after a failure: finish what can be

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        """Take queued items in batches until stopped or finished."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < MAX_BATCH_ITEMS:
                items.append(self._queue.get_nowait())
            for command, batch in _split_commands(items):
                if batch and not await self._write(batch):
                    return
                if command is not None and await self._command(command):
                    return  # anything queued after a stop or finish is not acknowledged

    async def _write(self, batch: list[tuple[Any, ...]]) -> bool:
        """Write one batch in the worker thread, spool what it closed, ack; false on failure."""
        try:
            acked, done, error = await self._in_thread(self._process, batch)
        except Exception as exc:  # a bug or a full disk: stop taking frames, ack nothing more
            log.exception("recorder failed", extra={"session_id": self.session_id})
            self._failed = exc
            if self.on_error is not None:
                await self.on_error(ProtocolError(CloseCode.INTERNAL_ERROR, "recorder failed"))
            return False
        await self._spool_segments(done)
        if acked > self.acked_seq:
            self.acked_seq = acked
            self._wake_ack_waiters()
            if self.on_ack is not None:
                await self.on_ack(acked)
        if error is not None and self.on_error is not None:
            await self.on_error(error)
        return True

    async def _command(self, item: tuple[Any, ...]) -> bool:
        """Run a loop-side command; true when the recorder stops taking items."""
        if item[0] == "finish":
            fut = item[1]
            try:
                await self._finish()
            except Exception as exc:
                log.exception("finishing failed", extra={"session_id": self.session_id})
                fut.set_exception(exc)
            else:
                fut.set_result(None)
        return True  # "stop" and "finish" both end the run

    # the thread side ---------------------------------------------------------------------

    def _process(
        self, batch: list[tuple[Any, ...]]
    ) -> tuple[int, list[SegmentInfo], ProtocolError | None]:
        """Journal and write a batch; returns the new durable seq and the finished segments."""
        self._pending_segments = []
        acked = self.acked_seq
        error: ProtocolError | None = None
        assert self._journal is not None  # set in _open; internal invariant, not input
        for item in batch:
            kind = item[0]
            if kind == "media":
                _, seq, track, pts, dts, key, arrival, data = item
                if self.paused:
                    self.stats.dropped_paused += 1
                    acked = seq
                    continue
                try:
                    self._media_sync(seq, track, pts, dts, key, arrival, data)
                except MediaError as exc:
                    # discarded and acknowledged, so a resend cannot loop; the client is told
                    log.warning("seq %d: %s", seq, exc, extra={"session_id": self.session_id})
                    error = error or ProtocolError(CloseCode.INVALID_MEDIA, f"seq {seq}: {exc}")
                else:
                    self._journal.media(seq, track, pts, dts, key, arrival, data)
                acked = seq
            elif kind == "track":
                self._add_track_sync(item[1])
                self._journal.track(item[1])
            elif kind == "pause":
                if not self.paused:
                    self._break_sync()
                    self._journal.brk()
                self.paused = True
            elif kind == "resume":
                self.paused = False
        self._journal.sync()
        return acked, self._pending_segments, error

    def _add_track_sync(self, fields: dict[str, Any]) -> None:
        assert self._writer is not None
        self._tracks.setdefault(fields["id"], fields)
        self._writer.add_track(track_spec(fields))

    def _break_sync(self) -> None:
        assert self._writer is not None
        self._rotate(self._writer.discontinuity())
        self._last_pts.clear()

    def _media_sync(
        self, seq: int, track: int, pts: int, dts: int, key: bool, arrival: float, data: bytes
    ) -> None:
        assert self._writer is not None
        last = self._last_pts.get(track)
        if last is not None and pts - last > self._ingest.gap_s * US:
            self._break_sync()  # the client was away: do not record the hole
        self._last_pts[track] = pts
        self._rotate(
            self._writer.write(track, data, pts, keyframe=key, dts_us=dts, arrival=arrival)
        )

    def _rotate(self, done: list[SegmentInfo]) -> None:
        """Start a new journal after each closed segment: the old one is now redundant."""
        if not done:
            return
        assert self._journal is not None
        self._pending_segments.extend(done)
        self._journal.close()
        self._journal = Journal(self.live_dir, done[-1].index + 1)
        for fields in self._tracks.values():
            self._journal.track(fields)

    def _suspend_sync(self) -> None:
        assert self._writer is not None and self._journal is not None
        self._journal.close()
        self._writer.finish()  # releases the files; what it closes is rebuilt from the journal

    def _finish_sync(self) -> list[SegmentInfo]:
        assert self._writer is not None and self._journal is not None
        self._pending_segments = []
        self._rotate(self._writer.finish())
        self._journal.close()
        return self._pending_segments

    # after the thread --------------------------------------------------------------------

    async def _spool_segments(self, done: list[SegmentInfo]) -> None:
        for seg in done:
            keep = self.live_dir / KEEP_DIR / seg.path.name
            await self._in_thread(_link, seg.path, keep)
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
            await self._in_thread(_drop_journals_before, self.live_dir, seg.index + 1)

    async def _to_spool(self, add: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> None:
        """Hand a file to the spool; while the spool is full, wait (the policy: backpressure).

        The file stays where it is, safe on disk, and this session takes no more frames until
        it is in: its queue fills, its socket stops being read, and its client buffers.
        """
        delay = SPOOL_FULL_RETRY_MIN_S
        while True:
            try:
                await add(*args, **kw)
                return
            except SpoolFull:
                log.error(
                    "spool full: holding %s and the session's frames until uploads free space",
                    args[0],
                    extra={"session_id": self.session_id},
                )
                await asyncio.sleep(delay)
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
        await self._to_spool(self._spool.add_bytes, self.key_playlist, text, group=self.session_id)

    async def _finish(self) -> None:
        done = await self._in_thread(self._finish_sync)
        await self._spool_segments(done)
        await self._spool_playlist(end=True)
        keep = await self._in_thread(lambda: sorted((self.live_dir / KEEP_DIR).glob("*.ts")))
        if keep:
            mp4 = self.live_dir / f"{self.session_id}.mp4"
            info = await self._in_thread(build_mp4, keep, mp4)
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
        await self._in_thread(shutil.rmtree, self.live_dir, True)


def _split_commands(
    items: list[tuple[Any, ...]],
) -> list[tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]]:
    """Cut a batch at the commands that must run on the loop (finish, stop)."""
    out: list[tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]] = []
    batch: list[tuple[Any, ...]] = []
    for item in items:
        if item[0] in ("finish", "stop"):
            out.append((item, batch))
            batch = []
        else:
            batch.append(item)
    if batch:
        out.append((None, batch))
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:
        shutil.copy2(src, dst)


def _segment_index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def _drop_journals_before(directory: Path, index: int) -> None:
    for path in directory.glob(JOURNAL_GLOB):
        if journal_index(path) < index:
            path.unlink(missing_ok=True)
