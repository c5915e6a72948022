"""The mix recorder end to end: users publish colours and tones, the HLS output is decoded.

Every user sends a solid, distinct colour and a distinct tone. The recording is decoded with
PyAV, and at several instants the colour at the centre of every window that the layout
predicts is checked, as are the tones (FFT), A/V sync and background images. Time is driven
by the timestamps pushed, never by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from mixer import mp4
from mixer.audiomix import AudioProfile
from mixer.compositor import frame_planes, rgb_to_yuv, solid_frame
from mixer.errors import ConfigError
from mixer.layout import LayoutMode, LayoutSpec, Region, RenderMode, compute_layout
from mixer.mix import MixOutput, MixRecorder, MixSession
from mixer.mix_config import FileType, MixConfig

W, H, FPS = 320, 180, 15
T0_US = 1_700_000_000_000_000  # Publishers' clocks are wall clocks.
US = 1_000_000
AUDIO_FRAME_US = 20_000
SEGMENT_S = 1.0
HLS_AND_MP4 = frozenset({FileType.HLS, FileType.MP4})
# x264 at these rates keeps a flat colour within a few steps; window edges ring more, so
# colours are read at a window's centre only.
COLOR_TOLERANCE = 12
# Video frames come every 1/fps, AAC in 1024-sample frames: 80 ms is the API's bar.
AV_SYNC_TOLERANCE_MS = 40
TONE_AMPLITUDE = 0.2
# Share of the strongest tone's peak that every other tone's peak must reach.
MIN_TONE_SHARE = 0.3


@dataclass
class Publisher:
    """One user: a colour and a tone, sent from `start_s` until `stop_s` (video to `video_s`)."""

    uid: str
    rgb: str
    tone_hz: float
    fps: int = 15
    audio_rate: int = 48_000
    start_s: float = 0.0
    stop_s: float = 3.0
    video_s: float | None = None
    leaves: bool = False
    flashes_s: tuple[float, ...] = ()  # Instead of a tone and a colour: flashes and beeps.

    @property
    def yuv(self) -> tuple[int, int, int]:
        """The colour as the compositor paints it."""
        return rgb_to_yuv(self.rgb)


@dataclass
class Scenario:
    """Publishers plus timed layout changes, played into a MixRecorder."""

    publishers: list[Publisher]
    layout_changes: list[tuple[float, LayoutSpec]] = field(default_factory=list)


Action = tuple[int, int, Callable[[MixRecorder], Awaitable[object]]]


def _video_frame(p: Publisher, t_s: float) -> VideoFrame:
    if not p.flashes_s:
        return solid_frame(160, 90, p.yuv)
    lit = any(f <= t_s < f + 1 / p.fps for f in p.flashes_s)
    return solid_frame(160, 90, (235, 128, 128) if lit else (16, 128, 128))


def _audio_frame(p: Publisher, k: int) -> AudioFrame:
    n = p.audio_rate * AUDIO_FRAME_US // US
    t = np.arange(k * n, (k + 1) * n) / p.audio_rate
    x = TONE_AMPLITUDE * np.sin(2 * np.pi * p.tone_hz * t)
    if p.flashes_s:
        start_s = k * AUDIO_FRAME_US / US
        on = np.zeros(n)
        for f in p.flashes_s:
            on[(start_s + t - t[0] >= f) & (start_s + t - t[0] < f + 0.04)] = 1.0
        x = x * on
    frame = AudioFrame.from_ndarray(x.astype(np.float32)[None], format="fltp", layout="mono")
    frame.sample_rate = p.audio_rate
    return frame


def _actions(scenario: Scenario) -> list[Action]:
    actions: list[Action] = []
    seq = iter(range(1_000_000))

    def add(t_s: float, call: Callable[[MixRecorder], Awaitable[object]]) -> None:
        actions.append((T0_US + round(t_s * US), next(seq), call))

    for p in scenario.publishers:
        add(p.start_s, lambda r, p=p: r.join(p.uid, T0_US + round(p.start_s * US)))
        video_end = p.stop_s if p.video_s is None else p.video_s
        k = 0
        while (t := p.start_s + k / p.fps) < video_end:
            t_us = T0_US + round(t * US)
            add(t, lambda r, p=p, t=t, t_us=t_us: r.push_video(p.uid, _video_frame(p, t), t_us))
            k += 1
        k = 0
        while (t := p.start_s + k * AUDIO_FRAME_US / US) < p.stop_s:
            t_us = T0_US + round(t * US)
            add(t, lambda r, p=p, k=k, t_us=t_us: r.push_audio(p.uid, _audio_frame(p, k), t_us))
            k += 1
        if p.leaves:
            add(p.stop_s, lambda r, p=p: r.leave(p.uid, T0_US + round(p.stop_s * US)))
    for t_s, spec in scenario.layout_changes:
        add(t_s, lambda r, t_s=t_s, spec=spec: r.update_layout(spec, T0_US + round(t_s * US)))
    return sorted(actions, key=lambda a: (a[0], a[1]))


async def record(
    tmp_path: Path,
    config: MixConfig,
    scenario: Scenario,
    http: aiohttp.ClientSession | None = None,
    **options: object,
) -> MixOutput:
    """Play the scenario into a recorder and return what it wrote."""
    recorder = MixRecorder(config, tmp_path / "out", segment_target_s=SEGMENT_S, **options)
    await recorder.start(http)
    for _, _, call in _actions(scenario):
        await call(recorder)
    output = await recorder.aclose()
    assert output is not None
    return output


@dataclass
class Decoded:
    """The recording decoded: video frames by time, and mono audio from time `audio_start_s`."""

    frames: list[tuple[float, VideoFrame]]
    audio: np.ndarray
    audio_start_s: float

    def at(self, t_s: float) -> VideoFrame:
        """The frame on screen at `t_s`."""
        shown = [f for t, f in self.frames if t <= t_s + 1e-6]
        return shown[-1]


def decode(path: Path) -> Decoded:
    """Decode video and audio of a playlist (or MP4); times are from the first video frame."""
    frames: list[tuple[float, VideoFrame]] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append((float(frame.time or 0.0), frame.reformat(format="yuv420p")))
    t0 = frames[0][0]
    chunks, audio_start = [], None
    with av.open(str(path)) as container:
        if container.streams.audio:
            for af in container.decode(audio=0):
                if audio_start is None:
                    audio_start = float(af.time or 0.0) - t0
                chunks.append(af.to_ndarray().reshape(af.layout.nb_channels, -1)[0])
    audio = np.concatenate(chunks) if chunks else np.zeros(0)
    return Decoded([(t - t0, f) for t, f in frames], audio, audio_start or 0.0)


def color_at(frame: VideoFrame, x: int, y: int) -> tuple[int, int, int]:
    """Mean Y, U, V over a 4x4 patch at (x, y)."""
    py, pu, pv = frame_planes(frame)
    x0, y0 = max(0, x - 2) // 2 * 2, max(0, y - 2) // 2 * 2
    return (
        round(float(py[y0 : y0 + 4, x0 : x0 + 4].mean())),
        round(float(pu[y0 // 2 : y0 // 2 + 2, x0 // 2 : x0 // 2 + 2].mean())),
        round(float(pv[y0 // 2 : y0 // 2 + 2, x0 // 2 : x0 // 2 + 2].mean())),
    )


def assert_color(actual: tuple[int, int, int], expected: tuple[int, int, int], what: str) -> None:
    assert all(abs(a - e) <= COLOR_TOLERANCE for a, e in zip(actual, expected, strict=True)), (
        f"{what}: {actual} != {expected}"
    )


def check_windows(
    decoded: Decoded, t_s: float, users: list[Publisher], spec: LayoutSpec, bg: str = "#000000"
) -> None:
    """At `t_s` every window the layout predicts shows its user's colour at its centre."""
    frame = decoded.at(t_s)
    uids = [p.uid for p in users]
    windows = compute_layout(W, H, uids, spec, dict.fromkeys(uids, 16 / 9))
    assert windows
    for w in windows:
        cx, cy = w.rect.center
        hidden = any(o.z > w.z and o.rect.overlaps(w.rect) and o.rect.x <= cx < o.rect.right
                     and o.rect.y <= cy < o.rect.bottom for o in windows)  # fmt: skip
        assert not hidden, "pick scenarios whose window centres are visible"
        expected = next(p for p in users if p.uid == w.uid).yuv
        assert_color(color_at(frame, cx, cy), expected, f"user {w.uid} at {t_s}s")


