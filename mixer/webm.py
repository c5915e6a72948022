"""Incremental WebM demuxer for MediaRecorder chunks (VP8/VP9 video, Opus audio).

Design: libavformat wants a file it can read from, so a reader thread runs the demuxer on a
file object backed by a queue of chunks. `feed` hands one chunk over and waits until the thread
has demuxed every complete block and is starved for more bytes, so each call returns the
packets that chunk completed, synchronously. Memory is bounded: at most one chunk waits in the
queue, and the thread holds only what the demuxer buffers. Re-demuxing a growing buffer would be
simpler but quadratic in the session length. A bad stream ends the thread; the next chunk that
starts a new WebM stream (EBML header) starts a fresh one.

Demuxing again from the middle (a writer restarted on its log): a WebM stream can be read from
the start of any of its clusters, given the stream's header (everything before the first
cluster: the EBML header, the Segment's, Info, Tracks). `ClusterScanner` walks the element
headers of the bytes fed and keeps both; every packet carries its offset in the stream, so a
writer can tell which cluster holds a frame, and `WebmDemuxer.resume` starts a demuxer there.
"""

from __future__ import annotations

import logging
import queue
import threading
from bisect import bisect_right
from dataclasses import dataclass

import av
import av.error

from mixer.errors import InvalidMedia, UnsupportedCodec
from mixer.tracks import Codec, Kind

log = logging.getLogger(__name__)

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# A chunk that the demuxer thread has not consumed within this time means it is stuck.
FEED_TIMEOUT_S = 10.0
US_PER_S = 1_000_000
CLUSTER_ID = 0x1F43B675
SEGMENT_ID = 0x18538067
EBML_ID = 0x1A45DFA3
# The Segment's children (Matroska level 1): one of them ends a cluster of unknown size.
LEVEL1_IDS = frozenset(
    {0x114D9B74, 0x1549A966, 0x1654AE6B, CLUSTER_ID, 0x1C53BB6B, 0x1043A770, 0x1254C367, 0x1941A469}
)
# A stream whose header runs past this is not one a recorder made: it is not tracked.
MAX_HEADER_BYTES = 1 << 20
# Cluster starts kept (18 hours of them at one a second): a reader that never lets go of old
# ones (``forget_before``) holds no more, and a resume point before them is not found.
MAX_CLUSTERS = 1 << 16
# The WebM header names codecs and sizes; probing further would hold back the first packets
# until seconds of media have arrived.
PROBE_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
_CODECS = {"vp8": Codec.VP8, "vp9": Codec.VP9, "opus": Codec.OPUS}


@dataclass(frozen=True, slots=True)
class WebmPacket:
    """One demuxed frame with its time (µs from the start of the WebM stream)."""

    kind: Kind
    codec: Codec
    data: bytes
    pts_us: int
    keyframe: bool
    channels: int = 1
    pos: int | None = None  # where its block's data begins in the stream (bytes)


def _vint(data: bytes, i: int, *, marker: bool) -> tuple[int, int] | None:
    """The EBML variable-size integer at ``data[i]`` and its length; None when it is cut off.
    ``marker``: an element ID keeps its length bits; a size drops them, and all ones reads
    as -1 (unknown size)."""
    first = data[i]
    if not first:
        raise ValueError("an EBML number longer than 8 bytes")
    length = 9 - first.bit_length()
    if len(data) - i < length:
        return None
    value = int.from_bytes(data[i : i + length], "big")
    if marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


