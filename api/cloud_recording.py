"""The cloud recording service behind ``/v1/apps/{appid}/cloud_recording/``: resources, recording
sessions (individual and mix), their files in the user's bucket, and their statuses.

A resource (``acquire``) lives 5 minutes and serves one session; its id names the node it was
placed on (``<node>.<random>``), so a cluster can route the calls that carry it. A session
(``start``) subscribes to the channel: in mix mode one :class:`ChannelMixRecorder`, in individual
mode one :class:`UidRecorder` per subscribed uid (separate audio and video playlists, a merged
one with streamMode "standard", snapshots), started as they join, up to the subscribeUidGroup's
bound. Every finished file goes through the spool to the ``storageConfig``'s bucket
(registered, so files still reach it after a restart). HTTP, auth and request parsing live in
``cloud_recording_routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.channel_mix import EVERYONE, ChannelMixRecorder, UidSelector
from ingest.channels import ChannelEvent, ChannelRegistry, Subscription
from ingest.individual import UidRecorder
from mixer.layout import LayoutSpec
from mixer.member_writer import DEFAULT_OUTPUTS, SEPARATE, MemberOutputs, OutputKind
from mixer.mix import FileType, MixConfig, MixStyle
from mixer.segmenter import SegmentInfo
from storage.errors import SpoolFull
from storage.registry import DEFAULT_STORE_ID, StoreRegistry
from storage.spool import Spool
from storage.vendors import StorageConfig

log = logging.getLogger(__name__)

RESOURCE_TTL_S = 300.0  # "valid for 5 minutes"
SPOOL_FULL_RETRY_MIN_S, SPOOL_FULL_RETRY_MAX_S = 0.5, 10.0
IDLE_CHECK_S = 5.0  # how often an idle channel is looked at (joins and leaves wake it sooner)
STOP_UPLOAD_TIMEOUT_S = 60.0
ENDED_KEEP_S = 600.0  # a stopped session answers query this long


# (session, event type, details): what the app's webhook is told
Notify = Callable[["CloudSession", int, dict[str, Any]], Awaitable[None]]


class Status:
    """The API's status numbers."""

    NOT_STARTED = 0
    INITIALISED = 1
    STARTING = 2
    PARTIALLY_READY = 3
    READY = 4
    RECORDING = 5
    STOP_REQUESTED = 6
    STOPPED = 7
    EXITED = 8
    EXITED_ABNORMALLY = 20


class CloudFailure(Exception):
    """A refusal with the API's code (the routes turn it into ``{"code", "reason"}``)."""

    def __init__(self, code: int, reason: str, http_status: int = 400) -> None:
        super().__init__(reason)
        self.code, self.reason, self.http_status = code, reason, http_status


@dataclass(slots=True)
class Resource:
    """What ``acquire`` handed out."""

    resource_id: str
    appid: str
    cname: str
    uid: str
    acquired_at: float
    start_parameter: dict[str, Any] | None = None
    sid: str | None = None  # the one session it started


@dataclass(slots=True)
class FileEntry:
    """One file of the fileList."""

    name: str
    track_type: str  # audio | video | audio_and_video
    uid: str  # "0" in mix mode
    mixed_all_user: bool
    slice_start_ms: int
    playable: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "fileName": self.name,
            "trackType": self.track_type,
            "uid": self.uid,
            "mixedAllUser": self.mixed_all_user,
            "isPlayable": self.playable,
            "sliceStartTime": self.slice_start_ms,
        }