COLORS = ["#E02020", "#20C040", "#2040E0", "#E0E020", "#C020C0"]
TONES = [330.0, 550.0, 870.0, 1230.0, 1910.0]


def publishers(n: int, **kwargs: object) -> list[Publisher]:
    """`n` users with distinct colours, tones and video rates."""
    rates = [15, 10, 30, 15, 12]
    return [
        Publisher(str(101 + i), COLORS[i], TONES[i], fps=rates[i], **kwargs)  # type: ignore[arg-type]
        for i in range(n)
    ]


def tone_peaks(audio: np.ndarray, tones: list[float]) -> list[float]:
    """Spectrum magnitude at each tone (max within 10 Hz)."""
    x = audio[len(audio) // 4 : len(audio) * 3 // 4]
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / 48_000)
    return [float(mag[np.abs(f - hz) < 10].max()) for hz in tones]


SPECS = {
    LayoutMode.FLOATING: LayoutSpec(LayoutMode.FLOATING),
    LayoutMode.ADAPTIVE: LayoutSpec(LayoutMode.ADAPTIVE),
    LayoutMode.VERTICAL: LayoutSpec(LayoutMode.VERTICAL, max_resolution_uid="102"),
    LayoutMode.CUSTOM: LayoutSpec(
        LayoutMode.CUSTOM,
        regions=(
            Region(0.0, 0.0, 0.5, 0.5),
            Region(0.5, 0.0, 0.5, 0.5, uid="101"),
            Region(0.25, 0.5, 0.5, 0.5, render_mode=RenderMode.FIT),
        ),
    ),
}