class ClusterScanner:
    """Follows one WebM stream's element headers as its chunks go by, to know its header (the
    bytes before the first cluster) and where each cluster begins. It reads headers only and
    skips bodies, so it costs a few steps per block. A stream it cannot follow (a child of
    unknown size, a header over ``MAX_HEADER_BYTES``) is given up on: ``broken``."""

    def __init__(self, origin: int = 0) -> None:
        self.header: bytes | None = None  # known once the first cluster begins
        self.clusters: list[int] = []  # where clusters begin, in order (see ``forget_before``)
        self.broken = False
        self.fed = origin  # the stream offset of the next byte fed
        self._head = bytearray()  # the stream so far, until its header is known
        self._rest = b""  # an element header cut off by the end of a chunk
        self._skip = 0  # bytes of an element's body still to pass over
        self._level = 0  # 0: before the Segment; 1: in it; 2: in a cluster
        self._cluster_end: int | None = None  # a cluster of known size ends there

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            self.fed += len(chunk)
            return
        if self.header is None:
            self._head += chunk
        data = self._rest + chunk if self._rest else chunk
        base = self.fed - len(self._rest)
        self.fed += len(chunk)
        try:
            self._rest = data[self._walk(data, base) :]
        except ValueError:
            self._give_up()
            return
        if self.header is None and len(self._head) > MAX_HEADER_BYTES:
            self._give_up()  # (a chunk of any size may hold the header and go on past it)

    def cluster_at(self, pos: int) -> int | None:
        """The start of the cluster that holds stream offset ``pos``."""
        i = bisect_right(self.clusters, pos)
        return self.clusters[i - 1] if i else None

    def forget_before(self, pos: int) -> None:
        """Keep only the clusters from the one holding ``pos`` on."""
        i = bisect_right(self.clusters, pos)
        if i > 1:
            del self.clusters[: i - 1]

    def _give_up(self) -> None:
        self.broken = True
        self._head = bytearray()
        self._rest = b""

    def _walk(self, data: bytes, base: int) -> int:
        """Parse from ``data[0]`` (stream offset ``base``); returns where parsing stopped."""
        i = min(self._skip, len(data))
        self._skip -= i
        while not self._skip and i < len(data):
            if self._cluster_end is not None and base + i >= self._cluster_end:
                self._level, self._cluster_end = 1, None
            found = _vint(data, i, marker=True)
            if found is None:
                break
            eid, id_len = found
            if len(data) - i - id_len < 1:
                break
            found = _vint(data, i + id_len, marker=False)
            if found is None:
                break
            size, size_len = found
            start, body = base + i, i + id_len + size_len
            if self._level == 2 and (eid in LEVEL1_IDS or eid == EBML_ID):
                self._level, self._cluster_end = 1, None  # a cluster of unknown size ended
            if self._level == 0 and eid == SEGMENT_ID:
                self._level, i = 1, body
                continue
            if self._level == 1 and eid == CLUSTER_ID:
                if self.header is None:
                    size = start - (self.fed - len(self._head))
                    if size > MAX_HEADER_BYTES:
                        raise ValueError("a header over the limit")
                    self.header = bytes(self._head[:size])
                    self._head = bytearray()
                self.clusters.append(start)
                if len(self.clusters) > MAX_CLUSTERS:
                    del self.clusters[0]
                self._level, self._cluster_end = 2, None if size < 0 else base + body + size
                i = body
                continue
            if size < 0 or (self._level == 0 and eid != EBML_ID):
                raise ValueError("not a WebM stream this scanner can follow")
            i = body + min(size, len(data) - body)
            self._skip = size - (i - body)
        return i


def _kind(codec: Codec) -> Kind:
    return Kind.AUDIO if codec is Codec.OPUS else Kind.VIDEO


