"""The compositor: paints every user's latest picture into one YUV 4:2:0 canvas per output tick.

Work stays in 4:2:0 planes (numpy views on the output frame's own buffers), so nothing is
converted to RGB. Each input frame is scaled at most once, to its window, when it is first
shown; the scaled tile is cached and pasted on every tick until a newer frame replaces it
(the raw frame is kept too, so a layout change rescales it once). Background images are
scaled once per window size. Time is whatever the caller says (`t_us`): the compositor never
reads a clock, so tests drive it through timestamps.

Synchronous and not thread-safe: one compositor per mix, used from that mix's worker thread.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from mixer.errors import ConfigError
from mixer.layout import (
    TRANSCODING_FIELD,
    LayoutSpec,
    Placement,
    Rect,
    RenderMode,
    Window,
    compute_layout,
    place,
)

log = logging.getLogger(__name__)

US_PER_S = 1_000_000
# A user whose last video frame is older than this shows their background image instead.
STALE_VIDEO_US = 3_500_000
# Frames a user may have waiting for their display time; past this the oldest are dropped
# (a bounded queue: a late or flooding sender never grows memory).
MAX_PENDING_FRAMES = 64
SCALE_INTERPOLATION = Interpolation.BILINEAR
SCALE_THREADS = 1  # Many mixes share the cores: a scaler thread pool per call only costs.
# Tiles kept per picture (one per window size and crop it is shown in): a bound for layouts
# that change sizes all the time; the default user background needs one per window size.
MAX_TILES_PER_PICTURE = 16
BLACK_YUV = (16, 128, 128)  # Fit-mode borders ("black borders may appear").
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def parse_color(value: object, field: str = f"{TRANSCODING_FIELD}.backgroundColor") -> str:
    """Check an `#RRGGBB` colour string; ConfigError naming `field` otherwise."""
    if not isinstance(value, str) or not _COLOR.fullmatch(value):
        raise ConfigError(field, f"must be an RGB hex string like #FF0000, got {value!r}")
    return value.upper()


def rgb_to_yuv(color: str) -> tuple[int, int, int]:
    """`#RRGGBB` to limited-range BT.601 Y'CbCr, the matrix the encoder signals."""
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


def frame_planes(frame: VideoFrame) -> Planes:
    """Writable numpy views on the Y, U, V planes of a yuv420p frame (no copy)."""
    views = []
    for plane in frame.planes:
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        views.append(rows[: plane.height, : plane.width])
    return views[0], views[1], views[2]


def solid_frame(width: int, height: int, yuv: tuple[int, int, int]) -> VideoFrame:
    """A yuv420p frame of one colour (a placeholder picture, and test input)."""
    frame = VideoFrame(width, height, "yuv420p")
    fill(frame_planes(frame), Rect(0, 0, width, height), yuv)
    return frame


def _chroma(rect: Rect) -> tuple[slice, slice]:
    return slice(rect.y // 2, rect.bottom // 2), slice(rect.x // 2, rect.right // 2)


def _luma(rect: Rect) -> tuple[slice, slice]:
    return slice(rect.y, rect.bottom), slice(rect.x, rect.right)


def fill(planes: Planes, rect: Rect, yuv: tuple[int, int, int]) -> None:
    """Paint a solid colour into `rect` of the planes."""
    planes[0][_luma(rect)] = yuv[0]
    planes[1][_chroma(rect)] = yuv[1]
    planes[2][_chroma(rect)] = yuv[2]


def paste(planes: Planes, tile: Planes, dest: Rect, alpha: float = 1.0) -> None:
    """Paint a tile (planes of dest's size) at `dest`, blended with what is under it by alpha."""
    targets = (planes[0][_luma(dest)], planes[1][_chroma(dest)], planes[2][_chroma(dest)])
    if alpha >= 1.0:
        for target, src in zip(targets, tile, strict=True):
            target[...] = src
        return
    # Blending Y'CbCr is blending RGB: the conversion is affine and the weights sum to 1.
    a = round(alpha * 256)
    for target, src in zip(targets, tile, strict=True):
        mixed = src.astype(np.uint16) * a + target.astype(np.uint16) * (256 - a) + 128
        target[...] = (mixed >> 8).astype(np.uint8)


@dataclass(slots=True)
class _Tile:
    """A picture scaled for one placement: the visible part, ready to paste."""

    placement: Placement
    planes: Planes


@dataclass(slots=True)
class _Picture:
    """A source picture (a video frame or an image) and its tiles, by scaled size and crop.

    Keyed without the window's position: one image shown in several windows of one size (the
    default user background of every stale user) is scaled once, not once per window per
    frame as each window took the cache from the one before."""

    frame: VideoFrame
    reformatter: VideoReformatter
    tiles: dict[tuple[int, int, Rect], Planes] = field(default_factory=dict)

    @property
    def aspect(self) -> float:
        return self.frame.width / self.frame.height if self.frame.height else 0.0

    def tile_for(self, window: Rect, mode: RenderMode, counter: list[int]) -> _Tile:
        """The tile for `window`, scaling only for a size and crop not seen before."""
        placement = place(window, self.aspect, mode)
        src = placement.src
        key = (placement.scaled_width, placement.scaled_height, src)
        planes = self.tiles.get(key)
        if planes is None:
            scaled = self.reformatter.reformat(
                self.frame,
                width=placement.scaled_width,
                height=placement.scaled_height,
                format="yuv420p",
                interpolation=SCALE_INTERPOLATION,
                # Decoders tag JPEG/PNG (and some cameras) full range or BT.709; the canvas is
                # limited-range BT.601 throughout, so every picture is brought to that here.
                dst_colorspace=Colorspace.ITU601,
                dst_color_range=ColorRange.MPEG,
                threads=SCALE_THREADS,
            )
            counter[0] += 1
            y, u, v = frame_planes(scaled)
            if len(self.tiles) >= MAX_TILES_PER_PICTURE:  # (layouts changing all the time)
                self.tiles.clear()
            # Copies of the visible part only: the scaled frame's buffer can then be freed.
            planes = self.tiles[key] = (
                y[_luma(src)].copy(),
                u[_chroma(src)].copy(),
                v[_chroma(src)].copy(),
            )
        return _Tile(placement, planes)


@dataclass(slots=True)
class _User:
    joined_us: int
    rank: int = 0  # place in the join order
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)
    pending: deque[tuple[int, VideoFrame]] = field(default_factory=deque)
    picture: _Picture | None = None
    picture_us: int = 0
    dropped: int = 0


