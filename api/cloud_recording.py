"""The cloud recording service behind ``/v1/apps/{appid}/cloud_recording/``: resources, recording
sessions (individual and mix), their files in the user's bucket, and their statuses.

A resource (``acquire``) lives 5 minutes and serves one session; its id names the node it was
placed on (``<node>.<random>``), so a cluster can route the calls that carry it. A session
(``start``) subscribes to the channel: in mix mode one :class:`ChannelMixRecorder`, in individual
mode one :class:`UidRecorder` per subscribed uid (separate audio and video playlists, a merged
one with streamMode "standard", snapshots), started as they join, up to the subscribeUidGroup's
bound. Every finished file goes through the spool to the ``storageConfig``'s bucket
(registered, so files still reach it after a restart): the handing over, the storage config's
life and the notices are :class:`~api.cloud_recording_files.CloudFiles`, this class's base.
HTTP, auth and request parsing live in ``cloud_recording_routes``.

With a store (the server always gives one), resources and sessions outlive a restart
(``cloud_recording_state``): the server's shutdown suspends the recordings (their files
finished and uploaded, playlists not ended), and :meth:`CloudRecordingService.open` resumes
them under the same sid, each playlist going on after an ``EXT-X-DISCONTINUITY``; a session
caught in the middle of its stop is finished; stopped ones answer query as before.

Where things go wrong the app hears it through notifications 1 (error) and 2 (warning), with
the codes of ``cloud_recording_notices``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import shutil
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from ingest.channel_mix import EVERYONE, ChannelMixRecorder, UidSelector
from ingest.channels import ChannelEvent, ChannelRegistry, Subscription
from ingest.individual import UidRecorder
from mixer.layout import LayoutSpec
from mixer.member_writer import MemberOutputs, OutputKind
from mixer.mix_config import FileType, MixConfig, MixStyle
from mixer.playlist import PlaylistSegment
from mixer.segmenter import SegmentInfo
from storage.meta import CloudRecordingStore
from storage.registry import StoreRegistry
from storage.spool import Spool
from storage.vendors import StorageConfig

from .cloud_recording_files import CloudFiles, Notify, _utc
from .cloud_recording_mp4 import mark_covered
from .cloud_recording_notices import ErrorCode, ErrorLevel, NoticeModule, WarnCode
from .cloud_recording_session import (
    DEFAULT_MAX_IDLE_S,
    SEGMENT_S,
    CloudFailure,
    CloudSession,
    FileEntry,
    Resource,
    Status,
    member_outputs,
    new_resource_id,
    node_of,
)
from .cloud_recording_state import (
    add_segments,
    rebuild_config,
    rebuild_layout,
    resource_from,
    resource_row,
    session_from,
    without_storage,
)

__all__ = [  # the model lives in cloud_recording_session; callers may take it from here
    "CloudFailure",
    "CloudRecordingService",
    "CloudSession",
    "FileEntry",
    "Resource",
    "Status",
    "member_outputs",
]

log = logging.getLogger(__name__)

RESOURCE_TTL_S = 300.0  # "valid for 5 minutes"
IDLE_CHECK_S = 5.0  # how often an idle channel is looked at (joins and leaves wake it sooner)
ENDED_KEEP_S = 600.0  # a stopped session answers query this long
# 41's leaveCode: stop called, the channel idle for maxIdleTime, the recorder failed
LEAVE_STOPPED, LEAVE_IDLE, LEAVE_FAILED = 0, 2, 4
# 11's exitStatus: a normal end, or an abnormal one (status 20)
EXIT_NORMAL, EXIT_ABNORMAL = 0, 1


class CloudRecordingService(CloudFiles):
    """Every resource and session of this node."""

    def __init__(
        self,
        registry: ChannelRegistry,
        stores: StoreRegistry,
        spool: Spool,
        work_dir: Path,
        node: str = "n1",
        clock: Any = time.time,
        notify: Notify | None = None,
        store: CloudRecordingStore | None = None,
    ) -> None:
        """``store``: where resources and sessions are kept, so they outlive a restart (then
        :meth:`open` must be awaited before use); without one they live in memory only."""
        super().__init__(stores, spool, node, clock, notify, store)
        self.registry = registry
        self.segment_s = SEGMENT_S
        self.work_dir = work_dir
        self._tasks: set[asyncio.Task[None]] = set()  # sessions ending on their own
        self.resources: dict[str, Resource] = {}

    # acquire / start ------------------------------------------------------------------------

    async def acquire(
        self, appid: str, cname: str, uid: str, request: dict[str, Any] | None = None
    ) -> Resource:
        """A new resource for one session of ``cname``; stored before it is handed out."""
        self._expire()
        await self._release_stores()  # keys of recordings whose files went up since
        resource = Resource(new_resource_id(self.node), appid, cname, uid, self._clock(), request)
        self.resources[resource.resource_id] = resource
        if self._writer is not None:
            await asyncio.shield(self._writer.resource(resource_row(resource, self.node)))
        return resource

    def _expire(self) -> None:
        now = self._clock()
        rids = [
            rid
            for rid, res in self.resources.items()
            if res.sid is None and now - res.acquired_at > RESOURCE_TTL_S
        ]
        sids = [
            sid
            for sid, s in self.sessions.items()
            if s.ended_at is not None and now - s.ended_at > ENDED_KEEP_S
        ]
        for sid in sids:
            rids.append(self.sessions.pop(sid).resource.resource_id)
        for rid in rids:
            self.resources.pop(rid, None)
        if self._writer is not None and (sids or rids):
            self._writer.forget(sids, rids)

    def resource(self, appid: str, resource_id: str) -> Resource:
        """The live resource, or the API's error for a bad, expired or foreign one."""
        node_of(resource_id)
        res = self.resources.get(resource_id)
        if res is None:
            raise CloudFailure(433, "the resource id has expired or does not exist")
        if res.appid != appid:
            raise CloudFailure(1003, "the appid does not match the resource")
        if res.sid is None and self._clock() - res.acquired_at > RESOURCE_TTL_S:
            raise CloudFailure(433, "the resource id has expired (5 minutes after acquire)")
        return res

    def _check_start(self, res: Resource, cname: str, uid: str) -> None:
        if res.sid is not None:
            raise CloudFailure(7, "start was already called on this resource")
        if (res.cname, res.uid) != (cname, uid):
            raise CloudFailure(432, "cname and uid differ from those of the acquire request")
        for other in self.sessions.values():
            same = (other.resource.appid, other.resource.cname, other.resource.uid)
            if other.ended_at is None and same == (res.appid, cname, uid):
                raise CloudFailure(53, f"uid {uid} is already recording channel {cname}")

    async def start(
        self,
        appid: str,
        resource_id: str,
        mode: str,
        cname: str,
        uid: str,
        storage: StorageConfig,
        *,
        mix: MixConfig | None = None,
        file_types: frozenset[FileType] = frozenset({FileType.HLS}),
        audio_uids: UidSelector = EVERYONE,
        video_uids: UidSelector = EVERYONE,
        segment_s: float | None = None,
        max_idle_s: float = DEFAULT_MAX_IDLE_S,
        snapshot_every_s: float | None = None,
        outputs: MemberOutputs | None = None,
        max_uids: int | None = None,
        request: Mapping[str, Any] | None = None,
        config: Any = None,
    ) -> CloudSession:
        """Start recording ``cname``; the bucket is checked first (a bad one fails the start).

        Individual mode: ``outputs`` (see :func:`member_outputs`; by default separate audio and
        video playlists, with snapshots every ``snapshot_every_s``), at most ``max_uids`` uids.
        ``request``: the start's ``clientRequest`` as sent and ``config`` as parsed, kept so the
        recording can go on after a restart (a mix needs them for that) and for update.
        """
        res = self.resource(appid, resource_id)
        self._check_start(res, cname, uid)
        store_id = await self.stores.register(storage)  # StorageError: the route says why
        self._check_start(res, cname, uid)  # again: another start may have won meanwhile
        sid = secrets.token_hex(16)
        res.sid = sid
        session = CloudSession(
            sid,
            res,
            mode,
            store_id,
            self.work_dir / sid,
            # individual mode writes HLS only: the seed's "use the default value" ["hls"]
            file_types if mode == "mix" else frozenset({FileType.HLS}),
            status=Status.STARTING,
            started_ms=int(self._clock() * 1000),
            audio_uids=audio_uids,
            video_uids=video_uids,
            segment_s=self.segment_s if segment_s is None else segment_s,
            max_idle_s=max_idle_s,
            snapshot_every_s=snapshot_every_s,
            outputs=outputs or member_outputs(snapshot_every_s=snapshot_every_s),
            max_uids=max_uids,
            config=config,
            request=without_storage(request) if request is not None else None,
        )
        self.sessions[sid] = session
        try:
            await self._launch(session, mix)
        except Exception as exc:
            log.exception("cloud recording %s of %s/%s could not start", sid, appid, cname)
            await self._abandon(session)
            raise CloudFailure(
                500, f"the recorder could not start ({exc}); the resource may be started again",
                500,
            ) from exc  # fmt: skip
        session.status = Status.RECORDING
        res.request = None  # matched by the start: its startParameter (keys) is not kept
        if self._writer is not None:  # the resource now names its session: in one batch
            self._writer.resource(resource_row(res, self.node))
        await self._saved(session)  # a restart from here on goes on recording it
        log.info("cloud recording %s of %s/%s (%s) started", sid, appid, cname, mode)
        await self._event(
            session, 40, {"msgName": "recorder_start", "startUtcMs": session.started_ms}
        )
        await self._event(session, 30, {"msgName": "uploader_started", "status": 0})
        session.announced = True
        for event_type, details in session.held:
            await self._event(session, event_type, details)
        session.held.clear()
        return session

    async def _launch(self, session: CloudSession, mix: MixConfig | None) -> None:
        """Subscribe to the channel and start the recorders (at start, or after a restart)."""
        res = session.resource
        if session.mode == "mix":
            if mix is None:
                raise ValueError("a mix needs its transcodingConfig")
            session.mix = ChannelMixRecorder(
                self.registry,
                res.appid,
                res.cname,
                session.directory,
                dataclasses.replace(mix, file_types=session.file_types),
                name=f"{session.sid}_{res.cname}",
                audio_uids=session.audio_uids,
                video_uids=session.video_uids,
                segment_target_s=session.segment_s,
                on_segment=lambda info: self._segment(session, info, "0", True, None),
                utc_segment_names=True,
                on_error=lambda exc: self._mix_failed(session, exc),
            )
            await session.mix.start()
        else:
            sub = self.registry.subscribe(res.appid, res.cname, media=False)
            try:
                # who is there already is recorded before start returns (the first event)
                await self._on_members(session, await sub.next_event())
            except BaseException:
                sub.close()
                raise
            session.watcher = asyncio.create_task(self._follow(session, sub))
        name = f"idle-{session.sid}"
        session.idle_task = asyncio.create_task(self._watch_idle(session), name=name)

    async def _abandon(self, session: CloudSession) -> None:
        """A start failed half-way: undo it; the resource may be started again."""
        with contextlib.suppress(Exception):
            await self._halt(session)
        del self.sessions[session.sid]
        session.resource.sid = None
        if self._writer is not None:
            self._writer.forget([session.sid], [])  # a segment row it may have left
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        await self._release_stores()

    async def _watch_idle(self, session: CloudSession) -> None:
        """maxIdleTime: the recorder leaves once nobody has been in the channel that long."""
        res = session.resource
        sub = self.registry.subscribe(res.appid, res.cname, media=False)
        idle_since: float | None = None
        try:
            while session.ended_at is None:
                channel = self.registry.get(res.appid, res.cname)
                present = bool(channel and channel.members)
                now = self._clock()
                idle_since = None if present else (idle_since or now)
                wait = IDLE_CHECK_S
                if idle_since is not None:
                    left = session.max_idle_s - (now - idle_since)
                    if left <= 0:
                        session.exit_reason = "idle"
                        log.info("cloud recording %s: idle for %.0f s, stopping",
                                 session.sid, session.max_idle_s)  # fmt: skip
                        with contextlib.suppress(CloudFailure):
                            await self.stop(session, async_stop=True, leave_code=LEAVE_IDLE)
                        return
                    wait = min(wait, left)
                with contextlib.suppress(TimeoutError):  # a join or leave wakes it up early
                    await asyncio.wait_for(sub.next_event(), wait)
        finally:
            sub.close()

    def _wanted(self, session: CloudSession, uid: str) -> bool:
        return session.audio_uids.allows(uid) or session.video_uids.allows(uid)

    async def _follow(self, session: CloudSession, sub: Subscription) -> None:
        """Individual mode: a recorder for each subscribed member, from its join on. A member
        who leaves keeps its recorder: if it comes back, its playlists go on (after a
        discontinuity when it was away long)."""
        try:
            while (event := await sub.next_event()) is not None:
                await self._on_members(session, event)
        finally:
            sub.close()

    async def _on_members(self, session: CloudSession, event: ChannelEvent | None) -> None:
        if event is None or event.kind not in ("snapshot", "join"):
            return
        uids = [m["uid"] for m in event.members] if event.kind == "snapshot" else [event.uid]
        for uid in uids:
            if uid not in session.members and self._wanted(session, uid):
                await self._record_member(session, uid)

    async def _record_member(self, session: CloudSession, uid: str) -> None:
        if session.max_uids is not None and len(session.members) >= session.max_uids:
            if uid not in session.over_cap:
                session.over_cap.add(uid)
                log.warning(
                    "cloud recording %s: uid %s is not recorded: subscribeUidGroup allows %d "
                    "uids and %d are being recorded",
                    session.sid, uid, session.max_uids, len(session.members),
                )  # fmt: skip
                await self._warn(session, NoticeModule.RECORDER, WarnCode.UID_GROUP_FULL,
                                 uid=uid, maxUids=session.max_uids)  # fmt: skip
            return
        res = session.resource
        audio, video = session.audio_uids.allows(uid), session.video_uids.allows(uid)
        outputs = session.outputs
        if not (audio and video) and OutputKind.AV in outputs.playlists:
            # a merged playlist of one kind would repeat that kind's own playlist
            outputs = dataclasses.replace(outputs, playlists=outputs.playlists - {OutputKind.AV})
        recorder = UidRecorder(
            self.registry,
            res.appid,
            res.cname,
            uid,
            session.directory / uid,
            outputs,
            name=f"{session.sid}_{res.cname}__uid_s_{uid}__uid_e",
            audio=audio,
            video=video,
            segment_target_s=session.segment_s,
            on_segment=lambda kind, info: self._segment(session, info, uid, False, kind),
            on_snapshot=lambda path, ms: self._snapshot(session, uid, path, ms),
            resume=session.resume.pop(uid, None),
            on_error=lambda exc: self._member_failed(session, uid, exc),
        )
        session.members[uid] = recorder  # before the await: a second caller sees it
        session.over_cap.discard(uid)
        try:
            await recorder.start()
        except Exception as exc:  # this uid is not recorded; the others are
            log.exception("cloud recording %s: the recorder of uid %s did not start",
                          session.sid, uid)  # fmt: skip
            del session.members[uid]
            self._member_failed(session, uid, exc)

    def _member_failed(self, session: CloudSession, uid: str, exc: BaseException) -> None:
        """A uid's recorder failed (to start, on a batch, or to finish): error 1, once per
        uid; the other uids go on."""
        if uid in session.failed_uids:
            return
        session.failed_uids.add(uid)
        message = f"the recorder of uid {uid} failed: {exc}"
        self._spawn(session, self._error(session, NoticeModule.RECORDER,
                                         ErrorCode.UID_RECORDER_FAILED, message,
                                         ErrorLevel.MAJOR, uid=uid))  # fmt: skip

    def _mix_failed(self, session: CloudSession, exc: BaseException) -> None:
        """The mix recorder failed: the recording ends abnormally (while a stop is under way,
        the stop goes on with what there is)."""
        if session.mix_failed or not session.announced:
            return  # told already, or a start that fails answers for itself
        session.mix_failed = True
        message = f"the mix recorder failed: {exc}"
        if session.ended_at is None:  # ended now: a stop from here on answers 49
            self._mark_failed(session)
            self._background(self._wind_up(session, ErrorCode.MIX_RECORDER_FAILED, message))
        else:
            self._spawn(session, self._error(session, NoticeModule.RECORDER,
                                             ErrorCode.MIX_RECORDER_FAILED, message,
                                             ErrorLevel.MAJOR))  # fmt: skip

    async def _stop_member(self, session: CloudSession, uid: str) -> None:
        """An update unsubscribed ``uid`` from everything: its playlists are ended and
        uploaded; subscribed again later, they continue after a discontinuity."""
        recorder = session.members.pop(uid)
        try:
            output = await recorder.stop()
        except Exception as exc:
            log.exception("cloud recording %s: the recorder of uid %s did not finish",
                          session.sid, uid)  # fmt: skip
            self._member_failed(session, uid, exc)
            return
        session.sliced.discard(uid)
        if output is None or not output.playlists:
            return
        session.resume[uid] = output.next_index
        ended = {
            p.name: session.render(p.name, True)
            for p in output.playlists.values()
            if p.name in session.listed
        }
        session.upload_tail = asyncio.create_task(
            self._upload_rendered(session, ended, session.upload_tail)
        )

    # files ------------------------------------------------------------------------------------

    def _segment(
        self,
        session: CloudSession,
        info: SegmentInfo,
        uid: str,
        mixed: bool,
        kind: OutputKind | None,
    ) -> None:
        """A segment closed: upload it, then the playlist that names it (in order). The first
        segment of a uid's recording is its slice start (42)."""
        name = info.path.name.rsplit("_", 1)[0] + ".m3u8"  # the writer's playlist
        slice_ms = int(info.program_date_time.timestamp() * 1000)
        if name not in session.playlists:
            track_type = session.mixed_track_type if kind is None else kind.track_type
            session.playlists[name] = FileEntry(name, track_type, uid, mixed, slice_ms)
            self._save(session)  # a new fileList entry
        listed = session.listed.setdefault(name, [])
        # the first segment since a restart follows the earlier ones after a discontinuity
        restarted = name not in session.run_playlists and bool(listed)
        session.run_playlists.add(name)
        discontinuity = info.discontinuity or restarted
        listed.append(
            PlaylistSegment(info.uri, info.duration_s, info.program_date_time, discontinuity)
        )
        if uid not in session.sliced:
            session.sliced.add(uid)
            details: dict[str, Any] = {
                "msgName": "recorder_slice_start",
                "startUtcMs": slice_ms,
                "uid": uid,
            }
            if uid in session.discontinued_ms:  # the end of what was recorded before
                details["discontinueUtcMs"] = session.discontinued_ms[uid]
            self._spawn(session, self._event(session, 42, details))
        # each upload waits for the one before: the spool gets the files in segment order
        session.upload_tail = asyncio.create_task(
            self._upload_segment(session, info.path, name, len(listed), session.upload_tail)
        )

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _snapshot(self, session: CloudSession, uid: str, path: Path, at_ms: int) -> None:
        """A JPG was taken: to the bucket (through the spool), and notification 45."""
        await self._spool_file(session, path)
        session.snapshots.append(path.name)
        self._save(session)
        details = {"msgName": "snapshot_file", "fileName": path.name, "uid": uid, "ts": at_ms}
        await self._event(session, 45, details)

    # query / update / stop -----------------------------------------------------------------------

    def session(self, appid: str, resource_id: str, sid: str, mode: str) -> CloudSession:
        """The session behind a path, or the API's error."""
        res = self.resource(appid, resource_id)
        session = self.sessions.get(sid)
        if session is None or res.sid != sid:
            raise CloudFailure(404, f"no recording session {sid} on this resource", 404)
        if session.mode != mode:
            raise CloudFailure(2, f"mode: the session was started in {session.mode} mode")
        return session

    async def update_layout(
        self,
        session: CloudSession,
        layout: LayoutSpec,
        style: MixStyle | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> None:
        """updateLayout (mix mode): layout, colour and images replaced; ``request`` (its
        ``clientRequest``) is kept for a restart."""
        if session.mix is None:
            raise CloudFailure(2, "updateLayout is for mix mode")
        self.check_running(session)
        await session.mix.update_layout(layout, style)
        if request is not None:
            session.layout_request = dict(request)
            await self._saved(session)

    async def update_subscriptions(
        self, session: CloudSession, audio: UidSelector, video: UidSelector
    ) -> None:
        """update: who is recorded from now on."""
        self.check_running(session)
        session.audio_uids, session.video_uids = audio, video
        if session.mix is not None:
            await session.mix.update_subscriptions(audio, video)
        else:
            for uid, recorder in list(session.members.items()):
                if self._wanted(session, uid):
                    await recorder.set_kinds(audio.allows(uid), video.allows(uid))
                else:
                    await self._stop_member(session, uid)
            channel = self.registry.get(session.resource.appid, session.resource.cname)
            for uid in list(channel.members) if channel is not None else []:
                if uid not in session.members and self._wanted(session, uid):
                    await self._record_member(session, uid)
        await self._saved(session)

    async def _halt(self, session: CloudSession) -> list[tuple[Path, str]]:
        """Stop the idle watch, the follower and every recorder, and wait until every segment
        is in the spool; the MP4s the mix built, with the names they are uploaded as. A
        recorder that fails to finish is told (error 1) and left out."""
        current = asyncio.current_task()
        for task in (session.idle_task, session.watcher):
            if task is not None and task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        mp4s: list[tuple[Path, str]] = []
        if session.mix is not None:
            try:
                mixed = await session.mix.stop()
            except Exception as exc:
                log.exception("cloud recording %s: the mix did not finish", session.sid)
                self._mix_failed(session, exc)
                mixed = None
            if mixed is not None and FileType.MP4 in session.file_types:
                for path, _ in mixed.mp4s:  # after a restart, numbering goes on
                    key = self._next_mp4(session)
                    mp4s.append((path, key))
                    session.mp4s.append(
                        FileEntry(key, session.mixed_track_type, "0", True, session.started_ms)
                    )
                unbuilt: set[str] = set()
                for _, part, reason in mixed.failed_mp4s:  # (the playlist keeps its segments)
                    unbuilt.update(seg.path.name for seg in part)
                    first, last = part[0].path.name, part[-1].path.name
                    # (201 is the uploader module's code, as the notices table lists it)
                    message = f"the MP4 of segments {first} to {last} could not be built: {reason}"
                    await self._error(session, NoticeModule.UPLOADER, ErrorCode.FILE_NOT_SPOOLED,
                                      message, ErrorLevel.MAJOR, fileName=first)  # fmt: skip
                # a failed part's segments are not covered: a suspend's restart builds them
                session.run_segments = [
                    seg.path.name for seg in mixed.segments if seg.path.name not in unbuilt
                ]
        for uid, recorder in list(session.members.items()):
            try:
                await recorder.stop()
            except Exception as exc:
                log.exception("cloud recording %s: the recorder of uid %s did not finish",
                              session.sid, uid)  # fmt: skip
                self._member_failed(session, uid, exc)
        if session.upload_tail is not None:
            try:
                await session.upload_tail  # every segment and playlist is in the spool
            except Exception:
                log.exception("cloud recording %s: handing files over failed", session.sid)
        await asyncio.gather(*(t for t in session.side_tasks if t is not current))
        return mp4s

    def _recorded_nothing(self, session: CloudSession) -> bool:
        return not (
            session.playlists or session.mp4s or session.snapshots or session.earlier_snapshots
        )

    async def stop(
        self, session: CloudSession, *, async_stop: bool = False, leave_code: int = LEAVE_STOPPED
    ) -> str:
        """Stop: finish the files, hand them to the spool; the uploading status."""
        if session.ended_at is not None:
            raise CloudFailure(49, "stop was already called on this session")
        session.status = Status.STOP_REQUESTED
        session.ended_at = self._clock()
        self._save(session)  # a restart from here on finishes the stop
        mp4s = await self._halt(session)
        await self._event(session, 41, {"msgName": "recorder_leave", "leaveCode": leave_code})
        session.leave_told = True
        self._save(session)
        if self._recorded_nothing(session):
            session.status = Status.EXITED
            await self._event(session, 11, {"msgName": "session_exit", "exitStatus": EXIT_NORMAL})
            await self._saved(session)
            await asyncio.to_thread(shutil.rmtree, session.directory, True)
            session.finished = True
            await self._release_stores()
            raise CloudFailure(435, "no file was recorded: nobody published in the channel")
        await self._upload_finals(session, mp4s, end=True)
        session.status = Status.STOPPED
        self._save(session)
        status = "unknown"
        if not async_stop:
            if await self.spool.wait_group(session.sid, self.stop_upload_timeout_s):
                status = "uploaded"
            elif await self._back_up(session, mp4s):
                status = "backuped"
                await self._warn(session, NoticeModule.UPLOADER, WarnCode.BACKUPED,
                                 uploadingStatus=status)  # fmt: skip
            else:
                await self._error(
                    session, NoticeModule.UPLOADER, ErrorCode.UPLOAD_UNCONFIRMED,
                    f"neither the bucket nor the server's backup confirmed the files within "
                    f"{self.stop_upload_timeout_s:.0f} s each; the uploader keeps trying",
                    ErrorLevel.MEDIUM, uploadingStatus=status,
                )  # fmt: skip
        # every file is linked into the spool by now: the working copies can go
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        session.status = Status.EXITED
        session.uploading_status = status
        await self._exited(session, EXIT_NORMAL)
        return status

    async def _exited(self, session: CloudSession, exit_status: int) -> None:
        """31 with the fileList (when there are files), 11, and the final state stored."""
        mode, files = session.file_list()
        if files:
            await self._event(
                session, 31, {"msgName": "uploaded", "status": 0, "fileListMode": mode,
                              "fileList": files}
            )  # fmt: skip
        await self._event(session, 11, {"msgName": "session_exit", "exitStatus": exit_status})
        await self._saved(session)
        session.finished = True
        await self._release_stores()

    async def _fail(self, session: CloudSession, code: ErrorCode, message: str) -> None:
        """The recording cannot go on: error 1 (fatal), status 20, what was recorded is
        uploaded with its playlists ended, then 41 and 11."""
        if session.ended_at is not None:
            return
        self._mark_failed(session)
        await self._wind_up(session, code, message)

    def _mark_failed(self, session: CloudSession) -> None:
        session.ended_at = self._clock()
        session.status = Status.EXITED_ABNORMALLY
        session.exit_reason = "error"
        session.mix_failed = True  # the fatal error is the one the app is told
        self._save(session)

    async def _wind_up(self, session: CloudSession, code: ErrorCode, message: str) -> None:
        """The rest of :meth:`_fail`, once the session is marked ended abnormally."""
        await self._error(session, NoticeModule.RECORDER, code, message, ErrorLevel.FATAL)
        try:
            mp4s = await self._halt(session)
        except Exception:
            log.exception("cloud recording %s: winding down after a failure", session.sid)
            mp4s = []
        await self._event(session, 41, {"msgName": "recorder_leave", "leaveCode": LEAVE_FAILED})
        session.leave_told = True
        await self._upload_finals(session, mp4s, end=True)
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        session.uploading_status = "unknown"
        await self._exited(session, EXIT_ABNORMAL)

    # kept across restarts --------------------------------------------------------------------

    async def _load_segments(self, session: CloudSession) -> None:
        assert self._store is not None
        add_segments(session, await self._store.list_cloud_segments(session.sid))

    async def open(self) -> None:
        """Load this node's resources and sessions from the store: recordings go on under
        their sids, a stop a restart interrupted is finished, stopped sessions answer query
        until they are forgotten. Without a store there is nothing to load."""
        if self._store is None or self._writer is None:
            return
        self._writer.start()
        now = self._clock()
        pruned = await self._store.prune_cloud(
            self.node, _utc(now - RESOURCE_TTL_S), _utc(now - ENDED_KEEP_S)
        )
        for r in await self._store.list_cloud_resources(self.node, _utc(now - RESOURCE_TTL_S)):
            self.resources[r.resource_id] = resource_from(r)
        running: list[CloudSession] = []
        interrupted: list[CloudSession] = []
        for row in await self._store.list_cloud_sessions(self.node):
            res = self.resources.get(row.resource_id)
            if res is None or res.sid != row.sid:
                log.error("cloud recording %s: its resource is not kept; left out", row.sid)
                continue
            try:
                session = session_from(row, res, self.work_dir / row.sid)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("cloud recording %s: stored state unreadable, left out: %r",
                          row.sid, exc)  # fmt: skip
                continue
            self.sessions[session.sid] = session
            if session.ended_at is None and session.status == Status.RECORDING:
                running.append(session)
            elif session.status in (Status.STOP_REQUESTED, Status.STOPPED):
                interrupted.append(session)
        log.info(
            "cloud recording: %d resources and %d sessions kept (%d recording, %d stopping);"
            " %d old rows pruned",
            len(self.resources), len(self.sessions), len(running), len(interrupted), pruned,
        )  # fmt: skip
        for session in interrupted:
            await self._load_segments(session)
            await self._finish_stop(session)
        for session in running:
            await self._load_segments(session)
            await self._resume(session)
        await self._release_stores()

    async def _resume(self, session: CloudSession) -> None:
        """A recording the restart interrupted goes on: same sid, same playlists (after a
        discontinuity), maxIdleTime counted from now."""
        res = session.resource
        try:
            mix = None
            if session.request is not None:
                storage = self.stores.config(session.store_id)
                if storage is None:
                    raise ValueError(f"storage config {session.store_id} is not registered")
                session.config = rebuild_config(
                    session.request, session.kept_lists, storage, session.mode
                )
                mix = session.config.mix
            if self._builds_mp4s(session):
                await self._recover_mp4s(session)
            await self._launch(session, mix)
            if session.layout_request is not None and session.mix is not None:
                paint = mix is None or mix.video
                layout, style = await rebuild_layout(
                    session.layout_request, res.cname, res.uid, paint=paint
                )
                await session.mix.update_layout(layout, style)
        except Exception as exc:
            log.exception("cloud recording %s could not be resumed", session.sid)
            message = f"the recording could not go on after a restart: {exc}"
            await self._fail(session, ErrorCode.RESUME_FAILED, message)
            return
        log.info("cloud recording %s of %s/%s resumed", session.sid, res.appid, res.cname)
        ended = max(session.discontinued_ms.values(), default=0)
        await self._warn(session, NoticeModule.RECORDER, WarnCode.RESUMED,
                         discontinueUtcMs=ended)  # fmt: skip

    async def _finish_stop(self, session: CloudSession) -> None:
        """A stop the restart interrupted: the playlists ended with what reached the spool,
        41 if it was not raised yet, then 31 and 11; the upload status stays ``unknown``."""
        await self._upload_finals(session, [], end=True)
        if not session.leave_told:
            await self._event(session, 41, {"msgName": "recorder_leave",
                                            "leaveCode": LEAVE_STOPPED})  # fmt: skip
            session.leave_told = True
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        session.status = Status.EXITED
        session.uploading_status = session.uploading_status or "unknown"
        await self._exited(session, EXIT_NORMAL)

    def begin_shutdown(self) -> None:
        """The server is going down: its publishers are about to be disconnected, which must
        not end recordings for idleness before :meth:`aclose` suspends them."""
        for session in self.sessions.values():
            if session.idle_task is not None and session.ended_at is None:
                session.idle_task.cancel()

    async def aclose(self) -> None:
        """Server shutdown. With a store, every recording is suspended: its files finished
        and in the spool, its playlists uploaded without an end, and it goes on after the
        restart (:meth:`open`). Without one, every recording is stopped."""
        await self._stop_releasing()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self.sessions.values()):
            if session.ended_at is not None:
                continue
            if self._writer is None:
                with contextlib.suppress(CloudFailure):
                    await self.stop(session, async_stop=True)
                continue
            try:
                mp4s = await self._halt(session)
                await self._upload_finals(session, mp4s, end=False)
                if self._builds_mp4s(session):  # the run's segments are in its MP4s now
                    await asyncio.to_thread(mark_covered, session.directory, session.run_segments)
                await self._saved(session)
                log.info("cloud recording %s suspended until the restart", session.sid)
            except Exception:
                log.exception("cloud recording %s: suspending it failed", session.sid)
        if self._writer is not None:
            await self._writer.aclose()
