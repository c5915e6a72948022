"""What a cloud recording keeps in the metadata store, so it outlives a server restart.

Why this shape: a recording runs for hours and a restart must neither lose it nor make the app
start over, so every change that query, stop or a resumed recording needs is written as it
happens: a resource at acquire, a session when it starts recording and at each change of state
(update, updateLayout, a new playlist, stop), and each segment once it is in the spool (its
row is what a playlist continues with after the restart). Never per frame.

The writes are group-committed (:class:`CloudStateWriter`): every change made while one
transaction is being written goes into the next, on aiosqlite's thread, so many recordings
closing segments at once cost a few transactions, not one each.

The start's ``clientRequest`` is kept as sent, less its ``storageConfig`` (the keys stay in the
store registry, mode 0600), and validated again when a recording resumes
(:func:`rebuild_config`), with the registered storage config put back in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.channel_mix import UidSelector
from mixer.layout import LayoutSpec
from mixer.member_writer import MemberOutputs, OutputKind
from mixer.mix_config import FileType, MixStyle, fetch_style
from mixer.playlist import PlaylistSegment
from storage.group_commit import GroupCommit
from storage.meta import (
    CloudRecordingStore,
    CloudResourceRow,
    CloudSegmentRow,
    CloudSessionRow,
    CloudWrites,
)
from storage.vendors import StorageConfig

from .cloud_recording_schema import RecordingMode, StartConfig, UidLists, parse_start_config
from .cloud_recording_schema_update import parse_update_layout
from .cloud_recording_session import (
    DEFAULT_MAX_IDLE_S,
    SEGMENT_S,
    CloudSession,
    FileEntry,
    Resource,
    Status,
)

log = logging.getLogger(__name__)


# JSON forms of the options a session records with ----------------------------------------------


def selector_json(selector: UidSelector) -> dict[str, Any]:
    """A uid selector as JSON."""
    only = None if selector.only is None else sorted(selector.only)
    return {"only": only, "exclude": sorted(selector.exclude)}


def selector_from(obj: Mapping[str, Any]) -> UidSelector:
    """The selector :func:`selector_json` wrote."""
    only = obj.get("only")
    return UidSelector(
        None if only is None else frozenset(only), frozenset(obj.get("exclude") or ())
    )


def outputs_json(outputs: MemberOutputs) -> dict[str, Any]:
    """Individual mode's outputs as JSON."""
    return {
        "playlists": sorted(k.value for k in outputs.playlists),
        "keep_audio_codec": outputs.keep_audio_codec,
        "snapshot_every_s": outputs.snapshot_every_s,
    }


def outputs_from(obj: Mapping[str, Any]) -> MemberOutputs:
    """The outputs :func:`outputs_json` wrote."""
    return MemberOutputs(
        frozenset(OutputKind(k) for k in obj["playlists"]),
        bool(obj["keep_audio_codec"]),
        obj.get("snapshot_every_s"),
    )


def lists_json(config: StartConfig) -> dict[str, Any]:
    """The subscribe lists in force (an update replaces the start's)."""

    def one(lists: UidLists) -> dict[str, Any]:
        return {
            "subscribe": None if lists.subscribe is None else list(lists.subscribe),
            "unsubscribe": None if lists.unsubscribe is None else list(lists.unsubscribe),
        }

    return {"audio": one(config.recording.audio_uids), "video": one(config.recording.video_uids)}


def without_storage(client_request: Mapping[str, Any]) -> dict[str, Any]:
    """The start's ``clientRequest`` as it is kept: its ``storageConfig`` (keys) left out."""
    return {k: v for k, v in client_request.items() if k != "storageConfig"}


