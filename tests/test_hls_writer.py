"""HlsWriter end to end: frames in, segments and playlist out, checked by decoding them."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import av
import pytest
from media import Clip, decode_counts, encode_clip, ffprobe

from mixer.errors import InvalidMedia
from mixer.hls import HlsWriter
from mixer.playlist import Playlist
from mixer.segmenter import SegmentInfo
from mixer.tracks import Codec, Kind, TrackSpec

VIDEO, AUDIO = 1, 2
TARGET_S = 1.0
BASE_US = 5_000_000_000  # Client clocks are not zero-based.
# A segment ends on the first keyframe at or after the target; clips have one every second.
SEGMENT_SLACK_S = 1.0
# The last AAC frame and encoder priming add up to a few audio frames at the end.
AUDIO_TAIL_S = 0.1


def _writer(
    tmp_path: Path, video: Codec | None, audio: Codec | None, clip: Clip, **options: Any
) -> HlsWriter:
    writer = HlsWriter(tmp_path, target_segment_s=TARGET_S, name="rec", **options)
    if video:
        writer.add_track(TrackSpec(VIDEO, Kind.VIDEO, video, 320, 240))
    if audio:
        writer.add_track(TrackSpec(AUDIO, Kind.AUDIO, audio, extradata=b""))
    return writer


def _feed(writer: HlsWriter, clip: Clip, offset_us: int = BASE_US) -> list[SegmentInfo]:
    out: list[SegmentInfo] = []
    for f in clip.frames:
        dts = None if f.dts_us is None else f.dts_us + offset_us
        track = VIDEO if f.kind == "video" else AUDIO
        out += writer.write(track, f.data, f.pts_us + offset_us, keyframe=f.keyframe, dts_us=dts)
    return out


@pytest.mark.parametrize(
    ("video", "audio"),
    [(Codec.H264, Codec.OPUS), (Codec.VP8, Codec.OPUS), (Codec.H264, Codec.AAC)],
)
def test_segments_play_and_count(tmp_path: Path, video: Codec, audio: Codec) -> None:
    clip = encode_clip(str(video), duration_s=3.0, audio_codec=str(audio))
    writer = _writer(tmp_path, video, audio, clip)
    segments = _feed(writer, clip) + writer.finish()
    assert [s.index for s in segments] == list(range(len(segments)))
    assert len(segments) >= 3
    for s in segments[:-1]:
        assert TARGET_S - 0.01 <= s.duration_s <= TARGET_S + SEGMENT_SLACK_S
        assert s.path.stat().st_size == s.size
    playlist_path = tmp_path / "rec.m3u8"
    playlist = Playlist.parse(playlist_path.read_text())
    assert playlist.ended and len(playlist.segments) == len(segments)
    counts = decode_counts(playlist_path)
    if video is Codec.H264:
        assert counts["video"] == clip.video_frames
    else:
        assert abs(counts["video"] - clip.video_frames) <= 1
    assert counts["audio"] > 0
    probe = ffprobe(playlist_path, "-show_entries", "format=duration:stream=codec_name")
    assert {s["codec_name"] for s in probe["streams"]} == {"h264", "aac"}
    assert float(probe["format"]["duration"]) == pytest.approx(3.0, abs=TARGET_S)
    assert writer.duration_s == pytest.approx(3.0, abs=AUDIO_TAIL_S)
    # Each segment starts with a video keyframe.
    for s in segments:
        first = ffprobe(s.path, "-select_streams", "v", "-show_entries", "packet=flags",
                        "-read_intervals", "%+#1")  # fmt: skip
        assert first["packets"][0]["flags"].startswith("K")


def test_discontinuity_rebases_time(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=2.0)
    writer = _writer(tmp_path, Codec.H264, Codec.OPUS, clip)
    before = _feed(writer, clip)
    closed = writer.discontinuity()
    assert len(closed) == 1
    pause_us = 60 * 1_000_000  # One minute paused: not recorded.
    after = _feed(writer, clip, BASE_US + 2_000_000 + pause_us) + writer.finish()
    segments = before + closed + after
    resumed = after[0]
    assert resumed.discontinuity and not any(s.discontinuity for s in before + closed)
    assert resumed.start_s == pytest.approx(closed[0].start_s + closed[0].duration_s)
    assert writer.duration_s == pytest.approx(4.0, abs=AUDIO_TAIL_S)
    text = (tmp_path / "rec.m3u8").read_text().splitlines()
    tag = text.index("#EXT-X-DISCONTINUITY")
    assert text[tag + 3] == resumed.uri
    assert sum(s.duration_s for s in segments) == pytest.approx(writer.duration_s)
    assert decode_counts(tmp_path / "rec.m3u8")["video"] == 2 * clip.video_frames


def test_segment_dates_follow_the_media_not_a_resends_arrival(tmp_path: Path) -> None:
    """Frames that arrive in a burst (resent after a reconnect, all within 0.1 s): each
    segment that goes on from the one before is dated when that one ended, as the playlist
    says; only the first and a discontinuity's are dated by arrival."""
    clip = encode_clip("h264", duration_s=3.0)
    writer = _writer(tmp_path, Codec.H264, None, clip)
    burst = 1_795_000_000.0  # the unix time the resend arrived
    segments: list[SegmentInfo] = []
    for n, f in enumerate(clip.of("video")):
        segments += writer.write(VIDEO, f.data, f.pts_us + BASE_US, keyframe=f.keyframe,
                                 arrival=burst + n / 1000)  # fmt: skip
    segments += writer.discontinuity()
    late = burst + 600.0
    for f in clip.of("video"):
        segments += writer.write(VIDEO, f.data, f.pts_us + BASE_US + 3_600_000_000,
                                 keyframe=f.keyframe, arrival=late)  # fmt: skip
    segments += writer.finish()
    assert len(segments) >= 4
    for before, after in itertools.pairwise(segments):
        if after.discontinuity:
            assert after.program_date_time.timestamp() == pytest.approx(late, abs=1e-3)
        else:
            expected = before.program_date_time.timestamp() + before.duration_s
            assert after.program_date_time.timestamp() == pytest.approx(expected, abs=1e-3)
    assert segments[0].program_date_time.timestamp() == pytest.approx(burst, abs=1e-3)