class _ChunkFile:
    """A read-only file whose `read` blocks for the next chunk and says when it is starved."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=1)
        self.starved = threading.Event()
        self._buffer = b""
        self._eof = False

    def read(self, size: int) -> bytes:
        while not self._buffer and not self._eof:
            if self.chunks.empty():
                self.starved.set()
            chunk = self.chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._buffer = chunk
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class _Reader(threading.Thread):
    """Runs libavformat's WebM demuxer over a `_ChunkFile`, collecting packets."""

    def __init__(self, origin: int = 0) -> None:
        super().__init__(name="webm-demux", daemon=True)
        self.origin = origin  # the stream offset of the first byte it reads
        self.file = _ChunkFile()
        self.lock = threading.Lock()
        self.packets: list[WebmPacket] = []
        self.error: Exception | None = None
        self.kinds: frozenset[Kind] = frozenset()  # what the stream's header announces

    def run(self) -> None:
        try:
            with av.open(self.file, mode="r", format="webm", options=PROBE_OPTIONS) as container:
                self.kinds = frozenset(
                    _kind(codec)
                    for stream in container.streams
                    if (codec := _CODECS.get(stream.codec_context.name)) is not None
                )
                for packet in container.demux():
                    stream = packet.stream
                    codec = _CODECS.get(stream.codec_context.name)
                    if codec is None:
                        raise UnsupportedCodec(f"WebM carries {stream.codec_context.name}")
                    if packet.pts is None or packet.time_base is None or not packet.size:
                        continue  # The flush packet at the end of each stream.
                    pos = packet.pos
                    out = WebmPacket(
                        kind=_kind(codec),
                        codec=codec,
                        data=bytes(packet),
                        pts_us=int(packet.pts * packet.time_base * US_PER_S),
                        keyframe=packet.is_keyframe,
                        channels=getattr(stream.codec_context, "channels", 1) or 1,
                        pos=None if pos is None or pos < 0 else self.origin + pos,
                    )
                    with self.lock:
                        self.packets.append(out)
        except (av.error.FFmpegError, UnsupportedCodec, ValueError) as exc:
            self.error = exc
        finally:
            self.file.starved.set()

    def take(self) -> list[WebmPacket]:
        with self.lock:
            out, self.packets = self.packets, []
        return out


class WebmDemuxer:
    """Feeds chunks of one WebM byte stream and returns the frames each completes."""

    def __init__(self) -> None:
        self._reader: _Reader | None = None
        self.scanner = ClusterScanner()

    @staticmethod
    def starts_stream(chunk: bytes) -> bool:
        """Whether a chunk begins a new WebM stream (EBML header)."""
        return chunk.startswith(EBML_MAGIC)

    def feed(self, chunk: bytes) -> list[WebmPacket]:
        """Demux one chunk; a chunk with an EBML header restarts the demuxer."""
        out: list[WebmPacket] = []
        if self.starts_stream(chunk):
            out += self.close()
            self._start(0)
        self.scanner.feed(chunk)
        return out + self._demux(chunk)

    @property
    def kinds(self) -> frozenset[Kind]:
        """The kinds the current stream's header announces (none before it is read)."""
        return frozenset() if self._reader is None else self._reader.kinds

    def resume(self, header: bytes, at: int, chunk: bytes) -> list[WebmPacket]:
        """Start demuxing a stream again at the cluster that begins at offset ``at``:
        ``header`` is the stream's (``ClusterScanner.header``), ``chunk`` its bytes from that
        cluster on. Packets and clusters keep the offsets of the original stream."""
        out = self.close()
        self._start(at - len(header))
        self.scanner.feed(header + chunk)
        return out + self._demux(header + chunk)

    def _start(self, origin: int) -> None:
        self.scanner = ClusterScanner(origin)
        self._reader = _Reader(origin)
        self._reader.start()

    def _demux(self, chunk: bytes) -> list[WebmPacket]:
        out: list[WebmPacket] = []
        reader = self._reader
        if reader is None or not reader.is_alive():
            out += self._stop()
            raise InvalidMedia("WebM chunk does not continue a stream (no EBML header first)")
        reader.file.starved.clear()
        reader.file.chunks.put(chunk)
        if not reader.file.starved.wait(FEED_TIMEOUT_S):
            self._stop()
            raise InvalidMedia("WebM demuxer stalled")
        out += reader.take()
        if reader.error is not None:
            self._stop()
            raise InvalidMedia(f"bad WebM stream: {reader.error}")
        return out

    def close(self) -> list[WebmPacket]:
        """End the current stream and return the frames still buffered in the demuxer."""
        return self._stop()

    def _stop(self) -> list[WebmPacket]:
        reader, self._reader = self._reader, None
        if reader is None:
            return []
        if reader.is_alive():
            reader.file.chunks.put(None)
            reader.join(FEED_TIMEOUT_S)
        return reader.take()
