"""A mix's settings: the cloud recording API's ``transcodingConfig``, ``audioProfile`` and
``recordingFileConfig`` read into :class:`MixConfig`, and what updateLayout sets besides the
layout (:class:`MixStyle`, its images fetched by :func:`fetch_style`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
from av.video.frame import VideoFrame

from mixer.audiomix import AudioProfile
from mixer.compositor import parse_color
from mixer.errors import ConfigError
from mixer.images import fetch_images
from mixer.layout import TRANSCODING_FIELD, LayoutSpec, RenderMode, check_number

MAX_CANVAS_PIXELS = 1920 * 1080
MIN_CANVAS_SIDE = 16
MAX_FPS = 60
MAX_BITRATE_KBPS = 50_000


class FileType(StrEnum):
    """`avFileType` entries."""

    HLS = "hls"
    MP4 = "mp4"


@dataclass(frozen=True, slots=True)
class UserBackground:
    """One `backgroundConfig` entry: a user's image while their video is stale."""

    uid: str
    image_url: str
    render_mode: RenderMode = RenderMode.CROP


def _url(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(field, "must be an http or https URL")
    return value


def _backgrounds(raw: object, prefix: str) -> tuple[UserBackground, ...]:
    if not isinstance(raw, list):
        raise ConfigError(prefix, "must be an array")
    out: list[UserBackground] = []
    for i, obj in enumerate(raw):
        at = f"{prefix}[{i}]"
        if not isinstance(obj, Mapping):
            raise ConfigError(at, "must be an object")
        uid = obj.get("uid")
        if not isinstance(uid, str) or not uid:
            raise ConfigError(f"{at}.uid", "is required")
        url = _url(obj.get("image_url"), f"{at}.image_url")
        mode = obj.get("render_mode")
        mode = 0 if mode is None else check_number(mode, f"{at}.render_mode", 0, 1, integer=True)
        if any(b.uid == uid for b in out):
            raise ConfigError(f"{at}.uid", "names a user twice")
        out.append(UserBackground(uid, url, RenderMode(int(mode))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MixStyle:
    """What updateLayout sets besides the layout, its images fetched already (None: none)."""

    background_color: str = "#000000"
    background_image: VideoFrame | None = None
    default_user_background: VideoFrame | None = None
    user_backgrounds: tuple[tuple[str, VideoFrame | None, RenderMode], ...] = ()


async def fetch_style(
    background_color: str,
    background_image: str | None,
    default_user_background_image: str | None,
    user_backgrounds: tuple[UserBackground, ...],
    http: aiohttp.ClientSession | None = None,
    *,
    paint: bool = True,
) -> MixStyle:
    """A :class:`MixStyle` with its images fetched (one that fails is left out, logged);
    ``paint`` false (an audio-only mix: nothing is painted), none is."""
    named = (
        background_image,
        default_user_background_image,
        *(b.image_url for b in user_backgrounds),
    )
    urls = [u for u in named if u] if paint else []
    images: Mapping[str, VideoFrame | None] = {}
    if urls:
        if http is None:
            async with aiohttp.ClientSession() as own:
                images = await fetch_images(own, urls)
        else:
            images = await fetch_images(http, urls)
    return MixStyle(
        background_color,
        images.get(background_image) if background_image else None,
        images.get(default_user_background_image) if default_user_background_image else None,
        tuple((b.uid, images.get(b.image_url), b.render_mode) for b in user_backgrounds),
    )


@dataclass(frozen=True, slots=True)
class MixConfig:
    """Everything a mix needs, with the cloud recording API's defaults."""

    width: int = 360
    height: int = 640
    fps: int = 15
    bitrate_kbps: int = 500
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    background_color: str = "#000000"
    background_image: str | None = None
    default_user_background_image: str | None = None
    user_backgrounds: tuple[UserBackground, ...] = ()
    audio_profile: AudioProfile = AudioProfile.MONO_48K
    file_types: frozenset[FileType] = frozenset({FileType.HLS})
    # the kinds recorded (``streamTypes``: 0 audio, 1 video, 2 both): a kind not recorded
    # has no track in the output, and is neither painted nor mixed
    video: bool = True
    audio: bool = True

    def __post_init__(self) -> None:
        prefix = TRANSCODING_FIELD
        for name, value in (("width", self.width), ("height", self.height)):
            check_number(
                value, f"{prefix}.{name}", MIN_CANVAS_SIDE, MAX_CANVAS_PIXELS, integer=True
            )
            if value % 2:
                raise ConfigError(f"{prefix}.{name}", "must be even (4:2:0 video)")
        if self.width * self.height > MAX_CANVAS_PIXELS:
            raise ConfigError(f"{prefix}.width", "width x height cannot exceed 1920 x 1080")
        check_number(self.fps, f"{prefix}.fps", 1, MAX_FPS, integer=True)
        check_number(self.bitrate_kbps, f"{prefix}.bitrate", 1, MAX_BITRATE_KBPS, integer=True)
        parse_color(self.background_color, f"{prefix}.backgroundColor")
        if not (self.video or self.audio):
            raise ConfigError("clientRequest.recordingConfig.streamTypes", "records no kind")
        if FileType.HLS not in self.file_types:
            raise ConfigError(
                "clientRequest.recordingFileConfig.avFileType", '["mp4"] alone is not allowed'
            )

    @property
    def track_type(self) -> str:
        """The mix's files' ``trackType`` in a ``fileList``."""
        return (
            "audio_and_video" if self.video and self.audio else "video" if self.video else "audio"
        )

    @classmethod
    def from_json(
        cls,
        transcoding: Mapping[str, Any] | None,
        audio_profile: object = None,
        recording_file: Mapping[str, Any] | None = None,
    ) -> MixConfig:
        """Validate the API's fields; ConfigError names the first bad one."""
        prefix = TRANSCODING_FIELD
        t: Mapping[str, Any] = transcoding or {}
        if not isinstance(t, Mapping):
            raise ConfigError(prefix, "must be an object")
        sizes = {}
        for name, default in (("width", 360), ("height", 640), ("fps", 15), ("bitrate", 500)):
            value = t.get(name)
            high = {"fps": MAX_FPS, "bitrate": MAX_BITRATE_KBPS}.get(name, MAX_CANVAS_PIXELS)
            number = (
                default
                if value is None
                else check_number(value, f"{prefix}.{name}", 1, high, integer=True)
            )
            sizes[name] = int(number)
        color = t.get("backgroundColor")
        images = {}
        for name in ("backgroundImage", "defaultUserBackgroundImage"):
            value = t.get(name)
            images[name] = None if value is None else _url(value, f"{prefix}.{name}")
        raw_bgs = t.get("backgroundConfig")
        return cls(
            width=sizes["width"],
            height=sizes["height"],
            fps=sizes["fps"],
            bitrate_kbps=sizes["bitrate"],
            layout=LayoutSpec.from_json(t, prefix),
            background_color=parse_color(
                "#000000" if color is None else color, f"{prefix}.backgroundColor"
            ),
            background_image=images["backgroundImage"],
            default_user_background_image=images["defaultUserBackgroundImage"],
            user_backgrounds=()
            if raw_bgs is None
            else _backgrounds(raw_bgs, f"{prefix}.backgroundConfig"),
            audio_profile=AudioProfile.from_json(audio_profile),
            file_types=_file_types(recording_file),
        )


def _file_types(recording_file: Mapping[str, Any] | None) -> frozenset[FileType]:
    field = "clientRequest.recordingFileConfig.avFileType"
    raw = (recording_file or {}).get("avFileType")
    if raw is None:
        return frozenset({FileType.HLS})
    if not isinstance(raw, list) or not raw:
        raise ConfigError(field, 'must be ["hls"] or ["hls", "mp4"]')
    try:
        types = frozenset(FileType(v) for v in raw)
    except ValueError as exc:
        raise ConfigError(field, f"unknown file type in {raw!r}") from exc
    if FileType.HLS not in types:
        raise ConfigError(field, '["mp4"] alone is not allowed')
    return types
