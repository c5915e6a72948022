"""The ``start`` request of the cloud recording API (seed 001): every field, default and rule.

The body is read section by section (``storageConfig``, ``recordingConfig``,
``recordingFileConfig``, ``snapshotConfig``) so that a section of an acquire's
``startParameter`` can be read the same way and compared with the start that follows it.
The mixer's own checks (``transcodingConfig``, ``audioProfile``, the 1920 x 1080 cap) come from
:class:`mixer.mix_config.MixConfig`; ``storageConfig`` from
:func:`storage.vendors.parse_storage_config`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from ingest.tokens import MAX_TOKEN_CHARS
from mixer.audiomix import AudioProfile
from mixer.errors import ConfigError
from mixer.mix_config import FileType, MixConfig
from storage.errors import StorageConfigError
from storage.vendors import StorageConfig, parse_storage_config

from .cloud_recording_schema_fields import (
    CloudCode,
    RecordingMode,
    check_member_uid,
    check_recorder_uid,
    invalid,
    join,
    parse_mode,
    read_cname,
    read_int,
    read_object,
    read_str,
    read_str_list,
    require_body,
)

ALL_STREAMS = "#allstream#"  # a subscribe list of this alone means every uid
MAX_LIST_UIDS = 32  # "The array length cannot exceed 32"
MIN_IDLE_TIME_S = 5
MAX_IDLE_TIME_S = 30 * 24 * 3600  # "Cannot exceed 30 days"
DEFAULT_IDLE_TIME_S = 30
MIN_CAPTURE_INTERVAL_S = 5
MAX_CAPTURE_INTERVAL_S = 3600
DEFAULT_CAPTURE_INTERVAL_S = 10
SALT_BYTES = 32  # "Base64-encoded, 32 bytes"
# The most uids each subscribeUidGroup may name: 0 is 1-2 uids, 1 is 3-7, ... 5 is 33-49.
UID_GROUP_MAX = (2, 7, 12, 17, 32, 49)
SNAPSHOT_FILE_TYPES = ("jpg",)
KINDS = ("Audio", "Video")


class ChannelType(IntEnum):
    """``channelType``: the channel profile."""

    COMMUNICATION = 0
    LIVE = 1


class StreamTypes(IntEnum):
    """``streamTypes``: which media kinds to subscribe to."""

    AUDIO = 0
    VIDEO = 1
    AUDIO_AND_VIDEO = 2

    @property
    def has_audio(self) -> bool:
        """Whether audio is subscribed."""
        return self is not StreamTypes.VIDEO

    @property
    def has_video(self) -> bool:
        """Whether video is subscribed."""
        return self is not StreamTypes.AUDIO


class VideoStreamType(IntEnum):
    """``videoStreamType``: which stream of a dual-stream publisher to take."""

    HIGH = 0
    LOW = 1


class DecryptionMode(IntEnum):
    """``decryptionMode``: the channel's media encryption."""

    NONE = 0
    AES_128_XTS = 1
    AES_128_ECB = 2
    AES_256_XTS = 3
    SM4_128_ECB = 4
    AES_128_GCM = 5
    AES_256_GCM = 6
    AES_128_GCM2 = 7
    AES_256_GCM2 = 8

    @property
    def needs_salt(self) -> bool:
        """The GCM2 modes take a salt besides the secret."""
        return self in (DecryptionMode.AES_128_GCM2, DecryptionMode.AES_256_GCM2)


class StreamMode(StrEnum):
    """``streamMode`` (individual): separate playlists, plus a merged one, or audio as sent."""

    DEFAULT = "default"
    STANDARD = "standard"
    ORIGINAL = "original"


