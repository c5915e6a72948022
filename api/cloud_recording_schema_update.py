"""The ``update`` and ``updateLayout`` requests of the cloud recording API.

``update`` changes subscriptions mid-recording (individual and mix), renews storage
credentials (the seed's hourly stsToken), or, in web mode, pauses the page and sets its CDN
outputs. ``updateLayout`` replaces a mix's whole layout: a field left
out goes back to its default, so it is read with the same rules as the start's
``transcodingConfig`` (through :class:`mixer.mix_config.MixConfig`), and every fault answers 1028.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from mixer.audiomix import AudioProfile
from mixer.layout import TRANSCODING_FIELD, LayoutSpec
from mixer.mix_config import UserBackground
from storage.vendors import StorageConfig

from .cloud_recording_schema_fields import (
    CloudCode,
    CloudError,
    RecordingMode,
    check_recorder_uid,
    invalid,
    join,
    parse_mode,
    read_bool,
    read_cname,
    read_object,
    require_body,
)
from .cloud_recording_schema_start import (
    ALL_STREAMS,
    KINDS,
    UID_GROUP_MAX,
    StartConfig,
    UidFilter,
    UidLists,
    mix_config,
    read_storage,
    read_uid_lists,
)

MAX_RTMP_OUTPUTS = 10  # the seed is silent; a CDN push to more than this is a mistake
MAX_URL_CHARS = 1024
# The updateLayout fields; anything else in its clientRequest (width, fps...) is not read:
# the canvas cannot change size mid-recording.
# What says where files go: an update may not move a recording's files elsewhere midway.
STORAGE_PLACE = ("vendor", "region", "bucket", "file_name_prefix", "endpoint")
LAYOUT_FIELDS = (
    "mixedVideoLayout",
    "maxResolutionUid",
    "backgroundColor",
    "backgroundImage",
    "defaultUserBackgroundImage",
    "layoutConfig",
    "backgroundConfig",
)


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A validated update body; ``None`` leaves that part as it is."""

    cname: str
    uid: str
    audio: UidLists | None = None  # streamSubscribe.audioUidList
    video: UidLists | None = None  # streamSubscribe.videoUidList
    onhold: bool | None = None  # webRecordingConfig.onhold
    rtmp_outputs: tuple[str, ...] | None = None  # rtmpPublishConfig.outputs[].rtmpUrl
    # storageConfig with fresh credentials: the seed has an stsToken renewed this way hourly.
    storage: StorageConfig | None = field(default=None, repr=False)  # holds keys

    def apply_to(self, config: StartConfig, prefix: str = "clientRequest") -> StartConfig:
        """The running recording's config with this update's lists; code 2 where they clash.

        A list for a kind the recording does not subscribe to (``streamTypes``) is refused, as
        it would silently do nothing; the start's ``subscribeUidGroup`` and snapshot rules
        still hold. The kind the update leaves out keeps recording whom it recorded: the
        seed's "a list for one kind only drops the other kind" applies to start, not here.
        """
        sub = join(prefix, "streamSubscribe")
        recording = config.recording
        if self.audio is not None and not recording.stream_types.has_audio:
            raise invalid(f"{sub}.audioUidList", "the recording's streamTypes has no audio")
        if self.video is not None and not recording.stream_types.has_video:
            raise invalid(f"{sub}.videoUidList", "the recording's streamTypes has no video")
        audio = _pinned(recording.audio_uids, recording.audio_filter, self.audio)
        video = _pinned(recording.video_uids, recording.video_filter, self.video)
        group = recording.subscribe_uid_group
        named = audio.named | video.named
        if group is not None and len(named) > UID_GROUP_MAX[group]:
            raise invalid(
                sub,
                f"names {len(named)} uids; the start's subscribeUidGroup {group} is for up to "
                f"{UID_GROUP_MAX[group]}",
            )
        if config.snapshot is not None and audio.subscribe is not None and video.subscribe is None:
            raise invalid(
                f"{sub}.videoUidList",
                "is required with snapshots when the audio list is a subscribe list",
            )
        storage = config.storage
        if self.storage is not None:
            for name in STORAGE_PLACE:
                if getattr(self.storage, name) != getattr(storage, name):
                    raise invalid(
                        f"{prefix}.storageConfig",
                        "may renew credentials only: vendor, region, bucket, fileNamePrefix "
                        "and endpoint must stay those of the start",
                    )
            storage = self.storage
        recording = replace(recording, audio_uids=audio, video_uids=video)
        return replace(config, recording=recording, storage=storage)


def _pinned(before: UidLists, effective: UidFilter, update: UidLists | None) -> UidLists:
    """The new lists of one kind: the update's, or the old ones written out explicitly."""
    if update is not None:
        return update
    if before.is_set:
        return before
    # No list of its own: whom it records came from the other kind's lists, which the
    # update may change; spell it out so it stays the same.
    return UidLists(subscribe=() if effective.nobody else (ALL_STREAMS,))


