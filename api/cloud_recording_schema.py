"""Request bodies of the cloud recording REST API (issue 8), parsed into frozen dataclasses.

Pure code: no HTTP, no media. Each ``parse_*`` takes the decoded JSON body (see
:func:`parse_json`) and returns a typed request or raises :class:`CloudError` carrying the
vendor's error code and a reason that starts with the offending field's path. This module
holds acquire and stop and re-exports the rest: start in ``cloud_recording_schema_start``,
update and updateLayout in ``cloud_recording_schema_update``, the error shape and field
readers in ``cloud_recording_schema_fields``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any

from .cloud_recording_schema_fields import (
    MAX_BODY_BYTES,
    MAX_RECORDER_UID,
    CloudCode,
    CloudError,
    RecordingMode,
    check_recorder_uid,
    invalid,
    join,
    parse_json,
    parse_mode,
    read_bool,
    read_cname,
    read_int,
    read_object,
    require_body,
)
from .cloud_recording_schema_start import (
    ALL_STREAMS,
    EVERYONE,
    MAX_LIST_UIDS,
    NOBODY,
    ChannelType,
    DecryptionMode,
    RecordingConfig,
    RecordingFileConfig,
    SnapshotConfig,
    StartConfig,
    StartRequest,
    StreamMode,
    StreamTypes,
    UidFilter,
    UidLists,
    VideoStreamType,
    mix_config,
    parse_start,
    parse_start_config,
    read_recording_config,
    read_recording_file_config,
    read_snapshot_config,
    read_storage,
)
from .cloud_recording_schema_update import (
    LayoutUpdate,
    UpdateRequest,
    parse_update,
    parse_update_layout,
)

MIN_RESOURCE_HOURS = 1
MAX_RESOURCE_HOURS = 720  # 30 days
DEFAULT_RESOURCE_HOURS = 72


class Scene(IntEnum):
    """Acquire's ``scene``: what the resource will record."""

    REALTIME = 0  # individual or mix
    WEB = 1  # web page recording
    DELAYED_TRANSCODING = 2  # individual, transcoded after the fact

    def allows(self, mode: RecordingMode) -> bool:
        """Whether a start in ``mode`` may use a resource acquired for this scene."""
        if self is Scene.REALTIME:
            return mode in (RecordingMode.INDIVIDUAL, RecordingMode.MIX)
        if self is Scene.WEB:
            return mode is RecordingMode.WEB
        return mode is RecordingMode.INDIVIDUAL


@dataclass(frozen=True, slots=True)
class AcquireRequest:
    """A validated acquire body; ``start_parameter`` is kept as sent, for the start to match.

    It can only be read in full once start names the mode, so here only its
    ``storageConfig`` (the same in every mode) is checked.
    """

    cname: str
    uid: str
    resource_expired_hour: int = DEFAULT_RESOURCE_HOURS
    scene: Scene = Scene.REALTIME
    start_parameter: Mapping[str, Any] | None = None


def parse_acquire(body: object) -> AcquireRequest:
    """An acquire body; CloudError code 2, 8 or 1013 names the fault."""
    obj = require_body(body)
    cname = read_cname(obj)
    uid = check_recorder_uid(obj.get("uid"))
    prefix = "clientRequest"
    # The seed's fields all have defaults, so an acquire without clientRequest is taken.
    client = read_object(obj, "clientRequest", "") or {}
    hours = read_int(
        client,
        "resourceExpiredHour",
        prefix,
        MIN_RESOURCE_HOURS,
        MAX_RESOURCE_HOURS,
        DEFAULT_RESOURCE_HOURS,
    )
    scene = Scene(read_int(client, "scene", prefix, min(Scene), max(Scene), 0))
    if scene is Scene.WEB:
        raise invalid(
            f"{prefix}.scene", "1 (web page recording) is not supported yet by this server"
        )
    start_parameter = read_object(client, "startParameter", prefix)
    if start_parameter is not None:
        storage = read_object(start_parameter, "storageConfig", f"{prefix}.startParameter")
        if storage is not None:
            read_storage(storage, f"{prefix}.startParameter")
        start_parameter = dict(start_parameter)
    return AcquireRequest(cname, uid, hours, scene, start_parameter)


def check_start_matches_acquire(acquire: AcquireRequest, start: StartRequest) -> None:
    """Code 432 unless ``start`` is what ``acquire`` reserved the resource for.

    The cname and uid must be the acquire's (the seed: "Must match"), the mode must fit the
    acquire's scene, and each section of the acquire's ``startParameter`` must agree.
    """
    for name, was, now in (("cname", acquire.cname, start.cname), ("uid", acquire.uid, start.uid)):
        if was != now:
            raise invalid(
                name, f"{now!r} is not the {was!r} of the acquire", CloudCode.PARAMETERS_DIFFER
            )
    if not acquire.scene.allows(start.mode):
        raise invalid(
            "mode",
            f"{start.mode} does not fit the acquire's scene {int(acquire.scene)}",
            CloudCode.PARAMETERS_DIFFER,
        )
    if acquire.start_parameter is not None:
        check_start_parameter(acquire.start_parameter, start)