@dataclass(frozen=True, slots=True)
class UidFilter:
    """Which uids of one media kind get recorded: a closed list, or everyone but some."""

    only: frozenset[str] | None = None  # None: every uid not excluded
    exclude: frozenset[str] = frozenset()

    def admits(self, uid: str) -> bool:
        """Whether ``uid``'s stream of this kind is subscribed."""
        if self.only is not None:
            return uid in self.only
        return uid not in self.exclude

    @property
    def nobody(self) -> bool:
        """True when this kind is not subscribed at all."""
        return self.only is not None and not self.only


EVERYONE = UidFilter()
NOBODY = UidFilter(only=frozenset())


@dataclass(frozen=True, slots=True)
class UidLists:
    """One media kind's ``subscribe...Uids`` or ``unsubscribe...Uids`` list, as given."""

    subscribe: tuple[str, ...] | None = None
    unsubscribe: tuple[str, ...] | None = None

    @property
    def is_set(self) -> bool:
        """Whether either list was given."""
        return self.subscribe is not None or self.unsubscribe is not None

    @property
    def named(self) -> frozenset[str]:
        """The uids a subscribe list names (``#allstream#`` names none)."""
        return frozenset(u for u in self.subscribe or () if u != ALL_STREAMS)

    def to_filter(self) -> UidFilter:
        """The list as a filter; no list at all means everyone."""
        if self.subscribe is not None:
            return EVERYONE if ALL_STREAMS in self.subscribe else UidFilter(self.named)
        if self.unsubscribe is not None:
            return UidFilter(exclude=frozenset(self.unsubscribe))
        return EVERYONE


def _uid_list(obj: Mapping[str, Any], name: str, prefix: str, subscribe: bool) -> tuple[str, ...]:
    """One list: at most 32 distinct uids, or ``["#allstream#"]`` for a subscribe list."""
    items = read_str_list(obj, name, prefix)
    assert items is not None  # called only for a list that is present
    field_ = join(prefix, name)
    if len(items) > MAX_LIST_UIDS:
        raise invalid(field_, f"has {len(items)} uids; the array length cannot exceed 32")
    if ALL_STREAMS in items:
        if not subscribe:
            raise invalid(field_, f"{ALL_STREAMS} is for subscribe lists only")
        if len(items) > 1:
            raise invalid(field_, f'{ALL_STREAMS} must be alone: ["{ALL_STREAMS}"]')
        return (ALL_STREAMS,)
    seen: set[str] = set()
    for i, uid in enumerate(items):
        check_member_uid(uid, f"{field_}[{i}]")
        if uid in seen:
            raise invalid(f"{field_}[{i}]", f"names uid {uid!r} twice")
        seen.add(uid)
    return tuple(items)


def read_uid_lists(obj: Mapping[str, Any], kind: str, prefix: str) -> UidLists:
    """``subscribe<kind>Uids`` and ``unsubscribe<kind>Uids`` of one kind (Audio or Video).

    The seed spells the second ``unsubscribeAudioUids``, the vendor's API ``unSubscribeAudioUids``;
    both are taken, so clients written either way work.
    """
    sub_name = f"subscribe{kind}Uids"
    unsub_names = [n for n in (f"unsubscribe{kind}Uids", f"unSubscribe{kind}Uids") if n in obj]
    unsub_names = [n for n in unsub_names if obj[n] is not None]
    if len(unsub_names) > 1:
        raise invalid(join(prefix, unsub_names[1]), f"cannot be set together with {unsub_names[0]}")
    subscribe = _uid_list(obj, sub_name, prefix, True) if obj.get(sub_name) is not None else None
    unsubscribe = _uid_list(obj, unsub_names[0], prefix, False) if unsub_names else None
    if subscribe is not None and unsubscribe is not None:
        raise invalid(join(prefix, sub_name), f"cannot be set together with {unsub_names[0]}")
    return UidLists(subscribe, unsubscribe)


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """``recordingConfig`` with the seed's defaults (``transcodingConfig`` is in ``mix``)."""

    channel_type: ChannelType = ChannelType.COMMUNICATION
    stream_types: StreamTypes = StreamTypes.AUDIO_AND_VIDEO
    decryption_mode: DecryptionMode = DecryptionMode.NONE
    secret: str | None = field(default=None, repr=False)
    salt: str | None = field(default=None, repr=False)
    max_idle_time_s: int = DEFAULT_IDLE_TIME_S
    video_stream_type: VideoStreamType = VideoStreamType.HIGH
    audio_uids: UidLists = UidLists()
    video_uids: UidLists = UidLists()
    subscribe_uid_group: int | None = None
    stream_mode: StreamMode = StreamMode.DEFAULT
    audio_profile: AudioProfile = AudioProfile.MONO_48K

    def _filter(self, mine: UidLists, other: UidLists, wanted: bool) -> UidFilter:
        if not wanted:
            return NOBODY
        if mine.is_set:
            return mine.to_filter()
        # "If a subscription list is set for only one media type, the service will not
        # subscribe to the other type."
        return NOBODY if other.subscribe is not None else EVERYONE

    @property
    def audio_filter(self) -> UidFilter:
        """Whose audio is recorded, streamTypes and both kinds' lists taken together."""
        return self._filter(self.audio_uids, self.video_uids, self.stream_types.has_audio)

    @property
    def video_filter(self) -> UidFilter:
        """Whose video is recorded, streamTypes and both kinds' lists taken together."""
        return self._filter(self.video_uids, self.audio_uids, self.stream_types.has_video)