def _stream_subscribe(
    client: Mapping[str, Any], prefix: str
) -> tuple[UidLists | None, UidLists | None]:
    sub_prefix = join(prefix, "streamSubscribe")
    sub = read_object(client, "streamSubscribe", prefix)
    if sub is None:
        return None, None
    out: list[UidLists | None] = []
    for kind in KINDS:
        name = f"{kind.lower()}UidList"
        obj = read_object(sub, name, sub_prefix)
        if obj is None:
            out.append(None)
            continue
        lists = read_uid_lists(obj, kind, join(sub_prefix, name))
        if not lists.is_set:
            raise invalid(
                join(sub_prefix, name), f"give subscribe{kind}Uids or unsubscribe{kind}Uids"
            )
        out.append(lists)
    if out == [None, None]:
        raise invalid(sub_prefix, "give audioUidList, videoUidList or both")
    return out[0], out[1]


def _rtmp_outputs(client: Mapping[str, Any], prefix: str) -> tuple[str, ...] | None:
    at = join(prefix, "rtmpPublishConfig")
    obj = read_object(client, "rtmpPublishConfig", prefix)
    if obj is None:
        return None
    outputs = obj.get("outputs")
    if not isinstance(outputs, list):
        raise invalid(f"{at}.outputs", "is required: an array of {rtmpUrl}")
    if len(outputs) > MAX_RTMP_OUTPUTS:
        raise invalid(f"{at}.outputs", f"at most {MAX_RTMP_OUTPUTS} outputs")
    urls: list[str] = []
    for i, out in enumerate(outputs):
        item = f"{at}.outputs[{i}]"
        if not isinstance(out, Mapping):
            raise invalid(item, "must be an object with rtmpUrl")
        url = out.get("rtmpUrl")
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise invalid(f"{item}.rtmpUrl", f"is required: a string of at most {MAX_URL_CHARS}")
        parts = urlsplit(url)
        if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
            raise invalid(f"{item}.rtmpUrl", f"{url[:64]!r} is not an rtmp:// or rtmps:// URL")
        urls.append(url)
    return tuple(urls)


def parse_update(body: object, mode: str) -> UpdateRequest:
    """An update body for ``mode``: subscription lists (individual, mix) or web settings."""
    # No web session can exist yet, but its fields are read all the same, ready for when one can.
    parsed_mode = RecordingMode.WEB if mode == RecordingMode.WEB else parse_mode(mode)
    obj = require_body(body)
    cname = read_cname(obj)
    uid = check_recorder_uid(obj.get("uid"))
    client = read_object(obj, "clientRequest", "", required=True)
    assert client is not None
    prefix = "clientRequest"
    web = parsed_mode is RecordingMode.WEB
    wrong = [
        name
        for name, web_only in (
            ("streamSubscribe", False),
            ("webRecordingConfig", True),
            ("rtmpPublishConfig", True),
        )
        if client.get(name) is not None and web_only != web
    ]
    if wrong:
        where = "web mode" if not web else "individual and mix modes"
        raise invalid(join(prefix, wrong[0]), f"applies only in {where}")
    audio, video = _stream_subscribe(client, prefix)
    web_cfg = read_object(client, "webRecordingConfig", prefix)
    onhold = None
    if web_cfg is not None:
        if web_cfg.get("onhold") is None:
            raise invalid(f"{prefix}.webRecordingConfig.onhold", "is required: true or false")
        onhold = read_bool(web_cfg, "onhold", f"{prefix}.webRecordingConfig", False)
    outputs = _rtmp_outputs(client, prefix)
    storage_obj = read_object(client, "storageConfig", prefix)
    storage = None if storage_obj is None else read_storage(storage_obj, prefix)
    if (audio, video, onhold, outputs, storage) == (None, None, None, None, None):
        raise invalid(prefix, "nothing to update")
    return UpdateRequest(cname, uid, audio, video, onhold, outputs, storage)


@dataclass(frozen=True, slots=True)
class LayoutUpdate:
    """A validated updateLayout body: the whole new layout, defaults for what was left out."""

    cname: str
    uid: str
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    background_color: str = "#000000"
    background_image: str | None = None
    default_user_background_image: str | None = None
    user_backgrounds: tuple[UserBackground, ...] = ()


def parse_update_layout(body: object) -> LayoutUpdate:
    """An updateLayout body; a bad layout field answers 1028 naming it."""
    obj = require_body(body)
    cname = read_cname(obj)
    uid = check_recorder_uid(obj.get("uid"))
    prefix = "clientRequest"
    try:
        client = read_object(obj, "clientRequest", "", required=True)
        assert client is not None
        fields = {k: client[k] for k in LAYOUT_FIELDS if client.get(k) is not None}
        # The start's transcodingConfig rules, read from clientRequest: one set of checks.
        mix = mix_config(fields, AudioProfile.MONO_48K, None)
    except CloudError as exc:
        assert exc.field is not None  # every schema fault names its field
        field = exc.field.replace(TRANSCODING_FIELD, prefix, 1)
        raise invalid(field, exc.reason.split(": ", 1)[-1], CloudCode.LAYOUT_INVALID) from None
    return LayoutUpdate(
        cname,
        uid,
        mix.layout,
        mix.background_color,
        mix.background_image,
        mix.default_user_background_image,
        mix.user_backgrounds,
    )
