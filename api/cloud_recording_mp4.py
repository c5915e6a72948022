"""A mix's MP4s across a crash.

A mix builds its MP4s from its own segments and hands them to the spool when its run ends:
at stop, or when the server suspends it for a restart. A run that a crash cut short built
none, though its segments are in the playlist. They are still in the session's folder: the
resumed recording builds the MP4s of the run it lost from them, numbered on, before it
records again.

Which segments are in an MP4 already is written down in the session's folder
(``mp4-covered.txt``, a name per line) whenever MP4s are handed to the spool: everything the
folder holds at a suspend, and what each recovery built. Functions here block: run them in a
thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mixer.mix import MP4_MAX_BYTES, MP4_MAX_DURATION_S
from mixer.playlist import PlaylistSegment
from storage.durable import write_atomic

COVERED = "mp4-covered.txt"


def _covered(directory: Path) -> set[str]:
    try:
        return set((directory / COVERED).read_text().split())
    except FileNotFoundError:
        return set()


def mark_covered(directory: Path, names: Sequence[str]) -> None:
    """Note that the segments ``names`` are in an MP4 handed to the spool."""
    covered = _covered(directory) | set(names)
    write_atomic(directory / COVERED, "".join(f"{n}\n" for n in sorted(covered)).encode())


def mark_all_covered(directory: Path) -> None:
    """Note that every segment in the folder is in an MP4 (the mix's run was suspended)."""
    mark_covered(directory, [p.name for p in directory.glob("*.ts")])


def lost_parts(
    directory: Path,
    listed: Sequence[PlaylistSegment],
    max_duration_s: float = MP4_MAX_DURATION_S,
    max_bytes: int = MP4_MAX_BYTES,
) -> list[list[Path]]:
    """The segments of the playlist ``listed`` that are in the folder and in no MP4, in
    playlist order, cut into MP4 parts as a mix cuts them (~2 hours or ~2 GB each)."""
    covered = _covered(directory)
    parts: list[list[Path]] = []
    part: list[Path] = []
    seconds = size = 0.0
    for segment in listed:
        path = directory / segment.uri
        if segment.uri in covered or not path.is_file():
            continue
        part.append(path)
        seconds += segment.duration_s
        size += path.stat().st_size
        if seconds >= max_duration_s or size >= max_bytes:
            parts.append(part)
            part, seconds, size = [], 0.0, 0.0
    if part:
        parts.append(part)
    return parts