class Compositor:
    """Lays users out on a canvas and paints one output frame per `render` call."""

    def __init__(
        self,
        width: int,
        height: int,
        layout: LayoutSpec,
        *,
        background_color: str = "#000000",
    ) -> None:
        self.width, self.height = width, height
        self._layout = layout
        self._color = rgb_to_yuv(parse_color(background_color))
        self._users: dict[str, _User] = {}  # Insertion order is join order (by rank).
        self._ranks = itertools.count(1 << 32)  # ranks of users joined without one given
        self._windows: list[Window] = []
        self._background: VideoFrame | None = None
        self._default_user_bg: _Picture | None = None
        # backgroundConfig images by uid: set before or after the user joins, kept after leaving.
        self._user_bgs: dict[str, tuple[_Picture, RenderMode]] = {}
        self._base = VideoFrame(width, height, "yuv420p")
        self._dirty = True  # Layout (or anything the windows depend on) changed.
        self._scale_counter = [0]
        self._paint_base()

    @property
    def scale_count(self) -> int:
        """How many times a picture has been scaled (each input frame at most once per window)."""
        return self._scale_counter[0]

    @property
    def users(self) -> list[str]:
        """Users in join order."""
        return list(self._users)

    @property
    def windows(self) -> list[Window]:
        """The windows of the current layout, bottom first."""
        self._relayout()
        return list(self._windows)

    def dropped_frames(self, uid: str) -> int:
        """Video frames of `uid` dropped because too many waited to be shown."""
        user = self._users.get(uid)
        return 0 if user is None else user.dropped

    def join(self, uid: str, t_us: int, order: int | None = None) -> None:
        """Add a user (no-op if already in), last in the join order, or at ``order`` (a rank
        its caller took when the user joined: a join applied late, at its time on the output
        clock, still goes before a user who joined after it but whose first frame came in
        first)."""
        if uid not in self._users:
            rank = next(self._ranks) if order is None else order
            last = next(reversed(self._users.values()), None)
            self._users[uid] = _User(joined_us=t_us, rank=rank)
            if last is not None and rank < last.rank:  # (a stable sort keeps ties' order)
                self._users = dict(sorted(self._users.items(), key=lambda u: u[1].rank))
            self._dirty = True

    def leave(self, uid: str) -> None:
        """Remove a user; the others are laid out again."""
        if self._users.pop(uid, None) is not None:
            self._dirty = True

    def set_layout(self, layout: LayoutSpec) -> None:
        """Switch layout (updateLayout); takes effect on the next frame."""
        self._layout = layout
        self._dirty = True

    def set_background_color(self, color: str) -> None:
        """Change the canvas colour."""
        self._color = rgb_to_yuv(parse_color(color))
        self._paint_base()

    def set_background_image(self, image: VideoFrame | None) -> None:
        """Canvas background: scaled to fill the canvas, edges cropped; None for the colour."""
        self._background = image
        self._paint_base()

    def set_user_background(
        self, uid: str, image: VideoFrame | None, mode: RenderMode = RenderMode.CROP
    ) -> None:
        """A user's own background image, shown when their video is stale (overrides default)."""
        if image is None:
            self._user_bgs.pop(uid, None)
        else:
            self._user_bgs[uid] = (_Picture(image, VideoReformatter()), mode)

    def clear_user_backgrounds(self) -> None:
        """Forget every user's own background image (updateLayout replaces them all)."""
        self._user_bgs.clear()

    def set_default_user_background(self, image: VideoFrame | None) -> None:
        """`defaultUserBackgroundImage`: for stale users without one of their own (crop mode)."""
        self._default_user_bg = None if image is None else _Picture(image, VideoReformatter())

    def push_video(self, uid: str, frame: VideoFrame, t_us: int) -> None:
        """Queue a decoded frame to be shown from `t_us` on (joins the user if new)."""
        self.join(uid, t_us)
        user = self._users[uid]
        if user.pending and t_us < user.pending[-1][0]:
            log.debug("video frame of %s steps back in time: dropped", uid)
            user.dropped += 1
            return
        user.pending.append((t_us, frame))
        if len(user.pending) > MAX_PENDING_FRAMES:
            user.pending.popleft()
            user.dropped += 1

    def _paint_base(self) -> None:
        """The canvas under every window: colour, then the background image (scale to fill)."""
        planes = frame_planes(self._base)
        fill(planes, Rect(0, 0, self.width, self.height), self._color)
        if self._background is not None:
            picture = _Picture(self._background, VideoReformatter())
            tile = picture.tile_for(
                Rect(0, 0, self.width, self.height), RenderMode.CROP, self._scale_counter
            )
            paste(planes, tile.planes, tile.placement.dest)
        self._base_planes = planes

    def _relayout(self) -> None:
        if not self._dirty:
            return
        aspects = {uid: u.picture.aspect for uid, u in self._users.items() if u.picture is not None}
        self._windows = compute_layout(
            self.width, self.height, list(self._users), self._layout, aspects
        )
        self._dirty = False

    def _advance(self, user: _User, t_us: int) -> None:
        """Make the latest frame due at `t_us` current; older due frames are never scaled."""
        latest: tuple[int, VideoFrame] | None = None
        while user.pending and user.pending[0][0] <= t_us:
            latest = user.pending.popleft()
        if latest is not None:
            old_aspect = None if user.picture is None else user.picture.aspect
            user.picture_us, frame = latest
            user.picture = _Picture(frame, user.reformatter)
            if user.picture.aspect != old_aspect:
                self._dirty = True  # The adaptive grid depends on aspects.

    def render(self, t_us: int) -> VideoFrame:
        """Paint the canvas as it is at `t_us` and return it as a new yuv420p frame."""
        for user in self._users.values():
            self._advance(user, t_us)
        self._relayout()
        out = VideoFrame(self.width, self.height, "yuv420p")
        planes = frame_planes(out)
        for target, base in zip(planes, self._base_planes, strict=True):
            target[...] = base
        for window in self._windows:
            self._paint_window(planes, window, t_us)
        return out

    def _source(self, uid: str, t_us: int) -> tuple[_Picture, RenderMode] | None:
        """What a window shows at `t_us`: video, a background image, or nothing (the canvas)."""
        user = self._users[uid]
        last_us = user.picture_us if user.picture is not None else user.joined_us
        if t_us - last_us <= STALE_VIDEO_US:
            return None if user.picture is None else (user.picture, RenderMode.CROP)
        if uid in self._user_bgs:
            return self._user_bgs[uid]
        if self._default_user_bg is not None:
            return self._default_user_bg, RenderMode.CROP
        return None

    def _paint_window(self, planes: Planes, window: Window, t_us: int) -> None:
        if window.alpha <= 0.0:
            return
        source = self._source(window.uid, t_us)
        if source is None:
            return
        picture, image_mode = source
        is_video = picture is self._users[window.uid].picture
        mode = window.render_mode if is_video else image_mode
        tile = picture.tile_for(window.rect, mode, self._scale_counter)
        if tile.placement.dest != window.rect:
            fill_black(planes, window.rect, window.alpha)
        paste(planes, tile.planes, tile.placement.dest, window.alpha)


def fill_black(planes: Planes, rect: Rect, alpha: float) -> None:
    """The fit-mode border: black over the window, as transparent as the window."""
    if alpha >= 1.0:
        fill(planes, rect, BLACK_YUV)
        return
    h, w = rect.height, rect.width
    tile = (
        np.full((h, w), BLACK_YUV[0], np.uint8),
        np.full((h // 2, w // 2), BLACK_YUV[1], np.uint8),
        np.full((h // 2, w // 2), BLACK_YUV[2], np.uint8),
    )
    paste(planes, tile, rect, alpha)
