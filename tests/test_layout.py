"""Layouts as pure geometry: property tests over canvases and 1..17+ users, and validation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.errors import ConfigError, LayoutError
from mixer.layout import (
    MAX_WINDOWS,
    TRANSCODING_FIELD,
    LayoutMode,
    LayoutSpec,
    Rect,
    Region,
    RenderMode,
    Window,
    adaptive_grid,
    compute_layout,
    place,
)

MAX_PIXELS = 1920 * 1080
MIN_SIDE = 16
# A custom region is rounded to even pixels at each edge: up to 1 px each way, 2 px per side.
REGION_ROUNDING_PX = 2


@st.composite
def canvases(draw: st.DrawFn) -> tuple[int, int]:
    """Even canvas sizes from 16 px up, with width x height at most 1920 x 1080."""
    width = draw(st.integers(MIN_SIDE // 2, 1920 // 2)) * 2
    max_h = min(1920, MAX_PIXELS // width) // 2
    height = draw(st.integers(MIN_SIDE // 2, max_h)) * 2
    return width, height


def _users(n: int) -> list[str]:
    return [str(1000 + i) for i in range(n)]


def _inside(canvas: tuple[int, int], windows: list[Window]) -> None:
    frame = Rect(0, 0, *canvas)
    for w in windows:
        assert frame.contains(w.rect), w
        assert w.rect.width >= 2 and w.rect.height >= 2
        assert w.rect.x % 2 == w.rect.y % 2 == w.rect.width % 2 == w.rect.height % 2 == 0
    assert [w.z for w in windows] == sorted(w.z for w in windows)


def _disjoint(windows: list[Window]) -> None:
    for a, b in itertools.combinations(windows, 2):
        assert not a.rect.overlaps(b.rect), (a, b)


@settings(max_examples=150)
@given(canvases(), st.integers(1, MAX_WINDOWS + 3))
def test_floating(canvas: tuple[int, int], n: int) -> None:
    users = _users(n)
    windows = compute_layout(*canvas, users, LayoutSpec(LayoutMode.FLOATING))
    _inside(canvas, windows)
    assert [w.uid for w in windows] == users[:MAX_WINDOWS]
    big, small = windows[0], windows[1:]
    assert big.rect == Rect(0, 0, *canvas) and big.z == 0
    _disjoint(small)
    assert all(w.z == 1 for w in small)
    assert len({(w.rect.width, w.rect.height) for w in small}) <= 1
    rows = sorted({w.rect.y for w in small}, reverse=True)
    assert len(rows) <= 4
    for i, w in enumerate(small):
        # Left to right within a row, rows from the bottom up, 4 to a row.
        assert w.rect.y == rows[i // 4]
        if i % 4:
            assert w.rect.x > small[i - 1].rect.x


@settings(max_examples=150)
@given(canvases(), st.integers(1, MAX_WINDOWS + 3), st.floats(0.3, 3.0))
def test_adaptive(canvas: tuple[int, int], n: int, aspect: float) -> None:
    users = _users(n)
    aspects = dict.fromkeys(users, aspect)
    windows = compute_layout(*canvas, users, LayoutSpec(LayoutMode.ADAPTIVE), aspects)
    _inside(canvas, windows)
    assert [w.uid for w in windows] == users[:MAX_WINDOWS]
    _disjoint(windows)
    assert len({(w.rect.width, w.rect.height) for w in windows}) == 1
    cols, rows = adaptive_grid(min(n, MAX_WINDOWS), *canvas, aspect)
    assert cols * rows >= len(windows) > (cols - 1) * rows and len(windows) > cols * (rows - 1)


def test_adaptive_grids_for_landscape_video() -> None:
    grids = {n: adaptive_grid(n, 1280, 720) for n in (1, 2, 3, 4, 5, 9, 10, 16, 17)}
    assert grids[1] == (1, 1)
    assert grids[4] == (2, 2)
    assert grids[9] == (3, 3)
    assert grids[16] == (4, 4)
    assert grids[2][0] * grids[2][1] == 2
    assert grids[17][0] * grids[17][1] >= 17
    # Portrait video on a portrait canvas: two users stack.
    assert adaptive_grid(2, 360, 640, 9 / 16) == (1, 2)


@settings(max_examples=150)
@given(canvases(), st.integers(1, MAX_WINDOWS + 3), st.data())
def test_vertical(canvas: tuple[int, int], n: int, data: st.DataObject) -> None:
    users = _users(n)
    big_uid = data.draw(st.sampled_from([*users, "99"]))
    windows = compute_layout(*canvas, users, LayoutSpec(LayoutMode.VERTICAL, big_uid))
    _inside(canvas, windows)
    _disjoint(windows)
    assert len(windows) == min(n, MAX_WINDOWS)
    big = windows[0]
    expected_big = big_uid if big_uid in users else users[0]
    assert big.uid == expected_big
    assert big.rect.x == 0 and big.rect.y == 0 and big.rect.height == canvas[1]
    small = windows[1:]
    if not small:
        assert big.rect.width == canvas[0]
        return
    assert big_uid not in [w.uid for w in small]
    columns = sorted({w.rect.x for w in small})
    assert len(columns) <= 2
    assert all(w.rect.x >= big.rect.right for w in small)
    for x in columns:
        assert sum(w.rect.x == x for w in small) <= 8


def test_vertical_big_user_joining_late_is_shown() -> None:
    users = _users(20)
    windows = compute_layout(1280, 720, users, LayoutSpec(LayoutMode.VERTICAL, users[19]))
    assert windows[0].uid == users[19] and len(windows) == MAX_WINDOWS


@st.composite
def regions(draw: st.DrawFn) -> Region:
    coord = st.floats(0, 1).map(lambda v: round(v, 6))
    return Region(
        draw(coord),
        draw(coord),
        draw(coord),
        draw(coord),
        draw(st.floats(0, 1)),
        draw(st.sampled_from(RenderMode)),
    )


@settings(max_examples=150)
@given(canvases(), st.lists(regions(), min_size=1, max_size=MAX_WINDOWS), st.integers(1, 20))
def test_custom(canvas: tuple[int, int], regs: list[Region], n: int) -> None:
    users = _users(n)
    windows = compute_layout(*canvas, users, LayoutSpec(LayoutMode.CUSTOM, regions=tuple(regs)))
    _inside(canvas, windows)
    width, height = canvas
    for w in windows:
        region = regs[w.z]
        assert w.uid == users[w.z]  # No uids in the regions: join order.
        assert w.alpha == region.alpha and w.render_mode == region.render_mode
        assert abs(w.rect.x - region.x * width) <= REGION_ROUNDING_PX
        assert abs(w.rect.y - region.y * height) <= REGION_ROUNDING_PX
        right = min(width, (region.x + region.width) * width)
        assert abs(w.rect.right - right) <= REGION_ROUNDING_PX
    assert len(windows) <= min(n, len(regs))


def test_custom_regions_named_by_uid_and_join_order() -> None:
    a, b, c = "11", "22", "33"
    spec = LayoutSpec(
        LayoutMode.CUSTOM,
        regions=(
            Region(0, 0, 0.5, 0.5),
            Region(0.5, 0, 0.5, 0.5, uid=a),
            Region(0, 0.5, 0.5, 0.5),
            Region(0.5, 0.5, 0.5, 0.5, uid="44"),  # Not in the channel: stays empty.
        ),
    )
    windows = compute_layout(640, 360, [a, b, c], spec)
    assert [(w.uid, w.rect) for w in windows] == [
        (b, Rect(0, 0, 320, 180)),
        (a, Rect(320, 0, 320, 180)),
        (c, Rect(0, 180, 320, 180)),
    ]


@settings(max_examples=300)
@given(
    st.builds(
        Rect,
        st.integers(0, 100).map(lambda v: v * 2),
        st.integers(0, 100).map(lambda v: v * 2),
        st.integers(1, 500).map(lambda v: v * 2),
        st.integers(1, 500).map(lambda v: v * 2),
    ),
    st.floats(0.1, 10),
    st.sampled_from(RenderMode),
)
def test_place(window: Rect, aspect: float, mode: RenderMode) -> None:
    p = place(window, aspect, mode)
    assert window.contains(p.dest)
    assert Rect(0, 0, p.scaled_width, p.scaled_height).contains(p.src)
    assert (p.src.width, p.src.height) == (p.dest.width, p.dest.height)
    for v in (p.scaled_width, p.scaled_height, p.src.x, p.src.y, p.dest.x, p.dest.y):
        assert v % 2 == 0
    # Proportions kept to within the 2 px rounding on the side computed from the other.
    if mode is RenderMode.CROP:
        assert p.dest == window
        assert p.scaled_width >= window.width and p.scaled_height >= window.height
        assert (
            min(
                abs(p.scaled_width - p.scaled_height * aspect),
                abs(p.scaled_height - p.scaled_width / aspect),
            )
            <= 2
        )
    else:
        assert p.src == Rect(0, 0, p.scaled_width, p.scaled_height)
        assert p.scaled_width == window.width or p.scaled_height == window.height
        if p.scaled_width > 2 and p.scaled_height > 2:
            assert (
                min(
                    abs(p.scaled_width - p.scaled_height * aspect),
                    abs(p.scaled_height - p.scaled_width / aspect),
                )
                <= 2
            )


def test_place_fit_centres_with_borders() -> None:
    p = place(Rect(0, 0, 640, 360), 1.0, RenderMode.FIT)
    assert p.dest == Rect(140, 0, 360, 360)
    p = place(Rect(0, 0, 640, 360), 1.0, RenderMode.CROP)
    assert (p.scaled_width, p.scaled_height, p.src) == (640, 640, Rect(0, 140, 640, 360))


def test_spec_from_json_defaults_and_rounding() -> None:
    assert LayoutSpec.from_json({}) == LayoutSpec(LayoutMode.FLOATING)
    spec = LayoutSpec.from_json(
        {
            "mixedVideoLayout": 3,
            "layoutConfig": [
                {"x_axis": 0.1234567, "y_axis": 0, "width": 1, "height": 0.5, "uid": "7"},
                {"x_axis": 0, "y_axis": 0.5, "width": 1, "height": 0.5, "alpha": 0.5,
                 "render_mode": 1},
            ],
        }
    )  # fmt: skip
    assert spec.regions[0] == Region(0.123457, 0.0, 1.0, 0.5, uid="7")
    assert spec.regions[1].alpha == 0.5 and spec.regions[1].render_mode is RenderMode.FIT


LC = f"{TRANSCODING_FIELD}.layoutConfig"
REGION = {"x_axis": 0, "y_axis": 0, "width": 1, "height": 1}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"mixedVideoLayout": 4}, f"{TRANSCODING_FIELD}.mixedVideoLayout"),
        ({"mixedVideoLayout": 1.5}, f"{TRANSCODING_FIELD}.mixedVideoLayout"),
        ({"mixedVideoLayout": True}, f"{TRANSCODING_FIELD}.mixedVideoLayout"),
        ({"mixedVideoLayout": 2}, f"{TRANSCODING_FIELD}.maxResolutionUid"),
        ({"mixedVideoLayout": 2, "maxResolutionUid": "0"}, f"{TRANSCODING_FIELD}.maxResolutionUid"),
        ({"maxResolutionUid": "4294967296"}, f"{TRANSCODING_FIELD}.maxResolutionUid"),
        ({"maxResolutionUid": 12}, f"{TRANSCODING_FIELD}.maxResolutionUid"),
        ({"mixedVideoLayout": 3}, f"{TRANSCODING_FIELD}.layoutConfig"),
        ({"mixedVideoLayout": 3, "layoutConfig": {}}, f"{TRANSCODING_FIELD}.layoutConfig"),
        ({"mixedVideoLayout": 3, "layoutConfig": [REGION] * 18}, LC),
        (
            {"mixedVideoLayout": 3, "layoutConfig": [{**REGION, "uid": "1"}] * 2},
            f"{TRANSCODING_FIELD}.layoutConfig",
        ),
        ({"layoutConfig": [{**REGION, "x_axis": 1.2}]}, f"{LC}[0].x_axis"),
        ({"layoutConfig": [{**REGION, "y_axis": -0.1}]}, f"{LC}[0].y_axis"),
        ({"layoutConfig": [REGION, {**REGION, "width": "1"}]}, f"{LC}[1].width"),
        ({"layoutConfig": [{"x_axis": 0, "y_axis": 0, "width": 1}]}, f"{LC}[0].height"),
        ({"layoutConfig": [{**REGION, "alpha": 1.01}]}, f"{LC}[0].alpha"),
        ({"layoutConfig": [{**REGION, "render_mode": 2}]}, f"{LC}[0].render_mode"),
        ({"layoutConfig": [{**REGION, "uid": 5}]}, f"{LC}[0].uid"),
        ({"layoutConfig": ["x"]}, f"{LC}[0]"),
    ],
)  # fmt: skip
def test_spec_validation_names_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LayoutSpec.from_json(config)
    assert info.value.field == field
    assert isinstance(info.value, ValueError) and info.value.status == 400


def test_layout_errors_are_config_errors() -> None:
    with pytest.raises(LayoutError):
        LayoutSpec(LayoutMode.VERTICAL)
    with pytest.raises(LayoutError):
        compute_layout(641, 360, ["1"], LayoutSpec())


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720), (360, 640)])
def test_floating_sizes_are_the_documented_ones(width: int, height: int) -> None:
    """docs/mixer.md: windows of the canvas's shape, 4 to a row, from the bottom up, with a
    gap of 2 % of the shorter side (checked against the rule, not against compute_layout)."""
    small = compute_layout(width, height, _users(7), LayoutSpec(LayoutMode.FLOATING))[1:]
    gap = 0.02 * min(width, height)
    w, h = small[0].rect.width, small[0].rect.height
    # as wide as 4 to a row allow, unless 4 rows must fit up the canvas too
    across, up = (width - 5 * gap) / 4, (height - 5 * gap) / 4
    assert w == pytest.approx(across, abs=2) or h == pytest.approx(up, abs=2), (w, h)
    assert w / h == pytest.approx(width / height, rel=0.05)  # the canvas's shape
    assert small[0].rect.x == pytest.approx(gap, abs=2)
    assert small[0].rect.bottom == pytest.approx(height - gap, abs=2)  # the bottom row
    assert small[1].rect.x - small[0].rect.right == pytest.approx(gap, abs=2)
    assert small[0].rect.y - small[4].rect.bottom == pytest.approx(gap, abs=2)  # row above


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (640, 360)])
def test_vertical_sizes_are_the_documented_ones(width: int, height: int) -> None:
    """docs/mixer.md: windows of the canvas's shape, 1/8 of its height, in columns of 8 at
    the right; the large window takes the rest of the width."""
    windows = compute_layout(width, height, _users(10), LayoutSpec(LayoutMode.VERTICAL, "0"))
    big, small = windows[0], windows[1:]
    h, w = small[0].rect.height, small[0].rect.width
    assert h == pytest.approx(height / 8, abs=2)
    assert w / h == pytest.approx(width / height, rel=0.05)
    assert [s.rect.y for s in small[:8]] == [i * h for i in range(8)]  # a column of 8
    assert {s.rect.x for s in small} == {width - 2 * w, width - w}  # two columns at the right
    assert big.rect == Rect(0, 0, width - 2 * w, height)
