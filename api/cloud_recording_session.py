"""A cloud recording as the service holds it: its resource, its session, the files of its
fileList, and the API's statuses and refusals. Plain data and small helpers; the work is done by
:class:`api.cloud_recording.CloudRecordingService`, what is kept across restarts by
``cloud_recording_state``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.channel_mix import EVERYONE, ChannelMixRecorder, UidSelector
from ingest.individual import UidRecorder
from mixer.member_writer import DEFAULT_OUTPUTS, SEPARATE, MemberOutputs, OutputKind
from mixer.mix_config import FileType
from mixer.playlist import Playlist, PlaylistSegment

from .cloud_recording_notices import WarnCode

SEGMENT_S = 4.0  # target length of a recording's segments
DEFAULT_MAX_IDLE_S = 30.0  # the seed's maxIdleTime


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
    request: dict[str, Any] | None = None  # the acquire body as sent, for start to match
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

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FileEntry:
        """The entry :meth:`to_json` wrote."""
        return cls(
            str(obj["fileName"]),
            str(obj["trackType"]),
            str(obj["uid"]),
            bool(obj["mixedAllUser"]),
            int(obj["sliceStartTime"]),
            bool(obj.get("isPlayable", True)),
        )


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
    over_cap: set[str] = field(default_factory=set)  # uids left out for the bound (told)
    resume: dict[str, dict[OutputKind, int]] = field(default_factory=dict)  # stopped uids
    sliced: set[str] = field(default_factory=set)  # uids whose slice start (42) was told
    audio_uids: UidSelector = EVERYONE
    video_uids: UidSelector = EVERYONE
    playlists: dict[str, FileEntry] = field(default_factory=dict)  # name → entry
    mp4s: list[FileEntry] = field(default_factory=list)
    run_segments: list[str] = field(default_factory=list)  # a stopped mix run's, in its MP4s
    upload_tail: asyncio.Task[None] | None = None  # the last of the chained segment uploads
    side_tasks: set[asyncio.Task[None]] = field(default_factory=set)  # notifications
    watcher: asyncio.Task[None] | None = None
    ended_at: float | None = None
    segment_s: float = SEGMENT_S
    config: Any = None  # the parsed start config, for update to merge into
    max_idle_s: float = DEFAULT_MAX_IDLE_S
    snapshot_every_s: float | None = None
    snapshots: list[str] = field(default_factory=list)  # taken since the (re)start
    idle_task: asyncio.Task[None] | None = None
    exit_reason: str = ""
    # kept for a restart: the start's clientRequest (less storageConfig), the last layout
    request: dict[str, Any] | None = None
    layout_request: dict[str, Any] | None = None
    kept_lists: dict[str, Any] | None = None  # the subscribe lists a restart found
    # every playlist's segments in the spool, in order, earlier runs included: what each
    # playlist is rendered from when it is uploaded
    listed: dict[str, list[PlaylistSegment]] = field(default_factory=dict)
    run_playlists: set[str] = field(default_factory=set)  # with a segment since the (re)start
    discontinued_ms: dict[str, int] = field(default_factory=dict)  # uid → end before restart
    earlier_snapshots: int = 0
    uploading_status: str = ""
    leave_told: bool = False  # 41 was raised (a restart mid-stop does not raise it twice)
    warned: set[WarnCode] = field(default_factory=set)  # once-per-session warnings raised
    failed_uids: set[str] = field(default_factory=set)  # uids whose failure was told
    mix_failed: bool = False
    # notices raised while starting wait until 40 and 30 have told the app it started
    announced: bool = False
    # its last files are handed to the spool and 11 is raised (its storage config is needed
    # no more, but for the files still in the spool)
    finished: bool = False
    held: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def file_list(self) -> tuple[str, list[dict[str, Any]] | str]:
        """(fileListMode, fileList) as the API answers them."""
        entries = list(self.playlists.values()) + self.mp4s
        if self.mode == "mix" and self.file_types == frozenset({FileType.HLS}):
            return "string", entries[0].name if entries else ""
        return "json", [e.to_json() for e in entries]

    @property
    def mixed_track_type(self) -> str:
        """The ``trackType`` of a mix's files: what its ``streamTypes`` records."""
        mix = getattr(self.config, "mix", None)
        return "audio_and_video" if mix is None else mix.track_type

    def render(self, name: str, end: bool, count: int | None = None) -> bytes:
        """Playlist ``name`` as uploaded: its first ``count`` segments (all by default)."""
        segments = self.listed.get(name, [])
        playlist = Playlist(segments[:count] if count is not None else list(segments))
        return playlist.render(end).encode()


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