@pytest.mark.parametrize("mode", list(LayoutMode))
async def test_each_layout_shows_every_user(tmp_path: Path, mode: LayoutMode) -> None:
    users = publishers(3)
    config = MixConfig(width=W, height=H, fps=FPS, layout=SPECS[mode])
    output = await record(tmp_path, config, Scenario(users))
    decoded = decode(output.playlist)
    for t in (0.5, 1.5, 2.5):
        check_windows(decoded, t, users, SPECS[mode])
    # Output at the configured rate whatever the inputs' (10, 15 and 30 fps here).
    times = [t for t, _ in decoded.frames]
    assert len(times) == output.video_frames == 3 * FPS
    assert np.allclose(np.diff(times), 1 / FPS, atol=1e-3)
    assert [s.duration_s for s in output.segments] == [SEGMENT_S] * 3


async def test_join_leave_and_layout_change(tmp_path: Path) -> None:
    a, b, c = publishers(3, stop_s=4.0)
    c.start_s = 1.0
    a.stop_s, a.leaves = 2.0, True
    vertical = LayoutSpec(LayoutMode.VERTICAL, max_resolution_uid=c.uid)
    scenario = Scenario([a, b, c], layout_changes=[(3.0, vertical)])
    adaptive = LayoutSpec(LayoutMode.ADAPTIVE)
    output = await record(
        tmp_path, MixConfig(width=W, height=H, fps=FPS, layout=adaptive), scenario
    )
    decoded = decode(output.playlist)
    check_windows(decoded, 0.5, [a, b], adaptive)
    check_windows(decoded, 1.5, [a, b, c], adaptive)  # c joined.
    check_windows(decoded, 2.5, [b, c], adaptive)  # a left.
    check_windows(decoded, 3.5, [b, c], vertical)  # updateLayout.
    # Before the join, c's future window spot shows a; after the change, c is large on the left.
    assert_color(color_at(decoded.at(3.5), 40, 90), c.yuv, "vertical big window")


async def test_every_tone_is_in_the_mix(tmp_path: Path) -> None:
    users = publishers(4)
    users[1].audio_rate, users[3].audio_rate = 16_000, 44_100
    config = MixConfig(width=W, height=H, fps=FPS, layout=SPECS[LayoutMode.ADAPTIVE])
    output = await record(tmp_path, config, Scenario(users))
    decoded = decode(output.playlist)
    assert len(decoded.audio) >= 2.5 * 48_000
    peaks = tone_peaks(decoded.audio, [p.tone_hz for p in users])
    assert min(peaks) > MIN_TONE_SHARE * max(peaks), peaks
    # Off the tones there is far less: a frequency between them is quiet.
    assert tone_peaks(decoded.audio, [700.0])[0] < 0.05 * max(peaks)