@dataclass(frozen=True, slots=True)
class RecordingFileConfig:
    """``recordingFileConfig``: the file types, in a canonical order (hls first)."""

    av_file_types: tuple[FileType, ...] = (FileType.HLS,)

    @property
    def mp4(self) -> bool:
        """Whether MP4 files are written besides HLS."""
        return FileType.MP4 in self.av_file_types


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """``snapshotConfig``: a JPG of each video uid every ``capture_interval_s`` seconds."""

    capture_interval_s: int = DEFAULT_CAPTURE_INTERVAL_S
    file_types: tuple[str, ...] = SNAPSHOT_FILE_TYPES


@dataclass(frozen=True, slots=True)
class StartConfig:
    """A start's ``clientRequest``: what to record, how, and where to upload it."""

    storage: StorageConfig = field(repr=False)  # its repr would show the bucket's keys
    recording: RecordingConfig = RecordingConfig()
    token: str | None = field(default=None, repr=False)
    recording_file: RecordingFileConfig | None = RecordingFileConfig()  # None: snapshots only
    snapshot: SnapshotConfig | None = None
    mix: MixConfig | None = None  # mix mode only: transcodingConfig, audioProfile, file types


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A validated start body for one mode."""

    cname: str
    uid: str
    mode: RecordingMode
    config: StartConfig

    @property
    def snapshots_only(self) -> bool:
        """Snapshots without a recording (no ``recordingFileConfig`` beside ``snapshotConfig``)."""
        return self.config.recording_file is None


def _enum(obj: Mapping[str, Any], name: str, prefix: str, kind: type[IntEnum], default: int) -> Any:
    return kind(read_int(obj, name, prefix, min(kind), max(kind), default))


def _decryption(
    obj: Mapping[str, Any], prefix: str
) -> tuple[DecryptionMode, str | None, str | None]:
    mode = _enum(obj, "decryptionMode", prefix, DecryptionMode, 0)
    secret = read_str(obj, "secret", prefix) or None
    salt = read_str(obj, "salt", prefix) or None
    if mode is DecryptionMode.NONE:
        # A key with no mode is a client that forgot the mode: recording would fail to decrypt.
        for name, value in (("secret", secret), ("salt", salt)):
            if value is not None:
                raise invalid(join(prefix, name), "is given but decryptionMode is 0 (none)")
        return mode, None, None
    if secret is None:
        raise invalid(join(prefix, "secret"), f"is required when decryptionMode is {int(mode)}")
    if not mode.needs_salt:
        if salt is not None:
            raise invalid(join(prefix, "salt"), "is used only with decryptionMode 7 or 8")
        return mode, secret, None
    if salt is None:
        raise invalid(join(prefix, "salt"), f"is required when decryptionMode is {int(mode)}")
    try:
        raw = base64.b64decode(salt, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(join(prefix, "salt"), "must be Base64") from None
    if len(raw) != SALT_BYTES:
        raise invalid(join(prefix, "salt"), f"must be {SALT_BYTES} bytes, Base64 gives {len(raw)}")
    return mode, secret, salt


def _uid_group(
    obj: Mapping[str, Any], prefix: str, mode: RecordingMode, audio: UidLists, video: UidLists
) -> int | None:
    name = "subscribeUidGroup"
    if obj.get(name) is None:
        if mode is RecordingMode.INDIVIDUAL:
            raise invalid(join(prefix, name), "is required in individual recording mode (0-5)")
        return None
    group = read_int(obj, name, prefix, 0, len(UID_GROUP_MAX) - 1, 0)
    named = audio.named | video.named
    if len(named) > UID_GROUP_MAX[group]:
        raise invalid(
            join(prefix, name),
            f"{group} is for up to {UID_GROUP_MAX[group]} uids but the subscribe lists name "
            f"{len(named)}",
        )
    return group


def read_recording_config(
    obj: Mapping[str, Any], mode: RecordingMode, prefix: str
) -> tuple[RecordingConfig, Mapping[str, Any] | None]:
    """``recordingConfig``, and its ``transcodingConfig`` left for MixConfig to read."""
    channel_type = _enum(obj, "channelType", prefix, ChannelType, 0)
    stream_types = _enum(obj, "streamTypes", prefix, StreamTypes, 2)
    decryption, secret, salt = _decryption(obj, prefix)
    idle = read_int(
        obj, "maxIdleTime", prefix, MIN_IDLE_TIME_S, MAX_IDLE_TIME_S, DEFAULT_IDLE_TIME_S
    )
    video_stream_type = _enum(obj, "videoStreamType", prefix, VideoStreamType, 0)
    audio, video = (read_uid_lists(obj, kind, prefix) for kind in KINDS)
    if audio.subscribe is not None and not stream_types.has_audio:
        raise invalid(join(prefix, "subscribeAudioUids"), "applies only when streamTypes is 0 or 2")
    if video.subscribe is not None and not stream_types.has_video:
        raise invalid(join(prefix, "subscribeVideoUids"), "applies only when streamTypes is 1 or 2")
    group = _uid_group(obj, prefix, mode, audio, video)
    raw_mode = read_str(obj, "streamMode", prefix)
    try:
        stream_mode = StreamMode("default" if raw_mode is None else raw_mode)
    except ValueError:
        raise invalid(
            join(prefix, "streamMode"), f"{raw_mode!r}: must be default, standard or original"
        ) from None
    profile_field = join(prefix, "audioProfile")
    try:
        audio_profile = AudioProfile.from_json(obj.get("audioProfile"), profile_field)
    except ConfigError as exc:
        raise invalid(exc.field, exc.reason) from None
    transcoding = read_object(obj, "transcodingConfig", prefix)
    if mode is RecordingMode.INDIVIDUAL:
        # Fields of the other mode are refused, not ignored: the client expects an effect.
        if transcoding is not None:
            raise invalid(join(prefix, "transcodingConfig"), "applies only in mix mode")
        if audio_profile is not AudioProfile.MONO_48K:
            raise invalid(profile_field, "applies only in mix mode")
    elif stream_mode is not StreamMode.DEFAULT:
        raise invalid(join(prefix, "streamMode"), "applies only in individual mode")
    config = RecordingConfig(
        channel_type=channel_type,
        stream_types=stream_types,
        decryption_mode=decryption,
        secret=secret,
        salt=salt,
        max_idle_time_s=idle,
        video_stream_type=video_stream_type,
        audio_uids=audio,
        video_uids=video,
        subscribe_uid_group=group,
        stream_mode=stream_mode,
        audio_profile=audio_profile,
    )
    return config, transcoding


def read_recording_file_config(
    obj: Mapping[str, Any], mode: RecordingMode, prefix: str
) -> RecordingFileConfig:
    """``recordingFileConfig.avFileType``: ``["hls"]``, or ``["hls","mp4"]`` in mix mode."""
    name = "avFileType"
    at = join(prefix, name)
    items = read_str_list(obj, name, prefix)
    if items is None:
        return RecordingFileConfig()
    if not items:
        raise invalid(at, 'must not be empty: ["hls"] or ["hls","mp4"]')
    types: list[FileType] = []
    for i, item in enumerate(items):
        try:
            kind = FileType(item)
        except ValueError:
            raise invalid(f"{at}[{i}]", f'{item!r}: must be "hls" or "mp4"') from None
        if kind in types:
            raise invalid(f"{at}[{i}]", f"names {item!r} twice")
        types.append(kind)
    if FileType.HLS not in types:
        raise invalid(at, '["mp4"] alone causes an error: use ["hls","mp4"] for MP4 files')
    if FileType.MP4 in types and mode is RecordingMode.INDIVIDUAL:
        raise invalid(at, 'individual mode records ["hls"] only (the default)')
    return RecordingFileConfig(tuple(sorted(types, key=list(FileType).index)))


def read_snapshot_config(obj: Mapping[str, Any], prefix: str) -> SnapshotConfig:
    """``snapshotConfig`` alone; the rules tying it to recordingConfig are in the caller."""
    interval = read_int(
        obj,
        "captureInterval",
        prefix,
        MIN_CAPTURE_INTERVAL_S,
        MAX_CAPTURE_INTERVAL_S,
        DEFAULT_CAPTURE_INTERVAL_S,
    )
    types = read_str_list(obj, "fileType", prefix)
    if types is None:
        raise invalid(join(prefix, "fileType"), 'is required: ["jpg"]')
    if tuple(types) != SNAPSHOT_FILE_TYPES:
        raise invalid(join(prefix, "fileType"), f'{types!r}: only ["jpg"] is supported')
    return SnapshotConfig(interval, SNAPSHOT_FILE_TYPES)


def read_storage(obj: Mapping[str, Any], prefix: str) -> StorageConfig:
    """``storageConfig`` by the storage layer's rules, its faults as code 2 with the full path."""
    try:
        return parse_storage_config(obj)
    except StorageConfigError as exc:
        # The error's text is "storageConfig.<field>: <why>"; keep the why, name the full path.
        reason = str(exc).split(": ", 1)[-1]
        raise invalid(join(join(prefix, "storageConfig"), exc.field), reason) from None


