"""Incremental WebM demuxer for MediaRecorder chunks (VP8/VP9 video, Opus audio).

Design: libavformat wants a file it can read from, so a reader thread runs the demuxer on a
file object backed by a queue of chunks. `feed` hands one chunk over and waits until the thread
has demuxed every complete block and is starved for more bytes, so each call returns the
packets that chunk completed, synchronously. Memory is bounded: at most one chunk waits in the
queue, and the thread holds only what the demuxer buffers. Re-demuxing a growing buffer would be
simpler but quadratic in the session length. A bad stream ends the thread; the next chunk that
starts a new WebM stream (EBML header) starts a fresh one.
"""

from __future__ import annotations

import logging
import queue
import threading
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

    def __init__(self) -> None:
        super().__init__(name="webm-demux", daemon=True)
        self.file = _ChunkFile()
        self.lock = threading.Lock()
        self.packets: list[WebmPacket] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with av.open(self.file, mode="r", format="webm", options=PROBE_OPTIONS) as container:
                for packet in container.demux():
                    stream = packet.stream
                    codec = _CODECS.get(stream.codec_context.name)
                    if codec is None:
                        raise UnsupportedCodec(f"WebM carries {stream.codec_context.name}")
                    if packet.pts is None or packet.time_base is None or not packet.size:
                        continue  # The flush packet at the end of each stream.
                    out = WebmPacket(
                        kind=Kind.AUDIO if codec is Codec.OPUS else Kind.VIDEO,
                        codec=codec,
                        data=bytes(packet),
                        pts_us=int(packet.pts * packet.time_base * US_PER_S),
                        keyframe=packet.is_keyframe,
                        channels=getattr(stream.codec_context, "channels", 1) or 1,
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

    @staticmethod
    def starts_stream(chunk: bytes) -> bool:
        """Whether a chunk begins a new WebM stream (EBML header)."""
        return chunk.startswith(EBML_MAGIC)

    def feed(self, chunk: bytes) -> list[WebmPacket]:
        """Demux one chunk; a chunk with an EBML header restarts the demuxer."""
        out: list[WebmPacket] = []
        if self.starts_stream(chunk):
            out += self.close()
            self._reader = _Reader()
            self._reader.start()
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
