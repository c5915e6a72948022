"""A `webm` track's chunks are pieces of one byte stream: a writer started again on its log
(a crash, a lane's death) demuxes the stream again from the cluster its open segment needs,
behind the stream's header, and records every acknowledged frame once; the stream goes on
through pauses, new streams and chunks left out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from media import decode_counts, encode_webm, unknown_size_clusters
from test_session_writer import SID, opened_wal, params

from ingest.session_writer import SessionWriter
from ingest.wal import CUT, MEDIA, SKIM, Wal
from mixer.errors import InvalidMedia
from mixer.hls import HlsWriter
from mixer.tracks import Kind
from mixer.webm import WebmDemuxer

TRACK = ("track", {"id": 0, "kind": "video", "codec": "webm"})


def chunked(data: bytes, size: int = 3_000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def webm_items(chunks: list[bytes], first_seq: int = 1) -> list[tuple[Any, ...]]:
    """Media items of ``chunks``, a ms apart (the writer takes a webm chunk's times from the
    stream; the chunk's own only anchors a new stream)."""
    return [("media", seq, 0, seq * 1000, seq * 1000, seq == 1, 0.0, chunk)
            for seq, chunk in enumerate(chunks, first_seq)]  # fmt: skip


def records_of(directory: Path) -> list[list[Any]]:
    wal = Wal(directory)
    records = wal.open()[SID]
    wal.close()
    return records


def video_of(segments: list[Any]) -> int:
    return sum(decode_counts(seg.path)["video"] for seg in segments)


def whole(writer: SessionWriter, outcome: Any) -> list[Any]:
    """The segments an outcome and the writer's backlog closed, then its last ones."""
    writer.write_backlog()
    news = writer.news()
    return [seg for seg, _ in [*outcome.done, *(news.done if news else []), *writer.finish()]]


def live(
    directory: Path, items: list[tuple[Any, ...]]
) -> tuple[SessionWriter, Wal, list[Any], Any]:
    """A writer that logged and wrote ``items``: it, its WAL, the segments they closed and
    the error it told (a frame refused)."""
    wal = opened_wal(directory / "wal")
    writer = SessionWriter(params(directory / "live", 0), wal)
    writer.open([])
    outcome = writer.process(items)
    writer.write_backlog()
    news = writer.news()
    done = [seg for seg, _ in [*outcome.done, *(news.done if news else [])]]
    return writer, wal, done, news.error if news else None


def points_inside_their_chunks(records: list[list[Any]]) -> None:
    """Every resume point a CUT names lies in the data of the chunk it names."""
    sizes = {rec[2]: len(rec[8]) for rec in records if rec[1] in (MEDIA, SKIM)}
    for rec in records:
        for point in rec[5].get("webm", []) if rec[1] == CUT and len(rec) > 5 else []:
            assert 0 <= point[6] < sizes[point[5]], (rec[2], point[5], point[6])


@pytest.mark.parametrize("spooled_count", [1, 2, 3])
@pytest.mark.parametrize("unknown_sizes", [False, True])
@pytest.mark.parametrize("crashes", [1, 2])
def test_a_webm_segment_is_replayed_whole_from_mid_stream(
    tmp_path: Path, spooled_count: int, unknown_sizes: bool, crashes: int
) -> None:
    """WebM chunks are pieces of one byte stream, cut anywhere (a timeslice): a segment that
    begins mid-stream is replayed by demuxing the stream again from the cluster it needs,
    behind the stream's header (both named by its cut), so every frame is in the recording
    once. A second crash replays the replay's open segment the same way, from the cut the
    replay made (or, with none, the one it logged first). MediaRecorder writes clusters of
    unknown size; FFmpeg's muxer, sized ones."""
    data, video_frames, _ = encode_webm(4.0)
    if unknown_sizes:
        data = unknown_size_clusters(data)
    chunks = [data[i : i + 3_000] for i in range(0, len(data), 3_000)]
    items = [("media", seq, 0, seq * 1000, seq * 1000, seq == 1, 0.0, chunk)
             for seq, chunk in enumerate(chunks, 1)]  # fmt: skip
    short = dataclasses.replace(params(tmp_path / "first", 0), segment_target_s=0.7)
    wal = opened_wal(tmp_path / "wal")
    first = SessionWriter(short, wal)
    first.open([])
    first.process([("track", {"id": 0, "kind": "video", "codec": "webm"}), *items])
    first.write_backlog()
    news = first.news()
    assert news is not None and len(news.done) >= spooled_count
    spooled = [seg for seg, _ in news.done[:spooled_count]]  # these reach the spool
    wal.sync()
    wal.close()
    for crash in range(1, crashes + 1):
        left = Wal(tmp_path / f"wal{crash - 1 or ''}")
        records = left.open()[SID]
        left.close()
        wal = opened_wal(tmp_path / f"wal{crash}")
        again = dataclasses.replace(
            short, live_dir=tmp_path / f"replay{crash}", next_index=len(spooled), resumed=True
        )
        writer = SessionWriter(again, wal)
        spooled += [seg for seg, _ in writer.open(records).cuts]  # reach the spool too
        if crash == crashes:
            spooled += [seg for seg, _ in writer.finish()]
        wal.sync()
        wal.close()
    counts = [decode_counts(seg.path) for seg in spooled]
    # (the encoder may hold the last frame: H.264 from VP8)
    assert video_frames - 1 <= sum(c["video"] for c in counts) <= video_frames
    assert all(c["audio"] > 0 for c in counts)


@pytest.mark.parametrize("crash", [False, True])
def test_a_webm_stream_goes_on_through_a_pause(tmp_path: Path, crash: bool) -> None:
    """Chunks sent while paused are acknowledged and not recorded, but they are pieces of the
    stream the chunks after the pause continue: they are demuxed (and their video decoded)
    without being written, so every frame after the pause is recorded, from the first chunk
    on, not from the next keyframe. A crash after the pause replays them the same way, from
    the cut the pause made."""
    data, _, _ = encode_webm(6.0)
    chunks = [data[i : i + 3_000] for i in range(0, len(data), 3_000)]
    paused = range(len(chunks) // 3, 2 * len(chunks) // 3)
    # the video frames each chunk completes (a frame is written with the chunk that ends it)
    demuxer = WebmDemuxer()
    completed = [sum(p.kind is Kind.VIDEO for p in demuxer.feed(chunk)) for chunk in chunks]
    expected = sum(n for i, n in enumerate(completed) if i not in paused)
    items: list[tuple[Any, ...]] = [("track", {"id": 0, "kind": "video", "codec": "webm"})]
    for i, chunk in enumerate(chunks):
        if i == paused.start:
            items.append(("pause",))
        elif i == paused.stop:
            items.append(("resume",))
        items.append(("media", i + 1, 0, (i + 1) * 1000, (i + 1) * 1000, i == 0, 0.0, chunk))
    short = dataclasses.replace(params(tmp_path / "first", 0), segment_target_s=0.7)
    wal = opened_wal(tmp_path / "wal")
    first = SessionWriter(short, wal)
    first.open([])
    outcome = first.process(items)
    assert outcome.acked == len(chunks) and outcome.error is None
    first.write_backlog()
    done = [*outcome.done, *(news.done if (news := first.news()) else [])]
    if not crash:
        segments = [seg for seg, _ in [*done, *first.finish()]]
        wal.close()
    else:
        # the segments up to the pause reach the spool, then the lane dies
        after = next(i for i, (seg, _) in enumerate(done) if seg.discontinuity)
        segments = [seg for seg, _ in done[:after]]
        wal.sync()
        wal.close()
        records = records_of(tmp_path / "wal")
        wal = opened_wal(tmp_path / "wal2")
        again = dataclasses.replace(
            short, live_dir=tmp_path / "second", next_index=after, resumed=True
        )
        second = SessionWriter(again, wal)
        opened = second.open(records)
        assert opened.acked_seq == len(chunks) and opened.refused is None
        segments += [seg for seg, _ in [*opened.cuts, *second.finish()]]
        wal.close()
    recorded = sum(decode_counts(seg.path)["video"] for seg in segments)
    assert expected - 1 <= recorded <= expected  # (the encoder may hold the last frame)


def test_a_second_crash_finds_the_chunks_the_first_replay_logged_again(tmp_path: Path) -> None:
    """MediaRecorder's one keyframe keeps the resume point on the stream's first chunk. A
    replay logs the chunks again; the cuts it and the live writer make afterwards must keep
    the file it logged that chunk in while the WAL rotates and lets older files go, or a
    second crash cannot resume the stream (84 of 150 frames were recorded)."""
    data, _, _ = encode_webm(10.0, gop=1000)
    items = webm_items(chunked(data, 2_000))
    a, b = len(items) // 3, 2 * len(items) // 3
    wal = opened_wal(tmp_path / "reference-wal")
    writer = SessionWriter(params(tmp_path / "reference", 0), wal)
    writer.open([])
    reference = video_of(whole(writer, writer.process([TRACK, *items])))
    wal.close()

    spooled: list[Any] = []

    def spool(writer: SessionWriter, wal: Wal) -> None:  # (as the recorder does)
        writer.write_backlog()
        news = writer.news()
        for seg, start in news.done if news else []:
            spooled.append(seg)
            wal.release([start])

    directory = tmp_path / "wal"
    wal = Wal(directory, rotate_bytes=10_000)
    wal.open()
    writer = SessionWriter(params(tmp_path / "a", 0), wal)
    writer.open([])
    for batch in [[TRACK, items[0]], *([it] for it in items[1:a])]:
        writer.process(batch)
        wal.sync()
    spool(writer, wal)
    wal.close()
    wal = Wal(directory, rotate_bytes=10_000)  # the lane starts again on its WAL
    writer = SessionWriter(params(tmp_path / "b", len(spooled)), wal)
    spooled += [seg for seg, _ in writer.open(wal.open()[SID]).cuts]
    wal.finish_recovery()
    for it in items[a:b]:
        writer.process([it])
        wal.sync()
        spool(writer, wal)
    wal.close()
    wal = opened_wal(tmp_path / "wal2")  # and dies again
    writer = SessionWriter(params(tmp_path / "c", len(spooled)), wal)
    opened = writer.open(records_of(directory))
    assert opened.refused is None
    spooled += [seg for seg, _ in opened.cuts]
    spooled += whole(writer, writer.process(items[b:]))
    wal.close()
    assert video_of(spooled) == reference


def test_a_stream_begun_while_paused_is_replayed_from_its_start(tmp_path: Path) -> None:
    """A publisher starts a new stream (MediaRecorder restarted) while the session is paused,
    and the WAL rotates meanwhile (an idle session's cut, ``recut``): that cut names the new
    stream's first cluster, so a crash after the resume records all of the new stream after
    the pause (it lost all of it)."""
    first, _, _ = encode_webm(2.0)
    second, _, _ = encode_webm(4.0)
    before = webm_items(chunked(first))
    after = chunked(second)
    stream = webm_items(after, first_seq=len(before) + 1)
    stream = [(*it[:3], it[3] + 2_500_000, it[4] + 2_500_000, *it[5:]) for it in stream]
    steps: list[list[tuple[Any, ...]]] = [
        [TRACK, *before],
        [("pause",), *stream[:8]],  # the new stream begins while paused
        [("recut",)],
        stream[8:10],
        [("resume",), *stream[10:13]],  # less than a segment: the recut's is the last cut
    ]

    def run(directory: Path) -> tuple[SessionWriter, Wal, list[Any]]:
        wal = opened_wal(directory / "wal")
        writer = SessionWriter(params(directory / "live", 0), wal)
        writer.open([])
        segments = []
        for step in steps:
            outcome = writer.process(step)
            writer.write_backlog()
            news = writer.news()
            segments += [seg for seg, _ in [*outcome.done, *(news.done if news else [])]]
        wal.sync()
        return writer, wal, segments

    writer, wal, segments = run(tmp_path / "reference")
    reference = video_of([*segments, *whole(writer, writer.process(stream[13:]))])
    wal.close()
    _, wal, spooled = run(tmp_path / "crash")
    wal.close()
    records = records_of(tmp_path / "crash" / "wal")
    points_inside_their_chunks(records)
    wal = opened_wal(tmp_path / "wal2")
    again = SessionWriter(params(tmp_path / "replay", len(spooled)), wal)
    opened = again.open(records)
    assert opened.refused is None
    replayed = [seg for seg, _ in opened.cuts] + whole(again, again.process(stream[13:]))
    wal.close()
    assert video_of([*spooled, *replayed]) == reference


def test_a_chunk_that_does_not_decode_still_counts_in_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk whose frame does not decode is refused (the client is told), but the demuxer
    read all of it: a resume point in it names it, at an offset inside it, and a crash
    replays the rest as the live writer wrote it (a point named the chunk before, at an
    offset past its end)."""
    data, _, _ = encode_webm(6.0)
    demuxer = WebmDemuxer()
    packets = demuxer.feed(data) + demuxer.close()
    cluster = demuxer.scanner.clusters[2]
    bad = [p for p in packets if p.kind is Kind.VIDEO and p.pos < cluster][-1]  # (a P-frame)
    # one chunk holds that frame and the start of the cluster (not yet its keyframe)
    cuts = sorted({*range(0, bad.pos - 20, 3_000), *range(cluster + 12, len(data), 3_000)})
    items = webm_items([data[a:b] for a, b in zip(cuts, [*cuts[1:], len(data)], strict=True)])
    write_frame = HlsWriter._write_frame

    def failing(self: HlsWriter, track: Any, data: bytes, *args: Any) -> Any:
        if data == bad.data:
            raise InvalidMedia("cannot decode video frame")
        return write_frame(self, track, data, *args)

    monkeypatch.setattr(HlsWriter, "_write_frame", failing)
    writer, wal, done, error = live(tmp_path, [TRACK, *items])
    assert error is not None  # (refused, and told)
    reference = video_of([*done, *(seg for seg, _ in writer.finish())])
    wal.close()
    records = records_of(tmp_path / "wal")
    points_inside_their_chunks(records)
    spooled = 3  # (the point of segment 3 lies in the chunk that failed)
    wal = opened_wal(tmp_path / "wal2")
    again = SessionWriter(params(tmp_path / "replay", spooled), wal)
    opened = again.open(records)
    replayed = [seg for seg, _ in [*opened.cuts, *again.finish()]]
    wal.close()
    assert video_of([*done[:spooled], *replayed]) == reference


def test_a_chunk_left_out_leaves_a_hole_the_stream_goes_on_after(tmp_path: Path) -> None:
    """The chunk a replay resumes the stream in is one its lane died on twice (``skip``): it
    is left out (and not logged again), and the stream goes on from the next chunk behind
    its header, from the next cluster (the demuxer was resumed at the wrong place, or not at
    all)."""
    data, video_frames, _ = encode_webm(6.0)
    _, wal, done, _ = live(tmp_path, [TRACK, *webm_items(chunked(data))])
    wal.close()
    records = records_of(tmp_path / "wal")
    cut = next(rec for rec in records if rec[1] == CUT and rec[2] == 2)
    (point,) = cut[5]["webm"]
    hole = point[5]
    wal = opened_wal(tmp_path / "wal2")
    skipping = dataclasses.replace(params(tmp_path / "replay", 2), skip=frozenset({hole}))
    again = SessionWriter(skipping, wal)
    opened = again.open(records)
    assert opened.refused is not None and f"seq {hole}:" in opened.refused[1]
    replayed = [seg for seg, _ in [*opened.cuts, *again.finish()]]
    wal.close()
    assert all(rec[2] != hole for rec in records_of(tmp_path / "wal2") if rec[1] == MEDIA)
    # what the hole cost: the frames up to the next cluster (and keyframe); the rest is there
    demuxer = WebmDemuxer()
    packets = demuxer.feed(data) + demuxer.close()
    after = next(c for c in demuxer.scanner.clusters if c > point[3])
    lost = sum(1 for p in packets if p.kind is Kind.VIDEO and point[4] <= p.pos < after)
    assert video_of([*done[:2], *replayed]) >= video_frames - lost - 1