def _token(obj: Mapping[str, Any], prefix: str) -> str | None:
    token = read_str(obj, "token", prefix) or None
    if token is not None and len(token) > MAX_TOKEN_CHARS:
        raise invalid(join(prefix, "token"), f"is longer than {MAX_TOKEN_CHARS} characters")
    return token


def mix_config(
    transcoding: Mapping[str, Any] | None,
    audio_profile: AudioProfile,
    recording_file: RecordingFileConfig | None,
    prefix: str = "clientRequest",
    stream_types: StreamTypes = StreamTypes.AUDIO_AND_VIDEO,
) -> MixConfig:
    """The mixer's settings; its ConfigError becomes code 2 naming the field under ``prefix``.
    ``stream_types``: the kinds the mix records (audio only: no video track, nothing
    painted; video only: no audio track)."""
    files = {
        "avFileType": [t.value for t in (recording_file or RecordingFileConfig()).av_file_types]
    }
    try:
        config = MixConfig.from_json(transcoding, int(audio_profile), files)
        return dataclasses.replace(
            config, video=stream_types.has_video, audio=stream_types.has_audio
        )
    except ConfigError as exc:
        raise invalid(rebase(exc.field, prefix), exc.reason) from None


def rebase(field_: str, prefix: str) -> str:
    """The mixer names fields under ``clientRequest``; move them under ``prefix``."""
    head = "clientRequest"
    if prefix != head and (field_ == head or field_.startswith(head + ".")):
        return prefix + field_[len(head) :]
    return field_