def test_audio_only_and_video_only(tmp_path: Path) -> None:
    clip = encode_clip(None, audio_codec="opus", duration_s=2.5)
    writer = _writer(tmp_path / "a", None, Codec.OPUS, clip)
    segments = _feed(writer, clip) + writer.finish()
    assert len(segments) == 3
    assert decode_counts(tmp_path / "a" / "rec.m3u8")["video"] == 0

    clip = encode_clip("h264", audio_codec=None, duration_s=2.0)
    writer = _writer(tmp_path / "v", Codec.H264, None, clip)
    segments = _feed(writer, clip) + writer.finish()
    assert decode_counts(tmp_path / "v" / "rec.m3u8") == {"video": clip.video_frames, "audio": 0}


def test_late_audio_track_and_leading_non_keyframes(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=3.0)
    writer = HlsWriter(tmp_path, target_segment_s=TARGET_S)
    writer.add_track(TrackSpec(VIDEO, Kind.VIDEO, Codec.H264, 320, 240))
    video = clip.of("video")
    # A delta frame before any keyframe is dropped.
    assert writer.write(VIDEO, video[1].data, BASE_US - 1, keyframe=False) == []
    segments: list[SegmentInfo] = []
    added = False
    for f in clip.frames:
        if f.kind == "audio" and f.pts_us < 500_000:
            continue
        if f.kind == "audio" and not added:
            writer.add_track(TrackSpec(AUDIO, Kind.AUDIO, Codec.OPUS))
            added = True
        track = VIDEO if f.kind == "video" else AUDIO
        segments += writer.write(track, f.data, f.pts_us + BASE_US, keyframe=f.keyframe)
    segments += writer.finish()
    counts = decode_counts(tmp_path / "index.m3u8")
    assert counts["video"] == clip.video_frames
    assert counts["audio"] > 0
    # the first segment with the audio begins a discontinuity (RFC 8216 4.3.2.3: the number
    # of tracks changed), the segments before and after it none
    streams = []
    for segment in segments:
        with av.open(str(segment.path)) as container:
            streams.append(len(container.streams))
    assert streams[0] == 1 and streams[-1] == 2
    assert [s.discontinuity for s in segments] == [
        i > 0 and streams[i] > streams[i - 1] for i in range(len(segments))
    ]
    assert (tmp_path / "index.m3u8").read_text().count("#EXT-X-DISCONTINUITY\n") == 1


