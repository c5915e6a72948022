"""The write-ahead log: every open session's frames, appended by the writer threads and
fsync'd once per tick for all sessions together (group commit), so acknowledging a frame
costs one shared fsync, not one per session.

Files are ``wal-000001.bin``…, rotated by size. A session needs the log from the first frame
of its open segment on (closed segments are safe in the spool), or from further back when
decoding that frame again needs more (a transcoded track's last keyframe; a `webm` track's
chunk its stream is demuxed again from); a file older than what every open session needs is
deleted. After a crash the log is read once, each session's records
are replayed into its recorder, which appends them again to a new file; that file then says
``recovered`` and the old ones go. A recovery cut short leaves its new file without that
record: it is dropped and the old files, still whole, are read again.

Records are msgpack arrays whose first item is the session id (``""`` for the log's own).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from storage.durable import fsync_dir

log = logging.getLogger(__name__)

WAL_ROTATE_BYTES = 64 * 1024 * 1024
WAL_BUFFER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_RECORD_BYTES = 64 * 1024 * 1024

# record tags (second item)
TRACK = "t"  # [sid, "t", {track fields}]
MEDIA = "m"  # [sid, "m", seq, track, pts_us, dts_us, key, arrival, data]
BREAK = "d"  # [sid, "d"]: a pause or a gap: the writer starts a discontinuity here
# [sid, "s", seq, ...] as MEDIA: a `webm` chunk sent while paused, demuxed and not recorded
# (its stream goes on after the pause)
SKIM = "s"
# [sid, "c", segment index, first seq, [track fields]]: that segment starts with frame ``first
# seq``, logged before this record (the cut was made when the frame was written), or with the
# next frame logged after it (first seq 0); older versions wrote [sid, "c", index] followed by
# a TRACK record per track. A sixth item, a map, when the segment needs frames logged before
# that one: "held": [seq, [track ids]], frames of tracks added mid-segment that waited for
# it (from seq on, written into it); "prime": [[track, seq, end seq], ...], a transcoded
# track's frames from its last input keyframe to the segment's first frame (only decoded), a
# `webm` track's chunks from its resume point to the segment's first frame or, for a cut
# that knows none (a pause, an idle recut), to the next frame logged (SKIM ones stay SKIM);
# "webm": [[track, header, base µs, cluster, first, seq, offset], ...], where a `webm` track's
# stream is demuxed again from (``mixer.hls.WebmPoint``): the cluster begins ``offset`` bytes
# into the data of frame ``seq`` (the first of its "prime" span, or the segment's first)
CUT = "c"
# never logged: a replay's name for a MEDIA record it only decodes (a `webm` chunk's: it is
# demuxed, and its packets from the segment's first on written)
PRIME = "p"
WEBM = "w"  # never logged: a replay's record of a "webm" resume point, before the frames
RECOVERING = "recovering"  # ["", "recovering", [old file indices]]: first record of a recovery
RECOVERED = "recovered"  # ["", "recovered"]: the recovery finished; the old files are redundant


def _index(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _read(path: Path) -> list[list[Any]]:
    """Every whole record of a file; a torn tail (the crash itself) ends it quietly."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD_BYTES)
    out: list[list[Any]] = []
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            unpacker.feed(chunk)
            try:
                out.extend(unpacker)
            except (ValueError, msgpack.UnpackException) as exc:
                log.warning("wal %s: stopping at a damaged record: %s", path.name, exc)
                break
    return out


class Wal:
    """The shared log. ``append`` is thread-safe; ``sync`` makes everything appended durable."""

    def __init__(self, directory: Path, rotate_bytes: int = WAL_ROTATE_BYTES) -> None:
        self.directory = directory
        self._rotate_bytes = rotate_bytes
        self._lock = threading.Lock()  # appends and rotation
        self._sync_lock = threading.Lock()  # one sync at a time: a sync's return means durable
        self._packer = msgpack.Packer(use_bin_type=True)
        self._file: BinaryIO | None = None
        self._unsynced: list[BinaryIO] = []  # rotated-away files not yet fsync'd
        self.index = 0
        self._size = 0
        self._old: list[int] = []  # files read at open, superseded once recovery is done

    def open(self) -> dict[str, list[list[Any]]]:
        """Read what a previous run left, grouped by session, and start a new file (blocking)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files = sorted(self.directory.glob("wal-*.bin"), key=_index)
        contents = {p: _read(p) for p in files}
        for path, records in list(contents.items()):
            head = records[0] if records else None
            if head and head[0] == "" and head[1] == RECOVERING:
                if any(r[0] == "" and r[1] == RECOVERED for r in records):
                    for old in head[2]:  # a finished recovery supersedes these
                        old_path = self.directory / f"wal-{old:06d}.bin"
                        contents.pop(old_path, None)
                        old_path.unlink(missing_ok=True)
                else:  # cut short: what it wrote is partial, the originals are whole
                    contents.pop(path)
                    path.unlink()
        by_session: dict[str, list[list[Any]]] = {}
        for records in contents.values():
            for rec in records:
                if rec and rec[0]:
                    by_session.setdefault(rec[0], []).append(rec)
        self._old = [_index(p) for p in contents]
        self.index = max((_index(p) for p in files), default=0)
        self._start_file()
        if self._old:
            self.append(["", RECOVERING, self._old])
        return by_session

    def finish_recovery(self) -> None:
        """Mark the replayed records durable in the new file and drop the old files (blocking)."""
        if not self._old:
            # (records replayed from elsewhere, another lane's old directory, are made
            # durable here before their own files go)
            self.sync()
            return
        self.append(["", RECOVERED])
        self.sync()
        for index in self._old:
            (self.directory / f"wal-{index:06d}.bin").unlink(missing_ok=True)
        fsync_dir(self.directory)
        self._old = []

    def _start_file(self) -> None:
        self.index += 1
        # a tick's records go to the file in a few large writes (``sync`` flushes them): with
        # the default 8 KB buffer, every video frame was a write of its own
        self._file = open(self.directory / f"wal-{self.index:06d}.bin", "ab", WAL_BUFFER_BYTES)
        self._size = 0
        fsync_dir(self.directory)

    def append(self, record: list[Any]) -> int:
        """Append one record (durable after the next ``sync``); returns the file it went to."""
        data = self._packer.pack(record)
        with self._lock:
            assert self._file is not None  # opened in open(); an internal invariant
            self._file.write(data)
            index = self.index
            self._size += len(data)
            if self._size >= self._rotate_bytes and not self._old:
                self._unsynced.append(self._file)
                self._start_file()
        return index

    def sync(self) -> None:
        """Make every record appended before this call durable (blocking: run it in a thread)."""
        with self._sync_lock:
            with self._lock:
                files = [*self._unsynced, self._file]
                self._unsynced = []
                for f in files:
                    if f is not None:
                        f.flush()
            for f in files:
                if f is not None:
                    os.fdatasync(f.fileno())
                    if f is not self._file:
                        f.close()

    def release(self, needed: Iterable[int]) -> None:
        """Delete the files older than the oldest one an open session still needs (blocking)."""
        keep_from = min([*needed, self.index])
        removed = False
        for path in self.directory.glob("wal-*.bin"):
            index = _index(path)
            if index < keep_from and index not in self._old:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.directory)

    def close(self) -> None:
        """Sync and close; harmless twice."""
        if self._file is not None and not self._file.closed:
            self.sync()
            self._file.close()