def parse_start_config(
    client: Mapping[str, Any], mode: RecordingMode, prefix: str = "clientRequest"
) -> StartConfig:
    """A start's ``clientRequest`` for ``mode`` (individual or mix)."""
    token = _token(client, prefix)
    storage_obj = read_object(client, "storageConfig", prefix, required=True)
    assert storage_obj is not None  # required=True
    storage = read_storage(storage_obj, prefix)
    if client.get("extensionServiceConfig") is not None:
        raise invalid(
            join(prefix, "extensionServiceConfig"),
            "applies only to web page recording, which is not supported yet",
        )
    rec_prefix = join(prefix, "recordingConfig")
    rec_obj = read_object(client, "recordingConfig", prefix, required=True)
    assert rec_obj is not None
    recording, transcoding = read_recording_config(rec_obj, mode, rec_prefix)
    snap_obj = read_object(client, "snapshotConfig", prefix)
    snapshot = None
    if snap_obj is not None:
        snapshot = read_snapshot_config(snap_obj, join(prefix, "snapshotConfig"))
    file_obj = read_object(client, "recordingFileConfig", prefix)
    if file_obj is not None:
        recording_file: RecordingFileConfig | None = read_recording_file_config(
            file_obj, mode, join(prefix, "recordingFileConfig")
        )
    else:
        # With snapshotConfig, leaving recordingFileConfig out means snapshots only; without,
        # the seed's default avFileType ["hls"] applies (a start that records nothing is moot).
        recording_file = None if snapshot is not None else RecordingFileConfig()
    if snapshot is not None:
        _check_snapshot(recording, mode, prefix)
    mix = None
    if mode is RecordingMode.MIX:
        mix = mix_config(
            transcoding, recording.audio_profile, recording_file, prefix, recording.stream_types
        )
    return StartConfig(storage, recording, token, recording_file, snapshot, mix)