@dataclass(slots=True)
class CloudSession:
    """One recording."""

    sid: str
    resource: Resource
    mode: str
    store_id: str
    directory: Path
    file_types: frozenset[FileType]
    status: int = Status.INITIALISED
    started_ms: int = 0
    mix: ChannelMixRecorder | None = None
    members: dict[str, UidRecorder] = field(default_factory=dict)
    outputs: MemberOutputs = DEFAULT_OUTPUTS  # individual mode: the playlists, snapshots
    max_uids: int | None = None  # individual mode: subscribeUidGroup's upper bound
    over_cap: set[str] = field(default_factory=set)  # uids left out for the bound (logged)
    resume: dict[str, dict[OutputKind, int]] = field(default_factory=dict)  # stopped uids
    sliced: set[str] = field(default_factory=set)  # uids whose slice start (42) was told
    audio_uids: UidSelector = EVERYONE
    video_uids: UidSelector = EVERYONE
    playlists: dict[str, FileEntry] = field(default_factory=dict)  # name → entry
    mp4s: list[FileEntry] = field(default_factory=list)
    upload_tail: asyncio.Task[None] | None = None  # the last of the chained segment uploads
    side_tasks: set[asyncio.Task[None]] = field(default_factory=set)  # notifications
    watcher: asyncio.Task[None] | None = None
    ended_at: float | None = None
    segment_s: float = 4.0
    config: Any = None  # the parsed start config, for update to merge into
    max_idle_s: float = 30.0
    snapshot_every_s: float | None = None
    snapshots: list[str] = field(default_factory=list)
    idle_task: asyncio.Task[None] | None = None
    exit_reason: str = ""

    def file_list(self) -> tuple[str, list[dict[str, Any]] | str]:
        """(fileListMode, fileList) as the API answers them."""
        entries = list(self.playlists.values()) + self.mp4s
        if self.mode == "mix" and self.file_types == frozenset({FileType.HLS}):
            return "string", entries[0].name if entries else ""
        return "json", [e.to_json() for e in entries]


def member_outputs(
    stream_mode: str = "default",
    stream_types: int = 2,
    *,
    record: bool = True,
    snapshot_every_s: float | None = None,
) -> MemberOutputs:
    """Individual mode's files from ``streamMode`` and ``streamTypes``: "default" separate
    audio and video playlists, "standard" a merged one too (with both kinds subscribed),
    "original" (with audio only, streamTypes 0) the audio as received; ``record`` false:
    snapshots only, no playlist."""
    if not record:
        playlists: frozenset[OutputKind] = frozenset()
    elif stream_mode == "original" and stream_types == 0:
        return MemberOutputs(frozenset({OutputKind.AUDIO}), True, snapshot_every_s)
    elif stream_mode == "standard" and stream_types == 2:
        playlists = SEPARATE | {OutputKind.AV}
    else:
        playlists = SEPARATE
    return MemberOutputs(playlists, False, snapshot_every_s)


def new_resource_id(node: str) -> str:
    """``<node>.<random>``: opaque to clients, routable by a cluster."""
    return f"{node}.{secrets.token_urlsafe(48)}"


def node_of(resource_id: str) -> str:
    """The node a resource id names, or ``CloudFailure`` 1001 when it is unparseable."""
    node, sep, rest = resource_id.partition(".")
    if not sep or not node or len(rest) < 16:
        raise CloudFailure(1001, "the resource id cannot be parsed")
    return node


