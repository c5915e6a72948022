"""Media sources: the live test pattern and files, checked by decoding what they yield."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import av
import pytest

from mixer.sources import KEYFRAME_INTERVAL_S, EncodedFrame, FileSource, TestPattern

FPS = 15
SMALL = {"width": 160, "height": 120, "fps": FPS}


def _decode(codec: str, frames: list[EncodedFrame]) -> int:
    decoder = av.CodecContext.create(codec, "r")
    count = 0
    for f in frames:
        count += len(decoder.decode(av.Packet(f.data)))
    return count + len(decoder.decode(None))


def _nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i : i + 3] == b"\x00\x00\x01"]


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_pattern_keyframes_decodes_and_is_ordered(codec: str) -> None:
    frames = list(TestPattern(codec=codec, duration_s=4.2, **SMALL))
    video = [f for f in frames if f.kind == "video"]
    audio = [f for f in frames if f.kind == "audio"]
    assert len(video) == round(4.2 * FPS)
    assert len(audio) == 210  # 20 ms Opus frames
    keys = [i for i, f in enumerate(video) if f.keyframe]
    assert keys == [0, 30, 60][: len(keys)] and len(keys) == 3
    assert KEYFRAME_INTERVAL_S * FPS == 30
    pts = [f.pts_us for f in frames]
    assert pts == sorted(pts)
    assert all(b.pts_us - a.pts_us == 20_000 for a, b in itertools.pairwise(audio))
    assert _decode(codec, video) == len(video)
    assert _decode("opus", audio) == len(audio)
    if codec == "h264":
        assert video[0].data.startswith(b"\x00\x00\x00\x01")  # Annex B
        assert {7, 8, 5} <= set(_nal_types(video[0].data))  # SPS, PPS, IDR in band


def test_force_keyframe_makes_an_idr() -> None:
    pattern = TestPattern(codec="h264", duration_s=2, tone_hz=None, **SMALL)
    video = []
    for frame in pattern:
        video.append(frame)
        if len(video) == 7:
            pattern.force_keyframe()
    assert [i for i, f in enumerate(video) if f.keyframe] == [0, 7]
    assert 5 in _nal_types(video[7].data)
    assert _decode("h264", video) == len(video)


def _clip(path: Path, *codec_args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=15",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         *codec_args, "-t", "2", str(path)],
        check=True,
    )  # fmt: skip
    return path


def test_file_source_mp4_gives_annexb_h264_and_raw_aac(tmp_path: Path) -> None:
    path = _clip(tmp_path / "a.mp4", "-c:v", "libx264", "-bf", "0", "-g", "15", "-c:a", "aac")
    source = FileSource(path)
    video_track, audio_track = source.info.track("video"), source.info.track("audio")
    assert video_track is not None and video_track.codec == "h264" and video_track.width == 160
    assert audio_track is not None and audio_track.codec == "aac" and audio_track.extradata
    frames = list(source)
    video = [f for f in frames if f.kind == "video"]
    assert len(video) == 30
    assert all(f.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")) for f in video)
    assert [i for i, f in enumerate(video) if f.keyframe] == [0, 15]
    assert _decode("h264", video) == 30
    audio = [f for f in frames if f.kind == "audio"]
    assert audio and not any(f.data[:2] == b"\xff\xf1" for f in audio)  # raw, not ADTS


def test_file_source_loops_with_growing_timestamps(tmp_path: Path) -> None:
    path = _clip(tmp_path / "b.webm", "-c:v", "libvpx", "-c:a", "libopus")
    source = FileSource(path, loop=True)
    assert [t.codec for t in source.info.tracks] == ["vp8", "opus"]
    video = []
    for frame in source:
        if frame.kind == "video":
            video.append(frame)
            if len(video) == 75:
                break
    dts = [f.dts_us for f in video]
    assert all(a < b for a, b in itertools.pairwise(dts))
    assert dts[-1] > 4_000_000


def test_file_source_reencodes_other_codecs(tmp_path: Path) -> None:
    path = _clip(tmp_path / "c.avi", "-c:v", "mpeg4", "-c:a", "mp3")
    source = FileSource(path)
    assert [t.codec for t in source.info.tracks] == ["h264", "opus"]
    frames = list(source)
    video = [f for f in frames if f.kind == "video"]
    audio = [f for f in frames if f.kind == "audio"]
    assert video[0].keyframe and _decode("h264", video) == len(video) >= 28
    assert _decode("opus", audio) == len(audio) >= 90
