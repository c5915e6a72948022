"""rrweb event uploads: the create body parsed one value at a time from a file, events checked
and written straight into a zstd stream, and that stream decompressed on the way back out.

Why this shape: a long recording's body is hundreds of megabytes. It is spooled to disk as it
arrives (never whole in memory), then read back here in a worker thread: the top-level object is
walked key by key with the C JSON scanner (``raw_decode``) and each event is decoded on its own,
checked, and its original text handed to the compressor. Memory is one read window plus the
largest single event. Events go back out exactly as they were sent (whitespace between them
aside).

Why zstd: on rrweb-like JSON (bench/recordings.py) level 3 compresses about 8x faster than
gzip -6 (≈400 vs ≈50 MB/s on this machine) and decompresses ≈2x faster, for a ratio within
about 10 % of gzip's; CPU is what a 2-core server runs out of first.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from .errors import json_type

READ_BYTES = 1024 * 1024  # one read of the spooled body
MAX_EVENT_BYTES = 32 * 1024 * 1024  # one rrweb event (a full DOM snapshot can be megabytes)
MAX_FIELD_BYTES = 1024 * 1024  # any other top-level field (navigations included)
ZSTD_LEVEL = 3
# what one step of a GET's decompression gives out: memory stays flat even for events that
# compress thousands to one (32 MiB of one character is a few KiB stored). A step's input
# piece: a zstd block of at most 128 KiB can come from 4 bytes (RLE), so 256 bytes give at
# most 8 MiB more than asked for (smaller steps cost more calls: 64 bytes, 171 MB/s out;
# 256, ~200 MB/s)
INFLATE_OUT_BYTES = 1024 * 1024
INFLATE_STEP_BYTES = 256
# event and navigation times (ms since 1970): JavaScript's exact integers, a quarter of a
# million years either way; past that a span no longer fits the metadata store's integers
MAX_TIME_MS = 2**53 - 1
EVENTS_CONTENT_TYPE = "application/zstd"
_BLANKS = " \t\n\r"
_NOT_BLANK = re.compile(r"[^ \t\n\r]")


class BodyError(ValueError):
    """The body is not what the API takes; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(slots=True)
class ParsedUpload:
    """What a create body held: its other fields, and what was learnt of its events."""

    fields: dict[str, Any] = field(default_factory=dict)
    event_count: int = 0
    first_ms: float | None = None
    last_ms: float | None = None
    raw_bytes: int = 0  # the event array as stored, before compression
    has_events: bool = False

    @property
    def span_ms(self) -> int:
        """Milliseconds from the earliest to the latest event timestamp."""
        if self.first_ms is None or self.last_ms is None:
            return 0
        return max(0, round(self.last_ms - self.first_ms))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # (an integer past any float: not a number rrweb writes)
        return False


