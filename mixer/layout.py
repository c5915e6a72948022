"""Composite layouts as pure geometry: which user goes where on the canvas, and on top of whom.

No media here. Given the canvas size, the users in join order and the layout settings of the
cloud recording API's `transcodingConfig` (`mixedVideoLayout`, `maxResolutionUid`,
`layoutConfig`), :func:`compute_layout` returns one :class:`Window` per shown user, and
:func:`place` says how a picture of a given aspect is scaled into a window (crop or fit).
Every coordinate and size is even, so that the 4:2:0 chroma planes line up with the luma.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from mixer.errors import ConfigError, LayoutError

MAX_WINDOWS = 17  # Every layout shows at most this many users; later joiners are not drawn.
FLOATING_COLUMNS = 4
FLOATING_ROWS = 4
# Gap between floating windows and around them, as a share of the canvas's shorter side.
FLOATING_GAP_SHARE = 0.02
VERTICAL_COLUMN_WINDOWS = 8
VERTICAL_COLUMNS = 2
REGION_DECIMALS = 6  # layoutConfig coordinates are relative values to 6 decimal places.
MAX_UID = 2**32 - 1
_DIGITS = re.compile(r"[0-9]{1,10}")  # (2^32-1 has 10 digits)
# Error fields are full paths in the start request, as the API answers them.
TRANSCODING_FIELD = "clientRequest.recordingConfig.transcodingConfig"
DEFAULT_ASPECT = 16 / 9  # Assumed for a user whose video size is not known yet.


class LayoutMode(IntEnum):
    """`mixedVideoLayout`: the composite layout."""

    FLOATING = 0
    ADAPTIVE = 1
    VERTICAL = 2
    CUSTOM = 3


class RenderMode(IntEnum):
    """`render_mode`: fill the window and crop the edges, or show everything with borders."""

    CROP = 0
    FIT = 1


def check_number(
    value: object, field: str, low: float, high: float, *, integer: bool = False
) -> float:
    """Return `value` if it is a number (an integer if asked) in [low, high]; else ConfigError."""
    # bool is an int to Python but never a number to a JSON API user.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number, not {type(value).__name__}")
    # (JSON's 1e400 parses as an infinite float, and an integer of 400 digits has no float:
    # neither may reach float() or is_integer())
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if integer and isinstance(value, float) and not value.is_integer():
        raise ConfigError(field, "must be an integer")
    if not low <= value <= high:  # (an int compares exactly with the float bounds)
        raise ConfigError(field, f"must be in [{low:g}, {high:g}], got {_short(value)}")
    return value


def _short(value: int | float) -> str:
    """A number for an error message: an integer of hundreds of digits cut short."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def check_uid(value: object, field: str) -> str:
    """Return a uid given as a string of an integer in [1, 2^32-1]; else ConfigError."""
    # ASCII digits without leading zeros ("007" and "7" would be one user to the channel
    # but two to a string compare; str.isdecimal() lets Arabic-Indic digits through)
    if (
        not isinstance(value, str)
        or not _DIGITS.fullmatch(value)
        or value[0] == "0"
        or int(value) > MAX_UID
    ):
        raise ConfigError(
            field, f"must be a string of an integer from 1 to {MAX_UID}, without leading zeros"
        )
    return value


def _even(value: float) -> int:
    """Round down to an even integer (4:2:0 chroma covers 2x2 luma pixels)."""
    return int(value) // 2 * 2


def _even_round(value: float) -> int:
    return round(value / 2) * 2


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle in canvas pixels; `x`, `y` are its top-left corner."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.x + self.width

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.y + self.height

    @property
    def center(self) -> tuple[int, int]:
        """The pixel at the middle (x, y)."""
        return self.x + self.width // 2, self.y + self.height // 2

    def contains(self, other: Rect) -> bool:
        """Whether `other` lies wholly inside this rectangle."""
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def overlaps(self, other: Rect) -> bool:
        """Whether the two share at least one pixel."""
        return (
            self.x < other.right
            and other.x < self.right
            and self.y < other.bottom
            and other.y < self.bottom
        )


