"""WebM chunks (as MediaRecorder sends them) demuxed incrementally and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from media import decode_counts, encode_webm

from mixer.errors import InvalidMedia
from mixer.hls import HlsWriter
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.webm import WebmDemuxer

CHUNK_BYTES = 4_000  # Arbitrary cuts, as a 1 s timeslice cuts mid-cluster.
FPS = 15


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


def test_demuxer_incremental() -> None:
    data, video, audio = encode_webm(2.0)
    demuxer = WebmDemuxer()
    packets = []
    per_chunk = []
    for chunk in _chunks(data):
        got = demuxer.feed(chunk)
        per_chunk.append(len(got))
        packets += got
    packets += demuxer.close()
    assert sum(1 for p in packets if p.kind is Kind.VIDEO) == video
    assert sum(1 for p in packets if p.kind is Kind.AUDIO) == audio
    assert sum(1 for n in per_chunk if n) > 1  # Packets come out as chunks arrive.
    assert packets[0].keyframe


def test_demuxer_rejects_garbage_then_recovers() -> None:
    demuxer = WebmDemuxer()
    with pytest.raises(InvalidMedia):
        demuxer.feed(b"not webm at all" * 100)
    data, video, _ = encode_webm(1.0)
    packets = []
    for chunk in _chunks(data):
        packets += demuxer.feed(chunk)
    packets += demuxer.close()
    assert sum(1 for p in packets if p.kind is Kind.VIDEO) == video


def test_webm_track_records(tmp_path: Path) -> None:
    data, video, _ = encode_webm(2.0)
    writer = HlsWriter(tmp_path, target_segment_s=1.0)
    writer.add_track(TrackSpec(7, Kind.VIDEO, Codec.WEBM))
    base_us = 3_000_000
    for i, chunk in enumerate(_chunks(data)):
        writer.write(7, chunk, base_us + i * 1000, keyframe=i == 0)
    segments = writer.finish()
    assert segments
    counts = decode_counts(tmp_path / "index.m3u8")
    assert abs(counts["video"] - video) <= 1
    assert counts["audio"] > 0