class CloudRecordingService:
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
    ) -> None:
        self.registry, self.stores, self.spool = registry, stores, spool
        self._notify = notify
        self.stop_upload_timeout_s = STOP_UPLOAD_TIMEOUT_S
        self.work_dir = work_dir
        self.node = node
        self._clock = clock
        self.resources: dict[str, Resource] = {}
        self.sessions: dict[str, CloudSession] = {}

    # acquire / start ------------------------------------------------------------------------

    def acquire(
        self, appid: str, cname: str, uid: str, start_parameter: dict[str, Any] | None
    ) -> Resource:
        """A new resource for one session of ``cname``."""
        self._expire()
        resource = Resource(
            new_resource_id(self.node), appid, cname, uid, self._clock(), start_parameter
        )
        self.resources[resource.resource_id] = resource
        return resource

    def _expire(self) -> None:
        now = self._clock()
        for rid, res in list(self.resources.items()):
            if res.sid is None and now - res.acquired_at > RESOURCE_TTL_S:
                del self.resources[rid]
        for sid, session in list(self.sessions.items()):
            if session.ended_at is not None and now - session.ended_at > ENDED_KEEP_S:
                del self.sessions[sid]

    def resource(self, appid: str, resource_id: str) -> Resource:
        """The live resource, or the API's error for a bad, expired or foreign one."""
        node_of(resource_id)
        res = self.resources.get(resource_id)
        if res is None:
            raise CloudFailure(433, "the resource id has expired or does not exist")
        if res.appid != appid:
            raise CloudFailure(1003, "the appid does not match the resource")
        if res.sid is None and self._clock() - res.acquired_at > RESOURCE_TTL_S:
            del self.resources[resource_id]
            raise CloudFailure(433, "the resource id has expired (5 minutes after acquire)")
        return res

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
        segment_s: float = 4.0,
        max_idle_s: float = 30.0,
        snapshot_every_s: float | None = None,
        outputs: MemberOutputs | None = None,
        max_uids: int | None = None,
    ) -> CloudSession:
        """Start recording ``cname``; the bucket is checked first (a bad one fails the start).

        Individual mode: ``outputs`` (see :func:`member_outputs`; by default separate audio and
        video playlists, with snapshots every ``snapshot_every_s``), at most ``max_uids`` uids.
        """
        res = self.resource(appid, resource_id)
        if res.sid is not None:
            raise CloudFailure(7, "start was already called on this resource")
        if (res.cname, res.uid) != (cname, uid):
            raise CloudFailure(432, "cname and uid differ from those of the acquire request")
        for other in self.sessions.values():
            same = (other.resource.appid, other.resource.cname, other.resource.uid)
            if other.ended_at is None and same == (appid, cname, uid):
                raise CloudFailure(53, f"uid {uid} is already recording channel {cname}")
        store_id = await self.stores.register(storage)  # StorageError: the route says why
        sid = secrets.token_hex(16)
        res.sid = sid
        directory = self.work_dir / sid
        session = CloudSession(
            sid,
            res,
            mode,
            store_id,
            directory,
            # individual mode writes HLS only: the seed's "use the default value" ["hls"]
            file_types if mode == "mix" else frozenset({FileType.HLS}),
            status=Status.STARTING,
            started_ms=int(self._clock() * 1000),
            audio_uids=audio_uids,
            video_uids=video_uids,
            segment_s=segment_s,
            max_idle_s=max_idle_s,
            snapshot_every_s=snapshot_every_s,
            outputs=outputs or member_outputs(snapshot_every_s=snapshot_every_s),
            max_uids=max_uids,
        )
        self.sessions[sid] = session
        if mode == "mix":
            assert mix is not None
            mix = dataclasses.replace(mix, file_types=file_types)
            session.mix = ChannelMixRecorder(
                self.registry,
                appid,
                cname,
                directory,
                mix,
                name=f"{sid}_{cname}",
                audio_uids=audio_uids,
                video_uids=video_uids,
                segment_target_s=segment_s,
                on_segment=lambda info: self._segment(session, info, "0", True, None),
                utc_segment_names=True,
            )
            await session.mix.start()
        else:
            sub = self.registry.subscribe(appid, cname, media=False)
            # who is there already is recorded before start returns (the first event)
            await self._on_members(session, await sub.next_event())
            session.watcher = asyncio.create_task(self._follow(session, sub))
        session.status = Status.RECORDING
        session.idle_task = asyncio.create_task(self._watch_idle(session), name=f"idle-{sid}")
        log.info("cloud recording %s of %s/%s (%s) started", sid, appid, cname, mode)
        await self._event(
            session, 40, {"msgName": "recorder_start", "startUtcMs": session.started_ms}
        )
        await self._event(session, 30, {"msgName": "uploader_started", "status": 0})
        return session

    async def _event(self, session: CloudSession, event_type: int, details: dict[str, Any]) -> None:
        if self._notify is not None:
            try:
                await self._notify(session, event_type, details)
            except Exception:  # a notification must never break a recording
                log.exception("notification %d of %s failed", event_type, session.sid)

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
                            await self.stop(session, async_stop=True, leave_code=2)
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
        )
        session.members[uid] = recorder  # before the await: a second caller sees it
        session.over_cap.discard(uid)
        await recorder.start()

    async def _stop_member(self, session: CloudSession, uid: str) -> None:
        """An update unsubscribed ``uid`` from everything: its playlists are ended and
        uploaded; subscribed again later, they continue after a discontinuity."""
        recorder = session.members.pop(uid)
        output = await recorder.stop()
        session.sliced.discard(uid)
        if output is None or not output.playlists:
            return
        session.resume[uid] = output.next_index
        session.upload_tail = asyncio.create_task(
            self._upload(session, list(output.playlists.values()), after=session.upload_tail)
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
        playlist = info.path.with_name(info.path.name.rsplit("_", 1)[0] + ".m3u8")
        slice_ms = int(info.program_date_time.timestamp() * 1000)
        if playlist.name not in session.playlists:
            track_type = "audio_and_video" if kind is None else kind.track_type
            session.playlists[playlist.name] = FileEntry(
                playlist.name, track_type, uid, mixed, slice_ms
            )
        if uid not in session.sliced:
            session.sliced.add(uid)
            details = {"msgName": "recorder_slice_start", "startUtcMs": slice_ms, "uid": uid}
            self._spawn(session, self._event(session, 42, details))
        # each upload waits for the one before: the spool gets the files in segment order
        session.upload_tail = asyncio.create_task(
            self._upload(session, [info.path, playlist], after=session.upload_tail)
        )

    def _spawn(self, session: CloudSession, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        session.side_tasks.add(task)
        task.add_done_callback(session.side_tasks.discard)

    async def _snapshot(self, session: CloudSession, uid: str, path: Path, at_ms: int) -> None:
        """A JPG was taken: to the bucket (through the spool), and notification 45."""
        await self._upload(session, [path])
        session.snapshots.append(path.name)
        details = {"msgName": "snapshot_file", "fileName": path.name, "uid": uid, "ts": at_ms}
        await self._event(session, 45, details)

    async def _upload(
        self,
        session: CloudSession,
        paths: list[Path],
        after: asyncio.Task[None] | None = None,
        *,
        prefix: str = "",
        group: str | None = None,
    ) -> None:
        """Hand files to the spool, linked not read (an MP4 may be gigabytes); the files stay
        where they are (the MP4 is built from the segments). A full spool is waited out."""
        if after is not None:
            with contextlib.suppress(Exception):
                await after  # its failure is logged where it happened
        for path in paths:
            delay = SPOOL_FULL_RETRY_MIN_S
            while True:
                try:
                    await self.spool.add(
                        prefix + path.name,
                        path,
                        group=group or session.sid,
                        store_id=session.store_id if group is None else DEFAULT_STORE_ID,
                        move=False,
                    )
                    break
                except SpoolFull:
                    log.error("spool full: %s waits (session %s)", path.name, session.sid)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, SPOOL_FULL_RETRY_MAX_S)
                except OSError:
                    log.exception("could not spool %s of %s", path, session.sid)
                    break

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
        self, session: CloudSession, layout: LayoutSpec, style: MixStyle | None = None
    ) -> None:
        """updateLayout (mix mode): layout, colour and images replaced."""
        if session.mix is None:
            raise CloudFailure(2, "updateLayout is for mix mode")
        await session.mix.update_layout(layout, style)

    async def update_subscriptions(
        self, session: CloudSession, audio: UidSelector, video: UidSelector
    ) -> None:
        """update: who is recorded from now on."""
        session.audio_uids, session.video_uids = audio, video
        if session.mix is not None:
            await session.mix.update_subscriptions(audio, video)
            return
        for uid, recorder in list(session.members.items()):
            if self._wanted(session, uid):
                await recorder.set_kinds(audio.allows(uid), video.allows(uid))
            else:
                await self._stop_member(session, uid)
        channel = self.registry.get(session.resource.appid, session.resource.cname)
        for uid in list(channel.members) if channel is not None else []:
            if uid not in session.members and self._wanted(session, uid):
                await self._record_member(session, uid)

    async def stop(
        self, session: CloudSession, *, async_stop: bool = False, leave_code: int = 0
    ) -> str:
        """Stop: finish the files, hand them to the spool; the uploading status."""
        if session.ended_at is not None:
            raise CloudFailure(49, "stop was already called on this session")
        session.status = Status.STOP_REQUESTED
        session.ended_at = self._clock()
        if session.idle_task is not None and session.idle_task is not asyncio.current_task():
            session.idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.idle_task
        finals: list[Path] = []
        if session.mix is not None:
            mixed = await session.mix.stop()
            if mixed is not None:
                finals.append(mixed.playlist)
                for path, _ in mixed.mp4s if FileType.MP4 in session.file_types else []:
                    finals.append(path)
                    session.mp4s.append(
                        FileEntry(path.name, "audio_and_video", "0", True, session.started_ms)
                    )
        if session.watcher is not None:
            session.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.watcher
        for recorder in list(session.members.values()):
            output = await recorder.stop()
            if output is not None:
                finals += output.playlists.values()
        if session.upload_tail is not None:
            await session.upload_tail  # every segment and playlist is in the spool
        await asyncio.gather(*session.side_tasks)
        await self._event(session, 41, {"msgName": "recorder_leave", "leaveCode": leave_code})
        if not finals and not session.snapshots and not session.playlists:
            session.status = Status.EXITED
            await self._event(session, 11, {"msgName": "session_exit", "exitStatus": 0})
            raise CloudFailure(435, "no file was recorded: nobody published in the channel")
        await self._upload(session, finals)
        session.status = Status.STOPPED
        status = "unknown"
        if not async_stop:
            done = await self.spool.wait_group(session.sid, self.stop_upload_timeout_s)
            if done:
                status = "uploaded"
            elif await self._back_up(session):
                status = "backuped"
        # every file is linked into the spool by now: the working copies can go
        await asyncio.to_thread(shutil.rmtree, session.directory, True)
        session.status = Status.EXITED
        mode, files = session.file_list()
        await self._event(
            session, 31, {"msgName": "uploaded", "status": 0, "fileListMode": mode,
                          "fileList": files}
        )  # fmt: skip
        await self._event(session, 11, {"msgName": "session_exit", "exitStatus": 0})
        return status

    async def _back_up(self, session: CloudSession) -> bool:
        """The user's bucket did not take the files in time: put a copy of every file in the
        server's own store (``backup/<appid>/<sid>/``). The spool keeps retrying the user's
        bucket, so the files reach it when it works again; true when the copies are stored."""
        files = await asyncio.to_thread(
            lambda: sorted(p for p in session.directory.rglob("*") if p.is_file())
        )
        group = f"{session.sid}-backup"
        prefix = f"backup/{session.resource.appid}/{session.sid}/"
        await self._upload(session, files, prefix=prefix, group=group)
        log.warning(
            "cloud recording %s: the bucket did not confirm its files within %.0f s; "
            "%d files backed up to %s in the server's store",
            session.sid, self.stop_upload_timeout_s, len(files), prefix,
        )  # fmt: skip
        return await self.spool.wait_group(group, self.stop_upload_timeout_s)

    async def aclose(self) -> None:
        """Stop every running session (server shutdown); files go to the spool."""
        for session in list(self.sessions.values()):
            if session.ended_at is None:
                with contextlib.suppress(CloudFailure):
                    await self.stop(session, async_stop=True)