@dataclass(frozen=True, slots=True)
class Region:
    """One `layoutConfig` entry: a window in relative coordinates, optionally tied to a uid."""

    x: float
    y: float
    width: float
    height: float
    alpha: float = 1.0
    render_mode: RenderMode = RenderMode.CROP
    uid: str | None = None

    @classmethod
    def from_json(cls, obj: object, field: str) -> Region:
        """Validate one `layoutConfig` entry (`field` is its path, for errors)."""
        if not isinstance(obj, Mapping):
            raise ConfigError(field, "must be an object")
        values: dict[str, float] = {}
        for name in ("x_axis", "y_axis", "width", "height"):
            if obj.get(name) is None:
                raise ConfigError(f"{field}.{name}", "is required")
            number = check_number(obj[name], f"{field}.{name}", 0.0, 1.0)
            values[name] = round(float(number), REGION_DECIMALS)
        alpha = obj.get("alpha")
        alpha = 1.0 if alpha is None else check_number(alpha, f"{field}.alpha", 0.0, 1.0)
        mode = obj.get("render_mode")
        mode = 0 if mode is None else check_number(mode, f"{field}.render_mode", 0, 1, integer=True)
        uid = obj.get("uid")
        if uid is not None and (not isinstance(uid, str) or not uid):
            raise ConfigError(f"{field}.uid", "must be a non-empty string")
        return cls(
            values["x_axis"],
            values["y_axis"],
            values["width"],
            values["height"],
            float(alpha),
            RenderMode(int(mode)),
            uid,
        )


@dataclass(frozen=True, slots=True)
class LayoutSpec:
    """The layout part of `transcodingConfig`: what `updateLayout` may change while recording."""

    mode: LayoutMode = LayoutMode.FLOATING
    max_resolution_uid: str | None = None
    regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is LayoutMode.VERTICAL and self.max_resolution_uid is None:
            raise LayoutError(
                f"{TRANSCODING_FIELD}.maxResolutionUid", "is required with the vertical layout"
            )
        if self.mode is LayoutMode.CUSTOM and not self.regions:
            raise LayoutError(f"{TRANSCODING_FIELD}.layoutConfig", "is required with custom layout")
        if len(self.regions) > MAX_WINDOWS:
            raise LayoutError(
                f"{TRANSCODING_FIELD}.layoutConfig", f"has more than {MAX_WINDOWS} regions"
            )
        uids = [r.uid for r in self.regions if r.uid is not None]
        if len(uids) != len(set(uids)):
            raise LayoutError(f"{TRANSCODING_FIELD}.layoutConfig", "names a uid twice")

    @classmethod
    def from_json(cls, config: Mapping[str, Any], prefix: str = TRANSCODING_FIELD) -> LayoutSpec:
        """Read `mixedVideoLayout`, `maxResolutionUid` and `layoutConfig` with their defaults."""
        mode = config.get("mixedVideoLayout")
        mode = (
            0
            if mode is None
            else check_number(mode, f"{prefix}.mixedVideoLayout", 0, 3, integer=True)
        )
        max_uid = config.get("maxResolutionUid")
        if max_uid is not None:
            max_uid = check_uid(max_uid, f"{prefix}.maxResolutionUid")
        raw = config.get("layoutConfig")
        regions: tuple[Region, ...] = ()
        if raw is not None:
            if not isinstance(raw, list):
                raise ConfigError(f"{prefix}.layoutConfig", "must be an array")
            regions = tuple(
                Region.from_json(r, f"{prefix}.layoutConfig[{i}]") for i, r in enumerate(raw)
            )
        # layoutConfig is kept even when another layout is chosen: only applied with custom,
        # and an updateLayout switching back to custom may rely on it.
        return cls(LayoutMode(int(mode)), max_uid, regions)


@dataclass(frozen=True, slots=True)
class Window:
    """Where one user is drawn: rectangle, stacking order (higher on top), alpha, render mode."""

    uid: str
    rect: Rect
    z: int
    alpha: float = 1.0
    render_mode: RenderMode = RenderMode.CROP


@dataclass(frozen=True, slots=True)
class Placement:
    """How a picture goes into a window: scale it to `scaled`, take `src` of it, paint at `dest`.

    `src` and `dest` have the same size; in crop mode `dest` is the whole window, in fit mode
    `src` is the whole scaled picture and the rest of the window is a border.
    """

    scaled_width: int
    scaled_height: int
    src: Rect
    dest: Rect


