"""MP4 rebuilt from TS segments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import av
import pytest
from media import decode_counts, encode_clip, ffprobe

from mixer import mp4
from mixer.errors import InvalidMedia
from mixer.hls import HlsWriter
from mixer.mp4 import BUILD_NICE, QUICK_PROBE, build_mp4, build_mp4_queued
from mixer.tracks import Codec, Kind, TrackSpec

BASE_US = 1_000_000
# Remuxing keeps every packet; the MP4's reported length may differ by an audio frame or two.
DURATION_TOLERANCE_S = 0.1


def _record(directory: Path, *, pause: bool) -> list[Path]:
    clip = encode_clip("h264", duration_s=2.0, audio_codec="opus")
    writer = HlsWriter(directory, target_segment_s=1.0)
    writer.add_track(TrackSpec(1, Kind.VIDEO, Codec.H264, 320, 240))
    writer.add_track(TrackSpec(2, Kind.AUDIO, Codec.OPUS))
    segments = []
    for round_ in range(2 if pause else 1):
        for f in clip.frames:
            pts = f.pts_us + BASE_US + round_ * 30_000_000
            segments += writer.write(1 if f.kind == "video" else 2, f.data, pts,
                                     keyframe=f.keyframe)  # fmt: skip
        if pause and round_ == 0:
            segments += writer.discontinuity()
    segments += writer.finish()
    return [s.path for s in segments]


@pytest.mark.parametrize("pause", [False, True])
def test_mp4_from_segments(tmp_path: Path, pause: bool) -> None:
    paths = _record(tmp_path, pause=pause)
    out = tmp_path / "session.mp4"
    info = build_mp4(paths, out)
    assert out.stat().st_size == info.size
    expected_s = 4.0 if pause else 2.0
    assert info.duration_s == pytest.approx(expected_s, abs=DURATION_TOLERANCE_S)
    counts = decode_counts(out)
    assert counts["video"] == info.video_frames == (60 if pause else 30)
    assert counts["audio"] >= info.audio_frames - 1
    probe = ffprobe(out, "-show_entries", "format=duration:stream=codec_name")
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    assert float(probe["format"]["duration"]) == pytest.approx(expected_s, abs=DURATION_TOLERANCE_S)
    # the length it reports is the one players read (not counting the AAC priming frame;
    # FFmpeg versions round the edit list apart by a millisecond)
    assert info.duration_s == pytest.approx(float(probe["format"]["duration"]), abs=0.005)
    assert not list(tmp_path.glob(".*.tmp"))


def _nice(native_id: int) -> int:
    """A thread's nice value, as the kernel schedules it (``/proc``, field 19)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
async def test_mp4_builds_run_below_the_event_loop_priority(tmp_path: Path) -> None:
    # sessions ending together build their MP4s while others still record: the builds take
    # what CPU is left over, the event loop (acks) keeps its priority
    paths = await asyncio.to_thread(_record, tmp_path, pause=False)
    info = await build_mp4_queued(paths, tmp_path / "session.mp4")
    assert info.video_frames == 30
    builders = [t for t in threading.enumerate() if t.name.startswith("mp4-build")]
    assert len(builders) == 1 and builders[0].native_id is not None
    loop_nice = await asyncio.to_thread(_nice, threading.get_native_id())
    assert loop_nice == os.getpriority(os.PRIO_PROCESS, 0)
    builder_nice = await asyncio.to_thread(_nice, builders[0].native_id)
    assert builder_nice == min(19, loop_nice + BUILD_NICE) and builder_nice > loop_nice


def test_mp4_rejects_no_segments_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidMedia):
        build_mp4([], tmp_path / "x.mp4")
    bad = tmp_path / "bad.ts"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InvalidMedia):
        build_mp4([bad], tmp_path / "x.mp4")


def test_mp4_with_a_track_that_joined_later(tmp_path: Path) -> None:
    """Audio announced after the first segment: every segment is read on its own (the chained
    read needs every stream in the first), and both tracks are whole in the MP4."""
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    writer = HlsWriter(tmp_path, target_segment_s=1.0)
    writer.add_track(TrackSpec(1, Kind.VIDEO, Codec.H264, 320, 240))
    segments = []
    audio_sent = 0
    for f in clip.frames:
        pts = f.pts_us + BASE_US
        if f.kind == "audio":
            if f.pts_us < 1_500_000:
                continue  # the microphone comes later
            if not audio_sent:
                writer.add_track(TrackSpec(2, Kind.AUDIO, Codec.OPUS))
            audio_sent += 1
        segments += writer.write(1 if f.kind == "video" else 2, f.data, pts, keyframe=f.keyframe)
    segments += writer.finish()
    paths = [s.path for s in segments]
    first = ffprobe(paths[0], "-show_entries", "stream=codec_name")
    assert [s["codec_name"] for s in first["streams"]] == ["h264"]
    info = build_mp4(paths, tmp_path / "session.mp4")
    counts = decode_counts(tmp_path / "session.mp4")
    assert counts["video"] == info.video_frames == clip.video_frames
    assert info.audio_frames > 0 and counts["audio"] >= info.audio_frames - 1


def test_mp4_probes_a_segment_in_full_when_a_quick_look_misses_a_stream(tmp_path: Path) -> None:
    """The first segment is probed for 0.1 s of media; here the video starts 1.5 s in (a
    segment FFmpeg made, not ours), so the quick look finds no picture size and the segment
    is probed again in full: the MP4 has the video, whole."""
    late = tmp_path / "late.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=3", "-itsoffset", "1.5",
         "-f", "lavfi", "-i", "testsrc=d=1:s=320x240:r=15", "-c:v", "libx264", "-g", "15",
         "-c:a", "aac", "-f", "mpegts", str(late)],
        check=True,
    )  # fmt: skip
    with av.open(str(late), options=QUICK_PROBE) as quick:
        assert quick.streams.video[0].codec_context.width == 0  # what the quick look sees
    info = build_mp4([late], tmp_path / "session.mp4")
    probe = ffprobe(tmp_path / "session.mp4", "-show_entries", "stream=codec_name,width,height")
    video = [s for s in probe["streams"] if s["codec_name"] == "h264"]
    assert [(s["width"], s["height"]) for s in video] == [(320, 240)]
    assert decode_counts(tmp_path / "session.mp4")["video"] == info.video_frames == 15


def test_a_recording_of_one_kind_is_looked_through_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MP4's streams are looked for in the segments until all are found: an audio-only
    recording (a mix with ``streamTypes`` 0) says it has one kind, and only its first segment
    is opened for them (each was: 351 of 601 ms for 600 segments)."""
    clip = encode_clip(None, duration_s=4.0, audio_codec="opus")
    writer = HlsWriter(tmp_path, target_segment_s=0.5)
    writer.add_track(TrackSpec(2, Kind.AUDIO, Codec.OPUS))
    segments = []
    for f in clip.frames:
        segments += writer.write(2, f.data, f.pts_us + BASE_US, keyframe=True)
    paths = [s.path for s in [*segments, *writer.finish()]]
    assert len(paths) >= 6
    opened: list[Path] = []
    probed = mp4._open_probed

    def counting(path: Path) -> Any:
        opened.append(path)
        return probed(path)

    monkeypatch.setattr(mp4, "_open_probed", counting)
    info = build_mp4(paths, tmp_path / "audio.mp4", kinds=1)
    assert opened == paths[:1]
    assert (info.video_frames, info.duration_s > 3.5) == (0, True)