# Field names of the parsed configs where they are not the camelCase of the attribute.
_JSON_NAMES = {
    "max_idle_time_s": "maxIdleTime",
    "audio_uids": "subscribeAudioUids",
    "video_uids": "subscribeVideoUids",
    "sse": "extensionParams.sse",
    "tag": "extensionParams.tag",
    "endpoint": "extensionParams.endpoint",
    "bitrate_kbps": "bitrate",
    "layout": "mixedVideoLayout",
    "user_backgrounds": "backgroundConfig",
    "av_file_types": "avFileType",
    "capture_interval_s": "captureInterval",
    "file_types": "fileType",
}


def _json_name(attr: str) -> str:
    if attr in _JSON_NAMES:
        return _JSON_NAMES[attr]
    head, *rest = attr.split("_")
    return head + "".join(word.title() for word in rest)


def _differ(field_: str, given: object, expected: object, skip: tuple[str, ...] = ()) -> None:
    """Code 432 naming the first attribute where the start differs from the startParameter."""
    if given == expected:
        return
    if given is None or expected is None or type(given) is not type(expected):
        bad = field_
    else:
        attrs = [f.name for f in fields(given)]  # type: ignore[arg-type]
        names = [a for a in attrs if a not in skip and getattr(given, a) != getattr(expected, a)]
        if not names:
            return
        bad = join(field_, _json_name(names[0]))
    raise invalid(bad, "differs from the acquire's startParameter", CloudCode.PARAMETERS_DIFFER)


def check_start_parameter(start_parameter: Mapping[str, Any], start: StartRequest) -> None:
    """Code 432 unless ``start`` agrees with each section that the acquire's
    ``startParameter`` gives.

    Sections the startParameter leaves out are not compared; within a section the seed's
    defaults apply on both sides, so ``{"maxIdleTime": 30}`` and ``{}`` agree. The token is
    not compared: it authenticates the recorder and may be minted again before start.
    """
    sp = "clientRequest.startParameter"
    at = "clientRequest"
    cfg = start.config
    try:
        storage = read_object(start_parameter, "storageConfig", sp)
        if storage is not None:
            _differ(join(at, "storageConfig"), cfg.storage, read_storage(storage, sp))
        rec = read_object(start_parameter, "recordingConfig", sp)
        if rec is not None:
            rec_at = join(sp, "recordingConfig")
            recording, transcoding = read_recording_config(rec, start.mode, rec_at)
            _differ(join(at, "recordingConfig"), cfg.recording, recording)
            if start.mode is RecordingMode.MIX:
                mix = mix_config(
                    transcoding,
                    recording.audio_profile,
                    cfg.recording_file,
                    sp,
                    recording.stream_types,
                )
                _differ(
                    join(at, "recordingConfig.transcodingConfig"),
                    cfg.mix,
                    mix,
                    skip=("audio_profile", "file_types"),  # compared in their own sections
                )
        files = read_object(start_parameter, "recordingFileConfig", sp)
        if files is not None:
            wanted = read_recording_file_config(files, start.mode, join(sp, "recordingFileConfig"))
            _differ(join(at, "recordingFileConfig"), cfg.recording_file, wanted)
        snap = read_object(start_parameter, "snapshotConfig", sp)
        if snap is not None:
            _differ(
                join(at, "snapshotConfig"),
                cfg.snapshot,
                read_snapshot_config(snap, join(sp, "snapshotConfig")),
            )
    except CloudError as exc:
        if exc.code == CloudCode.PARAMETERS_DIFFER:
            raise
        # The acquire took it before the mode was known; only now can it be read in full.
        raise CloudError(
            CloudCode.PARAMETERS_DIFFER,
            f"{exc.reason} (the acquire's startParameter is not valid for {start.mode} mode)",
            field=exc.field,
        ) from None


@dataclass(frozen=True, slots=True)
class StopRequest:
    """A validated stop body: wait for uploads unless ``async_stop``."""

    cname: str
    uid: str
    async_stop: bool = False


def parse_stop(body: object) -> StopRequest:
    """A stop body; ``clientRequest`` may be left out (``async_stop`` defaults to false)."""
    obj = require_body(body)
    cname = read_cname(obj)
    uid = check_recorder_uid(obj.get("uid"))
    client = read_object(obj, "clientRequest", "") or {}
    return StopRequest(cname, uid, read_bool(client, "async_stop", "clientRequest", False))


__all__ = [
    "ALL_STREAMS",
    "EVERYONE",
    "MAX_BODY_BYTES",
    "MAX_LIST_UIDS",
    "MAX_RECORDER_UID",
    "NOBODY",
    "AcquireRequest",
    "ChannelType",
    "CloudCode",
    "CloudError",
    "DecryptionMode",
    "LayoutUpdate",
    "RecordingConfig",
    "RecordingFileConfig",
    "RecordingMode",
    "Scene",
    "SnapshotConfig",
    "StartConfig",
    "StartRequest",
    "StopRequest",
    "StreamMode",
    "StreamTypes",
    "UidFilter",
    "UidLists",
    "UpdateRequest",
    "VideoStreamType",
    "check_start_matches_acquire",
    "check_start_parameter",
    "parse_acquire",
    "parse_json",
    "parse_mode",
    "parse_start",
    "parse_start_config",
    "parse_stop",
    "parse_update",
    "parse_update_layout",
]