def place(window: Rect, aspect: float, mode: RenderMode) -> Placement:
    """Scale a picture of `aspect` (width / height) into `window`, keeping its proportions."""
    w, h = window.width, window.height
    if aspect <= 0 or not math.isfinite(aspect):
        aspect = DEFAULT_ASPECT
    wider = aspect > w / h
    if mode is RenderMode.CROP:
        # Cover the window: the scaled picture is at least the window in both directions.
        sw = max(w, 2 * math.ceil(h * aspect / 2)) if wider else w
        sh = h if wider else max(h, 2 * math.ceil(w / aspect / 2))
        src = Rect(_even((sw - w) / 2), _even((sh - h) / 2), w, h)
        return Placement(sw, sh, src, window)
    # Fit: the scaled picture lies inside the window, at least 2x2 so it has a chroma sample.
    sw = w if wider else min(w, max(2, _even_round(h * aspect)))
    sh = min(h, max(2, _even_round(w / aspect))) if wider else h
    dest = Rect(window.x + _even((w - sw) / 2), window.y + _even((h - sh) / 2), sw, sh)
    return Placement(sw, sh, Rect(0, 0, sw, sh), dest)


def _floating(width: int, height: int, users: Sequence[str]) -> list[Window]:
    windows = [Window(users[0], Rect(0, 0, width, height), 0)]
    gap = _even(min(width, height) * FLOATING_GAP_SHARE)
    # Small windows keep the canvas's shape; 4 rows of 4 must fit across and up.
    tile_w = _even((width - (FLOATING_COLUMNS + 1) * gap) / FLOATING_COLUMNS)
    tile_h = _even(tile_w * height / width)
    max_h = _even((height - (FLOATING_ROWS + 1) * gap) / FLOATING_ROWS)
    if tile_h > max_h:
        tile_h = max(2, max_h)
        tile_w = max(2, _even(tile_h * width / height))
    for i, uid in enumerate(users[1:]):
        row, col = divmod(i, FLOATING_COLUMNS)
        x = gap + col * (tile_w + gap)
        y = height - (row + 1) * (tile_h + gap)  # Rows fill from the bottom up.
        windows.append(Window(uid, Rect(x, y, tile_w, tile_h), 1))
    return windows


def _covered(n: int, cols: int, rows: int, width: int, height: int, aspect: float) -> float:
    """Canvas area the pictures would cover in fit mode, for a grid of cols x rows."""
    cw, ch = width / cols, height / rows
    return n * min(cw, ch * aspect) * min(ch, cw / aspect)


def adaptive_grid(
    n: int, width: int, height: int, aspect: float = DEFAULT_ASPECT
) -> tuple[int, int]:
    """(columns, rows) for `n` equal windows: the grid whose cells best fit pictures of `aspect`.

    Only grids with no empty row or column are considered; among them the one whose cells,
    with pictures fitted in, cover most of the canvas, then the squarer one, then the one
    that follows the canvas's orientation.
    """
    best: tuple[float, float, bool, int, int] | None = None
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        if cols * rows - n >= min(cols, rows) or width < 2 * cols or height < 2 * rows:
            continue  # A whole empty row or column, or cells too small for a chroma sample.
        cell_aspect = (width / cols) / (height / rows)
        key = (
            round(_covered(n, cols, rows, width, height, aspect) / (width * height), 6),
            -abs(math.log(cell_aspect / aspect)),
            (cols >= rows) == (width >= height),
            cols,
            rows,
        )
        if best is None or key[:3] > best[:3]:
            best = key
    if best is None:  # Only on canvases a few pixels across.
        return 1, n
    return best[3], best[4]


def _adaptive(width: int, height: int, users: Sequence[str], aspect: float) -> list[Window]:
    n = len(users)
    cols, rows = adaptive_grid(n, width, height, aspect)
    cell_w, cell_h = _even(width / cols), _even(height / rows)
    top = _even((height - rows * cell_h) / 2)
    windows = []
    for i, uid in enumerate(users):
        row, col = divmod(i, cols)
        in_row = min(cols, n - row * cols)  # The last row may be short: it is centred.
        left = _even((width - in_row * cell_w) / 2)
        windows.append(
            Window(uid, Rect(left + col * cell_w, top + row * cell_h, cell_w, cell_h), 0)
        )
    return windows


