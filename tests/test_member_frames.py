"""A channel mix's decoders of WebSocket members: a member that leaves leaves nothing behind."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from av.audio.frame import AudioFrame
from media import encode_clip, encode_webm

from ingest.channels import MediaFrame
from ingest.member_frames import FrameDecoders, TrackClock
from mixer.errors import InvalidMedia
from mixer.mix import MixSession
from mixer.mix_config import MixConfig


def test_a_member_that_left_holds_no_decoder_and_no_thread() -> None:
    clip = encode_clip("h264", duration_s=0.5, audio_codec="opus")
    webm, _, _ = encode_webm(1.0)
    decoders = FrameDecoders()
    before = {t.ident for t in threading.enumerate()}
    for uid in ("a", "b"):
        for f in clip.frames[:4]:
            media = MediaFrame(uid, "0" if f.kind == "video" else "1", f.kind, f.data, f.pts_us)
            decoders.decode(media, f.codec)
        decoders.decode(MediaFrame(uid, "2", "video", webm[:20_000], 0), "webm")
    readers = [t for t in threading.enumerate() if t.ident not in before]
    assert len(readers) == 2  # a WebM demuxer reads on a thread of its own, per member
    decoders.forget("a")
    assert {key[0].split("/")[0] for key in decoders._contexts} == {"b"}
    assert sum(t.is_alive() for t in readers) == 1  # a's reader ended, b's still reads
    decoders.forget()
    assert not decoders._contexts and not any(t.is_alive() for t in readers)


def test_pictures_decoded_with_b_frames_keep_their_own_times() -> None:
    """With B-frames the decoder gives pictures in display order, one or two packets late:
    each keeps its own time (it took the time of the packet that released it: off by up to
    four frames, stepping back, so the compositor dropped some)."""
    width, fps = 320, 15
    clip = encode_clip("h264", width=width, fps=fps, duration_s=1.0, audio_codec=None, bframes=2)
    assert any(f.dts_us is not None and f.dts_us < f.pts_us for f in clip.frames)
    decoders = FrameDecoders()
    times = []
    for f in clip.frames:
        media = MediaFrame("a", "0", "video", f.data, f.pts_us, f.keyframe, "h264", f.dts_us)
        for _, picture, pts_us in decoders.decode(media, "h264"):
            index = round(pts_us * fps / 1_000_000)
            luma = picture.to_ndarray()[0]  # (its top row: the bar at 8 x index)
            assert int(np.argmax(luma > 200)) == (index * 8) % width, (index, pts_us)
            times.append(pts_us)
    assert times == sorted(times) and len(times) >= clip.video_frames - 2  # (delay at the end)


@pytest.mark.parametrize("ppm", [7500, -7500])
def test_a_member_whose_clock_drifts_does_not_mute_the_mix(tmp_path: Path, ppm: int) -> None:
    """Member B's sound card runs off the server's clock (7500 ppm for 40 s: 300 ms, what 100
    ppm makes in 50 minutes): its frames count samples as ever (pts) but arrive later and
    later (slow) or earlier (fast), with up to 80 ms of jitter. A fast B used to carry the
    mix's clock ahead, so A's audio came late and was dropped (more than half of it); a slow
    B dropped its own. Now at most a frame's worth is, where the track steps."""
    rng = random.Random(7)
    mix = MixSession(MixConfig(width=16, height=16, fps=5), tmp_path)
    clocks = {"A": TrackClock(follow_arrival=True), "B": TrackClock(follow_arrival=True)}
    wall0, last = 1_000_000_000_000, {"A": 0, "B": 0}
    arrivals = []
    for k in range(40 * 50):  # 20 ms frames, by each sender's own clock
        t = k * 20_000
        for uid, sent in (("A", t), ("B", int(t * (1 + ppm / 1e6)))):
            now = max(wall0 + sent + rng.randint(0, 80_000), last[uid])  # (in order, as TCP)
            last[uid] = now
            arrivals.append((now, uid, t))
    for now, uid, pts in sorted(arrivals):
        frame = AudioFrame.from_ndarray(np.full((1, 960), 0.1, np.float32), "fltp", "mono")
        frame.sample_rate = 48_000
        mix.push_audio(uid, frame, clocks[uid].place(pts, now), now)  # (as the channel mix)
    late = {uid: mix._mixer.late_samples(uid) for uid in clocks}
    mix.finish()
    assert late["A"] == 0 and late["B"] <= 960, late  # (of 1 920 000 samples)


@pytest.mark.parametrize("chunk_frames", [12, 50])
def test_a_slow_member_sending_chunks_is_followed(tmp_path: Path, chunk_frames: int) -> None:
    """B's audio comes in chunks (a MediaRecorder's 240 ms or 1 s WebM timeslices: every frame
    of a chunk arrives at once) from a clock 5000 ppm slow (200 ms in 40 s). The last frames of
    a chunk sit ahead of its arrival, which hid the drift: the clock did not move until the
    drift passed the chunk's length, and the start of each chunk came too late to be mixed
    (a fifth of B's audio at 240 ms chunks)."""
    mix = MixSession(MixConfig(width=16, height=16, fps=5), tmp_path)
    clocks = {"A": TrackClock(follow_arrival=True), "B": TrackClock(follow_arrival=True)}
    wall0, frame_us, frames = 1_000_000_000_000, 20_000, 40 * 50
    arrivals = [(wall0 + (k + 1) * frame_us, 0, "A", k * frame_us) for k in range(frames)]
    for start in range(0, frames, chunk_frames):  # B: a chunk once its last frame is in
        batch = range(start, min(frames, start + chunk_frames))
        arrival = wall0 + int((batch[-1] + 1) * frame_us * (1 + 5000 / 1e6))
        arrivals += [(arrival, 1, "B", k * frame_us) for k in batch]
    for now, _, uid, pts in sorted(arrivals):
        frame = AudioFrame.from_ndarray(np.full((1, 960), 0.1, np.float32), "fltp", "mono")
        frame.sample_rate = 48_000
        mix.push_audio(uid, frame, clocks[uid].place(pts, now), now)
    late = {uid: mix._mixer.late_samples(uid) for uid in clocks}
    mix.finish()
    assert late["A"] == 0 and late["B"] <= 960, late  # (of 1 920 000 samples)


def test_a_webm_frame_that_does_not_decode_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WebM chunk's frames are decoded one by one: a video frame that does not decode (a
    member's video taken up again between keyframes, after an update) loses only itself,
    not the chunk's audio (the whole chunk was refused)."""
    data, _, audio = encode_webm(1.0)
    decoders = FrameDecoders()
    decode = FrameDecoders._decode

    def vp8_fails(self: FrameDecoders, stream: str, codec: str, *args: Any) -> Any:
        if codec == "vp8":
            raise InvalidMedia("vp8 frame did not decode")
        return decode(self, stream, codec, *args)

    monkeypatch.setattr(FrameDecoders, "_decode", vp8_fails)
    frames = decoders.decode(MediaFrame("u", "0", "video", data, 0, True, "webm"), "webm")
    assert [kind for kind, _, _ in frames] == ["audio"] * audio
    with pytest.raises(InvalidMedia):  # (nothing at all decoded: refused, and counted)
        decoders.decode(MediaFrame("v", "0", "video", data, 0, True, "webm"), "webm", ["video"])
