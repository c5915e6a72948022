"""A session's writer logs frames to the WAL first and writes them into HLS later: a crash
between the two loses nothing, and the replay puts each frame in its segment once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from media import Frame, decode_counts, encode_clip

from ingest import lanes
from ingest.session_writer import SessionWriter, WriterParams
from ingest.wal import Wal

SID = "s"
AAC_FRAMES_SLACK = 2  # the AAC encoder's priming and the partial last frame
TRACKS: list[tuple[Any, ...]] = [
    ("track", {"id": 0, "kind": "video", "codec": "h264"}),
    ("track", {"id": 1, "kind": "audio", "codec": "opus"}),
]


def params(live_dir: Path, next_index: int) -> WriterParams:
    return WriterParams(
        session_id=SID,
        live_dir=live_dir,
        segment_target_s=1.0,
        gap_s=3.0,
        paused=False,
        acked_seq=0,
        next_index=next_index,
        start_s=0.0,
        resumed=next_index > 0,
        aac_coder="fast",
    )


def item(seq: int, frame: Frame) -> tuple[Any, ...]:
    track = 0 if frame.kind == "video" else 1
    dts = frame.pts_us if frame.dts_us is None else frame.dts_us
    return ("media", seq, track, frame.pts_us, dts, frame.keyframe, 0.0, frame.data)


def opened_wal(directory: Path) -> Wal:
    wal = Wal(directory)
    wal.open()
    return wal


def test_a_crash_between_logging_and_writing_loses_no_frame(tmp_path: Path) -> None:
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    items = [item(seq, f) for seq, f in enumerate(clip.frames, 1)]
    wal = opened_wal(tmp_path / "wal")
    first = SessionWriter(params(tmp_path / "first", 0), wal)
    first.open([])

    outcome = first.process([*TRACKS, *items])
    assert outcome.acked == len(items) and outcome.done == []  # logged, not written yet
    first.write_backlog()  # every cut it makes comes after the last frame's record
    news = first.news()
    assert news is not None and len(news.done) >= 2, news
    spooled = news.done[0][0]  # segment 0 reaches the spool, then the process dies
    wal.sync()

    wal.close()

    left = Wal(tmp_path / "wal")
    records = left.open()[SID]  # what the dead lane left
    left.close()
    wal = opened_wal(tmp_path / "wal2")
    second = SessionWriter(params(tmp_path / "second", 1), wal)
    opened = second.open(records)
    assert opened.acked_seq == len(items)
    replayed = [seg for seg, _ in [*opened.cuts, *second.finish()]]
    wal.close()
    assert [seg.index for seg in replayed] == list(range(1, len(replayed) + 1))
    video = decode_counts(spooled.path)["video"]
    video += sum(decode_counts(seg.path)["video"] for seg in replayed)
    assert video == clip.video_frames
    assert all(decode_counts(seg.path)["audio"] > 0 for seg in replayed)


def test_a_lane_behind_writes_before_it_acknowledges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged frames wait in the lane's backlog; past its bound, a tick writes them before it
    answers (the acknowledgements slow down instead of memory growing), and reports the
    segments they closed with that tick."""
    state = lanes._LaneState(tmp_path / "lane", 64 << 20)
    state.wal_open()
    state.open(params(tmp_path / "live", 0), [])
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    items = [item(seq, f) for seq, f in enumerate(clip.frames, 1)]
    half = len(items) // 2
    out, news, _, _, pending = state.tick([(SID, [*TRACKS, *items[:half]])])
    assert (out[0].acked, out[0].done, news, pending) == (half, [], [], True)
    monkeypatch.setattr(lanes, "BACKLOG_MAX_BYTES", 0)
    out, news, _, _, pending = state.tick([(SID, items[half:])])
    assert out[0].acked == len(items) and pending  # the second half waits in its turn
    assert [seg.index for seg, _ in out[0].done] == [0], out[0].done  # 1 s of 1.5 s written
    state.stop()