def _check_snapshot(recording: RecordingConfig, mode: RecordingMode, prefix: str) -> None:
    at = join(prefix, "snapshotConfig")
    if mode is not RecordingMode.INDIVIDUAL:
        raise invalid(at, "applies only in individual recording mode")
    if not recording.stream_types.has_video:
        raise invalid(
            at, "needs recordingConfig.streamTypes 1 or 2 (snapshots are of video), got 0"
        )
    if recording.audio_uids.subscribe is not None and recording.video_uids.subscribe is None:
        raise invalid(
            join(prefix, "recordingConfig.subscribeVideoUids"),
            "is required with snapshotConfig when subscribeAudioUids is set",
        )


def parse_start(body: object, mode: str) -> StartRequest:
    """A start body for the path's ``mode``; CloudError (code 2, 8 or 1013) names the fault."""
    parsed_mode = parse_mode(mode)
    obj = require_body(body)
    cname = read_cname(obj)
    uid = check_recorder_uid(obj.get("uid"))
    client = read_object(obj, "clientRequest", "", required=True)
    assert client is not None
    return StartRequest(cname, uid, parsed_mode, parse_start_config(client, parsed_mode))


__all__ = [
    "ALL_STREAMS",
    "EVERYONE",
    "NOBODY",
    "ChannelType",
    "CloudCode",
    "DecryptionMode",
    "RecordingConfig",
    "RecordingFileConfig",
    "SnapshotConfig",
    "StartConfig",
    "StartRequest",
    "StreamMode",
    "StreamTypes",
    "UidFilter",
    "UidLists",
    "VideoStreamType",
    "parse_start",
    "parse_start_config",
    "read_uid_lists",
]