def rebuild_config(
    request: Mapping[str, Any],
    lists: Mapping[str, Any] | None,
    storage: StorageConfig,
    mode: str,
) -> StartConfig:
    """The start config of a kept session, validated again (``CloudError`` when it no longer
    is), with the subscribe lists in force and the storage config it registered."""
    stored = storage.to_json()
    stored.pop("stsExpiration", None)  # an STS token past its time must not stop the resume
    config = parse_start_config({**request, "storageConfig": stored}, RecordingMode(mode))
    config = replace(config, storage=storage)
    if lists:

        def one(obj: Mapping[str, Any]) -> UidLists:
            sub, unsub = obj.get("subscribe"), obj.get("unsubscribe")
            return UidLists(
                None if sub is None else tuple(sub), None if unsub is None else tuple(unsub)
            )

        recording = replace(
            config.recording, audio_uids=one(lists["audio"]), video_uids=one(lists["video"])
        )
        config = replace(config, recording=recording)
    return config


async def rebuild_layout(
    request: Mapping[str, Any], cname: str, uid: str, *, paint: bool = True
) -> tuple[LayoutSpec, MixStyle]:
    """The layout (and colour and images: ``paint``, unless the mix is audio only) of the
    last updateLayout's ``clientRequest``."""
    req = parse_update_layout({"cname": cname, "uid": uid, "clientRequest": dict(request)})
    style = await fetch_style(
        req.background_color,
        req.background_image,
        req.default_user_background_image,
        req.user_backgrounds,
        paint=paint,
    )
    return req.layout, style


# rows ------------------------------------------------------------------------------------------


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def resource_row(res: Resource, node: str) -> CloudResourceRow:
    """A resource as the store keeps it."""
    return CloudResourceRow(
        res.resource_id, node, res.appid, res.cname, res.uid, _utc(res.acquired_at),
        res.request or {}, res.sid,
    )  # fmt: skip


def resource_from(row: CloudResourceRow) -> Resource:
    """The resource a row keeps."""
    return Resource(
        row.resource_id, row.appid, row.cname, row.uid, row.acquired_at.timestamp(),
        row.request or None, row.sid,
    )  # fmt: skip


def session_row(session: CloudSession, node: str, now: float) -> CloudSessionRow:
    """A session as the store keeps it: what query answers and what resuming it needs."""
    res = session.resource
    lists = session.kept_lists
    if session.config is not None and session.request is not None:
        lists = lists_json(session.config)
    state = {
        "request": session.request,
        "lists": lists,
        "layout": session.layout_request,
        "file_types": sorted(t.value for t in session.file_types),
        "audio_uids": selector_json(session.audio_uids),
        "video_uids": selector_json(session.video_uids),
        "outputs": outputs_json(session.outputs),
        "max_uids": session.max_uids,
        "segment_s": session.segment_s,
        "max_idle_s": session.max_idle_s,
        "snapshot_every_s": session.snapshot_every_s,
        "playlists": [e.to_json() for e in session.playlists.values()],
        "mp4s": [e.to_json() for e in session.mp4s],
        "snapshots": session.earlier_snapshots + len(session.snapshots),
        "leave_told": session.leave_told,
    }
    return CloudSessionRow(
        sid=session.sid,
        resource_id=res.resource_id,
        node=node,
        appid=res.appid,
        cname=res.cname,
        uid=res.uid,
        mode=session.mode,
        status=session.status,
        store_id=session.store_id,
        started_at=_utc(session.started_ms / 1000),
        updated_at=_utc(now),
        ended_at=None if session.ended_at is None else _utc(session.ended_at),
        exit_reason=session.exit_reason,
        uploading_status=session.uploading_status,
        state=state,
    )


