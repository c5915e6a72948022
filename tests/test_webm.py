"""WebM chunks (as MediaRecorder sends them) demuxed incrementally and recorded."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from media import decode_counts, encode_clip, encode_webm, unknown_size_clusters

from mixer.errors import InvalidMedia
from mixer.hls import HlsWriter
from mixer.tracks import Codec, Kind, TrackSpec
from mixer.webm import MAX_HEADER_BYTES, ClusterScanner, WebmDemuxer

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


@pytest.mark.parametrize("unknown_sizes", [False, True])
def test_the_scanner_finds_the_header_and_each_cluster(unknown_sizes: bool) -> None:
    """However the stream is cut into chunks (a header cut in two included), the scanner
    finds every cluster where it begins and the header before the first; clusters of unknown
    size (MediaRecorder's) end where the next one begins. Each video keyframe opens one (as
    FFmpeg's muxer and MediaRecorder cluster), and every block lies in one."""
    data, _, _ = encode_webm(3.0)
    if unknown_sizes:
        data = unknown_size_clusters(data)
    found = []
    for chunk_bytes in (1, 7, 3_000, len(data)):
        scanner = ClusterScanner()
        for i in range(0, len(data), chunk_bytes):
            scanner.feed(data[i : i + chunk_bytes])
        assert not scanner.broken and scanner.fed == len(data)
        found.append((scanner.header, scanner.clusters))
    assert found[1:] == found[:-1]
    header, clusters = found[0]
    assert header is not None and data.startswith(header) and clusters[0] == len(header)
    assert len(clusters) >= 3 and all(data[c : c + 4] == b"\x1f\x43\xb6\x75" for c in clusters)
    demuxer = WebmDemuxer()
    blocks = [p for chunk in _chunks(data) for p in demuxer.feed(chunk)] + demuxer.close()
    assert demuxer.scanner.clusters == clusters
    assert all(p.pos is not None and p.pos > clusters[0] for p in blocks)
    keys = [p.pos for p in blocks if p.kind is Kind.VIDEO and p.keyframe]
    assert [demuxer.scanner.cluster_at(k) for k in keys] == clusters[: len(keys)]


@pytest.mark.parametrize("cluster", [1, 2])
def test_a_stream_resumed_at_a_cluster_gives_the_same_packets(cluster: int) -> None:
    """The header and the bytes from a cluster on demux to the packets (times, offsets,
    data) the whole stream gave from that cluster on."""
    data, _, _ = encode_webm(3.0)
    whole = WebmDemuxer()
    packets = [p for chunk in _chunks(data) for p in whole.feed(chunk)] + whole.close()
    header, at = whole.scanner.header, whole.scanner.clusters[cluster]
    assert header is not None
    resumed = WebmDemuxer()
    rest = _chunks(data[at:])
    again = resumed.resume(header, at, rest[0])
    again += [p for chunk in rest[1:] for p in resumed.feed(chunk)] + resumed.close()
    assert again == [p for p in packets if p.pos is not None and p.pos >= at]
    assert resumed.scanner.clusters == whole.scanner.clusters[cluster:]


def test_the_scanner_gives_up_on_what_it_cannot_follow() -> None:
    scanner = ClusterScanner()
    scanner.feed(b"\x1a\x45\xdf\xa3\x84webm" + b"\x42\x86\x01\xff\xff\xff\xff\xff\xff\xff")
    assert scanner.broken and scanner.header is None  # a header element of unknown size
    endless = ClusterScanner()
    endless.feed(b"\x1a\x45\xdf\xa3\x80\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff")
    endless.feed(b"\xec" + b"\x10" * 16 + bytes(MAX_HEADER_BYTES))  # a Void, then no cluster
    assert endless.broken and endless.header is None


def test_a_first_chunk_over_the_header_limit_is_followed() -> None:
    """Only the header is bounded (``MAX_HEADER_BYTES``): a first chunk larger than that (a
    MediaRecorder timeslice of several seconds) that holds the header and clusters after it
    is followed (the scanner gave up on it, and the stream could not be replayed)."""
    data, _, _ = encode_webm(2.0)
    whole = ClusterScanner()
    whole.feed(data)
    void = b"\xec\x01" + (MAX_HEADER_BYTES + 1).to_bytes(7, "big") + bytes(MAX_HEADER_BYTES + 1)
    big = ClusterScanner()
    big.feed(data + void)  # (a Void element after the clusters: any bytes of the stream)
    assert not big.broken and big.header == whole.header and big.clusters == whole.clusters
    header = whole.header
    assert header is not None
    late = ClusterScanner()  # a header that does run past the limit is given up on
    late.feed(header + void + data[len(header) :])
    assert late.broken and late.header is None


def test_an_audio_only_stream_records_audio_only(tmp_path: Path) -> None:
    """MediaRecorder's ``audio/webm`` (Opus alone): the recording's streams are the ones the
    stream's header announces, so its segments hold AAC only, with no empty video stream
    (players waited on one that never came)."""
    data, _, audio = encode_webm(3.0, video=False)
    writer = HlsWriter(tmp_path, target_segment_s=1.0)
    writer.add_track(TrackSpec(7, Kind.VIDEO, Codec.WEBM))
    segments = []
    for i, chunk in enumerate(_chunks(data)):
        segments += writer.write(7, chunk, 3_000_000 + i * 1000, keyframe=i == 0)
    segments += writer.finish()
    assert len(segments) >= 3  # (cut on the audio, at the target)
    for segment in segments:
        with av.open(str(segment.path)) as container:
            assert [s.type for s in container.streams] == ["audio"]
    counts = decode_counts(tmp_path / "index.m3u8")
    assert counts["video"] == 0 and abs(counts["audio"] - audio * 960 / 1024) <= 3


def test_a_webm_track_announced_with_another_is_in_the_first_segment(tmp_path: Path) -> None:
    """Tracks are announced before their media: a webm track whose first chunk comes after
    another track's first frame opened the segment still has its streams in that segment
    (they were made at its first chunk, and its frames waited for the next segment)."""
    data, video, _ = encode_webm(4.0)
    aac = encode_clip(None, duration_s=5.0, audio_codec="aac")
    writer = HlsWriter(tmp_path, target_segment_s=2.0)
    writer.add_track(TrackSpec(0, Kind.VIDEO, Codec.WEBM))
    writer.add_track(TrackSpec(1, Kind.AUDIO, Codec.AAC))
    chunks = _chunks(data)
    sent = [(f.pts_us + 1_000_000, 1, f.data) for f in aac.of("audio")]
    sent += [(1_500_000 + i * 4_000_000 // len(chunks), 0, c) for i, c in enumerate(chunks)]
    segments = []
    for t_us, track, payload in sorted(sent, key=lambda s: s[0]):
        segments += writer.write(track, payload, t_us, keyframe=True)
    segments += writer.finish()
    with av.open(str(segments[0].path)) as container:
        first = sum(1 for p in container.demux(video=0) if p.size)
    assert first >= segments[0].duration_s * FPS - 8  # (from 0.5 s in: the webm's start)
    assert decode_counts(tmp_path / "index.m3u8")["video"] == video