async def test_av_sync_flash_and_beep(tmp_path: Path) -> None:
    fps = 30
    flashes = (1.0, 2.0, 2.5)
    user = Publisher("7", "#000000", 1000.0, fps=fps, stop_s=3.0, flashes_s=flashes)
    config = MixConfig(width=W, height=H, fps=fps, layout=LayoutSpec())
    output = await record(tmp_path, config, Scenario([user]))
    decoded = decode(output.playlist)
    lit = [t for t, f in decoded.frames if color_at(f, W // 2, H // 2)[0] > 128]
    seen_flashes = [t for i, t in enumerate(lit) if i == 0 or t - lit[i - 1] > 0.2]
    loud = np.abs(decoded.audio) > TONE_AMPLITUDE / 4
    onsets = np.nonzero(loud & ~np.concatenate([[False], loud[:-1]]))[0]
    seen_beeps = [decoded.audio_start_s + i / 48_000 for i in onsets]
    seen_beeps = [t for i, t in enumerate(seen_beeps) if i == 0 or t - seen_beeps[i - 1] > 0.2]
    assert len(seen_flashes) == len(seen_beeps) == len(flashes), (seen_flashes, seen_beeps)
    for flash, beep, sent in zip(seen_flashes, seen_beeps, flashes, strict=True):
        assert abs(flash - beep) * 1000 <= AV_SYNC_TOLERANCE_MS, (flash, beep)
        assert abs(flash - sent) * 1000 <= AV_SYNC_TOLERANCE_MS


def _png(rgb: str) -> bytes:
    frame = solid_frame(64, 64, rgb_to_yuv(rgb)).reformat(format="rgb24")
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 64, 64, "rgb24"  # type: ignore[attr-defined]
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))  # type: ignore[attr-defined]


