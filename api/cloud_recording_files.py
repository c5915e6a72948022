"""The files and notices of cloud recordings: handing segments, playlists, snapshots and MP4s to
the spool (in order, waiting out a full spool), the backup at a stop the bucket did not confirm,
a recording's storage config and its renewal, the MP4s a crash left to build
(``cloud_recording_mp4``), and the notifications that tell the app. The base of
:class:`~api.cloud_recording.CloudRecordingService`, which drives the recordings."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixer.mix_config import FileType
from mixer.mp4 import build_mp4_queued
from storage.errors import SpoolFull
from storage.meta import CloudRecordingStore, CloudSegmentRow
from storage.registry import DEFAULT_STORE_ID, StoreRegistry
from storage.spool import Spool
from storage.vendors import StorageConfig

from .cloud_recording_mp4 import lost_parts, mark_covered, read_note, write_note
from .cloud_recording_notices import ErrorCode, ErrorLevel, NoticeModule, WarnCode
from .cloud_recording_session import CloudFailure, CloudSession, FileEntry, Status
from .cloud_recording_state import CloudStateWriter, session_row

log = logging.getLogger("api.cloud_recording")

SPOOL_FULL_RETRY_MIN_S, SPOOL_FULL_RETRY_MAX_S = 0.5, 10.0
STOP_UPLOAD_TIMEOUT_S = 60.0
# files of a session's working folder that the backup copies as they are (playlists are
# rendered from what was uploaded; MP4s are named as they were uploaded)
BACKUP_SUFFIXES = (".ts", ".jpg")

# (session, event type, details): what the app's webhook is told
Notify = Callable[["CloudSession", int, dict[str, Any]], Awaitable[None]]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class CloudFiles:
    """The sessions' files and notices (see the module's doc)."""

    def __init__(
        self,
        stores: StoreRegistry,
        spool: Spool,
        node: str,
        clock: Any,
        notify: Notify | None,
        store: CloudRecordingStore | None,
    ) -> None:
        self.stores, self.spool = stores, spool
        self.node = node
        self._clock = clock
        self._notify = notify
        self._store = store
        self._writer = CloudStateWriter(store) if store is not None else None
        self.stop_upload_timeout_s = STOP_UPLOAD_TIMEOUT_S
        self.sessions: dict[str, CloudSession] = {}
        self._keep: set[str] = set()  # storage configs a failed save left a row naming
        self._releaser: asyncio.Task[None] | None = None  # see _release_when_sent
        self._closing = False

    async def _event(self, session: CloudSession, event_type: int, details: dict[str, Any]) -> None:
        if not session.announced and event_type not in (40, 30):
            session.held.append((event_type, details))
            return
        if self._notify is not None:
            try:
                await self._notify(session, event_type, details)
            except Exception:  # a notification must never break a recording
                log.exception("notification %d of %s failed", event_type, session.sid)

    async def _warn(
        self, session: CloudSession, module: NoticeModule, code: WarnCode, **more: Any
    ) -> None:
        """Notification 2: ``{"module", "warnCode", ...more}``."""
        await self._event(session, 2, {"module": int(module), "warnCode": int(code), **more})

    async def _error(
        self,
        session: CloudSession,
        module: NoticeModule,
        code: ErrorCode,
        message: str,
        level: ErrorLevel,
        **more: Any,
    ) -> None:
        """Notification 1: ``{"module", "errorLevel", "errorCode", "stat", "errorMsg", ...}``."""
        log.error("cloud recording %s: error %d: %s", session.sid, code, message)
        details = {"module": int(module), "errorLevel": int(level), "errorCode": int(code),
                   "stat": 0, "errorMsg": message, **more}  # fmt: skip
        await self._event(session, 1, details)

    def _spawn(self, session: CloudSession, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        session.side_tasks.add(task)
        task.add_done_callback(session.side_tasks.discard)

    def _save(self, session: CloudSession) -> asyncio.Future[None] | None:
        """Queue the session's row for the store (written with the next batch)."""
        if self._writer is None or session.status < Status.RECORDING:
            return None  # a start not yet recording is not kept: the resource stays free
        return self._writer.session(session_row(session, self.node, self._clock()))

    async def _saved(self, session: CloudSession) -> None:
        """The session's row, written; a failure is logged (by the writer), not raised."""
        done = self._save(session)
        if done is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(done)

    @staticmethod
    def check_running(session: CloudSession) -> None:
        """404 once the session has ended (update and updateLayout need a recording)."""
        if session.ended_at is not None:
            raise CloudFailure(404, f"recording session {session.sid} has ended", 404)

    async def _upload_segment(
        self,
        session: CloudSession,
        segment: Path,
        name: str,
        count: int,
        after: asyncio.Task[None] | None,
    ) -> None:
        """The segment, its row in the store, then playlist ``name`` with it as the last."""
        if after is not None:
            with contextlib.suppress(Exception):
                await after  # its failure is logged where it happened
        await self._spool_file(session, segment)
        if self._writer is not None:
            seg = session.listed[name][count - 1]
            when = seg.program_date_time or _utc(self._clock())  # always set on ours
            row = CloudSegmentRow(session.sid, name, count - 1, seg.uri, seg.duration_s, when,
                                  seg.discontinuity)  # fmt: skip
            with contextlib.suppress(Exception):  # the writer logs it; recording goes on
                await asyncio.shield(self._writer.segment(row))
        # rendered from what is in the spool, not the writer's file: that one may already
        # name a later segment, lacks the runs before a restart, and is replaced while the
        # spool would link it
        await self._spool_bytes(session, name, session.render(name, False, count))

    async def _upload_rendered(
        self, session: CloudSession, texts: dict[str, bytes], after: asyncio.Task[None] | None
    ) -> None:
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        for name, data in texts.items():
            await self._spool_bytes(session, name, data)

    async def _spool_file(
        self,
        session: CloudSession,
        path: Path,
        key: str | None = None,
        *,
        prefix: str = "",
        group: str | None = None,
        over_cap: bool = False,
    ) -> bool:
        """Hand a file to the spool, linked not read (an MP4 may be gigabytes); it stays
        where it is (the MP4 is built from the segments). False when it could not be.
        ``over_cap``: taken by a full spool too (a file already on the disk)."""
        name = prefix + (key or path.name)
        return await self._hand_over(
            session,
            name,
            lambda: self.spool.add(
                name,
                path,
                group=group or session.sid,
                store_id=session.store_id if group is None else DEFAULT_STORE_ID,
                move=False,
                over_cap=over_cap,
            ),
        )

    async def _spool_bytes(
        self, session: CloudSession, key: str, data: bytes, *, prefix: str = "",
        group: str | None = None,
    ) -> bool:  # fmt: skip
        """Hand content made here (a rendered playlist) to the spool."""
        name = prefix + key
        return await self._hand_over(
            session,
            name,
            lambda: self.spool.add_bytes(
                name,
                data,
                group=group or session.sid,
                store_id=session.store_id if group is None else DEFAULT_STORE_ID,
                replaceable=True,
            ),
        )

    async def _hand_over(
        self, session: CloudSession, key: str, add: Callable[[], Awaitable[object]]
    ) -> bool:
        """A full spool is waited out (warning 2, once per session); a file that cannot be
        written to it is lost (error 1)."""
        delay = SPOOL_FULL_RETRY_MIN_S
        while True:
            try:
                await add()
                return True
            except SpoolFull:
                log.error("spool full: %s waits (session %s)", key, session.sid)
                if WarnCode.SPOOL_FULL not in session.warned:
                    session.warned.add(WarnCode.SPOOL_FULL)
                    await self._warn(session, NoticeModule.UPLOADER, WarnCode.SPOOL_FULL,
                                     fileName=key)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, SPOOL_FULL_RETRY_MAX_S)
            except OSError as exc:
                log.exception("could not spool %s of %s", key, session.sid)
                await self._error(session, NoticeModule.UPLOADER, ErrorCode.FILE_NOT_SPOOLED,
                                  f"{key} could not be handed to the uploader: {exc}",
                                  ErrorLevel.MAJOR, fileName=key)  # fmt: skip
                return False

    async def _upload_finals(
        self, session: CloudSession, mp4s: list[tuple[Path, str]], *, end: bool
    ) -> None:
        """Every playlist rendered from what was uploaded (``end``: with ``EXT-X-ENDLIST``),
        then the MP4s."""
        for name in session.listed:
            await self._spool_bytes(session, name, session.render(name, end))
        for path, key in mp4s:
            await self._spool_file(session, path, key)

    async def _back_up(self, session: CloudSession, mp4s: list[tuple[Path, str]]) -> bool:
        """The user's bucket did not take the files in time: put a copy of every file in the
        server's own store (``backup/<appid>/<sid>/``): those of the session's folder, and
        every other file the spool still holds for the bucket (the segments and MP4s of runs
        before a restart). The spool keeps retrying the user's bucket, so the files reach it
        when it works again; true when the copies are stored. The copies are links to files
        on this disk already, so a full spool takes them too."""
        files = await asyncio.to_thread(
            lambda: sorted(
                p
                for p in session.directory.rglob("*")
                if p.suffix in BACKUP_SUFFIXES and p.is_file()
            )
        )
        group = f"{session.sid}-backup"
        prefix = f"backup/{session.resource.appid}/{session.sid}/"
        for path in files:
            await self._spool_file(session, path, prefix=prefix, group=group, over_cap=True)
        built = [(session.directory / f"recovered-{e.name}", e.name) for e in session.mp4s]
        recovered = await asyncio.to_thread(lambda: [(p, k) for p, k in built if p.is_file()])
        for path, key in mp4s + recovered:
            await self._spool_file(session, path, key, prefix=prefix, group=group, over_cap=True)
        taken = {p.name for p in files} | {k for _, k in mp4s + recovered} | set(session.listed)
        for key, path in self.spool.pending(session.sid):
            name = key.rsplit("/", 1)[-1]
            if name in taken:
                continue
            taken.add(name)
            with contextlib.suppress(FileNotFoundError):  # confirmed by the bucket meanwhile
                await self.spool.add(
                    prefix + name,
                    path,
                    group=group,
                    store_id=DEFAULT_STORE_ID,
                    move=False,
                    over_cap=True,
                )
        for name in session.listed:
            data = session.render(name, True)
            await self._spool_bytes(session, name, data, prefix=prefix, group=group)
        log.warning(
            "cloud recording %s: the bucket did not confirm its files within %.0f s; "
            "%d files backed up to %s in the server's store",
            session.sid, self.stop_upload_timeout_s, len(files), prefix,
        )  # fmt: skip
        return await self.spool.wait_group(group, self.stop_upload_timeout_s)

    async def renew_storage(self, session: CloudSession, storage: StorageConfig) -> None:
        """update with a ``storageConfig``: the same bucket with fresh credentials (the seed
        renews an STS token this way every hour). The bucket is checked with them first (a
        refusal answers as at start, and changes nothing); then every file of the recording
        still to upload goes with them, those waiting in the spool included, and a restart
        uses them. The old credentials leave the disk once nothing needs them."""
        self.check_running(session)
        store_id = await self.stores.register(storage)  # StorageError: the route says why
        old, session.store_id = session.store_id, store_id
        if store_id == old:
            return
        # the waiting files first: a crash before the row is saved leaves the recording on the
        # old keys, and the next renewal moves what they hold
        moved = await self.spool.retarget(session.sid, old, store_id)
        log.info("cloud recording %s: storage credentials renewed (%d waiting files moved)",
                 session.sid, moved)  # fmt: skip
        saved = self._save(session)
        if saved is not None:
            try:
                await asyncio.shield(saved)
            except Exception:  # the row still names the old keys: a restart needs them
                self._keep.add(old)
                return
        await self._release_stores()

    def _needed_stores(self) -> set[str]:
        """Storage configs something still needs: a recording not finished, a file in the
        spool, or a stored row that may name them (a save that failed). A spool item whose
        manifest did not parse may be for any of them: then every one is kept."""
        if self.spool.unreadable:
            return self.stores.registered()
        needed = self.spool.store_ids() | self._keep
        needed.update(s.store_id for s in self.sessions.values() if not s.finished)
        return needed

    async def _release_stores(self) -> None:
        """Forget the storage configs (their keys leave the disk) that nothing needs; those
        that only files still in the spool need go once the spool has sent them."""
        for store_id in self.stores.registered() - self._needed_stores():
            await self.stores.forget(store_id, functools.partial(self._needs, store_id))
        idle = self._releaser is None or self._releaser.done()
        if idle and not self._closing and self._spooled_only():
            self._releaser = asyncio.create_task(self._release_when_sent())

    def _spooled_only(self) -> set[str]:
        """Configs kept for nothing but files in the spool (their recordings are finished)."""
        recording = {s.store_id for s in self.sessions.values() if not s.finished}
        return (self.stores.registered() - recording - self._keep) & self.spool.store_ids()

    async def _release_when_sent(self) -> None:
        """Whenever the configs only the spool needs change (their last file went up, or a
        recording took them up again), release what nothing needs. A store that stays down
        keeps its keys, and the task waits; the spool closing ends it (the next start releases
        what is left)."""
        while waiting := self._spooled_only():
            if not await self.spool.wait_until(lambda: self._spooled_only() != waiting):
                return
            await self._release_stores()

    async def wait_released(self) -> None:
        """Until no storage config is waiting for the spool to send its files (tests)."""
        if self._releaser is not None:
            await asyncio.shield(self._releaser)

    async def _stop_releasing(self) -> None:
        """Shutdown: the spool's waiters are not woken before it closes, so cancel ours."""
        self._closing = True
        if self._releaser is not None:
            self._releaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._releaser

    def _needs(self, store_id: str) -> bool:
        return store_id in self._needed_stores()

    @staticmethod
    def _builds_mp4s(session: CloudSession) -> bool:
        return session.mode == "mix" and FileType.MP4 in session.file_types

    @staticmethod
    def _next_mp4(session: CloudSession) -> str:
        """The next MP4's name: one past the highest listed (a failed one leaves a gap)."""
        numbers = [int(e.name.rsplit("_", 1)[1].removesuffix(".mp4")) for e in session.mp4s]
        return f"{session.sid}_{session.resource.cname}_{max(numbers, default=-1) + 1:03d}.mp4"

    async def _recover_mp4s(self, session: CloudSession) -> None:
        """A crash cut the mix's last run short before it built its MP4s: plan them from its
        segments (those the playlist lists), numbered on, list them, and build them in the
        background (a stop or a suspend waits for it; ``cloud_recording_mp4``)."""
        folder = session.directory
        note = await asyncio.to_thread(read_note, folder)
        listed_keys = {e.name for e in session.mp4s}
        # a plan the row does not list was cut short before it was saved: planned again
        note.planned = {k: v for k, v in note.planned.items() if k in listed_keys}
        playlist = session.listed.get(f"{session.sid}_{session.resource.cname}.m3u8", [])
        parts = await asyncio.to_thread(lost_parts, folder, playlist, note, bool(session.mp4s))
        for part in parts:
            key = self._next_mp4(session)
            note.planned[key] = [p.name for p in part]
            session.mp4s.append(
                FileEntry(key, session.mixed_track_type, "0", True, session.started_ms)
            )
        await asyncio.to_thread(write_note, folder, note)  # the plan, then the row
        if parts:
            await self._saved(session)
        if note.planned:
            self._spawn(session, self._build_planned(session, note.planned))

    async def _build_planned(self, session: CloudSession, planned: dict[str, list[str]]) -> None:
        folder = session.directory
        for key, names in planned.items():
            segments = [folder / name for name in names]
            path = folder / f"recovered-{key}"
            try:
                await build_mp4_queued(segments, path)
                handed = await self._spool_file(session, path, key, over_cap=True)
            except Exception as exc:  # the playlist still has them: the recording goes on
                log.exception("cloud recording %s: %s, of %d segments a crash left, could not "
                              "be built", session.sid, key, len(names))  # fmt: skip
                # (201 is the uploader module's code, as the notices table lists it)
                await self._error(session, NoticeModule.UPLOADER, ErrorCode.FILE_NOT_SPOOLED,
                                  f"{key} could not be built after a restart: {exc}",
                                  ErrorLevel.MAJOR, fileName=key)  # fmt: skip
                handed = False
            if not handed:  # not in the fileList; its segments are tried at the next restart
                session.mp4s = [e for e in session.mp4s if e.name != key]
                self._save(session)
                continue
            await asyncio.to_thread(mark_covered, folder, names, key)
            log.info("cloud recording %s: %s built from the %d segments a crash left",
                     session.sid, key, len(names))  # fmt: skip