def test_garbage_raises_and_writer_keeps_working(tmp_path: Path) -> None:
    clip = encode_clip("vp8", duration_s=2.0, audio_codec="aac")
    writer = _writer(tmp_path, Codec.VP8, Codec.AAC, clip)
    garbage = bytes(range(256)) * 4
    half = len(clip.frames) // 2
    for f in clip.frames[:half]:
        writer.write(VIDEO if f.kind == "video" else AUDIO, f.data, f.pts_us + BASE_US,
                     keyframe=f.keyframe)  # fmt: skip
    with pytest.raises(InvalidMedia):
        writer.write(AUDIO, garbage, clip.frames[half].pts_us + BASE_US, keyframe=True)
    with pytest.raises(InvalidMedia):
        writer.write(VIDEO, b"\x9d\x01\x2a" + garbage, clip.frames[half].pts_us + BASE_US,
                     keyframe=True)  # fmt: skip
    with pytest.raises(InvalidMedia):
        writer.write(99, garbage, 0, keyframe=True)
    for f in clip.frames[half:]:
        writer.write(VIDEO if f.kind == "video" else AUDIO, f.data, f.pts_us + BASE_US,
                     keyframe=f.keyframe)  # fmt: skip
    writer.finish()
    counts = decode_counts(tmp_path / "rec.m3u8")
    assert counts["video"] > clip.video_frames // 2
    assert counts["audio"] > 0


def test_h264_garbage_and_backwards_frames(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=1.0, audio_codec=None)
    writer = _writer(tmp_path, Codec.H264, None, clip)
    with pytest.raises(InvalidMedia):
        writer.write(VIDEO, b"garbage!" * 10, BASE_US, keyframe=True)
    _feed(writer, clip)
    # A frame a second back in time is dropped, not fatal.
    assert writer.write(VIDEO, clip.frames[0].data, BASE_US, keyframe=True) == []
    writer.finish()
    assert decode_counts(tmp_path / "rec.m3u8")["video"] == clip.video_frames


def _counters_in_order(paths: list[Path]) -> dict[int, list[int]]:
    """Each PID's continuity counters over the segments read back to back (packets with a
    payload only: the others repeat the counter before them)."""
    out: dict[int, list[int]] = {}
    for path in paths:
        data = path.read_bytes()
        assert len(data) % 188 == 0
        for at in range(0, len(data), 188):
            head = data[at : at + 4]
            assert head[0] == 0x47
            if head[3] & 0x10:
                out.setdefault(((head[1] & 0x1F) << 8) | head[2], []).append(head[3] & 0x0F)
    return out


def _assert_ffmpeg_reads_cleanly(playlist: Path) -> None:
    """FFmpeg's HLS demuxer reads the segments back to back: no continuity failure, no packet
    flagged corrupt."""
    report = subprocess.run(
        ["ffmpeg", "-v", "debug", "-i", str(playlist), "-c", "copy", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    assert "Continuity check failed" not in report and "corrupt" not in report.lower()


def test_continuity_counters_go_on_across_segments(tmp_path: Path) -> None:
    """A demuxer reading the segments back to back (FFmpeg's HLS demuxer does) sees no counter
    break, so it flags no packet corrupt at the boundaries."""
    clip = encode_clip("h264", duration_s=4.0, audio_codec="opus")
    writer = _writer(tmp_path, Codec.H264, Codec.OPUS, clip)
    segments = _feed(writer, clip) + writer.finish()
    assert len(segments) >= 3
    counters = _counters_in_order([s.path for s in segments])
    assert len(counters) >= 4  # PAT, PMT, video, audio (and SDT)
    for pid, seen in counters.items():
        assert seen == [(seen[0] + i) % 16 for i in range(len(seen))], pid
    _assert_ffmpeg_reads_cleanly(tmp_path / "rec.m3u8")
    assert decode_counts(tmp_path / "rec.m3u8")["video"] == len(clip.of("video"))


def test_a_restarted_writer_marks_where_its_counters_start_again(tmp_path: Path) -> None:
    """A writer that goes on with a playlist after a restart starts its counters at 0: its
    first packets carry the discontinuity indicator, so reading on from the segment before is
    no continuity failure either."""
    clip = encode_clip("h264", duration_s=3.0, audio_codec="aac")
    first = _writer(tmp_path, Codec.H264, Codec.AAC, clip)
    before = _feed(first, clip) + first.finish()
    second = _writer(
        tmp_path, Codec.H264, Codec.AAC, clip, start_index=len(before), discontinuity_first=True
    )
    after = _feed(second, clip, offset_us=BASE_US + 3_000_000) + second.finish()
    assert after[0].discontinuity and after[0].index == len(before)
    head = after[0].path.read_bytes()[: 188 * 8]
    # the first packet of a PES stream has an adaptation field with the indicator (0x80)
    assert any(
        head[at + 3] & 0x20 and head[at + 4] and head[at + 5] & 0x80
        for at in range(0, len(head), 188)
    )
    _assert_ffmpeg_reads_cleanly(tmp_path / "rec.m3u8")
    assert decode_counts(tmp_path / "rec.m3u8")["video"] == 2 * len(clip.of("video"))