async def test_stale_video_shows_background_images(tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    own, default = "#FF8000", "#00C0C0"
    images = {"/own.png": _png(own), "/default.png": _png(default)}

    async def serve(request: web.Request) -> web.Response:
        if request.path not in images:
            raise web.HTTPNotFound()
        return web.Response(body=images[request.path], content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    a, b, c = publishers(3, stop_s=6.0, video_s=1.0)
    c.video_s = None  # c keeps sending: its window keeps its colour.
    config = MixConfig.from_json(
        {
            "width": W, "height": H, "fps": FPS, "mixedVideoLayout": 1,
            "backgroundColor": "#102030",
            "backgroundImage": f"{base}/missing.png",  # 404: the colour stays.
            "defaultUserBackgroundImage": f"{base}/default.png",
            "backgroundConfig": [{"uid": a.uid, "image_url": f"{base}/own.png"}],
        }
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        output = await record(tmp_path, config, Scenario([a, b, c]), http)
    decoded = decode(output.playlist)
    spec = config.layout
    check_windows(decoded, 0.5, [a, b, c], spec)
    check_windows(decoded, 4.0, [a, b, c], spec)  # 3 s without video: still the last frame.
    stale_a = Publisher(a.uid, own, 0)
    stale_b = Publisher(b.uid, default, 0)
    check_windows(decoded, 4.7, [stale_a, stale_b, c], spec)  # 3.7 s: the images.
    check_windows(decoded, 5.5, [stale_a, stale_b, c], spec)
    # Beside the short, centred last row of the 2x2 grid, the canvas colour shows.
    assert_color(color_at(decoded.at(5.5), 20, H - 20), rgb_to_yuv("#102030"), "canvas")


async def test_hls_and_mp4_with_rollover(tmp_path: Path) -> None:
    users = publishers(2, stop_s=5.0)
    config = MixConfig(width=W, height=H, fps=FPS, file_types=HLS_AND_MP4)
    output = await record(tmp_path, config, Scenario(users), mp4_max_duration_s=2.0)
    assert [p.name for p, _ in output.mp4s] == ["mix_000.mp4", "mix_001.mp4", "mix_002.mp4"]
    assert sum(info.video_frames for _, info in output.mp4s) == output.video_frames == 5 * FPS
    first = decode(output.mp4s[0][0])
    assert len(first.frames) == 2 * FPS
    check_windows(first, 1.0, users, config.layout)
    with av.open(str(output.mp4s[0][0])) as mp4:
        assert mp4.streams.audio[0].codec_context.name == "aac"
        assert mp4.streams.video[0].codec_context.width == W


async def three_mp4_parts(tmp_path: Path) -> MixOutput:
    """One publisher for 3 s, recorded as HLS and MP4 parts of 1 s: three parts."""
    config = MixConfig(width=W, height=H, fps=FPS, file_types=HLS_AND_MP4)
    users = publishers(1, stop_s=3.0)
    return await record(tmp_path, config, Scenario(users), mp4_max_duration_s=1.0)


async def test_mp4_parts_are_built_off_the_mix_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part is handed to the MP4 thread: built on the mix's own, a 2-hour part held the mix
    for seconds while every member's media backed up and was dropped."""
    threads: list[str] = []
    build = mp4.build_mp4

    def watched(segments: Any, out: Path, kinds: int = 2) -> Any:
        threads.append(threading.current_thread().name)
        return build(segments, out, kinds)

    monkeypatch.setattr(mp4, "build_mp4", watched)
    output = await three_mp4_parts(tmp_path)
    assert len(output.mp4s) == 3 and len(threads) == 3
    assert all(name.startswith("mp4-build") for name in threads), threads
    assert sum(info.video_frames for _, info in output.mp4s) == output.video_frames


def test_config_defaults() -> None:
    config = MixConfig.from_json(None)
    assert (config.width, config.height, config.fps, config.bitrate_kbps) == (360, 640, 15, 500)
    assert config.layout == LayoutSpec(LayoutMode.FLOATING)
    assert config.background_color == "#000000"
    assert config.file_types == {FileType.HLS}
    both = MixConfig.from_json({}, 2, {"avFileType": ["hls", "mp4"]})
    assert both.file_types == {FileType.HLS, FileType.MP4} and both.audio_profile == 2


TC = "clientRequest.recordingConfig.transcodingConfig"


@pytest.mark.parametrize(
    ("transcoding", "file_config", "field"),
    [
        ({}, {"avFileType": ["mp4"]}, "clientRequest.recordingFileConfig.avFileType"),
        ({}, {"avFileType": ["hls", "flv"]}, "clientRequest.recordingFileConfig.avFileType"),
        ({}, {"avFileType": []}, "clientRequest.recordingFileConfig.avFileType"),
        ({"width": 1920, "height": 1088}, None, f"{TC}.width"),
        ({"width": 361}, None, f"{TC}.width"),
        ({"height": 0}, None, f"{TC}.height"),
        ({"fps": 0}, None, f"{TC}.fps"),
        ({"fps": 61}, None, f"{TC}.fps"),
        ({"bitrate": "500"}, None, f"{TC}.bitrate"),
        ({"backgroundColor": "#12345"}, None, f"{TC}.backgroundColor"),
        ({"backgroundImage": "ftp://x/y.png"}, None, f"{TC}.backgroundImage"),
        ({"mixedVideoLayout": 2}, None, f"{TC}.maxResolutionUid"),
        ({"backgroundConfig": [{"uid": "1"}]},
         None, f"{TC}.backgroundConfig[0].image_url"),
        ({"backgroundConfig": [{"uid": "1", "image_url": "https://x/a.png", "render_mode": 3}]},
         None, f"{TC}.backgroundConfig[0].render_mode"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(
    transcoding: dict[str, object], file_config: dict[str, object] | None, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        MixConfig.from_json(transcoding, None, file_config)
    assert info.value.field == field


def _noisy_mix(tmp_path: Path, bitrate_kbps: int, profile: AudioProfile) -> dict[str, Any]:
    """3 s of one user's noise (video and audio) mixed at ``bitrate_kbps`` and ``profile``:
    the MP4's kbit/s per stream and its audio's channels."""
    rng = np.random.default_rng(5)
    config = MixConfig(
        width=320, height=180, fps=15, bitrate_kbps=bitrate_kbps, audio_profile=profile,
        file_types=HLS_AND_MP4,
    )  # fmt: skip
    session = MixSession(config, tmp_path / f"{bitrate_kbps}-{profile}", segment_target_s=1.0)
    for k in range(150):  # 20 ms steps
        t = k * 20_000
        if k % 5 == 0 or k % 5 == 3:  # (15 fps, near enough)
            pixels = rng.integers(16, 235, (180, 320, 3), dtype=np.uint8)
            session.push_video("n", VideoFrame.from_ndarray(pixels, format="rgb24"), t)
        noise = (rng.random((1, 960), dtype=np.float32) - 0.5) * 0.5
        audio = AudioFrame.from_ndarray(noise, format="fltp", layout="mono")
        audio.sample_rate = 48_000
        session.push_audio("n", audio, t)
    output = session.finish()
    sizes = {"video": 0, "audio": 0}
    with av.open(str(output.mp4s[0][0])) as container:
        channels = container.streams.audio[0].codec_context.channels
        for packet in container.demux():
            if packet.size:
                sizes[packet.stream.type] += packet.size
    kbps = {kind: size * 8 / 3.0 / 1000 for kind, size in sizes.items()}
    return {"kbps": kbps, "channels": channels}


def test_bitrate_and_audio_profile_reach_the_output(tmp_path: Path) -> None:
    """transcodingConfig.bitrate sets the video's rate, audioProfile the audio's channels and
    rate (nothing in the output showed either: both could be ignored unnoticed)."""
    low = _noisy_mix(tmp_path, 200, AudioProfile.MONO_48K)
    high = _noisy_mix(tmp_path, 1200, AudioProfile.STEREO_192K)
    assert low["kbps"]["video"] == pytest.approx(200, rel=0.4), low
    assert high["kbps"]["video"] == pytest.approx(1200, rel=0.4), high
    assert (low["channels"], high["channels"]) == (1, 2)
    assert low["kbps"]["audio"] == pytest.approx(48, rel=0.4), low
    assert high["kbps"]["audio"] == pytest.approx(192, rel=0.4), high


async def test_a_part_whose_build_fails_loses_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One MP4 part failing to build: the others are listed and the playlist ended (the
    failure used to raise from finish, losing every part and the last segments)."""
    build, calls = mp4.build_mp4, [0]

    def second_fails(segments: Any, out: Path, kinds: int = 2) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise mp4.InvalidMedia("a damaged segment")
        return build(segments, out, kinds)

    monkeypatch.setattr(mp4, "build_mp4", second_fails)
    output = await three_mp4_parts(tmp_path)
    assert [p.name for p, _ in output.mp4s] == ["mix_000.mp4", "mix_002.mp4"]
    ((failed, part, reason),) = output.failed_mp4s  # told, with its segments
    assert failed.name == "mix_001.mp4" and part and reason == "a damaged segment"
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert output.playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")


async def test_a_segment_cut_under_a_cancelled_call_is_still_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel's ticker is cancelled at stop while its ``advance`` runs on the mix thread:
    the segment that call cut is in the output, and was never handed to ``on_segment`` (the
    cloud recording then never uploaded it nor listed it)."""
    loop = asyncio.get_running_loop()
    inside, gate = asyncio.Event(), threading.Event()
    advance = MixSession.advance

    def held(self: MixSession, t_us: int) -> Any:
        finished = advance(self, t_us)
        if finished and not gate.is_set():
            loop.call_soon_threadsafe(inside.set)
            gate.wait(30)
        return finished

    monkeypatch.setattr(MixSession, "advance", held)
    told: list[Any] = []
    config = MixConfig(width=W, height=H, fps=FPS)
    recorder = MixRecorder(
        config, tmp_path / "out", segment_target_s=SEGMENT_S, on_segment=told.append
    )
    await recorder.start()
    waiting = asyncio.ensure_future(inside.wait())
    for step in range(1, 10 * FPS):
        ticker = asyncio.ensure_future(recorder.advance(step * 1_000_000 // FPS))
        await asyncio.wait({ticker, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            break
    assert waiting.done(), "no segment was cut"
    ticker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ticker
    gate.set()
    output = await recorder.aclose()
    assert output is not None and len(output.segments) >= 2
    assert [s.path.name for s in told] == [s.path.name for s in output.segments]


def test_a_member_back_before_its_leave_is_applied_keeps_sound_and_place(tmp_path: Path) -> None:
    """A reconnect: a leave and a join at once (the channel says both). The mix applies the
    leave 100 ms later, on its timeline; it used to drop the audio the new connection had
    sent meanwhile (~130 ms of silence in the decoded MP4) and keep the member's old rank in
    a layout that then said it had none."""
    config = MixConfig(width=W, height=H, fps=FPS, file_types=HLS_AND_MP4)
    session = MixSession(config, tmp_path / "out", segment_target_s=SEGMENT_S)
    rate, t0 = 48_000, 10_000_000
    wave = 0.3 * np.sin(np.arange(960) * 2 * np.pi * 480 / rate).astype(np.float32)

    def push(k: int) -> None:
        frame = AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        t = t0 + k * 20_000
        session.push_audio("a", frame, t, t, track="1")

    session.join("a", t0)
    session.join("b", t0)
    for k in range(100):
        push(k)
    back = t0 + 100 * 20_000
    session.leave("a", back)
    session.join("a", back + 1)
    for k in range(100, 200):
        push(k)
    assert list(session.compositor.users) == ["a", "b"]  # (its place kept)
    output = session.finish()
    audio = decode(output.mp4s[0][0]).audio
    level = np.sqrt(np.convolve(audio**2, np.ones(480) / 480, mode="valid"))  # 10 ms windows
    heard = level[int(0.5 * rate) : int(3.5 * rate)]
    assert heard.min() > 0.1, f"{(heard < 0.1).sum() / rate * 1000:.0f} ms of silence"


def test_a_member_only_heard_back_before_its_leave_is_applied_keeps_its_sound(
    tmp_path: Path,
) -> None:
    """As above, for a member heard without a window (``hear`` instead of ``join``)."""
    session = MixSession(MixConfig(width=W, height=H, fps=FPS), tmp_path / "out")
    rate, t0 = 48_000, 10_000_000
    wave = 0.3 * np.sin(np.arange(960) * 2 * np.pi * 480 / rate).astype(np.float32)
    session.hear("a")
    for k in range(200):
        if k == 100:
            session.leave("a", t0 + k * 20_000)
            session.hear("a")
        frame = AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        t = t0 + k * 20_000
        session.push_audio("a", frame, t, t, track="1", window=False)
    audio = decode(session.finish().playlist).audio
    level = np.sqrt(np.convolve(audio**2, np.ones(480) / 480, mode="valid"))
    assert level[int(0.5 * rate) : int(3.5 * rate)].min() > 0.1


@pytest.mark.parametrize(("video", "audio"), [(False, True), (True, False)])
def test_a_mix_of_one_kind_writes_that_kind_only(tmp_path: Path, video: bool, audio: bool) -> None:
    """``streamTypes`` 0 or 1: the mix has one track, of that kind; an audio-only mix paints
    nothing and its audio cuts the segments at the target, as video's keyframes would."""
    config = MixConfig(
        width=W, height=H, fps=FPS, file_types=HLS_AND_MP4, video=video, audio=audio
    )  # fmt: skip
    session = MixSession(config, tmp_path, segment_target_s=SEGMENT_S)
    tone = np.sin(2 * np.pi * 440 * np.arange(960) / 48_000).astype(np.float32)[None, :] * 0.2
    for k in range(150):  # 3 s in 20 ms steps: a red frame every 4th, a tone in each
        t = T0_US + k * AUDIO_FRAME_US
        if k % 4 == 0:
            session.push_video("u", solid_frame(W, H, rgb_to_yuv("#FF0000")), t)
        frame = AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 48_000
        session.push_audio("u", frame, t)
    output = session.finish()
    assert (output.video_frames > 0) == video
    kinds = {"video"} if video else {"audio"}
    for path in (output.playlist, output.mp4s[0][0]):
        with av.open(str(path)) as container:
            assert {s.type for s in container.streams} == kinds
    assert len(output.segments) >= 3  # (1 s segments, cut by the audio when it is alone)
    assert sum(s.duration_s for s in output.segments) == pytest.approx(3.0, abs=0.15)


@pytest.mark.parametrize("video", [False, True])
async def test_an_audio_only_mix_fetches_no_image(
    tmp_path: Path, aiohttp_server: Any, video: bool
) -> None:
    """Nothing of an audio-only mix is painted: its background images are not fetched (each
    could hold its start up to the fetch timeout); a mix with video fetches them."""
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=_png("#FF8000"), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    config = MixConfig.from_json(
        {"width": W, "height": H, "fps": FPS, "backgroundImage": f"{base}/canvas.png",
         "defaultUserBackgroundImage": f"{base}/user.png"}
    )  # fmt: skip
    config = dataclasses.replace(config, video=video)
    async with aiohttp.ClientSession() as http:
        output = await record(tmp_path, config, Scenario(publishers(1, stop_s=1.0)), http)
    assert sorted(asked) == (["/canvas.png", "/user.png"] if video else [])
    assert (output.video_frames > 0) == video