def _vertical(width: int, height: int, users: Sequence[str], big: str) -> list[Window]:
    # The large window goes to maxResolutionUid; until that user joins, to the first joiner,
    # so the left of the canvas is never an empty hole.
    first = big if big in users else users[0]
    others = [u for u in users if u != first]
    if not others:
        return [Window(first, Rect(0, 0, width, height), 0)]
    tile_h = max(2, _even(height / VERTICAL_COLUMN_WINDOWS))
    tile_w = max(2, _even(tile_h * width / height))  # Small windows keep the canvas's shape.
    columns = math.ceil(len(others) / VERTICAL_COLUMN_WINDOWS)
    big_w = width - columns * tile_w
    windows = [Window(first, Rect(0, 0, big_w, height), 0)]
    for i, uid in enumerate(others):
        col, row = divmod(i, VERTICAL_COLUMN_WINDOWS)
        windows.append(Window(uid, Rect(big_w + col * tile_w, row * tile_h, tile_w, tile_h), 0))
    return windows


def _custom(
    width: int, height: int, users: Sequence[str], regions: Sequence[Region]
) -> list[Window]:
    named = {r.uid for r in regions if r.uid is not None}
    unnamed = iter(u for u in users if u not in named)  # Join order fills uid-less regions.
    present = set(users)
    windows = []
    for z, region in enumerate(regions):
        if region.uid is not None:
            if region.uid not in present:
                continue  # Kept empty until that user joins.
            uid = region.uid
        else:
            next_uid = next(unnamed, None)
            if next_uid is None:
                continue
            uid = next_uid
        x0, y0 = _even_round(region.x * width), _even_round(region.y * height)
        x1 = min(_even(width), _even_round((region.x + region.width) * width))
        y1 = min(_even(height), _even_round((region.y + region.height) * height))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue  # Too small to hold a 4:2:0 pixel.
        windows.append(
            Window(uid, Rect(x0, y0, x1 - x0, y1 - y0), z, region.alpha, region.render_mode)
        )
    return windows


def compute_layout(
    width: int,
    height: int,
    users: Sequence[str],
    spec: LayoutSpec,
    aspects: Mapping[str, float] | None = None,
) -> list[Window]:
    """The windows of `users` (in join order) on a `width` x `height` canvas, bottom first.

    `aspects` gives each user's video width / height where known; the adaptive layout picks
    its grid from them. Users past the 17th are not drawn (custom: past the regions).
    """
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise LayoutError(f"{TRANSCODING_FIELD}.width", "canvas sides must be even and at least 2")
    if len(set(users)) != len(users):
        raise ValueError("a user is listed twice")
    if not users:
        return []
    shown = list(users[:MAX_WINDOWS])
    match spec.mode:
        case LayoutMode.FLOATING:
            windows = _floating(width, height, shown)
        case LayoutMode.ADAPTIVE:
            known = [a for u in shown if (a := (aspects or {}).get(u)) and a > 0]
            # The geometric mean: the aspect halfway between a portrait and a landscape user.
            aspect = math.exp(sum(map(math.log, known)) / len(known)) if known else DEFAULT_ASPECT
            windows = _adaptive(width, height, shown, aspect)
        case LayoutMode.VERTICAL:
            assert spec.max_resolution_uid is not None  # Checked by LayoutSpec.
            big = spec.max_resolution_uid
            # The large window's user is shown even when joining 18th or later.
            if big in users and big not in shown:
                shown = [big, *users[: MAX_WINDOWS - 1]]
            windows = _vertical(width, height, shown, big)
        case LayoutMode.CUSTOM:
            windows = _custom(width, height, users, spec.regions)
    # A window under 2x2 pixels holds no 4:2:0 sample (only on canvases a few pixels across).
    drawable = [w for w in windows if w.rect.width >= 2 and w.rect.height >= 2]
    return sorted(drawable, key=lambda w: w.z)