def session_from(row: CloudSessionRow, res: Resource, directory: Path) -> CloudSession:
    """The session a row keeps (its segments come with :func:`add_segments`); ``KeyError``,
    ``TypeError`` or ``ValueError`` when the row cannot be read."""
    state = row.state
    return CloudSession(
        row.sid,
        res,
        row.mode,
        row.store_id,
        directory,
        frozenset(FileType(t) for t in state["file_types"]),
        status=row.status,
        started_ms=round(row.started_at.timestamp() * 1000),
        outputs=outputs_from(state["outputs"]),
        max_uids=state.get("max_uids"),
        audio_uids=selector_from(state["audio_uids"]),
        video_uids=selector_from(state["video_uids"]),
        playlists={e.name: e for e in (FileEntry.from_json(o) for o in state.get("playlists", []))},
        mp4s=[FileEntry.from_json(o) for o in state.get("mp4s", [])],
        ended_at=None if row.ended_at is None else row.ended_at.timestamp(),
        segment_s=float(state.get("segment_s", SEGMENT_S)),
        max_idle_s=float(state.get("max_idle_s", DEFAULT_MAX_IDLE_S)),
        snapshot_every_s=state.get("snapshot_every_s"),
        exit_reason=row.exit_reason,
        request=state.get("request"),
        layout_request=state.get("layout"),
        kept_lists=state.get("lists"),
        earlier_snapshots=int(state.get("snapshots", 0)),
        uploading_status=row.uploading_status,
        leave_told=bool(state.get("leave_told", False)),
        announced=True,  # 40 and 30 went out before it was first kept
        # ended before the restart: a failure cut short is not finished again
        finished=row.status in (Status.EXITED, Status.EXITED_ABNORMALLY),
    )


def add_segments(session: CloudSession, rows: Iterable[CloudSegmentRow]) -> None:
    """The segments a session had uploaded, per playlist, and where each uid's recording
    stopped (``discontinueUtcMs`` of the slice start that follows)."""
    for row in rows:
        session.listed.setdefault(row.playlist, []).append(
            PlaylistSegment(row.uri, row.duration_s, row.program_date_time, row.discontinuity)
        )
    for name, segments in session.listed.items():
        entry = session.playlists.get(name)
        last = segments[-1] if segments else None
        if entry is None or last is None or last.program_date_time is None:
            continue
        end_ms = round((last.program_date_time.timestamp() + last.duration_s) * 1000)
        uid = entry.uid
        session.discontinued_ms[uid] = max(session.discontinued_ms.get(uid, 0), end_ms)


# the writer ----------------------------------------------------------------------------------


class CloudStateWriter(GroupCommit[CloudWrites]):
    """Writes ``CloudWrites`` batches to a ``CloudRecordingStore`` from one task, one at a time.

    Each change returns the future of the batch it joined (resolved once that batch is
    written, or failed with the store's error); await it through ``asyncio.shield`` where the
    change must be durable before going on (acquire, start, stop), or let it go.
    """

    def __init__(self, store: CloudRecordingStore) -> None:
        super().__init__(CloudWrites, store.write_cloud)

    def start(self) -> None:
        """Start the writing task."""
        self._start_task("cloud-state")

    def resource(self, row: CloudResourceRow) -> asyncio.Future[None]:
        """Store (or replace) a resource."""
        self._open.resources[row.resource_id] = row
        return self._kick()

    def session(self, row: CloudSessionRow) -> asyncio.Future[None]:
        """Store (or replace) a session; the latest row of a sid in a batch wins."""
        self._open.sessions[row.sid] = row
        return self._kick()

    def segment(self, row: CloudSegmentRow) -> asyncio.Future[None]:
        """Store a segment handed to the uploader."""
        self._open.segments.append(row)
        return self._kick()

    def forget(self, sids: list[str], resource_ids: list[str]) -> asyncio.Future[None]:
        """Remove sessions (with their segments) and resources kept long enough."""
        for sid in sids:
            self._open.sessions.pop(sid, None)
        for rid in resource_ids:
            self._open.resources.pop(rid, None)
        self._open.forget_sessions += sids
        self._open.forget_resources += resource_ids
        return self._kick()

    def _kick(self) -> asyncio.Future[None]:
        if not self.started:
            raise RuntimeError("the cloud state writer is not started")
        return super()._kick()

    def _failed(self, batch: CloudWrites, exc: Exception) -> None:
        log.error(
            "cloud recording state write failed (%d resources, %d sessions, %d segments"
            " not stored; a restart would not know them): %s",
            len(batch.resources), len(batch.sessions), len(batch.segments), exc,
        )  # fmt: skip