class _Reader:
    """A sliding window over a UTF-8 file with JSON token helpers."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False

    def fill(self, at_least: int = 0) -> bool:
        """Read more; False at the end of the file."""
        if self.eof:
            return False
        data = self._f.read(max(at_least, READ_BYTES))
        try:
            text = self._utf8.decode(data, final=not data)
        except UnicodeDecodeError:
            raise BodyError("body", "request body is not valid UTF-8") from None
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        self.eof = not data
        return True

    def peek(self) -> str:
        """The next non-blank character, or "" at the end of the file."""
        while True:
            if self.pos < len(self.buf) and self.buf[self.pos] not in _BLANKS:
                return self.buf[self.pos]  # (most often: no blank at all)
            # (one regex step over a run of blanks, not a Python step per character: 50 MiB
            # of blanks held the GIL for seconds, and the live sessions' event loop with it)
            match = _NOT_BLANK.search(self.buf, self.pos)
            self.pos = match.start() if match else len(self.buf)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def _bytes_past(self, start: int, limit: int) -> bool:
        """Whether the window from ``start`` holds more than ``limit`` bytes of UTF-8 (a
        character is 1 to 4 bytes: encoded only once it could be past)."""
        size = len(self.buf) - start
        if size > limit:
            return True
        if size <= limit // 4:
            return False
        return len(self.buf[start:].encode("utf-8", "surrogatepass")) > limit

    def expect(self, chars: str, where: str) -> str:
        """Consume one of ``chars`` after blanks, or fail naming ``where``."""
        char = self.peek()
        if not char or char not in chars:
            found = repr(char) if char else "the end of the body"
            raise BodyError(where, f"expected {' or '.join(map(repr, chars))}, found {found}")
        self.pos += 1
        return char

    def value(self, where: str, limit: int) -> tuple[Any, int, int]:
        """Decode the next JSON value; returns it and its span in ``buf``."""
        self.peek()
        want = READ_BYTES
        while True:
            start = self.pos
            try:
                obj, end = _DECODER.raw_decode(self.buf, start)
            except ValueError as exc:  # JSONDecodeError too
                # only its text is kept: the exception holds the whole window (``doc``) and,
                # through its traceback, this frame: a cycle that pins megabytes until a full GC
                error: str | None = str(exc)
            else:
                # a number or literal that ends the window may go on in the next read
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj, start, end
                error = None
            if self._bytes_past(start, limit):
                raise BodyError(where, f"{where} is larger than {limit} bytes or not valid JSON")
            if not self.fill(want):
                detail = f": {error}" if error is not None else ""
                raise BodyError(where, f"{where} is not valid JSON{detail}")
            want *= 2  # a big value: read in growing steps so retries stay linear overall


def parse_upload(body: Path, events_out: Path) -> ParsedUpload:
    """Read a create body from ``body``; write its ``events`` array zstd-compressed to
    ``events_out``. Blocking and CPU-bound: run it in a worker thread."""
    result = ParsedUpload()
    with open(body, "rb") as f, open(events_out, "wb") as out:
        reader = _Reader(f)
        if reader.peek() != "{":
            raise BodyError("body", "request body must be a JSON object")
        reader.pos += 1
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out, closefd=False)
        first = True
        while True:
            if reader.peek() == "}" and first:
                reader.pos += 1
                break
            if not first:
                if reader.expect(",}", "body") == "}":
                    break
            first = False
            if reader.peek() != '"':
                raise BodyError("body", "expected a field name in the request body")
            key, _, _ = reader.value("body", MAX_FIELD_BYTES)
            reader.expect(":", "body")
            if key == "events":
                if result.has_events:
                    raise BodyError("events", "events is given twice")
                result.has_events = True
                _parse_events(reader, compressor, result)
            else:
                if key in result.fields:
                    raise BodyError(key, f"{key} is given twice")
                result.fields[key], _, _ = reader.value(key, MAX_FIELD_BYTES)
        if reader.peek():
            raise BodyError("body", "unexpected data after the JSON object")
        compressor.flush(zstandard.FLUSH_FRAME)
        compressor.close()
    return result


def _parse_events(reader: _Reader, out: Any, result: ParsedUpload) -> None:
    if reader.peek() != "[":
        value, _, _ = reader.value("events", MAX_FIELD_BYTES)
        raise BodyError("events", f"events must be an array, not {json_type(value)}")
    reader.pos += 1
    out.write(b"[")
    raw = 1
    index = 0
    if reader.peek() == "]":
        reader.pos += 1
    else:
        while True:
            where = f"events[{index}]"
            event, start, end = reader.value(where, MAX_EVENT_BYTES)
            _check_event(event, where, result)
            text = reader.buf[start:end].encode()
            if index:
                out.write(b",")
                raw += 1
            out.write(text)
            raw += len(text)
            index += 1
            if reader.expect(",]", "events") == "]":
                break
    out.write(b"]")
    result.raw_bytes = raw + 1
    result.event_count = index


def _check_event(event: Any, where: str, result: ParsedUpload) -> None:
    if not isinstance(event, dict):
        raise BodyError(where, f"{where} must be an rrweb event object, not {json_type(event)}")
    for name in ("type", "timestamp"):
        if name not in event:
            raise BodyError(f"{where}.{name}", f"{where} has no {name}")
        if not _is_number(event[name]):
            raise BodyError(
                f"{where}.{name}", f"{where}.{name} must be a number, not {json_type(event[name])}"
            )
    ts = float(event["timestamp"])
    if abs(ts) > MAX_TIME_MS:
        raise BodyError(f"{where}.timestamp", f"{where}.timestamp is not a time in ms: {ts:g}")
    result.first_ms = ts if result.first_ms is None else min(result.first_ms, ts)
    result.last_ms = ts if result.last_ms is None else max(result.last_ms, ts)


class _Inflater:
    """Decompresses a stored events object (zstd frames one after another: the writer ends
    with an empty one) in bounded steps."""

    def __init__(self) -> None:
        self._dobj = zstandard.ZstdDecompressor().decompressobj()

    def step(self, data: memoryview, limit: int) -> tuple[bytes, int]:
        """Decompress ``data`` from its start until ``limit`` bytes came out or it is used
        up: (what came out, the bytes of ``data`` taken). Fed in ``INFLATE_STEP_BYTES``
        pieces, since zstd has no output bound per call and a few KiB of it can expand to a
        whole recording."""
        out = bytearray()
        pos = 0
        while pos < len(data) and len(out) < limit:
            out += self._feed(bytes(data[pos : pos + INFLATE_STEP_BYTES]))
            pos += INFLATE_STEP_BYTES
        return bytes(out), min(pos, len(data))

    def _feed(self, piece: bytes) -> bytes:
        out = self._dobj.decompress(piece)
        while self._dobj.eof:  # a frame ended: the next begins with what is left of the piece
            rest = self._dobj.unused_data
            self._dobj = zstandard.ZstdDecompressor().decompressobj()
            if not rest:
                break
            out += self._dobj.decompress(rest)
        return out


async def decompress_stream(
    chunks: AsyncIterator[bytes], threads: Any
) -> AsyncGenerator[bytes, None]:
    """Yield the decompressed bytes of a zstd stream as its compressed chunks arrive, in
    pieces of about ``INFLATE_OUT_BYTES`` (at most that plus 8 MiB), decompressed by
    ``threads`` (``asyncio.to_thread``), off the event loop."""
    inflater = _Inflater()
    async for chunk in chunks:
        view, pos = memoryview(chunk), 0
        while pos < len(view):
            data, used = await threads(inflater.step, view[pos:], INFLATE_OUT_BYTES)
            pos += used
            if data:
                yield data
