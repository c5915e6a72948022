"""The create-body parser: events come back exactly as sent whatever the read window cuts
through, and every malformed body is refused naming its field."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
import zstandard

from api import recordings_events
from api.recordings_events import BodyError, parse_upload
from storage.recordings import Uuid7Source


def _run(tmp_path: Path, text: str | bytes) -> tuple[Any, bytes]:
    src, out = tmp_path / "body", tmp_path / "events.zst"
    src.write_bytes(text.encode() if isinstance(text, str) else text)
    parsed = parse_upload(src, out)
    return parsed, zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes())


@pytest.mark.parametrize("window", [1, 7, 64, 1024 * 1024])
def test_events_round_trip_across_read_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    monkeypatch.setattr(recordings_events, "READ_BYTES", window)
    sent = [
        {"type": 2, "data": {"node": {"t": 'é✓\\"' * i}}, "timestamp": 1714816800000 + i * 17}
        for i in range(60)
    ] + [{"type": 5, "timestamp": 1714816801234.5, "data": [1e-7, -0.0, 123456789012345678]}]
    text = json.dumps({"name": "n", "events": sent, "duration_ms": 12345, "has_video": False})
    parsed, stored = _run(tmp_path, text.replace(", ", ",\n  "))
    assert json.loads(stored) == sent
    assert parsed.event_count == 61 and parsed.raw_bytes == len(stored)
    assert parsed.span_ms == 1234  # 1234.5 ms rounds half to even
    assert parsed.fields == {"name": "n", "duration_ms": 12345, "has_video": False}


def test_empty_array_and_compression(tmp_path: Path) -> None:
    parsed, stored = _run(tmp_path, '{"events": [ ]}')
    assert stored == b"[]" and parsed.event_count == 0 and parsed.has_events


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ('{"events": {}}', "events", "events must be an array, not an object"),
        ('{"events": [{"type": 1}]}', "events[0].timestamp", "events[0] has no timestamp"),
        (
            '{"events": [{"type": true, "timestamp": 1}]}',
            "events[0].type",
            "events[0].type must be a number, not a boolean",
        ),
        (
            '{"events": [{"type": 1, "timestamp": NaN}]}',
            "events[0]",
            "events[0] is not valid JSON: NaN is not valid JSON",
        ),
        ('{"events": [], "events": []}', "events", "events is given twice"),
        (
            '{"events": [{"type": 1, "timestamp": 1}',
            "events",
            "expected ',' or ']', found the end of the body",
        ),
        ("[]", "body", "request body must be a JSON object"),
        ('{"events": []} {}', "body", "unexpected data after the JSON object"),
    ],
)
def test_bad_bodies(tmp_path: Path, text: str, field: str, message: str) -> None:
    with pytest.raises(BodyError) as caught:
        _run(tmp_path, text)
    assert (caught.value.field, caught.value.message) == (field, message)


def test_an_event_past_its_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recordings_events, "MAX_EVENT_BYTES", 1000)
    monkeypatch.setattr(recordings_events, "READ_BYTES", 100)
    big = json.dumps({"events": [{"type": 1, "timestamp": 1, "pad": "x" * 5000}]})
    with pytest.raises(BodyError, match="larger than 1000 bytes"):
        _run(tmp_path, big)
    with pytest.raises(BodyError, match="UTF-8"):
        _run(tmp_path, b'{"events": ["\xff"]}')
    # the limit is bytes: 400 characters of 4 bytes each are 1600 (counted as 400, they passed)
    wide = '{"events": [{"type": 1, "timestamp": 1, "pad": "' + "\U0001f600" * 400 + '"}]}'
    with pytest.raises(BodyError, match="larger than 1000 bytes"):
        _run(tmp_path, wide.encode())
    # and blanks between events, however many, are only blanks
    spaced = (
        '{"events": [{"type": 1, "timestamp": 1}' + " \n" * 5000 + ', {"type": 2, "timestamp": 2}]}'
    )
    assert _run(tmp_path, spaced)[0].event_count == 2


def test_uuid7_ids_rise_strictly() -> None:
    source = Uuid7Source()
    ids = [source.next() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    later = Uuid7Source()
    future = str(uuid.UUID(int=(uuid.UUID(ids[-1]).int + (10_000 << 80))))  # 10 s ahead
    later.observe(future)
    assert later.next() > future  # a clock that stepped back still continues the order


def test_memory_stays_flat_on_a_large_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a kept JSONDecodeError (it holds the window) once pinned every read window
    until a full garbage collection: 45 MB extra for a 200 MB body."""
    monkeypatch.setattr(recordings_events, "READ_BYTES", 16 * 1024)
    one = json.dumps({"type": 3, "data": {"source": 1, "x": 12345}, "timestamp": 1714816800000})
    (tmp_path / "body").write_text('{"events": [' + ",".join([one] * 30_000) + "]}")
    tracemalloc.start()
    try:
        parse_upload(tmp_path / "body", tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024  # a 2 MB body, read through 16 KiB windows


async def test_a_highly_compressible_recording_streams_back_in_bounded_pieces(
    tmp_path: Path,
) -> None:
    """30 MiB of one character is a few KiB stored: a GET of it used to decompress it in one
    piece (ten such GETs at once, gigabytes). Pieces stay near INFLATE_OUT_BYTES now."""
    event = {"type": 2, "timestamp": 1, "data": "a" * (30 * 1024 * 1024)}
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"started_at": "2026-05-04T10:00:00Z", "events": [event]}))
    stored = tmp_path / "events.zst"
    await asyncio.to_thread(parse_upload, body, stored)
    packed = stored.read_bytes()
    assert len(packed) < 64 * 1024

    async def chunks() -> Any:
        for i in range(0, len(packed), 256 * 1024):
            yield packed[i : i + 256 * 1024]

    async def inline(fn: Any, *args: Any) -> Any:  # (the test's own thread: no loop to keep)
        return fn(*args)

    sizes, out = [], bytearray()
    async for piece in recordings_events.decompress_stream(chunks(), inline):
        sizes.append(len(piece))
        out += piece
    assert max(sizes) <= recordings_events.INFLATE_OUT_BYTES + 8 * 1024 * 1024, max(sizes)
    assert json.loads(out) == [event]


async def test_every_stored_length_streams_back(tmp_path: Path) -> None:
    """The stored object is zstd frames one after another (its writer ends with an empty
    one): wherever a frame ends against the decompression's steps, it streams back whole
    (one recording in ~28, by its length, answered 500 or a cut body every time)."""
    for n in range(1, 120):
        events = [{"type": 3, "timestamp": i, "data": "abc" * ((i * 7919) % 13)} for i in range(n)]
        body, stored = tmp_path / "body.json", tmp_path / f"{n}.zst"
        await asyncio.to_thread(body.write_text, json.dumps({"events": events}))
        await asyncio.to_thread(parse_upload, body, stored)
        packed = await asyncio.to_thread(stored.read_bytes)

        async def chunks(data: bytes = packed) -> Any:
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        got = bytearray()
        async for piece in recordings_events.decompress_stream(chunks(), asyncio.to_thread):
            got += piece
        assert json.loads(got) == events, n
