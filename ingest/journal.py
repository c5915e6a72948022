"""The session journal: the frames of the segment being written, appended and fsync'd
before they are acknowledged, and replayed after a crash to rebuild that segment.

One file per segment index (``journal-00007.bin`` holds what arrived from segment 7 on),
so a closed segment's journal can be dropped once the segment is safe in the spool. Records
are msgpack arrays; a torn record at the tail (the crash itself) is ignored on replay.
Synchronous: called from the session's writer thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

log = logging.getLogger(__name__)

JOURNAL_GLOB = "journal-*.bin"
READ_CHUNK_BYTES = 1024 * 1024

# record tags
TRACK = "t"  # ["t", {track fields}]
MEDIA = "m"  # ["m", seq, track, pts_us, dts_us, key, arrival, data]
BREAK = "d"  # ["d"]: a pause or a gap: the writer starts a discontinuity here


def journal_path(directory: Path, segment_index: int) -> Path:
    """The journal file that starts at ``segment_index``."""
    return directory / f"journal-{segment_index:05d}.bin"


def journal_index(path: Path) -> int:
    """The segment index a journal file starts at."""
    return int(path.stem.split("-", 1)[1])


class Journal:
    """An append-only journal file."""

    def __init__(self, directory: Path, segment_index: int) -> None:
        self.path = journal_path(directory, segment_index)
        self.segment_index = segment_index
        self._file: BinaryIO = open(self.path, "ab")
        self._packer = msgpack.Packer(use_bin_type=True)
        self._dirty = False

    def track(self, fields: dict[str, Any]) -> None:
        """Record a track announcement."""
        self._file.write(self._packer.pack([TRACK, fields]))
        self._dirty = True

    def media(
        self, seq: int, track: int, pts: int, dts: int, key: bool, arrival: float, data: bytes
    ) -> None:
        """Record one media frame."""
        self._file.write(self._packer.pack([MEDIA, seq, track, pts, dts, key, arrival, data]))
        self._dirty = True

    def brk(self) -> None:
        """Record a discontinuity (pause or gap)."""
        self._file.write(self._packer.pack([BREAK]))
        self._dirty = True

    def sync(self) -> None:
        """Make everything appended so far durable."""
        if self._dirty:
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._dirty = False

    def close(self) -> None:
        """Sync and close; harmless twice."""
        if not self._file.closed:
            self.sync()
            self._file.close()


def replay(path: Path) -> Iterator[list[Any]]:
    """Yield the records of a journal file in order, stopping quietly at a torn tail."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            unpacker.feed(chunk)
            try:
                yield from unpacker
            except (ValueError, msgpack.UnpackException) as exc:
                log.warning("journal %s: stopping at a damaged record: %s", path, exc)
                return


def sync_dir(directory: Path) -> None:
    """fsync a directory so the names in it (new or renamed files) are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
