"""The compositor alone: painted canvases checked pixel by pixel against the layout's windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from av.video.frame import VideoFrame

from mixer.compositor import (
    MAX_PENDING_FRAMES,
    STALE_VIDEO_US,
    Compositor,
    frame_planes,
    rgb_to_yuv,
    solid_frame,
)
from mixer.errors import ConfigError
from mixer.layout import (
    TRANSCODING_FIELD,
    LayoutMode,
    LayoutSpec,
    Rect,
    Region,
    RenderMode,
    compute_layout,
)
from mixer.mix import MixSession
from mixer.mix_config import FileType, MixConfig

W, H = 320, 180
FRAME_US = 66_667  # 15 fps
BLACK = (16, 128, 128)
BG = "#204060"


def user_color(i: int) -> tuple[int, int, int]:
    """Distinct colours for up to 17 users: luma steps of 10, chroma steps apart too."""
    return 40 + 10 * i, 60 + 8 * i, 200 - 8 * i


def yuv_at(frame: VideoFrame, x: int, y: int) -> tuple[int, int, int]:
    """The Y, U, V values at pixel (x, y)."""
    py, pu, pv = frame_planes(frame)
    return int(py[y, x]), int(pu[y // 2, x // 2]), int(pv[y // 2, x // 2])


def _spec(mode: LayoutMode, users: list[str]) -> LayoutSpec:
    if mode is LayoutMode.VERTICAL:
        return LayoutSpec(mode, max_resolution_uid=users[1])
    if mode is LayoutMode.CUSTOM:
        regions = (
            Region(0.0, 0.0, 0.5, 0.5),
            Region(0.5, 0.0, 0.5, 0.5, uid=users[0]),
            Region(0.25, 0.5, 0.5, 0.5, render_mode=RenderMode.FIT),
        )
        return LayoutSpec(mode, regions=regions)
    return LayoutSpec(mode)


@pytest.mark.parametrize("mode", list(LayoutMode))
@pytest.mark.parametrize("n", [1, 3, 10, 17])
def test_every_window_shows_its_user(mode: LayoutMode, n: int) -> None:
    users = [str(100 + i) for i in range(n)]
    if mode is LayoutMode.VERTICAL and n == 1:
        users.append("999")  # maxResolutionUid must name someone.
    spec = _spec(mode, users)
    comp = Compositor(W, H, spec, background_color=BG)
    for i, uid in enumerate(users):
        comp.push_video(uid, solid_frame(64, 36, user_color(i)), 0)
    out = comp.render(0)
    windows = compute_layout(W, H, users, spec, dict.fromkeys(users, 64 / 36))
    assert comp.windows == windows
    assert windows
    owner = np.full((H, W), -1)
    for i, w in enumerate(windows):  # Bottom first, as painted.
        owner[w.rect.y : w.rect.bottom, w.rect.x : w.rect.right] = i
    for i, w in enumerate(windows):
        # The centre, unless a window above hides it: then any pixel still its own.
        x, y = w.rect.center
        if owner[y, x] != i:
            ys, xs = np.nonzero(owner == i)
            assert len(ys), w
            x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
        assert yuv_at(out, x, y) == user_color(users.index(w.uid)), w
    covered = owner >= 0
    # Where no window is, the canvas colour shows.
    ys, xs = np.nonzero(~covered)
    for y, x in list(zip(ys, xs, strict=True))[:: max(1, len(ys) // 50)]:
        assert yuv_at(out, int(x), int(y)) == rgb_to_yuv(BG)


def test_floating_small_windows_sit_on_the_first_user() -> None:
    comp = Compositor(W, H, LayoutSpec(LayoutMode.FLOATING))
    for i in range(3):
        comp.push_video(str(i), solid_frame(64, 36, user_color(i)), 0)
    out = comp.render(0)
    big, *small = comp.windows
    assert big.rect == Rect(0, 0, W, H)
    assert yuv_at(out, 2, 2) == user_color(0)  # Top-left is clear of the small windows.
    for w in small:
        assert yuv_at(out, *w.rect.center) == user_color(int(w.uid))


def _banded(size: int) -> VideoFrame:
    """A square frame: a red band over the top tenth, the rest blue."""
    frame = solid_frame(size, size, rgb_to_yuv("#0000FF"))
    y, u, v = frame_planes(frame)
    band = size // 10 // 2 * 2
    red = rgb_to_yuv("#FF0000")
    y[:band], u[: band // 2], v[: band // 2] = red
    return frame


def test_crop_and_fit_render_modes() -> None:
    region = Region(0.0, 0.0, 1.0, 1.0)
    for mode in RenderMode:
        spec = LayoutSpec(LayoutMode.CUSTOM, regions=(Region(0, 0, 1, 1, render_mode=mode),))
        comp = Compositor(W, H, spec, background_color=BG)
        comp.push_video("1", _banded(200), 0)
        out = comp.render(0)
        blue, red = rgb_to_yuv("#0000FF"), rgb_to_yuv("#FF0000")
        if mode is RenderMode.CROP:
            # Scaled to 320x320 and cut to the middle 180 rows: the band is cropped off.
            assert yuv_at(out, 0, 0) == blue and yuv_at(out, W - 1, H - 1) == blue
        else:
            # Scaled to 180x180, centred: the whole picture with black borders left and right.
            assert yuv_at(out, 10, 90) == BLACK and yuv_at(out, W - 10, 90) == BLACK
            assert yuv_at(out, W // 2, 4) == red and yuv_at(out, W // 2, 90) == blue
    assert region.render_mode is RenderMode.CROP


def test_alpha_blends_with_what_is_under() -> None:
    spec = LayoutSpec(LayoutMode.CUSTOM, regions=(Region(0, 0, 1, 1, alpha=0.5),))
    comp = Compositor(W, H, spec, background_color="#000000")
    comp.push_video("1", solid_frame(64, 36, (200, 100, 160)), 0)
    out = comp.render(0)
    black = rgb_to_yuv("#000000")
    expected = tuple((a + b + 1) // 2 for a, b in zip((200, 100, 160), black, strict=True))
    assert all(abs(a - b) <= 1 for a, b in zip(yuv_at(out, 160, 90), expected, strict=True))


def test_background_image_fills_the_canvas_edges_cropped() -> None:
    # A 4:1 image: red, green, green, blue quarters. On a 16:9 canvas it is scaled to 720x180
    # and 200 px are cut off each side, so both edges show green, not red or blue.
    image = solid_frame(400, 100, rgb_to_yuv("#00FF00"))
    y, u, v = frame_planes(image)
    red, blue = rgb_to_yuv("#FF0000"), rgb_to_yuv("#0000FF")
    y[:, :100], u[:, :50], v[:, :50] = red
    y[:, 300:], u[:, 150:], v[:, 150:] = blue
    comp = Compositor(W, H, LayoutSpec(), background_color=BG)
    comp.set_background_image(image)
    out = comp.render(0)
    green = rgb_to_yuv("#00FF00")
    assert yuv_at(out, 0, 90) == green and yuv_at(out, W - 1, 90) == green
    comp.set_background_image(None)
    assert yuv_at(comp.render(0), 0, 90) == rgb_to_yuv(BG)


def test_stale_video_shows_background_images() -> None:
    users = ["1", "2", "3"]
    comp = Compositor(W, H, LayoutSpec(LayoutMode.ADAPTIVE), background_color=BG)
    own, default = (10, 200, 50), (220, 90, 90)
    comp.set_user_background("1", solid_frame(32, 32, own), RenderMode.FIT)
    comp.set_default_user_background(solid_frame(32, 32, default))
    for i, uid in enumerate(users):
        comp.push_video(uid, solid_frame(64, 36, user_color(i)), 0)
    # User 3 keeps sending; 1 and 2 stop after the first frame.
    t = 0
    while t <= STALE_VIDEO_US + 2 * FRAME_US:
        comp.push_video("3", solid_frame(64, 36, user_color(2)), t)
        out = comp.render(t)
        centres = {w.uid: yuv_at(out, *w.rect.center) for w in comp.windows}
        if t <= STALE_VIDEO_US:
            assert centres == {uid: user_color(i) for i, uid in enumerate(users)}
        else:
            assert centres == {"1": own, "2": default, "3": user_color(2)}
        t += FRAME_US
    # Fit mode for user 1's square image in a wide window: black borders beside it.
    w1 = next(w for w in comp.windows if w.uid == "1")
    assert yuv_at(out, w1.rect.x + 2, w1.rect.y + w1.rect.height // 2) == BLACK
    # Video again: back to the picture at once.
    comp.push_video("1", solid_frame(64, 36, user_color(0)), t)
    out = comp.render(t)
    w1 = next(w for w in comp.windows if w.uid == "1")
    assert yuv_at(out, *w1.rect.center) == user_color(0)


def test_user_without_video_or_image_shows_the_canvas() -> None:
    comp = Compositor(W, H, LayoutSpec(), background_color=BG)
    comp.join("1", 0)
    assert yuv_at(comp.render(STALE_VIDEO_US + 1), W // 2, H // 2) == rgb_to_yuv(BG)


def test_each_input_frame_is_scaled_once() -> None:
    comp = Compositor(W, H, LayoutSpec(LayoutMode.ADAPTIVE))
    comp.push_video("1", solid_frame(64, 36, user_color(0)), 0)
    comp.push_video("2", solid_frame(64, 36, user_color(1)), 0)
    for k in range(10):
        comp.render(k * FRAME_US)
    assert comp.scale_count == 2  # Ten output frames, two input frames.
    # Input at 60 fps, output at 15: frames superseded before their tick are never scaled.
    for k in range(40):
        comp.push_video("1", solid_frame(64, 36, user_color(0)), 10 * FRAME_US + k * 16_667)
    for k in range(10, 20):
        comp.render(k * FRAME_US)
    assert comp.scale_count == 2 + 10
    # A layout change rescales the frames on show, once each.
    comp.set_layout(LayoutSpec(LayoutMode.FLOATING))
    comp.render(20 * FRAME_US)
    comp.render(21 * FRAME_US)
    assert comp.scale_count == 2 + 10 + 2


def test_a_shared_background_image_is_scaled_once_per_window_size() -> None:
    """The default user background of four stale users, in windows of one size: one scaling
    for all of them and all frames (each window used to evict the one before's tile)."""
    comp = Compositor(W, H, LayoutSpec(LayoutMode.ADAPTIVE), background_color=BG)
    default = (220, 90, 90)
    comp.set_default_user_background(solid_frame(40, 30, default))
    for uid in "1234":
        comp.join(uid, 0)  # (audio only: no video, so stale from the start)
    before = comp.scale_count
    for k in range(30):
        out = comp.render(STALE_VIDEO_US + 1 + k * FRAME_US)
    sizes = {(w.rect.width, w.rect.height) for w in comp.windows}
    assert len(comp.windows) == 4 and len(sizes) == 1
    assert comp.scale_count - before == 1
    assert all(yuv_at(out, *w.rect.center) == default for w in comp.windows)


def test_join_and_leave_lay_out_again() -> None:
    comp = Compositor(W, H, LayoutSpec(LayoutMode.ADAPTIVE), background_color=BG)
    comp.push_video("a", solid_frame(64, 36, user_color(0)), 0)
    assert [w.rect for w in comp.windows] == [Rect(0, 0, W, H)]
    comp.push_video("b", solid_frame(64, 36, user_color(1)), 0)
    out = comp.render(0)
    assert [w.uid for w in comp.windows] == ["a", "b"]
    right = comp.windows[1].rect
    assert yuv_at(out, *right.center) == user_color(1)
    comp.leave("a")
    out = comp.render(FRAME_US)
    assert [(w.uid, w.rect) for w in comp.windows] == [("b", Rect(0, 0, W, H))]
    assert yuv_at(out, 10, 10) == user_color(1)


def test_join_order_is_the_rank_given_not_arrival() -> None:
    """A join applied late (it waited for its time on the output clock) keeps the place its
    caller gave it, ahead of a user whose first frame came in first: the first to join is big."""
    comp = Compositor(W, H, LayoutSpec(LayoutMode.FLOATING), background_color=BG)
    comp.push_video("green", solid_frame(64, 36, user_color(1)), 0)  # no rank: after those given
    comp.join("red", 2 * FRAME_US, order=0)
    comp.join("blue", 3 * FRAME_US, order=1)
    assert comp.users == ["red", "blue", "green"]
    assert comp.windows[0].uid == "red" and comp.windows[0].rect == Rect(0, 0, W, H)


def test_pending_frames_are_bounded() -> None:
    comp = Compositor(W, H, LayoutSpec())
    frame = solid_frame(16, 16, user_color(0))
    for k in range(MAX_PENDING_FRAMES + 10):
        comp.push_video("1", frame, 1_000_000 + k)
    comp.push_video("1", frame, 0)  # Back in time: dropped too.
    assert comp.dropped_frames("1") == 11


def test_colour_validation() -> None:
    with pytest.raises(ConfigError) as info:
        Compositor(W, H, LayoutSpec(), background_color="red")
    assert info.value.field == f"{TRANSCODING_FIELD}.backgroundColor"
    assert rgb_to_yuv("#000000") == BLACK and rgb_to_yuv("#FFFFFF") == (235, 128, 128)


def test_a_mix_keeps_join_order_when_a_later_users_frame_comes_first(tmp_path: Path) -> None:
    """In a MixSession, a join waits for its time on the output clock while a frame joins its
    user at once: the first to join must still be first (it fills a floating canvas)."""
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200)
    session = MixSession(config, tmp_path)
    try:
        session.join("red", 0)
        session.join("green", 0)
        session.push_video("green", solid_frame(64, 36, user_color(1)), 10)
        session.push_video("red", solid_frame(64, 36, user_color(0)), 20)
        assert session.compositor.users[:2] == ["red", "green"]
    finally:
        session.finish()


def test_a_mix_whose_last_frames_fail_is_still_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """finish() paints up to the last time seen; should that fail, what was recorded is still
    closed: the playlist ended and the MP4 built (it used to raise again, losing both)."""
    config = MixConfig(width=W, height=H, fps=15, bitrate_kbps=200, file_types=frozenset(FileType))
    session = MixSession(config, tmp_path, segment_target_s=1.0)
    session.join("red", 0)
    for k in range(45):  # 3 s
        session.push_video("red", solid_frame(64, 36, user_color(0)), k * FRAME_US)
        session.advance(k * FRAME_US)

    def fail(until_us: int) -> None:
        raise ValueError("a bad buffer")

    session._produce = fail  # type: ignore[method-assign]
    out = session.finish()
    assert out.playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
    assert len(out.mp4s) == 1 and out.mp4s[0][1].video_frames >= 15
    assert "closed without them" in caplog.text