def test_a_track_added_mid_segment_is_replayed_whole(tmp_path: Path) -> None:
    """A microphone switched on mid-segment: its first frames wait for the next segment (a
    segment's streams are fixed when it opens), which the next keyframe cuts. They came before
    that cut's frame, and a replay of that segment must write them too."""
    clip = encode_clip("h264", duration_s=3.0, audio_codec="opus")
    late_us = 400_000  # the audio track is announced here, inside the first segment
    items: list[tuple[Any, ...]] = [TRACKS[0]]
    for seq, f in enumerate(clip.frames, 1):
        if f.kind == "audio" and f.pts_us < late_us:
            continue
        if f.kind == "audio" and TRACKS[1] not in items:
            items.append(TRACKS[1])
        items.append(item(seq, f))
    wal = opened_wal(tmp_path / "wal")
    first = SessionWriter(params(tmp_path / "first", 0), wal)
    first.open([])
    first.process(items)
    first.write_backlog()
    news = first.news()
    assert news is not None and len(news.done) >= 2
    spooled = news.done[0][0]  # segment 0 (video only) reaches the spool, then the lane dies
    assert decode_counts(spooled.path)["audio"] == 0
    wal.sync()
    wal.close()
    left = Wal(tmp_path / "wal")
    records = left.open()[SID]
    left.close()
    wal = opened_wal(tmp_path / "wal2")
    second = SessionWriter(params(tmp_path / "second", 1), wal)
    opened = second.open(records)
    replayed = [seg for seg, _ in [*opened.cuts, *second.finish()]]
    wal.close()
    sent_audio = sum(1 for f in clip.frames if f.kind == "audio" and f.pts_us >= late_us)
    got = [decode_counts(seg.path) for seg in replayed]
    # every audio frame sent, less the AAC encoder's priming and partial last frame
    assert sum(c["audio"] for c in got) >= sent_audio * 960 // 1024 - AAC_FRAMES_SLACK
    assert decode_counts(spooled.path)["video"] + sum(c["video"] for c in got) == clip.video_frames


def test_a_transcoded_segment_begun_past_an_input_keyframe_is_replayed_whole(
    tmp_path: Path,
) -> None:
    """VP8 whose keyframes are further apart than two segments: the encoder forces an output
    keyframe on an input frame that is not one, and a segment begins there. Decoding that
    frame again needs the frames from the last input keyframe: the replay feeds those to the
    decoder (nothing written), so no frame of the segment is lost."""
    clip = encode_clip("vp8", duration_s=3.0, audio_codec="opus")  # a keyframe a second
    tracks = [("track", {"id": 0, "kind": "video", "codec": "vp8"}), TRACKS[1]]
    items = [item(seq, f) for seq, f in enumerate(clip.frames, 1)]
    short = dataclasses.replace(params(tmp_path / "first", 0), segment_target_s=0.3)
    wal = opened_wal(tmp_path / "wal")
    first = SessionWriter(short, wal)
    first.open([])
    first.process([*tracks, *items])
    first.write_backlog()
    news = first.news()
    assert news is not None and len(news.done) >= 3
    spooled = news.done[0][0]  # segment 0 reaches the spool, then the lane dies
    wal.sync()
    wal.close()
    left = Wal(tmp_path / "wal")
    records = left.open()[SID]
    left.close()
    # the next segment begins past the input keyframe at 0 (forced, 0.6 s on)
    assert records_of_segment_start(records, 1) > 0
    wal = opened_wal(tmp_path / "wal2")
    second = SessionWriter(
        dataclasses.replace(short, live_dir=tmp_path / "second", next_index=1, resumed=True), wal
    )
    opened = second.open(records)
    replayed = [seg for seg, _ in [*opened.cuts, *second.finish()]]
    wal.close()
    video = decode_counts(spooled.path)["video"]
    video += sum(decode_counts(seg.path)["video"] for seg in replayed)
    assert video == clip.video_frames


def records_of_segment_start(records: list[list[Any]], index: int) -> int:
    """How many frames the decoder needs before segment ``index``'s first (its CUT names)."""
    cut = next(rec for rec in records if rec[1] == "c" and rec[2] == index)
    return sum(end - first for _, first, end in (cut[5] if len(cut) > 5 else {}).get("prime", []))
